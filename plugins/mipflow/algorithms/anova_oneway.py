"""One-way ANOVA with Tukey's HSD, exact against the pooled analysis.

Local step: count, mean and centred sum of squares of ``y`` in every level
of ``x``.  Global step: merge per level (Chan et al.); between-group sum of
squares from the group means, within-group from the merged ``M2``; Tukey's
honestly significant difference for every pair of levels present, p-values
from the studentized range distribution (``scipy.stats.studentized_range``,
as statsmodels' ``pairwise_tukeyhsd``).

Exareme2's expected p-values come from an older table approximation
(``psturng``) that clips at 0.001 and 0.9; ours are not clipped.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.streamed import level_moments
from mipflow.algorithms.moments import (
    Moments,
    merge_moment_dicts,
    merge_moments,
)
from mipflow.algorithms.spec import NOMINAL, NUMERICAL, InputSpec, SpecAlgorithm
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd


class AnovaOneway(SpecAlgorithm):
    name = "anova_oneway"
    sums_only = True  # counts, moments and co-moments of the request's columns only (ADR 0063)
    # each group is released with its count, mean and centred sum of squares (ADR 0050, the class)
    group_count_setting = "min_row_count"
    label = "One-way ANOVA"
    description = ("Test the difference in the means of the dependent variable between the levels of one "
                   "nominal variable, with Tukey's HSD comparisons.")
    y_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=False,
                       label="Variable (dependent)", description="A numerical variable.")
    x_spec = InputSpec(types=("int", "text"), stattypes=(NOMINAL,), notblank=True, multiple=False,
                       label="Covariate (independent)", description="A nominal variable.")

    #: Its local step also takes a node's selection left on disk (ADR 0062): each level's moments from the
    #: rows narrowed to it, read a block at a time; the group control reads their level codes so.
    streams_rows = True

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        return (ReleasedGroups((request.x[0],)),)  # every level's moments (ADR 0051)

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        var = model.variable(request.x[0])
        moments = level_moments(data, request.y[0], request.x[0], var, var.enumeration_codes)
        # group_n: sizes of the groups whose statistics are released (for the
        # node's disclosure control)
        return {"groups": [m.to_dict() for m in moments], "group_n": [m.n for m in moments]}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        from scipy import stats

        var = model.variable(request.x[0])
        merged = {level: merge_moment_dicts(a["groups"][i] for a in aggregates)
                  for i, level in enumerate(var.enumeration_codes)}
        groups: dict[str, Moments] = {lvl: merged[lvl] for lvl in sorted(merged) if merged[lvl].n > 0}
        k = len(groups)
        if k < 2:
            raise RequestError("Cannot perform Anova one-way. Covariable has only one level.")
        total = merge_moments(groups.values())
        n = total.n
        df_explained, df_residual = k - 1, n - k
        if df_residual <= 0:
            raise RequestError(f"one-way ANOVA with {k} groups needs more than {k} rows, got {n}")
        grand = float(total.mean[0])
        ss_residual = float(sum(g.m2[0] for g in groups.values()))
        ss_explained = float(sum(g.n * (g.mean[0] - grand) ** 2 for g in groups.values()))
        ms_explained = ss_explained / df_explained
        ms_residual = ss_residual / df_residual
        if ms_residual == 0.0:
            raise RequestError(f"{request.y[0]} is constant within every group")
        f_stat = ms_explained / ms_residual

        levels = list(groups)
        pairs = [(a, b) for i, a in enumerate(levels) for b in levels[i + 1:]]
        diffs = np.array([groups[a].mean[0] - groups[b].mean[0] for a, b in pairs])
        se = np.array([math.sqrt(ms_residual * (1.0 / groups[a].n + 1.0 / groups[b].n))
                       for a, b in pairs])
        t_stats = diffs / se
        p_tukey = stats.studentized_range.sf(np.abs(t_stats) * math.sqrt(2.0), k, df_residual)
        tukey = [
            {"groupA": a, "groupB": b,
             "meanA": float(groups[a].mean[0]), "meanB": float(groups[b].mean[0]),
             "diff": diffs[i], "se": se[i], "t_stat": t_stats[i], "p_tuckey": p_tukey[i]}
            for i, (a, b) in enumerate(pairs)
        ]
        return Step(done=True, result=json_ready({
            "n_obs": n,
            "df_residual": float(df_residual),
            "df_explained": float(df_explained),
            "ss_residual": ss_residual,
            "ss_explained": ss_explained,
            "ms_residual": ms_residual,
            "ms_explained": ms_explained,
            "p_value": float(stats.f.sf(f_stat, df_explained, df_residual)),
            "f_stat": f_stat,
            "tuckey_test": tukey,
        }))

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    secure_aggregation = "automatic"
