"""How many rows a weighted sum holds (ADR 0053).

A plain sum over ``n`` rows gives each row a share ``1 / n`` of a released mean; ``min_row_count``
keeps that share at most ``1 / min_row_count``.  A sum weighted by ``w_i > 0`` (the exponential of a
variable: ``sum exp(x_i)``, ``sum v_i exp(x_i)``) gives row ``i`` the share ``w_i / sum w``: the
exponential of the largest value takes nearly all of it, and the weighted mean ``sum v w / sum w`` is
that row's ``v`` (an eleventh outside review read a patient's record from PCA's ``exp``).

The weighted sum *holds* ``sum w / max w`` rows (:func:`weighted_rows`): the number of rows of the
largest weight it is worth, ``n`` for equal weights, 1 when one row takes everything.  Held to
``min_row_count`` as a row count is, no row's share exceeds ``1 / min_row_count``: every weighted mean
released is then a convex combination of plain means of ``min_row_count`` rows (the probability
vectors with every share at most ``1 / m`` are the convex hull of the uniform ones on ``m`` rows),
which is what the row-count rule already releases.  It implies Kish's effective number of rows
``(sum w)^2 / sum w^2 >= min_row_count`` (as ``sum w^2 <= max w * sum w``).

Computed from the logarithms of the weights (no overflow, whatever the values).

A **weight family** (:class:`WeightFamily`) names the weight function of such sums: ``exp`` of a
linear form of variables (``exp(x_a)``, ``exp(2 x_a)``, ``exp(x_a + x_b)``).  Two releases with the
same family at one node, over cohorts that overlap, subtract to the same weighted sums over the rows
between them: the node holds those rows to ``min_row_count`` in effect too (ADR 0058,
:mod:`mipflow.node.controls.weighted_ledger`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

#: The key of the rows each weighted sum of a release holds: checked by the node against
#: ``min_row_count`` (control ``dominated_sums``) and never sent.
WEIGHTED_ROWS = "weighted_n"


def weighted_rows(log_weights: np.ndarray) -> float:
    """``sum w / max w`` for ``w = exp(log_weights)`` (a 1-d array, finite values); 0 for no rows.

    >>> weighted_rows(np.zeros(5))
    5.0
    """
    log_weights = np.asarray(log_weights, dtype=float)
    if log_weights.size == 0:
        return 0.0
    return float(np.exp(log_weights - log_weights.max()).sum())


def exp_log_weights(values: np.ndarray, columns: Sequence[int]) -> Iterable[np.ndarray]:
    """The logarithms of the weights of the sums a release of first and second moments holds when
    ``columns`` of ``values`` (shape (n, p)) are exponentiated: ``exp(x_a)`` (means and co-moments
    with the other columns), ``exp(2 x_a)`` (its square) and ``exp(x_a + x_b)`` (two of them)."""
    columns = list(columns)
    for i, a in enumerate(columns):
        yield values[:, a]
        yield 2.0 * values[:, a]
        for b in columns[i + 1:]:
            yield values[:, a] + values[:, b]


def exp_weighted_rows(values: np.ndarray, columns: Sequence[int]) -> float | None:
    """The fewest rows any of those weighted sums holds (:func:`weighted_rows`); None without
    exponentiated columns or rows."""
    if not len(columns) or not len(values):
        return None
    return min(weighted_rows(w) for w in exp_log_weights(np.asarray(values, dtype=float), columns))


#: Rows read at a time by :func:`exp_weighted_rows_on_disk`'s pass over the extremes.
EXTREME_ROWS = 262_144


def exp_weighted_rows_on_disk(source: Any, codes: Sequence[str]) -> float | None:
    """:func:`exp_weighted_rows` of the columns ``codes`` of rows left on disk (ADR 0062, amendment 13), bit
    for bit, a block at a time: one pass for each family's largest log weight (a maximum: any blocking gives
    it), one for ``sum exp(log w - max)`` (numpy's pairwise sum followed block by block,
    :func:`mipflow.algorithms.moments._pairwise_sum`).  Memory: a few blocks of the families' log weights."""
    from mipflow.algorithms import moments

    codes = list(codes)
    n = len(source)
    if not codes or not n:
        return None

    def log_weights(values: list[np.ndarray]) -> list[np.ndarray]:  # exp_log_weights' families, in its order
        return list(exp_log_weights(np.column_stack(values) if values else np.zeros((0, 0)), range(len(values))))

    top: np.ndarray | None = None
    next_rows = source.reader(codes)
    for start in range(0, n, EXTREME_ROWS):
        block = np.array([w.max() for w in log_weights(next_rows(min(EXTREME_ROWS, n - start)))])
        top = block if top is None else np.maximum(top, block)
    inner = source.reader(codes)

    def shares(m: int) -> list[np.ndarray]:
        return [np.exp(w - t) for w, t in zip(log_weights(inner(m)), top)]

    totals = moments._pairwise_sum(shares, n, max(moments.STREAM_BLOCK, moments._PAIRWISE_LEAF))
    return min(float(t) for t in totals)


@dataclass(frozen=True)
class WeightFamily:
    """The weights ``w_i = exp(sum_k c_k x_ik)`` of a family of released sums.

    ``terms`` are ``(variable code, coefficient)`` pairs sorted by code, so that the family's
    :attr:`name` (its identity at the node) does not depend on the order a request lists them in.
    """

    terms: tuple[tuple[str, float], ...]

    @property
    def name(self) -> str:
        """``exp(glucose)``, ``exp(2*glucose)``, ``exp(age+glucose)``: the family's identity."""
        return "exp(" + "+".join(code if c == 1 else f"{c:g}*{code}" for code, c in self.terms) + ")"

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(code for code, _ in self.terms)

    def log_weights(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """``log w`` of each row, shape (n,), from the untransformed values of :attr:`variables`."""
        out: np.ndarray | None = None
        for code, coefficient in self.terms:
            part = np.asarray(columns[code], dtype=float)
            part = part if coefficient == 1 else coefficient * part
            out = part.copy() if out is None else out + part
        return np.zeros(0) if out is None else out


def exp_families(codes: Sequence[str]) -> tuple[WeightFamily, ...]:
    """The families of a release of first and second moments whose ``codes`` are exponentiated,
    in :func:`exp_log_weights`'s order: ``exp(x_a)``, ``exp(2 x_a)``, ``exp(x_a + x_b)``."""
    codes = list(codes)
    out: list[WeightFamily] = []
    for i, a in enumerate(codes):
        out.append(WeightFamily(((a, 1.0),)))
        out.append(WeightFamily(((a, 2.0),)))
        for b in codes[i + 1:]:
            out.append(WeightFamily(tuple(sorted(((a, 1.0), (b, 1.0))))))
    return tuple(out)


__all__ = ["WEIGHTED_ROWS", "WeightFamily", "exp_families", "exp_log_weights", "exp_weighted_rows",
           "exp_weighted_rows_on_disk",
           "weighted_rows"]
