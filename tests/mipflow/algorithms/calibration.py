"""Binomial tolerances for calibration tests of stated intervals (ADR 0057)."""
from __future__ import annotations

import math

from scipy.special import ndtri

#: A rate observed in ``trials`` Bernoulli(rate) trials is farther than :func:`tolerance` from the rate
#: with probability 1e-4 (normal approximation of the binomial): a two-sided test's false alarm.
FALSE_ALARM = 1e-4


def tolerance(trials: int, rate: float) -> float:
    """Half-width around ``rate`` within which an honest observed rate falls but with probability 1e-4."""
    return float(ndtri(1 - FALSE_ALARM / 2)) * math.sqrt(rate * (1 - rate) / trials)
