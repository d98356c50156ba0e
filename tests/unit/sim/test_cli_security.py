"""`hierfl sim --help` documents --secure and --insecure, and the two exclude each other."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from hierfl.cli import _register_optional, app

if not any(c.name == "sim" or getattr(c.callback, "__name__", "") == "sim"
           for c in app.registered_commands):
    _register_optional()  # as main() does: sim is the `sim` extra's command


def test_sim_help_explains_secure_and_insecure() -> None:
    result = CliRunner().invoke(app, ["sim", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = re.sub(r"[\s│]+", " ", result.output)
    assert "--secure" in text and "--insecure" in text
    assert "mutual TLS" in text
    assert "Kafka stays PLAINTEXT: Tansu has no TLS or SASL" in text
    assert "every frame is signed and verified" in text


def test_secure_and_insecure_exclude_each_other(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["sim", "--secure", "--insecure", "--out", str(tmp_path), "--no-live"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 2
    assert "exclude each other" in result.output
    assert not any(tmp_path.iterdir())  # nothing was started or written
