"""Partial moments that nodes release and the central side merges stably.

A node never sends raw sums of squares: it sends a count ``n``, the column
means and the *centred* second moments ``M2`` (sum of squared deviations from
its own mean, or the full centred co-moment matrix).  The central side merges
partial moments pairwise with the update of Chan, Golub & LeVeque (1979)::

    n     = n_a + n_b
    delta = mean_b - mean_a
    mean  = mean_a + delta * n_b / n
    M2    = M2_a + M2_b + outer(delta, delta) * n_a * n_b / n

which keeps full precision where ``sum(x**2) - n * mean**2`` would cancel
catastrophically (large means, small spread).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Count, means and centred second moments of ``k`` columns.

    Attributes
    ----------
    n : int
        Number of rows.
    mean : numpy.ndarray, shape (k,)
        Column means (zeros when ``n == 0``).
    m2 : numpy.ndarray, shape (k,) or (k, k)
        Sums of squared deviations from the mean (``diagonal``) or the full
        centred co-moment matrix ``sum((z - mean)(z - mean)^T)``.
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @property
    def is_matrix(self) -> bool:
        return self.m2.ndim == 2

    def variance(self, ddof: int = 1) -> np.ndarray:
        """Column variances (NaN where ``n - ddof <= 0``), shape (k,)."""
        diag = np.diagonal(self.m2) if self.is_matrix else self.m2
        if self.n - ddof <= 0:
            return np.full(diag.shape, np.nan)
        return diag / (self.n - ddof)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what a node releases)."""
        return {"n": int(self.n), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Moments":
        return cls(
            n=int(doc["n"]),
            mean=np.asarray(doc["mean"], dtype=float),
            m2=np.asarray(doc["m2"], dtype=float),
        )


#: Rows per block in :func:`compute_moments`.
MOMENT_BLOCK = 65_536


def compute_moments(values: np.ndarray, *, matrix: bool = False) -> Moments:
    """Two-pass moments of the rows of ``values``.

    Parameters
    ----------
    values : numpy.ndarray, shape (n,) or (n, k)
        Complete-case numeric data; a 1-D array is one column.
    matrix : bool
        Return the full ``(k, k)`` co-moment matrix instead of its diagonal.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    n, k = arr.shape
    if n == 0:
        return Moments(0, np.zeros(k), np.zeros((k, k)) if matrix else np.zeros(k))
    mean = arr.mean(axis=0)
    # Second pass: correct the mean for its own rounding error (Björck).  Both passes run over
    # blocks of rows, so no centred copy of the whole array is made (on a million rows that copy,
    # fresh memory each request, cost several times the arithmetic).
    correction = np.zeros(k)
    for start in range(0, n, MOMENT_BLOCK):
        correction += (arr[start:start + MOMENT_BLOCK] - mean).sum(axis=0)
    mean = mean + correction / n
    m2 = np.zeros((k, k)) if matrix else np.zeros(k)
    for start in range(0, n, MOMENT_BLOCK):
        centred = arr[start:start + MOMENT_BLOCK] - mean
        m2 += centred.T @ centred if matrix else np.einsum("ij,ij->j", centred, centred)
    return Moments(int(n), mean, m2)


def column_moments(columns: Sequence[np.ndarray], *, matrix: bool = False, rows: int | None = None) -> Moments:
    """:func:`compute_moments` of the column-major matrix whose columns are ``columns``, without
    making that matrix: the same values, bit for bit.

    ``compute_moments`` of a Fortran-ordered ``(n, k)`` array reduces each column alone (its mean) and
    centres it a block of :data:`MOMENT_BLOCK` rows at a time into a Fortran-ordered block; here each
    block is written from the columns (views of a node's kept selection, no copy of the whole design),
    so every sum and product sees the same operands in the same order.

    Parameters
    ----------
    columns : sequence of numpy.ndarray of float64, each shape (n,)
        Complete-case columns (no NaN), e.g. :func:`mipflow.algorithms.design.design_columns_of`.
    matrix : bool
        Return the full ``(k, k)`` co-moment matrix instead of its diagonal.
    rows : int, optional
        The rows ``n`` (needed only when there is no column, as for an ``(n, 0)`` matrix).
    """
    cols = [np.asarray(c, dtype=float) for c in columns]
    k = len(cols)
    n = len(cols[0]) if k else int(rows or 0)
    if any(c.shape != (n,) for c in cols):
        raise ValueError("columns of different lengths")
    if n == 0 or k == 0:  # as compute_moments of an (n, 0) or (0, k) array
        return Moments(int(n), np.zeros(k), np.zeros((k, k)) if matrix else np.zeros(k))
    # a column of a Fortran-ordered matrix is contiguous: its reduction is the one of the column alone
    mean = np.array([np.add.reduce(c) for c in cols]) / n
    block = np.empty((min(n, MOMENT_BLOCK), k), order="F")

    def centred(start: int, centre: np.ndarray) -> np.ndarray:
        rows = min(MOMENT_BLOCK, n - start)
        out = block[:rows] if rows == len(block) else np.empty((rows, k), order="F")
        for j, c in enumerate(cols):
            np.subtract(c[start:start + rows], centre[j], out=out[:, j])
        return out

    correction = np.zeros(k)
    for start in range(0, n, MOMENT_BLOCK):
        correction += centred(start, mean).sum(axis=0)
    mean = mean + correction / n
    m2 = np.zeros((k, k)) if matrix else np.zeros(k)
    for start in range(0, n, MOMENT_BLOCK):
        z = centred(start, mean)
        m2 += z.T @ z if matrix else np.einsum("ij,ij->j", z, z)
    return Moments(int(n), mean, m2)


class ColumnSource(Protocol):
    """Rows whose columns are read a block at a time (a node's selection left on disk, ADR 0049's
    amendment "Memory at 10M rows"): ``len()`` rows; ``reader(codes)`` starts a pass over them, a
    function giving the next ``m`` rows of each of ``codes`` (float64 arrays of ``m`` values each)."""

    def __len__(self) -> int: ...

    def reader(self, codes: Sequence[str]) -> Callable[[int], list[np.ndarray]]: ...


#: The most rows :func:`streamed_column_moments` asks of a source at a time in its first pass.
STREAM_BLOCK = 262_144
#: numpy's pairwise summation: a run this long or shorter is summed in one loop.
_PAIRWISE_LEAF = 128


def _pairwise_sum(next_rows: Callable[[int], list[np.ndarray]], n: int, leaf: int) -> np.ndarray:
    """Each column's ``np.add.reduce`` over the next ``n`` rows, read ``leaf`` rows or fewer at a time.

    numpy sums a contiguous float64 array of ``n > 128`` values as the sum of its first ``n2`` and its
    last ``n - n2`` values (``n2 = n // 2`` rounded down to a multiple of 8), each summed the same
    way: any run of that recursion summed by ``np.add.reduce`` of that run alone is the same number.
    """
    if n <= leaf:
        return np.array([np.add.reduce(c) for c in next_rows(n)]) if n else np.zeros(0)
    half = n // 2
    half -= half % 8
    first = _pairwise_sum(next_rows, half, leaf)
    return first + _pairwise_sum(next_rows, n - half, leaf)


def streamed_column_moments(source: ColumnSource, codes: Sequence[str], *, matrix: bool = False,
                            block: int | None = None) -> Moments:
    """:func:`column_moments` of ``source``'s columns ``codes``, bit for bit, holding a few blocks
    of rows at a time: no column is ever whole in memory.

    Three passes over the rows, as ``column_moments`` makes them: each column's sum (numpy's pairwise
    summation, its recursion followed down to runs of at most ``block`` rows, :func:`_pairwise_sum`),
    then the mean's correction and the centred co-moments over the same Fortran-ordered blocks of
    :data:`MOMENT_BLOCK` rows.  Memory: ``block`` rows of the columns read, and a block of
    ``MOMENT_BLOCK x k`` values (independent of ``len(source)``).

    Parameters
    ----------
    source : ColumnSource
        Complete-case rows (no NaN in ``codes``).
    codes : sequence of str
        The columns, in the order of the moments.
    matrix : bool
        Return the full ``(k, k)`` co-moment matrix instead of its diagonal.
    block : int, optional
        The most rows read at a time in the first pass (default :data:`STREAM_BLOCK`; any value gives
        the same result).
    """
    codes = list(codes)
    k, n = len(codes), len(source)
    if n == 0 or k == 0:
        return Moments(int(n), np.zeros(k), np.zeros((k, k)) if matrix else np.zeros(k))
    # a leaf of the recursion is a run of at least _PAIRWISE_LEAF + 1 rows unless n is smaller
    block = STREAM_BLOCK if block is None else int(block)
    mean = _pairwise_sum(source.reader(codes), n, max(block, _PAIRWISE_LEAF)) / n
    buffer = np.empty((min(n, MOMENT_BLOCK), k), order="F")

    def centred(next_rows: Callable[[int], list[np.ndarray]], start: int, centre: np.ndarray) -> np.ndarray:
        rows = min(MOMENT_BLOCK, n - start)
        out = buffer[:rows] if rows == len(buffer) else np.empty((rows, k), order="F")
        for j, values in enumerate(next_rows(rows)):
            np.subtract(values, centre[j], out=out[:, j])
        return out

    correction = np.zeros(k)
    next_rows = source.reader(codes)
    for start in range(0, n, MOMENT_BLOCK):
        correction += centred(next_rows, start, mean).sum(axis=0)
    mean = mean + correction / n
    m2 = np.zeros((k, k)) if matrix else np.zeros(k)
    next_rows = source.reader(codes)
    for start in range(0, n, MOMENT_BLOCK):
        z = centred(next_rows, start, mean)
        m2 += z.T @ z if matrix else np.einsum("ij,ij->j", z, z)
    return Moments(int(n), mean, m2)


@dataclass(frozen=True)
class WeightTotals:
    """What Kish's effective rows of a weight vector need, summed a block of rows at a time: the
    vector is never whole in memory (rows left on disk, ADR 0049 amended; the node's control
    ``effective_rows``, ADR 0054).

    Attributes
    ----------
    size : int
        Weights seen.
    top : float
        The largest magnitude seen (0.0: every weight zero so far).
    total, squares : float
        ``sum |w| / top`` and ``sum (w / top)^2``: scaled by the largest magnitude, as the whole
        vector's computation scales it, so tiny weights do not underflow.
    finite : bool
        Every weight seen is a finite number.
    """

    size: int = 0
    top: float = 0.0
    total: float = 0.0
    squares: float = 0.0
    finite: bool = True

    def add(self, weights: np.ndarray) -> "WeightTotals":
        """These totals and ``weights``' (any shape), as new totals."""
        w = np.abs(np.asarray(weights, dtype=float).ravel())
        if w.size == 0:
            return self
        if not self.finite or not np.all(np.isfinite(w)):
            return WeightTotals(self.size + w.size, self.top, self.total, self.squares, False)
        top, total, squares = self.top, self.total, self.squares
        block_top = float(w.max())
        if block_top > top:  # a larger weight: the sums so far rescaled to it
            ratio = top / block_top
            top, total, squares = block_top, total * ratio, squares * ratio * ratio
        if top > 0.0:
            w = w / top
            total += float(w.sum())
            squares += float(np.dot(w, w))
        return WeightTotals(self.size + w.size, top, total, squares, True)

    def effective_rows(self) -> float | None:
        """``(sum |w|)^2 / sum w^2`` (None: no weight, or every weight zero; 0.0: a weight not finite)."""
        if self.size == 0:
            return None
        if not self.finite:
            return 0.0
        if self.top == 0.0:
            return None
        return float(self.total ** 2 / self.squares)


def merge_moments(parts: Iterable[Moments]) -> Moments:
    """Merge partial moments (Chan et al.); empty parts are skipped.

    All parts must describe the same columns with the same ``m2`` shape.
    Returns zero moments when every part is empty.
    """
    total: Moments | None = None
    shape = None
    for part in parts:
        if shape is None:
            shape = (part.mean.shape, part.m2.shape)
        elif (part.mean.shape, part.m2.shape) != shape:
            raise ValueError("cannot merge moments of different shapes")
        if part.n == 0:
            continue
        if total is None or total.n == 0:
            total = part
            continue
        n = total.n + part.n
        delta = part.mean - total.mean
        mean = total.mean + delta * (part.n / n)
        weight = total.n * part.n / n
        extra = np.outer(delta, delta) if total.is_matrix else delta * delta
        total = Moments(n, mean, total.m2 + part.m2 + extra * weight)
    if total is None:
        if shape is None:
            raise ValueError("no moments to merge")
        return Moments(0, np.zeros(shape[0]), np.zeros(shape[1]))
    return total


def merge_moment_dicts(parts: Iterable[Mapping[str, Any]]) -> Moments:
    """:func:`merge_moments` over the JSON form nodes send."""
    return merge_moments(Moments.from_dict(p) for p in parts)
