"""A mosquitto of a test's own, started from a config the test writes (password files, TLS
listeners): the session's shared broker cannot be reconfigured. Stopped by PID on exit."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@contextlib.contextmanager
def own_mosquitto(folder: Path, conf: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run mosquitto with ``conf`` (which must listen on 127.0.0.1:``port``) until the block
    ends; return once the port accepts connections."""
    path = folder / "mosquitto.conf"
    path.write_text(conf)
    log_path = folder / "mosquitto.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(path)], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"mosquitto exited: {log_path.read_text()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
