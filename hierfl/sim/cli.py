"""The ``hierfl sim`` command (needs the ``sim`` extra: torch, scikit-learn, matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hierfl.aggregation import AGGREGATORS
from hierfl.process import request_fast_exit

__all__ = ["register"]

# The registry itself, so that --help never misses a rule. (Module level: typer evaluates the
# postponed annotations below in this module's namespace.)
_RULES = ", ".join(AGGREGATORS)

_SECURITY_LINE = {
    "signed": "security: frames signed and verified (keys in {pki}); MQTT and Kafka "
              "plaintext on loopback (--secure adds TLS on MQTT)",
    "secure": "security: frames signed and verified; MQTT over mutual TLS with the provisioned "
              "ACL; Kafka PLAINTEXT (Tansu has no TLS)",
    "insecure": "warning: --insecure: this run is UNSIGNED (security.signing = \"off\"); any "
                "client of the brokers can forge updates and models",
}


def register(app: typer.Typer) -> None:
    """Attach ``sim`` to the main ``hierfl`` app."""

    @app.command()
    def sim(
        scenario: Annotated[
            str, typer.Argument(help="digits (see docs/benchmarks.md) or sensors")
        ] = "digits",
        fogs: Annotated[int, typer.Option(help="number of fog nodes")] = 4,
        edges: Annotated[int, typer.Option(help="number of edge devices")] = 20,
        rounds: Annotated[int, typer.Option(help="cloud rounds (global versions)")] = 30,
        k1: Annotated[int, typer.Option(help="local epochs per fog round")] = 2,
        k2: Annotated[int, typer.Option(help="fog rounds per cloud round")] = 1,
        min_updates: Annotated[
            int | None, typer.Option(help="updates that close a fog round (default: all)")
        ] = None,
        quorum: Annotated[int | None, typer.Option(help="fewest updates at the deadline")] = None,
        round_timeout: Annotated[float, typer.Option(help="fog/cloud round deadline, s")] = 60.0,
        seed: Annotated[int, typer.Option(help="data partition seed")] = 0,
        wide: Annotated[bool, typer.Option(help="digits-20-wide model (1.1 M params)")] = False,
        mode: Annotated[str, typer.Option(help="processes (default) or inprocess")] = "processes",
        mqtt_url: Annotated[str | None, typer.Option(help="use this MQTT broker")] = None,
        kafka_bootstrap: Annotated[str | None, typer.Option(help="use this Kafka")] = None,
        codec: Annotated[
            str,
            typer.Option(help="edge->fog update codec: raw, shuffle (lossless byte planes: "
                         "~13% fewer bytes on the wide model), fp16, int8, topk:fraction=0.02, "
                         "randk:fraction=0.05,scaled=false, "
                         "topk+int8:fraction=0.017,stochastic=false (docs/compression.md)"),
        ] = "raw",
        model_codec: Annotated[
            str, typer.Option(help="fog->edge model codec (deltas against the edges' model)")
        ] = "raw",
        error_feedback: Annotated[
            bool, typer.Option(help="edges carry what a lossy codec dropped into the next update")
        ] = True,
        aggregator: Annotated[
            str,
            typer.Option(help=f"fog aggregation rule: {_RULES} (docs/robustness.md)"),
        ] = "fedavg",
        aggregator_params: Annotated[
            str, typer.Option(help='JSON params of the rule, e.g. {"trim_ratio": 0.2, "nnm_f": 1}')
        ] = "{}",
        attack: Annotated[
            str | None,
            typer.Option(help="Byzantine edges: sign-flip, sign-flip-1, scale, gaussian, alie, "
                         "label-flip, weighting (docs/robustness.md)"),
        ] = None,
        byzantine: Annotated[float, typer.Option(help="fraction of malicious edges")] = 0.0,
        secure: Annotated[
            bool,
            typer.Option("--secure", help="also encrypt MQTT: provision with a CA and run "
                         "mosquitto (required) with mutual TLS and the provisioned ACL; edges "
                         "and fogs connect over mqtts:// with their kits' certificates. Kafka "
                         "stays PLAINTEXT: Tansu has no TLS or SASL (docs/security.md)"),
        ] = False,
        insecure: Annotated[
            bool,
            typer.Option("--insecure", help="turn frame signatures off (security.signing = "
                         "\"off\"): any client of the brokers can forge updates and models"),
        ] = False,
        zygote: Annotated[
            bool,
            typer.Option(help="processes mode: fork the edges from one zygote process that "
                         "imported torch and loaded the data once (fast start, shared memory; "
                         "each edge is still its own process); --no-zygote starts every edge "
                         "as a plain `hierfl edge` process"),
        ] = True,
        federation: Annotated[
            str | None,
            typer.Option(help="federation id (default: a fresh one per run). It is inside "
                         "every frame's compressed body, so two runs give byte-identical "
                         "frames only with the same --federation (docs/benchmarks.md)"),
        ] = None,
        dp: Annotated[
            str,
            typer.Option(help="differential privacy: off, record (DP-SGD at each edge), "
                         "trusted_fog (DP-FedAvg, the fog noises), untrusted_fog (each edge "
                         "adds its noise share) (docs/privacy.md)"),
        ] = "off",
        dp_epsilon: Annotated[
            float | None,
            typer.Option(help="privacy budget: the federation stops before epsilon exceeds it"),
        ] = None,
        dp_delta: Annotated[float, typer.Option(help="delta of (epsilon, delta)")] = 1e-5,
        dp_sigma: Annotated[float, typer.Option(help="noise multiplier sigma")] = 1.0,
        dp_clip: Annotated[float, typer.Option(help="clip norm C")] = 1.0,
        server_opt: Annotated[
            str,
            typer.Option(help="server optimiser at the cloud (FedOpt): none, fedavgm, fedadam, "
                         "fedyogi, fedadagrad (docs/learning.md)"),
        ] = "none",
        server_lr: Annotated[
            float | None, typer.Option(help="server learning rate (default: the optimiser's)")
        ] = None,
        server_momentum: Annotated[
            float | None, typer.Option(help="fedavgm's momentum (default 0.9)")
        ] = None,
        server_beta1: Annotated[float | None, typer.Option(help="FedAdam/Yogi beta1 (0.9)")] = None,
        server_beta2: Annotated[
            float | None, typer.Option(help="FedAdam/Yogi beta2 (0.99)")
        ] = None,
        server_tau: Annotated[
            float | None, typer.Option(help="FedAdam/Yogi adaptivity tau (default: the "
                                       "optimiser's)")
        ] = None,
        fedprox_mu: Annotated[
            float, typer.Option(help="FedProx: weight mu of the edges' proximal term "
                                "mu/2 ||w - w_global||^2 (0: off)")
        ] = 0.0,
        secagg: Annotated[
            bool, typer.Option("--secagg", help="secure aggregation at every fog (SecAgg+): "
                               "a fog learns only its region's sum; its rule is fedavg "
                               "(docs/secure-aggregation.md)")
        ] = False,
        secagg_clip: Annotated[
            float, typer.Option(help="--secagg: the L2 bound edges clip to before masking")
        ] = 10.0,
        scaffold: Annotated[
            bool, typer.Option("--scaffold", help="SCAFFOLD: control variates at the edges, "
                               "fogs and cloud correct the edges' drift (each update and "
                               "global model then also carries a control vector)")
        ] = False,
        personalise: Annotated[
            float | None, typer.Option(help="fog-level personalisation: each fog serves its "
                                       "edges ALPHA * global + (1 - ALPHA) * its region's last "
                                       "model; per-region metrics then evaluate that model")
        ] = None,
        fog_server_opt: Annotated[
            str, typer.Option(help="a server optimiser at every fog for its region, with its "
                              "defaults: none, fedavgm, fedadam, fedyogi, fedadagrad")
        ] = "none",
        aggregation: Annotated[
            str, typer.Option(help="fog aggregation: sync (rounds) or buffered (FedBuff: "
                              "every --buffer-size updates, stale ones weighted down; "
                              "docs/scale.md)"),
        ] = "sync",
        buffer_size: Annotated[
            int | None, typer.Option(help="buffered: updates per fog aggregation (default: "
                                     "3/4 of the fog's edges)"),
        ] = None,
        max_staleness: Annotated[
            int, typer.Option(help="accept updates this many fog models behind")
        ] = 0,
        cloud_buffer: Annotated[
            int, typer.Option(help="buffered cloud: combine every K fog aggregates (0: wait "
                              "for every fog)"),
        ] = 0,
        stragglers: Annotated[
            str | None, typer.Option(help="slow edges FRACTION:SLOWDOWN[:BASE_S], e.g. 0.25:5 "
                                     "(a quarter of the edges 5x slower; every pass takes at "
                                     "least BASE_S, default 0.5 s)"),
        ] = None,
        intermittent: Annotated[
            str | None, typer.Option(help="P[:OFFLINE_S]: each edge is offline OFFLINE_S "
                                     "(default 5) before a pass with probability P"),
        ] = None,
        out: Annotated[Path, typer.Option(help="report directory")] = Path("runs/sim"),
        live: Annotated[bool, typer.Option(help="live progress table")] = True,
    ) -> None:
        """Run a whole hierarchical federation on this machine and report how it learned.

        Starts an MQTT broker (mosquitto, else amqtt) and a Kafka-compatible broker (Tansu)
        on free loopback ports unless --mqtt-url/--kafka-bootstrap are given, runs the
        cloud, the fogs and the edges, prints a live table, and writes report.json and
        report.png to --out. Everything it started is stopped on exit, Ctrl-C included; the
        rounds completed before a Ctrl-C or a stall are kept in a partial report.

        Every run is provisioned (keys and trust files in OUT/pki, as `hierfl provision`
        makes them) and every frame is signed and verified; --secure adds mutual TLS on MQTT,
        --insecure turns signatures off. report.json says which ("security").
        """
        from hierfl.sim.runner import (  # noqa: PLC0415
            SimConfig,
            SimSecurity,
            SimStallError,
            run_sim,
        )
        from hierfl.sim.view import LiveView  # noqa: PLC0415

        if secure and insecure:
            raise typer.BadParameter("--secure and --insecure exclude each other")
        security: SimSecurity = "secure" if secure else "insecure" if insecure else "signed"
        try:
            cfg = SimConfig(
                scenario=scenario, fogs=fogs, edges=edges, rounds=rounds, k1=k1, k2=k2,
                min_updates=min_updates, quorum=quorum, round_timeout_s=round_timeout,
                seed=seed, wide=wide, mode=mode, mqtt_url=mqtt_url,
                kafka_bootstrap=kafka_bootstrap, codec=codec, error_feedback=error_feedback,
                model_codec=model_codec,
                aggregator=aggregator,
                aggregator_params=json.loads(aggregator_params), attack=attack,
                byzantine=byzantine, out=out, live=live, security=security, zygote=zygote,
                federation=federation or "",
                dp=dp, dp_epsilon=dp_epsilon, dp_delta=dp_delta, dp_sigma=dp_sigma,
                dp_clip=dp_clip,
                aggregation=aggregation, buffer_size=buffer_size, max_staleness=max_staleness,
                cloud_buffer=cloud_buffer, stragglers=stragglers, intermittent=intermittent,
                server_opt=server_opt, fedprox_mu=fedprox_mu, scaffold=scaffold,
                personalise=personalise, fog_server_opt=fog_server_opt,
                secagg=secagg, secagg_clip=secagg_clip,
                server_opt_params={k: v for k, v in {
                    "server_lr": server_lr, "momentum": server_momentum, "beta1": server_beta1,
                    "beta2": server_beta2, "tau": server_tau}.items() if v is not None},
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        typer.secho(_SECURITY_LINE[security].format(pki=cfg.out / "pki"),
                    fg="yellow" if insecure else None, err=insecure)
        view = LiveView(cfg, enabled=live)
        # Run from the console script, the process ends without unloading torch, scikit-learn
        # and matplotlib once the command returns (~0.9 s); the sim stops whatever it started
        # itself, before that, on every path.
        request_fast_exit()
        try:
            with view:
                report = run_sim(cfg, on_round=view.on_round, on_start=view.on_start)
        except KeyboardInterrupt as exc:
            typer.echo("interrupted: every process and broker started by the sim was stopped")
            if path := getattr(exc, "report_path", None):
                typer.echo(f"partial report: {path}")
            raise typer.Exit(130) from None
        except SimStallError as exc:
            typer.secho(f"error: {exc}\nlogs: {cfg.out / 'logs'}", fg="red", err=True)
            if exc.report_path:
                typer.secho(f"partial report: {exc.report_path}", err=True)
            raise typer.Exit(3) from None
        view.summary(report)
