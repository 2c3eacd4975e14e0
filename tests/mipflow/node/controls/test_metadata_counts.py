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


def test_after_a_registry_a_holder_and_a_non_holder_move_alike():
    """The fourteenth review's hole 3: keyed by the count alone, a node that held none of the withdrawn patients
    never moved (its count is unchanged) while a holder moved about 1 time in 3, so a move named the holder.  With
    the consent epoch in the draw, both redraw on applying the registry: the chance to move differs only as the
    noise's law at ``n`` and ``n - k`` does."""
    keys = [_key("epoch", i) for i in range(4000)]
    n, epoch = 120, "digest-of-the-new-registry"

    def moved(count_after: int) -> float:
        return float(np.mean([published_count(n, key=k, min_row_count=10, **ARGS)
                              != published_count(count_after, key=k, min_row_count=10, epoch=epoch, **ARGS)
                              for k in keys]))

    stranger, holder_1, holder_2 = moved(n), moved(n - 1), moved(n - 2)
    # a non-holder now moves as often as a fresh draw rounds to another ten (not never)
    assert stranger > 0.2
    # one or two withdrawn: the same rate within the sampling error (sd about 0.008 per rate)
    assert abs(holder_1 - stranger) < 0.04 and abs(holder_2 - stranger) < 0.06
    # without an epoch (before any registry) the values are as before: the same count, the same value
    assert all(published_count(n, key=k, min_row_count=10, **ARGS)
               == published_count(n, key=k, min_row_count=10, epoch="", **ARGS) for k in keys[:50])
