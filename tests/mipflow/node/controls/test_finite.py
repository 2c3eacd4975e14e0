"""Releases hold finite numbers only (ADR 0053, control ``non_finite``)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.finite import NON_FINITE_MESSAGE, check_finite, has_non_finite


@pytest.mark.parametrize("doc", [
    {"m2": [[1.0, math.inf]]}, {"mean": np.array([1.0, np.nan])}, [{"x": (1, float("-inf"))}],
    {"s": np.float64("inf")}, {"o": np.array([1.0, None, math.nan], dtype=object)}, math.nan,
])
def test_a_nan_or_infinity_anywhere_is_found(doc) -> None:
    assert has_non_finite(doc)


@pytest.mark.parametrize("doc", [
    {"m2": [[1.0, 2.0]], "n": 3, "ok": True, "name": "inf", "none": None}, np.arange(4), np.array([1.5, 1e308]),
    {"s": np.float32(3.0)}, [],
])
def test_finite_releases_pass(doc) -> None:
    assert not has_non_finite(doc)


def test_the_refusal_is_one_message_naming_no_value() -> None:
    messages = set()
    for bad in (math.inf, -math.inf, math.nan, np.float64(np.inf)):
        with pytest.raises(DisclosureError) as info:
            check_finite(None, None, SimpleNamespace(aggregates={"moments": {"m2": [[bad]]}}, notes=None))
        assert info.value.control == "non_finite"
        messages.add(str(info.value))
    assert messages == {NON_FINITE_MESSAGE}
    with pytest.raises(DisclosureError):
        check_finite(None, None, SimpleNamespace(aggregates={"n": 3}, notes={"x": math.nan}))
    check_finite(None, None, SimpleNamespace(aggregates={"n": 3}, notes=None))
