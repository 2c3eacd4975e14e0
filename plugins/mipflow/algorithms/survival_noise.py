"""Kaplan-Meier's curves and log-rank test from noisy counts (explore mode, a node with differential
privacy; ADR 0032): the post-processing of :func:`mipflow.algorithms.kaplan_meier._noisy_survival`.

Pure functions of the summed noisy counts and the variance of their noise: each node's cells made
to agree with its decision count (explore mode), at risk made non-increasing, survival from the
signed noisy events, the first-order sd of the noise on the survival, and the log-rank test with the
events' noise in its covariance.

The decision count
------------------
An explore node also carries the noisy row count it decided its thresholds on (``row_count``: the
reply's ``rows`` and its sd, a setting; ADR 0032, "a decision count of its own").  Its cells sum to
the same rows (every complete-case row is one event or one censoring of one group), so the node's
noisy total is known twice: the sum of its ``N`` cells (variance ``N s^2``: on a weekly grid over the
declared ten years, 2 x 523 cells of sd 2.0, an sd of about 65 rows) and the count (sd 4.7).  The best
linear unbiased estimate of the cells under that constraint (generalised least squares) shifts every
cell by the same ``a (R - T)``, ``a = s^2 / (N s^2 + v)``: the node's total becomes the inverse-variance
mean of ``R`` and ``T``, and the at-risk counts near the start are anchored to it instead of a sum of
noise.  The shifted cells' noise has covariance ``s^2 (I - a 1 1^T)``, which :func:`survival_noise_sd`
takes into account (``constraint``).  Post-processing of released values only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: Where an explore node's Kaplan-Meier release carries its decision count (``{"count", "sd"}``).
ROW_COUNT_KEY = "row_count"


def with_decision_count(aggregate: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """A noisy node's counts made to agree with its decision count (see the module docstring).

    Returns the aggregate with every event and censoring count of every group shifted by ``a (R - T)``,
    and ``a s^2`` (the weight of the constraint in the shifted cells' covariance, 0 when nothing was
    shifted).  Unchanged when the node carried no decision count (a DP node, an exact node)."""
    count = aggregate.get(ROW_COUNT_KEY)
    noise = aggregate.get("noise")
    if not isinstance(count, dict) or not isinstance(noise, dict):
        return aggregate, 0.0
    groups = aggregate["groups"]
    cells = sum(len(g["events"]) + len(g["censored"]) for g in groups)
    s2, v = float(noise["sd"]) ** 2, float(count["sd"]) ** 2
    if cells == 0 or s2 == 0.0:
        return aggregate, 0.0
    a = s2 / (cells * s2 + v)
    total = float(sum(sum(g["events"]) + sum(g["censored"]) for g in groups))
    shift = a * (float(count["count"]) - total)
    shifted = [{**g, "events": [float(e) + shift for e in g["events"]],
                "censored": [float(c) + shift for c in g["censored"]]} for g in groups]
    return {**aggregate, "groups": shifted}, a * s2


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
                      variance: np.ndarray, tail: float = 0.0, *, width: np.ndarray | None = None,
                      cells_after: float = 0.0, constraint: float = 0.0) -> np.ndarray:
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
    width, cells_after, constraint
        Cells shifted to agree with decision counts (:func:`with_decision_count`): a node's cells of
        this group per bin (``width``, shape (bins,): the request's points in each bin) and after
        these bins (``cells_after``: events and censorings of the later bins and those folded into
        the last), and the summed ``a s^2`` of the nodes that shifted.  Their noise has covariance
        ``s^2 I - a s^2 1 1^T`` per node, so ``constraint * G_k^2`` comes off the variance of
        ``log S_k``, ``G_k`` the sum of its gradient over one node's cells of the group.

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
    if constraint:
        w = np.ones(len(n)) if width is None else np.asarray(width, dtype=float)
        later = 2.0 * (np.sum(w) - np.cumsum(w)) + cells_after
        gradient_sum = np.cumsum(w * (2.0 * big_a - 1.0 / alive)) + big_a * later
        var_log = np.maximum(var_log - constraint * gradient_sum ** 2, 0.0)
    return survival * np.sqrt(var_log)


def noisy_curve(events: np.ndarray, censored: np.ndarray, variance: np.ndarray, q: float,
                censored_tail: float = 0.0, *, width: np.ndarray | None = None, folded_cells: float = 0.0,
                constraint: float = 0.0) -> dict | None:
    """One group's curve from summed noisy counts on common bins (``variance``: of each count's noise;
    ``censored_tail``: the extra variance of the last bin's censorings, noisy counts of later bins
    folded into them; ``width``, ``folded_cells``, ``constraint``: counts shifted to agree with the
    nodes' decision counts, :func:`survival_noise_sd`).

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
    width = np.ones(len(events)) if width is None else np.asarray(width, dtype=float)
    cells_after = 2.0 * float(width[used[-1] + 1:].sum()) + folded_cells
    noise_sd = survival_noise_sd(survival, events[used], n, variance[used], tail, width=width[used],
                                 cells_after=cells_after, constraint=constraint)
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
