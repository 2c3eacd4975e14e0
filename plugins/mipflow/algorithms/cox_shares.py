"""A Cox node's share of the pooled log partial likelihood, score and information (ADR 0046).

Pure functions of the pooled per-bin sums a node opened (:mod:`mipflow.algorithms.sealed`) and its own
events: summed over the nodes, the shares are the pooled ``l``, ``U`` and ``I`` with Breslow's or Efron's
handling of ties.  Used by :mod:`mipflow.algorithms.cox_regression`'s score rounds.
"""
from __future__ import annotations

import numpy as np

from mipflow.exceptions import RequestError


def node_share(pooled: dict[str, np.ndarray], own_events: np.ndarray, event_x: np.ndarray, beta: np.ndarray,
                efron: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """A node's share of the pooled log partial likelihood, score and information (ADR 0046).

    Parameters
    ----------
    pooled : dict of numpy.ndarray
        Every participant's sealed sums added: ``events`` (bins,), ``s0`` (bins,), ``s1`` (bins * p),
        ``s2`` (bins * p(p+1)/2), and with Efron's ties ``e0``, ``e1``, ``e2`` likewise.
    own_events : numpy.ndarray, shape (bins,)
        The node's events ``d_ij`` per event bin.
    event_x : numpy.ndarray, shape (p,)
        Sum of the node's covariates over its events.
    beta : numpy.ndarray, shape (p,)
    efron : bool
        Efron's handling of ties, else Breslow's.

    Returns
    -------
    loglik : float
    score : numpy.ndarray, shape (p,)
    information : numpy.ndarray, shape (p, p)

    Notes
    -----
    Breslow: ``l_i = event_x'b - sum_j d_ij log S0_j``, ``U_i = event_x - sum_j d_ij S1_j / S0_j``,
    ``I_i = sum_j d_ij (S2_j / S0_j - m_j m_j')`` with ``m_j = S1_j / S0_j``; Efron: the share
    ``d_ij / d_j`` of each bin's pooled terms (:func:`efron_share`).  Summed over the nodes, these are the
    pooled ``l``, ``U`` and ``I``.
    """
    p = len(beta)
    try:
        events, s0 = pooled["events"], pooled["s0"]
        s1, s2 = pooled["s1"].reshape(-1, p), full_s2(pooled["s2"], p)
        tied = (pooled["e0"], pooled["e1"].reshape(-1, p), full_s2(pooled["e2"], p)) if efron else None
    except KeyError as exc:
        raise RequestError(f"the pooled Cox sums hold no {exc.args[0]!r}: a node does not support "
                           f"ties = {'efron' if efron else 'breslow'!r}") from None
    bins = len(own_events)
    if any(len(a) != bins for a in (events, s0, s1, s2, *(tied or ()))):
        raise RequestError("the pooled Cox sums do not match the event bins")
    if np.any(own_events > events) or np.any(events <= 0) or np.any(s0 <= 0):
        raise RequestError("the pooled Cox sums are inconsistent with this node's events")
    if efron:
        return efron_share(events, event_x, beta, (s0, s1, s2), tied, share=own_events / events)
    mean = s1 / s0[:, None]
    loglik = float(event_x @ beta - own_events @ np.log(s0))
    score = event_x - own_events @ mean
    information = np.einsum("j,jab->ab", own_events, s2 / s0[:, None, None] - mean[:, :, None] * mean[:, None, :])
    return loglik, score, information


def efron_share(events: np.ndarray, event_x: np.ndarray, beta: np.ndarray,
           risk: tuple[np.ndarray, np.ndarray, np.ndarray], tied: tuple[np.ndarray, np.ndarray, np.ndarray],
           share: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """A node's part of Efron's log partial likelihood, score and information from pooled per-bin
    sums: each bin's terms weighted by the node's ``share`` of the bin's events (ADR 0046).

    Parameters
    ----------
    events : numpy.ndarray, shape (bins,)
        Pooled events ``d_j`` per event bin.
    event_x : numpy.ndarray, shape (p,)
        Sum of the node's covariates over its events.
    beta : numpy.ndarray, shape (p,)
    risk : tuple of numpy.ndarray
        ``S0`` (bins,), ``S1`` (bins, p), ``S2`` (bins, p, p) over the rows at risk.
    tied : tuple of numpy.ndarray
        ``E0``, ``E1``, ``E2`` over the rows with an event in the bin, same shapes.
    share : numpy.ndarray, shape (bins,)
        The node's share ``d_ij / d_j`` of each bin's events.

    Returns
    -------
    loglik : float
    score : numpy.ndarray, shape (p,)
    information : numpy.ndarray, shape (p, p)

    Notes
    -----
    With ``f_r = r / d_j`` and ``phi_r = S0 - f_r E0`` a bin contributes
    ``sum_r log phi_r`` to the likelihood, ``sum_r (S1 - f_r E1) / phi_r`` to the score and
    ``sum_r (S2 - f_r E2) / phi_r - (S1 - f_r E1)(S1 - f_r E1)' / phi_r^2`` to the
    information.  Expanding the products, each bin needs only the sums over ``r`` of
    ``1/phi``, ``f/phi``, ``1/phi^2``, ``f/phi^2`` and ``f^2/phi^2``, computed over one entry
    per event (``r`` runs over the bin's events).
    """
    (s0, s1, s2), (e0, e1, e2) = risk, tied
    counts = np.rint(events).astype(np.int64)
    if np.any(counts < 1) or np.any(np.abs(events - counts) > 0):
        raise RequestError("the Cox aggregates' event counts are not positive whole numbers")
    bins = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    f = (np.arange(len(bins)) - starts[bins]) / counts[bins]
    phi = s0[bins] - f * e0[bins]
    if np.any(phi <= 0):
        raise RequestError("the Cox risk-set sums are inconsistent (a non-positive Efron denominator)")
    n_bins = len(counts)

    def per_bin(values: np.ndarray) -> np.ndarray:
        return np.bincount(bins, weights=values, minlength=n_bins)

    weight = np.asarray(share, dtype=float)
    inv, f_inv = weight * per_bin(1.0 / phi), weight * per_bin(f / phi)
    inv2, f_inv2, ff_inv2 = (weight * per_bin(1.0 / phi ** 2), weight * per_bin(f / phi ** 2),
                             weight * per_bin(f * f / phi ** 2))
    loglik = float(event_x @ beta - weight @ per_bin(np.log(phi)))
    score = event_x - inv @ s1 + f_inv @ e1
    cross = np.einsum("j,ja,jb->ab", f_inv2, s1, e1)
    information = (np.einsum("j,jab->ab", inv, s2) - np.einsum("j,jab->ab", f_inv, e2)
                   - np.einsum("j,ja,jb->ab", inv2, s1, s1) + cross + cross.T
                   - np.einsum("j,ja,jb->ab", ff_inv2, e1, e1))
    return loglik, score, information


def full_s2(upper: np.ndarray, p: int) -> np.ndarray:
    """``S2`` per bin as full symmetric matrices, shape (bins, p, p), from the upper triangles
    a node sends (shape (bins, p(p+1)/2)); full matrices (older nodes) pass through."""
    if upper.ndim == 3 or (upper.ndim == 2 and upper.shape[1] == p * p and p * p != p * (p + 1) // 2):
        return upper.reshape(-1, p, p)
    upper_a, upper_b = np.triu_indices(p)
    upper = upper.reshape(-1, len(upper_a))
    full = np.empty((len(upper), p, p))
    full[:, upper_a, upper_b] = upper
    full[:, upper_b, upper_a] = upper
    return full
