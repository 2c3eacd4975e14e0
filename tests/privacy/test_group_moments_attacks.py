"""Groups released with their count, mean and spread (the class of ADR 0050, beyond k-means).

The ninth outside review (``test_redteam_round9.py``) solved a k-means cluster of 3 rows from its count, centre
and within-cluster sum of squares: on an integer variable with a small range (NIHSS, 0-42) three moments of
three unknown integers usually have one solution.  The review noted the same class in every algorithm that
releases a group's count, mean and spread: here an independent t-test whose group A is a rare level of a
nominal variable (3 patients with a transient ischaemic attack), outcome NIHSS.  The released ``n``, mean and
centred sum of squares of group A are solved by enumerating the integer triples of NIHSS's declared range.

Every attack runs through a real node process (``mipflow node serve``), in standard mode and in an approved
study.  The attack first ran as ``test_hole_*`` (they passed, recovering the values, before ADR 0050's
amendment); ``test_defence_*`` assert the refusals that stop it now.
"""
from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import ConfigError
from mipflow.node.controls import study_approval
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import protocol, stroke_rows
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_explore_attacks import Served

pytestmark = pytest.mark.xdist_group("group_moments")

NODE = "hospital_a"
#: the three patients of the rare level, and their NIHSS (what the attack must not get back)
RARE = [7.0, 19.0, 31.0]


def rare_level_registry(seed: int = 8, n: int = 300) -> pd.DataFrame:
    """Stroke rows where only three patients had a TIA (stroke_type ``tia``), with NIHSS 7, 19 and 31."""
    frame = stroke_rows(seed, n, NODE, "g")
    frame["nihss_admission"] = np.random.default_rng(seed).integers(0, 30, n).astype(float)
    frame["stroke_type"] = np.where(np.arange(n) % 2 == 0, "ischaemic", "haemorrhagic")
    frame.loc[frame.index[:3], "stroke_type"] = "tia"
    frame.loc[frame.index[:3], "nihss_admission"] = RARE
    frame.loc[frame.index[:3], "sex"] = "F"
    return frame


def ttest_request(group_a: str = "tia") -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": ["stroke_type"],
                          "y": ["nihss_admission"], "filters": None},
            "parameters": {"groupA": group_a, "groupB": "ischaemic"}}


def solve_triples(n: int, mean: float, m2: float, low: int = 0, high: int = 42) -> list[tuple[int, ...]]:
    """Every multiset of ``n`` integers in ``[low, high]`` with this mean and centred sum of squares."""
    total = n * mean
    squares = m2 + total * total / n
    if abs(total - round(total)) > 1e-6 or abs(squares - round(squares)) > 1e-6:
        return []
    total, squares = round(total), round(squares)
    found = []
    for a in range(low, high + 1):
        for b in range(a, high + 1):
            c = total - a - b
            if b <= c <= high and a * a + b * b + c * c == squares:
                found.append((a, b, c))
    return found


def attack(reply_json: dict) -> list[tuple[int, ...]]:
    """The attacker's side: group A's released moments, solved over NIHSS's declared range 0-42."""
    group = reply_json["aggregates"]["a"]
    assert group["n"] == 3
    return solve_triples(int(group["n"]), float(group["mean"][0]), float(group["m2"][0]))


def test_defence_a_rare_group_of_an_independent_t_test_is_refused_in_standard_mode(tmp_path) -> None:
    """Hole closed (ADR 0050, the class): the attack that recovered the three TIA patients' NIHSS (7, 19, 31)
    from group A's ``n``, mean and ``m2`` (a test_hole_ in this file's history) gets a refusal: the t-test
    declares ``group_count_setting = "min_row_count"``, so a group of 3 refuses the node's step (control
    ``min_row_count``).  The refusal names the rule and the setting only: the same bytes for another outcome
    of the same groups; an honest t-test between two large groups still answers (on those two levels' rows:
    leaving the 3 TIA rows outside its groups would be refused, ADR 0051)."""
    root = tmp_path / "node"
    home = standard_home(root, NODE)
    frame = rare_level_registry()
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="severity")
    credential = issue_client(root, "central")
    other = ttest_request()
    other["inputdata"]["y"] = ["age"]
    honest = ttest_request("haemorrhagic")
    # the two levels' rows only: a release leaving the 3 TIA rows outside its groups is refused (ADR 0051)
    honest["inputdata"]["filters"] = {"condition": "AND", "valid": True, "rules": [
        {"id": "stroke_type", "field": "stroke_type", "type": "string", "operator": "in",
         "value": ["haemorrhagic", "ischaemic"]}]}
    with running_nodes([root]) as (url,):
        node = Served(url, credential, root, frame)
        reply = node.call("ttest_independent", ttest_request(), project="severity")
        again = node.call("ttest_independent", other, project="severity")
        answered = node.call("ttest_independent", honest, project="severity")
    assert reply.status_code == 403, reply.text
    assert reply.json()["control"] == "min_row_count"
    assert reply.content == again.content  # depends on no value
    message = reply.json()["refused"]
    assert f"min_row_count ({home.settings.min_row_count})" in message
    assert set(re.findall(r"\d+", message)) == {str(home.settings.min_row_count)}  # no count, no value
    assert "a" not in reply.json().get("aggregates", {})
    assert answered.status_code == 200, answered.text
    rows = frame.dropna(subset=["nihss_admission"])
    group = answered.json()["aggregates"]["a"]
    assert group["n"] == int((rows["stroke_type"] == "haemorrhagic").sum())
    assert math.isclose(group["mean"][0], rows.loc[rows["stroke_type"] == "haemorrhagic", "nihss_admission"].mean(),
                        rel_tol=1e-12)


def study_document(algorithms: list[str]) -> dict:
    document = protocol(datasets=[NODE], variables=["sex", "stroke_type", "nihss_admission"], subgroups=[],
                        algorithms=algorithms)
    document.pop("survival")
    return document


def test_defence_a_study_whose_t_test_groups_are_rare_is_not_approved(tmp_path) -> None:
    """Hole closed in study mode: approval holds the level cells a t-test's groups can be to
    ``min_row_count`` (``study_cells.moment_problems``), so the protocol that let the attack through is not
    approved (the message, for the admin, names the cell).  The same protocol without the t-test is approved,
    and the t-test is then refused from the request alone, as outside the study."""
    root = tmp_path / "node"
    home = NodeHome.init(root, NODE)
    frame = rare_level_registry()
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="severity")
    with pytest.raises(ConfigError) as refused:
        study_approval.approve(home, "severity", study_document(["ttest_independent"]))
    message = str(refused.value)
    assert "stroke_type=tia: 3 row(s)" in message and "min_row_count (10)" in message
    assert study_approval.approve(home, "severity", study_document(["descriptive_stats"]))["status"] == "approved"
    credential = issue_client(root, "central")
    with running_nodes([root]) as (url,):
        reply = Served(url, credential, root, frame).call("ttest_independent", ttest_request(), project="severity")
    assert reply.status_code == 403 and reply.json()["control"] == "study", reply.text


def test_defence_a_study_whose_t_test_groups_are_large_is_approved_and_answers(tmp_path) -> None:
    """What the fix keeps: with ten TIA patients every cell reaches ``min_row_count``; the study is approved
    and the t-test answers exactly in study mode (group A: the ten patients' count and mean)."""
    root = tmp_path / "node"
    home = NodeHome.init(root, NODE)
    frame = rare_level_registry()
    frame.loc[frame.index[:10], "stroke_type"] = "tia"
    frame.loc[frame.index[:10], "sex"] = np.repeat(["F", "M"], 5)
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="severity")
    assert study_approval.approve(home, "severity", study_document(["ttest_independent"]))["status"] == "approved"
    credential = issue_client(root, "central")
    with running_nodes([root]) as (url,):
        reply = Served(url, credential, root, frame).call("ttest_independent", ttest_request(), project="severity")
    assert reply.status_code == 200, reply.text
    assert reply.json()["mode"]["study"] == "stroke-outcomes"
    tia = frame.loc[frame["stroke_type"] == "tia", "nihss_admission"]
    group = reply.json()["aggregates"]["a"]
    assert group["n"] == 10 and math.isclose(group["mean"][0], tia.mean(), rel_tol=1e-12)


def test_the_solver_finds_every_multiset_and_only_those() -> None:
    """The attack's solver against brute force over every multiset of 3 values in 0-42, on a few triples (so
    that a defence test does not pass because the solver is wrong)."""
    every = np.array(list(itertools.combinations_with_replacement(range(43), 3)))
    sums, squares = every.sum(axis=1), (every ** 2).sum(axis=1)
    rng = np.random.default_rng(3)
    for _ in range(20):
        values = np.sort(rng.integers(0, 43, 3))
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        brute = every[(sums == values.sum()) & (squares == (values ** 2).sum())]
        assert solve_triples(3, mean, m2) == [tuple(int(v) for v in row) for row in brute]
