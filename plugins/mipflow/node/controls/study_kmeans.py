"""k-means in a study: the tie rule of study approval (ADR 0050).

A k-means result gives, per cluster, the row count, the centre and the within-cluster sum of squares,
i.e. the count ``n``, sum ``S`` and sum of squares ``Q`` of the rows in a range of values the data
choose.  On rows that take at most :data:`PINNED_VALUES` distinct values those three moments are a
Vandermonde system in the values' counts: they give each value's exact count (an outside review
recovered the whole frequency table of an integer score this way, and a top cluster's rows).  Integer
variables are refused from the request (:class:`mipflow.algorithms.kmeans.KMeans`'s ``y_spec``) and
every released cluster holds ``min_row_count`` rows (``group_count_setting``); what remains is a
variable *declared* real whose values tie (integer ages stored as real).

**The rule**: a protocol with k-means is approved only if, for every real study variable, the
:data:`PINNED_VALUES` most frequent values of the population together hold fewer than
``min_row_count`` rows.  Then every cluster the node releases (``min_row_count`` rows or more, in any
cohort of the family, which are all subsets of the population) spans more distinct values than the
three moments can solve for.  The most frequent values are used, not neighbouring ones, because a
subgroup or one dataset may lack the values in between.  The check reads the population once, at
approval and at each refresh; a researcher sees only whether the study was approved (the admin
decides, as for every check of :mod:`mipflow.node.controls.study_approval`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mipflow.exceptions import ConfigError

#: how many distinct values a cluster's count, sum and sum of squares pin (three equations)
PINNED_VALUES = 3


def tied_rows(values: np.ndarray, width: int = PINNED_VALUES) -> int:
    """Rows holding the ``width`` most frequent distinct values of ``values`` (missing values left out).

    Parameters
    ----------
    values : numpy.ndarray of float, shape (n,)
    width : int

    Returns
    -------
    int
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return 0
    _, counts = np.unique(values, return_counts=True)
    return int(np.sort(counts)[::-1][:width].sum())


def clustered_variables(model: Any, variables: Sequence[str]) -> list[str]:
    """The study variables k-means may cluster on: real and not categorical."""
    out = []
    for code in variables:
        var = model.variable(code)
        if var.sql_type == "real" and not var.is_categorical:
            out.append(code)
    return out


def tie_counts(frame: pd.DataFrame, model: Any, variables: Sequence[str]) -> dict[str, int]:
    """:func:`tied_rows` of each variable k-means may cluster on, over ``frame`` (the population)."""
    return {code: tied_rows(pd.to_numeric(frame[code], errors="coerce").to_numpy(dtype=float))
            for code in clustered_variables(model, variables)}


def tie_problems(ties: Mapping[str, int], min_row_count: int) -> list[str]:
    """What fails the tie rule (admin-facing, with counts)."""
    return [f"the {PINNED_VALUES} most frequent values of {code!r} hold {n} rows, not fewer than min_row_count "
            f"({min_row_count})" for code, n in sorted(ties.items()) if n >= min_row_count]


def check_ties(ties: Mapping[str, int], min_row_count: int, failed: str, stays: str = "") -> None:
    """Refuse an approval or refresh that fails the tie rule (``failed``: what failed; ``stays``: appended).

    Raises
    ------
    ConfigError
        Naming the variables, with counts (for the node admin).
    """
    problems = tie_problems(ties, min_row_count)
    if problems:
        raise ConfigError(
            f"{failed}: k-means would release exact counts per value: " + "; ".join(problems)
            + f". A cluster of min_row_count ({min_row_count}) rows over {PINNED_VALUES} distinct values gives each "
            "value's count through its size, centre and within-cluster sum of squares. Leave kmeans out of the "
            "study's algorithms, or that variable out of its variables (docs/adr/0050-kmeans-real-variables.md)"
            + stays)
