"""One-sample t-test of a numerical variable against a population mean ``mu``.

Local step: count, mean and centred sum of squares of ``y`` (no rows).
Global step: merge the moments (Chan et al.) and test ``mean == mu``.

Result fields follow Exareme2's validation suite: ``mean_diff`` is the sample
mean (not ``mean - mu``), ``cohens_d`` is ``(mean - mu) / sd``, the confidence
interval is for the mean at level ``1 - alpha`` (one-sided for ``less`` /
``greater``, the open end written ``"Infinity"`` / ``"-Infinity"``).
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING

from mipflow.algorithms.contract import Step
from mipflow.algorithms.spec import NUMERICAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.algorithms.inference import SIGNIFICANCE_ALPHA, alternative_spec, t_interval, t_pvalue
from mipflow.algorithms.moments import merge_moment_dicts
from mipflow.algorithms.streamed import moments_of
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd


class TTestOneSample(SpecAlgorithm):
    name = "ttest_onesample"
    sums_only = True  # counts, moments and co-moments of the request's columns only (ADR 0063)
    label = "T-Test One-Sample"
    description = ("Test the difference between the mean of one sample and a population mean, assuming the "
                   "sample is drawn from a normal distribution.")
    y_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=False,
                       label="Variable", description="The numerical variable of interest.")
    x_spec = None
    parameter_specs = MappingProxyType({
        "alt_hypothesis": alternative_spec("Whether the mean differs from, is less than or is greater than mu."),
        "alpha": SIGNIFICANCE_ALPHA,
        # Exareme2 caps mu at +-10, which refuses e.g. a blood pressure tested against 90 (ADR 0022).
        "mu": ParamSpec(types=("real",), default=0.0, notblank=True, label="Population mean (mu)",
                        description="The hypothesised population mean (any finite number; Exareme2's "
                                    "spec caps it at -10..10, mipflow does not)."),
    })

    #: Its local step also takes a node's selection left on disk (:mod:`mipflow.algorithms.streamed`,
    #: ADR 0062): the node then holds no copy of the rows.
    streams_rows = True

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        return {"y": moments_of(data, [request.y[0]]).to_dict()}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        mom = merge_moment_dicts(a["y"] for a in aggregates)
        n = mom.n
        if n < 2:
            raise RequestError(f"a one-sample t-test needs at least 2 observations, got {n}")
        mean = float(mom.mean[0])
        sd = math.sqrt(float(mom.m2[0]) / (n - 1))
        se = sd / math.sqrt(n)
        if se == 0.0:
            raise RequestError(f"{request.y[0]} is constant: the t statistic is undefined")
        df = n - 1
        t = (mean - params["mu"]) / se
        low, high = t_interval(mean, se, df, params["alt_hypothesis"], 1.0 - params["alpha"])
        return Step(done=True, result=json_ready({
            "n_obs": n,
            "t_value": t,
            "p_value": t_pvalue(t, df, params["alt_hypothesis"]),
            "df": float(df),
            "mean_diff": mean,
            "se_diff": se,
            "std": sd,
            "ci_lower": low,
            "ci_upper": high,
            "cohens_d": (mean - params["mu"]) / sd,
        }))

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    secure_aggregation = "automatic"
