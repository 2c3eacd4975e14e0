"""Tenth outside review: groups released with their moments (ADR 0050's class), attacked from the documents.

ADR 0050 holds every group released with its count, mean and spread (t-test groups, ANOVA cells, Gaussian
naive Bayes classes, descriptive statistics per dataset) to ``min_row_count``.  The privacy table reads
"closed for groups under ``min_row_count``"; the ADR's amendment says the difference of two nested cohorts'
groups is stopped *in a study*.  These attacks run through a real node process (``mipflow node serve``).
``test_hole_*`` pass while the hole is open (they recover the values the controls should protect).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_explore_attacks import Served
from tests.privacy.test_group_moments_attacks import solve_triples

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


def ttest(filters=None) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": ["stroke_type"],
                          "y": ["nihss_admission"], "filters": filters},
            "parameters": {"groupA": "tia", "groupB": "ischaemic"}}


def moments(group: dict) -> tuple[int, float, float]:
    """(n, sum, sum of squares) of a released group."""
    n, mean, m2 = int(group["n"]), float(group["mean"][0]), float(group["m2"][0])
    return n, n * mean, m2 + n * mean * mean


def test_hole_two_passing_t_tests_isolate_three_patients_of_a_group_in_standard_mode(tmp_path) -> None:
    """Two t-tests, each releasing a TIA group of ``min_row_count`` rows or more (13, then 10), on cohorts 10
    rows apart (the differencing ledger's threshold is met): the difference of group A's (n, sum, sum of
    squares) is 3 rows' moments, solved as ADR 0050's review solved a cluster of 3."""
    root = tmp_path / "node"
    standard_home(root, NODE)
    frame = registry()
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="severity")
    credential = issue_client(root, "central")
    with running_nodes([root]) as (url,):
        node = Served(url, credential, root, frame)
        whole = node.call("ttest_independent", ttest(), project="severity")
        older = node.call("ttest_independent", ttest(where(rule("age", "greater_or_equal", 25))),
                          project="severity")
    assert whole.status_code == 200, whole.text
    assert older.status_code == 200, older.text
    n1, s1, q1 = moments(whole.json()["aggregates"]["a"])
    n2, s2, q2 = moments(older.json()["aggregates"]["a"])
    n = n1 - n2
    assert n == 3 and n2 >= 10
    mean, m2 = (s1 - s2) / n, (q1 - q2) - (s1 - s2) ** 2 / n
    assert solve_triples(n, mean, m2) == [tuple(int(v) for v in TARGETS)]


def test_hole_a_t_test_of_the_two_large_groups_beside_descriptive_statistics_gives_the_rare_group(tmp_path) -> None:
    """One cohort, no filter: a t-test between the two large levels (149 and 148 rows, both pass) and descriptive
    statistics of the same rows (300, passes) release every group but the third level (3 TIA patients); the
    whole minus the two groups is the rare group's (n, sum, sum of squares).  The same rows, so the differencing
    ledger sees one cohort; no released group is under ``min_row_count``; the complement group is."""
    from tests.privacy.test_group_moments_attacks import RARE, rare_level_registry

    root = tmp_path / "node"
    standard_home(root, NODE)
    frame = rare_level_registry()
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="severity")
    credential = issue_client(root, "central")
    large = ttest()
    large["parameters"] = {"groupA": "haemorrhagic", "groupB": "ischaemic"}
    stats = {"inputdata": {**large["inputdata"], "x": []}, "parameters": {}}
    with running_nodes([root]) as (url,):
        node = Served(url, credential, root, frame)
        groups = node.call("ttest_independent", large, project="severity")
        whole = node.call("descriptive_stats", stats, project="severity")
    assert groups.status_code == 200, groups.text
    assert whole.status_code == 200, whole.text
    released = groups.json()["aggregates"]
    assert min(released["a"]["n"], released["b"]["n"]) >= 10
    n, s, q = moments(whole.json()["aggregates"]["datasets"][NODE]["variable_based"]["nihss_admission"]["moments"])
    for key in ("a", "b"):
        n_g, s_g, q_g = moments(released[key])
        n, s, q = n - n_g, s - s_g, q - q_g
    assert n == 3
    assert solve_triples(n, s / n, q - s * s / n) == [tuple(int(v) for v in RARE)]


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
