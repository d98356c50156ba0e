"""``--log-format text|json``: JSON lines a collector can parse, and dated text lines that are
never wrapped when the output is not a terminal."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hierfl.errors import ConfigError
from hierfl.process import setup_logging

_DATED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [A-Z]+ ")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_timestamp_level_tier_id_event_and_fields() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", tier="fog", party="north", stream=out)
    log = logging.getLogger("hierfl.fog.service")
    log.info("fog %s: round %d closed", "north", 7, extra={"seq": 7, "accepted": 5})
    log.debug("not at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("fog %s: failed", "north")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["timestamp"])
    assert first["level"] == "INFO" and first["tier"] == "fog" and first["id"] == "north"
    assert first["logger"] == "hierfl.fog.service"
    assert first["event"] == "fog %s: round %d closed"
    assert first["message"] == "fog north: round 7 closed"
    assert first["seq"] == 7 and first["accepted"] == 5
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


def test_text_lines_are_dated_and_never_wrapped_off_a_terminal() -> None:
    out = io.StringIO()  # not a TTY
    setup_logging("INFO", "text", stream=out)
    long = "x" * 300
    logging.getLogger("hierfl.test").warning("fog north: a long warning %s end", long)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert _DATED.match(lines[0]) and lines[0].endswith(f"{long} end")
    assert " WARNING fog north: a long warning " in lines[0]


def test_the_format_comes_from_the_environment_and_a_bad_one_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv("HIERFL_LOG_FORMAT", "json")
    setup_logging("INFO", stream=out)
    logging.getLogger("hierfl.test").info("hello")
    assert json.loads(out.getvalue())["message"] == "hello"
    with pytest.raises(ConfigError, match="log format 'xml'"):
        setup_logging("INFO", "xml", stream=out)


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fog(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HIERFL_FOG_ID": "north", "HIERFL_SECURITY__SIGNING": "off",
           "HIERFL_MQTT__URL": f"mqtt://127.0.0.1:{_refused_port()}",
           "HIERFL_MQTT__CONNECT_ATTEMPTS": "2", "HIERFL_MQTT__RECONNECT_BASE_S": "0.05",
           "HIERFL_KAFKA__BOOTSTRAP": f"127.0.0.1:{_refused_port()}",
           "HIERFL_KAFKA__CONNECT_ATTEMPTS": "2", "HIERFL_KAFKA__REQUEST_TIMEOUT_MS": "2000",
           "COLUMNS": "80"}
    env.pop("HIERFL_LOG_FORMAT", None)
    return subprocess.run([sys.executable, "-m", "hierfl", "fog", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)


def test_hierfl_fog_log_format_json(tmp_path: Path) -> None:
    done = _fog(tmp_path, "--log-format", "json")
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "unreachable after 2 attempts" in lines[-1]
    records = [json.loads(line) for line in lines[:-1]]  # every other line is JSON
    retry = [r for r in records if r["event"].startswith("%s: cannot connect")]
    assert len(retry) == 1, records
    assert retry[0]["tier"] == "fog" and retry[0]["id"] == "north"
    assert retry[0]["level"] == "WARNING" and "127.0.0.1:" in retry[0]["message"]


def test_hierfl_fog_text_log_is_one_dated_line_per_record(tmp_path: Path) -> None:
    done = _fog(tmp_path)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    retry = [line for line in lines if "cannot connect" in line]
    assert len(retry) == 1, lines
    assert len(retry[0]) > 80 and _DATED.match(retry[0]) and "retrying in" in retry[0]
    assert all(_DATED.match(line) or line.startswith("error: ") for line in lines), lines
