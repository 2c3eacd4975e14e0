"""Groups across releases (ADR 0051): the tenth review's attack on other algorithms of the class, through a
real node process in standard mode, and the honest analyses that must still be answered.

One-way ANOVA releases every level (the union of its groups is its cohort), so the cohort ledger alone
answers the same ANOVA with and without a filter 10 rows apart; the group memory compares each level with
the same level released before.  Linear regression's dummy levels carry first moments (count, sum of y):
two regressions whose level differs by one row would give that row's y; held to ``nfilter_tab``.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import running_nodes
from tests.privacy.test_explore_attacks import Served
from tests.privacy.test_redteam_round10 import severity_node

pytestmark = pytest.mark.xdist_group("group_memory")

NODE = "hospital_a"
LEVELS = ("ischaemic", "haemorrhagic", "tia")


def registry(seed: int = 51, n: int = 300) -> pd.DataFrame:
    """Three stroke types of 100 rows each; ages 30-89 but ten patients of 20-23 (levels 4, 3, 3 of them),
    so that "age >= 25" drops 10 rows, 3 or 4 of each level."""
    frame = stroke_rows(seed, n, NODE, "g51")
    rng = np.random.default_rng(seed)
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    frame["age"] = rng.integers(30, 90, n).astype(float)
    frame["stroke_type"] = [LEVELS[i % 3] for i in range(n)]
    frame.loc[frame.index[:10], "age"] = [20.0, 21.0, 22.0, 23.0] * 2 + [20.0, 21.0]
    return frame


def request(x: list[str], y: str, filters=None) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": x, "y": [y], "filters": filters},
            "parameters": {}}


def no_data_number(text: str, setting_value: int) -> bool:
    return set(re.findall(r"\d+", text)) <= {str(setting_value)}


@pytest.fixture()
def node(tmp_path):
    def start(frame: pd.DataFrame):
        root = tmp_path / "node"
        return root, severity_node(root, frame)
    return start


def test_defence_one_way_anova_with_and_without_a_filter_is_refused_by_the_group_memory(node) -> None:
    """The whole cohort and "age >= 25" are 10 rows apart (the ledger allows them) and every level holds
    >= min_row_count rows in both, but each level's two releases are 3-4 rows apart: refused (control
    ``differencing``, the message names min_row_count only).  Honest work on the same node still answers: the
    same ANOVA again, the same cohort's ANOVA of another variable, a subgroup far from the cohort."""
    frame = registry()
    root, credential = node(frame)
    elderly = where(rule("age", "greater_or_equal", 60))
    with running_nodes([root]) as (url,):
        served = Served(url, credential, root, frame)
        call = lambda *args: served.call("anova_oneway", request(*args), project="severity")  # noqa: E731
        first = call(["stroke_type"], "nihss_admission")
        other_variable = call(["stroke_type"], "age")
        subgroup = call(["stroke_type"], "nihss_admission", elderly)
        near = call(["stroke_type"], "nihss_admission", where(rule("age", "greater_or_equal", 25)))
        again = call(["stroke_type"], "nihss_admission")
    for honest in (first, other_variable, subgroup, again):
        assert honest.status_code == 200, honest.text
    assert again.json()["aggregates"] == first.json()["aggregates"]
    assert [g["n"] for g in first.json()["aggregates"]["groups"]] == [100, 100, 100]
    assert near.status_code == 403, near.text
    assert near.json()["control"] == "differencing"
    assert "a group this analysis releases" in near.text and "min_row_count (10)" in near.text
    assert no_data_number(near.text, 10)


def test_defence_a_two_way_anova_margin_and_a_one_way_group_three_rows_apart_are_refused(node) -> None:
    """Derived groups: a two-way ANOVA (stroke type by sex) releases cells whose sum over sex is each stroke
    type's group; a one-way ANOVA of "age >= 25" releases those groups 3-4 rows smaller.  The margin is
    remembered under the same kind as the one-way group: refused."""
    frame = registry()
    frame["sex"] = np.where(np.arange(len(frame)) % 2 == 0, "F", "M")
    root, credential = node(frame)
    two_way = request(["stroke_type", "sex"], "nihss_admission")
    two_way["parameters"] = {"sstype": 2}
    with running_nodes([root]) as (url,):
        served = Served(url, credential, root, frame)
        cells = served.call("anova", two_way, project="severity")
        near = served.call("anova_oneway", request(["stroke_type"], "nihss_admission",
                                                    where(rule("age", "greater_or_equal", 25))), project="severity")
    assert cells.status_code == 200, cells.text
    assert near.status_code == 403, near.text
    assert near.json()["control"] == "differencing" and no_data_number(near.text, 10)


def test_defence_linear_regressions_whose_dummy_level_differs_by_one_row_are_refused(node) -> None:
    """Linear regression on a nominal covariate releases each level's count and sum of y (its dummy's
    co-moments).  The whole cohort and "age >= 25" (10 rows apart: one TIA patient, 9 others) would give the
    TIA patient's NIHSS as the difference of the TIA sums.  Held to nfilter_tab (first moments): refused."""
    frame = registry()
    frame["stroke_type"] = [LEVELS[i % 2] for i in range(len(frame))]
    frame.loc[frame.index[10:60], "stroke_type"] = "tia"
    frame.loc[frame.index[0], "stroke_type"] = "tia"  # the one young TIA patient
    root, credential = node(frame)
    with running_nodes([root]) as (url,):
        served = Served(url, credential, root, frame)
        call = lambda *args: served.call("linear_regression", request(*args), project="severity")  # noqa: E731
        whole = call(["stroke_type", "age"], "nihss_admission")
        near = call(["stroke_type", "age"], "nihss_admission", where(rule("age", "greater_or_equal", 25)))
        far = call(["stroke_type", "age"], "nihss_admission", where(rule("age", "greater_or_equal", 60)))
    assert whole.status_code == 200, whole.text
    assert far.status_code == 200, far.text
    assert near.status_code == 403, near.text
    assert near.json()["control"] == "differencing"
    assert "nfilter_tab (3)" in near.text and no_data_number(near.text, 3)


def test_defence_a_filter_pinning_a_level_a_few_rows_from_that_level_s_group_is_refused_either_way(
        tmp_path) -> None:
    """A group against a cohort: the TIA group of a t-test on the whole cohort (13 rows) and descriptive
    statistics of "stroke_type = tia AND age >= 25" (10 rows) would subtract to the 3 young TIA patients.  The
    cohort is a subset of the group but for 3 rows: refused (control ``differencing``), in either order."""
    from tests.privacy.test_redteam_round10 import registry, ttest

    frame = registry()
    pinned = where(rule("stroke_type", "equal", "tia"), rule("age", "greater_or_equal", 25))
    stats = {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": [], "y": ["nihss_admission"],
                           "filters": pinned}, "parameters": {}}
    for order in ("group_first", "cohort_first"):
        root = tmp_path / order
        credential = severity_node(root, frame)
        with running_nodes([root]) as (url,):
            served = Served(url, credential, root, frame)
            calls = [("ttest_independent", ttest()), ("descriptive_stats", stats)]
            first, second = (served.call(a, r, project="severity")
                             for a, r in (calls if order == "group_first" else calls[::-1]))
        assert first.status_code == 200, first.text
        assert second.status_code == 403, second.text
        assert second.json()["control"] == "differencing" and no_data_number(second.text, 10)
