"""The effective number of rows of a weighted sum, and the node's control on it (ADR 0054).

``min_row_count`` counts the rows a step reads.  An iterative fit's later rounds release sums
*weighted* per row by a function of the current iterate: a logistic regression's Hessian puts
``p (1 - p)`` on each row and its gradient ``y - p`` (Cox regression's risk-set sums ``exp(x'b)``
likewise, not checked yet: ADR 0054's amendment), a GEE with a log or logit link the variance and the residual of each row.  When the iterate
diverges (perfectly separated classes, a monotone partial likelihood) those weights vanish on
every row but a few, and a sum over 240 rows is, to any precision that matters, the covariate
vector of one or two patients (the eleventh outside review).

The effective number of rows of a weight vector ``w`` is Kish's ``(sum |w|)^2 / sum w^2``: ``n``
for equal weights, 1 when one row holds all the weight, and never more than the rows with a
non-zero weight.  An algorithm states the weights its step's sums put on the rows
(:meth:`~mipflow.algorithms.spec.SpecAlgorithm.row_weights`, one vector per family of weighted
sums); the node refuses the step when any vector's effective rows are below ``min_row_count``
(control ``effective_rows``).  Over nodes: when every node's vector holds ``k`` effective rows, the
pooled one holds at least ``k`` (non-negative weights; ``(sum S_i)^2 / sum S_i^2 / k_i >= min k_i``),
so a pooled sum concentrated on a few rows is refused by the node holding them.

The message names the rule and the setting, never a number computed from the rows.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from mipflow.algorithms.moments import WeightTotals
from mipflow.exceptions import DisclosureError

#: The control's name, in refusals and audit records.
CONTROL = "effective_rows"

#: Relative slack for rounding: a vector with exactly ``k`` equal weights holds ``k`` effective rows,
#: computed to within a few ulps.
_SLACK = 1e-9


def effective_rows(weights: np.ndarray | WeightTotals) -> float | None:
    """Kish's effective number of rows of ``weights``: ``(sum |w|)^2 / sum w^2``.

    None when every weight is zero (the weighted sums are zero: nothing about any row); ``0.0``
    when a weight is not finite (the sums would not be numbers: refused like a concentrated one).
    The vector is scaled by its largest magnitude first, so tiny weights do not underflow.
    ``weights`` may also be the vector's :class:`~mipflow.algorithms.moments.WeightTotals`, summed a
    block of rows at a time by a step that never holds the vector (rows left on disk): the same
    value to rounding.
    """
    if isinstance(weights, WeightTotals):
        return weights.effective_rows()
    w = np.abs(np.asarray(weights, dtype=float).ravel())
    if w.size == 0:
        return None
    if not np.all(np.isfinite(w)):
        return 0.0
    top = float(w.max())
    if top == 0.0:
        return None
    w = w / top
    return float(w.sum() ** 2 / np.dot(w, w))


def check_effective_rows(vectors: Iterable[Any] | None, min_row_count: int) -> None:
    """Refuse (control ``effective_rows``) when a weight vector holds fewer than ``min_row_count``
    effective rows.  Nothing to check with ``min_row_count`` 1 (any non-zero vector holds at least
    one) or without vectors (the algorithm's sums are not weighted by an iterate)."""
    if vectors is None or min_row_count <= 1:
        return
    for weights in vectors:
        rows = effective_rows(weights)
        if rows is not None and rows < min_row_count * (1.0 - _SLACK):
            raise DisclosureError(
                f"this round's weighted sums would rest on fewer rows in effect than min_row_count "
                f"({min_row_count}): the fit puts nearly all its weight on a few rows (e.g. perfectly "
                "separated classes, or a covariate that decides who has an event), so the node does not "
                "release them", control=CONTROL)
