"""A node's differential-privacy budget: a persistent ledger per researcher and per project.

Every noisy release a node makes for a researcher costs privacy; the ledger
(``HOME/privacy_ledger.jsonl``, one JSON line per charged step, mode 0600,
flushed and fsynced before the noisy answer leaves) adds the costs up and
refuses (:class:`~mipflow.exceptions.DisclosureError`, control ``dp_budget``)
a step that would take the researcher's total over the node's budget
(``dp_budget_epsilon`` / ``dp_budget_delta``) or the project's total, all of
its researcher ids together, over the project's budget
(``dp_project_budget_epsilon`` / ``dp_project_budget_delta``; ADR 0025): a
central site may claim any researcher id of a granted project, so new ids do
not get a new budget.  The ledger is read again at start, so a restart forgets
nothing.  A line written before projects were charged has no ``project`` and
counts for its researcher only.

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


def _over(after: Spent, cost: PrivacyCost, epsilon_budget: float, delta_budget: float) -> bool:
    """Whether a total ``after`` (with ``cost`` in it) exceeds a budget."""
    return (after.epsilon > epsilon_budget * (1 + BUDGET_SLACK) or after.delta > delta_budget
            or (cost.delta > 0 and delta_budget <= 0))


class PrivacyLedger:
    """Privacy costs charged at one node per researcher and per project, kept in
    ``HOME/privacy_ledger.jsonl``."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / LEDGER_FILE
        self._lock = threading.Lock()
        self._costs: dict[str, list[PrivacyCost]] = {}
        self._project_costs: dict[str, list[PrivacyCost]] = {}
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
                if doc.get("project") is not None:  # lines from before projects were charged have none
                    self._project_costs.setdefault(str(doc["project"]), []).append(cost)

    def costs(self, researcher: str) -> list[PrivacyCost]:
        """The costs charged to ``researcher``."""
        with self._lock:
            return list(self._costs.get(researcher, []))

    def project_costs(self, project: str) -> list[PrivacyCost]:
        """The costs charged to ``project`` (all its researchers)."""
        with self._lock:
            return list(self._project_costs.get(project, []))

    def spent(self, researcher: str, delta_budget: float) -> Spent:
        """What ``researcher`` has spent at this node."""
        return compose(self.costs(researcher), delta_budget)

    def project_spent(self, project: str, delta_budget: float) -> Spent:
        """What all researchers of ``project`` together have spent at this node."""
        return compose(self.project_costs(project), delta_budget)

    def charge(self, researcher: str, cost: PrivacyCost, *, epsilon_budget: float, delta_budget: float,
               project: str | None = None, project_epsilon_budget: float | None = None,
               project_delta_budget: float | None = None, details: dict[str, Any] | None = None) -> Spent:
        """Record ``cost`` for ``researcher`` (and ``project``) if both totals stay within their budgets.

        The entry is on disk (fsynced) before this returns, so a noisy answer
        is never released without being charged.

        Parameters
        ----------
        researcher : str
            Who the step is for.
        cost : PrivacyCost
            What the step costs.
        epsilon_budget, delta_budget : float
            The researcher's budget (``dp_budget_epsilon``, ``dp_budget_delta``).
        project : str, optional
            The project the step is for; ``None`` charges the researcher only.
        project_epsilon_budget, project_delta_budget : float, optional
            The project's budget (``dp_project_budget_*``); by default the researcher's.
        details : dict, optional
            Written with the entry (algorithm, analysis).

        Returns
        -------
        Spent
            The researcher's total after this step.

        Raises
        ------
        DisclosureError
            Control ``dp_budget``, when a total would exceed its budget; the
            message names the budget(s). Nothing is recorded then.
        """
        if project_epsilon_budget is None:
            project_epsilon_budget = epsilon_budget
        if project_delta_budget is None:
            project_delta_budget = delta_budget
        with self._lock:
            before = self._costs.get(researcher, [])
            after = compose([*before, cost], delta_budget)
            refusals = []
            if _over(after, cost, epsilon_budget, delta_budget):
                spent = compose(before, delta_budget)
                refusals.append(
                    f"researcher {researcher!r} has spent epsilon {spent.epsilon:.4g} of the privacy budget "
                    f"(epsilon {epsilon_budget:g}, delta {delta_budget:g}, dp_budget_epsilon) at this node")
            if project is not None:
                project_before = self._project_costs.get(project, [])
                if _over(compose([*project_before, cost], project_delta_budget), cost, project_epsilon_budget,
                         project_delta_budget):
                    spent = compose(project_before, project_delta_budget)
                    refusals.append(
                        f"project {project!r} has spent epsilon {spent.epsilon:.4g} of the privacy budget "
                        f"(epsilon {project_epsilon_budget:g}, delta {project_delta_budget:g}, "
                        f"dp_project_budget_epsilon) at this node, all its researchers together")
            if refusals:
                raise DisclosureError(
                    "; ".join(refusals) + f"; this step would cost epsilon {cost.epsilon:.4g} more, and the "
                    "budget does not renew (only the node admin can raise it)", control="dp_budget")
            entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "researcher": researcher,
                     **({} if project is None else {"project": project}), **asdict(cost), **(details or {})}
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._costs.setdefault(researcher, []).append(cost)
            if project is not None:
                self._project_costs.setdefault(project, []).append(cost)
            return after
