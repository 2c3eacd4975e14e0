"""k-means from a snapshot's selection left on disk (ADR 0062, amendment 12): both rounds' releases are the frame
path's bit for bit (round 0's moments, each Lloyd round's per-cluster counts, deviation sums and within-cluster
sums of squares, summed a block at a time in the frame's order), equal to the pooled rows' to 1e-9, and the
k-means controls get the frame path's inputs: the same canonical assignment for the partition memory (and the
same refusal of an assignment a few rows from one released), the same clusters as released groups (kinds,
rows, patients, digests, value stamps, union), the same counted sets.

Blocks of 1, 7, 64 rows and the whole selection (``streamed.blocks_and_selections``, k-means's assignment
blocks too), the selections of the streamed group tests (missing values on and beside blocks' edges, a
scattered filter, one leaving no row).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.local import prepare_local_data
from mipflow.exceptions import DisclosureError
from mipflow.node.controls.cluster_groups import cluster_release, with_step_order
from mipflow.node.controls.differencing import DifferencingGuard
from mipflow.node.controls.pooled_counts import counted_sets
from mipflow.protocol.wire import transport

from tests.mipflow.node.query.test_snapshot_rows_groups import (
    KEY, MODEL, ON_BLOCKS, SECRET, _both, _request, _same_groups,
)
from tests.mipflow.node.query import test_snapshot_rows_groups

store = test_snapshot_rows_groups.store  # the fixture: the groups file's rows at each block size

SETTINGS = type("S", (), {"min_row_count": 10, "nfilter_tab": 3})()
THRESHOLD = 10  # a released cluster's fewest rows (min_row_count, ADR 0050)

KMEANS = [
    pytest.param(["x1", "x2"], {"k": 3, "maxiter": 3}, id="two-variables-k3"),
    pytest.param(["y", "dose"], {"k": 2, "maxiter": 2}, id="with-missing-k2"),
    pytest.param(["x2"], {"k": 4, "maxiter": 2, "init": "exareme2"}, id="exareme2-init"),
]


def _pooled(values: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, deviation sums and within-cluster sums of squares of the pooled rows (n x d), in plain numpy."""
    distances = ((values[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    labels = np.argmin(distances, axis=1)
    k = len(centres)
    counts = np.bincount(labels, minlength=k)
    sums = np.array([(values[labels == j] - centres[j]).sum(axis=0) for j in range(k)])
    within = np.array([distances[labels == j, j].sum() for j in range(k)])
    return counts, sums, within


def _node_partition(guard, algo, round_no, data, request, state, work):
    """What the node's ``check_partition`` and ``derive_clusters`` do with one path's rows (with ``work``): the
    cohorts, the canonical labels and the clusters released, or the refusal ``(control, message)``."""
    cohorts = with_step_order(SimpleNamespace(round=round_no), work)
    try:
        labels = guard.check_partition(algo, round_no, data, request, state, cohorts, THRESHOLD, 1000,
                                       "min_row_count")
    except DisclosureError as refused:
        return refused.control, str(refused)
    release = cluster_release(algo, round_no, data, request, state, cohorts, SETTINGS, labels, KEY, "run")
    return cohorts, labels, release


@pytest.mark.parametrize("y, parameters", KMEANS)
@ON_BLOCKS
def test_kmeans_of_rows_on_disk_releases_the_frames_and_the_same_clusters(y, parameters, datasets, filters,
                                                                           store, tmp_path):
    _rounds(y, parameters, datasets, filters, store, tmp_path)


@pytest.mark.parametrize("store", [7, 64], indirect=True)
def test_a_lloyd_round_a_few_rows_from_a_released_one_is_refused_alike(store, tmp_path):
    """Near convergence a round moves a few rows: the partition memory refuses it from rows on disk as from the
    frame, the same control and message (not vacuous: the refusal happens)."""
    assert _rounds(["x1", "x2"], {"k": 3, "maxiter": 10}, ["a", "b"], None, store, tmp_path)


def _rounds(y, parameters, datasets, filters, store, tmp_path) -> bool:
    """Both paths' rounds and controls compared (see the module docstring); whether a round was refused."""
    algo = get_algorithm("kmeans")
    assert algo.streams_rows and algo.releases_partitions
    request = _request(datasets, filters, y, [], parameters)
    variables = list(algo.variables(request))
    frame, rows = _both(store, datasets, filters, variables)
    local = prepare_local_data(algo, frame, request)
    first = [transport(algo.local_step(0, data, request, MODEL, None)) for data in (rows, local)]
    assert json.dumps(first[0], sort_keys=True) == json.dumps(first[1], sort_keys=True)
    assert first[0]["n"] == len(frame)
    if len(frame) < 2 * parameters["k"]:
        return False
    values = local[y].to_numpy(dtype=float)
    np.testing.assert_allclose(first[0]["moments"]["mean"], values.mean(axis=0), rtol=1e-9)
    for name in ("disk", "frame"):
        (tmp_path / name).mkdir()
    guards = [DifferencingGuard(tmp_path / name, SECRET) for name in ("disk", "frame")]
    cohorts = [guards[0].cohorts_of_rows(MODEL.key, rows, variables, True),
               guards[1].cohorts(MODEL.key, frame, variables, True)]
    assert cohorts[0].digests == cohorts[1].digests and cohorts[0].stamps == cohorts[1].stamps
    assert cohorts[0].order is None and cohorts[1].order is not None  # the disk path reads the order when needed
    works = [SimpleNamespace(cohorts=c, data=d, algo=algo, variables=variables, model=MODEL, groups=None)
             for c, d in zip(cohorts, (rows, local))]
    state = algo.global_step(0, [first[1]], request, MODEL, None).state
    rounds, refused = 0, False
    while not state["final"]:
        rounds += 1
        released = [transport(algo.local_step(rounds, data, request, MODEL, state)) for data in (rows, local)]
        assert json.dumps(released[0], sort_keys=True) == json.dumps(released[1], sort_keys=True)
        counts, sums, within = _pooled(values, np.asarray(state["centers"]))
        assert released[0]["group_n"] == counts.tolist()
        np.testing.assert_allclose(released[0]["deviation_sums"], sums, rtol=1e-9, atol=1e-9 * np.abs(values).max())
        np.testing.assert_allclose(released[0]["within_ss"], within, rtol=1e-9)
        outcomes = [_node_partition(guard, algo, rounds, data, request, state, work)
                    for guard, data, work in zip(guards, (rows, local), works)]
        if isinstance(outcomes[1][0], str):  # refused (near convergence): alike, the same control and message
            assert outcomes[0] == outcomes[1] and outcomes[0][0] == "differencing"
            refused = True
            break
        (got_cohorts, got_labels, got), (want_cohorts, want_labels, want) = outcomes
        np.testing.assert_array_equal(got_cohorts.order, want_cohorts.order)
        np.testing.assert_array_equal(got_cohorts.patient_order, want_cohorts.patient_order)
        np.testing.assert_array_equal(got_labels, want_labels)
        assert want is not None and len(want.groups) == int((counts > 0).sum())  # not vacuous
        _same_groups(got.groups, want.groups)
        assert all(g.stamps for g in got.groups)
        np.testing.assert_array_equal(got.union, want.union)
        assert (got.union_digest, got.union_stamps, got.threshold, got.setting, got.suppressed) == \
            (want.union_digest, want.union_stamps, want.threshold, want.setting, want.suppressed)
        sets = [counted_sets(request, SimpleNamespace(**{**vars(w), "groups": r}))
                for w, r in zip(works, (got, want))]
        assert [np.sort(s[0]).tolist() for s in sets[0]] == [np.sort(s[0]).tolist() for s in sets[1]]
        for guard, cohort, labels in zip(guards, (got_cohorts, want_cohorts), (got_labels, want_labels)):
            guard.after_step(cohort, request, labels)
        state = algo.global_step(rounds, [released[1]], request, MODEL, state).state
    assert rounds >= 1
    # the partition memory: the same assignments remembered (canonical labels, digests)
    keys = [g._partition_key(c) for g, c in zip(guards, cohorts)]
    assert keys[0] == keys[1]
    remembered = [g.partitions._known(keys[0]) for g in guards]
    assert remembered[0][0] == remembered[1][0] and len(remembered[0][0]) >= 1
    assert [a.tobytes() for a in remembered[0][1]] == [a.tobytes() for a in remembered[1][1]]
    return refused
