"""Differential privacy at a node: noisy aggregates, opt-in per node.

A node whose admin sets ``dp_enabled`` adds noise from OpenDP's Laplace or
Gaussian measurement (``dp_mechanism``) to what a supported algorithm
releases, after the disclosure controls accepted the step and before the
reply (hook in :mod:`mipflow.nodeapi`).  Each step costs the node's per-query
``dp_epsilon`` (Gaussian: stated at ``dp_budget_delta``), charged to the
researcher in the node's persistent ledger (:mod:`mipflow.privacy_budget`)
before the answer leaves; a step the budget cannot pay for is refused
(control ``dp_budget``).

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
measurements that ran.  Supported: ``descriptive_stats`` and
``multiple_histograms`` (variables with declared bounds, or nominal).  Other
algorithms are refused on a DP node unless the admin lists them in
``dp_exempt_algorithms`` (they then run exactly, and the result says so).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mipflow.exceptions import DisclosureError
from mipflow.privacy_budget import MECHANISMS, PrivacyCost, PrivacyLedger, rho_for_epsilon, rho_to_epsilon

#: The neighbouring relation and unit every guarantee here is stated for.
NEIGHBOURING = "add or remove one row"


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

    Notes
    -----
    A block is one released quantity or vector (a count, a clamped sum, a
    histogram) with a known sensitivity.  ``part`` names rows that do not
    overlap within a block (a dataset, a level): one row changes only one
    part, so a block costs the largest cost of its parts, and the step costs
    the sum over blocks (an upper bound of the loss of any one row).
    """

    def __init__(self, mechanism: str, epsilon: float, delta: float, blocks: int) -> None:
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
        self.rho = gaussian_rho(self.epsilon, self.delta) if mechanism == "gaussian" else None
        self._costs: dict[str, dict[str, float]] = defaultdict(dict)
        import opendp.prelude as dp

        dp.enable_features("contrib")
        self._dp = dp

    def scale(self, sensitivity: float) -> float:
        """Noise scale for a block of this ``sensitivity`` (Laplace b, or Gaussian sigma)."""
        if self.mechanism == "laplace":
            return sensitivity * self.blocks / self.epsilon
        return sensitivity / math.sqrt(2.0 * self.rho / self.blocks)

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


# --------------------------------------------------------------------------- releases per algorithm


def _declared_bounds(model: Any, code: str, algorithm: str) -> tuple[float, float]:
    var = model.variable(code)
    if var.min_value is None or var.max_value is None:
        raise DisclosureError(f"variable {code!r} has no declared minValue and maxValue: a node with differential "
                              f"privacy cannot bound one row's contribution to {algorithm}", control="dp_unsupported")
    return float(var.min_value), float(var.max_value)


def _moments_from_sums(n: int, s1: float, s2: float, lo: float, hi: float) -> dict[str, Any]:
    """Moments (n, mean, m2) from noisy sums of values centred on the middle of ``[lo, hi]``.

    Post-processing only: the mean is kept inside the declared range and
    ``m2`` between 0 and its largest possible value ``n * h**2``.
    """
    if n <= 0:
        return {"n": 0, "mean": [0.0], "m2": [0.0]}
    centre, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    shift = float(np.clip(s1 / n, -half, half))
    m2 = float(np.clip(s2 - n * shift * shift, 0.0, n * half * half))
    return {"n": int(n), "mean": [centre + shift], "m2": [m2]}


def _descriptive_stats_blocks(algo: Any, request: Any, model: Any) -> int:
    described = algo.described(request)
    numeric = sum(1 for c in described if not model.variable(c).is_categorical)
    return 2 + 5 * numeric + 2 * (len(described) - numeric)


def _descriptive_stats(algo: Any, data: Any, request: Any, model: Any, noise: QueryNoise
                       ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Per dataset: noisy row counts, category counts and clamped centred sums.

    Released in the algorithm's own shape (moments rebuilt from the noisy
    sums), so its global step runs unchanged.
    """
    from mipflow.algorithms.base import category_codes, numeric_values
    from mipflow.algorithms.descriptive_stats import DATASET

    described = algo.described(request)
    bounds = {c: _declared_bounds(model, c, algo.name) for c in described if not model.variable(c).is_categorical}
    wanted = set(request.datasets)
    out: dict[str, Any] = {}
    for dataset, frame in data.groupby(DATASET, sort=True):
        part = str(dataset)
        if part not in wanted:
            continue
        complete = frame.dropna(subset=described, how="any")
        record: dict[str, Any] = {}
        for kind, rows in (("variable_based", frame), ("model_based", complete)):
            n_total = noise.count(len(rows), block=f"{kind}/n_total", part=part)
            items: dict[str, Any] = {}
            for code in described:
                var = model.variable(code)
                if var.is_categorical:
                    counts = category_codes(rows[code], var).value_counts()
                    exact = [int(counts.get(c, 0)) for c in var.enumeration_codes]
                    noisy = np.maximum(noise.add(exact, 1, block=f"{kind}/{code}/counts", part=part, integer=True), 0)
                    items[code] = {"n_total": max(n_total, int(noisy.sum())), "counts": noisy.tolist()}
                    continue
                lo, hi = bounds[code]
                values = numeric_values(rows[code])
                clamped = np.clip(values[~np.isnan(values)], lo, hi) - (lo + hi) / 2.0
                half = (hi - lo) / 2.0
                # model-based rows are complete: every variable's count is the row count
                n = n_total if kind == "model_based" else noise.count(len(clamped), block=f"{kind}/{code}/n",
                                                                       part=part)
                s1 = float(noise.add([math.fsum(clamped)], half, block=f"{kind}/{code}/sum", part=part)[0])
                s2 = float(noise.add([math.fsum(clamped * clamped)], half * half, block=f"{kind}/{code}/sumsq",
                                     part=part)[0])
                items[code] = {"n_total": max(n_total, n), "moments": _moments_from_sums(n, s1, s2, lo, hi)}
            record[kind] = items
        record["group_n"] = [r["moments"]["n"] for kind in ("variable_based", "model_based")
                             for r in record[kind].values() if "moments" in r]
        out[part] = record
    return {"datasets": out}, {c: [lo, hi] for c, (lo, hi) in bounds.items()}


def _histogram_blocks(algo: Any, request: Any, model: Any) -> int:
    return 1 + len(request.x)


def _multiple_histograms(algo: Any, data: Any, request: Any, model: Any, noise: QueryNoise
                         ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Noisy bin counts over the declared range (values clamped into it) or the enumerations."""
    from mipflow.algorithms.base import category_codes, numeric_values

    yvar = model.variable(request.y[0])
    clamped: dict[str, list[float]] = {}
    if yvar.is_categorical:
        y_codes = category_codes(data[yvar.code], yvar).to_numpy()

        def count(mask: np.ndarray) -> list[int]:
            sel = y_codes[mask]
            return [int(np.count_nonzero(sel == c)) for c in yvar.enumeration_codes]
    else:
        lo, hi = _declared_bounds(model, yvar.code, algo.name)
        clamped[yvar.code] = [lo, hi]
        values = np.clip(numeric_values(data[yvar.code]), lo, hi)
        bins = algo.params(request, model)["bins"]

        def count(mask: np.ndarray) -> list[int]:
            return np.histogram(values[mask], bins=bins, range=(lo, hi))[0].astype(int).tolist()

    records = []
    for grouping_var, level in algo._groups(request, model):
        if grouping_var is None:
            mask, block, part = np.ones(len(data), dtype=bool), "overall", ""
        else:
            codes = category_codes(data[grouping_var], model.variable(grouping_var)).to_numpy()
            mask, block, part = codes == level, f"by/{grouping_var}", str(level)
        noisy = np.maximum(noise.add(count(mask), 1, block=block, part=part, integer=True), 0)
        records.append({"grouping_var": grouping_var, "grouping_enum": level, "counts": noisy.tolist()})
    return {"histograms": records}, clamped


def _descriptive_stats_rows(aggregates: dict[str, Any]) -> int:
    return sum(max((item["n_total"] for item in record["variable_based"].values()), default=0)
               for record in aggregates["datasets"].values())


def _histogram_rows(aggregates: dict[str, Any]) -> int:
    return int(sum(aggregates["histograms"][0]["counts"]))


@dataclass(frozen=True)
class Mechanism:
    """How one algorithm's step is released under DP."""

    blocks: Callable[[Any, Any, Any], int]
    release: Callable[[Any, Any, Any, Any, QueryNoise], tuple[dict[str, Any], dict[str, list[float]]]]
    #: the number of rows as the noisy aggregates tell it (post-processing, no extra cost)
    rows: Callable[[dict[str, Any]], int]


#: Algorithms a DP node can release with noise (one round each).
DP_MECHANISMS: dict[str, Mechanism] = {
    "descriptive_stats": Mechanism(_descriptive_stats_blocks, _descriptive_stats, _descriptive_stats_rows),
    "multiple_histograms": Mechanism(_histogram_blocks, _multiple_histograms, _histogram_rows),
}


# --------------------------------------------------------------------------- the node side


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
              researcher: str, details: dict[str, Any] | None = None) -> NoisyRelease | None:
        """Noisy aggregates for a DP node, ``None`` where the node releases exactly.

        Raises
        ------
        DisclosureError
            ``dp_unsupported`` for an algorithm (or variable) with no DP mechanism here
            and not exempted by the node admin; ``dp_budget`` when the researcher's
            budget cannot pay for the step; ``dp_config`` for unusable settings.
        """
        if not settings.dp_enabled or algorithm.name in _names(settings.dp_exempt_algorithms):
            return None
        mechanism = DP_MECHANISMS.get(algorithm.name)
        if mechanism is None or round_no != 0:
            raise DisclosureError(
                f"this node adds differential-privacy noise and has no DP mechanism for {algorithm.name!r} "
                f"(supported: {', '.join(sorted(DP_MECHANISMS))}); its admin may exempt algorithms with "
                f"dp_exempt_algorithms", control="dp_unsupported")
        noise = QueryNoise(settings.dp_mechanism, settings.dp_epsilon, settings.dp_budget_delta,
                           mechanism.blocks(algorithm, request, model))
        aggregates, clamped = mechanism.release(algorithm, data, request, model, noise)
        cost = noise.cost()
        # charged (on disk) before the noisy answer can leave; refused here if over budget
        spent = self.ledger.charge(researcher, cost, epsilon_budget=settings.dp_budget_epsilon,
                                   delta_budget=settings.dp_budget_delta,
                                   details={"algorithm": algorithm.name, **(details or {})})
        label = {"mechanism": cost.mechanism, "library": "opendp", "epsilon": cost.epsilon, "delta": cost.delta,
                 "rho": cost.rho, "neighbouring": NEIGHBOURING, "clamped": clamped,
                 "spent": {"epsilon": spent.epsilon, "delta": spent.delta, "accountant": spent.accountant},
                 "budget": {"epsilon": settings.dp_budget_epsilon, "delta": settings.dp_budget_delta}}
        return NoisyRelease(aggregates, label, mechanism.rows(aggregates))


# --------------------------------------------------------------------------- the central side


def privacy_block(labels: dict[str, list[dict[str, Any]]], contributed: Sequence[str]) -> dict[str, Any]:
    """The ``privacy`` block of a central result: which nodes added noise, how, at what cost.

    Parameters
    ----------
    labels : dict
        Node name -> the ``privacy`` labels of its step replies (one per round that added noise).
    contributed : sequence of str
        The nodes whose aggregates made the result.

    Returns
    -------
    dict
        Empty when no contributing node added noise (the result is exact).
    """
    noisy = {name: labels[name] for name in contributed if labels.get(name)}
    if not noisy:
        return {}
    nodes = {}
    for name, items in noisy.items():
        first = items[0]
        nodes[name] = {"mechanism": first["mechanism"], "epsilon": math.fsum(i["epsilon"] for i in items),
                       "delta": max(i["delta"] for i in items), "rho": first.get("rho"),
                       "clamped": first.get("clamped", {}), "neighbouring": first.get("neighbouring", NEIGHBOURING),
                       "releases": len(items)}
    return {"approximate": True, "method": "differential privacy, noise added at the nodes",
            "noisy_nodes": nodes, "exact_nodes": sorted(set(contributed) - set(noisy)),
            "note": "statistics are approximate: each listed node added random noise calibrated to its epsilon "
                    "(and delta); numerical values were clamped to the data model's declared ranges"}
