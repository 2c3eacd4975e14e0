"""K-means clusters are released groups (round 17 hole 2; ADR 0051 amended, ADR 0050): each direction, in process.

A k-means round releases each cluster's count and sums.  Before, clusters were compared only between assignments
of one cohort (the partition memory), so a later cohort of a cluster's rows but one, a cohort answered before a
cluster of its rows and one more, or the clusters of two k-means runs on different cohorts gave one row's values.
The node's control chain is reached without round verification (``tests.nodes.UnverifiedNode``, as in
``test_partition_memory_attacks.py``) so that the clusters are slabs of the rows along ``x2`` of the test's making;
round 17's hole 2 is the same attack through a real node process and honest Lloyd rounds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mipflow.central.client import NodeRefused
from mipflow.node.controls.disclosure import cohort_refusal, group_refusal
from mipflow.node.controls.ledger import _refusal
from tests.mipflow.algorithms.synthetic import MODEL, make_data
from tests.mipflow.node.controls.study_helpers import rule, where
from tests.nodes import PROJECT, RESEARCHER, UnverifiedNode, grant_all, load_frame, standard_home

pytestmark = pytest.mark.xdist_group("cluster_groups")

NODE = "hospital_a"
ROWS = 300
LOW = 100  # the low slab: the cluster the attacks work on


@pytest.fixture
def node(tmp_path: Path):
    root = tmp_path / NODE
    standard_home(root, NODE)
    frame = make_data(20270617, ROWS).assign(subjectcode=[f"p{i}" for i in range(ROWS)])
    frame[["x1", "x2", "y"]] = frame[["x1", "x2", "y"]].fillna(0.0)
    load_frame(root, MODEL, frame)
    grant_all(root)
    client = UnverifiedNode(root)
    try:
        yield client, np.sort(frame["x2"].to_numpy(dtype=float))
    finally:
        client.close()


def between(order: np.ndarray, low: int, high: int | None = None) -> dict:
    """``x2`` from the ``low``-th smallest row up to (not including) the ``high``-th (None: every row above)."""
    rules = [rule("x2", "greater_or_equal", float((order[low - 1] + order[low]) / 2) if low else -1e9)]
    if high is not None:
        rules.append(rule("x2", "less", float((order[high - 1] + order[high]) / 2)))
    return where(*rules)


def analysis(y: list[str], filters: dict | None = None, **parameters: Any) -> dict:
    return {"inputdata": {"data_model": MODEL.key, "datasets": ["d0", "d1", "d2"], "x": [], "y": y,
                          "filters": filters}, "parameters": parameters}


def slabs(client, order: np.ndarray, end: int, filters: dict | None = None) -> dict:
    """A k = 2 Lloyd round whose clusters are the rows below the ``end``-th smallest ``x2`` and the rest."""
    cut = float((order[end - 1] + order[end]) / 2)
    state = {"k": 2, "centers": [[cut - 1.0, 2.0], [cut + 1.0, 2.0]]}
    return client.step("kmeans", analysis(["x2", "x1"], filters, k=2), 1, state, researcher=RESEARCHER,
                       project=PROJECT, analysis_id=f"slabs-{end}")


def describe(client, filters: dict) -> dict:
    return client.step("descriptive_stats", analysis(["x2", "y"], filters), 0, None, researcher=RESEARCHER,
                       project=PROJECT, analysis_id="describe")


#: Every refusal a differencing rule on cohorts and groups gives here: fixed words, no size, no value.
FIXED = {str(cohort_refusal()), str(group_refusal("min_row_count", 10)), str(_refusal(10))}


def refused(call) -> None:
    """Refused by the differencing control in one of its fixed messages (which rule caught it is not told)."""
    with pytest.raises(NodeRefused) as err:
        call()
    assert (err.value.status, err.value.control) == (403, "differencing"), err.value
    assert err.value.reason in FIXED, err.value.reason


def test_a_cohort_of_a_cluster_s_rows_but_one_is_refused_the_cluster_itself_and_far_cohorts_answer(node) -> None:
    """Hole 2's direction: the cluster first, then descriptive statistics of its rows less the lowest one."""
    client, order = node
    assert slabs(client, order, LOW)["aggregates"]["group_n"] == [LOW, ROWS - LOW]
    refused(lambda: describe(client, between(order, 1, LOW)))  # 99 of the cluster's 100
    refused(lambda: describe(client, between(order, 0, LOW + 1)))  # the cluster and one more
    assert describe(client, between(order, 0, LOW))["rows"] == LOW  # the cluster's own rows: nothing new
    assert describe(client, between(order, 0, LOW // 2))["rows"] == LOW // 2  # a far subgroup of it


def test_a_cluster_of_a_cohort_s_rows_and_one_more_is_refused_a_far_cluster_answers(node) -> None:
    """The reverse: descriptive statistics first, then a k-means round whose cluster is those rows and one more."""
    client, order = node
    assert describe(client, between(order, 1, LOW))["rows"] == LOW - 1
    refused(lambda: slabs(client, order, LOW))
    assert slabs(client, order, LOW + 50)["aggregates"]["group_n"] == [LOW + 50, ROWS - LOW - 50]


def test_clusters_of_two_k_means_runs_on_different_cohorts_a_row_apart_are_refused(node) -> None:
    """Two runs on cohorts 21 rows apart (everyone; everyone but the lowest row and the 20 highest) whose low
    clusters are 100 and 99 rows, one row apart: the second is refused; a cut far from the first answers."""
    client, order = node
    assert slabs(client, order, LOW)["aggregates"]["group_n"] == [LOW, ROWS - LOW]
    inner = between(order, 1, ROWS - 20)
    refused(lambda: slabs(client, order, LOW, inner))
    assert slabs(client, order, LOW + 50, inner)["aggregates"]["group_n"] == [LOW + 49, ROWS - LOW - 70]


def test_the_same_assignment_again_and_another_of_the_same_rows_answer(node) -> None:
    """Honest re-runs: the partition rule governs one cohort's assignments; the group memory adds no refusal."""
    client, order = node
    first = slabs(client, order, LOW)["aggregates"]["group_n"]
    assert slabs(client, order, LOW)["aggregates"]["group_n"] == first
    for end in (LOW + 10, LOW + 20, LOW - 10):  # min_row_count rows apart from each other and the first
        assert slabs(client, order, end)["aggregates"]["group_n"] == [end, ROWS - end]
    with pytest.raises(NodeRefused) as err:
        slabs(client, order, LOW + 1)
    assert err.value.control == "differencing" and "cluster sums of this assignment" in err.value.reason  # its own
