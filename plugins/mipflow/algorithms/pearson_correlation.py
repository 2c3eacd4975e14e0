"""Pearson correlation matrix with p-values and Fisher-z confidence intervals.

Local step: row count, means and centred co-moment matrix of the variables
(``y``, then the covariates ``x`` if given).  Global step: merge (Chan et
al.) and read the correlations off the pooled co-moments.

Output as Exareme2: each matrix is ``{"variables": [row names], <y var>:
[value per row]}`` where rows are the covariates ``x`` (or ``y`` when ``x``
is empty).  p-values are two-sided; the intervals are at confidence level
``1 - alpha`` (``alpha`` defaults to 0.95 as in Exareme2's spec).

From noisy nodes (explore mode, DP; ADR 0057) the correlations come from the pooled signed scaled
sums and carry the noise's error (:func:`noisy_correlation`): ``r_noise_*`` matrices, and intervals
and p-values that combine the sampling error with the noise.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.spec import NUMERICAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.algorithms.dp_release import (DPRelease, Noise, Released, bounded_columns, moment_sensitivity,
                                          moments_from_noisy_sums, moments_rows, noisy_sums, one_block)
from mipflow.algorithms.noise_error import INTERVAL_LEVEL, NoiseTerm, abs_cdf, halfwidth, propagate
from mipflow.algorithms.moments import merge_moment_dicts
from mipflow.algorithms.streamed import moments_of
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


# --------------------------------------------------------------------------- a correlation from noisy sums


def _terms(piece: str, noise: dict) -> list[NoiseTerm]:
    """The pooled noise on one entry: one draw per noisy node (nodes of one mechanism taken as equal)."""
    out = []
    for mechanism in ("laplace", "gaussian"):
        nodes = int(noise[f"{mechanism}_nodes"])
        if nodes:
            out += [NoiseTerm(piece, mechanism, math.sqrt(float(noise[f"{mechanism}_var"]) / nodes))] * nodes
    return out


def noisy_correlation(pooled: dict, j: int, l: int, alpha: float, level: float = INTERVAL_LEVEL) -> dict:
    """One correlation from pooled signed scaled sums, with the noise's error (ADR 0057).

    ``r = c / sqrt(q_j q_l)`` with ``q_j = S2_jj - S1_j**2 / N`` and ``c = S2_jl - S1_j S1_l / N``;
    the noise on ``N``, ``S1`` and ``S2`` (independent per released entry) is propagated to first
    order.  Returns ``r`` (clipped to [-1, 1] for display; ``r_unclipped``), ``r_noise_sd`` and the
    ``level`` interval of the noise alone (``r_noise_low`` / ``r_noise_high``: about the exact
    sample correlation of the rows), the ``1 - alpha`` confidence interval of the population
    correlation combining the Fisher-z sampling error with the noise in z (``ci_low`` / ``ci_high``),
    the two-sided p-value of no correlation from the same sum (noise taken at ``r = 0``) and
    ``noise_dominates``: the noise's sd in z exceeds the sampling sd ``1 / sqrt(N - 3)``, or a
    variance is not positive.
    """
    n, s1, s2, noise = float(pooled["n"]), np.asarray(pooled["s1"]), np.asarray(pooled["s2"]), pooled["noise"]
    if j == l:
        return {"r": 1.0, "r_unclipped": 1.0, "r_noise_sd": 0.0, "r_noise_low": 1.0, "r_noise_high": 1.0,
                "ci_low": 1.0, "ci_high": 1.0, "p_value": 0.0, "noise_dominates": False}
    a, b, i = (f"s2_{j}_{j}", f"s2_{l}_{l}", f"s2_{min(j, l)}_{max(j, l)}")
    terms = [t for piece in ("n", f"s1_{j}", f"s1_{l}", a, b, i) for t in _terms(piece, noise)]
    qj, ql = s2[j, j] - s1[j] ** 2 / n, s2[l, l] - s1[l] ** 2 / n
    c = s2[j, l] - s1[j] * s1[l] / n
    sampling = 1.0 / math.sqrt(n - 3.0)
    if qj <= 0 or ql <= 0:
        return {"r": None, "r_unclipped": None, "r_noise_sd": None, "r_noise_low": -1.0, "r_noise_high": 1.0,
                "ci_low": -1.0, "ci_high": 1.0, "p_value": None, "noise_dominates": True}
    inv = 1.0 / math.sqrt(qj * ql)
    r = c * inv

    def gradient(at: float) -> dict[str, float]:
        dj, dl = -at / (2.0 * qj), -at / (2.0 * ql)
        return {i: inv, a: dj, b: dl,
                f"s1_{j}": -inv * s1[l] / n - 2.0 * dj * s1[j] / n,
                f"s1_{l}": -inv * s1[j] / n - 2.0 * dl * s1[l] / n,
                "n": inv * s1[j] * s1[l] / n ** 2 + dj * s1[j] ** 2 / n ** 2 + dl * s1[l] ** 2 / n ** 2}

    err = propagate(gradient(r), terms, level)
    shown = min(max(r, -1.0), 1.0)
    # the population correlation: Fisher z of the sample plus the noise, both in z (dz/dr = 1 / (1 - r^2))
    z = math.atanh(min(max(r, -1.0 + 1e-12), 1.0 - 1e-12))
    dz = 1.0 / max(1.0 - shown * shown, 1e-12)
    lap = [dz * abs(gradient(r).get(t.piece, 0.0)) * t.sd for t in terms if t.mechanism == "laplace"]
    gau = [dz * abs(gradient(r).get(t.piece, 0.0)) * t.sd for t in terms if t.mechanism != "laplace"]
    half = halfwidth(lap, gau + [sampling], 1.0 - alpha)
    null = gradient(0.0)  # the noise under no correlation
    lap0 = [abs(null.get(t.piece, 0.0)) * t.sd for t in terms if t.mechanism == "laplace"]
    gau0 = [abs(null.get(t.piece, 0.0)) * t.sd for t in terms if t.mechanism != "laplace"]
    p_value = 1.0 - abs_cdf(z, lap0, gau0 + [sampling])
    return {"r": shown, "r_unclipped": r, "r_noise_sd": err.sd,
            "r_noise_low": max(r - err.halfwidth, -1.0), "r_noise_high": min(r + err.halfwidth, 1.0),
            "ci_low": math.tanh(z - half), "ci_high": math.tanh(z + half), "p_value": max(p_value, 0.0),
            "noise_dominates": bool(dz * err.sd > sampling)}


# --------------------------------------------------------------------------- differential privacy
# The noisy release a node with dp_enabled makes (PearsonCorrelation.dp_release, ADR 0021).


def _dp_release(algo: PearsonCorrelation, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                noise: Noise) -> Released:
    """Noisy sufficient statistics of the variables (``y`` then ``x``), in the local step's shape, and
    the signed scaled sums they came from with the variance of the noise on each (ADR 0057)."""
    cols = bounded_columns(data, [(c, "numerical") for c in algo.variables(request)], model, algo.name)
    n, s1, s2 = noisy_sums(cols, noise)
    l1, l2 = moment_sensitivity(cols.group)
    variance = noise.sd(l1 if noise.mechanism == "laplace" else l2) ** 2
    return {"moments": moments_from_noisy_sums(cols, n, s1, s2),
            "noisy_sums": scaled_sums(n, s1, s2, noise.mechanism, variance)}, cols.clamped


def scaled_sums(n: float, s1: Sequence[float], s2: Any, mechanism: str = "", variance: float = 0.0) -> dict:
    """The additive form of one node's scaled sums (``n``, ``s1``, ``s2``) and the noise on each entry.

    Every field is a sum over nodes (so secure aggregation can mask it): the noise is one independent
    draw per released entry of variance ``variance``, counted per mechanism.
    """
    laplace = mechanism == "laplace"
    return {"n": float(n), "s1": [float(v) for v in s1], "s2": np.asarray(s2, dtype=float).tolist(),
            "noise": {"laplace_var": variance if laplace else 0.0, "laplace_nodes": int(laplace and variance > 0),
                      "gaussian_var": 0.0 if laplace else variance,
                      "gaussian_nodes": int(not laplace and variance > 0)}}


def sums_of_moments(moments: dict, centre: np.ndarray, half: np.ndarray) -> dict:
    """An exact node's scaled sums (no noise), from its moments."""
    n = float(moments["n"])
    mean = (np.asarray(moments["mean"], dtype=float) - centre) / half
    m2 = np.asarray(moments["m2"], dtype=float) / np.outer(half, half)
    return scaled_sums(n, n * mean, m2 + n * np.outer(mean, mean))


#: What a noisy correlation's result is, stated in its privacy label.
DP_NOTE = (
    "pearson_correlation from noisy sufficient statistics (row count, sums and sums of products, values clamped "
    "to the declared ranges): each correlation is computed from the pooled signed sums and shown clipped to "
    "[-1, 1]; its noise sd and interval (noise.r_noise_interval) come from the noise's known distribution; the "
    "confidence intervals and p-values combine the sampling error (Fisher z) with the noise (first order)")


class PearsonCorrelation(SpecAlgorithm):
    name = "pearson_correlation"
    sums_only = True  # counts, moments and co-moments of the request's columns only (ADR 0063)
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

    #: Its local step also takes a node's selection left on disk (:mod:`mipflow.algorithms.streamed`,
    #: ADR 0062): the node then holds no copy of the rows.
    streams_rows = True

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        # the moments of the column-major matrix of the variables, never made (a frame's columns or rows
        # on disk a block at a time: the same values, bit for bit)
        return {"moments": moments_of(data, self.variables(request), matrix=True).to_dict()}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        cols = list(self.variables(request))
        if any(a.get("noisy_sums", {}).get("noise", {}).get("laplace_nodes", 0)
               or a.get("noisy_sums", {}).get("noise", {}).get("gaussian_nodes", 0) for a in aggregates):
            return Step(done=True, result=json_ready(self._noisy_result(aggregates, request, model, params)))
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

    def _scales(self, request: AnalysisRequest, model: DataModel) -> tuple[np.ndarray, np.ndarray] | None:
        bounds = [model.variable(c) for c in self.variables(request)]
        if any(v.min_value is None or v.max_value is None for v in bounds):
            return None
        lo = np.array([float(v.min_value) for v in bounds])
        hi = np.array([float(v.max_value) for v in bounds])
        return (lo + hi) / 2.0, np.where(hi > lo, (hi - lo) / 2.0, 1.0)

    def secure_aggregates(self, aggregates: dict, request: AnalysisRequest, model: DataModel) -> dict:
        """Under secure aggregation every node sums the same layout: an exact node adds its scaled sums
        (no noise) beside its moments when every variable has a declared range, else no node does."""
        scales = self._scales(request, model)
        if scales is None:
            return {k: v for k, v in aggregates.items() if k != "noisy_sums"}
        if "noisy_sums" in aggregates:
            return aggregates
        return {**aggregates, "noisy_sums": sums_of_moments(aggregates["moments"], *scales)}

    def _noisy_result(self, aggregates: list[dict], request: AnalysisRequest, model: DataModel,
                      params: dict) -> dict:
        scales = self._scales(request, model)
        if scales is None:
            raise RequestError("noisy correlations need a declared range of every variable")
        parts = [a["noisy_sums"] if "noisy_sums" in a else sums_of_moments(a["moments"], *scales) for a in aggregates]
        pooled = {"n": math.fsum(p["n"] for p in parts), "s1": np.sum([p["s1"] for p in parts], axis=0),
                  "s2": np.sum([p["s2"] for p in parts], axis=0),
                  "noise": {k: sum(p["noise"][k] for p in parts) for k in parts[0]["noise"]}}
        cols = list(self.variables(request))
        rows = list(request.x) or list(request.y)
        if pooled["n"] < 4:
            raise RequestError("a correlation needs at least 4 complete rows, and the noisy row count is fewer")
        cells = {(a, b): noisy_correlation(pooled, cols.index(a), cols.index(b), params["alpha"])
                 for a in request.y for b in rows}

        def matrix(field: str) -> dict:
            out: dict = {"variables": rows}
            out.update({a: [cells[(a, b)][field] for b in rows] for a in request.y})
            return out

        return {"n_obs": int(round(pooled["n"])),
                "correlations": matrix("r"), "p-values": matrix("p_value"),
                "low_confidence_intervals": matrix("ci_low"), "high_confidence_intervals": matrix("ci_high"),
                "r_noise_sd": matrix("r_noise_sd"), "r_noise_low": matrix("r_noise_low"),
                "r_noise_high": matrix("r_noise_high"), "r_unclipped": matrix("r_unclipped"),
                "noise_dominates": matrix("noise_dominates"),
                "noise": {"approximate": True, "interval_level": INTERVAL_LEVEL,
                          "p_values_account_for_noise": True, "confidence_intervals_account_for_noise": True,
                          "noisy_nodes": int(pooled["noise"]["laplace_nodes"] + pooled["noise"]["gaussian_nodes"]),
                          "note": DP_NOTE}}

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    secure_aggregation = "automatic"
    dp_release = DPRelease(one_block, _dp_release, moments_rows, DP_NOTE)
