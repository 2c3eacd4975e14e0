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

__all__ = ["on_disk", "moments_of", "DifferenceSource", "level_counts_on_disk", "level_moments", "narrowed_to",
           "pairwise_total", "cell_counts_on_disk", "cell_means_on_disk", "enumeration_index", "grouped_counts_on_disk"]


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
        return [streamed_column_moments(narrowed_to(data, [x], (level,)), [y]) for level in levels]
    from mipflow.algorithms.design import category_codes, numeric_values
    from mipflow.algorithms.moments import compute_moments

    groups = category_codes(data[x], variable).to_numpy()
    values = numeric_values(data[y])
    return [compute_moments(values[groups == level]) for level in levels]


def _level_lookup(source: Any, code: str, wanted: Callable[[str], Any], fill: Any, dtype: Any) -> np.ndarray:
    """``wanted(level)`` for each stored level code of a categorical column, then ``fill`` for code -1
    (missing): index it with ``np.where(codes >= 0, codes, len(stored))``."""
    stored = [str(s) for s in source.levels_of(code)]
    return np.array([wanted(s) for s in stored] + [fill], dtype=dtype)


def _looked_up(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return table[np.where(codes >= 0, codes, len(table) - 1)]


def narrowed_to(source: Any, codes: Sequence[str], levels: Sequence[object]) -> Any:
    """The rows on disk whose categorical columns ``codes`` hold ``levels`` (one each; as ``==`` compares an
    enumeration code with a level: a level no row holds selects no row, a missing value none).  One pass;
    memory: a block and the new packed mask (a bit a snapshot row)."""
    tables = [_level_lookup(source, code, lambda s, level=level: s == level, False, bool)
              for code, level in zip(codes, levels, strict=True)]

    def keep(values: list[np.ndarray]) -> np.ndarray:
        out = _looked_up(tables[0], values[0])
        for table, column in zip(tables[1:], values[1:]):
            out = out & _looked_up(table, column)
        return out

    return source.narrowed(list(codes), keep)


def pairwise_total(source: Any, code: str, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> float:
    """``np.add.reduce`` of the whole column ``code`` of ``source`` (after ``transform`` of each value, an
    elementwise function), bit for bit, read a block at a time: numpy's pairwise recursion followed down
    to runs of at most :data:`mipflow.algorithms.moments.STREAM_BLOCK` rows
    (:func:`mipflow.algorithms.moments.streamed_column_moments`' first pass)."""
    from mipflow.algorithms import moments

    n = len(source)
    if n == 0:
        return 0.0
    inner = source.reader([code])

    def next_rows(m: int) -> list[np.ndarray]:
        values = inner(m)[0]
        return [values if transform is None else transform(values)]

    return moments._pairwise_sum(next_rows, n, max(moments.STREAM_BLOCK, moments._PAIRWISE_LEAF))[0]


def cell_counts_on_disk(source: Any, codes: Sequence[str], enumerations: Sequence[Sequence[str]]) -> np.ndarray:
    """Rows at each combination of the enumeration codes ``enumerations`` of the categorical columns
    ``codes`` (int64, shape ``(len(e) for e in enumerations)``, the last fastest), one pass over their
    stored codes; a row missing one, or holding a level outside its enumeration, counts nowhere: what
    :func:`mipflow.algorithms.contingency_table.cross_tabulate` counts of the same complete rows."""
    shape = tuple(len(e) for e in enumerations)
    size = int(np.prod(shape)) if shape else 1
    tables = [_level_lookup(source, code, lambda s, e=tuple(e): e.index(s) if s in e else -1, -1, np.int64)
              for code, e in zip(codes, enumerations, strict=True)]
    totals = np.zeros(size, dtype=np.int64)
    n = len(source)
    if n:
        next_rows = source.reader(list(codes))
        for start in range(0, n, COUNT_ROWS):
            flat = np.zeros(min(COUNT_ROWS, n - start), dtype=np.int64)
            inside = np.ones(len(flat), dtype=bool)
            for table, width, values in zip(tables, shape, next_rows(len(flat))):
                index = _looked_up(table, values)
                inside &= index >= 0
                flat = flat * width + index
            totals += np.bincount(flat[inside], minlength=size)
    return totals.reshape(shape)


def cell_means_on_disk(source: Any, y: str, codes: Sequence[str], cells: Sequence[Sequence[str]]
                       ) -> tuple[list[int], list[float], float]:
    """Each cell's row count and mean of ``y`` and the within-cell sum of squares, over the rows on disk
    whose columns ``codes`` hold each cell's levels: what two-way ANOVA's frame path computes
    (:meth:`mipflow.algorithms.anova.Anova.local_step`: ``values.mean()``, its correction
    ``(values - mean).mean()``, ``((values - mean) ** 2).sum()``, accumulated in the cells' order), bit for
    bit: numpy's pairwise sums followed over each cell's rows, a block at a time (:func:`pairwise_total`)."""
    counts: list[int] = []
    means: list[float] = []
    within = 0.0
    for cell in cells:
        part = narrowed_to(source, codes, cell)
        n = len(part)
        counts.append(int(n))
        if not n:
            means.append(0.0)
            continue
        mean = float(np.float64(pairwise_total(part, y)) / n)
        mean += float(np.float64(pairwise_total(part, y, lambda v, m=mean: v - m)) / n)
        means.append(mean)
        within += float(pairwise_total(part, y, lambda v, m=mean: (v - m) ** 2))
    return counts, means, within


def enumeration_index(source: Any, code: str, enumeration: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    """``index(stored)``: each stored level code of the categorical column ``code`` as its position in
    ``enumeration`` (int64), -1 for a missing value or a level outside it."""
    table = _level_lookup(source, code, lambda s, e=tuple(enumeration): e.index(s) if s in e else -1, -1, np.int64)
    return lambda stored: _looked_up(table, stored)


def grouped_counts_on_disk(source: Any, y: str, count: Callable[[np.ndarray, np.ndarray], np.ndarray], size: int,
                           groups: Sequence[tuple[str | None, Any]], enumerations: dict[str, Sequence[str]]
                           ) -> list[np.ndarray]:
    """Per ``(column, level)`` of ``groups`` (column None: every row), ``count(values, mask)`` summed over the
    blocks of rows on disk: ``values`` a block's values of ``y`` (as :meth:`reader` gives them), ``mask`` its
    rows whose categorical ``column`` holds ``level`` (an enumeration code of ``enumerations[column]``, as
    ``category_codes(...) == level`` compares).  ``count`` gives ``size`` integers (a histogram's bins, a
    level's counts); integer sums, so any blocking gives the frame's counts.  Memory: a block."""
    columns = list(dict.fromkeys(c for c, _ in groups if c is not None))
    index = {c: enumeration_index(source, c, enumerations[c]) for c in columns}
    totals = [np.zeros(size, dtype=np.int64) for _ in groups]
    n = len(source)
    if n:
        next_rows = source.reader([y, *columns])
        for start in range(0, n, COUNT_ROWS):
            values, *codes = next_rows(min(COUNT_ROWS, n - start))
            at = {c: index[c](v) for c, v in zip(columns, codes)}
            for total, (column, level) in zip(totals, groups):
                mask = np.ones(len(values), dtype=bool) if column is None else \
                    at[column] == list(enumerations[column]).index(level)
                total += count(values, mask)
    return totals
