"""A linear regression from noisy sufficient statistics, with the noise's error (ADR 0057, ADR 0021).

A noisy node (explore mode, differential privacy) releases, beside its post-processed moments, the
signed scaled sums they came from (``noisy_sums``: ``n``, ``S1 = sum v``, ``S2 = sum v v^T`` of the
design columns and ``y`` mapped into ``[-1, 1]``) and the variance of the independent noise on each
released entry (settings only).  Pooled over the nodes (an exact node adds its own sums, no noise),
the coefficients are a smooth function of those entries; their noise error is, to first order, a
weighted sum of the entries' independent Laplace / Gaussian noises (:func:`coefficient_gradients`,
the delta method in closed form).  Each coefficient then carries:

- ``coef_noise_sd`` and a :data:`~mipflow.algorithms.noise_error.INTERVAL_LEVEL` interval of the noise
  alone (``coef_noise_low`` / ``coef_noise_high``, about the coefficients of the rows, clamped to the
  declared ranges, pooled): the quantile of that weighted sum of noises;
- ``std_err`` = ``sqrt(std_err_sampling**2 + coef_noise_sd**2)``; the confidence interval
  (``lower_ci`` / ``upper_ci``) and the p-value of a zero coefficient from the law of the sampling error
  (normal, its sd scaled so that without noise the interval is the usual t interval) plus the noise: of
  the population coefficient, under the usual linear-model assumptions;
- ``noise_dominates``: the noise's sd exceeds the sampling standard error (or the noisy co-moments were
  projected, or the noisy residual sum of squares is not positive).

Post-processing only (released values and stated settings, never a row, no budget), deterministic (no
draws) and cheap: the ``FOLD_AFTER`` largest Laplace weights of a coefficient are kept as Laplace terms
in its exact quantile, the smaller ones enter as a Gaussian of their variance (their excess kurtosis is
then at most ``3 / FOLD_AFTER`` of what the folded part alone would carry).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from mipflow.algorithms.design import INTERCEPT, design_columns, select_design_columns, sum_level_counts
from mipflow.algorithms.dp_release import released_pairs
from mipflow.algorithms.noise_error import INTERVAL_LEVEL, abs_cdf, halfwidth
from mipflow.exceptions import RequestError

if TYPE_CHECKING:
    from mipflow.protocol.datamodel import DataModel
    from mipflow.protocol.request import AnalysisRequest

#: Laplace weights kept as Laplace terms per coefficient (the rest enter as one Gaussian of their variance).
FOLD_AFTER = 12

#: What the noisy fit's R-squared, F and residual standard error are (they leave the noise out).
NOT_ACCOUNTED = ("rse", "r_squared", "r_squared_adjusted", "f_stat", "f_pvalue")


def column_scales(request: AnalysisRequest, model: DataModel) -> tuple[tuple[str, ...], np.ndarray, np.ndarray] | None:
    """``(group, centre, half)`` of the candidate design columns and ``y`` as a noisy node scales them
    (:func:`mipflow.algorithms.dp_release.bounded_columns`), or None when a numerical one has no
    declared range (no node can then release noisy sums)."""
    from mipflow.algorithms.linear_regression import dp_columns

    group, centre, half = [], [], []
    for name, kind in dp_columns(request, model):
        if kind == "numerical":
            var = model.variable(name)
            if var.min_value is None or var.max_value is None:
                return None
            lo, hi = float(var.min_value), float(var.max_value)
            group.append("")
            centre.append((lo + hi) / 2.0)
            half.append((hi - lo) / 2.0 if hi > lo else 1.0)
        else:
            group.append(kind)
            centre.append(0.0)
            half.append(1.0)
    return tuple(group), np.array(centre), np.array(half)


def is_noisy(aggregates: Sequence[Mapping]) -> bool:
    """Does any aggregate carry noisy sums with noise in them?"""
    return any(a.get("noisy_sums", {}).get("noise", {}).get("laplace_nodes", 0)
               or a.get("noisy_sums", {}).get("noise", {}).get("gaussian_nodes", 0) for a in aggregates)


def pooled_sums(aggregates: Sequence[Mapping], centre: np.ndarray, half: np.ndarray) -> dict:
    """The nodes' scaled sums added up (an exact node's from its moments, without noise)."""
    from mipflow.algorithms.pearson_correlation import sums_of_moments

    parts = [a["noisy_sums"] if "noisy_sums" in a else sums_of_moments(a["moments"], centre, half)
             for a in aggregates]
    return {"n": math.fsum(float(p["n"]) for p in parts), "s1": np.sum([p["s1"] for p in parts], axis=0),
            "s2": np.sum([p["s2"] for p in parts], axis=0),
            "noise": {k: sum(p["noise"][k] for p in parts) for k in parts[0]["noise"]}}


def coefficient_gradients(n: float, s1: np.ndarray, group: Sequence[str], idx: Sequence[int], half: np.ndarray,
                          mean: np.ndarray, beta: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """The gradient of ``(intercept, slopes)`` (variable units) in every released entry, shape ``(E, p + 1)``.

    Entries in :func:`~mipflow.algorithms.dp_release.released_pairs` order (``(0, 0)`` is ``n``,
    ``(0, j)`` the sum of column ``j - 1`` and, for an indicator, its square too, ``(a, b)`` a sum of
    products).  With ``C = S2 - S1 S1^T / n`` (scaled), ``M = H C H`` and ``v`` equal to ``-beta`` on
    the slopes' columns, 1 on ``y`` and 0 elsewhere: ``d beta = inverse (dM v)[idx]`` and
    ``d intercept = d mean . v - mean[idx] . d beta``.
    """
    k = len(s1)
    m = s1 / n
    v = np.zeros(k)
    v[list(idx)] = -beta
    v[-1] = 1.0
    u = half * v
    mu = float(m @ u)
    pairs = released_pairs(group)
    dcu = np.zeros((len(pairs), k))
    dmean = np.zeros((len(pairs), k))
    for e, (a, b) in enumerate(pairs):
        if a == 0 and b == 0:
            dcu[e] = m * mu
            dmean[e] = -half * m / n
        elif a == 0:
            c = b - 1
            dcu[e] = -m * u[c]
            dcu[e, c] -= mu
            if group[c]:  # an indicator's square is its sum
                dcu[e, c] += u[c]
            dmean[e, c] = half[c] / n
        else:
            ca, cb = a - 1, b - 1
            dcu[e, ca] += u[cb]
            if ca != cb:
                dcu[e, cb] += u[ca]
    sel = list(idx)
    dbeta = (dcu[:, sel] * half[sel]) @ inverse.T
    dintercept = dmean @ v - dbeta @ mean[sel]
    return np.column_stack([dintercept, dbeta])


def _terms(weights: np.ndarray, noise: Mapping) -> tuple[list[float], list[float]]:
    """Laplace and Gaussian sds of one coefficient's noise: one draw per entry and noisy node (nodes of one
    mechanism taken as equal, as ``pearson_correlation``), the smallest Laplace weights folded into one Gaussian."""
    w = np.abs(weights)
    lap: list[float] = []
    gau: list[float] = []
    nodes, var = int(noise["laplace_nodes"]), float(noise["laplace_var"])
    if nodes and var > 0:
        order = np.argsort(w)[::-1]
        kept, folded = w[order[:FOLD_AFTER]], w[order[FOLD_AFTER:]]
        lap = [float(x) * math.sqrt(var / nodes) for x in kept for _ in range(nodes)]
        gau.append(math.sqrt(float(folded @ folded) * var))
    if int(noise["gaussian_nodes"]) and float(noise["gaussian_var"]) > 0:
        gau.append(math.sqrt(float(w @ w) * float(noise["gaussian_var"])))
    return lap, gau


def noise_inference(coef: np.ndarray, sampling: np.ndarray, gradients: np.ndarray, noise: Mapping,
                    sampling_quantile: float, confidence: float, level: float = INTERVAL_LEVEL) -> dict:
    """Per coefficient: the noise's sd and interval, the total standard error, and the confidence interval
    and p-value of the sampling error plus the noise.

    ``sampling_quantile`` is the t quantile of the sampling interval at ``confidence``: the sampling error
    enters as a normal of sd ``sampling * sampling_quantile / z``, so that without noise the interval is the
    t interval.
    """
    from scipy.special import ndtri

    z = float(ndtri(0.5 + confidence / 2.0))
    variance = float(noise["laplace_var"]) + float(noise["gaussian_var"])
    out: dict[str, list] = {k: [] for k in ("coef_noise_sd", "coef_noise_low", "coef_noise_high", "std_err",
                                            "lower_ci", "upper_ci", "pvalues", "noise_dominates")}
    for i, value in enumerate(coef):
        w = gradients[:, i]
        sd = math.sqrt(float(w @ w) * variance)
        lap, gau = _terms(w, noise)
        reach = halfwidth(lap, gau, level)
        scaled = float(sampling[i]) * sampling_quantile / z
        ci = halfwidth(lap, gau + [scaled], confidence)
        out["coef_noise_sd"].append(sd)
        out["coef_noise_low"].append(value - reach)
        out["coef_noise_high"].append(value + reach)
        out["std_err"].append(math.hypot(float(sampling[i]), sd))
        out["lower_ci"].append(value - ci)
        out["upper_ci"].append(value + ci)
        out["pvalues"].append(max(1.0 - abs_cdf(float(value), lap, gau + [scaled]), 0.0))
        out["noise_dominates"].append(bool(sd > float(sampling[i])))
    return out


def noisy_regression(aggregates: Sequence[Mapping], request: AnalysisRequest, model: DataModel,
                     confidence: float) -> dict:
    """The linear regression result from pooled noisy sums, each coefficient with the noise's error."""
    from scipy import special

    from mipflow.algorithms.linear_regression import DP_NOTE, solve_centred

    scales = column_scales(request, model)
    if scales is None:
        raise RequestError("a regression on noisy sums needs a declared range of every numerical variable")
    group, centre, half = scales
    pooled = pooled_sums(aggregates, centre, half)
    n, s1, s2, noise = pooled["n"], np.asarray(pooled["s1"], float), np.asarray(pooled["s2"], float), pooled["noise"]
    counts = sum_level_counts([a["level_counts"] for a in aggregates])
    candidates = design_columns(request.x, model, intercept=False)
    columns = select_design_columns(request.x, model, counts)
    slopes = [c for c in columns if c != INTERCEPT]
    idx = [candidates.index(c) for c in slopes]
    p, rows = len(idx), int(round(n))
    df_resid = rows - p - 1
    if df_resid <= 0:
        raise RequestError(f"linear regression with {p + 1} coefficients needs more than {p + 1} rows, and the "
                           "noisy row count is not more")
    mean = centre + half * s1 / n
    m2 = (s2 - np.outer(s1, s1) / n) * np.outer(half, half)
    cyy = float(m2[-1, -1])
    # the noise can outweigh y's whole variance at a small cohort: the coefficients (which need only the x
    # co-moments and cxy) are still released, every term flagged noise-dominated, and the fit's summaries that
    # divide by y's variance (R^2, F) are NaN with a note, never a refusal of an honest request
    y_dominated = not cyy > 0.0
    cxy = m2[idx, -1]
    if p:
        beta, inverse, projected = solve_centred(m2[np.ix_(idx, idx)], cxy, slopes, on_noise="positive_definite_part")
    else:
        beta, inverse, projected = np.zeros(0), np.zeros((0, 0)), False
    xbar = mean[idx]
    coef = np.concatenate([[float(mean[-1] - xbar @ beta)], beta])
    ssr = max(cyy - float(cxy @ beta), 0.0)
    sigma2 = ssr / df_resid
    sampling = np.sqrt(np.concatenate([[sigma2 * (1.0 / n + float(xbar @ inverse @ xbar))],
                                       sigma2 * np.diagonal(inverse)]))
    q = float(special.stdtrit(df_resid, 1.0 - (1.0 - confidence) / 2.0))
    gradients = coefficient_gradients(n, s1, group, idx, half, mean, beta, inverse)
    err = noise_inference(coef, sampling, gradients, noise, q, confidence)
    dominated = [bool(flag or projected or ssr <= 0.0 or y_dominated) for flag in err.pop("noise_dominates")]
    std_err = np.asarray(err["std_err"])
    r_squared = math.nan if y_dominated else 1.0 - ssr / cyy
    f_stat = (math.nan if y_dominated else ((cyy - ssr) / p) / sigma2 if p and sigma2 > 0
              else (math.inf if p else math.nan))
    result = {
        "dependent_var": request.y[0], "n_obs": rows, "df_resid": float(df_resid), "df_model": float(p),
        "rse": math.sqrt(sigma2), "r_squared": r_squared,
        "r_squared_adjusted": 1.0 - (1.0 - r_squared) * (rows - 1) / df_resid,
        "f_stat": f_stat, "f_pvalue": float(special.fdtrc(p, df_resid, f_stat)) if p and not y_dominated else math.nan,
        "indep_vars": columns, "coefficients": coef, "std_err": std_err, "t_stats": coef / std_err,
        **err, "std_err_sampling": sampling, "noise_dominates": dominated,
        "approximate": True,
        "note": ("coefficients from noisy sufficient statistics; standard errors, intervals and p-values "
                 "include the noise (first order)"),
        "noise": {"approximate": True, "interval_level": INTERVAL_LEVEL, "confidence_level": confidence,
                  "std_err_accounts_for_noise": True, "confidence_intervals_account_for_noise": True,
                  "p_values_account_for_noise": True, "not_accounted": list(NOT_ACCOUNTED),
                  "noisy_nodes": int(noise["laplace_nodes"] + noise["gaussian_nodes"]),
                  # n_obs is the pooled noisy count (rounded): the sd of its noise, as every released entry's
                  "n_obs_noise_sd": math.sqrt(float(noise["laplace_var"]) + float(noise["gaussian_var"])),
                  "projected": bool(projected), "note": DP_NOTE},
    }
    if projected:
        from mipflow.algorithms.linear_regression import projected_note

        result["noise_note"] = projected_note()
    if y_dominated:
        result["noise"]["y_variance_dominated"] = True
        result["noise_note"] = " ".join(filter(None, [result.get("noise_note"), (
            f"the noise outweighs the variance of {request.y[0]} itself (its noisy variance is not positive): R^2 "
            "and F are not given; more rows, a larger epsilon or fewer covariates help")]))
    return result
