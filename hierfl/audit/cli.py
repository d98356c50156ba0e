"""``hierfl audit``: verify a model store's lineage and show who contributed to a version.

Exit codes: 0 when every version verifies, 1 when one does not (the first bad version is
named), 2 for a missing store, version or trust bundle.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from hierfl.errors import ConfigError, HierflError, StoreError
from hierfl.model.lineage import verify_store
from hierfl.model.store import ModelStore, record_hash
from hierfl.security.trust import TrustStore

__all__ = ["audit_app", "describe_version"]

audit_app = typer.Typer(
    name="audit",
    help="Verify the lineage of a model store: hashes, the record chain and signatures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _fail(exc: HierflError) -> NoReturn:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(code=2)


def _bundle_federation(path: Path) -> str:
    """The federation a trust bundle names (so ``--federation`` may be left out)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"trust bundle {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"trust bundle {path} is not valid JSON: {exc}") from exc
    fed = data.get("federation") if isinstance(data, dict) else None
    if not isinstance(fed, str):
        raise ConfigError(f"trust bundle {path} names no federation")
    return fed


def _load_trust(trust: Path, federation: str | None, revoked: Path | None) -> TrustStore:
    fed = federation if federation is not None else _bundle_federation(trust)
    return TrustStore(trust, fed, revoked=revoked)


@audit_app.command("verify")
def verify(
    store_dir: Annotated[Path, typer.Argument(help="The cloud's model store directory.")],
    trust: Annotated[
        Path | None,
        typer.Option(
            help="Trust bundle (trust.json); without it only hashes and the chain are checked."
        ),
    ] = None,
    federation: Annotated[
        str | None, typer.Option(help="Federation id (default: the trust bundle's).")
    ] = None,
    revoked: Annotated[
        Path | None,
        typer.Option(
            help="Revocation list (revoked.json): revoked signers are marked; their "
            "past signatures still verify."
        ),
    ] = None,
) -> None:
    """Check every version of STORE_DIR, oldest first; print one line per version.

    Exits 0 when all verify, 1 naming the first bad version and why, 2 for a missing store
    or bundle.
    """
    try:
        if not store_dir.is_dir():
            raise StoreError(f"model store {store_dir} does not exist")
        bundle = _load_trust(trust, federation, revoked) if trust is not None else None
        report = verify_store(store_dir, bundle, federation)
    except HierflError as exc:
        _fail(exc)
    if not report.versions:
        typer.secho(f"error: model store {store_dir} holds no versions", fg="red", err=True)
        raise typer.Exit(code=2)
    for v in report.versions:
        typer.echo(v.line())
    bad = report.first_bad
    if bad is not None:
        typer.secho(f"FAILED: v{bad.version}: {bad.reason}", fg="red", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"all {len(report.versions)} versions verify")


def _when(ts: Any) -> str | None:
    if not isinstance(ts, int | float):
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def describe_version(record: dict[str, Any]) -> dict[str, Any]:
    """Who contributed to a version, from its record: fogs, signers, counters, edge updates.

    Args:
        record: a version's record as stored (see :mod:`hierfl.model.store`).

    Returns:
        A JSON-friendly summary.
    """
    lineage = record.get("lineage") or {}
    fogs_meta = record.get("fogs") if isinstance(record.get("fogs"), dict) else {}
    aggregates = []
    for agg in lineage.get("aggregates", []):
        sig = agg.get("sig") or {}
        meta = fogs_meta.get(agg.get("fog"), {}) if fogs_meta else {}
        aggregates.append(
            {
                "fog": agg.get("fog"),
                "signer": sig.get("signer"),
                "counter": sig.get("ctr"),
                "base": sig.get("base"),
                "fog_rounds": sig.get("seq", meta.get("fog_rounds")),
                "hash": sig.get("h"),
                "num_samples": meta.get("num_samples"),
                "edges": [
                    {
                        "edge": e.get("edge"),
                        "counter": e.get("ctr"),
                        "base": e.get("base"),
                        "seq": e.get("seq"),
                        "hash": e.get("h"),
                    }
                    for e in agg.get("edges", [])
                ],
            }
        )
    return {
        "version": record.get("version"),
        "created_at": _when(record.get("created_at")),
        "sha256": record.get("sha256"),
        "record_hash": record.get("record_hash"),
        "record_hash_ok": "record_hash" in record and record_hash(record) == record["record_hash"],
        "parent_sha256": record.get("parent_sha256"),
        "parent_record": record.get("parent_record"),
        "aggregator": record.get("aggregator"),
        "num_samples": record.get("num_samples"),
        "signed": bool(lineage.get("signed")),
        "aggregates": aggregates,
    }


def _print_description(d: dict[str, Any]) -> None:
    typer.echo(f"v{d['version']}  created {d['created_at'] or 'unknown'}")
    typer.echo(f"  weights sha256  {d['sha256']}")
    typer.echo(
        f"  record hash     {d['record_hash']}"
        f"{'' if d['record_hash_ok'] else '  (DOES NOT MATCH the record)'}"
    )
    typer.echo(f"  parent sha256   {d['parent_sha256']}")
    typer.echo(f"  parent record   {d['parent_record']}")
    if d["aggregator"] is not None:
        typer.echo(f"  aggregator      {d['aggregator']}")
    typer.echo(f"  {len(d['aggregates'])} aggregates, {'signed' if d['signed'] else 'unsigned'}")
    for a in d["aggregates"]:
        typer.echo(
            f"  fog {a['fog']}: signer {a['signer']}, counter {a['counter']}, base "
            f"v{a['base']}, fog rounds {a['fog_rounds']}, samples {a['num_samples']}"
        )
        for e in a["edges"]:
            typer.echo(f"    edge {e['edge']}: counter {e['counter']}, update {e['hash']}")


@audit_app.command("show")
def show(
    version: Annotated[int, typer.Argument(help="The model version.")],
    store: Annotated[Path, typer.Option(help="The cloud's model store directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show who contributed to VERSION: fogs, signers, counters, edge updates, parent."""
    try:
        record = ModelStore(store, create=False).read_record(version)
    except HierflError as exc:
        _fail(exc)
    d = describe_version(record)
    if as_json:
        typer.echo(json.dumps(d, indent=2, sort_keys=True))
    else:
        _print_description(d)
