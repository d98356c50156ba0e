"""``hierfl sim`` end to end: in-process mode in the suite, and the CLI leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from hierfl.sim.runner import SimConfig, SimStallError, run_sim_async

pytestmark = pytest.mark.integration

ROUND_FIELDS = {
    "round", "version", "accuracy", "loss", "wall_s", "edge_fog_bytes", "fog_cloud_bytes",
    "cloud_edge_bytes", "updates", "accepted", "rejected", "fogs", "regions",
}


async def test_inprocess_sim_learns_and_reports(mqtt_broker, kafka_broker, tmp_path, unique_id):
    """The default run is provisioned and signed: every update passes the fogs' and the cloud's
    signature checks (nothing rejected) and the cloud's versions record a signed lineage."""
    cfg = SimConfig(
        scenario="digits", fogs=2, edges=6, rounds=3, k1=2, mode="inprocess",
        mqtt_url=mqtt_broker.url, kafka_bootstrap=kafka_broker.bootstrap, out=tmp_path,
        federation=unique_id, live=False, lr=0.2,
    )
    report = await run_sim_async(cfg)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["final_accuracy"] == report["final_accuracy"]
    assert on_disk["stopped"] is None  # every round ran
    assert len(report["rounds"]) == 3
    for r in report["rounds"]:
        assert set(r) == ROUND_FIELDS
        assert r["updates"] == 6 and r["accepted"] == 6 and r["rejected"] == {}
        assert r["fogs"] == {"fog0": 3, "fog1": 3}
        # six float32 deltas of a 4,810-parameter model (zstd squeezes some zeros out)
        assert 6 * 4810 * 4 * 0.5 < r["edge_fog_bytes"] < 6 * 4810 * 4 * 1.1
        assert r["fog_cloud_bytes"] > 0 and r["cloud_edge_bytes"] > 0
    accs = [r["accuracy"] for r in report["rounds"]]
    assert accs[-1] > 0.3  # ten classes: chance is 0.1
    assert accs[-1] > report["initial_accuracy"]
    assert set(report["totals"]) >= {"wall_s", "median_round_s", "edge_fog_bytes", "rejected"}
    assert Path(report["plot_path"]).stat().st_size > 1000
    sec = on_disk["security"]
    assert sec == {
        "signing": True, "mqtt_tls": False, "mqtt_client_certificates": False,
        "kafka_tls": False, "pki": str((tmp_path / "pki").resolve()), "signed_versions": True,
        "rejected": {"fogs": {"fog0": {}, "fog1": {}}, "cloud": {}},
    }
    key = tmp_path / "pki" / "kits" / "edge-fog1-e005" / "signing.key"
    assert key.stat().st_mode & 0o077 == 0


def test_sim_processes_cli_leaves_nothing_running(tmp_path):
    """The deployable path: brokers + cloud + fogs + edges as OS processes, all stopped."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "hierfl", "sim", "digits", "--fogs", "2", "--edges", "4",
         "--rounds", "2", "--out", str(tmp_path), "--no-live"],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "final accuracy" in proc.stdout
    assert "security: frames signed and verified" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["rounds"]) == 2
    # signed by default: each tier process got its kit's key (HIERFL_SECURITY__*)
    assert report["security"]["signing"] is True
    assert report["security"]["signed_versions"] is True
    assert report["security"]["rejected"]["fogs"] == {"fog0": {}, "fog1": {}}
    assert all(r["accepted"] == 4 and r["rejected"] == {} for r in report["rounds"])
    # each tier was its own process: the cloud's and every fog's peak memory were read
    assert report["cloud_peak_rss_mb"] > 10
    assert set(report["fog_peak_rss_mb"]) == {"fog0", "fog1"}
    assert all(v > 10 for v in report["fog_peak_rss_mb"].values())
    # every child the sim started was stopped: no process has its logs open any more
    logs = {str(p) for p in (tmp_path / "logs").iterdir()}
    assert {Path(p).name for p in logs} == {  # the zygote's child that wrote the initial model
        "cloud.log", "fog0.log", "fog1.log", "initial-model.log",
        *(f"e{i:03d}.log" for i in range(4))}
    lsof = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(tmp_path) not in lsof.stdout
    assert report["config"]["federation"] not in lsof.stdout


# `hierfl ...` with SIGINT handled as in a terminal's foreground job. A test runner started in
# the background by a non-interactive shell (CI) ignores SIGINT, and children inherit that.
_AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = ['hierfl', *sys.argv[1:]]; runpy.run_module('hierfl', run_name='__main__')"
)


def test_sim_ctrl_c_stops_every_process_and_broker(tmp_path):
    """Ctrl-C mid-run (SIGINT to the terminal's foreground process group): the sim stops the
    brokers and every tier process it started, says so, and exits 130."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _AS_FROM_A_TERMINAL, "sim", "digits", "--fogs", "1", "--edges",
         "2", "--rounds", "500", "--out", str(tmp_path), "--no-live"],
        env={**os.environ, "COLUMNS": "200"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,  # its own process group, like a shell job
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        # Running for real: the first global round came back through every tier.
        while not any(line.startswith("round 1:") for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        started = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for part in ("mosquitto" if "mosquitto" in names else "amqtt", "tansu",
                     "hierfl cloud", "hierfl fog", "hierfl edge"):
            assert part in names, names
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        reader.join(timeout=5)
        proc.stdout.close()
    assert proc.returncode == 130, "".join(lines)
    assert any("every process and broker started by the sim was stopped" in line
               for line in lines), "".join(lines)
    _, alive = psutil.wait_procs(started, timeout=5)
    assert not alive, [p.pid for p in alive]
    # What was learned before Ctrl-C is kept: a partial report of the rounds that completed.
    assert f"partial report: {tmp_path / 'report.json'}" in "".join(lines)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stopped"] == "interrupted"
    assert report["totals"]["rounds"] == len(report["rounds"]) >= 1
    assert len(report["rounds"]) < 500


async def test_a_stalled_sim_stops_with_a_diagnosis(mqtt_broker, kafka_broker, tmp_path, unique_id):
    """A federation that cannot progress (a fog quorum its edges cannot reach) does not hang:
    the sim stops and says where each fog stands."""
    cfg = SimConfig(
        scenario="digits", fogs=1, edges=2, rounds=1, min_updates=3, quorum=3,
        round_timeout_s=1.0, stall_timeout_s=5.0, mode="inprocess",
        mqtt_url=mqtt_broker.url, kafka_bootstrap=kafka_broker.bootstrap, out=tmp_path,
        federation=unique_id, live=False,
    )
    with pytest.raises(SimStallError, match=r"no global version after v0") as info:
        await run_sim_async(cfg)
    msg = str(info.value)
    assert info.value.report_path is None  # no round completed: nothing to report
    assert "fog0: state=collecting version=0" in msg
    fields = dict(re.findall(r"(accepted|forwarded|skipped)=(\d+)", msg))
    # Rounds kept being skipped, nothing was forwarded. (How many updates were accepted
    # depends on load: on a busy machine every update can arrive after its round's deadline
    # and be refused as stale.)
    assert set(fields) == {"accepted", "forwarded", "skipped"}
    assert int(fields["skipped"]) >= 1
    assert fields["forwarded"] == "0"
