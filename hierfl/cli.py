"""The ``hierfl`` command: run a tier (cloud, fog, edge), a whole federation (sim), brokers.

Logging, signals and exit codes live in :mod:`hierfl.process`. Exit codes of
``hierfl cloud|fog|edge``:
0 done or stopped; 2 invalid configuration (:class:`~hierfl.errors.ConfigError`); 3 a broker
refused us for good (:class:`~hierfl.errors.BrokerRefusedError`: credentials, certificate,
missing topic, or unreachable for ``connect_attempts`` tries); 1 any other hierfl error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hierfl import __version__
from hierfl.errors import ConfigError, HierflError
from hierfl.process import exit_code, fail, fast_exit, fast_exit_requested
from hierfl.process import run_service as _run_service
from hierfl.process import setup_logging as _setup_logging

app = typer.Typer(
    name="hierfl",
    help="Hierarchical federated learning for IoT: edge -> fog (MQTT) -> cloud (Kafka).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal's width
)


def _print_version(value: bool) -> None:
    """``hierfl --version``: print the version and exit."""
    if value:
        typer.echo(f"hierfl {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True,
                     help="Print the hierfl version and exit."),
    ] = False,
) -> None:
    """Hierarchical federated learning for IoT: edge -> fog (MQTT) -> cloud (Kafka)."""


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (HIERFL_* env vars override it)."),
]

LogFormatOpt = Annotated[
    str | None,
    typer.Option("--log-format", metavar="text|json",
                 help="text (dated lines; never wrapped when not on a terminal) or json (one "
                      "object per line: timestamp, level, tier, id, event, message, fields). "
                      "Default: $HIERFL_LOG_FORMAT, else text."),
]


def _serve_tier(tier: str, config: Path | None, log_format: str | None = None) -> None:
    """Load a server tier's settings, build its service and run it."""
    from hierfl._memory import limit_malloc_arenas  # noqa: PLC0415

    limit_malloc_arenas()  # before any worker thread: one arena keeps a gateway's RSS down

    try:
        if tier == "cloud":
            from hierfl.cloud.service import CloudService  # noqa: PLC0415
            from hierfl.config import CloudSettings  # noqa: PLC0415

            cloud_settings = CloudSettings.load(config)
            _setup_logging(cloud_settings.log_level, log_format, tier="cloud", party="cloud")
            service: Any = CloudService(cloud_settings)
        else:
            from hierfl.config import FogSettings  # noqa: PLC0415
            from hierfl.fog.service import FogService  # noqa: PLC0415

            fog_settings = FogSettings.load(config)
            _setup_logging(fog_settings.log_level, log_format, tier="fog",
                           party=fog_settings.fog_id)
            service = FogService(fog_settings)
    except HierflError as exc:
        fail(exc)
        return
    _run_service(service)  # metrics_port: the service serves its endpoints (hierfl/health.py)


@app.command()
def cloud(config: ConfigOpt = None, log_format: LogFormatOpt = None) -> None:
    """Run the cloud aggregator: consume fog aggregates, checkpoint and publish global models."""
    _serve_tier("cloud", config, log_format)


@app.command()
def fog(config: ConfigOpt = None, log_format: LogFormatOpt = None) -> None:
    """Run a fog aggregator: collect edge updates over MQTT, aggregate, forward over Kafka."""
    _serve_tier("fog", config, log_format)


@app.command()
def edge(config: ConfigOpt = None, log_format: LogFormatOpt = None) -> None:
    """Run an edge device: train on local data from the fog's model, publish deltas."""
    try:
        from hierfl.config import EdgeSettings  # noqa: PLC0415
        from hierfl.edge import EdgeClient  # noqa: PLC0415
        from hierfl.edge.client import load_task  # noqa: PLC0415

        settings = EdgeSettings.load(config)
        _setup_logging(settings.log_level, log_format, tier="edge",
                       party=f"{settings.fog_id}/{settings.edge_id}")
        _cwd_importable()
        task = load_task(settings.task, settings.task_options, settings)
        client = EdgeClient(settings, task)
    except HierflError as exc:
        fail(exc)
        return
    _run_service(client)


def _cwd_importable() -> None:
    """Let ``--task module:callable`` name a module in the current directory.

    ``python -m`` puts the current directory on ``sys.path``; the ``hierfl`` console script
    does not. It is appended, so it never shadows an installed module of the same name.
    """
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _build_task(task: str, options: str) -> Any:
    """Import ``task`` and build it with the JSON ``options`` (``hierfl init-model``).

    Raises:
        ConfigError: if the options are not a JSON object, the task cannot be imported, or its
            factory refuses the options (a missing or unknown option, a bad value).
    """
    from hierfl.config import EdgeSettings  # noqa: PLC0415
    from hierfl.edge.client import load_task  # noqa: PLC0415

    try:
        opts = json.loads(options)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--options is not valid JSON ({exc}): {options!r}") from exc
    if not isinstance(opts, dict):
        raise ConfigError(f"--options must be a JSON object, got {options!r}")
    settings = EdgeSettings.load(fog_id="init", edge_id="init", task=task)
    _cwd_importable()
    try:
        return load_task(task, opts, settings)
    except (TypeError, ValueError, KeyError, IndexError, OSError) as exc:
        raise ConfigError(f"task {task!r} refused --options {options}: {exc}") from exc


_WEIGHT_SUFFIXES = (".npz", ".safetensors")


def _write_weights(out: Path, named: dict[str, Any]) -> None:
    """Write ``named`` arrays to exactly ``out`` (.npz or .safetensors, by its suffix).

    Raises:
        ConfigError: if the suffix is neither (the cloud's ``initial_model`` reads only
            these), or the file cannot be written.
    """
    import numpy as np  # noqa: PLC0415

    if out.suffix not in _WEIGHT_SUFFIXES:
        raise ConfigError(f"--out {out}: the file name must end in .npz or .safetensors "
                          "(what the cloud's initial_model reads)")
    try:
        if out.suffix == ".npz":
            with out.open("wb") as f:  # a file object: numpy appends no second .npz
                np.savez(f, **named)
        else:
            from safetensors.numpy import save_file  # noqa: PLC0415

            save_file({k: np.ascontiguousarray(v) for k, v in named.items()}, str(out))
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write it: {exc.strerror or exc}") from exc


@app.command("init-model")
def init_model(
    task: Annotated[str, typer.Option(help="import path 'module:callable' of an EdgeTask "
                                      "factory (modules in the current directory included)")],
    out: Annotated[Path, typer.Option(help="where to write the version-0 weights: a .npz or "
                                      ".safetensors file, written at exactly this path")],
    options: Annotated[str, typer.Option(help="JSON object passed to the task factory")] = "{}",
) -> None:
    """Write a task's freshly built model as the cloud's ``initial_model``.

    Errors (bad ``--options`` JSON, a missing option, an unwritable path) are one line
    ``error: ...`` and exit code 2.
    """
    from hierfl.model.flatten import unflatten  # noqa: PLC0415

    try:
        t = _build_task(task, options)
        try:
            model = t.build_model()
        except (TypeError, ValueError, KeyError, IndexError, OSError) as exc:
            raise ConfigError(f"task {task!r}: build_model failed: {exc}") from exc
        from hierfl.edge.vector import VectorModel  # noqa: PLC0415

        if isinstance(model, VectorModel):
            named = {"weights": model.to_vector()}
        else:
            from hierfl.model.torch_adapter import model_layout, model_to_vector  # noqa: PLC0415

            named = unflatten(model_to_vector(model), model_layout(model))
        _write_weights(out, named)
    except HierflError as exc:
        fail(exc)
        return
    typer.echo(f"wrote {out} ({sum(a.size for a in named.values())} parameters)")


@app.command()
def version() -> None:
    """Print the hierfl version."""
    typer.echo(__version__)


def _register_security() -> None:
    """``hierfl provision`` (startup kits) and ``hierfl audit`` (model lineage)."""
    from hierfl.audit.cli import audit_app  # noqa: PLC0415
    from hierfl.provision.cli import provision_app  # noqa: PLC0415

    app.add_typer(provision_app, name="provision")
    app.add_typer(audit_app, name="audit")


def _register_optional() -> None:
    """Attach commands whose modules need the ``sim`` extra (registered lazily), and
    ``simtest`` (the deterministic simulator; numpy only)."""
    from hierfl.simtest.cli import register as register_simtest  # noqa: PLC0415

    register_simtest(app)
    try:
        from hierfl.sim.cli import register  # noqa: PLC0415
    except ImportError:
        return
    register(app)


def main() -> None:
    """Console-script entry point."""
    _register_security()
    _register_optional()
    try:
        app()
    except HierflError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exit_code(exc))
    except SystemExit as exc:  # how a typer app always ends
        if fast_exit_requested():
            fast_exit(exc.code)
        raise


if __name__ == "__main__":
    main()
