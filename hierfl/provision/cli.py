"""``hierfl provision init|add-edge|revoke``: the typer app (registered by ``hierfl.cli``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from hierfl.errors import HierflError
from hierfl.provision.project import load_project
from hierfl.provision.provisioner import add_edge, provision, revoke

__all__ = ["provision_app"]

provision_app = typer.Typer(
    name="provision",
    help="Make startup kits: a federation CA, certificates, signing keys, trust files, ACLs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="the provisioned folder")]
T = TypeVar("T")


def _guard(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except HierflError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(code=2) from None


@provision_app.command("init")
def init_cmd(
    project: Annotated[Path, typer.Option("--project", "-p", help="the project file (TOML)")],
    out: OutOpt,
    force: Annotated[bool, typer.Option("--force", help="replace a provisioned folder")] = False,
    tls: Annotated[
        bool, typer.Option("--tls/--no-tls", help="also make the CA, certificates and broker files")
    ] = True,
) -> None:
    """Provision a federation from a project file into OUT (one kit per party)."""
    started = time.perf_counter()
    spec = _guard(lambda: load_project(project))
    prov = _guard(lambda: provision(spec, out, tls=tls, force=force))
    edges = sum(len(e) for e in spec.fogs.values())
    typer.echo(
        f"provisioned federation {spec.federation!r}: 1 cloud, {len(spec.fogs)} fogs, "
        f"{edges} edges in {time.perf_counter() - started:.1f} s"
    )
    typer.echo(f"  kits:          {prov.kits_dir}/")
    typer.echo(f"  trust bundle:  {prov.trust_bundle}")
    if tls:
        typer.echo(f"  CA (keep private, never ship): {prov.ca_dir}/")
        typer.echo(f"  mosquitto:     {prov.mosquitto_dir}/mosquitto.conf")
        typer.echo(f"  kafka:         {prov.kafka_dir}/ (acls.sh, scram-users.sh)")


@provision_app.command("add-edge")
def add_edge_cmd(
    out: OutOpt,
    fog: Annotated[str, typer.Option("--fog", help="the fog the edge joins")],
    edge: Annotated[str, typer.Option("--edge", help="the new edge id")],
) -> None:
    """Enroll one more edge: new keys and kit; trust.json and the mosquitto ACL updated."""
    prov = _guard(lambda: add_edge(out, fog, edge))
    typer.echo(f"enrolled edge/{fog}/{edge}: kit {prov.edge_kit(fog, edge)}")
    if prov.tls:
        typer.echo(f"reload mosquitto (kill -HUP) to apply {prov.mosquitto_dir / 'acl'}")


@provision_app.command("revoke")
def revoke_cmd(
    out: OutOpt,
    party: Annotated[str, typer.Argument(help="cloud, fog/<F> or edge/<F>/<E>")],
    reason: Annotated[str, typer.Option("--reason", help="recorded in revoked.json")] = "",
) -> None:
    """Revoke a party: every revoked.json copy, the mosquitto ACL and Kafka ACLs updated."""
    done = _guard(lambda: revoke(out, party, reason=reason))
    typer.echo(f"revoked {party}" if done else f"{party} was revoked already")
