"""Secure aggregation's ring (mipflow.secagg.codec): fixed point, and only sums in the additive form."""
from __future__ import annotations

from fractions import Fraction

import pytest

from mipflow.secagg.codec import MAX_MAGNITUDE_BITS, MAX_NODE_BITS, RING, SCALE, additive_form, decode, encode
from mipflow.exceptions import RequestError


@pytest.mark.parametrize("value", [0.0, 1.0, -1.0, 1e-12, -3.25e7, 1234567.890123, 2.0 ** -60, 1e30,
                                   Fraction(1, 3)])
def test_fixed_point_round_trip(value) -> None:
    assert abs(decode(encode(value)) - Fraction(value)) <= Fraction(1, 2 * SCALE)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2.0 ** MAX_MAGNITUDE_BITS, -1e34])
def test_fixed_point_refuses_what_cannot_be_summed(value) -> None:
    with pytest.raises(RequestError):
        encode(value)


def test_fixed_point_sum_of_many_nodes_does_not_wrap() -> None:
    big = 2.0 ** MAX_MAGNITUDE_BITS - 2.0 ** 60  # just under the per-node limit
    total = sum(encode(-big) for _ in range(2 ** MAX_NODE_BITS)) % RING
    assert decode(total) == Fraction(-big) * 2 ** MAX_NODE_BITS


def test_additive_form_refuses_what_cannot_be_summed() -> None:
    with pytest.raises(RequestError, match="suppressed"):
        additive_form({"counts": [5, None, 7]})
    # an extreme is one patient's value and a sum of minima is no minimum: never summed
    for key in ("min", "max", "q2"):
        with pytest.raises(RequestError, match=f"aggregates.{key}: extremes and quantiles are not sums"):
            additive_form({"n": 40, key: [1.5, 2.0]})
