"""A PostgreSQL store's columnar snapshot and its rows left on disk (ADR 0062, amendment 8).

The streamed algorithms release, from a PostgreSQL store's snapshot, what the node's PostgreSQL frame read
gives (the binary ``COPY`` read for complete cases, the CSV one without), bit for bit; the cohorts, their
value stamps and the released groups are that frame's.  The stamp (a statement trigger) moves with every
change of the rows, a consent withdrawal drops the snapshots, a dropped trigger starts a new epoch.
Blocks of 7 rows and the whole selection; missing values on and beside blocks' edges; a level no row
holds and a rare one; filters on numbers and on levels.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.local import prepare_local_data
from mipflow.node.controls.differencing import DifferencingGuard
from mipflow.node.controls.folds import add_fold_keys, fold_hashes, fold_key, needs_fold_keys
from mipflow.node.controls.groups import group_release
from mipflow.node.query import snapshot_rows
from mipflow.node.query.read import select_frame, select_rows
from mipflow.node.query.snapshot import current_snapshot
from mipflow.node.query.snapshot_rows import SnapshotRows
from mipflow.node.store import stamp_pg
from mipflow.node.store.feature_store import FeatureStore
from mipflow.protocol.wire import transport

from tests.mipflow.node.query.streamed import number_rule, stream_blocks
from tests.mipflow.node.query.test_snapshot_rows_groups import KEY, MODEL, SECRET, _request, _rows, _same_groups


@pytest.fixture(params=[7, 100_000], ids=["seven", "whole"])
def store(pg_url, tmp_path, monkeypatch, request):
    """The groups tests' rows in a PostgreSQL store whose snapshots live in ``tmp_path / "home"``; every
    pass's blocks of ``request.param`` rows (the snapshot's reads of 8 or 64)."""
    yield from groups_rows_store(pg_url, tmp_path, monkeypatch, request.param)


def groups_rows_store(pg_url, tmp_path, monkeypatch, size: int):
    """The body of :func:`store` (also ``test_snapshot_rows_lrcv``'s PostgreSQL store)."""
    stream_blocks(monkeypatch, size)
    monkeypatch.setattr(snapshot_rows, "READ_ROWS", 8 if size < 64 else 64)
    store = FeatureStore(pg_url, tmp_path / "home")
    store.add_data_model(MODEL)
    with store.begin() as conn:
        store.upsert_rows(conn, MODEL, _rows(), batch_id="b", sha256="0" * 64)
    yield store
    store.dispose()


SELECTIONS = [
    (["a", "b"], None),
    (["b"], number_rule("x1", "greater", 1e6)),  # scattered rows of one dataset
    (["a", "b"], {"condition": "OR", "rules": [  # levels and a number; NULLs on both sides
        {"id": "grp", "field": "grp", "type": "string", "operator": "in", "value": ["u", "r"]},
        {"id": "x2", "field": "x2", "type": "double", "operator": "less", "value": -2e5}], "valid": True}),
    (["a", "b"], number_rule("band", "greater", 20)),  # no row
]
STEPS = [
    ("descriptive_stats", ["y", "grp"], ["x2"], {}),  # without complete-case: the CSV read, split by dataset
    ("pearson_correlation", ["y"], ["x1", "x2"], {}),
    ("ttest_onesample", ["x2"], [], {"mu": -2e5}),
    ("ttest_independent", ["y"], ["grp"], {"groupA": "u", "groupB": "r"}),
    ("anova_oneway", ["y"], ["grp"], {}),
    ("linear_regression", ["y"], ["x1", "grp", "arm"], {}),
    ("logistic_regression", ["event"], ["x1", "grp", "arm"], {"positive_class": "yes"}),
    ("anova", ["y"], ["grp", "arm"], {"sstype": 2}),
    ("contingency_table", ["grp"], ["arm"], {}),
    ("pca", ["y", "x1", "x2"], [], {}),
    # amendment 13: log and exp a block at a time (the moments and the exp-weighted sums' rows)
    ("pca_with_transformation", ["y", "x1", "dose"], [], {"data_transformation": {"log": ["y", "x1"], "exp": ["dose"]}}),
    # amendment 11: bins over a declared range (released groups), levels; naive Bayes (fold keys kept beside)
    ("multiple_histograms", ["dose"], ["grp"], {"bins": 10}),
    ("multiple_histograms", ["grp"], ["arm"], {}),
    ("naive_bayes_gaussian_cv", ["arm"], ["x1", "dose"], {"n_splits": 3}),
    ("naive_bayes_categorical_cv", ["event"], ["grp", "arm"], {}),
    ("linear_regression_cv", ["y"], ["x1", "grp"], {"n_splits": 3}),  # amendment 14
    ("logistic_regression_cv", ["event"], ["x1", "arm"], {"n_splits": 3, "positive_class": "yes"}),  # amendment 15
    # amendment 16: dose (declared 0..10, values on both sides of it) as the time; round 0's counts, series, cells
    ("cox_regression", ["dose", "event"], ["x1", "grp", "arm"], {"event_level": "yes", "bin_width": 1.0}),
]


def test_rows_on_disk_of_a_postgresql_store_release_what_its_frame_read_gives(store, tmp_path):
    settings = type("S", (), {"min_row_count": 10, "nfilter_tab": 3})()
    checked = 0
    for name, y, x, parameters in STEPS:
        algo = get_algorithm(name)
        by = tuple(getattr(algo, "released_by", ()))
        for datasets, filters in SELECTIONS:
            request = _request(datasets, filters, y, x, parameters)
            variables = list(algo.variables(request))
            rows = select_rows(store, MODEL, datasets=datasets, variables=variables, filters=filters, row_key=KEY,
                               complete_case=algo.complete_case, dataset="dataset" in variables)
            assert isinstance(rows, SnapshotRows), (name, filters)
            frame = select_frame(store, MODEL, datasets=datasets, variables=variables, filters=filters,
                                 complete_case=algo.complete_case, row_identity=True)  # the PostgreSQL read
            assert "_row_md5" in frame.columns if algo.complete_case else "_pid" in frame.columns
            if needs_fold_keys(algo):  # as the node adds them, to the frame and beside the rows on disk
                frame = add_fold_keys(frame, fold_key(SECRET), KEY)
                rows.fold_keys = fold_hashes(rows.keys("row_key"), fold_key(SECRET))
            local = prepare_local_data(algo, frame, request)
            released = [json.dumps(transport(algo.local_step(0, data, request, MODEL, None)), sort_keys=True)
                        for data in (rows, local)]
            assert released[0] == released[1], (name, filters)
            guard = DifferencingGuard(tmp_path, SECRET)
            want = guard.cohorts(MODEL.key, frame, variables, algo.complete_case, by)
            got = guard.cohorts_of_rows(MODEL.key, rows, variables, algo.complete_case, by)
            assert got.digests == want.digests and got.stamps == want.stamps
            assert got.patient_stamps == want.patient_stamps
            if hasattr(algo, "released_groups") and algo.released_groups(request, MODEL):
                want_release = group_release(algo, local, request, MODEL, want, settings, KEY)
                got_release = group_release(algo, rows, request, MODEL, got, settings, KEY)
                if want_release is None:
                    assert got_release is None
                else:
                    _same_groups(got_release.groups, want_release.groups)
                    assert got_release.union_digest == want_release.union_digest
                    assert got_release.union_stamps == want_release.union_stamps
                    checked += len(want_release.groups)
            if len(frame):  # not vacuous
                assert len(rows) == len(frame) > 0 and want.stamps[0]
    assert checked >= 60


def _snapshots(tmp_path):
    folder = tmp_path / "home" / "snapshots"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


@pytest.mark.parametrize("store", [7], indirect=True, ids=["seven"])
def test_the_postgresql_stamp_follows_every_change_and_a_withdrawal_drops_the_snapshot(store, tmp_path):
    table = store.model_table(MODEL).name
    first = current_snapshot(store, MODEL, KEY)
    assert first is not None and _snapshots(tmp_path) == [first.path.name]
    assert current_snapshot(store, MODEL, KEY).path == first.path  # the same stamp: not written again

    def y_total():
        return float(np.nansum(select_rows(store, MODEL, datasets=["a", "b"], variables=["y"], filters=None,
                                           row_key=KEY).values("y")))

    before = y_total()
    stamps = [stamp_pg.current_stamp(store, table)]
    with store.begin() as conn:  # an admin's own SQL moves it too
        conn.exec_driver_sql(f'UPDATE "{table}" SET y = y + 1 WHERE x1 > 1e6')
    stamps.append(stamp_pg.current_stamp(store, table))
    assert stamps[1][0] == stamps[0][0] and stamps[1][1] > stamps[0][1]
    after = y_total()  # a new snapshot of the changed rows; the older one removed
    assert after > before and len(_snapshots(tmp_path)) == 1 and _snapshots(tmp_path) != [first.path.name]

    with store.engine.connect() as conn:
        pids = [r[0] for r in conn.exec_driver_sql(f'SELECT DISTINCT _pid FROM "{table}" LIMIT 3')]
    assert store.delete_patients(pids) > 0
    assert _snapshots(tmp_path) == []  # no copy of the withdrawn rows left on disk
    assert stamp_pg.current_stamp(store, table)[1] > stamps[1][1]
    assert len(select_rows(store, MODEL, datasets=["a", "b"], variables=["y"], filters=None,
                           row_key=KEY, complete_case=False)) == len(_rows()) - 6

    with store.begin() as conn:  # a dropped (or disabled) trigger: no stamp, then a new epoch
        conn.exec_driver_sql(f'ALTER TABLE "{table}" DISABLE TRIGGER "{stamp_pg.trigger_name(table)}"')
    assert stamp_pg.current_stamp(store, table) is None
    assert current_snapshot(store, MODEL, KEY) is not None
    assert stamp_pg.current_stamp(store, table)[0] != stamps[0][0]
    with store.begin() as conn:
        conn.exec_driver_sql(f'TRUNCATE "{table}"')
    assert select_rows(store, MODEL, datasets=["a", "b"], variables=["y"], filters=None,
                       row_key=KEY, complete_case=False).count == 0

    bare = FeatureStore(store.url)  # opened without its node home: no snapshot, the frame's read answers
    try:
        assert select_rows(bare, MODEL, datasets=["a", "b"], variables=["y"], filters=None, row_key=KEY) is None
    finally:
        bare.dispose()


@pytest.mark.parametrize("store", [7], indirect=True, ids=["seven"])
def test_a_float_nan_stored_in_postgresql_leaves_its_column_to_the_frame_read(store):
    table = store.model_table(MODEL).name
    with store.begin() as conn:  # SQL keeps NaN as a value (IS NOT NULL); the snapshot's NaN is missing
        conn.exec_driver_sql(f"UPDATE \"{table}\" SET x2 = 'NaN' WHERE band = 3")
    assert select_rows(store, MODEL, datasets=["a", "b"], variables=["x2"], filters=None, row_key=KEY) is None
    assert isinstance(select_rows(store, MODEL, datasets=["a", "b"], variables=["x1"], filters=None,
                                  row_key=KEY), SnapshotRows)


@pytest.mark.parametrize("name, y, x, parameters", [
    ("descriptive_stats", ["age", "glucose_mmol", "diabetes"], ["sex"], {}),
    ("anova_oneway", ["glucose_mmol"], ["diabetes"], {}),
    ("cox_regression", ["followup_days", "death_90d"], ["age", "sex"], {"event_level": "yes", "bin_width": 30.0}),
])
def test_a_postgresql_node_keeps_the_rows_on_disk_and_answers_as_its_frame_read(name, y, x, parameters, pg_url,
                                                                               tmp_path):
    """At the node (``answer_step``), a PostgreSQL home: the selection kept as rows on disk, the same
    aggregates as the same node reading its frame (``columnar_snapshot`` 0), the ledger's controls passed."""
    from mipflow.node.api.context import StepContext
    from mipflow.node.api.step import answer_step
    from mipflow.node.home import NodeHome
    from tests.mipflow.algorithms.survival_data import STROKE
    from tests.mipflow.node.api.test_step import body
    from tests.mipflow.node.api.test_step_streamed_stats import _rows as stroke_rows
    from tests.nodes import grant_all, load_frame, standard_home
    from tests.privacy.conftest import rule, where

    home = standard_home(tmp_path, "hospital_a", db_url=pg_url)
    home.set_setting("min_row_count", 1)
    load_frame(tmp_path, STROKE, stroke_rows())
    grant_all(tmp_path)
    replies, kept = {}, {}
    for case, columnar in (("disk", 1), ("sql", 0)):
        home.set_setting("columnar_snapshot", columnar)
        context = StepContext.open(NodeHome(tmp_path))
        try:
            replies[case] = answer_step(context, "central", name,
                                        body(context, y=y, x=x, filters=where(rule("age", "greater", 40)),
                                             parameters=parameters, analysis_id=case))
            kept[case] = [type(v[1]).__name__ for v in context.selections._kept.values()]
        finally:
            context.store.dispose()
    assert kept == {"disk": ["SnapshotRows"], "sql": ["DataFrame"]}
    assert replies["disk"]["rows"] == replies["sql"]["rows"] > 0
    assert json.dumps(replies["disk"]["aggregates"], sort_keys=True) == \
        json.dumps(replies["sql"]["aggregates"], sort_keys=True)
