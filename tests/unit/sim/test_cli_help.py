"""`--help` is documentation: it names every choice the code accepts."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from hierfl.aggregation import AGGREGATORS
from hierfl.cli import _register_optional, app
from hierfl.sim.attacks import ATTACKS

if not any(c.name == "sim" or getattr(c.callback, "__name__", "") == "sim"
           for c in app.registered_commands):
    _register_optional()  # as main() does: sim is the `sim` extra's command


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return re.sub(r"[\s│]+", " ", result.output)  # panel borders and wrapping away


def test_sim_help_lists_every_aggregator_attack_and_codec() -> None:
    text = _help("sim")
    for name in AGGREGATORS:
        assert name in text, name
    for name in (*ATTACKS, "label-flip"):
        assert name in text, name
    for codec in ("raw", "fp16", "int8", "topk:fraction=", "randk:fraction=", "topk+int8"):
        assert codec in text, codec
    # the docstring reflows as one paragraph (markdown mode), not the source's line breaks
    assert "Kafka-compatible broker (Tansu) on free loopback ports" in text


def test_every_command_has_help() -> None:
    text = _help()
    for command in ("cloud", "fog", "edge", "init-model", "sim", "version"):
        assert command in text
        if command != "version":
            assert "Usage:" in _help(command)
