"""Differencing controls (mipflow.node.controls.differencing, ADR 0013): the ledger in isolation, then over real nodes."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mipflow.algorithms import get_algorithm, prepare_local_data
from mipflow.protocol.signing import issue_client
from mipflow.node.controls.partitions import smallest_released_difference
from mipflow.node.controls.differencing import (
    CohortLedger, cohort_digest, cohort_sets, decode_keys, encode_keys, hash_key, pair_conflict, row_keys,
)
from mipflow.node.home import NodeHome
from mipflow.exceptions import DisclosureError
from mipflow.central.client import NodeClient, NodeEndpoint, NodeRefused
from mipflow.node.query.read import select_frame
from mipflow.node.store.feature_store import FeatureStore
from tests.mipflow.algorithms.synthetic import MODEL
from tests.nodes import PROJECT, RESEARCHER, UnverifiedNode, grant_all, load_frame, running_nodes
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("cohorts")

SECRET = bytes(range(32))


def _keys(values) -> np.ndarray:
    return np.unique(np.asarray(list(values), dtype=np.uint64))


# --------------------------------------------------------------------------- the rule and the ledger


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 60)), st.sets(st.integers(0, 60)), st.integers(1, 12))
def test_pair_conflict_is_the_set_rule(a, b, threshold):
    small = [len(a - b), len(b - a), len(a & b)]
    assert pair_conflict(_keys(a), _keys(b), threshold) == any(0 < n < threshold for n in small)


@pytest.mark.parametrize("new, old, conflict", [
    pytest.param(range(100), range(100), False, id="identical"),
    pytest.param(range(99), range(100), True, id="all-but-one"),
    pytest.param(range(100), range(99), True, id="all-plus-one"),
    pytest.param(range(90), range(100), False, id="ten-fewer"),
    pytest.param(range(0, 50), range(50, 100), False, id="disjoint"),
    pytest.param(range(0, 55), range(50, 100), True, id="overlap-of-five"),
    pytest.param(range(0, 60), range(50, 100), False, id="overlap-of-ten"),
])
def test_pair_conflict_cases(new, old, conflict):
    assert pair_conflict(_keys(new), _keys(old), 10) is conflict


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=300))
def test_keys_round_trip_through_the_compressed_form(values):
    keys = _keys(values)
    assert np.array_equal(decode_keys(encode_keys(keys)), keys)


def test_ledger_refuses_near_copies_and_remembers_across_instances(tmp_path):
    ledger = CohortLedger(tmp_path)
    everyone = _keys(range(1000, 1100))
    assert ledger.check("m:1", [everyone], 10)
    ledger.record("m:1", [everyone])
    ledger.check("m:1", [everyone], 10)  # the same cohort again: fine
    with pytest.raises(DisclosureError) as info:
        ledger.check("m:1", [everyone[1:]], 10)
    assert info.value.control == "differencing" and not re.search(r"\b1 (row|patient)", str(info.value))
    ledger.check("m:1", [everyone[10:]], 10)  # ten fewer
    ledger.check("m:2", [everyone[1:]], 10)  # another data model has its own cohorts
    # a fresh process (a restart) reads the same memory from the node home
    again = CohortLedger(tmp_path)
    assert list(again.cohorts("m:1")) == [cohort_digest("m:1", everyone)]
    with pytest.raises(DisclosureError):
        again.check("m:1", [everyone[:-3]], 10)
    again.record("m:1", [everyone[50:]])
    # the first instance sees what the second one recorded
    with pytest.raises(DisclosureError):
        ledger.check("m:1", [everyone[52:]], 10)
    (stats,) = again.stats()
    assert stats["cohorts"] == 2 and stats["rows"] == 150 and 0 < stats["bytes"] < 150 * 8


def test_cohorts_of_one_request_are_checked_against_each_other(tmp_path):
    ledger = CohortLedger(tmp_path)
    with pytest.raises(DisclosureError):
        ledger.check("m:1", [_keys(range(100)), _keys(range(98))], 10)


def test_row_keys_are_keyed_and_follow_the_store_key():
    frame = pd.DataFrame({"_pid": ["p1", "p2", "p1"], "dataset": ["d0", "d0", "d1"], "_visit": ["", "", ""]})
    first = row_keys(frame, hash_key(SECRET))
    assert len(set(first.tolist())) == 3  # the same patient in two datasets: two rows
    assert np.array_equal(first, row_keys(frame, hash_key(SECRET)))
    assert not set(first.tolist()) & set(row_keys(frame, hash_key(b"\x01" * 32)).tolist())
    missing_visit = frame.assign(_visit=[None, "", ""])
    assert np.array_equal(row_keys(missing_visit, hash_key(SECRET)), first)


def test_without_complete_case_each_variables_rows_are_a_cohort():
    frame = pd.DataFrame({"_pid": [f"p{i}" for i in range(30)], "dataset": "d0", "_visit": "",
                          "a": [1.0] * 30, "b": [np.nan] + [2.0] * 29})
    key = hash_key(SECRET)
    cohorts, used = cohort_sets(frame, ["a", "b"], complete_case=False, key=key)
    assert [len(c) for c in cohorts] == [30, 29] and len(used) == 30
    cohorts, used = cohort_sets(frame, ["a", "b"], complete_case=True, key=key)
    assert [len(c) for c in cohorts] == [29] and np.array_equal(used, row_keys(frame, key)[1:])


def test_rows_complete_on_every_variable_and_each_dataset_are_cohorts_too():
    """Issue 14.5: a cohort computed inside an algorithm (descriptive statistics' model-based rows,
    its per-dataset statistics) is a cohort of the ledger like the rows a step uses."""
    frame = pd.DataFrame({"_pid": [f"p{i}" for i in range(40)], "dataset": ["d0"] * 25 + ["d1"] * 15,
                          "_visit": "", "a": [np.nan] + [1.0] * 39, "b": [2.0, np.nan] + [2.0] * 38})
    key = hash_key(SECRET)
    keys = row_keys(frame, key)
    cohorts, used = cohort_sets(frame, ["a", "b"], complete_case=False, key=key)
    # every row, a's rows, b's rows, the rows complete on both
    assert [len(c) for c in cohorts] == [40, 39, 39, 38] and np.array_equal(used, keys)
    assert np.array_equal(cohorts[3], np.sort(keys[2:]))
    cohorts, _ = cohort_sets(frame, ["a", "b"], complete_case=False, key=key, by=["dataset"])
    sizes = [len(c) for c in cohorts]
    assert sizes[:4] == [40, 39, 39, 38] and sorted(sizes[4:]) == [15, 23, 24, 24, 25]
    assert any(np.array_equal(c, np.sort(keys[25:])) for c in cohorts[4:])  # d1: the same in every base cohort
    cohorts, used = cohort_sets(frame, ["a", "b"], complete_case=True, key=key, by=["dataset"])
    assert [len(c) for c in cohorts] == [38, 23, 15] and np.array_equal(used, keys[2:])


def test_select_frame_row_identity_stays_out_of_the_local_data(tmp_path):
    home = standard_home(tmp_path / "n", "n")
    frame = _patients(30)
    load_frame(home.root, MODEL, frame)
    store = FeatureStore(home.db_url)
    try:
        algo = get_algorithm("linear_regression")
        from mipflow.algorithms import AnalysisRequest

        req = AnalysisRequest(data_model=MODEL.key, datasets=("d0",), x=("x1",), y=("y",))
        selected = select_frame(store, MODEL, datasets=["d0"], variables=list(algo.variables(req)),
                                row_identity=True)
        assert sorted(selected["_pid"]) == sorted(frame["subjectcode"]) and set(selected["_visit"]) == {""}
        assert not {"_pid", "_visit"} & set(prepare_local_data(algo, selected, req).columns)
        plain = select_frame(store, MODEL, datasets=["d0"], variables=list(algo.variables(req)))
        assert "_pid" not in plain.columns
    finally:
        store.dispose()


# --------------------------------------------------------------------------- over a real node


def _patients(n: int, seed: int = 7) -> pd.DataFrame:
    """``n`` patients, unique integer ages, no missing values."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(2.0, 1.5, size=n)
    return pd.DataFrame({"subjectcode": [f"s{seed}-{i}" for i in range(n)], "dataset": "d0",
                         "age": rng.permutation(np.arange(20, 20 + n)).astype(float), "x1": x1,
                         "y": 1.0 + 0.5 * x1 + rng.normal(size=n), "sex": rng.choice(["M", "F"], size=n)})


def _request(filters=None, x=("x1",), y=("y",)) -> dict:
    return {"inputdata": {"data_model": MODEL.key, "datasets": ["d0"], "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": {}}


def _rule(field, operator, value) -> dict:
    return {"condition": "AND", "rules": [{"id": field, "field": field, "type": "double", "operator": operator,
                                           "value": value}], "valid": True}


@pytest.fixture
def node(tmp_path):
    """One node with 60 patients; alice and bob may run anything; the node can be restarted."""
    home = standard_home(tmp_path / "hospital", "hospital")
    frame = _patients(60)
    load_frame(home.root, MODEL, frame)
    for who in ("alice", "bob", RESEARCHER):
        grant_all(home.root, researcher=who)
    credential = issue_client(home.root, "central")

    class Node:
        root = home.root
        data = frame

        def serve(self):
            return running_nodes([home.root])

        @staticmethod
        def client(url):
            return NodeClient(NodeEndpoint("hospital", url, credential.client_id, credential.secret.hex()),
                              retries=0)

    return Node()


def _step(client, doc, researcher="alice", algorithm="linear_regression", round_no=0, state=None):
    return client.step(algorithm, doc, round_no, state, researcher=researcher, project=PROJECT)


def _refused(client, doc, **kw) -> NodeRefused:
    with pytest.raises(NodeRefused) as info:
        _step(client, doc, **kw)
    assert info.value.status == 403 and info.value.control == "differencing", info.value
    return info.value


def _last_audit(root) -> dict:
    return json.loads((root / "audit.log").read_text().splitlines()[-1])


def test_classic_attack_is_refused_for_everyone_and_after_a_restart(node):
    one_age = float(node.data["age"].iloc[0])
    everyone, all_but_one = _request(), _request(_rule("age", "not_equal", one_age))
    with node.serve() as (url,):
        client = node.client(url)
        assert _step(client, everyone)["rows"] == 60
        assert _step(client, everyone)["rows"] == 60  # a repeated analysis on the same cohort
        refusal = _refused(client, all_but_one)
        # the reply says what and why, never how many rows differ
        assert "differencing" in refusal.reason and "59" not in refusal.reason
        assert not re.search(r"\b1 (row|patient)", refusal.reason)
        record = _last_audit(node.root)
        assert (record["decision"], record["control"], record["researcher"]) == ("refused", "differencing", "alice")
        # another researcher, another algorithm: the same rows are still refused
        _refused(client, _request(_rule("age", "not_equal", one_age), x=(), y=("x1", "y")),
                 researcher="bob", algorithm="pearson_correlation")
        assert _last_audit(node.root)["researcher"] == "bob"
        # the reverse order (a few rows added to an answered cohort) is refused too
        _step(client, _request(_rule("age", "less", 70.0)))  # ages 20..69: 50 rows
        _refused(client, _request(_rule("age", "less", 72.0)))
    with node.serve() as (url,):  # a restarted node remembers
        _refused(node.client(url), all_but_one, researcher="bob")


def test_distant_cohorts_are_answered(node):
    with node.serve() as (url,):
        client = node.client(url)
        assert _step(client, _request())["rows"] == 60
        # two disjoint halves, each at least min_row_count from everything answered
        assert _step(client, _request(_rule("age", "less", 50.0)))["rows"] == 30
        assert _step(client, _request(_rule("age", "greater_or_equal", 50.0)))["rows"] == 30
        # a superset of an answered cohort by min_row_count rows
        assert _step(client, _request(_rule("age", "less", 60.0)))["rows"] == 40
        # overlaps of a few rows with an answered cohort are refused (they would make the
        # intersection computable from a later union)
        _refused(client, _request(_rule("age", "greater_or_equal", 45.0)))


def test_the_node_admin_can_switch_the_control_off(node):
    NodeHome(node.root).set_setting("differencing_check", 0)
    with node.serve() as (url,):
        client = node.client(url)
        _step(client, _request())
        assert _step(client, _request(_rule("age", "not_equal", 30.0)))["rows"] == 59
        NodeHome(node.root).set_setting("differencing_check", 1)  # applies to the next request
        _refused(client, _request(_rule("age", "not_equal", 31.0)))


def _kmeans_state(threshold: float, k: int = 2, swap: bool = False) -> dict:
    """Centres whose nearest-centre boundary is ``x1 = threshold`` (equal ``y``)."""
    centres = [[threshold - 100.0, 0.0], [threshold + 100.0, 0.0]]
    if swap:
        centres.reverse()
    return {"k": k, "centers": centres, "initial_centers": centres, "iteration": 1, "shift": 1.0,
            "converged": False, "final": False}


def test_kmeans_rounds_a_row_apart_are_refused(node):
    """A central site choosing centres so that one row changes cluster between two rounds."""
    doc = {**_request(x=(), y=("x1", "y")), "parameters": {"k": 2, "maxiter": 10, "tol": 1e-6}}
    x1 = np.sort(node.data["x1"].to_numpy())
    cut = lambda i: float((x1[i - 1] + x1[i]) / 2)  # noqa: E731 - i rows below the boundary
    with node.serve() as (url,):  # through the API, any state of the central's making is refused first
        with pytest.raises(NodeRefused) as info:
            _step(node.client(url), doc, algorithm="kmeans", round_no=1, state=_kmeans_state(cut(20)))
        assert info.value.control == "round_verification", info.value
    # behind round verification (ADR 0029), the partition memory: defence in depth
    client = UnverifiedNode(node.root)
    try:
        _step(client, doc, algorithm="kmeans")
        assert _step(client, doc, algorithm="kmeans", round_no=1, state=_kmeans_state(cut(20))) \
            ["aggregates"]["group_n"] == [20, 40]
        _refused(client, doc, algorithm="kmeans", round_no=2, state=_kmeans_state(cut(21)))
        # the same with the centres' order swapped (cluster labels are the central site's choice)
        _refused(client, doc, algorithm="kmeans", round_no=2, state=_kmeans_state(cut(19), swap=True))
        # in another analysis, by another researcher: still the same rows
        _refused(client, doc, algorithm="kmeans", round_no=1, state=_kmeans_state(cut(22)), researcher="bob")
        # a move of 3 rows (nfilter_tab) too: a released cluster holds min_row_count rows, and so must
        # every difference of two assignments (ADR 0050)
        assert "min_row_count (10)" in _refused(client, doc, algorithm="kmeans", round_no=2,
                                                 state=_kmeans_state(cut(23))).reason
        # moves of at least min_row_count (10) rows are Lloyd's ordinary business
        assert _step(client, doc, algorithm="kmeans", round_no=2, state=_kmeans_state(cut(30))) \
            ["aggregates"]["group_n"] == [30, 30]
        # the same centres again (a later round, a repeated analysis) are fine
        _step(client, doc, algorithm="kmeans", round_no=3, state=_kmeans_state(cut(30)))
        # a cluster of 2 rows is a small cut too, but it is the cluster-size control's refusal (it
        # leaves the node out instead of stopping the run, ADR 0020; min_row_count, ADR 0050)
        with pytest.raises(NodeRefused) as info:
            _step(client, doc, algorithm="kmeans", round_no=4, state=_kmeans_state(cut(2)))
        assert info.value.control == "min_row_count", info.value
    finally:
        client.close()


def test_kmeans_assignments_nfilter_tab_to_min_row_count_rows_apart_are_refused(node):
    """ADR 0050's residual, closed: two assignments of the same rows whose minimum cut is
    ``nfilter_tab`` .. ``min_row_count - 1`` rows (a group with its count, sum and sum of squares)."""
    settings = NodeHome(node.root).settings
    tab, m = settings.nfilter_tab, settings.min_row_count
    assert 1 < tab < m and settings.differencing_check
    doc = {**_request(x=(), y=("x1", "y")), "parameters": {"k": 2, "maxiter": 10, "tol": 1e-6}}
    x1 = np.sort(node.data["x1"].to_numpy())
    cut = lambda i: float((x1[i - 1] + x1[i]) / 2)  # noqa: E731 - i rows below the boundary
    released = 25  # 15 .. 34 below the boundary keeps both clusters at min_row_count or more
    client = UnverifiedNode(node.root)  # the partition memory, behind round verification
    try:
        _step(client, doc, algorithm="kmeans")
        assert _step(client, doc, algorithm="kmeans", round_no=1, state=_kmeans_state(cut(released))) \
            ["aggregates"]["group_n"] == [released, len(x1) - released]
        for d in range(tab, m):
            for end in (released - d, released + d):
                sizes = [end, len(x1) - end]
                assert min(sizes) >= m  # not the cluster-size control's refusal
                # premise: the smallest combination of the two assignments' sums is over d rows
                old = (x1 > cut(released)).astype(int)
                new = (x1 > cut(end)).astype(int)
                assert smallest_released_difference(new, old) == d
                refusal = _refused(client, doc, algorithm="kmeans", round_no=2, state=_kmeans_state(cut(end)))
                # the reason names the setting, never the size of the difference
                assert f"min_row_count ({m})" in refusal.reason
                assert not re.search(r"\d", refusal.reason.replace(f"({m})", "")), refusal.reason
                assert _last_audit(node.root)["control"] == "differencing"
        # min_row_count rows apart: answered (and nothing refused above was remembered)
        for end in (released - m, released + m):
            assert _step(client, doc, algorithm="kmeans", round_no=2, state=_kmeans_state(cut(end))) \
                ["aggregates"]["group_n"] == [end, len(x1) - end]
    finally:
        client.close()


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=300))
def test_sorted_unique_equals_numpy_unique(values):
    from mipflow.node.controls.differencing import sorted_unique

    keys = np.array(values + values[: len(values) // 3], dtype=np.uint64)  # with repeats
    got = sorted_unique(keys)
    np.testing.assert_array_equal(got, np.unique(keys))
    assert got.dtype == np.uint64
