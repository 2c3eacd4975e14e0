"""Welch's t-test of a numerical variable between two levels of a nominal one.

Local step: count, mean and centred sum of squares of ``y`` in group A and in
group B (rows in other groups are not used).  Global step: merge (Chan et
al.), Welch's t with the Welch–Satterthwaite degrees of freedom for the
p-value and the confidence interval (level ``1 - alpha``).

Exareme2 compatibility: ``df`` reports ``n_A + n_B - 2`` as Exareme2 does;
the degrees of freedom actually used are in ``df_welch``.  ``cohens_d`` uses
the pooled standard deviation.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.spec import NOMINAL, NUMERICAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.algorithms.inference import SIGNIFICANCE_ALPHA, alternative_spec, t_interval, t_pvalue
from mipflow.algorithms.moments import merge_moment_dicts
from mipflow.algorithms.streamed import level_moments
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd


class TTestIndependent(SpecAlgorithm):
    name = "ttest_independent"
    sums_only = True  # counts, moments and co-moments of the request's columns only (ADR 0063)
    # each group is released with its count, mean and centred sum of squares: three moments pin a few
    # rows of a variable with a small range, so a group holds min_row_count rows (ADR 0050, the class)
    group_count_setting = "min_row_count"
    label = "T-Test Independent"
    description = "Test the difference in means between two independent groups (Welch's t-test)."
    y_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=False,
                       label="Variable of interest", description="A numerical variable.")
    x_spec = InputSpec(types=("text", "int"), stattypes=(NOMINAL,), notblank=True, multiple=False,
                       label="Grouping variable", description="A nominal variable.")
    parameter_specs = MappingProxyType({
        "alt_hypothesis": alternative_spec(
            "Whether group A's mean differs from, is less than or is greater than group B's."),
        "alpha": SIGNIFICANCE_ALPHA,
        "groupA": ParamSpec(types=("text", "int"), notblank=True, enums_from="x", label="Group A",
                            description="The level of the grouping variable x used as group A."),
        "groupB": ParamSpec(types=("text", "int"), notblank=True, enums_from="x", label="Group B",
                            description="The level of the grouping variable x used as group B."),
    })

    #: Its local step also takes a node's selection left on disk (ADR 0062): each group's moments from the
    #: rows narrowed to its level, read a block at a time; the group control reads their level codes so.
    streams_rows = True

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        # groups A and B of x, not its other levels (their rows are the cohort's complement, ADR 0051)
        params = self.params(request, model)
        return (ReleasedGroups((request.x[0],), ((str(params["groupA"]), str(params["groupB"])),)),)

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        params = self.params(request, model)
        if params["groupA"] == params["groupB"]:
            raise RequestError("groupA and groupB must be different categories")

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        params = self.params(request, model)
        a, b = level_moments(data, request.y[0], request.x[0], model.variable(request.x[0]),
                             [params["groupA"], params["groupB"]])
        # group_n: sizes of the groups whose statistics are released
        return {"a": a.to_dict(), "b": b.to_dict(), "group_n": [a.n, b.n]}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        a = merge_moment_dicts(g["a"] for g in aggregates)
        b = merge_moment_dicts(g["b"] for g in aggregates)
        for label, mom in (("groupA", a), ("groupB", b)):
            if mom.n < 2:
                raise RequestError(
                    f"{label} ({params[label]}) has {mom.n} observation(s); at least 2 are needed"
                )
        var_a = float(a.m2[0]) / (a.n - 1)
        var_b = float(b.m2[0]) / (b.n - 1)
        sea2, seb2 = var_a / a.n, var_b / b.n
        se = math.sqrt(sea2 + seb2)
        if se == 0.0:
            raise RequestError(f"{request.y[0]} is constant in both groups")
        diff = float(a.mean[0] - b.mean[0])
        t = diff / se
        df_welch = (sea2 + seb2) ** 2 / (sea2**2 / (a.n - 1) + seb2**2 / (b.n - 1))
        pooled_sd = math.sqrt((float(a.m2[0]) + float(b.m2[0])) / (a.n + b.n - 2))
        low, high = t_interval(diff, se, df_welch, params["alt_hypothesis"], 1.0 - params["alpha"])
        return Step(done=True, result=json_ready({
            "n_obs": a.n + b.n,
            "statistic": t,
            "p_value": t_pvalue(t, df_welch, params["alt_hypothesis"]),
            "df": a.n + b.n - 2,
            "df_welch": df_welch,
            "mean_diff": diff,
            "se_difference": se,
            "ci_lower": low,
            "ci_upper": high,
            "cohens_d": diff / pooled_sd,
        }))

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    secure_aggregation = "automatic"
