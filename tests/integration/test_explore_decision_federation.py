"""Explore-mode Kaplan-Meier answers reliably at nodes that clearly hold enough rows (ADR 0032, the decision
count), over three real node processes.

The thirteenth outside review saw a node of 60 patients left out of about 5 in 12 explore Kaplan-Meier
attempts: ``min_row_count`` was decided on the sum of the release's noisy cells (a weekly grid over the
declared ten years: 1046 cells, an sd of about 46 rows).  Here two nodes hold 60 patients each and one
holds 5, under the shipped settings (``min_row_count`` 10, epsilon 1 per step).  Twenty weekly steps over
the whole declared range at each node, each a distinct release (``max_time`` one day apart: fresh noise,
the same long grid): the 60-patient nodes answer every one (their refusal rate is about 1e-7 a step: at
most 0 in 40 at a false alarm of 1e-4; on the old by-product about one in eight, and 0 in 40 had
probability 0.005); the 5-patient node is refused as often as the decision count's law says, for
``min_row_count``, in words that state no number.  Federated analyses (a one-year grid) say which node was
left out and why, and every answered node's label states the decision.

Over the whole ten-year grid without ``max_time`` the *central* Kaplan-Meier used to start its at-risk counts
from the sum of every noisy cell (sd about 65 rows a node at the release's epsilon), so a pooled 120 patients
came out with nobody at risk in several percent of analyses, which failed.  Each node now carries its decision
count in the aggregates (the reply's ``rows``, nothing new) and the central side anchors the totals to it:
honest analyses without ``max_time`` at the two 60-patient nodes all succeed, labelled.
"""
from __future__ import annotations

import functools
from typing import Iterator

import pytest
from scipy import stats

from mipflow.algorithms.survival_noise import ROW_COUNT_KEY
from mipflow.central.report.readable import result_warnings
from mipflow.central.rounds import run_analysis as _run_analysis
from mipflow.exceptions import MipflowError
from mipflow.node.controls import modes
from mipflow.node.controls.explore_decision import decision_split, false_refusal_rate
from mipflow.node.home import NodeHome
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import PROJECT, stroke_rows
from tests.nodes import grant_all, load_frame, pin_each_other, served_clients

pytestmark = pytest.mark.xdist_group("federation")

SIZES = {"hospital_a": 60, "hospital_b": 60, "hospital_c": 5}
RESEARCHER = "honest"
ANALYSES = 20
FALSE_ALARM = 1e-4
run_analysis = functools.partial(_run_analysis, researcher=RESEARCHER, project=PROJECT, min_nodes=2,
                                 secure_aggregation=False)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("explore-decision")
    roots = {}
    for i, (hospital, n) in enumerate(SIZES.items()):
        roots[hospital] = base / hospital
        home = NodeHome.init(roots[hospital], hospital)  # the shipped settings
        for budget in ("explore_budget_epsilon", "explore_project_budget_epsilon"):
            home.set_setting(budget, 4.0 * ANALYSES)  # the steps below, with room
        load_frame(roots[hospital], STROKE, stroke_rows(700 + i, n, hospital, f"{hospital}-p"))
        grant_all(roots[hospital], researcher=RESEARCHER, project=PROJECT)
        modes.enable(roots[hospital], PROJECT)
    pin_each_other(roots)
    with served_clients(roots) as clients:
        yield clients


def km_request(datasets, max_time: float | None, bin_width: float = 7.0) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": list(datasets), "x": [],
                          "y": ["followup_days", "death_90d"], "filters": None},
            "parameters": {"event_level": "yes", "bin_width": bin_width, "max_time": max_time}}


def test_sixty_patient_nodes_answer_every_weekly_step_over_the_declared_range(federation):
    split = decision_split("laplace", 1.0, 0.0, 10)
    refused: dict[str, int] = {h: 0 for h in SIZES}
    reasons = set()
    for hospital, client in federation.items():
        for k in range(ANALYSES):
            try:
                reply = client.step("kaplan_meier", km_request([hospital], 3650.0 - k), 0, None,
                                    researcher=RESEARCHER, project=PROJECT)
            except MipflowError as refusal:
                refused[hospital] += 1
                assert getattr(refusal, "control", None) == "min_row_count", refusal
                reasons.add(str(refusal))
                continue
            assert reply["rows"] >= 10 and len(reply["aggregates"]["groups"][0]["events"]) >= 520
            decision = reply["privacy"]["decision"]
            assert decision["threshold"] == 10 and decision["sd"] == pytest.approx(split.count_sd)
            assert decision["false_refusal"] == {"rows": 30, "at_most": pytest.approx(1e-3)}
    for hospital in ("hospital_a", "hospital_b"):
        rate = false_refusal_rate("laplace", split.count_scale, 60, 10)
        assert refused[hospital] <= stats.binom.isf(FALSE_ALARM, ANALYSES, rate) == 0, refused
    rate = false_refusal_rate("laplace", split.count_scale, 5, 10)
    low, high = stats.binom.ppf(FALSE_ALARM / 2, ANALYSES, rate), stats.binom.isf(FALSE_ALARM / 2, ANALYSES, rate)
    assert low <= refused["hospital_c"] <= high, refused
    assert len(reasons) == 1  # the same words for every refusal, and no number of the rows in them
    assert all("noisy row count" in r and not any(c.isdigit() for c in r.replace("min_row_count (10)", ""))
               for r in reasons), reasons


def test_an_analysis_says_which_node_was_left_out_and_why(federation):
    clients = list(federation.values())
    left_out = 0
    for k in range(6):  # the 5-patient node is answered with probability 0.13 each time: left out at least once
        outcome = run_analysis("kaplan_meier", km_request(SIZES, 364.0 - k), clients)
        assert {"hospital_a", "hospital_b"} <= set(outcome.contributed)
        for name, label in outcome.result["privacy"]["noisy_nodes"].items():
            assert label["decision"]["sd"] == pytest.approx(decision_split("laplace", 1.0, 0.0, 10).count_sd)
            assert outcome.contributed[name] >= 10  # the noisy count the node was decided on
        if "hospital_c" in outcome.excluded:
            left_out += 1
            reason = outcome.excluded["hospital_c"]
            assert reason.startswith("refused (min_row_count): fewer rows match than min_row_count (10)"), reason
            assert "explore mode: decided on a noisy row count" in reason
        else:
            assert set(outcome.contributed) == set(SIZES)
    assert left_out >= 1


def test_honest_kaplan_meier_without_max_time_over_the_declared_ten_years_succeeds_labelled(federation):
    """Issue 14 item 7: weekly-ish Kaplan-Meier over the whole declared range (no max_time) at the two
    60-patient nodes, five distinct releases (bin widths 7 to 11 days: fresh noise each).  Every node carries
    its decision count (the reply's rows and the label's sd) in the aggregates; every analysis succeeds with a
    curve that starts near the pooled 120 rows, says both nodes anchored it and is labelled perturbed."""
    split = decision_split("laplace", 1.0, 0.0, 10)
    reply = federation["hospital_a"].step("kaplan_meier", km_request(["hospital_a"], None), 0, None,
                                          researcher=RESEARCHER, project=PROJECT)
    assert reply["aggregates"][ROW_COUNT_KEY] == {"count": reply["rows"], "sd": pytest.approx(split.count_sd)}
    assert reply["privacy"]["decision"]["sd"] == pytest.approx(split.count_sd)  # the sd was already stated
    clients = [federation["hospital_a"], federation["hospital_b"]]
    for width in (7.0, 8.0, 9.0, 10.0, 11.0):
        outcome = run_analysis("kaplan_meier", km_request(["hospital_a", "hospital_b"], None, width), clients)
        assert set(outcome.contributed) == {"hospital_a", "hospital_b"}, outcome.excluded
        result = outcome.result
        assert "max_time" not in result["binning"] and result["binning"]["grid_points"] > 300
        (curve,) = result["curves"]
        assert abs(curve["at_risk"][0] - 120) <= 5 * 2 * split.count_sd  # two counts of sd 4.7
        assert result["noise"]["decision_counts"] == 2 and result["noise"]["warnings"] == []
        assert result["noise"]["approximate"] is True and "decision count" in result["noise"]["note"]
        kinds = {w.kind for w in result_warnings({"result": result})}
        assert "noise" in kinds and "approximate" in kinds
