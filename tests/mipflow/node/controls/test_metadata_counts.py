"""Approximate dataset counts in the node's metadata (``mipflow.node.controls.metadata_counts``)."""
from __future__ import annotations

import hashlib

import numpy as np

from mipflow.node.controls.metadata_counts import COUNT_SCALE, COUNT_STEP, noisy_count, published_count

ARGS = {"data_model": "stroke:0.1", "dataset": "hospital_a"}


def _key(label: str, i: int = 0) -> bytes:
    """A fixed node key per (label, i): the statistical assertions below are about the draw's
    distribution over keys, so fixed keys make each run check the same sample."""
    return hashlib.sha256(f"{label}:{i}".encode()).digest()


def test_the_same_count_publishes_the_same_value_and_another_count_a_fresh_draw():
    key = _key("same")
    first = [published_count(n, key=key, min_row_count=10, **ARGS) for n in range(150, 250)]
    again = [published_count(n, key=key, min_row_count=10, **ARGS) for n in range(150, 250)]
    assert first == again  # keyed: asking again averages nothing out
    assert all(v % COUNT_STEP == 0 for v in first)
    other = [published_count(n, key=_key("other"), min_row_count=10, **ARGS) for n in range(150, 250)]
    assert first != other  # another node's key, other values
    # another dataset or data model: other draws
    assert [noisy_count(n, key=key, data_model="stroke:0.1", dataset="b") for n in range(150, 250)] != \
        [noisy_count(n, key=key, **ARGS) for n in range(150, 250)]


def test_the_noise_is_two_sided_geometric_of_the_declared_scale():
    draws = np.array([noisy_count(200, key=_key("scale", i), **ARGS) - 200 for i in range(20000)])
    p = np.exp(-1.0 / COUNT_SCALE)
    expected_var = 2 * p / (1 - p) ** 2
    assert abs(draws.mean()) < 0.15
    assert abs(draws.var() / expected_var - 1) < 0.06
    # symmetric, integer, P(0) as the distribution says
    assert abs((draws == 0).mean() - (1 - p) / (1 + p)) < 0.01


def test_small_counts_are_withheld_by_the_noisy_rounded_value_not_the_exact_one():
    keys = [_key("small", i) for i in range(2000)]
    zero = [published_count(0, key=k, min_row_count=10, **ARGS) for k in keys]
    nine = [published_count(9, key=k, min_row_count=10, **ARGS) for k in keys]
    ten = [published_count(10, key=k, min_row_count=10, **ARGS) for k in keys]
    # an empty dataset mostly reads as withheld; published values are multiples of the step and
    # only the noise's tail (P(draw >= 25) is about 1.4e-4 per key) reaches 30
    assert zero.count(None) > 1700
    assert all(v is None or v % COUNT_STEP == 0 for v in zero)
    assert sum(1 for v in zero if v is not None and v >= 30) <= 3
    # around the threshold both outcomes happen for both counts: no exact bit at min_row_count
    for values in (nine, ten):
        assert 80 < values.count(None) < 1900
