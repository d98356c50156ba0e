"""The one exception family: every class has a unique reason label; only transport retries."""

from __future__ import annotations

import gc
import inspect
import re

import pytest

from hierfl import errors
from hierfl.errors import (
    BrokerRefusedError,
    FrameFieldError,
    HierflError,
    TransportError,
    ValidationError,
    WireFormatError,
)

CLASSES = [getattr(errors, name) for name in errors.__all__]


def _defined_here() -> set[str]:
    return {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }


def test_all_is_sorted_and_complete() -> None:
    assert list(errors.__all__) == sorted(errors.__all__)
    assert set(errors.__all__) == _defined_here()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_class_is_a_hierfl_error(cls: type[HierflError]) -> None:
    assert inspect.isclass(cls)
    assert issubclass(cls, HierflError)
    assert issubclass(cls, Exception)
    assert isinstance(cls.reason, str)
    assert cls.reason
    assert "reason" in vars(cls)  # set on the class itself, not inherited
    assert cls.__doc__


def test_reasons_are_unique() -> None:
    reasons = [cls.reason for cls in CLASSES]
    assert len(reasons) == len(set(reasons))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_reason_is_a_metrics_label(cls: type[HierflError]) -> None:
    # Lower-case dotted words, usable as a Prometheus label value without escaping
    assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", cls.reason)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_reason_prefix_follows_the_family(cls: type[HierflError]) -> None:
    # A subclass's reason extends its family's: wire.* for wire errors, and so on
    for family in (WireFormatError, ValidationError, TransportError):
        if issubclass(cls, family):
            assert cls.reason.split(".")[0] == family.reason.split(".")[0]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_only_transport_errors_are_retriable(cls: type[HierflError]) -> None:
    # A refused broker (bad credentials, certificate, missing topic) is fatal: no retry fixes it
    fatal = issubclass(cls, BrokerRefusedError)
    assert cls.retriable is (issubclass(cls, TransportError) and not fatal)


def test_wire_errors_are_never_retriable() -> None:
    for cls in CLASSES:
        if issubclass(cls, WireFormatError):
            assert cls.retriable is False


def test_subclass_without_reason_is_refused() -> None:
    with pytest.raises(TypeError, match="reason"):

        class NoReason(WireFormatError):  # pyright: ignore[reportUnusedClass]
            pass


def test_subclass_with_reason_is_accepted() -> None:
    class Custom(ValidationError):
        reason = "validation.custom_test"

    assert issubclass(Custom, HierflError)
    assert Custom.retriable is False
    assert Custom("x").reason == "validation.custom_test"
    del Custom
    gc.collect()  # drop it from HierflError's subclass tree before other tests walk it


def test_subclass_of_subclass_must_set_its_own_reason() -> None:
    with pytest.raises(TypeError):

        class Inherits(FrameFieldError):  # pyright: ignore[reportUnusedClass]
            pass


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_drawn_in_the_module_docstring(cls: type[HierflError]) -> None:
    # The tree in errors.py's docstring names every class with its reason
    doc = errors.__doc__ or ""
    line = next((ln for ln in doc.splitlines() if re.search(rf"\b{cls.__name__}\b", ln)), None)
    if cls is HierflError:
        assert line is not None
        return
    assert line is not None, f"{cls.__name__} missing from the drawn tree"
    assert f'reason="{cls.reason}"' in line


def test_frame_field_error_carries_its_field() -> None:
    exc = FrameFieldError("num_samples", "0 is out of range")
    assert exc.field == "num_samples"
    assert exc.problem == "0 is out of range"
    assert str(exc) == "field 'num_samples': 0 is out of range"
    assert exc.reason == "wire.field"


def _decompress_fails() -> None:
    try:
        raise ValueError("inner")
    except ValueError as inner:
        raise errors.DecompressionError("corrupt") from inner


def test_errors_chain_and_catch_by_family() -> None:
    with pytest.raises(WireFormatError) as info:
        _decompress_fails()
    assert isinstance(info.value.__cause__, ValueError)
    assert isinstance(info.value, HierflError)
