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
"""
from __future__ import annotations

from typing import Iterable, Sequence

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


__all__ = ["WEIGHTED_ROWS", "exp_log_weights", "exp_weighted_rows", "weighted_rows"]
