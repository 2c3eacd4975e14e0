"""Moments of a node's rows: the blocked two-pass computation against exact arithmetic."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from mipflow.algorithms.moments import (
    MOMENT_BLOCK, STREAM_BLOCK, column_moments, compute_moments, merge_moments, streamed_column_moments,
)


def _assert_comoments_close(got: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    """Entry-wise, on the scale of the variables: |got - ref|_ij <= rtol * sqrt(ref_ii ref_jj)
    (an off-diagonal co-moment near zero has no relative accuracy of its own)."""
    scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
    assert np.all(np.abs(got - ref) <= rtol * scale), np.max(np.abs(got - ref) / scale)


def _exact(values: np.ndarray) -> tuple[list[Fraction], list[list[Fraction]]]:
    """Mean and co-moment matrix of float rows in exact rational arithmetic."""
    n, k = values.shape
    cols = [[Fraction(float(v)) for v in values[:, j]] for j in range(k)]
    mean = [sum(c) / n for c in cols]
    m2 = [[sum((a - mean[i]) * (b - mean[j]) for a, b in zip(cols[i], cols[j])) for j in range(k)]
          for i in range(k)]
    return mean, m2


@pytest.mark.parametrize("rows", [1, 7, MOMENT_BLOCK - 1, MOMENT_BLOCK, MOMENT_BLOCK + 3, 2 * MOMENT_BLOCK + 11])
def test_blocked_moments_equal_exact_arithmetic(rows):
    rng = np.random.default_rng(rows)
    # a large common offset: the case where one-pass formulas cancel catastrophically
    values = rng.normal(size=(rows, 3)) * [1.0, 1e-3, 50.0] + [1e6, -3.0, 2e4]
    got = compute_moments(values, matrix=True)
    diagonal = compute_moments(values)
    if rows <= 2000:
        mean, m2 = _exact(values)
        np.testing.assert_allclose(got.mean, [float(m) for m in mean], rtol=1e-15, atol=0)
        _assert_comoments_close(got.m2, np.array([[float(v) for v in r] for r in m2]), 1e-12)
    else:  # exact arithmetic on a million numbers is slow: check against the merge of exact parts
        parts = [compute_moments(values[s:s + 1000], matrix=True) for s in range(0, rows, 1000)]
        merged = merge_moments(parts)
        np.testing.assert_allclose(got.mean, merged.mean, rtol=1e-14)
        _assert_comoments_close(got.m2, merged.m2, 1e-10)  # the reference rounds too
    assert got.n == diagonal.n == rows
    np.testing.assert_allclose(diagonal.m2, np.diag(got.m2), rtol=1e-13)
    np.testing.assert_array_equal(diagonal.mean, got.mean)


def test_one_dimensional_and_empty_input():
    values = np.array([1.0, 2.0, 4.0])
    got = compute_moments(values)
    assert got.n == 3 and got.mean.tolist() == [7 / 3]
    np.testing.assert_allclose(got.m2, [((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2)])
    empty = compute_moments(np.zeros((0, 2)), matrix=True)
    assert empty.n == 0 and empty.m2.shape == (2, 2) and not empty.m2.any()


@pytest.mark.parametrize("rows", [1, 2, 7, MOMENT_BLOCK - 1, MOMENT_BLOCK, MOMENT_BLOCK + 1, 3 * MOMENT_BLOCK + 5])
@pytest.mark.parametrize("k", [1, 4])
def test_column_moments_are_those_of_the_column_major_matrix_bit_for_bit(rows, k):
    from mipflow.algorithms.moments import column_moments

    rng = np.random.default_rng(rows + k)
    values = np.asfortranarray(rng.normal(size=(rows, k)) * np.geomspace(1e-3, 50.0, k)
                               + np.linspace(-3.0, 1e6, k))
    columns = [np.array(values[:, j]) for j in range(k)]  # separate arrays, as a frame's columns
    for matrix in (True, False):
        want = compute_moments(values, matrix=matrix)
        got = column_moments(columns, matrix=matrix)
        assert got.n == want.n
        assert np.array_equal(got.mean, want.mean) and np.array_equal(got.m2, want.m2)  # not only close
        assert got.m2.shape == want.m2.shape


def test_column_moments_without_rows_or_columns_and_of_unequal_columns():
    from mipflow.algorithms.moments import column_moments

    for rows, k in ((0, 3), (5, 0), (0, 0)):
        for matrix in (True, False):
            want = compute_moments(np.zeros((rows, k)), matrix=matrix)
            got = column_moments([np.zeros(rows)] * k, matrix=matrix, rows=rows)
            assert (got.n, got.mean.shape, got.m2.shape) == (want.n, want.mean.shape, want.m2.shape)
            assert np.array_equal(got.m2, want.m2)
    with pytest.raises(ValueError):
        column_moments([np.zeros(3), np.zeros(4)])


class _Rows:
    """A :class:`~mipflow.algorithms.moments.ColumnSource` over arrays in memory, counting the rows
    each call asks for (the largest must stay at most the block)."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = columns
        self.asked: list[int] = []

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def reader(self, codes):
        position = [0]

        def next_rows(m: int) -> list[np.ndarray]:
            self.asked.append(m)
            start, position[0] = position[0], position[0] + m
            assert position[0] <= len(self)
            return [self.columns[c][start:start + m] for c in codes]

        return next_rows


@pytest.mark.parametrize("block", [128, 1000, MOMENT_BLOCK, STREAM_BLOCK])
@pytest.mark.parametrize("rows", [1, 127, 129, MOMENT_BLOCK, MOMENT_BLOCK + 1, STREAM_BLOCK, 2 * STREAM_BLOCK,
                                  2 * STREAM_BLOCK + 9])
def test_streamed_moments_are_column_moments_bit_for_bit(rows, block):
    """Read ``block`` rows or fewer at a time (run lengths hitting the block exactly, one row over, a
    block of one row), the same bits as the columns whole: large offsets, small spreads, a sum whose
    order matters (values 1e8 apart)."""
    rng = np.random.default_rng(rows + block)
    columns = {"a": rng.normal(1e6, 1e-3, rows), "b": rng.normal(-3.0, 1.0, rows) * rng.choice([1.0, 1e8], rows),
               "y": rng.normal(2e4, 50.0, rows)}
    source = _Rows(columns)
    codes = ["y", "a", "b", "a"]  # any order, repeats
    for matrix in (True, False):
        got = streamed_column_moments(source, codes, matrix=matrix, block=block)
        want = column_moments([columns[c] for c in codes], matrix=matrix)
        assert got.n == want.n == rows
        np.testing.assert_array_equal(got.mean, want.mean)
        np.testing.assert_array_equal(got.m2, want.m2)
    assert max(source.asked) <= max(block, MOMENT_BLOCK)


def test_streamed_moments_differ_from_a_plain_blocked_sum_where_order_matters():
    """The check above can fail: summing the same values block after block gives other bits here."""
    rng = np.random.default_rng(3)
    values = rng.normal(-3.0, 1.0, 2 * STREAM_BLOCK + 9) * rng.choice([1.0, 1e8], 2 * STREAM_BLOCK + 9)
    blocked = sum(np.add.reduce(values[s:s + 1000]) for s in range(0, len(values), 1000))
    assert blocked != np.add.reduce(values)
    got = streamed_column_moments(_Rows({"v": values}), ["v"], block=1000)
    assert got.mean[0] == column_moments([values]).mean[0]


def test_streamed_moments_without_rows_or_columns():
    empty = streamed_column_moments(_Rows({"a": np.zeros(0)}), ["a", "a"], matrix=True)
    assert empty.n == 0 and empty.m2.shape == (2, 2) and not empty.m2.any()
    none = streamed_column_moments(_Rows({"a": np.ones(5)}), [], matrix=True)
    assert none.n == 5 and none.m2.shape == (0, 0)
