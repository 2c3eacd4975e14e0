"""Explore mode at the node: perturbed answers with keyed, consistent noise, charged per release (ADR 0032).

A project the node admin puts in **explore mode** (``mipflow explore enable HOME --project P``,
stored in ``HOME/explore.json`` by :mod:`mipflow.node.controls.modes`) is answered with perturbed aggregates only (ADR 0023, slice 7):

* :func:`check_explore`, a control of the step chain placed right after
  :func:`mipflow.node.controls.study.check_study` and before any row is read, admits a request
  from the request and the data model alone: the algorithm must declare a noisy release
  (``Algorithm.dp_release``), the step must be round 0, every numerical variable must have a
  declared range.  Anything else is refused (control ``explore`` or ``dp_unsupported``) with the
  same bytes at every node.
* The exact-data controls are skipped for an admitted step (``min_row_count`` on the exact
  count, ``nfilter_*``, the differencing ledger, the release controls): every decision is taken
  on the perturbed values instead (:func:`release_explore`), after the step was charged, so a
  refusal is post-processing of a differentially private release and tells nothing beyond it.
* The noise is **keyed** (:class:`KeyedNoise`): its uniforms are HMAC-SHA256 under a key derived
  from the node secret, over the canonical query (algorithm, Exareme2 request without
  ``analysis_id``, researcher or project, the variables' declared metadata and the noise
  parameters), the data model's *version* (:func:`data_version`: every load and deletion changes
  it; since the outside review of ADR 0032 it replaces a key of the selected rows, whose equality
  told whether a cohort's rows changed), the block, the part, the call and the element.  The same
  request on the same version gets byte-identical noise, so repeating it averages nothing out;
  any load or deletion, or any change of the query, gets independent noise.  The keys
  (:func:`noise_key`, :func:`canonical_query`, :func:`data_version`, :func:`release_key`) are in
  :mod:`mipflow.node.controls.explore_keys`.
* Each step is charged its whole declared cost at admission (:func:`check_explore`, before any row
  is read: the charge never depends on the rows) to the researcher and to the project in the node's privacy ledger
  (:class:`mipflow.node.controls.privacy_budget.PrivacyLedger`) with the explore budgets,
  before any decision is taken; a release whose key (:func:`release_key`: the query and the
  version) the project was already charged for is not charged again (its answer is the same bytes).

Nothing here keeps a value or a pseudonym: ``explore.json`` holds project names and dates, the
ledger holds release keys (digests).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.disclosure import hide_small
from mipflow.node.controls.dp_noise import QueryNoise
from mipflow.node.controls.explore_decision import (decision_split, decision_threshold, noisy_row_count,
                                                    refusal_note)
from mipflow.node.controls.explore_keys import canonical_query, noise_key, release_key, version_of
from mipflow.node.controls.modes import modes_path, read_modes

#: Float outputs are rounded to a power-of-two grid this many binary places below the noise scale
#: (post-processing; see :meth:`KeyedNoise.add`).
GRID_BITS = 20


class ExploreRefusal(DisclosureError):
    """A request an explore project cannot make (403, control ``explore``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, control="explore")


# --------------------------------------------------------------------------- the keyed noise


def standard_draws(mechanism: str, uniforms: np.ndarray) -> np.ndarray:
    """Unit-scale noise from uniforms in (0, 1) by the inverse CDF: Laplace(1) or N(0, 1)."""
    from scipy.special import ndtri

    u = np.asarray(uniforms, dtype=float)
    if mechanism == "laplace":  # each tail from its own side, so tiny tails keep their precision
        with np.errstate(divide="ignore"):
            return np.where(u < 0.5, np.log(2.0 * u), -np.log(2.0 * (1.0 - u)))
    return ndtri(u)


def block_unit(block: str, integer: bool) -> str:
    """The unit a block's noise ``sd`` is stated in."""
    if integer:
        return "count"
    if block.startswith("sufficient_statistics"):
        return "sums of products of the columns scaled into [-1, 1] (ADR 0021)"
    if block.endswith("/sumsq"):
        return "sum of squared values centred on the middle of the declared range (squared variable units)"
    if block.endswith("/sum"):
        return "sum of values centred on the middle of the declared range (variable units)"
    return "released value"


class KeyedNoise(QueryNoise):
    """:class:`~mipflow.node.controls.dp_noise.QueryNoise`'s scales and costs, with keyed uniforms.

    Parameters
    ----------
    mechanism, epsilon, delta, blocks, rho
        As :class:`QueryNoise` (the epsilon, or the Gaussian ``rho``, split evenly over ``blocks``).
    key : bytes
        :func:`noise_key` of the node.
    query : bytes
        :func:`canonical_query`.
    version : bytes
        :func:`data_version` of the data model the rows are read from.

    Notes
    -----
    Element ``i`` of call ``c`` of a block ``(block, part)`` has the uniform
    ``(floor(H / 2**11) + 1/2) / 2**53``, ``H`` the first 8 bytes of
    ``HMAC-SHA256(key, sha256(query) | version | [block, part, c, i, scale, integer])``, turned
    into Laplace noise (inverse CDF) or Gaussian noise (``scipy.special.ndtri``) of the block's
    scale.  Integer blocks are rounded to integers; other values to a power-of-two grid
    :data:`GRID_BITS` binary places below the scale, so a release does not carry the low-order bits
    of a floating-point sum (both post-processing).  The guarantee is stated for real-valued noise:
    floating-point Laplace sampling is known not to be exactly DP (Mironov 2012); rounding shrinks
    but does not provably close that gap.
    """

    #: integers are continuous draws rounded to the nearest integer (ADR 0057)
    integer_noise = "rounded"

    def __init__(self, mechanism: str, epsilon: float, delta: float, blocks: int, *, key: bytes, query: bytes,
                 version: bytes, rho: float | None = None) -> None:
        super().__init__(mechanism, epsilon, delta, blocks, rho=rho)
        self._key = bytes(key)
        self._prefix = hashlib.sha256(query).digest() + bytes(version)
        self._calls: dict[tuple[str, str], int] = defaultdict(int)
        self._sd: dict[str, dict[str, Any]] = {}

    def uniforms(self, block: str, part: str, call: int, n: int, scale: float, integer: bool) -> np.ndarray:
        """The ``n`` keyed uniforms in (0, 1) of one call of a block."""
        out = np.empty(n)
        for i in range(n):
            label = json.dumps([block, part, call, i, repr(float(scale)), bool(integer)]).encode("utf-8")
            word = int.from_bytes(hmac.new(self._key, self._prefix + label, hashlib.sha256).digest()[:8], "big")
            out[i] = ((word >> 11) + 0.5) / 2.0 ** 53
        return out

    def add(self, values: Sequence[float], sensitivity: float, *, block: str, part: str = "",
            integer: bool = False) -> np.ndarray:
        """Noisy ``values`` (one block, one part), the noise keyed; integers stay integers."""
        exact = np.asarray(values, dtype=float)
        if sensitivity <= 0:  # nothing one row could change: nothing to hide
            return np.asarray(values, dtype=int if integer else float)
        scale = self.scale(sensitivity)
        call = self._calls[(block, part)]
        self._calls[(block, part)] += 1
        noisy = exact + scale * standard_draws(self.mechanism, self.uniforms(block, part, call, len(exact), scale,
                                                                            integer))
        if integer:
            out = np.rint(noisy).astype(int)
        else:
            grid = 2.0 ** (math.floor(math.log2(scale)) - GRID_BITS)
            out = np.round(noisy / grid) * grid
        # the cost as QueryNoise states it: OpenDP's privacy map of the same measurement
        meas = self.measurement(sensitivity, integer)
        d_in: float = int(sensitivity) if integer and self.mechanism == "laplace" else float(sensitivity)
        parts = self._costs[block]
        parts[part] = max(parts.get(part, 0.0), float(meas.map(d_in)))
        sd = self.sd(sensitivity)
        if sd > self._sd.get(block, {}).get("sd", 0.0):
            self._sd[block] = {"sd": sd, "unit": block_unit(block, integer)}
        return out

    def noise_sd(self) -> dict[str, dict[str, Any]]:
        """Block -> ``{"sd", "unit"}``: the standard deviation of the noise on one released value."""
        return {block: dict(value) for block, value in sorted(self._sd.items())}


# --------------------------------------------------------------------------- the node's registry


class ExploreRegistry:
    """The node's explore projects (re-read when ``explore.json`` changes), its noise key and the
    releases each project was already charged for (from the privacy ledger)."""

    def __init__(self, root: str | Path, secret: Callable[[], bytes]) -> None:
        self.root = Path(root)
        self._secret = secret
        self._key: bytes | None = None
        self._lock = threading.Lock()
        self._seen: tuple[Any, dict[str, dict[str, Any]]] | None = None
        self._charged: set[tuple[str, str]] | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = noise_key(self._secret())
        return self._key

    def for_project(self, project: str | None, default_mode: str = "standard") -> dict[str, Any] | None:
        """The explore record of ``project`` (one ``stat`` per call), or None: not in explore mode.

        A project the admin set to explore has its record; one set to standard has None; any other
        request (no mode of its own, or no project) follows ``default_mode`` (ADR 0038) and gets
        ``{"by": "default"}`` under explore.  An approved study is decided before (``check_study``)."""
        from mipflow.node.freshness import file_signature

        signature = file_signature(modes_path(self.root))
        with self._lock:
            if self._seen is None or self._seen[0] != signature:
                self._seen = (signature, read_modes(self.root) if signature is not None else {})
            record = self._seen[1].get(project) if project else None
        if record is not None:
            return record if record["mode"] == "explore" else None
        return {"mode": "explore", "by": "default"} if default_mode == "explore" else None

    def _load_charged(self, ledger_path: Path) -> set[tuple[str, str]]:
        charged: set[tuple[str, str]] = set()
        if ledger_path.exists():
            for line in ledger_path.read_text(encoding="utf-8").splitlines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue  # the ledger itself refuses to start on such a line
                if isinstance(doc, dict) and doc.get("mode") == "explore" and doc.get("release") \
                        and doc.get("project") is not None:
                    charged.add((str(doc["project"]), str(doc["release"])))
        return charged

    def charged(self, project: str, release: str, ledger_path: Path) -> bool:
        """Whether ``project`` was already charged for ``release`` (read from the ledger once)."""
        with self._lock:
            if self._charged is None:
                self._charged = self._load_charged(ledger_path)
            return (project, release) in self._charged

    def remember(self, project: str, release: str) -> None:
        with self._lock:
            if self._charged is None:
                self._charged = set()
            self._charged.add((project, release))


# --------------------------------------------------------------------------- the step's controls


@dataclass(frozen=True)
class ExploreStep:
    """An admitted explore step: the project and the noise it gets."""

    project: str
    mechanism: str
    epsilon: float
    #: answered in explore mode because it is the node's ``default_mode`` (no mode set for the project)
    by_default: bool = False
    #: what the noise is keyed on beside the query: the data model's version (:func:`data_version`)
    version: bytes = b""
    #: the canonical query (:func:`canonical_query`)
    query: bytes = b""
    #: the release key (:func:`release_key`) and whether the project was charged for it before
    release: str = ""
    repeat: bool = False
    #: what the step cost (charged at admission, before any row is read) and the spending after it
    cost: Any = None
    spent: Any = None
    #: the datasets of the data model the node holds (its registry: public metadata, the same for
    #: every request on this version); a release's per-dataset parts are these, rows or not
    held: tuple[str, ...] = ()

    @property
    def mode(self) -> dict[str, Any]:
        """What a reply says about the mode that answered it."""
        return {"mode": "explore", "project": self.project, "mechanism": self.mechanism, "epsilon": self.epsilon,
                "by": "node default" if self.by_default else "project"}


def explore_algorithms() -> list[str]:
    """The algorithms an explore project may run (those with a noisy release), sorted."""
    from mipflow.node.controls.dp import dp_algorithms

    return dp_algorithms()


def check_explore(request: Any, context: Any, work: Any) -> None:
    """Explore mode (ADR 0032): a request of a project in explore mode is admitted by the request
    and the data model alone (control ``explore``; ``dp_unsupported`` for a numerical variable
    without a declared range); the step then takes the explore path (``work.explore``)."""
    registry = getattr(context, "explore", None)
    if registry is None or work.study is not None:  # a study (exact, governed) wins; the CLI keeps them apart
        return
    record = registry.for_project(request.project, work.settings.default_mode)
    if record is None:
        return
    by_default = record.get("by") == "default"
    if work.algo.dp_release is None or request.round != 0 or request.state is not None:
        who = f"project {request.project!r}" if request.project else "a request without a project"
        why = ("as every project without an approved study at this node (its default_mode)" if by_default
               else "as its node admin set")
        raise ExploreRefusal(
            f"{who} is answered in explore mode (perturbed answers), {why}: only single-round algorithms with a "
            f"noisy release are answered ({', '.join(explore_algorithms())}); for exact answers of "
            f"{request.algorithm} ask the node admins to approve a study protocol for the project (mipflow study)")
    for code in dict.fromkeys(work.variables):
        var = work.model.variable(code)
        if not var.is_categorical and (var.min_value is None or var.max_value is None):
            raise DisclosureError(f"variable {code!r} has no declared minValue and maxValue: explore mode cannot "
                                  f"bound one row's contribution to {request.algorithm}; analyse another variable "
                                  "or ask the data model's maintainers to declare its range", control="dp_unsupported")
    settings = work.settings
    mechanism, epsilon = settings.explore_mechanism, float(settings.explore_epsilon)
    delta = settings.dp_budget_delta
    query = canonical_query(request.algorithm, request.analysis, work.model, work.variables, mechanism=mechanism,
                            epsilon=epsilon, delta=delta if mechanism == "gaussian" else 0.0)
    held_registry = context.store.datasets(work.model.key)
    # the consent registry's digest too: a withdrawal moves every node's noise, holder or not (ADR 0059)
    version = version_of(held_registry, context.store.consent_applied())
    held = tuple(sorted({str(r["dataset"]) for r in held_registry}))
    release = release_key(registry.key, query, version)
    project, researcher = request.project or None, request.researcher or ""
    ledger = context.privacy.ledger
    cost = step_cost(mechanism, epsilon, delta)
    # a release is free again only within a project (without one, every request is charged)
    repeat = project is not None and registry.charged(project, release, ledger.path)
    if repeat:
        spent = ledger.spent(researcher, delta)
    else:  # charged here, before any row is read: what a step costs depends on the request alone
        spent = ledger.charge(researcher, cost, epsilon_budget=settings.explore_budget_epsilon, delta_budget=delta,
                              project=project, project_epsilon_budget=settings.explore_project_budget_epsilon,
                              project_delta_budget=settings.dp_project_budget_delta,
                              details={"algorithm": request.algorithm, "analysis": work.analysis_key,
                                       "mode": "explore", "release": release})
        if project is not None:
            registry.remember(project, release)
    work.explore = ExploreStep(project=project or "", by_default=by_default, mechanism=mechanism, epsilon=epsilon,
                               version=version, query=query, release=release, repeat=repeat, cost=cost, spent=spent,
                               held=held)
    work.record["mode"] = "explore"
    work.record["explore"] = {"release": release[:16], "charged": not repeat}


def step_cost(mechanism: str, epsilon: float, delta: float) -> Any:
    """What one explore step is charged: its whole budget (Laplace: ``epsilon``; Gaussian: the zCDP
    ``rho`` of ``epsilon`` at ``delta``), whatever blocks the rows let the release draw (an empty
    selection costs the same as a full one).  The blocks drawn never cost more (ADR 0032)."""
    from mipflow.node.controls.dp_noise import gaussian_rho
    from mipflow.node.controls.privacy_budget import PrivacyCost, rho_to_epsilon

    if mechanism == "gaussian":
        rho = gaussian_rho(epsilon, delta)
        return PrivacyCost("gaussian", epsilon=rho_to_epsilon(rho, delta), delta=delta, rho=rho)
    return PrivacyCost("laplace", epsilon=epsilon, delta=0.0)


def suppress_noisy_cells(doc: Any, tab: int) -> Any:
    """Noisy count cells (lists under ``counts``) in ``(0, tab)`` as ``None``.

    Post-processing of the noisy release: no complementary suppression is needed, as the
    released totals are noisy themselves and nothing exact is left to subtract from.  Every object
    with ``counts`` says where a hidden cell lies, ``suppressed_range`` ``[1, tab - 1]`` (a
    setting, not data), so the central side can pool the other cells without pretending a hidden
    cell was 0 (ADR 0057).  It is there whether or not a cell was hidden: the reply's layout never
    depends on the rows (ADR 0057's amendment; the shape tests of the outside reviews).
    """
    if isinstance(doc, dict):
        out = {k: ([hide_small(v, tab) for v in value] if k == "counts" and isinstance(value, list)
                   else suppress_noisy_cells(value, tab)) for k, value in doc.items()}
        if isinstance(doc.get("counts"), list):
            out["suppressed_range"] = [1, int(tab) - 1]
        return out
    if isinstance(doc, list):
        return [suppress_noisy_cells(v, tab) for v in doc]
    return doc


def release_explore(request: Any, context: Any, work: Any) -> None:
    """The explore release of an admitted step: keyed noise, charged, then the decisions on it.

    1. the step's budget (charged at admission) split between a noisy row count and the release
       (:func:`~mipflow.node.controls.explore_decision.decision_split`: settings only);
    2. the algorithm's noisy release (``dp_release``) with :class:`KeyedNoise` at the release's part;
    3. the decision count (the step's rows with keyed noise of sensitivity 1, its own block):
       ``min_row_count``, ``nfilter_subset`` and ``nfilter_glm`` decided on it, noisy count cells in
       ``(0, nfilter_tab)`` suppressed.

    The reply carries the noisy row count; the exact one stays in the audit record.  A release that
    declares ``decision_key`` (Kaplan-Meier) carries that same noisy count and its sd in its aggregates
    too: no new value, one the global step can combine with the release's cells.
    """
    from mipflow.protocol.privacy import noise_label

    settings, algo, analysis, model = work.settings, work.algo, request.analysis, work.model
    mechanism = algo.dp_release
    step = work.explore
    delta = settings.dp_budget_delta
    split = decision_split(step.mechanism, step.epsilon, delta, decision_threshold(settings))
    keyed = {"key": context.explore.key, "query": step.query, "version": step.version}
    noise = KeyedNoise(step.mechanism, split.release_epsilon, delta, mechanism.blocks(algo, analysis, model),
                       rho=split.release_rho, **keyed)
    # the request's datasets narrowed by the grants and to those the node holds: by the request
    # and the registry alone, never by which datasets the cohort has rows in
    scope = work.covered or analysis
    scope = replace(scope, datasets=tuple(d for d in scope.datasets if d in set(step.held)))
    aggregates, clamped = mechanism.release(algo, work.data, scope, model, noise)
    cost, spent, repeat = step.cost, step.spent, step.repeat
    counter = KeyedNoise(step.mechanism, split.count_epsilon, delta, 1, rho=split.count_rho, **keyed)
    rows = noisy_row_count(counter, len(work.data))
    try:
        work.controls.check_rows(algo, analysis, model, rows)  # on the noisy count: post-processing
    except DisclosureError as refused:
        raise DisclosureError(f"{refused} ({refusal_note(split)})", control=refused.control) from None
    if mechanism.decision_key:  # the reply's rows (already released) and its sd (a setting), for the global step
        aggregates = {**aggregates, mechanism.decision_key: {"count": rows, "sd": split.count_sd}}
    work.aggregates = suppress_noisy_cells(aggregates, settings.nfilter_tab)
    work.rows = rows
    work.record["dp"] = noise_label(
        mechanism=cost.mechanism, epsilon=cost.epsilon, delta=cost.delta, rho=cost.rho, clamped=clamped,
        spent={"epsilon": spent.epsilon, "delta": spent.delta, "accountant": spent.accountant},
        budget={"epsilon": settings.explore_budget_epsilon, "delta": delta,
                "project_epsilon": settings.explore_project_budget_epsilon},
        note=mechanism.note, mode="explore", keyed=True, noise_sd={**noise.noise_sd(), **counter.noise_sd()},
        repeat=repeat, decision=split.label())
