"""The noisy row count that decides an explore step's thresholds (ADR 0032, "the decision count").

Explore mode takes ``min_row_count``, ``nfilter_subset`` and ``nfilter_glm`` on a noisy row count: a
refusal computed on the exact count would be an oracle, one computed on a noisy count is
post-processing of a charged release.  Until ADR 0032's amendment (2026-12, "a decision count of its
own") that count was a by-product of each algorithm's release: Kaplan-Meier's sum of every noisy
event and censoring cell (on a weekly grid over the declared ten years, 1046 cells of sd 1.41 each:
an sd of about 46 on the sum, so a node of 60 patients fell under 10 about once in eight), linear
regression's ``n`` among sums of sensitivity up to ``G (G - 1) / 2 + 1 + a``, descriptive
statistics' largest of per-variable counts (an epsilon split over every block), histograms' sum of
the positive cells (biased up).  Decisions were random for nodes that clearly held enough rows.

Now every explore step draws one more keyed noisy count, of the step's rows (what standard mode
compares, ``len(work.data)``; sensitivity 1 under add/remove one row), in its own block
(:data:`BLOCK`), and decides on it alone.  Its noise scale is set from the settings (never the rows)
so that a node holding ``CLEAR_MULTIPLE`` times the threshold or more is refused with probability at
most :data:`FALSE_REFUSAL` (:func:`decision_split`); its cost is **carved out of** the step's
``explore_epsilon`` (Laplace: epsilon adds; Gaussian: zCDP rho adds), so a step still costs
``explore_epsilon`` in all, charged at admission as before, and the release gets the rest.  The share
is capped at :data:`MAX_SHARE` of the step; under the cap the stated rate is what the capped scale
gives (:func:`false_refusal_rate`, stated in the label).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# scipy.special's ndtr and ndtri are what scipy.stats.norm's cdf and isf compute (imported where used:
# scipy.stats costs a node process about half a second at start, and most steps never decide a count)

#: The noise block of the decision count (its uniforms are independent of every release block's).
BLOCK = "row_count"
#: A node "clearly" holding enough rows: this many times the threshold.
CLEAR_MULTIPLE = 3
#: The largest probability that a node holding ``CLEAR_MULTIPLE`` times the threshold is refused.
FALSE_REFUSAL = 1e-3
#: The decision count never takes more than this share of a step's budget (epsilon, or rho).
MAX_SHARE = 0.5


@dataclass(frozen=True)
class DecisionSplit:
    """A step's budget split between its decision count and its release (settings only).

    Attributes
    ----------
    mechanism : {"laplace", "gaussian"}
    threshold : int
        The row threshold the count decides (``max(min_row_count, nfilter_subset)``).
    count_epsilon, release_epsilon : float
        Laplace: the epsilon of each (they add up to the step's).  Gaussian: each part's own
        ``(epsilon, delta)`` conversion (they do not add; their rho do).
    count_rho, release_rho : float or None
        Gaussian: the zCDP rho of each (they add up to the step's); None for Laplace.
    count_scale : float
        Laplace ``b`` or Gaussian ``sigma`` of the count's noise.
    """

    mechanism: str
    threshold: int
    count_epsilon: float
    release_epsilon: float
    count_rho: float | None
    release_rho: float | None
    count_scale: float

    @property
    def count_sd(self) -> float:
        """The sd of the count's (continuous) noise."""
        return self.count_scale * math.sqrt(2.0) if self.mechanism == "laplace" else self.count_scale

    def false_refusal(self) -> float:
        """The probability that a node of ``CLEAR_MULTIPLE * threshold`` rows is refused."""
        return false_refusal_rate(self.mechanism, self.count_scale, CLEAR_MULTIPLE * self.threshold, self.threshold)

    def label(self) -> dict[str, Any]:
        """What the reply's privacy label says about the decision (settings only, no data)."""
        return {"block": BLOCK, "rule": "answered when the noisy row count is at least the threshold",
                "threshold": self.threshold, "epsilon": self.count_epsilon, "rho": self.count_rho,
                "sd": self.count_sd, "release_epsilon": self.release_epsilon,
                "false_refusal": {"rows": CLEAR_MULTIPLE * self.threshold, "at_most": self.false_refusal()}}


def decision_threshold(settings: Any) -> int:
    """The row threshold the decision count is scaled for: the larger of ``min_row_count`` and
    ``nfilter_subset`` (``nfilter_glm``'s depends on the request and is decided on the same count)."""
    return max(int(settings.min_row_count), int(settings.nfilter_subset), 1)


def false_refusal_rate(mechanism: str, scale: float, rows: int, threshold: int) -> float:
    """Probability that ``rint(rows + noise) < threshold`` (refused), noise Laplace(``scale``) or
    N(0, ``scale``**2): the noise falls below ``threshold - 0.5 - rows``."""
    cut = threshold - 0.5 - rows
    if mechanism == "laplace":
        return 0.5 * math.exp(cut / scale) if cut < 0 else 1.0 - 0.5 * math.exp(-cut / scale)
    from scipy.special import ndtr

    return float(ndtr(cut / scale))


def decision_split(mechanism: str, epsilon: float, delta: float, threshold: int) -> DecisionSplit:
    """Split one explore step's budget (``epsilon``; Gaussian: its rho at ``delta``) between the
    decision count and the release.

    The count's scale is the largest with ``false_refusal_rate(scale, CLEAR_MULTIPLE * threshold,
    threshold) <= FALSE_REFUSAL``: the noise must stay above ``-(m (CLEAR_MULTIPLE - 1) + 1/2)``:
    Laplace ``b = margin / ln(1 / (2 p))``, Gaussian ``sigma = margin / z(1 - p)``; its cost
    (``1 / b``; ``1 / (2 sigma**2)``) at most :data:`MAX_SHARE` of the step's (a larger scale then).
    """
    from mipflow.node.controls.dp_noise import gaussian_rho
    from mipflow.node.controls.privacy_budget import rho_to_epsilon
    from scipy.special import ndtri

    margin = (CLEAR_MULTIPLE - 1) * threshold + 0.5
    if mechanism == "laplace":
        count = min(math.log(1.0 / (2.0 * FALSE_REFUSAL)) / margin, MAX_SHARE * epsilon)
        return DecisionSplit(mechanism, threshold, count, epsilon - count, None, None, 1.0 / count)
    rho = gaussian_rho(epsilon, delta)
    sigma = margin / float(-ndtri(FALSE_REFUSAL))  # the normal's upper quantile (stats.norm.isf)
    count_rho = min(1.0 / (2.0 * sigma * sigma), MAX_SHARE * rho)
    release_rho = rho - count_rho
    return DecisionSplit(mechanism, threshold, rho_to_epsilon(count_rho, delta), rho_to_epsilon(release_rho, delta),
                         count_rho, release_rho, 1.0 / math.sqrt(2.0 * count_rho))


def noisy_row_count(noise: Any, rows: int) -> int:
    """The decision count: ``rows`` with the keyed noise of :data:`BLOCK` (sensitivity 1), rounded,
    never negative (post-processing)."""
    return max(int(noise.add([int(rows)], 1, block=BLOCK, integer=True)[0]), 0)


def refusal_note(split: DecisionSplit) -> str:
    """What an explore refusal on the decision count adds to the control's message: how it was decided
    (settings only, the same at every node; no digit, so no number in a refusal can be read as a count:
    the rate and the noise's sd are in the label of every answered step, ``decision``)."""
    multiple = _WORDS.get(CLEAR_MULTIPLE, "several")
    how_often = ("at most once in a thousand" if split.false_refusal() <= 1e-3 * (1.0 + 1e-9)
                 else "at the rate the privacy label of an answered step states (decision)")
    return (f"explore mode: decided on a noisy row count of its own, so a cohort near the threshold is sometimes "
            f"answered and sometimes refused; one of {multiple} times the threshold or more is refused {how_often}")


_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}

