"""K-means through real node services with default disclosure settings: a node where
one patient would form a cluster on their own refuses, and the result says so; a late
Lloyd round refused under the differencing control ends the analysis, labelled (ADR 0020).
Two assignments of a node's rows may not single out fewer than ``min_row_count`` rows
(the minimum-cut threshold of k-means since ADR 0050's residual was closed)."""
from __future__ import annotations

import functools
from dataclasses import replace
import json

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import AnalysisRequest, get_algorithm, run_in_process
from mipflow.algorithms.kmeans import principal_axis_centres
from mipflow.node.controls.partitions import partition_conflict, smallest_released_difference
from mipflow.node.home import NodeHome
from mipflow.central.rounds import run_analysis as _run_analysis
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL
from tests.mipflow.algorithms.synthetic import request as synthetic_request
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, pin_each_other, served_clients
from tests.nodes import standard_home

#: every analysis here runs as the identity the nodes' grants approve
run_analysis = functools.partial(_run_analysis, researcher=RESEARCHER, project=PROJECT)

pytestmark = pytest.mark.xdist_group("federation")

OUTLIER = (30.0, 30.0)
#: the nodes' min_row_count (default): the smallest cluster, and the smallest minimum cut of two
#: assignments of a node's rows, the nodes release for k-means (ADR 0050)
MIN_ROWS = 10


def request(**kwargs) -> AnalysisRequest:
    """The synthetic request on the one dataset these nodes hold (a dataset no node lists is an
    error before any step: ADR 0033)."""
    return replace(synthetic_request(**kwargs), datasets=("d0",))


def _rows(seed: int, blobs: list[tuple[float, float, int]], extra: list[tuple[float, float]] = ()) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = [rng.normal(centre, 1.0, size=(size, 2)) for *centre, size in blobs]
    values = np.vstack(parts + ([np.asarray(extra)] if extra else []))
    return pd.DataFrame({"subjectcode": [f"p{seed}-{i}" for i in range(len(values))],
                         "dataset": "d0", "x1": values[:, 0], "y": values[:, 1]})


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    frames = {
        # 40 patients around the origin and one outlier patient far away
        "node_a": _rows(1, [(0.0, 0.0, 40)], [OUTLIER]),
        "node_b": _rows(2, [(0.0, 0.0, 40), (10.0, 10.0, 40)]),
        "node_c": _rows(3, [(0.0, 0.0, 30), (10.0, 10.0, 50)]),
    }
    base = tmp_path_factory.mktemp("kmeans-nodes")
    roots = {}
    for name, frame in frames.items():
        home = standard_home(base / name, name)  # default settings: nfilter_tab 3, min_row_count 10
        assert home.settings.nfilter_tab == 3
        load_frame(home.root, MODEL, frame)
        roots[name] = home.root
        grant_all(home.root)
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with served_clients(roots) as served:
        yield list(served.values()), frames


def test_a_node_with_a_one_patient_cluster_is_left_out(nodes) -> None:
    clients, frames = nodes
    req = request(y=("x1", "y"), k=2, maxiter=50, tol=1e-6)
    outcome = run_analysis("kmeans", req.to_dict(), clients)
    assert list(outcome.excluded) == ["node_a"], outcome.excluded
    assert "(min_row_count)" in outcome.excluded["node_a"] and "1 row" not in outcome.excluded["node_a"]  # ADR 0050
    assert sorted(outcome.contributed) == ["node_b", "node_c"]
    # the result is k-means of the other two nodes' rows, and the outlier is in no centre
    alone = run_in_process(get_algorithm("kmeans"), [frames["node_b"], frames["node_c"]], req, MODEL)
    assert_rel_close(outcome.result["centers"], alone["centers"], rel=1e-12)
    assert outcome.result["n_obs"] == len(frames["node_b"]) + len(frames["node_c"])
    assert not np.any(np.isclose(np.asarray(outcome.result["centers"]), OUTLIER[0], rtol=1e-3))


def test_min_nodes_turns_the_refusal_into_an_error(nodes) -> None:
    from mipflow.exceptions import FederationError

    clients, _ = nodes
    req = request(y=("x1", "y"), k=2, maxiter=50, tol=1e-6)
    with pytest.raises(FederationError, match="node_a: refused \\(min_row_count\\)"):
        run_analysis("kmeans", req.to_dict(), clients, min_nodes=3)


def test_exareme2_initialisation_is_refused_without_release_extremes(nodes) -> None:
    from mipflow.exceptions import FederationError

    clients, _ = nodes
    req = request(y=("x1", "y"), k=2, init="exareme2")
    with pytest.raises(FederationError, match="raw_extremes"):
        run_analysis("kmeans", req.to_dict(), clients)


# -- privacy stop (ADR 0020): a late Lloyd round refused under the differencing control --------------


def _blobs(seed: int, tag: str, dataset: str, n_low: int, n_high: int,
           extra: list[tuple[float, float]] = ()) -> pd.DataFrame:
    """Two tight, well separated blobs around (0, 0) and (10, 10), and ``extra`` rows."""
    rng = np.random.default_rng(seed)
    values = np.vstack([rng.normal(0.0, 0.5, size=(n_low, 2)), rng.normal(10.0, 0.5, size=(n_high, 2))]
                       + ([np.asarray(extra, dtype=float)] if extra else []))
    return pd.DataFrame({"subjectcode": [f"{tag}-{i}" for i in range(len(values))],
                         "dataset": dataset, "x1": values[:, 0], "y": values[:, 1]})


def _overlapping(seed: int, tag: str, n: int) -> pd.DataFrame:
    """Three overlapping clusters: Lloyd's late rounds move a handful of rows."""
    rng = np.random.default_rng(seed)
    values = np.array([[0.0, 0.0], [3.0, 0.0], [1.5, 2.5]])[rng.integers(0, 3, n)] + rng.normal(0, 1.0, (n, 2))
    return pd.DataFrame({"subjectcode": [f"{tag}-{i}" for i in range(n)],
                         "dataset": "d0", "x1": values[:, 0], "y": values[:, 1]})


#: rows between the bisector of the initial centres and that of the first update's centres: they
#: change cluster in round 2 (one at node_a, two at node_b), nothing else moves
BETWEEN = {"node_a": [(3.5, 3.5)], "node_b": [(3.4, 3.7), (3.8, 3.3)], "node_c": []}
#: d2: node_c's high cluster is 3 such rows and 7 blob rows (min_row_count, ADR 0050), so round 2 leaves 7 in it
SMALL_LATE = [(3.5, 3.5), (3.4, 3.7), (3.8, 3.3)]


@pytest.fixture(scope="module")
def stop_nodes(tmp_path_factory):
    """d0: overlapping clusters, 2000 rows a node; d1: the two-blob case with rows in between;
    d2: a node whose cluster falls to 7 rows in round 2 (for a control other than differencing)."""
    frames = {}
    for i, name in enumerate(("node_a", "node_b", "node_c")):
        frames[name] = {
            "d0": _overlapping(i, f"{name}-o", 2000),
            "d1": _blobs(11 + i, f"{name}-b", "d1", 40, 10, BETWEEN[name]),
            "d2": _blobs(21 + i, f"{name}-s", "d2", 40, *((7, SMALL_LATE) if name == "node_c" else (10, []))),
        }
    base = tmp_path_factory.mktemp("kmeans-stop-nodes")
    roots = {}
    for name, parts in frames.items():
        home = standard_home(base / name, name)  # default settings: nfilter_tab 3, min_row_count 10, differencing on
        assert home.settings.nfilter_tab == 3 and home.settings.differencing_check
        assert home.settings.min_row_count == MIN_ROWS
        load_frame(home.root, MODEL, pd.concat(parts.values(), ignore_index=True))
        roots[name] = home.root
        grant_all(home.root)
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with served_clients(roots) as served:
        yield list(served.values()), frames, roots


def _request(dataset: str, **parameters) -> AnalysisRequest:
    return AnalysisRequest(data_model=MODEL.key, datasets=(dataset,), y=("x1", "y"), parameters=parameters)


def _values(frame: pd.DataFrame) -> np.ndarray:
    return frame[["x1", "y"]].to_numpy(dtype=float)


def _nearest(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return ((values[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)


def _lloyd_path(values: np.ndarray, k: int, updates: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pooled Lloyd from the principal-axis start: centres c_0 .. c_updates and the assignments
    that made each update (labels at c_0 .. c_{updates-1})."""
    centres = [principal_axis_centres(values.mean(axis=0), np.cov(values, rowvar=False), k)]
    labels = []
    for _ in range(updates):
        lab = _nearest(values, centres[-1])
        labels.append(lab)
        centres.append(np.array([values[lab == j].mean(axis=0) if np.any(lab == j) else centres[-1][j]
                                 for j in range(k)]))
    return centres, labels


def _audit(root) -> list[dict]:
    return [json.loads(line) for line in (root / "audit.log").read_text().splitlines()]


def _check_stopped(outcome, pooled: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The stopped result against pooled Lloyd; returns the reference path."""
    result = outcome.result
    n_iter, refused_round = result["n_iter"], outcome.stopped["round"]
    assert result["stopped"]["round"] == refused_round and result["stopped"]["reason"] == "privacy"
    assert result["stopped"]["control"] == "differencing"
    assert result["stopped"]["nodes"] == sorted(outcome.stopped["refusals"])
    assert all(r["control"] == "differencing" for r in outcome.stopped["refusals"].values())
    assert result["converged"] is False and result["approximate"] is True
    assert result["inertia_of"] == "last released assignment"
    assert "differencing" in result["stopped"]["message"]
    # rounds 0 .. refused-1 made the result: the moments round and n_iter Lloyd rounds
    assert outcome.rounds == refused_round == n_iter + 1
    assert outcome.excluded == {} and sorted(outcome.contributed) == ["node_a", "node_b", "node_c"]
    centres, labels = _lloyd_path(pooled, k, n_iter)
    assert_rel_close(result["centers"], centres[-1], rel=1e-9)
    assert_rel_close(result["initial_centers"], centres[0], rel=1e-9)
    # sizes and within-cluster sums of squares: the last released assignment, about the final centres
    last = labels[-1]
    assert result["cluster_counts"] == np.bincount(last, minlength=k).tolist()
    within = np.bincount(last, weights=((pooled - centres[-1][last]) ** 2).sum(axis=1), minlength=k)
    assert_rel_close(result["within_ss"], within, rel=1e-9)
    assert_rel_close(result["inertia"], within.sum(), rel=1e-9)
    assert result["n_obs"] == len(pooled)
    assert result["last_shift"] == pytest.approx(np.linalg.norm(centres[-1] - centres[-2]), rel=1e-9)
    return centres, labels


def test_a_round_moving_one_or_two_rows_ends_the_analysis_labelled(stop_nodes) -> None:
    clients, frames, roots = stop_nodes
    req = _request("d1", k=2, maxiter=50, tol=1e-6)
    pooled = np.vstack([_values(frames[n]["d1"]) for n in ("node_a", "node_b", "node_c")])
    # premise, on the pooled rows: round 2 (the second Lloyd round) moves exactly the rows placed in between
    centres, labels = _lloyd_path(pooled, 2, 2)
    moved = pooled[labels[0] != labels[1]]
    assert sorted(map(tuple, moved)) == sorted(BETWEEN["node_a"] + BETWEEN["node_b"])

    outcome = run_analysis("kmeans", req.to_dict(), clients)
    result = outcome.result
    assert (outcome.stopped["round"], result["n_iter"]) == (2, 1), outcome.stopped
    assert sorted(outcome.stopped["refusals"]) == ["node_a", "node_b"]
    _check_stopped(outcome, pooled, 2)
    # the counts are round 1's (the in-between rows with the high cluster), not the refused round's
    assert result["cluster_counts"] == [120, 33]
    # the refusals happened at the nodes, in round 2, under the differencing control; node_c answered it
    for name, root in roots.items():
        last = [r for r in _audit(root) if r.get("analysis") and r.get("round") == 2][-1]
        expected = ("refused", "differencing") if name != "node_c" else ("allowed", None)
        assert (last["decision"], last.get("control")) == expected, (name, last)


def test_a_late_round_on_overlapping_clusters_stops_at_the_last_released_round(stop_nodes) -> None:
    clients, frames, _ = stop_nodes
    k = 3
    req = _request("d0", k=k, maxiter=100, tol=1e-9)
    outcome = run_analysis("kmeans", req.to_dict(), clients)
    assert outcome.stopped, "premise: Lloyd on these rows reaches a round that singles out < 10 rows at a node"
    assert outcome.result["n_iter"] >= 2  # a late round, not the first update
    nodes = ("node_a", "node_b", "node_c")
    centres, _ = _check_stopped(outcome, np.vstack([_values(frames[n]["d0"]) for n in nodes]), k)
    # each refusing node's assignment at the final centres has a minimum cut below min_row_count with one
    # it released (ADR 0050: not only below nfilter_tab), and only theirs
    smallest = {}
    for name in nodes:
        rows = _values(frames[name]["d0"])
        at_final = _nearest(rows, centres[-1])
        conflict = any(partition_conflict(at_final, _nearest(rows, c), MIN_ROWS) for c in centres[:-1])
        assert conflict == (name in outcome.stopped["refusals"]), name
        cuts = [smallest_released_difference(at_final, _nearest(rows, c)) for c in centres[:-1]]
        smallest[name] = min((c for c in cuts if c > 0), default=0)
    # the run stopped at a difference of nfilter_tab (3) to min_row_count - 1 rows, which the threshold
    # before ADR 0050's residual was closed released: the stop is still labelled, not a failure
    assert any(3 <= smallest[name] < MIN_ROWS for name in outcome.stopped["refusals"]), smallest


def test_other_controls_in_a_late_round_still_exclude_the_node(stop_nodes) -> None:
    """With node_c's differencing check off, round 2 leaves 7 rows in one of its clusters: min_row_count (ADR 0050)."""
    clients, frames, roots = stop_nodes
    req = _request("d2", k=2, maxiter=50, tol=1e-6)
    NodeHome(roots["node_c"]).set_setting("differencing_check", 0)
    try:
        outcome = run_analysis("kmeans", req.to_dict(), clients)
    finally:
        NodeHome(roots["node_c"]).set_setting("differencing_check", 1)
    assert list(outcome.excluded) == ["node_c"] and "(min_row_count)" in outcome.excluded["node_c"]
    assert outcome.stopped == {} and "stopped" not in outcome.result and outcome.result["converged"] is True
    assert [r["round"] for r in _audit(roots["node_c"]) if r.get("decision") == "refused"][-1:] == [2]
    alone = run_in_process(get_algorithm("kmeans"), [frames["node_a"]["d2"], frames["node_b"]["d2"]], req, MODEL)
    assert_rel_close(outcome.result["centers"], alone["centers"], rel=1e-12)


# -- the exact partition rule lets Lloyd converge where the per-pair rule stopped it (ADR 0013) ----------

#: well separated corner blobs, (centre, rows a node); the high-x side leans to low y, so the
#: boundary between the two clusters turns between the first two Lloyd rounds
CORNERS = [((0.0, 0.0), 20), ((0.0, 8.0), 20), ((10.0, 0.0), 35), ((10.0, 8.0), 5)]
#: node_a's rows in the two wedges between the boundary at the initial centres and the one after
#: the first update: in round 2 the first ten change cluster one way, the last one the other way
#: (a minimum cut of 11 rows, at least min_row_count; no later round moves any of them)
SWAPPED = [(6.45, 5.6), (6.56, 5.86), (6.67, 6.11), (6.79, 6.37), (6.9, 6.62), (7.02, 6.88), (7.13, 7.13),
           (7.24, 7.39), (7.36, 7.64), (7.47, 7.9), (3.51, -1.0)]


def _corners(seed: int, tag: str, extra: list[tuple[float, float]] = ()) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = np.vstack([rng.normal(centre, 0.5, size=(n, 2)) for centre, n in CORNERS]
                       + ([np.asarray(extra, dtype=float)] if extra else []))
    return pd.DataFrame({"subjectcode": [f"{tag}-{i}" for i in range(len(values))],
                         "dataset": "d0", "x1": values[:, 0], "y": values[:, 1]})


def _per_pair_rule(new: np.ndarray, old: np.ndarray, threshold: int) -> bool:
    """The rule before the minimum cut: some old and new cluster differ by 1 .. threshold - 1
    rows in one direction."""
    for i in np.unique(old):
        for j in np.unique(new):
            a, b = old == i, new == j
            if 0 < np.count_nonzero(a & ~b) < threshold or 0 < np.count_nonzero(b & ~a) < threshold:
                return True
    return False


@pytest.fixture(scope="module")
def corner_nodes(tmp_path_factory):
    frames = {name: _corners(41 + i, name, SWAPPED if name == "node_a" else [])
              for i, name in enumerate(("node_a", "node_b", "node_c"))}
    base = tmp_path_factory.mktemp("kmeans-corner-nodes")
    roots = {}
    for name, frame in frames.items():
        home = standard_home(base / name, name)  # default settings: nfilter_tab 3, min_row_count 10, differencing on
        assert home.settings.nfilter_tab == 3 and home.settings.differencing_check
        assert home.settings.min_row_count == MIN_ROWS
        load_frame(home.root, MODEL, frame)
        roots[name] = home.root
        grant_all(home.root)
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with served_clients(roots) as served:
        yield list(served.values()), frames, roots


def test_a_cluster_gaining_rows_while_losing_one_runs_on_to_convergence(corner_nodes) -> None:
    from tests.mipflow.algorithms.test_kmeans import numpy_lloyd

    clients, frames, roots = corner_nodes
    k, tol = 2, 1e-9
    nodes = ("node_a", "node_b", "node_c")
    pooled = np.vstack([_values(frames[n]) for n in nodes])
    start = principal_axis_centres(pooled.mean(axis=0), np.cov(pooled, rowvar=False), k)
    reference = numpy_lloyd(pooled, start, tol, 100)
    assert reference["converged"] and reference["n_iter"] >= 3
    # premise, on each node's rows along pooled Lloyd: in round 2 node_a's cluster gains ten rows and
    # loses one (the per-pair rule refused that), and no round at any node releases a combination of
    # cluster sums over fewer than min_row_count rows with any earlier one (the exact rule, ADR 0050)
    centres, _ = _lloyd_path(pooled, k, reference["n_iter"])
    for name in nodes:
        rows = _values(frames[name])
        labels = [_nearest(rows, c) for c in centres]  # rounds 1 .. n_iter and the evaluation round
        for r in range(1, len(labels)):
            assert not any(partition_conflict(labels[r], earlier, MIN_ROWS) for earlier in labels[:r]), (name, r)
        if name == "node_a":
            moved = rows[labels[0] != labels[1]]
            assert sorted(map(tuple, moved)) == sorted(SWAPPED)
            assert np.bincount(labels[0][labels[0] != labels[1]]).tolist() in ([10, 1], [1, 10])
            assert _per_pair_rule(labels[1], labels[0], MIN_ROWS)

    outcome = run_analysis("kmeans", _request("d0", k=k, maxiter=100, tol=tol).to_dict(), clients)
    result = outcome.result
    assert outcome.stopped == {} and "stopped" not in result and "approximate" not in result
    assert outcome.excluded == {} and sorted(outcome.contributed) == list(nodes)
    assert result["converged"] is True and result["n_iter"] == reference["n_iter"]
    assert_rel_close(result["centers"], reference["centers"], rel=1e-9)
    assert_rel_close(result["initial_centers"], start, rel=1e-9)
    assert result["cluster_counts"] == reference["counts"].tolist()
    assert_rel_close(result["inertia"], reference["inertia"], rel=1e-9)
    # node_a answered the round in which its rows swapped clusters
    swap = [r for r in _audit(roots["node_a"]) if r.get("analysis") and r.get("round") == 2][-1]
    assert swap["decision"] == "allowed", swap
