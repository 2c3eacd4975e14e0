"""Cochran-Mantel-Haenszel test of a 2x2xK stratified table.

``y`` is the outcome (one nominal variable: the columns of every 2x2 table),
``x = [exposure, stratum]`` two nominal variables: the exposure gives the rows
and the stratum (e.g. hospital site, age band, sex) one table per level.  The
parameters ``exposure_level`` and ``outcome_level`` make a variable binary
(that level against all others, in this order); a variable without one must
have exactly two levels present in the pooled data, in the data model's
enumeration order (the first level is the first row / column).

Local step: the node's counts of every (stratum, exposure, outcome) cell over
the data model's enumerations, under ``group_counts``, so the node's
``nfilter_tab`` control refuses the whole step when any cell is in
``(0, nfilter_tab)`` (tables released whole or not at all, as
``contingency_table``; ``docs/adr/0006-contingency-suppression.md``).

Global step: the pooled 2x2 table of each stratum is the sum of the nodes'
tables, and every statistic is a function of those tables alone, so it equals
``statsmodels.stats.contingency_tables.StratifiedTable`` on the pooled rows.
With ``a, b, c, d`` the cells of a stratum (first row ``a, b``) and ``n`` its
size:

* CMH statistic ``(|sum a - E a| - cc)^2 / sum Var a`` with
  ``E a = (a+b)(a+c)/n``, ``Var a = (a+b)(c+d)(a+c)(b+d) / (n^2 (n-1))``,
  ``cc = 0.5`` with ``continuity_correction``; chi-squared, 1 df;
* Mantel-Haenszel common odds ratio ``sum(ad/n) / sum(bc/n)`` with the
  Robins-Breslow-Greenland variance of its logarithm and a Wald interval;
* Mantel-Haenszel common risk ratio ``sum(a(c+d)/n) / sum(c(a+b)/n)``;
* Breslow-Day test of a common odds ratio (optionally Tarone-adjusted),
  chi-squared with ``K - 1`` df.

Strata with fewer than 2 rows in the pooled data carry no information (their
variance term is 0/0) and are left out, listed in ``excluded_strata``.  The
p-values are asymptotic.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.design import category_codes
from mipflow.algorithms.spec import NOMINAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

YES_NO = ("yes", "no")


def stratified_counts(strata: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                      levels: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]) -> np.ndarray:
    """Counts of every (stratum, row level, column level), shape (K, r, c).

    Parameters
    ----------
    strata, rows, cols : numpy.ndarray of str, shape (n,)
        Enumeration codes of complete-case rows.
    levels : (stratum levels, row levels, column levels)
    """
    shape = tuple(len(lv) for lv in levels)
    index = []
    for codes, lv in zip((strata, rows, cols), levels):
        position = {level: i for i, level in enumerate(lv)}
        index.append(np.fromiter((position[c] for c in codes), dtype=np.int64, count=len(codes)))
    flat = np.ravel_multi_index(tuple(index), shape) if len(strata) else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape)


def mantel_haenszel(tables: np.ndarray, *, correction: bool, tarone: bool, alpha: float) -> dict[str, Any]:
    """CMH test, common odds and risk ratios, Breslow-Day test of K 2x2 tables.

    Parameters
    ----------
    tables : numpy.ndarray, shape (K, 2, 2)
        One table per stratum, every stratum with at least 2 rows.

    Returns
    -------
    dict
        ``cmh``, ``common_odds_ratio``, ``common_risk_ratio``, ``breslow_day``.
    """
    from scipy import stats

    t = np.asarray(tables, dtype=float)
    a, b, c, d = t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1]
    n = a + b + c + d
    row1, row2, col1, col2 = a + b, c + d, a + c, b + d

    deviation = abs(float(np.sum(a - row1 * col1 / n)))
    if correction:
        deviation -= 0.5  # as statsmodels: not floored at zero
    variance = float(np.sum(row1 * col1 * col2 * row2 / (n ** 2 * (n - 1))))
    cmh = deviation ** 2 / variance if variance > 0 else math.nan

    ad_n, bc_n = float(np.sum(a * d / n)), float(np.sum(b * c / n))
    odds = ad_n / bc_n if bc_n > 0 else math.inf
    # Robins, Breslow and Greenland (1986): variance of log of the MH odds ratio
    p, q = (a + d) / n, (b + c) / n
    log_var = (float(np.sum(p * a * d / n)) / ad_n ** 2
               + float(np.sum(p * b * c / n + q * a * d / n)) / (ad_n * bc_n)
               + float(np.sum(q * b * c / n)) / bc_n ** 2) / 2.0 if ad_n > 0 and bc_n > 0 else math.nan
    log_se = math.sqrt(log_var) if log_var >= 0 else math.nan
    z = -float(stats.norm.ppf(alpha / 2.0))
    log_odds = math.log(odds) if 0 < odds < math.inf else math.nan

    risk_den = float(np.sum(c * row1 / n))
    risk = float(np.sum(a * row2 / n)) / risk_den if risk_den > 0 else math.inf

    breslow = _breslow_day(a, row1, col1, d - a, odds, tarone)
    k = len(t)
    return {
        "cmh": {"statistic": cmh, "df": 1, "p_value": float(stats.chi2.sf(cmh, 1)),
                "continuity_correction": correction, "p_value_method": "asymptotic"},
        "common_odds_ratio": {"estimate": odds, "log_estimate": log_odds, "log_se": log_se,
                              "ci_lower": math.exp(log_odds - z * log_se), "ci_upper": math.exp(log_odds + z * log_se),
                              "method": "Mantel-Haenszel; Robins-Breslow-Greenland standard error"},
        "common_risk_ratio": {"estimate": risk, "method": "Mantel-Haenszel"},
        "breslow_day": {"statistic": breslow, "df": k - 1,
                        "p_value": float(stats.chi2.sf(breslow, k - 1)) if k > 1 else math.nan,
                        "tarone_adjustment": tarone, "p_value_method": "asymptotic"},
    }


def _breslow_day(a: np.ndarray, row1: np.ndarray, col1: np.ndarray, d_minus_a: np.ndarray, odds: float,
                 tarone: bool) -> float:
    """Breslow-Day statistic: each stratum's first cell against its expectation under the common
    odds ratio (the root of ``(1 - R) e^2 + (R (row1 + col1) + d - a) e - R row1 col1 = 0``)."""
    if not 0 < odds < math.inf:
        return math.nan
    quad = 1.0 - odds
    lin = odds * (row1 + col1) + d_minus_a
    const = -odds * row1 * col1
    with np.errstate(divide="ignore", invalid="ignore"):
        if quad == 0.0:  # common odds ratio exactly 1: the equation is linear
            expected = -const / lin
        else:
            expected = (-lin + np.sqrt(lin ** 2 - 4.0 * quad * const)) / (2.0 * quad)
        var = 1.0 / (1.0 / expected + 1.0 / (col1 - expected) + 1.0 / (row1 - expected)
                     + 1.0 / (d_minus_a + expected))
        statistic = float(np.sum((a - expected) ** 2 / var))
        if tarone:
            statistic -= float(np.sum(a) - np.sum(expected)) ** 2 / float(np.sum(var))
    return statistic


def _binary(counts: np.ndarray, axis: int, levels: tuple[str, ...], chosen: Any, code: str
            ) -> tuple[np.ndarray, list[str]]:
    """Two levels along ``axis``: ``chosen`` against all others, or the two levels present.

    Raises
    ------
    RequestError
        If, without ``chosen``, the pooled data hold other than two levels, or a side is empty.
    """
    totals = counts.sum(axis=tuple(a for a in range(counts.ndim) if a != axis))
    if chosen is not None:
        i = levels.index(str(chosen))
        first = np.take(counts, [i], axis=axis)
        pair = np.concatenate([first, np.take(counts, [j for j in range(len(levels)) if j != i], axis=axis)
                               .sum(axis=axis, keepdims=True)], axis=axis)
        names = [str(chosen), f"not {chosen}"]
        if np.any(pair.sum(axis=tuple(a for a in range(counts.ndim) if a != axis)) == 0):
            raise RequestError(f"cmh_test: no rows with {code!r} = {chosen!r}, or none with another level")
        return pair, names
    present = [j for j, total in enumerate(totals) if total > 0]
    if len(present) != 2:
        raise RequestError(f"cmh_test needs exactly two levels of {code!r} in the data, found {len(present)} "
                           f"({', '.join(levels[j] for j in present)}); choose one with the parameter "
                           f"{'exposure_level' if axis == 1 else 'outcome_level'} or filter the others out")
    return np.take(counts, present, axis=axis), [levels[j] for j in present]


def _pool(aggregates: list[dict], shape: tuple[int, int, int]) -> np.ndarray:
    """Sum of the nodes' (stratum, row, column) counts.

    Raises
    ------
    RequestError
        If a node sent another shape or a cell that is not a count (suppressed?).
    """
    total = np.zeros(shape, dtype=np.int64)
    for agg in aggregates:
        if list(agg.get("shape", ())) != list(shape):
            raise RequestError(f"a node sent tables of shape {agg.get('shape')}, expected {list(shape)}")
        cells = agg.get("group_counts")
        if (not isinstance(cells, list) or len(cells) != int(np.prod(shape))
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in cells)):
            raise RequestError("a node sent tables with cells that are not counts (suppressed?); "
                               "the pooled tables would be unknown")
        total += np.asarray(cells, dtype=np.int64).reshape(shape)
    return total


class CMHTest(SpecAlgorithm):
    """Stratified 2x2 tables: ``y`` outcome, ``x = [exposure, stratum]``."""

    name = "cmh_test"
    label = "Cochran-Mantel-Haenszel test (stratified 2x2 tables)"
    description = ("The Cochran-Mantel-Haenszel test of a stratified 2x2xK table, the Mantel-Haenszel common "
                   "odds and risk ratios and the Breslow-Day test of a common odds ratio.")
    y_spec = InputSpec(types=("int", "text"), stattypes=(NOMINAL,), notblank=True, multiple=False,
                       label="Outcome", description="A nominal variable: the columns of every 2x2 table.")
    x_spec = InputSpec(types=("int", "text"), stattypes=(NOMINAL,), notblank=True, multiple=True,
                       label="Exposure and stratum",
                       description="[exposure, stratum]: two nominal variables, the rows of every table and "
                                   "one table per level.")
    parameter_specs = MappingProxyType({
        "continuity_correction": ParamSpec(types=("text",), default="no", notblank=True, enums=YES_NO,
                                           label="Continuity correction",
                                           description="Subtract 0.5 in the CMH statistic."),
        "tarone_adjustment": ParamSpec(types=("text",), default="no", notblank=True, enums=YES_NO,
                                       label="Tarone's adjustment", description="Tarone's adjustment of the "
                                                                                "Breslow-Day test."),
        "alpha": ParamSpec(types=("real",), central_only=True, default=0.05, notblank=True, min=0.0, max=1.0, min_exclusive=True,
                           max_exclusive=True, label="Significance level (alpha)",
                           description="The significance level: the common odds ratio interval is at level "
                                       "1 - alpha (0.05: 95 %)."),
        "exposure_level": ParamSpec(types=("text", "int"), label="Exposure level",
                                    description="The exposure level compared with all others (empty: the "
                                                "exposure must have two levels)."),
        "outcome_level": ParamSpec(types=("text", "int"), label="Outcome level",
                                   description="The outcome level compared with all others (empty: the "
                                               "outcome must have two levels)."),
    })

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        if len(request.x) != 2:
            raise RequestError(f"cmh_test needs x = [exposure, stratum], got {len(request.x)} variable(s)")
        if len({request.y[0], *request.x}) != 3:
            raise RequestError("the outcome (y), the exposure and the stratum (x) must be three different variables")
        params = self.params(request, model)
        for name, code in (("exposure_level", request.x[0]), ("outcome_level", request.y[0])):
            level = params[name]
            codes = model.variable(code).enumeration_codes
            if level is not None and str(level) not in codes:
                raise RequestError(f"parameter {name!r} = {level!r} is not a level of {code!r} ({', '.join(codes)})")

    @staticmethod
    def _levels(request: AnalysisRequest, model: DataModel) -> tuple[tuple[str, ...], ...]:
        exposure, stratum = request.x
        return tuple(model.variable(code).enumeration_codes for code in (stratum, exposure, request.y[0]))

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        exposure, stratum = request.x
        codes = [category_codes(data[code], model.variable(code)).to_numpy()
                 for code in (stratum, exposure, request.y[0])]
        counts = stratified_counts(*codes, self._levels(request, model))
        # every cell is a group of patients: group_counts, refused whole if any cell is small
        return {"shape": list(counts.shape), "group_counts": counts.ravel().tolist()}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        strata_levels, row_levels, col_levels = self._levels(request, model)
        shape = (len(strata_levels), len(row_levels), len(col_levels))
        full = _pool(aggregates, shape)
        n_obs = int(full.sum())
        if n_obs == 0:
            raise RequestError("no rows have values of all three variables")
        exposure, stratum = request.x
        full, row_names = _binary(full, 1, row_levels, params["exposure_level"], exposure)
        tables, col_names = _binary(full, 2, col_levels, params["outcome_level"], request.y[0])
        sizes = tables.sum(axis=(1, 2))
        used = sizes >= 2
        if not used.any():
            raise RequestError(f"no stratum of {stratum!r} holds 2 or more rows")
        tables = tables[used]
        result: dict[str, Any] = {
            "n_obs": n_obs,
            "row_var": exposure,
            "col_var": request.y[0],
            "strata_var": stratum,
            "row_levels": row_names,
            "col_levels": col_names,
            "strata": [lvl for lvl, k in zip(strata_levels, used) if k],
            "excluded_strata": [lvl for lvl, k in zip(strata_levels, used) if not k],
            "tables": tables,
            "strata_n": sizes[used],
            **mantel_haenszel(tables, correction=params["continuity_correction"] == "yes",
                              tarone=params["tarone_adjustment"] == "yes", alpha=params["alpha"]),
            "confidence_level": 1.0 - params["alpha"],
        }
        return Step(done=True, result=json_ready(result))
