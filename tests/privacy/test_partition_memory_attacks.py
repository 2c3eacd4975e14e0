"""A hostile central site against the k-means partition memory, through a real node process (issue 13.5).

The central site crafts k-means round states whose nearest-centre clusters are
slabs of the rows along ``x2`` (centres that differ in ``x2`` only).  A slab
boundary moved by one row would give that row away (ADR 0013): the node
refuses it.  Before ADR 0027 the node kept 32 assignments per cohort and 64
cohorts in memory, least recently used dropped, keyed by the variable list, and
forgot everything at a restart, so the central site could push the first
assignment out (or ask for the same rows under ``(x1, x2)``, or wait for a
restart) and then have the one-row move answered.  Now the memory is on disk,
per cohort, never evicted: at ``partitions_per_cohort`` the cohort takes no new
assignment, and the one-row move stays refused, also after a restart.  Since ADR 0050
a move of ``nfilter_tab`` (3) to ``min_row_count - 1`` (9) rows is refused as well
(a cluster holds ``min_row_count`` rows, and so must the difference of two
assignments): the refusal names ``min_row_count``.

Since ADR 0029 a node answers no round state of the central site's making: through
the API every crafted round below is refused by ``round_verification`` first (checked
against the real node process).  The partition memory is the defence in depth behind
it, reached here through the node's control chain without that control, in process
(``tests.nodes.UnverifiedNode``; a new instance on the same home is a restart).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mipflow.central.client import NodeClient, NodeRefused
from tests.mipflow.algorithms.synthetic import MODEL, make_data
from tests.nodes import PROJECT, RESEARCHER, UnverifiedNode, grant_all, load_frame, served_clients
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("partition_memory")

NODE = "hospital_a"
ROWS = 500  # room for more than 32 slabs min_row_count rows apart, each cluster min_row_count rows
LIMIT = 40
#: The released boundary; the attack moves it by one row.
FIRST = 150
#: Another variable held without missing values: the same rows, the same cohort.
SIDE = {"x1": 2.0, "y": 4.0}  # real variables (k-means takes no integer one, ADR 0050)


def state_for(order: np.ndarray, end: int, side: str = "x1", x2_first: bool = True, flip: bool = False
              ) -> tuple[dict[str, Any], list[str]]:
    """A k = 2 round whose clusters are the ``end`` lowest rows along x2 and the rest."""
    assert order[end] - order[end - 1] > 1e-6  # clear of rounding in the node's distances
    cut = (order[end - 1] + order[end]) / 2
    centres = [[cut - 1.0, SIDE[side]], [cut + 1.0, SIDE[side]]]
    if not x2_first:
        centres = [c[::-1] for c in centres]
    if flip:
        centres = centres[::-1]
    return {"k": 2, "centers": centres}, (["x2", side] if x2_first else [side, "x2"])


def kmeans_round(client: NodeClient | UnverifiedNode, state: dict[str, Any], y: list[str]) -> dict[str, Any]:
    doc = {"inputdata": {"data_model": MODEL.key, "datasets": ["d0", "d1", "d2"], "x": [], "y": y,
                         "filters": None}, "parameters": {"k": 2}}
    return client.step("kmeans", doc, 1, state, researcher=RESEARCHER, project=PROJECT, analysis_id="crafted")


def refused(client: NodeClient | UnverifiedNode, state: dict[str, Any], y: list[str], setting: str) -> None:
    with pytest.raises(NodeRefused) as err:
        kmeans_round(client, state, y)
    assert err.value.status == 403 and err.value.control == "differencing", err.value
    assert setting in err.value.reason, err.value.reason


def test_the_one_row_move_stays_refused_after_filling_the_memory_and_after_a_restart(tmp_path: Path) -> None:
    root = tmp_path / NODE
    home = standard_home(root, NODE)
    home.set_setting("partitions_per_cohort", LIMIT)
    frame = make_data(20270505, ROWS).assign(subjectcode=[f"p{i}" for i in range(ROWS)])
    frame[["x1", "y"]] = frame[["x1", "y"]].fillna(0.0)  # complete: every variable order is the same rows
    load_frame(root, MODEL, frame)
    grant_all(root)
    order = np.sort(frame["x2"].to_numpy(dtype=float))
    first, moved = state_for(order, FIRST), state_for(order, FIRST + 1)

    with served_clients({NODE: root}) as clients:  # the real node process: verification first
        with pytest.raises(NodeRefused) as err:
            kmeans_round(clients[NODE], *first)
        assert err.value.status == 403 and err.value.control == "round_verification", err.value

    client = UnverifiedNode(root)
    try:
        answered = kmeans_round(client, *first)
        assert answered["aggregates"]["group_n"] == [FIRST, ROWS - FIRST]  # the slabs are the clusters
        refused(client, *moved, "min_row_count")
        # the same rows under another variable order or another second variable: one memory per cohort
        refused(client, *state_for(order, FIRST + 1, x2_first=False), "min_row_count")
        refused(client, *state_for(order, FIRST + 1, side="y"), "min_row_count")
        # moves of nfilter_tab (3) to min_row_count - 1 (9) rows, either way: a group of 3-9 rows with
        # its count, sum and sum of squares (ADR 0050)
        for moved_rows in (3, 5, 9):
            refused(client, *state_for(order, FIRST + moved_rows), "min_row_count")
            refused(client, *state_for(order, FIRST - moved_rows, flip=True), "min_row_count")

        # fill the memory: slabs min_row_count (10) rows apart (each a cut of 10 from its neighbours: answered)
        ends = [e for e in range(10, ROWS - 9, 10) if abs(e - FIRST) >= 10]
        for end in ends[:LIMIT - 1]:
            reply = kmeans_round(client, *state_for(order, end))
            assert reply["aggregates"]["group_n"] == [end, ROWS - end]
        assert LIMIT - 1 > 32  # beyond the old in-memory bound, which would have dropped the first
        refused(client, *state_for(order, ends[LIMIT - 1]), "partitions_per_cohort")  # full: no new one
        refused(client, *moved, "min_row_count")  # the first is not forgotten
        kmeans_round(client, *state_for(order, FIRST, flip=True))  # released before (renumbered): answered
    finally:
        client.close()

    client = UnverifiedNode(root)  # a restart: a new node context on the same home
    try:
        refused(client, *moved, "min_row_count")
        refused(client, *state_for(order, FIRST + 1, x2_first=False), "min_row_count")
        refused(client, *state_for(order, FIRST + 5), "min_row_count")
        refused(client, *state_for(order, 450), "partitions_per_cohort")  # clear of every slab: the limit
        assert kmeans_round(client, *first)["aggregates"]["group_n"] == [FIRST, ROWS - FIRST]
    finally:
        client.close()
