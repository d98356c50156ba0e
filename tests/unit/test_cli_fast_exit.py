"""``hierfl sim`` ends its process without the interpreter's module teardown (~0.9 s with
torch, scikit-learn and matplotlib loaded): atexit handlers still run, the exit code and every
printed byte are kept, and only a command that asks for it exits that way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = """
import atexit, sys
from pathlib import Path
import typer
import hierfl.cli as cli
from hierfl.process import request_fast_exit

class Teardown:  # its __del__ runs only when the interpreter unloads this module
    def __del__(self) -> None:
        sys.stderr.write("module teardown")

KEEP = Teardown()
app = typer.Typer()

@app.command()
def go() -> None:
    if {fast!r}:
        request_fast_exit()
    atexit.register(lambda: Path({marker!r}).write_text("ran"))
    print("unterminated line", end="")  # still in stdout's buffer at exit
    raise typer.Exit(5)

cli.app = app
cli._register_security = lambda: None
cli._register_optional = lambda: None
sys.argv = ["hierfl"]
cli.main()
"""


@pytest.mark.parametrize("fast", [True, False])
def test_main_fast_exit_keeps_code_output_and_atexit(tmp_path: Path, fast: bool) -> None:
    marker = tmp_path / "atexit"
    script = _SCRIPT.format(fast=fast, marker=str(marker))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 5, r.stderr
    assert r.stdout == "unterminated line"
    assert marker.read_text() == "ran"
    assert ("module teardown" in r.stderr) is not fast  # the fast way skips only that


def test_fast_exit_with_a_message_prints_it_and_exits_1(tmp_path: Path) -> None:
    script = "from hierfl.process import fast_exit\nfast_exit('error: went wrong')\n"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "error: went wrong"
