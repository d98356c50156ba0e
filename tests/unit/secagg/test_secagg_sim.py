"""``hierfl sim --secagg``: every fog and edge gets a secure [secagg] section whose stage
deadlines fit in the fog round; conflicting options are refused."""

from __future__ import annotations

import pytest

from hierfl.config import EdgeSettings, FogSettings
from hierfl.provision import ProjectSpec, provision
from hierfl.sim.runner import SimConfig, _edge_id, _tier_settings


def test_secagg_sections_fit_the_fog_round(tmp_path) -> None:
    cfg = SimConfig(scenario="digits", fogs=2, edges=6, secagg=True, secagg_clip=5.0,
                    out=tmp_path)
    spec = ProjectSpec(federation=cfg.federation, fogs={
        fog: tuple(_edge_id(i) for i in idx) for fog, idx in cfg.topology().items()})
    prov = provision(spec, tmp_path / "pki", tls=False)
    _, fogs, edges = _tier_settings(cfg, "mqtt://127.0.0.1:1", "127.0.0.1:2", prov)
    for f in fogs:
        assert isinstance(f, FogSettings)
        assert (f.secagg.mode, f.secagg.clip_norm, f.aggregator) == ("secure", 5.0, "fedavg")
        g = f.secagg
        assert g.advertise_s + g.share_s + g.masked_s + g.unmask_s < f.round_timeout_s
    assert all(isinstance(e, EdgeSettings) and e.secagg.mode == "secure"
               and e.secagg.clip_norm == 5.0 for e in edges)
    plain = SimConfig(scenario="digits", fogs=2, edges=6, out=tmp_path)
    _, fogs, _ = _tier_settings(plain, "mqtt://127.0.0.1:1", "127.0.0.1:2")
    assert all(f.secagg.mode == "robust" for f in fogs)


@pytest.mark.parametrize(("kw", "match"), [
    ({"security": "insecure"}, "signatures"),
    ({"aggregator": "median"}, "masked sum"),
    ({"secagg_clip": 0.0}, "secagg-clip"),
    ({"fogs": 2, "edges": 5}, "at least 3 edges"),
])
def test_conflicting_options_are_refused(tmp_path, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        SimConfig(scenario="digits", **{"fogs": 1, "edges": 3, **kw}, secagg=True,
                  out=tmp_path)
