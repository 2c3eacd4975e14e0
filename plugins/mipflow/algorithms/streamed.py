"""Local steps whose sufficient statistics are sums, over a frame or over rows read a block at a time
(ADR 0062, after ADR 0049's amendments for linear and logistic regression).

An algorithm that declares ``streams_rows`` takes, at a node without differential privacy or explore
mode, its selection left on disk (:class:`mipflow.node.query.snapshot_rows.SnapshotRows`: ``len()``,
``reader(codes)``, ``levels_of(code)``, ``narrowed(codes, keep)``) in place of a frame.  The helpers here
give the same numbers from either, bit for bit: a frame's columns go through
:func:`mipflow.algorithms.moments.column_moments` and rows on disk through
:func:`mipflow.algorithms.moments.streamed_column_moments`, which reproduces its sums pass by pass.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from mipflow.algorithms.moments import Moments, column_moments, streamed_column_moments

__all__ = ["on_disk", "moments_of", "DifferenceSource", "level_counts_on_disk", "level_moments"]


def on_disk(data: Any) -> bool:
    """Whether a local step's rows are left on disk (read a block at a time) rather than a frame."""
    return hasattr(data, "reader")


def moments_of(data: Any, codes: Sequence[str], *, matrix: bool = False) -> Moments:
    """Moments (count, means, centred co-moments) of the numerical columns ``codes`` of complete rows,
    from a frame or from rows on disk: the same values, bit for bit.  Memory for rows on disk: a few
    blocks (independent of the rows' number)."""
    codes = list(codes)
    if on_disk(data):
        return streamed_column_moments(data, codes, matrix=matrix)
    from mipflow.algorithms.design import numeric_values

    return column_moments([numeric_values(data[c]) for c in codes], matrix=matrix, rows=len(data))


class DifferenceSource:
    """A :class:`mipflow.algorithms.moments.ColumnSource` of one column, ``first - second`` of two
    numerical columns of ``source``, computed a block at a time (the same float64 values as the
    frame's ``x - y``)."""

    def __init__(self, source: Any, first: str, second: str, name: str = "difference") -> None:
        self.source, self.first, self.second, self.name = source, first, second, name

    def __len__(self) -> int:
        return len(self.source)

    def reader(self, codes: Sequence[str]) -> Callable[[int], list[np.ndarray]]:
        if list(codes) != [self.name]:
            raise ValueError("a difference source has one column")
        inner = self.source.reader([self.first, self.second])

        def next_rows(m: int) -> list[np.ndarray]:
            first, second = inner(m)
            return [first - second]

        return next_rows


#: Rows asked of a source at a time when counting levels.
COUNT_ROWS = 262_144


def level_counts_on_disk(source: Any, code: str, enumeration: Sequence[str]) -> list[int]:
    """Rows at each of ``enumeration``'s codes of a categorical variable over rows on disk (one pass over
    its stored level codes; a missing value, code -1, counts nowhere): what
    ``category_codes(frame[code], var).value_counts()`` gives at each enumeration code."""
    stored = source.levels_of(code)
    totals = np.zeros(len(stored), dtype=np.int64)
    n = len(source)
    if n:
        next_rows = source.reader([code])
        for start in range(0, n, COUNT_ROWS):
            values = next_rows(min(COUNT_ROWS, n - start))[0]
            totals += np.bincount(values[values >= 0], minlength=len(stored))[:len(stored)]
    by_level: dict[str, int] = {}
    for level, count in zip(stored, totals.tolist()):
        by_level[level] = by_level.get(level, 0) + int(count)
    return [by_level.get(c, 0) for c in enumeration]


def level_moments(data: Any, y: str, x: str, variable: Any, levels: Sequence[object]) -> list[Moments]:
    """Moments of the numerical column ``y`` over the rows at each of ``levels`` of the categorical
    column ``x`` (``variable``), from a frame (:func:`mipflow.algorithms.moments.compute_moments` of
    ``y[category_codes(x) == level]``) or from rows on disk (the rows of a level narrowed from its stored
    codes, then :func:`~mipflow.algorithms.moments.streamed_column_moments`): the same values, bit for
    bit.  A level compares with each row's enumeration code as ``==`` does (a level no row holds: no
    row).  Memory for rows on disk: a block and a packed mask (a bit a snapshot row) at a time."""
    if on_disk(data):
        stored = [str(s) for s in data.levels_of(x)]
        out = []
        for level in levels:
            at = np.array([s == level for s in stored] + [False], dtype=bool)  # code -1 (missing): none
            part = data.narrowed([x], lambda v, at=at: at[np.where(v[0] >= 0, v[0], len(stored))])
            out.append(streamed_column_moments(part, [y]))
        return out
    from mipflow.algorithms.design import category_codes, numeric_values
    from mipflow.algorithms.moments import compute_moments

    groups = category_codes(data[x], variable).to_numpy()
    values = numeric_values(data[y])
    return [compute_moments(values[groups == level]) for level in levels]
