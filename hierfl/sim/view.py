"""The sim's live terminal view (rich) and its closing summary."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from hierfl.sim.observer import RoundRecord

__all__ = ["LiveView"]


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _worst(r: RoundRecord) -> str:
    """The lowest per-region accuracy of a round and its fog ("-" without regions)."""
    regions = getattr(r, "regions", None)
    if not regions:
        return "-"
    fog = min(regions, key=lambda f: regions[f]["accuracy"])
    return f"{regions[fog]['accuracy']:.4f} {fog}"


class LiveView:
    """A table with one row per cloud round, refreshed as rounds complete."""

    def __init__(self, cfg: Any, *, enabled: bool = True) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.console = Console()
        self.rows: list[RoundRecord] = []
        self._live: Live | None = None

    def _table(self) -> Table:
        c = self.cfg
        t = Table(title=f"hierfl sim: {c.scenario}{' (wide)' if c.wide else ''} | {c.fogs} fogs, "
                  f"{c.edges} edges, k1={c.k1}, k2={c.k2}, {c.mode}")
        dp = getattr(c, "dp", "off") != "off"
        cols = ["round", "accuracy", "worst region", "loss", "round s", "edges/fog", "up MB",
                "fog->cloud MB", "down MB", "rejected"]
        if dp:
            cols.insert(4, "epsilon")
        for col in cols:
            t.add_column(col, justify="right")
        for r in self.rows[-25:]:
            cells = [
                f"{r.round}/{c.rounds}", f"{r.accuracy:.4f}", _worst(r), f"{r.loss:.4f}",
                f"{r.wall_s:.2f}",
                " ".join(str(n) for _, n in sorted(r.fogs.items())), _mb(r.edge_fog_bytes),
                _mb(r.fog_cloud_bytes), _mb(r.cloud_edge_bytes),
                ", ".join(f"{k}={v}" for k, v in r.rejected.items()) or "0",
            ]
            if dp:
                cells.insert(4, "-" if r.epsilon is None else f"{r.epsilon:.3f}")
            t.add_row(*cells)
        return t

    def __enter__(self) -> LiveView:
        if self.enabled:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(et, e, tb)

    def on_start(self, info: dict[str, str]) -> None:
        """Brokers are up."""
        for k, v in info.items():
            self.console.print(f"[dim]{k} broker: {v}[/dim]")

    def on_round(self, rec: RoundRecord) -> None:
        """A round completed."""
        self.rows.append(rec)
        if self._live is not None:
            self._live.update(self._table())
        elif not self.enabled:
            self.console.print(f"round {rec.round}: accuracy {rec.accuracy:.4f} "
                               f"({rec.wall_s:.2f}s)")

    def summary(self, report: dict[str, Any]) -> None:
        """Print the closing lines: final accuracy and where the report went."""
        tot = report["totals"]
        if self._live is not None and not self.console.is_terminal:
            self.console.print()  # a Live table written to a pipe ends without a newline
        self.console.print(
            f"[bold]final accuracy {report['final_accuracy']:.4f}[/bold] after {tot['rounds']} "
            f"rounds in {tot['wall_s']:.1f}s (median round {tot['median_round_s']:.3f}s)"
        )
        regions = report.get("regions")
        if regions:  # fairness across regions (docs/learning.md)
            self.console.print(
                "regions: " + ", ".join(f"{f} {m['accuracy']:.4f}"
                                        for f, m in sorted(regions["final"].items()))
                + f" (worst {regions['worst_region']}, spread {regions['spread']:.4f})"
            )
        priv = report.get("privacy")
        if priv is not None:
            eps = priv["epsilon"]
            self.console.print(
                f"privacy ({priv['mode']}): epsilon {'-' if eps is None else f'{eps:.3f}'} at "
                f"delta {priv['delta']:g}"
                + (f", target {priv['target_epsilon']:g}" if priv["target_epsilon"] else "")
                + (f"; {report['stopped']}" if report.get("stopped") else "")
            )
        self.console.print(f"report: {report['report_path']}")
        if report.get("plot_path"):
            self.console.print(f"plot:   {report['plot_path']}")
