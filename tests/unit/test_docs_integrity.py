"""The docs do not drift: no merge-conflict markers, every relative link resolves to a file in
the repository (and, for a Markdown target, to one of its headings), and nothing cites a file
outside the repository."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _doc_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(ROOT.glob("*/README.md")),
             *sorted((ROOT / "docs").rglob("*.md"))]
    # tool caches and virtual environments (.pytest_cache/README.md, .venv*) are not docs
    return [f for f in files if f.is_file()
            and not any(part.startswith(".") for part in f.relative_to(ROOT).parts)]


DOCS = _doc_files()
_MARKER = re.compile(r"^(<{7}( |$)|={7}$|>{7}( |$)|\|{7}( |$))", re.MULTILINE)
# [text](target) and [text]: target; images too. Skips code spans and fenced code blocks.
_INLINE = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = _slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return out


def _links(path: Path) -> list[str]:
    text = _prose(path.read_text(encoding="utf-8"))
    return _INLINE.findall(text) + _REFDEF.findall(text)


def _relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)  # http:, https:, mailto: ...


def test_the_doc_set_is_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/wire-format.md", "docs/configuration.md",
            "docs/scenarios.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_merge_conflict_markers(path: Path) -> None:
    hits = [m.group(0) for m in _MARKER.finditer(path.read_text(encoding="utf-8"))]
    assert not hits, f"{path.relative_to(ROOT)}: unresolved merge-conflict markers {hits}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve_inside_the_repository(path: Path) -> None:
    broken = []
    for target in _links(path):
        if not _relative(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


_OUTSIDE = re.compile(r"\.\./shared|PERF-NOTES\.md|(?<![\w/-])scenario\.md")


def test_nothing_cites_files_outside_the_repository() -> None:
    checked = [*DOCS, *sorted((ROOT / "hierfl").rglob("*.py")),
               *sorted(p for d in ("brokers", "compose", "benchmarks", "edge", "fog", "cloud")
                       for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in
                       (".md", ".py", ".conf", ".toml", ".yml", ".yaml", ".sh", ""))]
    hits = [f"{p.relative_to(ROOT)}:{n}"
            for p in checked
            for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace")
                                     .splitlines(), 1)
            if _OUTSIDE.search(line)]
    assert not hits, f"references to files outside the repository: {hits}"


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """The detectors themselves: a marker, a dead link and a dead anchor are all found."""
    doc = tmp_path / "d.md"
    doc.write_text("# Title `x`\n\n<<<<<<< HEAD\na\n=======\nb\n>>>>>>> other\n"
                   "[ok](#title-x) [dead](nope.md) `[code](skipped.md)` [web](https://x.y)\n")
    assert len(_MARKER.findall(doc.read_text())) == 3
    assert _links(doc) == ["#title-x", "nope.md", "https://x.y"]
    assert _anchors(doc) == {"title-x"}
    assert _slug("Meta section (format version 3)") == "meta-section-format-version-3"
    assert _slug("Model delta frame (fog -> edges, format version 2)") == \
        "model-delta-frame-fog---edges-format-version-2"  # GitHub: "->" drops ">"
