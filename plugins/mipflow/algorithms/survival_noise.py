"""Kaplan-Meier's curves and log-rank test from noisy counts (explore mode, a node with differential
privacy; ADR 0032): the post-processing of :func:`mipflow.algorithms.kaplan_meier._noisy_survival`.

Pure functions of the summed noisy counts and the variance of their noise: at risk made
non-increasing, survival from the signed noisy events, the first-order sd of the noise on the
survival, and the log-rank test with the events' noise in its covariance.
"""
from __future__ import annotations

import numpy as np


def noisy_at_risk(events: np.ndarray, censored: np.ndarray) -> np.ndarray:
    """At risk at each bin end from noisy counts: the noisy total less the noisy events and censorings
    of the bins before (the counts summed from the end), made non-increasing (least squares,
    pool-adjacent-violators) and >= 0.  Post-processing only."""
    from scipy.optimize import isotonic_regression

    raw = np.cumsum((np.asarray(events, float) + np.asarray(censored, float))[::-1])[::-1]
    if len(raw) == 0:
        return raw
    return np.maximum(isotonic_regression(raw, increasing=False).x, 0.0)


def survival_noise_sd(survival: np.ndarray, events: np.ndarray, at_risk: np.ndarray,
                      variance: np.ndarray, tail: float = 0.0) -> np.ndarray:
    """First-order sd of the noise on the survival, from independent noise of ``variance`` on every
    event and every censoring count of the bins.

    With ``n_j = sum_{i >= j} (d_i + c_i)`` and ``log S_k = sum_{j <= k} log(1 - d_j / n_j)``:
    ``d log S_k / d d_i = A_i - 1 / (n_i - d_i)`` and ``d log S_k / d c_i = A_i`` for ``i <= k``,
    both ``A_k`` for ``i > k``, where ``A_m = sum_{j <= m} d_j / (n_j (n_j - d_j))``.  Evaluated at
    the post-processed values (``n_j - d_j`` at least 1).

    Parameters
    ----------
    survival, events, at_risk, variance : numpy.ndarray, shape (bins,)
    tail : float
        The summed variance of the counts of the bins after these (no one at risk there, but their
        noisy counts enter every at-risk count).

    Returns
    -------
    numpy.ndarray, shape (bins,)
    """
    n = np.maximum(at_risk, 1.0)
    d = np.clip(events, 0.0, n)
    alive = np.maximum(n - d, 1.0)
    big_a = np.cumsum(d / (n * alive))
    before = np.cumsum(variance * ((big_a - 1.0 / alive) ** 2 + big_a ** 2))
    after = 2.0 * (np.sum(variance) - np.cumsum(variance) + tail)  # the bins after k: events and censorings
    var_log = before + big_a ** 2 * after
    return survival * np.sqrt(var_log)


def noisy_curve(events: np.ndarray, censored: np.ndarray, variance: np.ndarray, q: float,
                censored_tail: float = 0.0) -> dict | None:
    """One group's curve from summed noisy counts on common bins (``variance``: of each count's noise;
    ``censored_tail``: the extra variance of the last bin's censorings, noisy counts of later bins
    folded into them).

    Every bin up to the last with someone at risk is kept (a bin whose noisy events are 0 or below
    may hold deaths).  Survival is ``prod (1 - d_j / n_j)`` over the signed noisy events (clamping
    them would bias it), then made non-increasing (least squares) within [0, 1].  None when nobody
    is at risk.
    """
    from scipy.optimize import isotonic_regression

    events = np.asarray(events, dtype=float)
    censored = np.asarray(censored, dtype=float)
    at_risk = noisy_at_risk(events, censored)
    used = np.flatnonzero(at_risk >= 1.0)  # a prefix of the bins: at_risk does not increase
    if len(used) == 0:
        return None
    n = at_risk[used]
    hazard = np.clip(events[used] / n, -1.0, 1.0)
    raw = np.cumprod(1.0 - hazard)
    survival = np.clip(isotonic_regression(raw, increasing=False).x, 0.0, 1.0)
    d = np.clip(np.rint(events[used]), 0.0, np.floor(n))
    c = np.maximum(np.rint(censored[used]), 0.0)
    variance = np.asarray(variance, dtype=float)
    # a censoring count at or after bin k enters log S_k as the counts after it: half of `tail`'s weight
    tail = float(variance[used[-1] + 1:].sum()) + censored_tail / 2.0
    noise_sd = survival_noise_sd(survival, events[used], n, variance[used], tail)
    stderr, lower, upper = loglog_band(survival, d, n, q, noise_sd)
    return {
        "n_obs": int(max(round(float(events.sum() + censored.sum())), 0)),
        "n_events": int(max(round(float(events.sum())), 0)),
        "at_risk": np.rint(n).astype(np.int64),
        "events": d.astype(np.int64),
        "censored": c.astype(np.int64),
        "survival": survival,
        "stderr": stderr,
        "noise_sd": noise_sd,
        "lower_ci": lower,
        "upper_ci": upper,
        "_used": used,
        "_at_risk": at_risk,
    }


def noisy_logrank(events: np.ndarray, at_risk: np.ndarray, variance: np.ndarray) -> dict:
    """Log-rank test from noisy counts, shape (groups, bins): observed minus expected from the signed
    noisy events; its covariance is the hypergeometric one plus that of the events' noise
    (``sum_j var_j (I - s_j 1^T)(I - s_j 1^T)^T``, ``s_j`` the groups' shares at risk).  The noise
    on the at-risk counts is left out (first order, approximate)."""
    from scipy import stats

    at_risk = np.asarray(at_risk, dtype=float)
    total_risk = at_risk.sum(axis=0)
    keep = total_risk > 1
    share = at_risk[:, keep] / total_risk[keep]
    d_signed = events[:, keep]
    n = total_risk[keep]
    d = np.clip(d_signed.sum(axis=0), 0.0, n)
    observed = d_signed.sum(axis=1)
    expected = (share * d_signed.sum(axis=0)).sum(axis=1)
    scale = d * (n - d) / (n - 1.0)
    k = events.shape[0]
    eye = np.eye(k)
    cov = np.einsum("j,gj,ghj->gh", scale, share, eye[:, :, None] - share[None, :, :])
    project = eye[:, :, None] - share[:, None, :]  # (I - s 1^T) per bin: [g, h, j]
    cov += np.einsum("j,gij,hij->gh", np.asarray(variance, float)[keep], project, project)
    diff = (observed - expected)[1:]
    df = k - 1
    try:
        chi2 = float(diff @ np.linalg.solve(cov[1:, 1:], diff))
    except np.linalg.LinAlgError:
        chi2 = float("nan")
    return {"chi2": chi2, "df": df, "p_value": float(stats.chi2.sf(chi2, df)),
            "observed": observed, "expected": expected, "approximate": True}


def loglog_band(survival: np.ndarray, d: np.ndarray, n: np.ndarray, q: float,
                noise_sd: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greenwood's standard error of a Kaplan-Meier curve and its log(-log) confidence band.

    ``d`` and ``n`` are the events and numbers at risk at the curve's time points, ``q`` the normal
    quantile of the band; ``noise_sd`` (explore mode) widens the band by the noise's spread, added in
    quadrature.  Returns ``(stderr, lower, upper)``; the band is 1 where the curve is still 1.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        terms = np.where(n > d, d / (n * (n - d)), np.nan)
        stderr = survival * np.sqrt(np.cumsum(terms))
        total = stderr if np.isscalar(noise_sd) and noise_sd == 0 else np.sqrt(stderr ** 2 + noise_sd ** 2)
        log_s = np.log(survival)
        half = q * total / (survival * np.abs(log_s))
        lower = np.exp(-np.exp(np.log(-log_s) + half))
        upper = np.exp(-np.exp(np.log(-log_s) - half))
    at_one = survival >= 1.0
    lower[at_one] = upper[at_one] = 1.0
    return stderr, lower, upper
