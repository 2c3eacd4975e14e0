"""Differential privacy at a node: whether to add noise, the budget, the label (opt-in per node).

A node whose admin sets ``dp_enabled`` adds noise from OpenDP's Laplace or
Gaussian measurement (``dp_mechanism``; :mod:`mipflow.node.controls.dp_noise`)
to what a supported algorithm releases, after the disclosure controls accepted
the step and before the reply (hook in :mod:`mipflow.node.api.app`).  Each step
costs the node's per-query ``dp_epsilon`` (Gaussian: stated at
``dp_budget_delta``), charged to the researcher and to the project in the node's
persistent ledger (:mod:`mipflow.node.controls.privacy_budget`) before the
answer leaves; a step that either budget cannot pay for is refused (control
``dp_budget``; the project's budget, ``dp_project_budget_epsilon``, holds
whichever researcher ids a central site claims, ADR 0025).

Neighbouring data sets differ by **one row added or removed** (one row of the
feature store: a patient, or a patient-visit where a data model has visits).
Sensitivities come from the data model:

* a count changes by 1; a histogram or a vector of category counts changes in
  one cell by 1 (L1 = L2 = 1);
* a sum of a numerical variable is taken over values clamped to the
  variable's declared ``minValue``..``maxValue`` and centred on the middle
  ``c`` of that range, so one row changes ``sum(x - c)`` by at most ``h``
  (half the range) and ``sum((x - c)**2)`` by at most ``h**2``.  A variable
  without both bounds cannot be released under DP (refused, ``dp_unsupported``).

A step releases several such *blocks*; the per-query budget is split evenly
over them (basic composition for Laplace, additive rho for Gaussian), and
parts that partition the rows (datasets, levels of a grouping variable) compose
in parallel.  The cost charged is what OpenDP's own privacy maps say for the
measurements that ran.  Which algorithms have a noisy release, and what it is,
each algorithm states itself (``Algorithm.dp_release``,
:mod:`mipflow.algorithms.dp_release`): ``descriptive_stats`` and
``multiple_histograms`` (variables with declared bounds, or nominal),
``linear_regression`` and ``pearson_correlation`` through noisy sufficient
statistics (``docs/adr/0021-dp-sufficient-statistics.md``), and
``kaplan_meier`` and ``contingency_table`` through noisy counts
(``docs/adr/0032-explore-mode.md``).  Other
algorithms are refused on a DP node unless the admin lists them in
``dp_exempt_algorithms`` (they then run exactly, and the result says so).
The label's shape is :mod:`mipflow.protocol.privacy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.dp_noise import QueryNoise
from mipflow.node.controls.privacy_budget import PrivacyLedger
from mipflow.protocol.privacy import noise_label


def dp_algorithms() -> list[str]:
    """The algorithms of the catalogue that declare a noisy release, sorted."""
    from mipflow.algorithms import ALGORITHMS

    return sorted(name for name, algorithm in ALGORITHMS.items() if algorithm.dp_release is not None)


@dataclass(frozen=True)
class NoisyRelease:
    """A step's noisy aggregates and the label that travels with them."""

    aggregates: dict[str, Any]
    label: dict[str, Any]
    #: the row count the reply states, read off the noisy aggregates (the exact one stays at the node)
    rows: int


def _names(text: str) -> set[str]:
    return {n.strip() for n in (text or "").split(",") if n.strip()}


class NodePrivacy:
    """A node's DP guard: decides, noises and charges (one per node API process)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._ledger: PrivacyLedger | None = None

    @property
    def ledger(self) -> PrivacyLedger:
        if self._ledger is None:
            self._ledger = PrivacyLedger(self.root)
        return self._ledger

    def apply(self, settings: Any, algorithm: Any, request: Any, model: Any, round_no: int, data: Any,
              researcher: str, details: dict[str, Any] | None = None, *,
              project: str | None = None) -> NoisyRelease | None:
        """Noisy aggregates for a DP node, ``None`` where the node releases exactly.

        ``project`` (the node's step passes it, ``""`` for none) is charged too, against
        ``dp_project_budget_epsilon`` / ``dp_project_budget_delta``; ``None`` charges the
        researcher only.

        Raises
        ------
        DisclosureError
            ``dp_unsupported`` for an algorithm (or variable) with no DP mechanism here
            and not exempted by the node admin; ``dp_budget`` when the researcher's
            or the project's budget cannot pay for the step; ``dp_config`` for unusable settings.
        """
        if not settings.dp_enabled or algorithm.name in _names(settings.dp_exempt_algorithms):
            return None
        mechanism = algorithm.dp_release
        if mechanism is None or round_no != 0:
            raise DisclosureError(
                f"this node adds differential-privacy noise and has no DP mechanism for {algorithm.name!r} "
                f"(supported: {', '.join(dp_algorithms())}); its admin may exempt algorithms with "
                f"dp_exempt_algorithms", control="dp_unsupported")
        noise = QueryNoise(settings.dp_mechanism, settings.dp_epsilon, settings.dp_budget_delta,
                           mechanism.blocks(algorithm, request, model))
        aggregates, clamped = mechanism.release(algorithm, data, request, model, noise)
        cost = noise.cost()
        # charged (on disk) before the noisy answer can leave; refused here if over budget
        spent = self.ledger.charge(researcher, cost, epsilon_budget=settings.dp_budget_epsilon,
                                   delta_budget=settings.dp_budget_delta, project=project,
                                   project_epsilon_budget=settings.dp_project_budget_epsilon,
                                   project_delta_budget=settings.dp_project_budget_delta,
                                   details={"algorithm": algorithm.name, **(details or {})})
        label = noise_label(mechanism=cost.mechanism, epsilon=cost.epsilon, delta=cost.delta, rho=cost.rho,
                            clamped=clamped, spent={"epsilon": spent.epsilon, "delta": spent.delta,
                                                    "accountant": spent.accountant},
                            budget={"epsilon": settings.dp_budget_epsilon, "delta": settings.dp_budget_delta},
                            note=mechanism.note)
        return NoisyRelease(aggregates, label, mechanism.rows(aggregates))
