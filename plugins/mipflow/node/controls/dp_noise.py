"""The noise of a differentially private step: OpenDP's Laplace or Gaussian measurements (ADR 0015).

:class:`QueryNoise` splits one step's budget (``dp_epsilon``; Gaussian: zCDP
``rho`` at ``dp_budget_delta``) evenly over the blocks the step releases, noises
each block with an OpenDP measurement calibrated to its sensitivity (integers
get discrete noise, so counts stay integers) and totals what OpenDP's privacy
maps say the measurements that ran cost.  It is the
:class:`mipflow.algorithms.dp_release.Noise` an algorithm's noisy release draws
from; the node's policy (:mod:`mipflow.node.controls.dp`) creates one per step.
"""
from __future__ import annotations

import math
from collections import defaultdict
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.privacy_budget import MECHANISMS, PrivacyCost, rho_for_epsilon, rho_to_epsilon


@lru_cache(maxsize=64)
def gaussian_rho(epsilon: float, delta: float) -> float:
    """zCDP rho of a Gaussian step that is ``(epsilon, delta)``-DP on its own."""
    return rho_for_epsilon(epsilon, delta)


class QueryNoise:
    """Noise for one step: its budget split evenly over ``blocks`` released quantities.

    Parameters
    ----------
    mechanism : {"laplace", "gaussian"}
    epsilon : float
        The step's epsilon (Gaussian: at ``delta``).
    delta : float
        The delta a Gaussian step's epsilon is stated at (ignored for Laplace).
    blocks : int
        How many quantities (blocks) one row may change at once.
    rho : float, optional
        Gaussian: the step's zCDP rho itself (a part of a step whose rho is split, e.g. explore
        mode's decision count); ``epsilon`` is then only what the label states.

    Notes
    -----
    A block is one released quantity or vector (a count, a clamped sum, a
    histogram) with a known sensitivity.  ``part`` names rows that do not
    overlap within a block (a dataset, a level): one row changes only one
    part, so a block costs the largest cost of its parts, and the step costs
    the sum over blocks (an upper bound of the loss of any one row).
    """

    #: integers get OpenDP's discrete Laplace / discrete Gaussian noise (what a release states beside a
    #: count, so the central side knows its error's exact distribution: ADR 0057)
    integer_noise = "discrete"

    def __init__(self, mechanism: str, epsilon: float, delta: float, blocks: int, *,
                 rho: float | None = None) -> None:
        if mechanism not in MECHANISMS:
            raise DisclosureError(f"unknown dp_mechanism {mechanism!r} (laplace or gaussian)", control="dp_config")
        if epsilon <= 0:
            raise DisclosureError("dp_epsilon must be positive", control="dp_config")
        if mechanism == "gaussian" and not 0 < delta < 1:
            raise DisclosureError("the Gaussian mechanism needs 0 < dp_budget_delta < 1", control="dp_config")
        self.mechanism = mechanism
        self.epsilon = float(epsilon)
        self.delta = float(delta) if mechanism == "gaussian" else 0.0
        self.blocks = max(1, int(blocks))
        self.rho = None if mechanism != "gaussian" else float(rho) if rho is not None else \
            gaussian_rho(self.epsilon, self.delta)
        self._costs: dict[str, dict[str, float]] = defaultdict(dict)
        import opendp.prelude as dp

        dp.enable_features("contrib")
        self._dp = dp

    def scale(self, sensitivity: float) -> float:
        """Noise scale for a block of this ``sensitivity`` (Laplace b, or Gaussian sigma)."""
        if self.mechanism == "laplace":
            return sensitivity * self.blocks / self.epsilon
        return sensitivity / math.sqrt(2.0 * self.rho / self.blocks)

    def sd(self, sensitivity: float) -> float:
        """The standard deviation of the noise on one value of a block of this ``sensitivity``
        (Laplace ``b sqrt(2)``, Gaussian ``sigma``; of the continuous noise, before rounding)."""
        scale = self.scale(sensitivity)
        return scale * math.sqrt(2.0) if self.mechanism == "laplace" else scale

    def measurement(self, sensitivity: float, integer: bool) -> Any:
        """The OpenDP measurement that noises a vector of this block."""
        dp = self._dp
        atom = dp.atom_domain(T=int) if integer else dp.atom_domain(T=float, nan=False)
        domain = dp.vector_domain(atom)
        if self.mechanism == "laplace":
            metric = dp.l1_distance(T=int) if integer else dp.l1_distance(T=float)
            return dp.m.make_laplace(domain, metric, scale=self.scale(sensitivity))
        return dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=self.scale(sensitivity))

    def add(self, values: Sequence[float], sensitivity: float, *, block: str, part: str = "",
            integer: bool = False) -> np.ndarray:
        """Noisy ``values`` (one block, one part); integers stay integers (discrete noise)."""
        if sensitivity <= 0:  # nothing one row could change: nothing to hide
            return np.asarray(values, dtype=int if integer else float)
        meas = self.measurement(sensitivity, integer)
        if integer:
            noisy = meas([int(v) for v in values])
            d_in: float = int(sensitivity) if self.mechanism == "laplace" else float(sensitivity)
        else:
            noisy = meas([float(v) for v in values])
            d_in = float(sensitivity)
        cost = float(meas.map(d_in))
        parts = self._costs[block]
        parts[part] = max(parts.get(part, 0.0), cost)
        return np.asarray(noisy, dtype=int if integer else float)

    def count(self, value: int, *, block: str, part: str = "") -> int:
        """A noisy count (sensitivity 1), never negative."""
        return max(int(self.add([value], 1, block=block, part=part, integer=True)[0]), 0)

    def cost(self) -> PrivacyCost:
        """What the noise added so far costs, by OpenDP's privacy maps."""
        total = math.fsum(max(parts.values()) for parts in self._costs.values() if parts)
        if self.mechanism == "laplace":
            return PrivacyCost("laplace", epsilon=total, delta=0.0)
        return PrivacyCost("gaussian", epsilon=rho_to_epsilon(total, self.delta), delta=self.delta, rho=total)
