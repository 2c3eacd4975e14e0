"""The central side's round loop: run an algorithm's rounds over the nodes, combine aggregates.

:func:`run_analysis` is the one way to run an analysis: the CLI, the
Airflow operator and the tests call it.  Nodes are called in parallel; a node
that refuses (disclosure controls) or cannot be reached is left out with its
reason, and the analysis goes on if at least ``min_nodes`` remain (default 1;
3 or more is recommended, so that no single node's aggregates can be told
apart in a result).  A node that
drops out after the first round restarts the analysis without it, so every
result is computed on one consistent set of nodes.  An algorithm may instead
end the analysis on the rounds already combined when nodes refuse a later
round (:meth:`mipflow.algorithms.spec.SpecAlgorithm.on_refusal`; k-means near
convergence, docs/adr/0020-kmeans-privacy-stop.md): every node then counts as
contributing and the outcome's ``stopped`` says which node refused which round.

Every analysis runs on behalf of a researcher and a project: both travel in
the signed request body (and the signed query string of metadata calls), and
each node checks them against its own grants (docs/adr/0010-governance.md).
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from mipflow import __version__
from mipflow.central.client import NodeClient, NodeRefused, NodeUnavailable
from mipflow.exceptions import FederationError, RequestError
from mipflow.protocol.identity import IDENTITY_RE

log = logging.getLogger(__name__)


@dataclass
class AnalysisOutcome:
    """A federated result with its provenance."""

    algorithm: str
    request: dict[str, Any]
    result: dict[str, Any]
    contributed: dict[str, int]             # node -> rows used
    excluded: dict[str, str]                # node -> reason
    rounds: int
    seconds: float
    datasets: dict[str, dict[str, int | None]] = field(default_factory=dict)  # node -> dataset -> rows held
    software: str = f"mipflow {__version__}"
    researcher: str = ""
    project: str = ""
    analysis_id: str = ""
    #: {"central": {catalogue_version, algorithm_sha256}, "nodes": {node: {...}}, "consistent": bool}
    code: dict[str, Any] = field(default_factory=dict)
    #: differential privacy (ADR 0015): which nodes added noise, mechanism, epsilon, delta, clamping; {} if exact
    privacy: dict[str, Any] = field(default_factory=dict)
    #: {"enabled": bool, ...scheme, participants' key fingerprints} (mipflow.secagg)
    secure_aggregation: dict[str, Any] = field(default_factory=dict)
    #: the algorithm ended early on refusals (on_refusal): {"round": refused round, "refusals":
    #: {node: {"control", "reason"}}}; the result is that of rounds 0 .. round-1; {} otherwise
    stopped: dict[str, Any] = field(default_factory=dict)
    #: verifiable rounds (ADR 0029): {"scheme", "chain": head of the rounds' hash chain (in every
    #: node's audit record), "participants": {node: key fingerprint}}
    transcript: dict[str, Any] = field(default_factory=dict)
    #: node -> the mode that answered, when not the standard one: {"study", "snapshot"} (ADR 0028)
    mode: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OnBehalfOf:
    """Who an analysis runs for, as sent to every node."""

    researcher: str
    project: str
    analysis_id: str


def _on_behalf_of(researcher: str | None, project: str | None) -> OnBehalfOf:
    for value, what in ((researcher, "researcher"), (project, "project")):
        if not value:
            raise RequestError(f"an analysis runs on behalf of a researcher and a project: give {what}")
        if not IDENTITY_RE.match(value):
            raise RequestError(f"{what} {value[:40]!r} is not a valid identity (letters, digits, '_.@+-')")
    return OnBehalfOf(str(researcher), str(project), uuid.uuid4().hex)


def run_analysis(algorithm_name: str, request: Mapping[str, Any], nodes: Sequence[NodeClient], *,
                 researcher: str | None = None, project: str | None = None,
                 min_nodes: int = 1, max_restarts: int = 3,
                 secure_aggregation: bool | None = None) -> AnalysisOutcome:
    """Run one federated analysis over ``nodes`` on behalf of ``researcher`` in ``project``.

    Each node decides itself whether the researcher may run this analysis on
    its data (its access grants, query budget and enabled algorithms); a node
    that refuses is left out with its reason like any other refusal.

    ``secure_aggregation``: ``True`` masks every node's aggregates so that only
    their sum is seen here (:mod:`mipflow.secagg`), ``False`` never does, and
    ``None`` (default) does when at least 3 nodes take part and the algorithm
    supports it.  A node dropping out of a secure analysis restarts it without
    that node.

    Raises
    ------
    RequestError
        If the request is invalid or names no researcher / project (checked
        centrally before any node is called).
    FederationError
        If fewer than ``min_nodes`` nodes contribute; the message lists each node's reason.
    """
    from mipflow.secagg.policy import resolve

    who = _on_behalf_of(researcher, project)
    secure = resolve(secure_aggregation, algorithm_name, request)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(nodes)))) as pool:
        return _run_analysis(algorithm_name, request, nodes, min_nodes, max_restarts, pool, who, secure)


def _code_provenance(algorithm_name: str, replies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from mipflow.algorithms.provenance import code_of

    central = code_of(algorithm_name)
    nodes = {name: dict(reply.get("code") or {}) for name, reply in replies.items()}
    consistent = all(code.get("algorithm_sha256") == central["algorithm_sha256"] for code in nodes.values())
    if not consistent:
        log.warning("%s: step code differs between nodes and the central site: %s", algorithm_name, nodes)
    return {"central": central, "nodes": nodes, "consistent": consistent}


def _run_analysis(algorithm_name: str, request: Mapping[str, Any], nodes: Sequence[NodeClient], min_nodes: int,
                  max_restarts: int, pool: ThreadPoolExecutor, who: OnBehalfOf,
                  secure: str = "off") -> AnalysisOutcome:
    from mipflow.algorithms import get_algorithm
    from mipflow.algorithms.contract import MAX_ROUNDS
    from mipflow.algorithms.longitudinal import model_view, result_block
    from mipflow.protocol.request import AnalysisRequest
    from mipflow.protocol.datamodel import DataModel
    from mipflow.secagg.central_side import open_session
    from mipflow.secagg.policy import masked_round

    started = time.perf_counter()
    algorithm = get_algorithm(algorithm_name)
    parsed = AnalysisRequest.from_dict(request)
    request_doc = parsed.to_dict()
    active = list(nodes)
    excluded: dict[str, str] = {}
    model: DataModel | None = None
    dataset_rows: dict[str, dict[str, int | None]] = {}
    declined = False  # a node declined pooled thresholds (ADR 0052): the next attempt asks without them
    restart = -1
    while restart < max_restarts:
        restart += 1
        if len(active) < min_nodes:
            break
        if restart:
            log.info("%s (analysis %s): restart %d of at most %d on %d node(s) after a node dropped out",
                     algorithm_name, who.analysis_id, restart, max_restarts, len(active))
        if model is None:
            model, dataset_rows = _model_from_nodes(active, parsed.data_model, excluded, parsed.datasets, who)
            _check_datasets(parsed.datasets, dataset_rows, excluded, who)
            model = model_view(model, parsed)  # a longitudinal transformer's variables (ADR 0034)
            active = [n for n in active if n.name not in excluded]
            log.info("%s (analysis %s): metadata from %d of %d node(s)", algorithm_name, who.analysis_id,
                     len(active), len(nodes))
            algorithm.validate(parsed, model)
        # secure aggregation (mipflow.secagg, ADR 0014): one participant set per attempt
        session, secure, secure_note = _secure_session(algorithm_name, secure, active, excluded, pool, parsed)
        active = [n for n in active if n.name not in excluded]
        # verifiable rounds (ADR 0029): every attempt has a participant set, masked or not
        roster = session if session is not None else open_session(active, excluded, pool)
        active = [n for n in active if n.name not in excluded]
        if len(active) < min_nodes:
            break
        # the request of this attempt: an algorithm may decide a parameter from the attempt's masking
        # (Kaplan-Meier's survival_bins, ADR 0052); the result records the request as sent
        attempt_doc = algorithm.session_request(request_doc, len(session.participants) if session else 0, declined)
        attempt = AnalysisRequest.from_dict(attempt_doc)
        verified = _Rounds(roster, who.analysis_id, algorithm_name, attempt_doc)
        state: dict | None = None
        memo: dict | None = None  # central-only (Step.memo), for on_refusal
        rows: dict[str, int] = {}
        code: dict[str, Any] = {}
        modes: dict[str, Any] = {}  # study mode (ADR 0028)
        noise_labels: dict[str, list[dict[str, Any]]] = {}  # differential privacy (ADR 0015)
        dropped_by: dict[str, int | None] = {}  # longitudinal transformer: patients dropped per node
        node_notes: dict[str, dict[str, bool]] = {}  # round 0: the algorithm's flags per node (ADR 0041)
        dropped = False

        def finish(step: Any, rounds: int, stopped: dict[str, Any]) -> AnalysisOutcome:
            from mipflow.protocol.privacy import privacy_block

            if step.result is None:
                raise FederationError(f"{algorithm_name} finished without a result")
            privacy = privacy_block(noise_labels, list(rows))
            # a noisy result says so itself, not only in the provenance
            result = {**step.result, "privacy": privacy} if privacy else step.result
            if parsed.longitudinal is not None:  # the transformation applied says so too (ADR 0034)
                result = {**result, "longitudinal_transformer": result_block(parsed.longitudinal, rows, dropped_by)}
            notes = {name: flags for name, flags in node_notes.items() if name in rows}
            if notes and hasattr(algorithm, "result_notes"):  # e.g. a node without slope information
                result = {**result, "notes": [*result.get("notes", []), *algorithm.result_notes(notes)]}
            return AnalysisOutcome(algorithm=algorithm_name, request=attempt_doc, result=result,
                                   contributed=rows, excluded=excluded, rounds=rounds,
                                   datasets={n: dataset_rows.get(n, {}) for n in rows},
                                   seconds=round(time.perf_counter() - started, 4),
                                   researcher=who.researcher, project=who.project,
                                   analysis_id=who.analysis_id, code=code, privacy=privacy,
                                   secure_aggregation={"mode": secure, **session.provenance()}
                                   if session is not None else {"enabled": False, "mode": secure,
                                                                "reason": secure_note},
                                   stopped=stopped, transcript=verified.provenance(),
                                   mode={n: modes[n] for n in rows if n in modes})

        for round_no in range(MAX_ROUNDS):
            replies, failures, refusals = _call_all(algorithm_name, attempt_doc, active, round_no, state, pool,
                                                    who, session.body() if session is not None else None,
                                                    verified.bodies(state, active))
            log.info("%s (analysis %s): round %d of at most %d: %d node(s) answered, %d left out%s",
                     algorithm_name, who.analysis_id, round_no + 1, MAX_ROUNDS, len(replies), len(failures),
                     "" if not failures else " (" + "; ".join(f"{k}: {v}" for k, v in failures.items()) + ")")
            if not declined and algorithm.pooled_threshold(attempt, model) and any(
                    control == "pooled_bins" for control, _ in refusals.values()):
                # a node answers pooled thresholds for one participant set and pool per cohort only (ADR 0052):
                # the analysis runs again, with every node, on per-node bins; that attempt is not a restart
                # (an attempt on per-node bins refused by pooled_bins, ADR 0059, is not run again)
                log.info("%s (analysis %s): %s declined pooled time bins; running again with per-node bins",
                         algorithm_name, who.analysis_id, ", ".join(sorted(
                             name for name, (control, _) in refusals.items() if control == "pooled_bins")))
                declined = True
                restart -= 1
                dropped = True
                break
            if failures and round_no > 0 and len(refusals) == len(failures):
                # the algorithm may end on the rounds already combined (this round's replies are not used;
                # with secure aggregation a partial round could not be summed anyway)
                stop = algorithm.on_refusal(round_no, refusals, attempt, model, state, memo)
                if stop is not None:
                    if not stop.done:
                        raise FederationError(f"{algorithm_name}.on_refusal must finish or return None")
                    log.info("%s (analysis %s): stopped at round %d on the refusal of %s; result of the %d "
                             "round(s) before", algorithm_name, who.analysis_id, round_no + 1,
                             ", ".join(sorted(refusals)), round_no)
                    return finish(stop, round_no, {
                        "round": round_no,
                        "refusals": {name: {"control": control, "reason": reason}
                                     for name, (control, reason) in sorted(refusals.items())}})
            concentrated = sorted(n for n, (control, _) in refusals.items() if control == EFFECTIVE_ROWS)
            if concentrated and round_no > 0:
                # ADR 0054: the verified iterate concentrates the sums on a few rows; the fit ends here,
                # no iterate is released, and no restart refits the other nodes' rows to the same end
                log.info("%s (analysis %s): stopped at round %d: %s refused it under %s", algorithm_name,
                         who.analysis_id, round_no + 1, ", ".join(concentrated), EFFECTIVE_ROWS)
                raise RequestError(concentrated_message(algorithm, algorithm_name, round_no, concentrated))
            if failures:
                excluded.update(failures)
                active = [n for n in active if n.name not in failures]
                if round_no > 0 or session is not None:  # (secure: the masks no longer cancel)
                    dropped = True  # restart on a consistent set of nodes
                    break
                if len(active) < min_nodes:
                    break
            if round_no == 0:
                rows = {name: int(reply["rows"]) for name, reply in replies.items()}
                code = _code_provenance(algorithm_name, replies)
                modes = {name: reply["mode"] for name, reply in replies.items() if reply.get("mode")}
                dropped_by = {name: (reply.get("longitudinal") or {}).get("patients_dropped")
                              for name, reply in replies.items()}
                node_notes = {name: dict(reply["notes"]) for name, reply in replies.items() if reply.get("notes")}
            aggregates = [replies[n.name]["aggregates"] for n in active]
            for name, reply in replies.items():
                if reply.get("privacy"):
                    noise_labels.setdefault(name, []).append(reply["privacy"])
            if session is not None and masked_round(algorithm, round_no, state):  # (Cox: score rounds only)
                aggregates = [session.combine(replies)]
            try:
                step = algorithm.global_step(round_no, aggregates, attempt, model, state)
            except RequestError as exc:
                if not noise_labels:
                    raise
                noisy = ", ".join(sorted(noise_labels))
                raise RequestError(f"{exc} (computed from noisy aggregates: node(s) {noisy} added "
                                   f"differential-privacy noise)") from exc
            if step.done:
                log.info("%s (analysis %s): finished after %d round(s) with %d node(s)", algorithm_name,
                         who.analysis_id, round_no + 1, len(active))
                return finish(step, round_no + 1, {})
            if failures:
                # verifiable rounds bind every round to the participants of round 0 (ADR 0029): an
                # iterative analysis goes on only with a participant set that all answered round 0
                log.info("%s (analysis %s): restarting on the %d node(s) that answered round 1",
                         algorithm_name, who.analysis_id, len(active))
                dropped = True
                break
            verified.advance(round_no, [(n.name, replies[n.name]) for n in active])
            state = json.loads(json.dumps(step.state, allow_nan=False))
            memo = step.memo
        else:
            raise FederationError(f"{algorithm_name} did not finish within {MAX_ROUNDS} rounds")
        if not dropped:
            break
    reasons = left_out_text(excluded) or "no nodes configured"
    raise FederationError(f"{algorithm_name}: {len(active)} node(s) contributed, fewer than "
                          f"min_nodes ({min_nodes}). Left out: {reasons}", excluded=excluded)


#: The node control that refuses a round whose weighted sums rest on few rows (ADR 0054).
EFFECTIVE_ROWS = "effective_rows"


def concentrated_message(algorithm: Any, name: str, round_no: int, nodes: Sequence[str]) -> str:
    """The error of a fit stopped by ``effective_rows`` refusals (ADR 0054): what happened, what it
    suggests about the data (the algorithm's ``concentrated_fit``), what to change; no number
    computed from the rows, and no coefficients."""
    hint = getattr(algorithm, "concentrated_fit", None) or (
        "the fit puts nearly all its weight on a few rows; remove or merge covariates")
    return (f"{name} stopped without a result at round {round_no + 1}: node(s) {', '.join(nodes)} refused it "
            f"under {EFFECTIVE_ROWS} (the round's weighted sums would rest on fewer rows in effect than the "
            f"node's min_row_count): {hint}. No coefficients are released (did not converge).")


def left_out_text(excluded: Mapping[str, str]) -> str:
    """The nodes left out and why, each reason once: ``"a, b: refused (study): ..."``.

    Nodes under one protocol refuse with the same text; said once, the message stays short
    enough for a failure record (``mipflow.failures.MAX_MESSAGE``) to keep what to change.
    """
    nodes_by_reason: dict[str, list[str]] = {}
    for node, reason in excluded.items():
        nodes_by_reason.setdefault(reason, []).append(node)
    return "; ".join(f"{', '.join(nodes)}: {reason}" for reason, nodes in nodes_by_reason.items())


def _secure_session(algorithm_name: str, mode: str, active: Sequence[NodeClient], excluded: dict[str, str],
                    pool: ThreadPoolExecutor, request: Any = None) -> tuple[Any, str, str]:
    """The secure-aggregation participant set of one attempt (or None), the mode, and why not.

    ``mode`` is ``"on"``, ``"off"`` or ``"auto"``; automatic mode switches on
    (``"auto-on"``) with 3 or more nodes (or the algorithm's ``secure_aggregation_min_nodes``), when the algorithm supports this ``request``
    and is not explicit-only (:func:`mipflow.secagg.policy.automatic_refusal`), and stays on for restarts
    while 2 or more remain.  With one node left there is nothing to hide its aggregates among (the
    result is that node's anyway): automatic mode goes on without masking, ``"on"`` fails.
    """
    from mipflow.secagg.central_side import open_session
    from mipflow.secagg.policy import AUTO_MIN_NODES, algorithm_of, automatic_refusal

    if mode == "auto":
        reason = automatic_refusal(algorithm_name, request)
        if reason is not None:
            return None, mode, reason
        # an algorithm may mask from fewer nodes (cross-validation: from 2, ADR 0026)
        least = getattr(algorithm_of(algorithm_name), "secure_aggregation_min_nodes", AUTO_MIN_NODES)
        if len(active) < least:
            return None, mode, f"automatic: fewer than {least} nodes take part"
        mode = "auto-on"
    if mode == "off":
        return None, mode, "not requested"
    session = open_session(active, excluded, pool) if len(active) >= 2 else None
    if session is None or len(session.participants) < 2:
        if mode == "auto-on":
            return None, mode, "only one node remained"
        raise FederationError(f"secure aggregation needs at least 2 nodes; "
                              f"{len(session.participants) if session else len(active)} can take part")
    return session, mode, ""


class _Rounds:
    """The central site's side of verifiable rounds (:mod:`mipflow.secagg.transcript`): the
    transcript each step call carries, advanced with every round's tagged replies."""

    def __init__(self, roster: Any, analysis_id: str, algorithm: str, request: Mapping[str, Any]) -> None:
        from mipflow.secagg.transcript import genesis

        self.roster = roster
        self.chain = genesis(analysis_id=analysis_id, algorithm=algorithm, request=request,
                             participants=roster.participants)
        self.previous: dict[str, Any] | None = None
        #: the previous round's contributions as tags and chain bind them (sealed ciphertexts by their
        #: digests, each hashed once per round, not once per node called)
        self.bound: list[Any] | None = None
        self.sent_state: Any = None

    def bodies(self, state: Any, nodes: Sequence[NodeClient]) -> dict[str, dict[str, Any]]:
        """The transcript of the call that sends ``state`` to each of ``nodes`` (by the federation's
        name): the previous round's contributions with each one's tag for that node only.  The state
        is kept as sent (a global step may update its state in place)."""
        from mipflow.secagg.transcript import TRANSCRIPT_SCHEME, addressed_to

        self.sent_state = json.loads(json.dumps(state, allow_nan=False))
        participants = self.roster.body()["participants"]
        return {node.name: {"scheme": TRANSCRIPT_SCHEME, "participants": participants,
                            "previous": addressed_to(self.previous, self.roster.node_names.get(node.name, node.name),
                                                     self.bound)}
                for node in nodes}

    def advance(self, round_no: int, replies: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Round ``round_no`` answered by every participant: the next call carries it."""
        from mipflow.secagg.transcript import advance, aggregates_digest, bound_form

        contributions = [{"node": self.roster.node_names.get(name, name), "aggregates": reply["aggregates"],
                          "tags": reply.get("tags")} for name, reply in replies]
        self.previous = {"chain": self.chain, "state": self.sent_state, "contributions": contributions}
        self.bound = [bound_form(c["aggregates"]) for c in contributions]
        self.chain = advance(self.chain, round_no, self.sent_state, contributions,
                             [aggregates_digest(b) for b in self.bound])

    def provenance(self) -> dict[str, Any]:
        from mipflow.secagg.transcript import TRANSCRIPT_SCHEME

        return {"scheme": TRANSCRIPT_SCHEME, "chain": self.chain, "participants": self.roster.fingerprints()}


def _model_from_nodes(nodes: Sequence[NodeClient], key: str, excluded: dict[str, str],
                      datasets: Sequence[str], who: OnBehalfOf) -> tuple[Any, dict[str, dict[str, int | None]]]:
    """The data model as the nodes declare it, and each node's row counts of the requested datasets.

    Nodes are asked in parallel.  A node whose declaration of the data model differs from
    the others' is left out (its rows would not mean the same).  Counts below a node's
    ``min_row_count`` arrive as ``None`` (not released).
    """
    from mipflow.protocol.datamodel import DataModel

    metas: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(nodes)))) as pool:
        futures = {node.name: pool.submit(node.metadata, who.researcher, who.project) for node in nodes}
        for name, future in futures.items():
            try:
                metas[name] = future.result()
            except NodeRefused as exc:
                excluded[name] = f"refused ({exc.control}): {exc.reason}"
            except NodeUnavailable as exc:
                excluded[name] = f"unavailable: {exc}"
    model = None
    declared = None
    counts: dict[str, dict[str, int | None]] = {}
    for name, meta in metas.items():
        for item in meta.get("data_models", []):
            if item["data_model"] != key:
                continue
            variables = json.dumps(item["variables"], sort_keys=True)
            if declared is None:
                code, version = key.split(":", 1)
                model = DataModel.from_dict({"code": code, "version": version, "label": item["label"],
                                            "variables": item["variables"]})
                declared = variables
            elif variables != declared:
                excluded[name] = f"declares data model {key} differently from the other nodes"
                break
            counts[name] = {d["dataset"]: d["row_count"] for d in item.get("datasets", [])
                            if d["dataset"] in set(datasets)}
    if model is None:
        reasons = "; ".join(f"{k}: {v}" for k, v in excluded.items())
        raise RequestError(f"no reachable node holds data model {key}" + (f" ({reasons})" if reasons else ""))
    return model, counts


def _check_datasets(requested: Sequence[str], listed: Mapping[str, Mapping[str, int | None]],
                    excluded: dict[str, str], who: OnBehalfOf) -> None:
    """Before any step: every requested dataset is listed by some node.  (A node that lists none of
    them is still asked: its own refusal says why, e.g. no grant or too few rows.)

    ``listed`` is each node's requested datasets as its metadata lists them for the researcher and
    project (a node lists only the datasets it holds and approves for them).  Each node answers
    on the requested datasets its own grants cover (:meth:`mipflow.node.controls.access.AccessRegistry.covered`),
    so a grant for a node's own dataset is enough for a request across nodes.

    Raises
    ------
    RequestError
        Naming the datasets no node lists (and the nodes that could not be asked).
    """
    nowhere = [d for d in requested if not any(d in rows for rows in listed.values())]
    if nowhere:
        unasked = left_out_text(excluded)
        raise RequestError(f"no node lists dataset(s) {', '.join(nowhere)} for researcher {who.researcher} in "
                           f"project {who.project}: no node holds them, or none approves them for you; remove "
                           "them from the request or ask the node's admin for a grant"
                           + (f" (not asked: {unasked})" if unasked else ""))


def _call_all(algorithm: str, request: dict[str, Any], nodes: Sequence[NodeClient], round_no: int,
              state: dict | None, pool: ThreadPoolExecutor, who: OnBehalfOf,
              secure_aggregation: dict[str, Any] | None = None,
              transcripts: Mapping[str, dict[str, Any]] | None = None
              ) -> tuple[dict[str, dict], dict[str, str], dict[str, tuple[str, str]]]:
    """One round: every node in parallel (one pool serves all rounds of an analysis); ``transcripts``
    holds each node's transcript by its name in the federation.

    Returns the replies, every failed node's reason, and of those the nodes that
    refused (rather than could not be reached) with their ``(control, reason)``.
    """
    replies: dict[str, dict] = {}
    failures: dict[str, str] = {}
    refusals: dict[str, tuple[str, str]] = {}
    extra: dict[str, Any] = {"secure_aggregation": secure_aggregation} if secure_aggregation is not None else {}
    futures = {node.name: pool.submit(node.step, algorithm, request, round_no, state, researcher=who.researcher,
                                      project=who.project, analysis_id=who.analysis_id, **extra,
                                      **({"transcript": transcripts[node.name]} if transcripts is not None else {}))
               for node in nodes}
    for name, future in futures.items():
        try:
            replies[name] = future.result()
        except NodeRefused as exc:
            if exc.status == 400 and exc.control == "request":
                raise RequestError(f"node {name} rejected the request: {exc.reason}") from None
            failures[name] = f"refused ({exc.control}): {exc.reason}"
            refusals[name] = (exc.control, exc.reason)
        except NodeUnavailable as exc:
            failures[name] = f"unavailable: {exc}"
    return replies, failures, refusals
