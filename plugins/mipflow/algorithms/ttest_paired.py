"""Paired t-test between two numerical variables measured on the same rows.

Local step: count, means and centred sums of squares of ``x``, ``y`` and of
the difference ``x - y``.  Global step: merge (Chan et al.) and test.

As in Exareme2's validation suite the difference is ``x - y`` (covariate
minus variable of interest), ``cohens_d`` divides the mean difference by
``sqrt((var_x + var_y) / 2)``, and the confidence interval of the mean
difference is at level ``1 - alpha``.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING


from mipflow.algorithms.contract import Step
from mipflow.algorithms.spec import NUMERICAL, InputSpec, SpecAlgorithm
from mipflow.algorithms.design import numeric_values
from mipflow.algorithms.inference import SIGNIFICANCE_ALPHA, alternative_spec, t_interval, t_pvalue
from mipflow.algorithms.moments import column_moments, merge_moment_dicts, streamed_column_moments
from mipflow.algorithms.streamed import DifferenceSource, moments_of, on_disk
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd


class TTestPaired(SpecAlgorithm):
    name = "ttest_paired"
    sums_only = True  # counts, moments and co-moments of the request's columns only (ADR 0063)
    label = "T-Test Paired"
    description = "Test the difference in means between two related measures of the same patients (y - x)."
    y_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=False,
                       label="Variable of interest", description="The first measure (numerical).")
    x_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=False,
                       label="Related variable", description="The second measure (numerical), paired with y.")
    parameter_specs = MappingProxyType({
        "alt_hypothesis": alternative_spec(
            "Whether measure y differs from, is less than or is greater than measure x."),
        "alpha": SIGNIFICANCE_ALPHA,
    })

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        if request.x[0] == request.y[0]:
            raise RequestError("a paired t-test needs two different variables")

    #: Its local step also takes a node's selection left on disk (:mod:`mipflow.algorithms.streamed`,
    #: ADR 0062): the node then holds no copy of the rows.
    streams_rows = True

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        x, y = request.x[0], request.y[0]
        if on_disk(data):
            diff = streamed_column_moments(DifferenceSource(data, x, y), ["difference"])
        else:
            diff = column_moments([numeric_values(data[x]) - numeric_values(data[y])])
        return {"xy": moments_of(data, [x, y]).to_dict(), "diff": diff.to_dict()}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        xy = merge_moment_dicts(a["xy"] for a in aggregates)
        diff = merge_moment_dicts(a["diff"] for a in aggregates)
        n = diff.n
        if n < 2:
            raise RequestError(f"a paired t-test needs at least 2 observations, got {n}")
        mean_diff = float(diff.mean[0])
        sd_diff = math.sqrt(float(diff.m2[0]) / (n - 1))
        se = sd_diff / math.sqrt(n)
        if se == 0.0:
            raise RequestError("the differences are constant: the t statistic is undefined")
        df = n - 1
        t = mean_diff / se
        var_x, var_y = xy.variance(ddof=1)
        low, high = t_interval(mean_diff, se, df, params["alt_hypothesis"], 1.0 - params["alpha"])
        return Step(done=True, result=json_ready({
            "n_obs": n,
            "statistic": t,
            "p_value": t_pvalue(t, df, params["alt_hypothesis"]),
            "df": float(df),
            "mean_diff": mean_diff,
            "se_difference": se,
            "ci_lower": low,
            "ci_upper": high,
            "cohens_d": mean_diff / math.sqrt((var_x + var_y) / 2.0),
        }))

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    secure_aggregation = "automatic"
