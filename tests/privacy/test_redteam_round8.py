"""An eighth outside review: sealed Cox rounds (ADR 0046) against a hostile central site, from the documents only.

The reviewer read ADR 0046, 0029, 0014, 0027, docs/privacy.md and the README's Cox section, and the
test harness; not ``secagg/sealing.py``, ``algorithms/sealed.py`` nor ``cox_regression.py``.  The
attacker is the central site (the central's credentials, its choice of requests and participants;
no node's X25519 key).  The node runs ``mipflow node serve`` with the shipped settings except that
its admin answers the project in **standard** mode (``standard_home``: Cox regression is not answered
in explore mode, the default); budgets, ``nfilter_tab`` 3, ``min_row_count`` 10 and the differencing
control are the shipped ones.

``test_defence_*`` check a control that held or, for item 1, the control added after the review.

Found:

1. **A ``max_time`` sweep of honest one-node Cox analyses turns the node's per-iterate score and
   information at ``b = 0`` into per-bin sums** (closed since: ``test_defence_a_max_time_sweep_*``;
   Cox's bins now hold at least ``min_row_count`` events and censorings, so the per-bin sums cover as
   many deaths as a cohort has rows).  ADR 0046 argues
   that ``l_i, U_i, I_i`` are sums over all event bins, so "no per-bin system is formed".  But every
   analysis starts at ``b = 0`` and ``max_time`` (admitted at any released bin end, ADR 0008) drops
   the bins after it without changing the risk sets before it.  The central site asks one Breslow
   analysis per event bin end (21 analyses, within the shipped query budget of 100) and reads round
   2's reply (the score round at ``b = 0``).  Consecutive differences give, per event bin ``j`` with
   ``d_j`` deaths and ``n_j`` at risk (both released as counts): ``dU_j = X_j - d_j S1_j / n_j`` and
   ``dI_j = d_j (S2_j / n_j - m_j m_j')``.  Round 0 releases the node's covariate moments (``n``,
   mean, ``M2``), i.e. ``S1`` of the first risk set; where no one is censored between two event bins
   (a 90-day mortality registry: survivors are followed beyond 90 days) ``S1_{j+1} = S1_j - X_j``,
   so the chain gives every bin's sum of the deaths' covariates ``X_j`` and the risk-set sums
   ``S1_j, S2_j``, hence the deaths' sums of squares and cross products ``S2_j - S2_{j+1}``: the
   system of the sixth review's hole B, per bin, for the central site.  In bins of 3 deaths the
   integer ages and NIHSS of each death (and the day bin of death) come out exactly.
   *Control that should stop it*: a node should answer one end of follow-up per cohort for Cox (a
   remembered ``max_time`` per cohort, as study mode fixes the survival grid), or treat the
   sealed-round releases of one cohort under different ``max_time`` as a differencing family; the
   counts' cut rule (ADR 0008) does not cover ``l, U, I``.

Tried and held (``test_defence_*``):

2. Efron's ties as the second equation per bin: at ``b = 0`` Efron's score per bin is exactly
   ``1 + sum_k (k/d)/(n-k)`` times Breslow's (because ``sum_k 1/(n-k) = (d/n)(1 + sum_k (k/d)/(n-k))``
   identically, k = 0..d-1), so it adds no equation for ``X_j`` and ``S1_j`` (the attack above uses
   the round-0 moments and a registry without censoring between event bins instead).  Not a
   control, arithmetic: asserted in the hole's test.
3. Ciphertext length: over the whole sweep every sealed box is exactly as long as the same document
   of zeros of the same shapes (float64 packing; read in ``algorithms/packed.py`` after the attack),
   a function of the number of event bins and p, which the counts release anyway: no data in the
   length (checked inside the hole's test, ``sizes``).
4. The same node twice under two names (one public key for two participants): refused at round 0
   by the request check (``test_defence_the_same_node_under_two_names_is_refused``).
"""
from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeEndpoint, NodeRefused
from mipflow.central.rounds import run_analysis
from mipflow.algorithms.packed import pack
from mipflow.protocol.signing import issue_client
from mipflow.secagg.sealing import NONCE_BYTES, plaintext
from mipflow.secagg.transcript import TRANSCRIPT_SCHEME
from tests.mipflow.algorithms.survival_data import STROKE
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_redteam_round6 import Recording, death_registry
from tests.privacy.test_study_attacks import request_of

pytestmark = pytest.mark.xdist_group("redteam_round8")

NODE = "hospital_a"
PROJECT = "stroke-outcomes-2027"
COLUMNS = ("age", "nihss_admission")
P = len(COLUMNS)


def registry() -> pd.DataFrame:
    frame = death_registry()
    frame["dataset"] = NODE
    return frame


def node(root: Path, frame: pd.DataFrame) -> Path:
    standard_home(root, NODE)  # shipped settings, the project answered in standard mode
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project=PROJECT)
    return root


def cox(client: Recording, ties: str, max_time: float | None) -> tuple[dict, dict, dict]:
    """One honest one-node Cox analysis (bin width 1 day); the central site keeps round 0's reply with the
    start round's (ADR 0055 amendment: rows, level counts, moments; one node, so in the clear) and round 3's
    state and reply (the score round at b = 0)."""
    client.rounds.clear()
    parameters: dict[str, Any] = {"event_level": "yes", "bin_width": 1.0, "ties": ties}
    if max_time is not None:
        parameters["max_time"] = max_time
    run_analysis("cox_regression", request_of(y=("followup_days", "death_90d"), x=COLUMNS, datasets=[NODE],
                                              **parameters), [client], researcher="mallory", project=PROJECT)
    (_, _, zero, _), (_, start_state, start, _), (_, sums_state, sums, _), (_, state, score, _) = client.rounds[:4]
    assert start_state["phase"] == "start" and sums_state["phase"] == "sums" and state["phase"] == "score"
    assert state["coefficients"] == [0.0] * P
    return ({**zero["aggregates"], **start["aggregates"]}, state,
            {"sealed": sums["aggregates"]["sealed"], **score["aggregates"]})


def symmetric(packed) -> np.ndarray:
    out = np.zeros((P, P))
    out[np.triu_indices(P)] = packed
    return out + np.triu(out, 1).T


def test_defence_a_max_time_sweep_of_cox_scores_reaches_no_bin_of_fewer_than_min_row_count_deaths(tmp_path) -> None:
    """Item 1, closed: the central site reads one node's ``U, I`` at ``b = 0`` (round 3) of honest Cox
    analyses cut at each event bin end (``max_time``), and the start round's covariate moments.  Before the
    fix it recovered each event bin's sums, squares and cross products of the deaths' age and NIHSS
    exactly, and the integer covariates of every death in the bins of 3.  Now Cox regression's bins
    hold 0 or at least ``min_row_count`` events and censorings (``bin_count_setting``, ADR 0046
    "requester-shaped bins"): the same sweep and chain still give each bin's sums, but every bin's
    are over at least ``min_row_count`` deaths, what a descriptive statistic of a cohort releases."""
    frame = registry()
    root = node(tmp_path / "node", frame)
    credential = issue_client(root, "central")
    with running_nodes([root]) as urls:
        client = Recording(NodeEndpoint(NODE, urls[0], credential.client_id, credential.secret.hex()), retries=0)
        try:
            zero, _, _ = cox(client, "breslow", None)  # the released bins and counts, the moments (round 1)
            ends = zero["ends"]
            events, censored = np.asarray(zero["events"]), np.asarray(zero["censored"])
            event_bins = [j for j in range(len(events)) if events[j] > 0]
            seen = {j: cox(client, "breslow", float(ends[j])) for j in event_bins}  # 20 analyses more
            # Efron at b = 0 is a multiple of Breslow bin by bin: its score adds no equation (item 2)
            _, _, efron = cox(client, "efron", float(ends[event_bins[0]]))
        finally:
            client.close()

    j0 = event_bins[0]
    d0, n0 = int(events[j0]), zero["n"]
    k = np.arange(d0)
    factor = 1 + np.sum((k / d0) / (n0 - k))
    np.testing.assert_allclose(efron["score"], factor * np.asarray(seen[j0][2]["score"]), rtol=1e-10)

    # sizes (item 3): every box is as long as the same document of zeros of the same shapes (fixed-width
    # float64 packing): its length depends on the number of event bins and p only, which the counts release
    def predicted(bins: int) -> int:
        zeros = {"events": pack(np.zeros(bins), ""), "s0": pack(np.zeros(bins), ""),
                 "s1": pack(np.zeros((bins, P)), ""), "s2": pack(np.zeros((bins, P * (P + 1) // 2)), "")}
        return len(base64.b64encode(bytes(NONCE_BYTES + 16) + plaintext(zeros)))

    sizes = [(len(state["event_bins"]), len(reply["sealed"][NODE])) for _, state, reply in seen.values()]
    assert len({bins for bins, _ in sizes}) == len(sizes) >= 3
    assert all(size == predicted(bins) for bins, size in sizes), sizes

    # the attack: differences of consecutive cuts, chained from the start round's moments
    moments = zero["moments"]
    s1 = moments["n"] * np.asarray(moments["mean"])  # sum of the covariates over the first risk set
    gone = np.concatenate([[0], np.cumsum(events + censored)[:-1]])
    previous_u, previous_i = np.zeros(P), np.zeros((P, P))
    per_bin: dict[int, dict[str, Any]] = {}
    for j in event_bins:
        assert gone[j] == events[:j].sum()  # nobody censored before this bin (the registry's design)
        d, n = int(events[j]), zero["n"] - int(gone[j])
        u, i = np.asarray(seen[j][2]["score"]), symmetric(seen[j][2]["information"])
        du, di = u - previous_u, i - previous_i
        previous_u, previous_i = u, i
        deaths = du + d / n * s1
        m = s1 / n
        per_bin[j] = {"d": d, "sum": deaths, "s2": (di / d + np.outer(m, m)) * n}
        s1 = s1 - deaths
    for a, b in zip(event_bins, event_bins[1:]):
        per_bin[a]["products"] = per_bin[a]["s2"] - per_bin[b]["s2"]

    # the truth: each death's bin on the released timeline
    times = frame["followup_days"].to_numpy(dtype=float)
    dead = (frame["death_90d"] == "yes").to_numpy()
    where = np.searchsorted(np.asarray(ends, dtype=float), times, side="left")
    tab, rows_min = 3, 10  # the shipped nfilter_tab and min_row_count
    assert all(v == 0 or v >= rows_min for v in (*events, *censored)), (events, censored)
    for j, found in per_bin.items():
        rows = frame.loc[(where == j) & dead, list(COLUMNS)].to_numpy(dtype=float)
        assert len(rows) == found["d"] >= rows_min > tab  # no bin of 3 deaths to enumerate any more
        np.testing.assert_allclose(found["sum"], rows.sum(axis=0), rtol=0, atol=1e-6)
        if "products" in found:
            np.testing.assert_allclose(found["products"], rows.T @ rows, rtol=0, atol=1e-5)
    assert len(per_bin) >= 3 and sum(f["d"] for f in per_bin.values()) == int(dead.sum())


def test_defence_the_same_node_under_two_names_is_refused(tmp_path) -> None:
    """Two participants with one public key (the node called twice under two names, e.g. to make a
    two-node analysis of one node's data, or to double its sealed sums): refused at round 0."""
    root = node(tmp_path / "node", registry())
    credential = issue_client(root, "central")
    request = request_of(y=("followup_days", "death_90d"), x=COLUMNS, datasets=[NODE], event_level="yes",
                         bin_width=7.0)
    with running_nodes([root]) as urls:
        client = Recording(NodeEndpoint(NODE, urls[0], credential.client_id, credential.secret.hex()), retries=0)
        try:
            key = client.secagg_key()["public_key"]
            transcript = {"scheme": TRANSCRIPT_SCHEME, "previous": None,
                          "participants": [{"node": NODE, "public_key": key}, {"node": "hospital_a2", "public_key": key}]}
            with pytest.raises(NodeRefused) as err:
                client.step("cox_regression", request, 0, None, researcher="mallory", project=PROJECT,
                            analysis_id=uuid.uuid4().hex, transcript=transcript)
        finally:
            client.close()
    assert err.value.status == 400 and "one public key for two nodes" in err.value.reason, err.value.reason
