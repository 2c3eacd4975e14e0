"""A hostile central site against verifiable rounds (ADR 0029), through three real node processes.

The central site holds valid credentials for every node and wants one node's rows.  In
an iterative algorithm it would send, for a later round, a state of its own making:
coefficients under which all rows but one weigh nothing, k-means centres around one
patient, an evaluation past the last round.  Each node now answers round k > 0 only for
the state the algorithm's global step gives on the tagged contributions of round k - 1
of the same, pinned, participants; every attack below is refused with control
``round_verification`` (or ``secure_aggregation`` for a peer that is not pinned), and the
honest rounds it starts from are answered, masked and in the clear.
"""
from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.central.client import NodeClient, NodeRefused
from mipflow.central.rounds import run_analysis
from mipflow.node.controls.audit import AUDIT_FILE
from mipflow.secagg.codec import SCHEME
from mipflow.secagg.crypto import KeyPair
from mipflow.secagg.transcript import TRANSCRIPT_SCHEME, message, tags_for
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, pin_each_other, served_clients
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("crafted_rounds")

NODES = ("hospital_a", "hospital_b", "hospital_c")
DATA = make_data(20261206, 330)
SPLIT = np.arange(len(DATA)) % 3
LOGISTIC = request(x=("x1", "age"), y=("outcome",), positive_class="yes")
KMEANS = request(y=("x1", "y", "x2"), k=3, maxiter=30, tol=1e-6)  # real variables (ADR 0050)
LINEAR = request(x=("x1", "age"), y=("y",))
#: The hostile centre's own key pair, which it passes off as a fourth hospital.
CENTRE = KeyPair.generate()


@dataclass
class Round:
    """What the centre holds after one round: the transcript it sent, the state, the replies."""

    analysis_id: str
    participants: list[dict[str, str]]
    transcript: dict[str, Any]
    state: Any
    replies: dict[str, dict[str, Any]]

    def previous(self, **changes: Any) -> dict[str, Any]:
        """This round as the next call's ``previous``: chain, state and contributions, in node order."""
        from mipflow.secagg.transcript import advance, genesis

        prev = self.transcript["previous"]
        if prev is None:
            chain = genesis(analysis_id=self.analysis_id, algorithm=self.algorithm, request=self.request_doc,
                            participants={p["node"]: p["public_key"] for p in self.participants})
        else:
            chain = advance(prev["chain"], self.round_no - 1, prev["state"], prev["contributions"])
        contributions = [{"node": name, "aggregates": reply["aggregates"], "tags": reply["tags"]}
                         for name, reply in self.replies.items()]
        return {"chain": chain, "state": self.state, "contributions": contributions, **changes}

    algorithm: str = ""
    request_doc: dict[str, Any] | None = None
    round_no: int = 0


@dataclass
class Centre:
    roots: dict[str, Path]
    clients: dict[str, NodeClient]

    def participants(self, extra: dict[str, str] | None = None) -> list[dict[str, str]]:
        keys = {name: client.secagg_key()["public_key"] for name, client in self.clients.items()}
        keys.update(extra or {})
        return [{"node": n, "public_key": k} for n, k in sorted(keys.items())]

    def call(self, node: str, algorithm: str, doc: dict, round_no: int, state: Any, analysis_id: str,
             transcript: dict | None, secure: list | None = None) -> dict[str, Any]:
        return self.clients[node].step(
            algorithm, doc, round_no, state, researcher=RESEARCHER, project=PROJECT, analysis_id=analysis_id,
            transcript=transcript, secure_aggregation={"scheme": SCHEME, "participants": secure} if secure else None)

    def round0(self, algorithm: str, case, *, secure: bool = False, extra: dict[str, str] | None = None,
               analysis_id: str | None = None) -> Round:
        """An honest round 0 (the attack starts from true contributions)."""
        analysis_id = analysis_id or uuid.uuid4().hex
        participants = self.participants(extra)
        transcript = {"scheme": TRANSCRIPT_SCHEME, "participants": participants, "previous": None}
        doc = case.to_dict()
        replies = {node: self.call(node, algorithm, doc, 0, None, analysis_id, transcript,
                                   participants if secure else None) for node in NODES}
        return Round(analysis_id, participants, transcript, None, replies, algorithm=algorithm,
                     request_doc=doc, round_no=0)

    def honest_state(self, rnd: Round, case, *, secure: bool = False) -> dict:
        """The state the algorithm's global step gives on ``rnd`` (what the centre should send)."""
        from mipflow.secagg.central_side import unmask_sum

        aggregates = [reply["aggregates"] for reply in rnd.replies.values()]
        if secure:
            aggregates = [unmask_sum(aggregates)]
        step = get_algorithm(rnd.algorithm).global_step(rnd.round_no, aggregates, case, MODEL, copy.deepcopy(rnd.state))
        assert not step.done
        return json.loads(json.dumps(step.state))

    def refused(self, node: str, algorithm: str, case, round_no: int, state: Any, analysis_id: str,
                transcript: dict | None, *, control: str = "round_verification", secure: list | None = None,
                says: str = "") -> NodeRefused:
        with pytest.raises(NodeRefused) as err:
            self.call(node, algorithm, case.to_dict(), round_no, state, analysis_id, transcript, secure)
        refusal = err.value
        assert refusal.status == 403 and refusal.control == control, (refusal.status, refusal.control, refusal.reason)
        assert says in refusal.reason, refusal.reason
        last = json.loads((self.roots[node] / AUDIT_FILE).read_text().splitlines()[-1])
        assert last["decision"] == "refused" and last.get("control") == control, last
        return refusal


@pytest.fixture(scope="module")
def centre(tmp_path_factory) -> Iterator[Centre]:
    base = tmp_path_factory.mktemp("crafted")
    roots = {}
    data = DATA.assign(subjectcode=[f"p{i}" for i in range(len(DATA))])
    for k, node in enumerate(NODES):
        roots[node] = base / node
        home = standard_home(roots[node], node)  # default settings: pinned trust policy, min_row_count 10
        # the attacks reuse one cohort many times; the differencing control has its own tests
        home.set_setting("differencing_check", 0)
        home.set_setting("query_budget", 0)
        home.set_setting("query_budget_project", 0)
        load_frame(roots[node], MODEL, data[SPLIT == k].reset_index(drop=True))
        grant_all(roots[node])
    pin_each_other(roots)  # the hospitals' admins pinned each other (not the centre's key)
    with served_clients(roots) as served:
        yield Centre(roots, served)


def _next(rnd: Round, state: Any, **previous_changes: Any) -> dict[str, Any]:
    return {"scheme": TRANSCRIPT_SCHEME, "participants": rnd.participants,
            "previous": rnd.previous(**previous_changes)}


def _one_row_state(state: dict) -> dict:
    """Coefficients under which (almost) every row's weight p(1-p) vanishes: a huge intercept."""
    crafted = copy.deepcopy(state)
    for key, value in crafted.items():
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            crafted[key] = [40.0] + [0.0] * (len(value) - 1)
    assert crafted != state, state
    return crafted


# --------------------------------------------------------------------------- the attacks


def test_a_later_round_without_the_previous_contributions_is_refused(centre: Centre) -> None:
    rnd = centre.round0("logistic_regression", LOGISTIC)
    state = _one_row_state(centre.honest_state(rnd, LOGISTIC))
    for node in NODES:
        centre.refused(node, "logistic_regression", LOGISTIC, 1, state, rnd.analysis_id, None,
                       says="needs a transcript")


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "masked"])
def test_a_crafted_state_beside_the_true_contributions_is_refused(centre: Centre, secure: bool) -> None:
    rnd = centre.round0("logistic_regression", LOGISTIC, secure=secure)
    honest = centre.honest_state(rnd, LOGISTIC, secure=secure)
    crafted = _one_row_state(honest)
    masked = rnd.participants if secure else None
    for node in NODES:
        centre.refused(node, "logistic_regression", LOGISTIC, 1, crafted, rnd.analysis_id, _next(rnd, crafted),
                       secure=masked, says="is not the one the algorithm's global step gives")
    # the same transcript with the state the global step gives is answered (the refusal was the state's)
    for node in NODES:
        reply = centre.call(node, "logistic_regression", LOGISTIC.to_dict(), 1, honest, rnd.analysis_id,
                            _next(rnd, honest), masked)
        assert reply["round"] == 1 and set(reply["tags"]) == set(NODES)


def test_a_contribution_changed_to_steer_the_state_is_refused(centre: Centre) -> None:
    rnd = centre.round0("logistic_regression", LOGISTIC)
    changed = copy.deepcopy(rnd.replies)
    # inflate hospital_b's aggregates so the honest global step lands where the centre wants
    agg = changed["hospital_b"]["aggregates"]
    key = next(k for k, v in agg.items() if isinstance(v, (list, int, float)))
    agg[key] = (np.asarray(agg[key], dtype=float) * 1000.0).tolist()
    tampered = Round(rnd.analysis_id, rnd.participants, rnd.transcript, None, changed, algorithm=rnd.algorithm,
                     request_doc=rnd.request_doc)
    try:
        state = centre.honest_state(tampered, LOGISTIC)
    except Exception:  # noqa: BLE001 - whatever the global step makes of it, the tags must fail first
        state = centre.honest_state(rnd, LOGISTIC)
    for node in NODES:
        centre.refused(node, "logistic_regression", LOGISTIC, 1, state, rnd.analysis_id, _next(tampered, state),
                       says="does not carry a valid tag")


def test_an_invented_peer_with_valid_tags_cannot_steer_the_state(centre: Centre) -> None:
    """The centre announces hospital_z (its own key): it can make hospital_z's tags for every real
    node (X25519 is symmetric), so the tags verify; the node's pinned roster refuses the peer."""
    extra = {"hospital_z": CENTRE.public_hex}
    rnd = centre.round0("logistic_regression", LOGISTIC, extra=extra)
    keys = {p["node"]: bytes.fromhex(p["public_key"]) for p in rnd.participants}
    # hospital_z's made-up contribution: hospital_a's aggregates scaled, tagged with the centre's key
    fake = copy.deepcopy(rnd.replies["hospital_a"]["aggregates"])
    prev = rnd.previous()
    msg = message(chain=prev["chain"], analysis_id=rnd.analysis_id, algorithm="logistic_regression", round_no=0,
                  request=rnd.request_doc, state=None, participants={k: v.hex() for k, v in keys.items()},
                  node="hospital_z", aggregates=fake)
    prev["contributions"].append({"node": "hospital_z", "aggregates": fake, "tags": tags_for(CENTRE, keys, msg)})
    with_fake = Round(rnd.analysis_id, rnd.participants, rnd.transcript, None,
                      {**rnd.replies, "hospital_z": {"aggregates": fake, "tags": prev["contributions"][-1]["tags"]}},
                      algorithm=rnd.algorithm, request_doc=rnd.request_doc)
    state = centre.honest_state(with_fake, LOGISTIC)
    transcript = {"scheme": TRANSCRIPT_SCHEME, "participants": rnd.participants, "previous": prev}
    for node in NODES:
        centre.refused(node, "logistic_regression", LOGISTIC, 1, state, rnd.analysis_id, transcript,
                       control="secure_aggregation", says="'hospital_z'")


def test_a_dropped_contribution_is_refused(centre: Centre) -> None:
    """Leaving hospital_c's contribution out would make the state hospital_a's and hospital_b's alone."""
    rnd = centre.round0("logistic_regression", LOGISTIC)
    partial = Round(rnd.analysis_id, rnd.participants, rnd.transcript, None,
                    {k: v for k, v in rnd.replies.items() if k != "hospital_c"}, algorithm=rnd.algorithm,
                    request_doc=rnd.request_doc)
    state = centre.honest_state(partial, LOGISTIC)
    for node in ("hospital_a", "hospital_b"):
        centre.refused(node, "logistic_regression", LOGISTIC, 1, state, rnd.analysis_id, _next(partial, state),
                       says="exactly one per participant")


def test_contributions_of_another_analysis_are_refused(centre: Centre) -> None:
    first = centre.round0("logistic_regression", LOGISTIC)
    second = centre.round0("logistic_regression", LOGISTIC)
    # hospital_a's contribution from the first analysis in the second one's transcript
    mixed = Round(second.analysis_id, second.participants, second.transcript, None,
                  {**second.replies, "hospital_a": first.replies["hospital_a"]}, algorithm=second.algorithm,
                  request_doc=second.request_doc)
    state = centre.honest_state(mixed, LOGISTIC)
    for node in NODES:
        centre.refused(node, "logistic_regression", LOGISTIC, 1, state, second.analysis_id, _next(mixed, state),
                       says="does not carry a valid tag")


def test_round_zero_takes_no_state(centre: Centre) -> None:
    participants = centre.participants()
    transcript = {"scheme": TRANSCRIPT_SCHEME, "participants": participants, "previous": None}
    state = {"centers": [[2.0, 3.0, 40.0], [0.0, 0.0, 20.0], [5.0, 5.0, 80.0]]}
    for node in NODES:
        centre.refused(node, "kmeans", KMEANS, 0, state, uuid.uuid4().hex, transcript, says="round 0 takes no state")
        centre.refused(node, "kmeans", KMEANS, 0, state, uuid.uuid4().hex, None, says="needs a transcript")


def test_kmeans_centres_of_the_centres_choosing_are_refused(centre: Centre) -> None:
    """Invented centres (one around a single row) would make a cluster's sums one patient's values."""
    rnd = centre.round0("kmeans", KMEANS)
    honest = centre.honest_state(rnd, KMEANS)
    crafted = copy.deepcopy(honest)
    row = DATA.dropna(subset=["x1", "y"]).iloc[0]
    key = next(k for k, v in crafted.items() if isinstance(v, list) and v and isinstance(v[0], list))
    crafted[key][0] = [float(row["x1"]), float(row["y"]), float(row["age"])]
    for node in NODES:
        centre.refused(node, "kmeans", KMEANS, 1, crafted, rnd.analysis_id, _next(rnd, crafted),
                       says="is not the one the algorithm's global step gives")


def test_a_round_after_the_last_is_refused(centre: Centre) -> None:
    """Linear regression ends at round 0: a 'round 1' evaluating coefficients of the centre's choosing
    (residuals of one row) has no state to verify against."""
    rnd = centre.round0("linear_regression", LINEAR)
    state = {"coefficients": [0.0, 0.0, 0.0]}
    for node in NODES:
        centre.refused(node, "linear_regression", LINEAR, 1, state, rnd.analysis_id, _next(rnd, state),
                       says="there is no round 1")


# --------------------------------------------------------------------------- honest work


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "masked"])
def test_honest_iterative_analyses_are_answered_and_equal_pooled(centre: Centre, secure: bool) -> None:
    import statsmodels.api as sm

    outcome = run_analysis("logistic_regression", LOGISTIC.to_dict(), list(centre.clients.values()),
                           researcher=RESEARCHER, project=PROJECT, secure_aggregation=secure)
    assert outcome.rounds > 2 and outcome.secure_aggregation["enabled"] is secure
    rows = DATA.dropna(subset=["x1", "age", "outcome"])
    y = (rows["outcome"] == "yes").astype(float)
    fit = sm.Logit(y, sm.add_constant(rows[["x1", "age"]])).fit(disp=0, tol=1e-12, maxiter=100)
    assert_rel_close(outcome.result["coefficients"], fit.params.to_numpy(), what="logistic coefficients")
    # every node's record of the last round holds the chain the result carries
    assert outcome.transcript["scheme"] == TRANSCRIPT_SCHEME
    for node in NODES:
        records = [json.loads(line) for line in (centre.roots[node] / AUDIT_FILE).read_text().splitlines()]
        mine = [r for r in records if r.get("analysis") and r.get("decision") == "allowed"
                and r.get("round") == outcome.rounds - 1 and r.get("chain") == outcome.transcript["chain"]]
        assert len(mine) == 1, node
