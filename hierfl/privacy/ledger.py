"""The persisted privacy ledger of one population (a fog's region, an edge's own data).

A JSON file written atomically (temporary file, fsync, rename, fsync of the folder): a restart
reads it back and never resets spent budget. Releases are counted per parameter set
``(noise_multiplier, sample_rate)``: an operator who changes sigma between restarts keeps the
releases already made, and the epsilon composes all of them. A ledger file that cannot be
read or does not hold what a ledger holds raises :class:`LedgerCorruptError`: never a silent
reset (an operator must look at it, and delete it only knowing what that means).

File format (``version`` 1)::

    {"version": 1, "population": "fog-a", "delta": 1e-05, "method": "rdp",
     "groups": [{"noise_multiplier": 1.1, "sample_rate": 1.0, "releases": 12}],
     "epsilon": 3.91, "updated_at": 1796000000.0}

``epsilon`` is informative (recomputed on load from the groups). A group of fixed-size sampling
(m of N without replacement) also holds ``"fixed_from": N``; Poisson and fixed-size groups cannot
be composed into one epsilon (their neighbouring relations differ), so a ledger refuses to mix
them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from hierfl.errors import ConfigError, StoreError
from hierfl.privacy.accountant import Method, check_params, epsilon_composed

__all__ = ["LEDGER_FILE", "LedgerCorruptError", "PrivacyLedger", "write_json_atomic"]

LEDGER_FILE = "privacy-ledger.json"
_FORMAT = 1


class LedgerCorruptError(StoreError):
    """The privacy ledger on disk is unreadable or malformed (never silently reset)."""

    reason = "privacy.ledger"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a temporary file in the same folder,
    fsync, rename over ``path``, fsync of the folder (a crash leaves the old or the new file).

    Raises:
        StoreError: the file cannot be written.
    """
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ledger-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
    except OSError as exc:
        raise StoreError(f"privacy ledger {path} cannot be written: {exc}") from exc


class PrivacyLedger:
    """Releases made so far for one population, persisted in ``path`` (or in memory).

    Args:
        path: the JSON file (its folder is created); None keeps the ledger in memory only.
        population: what the ledger accounts for (a fog id, an edge id); checked on load.
        noise_multiplier: sigma of the releases made from now on.
        sample_rate: q of the releases made from now on.
        delta: the delta epsilon is reported at.
        method: "rdp" or "pld".

    Raises:
        ConfigError: for nonsense parameters.
        LedgerCorruptError: when ``path`` exists and is not a ledger of ``population``.
    """

    def __init__(self, path: Path | None, *, population: str, noise_multiplier: float,
                 sample_rate: float, delta: float, method: Method = "rdp",
                 fixed_from: int = 0) -> None:
        check_params(noise_multiplier=noise_multiplier, sample_rate=sample_rate, delta=delta,
                     method=method)
        self.path = path
        self.population = population
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.method: Method = method
        #: N > 0: each release samples exactly round(q N) of N without replacement
        self.fixed_from = int(fixed_from)
        # [sigma, q, releases, fixed_from]; the last group is the current parameter set
        self._groups: list[list[Any]] = []
        if path is not None and path.exists():
            self._load(path)
        current = [self.noise_multiplier, self.sample_rate]
        if not self._groups or [*self._groups[-1][:2], self._groups[-1][3]] != [
                *current, self.fixed_from]:
            self._groups.append([*current, 0, self.fixed_from])
        last = len(self._groups) - 1
        kinds = {bool(g[3]) and g[1] < 1.0 for i, g in enumerate(self._groups)
                 if g[2] > 0 or i == last}
        if len(kinds) > 1:
            raise ConfigError(
                f"privacy: the ledger of {population} holds releases with "
                f"{'fixed-size' if self._groups[0][3] else 'Poisson'} sampling; releases with "
                "Poisson and with fixed-size sampling cannot be composed into one epsilon "
                "(add-or-remove vs replace-one): keep the ledger's sampling"
            )

    # --- queries ------------------------------------------------------------------------

    @property
    def releases(self) -> int:
        """Every release accounted, whatever its parameters."""
        return sum(int(g[2]) for g in self._groups)

    def epsilon(self, extra: int = 0) -> float:
        """Epsilon at ``delta`` after the releases so far plus ``extra`` more (current
        parameters)."""
        groups = [(float(s), float(q), int(n), int(f)) for s, q, n, f in self._groups]
        s, q, n, f = groups[-1]
        groups[-1] = (s, q, n + extra, f)
        return epsilon_composed(groups, delta=self.delta, method=self.method)

    def would_exceed(self, target_epsilon: float | None, n: int = 1) -> bool:
        """Whether ``n`` more releases would take epsilon above ``target_epsilon``
        (None: no budget, never)."""
        if target_epsilon is None:
            return False
        return self.epsilon(n) > target_epsilon

    def summary(self) -> dict[str, float]:
        """The figures a model's metadata records: sigma, q, releases, epsilon, delta."""
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "releases": float(self.releases), "epsilon": self.epsilon(),
                "delta": self.delta}

    # --- changes ------------------------------------------------------------------------

    def spend(self, n: int = 1) -> float:
        """Account ``n`` releases and persist the ledger (before the release leaves).

        Returns:
            The new epsilon.

        Raises:
            StoreError: the ledger cannot be written (the release must not go out then).
        """
        self._groups[-1][2] = int(self._groups[-1][2]) + n
        eps = self.epsilon()
        self._save(eps)
        return eps

    # --- disk ---------------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerCorruptError(
                f"privacy ledger {path} cannot be read ({exc}); it holds the spent budget and "
                "is never reset silently: restore it, or delete it knowingly"
            ) from exc
        try:
            if not isinstance(data, dict) or data.get("version") != _FORMAT:
                raise ValueError(f"not a version-{_FORMAT} ledger")
            if data.get("population") != self.population:
                raise ValueError(f"it is the ledger of {data.get('population')!r}, "
                                 f"not of {self.population!r}")
            groups = data["groups"]
            if not isinstance(groups, list) or not groups:
                raise ValueError("no release groups")
            parsed: list[list[Any]] = []
            for g in groups:
                s, q, n = float(g["noise_multiplier"]), float(g["sample_rate"]), g["releases"]
                f = g.get("fixed_from", 0)
                if (not isinstance(n, int) or isinstance(n, bool) or n < 0
                        or not isinstance(f, int) or f < 0
                        or not (math.isfinite(s) and s > 0) or not 0 < q <= 1):
                    raise ValueError(f"bad release group {g!r}")
                parsed.append([s, q, n, f])
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerCorruptError(
                f"privacy ledger {path} is malformed ({exc}); it is never reset silently: "
                "restore it, or delete it knowingly"
            ) from exc
        self._groups = parsed

    def _save(self, eps: float) -> None:
        if self.path is None:
            return
        data = {
            "version": _FORMAT, "population": self.population, "delta": self.delta,
            "method": self.method,
            "groups": [{"noise_multiplier": s, "sample_rate": q, "releases": int(n),
                        **({"fixed_from": int(f)} if f else {})}
                       for s, q, n, f in self._groups],
            "epsilon": eps if math.isfinite(eps) else None, "updated_at": time.time(),
        }
        write_json_atomic(self.path, data)
