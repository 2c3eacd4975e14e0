"""Descriptive statistics, Pearson correlation and the one-sample and paired t-tests from a snapshot's
selection left on disk (ADR 0062): the same release, bit for bit, as from the frame the node read
before, and the same cohorts (row keys, patients, digests) for the ledger.

Blocks are made small (``READ_ROWS`` and every block size of the passes) so that a few hundred rows
cross many of them, one-row blocks included; selections end on a block's edge, leave whole blocks
empty, hold one block, no row; values are missing on and beside blocks' edges (numerical and nominal).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm, moments, streamed
from mipflow.algorithms.local import prepare_local_data
from mipflow.node.controls import differencing
from mipflow.node.controls.differencing import DifferencingGuard, hash_key
from mipflow.node.query import snapshot_rows
from mipflow.node.query.read import _check_variables, select_frame, select_rows
from mipflow.node.query.snapshot import current_snapshot, select_columns
from mipflow.node.store.feature_store import FeatureStore
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import transport
from tests.mipflow.node.query.streamed import EVERY_BLOCK_SIZE, blocks_and_selections

SECRET = b"node secret of the streamed statistics tests"
KEY = hash_key(SECRET)

BLOCK = 64  # snapshot rows read at a time here (a multiple of 8)
ROWS = 10 * BLOCK
MODEL = DataModel.from_dict({
    "code": "sts", "version": "1", "label": "Streamed statistics",
    "variables": [
        {"code": "dataset", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": c, "label": c} for c in ("a", "b", "c")]},
        {"code": "x1", "sql_type": "real", "isCategorical": False},
        {"code": "x2", "sql_type": "real", "isCategorical": False},
        {"code": "y", "sql_type": "real", "isCategorical": False},
        {"code": "band", "sql_type": "int", "isCategorical": False},
        {"code": "grp", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": c, "label": c} for c in ("u", "v", "w")]},
    ]})


def _rows() -> pd.DataFrame:
    """Large offsets and small spreads (a naive sum of squares would cancel); ``band`` is the row's block
    in key order, so a filter on it selects whole blocks."""
    rng = np.random.default_rng(62)
    x1 = 1e6 + rng.normal(0, 1.0, ROWS)
    x2 = -2e5 + rng.normal(0, 3.0, ROWS)
    y = 5e6 + 0.7 * (x1 - 1e6) - 0.2 * (x2 + 2e5) + rng.normal(0, 0.5, ROWS)
    frame = pd.DataFrame({
        "_pid": [f"p{i // 2:05d}" for i in range(ROWS)], "_visit": [f"v{i % 2}" for i in range(ROWS)],
        "dataset": np.where(np.arange(ROWS) % 3 == 0, "b", "a"),
        "x1": x1, "x2": x2, "y": y, "band": np.arange(ROWS) // BLOCK,
        "grp": rng.choice(["u", "v"], ROWS).astype(object)})
    frame.loc[[5, 64, 200, 639], "x2"] = np.nan  # on and beside blocks' edges
    frame.loc[[0, 63, 64, 300], "y"] = np.nan
    frame.loc[[1, 127, 128, 400], "grp"] = None
    return frame


@pytest.fixture
def store(tmp_path, monkeypatch, request):
    """The passes' blocks of ``request.param`` rows (one-row blocks included), the snapshot's reads of
    ``BLOCK`` (8 at the smallest: the packed mask's bytes)."""
    size = request.param
    monkeypatch.setattr(snapshot_rows, "READ_ROWS", max(8, min(size, BLOCK) // 8 * 8))
    monkeypatch.setattr(moments, "STREAM_BLOCK", 2 * size)
    monkeypatch.setattr(moments, "MOMENT_BLOCK", size)
    monkeypatch.setattr(streamed, "COUNT_ROWS", size)
    monkeypatch.setattr(differencing, "READ_BLOCK", size)
    from mipflow.algorithms import descriptive_stats

    monkeypatch.setattr(descriptive_stats, "COUNT_ROWS", size)
    store = FeatureStore(f"sqlite:///{tmp_path / 'store.sqlite'}")
    store.add_data_model(MODEL)
    with store.begin() as conn:
        store.upsert_rows(conn, MODEL, _rows(), batch_id="b", sha256="0" * 64)
    yield store
    store.dispose()


def _rule(field, operator, value):
    return {"condition": "AND", "rules": [{"id": field, "field": field, "type": "double", "input": "number",
                                           "operator": operator, "value": value}], "valid": True}


SELECTIONS = [
    pytest.param(["a", "b"], None, id="every-row"),
    pytest.param(["a", "c"], None, id="one-dataset-held"),
    pytest.param(["a", "b"], _rule("band", "less", 5), id="first-half-whole-blocks"),
    pytest.param(["a", "b"], _rule("band", "equal", 7), id="one-block-others-empty"),
    pytest.param(["b"], _rule("x1", "greater", 1e6), id="scattered"),
    pytest.param(["a", "b"], _rule("band", "greater", 20), id="no-row"),
]
#: every selection at every block size (``store`` indirect), one-row blocks for two of them
ON_BLOCKS = pytest.mark.parametrize("store, datasets, filters", blocks_and_selections(SELECTIONS),
                                    indirect=["store"])


def _request(datasets, filters, y, x=(), parameters=None):
    return AnalysisRequest.from_dict({"inputdata": {"data_model": MODEL.key, "datasets": datasets, "x": list(x),
                                                    "y": list(y), "filters": filters},
                                      "parameters": parameters or {}})


def _released(algo, data, request):
    return json.dumps(transport(algo.local_step(0, data, request, MODEL, None)), sort_keys=True)


COMPLETE_CASE = [
    pytest.param("pearson_correlation", ["y", "x1"], ["x2"], {}, id="pearson"),
    pytest.param("pearson_correlation", ["x1", "y", "x2"], [], {}, id="pearson-matrix"),
    pytest.param("ttest_onesample", ["y"], [], {"mu": 5e6}, id="one-sample"),
    pytest.param("ttest_paired", ["y"], ["x1"], {}, id="paired"),
]


@pytest.mark.parametrize("name, y, x, parameters", COMPLETE_CASE)
@ON_BLOCKS
def test_complete_case_sums_from_rows_on_disk_are_the_frames_bit_for_bit(name, y, x, parameters, datasets, filters,
                                                                         store, tmp_path):
    algo = get_algorithm(name)
    request = _request(datasets, filters, y, x, parameters)
    variables = list(algo.variables(request))
    frame = select_columns(current_snapshot(store, MODEL, KEY), MODEL, _check_variables(MODEL, variables),
                           datasets, filters, KEY)
    rows = select_rows(store, MODEL, datasets=datasets, variables=variables, filters=filters, row_key=KEY)
    assert rows is not None and frame is not None
    local = prepare_local_data(algo, frame, request)
    assert len(rows) == len(local)
    assert _released(algo, rows, request) == _released(algo, local, request)
    guard = DifferencingGuard(tmp_path, SECRET)
    want, got = guard.cohorts(MODEL.key, frame, variables, True), guard.cohorts_of_rows(MODEL.key, rows, variables,
                                                                                         True)
    assert got.digests == want.digests
    if len(local) >= 3:  # the pooled statistics, to 1e-9, from the values themselves
        columns = [*x, *y] if name == "ttest_paired" else [*y, *x]  # the order each releases its moments in
        values = local[columns].to_numpy()
        got_moments = json.loads(_released(algo, rows, request))
        first = got_moments.get("moments") or got_moments.get("y") or got_moments.get("xy")
        np.testing.assert_allclose(first["mean"], values.mean(axis=0), rtol=1e-12)
        centred = values - values.mean(axis=0)
        m2 = centred.T @ centred if name == "pearson_correlation" else (centred * centred).sum(axis=0)
        np.testing.assert_allclose(first["m2"], m2, rtol=1e-9)
        if name == "ttest_paired":
            diff = values[:, 0] - values[:, 1]
            centred = diff - diff.mean()
            np.testing.assert_allclose(got_moments["diff"]["m2"], [centred @ centred], rtol=1e-9)


@pytest.mark.parametrize("y, x", [pytest.param(["y"], ["x1", "x2", "grp"], id="numerical-and-nominal"),
                                  pytest.param(["grp"], [], id="nominal"),
                                  pytest.param(["x2", "dataset"], [], id="dataset-named")])
@ON_BLOCKS
def test_descriptive_statistics_from_rows_on_disk_are_the_frames_bit_for_bit(y, x, datasets, filters, store,
                                                                             tmp_path):
    """Missing values kept: per dataset, each variable's present rows and the complete rows; the frame is
    the SQL read the node made before (no snapshot without complete-case)."""
    algo = get_algorithm("descriptive_stats")
    request = _request(datasets, filters, y, x)
    variables = list(algo.variables(request))
    frame = select_frame(store, MODEL, datasets=datasets, variables=variables, filters=filters,
                         complete_case=False, row_identity=True)
    rows = select_rows(store, MODEL, datasets=datasets, variables=variables, filters=filters, row_key=KEY,
                       complete_case=False, dataset=True)
    assert rows is not None and len(rows) == len(frame)
    local = prepare_local_data(algo, frame, request)
    assert _released(algo, rows, request) == _released(algo, local, request)
    # the cohorts the ledger checks and records: every one, in order, with its patients
    guard = DifferencingGuard(tmp_path, SECRET)
    want = guard.cohorts(MODEL.key, frame, variables, False, algo.released_by)
    got = guard.cohorts_of_rows(MODEL.key, rows, variables, False, algo.released_by)
    assert got.digests == want.digests and len(got.sets) == len(want.sets)
    for mine, theirs in zip(got.sets + got.patients, want.sets + want.patients):
        np.testing.assert_array_equal(mine, theirs)
    assert got.order is None and want.order is None
    if len(frame) and "y" in variables:  # the pooled mean of y over every dataset, to 1e-12
        record = json.loads(_released(algo, rows, request))["datasets"]
        parts = [moments.Moments.from_dict(r["variable_based"]["y"]["moments"]) for r in record.values()]
        merged = moments.merge_moments(parts)
        present = frame["y"].dropna().to_numpy()
        assert merged.n == len(present)
        np.testing.assert_allclose(merged.mean, [present.mean()], rtol=1e-12)
        np.testing.assert_allclose(merged.m2, [((present - present.mean()) ** 2).sum()], rtol=1e-9)


@EVERY_BLOCK_SIZE
def test_a_complete_case_selection_split_by_dataset_keeps_the_frames_order(store, tmp_path):
    """The general cohorts of rows on disk, complete-case and split by ``dataset``: order and patient
    order are the frame's (what a released group's control would use)."""
    variables = ["y", "x1", "dataset"]
    frame = select_columns(current_snapshot(store, MODEL, KEY), MODEL, _check_variables(MODEL, variables),
                           ["a", "b"], None, KEY)
    rows = select_rows(store, MODEL, datasets=["a", "b"], variables=variables, filters=None, row_key=KEY,
                       dataset=True)
    guard = DifferencingGuard(tmp_path, SECRET)
    want = guard.cohorts(MODEL.key, frame, variables, True, ("dataset",))
    got = guard.cohorts_of_rows(MODEL.key, rows, variables, True, ("dataset",))
    assert got.digests == want.digests and len(got.digests) == 3  # every row, dataset a, dataset b
    np.testing.assert_array_equal(got.order, want.order)
    np.testing.assert_array_equal(got.patient_order, want.patient_order)


@EVERY_BLOCK_SIZE
def test_a_narrowed_selection_is_the_rows_where_the_condition_holds(store):
    rows = select_rows(store, MODEL, datasets=["a", "b"], variables=["x2", "dataset"], filters=None, row_key=KEY,
                       complete_case=False, dataset=True)
    values = rows.values("x2")
    present = rows.narrowed(["x2"], lambda v: ~np.isnan(v[0]))
    assert len(present) == int(np.count_nonzero(~np.isnan(values))) == ROWS - 4
    np.testing.assert_array_equal(present.values("x2"), values[~np.isnan(values)])
    none = present.narrowed([], lambda v: np.zeros(0, dtype=bool)) if len(present) == 0 else \
        present.narrowed(["x2"], lambda v: np.zeros(len(v[0]), dtype=bool))
    assert len(none) == 0 and none.values("x2").shape == (0,)
    every = rows.narrowed(["x2"], lambda v: np.ones(len(v[0]), dtype=bool))
    assert len(every) == ROWS and every.nbytes == 0  # every row: no mask kept
    with pytest.raises(ValueError, match="another length"):
        rows.narrowed(["x2"], lambda v: np.ones(1, dtype=bool))
