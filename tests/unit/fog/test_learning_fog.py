"""The fog's learning-quality parts: personalisation (it serves alpha * global + (1 - alpha)
* its region's last model, and forwards only its edges' progress) and SCAFFOLD (it forwards
the mean of its edges' control changes and serves the cloud's c)."""

from __future__ import annotations

import numpy as np

from hierfl.aggregation import FedAvg
from hierfl.fog.round import FogRound, Forward, PublishModel
from hierfl.optim.personalise import blend
from tests.unit.fog.test_fog_round import FED, FOG, G0, config, global_model, of_type, update

F = np.float32


def test_personalised_fog_serves_the_blend_and_forwards_the_edges_progress() -> None:
    fog = FogRound(config(min_updates=2, personalise_alpha=0.25), FedAvg())
    first = of_type(fog.on_global_model(global_model(), 0.0), PublishModel)[0].frame
    np.testing.assert_array_equal(first.weights, G0)  # no regional model yet: the global one
    fog.on_update(update("a", fog.seq, 0.2, n=10), 1.0)
    fwd = of_type(fog.on_update(update("b", fog.seq, 0.6, n=30), 1.0), Forward)[0].frame
    np.testing.assert_allclose(fwd.delta, np.full(4, 0.5), rtol=1e-6)  # (2 + 18) / 40
    regional = (G0 + fwd.delta).astype(F)
    g1 = np.array([2.0, 0.0, 1.0, 1.0], F)
    served = of_type(fog.on_global_model(global_model(1, g1), 2.0), PublishModel)[0].frame
    np.testing.assert_allclose(served.weights, 0.25 * g1 + 0.75 * regional, rtol=1e-6)
    np.testing.assert_array_equal(served.weights, blend(g1, regional, 0.25))
    # the edges train from the served model; only their progress goes up to the cloud
    fog.on_update(update("a", fog.seq, -0.1, n=10, version=1), 3.0)
    fwd2 = of_type(fog.on_update(update("b", fog.seq, -0.1, n=30, version=1), 3.0),
                   Forward)[0].frame
    np.testing.assert_allclose(fwd2.delta, np.full(4, -0.1), rtol=1e-5)


def test_without_personalisation_the_fog_serves_the_global_model() -> None:
    fog = FogRound(config(min_updates=1), FedAvg())
    fog.on_global_model(global_model(), 0.0)
    fog.on_update(update("a", fog.seq, 0.2), 1.0)
    g1 = np.array([2.0, 0.0, 1.0, 1.0], F)
    served = of_type(fog.on_global_model(global_model(1, g1), 2.0), PublishModel)[0].frame
    np.testing.assert_array_equal(served.weights, g1)


def test_scaffold_fog_serves_c_and_forwards_the_mean_control_change() -> None:
    c = np.array([0.1, 0.2, 0.3, 0.4], F)
    fog = FogRound(config(min_updates=2, k2=2), FedAvg())
    served = of_type(fog.on_global_model(global_model(control=c), 0.0), PublishModel)[0].frame
    np.testing.assert_array_equal(served.control, c)

    def with_control(edge: str, dc: float, n: int):  # type: ignore[no-untyped-def]
        u = update(edge, fog.seq, 0.1, n=n)
        return type(u)(FED, FOG, edge, 0, u.base_seq, n, u.delta, control=np.full(4, dc, F))

    fog.on_update(with_control("a", 1.0, 10), 1.0)
    fog.on_update(with_control("b", 3.0, 90), 1.0)  # fog round 1: plain mean 2.0
    fog.on_update(with_control("a", 0.5, 10), 2.0)
    fwd = of_type(fog.on_update(with_control("b", 0.5, 90), 2.0), Forward)[0].frame
    # summed over the fog rounds, not weighted by samples: 2.0 + 0.5
    np.testing.assert_allclose(fwd.control, np.full(4, 2.5))


def test_fog_server_optimizer_steps_each_fog_round() -> None:
    from hierfl.optim.server import make_server_optimizer

    fog = FogRound(config(min_updates=1), FedAvg())
    fog.server_opt = make_server_optimizer("fedavgm", 4, server_lr=1.0, momentum=0.5)
    fog.on_global_model(global_model(), 0.0)
    first = of_type(fog.on_update(update("a", fog.seq, 0.2), 1.0), Forward)[0].frame
    np.testing.assert_allclose(first.delta, np.full(4, 0.2), rtol=1e-6)  # m = d1
    fog.on_global_model(global_model(1, G0 + first.delta), 2.0)
    second = of_type(fog.on_update(update("a", fog.seq, 0.1, version=1), 3.0), Forward)[0].frame
    np.testing.assert_allclose(second.delta, np.full(4, 0.5 * 0.2 + 0.1), rtol=1e-6)
