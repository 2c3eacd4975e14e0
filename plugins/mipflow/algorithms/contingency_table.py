"""Contingency table of two nominal variables, with tests of independence.

Rows are the levels of ``x`` (one nominal variable), columns the levels of
``y`` (one nominal variable), both in the data model's enumeration order, so
every node counts the same cells.

Local step: the node's cross-tabulation counts, row-major, under the key
``group_counts``.  Every cell is the size of a group of patients (those with
``x = a`` and ``y = b``), so the node's ``nfilter_tab`` control refuses the
whole step when any cell is in ``(0, nfilter_tab)``: a table is released
whole or not at all, never with cells suppressed (why: see
``docs/adr/0006-contingency-suppression.md``).  Zero cells are released.

Global step: the pooled table is the sum of the node tables, and every
statistic below is a function of the pooled table alone, hence equal to the
pooled computation:

* expected counts under independence, ``E = r c' / n``;
* Pearson's chi-squared test, with Yates' continuity correction when the
  table has one degree of freedom and ``yates_correction`` is ``"yes"``
  (scipy's ``chi2_contingency`` rule);
* the likelihood-ratio G-test, ``G = 2 sum O log(O / E)`` (never corrected);
* Cramer's V from the uncorrected chi-squared statistic;
* for 2x2 tables: Fisher's exact test (sample odds ratio and the p-value of
  the requested alternative), the odds ratio and risk ratio with Woolf /
  log-normal confidence intervals as statsmodels' ``Table2x2`` (zero cells
  replaced by 0.5 for these two, as statsmodels does by default).

Levels no node observed are left out of the tests (a row or column of zeros
has no expected count) and listed in ``absent_levels``.  The chi-squared and
G-test p-values are asymptotic; the result says so and counts the expected
cells below 5.

Noisy release (explore mode, a node with differential privacy; ADR 0032): the node adds noise to
every cell of its table (one row is in exactly one cell: sensitivity L1 = L2 = 1, one block) and
releases the noisy cells as they are (signed integers, nothing suppressed: the noise protects the
small cells) with the sd of their noise and how its integers are drawn.  The central side sums the
signed tables and states every pooled cell signed, with its noise sd and its interval (exact for the
integer noise, ADR 0057, under ``noise``); only then, for display and for the statistics above, is
each pooled cell clamped to >= 0 (post-processing, stated in ``noise.clamped``).  The statistics are
those of the clamped noisy table (the tests leave out the noise: labelled approximate).
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.design import category_codes
from mipflow.algorithms.dp_release import DPRelease, Noise, Released, one_block
from mipflow.algorithms.inference import alternative_spec
from mipflow.algorithms.noise_error import INTERVAL_LEVEL, cell_interval, count_error, integer_noise_kind
from mipflow.algorithms.spec import NOMINAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.algorithms.streamed import cell_counts_on_disk, on_disk
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

#: Expected counts below this make the asymptotic p-values doubtful (Cochran's rule).
SMALL_EXPECTED = 5.0

#: The block of the noisy release.
DP_BLOCK = "table"
DP_NOTE = ("the table of noisy cell counts (nothing suppressed), pooled signed, each cell with its noise sd and "
           "interval (noise.cells_signed, noise.cells_interval); observed is clamped to >= 0 for display; the "
           "tests, Cramer's V and the ratios are those of the clamped noisy table and leave out the noise")


# --------------------------------------------------------------------------- tables


def cross_tabulate(row_codes: np.ndarray, col_codes: np.ndarray,
                   row_levels: Sequence[str], col_levels: Sequence[str]) -> np.ndarray:
    """Counts of every (row level, column level) pair.

    Parameters
    ----------
    row_codes, col_codes : numpy.ndarray of str, shape (n,)
        Enumeration codes of complete-case rows.
    row_levels, col_levels : sequence of str, lengths r and c

    Returns
    -------
    numpy.ndarray of int64, shape (r, c)
    """
    row_index = {level: i for i, level in enumerate(row_levels)}
    col_index = {level: j for j, level in enumerate(col_levels)}
    table = np.zeros((len(row_levels), len(col_levels)), dtype=np.int64)
    if len(row_codes):
        i = np.fromiter((row_index[c] for c in row_codes), dtype=np.int64, count=len(row_codes))
        j = np.fromiter((col_index[c] for c in col_codes), dtype=np.int64, count=len(col_codes))
        np.add.at(table, (i, j), 1)
    return table


def expected_counts(observed: np.ndarray) -> np.ndarray:
    """Expected counts under independence, ``outer(row totals, column totals) / n``.

    Parameters
    ----------
    observed : numpy.ndarray, shape (r, c), no empty row or column

    Returns
    -------
    numpy.ndarray of float, shape (r, c)
    """
    observed = np.asarray(observed, dtype=float)
    return np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()


def pearson_chi2(observed: np.ndarray, *, correction: bool) -> tuple[float, int, float, bool]:
    """Pearson's chi-squared test of independence.

    Yates' correction (each ``|O - E|`` reduced by up to 0.5) applies only when
    ``correction`` is true and the table has one degree of freedom, as in
    ``scipy.stats.chi2_contingency``.

    Returns
    -------
    statistic : float
    df : int
    p_value : float
        Asymptotic (chi-squared distribution with ``df`` degrees of freedom).
    corrected : bool
        Whether Yates' correction was applied.
    """
    from scipy import stats

    observed = np.asarray(observed, dtype=float)
    expected = expected_counts(observed)
    df = (observed.shape[0] - 1) * (observed.shape[1] - 1)
    diff = np.abs(observed - expected)
    corrected = bool(correction and df == 1)
    if corrected:
        diff = diff - np.minimum(0.5, diff)
    statistic = float(np.sum(diff * diff / expected))
    return statistic, df, float(stats.chi2.sf(statistic, df)), corrected


def g_test(observed: np.ndarray) -> tuple[float, int, float]:
    """Likelihood-ratio (G) test of independence, ``G = 2 sum O log(O / E)``.

    Returns
    -------
    statistic, df, p_value (asymptotic)
    """
    from scipy import special, stats

    observed = np.asarray(observed, dtype=float)
    expected = expected_counts(observed)
    df = (observed.shape[0] - 1) * (observed.shape[1] - 1)
    statistic = float(2.0 * np.sum(special.xlogy(observed, observed / expected)))
    statistic = max(statistic, 0.0)  # rounding can leave -1e-16 for an independent table
    return statistic, df, float(stats.chi2.sf(statistic, df))


def cramers_v(chi2_uncorrected: float, n: int, shape: tuple[int, int]) -> float:
    """Cramer's V, ``sqrt(chi2 / (n (min(r, c) - 1)))``, from the uncorrected chi-squared."""
    return math.sqrt(chi2_uncorrected / (n * (min(shape) - 1)))


def fisher_2x2(observed: np.ndarray, alternative: str) -> tuple[float, float]:
    """Fisher's exact test of a 2x2 table.

    Returns
    -------
    sample_odds_ratio : float
        ``(a d) / (b c)`` of the unshifted table (inf or nan with zero cells).
    p_value : float
        Exact, from the hypergeometric distribution of the first cell given
        the margins (``scipy.stats.fisher_exact``).
    """
    from scipy import stats

    result = stats.fisher_exact(np.asarray(observed, dtype=np.int64), alternative=alternative)
    return float(result.statistic), float(result.pvalue)


def ratio_measures(observed: np.ndarray, alpha: float) -> dict[str, Any]:
    """Odds ratio and risk ratio of a 2x2 table with normal-theory intervals on the log scale.

    As statsmodels' ``Table2x2`` (default ``shift_zeros=True``): when a cell
    is zero, every zero cell is replaced by 0.5 first.  The risk ratio compares
    the proportion in the first column between the two rows.

    Returns
    -------
    dict
        ``odds_ratio`` and ``risk_ratio``, each ``{"estimate", "log_se",
        "ci_lower", "ci_upper"}``, and ``zero_cells_shifted``.
    """
    from scipy import stats

    table = np.asarray(observed, dtype=float).copy()
    shifted = bool(table.min() == 0)
    if shifted:
        table[table == 0] = 0.5
    z = -float(stats.norm.ppf(alpha / 2.0))
    (a, b), (c, d) = table
    log_or = math.log(a) - math.log(b) - math.log(c) + math.log(d)
    se_or = math.sqrt(float(np.sum(1.0 / table)))
    n_rows = table.sum(axis=1)
    p = table[:, 0] / n_rows
    risk_ratio = float(p[0] / p[1])
    se_rr = math.sqrt(float(np.sum((1.0 - p) / (n_rows * p))))
    log_rr = math.log(risk_ratio)
    return {
        "odds_ratio": {"estimate": a * d / (b * c), "log_se": se_or,
                       "ci_lower": math.exp(log_or - z * se_or), "ci_upper": math.exp(log_or + z * se_or)},
        "risk_ratio": {"estimate": risk_ratio, "log_se": se_rr,
                       "ci_lower": math.exp(log_rr - z * se_rr), "ci_upper": math.exp(log_rr + z * se_rr)},
        "zero_cells_shifted": shifted,
    }


def pool_tables(aggregates: Sequence[dict], shape: tuple[int, int], *, signed: bool = False) -> np.ndarray:
    """Sum the nodes' tables (``group_counts``, row-major), checking their shape.

    A noisy table (one with ``noise``) may have negative cells; the sum is then clamped to >= 0,
    unless ``signed`` (the pooled signed cells, what their intervals are about).

    Raises
    ------
    RequestError
        If a node sent a table of another shape or a cell that is not a count
        (e.g. suppressed as ``None``): the pooled table would be unknown.
    """
    total = np.zeros(shape, dtype=np.int64)
    for agg in aggregates:
        if list(agg.get("shape", ())) != list(shape):
            raise RequestError(f"a node sent a table of shape {agg.get('shape')}, expected {list(shape)}")
        cells = agg.get("group_counts")
        if (not isinstance(cells, list) or len(cells) != shape[0] * shape[1]
                or not all(isinstance(v, int) and not isinstance(v, bool) and (v >= 0 or "noise" in agg)
                           for v in cells)):
            raise RequestError("a node sent a table with cells that are not counts (suppressed?); "
                               "the pooled table would be unknown")
        total += np.asarray(cells, dtype=np.int64).reshape(shape)
    return total if signed else np.maximum(total, 0)


def noisy_cells(aggregates: Sequence[dict], shape: tuple[int, int], level: float = INTERVAL_LEVEL) -> dict[str, Any]:
    """The pooled signed cells of noisy tables, each with its noise sd and interval (ADR 0057).

    Every cell holds one independent integer noise per noisy node (the same distribution for all
    cells), so one sd, half-width and exact coverage serve the whole table; intervals are cut at 0.
    """
    signed = pool_tables(aggregates, shape, signed=True)
    terms = [[a["noise"]["mechanism"], float(a["noise"]["sd"]), a["noise"].get("integer", "rounded")]
             for a in aggregates if "noise" in a]
    error = count_error(terms, level)
    return {"cells_signed": signed, "cell_noise_sd_exact": error["sd"],
            "cells_interval": [[cell_interval(float(v), error) for v in row] for row in signed],
            "cells_interval_coverage": error["coverage"], "interval_level": level,
            "clamped": "observed, the totals and every statistic use the pooled cells clamped to >= 0 (display "
                       "only); cells_signed are the unclamped pooled cells the intervals are about"}


# --------------------------------------------------------------------------- differential privacy


def _dp_release(algo: ContingencyTable, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                noise: Noise) -> Released:
    """Noisy cells of the node's table (see the module docstring)."""
    xvar, yvar = model.variable(request.x[0]), model.variable(request.y[0])
    row_levels, col_levels = algo._levels(request, model)
    table = cross_tabulate(category_codes(data[xvar.code], xvar).to_numpy(),
                           category_codes(data[yvar.code], yvar).to_numpy(), row_levels, col_levels)
    noisy = noise.add(table.ravel(), 1, block=DP_BLOCK, integer=True)
    return {"shape": list(table.shape), "group_counts": noisy.tolist(),
            "noise": {"sd": noise.sd(1), "unit": "count", "mechanism": noise.mechanism,
                      "integer": integer_noise_kind(noise)}}, {}


def _dp_rows(aggregates: dict) -> int:
    return max(int(sum(aggregates["group_counts"])), 0)


# --------------------------------------------------------------------------- the algorithm


class ContingencyTable(SpecAlgorithm):
    """Cross-tabulation of ``x`` (rows) by ``y`` (columns) with chi-squared,
    G and, for 2x2 tables, Fisher's exact test."""

    name = "contingency_table"
    label = "Contingency table (chi-squared, G-test, Fisher's exact test)"
    description = ("The pooled cross-tabulation of two nominal variables with Pearson's chi-squared, the "
                   "G-test and Cramer's V; for 2x2 tables Fisher's exact test and odds and risk ratios.")
    y_spec = InputSpec(types=("int", "text"), stattypes=(NOMINAL,), notblank=True, multiple=False,
                       label="Column variable", description="A nominal variable.")
    x_spec = InputSpec(types=("int", "text"), stattypes=(NOMINAL,), notblank=True, multiple=False,
                       label="Row variable", description="A nominal variable.")
    parameter_specs = MappingProxyType({
        "yates_correction": ParamSpec(types=("text",), default="yes", notblank=True, enums=("yes", "no"),
                                      label="Yates' continuity correction",
                                      description="Apply Yates' correction to the chi-squared test of a "
                                                  "2x2 table."),
        "alt_hypothesis": alternative_spec("Fisher's exact test (2x2 tables): two-sided, or the odds ratio "
                                           "less or greater than 1."),
        "alpha": ParamSpec(types=("real",), central_only=True, default=0.05, notblank=True, min=0.0, max=1.0, min_exclusive=True,
                           max_exclusive=True, label="Significance level (alpha)",
                           description="The significance level: the odds and risk ratio intervals are "
                                       "at level 1 - alpha (0.05: 95 %)."),
    })

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        if request.x[0] == request.y[0]:
            raise RequestError(f"{request.y[0]!r} cannot be both x and y of a contingency table")

    #: Its local step also takes a node's selection left on disk (ADR 0062): one pass over the two level
    #: codes (its noisy release, never streamed, keeps the frame).
    streams_rows = True

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        # every cell is a group whose count is released (and every margin and the table's total are sums of
        # cells): held across releases, and in the chain rule, at nfilter_tab (ADR 0051, issue 14 item 5)
        return (ReleasedGroups((request.x[0], request.y[0])),)

    @staticmethod
    def _levels(request: AnalysisRequest, model: DataModel) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (model.variable(request.x[0]).enumeration_codes,
                model.variable(request.y[0]).enumeration_codes)

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        xvar, yvar = model.variable(request.x[0]), model.variable(request.y[0])
        row_levels, col_levels = self._levels(request, model)
        if on_disk(data):
            table = cell_counts_on_disk(data, (xvar.code, yvar.code), (row_levels, col_levels))
        else:
            table = cross_tabulate(category_codes(data[xvar.code], xvar).to_numpy(),
                                   category_codes(data[yvar.code], yvar).to_numpy(),
                                   row_levels, col_levels)
        # every cell is a group of patients: under group_counts the node's
        # nfilter_tab control refuses the table if any cell is small
        return {"shape": list(table.shape), "group_counts": table.ravel().tolist()}

    dp_release = DPRelease(one_block, _dp_release, _dp_rows, note=DP_NOTE)

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        row_levels, col_levels = self._levels(request, model)
        full = pool_tables(aggregates, (len(row_levels), len(col_levels)))
        n = int(full.sum())
        if n == 0:
            raise RequestError("no rows have values of both variables")
        keep_rows, keep_cols = full.sum(axis=1) > 0, full.sum(axis=0) > 0
        observed = full[np.ix_(keep_rows, keep_cols)]
        rows = [lvl for lvl, keep in zip(row_levels, keep_rows) if keep]
        cols = [lvl for lvl, keep in zip(col_levels, keep_cols) if keep]
        for code, present in ((request.x[0], rows), (request.y[0], cols)):
            if len(present) < 2:
                raise RequestError(f"cannot test independence: {code!r} has only one level "
                                   f"({', '.join(present)}) in the data")
        expected = expected_counts(observed)
        chi2, df, chi2_p, corrected = pearson_chi2(observed, correction=params["yates_correction"] == "yes")
        chi2_raw = chi2 if not corrected else pearson_chi2(observed, correction=False)[0]
        g_stat, _, g_p = g_test(observed)
        result: dict[str, Any] = {
            "n_obs": n,
            "row_var": request.x[0],
            "col_var": request.y[0],
            "row_levels": rows,
            "col_levels": cols,
            "observed": observed,
            "expected": expected,
            "row_totals": observed.sum(axis=1),
            "col_totals": observed.sum(axis=0),
            "absent_levels": {request.x[0]: [lvl for lvl in row_levels if lvl not in rows],
                              request.y[0]: [lvl for lvl in col_levels if lvl not in cols]},
            "chi2": {"statistic": chi2, "df": df, "p_value": chi2_p, "yates_correction": corrected,
                     "p_value_method": "asymptotic"},
            "g_test": {"statistic": g_stat, "df": df, "p_value": g_p, "p_value_method": "asymptotic"},
            "cramers_v": cramers_v(chi2_raw, n, observed.shape),
            "expected_below_5": int(np.count_nonzero(expected < SMALL_EXPECTED)),
            "fisher_exact": None,
        }
        if observed.shape == (2, 2):
            odds, p_fisher = fisher_2x2(observed, params["alt_hypothesis"])
            result["fisher_exact"] = {"sample_odds_ratio": odds, "p_value": p_fisher,
                                      "alternative": params["alt_hypothesis"], "p_value_method": "exact"}
            measures = ratio_measures(observed, params["alpha"])
            result.update(measures, confidence_level=1.0 - params["alpha"])
        noisy = [a["noise"] for a in aggregates if "noise" in a]
        if noisy:
            result["noise"] = {"approximate": True, "noisy_nodes": len(noisy),
                               "exact_nodes": len(aggregates) - len(noisy),
                               "node_cell_sd": [float(v["sd"]) for v in noisy],
                               "cell_sd": math.sqrt(math.fsum(float(v["sd"]) ** 2 for v in noisy)), "note": DP_NOTE,
                               **noisy_cells(aggregates, full.shape),
                               "row_levels": list(row_levels), "col_levels": list(col_levels)}
            # every level's cells, signed, and their bounds as grids (a results page shows them as tables)
            cells = result["noise"]
            result["noisy_cells_signed"] = cells["cells_signed"]
            result["noisy_cells_low"] = [[v[0] for v in row] for row in cells["cells_interval"]]
            result["noisy_cells_high"] = [[v[1] for v in row] for row in cells["cells_interval"]]
        return Step(done=True, result=json_ready(result))
