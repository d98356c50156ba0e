"""What the sim gives each tier: its kit's security settings, never the parent's
HIERFL_SECURITY__* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from hierfl.sim.pki import provision_sim
from hierfl.sim.runner import SimConfig, _env, _sim_fogs, _tier_settings


def _cfg(tmp_path: Path, **kw: object) -> SimConfig:
    return SimConfig(fogs=2, edges=4, rounds=1, mode="inprocess", out=tmp_path,
                     federation="secfed", live=False, **kw)  # type: ignore[arg-type]


@pytest.fixture
def hostile_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Variables that would turn signing off or point a tier at other files, if they leaked."""
    monkeypatch.setenv("HIERFL_SECURITY__SIGNING", "off")
    monkeypatch.setenv("HIERFL_SECURITY__STATE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HIERFL_SECURITY__REVOCATION_LIST", str(tmp_path / "other.json"))


@pytest.mark.usefixtures("hostile_env")
def test_signed_tiers_get_their_kits_and_ignore_the_parent_env(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    prov = provision_sim(cfg.federation, _sim_fogs(cfg), cfg.out, mqtt_url="mqtt://127.0.0.1:1883",
                         bootstrap="127.0.0.1:9092", tls=False)
    assert prov.out == tmp_path.resolve() / "pki"
    cloud, fogs, edges = _tier_settings(cfg, "mqtt://127.0.0.1:1883", "127.0.0.1:9092", prov)
    assert cloud.security.signing == "required"
    assert cloud.security.key_file == prov.kit("cloud") / "signing.key"
    assert cloud.security.state_dir is None
    assert cloud.security.revocation_list == prov.kit("cloud") / "revoked.json"
    for fog in fogs:
        kit = prov.kit(f"fog/{fog.fog_id}")
        assert fog.security.signing == "required"
        assert fog.security.key_file == kit / "signing.key"
        assert fog.security.trust_bundle == kit / "trust.json"
        assert fog.security.state_dir == kit / "state"
    assert [(e.fog_id, e.edge_id) for e in edges] == [
        ("fog0", "e000"), ("fog0", "e001"), ("fog1", "e002"), ("fog1", "e003")]
    for edge in edges:
        assert edge.security.key_file == prov.kit(f"edge/{edge.fog_id}/{edge.edge_id}") / \
            "signing.key"
        assert edge.security.signing == "required"
        assert not edge.mqtt.tls
    # processes mode: each child gets the whole section as HIERFL_SECURITY__* (the parent's
    # HIERFL_* variables are dropped before these are set)
    env = _env(fogs[0])
    assert env["HIERFL_SECURITY__SIGNING"] == "required"
    assert env["HIERFL_SECURITY__KEY_FILE"] == str(prov.kit("fog/fog0") / "signing.key")
    assert env["HIERFL_SECURITY__STATE_DIR"] == str(prov.kit("fog/fog0") / "state")
    assert "HIERFL_SECURITY" not in env


@pytest.mark.usefixtures("hostile_env")
def test_insecure_turns_signing_off_everywhere(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, security="insecure")
    cloud, fogs, edges = _tier_settings(cfg, "mqtt://127.0.0.1:1883", "127.0.0.1:9092", None)
    for s in (cloud, *fogs, *edges):
        assert s.security.signing == "off"
        assert s.security.state_dir is None and s.security.revocation_list is None
    assert _env(cloud)["HIERFL_SECURITY__SIGNING"] == "off"


def test_secure_tiers_connect_with_their_kit_certificates(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, security="secure")
    prov = provision_sim(cfg.federation, _sim_fogs(cfg), cfg.out, mqtt_url="mqtts://127.0.0.1:8883",
                         bootstrap="127.0.0.1:9092", tls=True)
    cloud, fogs, edges = _tier_settings(cfg, "mqtts://127.0.0.1:8883", "127.0.0.1:9092", prov)
    assert cloud.kafka.security_protocol == "PLAINTEXT"  # Tansu: no TLS
    for s, party in [*((f, f"fog/{f.fog_id}") for f in fogs),
                     *((e, f"edge/{e.fog_id}/{e.edge_id}") for e in edges)]:
        kit = prov.kit(party)
        assert s.mqtt.tls
        assert (s.mqtt.ca_file, s.mqtt.cert_file, s.mqtt.key_file) == (
            kit / "ca.crt", kit / "client.crt", kit / "client.key")
        assert s.security.signing == "required"
    env = _env(edges[0])
    assert env["HIERFL_MQTT__URL"] == "mqtts://127.0.0.1:8883"
    assert env["HIERFL_MQTT__CERT_FILE"].endswith("client.crt")


def test_security_modes_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="security must be one of"):
        _cfg(tmp_path, security="tls")
    with pytest.raises(ValueError, match="cannot use --mqtt-url"):
        _cfg(tmp_path, security="secure", mqtt_url="mqtt://127.0.0.1:1883")
    assert _cfg(tmp_path).signed and not _cfg(tmp_path).mqtt_tls
    assert not _cfg(tmp_path, security="insecure").signed
