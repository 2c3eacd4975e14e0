"""The error that noise puts on a statistic computed from noisy released pieces (ADR 0057).

A noisy release (explore mode, a node with differential privacy) adds independent
noise of a known distribution to a few pieces (a count, a sum, a sum of squares),
each stating its sd (settings only, never data).  A statistic of the pieces (a mean
``S1 / N``, a variance ``(S2 - S1**2 / N) / (N - 1)``) carries an error that is, to
first order, a weighted sum of those independent noises.  This module propagates it:

- :class:`NoiseTerm`: one noise draw (mechanism and sd), tagged with the piece it sits on;
- :func:`halfwidth`: the half-width of the central interval of a weighted sum of
  independent Laplace and Gaussian noises at a stated level: exact for that sum (its
  density by the inverse FFT of its characteristic function), not a normal
  approximation (a Laplace noise of sd ``s`` has only 93.7 % of its mass within
  ``1.96 s``);
- :func:`propagate`: sd and interval of a statistic from its gradient in the pieces.

Post-processing only: it reads the released values and the stated sds, never a row,
and costs no budget.  The linearisation is first order: the interval is calibrated
when the noise is small against the pieces' size (the noisy row count against its
noise), which ``tests/mipflow/algorithms/test_noise_error.py`` checks by simulation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

import numpy as np

from mipflow.exceptions import RequestError

#: Level of every interval a perturbed statistic carries.
INTERVAL_LEVEL = 0.95
#: Grid of the numerical density: points and half-width in sds of the sum.
_GRID_POINTS = 4096
_GRID_SDS = 16.0


@dataclass(frozen=True)
class NoiseTerm:
    """One independent noise draw on a released piece.

    Attributes
    ----------
    piece : str
        What it sits on (``"n"``, ``"s1"``, ``"s2"``, a cell).
    mechanism : str
        ``"laplace"`` or ``"gaussian"``.
    sd : float
        Its standard deviation (Laplace ``b sqrt(2)``, Gaussian ``sigma``).
    """

    piece: str
    mechanism: str
    sd: float

    def to_list(self) -> list:
        return [self.piece, self.mechanism, float(self.sd)]

    @classmethod
    def from_list(cls, value: Sequence) -> "NoiseTerm":
        return cls(str(value[0]), str(value[1]), float(value[2]))


def halfwidth(laplace_sd: Iterable[float], gaussian_sd: Iterable[float], level: float = INTERVAL_LEVEL) -> float:
    """Half-width ``h`` with ``P(|X| <= h) = level`` for ``X`` a sum of independent noises.

    Parameters
    ----------
    laplace_sd, gaussian_sd : iterable of float
        The sds of the Laplace and of the Gaussian terms (already weighted: ``|a_k| sd_k``).
    level : float
        Coverage, in (0, 1).
    """
    lap = np.array([abs(float(s)) for s in laplace_sd if s], dtype=float)
    gau = np.array([abs(float(s)) for s in gaussian_sd if s], dtype=float)
    total = math.sqrt(float(np.sum(lap ** 2) + np.sum(gau ** 2)))
    if total == 0.0:
        return 0.0
    from scipy.special import ndtri

    if lap.size == 0:
        return float(ndtri(0.5 + level / 2.0)) * total
    if lap.size == 1 and gau.size == 0:  # one Laplace: its quantile in closed form
        return float(lap[0] / math.sqrt(2.0) * math.log(1.0 / (1.0 - level)))
    # the density of the sum on a grid of +-16 sds, from its characteristic function
    step = 2.0 * _GRID_SDS * total / _GRID_POINTS
    freq = 2.0 * math.pi * np.fft.fftfreq(_GRID_POINTS, d=step)
    b = lap / math.sqrt(2.0)
    cf = np.prod(1.0 / (1.0 + np.outer(b ** 2, freq ** 2)), axis=0) * np.exp(-0.5 * float(np.sum(gau ** 2)) * freq ** 2)
    density = np.real(np.fft.ifft(cf)) / step  # at 0, step, 2 step, ... (and wrapped negatives)
    half = density[: _GRID_POINTS // 2]
    # P(|X| <= k step) by the trapezoid rule on the symmetric density
    mass = 2.0 * step * (np.cumsum(half) - 0.5 * half[0] - 0.5 * half)
    k = int(np.searchsorted(mass, level))
    if k == 0:
        return 0.0
    lo, hi = mass[k - 1], mass[k]
    return float(step * (k - 1 + (level - lo) / (hi - lo)))


def abs_cdf(x: float, laplace_sd: Iterable[float], gaussian_sd: Iterable[float]) -> float:
    """``P(|X| <= x)`` for ``X`` a sum of independent Laplace and Gaussian noises (a p-value's tail:
    ``1 - abs_cdf``).  Closed forms for a Gaussian sum and one Laplace, else the same numerical density
    as :func:`halfwidth`."""
    lap = np.array([abs(float(s)) for s in laplace_sd if s], dtype=float)
    gau = np.array([abs(float(s)) for s in gaussian_sd if s], dtype=float)
    total = math.sqrt(float(np.sum(lap ** 2) + np.sum(gau ** 2)))
    x = abs(float(x))
    if total == 0.0:
        return 1.0
    from scipy.special import ndtr

    if lap.size == 0:
        return float(2.0 * ndtr(x / total) - 1.0)
    if lap.size == 1 and gau.size == 0:
        return float(1.0 - math.exp(-x * math.sqrt(2.0) / lap[0]))
    if x >= _GRID_SDS * total:
        return 1.0
    step = 2.0 * _GRID_SDS * total / _GRID_POINTS
    freq = 2.0 * math.pi * np.fft.fftfreq(_GRID_POINTS, d=step)
    b = lap / math.sqrt(2.0)
    cf = np.prod(1.0 / (1.0 + np.outer(b ** 2, freq ** 2)), axis=0) * np.exp(-0.5 * float(np.sum(gau ** 2)) * freq ** 2)
    half = np.real(np.fft.ifft(cf))[: _GRID_POINTS // 2] / step
    mass = 2.0 * step * (np.cumsum(half) - 0.5 * half[0] - 0.5 * half)
    return float(min(max(np.interp(x / step, np.arange(len(mass)), mass), 0.0), 1.0))


@dataclass(frozen=True)
class Propagated:
    """First-order noise error of one statistic.

    Attributes
    ----------
    sd : float
        The sd of the noise on the statistic (first order).
    halfwidth : float
        Half-width of its :data:`INTERVAL_LEVEL` interval (the noise's own distribution).
    """

    sd: float
    halfwidth: float


def propagate(gradient: Mapping[str, float], terms: Sequence[NoiseTerm],
              level: float = INTERVAL_LEVEL) -> Propagated:
    """Sd and interval half-width of a statistic whose gradient in the pieces is ``gradient``.

    Every term is an independent draw on its piece; the statistic's error is, to first
    order, ``sum_k gradient[piece_k] * e_k``.
    """
    lap, gau = [], []
    for term in terms:
        weighted = abs(float(gradient.get(term.piece, 0.0))) * term.sd
        (lap if term.mechanism == "laplace" else gau).append(weighted)
    sd = math.sqrt(math.fsum(s * s for s in lap + gau))
    return Propagated(sd, halfwidth(lap, gau, level))


# --------------------------------------------------------------------------- one variable's mean and std


def pool_sums(records: Sequence[Mapping]) -> dict:
    """The pooled ``noisy_sums`` of records of one variable, exact ones (``moments`` only) included.

    Each record is a node's or a pooled ``{"n_total", "moments", "noisy_sums"?}``; ``noisy_sums``
    is ``{"n", "s1", "s2", "centre", "terms"}`` (count, sum and sum of squares of the values
    centred on ``centre``, signed, and the noise terms on them).  An exact record adds its sums
    (from its moments) and no term.
    """
    centres = {float(r["noisy_sums"]["centre"]) for r in records if "noisy_sums" in r}
    if len(centres) != 1:
        raise RequestError("noisy sums of one variable centred on different values: the nodes hold different "
                           "declared ranges of it")
    centre = centres.pop()
    n, s1, s2, terms = 0.0, [], [], []
    for r in records:
        if "noisy_sums" in r:
            sums = r["noisy_sums"]
            n += float(sums["n"])
            s1.append(float(sums["s1"]))
            s2.append(float(sums["s2"]))
            terms.extend(sums["terms"])
        else:
            mom = r["moments"]
            k, shift = float(mom["n"]), float(mom["mean"][0]) - centre
            n += k
            s1.append(k * shift)
            s2.append(float(mom["m2"][0]) + k * shift * shift)
    return {"n": n, "s1": math.fsum(s1), "s2": math.fsum(s2), "centre": centre, "terms": terms}


def noisy_mean_and_std(sums: Mapping, lo: float, hi: float, level: float = INTERVAL_LEVEL) -> dict:
    """Mean and std of one variable from its (pooled) noisy sums, each with its noise error.

    The values were clamped into ``[lo, hi]`` before summing, so the mean lies in that range
    and the variance between 0 and ``h**2 n / (n - 1)`` (``h`` the half-range): the point
    estimates and the intervals are cut to those ranges (post-processing).  The sample
    variance ``(S2 - S1**2 / N) / (N - 1)`` is computed from the signed pieces, never clamped
    at 0 first: when it is not positive the std is ``None``, not 0.0, and whenever the
    interval of the variance reaches 0 the result says ``noise_dominates``: its std is then
    no better than the interval ``std_interval``.

    Returns
    -------
    dict
        ``mean``, ``mean_noise_sd``, ``mean_interval``, ``std``, ``std_interval``,
        ``variance_noise_sd``, ``noise_dominates``, ``interval_level``, ``approximate``.
    """
    terms = [NoiseTerm.from_list(t) for t in sums["terms"]]
    n, s1, s2 = float(sums["n"]), float(sums["s1"]), float(sums["s2"])
    centre, half = float(sums["centre"]), (hi - lo) / 2.0
    out: dict = {"approximate": True, "interval_level": level}
    if n < 2:  # a noisy count under 2: nothing to say about the spread, and little about the mean
        out.update(mean=None, mean_noise_sd=None, mean_interval=[lo, hi], std=None, std_interval=[0.0, half],
                   variance_noise_sd=None, noise_dominates=True)
        return out
    mean = s1 / n
    err = propagate({"s1": 1.0 / n, "n": -s1 / (n * n)}, terms, level)
    out.update(mean=centre + min(max(mean, -half), half), mean_noise_sd=err.sd,
               mean_interval=[centre + max(mean - err.halfwidth, -half), centre + min(mean + err.halfwidth, half)])
    q = s2 - s1 * s1 / n
    var = q / (n - 1)
    gradient = {"s2": 1.0 / (n - 1), "s1": -2.0 * s1 / (n * (n - 1)),
                "n": s1 * s1 / (n * n * (n - 1)) - q / ((n - 1) ** 2)}
    err = propagate(gradient, terms, level)
    top = half * half * n / (n - 1)
    low, high = min(max(var - err.halfwidth, 0.0), top), min(max(var + err.halfwidth, 0.0), top)
    out.update(std=math.sqrt(min(var, top)) if var > 0 else None, std_interval=[math.sqrt(low), math.sqrt(high)],
               variance_noise_sd=err.sd, noise_dominates=bool(low <= 0.0))
    return out


def noisy_count_error(terms: Sequence[Sequence], level: float = INTERVAL_LEVEL) -> dict:
    """The error of one pooled noisy count cell: ``counts_noise_sd`` and ``counts_interval_halfwidth``.

    ``terms`` are ``[mechanism, sd]``, one independent draw per node record summed into the cell.
    A cell is shown clamped to >= 0 (and a cell whose noisy value is not positive is left out of
    ``counts``); its interval is the count +- the half-width, cut at 0.
    """
    lap = [float(sd) for mech, sd in terms if mech == "laplace"]
    gau = [float(sd) for mech, sd in terms if mech != "laplace"]
    return {"counts_noise_sd": math.sqrt(math.fsum(s * s for s in lap + gau)),
            "counts_interval_halfwidth": halfwidth(lap, gau, level), "approximate": True, "interval_level": level}


# --------------------------------------------------------------------------- integer cells (histograms, tables)
#
# A noisy count is an integer: the keyed noise of explore mode is a continuous draw rounded to the
# nearest integer (``"rounded"``), OpenDP's integer measurements of a DP node draw discrete Laplace or
# discrete Gaussian noise (``"discrete"``).  Either way the error of a count is an integer whose
# distribution is known from the settings; a continuous half-width would miss the level by the
# discreteness (a rounded Laplace of scale 1 lies within its continuous 95 % half-width 3.0 97 % of
# the time).  The interval of a pooled cell is the smallest integer half-width whose exact coverage
# (convolution of the nodes' integer noises) reaches the level, and the result states that coverage.

#: How a node's integer noise is drawn (a :class:`mipflow.algorithms.dp_release.Noise` says it in
#: ``integer_noise``): a rounded continuous draw or a discrete distribution.
INTEGER_KINDS = ("rounded", "discrete")


def integer_noise_kind(noise: object) -> str:
    """How ``noise`` draws integers (``"rounded"`` unless it says otherwise)."""
    kind = str(getattr(noise, "integer_noise", "rounded"))
    return kind if kind in INTEGER_KINDS else "rounded"


def _integer_pmf(mechanism: str, sd: float, kind: str) -> np.ndarray:
    """The pmf of one integer noise on ``-K..K`` (``K`` about 24 sds: the tails beyond are < 1e-12)."""
    from scipy.special import ndtr

    reach = int(math.ceil(24.0 * sd)) + 2
    k = np.arange(-reach, reach + 1, dtype=float)
    if kind == "discrete":
        weight = np.exp(-np.abs(k) / (sd / math.sqrt(2.0))) if mechanism == "laplace" else np.exp(-k * k / (2 * sd * sd))
        return weight / weight.sum()
    if mechanism == "laplace":
        b = sd / math.sqrt(2.0)
        cdf = lambda x: np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / b), 1 - 0.5 * np.exp(-np.maximum(x, 0) / b))  # noqa: E731
    else:
        cdf = lambda x: ndtr(x / sd)  # noqa: E731
    pmf = cdf(k + 0.5) - cdf(k - 0.5)
    return pmf / pmf.sum()


@lru_cache(maxsize=256)
def _count_error(terms: tuple[tuple[str, float, str], ...], level: float) -> tuple[float, int, float]:
    pmf = np.ones(1)
    for mechanism, sd, kind in terms:
        if sd > 0:
            pmf = fftconvolve(pmf, _integer_pmf(mechanism, sd, kind))
    pmf = np.clip(pmf, 0.0, None)
    pmf /= pmf.sum()
    centre = (len(pmf) - 1) // 2
    k = np.arange(len(pmf)) - centre
    sd = math.sqrt(float(np.sum(pmf * k * k)))
    folded = pmf[centre:].copy()
    folded[1:] += pmf[:centre][::-1]
    mass = np.cumsum(folded)  # P(|D| <= j)
    j = int(np.searchsorted(mass, level - 1e-12))
    return sd, j, float(min(mass[j], 1.0))


def count_error(terms: Sequence[Sequence], level: float = INTERVAL_LEVEL) -> dict:
    """The error of a pooled noisy count: the sum of the nodes' independent integer noises.

    Parameters
    ----------
    terms : sequence of ``[mechanism, sd, kind]``
        One per noisy node record summed into the cell (``kind`` in :data:`INTEGER_KINDS`).

    Returns
    -------
    dict
        ``sd`` (of the integer noise), ``halfwidth`` (the smallest integer ``j`` with
        ``P(|noise| <= j) >= level``) and ``coverage`` (that probability, exact: at least ``level``).
    """
    key = tuple(sorted((str(t[0]), float(t[1]), str(t[2]) if len(t) > 2 else "rounded") for t in terms))
    sd, j, coverage = _count_error(key, float(level))
    return {"sd": sd, "halfwidth": j, "coverage": coverage}


def fftconvolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if min(len(a), len(b)) < 64:
        return np.convolve(a, b)
    from scipy.signal import fftconvolve as convolve

    return convolve(a, b)


def cell_interval(estimate: float, error: Mapping, unknown: float = 0.0) -> list[float]:
    """``estimate +- (halfwidth + unknown)``, cut at 0 (a count is not negative: post-processing)."""
    reach = float(error["halfwidth"]) + unknown
    return [max(estimate - reach, 0.0), max(estimate + reach, 0.0)]
