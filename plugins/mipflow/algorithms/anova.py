"""Two-way ANOVA (``y ~ A * B``) with type I or type II sums of squares, exact.

Local step (one round): for every cell (level of ``A`` x level of ``B``, over
the data model's enumerations, so every node sends the same grid) the row
count and the mean of ``y``, plus the node's within-cell sum of squares
``sum((y - cell mean)**2)``.  This is the same information as ``X'X``, ``X'y``
and ``y'y`` of the saturated dummy design (``X'X`` is a linear image of the
cell counts, ``X'y`` of the cell sums, and ``y'y = W + sum(n_c * mean_c**2)``),
sent in centred form so that nothing cancels (see :mod:`.moments`).  The cell
counts go under ``group_n``: a node holding a cell of ``0 < n < min_row_count``
rows refuses the step rather than release that cell's mean (``group_count_setting``,
ADR 0050: a cell's mean and, through the pooled sum of squares, its spread).

Global step: merge the cells over nodes (Chan et al.); the pooled
within-cell sum of squares is the residual sum of squares of the saturated
model.  Every smaller model (``1``, ``A``, ``B``, ``A + B``) is a function of
the cell, so its residual sum of squares is
``W + sum_c n_c (mean_c - x_c' b)**2`` with ``b`` the weighted least-squares
fit to the cell means: no rows needed.  Sums of squares are differences of
nested models (type I: sequential ``A``, ``B | A``, ``A:B | A + B``; type II:
``A | B``, ``B | A``, ``A:B | A + B``, statsmodels' ``anova_lm(typ=2)``), and
degrees of freedom are the differences of the models' ranks.

With every cell present this is exactly statsmodels' ``anova_lm`` of
``ols("y ~ C(A) * C(B)")``.  With empty cells (nested or confounded factors)
statsmodels counts design columns rather than rank and reports aliased
effects; here a term's ``df`` is its rank increment, and a term that adds
nothing has ``df`` 0, ``sum_sq`` 0 and no F test (``None``), as the
comparison of nested fits (``anova_lm(m0, m1)``) gives.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.design import category_codes, numeric_values, sorted_levels
from mipflow.algorithms.moments import Moments, merge_moments
from mipflow.algorithms.streamed import cell_means_on_disk, on_disk
from mipflow.algorithms.spec import (
    NOMINAL,
    NUMERICAL,
    InputSpec,
    ParamSpec,
    SpecAlgorithm,
)
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

#: Name of the residual row (Exareme2's spelling).
RESIDUALS = "Residuals"


def cell_grid(model: DataModel, a: str, b: str) -> list[tuple[str, str]]:
    """Every (level of ``a``, level of ``b``) pair, levels sorted, ``b`` fastest."""
    return [(la, lb) for la in sorted_levels(model.variable(a)) for lb in sorted_levels(model.variable(b))]


def _treatment(levels: np.ndarray, present: list[str]) -> np.ndarray:
    """Indicator columns of ``present[1:]`` (the first level is the reference), shape (m, k - 1)."""
    if len(present) < 2:
        return np.zeros((len(levels), 0))
    return np.column_stack([(levels == lvl).astype(float) for lvl in present[1:]])


def _rss_and_rank(design: np.ndarray, means: np.ndarray, weights: np.ndarray) -> tuple[float, int]:
    """Between-cell residual sum of squares and rank of a weighted least-squares fit.

    Parameters
    ----------
    design : numpy.ndarray, shape (m, p)
        One row per non-empty cell.
    means : numpy.ndarray, shape (m,)
        Cell means of ``y``, centred on the grand mean.
    weights : numpy.ndarray, shape (m,)
        Cell counts.
    """
    root = np.sqrt(weights)
    xw = design * root[:, None]
    yw = means * root
    coef, _, rank, _ = np.linalg.lstsq(xw, yw, rcond=None)
    resid = yw - xw @ coef
    return float(resid @ resid), int(rank)


class Anova(SpecAlgorithm):
    name = "anova"
    sums_only = True  # counts, moments and co-moments of the request's columns only (ADR 0063)
    # each cell is released with its count and mean beside the pooled within-cell sum of squares, from
    # which one cell's sum of squares follows with one-way analyses of the same y (ADR 0050, the class)
    group_count_setting = "min_row_count"
    label = "Two-way ANOVA"
    description = ("Test the difference in the means of the dependent variable between groups of two "
                   "nominal factors, with their interaction.")
    y_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=False,
                       label="Variable (dependent)", description="A numerical variable.")
    x_spec = InputSpec(types=("int", "text"), stattypes=(NOMINAL,), notblank=True, multiple=True,
                       label="Factors (independent)", description="Two nominal variables.")
    # Exareme2's spec writes the default as the string "2"; here it is the int its type says (a
    # request may still send "1" or "2": see params).
    parameter_specs = MappingProxyType({
        "sstype": ParamSpec(types=("int",), default=2, notblank=True, min=1, max=2, label="Sums of squares type",
                            description="Type of the sums of squares: 1 (sequential) or 2."),
    })

    def params(self, request: AnalysisRequest, model: DataModel | None = None) -> dict[str, Any]:
        parameters = dict(request.parameters)
        value = parameters.get("sstype")
        if isinstance(value, str) and value != "":
            if value.strip() not in ("1", "2"):
                raise RequestError(f"parameter 'sstype' must be 1 or 2, got {value!r}")
            parameters["sstype"] = int(value)
        return super().params(dataclasses.replace(request, parameters=parameters), model)

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        if len(request.x) != 2:
            raise RequestError(
                f"Anova two-way only works with two covariates (x); got {len(request.x)}"
            )
        if request.y[0] in request.x:
            raise RequestError(f"{request.y[0]!r} cannot be both the dependent variable and a factor")
        for code in request.x:
            if len(model.variable(code).enumerations) < 2:
                raise RequestError(
                    f"The variable {code} has less than 2 levels and Anova cannot be performed. "
                    "Please choose another variable."
                )

    #: Its local step also takes a node's selection left on disk (ADR 0062): each cell's rows narrowed from
    #: their level codes, its sums numpy's pairwise ones followed a block at a time (the same bits).
    streams_rows = True

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        # every cell's count and mean; a factor's level is the sum of its cells (ADR 0051)
        return (ReleasedGroups(tuple(request.x[:2])),)

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        a, b = request.x
        if on_disk(data):
            counts, means, within = cell_means_on_disk(data, request.y[0], (a, b), cell_grid(model, a, b))
            return {"group_n": counts, "cell_means": means, "ss_within": within}
        levels_a = category_codes(data[a], model.variable(a)).to_numpy()
        levels_b = category_codes(data[b], model.variable(b)).to_numpy()
        y = numeric_values(data[request.y[0]])
        counts, means, within = [], [], 0.0
        for la, lb in cell_grid(model, a, b):
            values = y[(levels_a == la) & (levels_b == lb)]
            counts.append(int(values.size))
            if values.size:
                mean = float(values.mean())
                mean += float((values - mean).mean())  # second pass, as compute_moments
                means.append(mean)
                within += float(((values - mean) ** 2).sum())
            else:
                means.append(0.0)
        # group_n: the sizes of the cells whose means are released (min_row_count, ADR 0050)
        return {"group_n": counts, "cell_means": means, "ss_within": within}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        from scipy import stats

        a, b = request.x
        sstype = self.params(request, model)["sstype"]
        grid = cell_grid(model, a, b)
        cells = [
            merge_moments(Moments(int(agg["group_n"][i]), np.array([float(agg["cell_means"][i])]),
                                  np.zeros(1)) for agg in aggregates)
            for i in range(len(grid))
        ]
        within = float(sum(float(agg["ss_within"]) for agg in aggregates)) + float(sum(c.m2[0] for c in cells))
        keep = [i for i, c in enumerate(cells) if c.n > 0]
        n = sum(cells[i].n for i in keep)
        if n == 0:
            raise RequestError("two-way ANOVA: no rows in the selected data")
        lv_a = np.array([grid[i][0] for i in keep], dtype=object)
        lv_b = np.array([grid[i][1] for i in keep], dtype=object)
        for code, levels in ((a, lv_a), (b, lv_b)):
            if len(set(levels)) < 2:
                raise RequestError(
                    f"The data of variable {code} contain less than 2 levels and Anova cannot be "
                    "performed. Please select more data or choose another variable."
                )
        weights = np.array([float(cells[i].n) for i in keep])
        cell_mean = np.array([float(cells[i].mean[0]) for i in keep])
        grand = float(merge_moments(cells[i] for i in keep).mean[0])
        centred = cell_mean - grand  # every model has an intercept: RSS unchanged

        ones = np.ones((len(keep), 1))
        dummies_a = _treatment(lv_a, sorted(set(lv_a)))
        dummies_b = _treatment(lv_b, sorted(set(lv_b)))
        designs = {
            "1": ones,
            "A": np.hstack([ones, dummies_a]),
            "B": np.hstack([ones, dummies_b]),
            "A+B": np.hstack([ones, dummies_a, dummies_b]),
        }
        fits = {name: _rss_and_rank(x, centred, weights) for name, x in designs.items()}
        # the saturated model fits every cell mean: its RSS is the within-cell SS
        fits["A*B"] = (0.0, len(keep))
        rss = {name: within + between for name, (between, _) in fits.items()}
        rank = {name: r for name, (_, r) in fits.items()}

        if sstype == 1:
            comparisons = (("1", "A"), ("A", "A+B"), ("A+B", "A*B"))
        else:
            comparisons = (("B", "A+B"), ("A", "A+B"), ("A+B", "A*B"))
        terms = (a, b, f"{a}:{b}")
        df_resid = n - rank["A*B"]
        if df_resid <= 0:
            raise RequestError(
                f"two-way ANOVA with {rank['A*B']} non-empty cells needs more than {rank['A*B']} rows, got {n}"
            )
        ms_resid = rss["A*B"] / df_resid
        if ms_resid == 0.0:
            raise RequestError(f"{request.y[0]} is constant within every cell")
        sum_sq, dfs, f_stat, f_pvalue = {}, {}, {}, {}
        for term, (small, big) in zip(terms, comparisons):
            df = rank[big] - rank[small]
            dfs[term] = df
            if df == 0:
                sum_sq[term], f_stat[term], f_pvalue[term] = 0.0, None, None
                continue
            ss = max(fits[small][0] - fits[big][0], 0.0)  # the within-cell SS cancels
            f = (ss / df) / ms_resid
            sum_sq[term], f_stat[term] = ss, f
            f_pvalue[term] = float(stats.f.sf(f, df, df_resid))
        sum_sq[RESIDUALS], dfs[RESIDUALS] = rss["A*B"], df_resid
        f_stat[RESIDUALS], f_pvalue[RESIDUALS] = None, None
        return Step(done=True, result=json_ready({
            "n_obs": n,
            "sstype": sstype,
            "sum_sq": sum_sq,
            "df": dfs,
            "f_stat": f_stat,
            "f_pvalue": f_pvalue,
        }))


__all__ = ["Anova", "RESIDUALS", "cell_grid"]
