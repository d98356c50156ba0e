"""``hierfl sim --secure`` (MQTT over mutual TLS, signed frames) and ``--insecure`` (unsigned)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hierfl.errors import ConfigError
from hierfl.sim.brokers import MqttBroker
from hierfl.sim.pki import OBSERVER_USER
from hierfl.sim.runner import SimConfig, run_sim_async

pytestmark = pytest.mark.integration


def _mosquitto_installed() -> bool:
    try:
        MqttBroker(prefer="mosquitto")
    except ConfigError:
        return False
    return True


@pytest.mark.skipif(not _mosquitto_installed(), reason="--secure needs mosquitto")
async def test_secure_inprocess_sim_runs_over_mutual_tls(kafka_broker, tmp_path, unique_id):
    cfg = SimConfig(
        scenario="digits", fogs=2, edges=4, rounds=3, k1=1, mode="inprocess",
        kafka_bootstrap=kafka_broker.bootstrap, out=tmp_path, federation=unique_id,
        live=False, lr=0.2, security="secure",
    )
    started: dict[str, str] = {}
    report = await run_sim_async(cfg, on_start=started.update)
    # the sim's own mosquitto, TLS only, with client certificates and the provisioned ACL
    assert "mqtts://127.0.0.1:" in started["mqtt"] and "TLS" in started["mqtt"]
    assert "kafka" not in started  # the session's Tansu (PLAINTEXT), not one of its own
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["security"] == {
        "signing": True, "mqtt_tls": True, "mqtt_client_certificates": True,
        "kafka_tls": False, "pki": str((tmp_path / "pki").resolve()), "signed_versions": True,
        "rejected": {"fogs": {"fog0": {}, "fog1": {}}, "cloud": {}},
    }
    assert len(report["rounds"]) == 3
    for r in report["rounds"]:
        # the observer read every update over TLS with its own read-only identity
        assert r["updates"] == 4 and r["accepted"] == 4 and r["rejected"] == {}
    pki = tmp_path / "pki"
    assert (pki / "ca" / "ca.crt").is_file()
    assert (pki / "kits" / "edge-fog0-e000" / "client.crt").is_file()
    acl = (pki / OBSERVER_USER / "acl").read_text()
    assert f"user {OBSERVER_USER}\ntopic read hierfl/{unique_id}/#" in acl
    assert "user edge/fog1/e003" in acl
    assert (pki / OBSERVER_USER / "client.key").stat().st_mode & 0o077 == 0


def test_insecure_cli_says_the_run_is_unsigned(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hierfl", "sim", "digits", "--mode", "inprocess", "--insecure",
         "--fogs", "1", "--edges", "2", "--rounds", "1", "--k1", "1", "--out", str(tmp_path),
         "--no-live"],
        env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "this run is UNSIGNED" in proc.stderr
    assert "final accuracy" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["security"]["signing"] is False
    assert report["security"]["pki"] is None
    assert report["security"]["signed_versions"] is False
    assert not (tmp_path / "pki").exists()
