"""An edge whose model does not fit its fog's (signed) model stops with a ConfigError that says
so, instead of waiting forever. (Unsigned, such a frame could come from anyone: it is only
counted, tests/unit/wire/test_wire_bounds.py.)"""

from __future__ import annotations

import asyncio

import pytest
import torch

from hierfl.cloud.service import CloudService
from hierfl.edge import EdgeClient
from hierfl.errors import ConfigError
from tests.integration.fed import (
    Topology,
    make_fogs,
    running,
    settings_for,
    tiny_task,
    wait_for,
    write_initial,
)

pytestmark = pytest.mark.integration


def other_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


async def test_an_edge_with_the_wrong_model_stops_with_a_config_error(
    mqtt_broker, kafka_broker, unique_id, tmp_path
):
    topo = Topology({"north": ["n0"]})
    write_initial(tmp_path / "init.npz")
    cloud_s, fog_s, edge_s = settings_for(
        mqtt_broker.url, kafka_broker.bootstrap, unique_id, topo, tmp_path / "store",
        tmp_path / "init.npz", versions=1,
    )
    cloud = CloudService(cloud_s)
    (fog,) = make_fogs(fog_s)
    edge = EdgeClient(edge_s[0], tiny_task(0, model=other_model))
    async with running(cloud, fog):
        await wait_for(lambda: fog.round.version == 0, 30, "the fog's model")
        with pytest.raises(ConfigError, match="does not fit this edge's model"):
            await wait_for_run(edge)


async def wait_for_run(edge: EdgeClient) -> None:
    async with asyncio.timeout(30):
        await edge.run()
