"""A node's differential-privacy budget: a persistent, per-researcher ledger.

Every noisy release a node makes for a researcher costs privacy; the ledger
(``HOME/privacy_ledger.jsonl``, one JSON line per charged step, mode 0600,
flushed and fsynced before the noisy answer leaves) adds the costs up and
refuses (:class:`~mipflow.exceptions.DisclosureError`, control ``dp_budget``)
a step that would take the researcher's total over the node's budget
(``dp_budget_epsilon`` / ``dp_budget_delta``).  The ledger is read again at
start, so a restart forgets nothing.

Composition (see ``docs/adr/0015-differential-privacy.md``):

* only Laplace (pure epsilon-DP) releases: **basic sequential composition**,
  ``epsilon = sum(epsilon_i)``, ``delta = 0``;
* any Gaussian release: **zero-concentrated DP** (Bun & Steinke 2016).
  Gaussian costs are recorded as ``rho``, a pure release as
  ``rho = epsilon**2 / 2`` (OpenDP's ``make_pureDP_to_zCDP``); the rhos add
  up and the total is turned into ``epsilon`` at the budget's ``delta`` with
  OpenDP's ``make_zCDP_to_approxDP``.

OpenDP's own odometers and privacy filters are in-memory queryables: they
would forget everything on restart, so the node keeps this ledger and uses
OpenDP for the per-step costs and the conversions.
"""
from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from mipflow.exceptions import ConfigError, DisclosureError

LEDGER_FILE = "privacy_ledger.jsonl"
#: Relative slack when comparing a total with the budget (OpenDP rounds costs up by an ulp or so).
BUDGET_SLACK = 1e-9
MECHANISMS = ("laplace", "gaussian")


@dataclass(frozen=True)
class PrivacyCost:
    """What one noisy release costs.

    Attributes
    ----------
    mechanism : str
        ``"laplace"`` (pure DP) or ``"gaussian"`` (zCDP).
    epsilon : float
        Pure epsilon (Laplace), or the epsilon of this release alone at ``delta`` (Gaussian).
    delta : float
        0 for Laplace; the delta ``epsilon`` is stated at (Gaussian).
    rho : float or None
        zCDP cost (Gaussian only).
    """

    mechanism: str
    epsilon: float
    delta: float = 0.0
    rho: float | None = None

    def as_rho(self) -> float:
        """The zCDP cost: ``rho`` itself, or ``epsilon**2 / 2`` for a pure release."""
        return float(self.rho) if self.rho is not None else pure_to_rho(self.epsilon)


@dataclass(frozen=True)
class Spent:
    """A researcher's total privacy loss at a node."""

    epsilon: float
    delta: float
    accountant: str  # "basic" or "zCDP"
    releases: int


def _opendp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def pure_to_rho(epsilon: float) -> float:
    """zCDP cost of an ``epsilon``-DP release (OpenDP ``make_pureDP_to_zCDP``)."""
    if epsilon <= 0:
        return 0.0
    dp = _opendp()
    laplace = dp.m.make_laplace(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float),
                                scale=1.0 / epsilon)
    return float(dp.c.make_pureDP_to_zCDP(laplace).map(1.0))


def rho_to_epsilon(rho: float, delta: float) -> float:
    """Smallest ``epsilon`` with ``rho``-zCDP => ``(epsilon, delta)``-DP (OpenDP ``make_zCDP_to_approxDP``)."""
    if rho <= 0:
        return 0.0
    if not 0 < delta < 1:
        raise ConfigError("a zCDP total needs 0 < delta < 1 to be stated as (epsilon, delta)")
    dp = _opendp()
    gaussian = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float),
                                  scale=1.0 / math.sqrt(2.0 * rho))
    return float(dp.c.make_zCDP_to_approxDP(gaussian).map(1.0).epsilon(delta))


def rho_for_epsilon(epsilon: float, delta: float) -> float:
    """Largest ``rho`` whose ``(epsilon, delta)`` conversion stays within ``epsilon`` (OpenDP binary search)."""
    dp = _opendp()
    return float(dp.binary_search(lambda rho: rho_to_epsilon(rho, delta) <= epsilon, bounds=(1e-12, 100.0)))


def compose(costs: Iterable[PrivacyCost], delta_budget: float) -> Spent:
    """Total privacy loss of ``costs`` (see the module docstring for the accountant)."""
    costs = list(costs)
    if all(c.mechanism == "laplace" for c in costs):
        return Spent(epsilon=math.fsum(c.epsilon for c in costs), delta=0.0, accountant="basic",
                     releases=len(costs))
    rho = math.fsum(c.as_rho() for c in costs)
    return Spent(epsilon=rho_to_epsilon(rho, delta_budget), delta=delta_budget, accountant="zCDP",
                 releases=len(costs))


class PrivacyLedger:
    """Per-researcher privacy costs charged at one node, kept in ``HOME/privacy_ledger.jsonl``."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / LEDGER_FILE
        self._lock = threading.Lock()
        self._costs: dict[str, list[PrivacyCost]] = {}
        if self.path.exists():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                    cost = PrivacyCost(mechanism=doc["mechanism"], epsilon=float(doc["epsilon"]),
                                       delta=float(doc.get("delta", 0.0)),
                                       rho=None if doc.get("rho") is None else float(doc["rho"]))
                except (ValueError, KeyError, TypeError):
                    # an unreadable ledger must not reset anyone's budget: refuse to start
                    raise ConfigError(f"{self.path} line {number} is not a ledger entry") from None
                self._costs.setdefault(str(doc.get("researcher", "")), []).append(cost)

    def costs(self, researcher: str) -> list[PrivacyCost]:
        with self._lock:
            return list(self._costs.get(researcher, []))

    def spent(self, researcher: str, delta_budget: float) -> Spent:
        """What ``researcher`` has spent at this node."""
        return compose(self.costs(researcher), delta_budget)

    def charge(self, researcher: str, cost: PrivacyCost, *, epsilon_budget: float, delta_budget: float,
               details: dict[str, Any] | None = None) -> Spent:
        """Record ``cost`` for ``researcher`` if the total stays within the budget.

        The entry is on disk (fsynced) before this returns, so a noisy answer
        is never released without being charged.

        Raises
        ------
        DisclosureError
            Control ``dp_budget``, when the total would exceed ``epsilon_budget``
            (or ``delta_budget``); nothing is recorded then.
        """
        with self._lock:
            before = self._costs.get(researcher, [])
            after = compose([*before, cost], delta_budget)
            over = (after.epsilon > epsilon_budget * (1 + BUDGET_SLACK) or after.delta > delta_budget
                    or (cost.delta > 0 and delta_budget <= 0))
            if over:
                spent = compose(before, delta_budget)
                raise DisclosureError(
                    f"researcher {researcher!r} has spent epsilon {spent.epsilon:.4g} of the privacy budget "
                    f"(epsilon {epsilon_budget:g}, delta {delta_budget:g}) at this node; this step would cost "
                    f"epsilon {cost.epsilon:.4g} more", control="dp_budget")
            entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "researcher": researcher,
                     **asdict(cost), **(details or {})}
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._costs.setdefault(researcher, []).append(cost)
            return after
