"""The building blocks of SecAgg+: fixed point mod 2^32, the mask PRG, Shamir sharing, the
neighbour graph and the share encryption."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from hierfl.secagg import crypto, shamir
from hierfl.secagg.encoding import FixedPoint
from hierfl.secagg.errors import SecAggAuthError, SecAggError, SecAggMessageError
from hierfl.secagg.graph import COMPLETE_UP_TO, default_degree, neighbours
from hierfl.secagg.params import default_threshold
from hierfl.secagg.prg import expand


def test_scale_is_the_largest_power_of_two_that_cannot_overflow() -> None:
    for n, clip in [(1, 1.0), (5, 1.0), (20, 3.0), (100, 1.0), (1000, 0.1)]:
        fp = FixedPoint.for_region(n, clip)
        assert n * (clip * fp.scale + 0.5) < 2**31
        assert n * (clip * 2 * fp.scale + 0.5) >= 2**31
    assert FixedPoint.for_region(100, 1.0).scale == 2.0**24
    with pytest.raises(SecAggError, match="overflow"):
        FixedPoint(clip_norm=1.0, scale=2.0**25, max_summands=100)
    with pytest.raises(SecAggError, match="power of two"):
        FixedPoint(clip_norm=1.0, scale=1000.0, max_summands=2)


def test_worst_case_sum_at_the_bound_decodes_exactly() -> None:
    fp = FixedPoint.for_region(100, 1.0)
    # every update all on one coordinate at the bound, same sign: the largest possible sum
    updates = [np.array([1.0, 0.0, -0.0]), np.array([-1.0, 0.0, 0.0])]
    for u in updates:
        total = np.zeros(3, dtype=np.uint32)
        for _ in range(100):
            total += fp.encode(u)
        assert np.array_equal(fp.decode_sum(total), 100 * u)


def test_encode_clips_to_the_norm_bound_and_refuses_non_finite() -> None:
    fp = FixedPoint.for_region(10, 2.0)
    x = np.array([3.0, 4.0])  # norm 5
    assert np.allclose(fp.clip(x), [1.2, 1.6])
    assert np.array_equal(fp.quantize(x), np.rint(np.array([1.2, 1.6]) * fp.scale))
    assert np.array_equal(fp.clip(np.array([0.3, 0.4])), [0.3, 0.4])
    for bad in (np.array([np.nan, 0.0]), np.array([np.inf]), np.zeros((2, 2))):
        with pytest.raises(SecAggMessageError):
            fp.encode(bad)


def test_modular_sum_of_random_updates_matches_integer_sum() -> None:
    rng = np.random.default_rng(0)
    fp = FixedPoint.for_region(20, 1.0)
    xs = [rng.normal(size=1000) for _ in range(20)]
    total = np.zeros(1000, dtype=np.uint32)
    for x in xs:
        total += fp.encode(x)
    assert np.array_equal(fp.decode_integers(total), sum(fp.quantize(x) for x in xs))


def test_prg_is_deterministic_per_seed_and_seed_separated() -> None:
    a, b = bytes(32), bytes([1]) + bytes(31)
    assert np.array_equal(expand(a, 1000), expand(a, 1000))
    assert np.array_equal(expand(a, 1000)[:10], expand(a, 10))
    assert not np.array_equal(expand(a, 1000), expand(b, 1000))
    assert expand(a, 0).size == 0
    with pytest.raises(ValueError, match="32 bytes"):
        expand(b"short", 4)


def test_shamir_any_t_shares_recover_the_secret_and_fewer_do_not() -> None:
    rb = random.Random(3).randbytes
    secret = rb(32)
    shares = shamir.share(secret, list(range(1, 8)), 4, rb)
    for subset in itertools.combinations(shares, 4):
        assert shamir.reconstruct({x: shares[x] for x in subset}, 4) == secret
    three = {x: shares[x] for x in (1, 2, 3)}
    with pytest.raises(ValueError, match="need 4"):
        shamir.reconstruct(three, 4)
    # interpolating a degree-3 polynomial through 3 points gives garbage, not the secret
    with pytest.raises(ValueError, match="32-byte"):
        shamir.reconstruct(three, 3)
    for value in shares.values():
        assert shamir.share_from_bytes(shamir.share_to_bytes(value)) == value
    with pytest.raises(ValueError, match="distinct"):
        shamir.share(secret, [1, 1, 2], 2, rb)
    with pytest.raises(ValueError, match="threshold"):
        shamir.share(secret, [1, 2], 3, rb)


def test_graph_is_regular_symmetric_and_a_function_of_the_seed() -> None:
    ids = [f"e{i}" for i in range(100)]
    k = default_degree(100)
    g = neighbours(ids, k, b"seed")
    assert all(len(v) == k and u not in v for u, v in g.items())
    assert all(u in g[v] for u in g for v in g[u])
    assert neighbours(list(reversed(ids)), k, b"seed") == g
    assert neighbours(ids, k, b"other") != g
    assert default_degree(COMPLETE_UP_TO) == COMPLETE_UP_TO - 1
    assert neighbours(ids[:5], 4, b"x")["e0"] == frozenset(ids[1:5])
    with pytest.raises(ValueError, match="even"):
        neighbours(ids, 5, b"seed")


def test_default_threshold_is_above_two_thirds() -> None:
    assert [default_threshold(m) for m in (2, 3, 5, 15, 20)] == [2, 3, 4, 11, 14]
    for m in range(2, 200):
        t = default_threshold(m)
        assert 3 * t > 2 * m
        assert t <= m


def test_share_encryption_binds_ids_and_round() -> None:
    rb = random.Random(5).randbytes
    a, b = crypto.private_from_bytes(rb(32)), crypto.private_from_bytes(rb(32))
    ka = crypto.agree(a, crypto.public_bytes(b), b"enc", b"r|1")
    assert ka == crypto.agree(b, crypto.public_bytes(a), b"enc", b"r|1")
    assert ka != crypto.agree(a, crypto.public_bytes(b), b"mask", b"r|1")
    assert ka != crypto.agree(a, crypto.public_bytes(b), b"enc", b"r|2")
    ct = crypto.encrypt_share(ka, rb(12), b"payload", context=b"r|1", sender="a", recipient="b")
    assert crypto.decrypt_share(ka, ct, context=b"r|1", sender="a", recipient="b") == b"payload"
    for kw in ({"context": b"r|2", "sender": "a", "recipient": "b"},
               {"context": b"r|1", "sender": "b", "recipient": "a"}):
        with pytest.raises(SecAggAuthError):
            crypto.decrypt_share(ka, ct, **kw)
    with pytest.raises(SecAggAuthError):
        crypto.decrypt_share(ka, ct[:10], context=b"r|1", sender="a", recipient="b")
    with pytest.raises(SecAggMessageError):
        crypto.agree(a, bytes(32), b"enc", b"r|1")  # a low-order point
