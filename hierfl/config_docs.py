"""Generate the settings tables of ``docs/configuration.md`` from the settings classes.

Every table between the markers ``<!-- BEGIN GENERATED: <Class> -->`` and
``<!-- END GENERATED: <Class> -->`` is written from :mod:`hierfl.config`: one row per field,
in declaration order, with its key, environment variable, type, default and the constraints
pydantic enforces (bounds, choices). What introspection cannot see (what a field means,
rules that validators enforce) comes from ``docs/configuration-notes.toml``, one entry per
field::

    [FogSettings.spool_dir]
    allowed = "an existing folder"          # optional: after the enforced bounds
    description = '''Keep accepted updates here ...'''

Fields shared by every tier are looked up under ``[common.<field>]`` when their tier has no
entry; a field without any note uses its ``Field(description=...)``. Sections found on the
tier classes (``mqtt``, ``kafka``, ``limits``, ``security``, ``privacy``, and any added later)
each get a table; one that the document does not have yet is added, with its heading, before
"Using settings from Python".

Usage::

    python -m hierfl.config_docs           # rewrite docs/configuration.md in place
    python -m hierfl.config_docs --check   # exit 1 when the document is out of date

Raises (from :func:`render`): :class:`~hierfl.errors.ConfigError` when a field has no
description anywhere, or a note names a field that no longer exists.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from hierfl import config
from hierfl.errors import ConfigError

__all__ = ["DOC", "NOTES", "TIERS", "main", "render", "sections"]

DOC = Path("docs/configuration.md")
NOTES = Path("docs/configuration-notes.toml")
TIERS: tuple[type[BaseModel], ...] = (config.EdgeSettings, config.FogSettings,
                                      config.CloudSettings)
_COMMON = "common"
_HEADER = ("| Key | Env var | Type | Default | Allowed | Description |\n"
           "|---|---|---|---|---|---|\n")
_BLOCK = re.compile(r"<!-- BEGIN GENERATED: (\w+)[^>]*-->\n.*?<!-- END GENERATED: \1 -->",
                    re.DOTALL)
_ANCHOR = "## Using settings from Python"


def sections() -> dict[str, tuple[type[BaseModel], list[str]]]:
    """Nested sections found on the tier classes: field name -> (class, tiers that have it)."""
    found: dict[str, tuple[type[BaseModel], list[str]]] = {}
    for tier in TIERS:
        for name, info in tier.model_fields.items():
            cls = info.annotation
            if isinstance(cls, type) and issubclass(cls, BaseModel):
                found.setdefault(name, (cls, []))[1].append(getattr(tier, "tier", tier.__name__))
    return found


def _optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return annotation, False


def _type(annotation: Any) -> str:
    base, optional = _optional(annotation)
    origin = typing.get_origin(base)
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path",
             SecretStr: "secret string"}
    if origin is Literal:
        text = "string" if all(isinstance(a, str) for a in typing.get_args(base)) else "value"
    elif origin is list:
        text = f"list of {_type(typing.get_args(base)[0])}"
    elif origin is dict:
        text = "table"
    elif isinstance(base, type) and issubclass(base, BaseModel):
        text = "section"
    else:
        text = names.get(base, getattr(base, "__name__", str(base)))
    return f"{text} (optional)" if optional else text


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value!r}`"


def _enforced(info: FieldInfo) -> str:
    parts = []
    base, _ = _optional(info.annotation)
    if typing.get_origin(base) is Literal:
        parts.append(", ".join(f"`{a}`" for a in typing.get_args(base)))
    ops = {annotated_types.Gt: ("> ", "gt"), annotated_types.Ge: (">= ", "ge"),
           annotated_types.Lt: ("< ", "lt"), annotated_types.Le: ("<= ", "le")}
    for meta in info.metadata:
        for kind, (sign, attr) in ops.items():
            if isinstance(meta, kind):
                parts.append(f"{sign}{getattr(meta, attr)}")
        if isinstance(meta, annotated_types.MinLen) and meta.min_length > 0:
            parts.append("not empty" if meta.min_length == 1 else
                         f"at least {meta.min_length} characters")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text + ("" if not text or text.endswith((".", ")")) else ".")


def _table(cls: type[BaseModel], table: str, notes: dict[str, Any], prefix: str,
           used: set[tuple[str, str]]) -> str:
    rows = [_HEADER]
    own = notes.get(table, {})
    common = notes.get(_COMMON, {}) if cls in TIERS else {}
    for name, info in cls.model_fields.items():
        key = (table, name) if name in own else (_COMMON, name) if name in common else None
        note = (own.get(name) or common.get(name) or {}) if key else {}
        if key:
            used.add(key)
        section = _type(info.annotation) == "section"
        description = note.get("description") or _sentence(info.description or "")
        if section and not description:
            sub = typing.cast("type[BaseModel]", info.annotation)
            description = f"{_sentence((sub.__doc__ or '').split(chr(10))[0])} See `[{name}]`."
        if not description:
            raise ConfigError(f"{table}.{name} has no description: add one to {NOTES} or to "
                              "its Field(description=...)")
        env = f"HIERFL_{prefix}{name.upper()}"
        if section:
            rows.append(f"| `[{name}]` | `{env}__*` | section | | | {_cell(description)} |\n")
            continue
        allowed = "; ".join(p for p in (_enforced(info), note.get("allowed", "")) if p)
        rows.append(f"| `{name}` | `{env}` | {_type(info.annotation)} | {_default(info)} | "
                    f"{_cell(allowed)} | {_cell(description)} |\n")
    return "".join(rows)


def _block(name: str, table: str) -> str:
    return (f"<!-- BEGIN GENERATED: {name} (python -m hierfl.config_docs; edit "
            f"{NOTES.as_posix()}, not this table) -->\n{table}<!-- END GENERATED: {name} -->")


def render(doc: str, notes: dict[str, Any]) -> str:
    """``doc`` with every generated table rewritten (and missing section tables added).

    Args:
        doc: the text of docs/configuration.md.
        notes: the parsed docs/configuration-notes.toml.

    Returns:
        The new text; equal to ``doc`` when it is up to date.

    Raises:
        ConfigError: a field has no description, or a note names no field.
    """
    used: set[tuple[str, str]] = set()
    tables = {tier.__name__: _table(tier, tier.__name__, notes, "", used) for tier in TIERS}
    found = sections()
    for field, (cls, _) in found.items():
        tables[cls.__name__] = _table(cls, cls.__name__, notes, f"{field.upper()}__", used)
    stale = sorted(f"{t}.{f}" for t, fields in notes.items() for f in fields
                   if (t, f) not in used)
    if stale:
        raise ConfigError(f"{NOTES} describes fields that do not exist: {', '.join(stale)}")

    present = set()

    def replace(m: re.Match[str]) -> str:
        present.add(m.group(1))
        if m.group(1) not in tables:
            raise ConfigError(f"{DOC}: a generated table for unknown settings {m.group(1)}")
        return _block(m.group(1), tables[m.group(1)])

    out = _BLOCK.sub(replace, doc)
    added = []
    for field, (cls, tiers) in found.items():
        if cls.__name__ in present:
            continue
        who = "every tier" if len(tiers) == len(TIERS) else ", ".join(tiers)
        intro = _sentence((cls.__doc__ or "").strip().split("\n\n")[0])
        added.append(f"## `[{field}]`: `{cls.__name__}` ({who})\n\n{intro}\n\n"
                     f"{_block(cls.__name__, tables[cls.__name__])}\n\n")
    missing = [t.__name__ for t in TIERS if t.__name__ not in present]
    if missing:
        raise ConfigError(f"{DOC} has no generated table for {', '.join(missing)}")
    if added:
        if _ANCHOR not in out:
            raise ConfigError(f"{DOC}: no '{_ANCHOR}' heading to add new sections before")
        out = out.replace(_ANCHOR, "".join(added) + _ANCHOR, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Rewrite the tables (or, with ``--check``, report whether they are up to date)."""
    p = argparse.ArgumentParser(prog="python -m hierfl.config_docs", description=__doc__
                                .split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the document is out of date")
    p.add_argument("--root", type=Path, default=Path(), help="repository root (default: .)")
    args = p.parse_args(argv)
    doc_path, notes_path = args.root / DOC, args.root / NOTES
    doc = doc_path.read_text(encoding="utf-8")
    try:
        new = render(doc, tomllib.loads(notes_path.read_text(encoding="utf-8")))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if new == doc:
        return 0
    if args.check:
        print(f"{doc_path} is out of date with hierfl/config.py: run python -m "
              "hierfl.config_docs", file=sys.stderr)
        return 1
    doc_path.write_text(new, encoding="utf-8")
    print(f"rewrote {doc_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
