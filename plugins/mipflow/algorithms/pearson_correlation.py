"""Pearson correlation matrix with p-values and Fisher-z confidence intervals.

Local step: row count, means and centred co-moment matrix of the variables
(``y``, then the covariates ``x`` if given).  Global step: merge (Chan et
al.) and read the correlations off the pooled co-moments.

Output as Exareme2: each matrix is ``{"variables": [row names], <y var>:
[value per row]}`` where rows are the covariates ``x`` (or ``y`` when ``x``
is empty).  p-values are two-sided; the intervals are at confidence level
``1 - alpha`` (``alpha`` defaults to 0.95 as in Exareme2's spec).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.spec import NUMERICAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.algorithms.design import numeric_values
from mipflow.algorithms.dp_release import (DPRelease, Noise, Released, bounded_columns, moments_from_noisy_sums,
                                          moments_rows, noisy_sums, one_block)
from mipflow.algorithms.moments import compute_moments, merge_moment_dicts
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd


def correlation_tests(r: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided p-values and ``1 - alpha`` Fisher-z intervals of correlations ``r``."""
    from scipy import special, stats

    df = n - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        # P(|T| > t) for t^2 = r^2 df / (1 - r^2), via the regularised incomplete beta.
        pvalues = special.betainc(0.5 * df, 0.5, np.clip((1.0 - r) * (1.0 + r), 0.0, 1.0))
        z = np.arctanh(r)
        half = stats.norm.ppf(1.0 - alpha / 2.0) / np.sqrt(n - 3) if n > 3 else np.nan
        low, high = np.tanh(z - half), np.tanh(z + half)
    return pvalues, low, high


# --------------------------------------------------------------------------- differential privacy
# The noisy release a node with dp_enabled makes (PearsonCorrelation.dp_release, ADR 0021).


def _dp_release(algo: PearsonCorrelation, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                noise: Noise) -> Released:
    """Noisy sufficient statistics of the variables (``y`` then ``x``), in the local step's shape."""
    cols = bounded_columns(data, [(c, "numerical") for c in algo.variables(request)], model, algo.name)
    return {"moments": moments_from_noisy_sums(cols, *noisy_sums(cols, noise))}, cols.clamped


#: What a noisy correlation's result is, stated in its privacy label.
DP_NOTE = (
    "pearson_correlation from noisy sufficient statistics (row count, sums and sums of products, values clamped "
    "to the declared ranges): correlations are clipped to [-1, 1]; p-values and confidence intervals are computed "
    "from the noisy statistics as if they were exact and leave out the noise's own variance")


class PearsonCorrelation(SpecAlgorithm):
    name = "pearson_correlation"
    label = "Pearson Correlation Matrix"
    description = ("The correlation coefficients of numerical variables, with two-sided p-values and "
                   "Fisher-z intervals.")
    y_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=True,
                       label="Variables", description="Numerical variables (the matrix's columns).")
    x_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=False, multiple=True,
                       label="Covariates (optional)", description="Numerical variables (the matrix's rows; "
                                                                   "default: y against itself).")
    parameter_specs = MappingProxyType({
        # Exareme2's wire name, default and intervals, which are at 1 - alpha (ADR 0022).
        "alpha": ParamSpec(types=("real",), central_only=True, default=0.95, notblank=True, min=0.0, max=1.0,
                           label="Alpha (intervals at level 1 - alpha)",
                           description="Exareme2 calls it the confidence level, but the intervals are at "
                                       "level 1 - alpha, as Exareme2 computes them: the default 0.95 gives "
                                       "5 % intervals; send 0.05 for 95 % intervals."),
    })

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        cols = self.variables(request)
        z = np.column_stack([numeric_values(data[c]) for c in cols])
        return {"moments": compute_moments(z, matrix=True).to_dict()}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        cols = list(self.variables(request))
        mom = merge_moment_dicts(a["moments"] for a in aggregates)
        n = mom.n
        if n < 3:
            raise RequestError(f"a correlation needs at least 3 complete rows, got {n}")
        sd = np.sqrt(np.diagonal(mom.m2))
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = np.clip(mom.m2 / np.outer(sd, sd), -1.0, 1.0)
        rows = list(request.x) or list(request.y)
        r = corr[np.ix_([cols.index(v) for v in request.y], [cols.index(v) for v in rows])]
        pvalues, low, high = correlation_tests(r, n, params["alpha"])

        def matrix(values: np.ndarray) -> dict:
            out: dict = {"variables": rows}
            out.update({var: values[i] for i, var in enumerate(request.y)})
            return out

        return Step(done=True, result=json_ready({
            "n_obs": n,
            "correlations": matrix(r),
            "p-values": matrix(pvalues),
            "low_confidence_intervals": matrix(low),
            "high_confidence_intervals": matrix(high),
        }))

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    secure_aggregation = "automatic"
    dp_release = DPRelease(one_block, _dp_release, moments_rows, DP_NOTE)
