"""Cox regression's score rounds under secure aggregation (ADR 0048), through three real node processes.

Since ADR 0046 the per-bin risk-set sums of a Cox analysis reach the nodes only; what each node
still sent the central site in the clear, at every Newton iterate, was its own share of the log
partial likelihood, score and information (``l_i``, ``U_i``, ``I_i``).  With secure aggregation on
(automatic from 3 nodes) the score rounds are masked with the pairwise masks of ADR 0014: the
central site, recording every reply, holds ring elements, each far from the node's actual share
(taken from the same analysis run in the clear), and only their sum, the pooled ``l``, ``U``,
``I``, decodes.  So is the "start" round after round 0 (each node's rows, level counts and covariate
moments, which the central site needs only pooled: ADR 0055 amendment).  Round 0 (each node's own bins,
whose ends the central site intersects) and the "sums" rounds (counts beside ciphertexts) travel in the
clear.  The result equals statsmodels PHReg on
the pooled rows; with 2 nodes automatic mode leaves it off, as for every algorithm.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeClient
from mipflow.central.rounds import run_analysis
from mipflow.node.controls.audit import AUDIT_FILE
from mipflow.secagg.central_side import unmask_sum
from mipflow.protocol.request import AnalysisRequest
from mipflow.secagg.codec import additive_form, decode
from mipflow.secagg.node_side import secure_form
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.survival_data import HOSPITALS, STROKE, make_stroke, request
from tests.nodes import PROJECT, RESEARCHER, pinned_federation
from tests.privacy.test_redteam_round6 import Recording

pytestmark = pytest.mark.xdist_group("masked_cox_scores")

X = ("age", "nihss_admission")
DATA = make_stroke(20261213, 600)
SHARE = ("loglik", "score", "information")


@dataclass
class Federation:
    roots: dict[str, Path]
    clients: dict[str, NodeClient]
    frames: dict[str, pd.DataFrame]

    def run(self, ties: str, nodes=HOSPITALS, **kwargs) -> tuple[Any, dict[str, Recording]]:
        """One Cox analysis over ``nodes`` through recording clients (what the central site received)."""
        recording = {n: Recording(self.clients[n].endpoint, retries=0) for n in nodes}
        try:
            doc = dataclasses.replace(request("cox_regression", x=X, bin_width=7.0, ties=ties),
                                      datasets=tuple(nodes)).to_dict()
            outcome = run_analysis("cox_regression", doc, list(recording.values()), researcher=RESEARCHER,
                                   project=PROJECT, **kwargs)
        finally:
            for client in recording.values():
                client.close()
        return outcome, recording


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[Federation]:
    with pinned_federation(tmp_path_factory.mktemp("masked_cox"), DATA, STROKE, HOSPITALS) as (roots, served, frames):
        yield Federation(roots, served, frames)


def pooled_phreg(frames: list[pd.DataFrame], result: dict[str, Any], ties: str) -> Any:
    """statsmodels PHReg on the pooled complete rows, times rounded up to the result's bin ends (rows
    followed beyond its end of follow-up censored there)."""
    from statsmodels.duration.hazard_regression import PHReg

    pooled = pd.concat(frames, ignore_index=True).dropna(subset=["followup_days", "death_90d", *X])
    timeline = np.asarray(result["binning"]["timeline"], dtype=float)
    index = np.searchsorted(timeline, pooled["followup_days"].to_numpy(dtype=float), side="left")
    beyond = index >= len(timeline)
    times = timeline[np.minimum(index, len(timeline) - 1)]
    status = ((pooled["death_90d"] == "yes").to_numpy() & ~beyond).astype(float)
    return PHReg(times, pooled[list(X)].to_numpy(dtype=float), status=status, ties=ties).fit(method="newton",
                                                                                            tol=1e-12)


def assert_equals_pooled(outcome: Any, frames: list[pd.DataFrame], ties: str) -> None:
    fit = pooled_phreg(frames, outcome.result, ties)
    assert_rel_close(outcome.result["coefficients"], fit.params, rel=1e-9, what=f"coefficients ({ties})")
    assert_rel_close(outcome.result["stderr"], fit.bse, rel=1e-9, what=f"stderr ({ties})")
    assert_rel_close([outcome.result["ll"]], [fit.llf], rel=1e-9, what=f"log partial likelihood ({ties})")


def rounds_of(client: Recording) -> list[tuple[int, Any, dict]]:
    return [(round_no, state, reply) for round_no, state, reply, _ in client.rounds]


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_three_nodes_mask_the_start_and_score_rounds_and_equal_pooled_phreg(federation, ties: str) -> None:
    outcome, recording = federation.run(ties)
    assert outcome.secure_aggregation["enabled"] is True and outcome.secure_aggregation["mode"] == "auto-on"
    assert sorted(outcome.secure_aggregation["participants"]) == sorted(HOSPITALS)
    assert outcome.contributed == {n: len(federation.frames[n].dropna(subset=["followup_days", "death_90d", *X]))
                                   for n in HOSPITALS} and not outcome.excluded
    assert outcome.rounds == 2 + 2 * (outcome.result["iterations"] + 1)
    assert_equals_pooled(outcome, list(federation.frames.values()), ties)
    for name, client in recording.items():
        seen = rounds_of(client)
        assert len(seen) == outcome.rounds
        # round 0: the node's own bins in the clear (the central site intersects their ends), and nothing
        # the central site needs only summed (ADR 0055 amendment): no moments, no level counts
        assert set(seen[0][2]["aggregates"]) == {"n", "ends", "events", "censored", "group_counts"}, name
        # round 1 ("start"): rows, level counts and moments, masked
        assert seen[1][1]["phase"] == "start" and set(seen[1][2]["aggregates"]) == {"secure_aggregation"}
        layout = seen[1][2]["aggregates"]["secure_aggregation"]["layout"]
        assert {"n", "level_counts", "moments"} == set(layout), name
        for round_no, state, reply in seen[2:]:
            aggregates = reply["aggregates"]
            if state["phase"] == "sums":  # as before: counts, and the sums sealed to the three nodes
                assert set(aggregates) == {"n", "n_events", "group_counts", "sealed"}
                assert set(aggregates["sealed"]) == set(HOSPITALS)
            else:
                assert set(aggregates) == {"secure_aggregation"}, (name, round_no)
    # each node's audit record says which rounds it masked: the start and score rounds, not round 0 or the
    # sums rounds
    audit = [json.loads(line) for line in (federation.roots["hospital_a"] / AUDIT_FILE).read_text().splitlines()]
    last = [r for r in audit if r.get("decision") == "allowed"][-outcome.rounds:]
    assert [r.get("round") for r in last] == list(range(outcome.rounds))
    assert [r.get("secure_aggregation") for r in last] == ["clear_round", True, *["clear_round", True] * (
        (outcome.rounds - 2) // 2)]


def test_the_central_site_reads_no_nodes_share_of_l_u_i(federation) -> None:
    """What the central site received in every score round of a masked analysis, against each node's
    actual share in the same analysis run in the clear: ring elements with the share's layout, each
    far from the share's value (so none of ``l_i``, ``U_i``, ``I_i`` is readable), masked apart even
    where values are equal; only the sum of the three decodes, to the sum of the shares."""
    masked, masked_rec = federation.run("breslow")
    plain, plain_rec = federation.run("breslow", secure_aggregation=False)
    assert masked.secure_aggregation["enabled"] is True and plain.secure_aggregation["enabled"] is False
    assert masked.rounds == plain.rounds  # the same Newton path (states equal to rounding)
    p = len(X)
    req = AnalysisRequest.from_dict(masked.request)
    scores = [k for k, (_, state, _) in enumerate(rounds_of(masked_rec[HOSPITALS[0]])) if k and state["phase"] == "score"]
    assert len(scores) >= 3
    for k in scores:
        releases, shares = [], []
        for name in HOSPITALS:
            _, state, reply = rounds_of(masked_rec[name])[k]
            _, plain_state, plain_reply = rounds_of(plain_rec[name])[k]
            assert plain_state["phase"] == state["phase"] == "score"
            assert_rel_close(state["coefficients"], plain_state["coefficients"], rel=1e-9, floor=1e-12,
                             what="the iterate")
            share = plain_reply["aggregates"]
            assert len(share["score"]) == p and len(share["information"]) == p * (p + 1) // 2
            release = reply["aggregates"]["secure_aggregation"]
            layout, vector = additive_form(secure_form("cox_regression", share, req, STROKE))
            assert set(layout) == {"n", "n_events", *SHARE}  # the counts per common bin stay out (ADR 0048)
            elements = [int(v, 16) for v in release["masked"]]
            assert release["layout"] == layout and len(elements) == len(vector)
            assert all(abs(decode(m) - v) > 1e20 for m, v in zip(elements, vector)), name
            assert len(set(elements)) == len(elements)
            # l_i, U_i and I_i themselves: no element of the reply is any of them
            values = {float(share["loglik"]), *map(float, share["score"]), *map(float, share["information"])}
            assert not values & {float(decode(m)) for m in elements}
            releases.append(reply["aggregates"])
            shares.append(share)
        total = unmask_sum(releases)
        # (near the optimum the pooled score is a difference of shares of order 1e2 and more, at iterates
        # that agree to rounding: compared to 1e-12 absolute there, relative elsewhere)
        assert_rel_close([total["loglik"], *total["score"], *total["information"]],
                         [sum(float(s["loglik"]) for s in shares),
                          *np.sum([s["score"] for s in shares], axis=0),
                          *np.sum([s["information"] for s in shares], axis=0)], rel=1e-9, floor=1e-3,
                         what=f"round {k}'s sum")
        assert total["n"] == sum(int(s["n"]) for s in shares)
    assert_rel_close(masked.result["coefficients"], plain.result["coefficients"], rel=1e-12, what="masked vs plain")


def test_two_nodes_run_unmasked_as_documented(federation) -> None:
    """Automatic mode masks from 3 nodes (with 2, each node could subtract its own share from the
    sum): the score rounds then carry each node's share in the clear, and the fit is the pooled one."""
    two = HOSPITALS[:2]
    outcome, recording = federation.run("breslow", nodes=two)
    assert outcome.secure_aggregation == {"enabled": False, "mode": "auto",
                                          "reason": "automatic: fewer than 3 nodes take part"}
    assert sorted(outcome.contributed) == sorted(two)
    assert_equals_pooled(outcome, [federation.frames[n] for n in two], "breslow")
    for client in recording.values():
        later = rounds_of(client)[1:]
        assert later and all(set(SHARE) <= set(reply["aggregates"]) for _, state, reply in later
                             if state["phase"] == "score")


# --------------------------------------------------------------------------- a curious peer (ADR 0055)


def _open_sums_rounds(federation: Federation, outcome: Any, recording: dict[str, Recording], peer: str,
                      nodes=HOSPITALS) -> list[tuple[int, dict, list[dict]]]:
    """What ``peer`` reads with its own key from every sums round: per round, the state and the part it
    opens from each node's reply (chain from the transcript it was sent next)."""
    from mipflow.secagg.crypto import load_keypair
    from mipflow.secagg.sealing import open_one

    own = load_keypair(federation.roots[peer], create=False)
    keys = {n: load_keypair(federation.roots[n], create=False).public_bytes for n in nodes}
    peer_rounds = recording[peer].rounds
    opened = []
    for k, (round_no, state, _, _) in enumerate(peer_rounds):
        if not k or state["phase"] != "sums":
            continue
        chain = peer_rounds[k + 1][3]["transcript"]["previous"]["chain"]
        parts = []
        for sender in nodes:
            box = recording[sender].rounds[k][2]["aggregates"]["sealed"][peer]
            part = open_one(own, keys[sender], box, analysis_id=outcome.analysis_id, algorithm="cox_regression",
                            chain=chain, round_no=round_no, sender=sender, recipient=peer)
            assert part is not None, (sender, round_no)
            parts.append(part)
        opened.append((round_no, state, parts))
    return opened


def _own_sums(federation: Federation, name: str, outcome: Any, round_no: int, state: dict) -> dict[str, np.ndarray]:
    """The sums node ``name`` sealed in a round, computed from its rows in the clear (the attack's target)."""
    from mipflow.algorithms import get_algorithm, prepare_local_data
    from mipflow.algorithms.packed import unpack
    from mipflow.algorithms.sealed import SEALED

    cox = get_algorithm("cox_regression")
    req = AnalysisRequest.from_dict(outcome.request)
    out = cox.local_step(round_no, prepare_local_data(cox, federation.frames[name], req), req, STROKE, state)
    return {key: unpack(value) for key, value in out[SEALED].items()}


#: more rows per hospital than ``DATA``, so that Cox's bins (each node's counts 0 or >= min_row_count) are many
MANY_BINS = make_stroke(20261214, 3000)


@pytest.fixture(scope="module")
def busy_federation(tmp_path_factory) -> Iterator[Federation]:
    with pinned_federation(tmp_path_factory.mktemp("masked_cox_bins"), MANY_BINS, STROKE,
                           HOSPITALS) as (roots, served, frames):
        yield Federation(roots, served, frames)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_a_peer_opens_only_uniform_parts_of_the_risk_set_sums_whose_sum_is_the_pool(busy_federation, ties) -> None:
    """ADR 0055 (closing ADR 0052's correction to ADR 0046 for Cox): hospital_b, opening with its own key
    every ciphertext sealed to it in every sums round, gets from each node a part in fixed point masked
    in Z/2^256: uniform elements, none near the node's actual per-bin sums (S0, S1, S2, events, and
    Efron's E0..E2, from its rows at the same iterate); only the three parts together decode, to the
    pooled sums.  The fit still equals pooled PHReg."""
    from mipflow.algorithms.sealed import REAL_MASKED_SCHEME, ring_elements
    from mipflow.secagg.sealed_masks import unmask_parts
    from scipy import stats

    federation = busy_federation
    outcome, recording = federation.run(ties)
    assert_equals_pooled(outcome, list(federation.frames.values()), ties)
    opened = _open_sums_rounds(federation, outcome, recording, "hospital_b")
    assert len(opened) == outcome.result["iterations"] + 1 >= 3
    assert len(opened[0][1]["event_bins"]) >= 5  # per-bin sums, not one total
    keys = {"events", "s0", "s1", "s2", *(("e0", "e1", "e2") if ties == "efron" else ())}
    for round_no, state, parts in opened:
        own = {name: _own_sums(federation, name, outcome, round_no, state) for name in HOSPITALS}
        assert set(own["hospital_a"]) == keys
        for name, part in zip(HOSPITALS, parts):
            assert part["scheme"] == REAL_MASKED_SCHEME and {n for n, _ in part["layout"]} == keys
            # the seal carries the vector's bytes as they are (seal scheme v2), 32 per element
            assert isinstance(part["masked"], bytes) and len(part["masked"]) == 32 * sum(
                int(np.prod(shape)) for _, shape in part["layout"])
            elements = np.array([e / 2.0 ** 256 for e in ring_elements(part["masked"])])
            assert stats.kstest(elements, "uniform").pvalue > 1e-4, (name, round_no)
            alone = unmask_parts([part], REAL_MASKED_SCHEME)
            for key, actual in own[name].items():
                # as real numbers a part's elements are of order 2^127: none is within 1e20 of the sum it masks
                assert np.all(np.abs(alone[key] - actual) > 1e20), (name, round_no, key)
        pooled = unmask_parts(parts, REAL_MASKED_SCHEME)
        for key in keys:
            expected = sum(own[name][key] for name in HOSPITALS)
            # (S1 of centred covariates cancels in the pool: compared to the parts' scale there)
            scale = max(np.max(np.abs(own[name][key])) for name in HOSPITALS)
            np.testing.assert_allclose(pooled[key], expected, rtol=1e-12, atol=1e-13 * scale, err_msg=key)
        # hospital_b's own part is of no help either: the pool less it is the sum of the other two only
        partial = unmask_parts([parts[0], parts[2]], REAL_MASKED_SCHEME)
        assert np.all(np.abs(partial["s0"] - (own["hospital_a"]["s0"] + own["hospital_c"]["s0"])) > 1e20)


def test_with_two_nodes_the_sums_are_sealed_unmasked_as_documented(federation) -> None:
    """With 2 participants the pool less a node's own part is its partner's, masked or not (ADR 0055):
    the sums are sealed as they are (packed floats), and the fit is the pooled one."""
    two = HOSPITALS[:2]
    outcome, recording = federation.run("breslow", nodes=two)
    assert_equals_pooled(outcome, [federation.frames[n] for n in two], "breslow")
    opened = _open_sums_rounds(federation, outcome, recording, two[1], nodes=two)
    assert opened
    for _, _, parts in opened:
        assert all("scheme" not in part and {"events", "s0", "s1", "s2"} == set(part) for part in parts)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_rows_on_disk_and_the_frame_give_the_same_masked_fit(federation, ties: str) -> None:
    """ADR 0062, amendment 16: the three nodes answer Cox regression from rows left on disk (``columnar_snapshot``
    1, the default: every round read a chunk at a time) and, the setting turned off at each node, from the SQL
    read's frame: the start and score rounds masked alike, the clear parts of every round (round 0's bins, the sums
    rounds' counts) equal, and the result byte for byte (the pooled sums, sealed and masked in fixed point, were
    the same)."""
    from mipflow.node.home import NodeHome

    disk, disk_seen = federation.run(ties)
    try:
        for root in federation.roots.values():
            NodeHome(root).set_setting("columnar_snapshot", 0)
        frame, frame_seen = federation.run(ties)
    finally:
        for root in federation.roots.values():
            NodeHome(root).set_setting("columnar_snapshot", 1)
    assert disk.secure_aggregation["enabled"] is True and frame.secure_aggregation["enabled"] is True
    assert json.dumps(disk.result, sort_keys=True) == json.dumps(frame.result, sort_keys=True)
    assert_equals_pooled(disk, list(federation.frames.values()), ties)
    for name in HOSPITALS:
        ours, theirs = rounds_of(disk_seen[name]), rounds_of(frame_seen[name])
        assert len(ours) == len(theirs) == disk.rounds
        assert ours[0][2]["aggregates"] == theirs[0][2]["aggregates"]  # the node's bins, in the clear
        for (_, state, reply), (_, _, other) in zip(ours[2:], theirs[2:]):
            if state["phase"] == "sums":
                assert {k: v for k, v in reply["aggregates"].items() if k != "sealed"} == \
                    {k: v for k, v in other["aggregates"].items() if k != "sealed"}
