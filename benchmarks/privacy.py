"""Differential privacy in hierfl: accuracy against epsilon, Flower beside it, attacks, overhead.

Four measurements, each printed as JSON lines (and appended to
``benchmarks/results/privacy-<date>.jsonl`` unless ``--quick`` without ``--out``):

(a) **Accuracy against epsilon** in {1, 3, 8} at delta = 1e-5, beside the non-private run:

    * ``record``: record-level DP-SGD at each edge (:class:`hierfl.privacy.dpsgd.DPSGDTask`) on
      the digits-20 scenario (20 edges, 30 rounds, 2 local epochs, batch 16, lr 0.05: as
      ``hierfl.sim.scenarios.digits_task``), flat FedAvg. Each edge's sigma is calibrated with
      the accountant so that its planned steps (rounds x epochs x ceil(n / 16)) end exactly at
      the target: a record lives on one edge only, so the federation's record-level epsilon is
      the largest edge's (parallel composition over disjoint data).
    * ``record-small``: the same with only each edge's first 10 records and 40 local epochs
      per round, a model that overfits its 200 training records: where a membership-inference
      attack finds something without DP.
    * ``sim``: the same through ``hierfl sim digits --fogs 4 --edges 20 --dp record``
      (in-process mode: real brokers, signed frames, fogs and cloud), with one sigma for every
      edge (``hierfl sim`` takes one): the largest per-edge calibrated sigma.
    * ``device``: device-level DP-FedAvg with a trusted fog on the ``sensors`` population of
      1,000 edges (each a sensor with 40-160 readings, four districts), flat (one fog, k2 = 1)
      and hierarchical (four fogs of 250 edges, k2 = 2); Poisson sampling of edges per fog
      round, the fog's :class:`hierfl.privacy.wrappers.DPAggregator` around ``FedAvg`` (clip
      every update to C again, noise N(0, (sigma C)^2) on the sum, fixed denominator
      ``q * N``), one release per fog round per region (:class:`Accountant` with ``q``),
      sigma calibrated so that the planned releases end at the target.

    The device-level protocol runs in one process here: ``hierfl sim`` starts every edge as an
    asyncio task or process with its own MQTT session, and 1,000 of them on a 2-core machine
    would measure the machine, not DP. The rounds are the fog's and the cloud's own arithmetic
    (the same ``DPAggregator``, ``FedAvg``, ``Accountant`` and the same torch training as an
    edge), without brokers or frames.

(b) **Flower 1.42 beside it**, flat: ``benchmarks/flower_dp.py`` (run with Flower's venv,
    ``.venv-flower``) trains the same population (sensors, 100 edges, all of them every round:
    Flower's accounted fixed-clipping wrapper only supports "no-amplification" accounting and
    uniform FedAvg weights) with ``DifferentialPrivacyServerSideFixedClipping`` and Flower's
    ``RdpAccountant`` at the same sigma, C and rounds, through Flower's simulation engine; the
    same configuration runs here with hierfl's DPAggregator and Accountant (q = 1). Reported:
    both accuracies and both epsilons.

(c) **Membership inference** on the final model of every run: the loss-threshold attack
    (Yeom et al.) and the modified-entropy attack (Song & Mittal) from
    :mod:`hierfl.privacy.mia`, members = training records, non-members = the held-out test
    split, equal counts; with :func:`~hierfl.privacy.mia.dp_auc_bound`, the most any attack
    could reach at that epsilon.

(d) **Overhead**: median round time of each DP run against the non-private run of the same
    configuration, measured in the same process, one after the other; and ``overhead``: the
    same work with and without DP interleaved in one process, minimum over repeats (robust
    when the machine is shared): an edge's local epoch (DP-SGD against SGD) and a fog's
    aggregation (``DPAggregator`` against ``FedAvg``).

Usage::

    python benchmarks/privacy.py [--part record|sim|device|flower|all] [--quick] [--out FILE]
        [--rounds N] [--epsilons 1,3,8]

Needs the ``sim`` extra (torch, scikit-learn); ``--part flower`` also needs
``.venv-flower`` with ``flwr[simulation,dp]==1.42.0`` (``dp-accounting`` for its accountant).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import dp_accounting  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hierfl.aggregation import FedAvg  # noqa: E402
from hierfl.edge.trainer import SupervisedTask  # noqa: E402
from hierfl.model.torch_adapter import model_to_vector, vector_to_model  # noqa: E402
from hierfl.privacy import accountant as acc  # noqa: E402
from hierfl.privacy.accountant import Accountant, epsilon_for  # noqa: E402
from hierfl.privacy.distributed import DistributedDP, epsilon_distributed  # noqa: E402
from hierfl.privacy.dpsgd import DPSGDTask  # noqa: E402
from hierfl.privacy.mechanisms import csprng, gaussian_noise  # noqa: E402
from hierfl.privacy.mia import dp_auc_bound, entropy_attack, loss_threshold_attack  # noqa: E402
from hierfl.privacy.wrappers import DPAggregator  # noqa: E402
from hierfl.sim.scenarios import (  # noqa: E402
    digits_data,
    digits_model,
    evaluate,
    sensors_data,
    sensors_model,
)

ROOT = Path(__file__).resolve().parent.parent
DELTA = 1e-5
EPSILONS = (1.0, 3.0, 8.0)
MIA_SEED = 12345


def _log(msg: str) -> None:
    print(f"[privacy] {msg}", file=sys.stderr, flush=True)


# --- calibration ------------------------------------------------------------------------------


def calibrate_sigma(target: float, *, sample_rate: float, releases: int,
                    delta: float = DELTA) -> float:
    """The smallest sigma (to 0.5 %) whose epsilon after ``releases`` stays within ``target``.

    Bisection on log(sigma) over the accountant's epsilon (monotone decreasing in sigma).
    """
    def eps(s: float) -> float:
        return epsilon_for(noise_multiplier=s, sample_rate=sample_rate, releases=releases,
                           delta=delta)

    lo, hi = 0.05, 1.0
    while eps(hi) > target:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise RuntimeError(f"no sigma reaches epsilon {target}")
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        if eps(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


# --- attacks ----------------------------------------------------------------------------------


def attacks(model: torch.nn.Module, members: tuple[np.ndarray, np.ndarray],
            nonmembers: tuple[np.ndarray, np.ndarray], epsilon: float | None) -> dict[str, Any]:
    """Both attacks on equal numbers of member and non-member records (a fixed subset)."""
    k = min(len(members[0]), len(nonmembers[0]))
    rng = np.random.default_rng(MIA_SEED)
    mi = rng.choice(len(members[0]), size=k, replace=False)
    ni = rng.choice(len(nonmembers[0]), size=k, replace=False)

    def outputs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(x))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y),
                                                     reduction="none")
            probs = torch.softmax(logits.double(), dim=1)
        return loss.numpy(), probs.numpy()

    lm, pm = outputs(members[0][mi], members[1][mi])
    ln, pn = outputs(nonmembers[0][ni], nonmembers[1][ni])
    out: dict[str, Any] = {
        "loss": loss_threshold_attack(lm, ln).as_dict(),
        "entropy": entropy_attack(pm, members[1][mi], pn, nonmembers[1][ni]).as_dict(),
    }
    out["dp_auc_bound"] = dp_auc_bound(epsilon, DELTA) if epsilon is not None else 1.0
    return out


def _median_round(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


# --- (a) record level: DP-SGD at the edges of digits-20 ---------------------------------------


def record_level(rounds: int, epsilons: list[float], clip: float = 1.0, *,
                 records_per_edge: int | None = None,
                 epochs: int = 2) -> list[dict[str, Any]]:
    """Flat FedAvg over the 20 digits edges, each training with DP-SGD (or without).

    ``records_per_edge``: keep only each edge's first records (a small training set that the
    model overfits: where membership inference has something to find).
    """
    data = digits_data(20, 0)
    if records_per_edge is not None:
        data = type(data)([(x[:records_per_edge], y[:records_per_edge]) for x, y in data.parts],
                          data.x_test, data.y_test)
    batch = 16
    scenario = "digits-20" if records_per_edge is None else f"digits-20-first{records_per_edge}"
    members = (np.concatenate([p[0] for p in data.parts]),
               np.concatenate([p[1] for p in data.parts]))
    nonmembers = (data.x_test, data.y_test)
    results = []
    for eps in [None, *epsilons]:
        tasks: list[Any] = []
        sigmas = []
        t_cal = time.perf_counter()
        for i, (x, y) in enumerate(data.parts):
            base = SupervisedTask(digits_model, torch.from_numpy(x), torch.from_numpy(y),
                                  batch_size=batch, lr=0.05, seed=1000 + i)
            if eps is None:
                tasks.append(base)
                continue
            q = min(1.0, batch / len(x))
            steps = rounds * epochs * math.ceil(1.0 / q)
            sigma = calibrate_sigma(eps, sample_rate=q, releases=steps)
            sigmas.append(sigma)
            tasks.append(DPSGDTask(base, noise_multiplier=sigma, clip_norm=clip, delta=DELTA,
                                   target_epsilon=eps, seed=7000 + i))
        cal_s = time.perf_counter() - t_cal
        model = digits_model()
        vec = model_to_vector(model)
        agg = FedAvg()
        accs, times = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            deltas, weights = [], []
            for task in tasks:
                vector_to_model(model, vec)
                res = task.train(model, epochs)
                deltas.append(model_to_vector(model) - vec)
                weights.append(float(res.num_samples))
            vec = vec + agg(np.stack(deltas), np.asarray(weights))
            times.append(time.perf_counter() - t0)
            vector_to_model(model, vec)
            accs.append(evaluate(model, data.x_test, data.y_test)[0])
        spent = [t.epsilon for t in tasks] if eps is not None else []
        eps_max = max(spent) if spent else None
        row: dict[str, Any] = {
            "bench": "privacy", "part": "record", "scenario": scenario, "mode": "record",
            "target_epsilon": eps, "delta": DELTA, "epsilon": eps_max,
            "epsilon_median_edge": statistics.median(spent) if spent else None,
            "clip_norm": clip if eps is not None else None,
            "sigma_min": min(sigmas) if sigmas else None,
            "sigma_max": max(sigmas) if sigmas else None,
            "edges": len(tasks), "rounds": rounds, "local_epochs": epochs,
            "final_acc": accs[-1], "acc_by_round": [round(a, 4) for a in accs],
            "median_round_s": _median_round(times), "calibration_s": cal_s,
            "attack": attacks(model, members, nonmembers, eps_max),
        }
        _log(f"record {scenario} eps={eps}: acc {accs[-1]:.4f} eps_max {eps_max} "
             f"round {row['median_round_s']:.3f} s; loss-attack AUC "
             f"{row['attack']['loss']['auc']:.3f}")
        results.append(row)
    return _with_overhead(results)


def _with_overhead(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each DP row's round time over the non-private row's of the same configuration."""
    base = {(r["part"], r["mode"], r.get("fogs")): r["median_round_s"] for r in rows
            if r["target_epsilon"] is None}
    for r in rows:
        b = base.get((r["part"], r["mode"], r.get("fogs")))
        r["round_time_ratio_vs_nonprivate"] = r["median_round_s"] / b if b else None
    return rows


def record_level_sim(rounds: int, epsilons: list[float], clip: float = 1.0,
                     mode: str = "inprocess") -> list[dict[str, Any]]:
    """The same record-level runs through ``hierfl sim --dp record`` (brokers, frames, fogs).

    ``hierfl sim`` gives every edge one sigma: the largest of the per-edge calibrated sigmas,
    so that no edge's budget runs out before the last round (an edge whose budget is spent
    stops sending, and its fog then waits for it until the round deadline).
    """
    data = digits_data(20, 0)
    rows = []
    for eps in [None, *epsilons]:
        cmd = [sys.executable, "-m", "hierfl", "sim", "digits", "--fogs", "4", "--edges", "20",
               "--rounds", str(rounds), "--mode", mode, "--no-live"]
        sigma = None
        if eps is not None:
            sigma = max(calibrate_sigma(eps, sample_rate=min(1.0, 16 / len(x)),
                                        releases=rounds * 2 * math.ceil(len(x) / 16))
                        for x, _ in data.parts)
            cmd += ["--dp", "record", "--dp-epsilon", repr(eps), "--dp-sigma", repr(sigma),
                    "--dp-clip", repr(clip), "--dp-delta", repr(DELTA)]
        with tempfile.TemporaryDirectory(prefix="privacy-sim-") as work:
            t0 = time.perf_counter()
            proc = subprocess.run([*cmd, "--out", work], check=False, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            wall = time.perf_counter() - t0
            report_path = Path(work) / "report.json"
            if proc.returncode != 0 or not report_path.exists():
                raise RuntimeError(f"hierfl sim failed ({proc.returncode}): {proc.stderr[-2000:]}")
            rep = json.loads(report_path.read_text())
        priv = rep.get("privacy") or {}
        row = {
            "bench": "privacy", "part": "sim", "scenario": "digits-20", "mode": "record",
            "sim_mode": mode, "target_epsilon": eps, "delta": DELTA,
            "epsilon": priv.get("epsilon"), "sigma": sigma,
            "clip_norm": clip if eps is not None else None, "rounds": rounds,
            "final_acc": rep["final_accuracy"],
            "acc_by_round": [round(r["accuracy"], 4) for r in rep["rounds"]],
            "updates_by_round": [r["updates"] for r in rep["rounds"]],
            "stopped": rep.get("stopped"), "median_round_s": rep["totals"]["median_round_s"],
            "wall_s": wall,
        }
        _log(f"sim record eps={eps}: sigma {sigma} acc {row['final_acc']:.4f} "
             f"eps {row['epsilon']} round {row['median_round_s']:.3f} s")
        rows.append(row)
    return _with_overhead(rows)


def overhead(repeats: int = 7) -> list[dict[str, Any]]:
    """DP's cost per unit of work, interleaved in one process (robust to a loaded machine).

    Edge: one local epoch on each digits-20 edge, plain ``SupervisedTask`` and ``DPSGDTask``
    (sigma 1, C 1) alternately, ``repeats`` times; the minimum over repeats of the whole
    20-edge pass is the figure (the least disturbed). Fog: ``FedAvg`` against
    ``DPAggregator(FedAvg())`` on stacks of the sizes the benchmarks aggregate.
    """
    data = digits_data(20, 0)
    plain = [SupervisedTask(digits_model, torch.from_numpy(x), torch.from_numpy(y),
                            batch_size=16, lr=0.05, seed=1000 + i)
             for i, (x, y) in enumerate(data.parts)]
    private = [DPSGDTask(SupervisedTask(digits_model, torch.from_numpy(x), torch.from_numpy(y),
                                        batch_size=16, lr=0.05, seed=1000 + i),
                         noise_multiplier=1.0, clip_norm=1.0, delta=DELTA,
                         target_epsilon=1e6, seed=i)
               for i, (x, y) in enumerate(data.parts)]
    model = digits_model()
    vec = model_to_vector(model)

    def one_pass(tasks: list[Any], warm: bool = False) -> float:
        if warm:  # evaluate the epsilon this pass needs beforehand: time the DP-SGD alone
            for task in tasks:
                task.accountant.epsilon(task.accountant.releases + task.steps_per_epoch)
        t0 = time.perf_counter()
        for task in tasks:
            vector_to_model(model, vec)
            task.train(model, 1)
        return time.perf_counter() - t0

    edge: dict[str, list[float]] = {"plain": [], "dpsgd": [], "dpsgd_compute": []}
    for _ in range(repeats):
        edge["plain"].append(one_pass(plain))
        edge["dpsgd"].append(one_pass(private))
        edge["dpsgd_compute"].append(one_pass(private, warm=True))
    # what one uncached accountant evaluation costs (each train call needs one or two)
    acct_s = []
    for k in range(repeats):
        t0 = time.perf_counter()
        epsilon_for(noise_multiplier=1.0, sample_rate=0.25, releases=10_000 + k, delta=DELTA)
        acct_s.append(time.perf_counter() - t0)
    rows: list[dict[str, Any]] = [{
        "bench": "privacy", "part": "overhead", "what": "edge: 1 epoch on each digits-20 edge",
        "accountant_eval_min_s": min(acct_s),
        "target_epsilon": None, "plain_min_s": min(edge["plain"]),
        "dpsgd_min_s": min(edge["dpsgd"]), "plain_median_s": statistics.median(edge["plain"]),
        "dpsgd_compute_min_s": min(edge["dpsgd_compute"]),
        "compute_ratio_min": min(edge["dpsgd_compute"]) / min(edge["plain"]),
        "dpsgd_median_s": statistics.median(edge["dpsgd"]),
        "ratio_min": min(edge["dpsgd"]) / min(edge["plain"]),
    }]
    rng = np.random.default_rng(0)
    for n, d, label in ((100, 515, "sensors fog round (100 updates)"),
                        (20, 4810, "digits-20 fog round (20 updates)"),
                        (20, 1_126_410, "digits-20-wide fog round (20 updates)")):
        stack = rng.normal(0, 0.1, size=(n, d)).astype(np.float32)
        weights = np.ones(n)
        dp = DPAggregator(inner=FedAvg(), clip_norm=0.25, noise_multiplier=1.0,
                          expected_updates=n, rng=np.random.default_rng(1))
        times: dict[str, list[float]] = {"fedavg": [], "dp": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            FedAvg()(stack, weights)
            times["fedavg"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            dp(stack, weights)
            times["dp"].append(time.perf_counter() - t0)
        rows.append({
            "bench": "privacy", "part": "overhead", "what": label, "target_epsilon": None,
            "updates": n, "params": d, "fedavg_min_s": min(times["fedavg"]),
            "dp_min_s": min(times["dp"]),
            "ratio_min": min(times["dp"]) / min(times["fedavg"]),
        })
    for r in rows:
        _log(f"overhead {r['what']}: ratio {r['ratio_min']:.2f}")
    return rows


# --- (a) device level: DP-FedAvg with trusted fogs over a population ---------------------------


def device_federation(
    *, data: Any, fogs: int, k2: int, cloud_rounds: int, q: float, sigma: float | None,
    clip: float, epochs: int = 1, seed: int = 0,
    on_round: Callable[[int, np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """One federation: ``fogs`` disjoint regions, ``k2`` fog rounds per cloud round.

    Each fog round, each edge of a region is in with probability ``q`` (Poisson), trains from
    its fog's model for ``epochs`` epochs and sends its delta; the fog aggregates with
    ``DPAggregator(FedAvg(), C, sigma, m = round(q * region))`` (``sigma=None``: plain
    sample-weighted FedAvg, no clipping, no noise), applies it to its model and accounts one
    release; the cloud averages the fog models (weighted by region size) every ``k2`` fog
    rounds and sends the result back to every fog.
    """
    n = len(data.parts)
    region = [list(range(f * n // fogs, (f + 1) * n // fogs)) for f in range(fogs)]
    tasks = [SupervisedTask(sensors_model, torch.from_numpy(x), torch.from_numpy(y),
                            batch_size=16, lr=0.05, seed=1000 + i)
             for i, (x, y) in enumerate(data.parts)]
    model = sensors_model()
    global_vec = model_to_vector(model)
    rng = np.random.default_rng(seed)
    aggs: list[Any] = []
    accountants: list[Accountant | None] = []
    for f in range(fogs):
        m = max(1, round(q * len(region[f])))
        if sigma is None:
            aggs.append(FedAvg())
            accountants.append(None)
        else:
            aggs.append(DPAggregator(inner=FedAvg(), clip_norm=clip, noise_multiplier=sigma,
                                     expected_updates=m,
                                     rng=np.random.default_rng(seed * 100 + f + 1)))
            accountants.append(Accountant(noise_multiplier=sigma, sample_rate=q, delta=DELTA))
    accs, times, fog_s, sampled = [], [], [], []
    for r in range(cloud_rounds):
        t0 = time.perf_counter()
        fog_vecs, agg_time = [], 0.0
        for f in range(fogs):
            vec = global_vec.copy()
            for _ in range(k2):
                chosen = [i for i in region[f] if rng.random() < q] if q < 1 else region[f]
                sampled.append(len(chosen))
                if not chosen:  # an empty Poisson draw: the release is noise alone
                    chosen_deltas = np.zeros((0, vec.size), np.float32)
                    weights = np.zeros(0)
                else:
                    deltas, w = [], []
                    for i in chosen:
                        vector_to_model(model, vec)
                        res = tasks[i].train(model, epochs)
                        deltas.append(model_to_vector(model) - vec)
                        w.append(float(res.num_samples))
                    chosen_deltas, weights = np.stack(deltas), np.asarray(w)
                ta = time.perf_counter()
                if len(chosen_deltas):
                    vec = vec + aggs[f](chosen_deltas, weights)
                elif sigma is not None:  # noise alone (DPAggregator needs one update)
                    noise = gaussian_noise(vec.size, noise_multiplier=sigma, clip_norm=clip,
                                           rng=aggs[f].rng or csprng())
                    vec = vec + (noise / aggs[f].expected_updates).astype(np.float32)
                acct = accountants[f]
                if acct is not None:
                    acct.releases += 1  # epsilon is read once at the end (it is monotone)
                agg_time += time.perf_counter() - ta
            fog_vecs.append(vec)
        sizes = np.asarray([len(rg) for rg in region], dtype=np.float64)
        global_vec = FedAvg()(np.stack(fog_vecs) - global_vec, sizes) + global_vec
        times.append(time.perf_counter() - t0)
        fog_s.append(agg_time)
        vector_to_model(model, global_vec)
        accs.append(evaluate(model, data.x_test, data.y_test)[0])
        if on_round is not None:
            on_round(r, global_vec)
    eps = max(a.epsilon() for a in accountants if a is not None) if sigma is not None else None
    return {"model": model, "accs": accs, "times": times, "fog_dp_s": fog_s,
            "epsilon": eps, "mean_sampled": float(np.mean(sampled)),
            "releases_per_region": cloud_rounds * k2}


def device_level(cloud_rounds: int, epsilons: list[float], *, n_edges: int = 1000,
                 q: float = 0.1, clip: float = 0.25) -> list[dict[str, Any]]:
    """Flat (1 fog, k2 = 1) and hierarchical (4 fogs, k2 = 2) device-level DP on sensors."""
    data = sensors_data(n_edges, 4, 0)
    members = (np.concatenate([p[0] for p in data.parts]),
               np.concatenate([p[1] for p in data.parts]))
    nonmembers = (data.x_test, data.y_test)
    rows = []
    for fogs, k2 in ((1, 1), (4, 2)):
        rounds = cloud_rounds if k2 == 1 else max(1, cloud_rounds // k2)
        releases = rounds * k2
        for eps in [None, *epsilons]:
            sigma = (calibrate_sigma(eps, sample_rate=q, releases=releases)
                     if eps is not None else None)
            res = device_federation(data=data, fogs=fogs, k2=k2, cloud_rounds=rounds, q=q,
                                    sigma=sigma, clip=clip)
            row = {
                "bench": "privacy", "part": "device", "scenario": f"sensors-{n_edges}",
                "mode": "trusted_fog", "fogs": fogs, "k2": k2, "target_epsilon": eps,
                "delta": DELTA, "epsilon": res["epsilon"], "sigma": sigma,
                "clip_norm": clip if eps is not None else None, "sample_rate": q,
                "mean_sampled_per_fog_round": res["mean_sampled"],
                "releases_per_region": res["releases_per_region"], "cloud_rounds": rounds,
                "final_acc": res["accs"][-1], "acc_by_round": [round(a, 4) for a in res["accs"]],
                "median_round_s": _median_round(res["times"]),
                "fog_aggregate_s_per_round": statistics.median(res["fog_dp_s"]),
                "attack": attacks(res["model"], members, nonmembers, res["epsilon"]),
            }
            _log(f"device fogs={fogs} k2={k2} eps={eps}: sigma {sigma} acc {row['final_acc']:.4f} "
                 f"eps {row['epsilon']} round {row['median_round_s']:.3f} s")
            rows.append(row)
    return _with_overhead(rows)


# --- (b) Flower beside it ---------------------------------------------------------------------


def _flower_run(py: Path, n_edges: int, rounds: int, sigma: float, clip: float,
                seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """One run of benchmarks/flower_dp.py in Flower's venv: its result and final vector."""
    with tempfile.TemporaryDirectory(prefix="privacy-flower-") as work:
        out = Path(work) / "flower.json"
        cmd = [str(py), str(ROOT / "benchmarks" / "flower_dp.py"), "--clients", str(n_edges),
               "--rounds", str(rounds), "--sigma", repr(sigma), "--clip", repr(clip),
               "--delta", repr(DELTA), "--seed", str(seed), "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, cwd=ROOT, stdout=sys.stderr)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"flower_dp.py failed ({proc.returncode})")
        fl = json.loads(out.read_text())
        fl["wall_s"] = time.perf_counter() - t0
        with np.load(Path(work) / "flower_final.npz", allow_pickle=False) as f:
            vec = f["vec"]
    return fl, vec


def flower_compare(rounds: int, epsilons: list[float], *, n_edges: int = 100,
                   clip: float = 0.25, seeds: int = 3, seed_start: int = 0,
                   flower_python: Path | None = None) -> list[dict[str, Any]]:
    """Flat, every edge every round, the same sigma: hierfl here, Flower in its own venv.

    Each side runs ``seeds`` times (noise seeds 0..seeds-1; the training itself is the same
    deterministic computation on both sides): one noise draw moves the final accuracy by more
    than a point at small epsilon, so the means are compared.
    """
    py = flower_python or ROOT / ".venv-flower" / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py} missing: make the Flower venv (benchmarks/install_flower.sh "
                         ".venv-flower sim) and add dp-accounting==0.6.0 (flwr[dp])")
    data = sensors_data(n_edges, 4, 0)
    members = (np.concatenate([p[0] for p in data.parts]),
               np.concatenate([p[1] for p in data.parts]))
    nonmembers = (data.x_test, data.y_test)
    rows = []
    for eps in epsilons:
        sigma = calibrate_sigma(eps, sample_rate=1.0, releases=rounds)
        sides: dict[str, list[dict[str, Any]]] = {"hierfl": [], "flower": []}
        for seed in range(seed_start, seed_start + seeds):
            res = device_federation(data=data, fogs=1, k2=1, cloud_rounds=rounds, q=1.0,
                                    sigma=sigma, clip=clip, seed=seed)
            sides["hierfl"].append({
                "seed": seed, "final_acc": res["accs"][-1], "epsilon": res["epsilon"],
                "acc_by_round": [round(a, 4) for a in res["accs"]],
                "median_round_s": _median_round(res["times"]),
                "attack": attacks(res["model"], members, nonmembers, res["epsilon"])})
            fl, fl_vec = _flower_run(py, n_edges, rounds, sigma, clip, seed)
            fl_model = sensors_model()
            vector_to_model(fl_model, fl_vec)
            sides["flower"].append({
                "seed": seed, "system": fl["system"], "final_acc": fl["acc_by_round"][-1],
                "epsilon": fl["epsilon"], "acc_by_round": [round(a, 4) for a in fl["acc_by_round"]],
                "median_round_s": fl["median_round_s"], "wall_s": fl["wall_s"],
                "attack": attacks(fl_model, members, nonmembers, fl["epsilon"])})
            _log(f"flower eps={eps} seed {seed} sigma {sigma:.4f}: hierfl acc "
                 f"{res['accs'][-1]:.4f} eps {res['epsilon']:.6f}; flower acc "
                 f"{fl['acc_by_round'][-1]:.4f} eps {fl['epsilon']:.6f}")

        def mean(side: str, key: str, runs: dict[str, list[dict[str, Any]]] = sides) -> float:
            return float(np.mean([r[key] for r in runs[side]]))

        row: dict[str, Any] = {
            "bench": "privacy", "part": "flower", "scenario": f"sensors-{n_edges}",
            "mode": "trusted_server_flat", "fogs": 1, "k2": 1, "target_epsilon": eps,
            "delta": DELTA, "sigma": sigma, "clip_norm": clip, "rounds": rounds,
            "sample_rate": 1.0, "seeds": seeds,
            "hierfl_mean_acc": mean("hierfl", "final_acc"),
            "flower_mean_acc": mean("flower", "final_acc"),
            "hierfl_epsilon": sides["hierfl"][0]["epsilon"],
            "flower_epsilon": sides["flower"][0]["epsilon"],
            "hierfl_loss_auc": float(np.mean([r["attack"]["loss"]["auc"]
                                              for r in sides["hierfl"]])),
            "flower_loss_auc": float(np.mean([r["attack"]["loss"]["auc"]
                                              for r in sides["flower"]])),
            "hierfl_median_round_s": mean("hierfl", "median_round_s"),
            "flower_median_round_s": mean("flower", "median_round_s"),
            "runs": sides,
        }
        row["acc_diff_points"] = 100 * (row["hierfl_mean_acc"] - row["flower_mean_acc"])
        row["epsilon_rel_diff"] = row["hierfl_epsilon"] / row["flower_epsilon"] - 1
        rows.append(row)
    return rows


# --- main -------------------------------------------------------------------------------------


def accountant_cost(checks: int = 20) -> list[dict[str, Any]]:
    """Seconds per budget check at a new release count: dp-accounting from scratch (what
    hierfl.privacy.accountant did before its per-release RDP cache) against the cache."""
    rows = []
    for q, fixed in ((1.0, 0), (0.1, 0), (0.1, 1000)):
        def scratch(n: int, q: float = q, fixed: int = fixed) -> float:
            ev: Any = dp_accounting.GaussianDpEvent(1.1)
            rel = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
            if fixed:
                ev = dp_accounting.SampledWithoutReplacementDpEvent(
                    fixed, acc.fixed_sample_size(q, fixed), ev)
                rel = dp_accounting.NeighboringRelation.REPLACE_ONE
            elif q < 1:
                ev = dp_accounting.PoissonSampledDpEvent(q, ev)
            a = dp_accounting.rdp.RdpAccountant(neighboring_relation=rel)
            a.compose(dp_accounting.SelfComposedDpEvent(ev, n))
            return float(a.get_epsilon(1e-5))

        t = time.perf_counter()
        for n in range(2, 2 + checks):
            scratch(n)
        before = (time.perf_counter() - t) / checks
        acc._rdp_one_release.cache_clear()
        acc._epsilon_cached.cache_clear()
        acc.epsilon_for(noise_multiplier=1.1, sample_rate=q, releases=1, delta=1e-5,
                        fixed_from=fixed)
        t = time.perf_counter()
        for n in range(2, 2 + checks):
            acc.epsilon_for(noise_multiplier=1.1, sample_rate=q, releases=n, delta=1e-5,
                            fixed_from=fixed)
        after = (time.perf_counter() - t) / checks
        rows.append({"part": "accountant", "sigma": 1.1, "sample_rate": q, "fixed_from": fixed,
                     "scratch_s_per_check": before, "cached_s_per_check": after,
                     "speedup": before / after})
    return rows


def distributed_cost(repeats: int = 5) -> list[dict[str, Any]]:
    """Distributed DP (Skellam shares): the edge's cost per update (clip, conditional
    rounding, noise share, mod 2^32) by model size, and epsilon against survivors."""
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for dim in (10_000, 100_000, 1_000_000):
        p = DistributedDP.for_region(expected_edges=20, clip_norm=1.0, noise_multiplier=1.0,
                                     dim=dim)
        u = rng.normal(size=dim) * 0.01
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            p.encode(u)  # production path: a fresh secrets-seeded generator
            times.append(time.perf_counter() - t)
        rows.append({"part": "distributed", "dim": dim, "edges": 20, "scale": p.scale,
                     "edge_encode_s": _median_round(times)})
    p = DistributedDP.for_region(expected_edges=20, clip_norm=1.0, noise_multiplier=1.0,
                                 dim=100_000)
    rows.extend({"part": "distributed", "edges": 20, "survivors": k, "releases": 100,
                 "sigma": 1.0, "delta": 1e-5,
                 "epsilon": epsilon_distributed(p, [k] * 100, delta=1e-5)}
                for k in (20, 18, 15, 10))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts and print one JSON line per run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["record", "record-small", "sim", "device", "flower",
                                       "overhead", "accountant", "distributed", "all"],
                    default="all")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 rounds, epsilon 8 only, 200 edges, no Flower")
    ap.add_argument("--rounds", type=int, default=None, help="override every part's rounds")
    ap.add_argument("--epsilons", default=None, help="comma-separated (default 1,3,8)")
    ap.add_argument("--seeds", type=int, default=3, help="noise seeds per side (Flower part)")
    ap.add_argument("--seed-start", type=int, default=0, help="first noise seed (Flower part)")
    ap.add_argument("--out", type=Path, default=None, help="append JSON lines here too")
    args = ap.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    epsilons = ([float(e) for e in args.epsilons.split(",")] if args.epsilons
                else [8.0] if args.quick else list(EPSILONS))
    out = args.out
    if out is None and not args.quick:
        out = ROOT / "benchmarks" / "results" / f"privacy-{dt.datetime.now(dt.UTC):%Y-%m-%d}.jsonl"
    parts = (["record", "record-small", "sim", "device", "flower", "overhead"]
             if args.part == "all"
             else [args.part])
    if args.quick and args.part == "all":
        parts = ["record", "device"]
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "load_avg_1m_at_start": os.getloadavg()[0]}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False,
                            capture_output=True, text=True).stdout.strip() or None
    for part in parts:
        if part == "record":
            rows = record_level(args.rounds or (2 if args.quick else 30), epsilons)
        elif part == "record-small":  # 10 records per edge, 40 local epochs: it overfits
            rows = record_level(args.rounds or (2 if args.quick else 30), epsilons,
                                records_per_edge=10, epochs=40)
        elif part == "overhead":
            rows = overhead(3 if args.quick else 7)
        elif part == "accountant":
            rows = accountant_cost(5 if args.quick else 20)
        elif part == "distributed":
            rows = distributed_cost(2 if args.quick else 5)
        elif part == "sim":
            rows = record_level_sim(args.rounds or (2 if args.quick else 30), epsilons)
        elif part == "device":
            rows = device_level(args.rounds or (2 if args.quick else 40), epsilons,
                                n_edges=200 if args.quick else 1000)
        else:
            rows = flower_compare(args.rounds or (2 if args.quick else 20), epsilons,
                                  seeds=1 if args.quick else args.seeds,
                                  seed_start=args.seed_start)
        for row in rows:
            row["machine"] = machine
            row["commit"] = commit
            line = json.dumps(row)
            print(line, flush=True)
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
