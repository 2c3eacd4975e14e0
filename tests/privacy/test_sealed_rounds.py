"""Sealed Cox round sums (ADR 0046) against a hostile central site, alone or with a peer's key.

Three real node processes, pinned to each other.  An honest Cox analysis runs to its first "sums"
round: each node's per-bin risk-set sums leave it only as one AES-GCM ciphertext per participant,
inside its tagged aggregates.  In the "score" round that follows, each node opens the ciphertexts
addressed to it.  The attacks change the previous round's contributions in that round's transcript:

* the central site alone (no node key) cannot change, move or drop a ciphertext: the contribution's
  tag for the node fails (``round_verification``);
* a central site holding a peer's key (hospital_b's: it re-tags hospital_b's contribution, so the
  tags verify) still cannot make hospital_a accept a ciphertext other than the one hospital_b sealed
  for it in this round of this analysis: a changed one, the one hospital_a sealed for hospital_b
  (same pair key, other direction), one from another analysis, a missing or an extra slot, or no
  sealed sums at all are each refused with ``round_verification``.

The honest score round on the same transcript is answered, and the honest analysis equals
statsmodels PHReg on the pooled rows.
"""
from __future__ import annotations

import base64
import copy
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.central.client import NodeClient, NodeRefused
from mipflow.central.rounds import run_analysis
from mipflow.node.controls.audit import AUDIT_FILE
from mipflow.secagg.crypto import cached_keypair
from mipflow.secagg.transcript import TRANSCRIPT_SCHEME, advance, genesis, message, tags_for
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.survival_data import HOSPITALS, STROKE, make_stroke, request
from tests.nodes import PROJECT, RESEARCHER, pinned_federation

pytestmark = pytest.mark.xdist_group("sealed_rounds")

COX = request("cox_regression", x=("age", "nihss_admission"), bin_width=7.0)
ALG = get_algorithm("cox_regression")
DATA = make_stroke(20260417, 600)


@dataclass
class Federation:
    roots: dict[str, Path]
    clients: dict[str, NodeClient]
    frames: dict[str, pd.DataFrame]

    def participants(self) -> list[dict[str, str]]:
        return [{"node": n, "public_key": self.clients[n].secagg_key()["public_key"]} for n in HOSPITALS]

    def call(self, node: str, round_no: int, state: Any, analysis_id: str, transcript: dict) -> dict[str, Any]:
        return self.clients[node].step("cox_regression", COX.to_dict(), round_no, state, researcher=RESEARCHER,
                                       project=PROJECT, analysis_id=analysis_id, transcript=transcript)


@dataclass
class SumsRound:
    """An honest analysis up to a sums round (round 2, after round 0's bins and round 1's start, or a later
    one), as the central site holds it."""

    analysis_id: str
    participants: list[dict[str, str]]
    chain: str               # before round 2
    state: dict              # sent with round 2 (phase "sums")
    replies: dict[str, dict]  # round 2's replies: aggregates with sealed sums, and tags
    score_state: dict        # the state of round 3 (phase "score")
    round_no: int = 2        # (the sums round these are; the score round is the next)

    def transcript(self, replies: dict[str, dict] | None = None) -> dict[str, Any]:
        """The score round's transcript with the sums round's contributions (``replies``, default the honest ones)."""
        contributions = [{"node": n, "aggregates": r["aggregates"], "tags": r["tags"]}
                         for n, r in (replies or self.replies).items()]
        return {"scheme": TRANSCRIPT_SCHEME, "participants": self.participants,
                "previous": {"chain": self.chain, "state": self.state, "contributions": contributions}}

    def retagged(self, federation: Federation, node: str, aggregates: dict) -> dict[str, dict]:
        """The sums round's replies with ``node``'s aggregates replaced and tagged anew with ``node``'s key
        (what a central site holding that key can do)."""
        keys = {p["node"]: bytes.fromhex(p["public_key"]) for p in self.participants}
        msg = message(chain=self.chain, analysis_id=self.analysis_id, algorithm="cox_regression", round_no=self.round_no,
                      request=COX.to_dict(), state=self.state, participants={k: v.hex() for k, v in keys.items()},
                      node=node, aggregates=aggregates)
        tags = tags_for(cached_keypair(federation.roots[node]), keys, msg)
        return {**self.replies, node: {"aggregates": aggregates, "tags": tags}}


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[Federation]:
    with pinned_federation(tmp_path_factory.mktemp("sealed"), DATA, STROKE, HOSPITALS) as (roots, served, frames):
        yield Federation(roots, served, frames)


def sums_round(federation: Federation) -> SumsRound:
    analysis_id = uuid.uuid4().hex
    participants = federation.participants()
    keys = {p["node"]: p["public_key"] for p in participants}
    first = {"scheme": TRANSCRIPT_SCHEME, "participants": participants, "previous": None}
    replies0 = {n: federation.call(n, 0, None, analysis_id, first) for n in HOSPITALS}
    start = json.loads(json.dumps(ALG.global_step(0, [r["aggregates"] for r in replies0.values()], COX, STROKE,
                                                  None).state))
    assert start["phase"] == "start"  # rows, level counts, moments (ADR 0055 amendment)
    chain0 = genesis(analysis_id=analysis_id, algorithm="cox_regression", request=COX.to_dict(), participants=keys)
    contributions0 = [{"node": n, "aggregates": r["aggregates"], "tags": r["tags"]} for n, r in replies0.items()]
    second = {"scheme": TRANSCRIPT_SCHEME, "participants": participants,
              "previous": {"chain": chain0, "state": None, "contributions": contributions0}}
    replies1 = {n: federation.call(n, 1, start, analysis_id, second) for n in HOSPITALS}
    state = json.loads(json.dumps(ALG.global_step(1, [r["aggregates"] for r in replies1.values()], COX, STROKE,
                                                  start).state))
    assert state["phase"] == "sums"
    chain1 = advance(chain0, 0, None, contributions0)
    contributions1 = [{"node": n, "aggregates": r["aggregates"], "tags": r["tags"]} for n, r in replies1.items()]
    third = {"scheme": TRANSCRIPT_SCHEME, "participants": participants,
             "previous": {"chain": chain1, "state": start, "contributions": contributions1}}
    replies2 = {n: federation.call(n, 2, state, analysis_id, third) for n in HOSPITALS}
    score_state = json.loads(json.dumps(ALG.global_step(2, [r["aggregates"] for r in replies2.values()], COX,
                                                        STROKE, state).state))
    assert score_state["phase"] == "score"
    return SumsRound(analysis_id, participants, advance(chain1, 1, start, contributions1), state, replies2,
                     score_state)


def next_sums_round(federation: Federation, rnd: SumsRound) -> SumsRound:
    """The honest score round after ``rnd``, then the next sums round."""
    score = {n: federation.call(n, rnd.round_no + 1, rnd.score_state, rnd.analysis_id, rnd.transcript())
             for n in HOSPITALS}
    contributions = [{"node": n, "aggregates": r["aggregates"], "tags": r["tags"]} for n, r in score.items()]
    state = json.loads(json.dumps(ALG.global_step(rnd.round_no + 1, [r["aggregates"] for r in score.values()], COX,
                                                  STROKE, rnd.score_state).state))
    assert state["phase"] == "sums"
    transcript = {"scheme": TRANSCRIPT_SCHEME, "participants": rnd.participants,
                  "previous": {"chain": advance(rnd.chain, rnd.round_no, rnd.state, rnd.transcript()["previous"][
                      "contributions"]), "state": rnd.score_state, "contributions": contributions}}
    replies = {n: federation.call(n, rnd.round_no + 2, state, rnd.analysis_id, transcript) for n in HOSPITALS}
    score_state = json.loads(json.dumps(ALG.global_step(rnd.round_no + 2, [r["aggregates"] for r in replies.values()],
                                                        COX, STROKE, state).state))
    return SumsRound(rnd.analysis_id, rnd.participants, advance(transcript["previous"]["chain"], rnd.round_no + 1,
                                                                rnd.score_state, contributions),
                     state, replies, score_state, rnd.round_no + 2)


def refused(federation: Federation, node: str, rnd: SumsRound, transcript: dict, says: str) -> None:
    with pytest.raises(NodeRefused) as err:
        federation.call(node, rnd.round_no + 1, rnd.score_state, rnd.analysis_id, transcript)
    refusal = err.value
    assert refusal.status == 403 and refusal.control == "round_verification", (refusal.control, refusal.reason)
    assert says in refusal.reason, refusal.reason
    last = json.loads((federation.roots[node] / AUDIT_FILE).read_text().splitlines()[-1])
    assert last["decision"] == "refused" and last.get("control") == "round_verification", last


def flipped(box: str) -> str:
    raw = bytearray(base64.b64decode(box))
    raw[-1] ^= 1
    return base64.b64encode(bytes(raw)).decode("ascii")


def with_sealed(aggregates: dict, change: Callable[[dict], dict | None]) -> dict:
    """``aggregates`` with its sealed sums changed (``change`` returns the new ones, or None: none)."""
    out = copy.deepcopy(aggregates)
    sealed = change(out.pop("sealed"))
    return out if sealed is None else {**out, "sealed": sealed}


# --------------------------------------------------------------------------- the central site alone


def test_the_sums_round_releases_ciphertexts_only_and_the_honest_score_round_is_answered(federation) -> None:
    rnd = sums_round(federation)
    for name, reply in rnd.replies.items():
        sealed = reply["aggregates"]["sealed"]
        assert set(sealed) == set(HOSPITALS) and all(isinstance(v, str) for v in sealed.values())
        assert set(reply["aggregates"]) == {"n", "n_events", "group_counts", "sealed"}
    for node in HOSPITALS:
        reply = federation.call(node, 3, rnd.score_state, rnd.analysis_id, rnd.transcript())
        assert set(reply["aggregates"]) == {"n", "n_events", "group_counts", "loglik", "score", "information"}


@pytest.mark.parametrize("attack", ["changed", "moved", "dropped"])
def test_the_central_site_cannot_change_move_or_drop_a_ciphertext(federation, attack: str) -> None:
    rnd = sums_round(federation)
    replies = copy.deepcopy(rnd.replies)
    b = replies["hospital_b"]["aggregates"]["sealed"]
    if attack == "changed":
        b["hospital_a"] = flipped(b["hospital_a"])
    elif attack == "moved":  # hospital_b's ciphertext for hospital_c in its slot for hospital_a
        b["hospital_a"] = b["hospital_c"]
    else:
        del b["hospital_a"]
    for node in HOSPITALS:
        refused(federation, node, rnd, rnd.transcript(replies), "does not carry a valid tag")


# --------------------------------------------------------------------------- with hospital_b's key


def _another_analysis(federation) -> SumsRound:
    return sums_round(federation)


ATTACKS: dict[str, tuple[Callable[[SumsRound, Federation], Callable[[dict], dict | None]], str]] = {
    # a byte of hospital_b's ciphertext for hospital_a changed
    "changed": (lambda rnd, fed: lambda s: {**s, "hospital_a": flipped(s["hospital_a"])}, "do not open"),
    # what hospital_a sealed for hospital_b (the same pair key) passed off as hospital_b's for hospital_a
    "moved-from-the-peers-slot": (lambda rnd, fed: lambda s: {
        **s, "hospital_a": rnd.replies["hospital_a"]["aggregates"]["sealed"]["hospital_b"]}, "do not open"),
    # hospital_b's own ciphertext for hospital_c in hospital_a's slot
    "moved-from-another-slot": (lambda rnd, fed: lambda s: {**s, "hospital_a": s["hospital_c"]}, "do not open"),
    # hospital_b's ciphertext for hospital_a from another analysis (same data, same round)
    "from-another-analysis": (lambda rnd, fed: lambda s: {
        **s, "hospital_a": _another_analysis(fed).replies["hospital_b"]["aggregates"]["sealed"]["hospital_a"]},
        "do not open"),
    "missing": (lambda rnd, fed: lambda s: {k: v for k, v in s.items() if k != "hospital_a"},
                "exactly one ciphertext per participant"),
    "extra": (lambda rnd, fed: lambda s: {**s, "hospital_z": s["hospital_a"]}, "exactly one ciphertext per participant"),
    "none": (lambda rnd, fed: lambda s: None, "carries no sealed sums while others do"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_peer_key_does_not_let_a_ciphertext_through_that_was_not_sealed_for_this_node_now(federation,
                                                                                           attack: str) -> None:
    rnd = sums_round(federation)
    make, says = ATTACKS[attack]
    forged = with_sealed(rnd.replies["hospital_b"]["aggregates"], make(rnd, federation))
    transcript = rnd.transcript(rnd.retagged(federation, "hospital_b", forged))
    refused(federation, "hospital_a", rnd, transcript, says)
    # the re-tagged contribution's tags verify: the honest one, re-tagged, is answered (the refusal was the seal's)
    honest = rnd.transcript(rnd.retagged(federation, "hospital_b", rnd.replies["hospital_b"]["aggregates"]))
    assert federation.call("hospital_a", 3, rnd.score_state, rnd.analysis_id, honest)["round"] == 3


def test_a_ciphertext_of_an_earlier_round_is_refused(federation) -> None:
    """hospital_b's ciphertext for hospital_a from the sums round of the previous Newton evaluation
    (round 2) replayed into the next one (round 4), re-tagged with hospital_b's key: the chain and
    round bound into it differ.  The honest round 4 opens and is answered."""
    first = sums_round(federation)
    later = next_sums_round(federation, first)
    assert later.round_no == 4 and later.state["coefficients"] != first.state["coefficients"]
    old = first.replies["hospital_b"]["aggregates"]["sealed"]["hospital_a"]
    forged = with_sealed(later.replies["hospital_b"]["aggregates"], lambda s: {**s, "hospital_a": old})
    refused(federation, "hospital_a", later, later.transcript(later.retagged(federation, "hospital_b", forged)),
            "do not open")
    assert federation.call("hospital_a", 5, later.score_state, later.analysis_id, later.transcript())["round"] == 5


# --------------------------------------------------------------------------- honest work


def test_the_honest_analysis_equals_pooled_phreg(federation) -> None:
    from statsmodels.duration.hazard_regression import PHReg

    outcome = run_analysis("cox_regression", COX.to_dict(), list(federation.clients.values()),
                           researcher=RESEARCHER, project=PROJECT)
    # round 0 (bins), the start round, a pair per Newton step and one more at the end
    assert outcome.rounds == 2 + 2 * (outcome.result["iterations"] + 1)
    pooled = pd.concat(federation.frames.values(), ignore_index=True).dropna(
        subset=["followup_days", "death_90d", "age", "nihss_admission"])
    timeline = np.asarray(outcome.result["binning"]["timeline"], dtype=float)
    index = np.searchsorted(timeline, pooled["followup_days"].to_numpy(dtype=float), side="left")
    beyond = index >= len(timeline)
    times = timeline[np.minimum(index, len(timeline) - 1)]
    status = ((pooled["death_90d"] == "yes").to_numpy() & ~beyond).astype(float)
    fit = PHReg(times, pooled[["age", "nihss_admission"]].to_numpy(dtype=float), status=status,
                ties="breslow").fit(method="newton", tol=1e-12)
    assert_rel_close(outcome.result["coefficients"], fit.params, rel=1e-9, what="coefficients")
    assert_rel_close(outcome.result["stderr"], fit.bse, rel=1e-9, what="stderr")
