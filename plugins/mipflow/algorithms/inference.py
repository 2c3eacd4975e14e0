"""Test statistics shared by the algorithms (t distribution p-values and intervals, the
alternative-hypothesis parameter)."""
from __future__ import annotations

import math

from mipflow.algorithms.spec import ParamSpec

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


def alternative_spec(description: str) -> ParamSpec:
    """The ``alt_hypothesis`` parameter (t-tests, Fisher's exact test), as Exareme2 declares it."""
    return ParamSpec(types=("text",), default="two-sided", notblank=True, enums=ALTERNATIVES,
                     label="Alternative hypothesis", description=description)


#: The ``alpha`` of the t-tests: a significance level (Exareme2's spec, bounds included).
SIGNIFICANCE_ALPHA = ParamSpec(
    types=("real",), default=0.05, notblank=True, min=0.0, max=1.0, label="Significance level (alpha)",
    description="The significance level: the confidence interval is at level 1 - alpha (0.05: 95 %).")
