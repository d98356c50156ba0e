"""ModelStore: atomic checkpoints and hash-chained records."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from hierfl.errors import StoreError
from hierfl.model.store import ModelStore, canonical_json, record_hash, weights_sha256
from tests.unit.model.lineage_builder import LAYOUT, rewrite, weights


def _save(store: ModelStore, v: int, **meta: object) -> None:
    store.save(v, weights(v), LAYOUT, {"round": v, **meta})


def test_first_version_has_no_parent(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    ckpt = store.save(0, weights(0), LAYOUT, {"round": 0})
    assert ckpt.meta["parent_sha256"] is None
    assert ckpt.meta["parent_record"] is None
    assert ckpt.meta["record_hash"] == record_hash(ckpt.meta)
    assert ckpt.meta["sha256"] == weights_sha256(weights(0))


def test_records_chain_to_the_previous_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for v in range(3):
        _save(store, v)
    r1, r2 = store.read_record(1), store.read_record(2)
    assert r2["parent_sha256"] == r1["sha256"]
    assert r2["parent_record"] == r1["record_hash"]
    assert r2["record_hash"] == record_hash(r2)


def test_record_hash_is_sha256_of_canonical_json_without_itself(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _save(store, 0, note="é")
    rec = store.read_record(0)
    body = {k: v for k, v in rec.items() if k != "record_hash"}
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert raw == canonical_json(body)
    assert rec["record_hash"] == hashlib.sha256(raw).hexdigest()


def test_meta_with_non_string_keys_hashes_as_read_back(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(0, weights(0), LAYOUT, {"fogs": {2: "a", 10: "b"}, "t": (1, 2)})
    assert store.load(0).meta["fogs"] == {"2": "a", "10": "b"}


def test_meta_not_json_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not JSON"):
        ModelStore(tmp_path).save(0, weights(0), LAYOUT, {"x": object()})


def test_meta_cannot_forge_chain_fields(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    ckpt = store.save(0, weights(0), LAYOUT, {"parent_record": "f" * 64, "record_hash": "x"})
    assert ckpt.meta["parent_record"] is None
    assert ckpt.meta["record_hash"] == record_hash(ckpt.meta)


def test_load_round_trips_weights(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _save(store, 0)
    ckpt = store.load(0)
    np.testing.assert_array_equal(ckpt.weights, weights(0))
    assert ckpt.layout == LAYOUT


def test_load_refuses_an_edited_record(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _save(store, 0, num_samples=10)
    rewrite(tmp_path, 0, lambda r: r.update(num_samples=11), rehash=False)
    with pytest.raises(StoreError, match=r"version 0.*edited"):
        store.load(0)


def test_load_refuses_changed_weights(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _save(store, 0)
    st = tmp_path / "v00000000.safetensors"
    raw = bytearray(st.read_bytes())
    raw[-1] ^= 0x01
    st.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="version 0 fails its sha256"):
        store.load(0)


def test_load_accepts_a_legacy_record_without_record_hash(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _save(store, 0)
    rewrite(tmp_path, 0, lambda r: r.pop("record_hash"), rehash=False)
    assert store.load(0).version == 0


def test_latest_skips_an_edited_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ModelStore(tmp_path)
    _save(store, 0)
    _save(store, 1)
    rewrite(tmp_path, 1, lambda r: r.update(round=99), rehash=False)
    with caplog.at_level(logging.WARNING, logger="hierfl.model.store"):
        latest = store.latest()
    assert latest is not None
    assert latest.version == 0
    assert "version 1" in caplog.text


def test_existing_version_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _save(store, 0)
    with pytest.raises(StoreError, match="already exists"):
        _save(store, 0)


def test_pruned_store_chain_starts_at_oldest_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, keep=2)
    for v in range(4):
        _save(store, v)
    assert store.versions() == [2, 3]
    assert store.read_record(2)["parent_record"] is not None  # v1 existed when v2 was saved
    assert store.read_record(3)["parent_record"] == store.read_record(2)["record_hash"]


def test_a_gap_starts_a_new_chain(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _save(store, 0)
    _save(store, 5)
    assert store.read_record(5)["parent_record"] is None


def test_create_false_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        ModelStore(tmp_path / "nope", create=False)
    assert not (tmp_path / "nope").exists()
