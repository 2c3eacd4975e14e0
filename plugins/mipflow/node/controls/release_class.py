"""What a release is, for the ledger's pairwise rule (ADR 0063 and its nominal amendment).

Three classes, stored in the ledger's ``sums_only`` column (the worst release over a cohort wins):

* :data:`SUMS` (1): sums only over its cohorts, of numerical variables (ADR 0063);
* :data:`HIDDEN` (2): sums of numerical variables and counts of nominal levels of which the small ones are
  hidden (descriptive statistics of a nominal variable, ``hides_small_counts``): a hidden 1-2 count beside a 0
  over a cohort one row apart tells that row's level (the twenty-third review, hole 2), but only beside another
  release of level counts; a release of numerical sums holds none;
* :data:`OTHER` (0): anything else.

Two releases' pair is set aside for the chain rule (:func:`apart`) when both are sums and at most one of them
holds hidden counts.
"""
from __future__ import annotations

from typing import Any

OTHER, SUMS, HIDDEN = 0, 1, 2
_GOODNESS = {OTHER: 0, HIDDEN: 1, SUMS: 2}


def worse(a: int, b: int) -> int:
    """The worse of two classes (a cohort answered by both is remembered as this one)."""
    return a if _GOODNESS[int(a)] <= _GOODNESS[int(b)] else b


def apart(a: int, b: int) -> bool:
    """Whether the pairwise rule stands aside between releases of classes ``a`` and ``b`` (the chain rule decides)."""
    return int(a) != OTHER and int(b) != OTHER and not (int(a) == HIDDEN and int(b) == HIDDEN)


def release_class(algo: Any, analysis: Any, model: Any) -> int:
    """The class of a step of ``algo`` on ``analysis``: :data:`SUMS` when the algorithm says it releases sums only
    (``sums_only``), every variable it reads is numerical and no longitudinal transformer made its rows
    (conservatively: one row per patient from two visits); :data:`HIDDEN` when, besides, its nominal variables
    give only level counts whose small ones are hidden (``hides_small_counts``: descriptive statistics); else
    :data:`OTHER`.  A ``released_by`` column (descriptive statistics' ``dataset``) splits the rows into cohorts of
    the ledger, each refused under ``min_row_count``, never hidden: the chain rule sees them, so it is no variable
    here."""
    if not getattr(algo, "sums_only", False) or getattr(analysis, "longitudinal", None) is not None:
        return OTHER
    split = set(getattr(algo, "released_by", ()))
    kinds = {model.variable(v).is_numerical for v in algo.variables(analysis) if v not in split}
    if False not in kinds:
        return SUMS
    return HIDDEN if getattr(algo, "hides_small_counts", False) else OTHER
