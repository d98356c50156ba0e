"""Bounded cost per inbound frame: a declared vector size is checked before any allocation."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hierfl.compression import decode_vector as codec_decode
from hierfl.compression import encode_vector as codec_encode
from hierfl.compression._varint import encode_uvarints, max_gaps_len
from hierfl.errors import BadTensorError, ShapeMismatchError
from hierfl.security.tier import TierSecurity
from hierfl.security.trust import TrustStore
from hierfl.wire.codec import FLAG_SIGNED, MAGIC, DecodeLimits, decode_frame, encode_frame
from hierfl.wire.frames import UpdateFrame
from hierfl.wire.signing import Signer, Verifier

FED = "city"
EDGE = "edge/north/n0"
DECLARED = 50_000_000  # the default max_params: today's bound lets it through
SMALL = 4 * 2**20  # peak bytes a refusal may cost (decompressor contexts, msgpack); 200 MB before


def update_map(delta: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "update", "federation": FED, "created_at": 1.0, "metrics": {},
            "fog": "north", "edge": "n0", "base_version": 3, "base_seq": 1, "num_samples": 10,
            "delta": delta}


def frame_bytes(m: dict[str, Any], signer: Signer | None = None) -> bytes:
    """A frame around an arbitrary body map, signed by ``signer`` (an insider) when given."""
    body = msgpack.packb(m, use_bin_type=True)
    payload = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(body)
    flags = 0x01 | (FLAG_SIGNED if signer else 0)
    header = MAGIC + bytes([1, flags, 0, 0]) + len(body).to_bytes(4, "little")
    if signer is None:
        return header + payload
    claims = UpdateFrame(federation=FED, fog_id="north", edge_id="n0", base_version=3,
                         base_seq=1, num_samples=10, delta=np.zeros(1, np.float32))
    block = signer.signature_block(claims, header, payload)
    return header + payload + block + len(block).to_bytes(2, "little")


def bogus_sparse(size: int = DECLARED, k: int = 0) -> dict[str, Any]:
    return {"codec": "topk", "size": size, "k": k, "idx": b"\x00" * k,
            "values.data": b"\x00\x00\x80\x3f" * k}


def peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
    except (BadTensorError, ShapeMismatchError):
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def tier(key: Ed25519PrivateKey) -> TierSecurity:
    trust = TrustStore.from_parties({EDGE: key.public_key()}, FED)
    return TierSecurity("fog/north", None, Verifier(trust, FED))


# --- the declared size against the receiver's model -------------------------------------------


@pytest.mark.parametrize("k", [0, 1])
def test_tiny_frame_declaring_50m_params_is_refused_without_allocating(k: int) -> None:
    # Prepare: today's fog allocated 200 MB of zeros for this (2,000 frames: 142 s).
    data = frame_bytes(update_map(bogus_sparse(k=k)))
    assert len(data) < 200
    limits = DecodeLimits(expected_params=1_000)

    # Execute / Assert
    with pytest.raises(ShapeMismatchError, match="50000000") as info:
        decode_frame(data, limits=limits)
    assert info.value.reason == "validation.shape"
    assert peak_bytes(lambda: decode_frame(data, limits=limits)) < SMALL


def test_signed_insider_frame_is_refused_through_the_verifier(key, tier) -> None:
    data = frame_bytes(update_map(bogus_sparse(k=1)), Signer(EDGE, key, FED))
    limits = DecodeLimits(expected_params=1_000)

    with pytest.raises(ShapeMismatchError):
        tier.decode(data, limits=limits)
    assert peak_bytes(lambda: tier.decode(data, limits=limits, replay=False)) < SMALL


def test_unsigned_frame_is_refused_with_signatures_off() -> None:
    off = TierSecurity("fog/north", None, None)
    data = frame_bytes(update_map(bogus_sparse(k=1)))

    with pytest.raises(ShapeMismatchError):
        off.decode(data, limits=DecodeLimits(expected_params=1_000))


@pytest.mark.parametrize("spec", ["raw", "fp16", "int8", "topk+int8:fraction=0.1", "randk"])
def test_a_vector_of_the_expected_size_decodes(spec: str, key, tier) -> None:
    x = np.linspace(-1, 1, 1_000, dtype=np.float32)
    frame = UpdateFrame(federation=FED, fog_id="north", edge_id="n0", base_version=3,
                        base_seq=1, num_samples=10, delta=x)
    data = encode_frame(frame, codec=None if spec == "raw" else spec,
                        signer=Signer(EDGE, key, FED))

    out = tier.decode(data, limits=DecodeLimits(expected_params=1_000)).frame

    assert isinstance(out, UpdateFrame)
    assert out.delta.shape == (1_000,)
    with pytest.raises(ShapeMismatchError):
        tier.decode(data, limits=DecodeLimits(expected_params=999), replay=False)


def test_the_peak_measure_sees_the_allocation_a_size_check_prevents() -> None:
    # Control: 5 M declared values, no expected size: decoding allocates 20 MB of zeros.
    data = frame_bytes(update_map(bogus_sparse(size=5_000_000, k=1)))

    assert peak_bytes(lambda: decode_frame(data)) >= 20_000_000
    assert peak_bytes(lambda: decode_frame(data, limits=DecodeLimits(expected_params=10))) < SMALL


def test_without_an_expected_size_max_params_still_bounds() -> None:
    data = frame_bytes(update_map(bogus_sparse(size=DECLARED + 1, k=1)))

    with pytest.raises(BadTensorError, match="exceeds the limit"):
        decode_frame(data)


# --- sparse encodings no encoder writes ---------------------------------------------------------


def test_k_zero_for_a_nonempty_vector_is_refused_before_allocating() -> None:
    # No model size known (a fog before its first global model): max_params allows 50 M.
    data = frame_bytes(update_map(bogus_sparse(k=0)))

    with pytest.raises(BadTensorError, match="'k'"):
        decode_frame(data)
    assert peak_bytes(lambda: decode_frame(data)) < SMALL


@pytest.mark.parametrize("codec", ["topk", "randk+int8"])
def test_k_zero_is_refused_by_every_sparse_codec(codec: str) -> None:
    fields = codec_encode(np.ones(10, np.float32), codec)
    fields["k"] = 0
    for key in [k for k in fields if k.startswith("values.")]:
        fields[key] = b"" if isinstance(fields[key], bytes) else fields[key]
    if "idx" in fields:
        fields["idx"] = b""

    with pytest.raises(BadTensorError, match="'k'"):
        codec_decode(fields, 10)


def test_index_stream_longer_than_k_gaps_below_size_can_take_is_refused() -> None:
    # Prepare: 4 gaps below size 100 take 1 byte each; 5-byte varints are implausible.
    fields = codec_encode(np.arange(100, dtype=np.float32), "topk:fraction=0.04")
    assert fields["k"] == 4
    fields["idx"] = encode_uvarints(np.array([2**28] * 4, np.uint32))

    with pytest.raises(BadTensorError, match="'idx'"):
        codec_decode(fields, 100)


@pytest.mark.parametrize("size", [1, 2, 127, 128, 129, 1_000, 16_384, 70_000, 3_000_000])
@pytest.mark.parametrize("fraction", [0.0001, 0.01, 0.3, 1.0])
def test_gap_stream_bound_admits_every_honest_encoding(size: int, fraction: float) -> None:
    rng = np.random.default_rng(size)
    for x in (rng.normal(size=size).astype(np.float32),
              np.r_[np.zeros(size - 1), 1.0].astype(np.float32)):  # one gap as wide as it gets
        fields = codec_encode(x, f"topk:fraction={fraction}")
        assert len(fields["idx"]) <= max_gaps_len(fields["k"], size)
        assert codec_decode(fields, size).shape == (size,)
