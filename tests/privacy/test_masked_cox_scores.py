"""Cox regression's score rounds under secure aggregation (ADR 0048), through three real node processes.

Since ADR 0046 the per-bin risk-set sums of a Cox analysis reach the nodes only; what each node
still sent the central site in the clear, at every Newton iterate, was its own share of the log
partial likelihood, score and information (``l_i``, ``U_i``, ``I_i``).  With secure aggregation on
(automatic from 3 nodes) the score rounds are masked with the pairwise masks of ADR 0014: the
central site, recording every reply, holds ring elements, each far from the node's actual share
(taken from the same analysis run in the clear), and only their sum, the pooled ``l``, ``U``,
``I``, decodes.  Round 0 (each node's own bins, whose ends the central site intersects) and the
"sums" rounds (counts beside ciphertexts) travel as before.  The result equals statsmodels PHReg on
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
def test_three_nodes_mask_the_score_rounds_and_equal_pooled_phreg(federation, ties: str) -> None:
    outcome, recording = federation.run(ties)
    assert outcome.secure_aggregation["enabled"] is True and outcome.secure_aggregation["mode"] == "auto-on"
    assert sorted(outcome.secure_aggregation["participants"]) == sorted(HOSPITALS)
    assert outcome.contributed == {n: len(federation.frames[n].dropna(subset=["followup_days", "death_90d", *X]))
                                   for n in HOSPITALS} and not outcome.excluded
    assert outcome.rounds == 1 + 2 * (outcome.result["iterations"] + 1)
    assert_equals_pooled(outcome, list(federation.frames.values()), ties)
    for name, client in recording.items():
        seen = rounds_of(client)
        assert len(seen) == outcome.rounds
        # round 0 as before: the node's own bins in the clear (the central site intersects their ends)
        assert {"ends", "events", "censored", "moments"} <= set(seen[0][2]["aggregates"])
        for round_no, state, reply in seen[1:]:
            aggregates = reply["aggregates"]
            if state["phase"] == "sums":  # as before: counts, and the sums sealed to the three nodes
                assert set(aggregates) == {"n", "n_events", "group_counts", "sealed"}
                assert set(aggregates["sealed"]) == set(HOSPITALS)
            else:
                assert set(aggregates) == {"secure_aggregation"}, (name, round_no)
    # each node's audit record says which rounds it masked: the score rounds, not round 0 or the sums rounds
    audit = [json.loads(line) for line in (federation.roots["hospital_a"] / AUDIT_FILE).read_text().splitlines()]
    last = [r for r in audit if r.get("decision") == "allowed"][-outcome.rounds:]
    assert [r.get("round") for r in last] == list(range(outcome.rounds))
    assert [r.get("secure_aggregation") for r in last] == ["clear_round", *["clear_round", True] * (
        (outcome.rounds - 1) // 2)]


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
