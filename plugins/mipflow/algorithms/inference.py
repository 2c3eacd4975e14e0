"""Test statistics shared by the algorithms (t distribution p-values and intervals, the
alternative-hypothesis parameter)."""
from __future__ import annotations

import math

from mipflow.algorithms.contract import ParamSpec

# --------------------------------------------------------------------------- test statistics

ALTERNATIVES = ("two-sided", "less", "greater")


def t_pvalue(t: float, df: float, alternative: str) -> float:
    """p-value of a t statistic (scipy's convention)."""
    from scipy import special

    if alternative == "less":
        return float(special.stdtr(df, t))
    if alternative == "greater":
        return float(special.stdtr(df, -t))
    return float(2.0 * special.stdtr(df, -abs(t)))


def t_interval(estimate: float, se: float, df: float, alternative: str,
               confidence: float) -> tuple[float, float]:
    """Confidence interval of a t-distributed estimate; one-sided for
    ``less`` (lower bound -inf) and ``greater`` (upper bound +inf)."""
    from scipy import special

    if alternative == "less":
        return -math.inf, float(estimate + special.stdtrit(df, confidence) * se)
    if alternative == "greater":
        return float(estimate + special.stdtrit(df, 1.0 - confidence) * se), math.inf
    tail = (1.0 - confidence) / 2.0
    return (float(estimate + special.stdtrit(df, tail) * se),
            float(estimate + special.stdtrit(df, 1.0 - tail) * se))


def alternative_spec(default: str = "two-sided") -> ParamSpec:
    """The `alt_hypothesis` parameter of the t-tests."""
    return ParamSpec(types=("text",), default=default, notblank=True, enums=ALTERNATIVES)
