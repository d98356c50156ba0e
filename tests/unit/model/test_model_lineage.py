"""verify_store: a store built with real Ed25519 keys and SigBlocks, honest and tampered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hierfl.errors import ConfigError, StoreError
from hierfl.model.lineage import AuditReport, verify_store
from hierfl.model.store import ModelStore
from tests.unit.model.lineage_builder import (
    FED,
    LAYOUT,
    Federation,
    build_store,
    rewrite,
    weights,
)


def _first_bad(report: AuditReport) -> tuple[int, str]:
    bad = report.first_bad
    assert bad is not None, [v.line() for v in report.versions]
    assert bad.reason is not None
    return bad.version, bad.reason


@pytest.fixture
def honest(tmp_path: Path) -> tuple[Path, Federation]:
    root = tmp_path / "store"
    return root, build_store(root, versions=4)


def test_honest_store_verifies(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    report = verify_store(root, fed.trust(), None)
    assert report.ok, [v.line() for v in report.versions]
    assert report.federation == FED
    assert [v.version for v in report.versions] == [0, 1, 2, 3]
    v3 = report.versions[3]
    assert (v3.aggregates, v3.edge_updates) == (2, 4)
    assert v3.signers == ("fog/north", "fog/south")
    assert v3.verified
    assert v3.line() == "v3 ok: 2 aggregates, 4 edge updates, signed by fog/north, fog/south"
    assert report.versions[0].chain_start


def test_without_trust_checks_hashes_only(honest: tuple[Path, Federation]) -> None:
    root, _ = honest
    report = verify_store(root, None, None)
    assert report.ok
    assert not report.versions[2].verified
    assert "signatures not checked" in report.versions[2].line()


def test_federation_must_match_the_bundle(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    with pytest.raises(ConfigError, match="federation"):
        verify_store(root, fed.trust(), "elsewhere")


def test_missing_store_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        verify_store(tmp_path / "nope", None, None)


def test_flipped_byte_in_a_checkpoint(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    st = root / "v00000002.safetensors"
    raw = bytearray(st.read_bytes())
    raw[-3] ^= 0x10  # tensor data, so the file still parses
    st.write_bytes(bytes(raw))
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 2
    assert "sha256" in reason


def test_edited_record_fails_its_record_hash(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    rewrite(root, 2, lambda r: r["fogs"]["north"].update(num_samples=10_000), rehash=False)
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 2
    assert "record_hash" in reason


def test_edited_and_rehashed_record_breaks_the_childs_link(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    rewrite(root, 1, lambda r: r.update(num_samples=10_000), rehash=True)
    # with the bundle, the cloud's record signature catches the edited record itself
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 1
    assert "record_sig" in reason
    # the chain alone (no bundle) catches it at the child
    version, reason = _first_bad(verify_store(root, None, None))
    assert version == 2
    assert "parent_record" in reason


def test_changed_edge_id_fails_its_proof(honest: tuple[Path, Federation]) -> None:
    root, fed = honest

    def swap(r: dict[str, Any]) -> None:  # n0 -> n2, a real edge of north with another key
        r["lineage"]["aggregates"][0]["edges"][0]["edge"] = "n2"
        r["fogs"]["north"]["contributors"] = ["n2", "n1"]

    rewrite(root, 3, swap, rehash=True)
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 3
    assert "edge/north/n2" in reason


def test_changed_edge_id_disagrees_with_contributors(honest: tuple[Path, Federation]) -> None:
    root, _ = honest
    rewrite(
        root, 3, lambda r: r["lineage"]["aggregates"][0]["edges"][0].update(edge="n2"), rehash=True
    )
    version, reason = _first_bad(verify_store(root, None, None))
    assert version == 3
    assert "contributors" in reason


def test_deleted_and_rewritten_version_breaks_the_chain(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    for suffix in (".json", ".safetensors"):
        (root / f"v00000002{suffix}").unlink()
    ModelStore(root).save(2, weights(2) * 2, LAYOUT, fed.meta(2))
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 2  # rewritten without the cloud's key: no record_sig
    assert "record_sig" in reason
    version, reason = _first_bad(verify_store(root, None, None))
    assert version == 3
    assert "chain broken" in reason


def test_deleted_version_breaks_the_chain(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    for suffix in (".json", ".safetensors"):
        (root / f"v00000001{suffix}").unlink()
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 2
    assert "v1 is missing" in reason


def test_aggregate_signed_by_the_wrong_fog(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    forged = fed.aggregate("north", 1, signer="fog/south")
    rewrite(root, 2, lambda r: r["lineage"]["aggregates"].__setitem__(0, forged), rehash=True)
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 2
    assert "fog/south" in reason


def test_aggregate_signature_made_with_another_key(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    forged = fed.aggregate("north", 1, signer="fog/south")
    forged["sig"]["signer"] = "fog/north"  # claims north, signed with south's key
    rewrite(root, 2, lambda r: r["lineage"]["aggregates"].__setitem__(0, forged), rehash=True)
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 2
    assert "does not verify" in reason


def test_aggregate_for_another_base(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    stale = fed.aggregate("north", 0)
    rewrite(root, 2, lambda r: r["lineage"]["aggregates"].__setitem__(0, stale), rehash=True)
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 2
    assert "based on v0" in reason


def test_forged_edge_proof(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    rewrite(
        root,
        1,
        lambda r: r["lineage"]["aggregates"][1]["edges"][1].update(sig="ab" * 64),
        rehash=True,
    )
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 1
    assert "edge/south/s1" in reason


def test_edge_of_another_fog_is_refused(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    south_edge = fed.edge_entry("south", "s0", 2)

    def graft(r: dict[str, Any]) -> None:
        r["lineage"]["aggregates"][0]["edges"][0] = south_edge
        r["fogs"]["north"]["contributors"] = ["s0", "n1"]

    rewrite(root, 3, graft, rehash=True)
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 3
    assert "edge/north/s0" in reason


def test_unknown_signer_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    build_store(root, versions=3)
    others = Federation()  # same party ids, other keys
    version, reason = _first_bad(verify_store(root, others.trust(), None))
    assert version == 0  # v0's record is signed by a cloud key the other bundle lacks
    assert "does not verify" in reason or "bad signature" in reason


def test_unsigned_lineage_with_a_bundle_fails(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    rewrite(root, 1, lambda r: r["lineage"].update(signed=False), rehash=True)
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 1
    assert "unsigned" in reason


def test_revoked_signers_still_verify_and_are_marked(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    trust = fed.trust()
    trust.revoke("fog/north")
    trust.revoke("edge/south/s0")
    report = verify_store(root, trust, None)
    assert report.ok, [v.line() for v in report.versions]
    assert report.versions[1].revoked == ("edge/south/s0", "fog/north")
    assert "revoked since: edge/south/s0, fog/north" in report.versions[1].line()


def test_pruned_store_verifies_from_its_oldest_version(tmp_path: Path) -> None:
    root = tmp_path / "store"
    fed = build_store(root, versions=5, keep=2)
    report = verify_store(root, fed.trust(), None)
    assert report.ok
    assert [v.version for v in report.versions] == [3, 4]
    assert report.versions[0].chain_start


def test_legacy_record_without_record_hash_fails(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    rewrite(root, 0, lambda r: r.pop("record_hash"), rehash=False)
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 0
    assert "no record_hash" in reason


def test_malformed_lineage_is_reported_not_raised(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    rewrite(root, 2, lambda r: r["lineage"]["aggregates"][0].pop("edges"), rehash=True)
    version, reason = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 2
    assert "malformed" in reason


def test_unreadable_record_is_reported(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    (root / "v00000003.json").write_text("{not json")
    version, _ = _first_bad(verify_store(root, fed.trust(), None))
    assert version == 3


def test_report_keeps_walking_after_the_first_bad(honest: tuple[Path, Federation]) -> None:
    root, fed = honest
    rewrite(root, 1, lambda r: r.update(round=7), rehash=False)
    report = verify_store(root, fed.trust(), None)
    assert [v.ok for v in report.versions] == [True, False, True, True]
    assert json.loads((root / "v00000002.json").read_text())["version"] == 2


def test_a_rewritten_and_rehashed_history_fails_without_the_clouds_key(tmp_path: Path) -> None:
    """A hash chain alone can be rewritten whole from any version on; signed records cannot."""
    fed = build_store(tmp_path, versions=4)

    def edit(record: dict) -> None:
        record["metrics"] = {"accuracy": 0.99}

    rewrite(tmp_path, 1, edit, rehash=True)
    for v in (2, 3):  # re-link the children, as an attacker with write access would
        parent = json.loads((tmp_path / f"v{v - 1:08d}.json").read_text())
        rewrite(tmp_path, v, lambda r, p=parent: r.update(parent_record=p["record_hash"]),
                rehash=True)
    report = verify_store(tmp_path, fed.trust(), None)
    assert report.first_bad is not None and report.first_bad.version == 1
    assert "record_sig" in (report.first_bad.reason or "")
    # without a trust bundle only the chain is checked, and the rewrite goes unnoticed
    assert verify_store(tmp_path, None, None).ok


def test_a_signed_record_without_record_sig_fails(tmp_path: Path) -> None:
    fed = build_store(tmp_path, versions=3)
    rewrite(tmp_path, 2, lambda r: r.pop("record_sig"), rehash=False)
    bad = verify_store(tmp_path, fed.trust(), None).first_bad
    assert bad is not None and bad.version == 2
