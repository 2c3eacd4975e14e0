"""ADR 0061 through real node processes: an honest standing analysis across a network-wide withdrawal.

Two standard-mode hospitals (shipped thresholds); a patient of the first withdraws at both.  The standing
analyses (descriptive statistics and PCA with ``exp(glucose)`` on everyone) re-run at once are refused at
both nodes alike, with the same words; after the next nightly load of 60 new rows at each (``min_row_count`` 10, and that many rows in effect), they
are answered at both."""
from __future__ import annotations

from pathlib import Path

import pytest

from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_explore_attacks import Served
from tests.privacy.test_redteam_round13 import AUDIT, EXP, PCA_VARIABLES, glucose_rows, request, typed, withdraw

pytestmark = pytest.mark.xdist_group("consent_epochs")


def test_a_standing_analysis_is_answered_alike_after_a_withdrawal_and_the_next_load(tmp_path: Path) -> None:
    plan = {"holder": ("hospital_a", 31), "other": ("hospital_b", 32)}
    served, frames = {}, {}
    roots, credentials = {}, {}
    for name, (hospital, seed) in plan.items():
        roots[name] = tmp_path / name
        home = standard_home(roots[name], hospital)
        pseudonyms = Pseudonymiser(home.key())
        frame = glucose_rows(seed, 260, hospital, name[:2])
        frame = frame.assign(pid=[pseudonyms.pseudonym(p) for p in frame["subjectcode"]])
        frames[name] = frame
        load_frame(roots[name], STROKE, frame.iloc[:200], pid_column="pid")
        grant_all(roots[name], researcher="*", project=AUDIT)
        credentials[name] = issue_client(roots[name], "central")
    with running_nodes(list(roots.values())) as urls:
        served = {name: Served(url, credentials[name], roots[name], frames[name]) for name, url in zip(roots, urls)}

        def standing() -> dict[str, tuple]:
            out = {}
            for name, node in served.items():
                hospital = plan[name][0]
                stats = node.call("descriptive_stats", request(["age", "nihss_admission"], datasets=[hospital]),
                                  project=AUDIT)
                pca = node.call("pca_with_transformation", request(PCA_VARIABLES, datasets=[hospital], **EXP),
                                project=AUDIT)
                out[name] = (typed(stats), typed(pca),
                             {k: v for k, v in stats.json().items() if k != "node"} if stats.status_code == 403 else None)
            return out

        assert standing() == {name: ((200, None), (200, None), None) for name in served}
        person = frames["holder"]["subjectcode"].iloc[100]
        assert {name: withdraw(roots[name], [person, "someone-never-treated"]) for name in served} == \
            {"holder": 1, "other": 0}
        at_once = standing()
        assert {name: outcome[:2] for name, outcome in at_once.items()} == \
            {name: ((403, "differencing"), (403, "differencing")) for name in served}
        assert at_once["holder"][2] == at_once["other"][2] and "consent registry" in str(at_once["other"][2])
        for name in served:  # the next nightly load: 60 new patients at each (ADR 0058: min_row_count rows in effect under exp(2 glucose) too)
            assert load_frame(roots[name], STROKE, frames[name].iloc[200:], pid_column="pid") == 60
        assert standing() == {name: ((200, None), (200, None), None) for name in served}
