"""docs/configuration.md's settings tables match the settings classes (hierfl/config.py):
regenerating them (``python -m hierfl.config_docs``) changes nothing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from hierfl import config_docs
from hierfl.config import CloudSettings, EdgeSettings, FogSettings
from hierfl.config_docs import render, sections
from hierfl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / config_docs.DOC).read_text(encoding="utf-8")
NOTES = tomllib.loads((ROOT / config_docs.NOTES).read_text(encoding="utf-8"))


def test_the_document_is_up_to_date_with_the_settings_classes() -> None:
    assert render(DOC, NOTES) == DOC, (
        "docs/configuration.md is out of date with hierfl/config.py: run "
        "`python -m hierfl.config_docs` (and describe new fields in "
        "docs/configuration-notes.toml)")


def test_every_field_of_every_settings_class_has_a_row() -> None:
    classes: list[tuple[type[BaseModel], str]] = [
        (EdgeSettings, ""), (FogSettings, ""), (CloudSettings, "")]
    classes += [(cls, f"{name.upper()}__") for name, (cls, _) in sections().items()]
    assert {"mqtt", "kafka", "limits", "security"} <= set(sections())
    for cls, prefix in classes:
        for name in cls.model_fields:
            assert f"`HIERFL_{prefix}{name.upper()}" in DOC, f"{cls.__name__}.{name} missing"
    for field in ("adaptive_norm_multiplier", "max_staleness", "spool_dir"):
        assert f"| `{field}` | `HIERFL_{field.upper()}` |" in DOC


def test_a_stale_table_is_detected_and_rewritten() -> None:
    row = next(line for line in DOC.splitlines() if line.startswith("| `max_staleness` |"))
    stale = DOC.replace(row + "\n", "").replace("| `k2` | `HIERFL_K2` | integer | `1` |",
                                                 "| `k2` | `HIERFL_K2` | integer | `7` |")
    assert stale != DOC
    assert render(stale, NOTES) == DOC


def test_a_note_for_a_field_that_does_not_exist_is_refused() -> None:
    notes = {**NOTES, "FogSettings": {**NOTES["FogSettings"],
                                      "no_such_field": {"description": "gone"}}}
    with pytest.raises(ConfigError, match=r"FogSettings\.no_such_field"):
        render(DOC, notes)


def test_a_new_section_gets_its_own_table(monkeypatch: pytest.MonkeyPatch) -> None:
    class WidgetSettings(BaseModel):
        """Widgets of a tier."""

        size: int = Field(3, ge=1, le=9, description="how many widgets")

    real = sections()
    monkeypatch.setattr(config_docs, "sections", lambda: {
        **real, "widget": (WidgetSettings, ["fog"])})
    out = render(DOC, NOTES)
    assert "## `[widget]`: `WidgetSettings` (fog)\n\nWidgets of a tier.\n" in out
    assert ("| `size` | `HIERFL_WIDGET__SIZE` | integer | `3` | >= 1, <= 9 | how many widgets. |"
            in out)
    assert out.index("`WidgetSettings`") < out.index("## Using settings from Python")


def test_a_field_without_any_description_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bare(BaseModel):
        """Bare."""

        x: int = 1

    monkeypatch.setattr(config_docs, "sections", lambda: {"bare": (Bare, ["edge"])})
    with pytest.raises(ConfigError, match=r"Bare\.x has no description"):
        render(DOC, NOTES)
