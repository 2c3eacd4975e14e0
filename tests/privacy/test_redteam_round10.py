"""Tenth outside review: groups released with their moments (ADR 0050's class), attacked from the documents.

ADR 0050 holds every group released with its count, mean and spread (t-test groups, ANOVA cells, Gaussian
naive Bayes classes, descriptive statistics per dataset) to ``min_row_count``.  The privacy table reads
"closed for groups under ``min_row_count``"; the ADR's amendment says the difference of two nested cohorts'
groups is stopped *in a study*.  These attacks run through a real node process (``mipflow node serve``).
The two ``test_hole_*`` of the review (they recovered the values) are ``test_defence_*`` since ADR 0051.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_explore_attacks import Served

pytestmark = pytest.mark.xdist_group("redteam_round10")

NODE = "hospital_a"
#: NIHSS of the three young TIA patients (what the attack must not get back)
TARGETS = [7.0, 19.0, 31.0]


def registry(seed: int = 10, n: int = 300) -> pd.DataFrame:
    """Stroke rows: 13 TIA patients (a group of ``min_row_count`` and more); 3 of them are under 25 (ages 20-22,
    NIHSS 7, 19, 31), beside 7 other patients under 25, so that "age >= 25" drops exactly 10 rows."""
    frame = stroke_rows(seed, n, NODE, "r10")
    rng = np.random.default_rng(seed)
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    frame["age"] = rng.integers(30, 90, n).astype(float)
    frame["stroke_type"] = np.where(np.arange(n) % 2 == 0, "ischaemic", "haemorrhagic")
    frame.loc[frame.index[:13], "stroke_type"] = "tia"
    frame.loc[frame.index[:3], "nihss_admission"] = TARGETS
    frame.loc[frame.index[:3], "age"] = [20.0, 21.0, 22.0]
    frame.loc[frame.index[13:20], "age"] = 23.0  # seven other young patients (the cohorts differ by 10 rows)
    return frame


def severity_node(root, frame: pd.DataFrame):
    """A standard-mode node at ``root`` holding ``frame``, every researcher granted project "severity";
    the central site's credential."""
    standard_home(root, NODE)
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="severity")
    return issue_client(root, "central")


def ttest(filters=None) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": ["stroke_type"],
                          "y": ["nihss_admission"], "filters": filters},
            "parameters": {"groupA": "tia", "groupB": "ischaemic"}}


def moments(group: dict) -> tuple[int, float, float]:
    """(n, sum, sum of squares) of a released group."""
    n, mean, m2 = int(group["n"]), float(group["mean"][0]), float(group["m2"][0])
    return n, n * mean, m2 + n * mean * mean


def no_data_number(message: str, min_row_count: int = 10) -> bool:
    """The refusal names its setting's value at most: no other number (a size would be the leak)."""
    return set(re.findall(r"\d+", message)) <= {str(min_row_count)}


def test_defence_two_t_tests_whose_groups_differ_by_three_patients_are_refused_in_standard_mode(tmp_path) -> None:
    """Was ``test_hole_*`` (tenth review): two t-tests, each TIA group of ``min_row_count`` rows or more (13, then
    10), on cohorts 10 rows apart.  Group A's difference would be 3 rows whose (n, sum, sum of squares) solve.
    Now the second is refused (control ``differencing``, ADR 0051): the union of its groups is a cohort of the
    ledger and its groups are compared with the same groups released before; the message names the setting only."""
    root = tmp_path / "node"
    frame = registry()
    credential = severity_node(root, frame)
    with running_nodes([root]) as (url,):
        node = Served(url, credential, root, frame)
        whole = node.call("ttest_independent", ttest(), project="severity")
        older = node.call("ttest_independent", ttest(where(rule("age", "greater_or_equal", 25))),
                          project="severity")
        again = node.call("ttest_independent", ttest(), project="severity")
    assert whole.status_code == 200, whole.text
    assert whole.json()["aggregates"]["a"]["n"] == 13
    assert older.status_code == 403, older.text
    refusal = older.json()
    assert refusal["control"] == "differencing"
    assert "aggregates" not in refusal
    assert no_data_number(older.text)
    assert again.status_code == 200, again.text  # the same groups again: nothing new, answered
    assert again.json()["aggregates"] == whole.json()["aggregates"]


def test_defence_a_t_test_leaving_a_small_level_out_is_refused_before_or_after_descriptive_statistics(
        tmp_path) -> None:
    """Was ``test_hole_*`` (tenth review): a t-test between the two large levels (149 and 148 rows) beside
    descriptive statistics of the same rows (300) would give the third level's 3 rows by subtraction.  Now a
    release holds its cohort's rows outside its groups to 0 or ``min_row_count`` (control ``differencing``), in
    either order; the same t-test on the two levels' rows only (a filter) is answered when nothing closer was."""
    from tests.privacy.test_group_moments_attacks import rare_level_registry

    frame = rare_level_registry()
    large = ttest()
    large["parameters"] = {"groupA": "haemorrhagic", "groupB": "ischaemic"}
    stats = {"inputdata": {**large["inputdata"], "x": []}, "parameters": {}}
    two_levels = {**large, "inputdata": {**large["inputdata"], "filters": where(
        rule("stroke_type", "in", ["haemorrhagic", "ischaemic"]))}}
    replies = {}
    for order in ("ttest_first", "stats_first"):
        root = tmp_path / order
        credential = severity_node(root, frame)
        with running_nodes([root]) as (url,):
            node = Served(url, credential, root, frame)
            if order == "stats_first":
                replies["stats", order] = node.call("descriptive_stats", stats, project="severity")
            replies["groups", order] = node.call("ttest_independent", large, project="severity")
            replies["two_levels", order] = node.call("ttest_independent", two_levels, project="severity")
            if order == "ttest_first":
                replies["stats", order] = node.call("descriptive_stats", stats, project="severity")
    for order in ("ttest_first", "stats_first"):
        refused = replies["groups", order]
        assert refused.status_code == 403, refused.text
        assert refused.json()["control"] == "differencing"
        assert "levels" in refused.text and no_data_number(refused.text)
    # the honest way: the t-test on the two levels' rows (297), answered when nothing 1-9 rows away was ...
    honest = replies["two_levels", "ttest_first"]
    assert honest.status_code == 200, honest.text
    assert {honest.json()["aggregates"][k]["n"] for k in ("a", "b")} == {148, 149}
    # ... and then the whole cohort's statistics (300 rows, 3 from it) are refused, as is the reverse order
    assert replies["stats", "stats_first"].status_code == 200, replies["stats", "stats_first"].text
    for late in (replies["stats", "ttest_first"], replies["two_levels", "stats_first"]):
        assert late.status_code == 403 and late.json()["control"] == "differencing", late.text
        assert no_data_number(late.text)


def test_defence_descriptive_statistics_with_three_rows_missing_a_second_variable_are_refused(tmp_path) -> None:
    """Tried and stopped: descriptive statistics of NIHSS beside age, with age missing for the 3 TIA patients,
    would release NIHSS over the rows holding it (300) and over the complete cases (297); their difference is
    3 rows.  The differencing control sees the two row sets of one answer and refuses (control
    ``differencing``)."""
    from tests.privacy.test_group_moments_attacks import rare_level_registry

    root = tmp_path / "node"
    standard_home(root, NODE)
    frame = rare_level_registry()
    frame.loc[frame.index[:3], "age"] = np.nan
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="severity")
    credential = issue_client(root, "central")
    request = {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": [],
                             "y": ["nihss_admission", "age"], "filters": None}, "parameters": {}}
    with running_nodes([root]) as (url,):
        reply = Served(url, credential, root, frame).call("descriptive_stats", request, project="severity")
    assert reply.status_code == 403, reply.text
    assert reply.json()["control"] == "differencing"


def test_defence_a_study_whose_subgroups_combine_to_three_patients_of_a_group_is_not_approved(tmp_path) -> None:
    """Tried and stopped: subgroups women, elderly and elderly women; TIA cells of 10 in each of the four
    sex-by-age corners but the young men (3).  Every cell and every nested difference holds 10 or more, but
    whole - women - elderly + elderly women is the 3 young men; approval's combination check refuses."""
    from mipflow.exceptions import ConfigError
    from mipflow.node.controls import study_approval
    from mipflow.node.home import NodeHome
    from tests.mipflow.node.controls.study_helpers import protocol

    n = 300
    frame = registry(n=n)
    rng = np.random.default_rng(4)
    frame["sex"] = np.where(rng.random(n) < 0.5, "F", "M")
    frame["age"] = rng.integers(30, 90, n).astype(float)
    frame["stroke_type"] = np.where(np.arange(n) % 2 == 0, "ischaemic", "haemorrhagic")
    idx = frame.index
    frame.loc[idx[:33], "stroke_type"] = "tia"  # 10 + 10 + 10 + 3
    for start, sex, age in ((0, "F", 70.0), (10, "F", 40.0), (20, "M", 70.0), (30, "M", 40.0)):
        frame.loc[idx[start:start + (3 if start == 30 else 10)], ["sex", "age"]] = [sex, age]
    root = tmp_path / "node"
    home = NodeHome.init(root, NODE)
    load_frame(root, STROKE, frame)
    elderly, women = rule("age", "greater_or_equal", 65), rule("sex", "equal", "F")
    document = protocol(datasets=[NODE], variables=["age", "sex", "stroke_type", "nihss_admission"],
                        subgroups=[{"name": "elderly", "filter": where(elderly)},
                                   {"name": "women", "filter": where(women)},
                                   {"name": "elderly_women", "filter": where(elderly, women)}],
                        algorithms=["ttest_independent"])
    document.pop("survival")
    with pytest.raises(ConfigError) as refused:
        study_approval.approve(home, "severity", document)
    assert "isolate 3 row(s)" in str(refused.value)
