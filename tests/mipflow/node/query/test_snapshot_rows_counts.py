"""Histograms (and naive Bayes) from a snapshot's selection left on disk (ADR 0062, amendment 11): their releases
are the frame path's bit for bit, and every control gets the frame path's inputs: the same cohorts and value
stamps, the same released groups (a histogram's bins over a declared range and its bin x level cells; naive
Bayes's classes), the same counted sets and rows' times for the counted-set memory (ADR 0059).

Blocks of 1, 7, 64 rows and the whole selection (``streamed.blocks_and_selections``); values on bins' edges,
outside the declared range and at both its ends; missing values on and beside blocks' edges; a level no row
holds and a rare one; a filter leaving scattered rows and one leaving none.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.crossval import FOLD_KEY, deal_folds
from mipflow.algorithms.local import prepare_local_data
from mipflow.node.controls.counted_memory import _time_grids
from mipflow.node.controls.differencing import DifferencingGuard
from mipflow.node.controls.folds import add_fold_keys, fold_hashes, fold_key, needs_fold_keys
from mipflow.node.controls.groups import group_release
from mipflow.node.controls.pooled_counts import counted_sets, step_order
from mipflow.protocol.wire import transport

from tests.mipflow.node.query.test_snapshot_rows_groups import (
    KEY, MODEL, ON_BLOCKS, SECRET, _both, _request, _same_groups,
)
from tests.mipflow.node.query import test_snapshot_rows_groups

store = test_snapshot_rows_groups.store  # the fixture: the groups file's rows at each block size

SETTINGS = type("S", (), {"min_row_count": 10, "nfilter_tab": 3})()

HISTOGRAMS = [
    pytest.param(["dose"], ["grp", "arm"], {"bins": 10}, id="declared-range-by-two"),
    pytest.param(["dose"], [], {"bins": 40}, id="declared-range-fine"),
    pytest.param(["grp"], ["arm", "event"], {}, id="nominal"),
    pytest.param(["y"], ["grp"], {"bins": 7}, id="pooled-range"),  # round 0: the extremes, then bins over them
]


def same_controls(algo, request, frame, rows, local, variables, tmp_path) -> int:
    """The frame's and the rows' cohorts, stamps, released groups and counted sets (and their rows' times) are
    the same; returns how many groups were compared."""
    guard = DifferencingGuard(tmp_path, SECRET)
    want = guard.cohorts(MODEL.key, frame, variables, True)
    got = guard.cohorts_of_rows(MODEL.key, rows, variables, True)
    assert got.digests == want.digests and got.stamps == want.stamps and got.patient_stamps == want.patient_stamps
    want_release = group_release(algo, local, request, MODEL, want, SETTINGS, KEY)
    got_release = group_release(algo, rows, request, MODEL, got, SETTINGS, KEY)
    compared = 0
    if want_release is None:
        assert got_release is None
    else:
        _same_groups(got_release.groups, want_release.groups)
        assert (got_release.union_digest, got_release.union_stamps, got_release.suppressed) == \
            (want_release.union_digest, want_release.union_stamps, want_release.suppressed)
        compared = len(want_release.groups)
    # the counted-set memory's input (ADR 0059): every set a release lets anyone form, each row's time
    works = [SimpleNamespace(cohorts=c, data=d, algo=algo, variables=variables, model=MODEL, groups=r)
             for c, d, r in ((want, local, want_release), (got, rows, got_release))]
    sets = [counted_sets(request, work) for work in works]
    assert len(sets[0]) == len(sets[1]) >= 1
    for (keys, people, mask), (mine, my_people, my_mask) in zip(*sets):
        np.testing.assert_array_equal(np.sort(keys), np.sort(mine))
        np.testing.assert_array_equal(people, my_people)
        np.testing.assert_array_equal(mask, my_mask)
    orders = [step_order(work) for work in works]
    np.testing.assert_array_equal(orders[0][0], orders[1][0])
    np.testing.assert_array_equal(orders[0][1], orders[1][1])
    grids = [_time_grids(work) for work in works]
    assert grids[0].keys() == grids[1].keys()
    for code in grids[0]:
        np.testing.assert_array_equal(grids[0][code], grids[1][code])
    if len(frame) and "dose" in variables:  # not vacuous: the declared range's rows have times
        assert "dose" in grids[1] and len(sets[1]) >= 3
    return compared


@pytest.mark.parametrize("y, x, parameters", HISTOGRAMS)
@ON_BLOCKS
def test_histograms_of_rows_on_disk_are_the_frames(y, x, parameters, datasets, filters, store, tmp_path):
    algo = get_algorithm("multiple_histograms")
    assert algo.streams_rows
    request = _request(datasets, filters, y, x, parameters)
    variables = list(algo.variables(request))
    frame, rows = _both(store, datasets, filters, variables)
    local = prepare_local_data(algo, frame, request)
    state = None
    if y == ["y"]:  # no declared range: round 0 releases the extremes, round 1 bins over the pooled range
        first = [transport(algo.local_step(0, data, request, MODEL, None)) for data in (rows, local)]
        assert json.dumps(first[0], sort_keys=True) == json.dumps(first[1], sort_keys=True)
        if not len(frame):
            assert first[0] == {"n": 0, "min": None, "max": None}
            return
        assert first[0]["min"] == float(local["y"].min()) and first[0]["n"] == len(frame)
        state = algo.global_step(0, [first[1]], request, MODEL, None).state
    released = [transport(algo.local_step(1 if state else 0, data, request, MODEL, state)) for data in (rows, local)]
    assert json.dumps(released[0], sort_keys=True) == json.dumps(released[1], sort_keys=True)
    overall = released[0]["histograms"][0]["counts"]
    inside = frame[y[0]].between(0, 10).sum() if y == ["dose"] else len(frame)
    assert sum(overall) == inside  # pooled: every complete row in range is in one bin, once
    compared = same_controls(algo, request, frame, rows, local, variables, tmp_path)
    assert compared >= (1 if len(frame) and state is None else 0)


NAIVE_BAYES = [
    pytest.param("naive_bayes_gaussian_cv", ["grp"], ["x1", "x2", "dose"], {"n_splits": 3}, id="gaussian"),
    pytest.param("naive_bayes_gaussian_cv", ["arm"], ["y"], {}, id="gaussian-one-covariate"),
    pytest.param("naive_bayes_categorical_cv", ["event"], ["grp", "arm"], {"n_splits": 4}, id="categorical"),
]
FOLD_KEY_OF_THE_NODE = fold_key(SECRET)


def folded_both(name, store, datasets, filters, y, x, parameters):
    """A cross-validated algorithm's request, its frame, its rows on disk with the fold keys the node keeps beside
    them, and the frame prepared for the local step with the same keys as a column."""
    algo = get_algorithm(name)
    assert algo.streams_rows and needs_fold_keys(algo)
    request = _request(datasets, filters, y, x, parameters)
    frame, rows = _both(store, datasets, filters, list(algo.variables(request)))
    local = prepare_local_data(algo, add_fold_keys(frame, FOLD_KEY_OF_THE_NODE, KEY), request)
    rows.fold_keys = fold_hashes(rows.keys("row_key"), FOLD_KEY_OF_THE_NODE)  # as the node keeps them
    return algo, request, frame, rows, local


@pytest.mark.parametrize("name, y, x, parameters", NAIVE_BAYES)
@ON_BLOCKS
def test_naive_bayes_of_rows_on_disk_releases_the_frames(name, y, x, parameters, datasets, filters, store,
                                                         tmp_path):
    """Both rounds (per fold and class: counts and moments, then the confusion cells), the node's folds dealt
    from the fold keys it keeps beside the rows, as from the frame's column."""
    algo, request, frame, rows, local = folded_both(name, store, datasets, filters, y, x, parameters)
    np.testing.assert_array_equal(rows.fold_keys, local[FOLD_KEY].to_numpy())
    first = [transport(algo.local_step(0, data, request, MODEL, None)) for data in (rows, local)]
    assert json.dumps(first[0], sort_keys=True) == json.dumps(first[1], sort_keys=True)
    n_splits = len(first[0]["folds"])
    assert sum(sum(f["group_n"]) for f in first[0]["folds"]) == len(frame)
    if name.endswith("gaussian_cv") and len(frame) >= 3:  # pooled, to 1e-9: each fold's class means
        labels = deal_folds(local[FOLD_KEY].to_numpy(), n_splits)
        classes = sorted(MODEL.variable(y[0]).enumeration_codes)
        for k, part in enumerate(first[0]["folds"]):
            for c, level in enumerate(classes):
                chosen = local[(labels == k) & (local[y[0]] == level).to_numpy()]
                assert part["group_n"][c] == len(chosen)
                if len(chosen):
                    want = chosen[x].to_numpy(dtype=float).mean(axis=0)
                    np.testing.assert_allclose(part["moments"][c]["mean"], want, rtol=1e-9)
    same_controls(algo, request, frame, rows, local, list(algo.variables(request)), tmp_path)
    if len(frame) < 2 * n_splits:
        return
    state = algo.global_step(0, [first[1]], request, MODEL, None).state
    second = [transport(algo.local_step(1, data, request, MODEL, state)) for data in (rows, local)]
    assert json.dumps(second[0], sort_keys=True) == json.dumps(second[1], sort_keys=True)
    assert sum(sum(f["confusion"]["group_counts"]) for f in second[0]["folds"]) == len(frame)
