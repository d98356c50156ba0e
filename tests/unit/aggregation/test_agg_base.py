"""Shared contract of every aggregator: input checks, registry, purity, output type."""

from __future__ import annotations

import numpy as np
import pytest

import hierfl.aggregation as agg
from hierfl.aggregation.base import AGGREGATORS, Aggregator, check_inputs, make_aggregator
from hierfl.aggregation.trimmed_mean import TrimmedMean
from hierfl.errors import AggregationError, ConfigError

NAMES = [
    "fedavg",
    "median",
    "trimmed_mean",
    "krum",
    "multikrum",
    "geometric_median",
    "norm_bounded",
    "clipped_trimmed_mean",
]


def _stack(n: int = 7, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    updates = rng.standard_normal((n, d)).astype(np.float32)
    weights = rng.integers(1, 100, n).astype(np.float64)
    return updates, weights


def test_registry_names() -> None:
    assert sorted(AGGREGATORS) == sorted(NAMES)
    for name, cls in AGGREGATORS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", NAMES)
def test_make_aggregator_defaults_follow_protocol(name: str) -> None:
    # Prepare / Execute
    aggregator = make_aggregator(name)
    updates, weights = _stack()
    result = aggregator(updates, weights)

    # Assert
    assert isinstance(aggregator, Aggregator)
    assert aggregator.name == name
    assert aggregator.robust is (name != "fedavg")
    assert result.dtype == np.float32
    assert result.shape == (updates.shape[1],)
    assert np.isfinite(result).all()


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_not_mutated(name: str) -> None:
    updates, weights = _stack(n=9, d=13, seed=3)
    before_u, before_w = updates.copy(), weights.copy()
    updates.flags.writeable = False  # any in-place write would raise
    weights.flags.writeable = False

    result = make_aggregator(name)(updates, weights)

    np.testing.assert_array_equal(updates, before_u)
    np.testing.assert_array_equal(weights, before_w)
    assert not np.shares_memory(result, updates)


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_and_float64_inputs(name: str) -> None:
    updates, weights = _stack(n=9, d=12, seed=4)
    fortran = np.asfortranarray(updates)
    strided = np.repeat(updates, 2, axis=1)[:, ::2]
    expected = make_aggregator(name)(updates, weights)

    np.testing.assert_array_equal(make_aggregator(name)(fortran, weights), expected)
    np.testing.assert_array_equal(make_aggregator(name)(strided, weights), expected)
    as64 = make_aggregator(name)(updates.astype(np.float64), weights)
    assert as64.dtype == np.float32
    np.testing.assert_allclose(as64, expected, rtol=1e-5, atol=1e-6)


def test_make_aggregator_unknown_name_lists_choices() -> None:
    with pytest.raises(ConfigError, match="unknown aggregator 'mean'") as info:
        make_aggregator("mean")
    for name in NAMES:
        assert name in str(info.value)


def test_make_aggregator_unknown_param_names_it() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown parameter\(s\) beta; accepted: trim_ratio, nnm_f"
    ):
        make_aggregator("trimmed_mean", {"beta": 0.2})
    with pytest.raises(ConfigError, match=r"parameter\(s\) x; accepted: nnm_f$"):
        make_aggregator("median", {"x": 1})


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("trimmed_mean", {"trim_ratio": 0.5}, "trim_ratio"),
        ("trimmed_mean", {"trim_ratio": -0.1}, "trim_ratio"),
        ("trimmed_mean", {"trim_ratio": "0.1"}, "trim_ratio"),
        ("krum", {"f": -1}, "f must be >= 0"),
        ("krum", {"f": 1.5}, "f must be an int"),
        ("krum", {"f": True}, "f must be an int"),
        ("multikrum", {"m": 0}, "m must be >= 1"),
        ("multikrum", {"weighted": 1}, "weighted must be a bool"),
        ("fedavg", {"max_samples": 0}, "max_samples"),
        ("fedavg", {"max_weight_fraction": 0.0}, "max_weight_fraction"),
        ("fedavg", {"max_weight_fraction": 1.5}, "max_weight_fraction"),
        ("geometric_median", {"eps": 0.0}, "eps"),
        ("geometric_median", {"max_iter": 0}, "max_iter"),
        ("geometric_median", {"tol": float("nan")}, "tol"),
        ("norm_bounded", {"multiplier": 0.0}, "multiplier"),
        ("norm_bounded", {"max_norm": float("inf")}, "max_norm"),
    ],
)
def test_make_aggregator_bad_values(name: str, params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_aggregator(name, params)


def test_make_aggregator_params_must_be_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        make_aggregator("krum", [("f", 1)])  # type: ignore[arg-type]


def test_config_objects_are_frozen() -> None:
    aggregator = TrimmedMean(trim_ratio=0.2)
    with pytest.raises(AttributeError):
        aggregator.trim_ratio = 0.3  # type: ignore[misc]
    with pytest.raises(TypeError):
        TrimmedMean(0.2)  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize(
    ("updates", "weights", "match"),
    [
        ([[1.0, 2.0]], [1.0], "numpy array"),
        (np.ones(3, np.float32), np.ones(3), "2-D"),
        (np.ones((2, 3), np.int32), np.ones(2), "floating dtype"),
        (np.ones((0, 3), np.float32), np.ones(0), "no updates"),
        (np.ones((2, 0), np.float32), np.ones(2), "no parameters"),
        (np.ones((2, 3), np.float32), np.ones(3), r"shape \(2,\)"),
        (np.ones((2, 3), np.float32), np.ones((2, 1)), r"shape \(2,\)"),
        (np.ones((2, 3), np.float32), np.array([1.0, np.nan]), "finite"),
        (np.ones((2, 3), np.float32), np.array([1.0, np.inf]), "finite"),
        (np.ones((2, 3), np.float32), np.array([1.0, -1.0]), ">= 0"),
        (np.ones((2, 3), np.float32), np.array(["a", "b"]), "real numbers"),
        (np.ones((2, 3), np.float32), np.array([True, False]), "real numbers"),
    ],
)
def test_check_inputs_rejects(updates: object, weights: object, match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        check_inputs(updates, weights)


@pytest.mark.parametrize("name", NAMES)
def test_every_rule_runs_the_input_checks(name: str) -> None:
    with pytest.raises(AggregationError, match=">= 0"):
        make_aggregator(name)(np.ones((5, 3), np.float32), np.array([1.0, 1, 1, 1, -1]))


def test_check_inputs_returns_float64_copy() -> None:
    weights = np.array([1, 2, 3], dtype=np.int64)
    out = check_inputs(np.ones((3, 2), np.float32), weights)
    assert out.dtype == np.float64
    assert not np.shares_memory(out, weights)


@pytest.mark.parametrize("name", NAMES)
def test_result_beyond_float32_range_raises(name: str) -> None:
    updates = np.full((5, 2), 1e39, dtype=np.float64)  # fine in float64, inf in float32
    with pytest.raises(AggregationError, match="non-finite"):
        make_aggregator(name, {"max_norm": 1e40} if name == "norm_bounded" else None)(
            updates,  # type: ignore[arg-type]  # float64 input is accepted
            np.ones(5),
        )


def test_public_all_is_curated() -> None:
    assert sorted(agg.__all__) == agg.__all__
    for name in agg.__all__:
        assert hasattr(agg, name)
    # Pure functions stay in their modules so they do not shadow the submodules.
    import hierfl.aggregation.median as median_module

    assert hasattr(median_module, "Median")
