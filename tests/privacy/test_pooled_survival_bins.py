"""Kaplan-Meier's pooled time bins (ADR 0052), through real, pinned node processes.

Per node, Kaplan-Meier's bins are merged until each node's own counts reach ``nfilter_tab``, and the
central site keeps the ends common to every node: on ~170 patients per node a curve keeps a time point
or two.  Masked among at least 3 pinned nodes (automatic), the nodes exchange their fine counts sealed
*and masked* (each peer learns only their sum), derive one partition from the pooled counts, and release
their own counts on it masked.  What this file shows:

* the curve equals the pooled computation on the result's bins, with many more time points than the
  per-node bins, and says ``partition: pooled``;
* the central site's view per node: round 0 carries ``group_n`` and one ciphertext per participant,
  round 1 only ring elements; no node's round-1 vector decodes alone, the three together decode to the
  pooled counts of the result;
* a peer's view: every part it opens is uniform; only the sum of all parts is the pooled fine counts;
* every released pooled count is 0 or at least ``nfilter_tab``, while some node's own count on those
  bins is not (the relaxation is real, and hidden);
* the precondition of ADR 0027: a node answers pooled bins on one cohort with one participant set and
  one pool only.  The same analysis over another participant set that shares nodes (``{B, C, D}``
  after ``{A, B, C}``: the subtraction that would isolate a node) is refused by the bound nodes (control
  ``pooled_bins``) before anything pooled is released; after another node loaded new rows it is answered
  on bins derived against the first pool (ADR 0060);
* and since ADR 0059 no other survival release of a bound cohort follows: the central site's fallback
  to per-node bins is refused by the bound nodes too (per-node ``{B, C}`` less pooled ``{A, B, C}`` is
  A's own counts), naming the rule and telling the researcher to re-run with all the original datasets.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms.survival import fine_grid, outcome
from mipflow.central.client import NodeClient
from mipflow.central.rounds import run_analysis
from mipflow.node.controls.audit import AUDIT_FILE
from mipflow.node.home import NodeHome
from mipflow.protocol.request import AnalysisRequest
from mipflow.secagg.central_side import unmask_sum
from mipflow.secagg.codec import decode
from mipflow.secagg.crypto import load_keypair
from mipflow.secagg.sealed_masks import unmask_parts
from mipflow.secagg.sealing import open_one
from mipflow.secagg.transcript import genesis
from tests.mipflow.algorithms.survival_data import STROKE, complete, make_stroke, request, run_with_controls
from tests.mipflow.algorithms.test_survival import KM_COLUMNS, check_km
from tests.nodes import PROJECT, RESEARCHER, load_frame, pinned_nodes
from tests.privacy.test_redteam_round6 import Recording

pytestmark = pytest.mark.xdist_group("pooled_survival_bins")

#: three hospitals of ~170 patients, and a fourth node holding part of hospital_a's dataset
DATA = make_stroke(20261207, 680)
NODES = ("hospital_a", "hospital_b", "hospital_c", "hospital_d")
FIRST = NODES[:3]


@dataclass
class Federation:
    roots: dict[str, Path]
    clients: dict[str, NodeClient]
    frames: dict[str, pd.DataFrame]

    def run(self, nodes=FIRST, **parameters) -> tuple[Any, dict[str, Recording]]:
        """Kaplan-Meier by sex, weekly, over ``nodes`` through recording clients."""
        recording = {n: Recording(self.clients[n].endpoint, retries=0) for n in nodes}
        try:
            doc = request("kaplan_meier", x=("sex",), bin_width=7.0, **parameters).to_dict()
            outcome = run_analysis("kaplan_meier", doc, list(recording.values()), researcher=RESEARCHER,
                                   project=PROJECT)
        finally:
            for client in recording.values():
                client.close()
        return outcome, recording

    def pooled(self, nodes=FIRST) -> pd.DataFrame:
        return complete(pd.concat([self.frames[n] for n in nodes], ignore_index=True), KM_COLUMNS)


def split(data: pd.DataFrame) -> dict[str, pd.DataFrame]:
    frames = {n: data[data["dataset"] == n].reset_index(drop=True) for n in ("hospital_b", "hospital_c")}
    a = data[data["dataset"] == "hospital_a"].reset_index(drop=True)
    half = len(a) * 3 // 5
    frames["hospital_a"], frames["hospital_d"] = a.iloc[:half].reset_index(drop=True), a.iloc[half:].reset_index(drop=True)
    return frames


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[Federation]:
    frames = split(DATA)
    base = tmp_path_factory.mktemp("pooled_bins")
    with pinned_nodes(base, {n: frames[n] for n in NODES}, STROKE) as (roots, clients):
        yield Federation(roots, clients, frames)


@pytest.fixture(scope="module")
def first(federation) -> tuple[Any, dict[str, Recording]]:
    """The first analysis: over hospitals a, b and c, automatic mode."""
    return federation.run()


def tab(federation) -> int:
    return int(NodeHome(federation.roots["hospital_a"]).settings.nfilter_tab)


def test_three_pinned_nodes_release_kaplan_meier_on_one_pooled_partition(federation, first) -> None:
    outcome, recording = first
    assert outcome.request["parameters"]["survival_bins"] == "pooled"
    assert outcome.secure_aggregation["enabled"] is True and sorted(outcome.secure_aggregation["participants"]) == list(FIRST)
    assert outcome.result["binning"]["partition"] == "pooled" and outcome.rounds == 2
    check_km(outcome.result, federation.pooled(), grouped=True)
    # per-node bins of the same rows are no longer answered by these nodes (ADR 0059): computed in process
    # under the same controls, for the comparison
    ask = request("kaplan_meier", x=("sex",), bin_width=7.0, survival_bins="per_node")
    own_bins, used, _ = run_with_controls("kaplan_meier", [federation.frames[n] for n in FIRST], ask,
                                          NodeHome(federation.roots["hospital_a"]).settings)
    assert own_bins is not None and own_bins["binning"]["partition"] == "per_node" and used == [0, 1, 2]
    for pooled, own in zip(outcome.result["curves"], own_bins["curves"]):
        # many weekly time points instead of the few every node's own bins share
        assert len(pooled["timeline"]) >= 4 * len(own["timeline"]) and len(pooled["timeline"]) >= 8
    for name, client in recording.items():
        (r0, s0, reply0, _), (r1, s1, reply1, _) = client.rounds
        assert (r0, s0, r1, s1) == (0, None, 1, {"phase": "pooled"})
        # round 0: group totals (as a per-node release gives them) and one ciphertext per participant
        assert set(reply0["aggregates"]) == {"group_n", "sealed"}
        assert set(reply0["aggregates"]["sealed"]) == set(FIRST)
        # round 1: only ring elements
        assert set(reply1["aggregates"]) == {"secure_aggregation"}, name
    audit = [json.loads(line) for line in (federation.roots["hospital_a"] / AUDIT_FILE).read_text().splitlines()]
    first_run = [r for r in audit if r.get("decision") == "allowed" and r.get("algorithm") == "kaplan_meier"][:2]
    assert [r.get("secure_aggregation") for r in first_run] == ["clear_round", True]


def _own_counts(frame: pd.DataFrame, timeline: list[float], sex: str) -> tuple[np.ndarray, np.ndarray]:
    """A node's events and censorings of one sex on the result's bins (rows beyond censored at the end)."""
    rows = complete(frame, KM_COLUMNS)
    rows = rows[rows["sex"] == sex]
    points = np.asarray(timeline, dtype=float)
    index = np.searchsorted(points, rows["followup_days"].to_numpy(dtype=float), side="left")
    beyond = index >= len(points)
    index = np.minimum(index, len(points) - 1)
    event = (rows["death_90d"] == "yes").to_numpy() & ~beyond
    return (np.bincount(index[event], minlength=len(points)), np.bincount(index[~event], minlength=len(points)))


def test_the_central_site_reads_only_the_pooled_counts_and_every_pooled_count_meets_the_threshold(
        federation, first) -> None:
    outcome, recording = first
    replies = {n: recording[n].rounds[1][2]["aggregates"] for n in FIRST}
    # each node's vector alone is ring elements: decoded alone, no element is a count of at most its rows
    rows = {n: len(federation.frames[n]) for n in FIRST}
    for name, aggregates in replies.items():
        alone = [decode(int(v, 16)) for v in aggregates["secure_aggregation"]["masked"]]
        small = sum(1 for v in alone if 0 <= v <= rows[name])
        assert small <= len(alone) // 100 + 1, (name, small, len(alone))
    # the three together decode to the pooled counts of the result
    total = unmask_sum(list(replies.values()))
    assert int(total["nodes"]) == 3
    limit = tab(federation)
    hidden = 0
    for g, curve in enumerate(outcome.result["curves"]):
        slots = total["slots"][g]
        used = [k for k, v in enumerate(slots["is_end"]) if int(v) == 3]
        events = np.array([int(slots["events"][k]) for k in used])
        censored = np.array([int(slots["censored"][k]) for k in used])
        leaving = events + censored
        assert list(events[leaving > 0]) == curve["events"] and list(censored[leaving > 0]) == curve["censored"]
        # every pooled count released is 0 or at least nfilter_tab ...
        assert all(v == 0 or v >= limit for v in (*events, *censored))
        # ... while the nodes' own counts on these bins are not all: small cells exist, masked
        timeline = [float(t) for t in curve["timeline"]]
        for name in FIRST:
            own_events, own_censored = _own_counts(federation.frames[name], timeline, curve["group"])
            hidden += int(np.sum((own_events > 0) & (own_events < limit)) + np.sum((own_censored > 0) & (own_censored < limit)))
    assert hidden > 0


def test_a_peer_opens_only_masked_parts_whose_sum_is_the_pooled_fine_counts(federation, first) -> None:
    """What hospital_b could read with its own key from round 0's ciphertexts: one part per node, each
    uniform in Z/2^64 (masked with that node's pairwise masks with the other two); only the sum of the
    three is the pooled fine counts."""
    outcome, recording = first
    peer = "hospital_b"
    own = load_keypair(federation.roots[peer], create=False)
    keys = {n: load_keypair(federation.roots[n], create=False).public_bytes for n in FIRST}
    doc = outcome.request
    chain = genesis(analysis_id=outcome.analysis_id, algorithm="kaplan_meier", request=doc,
                    participants={n: k.hex() for n, k in keys.items()})
    parts = []
    for sender in FIRST:
        box = recording[sender].rounds[0][2]["aggregates"]["sealed"][peer]
        part = open_one(own, keys[sender], box, analysis_id=outcome.analysis_id, algorithm="kaplan_meier",
                        chain=chain, round_no=0, sender=sender, recipient=peer)
        assert part is not None and part["scheme"] == "mipflow-sealed-mask-v1"
        assert isinstance(part["masked"], bytes)  # the seal carries the vector's bytes (seal scheme v2)
        values = np.frombuffer(part["masked"], dtype="<u8").view(np.int64)
        # uniform: hardly any element is a count (0 to the node's rows)
        assert np.mean((values >= 0) & (values <= len(federation.frames[sender]))) < 0.01, sender
        parts.append(part)
    pooled = unmask_parts(parts)
    req = AnalysisRequest.from_dict(doc)
    frame = federation.pooled()
    fine = fine_grid(STROKE.variable("followup_days"))
    for g, sex in enumerate(STROKE.variable("sex").enumeration_codes):  # the groups: the levels, in order
        rows = frame[frame["sex"] == sex]
        index, event = outcome_of(rows, req, fine)
        np.testing.assert_array_equal(pooled["events"][g], np.bincount(index[event], minlength=len(fine)))
        np.testing.assert_array_equal(pooled["censored"][g], np.bincount(index[~event], minlength=len(fine)))


def outcome_of(rows: pd.DataFrame, req: AnalysisRequest, fine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return outcome(rows, req, STROKE, fine, "yes")


def _refusals(federation, name: str) -> list[dict]:
    path = federation.roots[name] / AUDIT_FILE
    audit = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in audit if r.get("decision") == "refused" and r.get("control") == "pooled_bins"]


def test_another_participant_set_sharing_nodes_gets_no_pooled_release(federation, first) -> None:
    """``{B, C, D}`` after ``{A, B, C}``: B and C answered pooled bins on these rows with another set, so
    they refuse before sealing anything; the central site's per-node attempt is refused by them too (ADR
    0059: per-node ``{B, C}`` would subtract from the pooled ``{A, B, C}``), and only D's rows, bound to
    nothing, are answered."""
    before = {n: len(_refusals(federation, n)) for n in NODES}
    outcome, recording = federation.run(nodes=NODES[1:])
    assert outcome.request["parameters"]["survival_bins"] == "per_node"
    assert outcome.result["binning"]["partition"] == "per_node"
    assert set(outcome.contributed) == {"hospital_d"} and set(outcome.excluded) == {"hospital_b", "hospital_c"}
    check_km(outcome.result, federation.pooled(NODES[3:]), grouped=True)
    for name in ("hospital_b", "hospital_c"):
        refused = _refusals(federation, name)[before[name]:]
        assert [r["round"] for r in refused] == [0, 0]
        assert "another" in refused[0]["reason"]  # the pooled attempt: another participant set
        assert "re-run the analysis with all the original datasets" in refused[1]["reason"].lower()
        assert "re-run the analysis with all the original datasets" in outcome.excluded[name].lower()
    assert len(_refusals(federation, "hospital_d")) == before["hospital_d"]
    # nothing pooled reached the central site: no masked round was answered in this analysis
    for client in recording.values():
        assert all(round_no == 0 for round_no, *_ in client.rounds)
        assert all("secure_aggregation" not in reply["aggregates"] for _, _, reply, _ in client.rounds)


def test_a_changed_peer_is_answered_on_bins_derived_against_the_first_pool(federation, first) -> None:
    """hospital_c loads new rows: a and b, whose rows did not change, are bound to the first pool.  Since
    ADR 0060 every node derives the new pool's bins against the analysis's first pool (nesting with it,
    the pooled difference 0 or at least nfilter_tab in every common bin), so a and b answer: the result
    is pooled and equal to the pooled computation on the new rows.  The refusals of a change too small
    are in ``tests/privacy/test_pooled_chain.py``."""
    extra = make_stroke(99, 40).assign(dataset="hospital_c")
    extra["subjectcode"] = [f"new-{i}" for i in range(len(extra))]
    load_frame(federation.roots["hospital_c"], STROKE, extra)
    federation.frames["hospital_c"] = pd.concat([federation.frames["hospital_c"], extra], ignore_index=True)
    before = {n: len(_refusals(federation, n)) for n in FIRST}
    outcome, _ = federation.run()
    assert outcome.result["binning"]["partition"] == "pooled" and set(outcome.contributed) == set(FIRST)
    check_km(outcome.result, federation.pooled(), grouped=True)
    assert {n: len(_refusals(federation, n)) for n in FIRST} == before
