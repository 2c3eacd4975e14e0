"""``ExactSum`` (ADR 0062, amendment 17): ``math.fsum``'s float, bit for bit, from values given a chunk at a time."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mipflow.algorithms.exact_sum import ExactSum


def _values(kind: int, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(0, 2000))
    if kind == 0:  # values in [-1, 1], as a noisy release's scaled columns
        return np.clip(rng.normal(size=n), -1, 1) * np.clip(rng.normal(size=n), -1, 1)
    if kind == 1:  # every magnitude
        return rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, size=n)
    if kind == 2:  # cancellation: large terms that cancel beside small ones
        big = rng.normal(size=n) * 1e16
        return rng.permutation(np.concatenate([big, -big, rng.normal(size=n)]))
    # subnormals, signed zeros, ties
    return rng.choice([5e-324, -5e-324, 1e-310, -0.0, 0.0, 1.0, 2.0 ** 53, 0.5, 1e300, -1e300], size=n)


@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_chunked_exact_sums_are_fsums_bit_for_bit(kind) -> None:
    rng = np.random.default_rng(kind)
    for _ in range(60):
        v = _values(kind, rng)
        total = ExactSum()
        cuts = np.sort(rng.integers(0, len(v) + 1, size=5))
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(v)]):
            total.add(v[a:b])
        assert total.value.hex() == math.fsum(v).hex()
    assert ExactSum().value == 0.0


def test_a_chunks_fsum_added_up_is_not_the_exact_sum() -> None:
    """The control: summing each chunk's fsum rounds twice and differs (so the test above could fail)."""
    v = np.array([1.0, 2.0 ** -53, 2.0 ** -53])
    total = ExactSum()
    total.add(v[:2])
    total.add(v[2:])
    assert total.value == math.fsum(v) == 1.0 + 2.0 ** -52
    assert math.fsum(v[:2]) + math.fsum(v[2:]) == 1.0


def test_a_value_that_is_not_finite_is_refused() -> None:
    with pytest.raises(ValueError):
        ExactSum().add(np.array([1.0, np.nan]))
