"""Sealed round sums in one process (ADR 0046): pooled per key as the nodes pool what they open."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.packed import pack
from mipflow.algorithms.sealed import POOLED, SEALED, local_state, pooled_sums, sum_parts
from mipflow.exceptions import RequestError

COX = get_algorithm("cox_regression")


def test_parts_are_added_per_key_packed_or_plain() -> None:
    parts = [{"s0": pack([1.0, 2.0], "s0"), "events": [3, 0]}, {"s0": [0.5, 0.25], "events": pack([4, 5], "e")}]
    pooled = sum_parts(parts)
    assert set(pooled) == {"s0", "events"}
    assert np.array_equal(pooled["s0"], [1.5, 2.25]) and np.array_equal(pooled["events"], [7.0, 5.0])


@pytest.mark.parametrize("parts, says", [
    ([{"s0": [1.0]}, {"s0": [1.0], "e0": [1.0]}], "e0 in some only"),
    ([{"s0": [1.0]}, {"s0": [1.0, 2.0]}], "differ in shape"),
    ([], "no sealed sums"),
], ids=["keys", "shape", "none"])
def test_parts_that_do_not_pool_are_refused(parts, says) -> None:
    with pytest.raises(RequestError, match=says):
        sum_parts(parts)


def test_the_next_local_state_carries_the_pooled_sums_only_when_there_are_some() -> None:
    state = {"phase": "score"}
    assert local_state(COX, state, [{"n": 3}, {"n": 4}]) is state
    out = local_state(COX, state, [{SEALED: {"s0": [1.0]}}, {SEALED: {"s0": [2.0]}}])
    assert out is not state and "sealed_pooled" not in state
    assert np.array_equal(pooled_sums(out, "x")["s0"], [3.0]) and POOLED == "sealed_pooled"
    with pytest.raises(RequestError, match="some nodes sent sealed sums"):
        local_state(COX, state, [{SEALED: {"s0": [1.0]}}, {"n": 4}])
    with pytest.raises(RequestError, match="needs the participants' pooled sealed sums"):
        pooled_sums(state, "a Cox score round")
