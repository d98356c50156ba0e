"""Per-update validation: typed errors, their order, and the adaptive norm bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hierfl.aggregation.validation import (
    UpdateValidator,
    ValidationPolicy,
    check_duplicate,
    check_finite,
    check_norm,
    check_samples,
    check_sender,
    check_shape,
    check_staleness,
    update_norm,
)
from hierfl.errors import (
    ConfigError,
    DuplicateUpdateError,
    NonFiniteError,
    NormBoundError,
    SampleCountError,
    ShapeMismatchError,
    StaleUpdateError,
    UnknownSenderError,
    ValidationError,
)

SIZE = 4


def _delta(value: float = 1.0) -> np.ndarray:
    return np.full(SIZE, value, dtype=np.float32)  # norm = 2 * |value|


# --- single checks -------------------------------------------------------------------------


def test_check_shape_accepts_matching_float32_vector() -> None:
    check_shape(_delta(), SIZE, sender="e1")


@pytest.mark.parametrize(
    ("delta", "match"),
    [
        ([1.0, 2.0, 3.0, 4.0], "expected an ndarray, got list"),
        (np.ones(SIZE, np.float64), "dtype float64, expected float32"),
        (np.ones((2, 2), np.float32), r"shape \(2, 2\), expected 1-D"),
        (np.ones(SIZE + 1, np.float32), "5 values, expected 4"),
    ],
)
def test_check_shape_rejects(delta: object, match: str) -> None:
    with pytest.raises(ShapeMismatchError, match=rf"update from 'e1': {match}"):
        check_shape(delta, SIZE, sender="e1")


def test_check_finite() -> None:
    check_finite(_delta())
    bad = np.array([1.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    with pytest.raises(NonFiniteError, match=r"'e2': 1 NaN and 2 Inf values \(first at index 1\)"):
        check_finite(bad, sender="e2")


def test_check_norm_returns_norm_and_rejects_above_bound() -> None:
    assert check_norm(_delta(), 2.0) == pytest.approx(2.0)
    assert check_norm(_delta(), math.inf) == pytest.approx(2.0)
    with pytest.raises(NormBoundError, match="'e3': L2 norm 4 exceeds the bound 3"):
        check_norm(_delta(2.0), 3.0, sender="e3")


def test_update_norm_accumulates_in_float64() -> None:
    delta = np.full(10, 1e20, dtype=np.float32)  # squares overflow float32
    assert update_norm(delta) == pytest.approx(math.sqrt(10) * 1e20, rel=1e-6)


@pytest.mark.parametrize("n", [0, 11, 2.5, True, "5"])
def test_check_samples_rejects(n: object) -> None:
    with pytest.raises(SampleCountError, match="'e4'"):
        check_samples(n, 1, 10, sender="e4")  # type: ignore[arg-type]


def test_check_samples_accepts_bounds_and_numpy_ints() -> None:
    check_samples(1, 1, 10)
    check_samples(np.int64(10), 1, 10)  # type: ignore[arg-type]


def test_check_staleness() -> None:
    check_staleness(5, 5, 0)
    check_staleness(3, 5, 2)
    with pytest.raises(StaleUpdateError, match="base version 2 is 3 behind current 5"):
        check_staleness(2, 5, 2, sender="e5")
    with pytest.raises(
        StaleUpdateError, match="base version 6 is newer than the current version 5"
    ):
        check_staleness(6, 5, 10, sender="e5")
    with pytest.raises(StaleUpdateError, match="versions must be ints"):
        check_staleness(5.0, 5, 0)  # type: ignore[arg-type]


def test_check_sender() -> None:
    check_sender("anyone", frozenset())
    check_sender("e1", frozenset({"e1"}))
    with pytest.raises(UnknownSenderError, match="'e9': sender is not in the allow-list"):
        check_sender("e9", frozenset({"e1", "e2"}))


def test_check_duplicate() -> None:
    check_duplicate("e1", set())
    with pytest.raises(DuplicateUpdateError, match="'e1'"):
        check_duplicate("e1", {"e1"})


# --- policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expected_size": 0},
        {"expected_size": SIZE, "max_norm": 0.0},
        {"expected_size": SIZE, "max_norm": float("nan")},
        {"expected_size": SIZE, "adaptive_norm_multiplier": -1.0},
        {"expected_size": SIZE, "min_samples": 10, "max_samples": 5},
        {"expected_size": SIZE, "max_staleness": -1},
        {"expected_size": SIZE, "allow_list": "edge-1"},
        {"expected_size": SIZE, "allow_list": [1, 2]},
        {"expected_size": SIZE, "norm_window": 3, "adaptive_min_norms": 5},
    ],
)
def test_policy_rejects_bad_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ValidationPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_normalises_allow_list() -> None:
    policy = ValidationPolicy(expected_size=SIZE, allow_list=["a", "b", "a"])  # type: ignore[arg-type]
    assert policy.allow_list == frozenset({"a", "b"})


# --- validator: order ----------------------------------------------------------------------

STRICT = ValidationPolicy(
    expected_size=SIZE,
    max_norm=1.0,
    min_samples=1,
    max_samples=100,
    max_staleness=0,
    allow_list=frozenset({"e1", "e2"}),
)
GOOD = {
    "sender": "e1",
    "base_version": 3,
    "current_version": 3,
    "num_samples": 10,
    "delta": _delta(0.25),
    "already_seen": frozenset(),
}
# Every later check fails too, so the test shows the documented one wins.
WORST_DELTA = np.full(SIZE + 1, np.nan, dtype=np.float32)  # wrong size, NaN, unbounded norm
LATER_FAIL = {"base_version": 1, "num_samples": 0, "delta": WORST_DELTA}
ORDERED_CASES = [
    (
        {**LATER_FAIL, "sender": "intruder", "already_seen": frozenset({"intruder"})},
        DuplicateUpdateError,
    ),
    ({**LATER_FAIL, "sender": "intruder"}, UnknownSenderError),
    (LATER_FAIL, StaleUpdateError),
    ({**LATER_FAIL, "base_version": 99}, StaleUpdateError),  # from the future
    ({"num_samples": 0, "delta": WORST_DELTA}, SampleCountError),
    ({"num_samples": 101, "delta": WORST_DELTA}, SampleCountError),
    ({"delta": WORST_DELTA}, ShapeMismatchError),
    ({"delta": np.array([np.nan, 1e6, 1e6, 1e6], np.float32)}, NonFiniteError),
    ({"delta": _delta(5.0)}, NormBoundError),
]


def _call(validator: UpdateValidator, **overrides: object) -> float:
    args = {**GOOD, **overrides}
    return validator.validate(**args)  # type: ignore[arg-type]


def test_good_update_passes_and_returns_norm() -> None:
    assert _call(UpdateValidator(STRICT)) == pytest.approx(0.5)


@pytest.mark.parametrize(("overrides", "expected"), ORDERED_CASES)
def test_checks_run_in_documented_order(
    overrides: dict[str, object], expected: type[ValidationError]
) -> None:
    with pytest.raises(ValidationError) as info:
        _call(UpdateValidator(STRICT), **overrides)

    assert type(info.value) is expected
    assert "'" in str(info.value)  # the message names the sender


def test_error_reasons_are_distinct_labels() -> None:
    errors = {error for _, error in ORDERED_CASES}
    assert len({error.reason for error in errors}) == len(errors) == 7


# --- validator: adaptive norm bound --------------------------------------------------------


def test_adaptive_bound_needs_five_norms() -> None:
    validator = UpdateValidator(ValidationPolicy(expected_size=SIZE, adaptive_norm_multiplier=3.0))
    big = _delta(100.0)  # norm 200

    for _ in range(4):
        validator.accept_norm(1.0)
    assert validator.adaptive_bound is None
    assert _call(validator, delta=big) == pytest.approx(200.0)  # accepted: only 4 norms seen

    validator.accept_norm(2.0)
    assert validator.adaptive_bound == pytest.approx(3.0)  # 3 x median(1, 1, 1, 1, 2)
    with pytest.raises(NormBoundError, match="L2 norm 200 exceeds the bound 3"):
        _call(validator, delta=big)
    assert _call(validator, delta=_delta(1.0)) == pytest.approx(2.0)


def test_adaptive_and_fixed_bounds_take_the_tighter() -> None:
    policy = ValidationPolicy(expected_size=SIZE, max_norm=10.0, adaptive_norm_multiplier=2.0)
    validator = UpdateValidator(policy)
    assert validator.norm_bound == 10.0
    for _ in range(5):
        validator.accept_norm(1.0)
    assert validator.norm_bound == pytest.approx(2.0)
    for _ in range(5):
        validator.accept_norm(50.0)
    assert validator.norm_bound == pytest.approx(10.0)  # adaptive 100 > fixed 10


def test_adaptive_window_is_bounded_and_forgets() -> None:
    policy = ValidationPolicy(expected_size=SIZE, adaptive_norm_multiplier=2.0, norm_window=5)
    validator = UpdateValidator(policy)
    for _ in range(5):
        validator.accept_norm(100.0)
    for _ in range(5):
        validator.accept_norm(1.0)
    assert validator.accepted_norms == (1.0,) * 5
    assert validator.adaptive_bound == pytest.approx(2.0)


def test_adaptive_bound_off_while_median_is_zero() -> None:
    validator = UpdateValidator(ValidationPolicy(expected_size=SIZE, adaptive_norm_multiplier=2.0))
    for _ in range(5):
        validator.accept_norm(0.0)
    assert validator.adaptive_bound is None
    assert validator.norm_bound == math.inf


def test_validate_does_not_record_norms() -> None:
    validator = UpdateValidator(ValidationPolicy(expected_size=SIZE, adaptive_norm_multiplier=2.0))
    for _ in range(10):
        _call(validator)
    assert validator.accepted_norms == ()


@pytest.mark.parametrize("norm", [math.nan, math.inf, -1.0])
def test_accept_norm_rejects_bad_values(norm: float) -> None:
    with pytest.raises(NonFiniteError):
        UpdateValidator(STRICT).accept_norm(norm)
