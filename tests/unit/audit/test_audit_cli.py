"""``hierfl audit``: verify and show, on stores built with real Ed25519 lineage."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from hierfl.audit.cli import audit_app
from hierfl.security.trust import BUNDLE_FORMAT, REVOKED_FORMAT, parse_party
from tests.unit.model.lineage_builder import FED, Federation, build_store, rewrite

runner = CliRunner()


def _write_bundle(path: Path, fed: Federation) -> Path:
    parties = {}
    for pid, key in fed.keys.items():
        role, fog, edge = parse_party(pid)
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        parties[pid] = {
            "role": role,
            "fog": fog,
            "edge": edge,
            "ed25519": base64.b64encode(raw).decode(),
        }
    path.write_text(json.dumps({"format": BUNDLE_FORMAT, "federation": FED, "parties": parties}))
    return path


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Federation]:
    store = tmp_path / "store"
    fed = build_store(store, versions=3)
    return store, _write_bundle(tmp_path / "trust.json", fed), fed


def test_verify_honest_store_exits_0(setup: tuple[Path, Path, Federation]) -> None:
    store, trust, _ = setup
    result = runner.invoke(audit_app, ["verify", str(store), "--trust", str(trust)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("v0 ok: 0 aggregates")
    assert lines[2] == "v2 ok: 2 aggregates, 4 edge updates, signed by fog/north, fog/south"
    assert lines[-1] == "all 3 versions verify"


def test_verify_with_explicit_federation(setup: tuple[Path, Path, Federation]) -> None:
    store, trust, _ = setup
    result = runner.invoke(
        audit_app, ["verify", str(store), "--trust", str(trust), "--federation", FED]
    )
    assert result.exit_code == 0, result.output


def test_verify_wrong_federation_exits_2(setup: tuple[Path, Path, Federation]) -> None:
    store, trust, _ = setup
    result = runner.invoke(
        audit_app, ["verify", str(store), "--trust", str(trust), "--federation", "other"]
    )
    assert result.exit_code == 2
    assert "error:" in result.stderr


def test_verify_names_the_first_bad_version(setup: tuple[Path, Path, Federation]) -> None:
    store, trust, _ = setup
    rewrite(
        store,
        1,
        lambda r: r["lineage"]["aggregates"][0]["edges"][0].update(sig="00" * 64),
        rehash=True,
    )
    result = runner.invoke(audit_app, ["verify", str(store), "--trust", str(trust)])
    assert result.exit_code == 1
    assert "v1 BAD: edge update of edge/north/n0" in result.stdout
    assert "FAILED: v1:" in result.stderr


def test_verify_flipped_checkpoint_byte(setup: tuple[Path, Path, Federation]) -> None:
    store, trust, _ = setup
    st = store / "v00000002.safetensors"
    raw = bytearray(st.read_bytes())
    raw[-1] ^= 0x40
    st.write_bytes(bytes(raw))
    result = runner.invoke(audit_app, ["verify", str(store), "--trust", str(trust)])
    assert result.exit_code == 1
    assert "FAILED: v2: checkpoint file changed" in result.stderr


def test_verify_marks_revoked_signers(tmp_path: Path, setup: tuple[Path, Path, Federation]) -> None:
    store, trust, _ = setup
    revoked = tmp_path / "revoked.json"
    revoked.write_text(
        json.dumps(
            {"format": REVOKED_FORMAT, "federation": FED, "revoked": [{"party": "fog/south"}]}
        )
    )
    result = runner.invoke(
        audit_app, ["verify", str(store), "--trust", str(trust), "--revoked", str(revoked)]
    )
    assert result.exit_code == 0, result.output
    assert "revoked since: fog/south" in result.stdout


def test_verify_without_trust_checks_hashes(setup: tuple[Path, Path, Federation]) -> None:
    store, _, _ = setup
    result = runner.invoke(audit_app, ["verify", str(store)])
    assert result.exit_code == 0, result.output
    assert "signatures not checked" in result.stdout


def test_verify_missing_store_exits_2(tmp_path: Path, setup: tuple[Path, Path, Federation]) -> None:
    _, trust, _ = setup
    result = runner.invoke(audit_app, ["verify", str(tmp_path / "nope"), "--trust", str(trust)])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    assert not (tmp_path / "nope").exists()


def test_verify_missing_bundle_exits_2(
    tmp_path: Path, setup: tuple[Path, Path, Federation]
) -> None:
    store, _, _ = setup
    result = runner.invoke(
        audit_app, ["verify", str(store), "--trust", str(tmp_path / "none.json")]
    )
    assert result.exit_code == 2
    assert "trust bundle" in result.stderr


def test_verify_empty_store_exits_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(audit_app, ["verify", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no versions" in result.stderr


def test_show_prints_contributors(setup: tuple[Path, Path, Federation]) -> None:
    store, _, _ = setup
    result = runner.invoke(audit_app, ["show", "2", "--store", str(store)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("v2  created 2023-11-14T22:13:22+00:00")
    assert "fog north: signer fog/north" in out
    assert "edge n0: counter" in out
    assert "edge s1: counter" in out
    assert "parent record" in out


def test_show_json(setup: tuple[Path, Path, Federation]) -> None:
    store, _, _ = setup
    result = runner.invoke(audit_app, ["show", "1", "--store", str(store), "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    parent = json.loads((store / "v00000000.json").read_text())
    assert d["version"] == 1
    assert d["parent_record"] == parent["record_hash"]
    assert d["record_hash_ok"] is True
    assert [a["fog"] for a in d["aggregates"]] == ["north", "south"]
    assert [e["edge"] for e in d["aggregates"][1]["edges"]] == ["s0", "s1"]
    assert all(len(e["hash"]) == 64 for a in d["aggregates"] for e in a["edges"])


def test_show_flags_an_edited_record(setup: tuple[Path, Path, Federation]) -> None:
    store, _, _ = setup
    rewrite(store, 1, lambda r: r.update(num_samples=1), rehash=False)
    result = runner.invoke(audit_app, ["show", "1", "--store", str(store)])
    assert result.exit_code == 0
    assert "DOES NOT MATCH" in result.stdout


def test_show_missing_version_exits_2(setup: tuple[Path, Path, Federation]) -> None:
    store, _, _ = setup
    result = runner.invoke(audit_app, ["show", "9", "--store", str(store)])
    assert result.exit_code == 2
    assert "version 9" in result.stderr


def test_show_missing_store_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(audit_app, ["show", "0", "--store", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
