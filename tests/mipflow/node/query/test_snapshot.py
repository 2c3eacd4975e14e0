"""The columnar snapshot (ADR 0049): the same frames and keys as the SQL read, never stale, private.

Every comparison runs the same selection through the SQL read (``select_frame(row_key=...)``
without snapshots: :func:`mipflow.node.query.read.sqlite_columns`) and through the snapshot
(:func:`mipflow.node.query.snapshot.select_columns`), and asserts the frames, their dtypes, their
ledger keys and ``attrs`` equal exactly.
"""
from __future__ import annotations

import os
import sqlite3
import stat

import numpy as np
import pandas as pd
import pytest

from mipflow.node.controls.differencing import hash_key, patient_keys, row_keys
from mipflow.node.query.read import _check_variables, select_frame, select_statement
from mipflow.node.query.snapshot import SNAPSHOT_DIR, current_snapshot, select_columns, write_snapshot
from mipflow.node.store.feature_store import FeatureStore
from mipflow.node.store.stamp import trigger_names

from tests.mipflow.node.query.cases import ALL_DATASETS, FILTER_CASES, MODEL, ROWS, TABLE, group, rule, where

KEY = hash_key(b"node secret of the snapshot tests")
HELD = ["age", "score", "grade", "diag"]  # numerical and categorical (note is text)


@pytest.fixture
def home(tmp_path):
    """``(store, snapshot folder)``: a SQLite store holding ROWS (its snapshots beside its file)."""
    store = FeatureStore(f"sqlite:///{tmp_path / 'store.sqlite'}")
    store.add_data_model(MODEL)
    with store.begin() as conn:
        store.upsert_rows(conn, MODEL, ROWS, batch_id="b", sha256="0" * 64)
    yield store, tmp_path / SNAPSHOT_DIR
    store.dispose()


def sql_read(store, **kwargs) -> pd.DataFrame:
    return select_frame(store, MODEL, row_identity=True, row_key=KEY, **kwargs)


def snapshot_read(store, folder, *, datasets, variables, filters=None) -> pd.DataFrame | None:
    snap = current_snapshot(store, MODEL, KEY)
    assert snap is not None
    chosen = _check_variables(MODEL, variables)
    select_statement(store, MODEL, datasets=datasets, variables=variables, filters=filters)  # the request's checks
    return select_columns(snap, MODEL, chosen, list(dict.fromkeys(datasets)), filters, KEY)


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert list(got.dtypes) == list(want.dtypes)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got.attrs == want.attrs
    np.testing.assert_array_equal(row_keys(got, KEY), row_keys(want, KEY))
    np.testing.assert_array_equal(patient_keys(got, KEY), patient_keys(want, KEY))


def _uses_text(filters) -> bool:
    if not filters:
        return False
    return any(_uses_text(r) if "rules" in r else r.get("id", r.get("field")) == "note" for r in filters["rules"])


@pytest.mark.parametrize("filters, _reference", FILTER_CASES)
def test_every_filter_of_the_query_tests_selects_the_sql_reads_rows(filters, _reference, home):
    """Each operator, group, negation and nesting of the filter tests: the snapshot's frame is the
    SQL read's, bit for bit; a filter on a text variable is not answered (the SQL read is)."""
    store, folder = home
    want = sql_read(store, datasets=ALL_DATASETS, variables=HELD, filters=filters)
    got = snapshot_read(store, folder, datasets=ALL_DATASETS, variables=HELD, filters=filters)
    if _uses_text(filters):
        assert got is None
    else:
        assert got is not None
        assert_same(got, want)
    assert_same(sql_read(store, datasets=ALL_DATASETS, variables=HELD, filters=filters, snapshot=True), want)


SELECTIONS = [
    pytest.param(dict(datasets=ALL_DATASETS, variables=["dataset"]), id="every-row"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age", "score"]), id="numerical"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["grade", "diag"]), id="categorical"),
    pytest.param(dict(datasets=["b"], variables=["diag", "age"]), id="one-dataset"),
    pytest.param(dict(datasets=["c", "a", "c"], variables=["score", "grade"]), id="datasets-reordered-repeated"),
    pytest.param(dict(datasets=["a", "zz-not-here"], variables=["age"]), id="unknown-dataset"),
    pytest.param(dict(datasets=["zz-not-here"], variables=["age", "diag"]), id="empty"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["dataset", "age", "age", "grade"]), id="dataset-and-repeats"),
    pytest.param(dict(datasets=["a", "b"], variables=HELD,
                      filters=group("OR", rule("age", "is_null"), rule("grade", "not_equal", "2"))),
                 id="complete-case-after-a-null-filter"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age"], filters=where("dataset", "not_equal", "a")),
                 id="filter-on-dataset"),
    pytest.param(dict(datasets=ALL_DATASETS, variables=["age"], filters=where("diag", "is_not_null")),
                 id="filter-on-a-variable-not-selected"),
]


@pytest.mark.parametrize("kwargs", SELECTIONS)
def test_selections_equal_the_sql_read(kwargs, home):
    """Numerical and categorical columns, dataset subsets, complete cases, NULLs: exactly the SQL read."""
    store, folder = home
    want = sql_read(store, **kwargs)
    got = snapshot_read(store, folder, **kwargs)
    assert got is not None
    assert_same(got, want)
    if kwargs["variables"] == ["dataset"]:
        assert len(got) == len(ROWS)  # the whole-column copy, not the gather


def test_a_text_variable_is_read_through_sql(home):
    store, folder = home
    kwargs = dict(datasets=ALL_DATASETS, variables=["age"], filters=where("note", "equal", "plain"))
    assert snapshot_read(store, folder, **kwargs) is None
    assert_same(sql_read(store, snapshot=True, **kwargs), sql_read(store, **kwargs))


def _rows(start: int, n: int, dataset: str = "a") -> pd.DataFrame:
    rows = ROWS.iloc[:n].copy()
    rows["_pid"] = [f"q{start + i:03d}" for i in range(n)]
    rows["dataset"] = dataset
    return rows


def test_never_stale_loads_updates_deletes_and_an_admins_sql(home):
    """After every kind of write the next read sees the rows as they are now (a new snapshot)."""
    store, folder = home
    kwargs = dict(datasets=ALL_DATASETS, variables=["age", "grade"])

    def check() -> pd.DataFrame:
        got = sql_read(store, snapshot=True, **kwargs)
        assert_same(got, sql_read(store, **kwargs))
        return got

    first = check()
    with store.begin() as conn:  # a load of new rows
        store.upsert_rows(conn, MODEL, _rows(0, 12), batch_id="b2", sha256="1" * 64)
    second = check()
    assert len(second) > len(first)
    with store.begin() as conn:  # an update of existing keys (an upsert with other values)
        changed = ROWS.iloc[:5].copy()
        changed["age"] = 1000.0
        changed["grade"] = 3
        store.upsert_rows(conn, MODEL, changed, batch_id="b3", sha256="2" * 64)
    third = check()
    assert (third["age"] == 1000.0).sum() == 5
    assert store.delete_patients(["q000", "q001", ROWS["_pid"].iloc[10]]) > 0  # consent withdrawn
    assert list(folder.glob(f"{TABLE}@*")) == []  # no copy of the withdrawn rows waits for the next read
    fourth = check()
    assert len(fourth) < len(third)
    with sqlite3.connect(store.engine.url.database) as raw:  # an admin's own SQL, outside mipflow
        raw.execute(f"UPDATE {TABLE} SET age = -7.5 WHERE _pid = ?", (ROWS["_pid"].iloc[20],))
    fifth = check()
    assert (fifth["age"] == -7.5).any() == (ROWS.loc[20, ["age", "grade"]].notna().all())
    assert len(list(folder.glob(f"{TABLE}@*"))) == 1  # older snapshots removed


def test_a_table_created_again_starts_a_new_stamp(home):
    """Dropping the table drops its triggers: the next read installs them under a new epoch, so no
    snapshot of before can be taken for the rows loaded meanwhile."""
    store, folder = home
    kwargs = dict(datasets=ALL_DATASETS, variables=["age"])
    before = sql_read(store, snapshot=True, **kwargs)
    with sqlite3.connect(store.engine.url.database) as raw:
        raw.execute(f"DROP TABLE {TABLE}")
    store.add_data_model(MODEL)
    with sqlite3.connect(store.engine.url.database) as raw:  # rows written with no trigger at all
        for name in trigger_names(TABLE):
            raw.execute(f'DROP TRIGGER "{name}"')
    with store.begin() as conn:
        store.upsert_rows(conn, MODEL, _rows(0, 30), batch_id="b2", sha256="1" * 64)
    after = sql_read(store, snapshot=True, **kwargs)
    assert_same(after, sql_read(store, **kwargs))
    assert len(after) != len(before)


def test_snapshots_are_private_and_written_whole(home):
    """Folders 0700, files 0600 (row-level data), no temporary folder left; a crashed writer's
    temporary folder is removed after an hour, and by a consent withdrawal at once."""
    store, folder = home
    folder.mkdir(mode=0o700)
    crashed, recent = folder / f".{TABLE}@crashed.tmp", folder / f".{TABLE}@at-work.tmp"
    crashed.mkdir()
    recent.mkdir()
    os.utime(crashed, (0, 0))  # untouched for decades: its writer crashed
    snap = write_snapshot(store, MODEL, KEY)
    assert not crashed.exists() and recent.is_dir()  # another writer may be at work on this one
    assert snap is not None and snap.rows == len(ROWS)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(snap.path).st_mode) == 0o700
    files = list(snap.path.iterdir())
    assert {f.name for f in files} >= {"meta.json", "row_key.npy", "pid_key.npy", "dataset.npy"}
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files)
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == [recent.name]
    assert write_snapshot(store, MODEL, KEY).path == snap.path  # current: not written again
    store.delete_patients([ROWS["_pid"].iloc[0]])  # consent withdrawn: nothing of the table left
    assert list(folder.iterdir()) == []


def test_a_snapshot_under_another_key_is_never_used(home):
    store, folder = home
    other = hash_key(b"another node")
    mine = write_snapshot(store, MODEL, KEY)
    theirs = current_snapshot(store, MODEL, other)
    assert theirs.path != mine.path
    chosen = _check_variables(MODEL, ["age"])
    assert select_columns(theirs, MODEL, chosen, ALL_DATASETS, None, KEY) is None


def test_a_number_column_holding_text_is_read_through_sql(home):
    """SQLite keeps text in a REAL column; SQL compares it otherwise than numbers, so the snapshot
    does not answer for that column (other columns it still does)."""
    store, folder = home
    with sqlite3.connect(store.engine.url.database) as raw:
        raw.execute(f"UPDATE {TABLE} SET age = 'n/a' WHERE _pid = ?", (ROWS["_pid"].iloc[3],))
    assert snapshot_read(store, folder, datasets=ALL_DATASETS, variables=["age"]) is None
    for snapshot in (False, True):  # the SQL read reports it, with or without snapshots
        with pytest.raises(ValueError, match="n/a"):
            sql_read(store, datasets=ALL_DATASETS, variables=["age"], snapshot=snapshot)
    assert snapshot_read(store, folder, datasets=ALL_DATASETS, variables=["score"],
                         filters=where("age", "greater", 50)) is None
    got = snapshot_read(store, folder, datasets=ALL_DATASETS, variables=["score", "diag"])
    assert_same(got, sql_read(store, datasets=ALL_DATASETS, variables=["score", "diag"]))


def test_integers_beyond_2_53_are_filtered_through_sql(home):
    """float64 compares 2**53 + 1 as 2**53; SQLite compares integers exactly: such a column is not
    filtered from the snapshot, its values are still selected as the SQL read converts them."""
    store, folder = home
    with sqlite3.connect(store.engine.url.database) as raw:
        raw.execute(f"UPDATE {TABLE} SET score = ? WHERE _pid = ?", (2 ** 53 + 1, ROWS["_pid"].iloc[0]))
    kwargs = dict(datasets=ALL_DATASETS, variables=["score"], filters=where("score", "greater", 2 ** 53))
    assert snapshot_read(store, folder, **kwargs) is None
    assert len(sql_read(store, **kwargs)) == 1  # SQLite tells 2**53 + 1 from 2**53
    assert_same(sql_read(store, snapshot=True, **kwargs), sql_read(store, **kwargs))
    plain = dict(datasets=ALL_DATASETS, variables=["score"])
    assert_same(snapshot_read(store, folder, **plain), sql_read(store, **plain))


def test_no_snapshot_without_a_sqlite_file():
    store = FeatureStore("sqlite://")
    store.add_data_model(MODEL)
    assert current_snapshot(store, MODEL, KEY) is None


def test_a_snapshot_that_cannot_be_written_leaves_the_sql_read(home):
    """The snapshot folder cannot be made (here a file stands in its place; a full disk alike): the
    request is answered through SQL, as before."""
    store, folder = home
    folder.write_text("not a folder")
    kwargs = dict(datasets=ALL_DATASETS, variables=["age", "grade"])
    assert_same(sql_read(store, snapshot=True, **kwargs), sql_read(store, **kwargs))
    assert folder.read_text() == "not a folder"


def test_a_snapshot_removed_while_it_is_read_leaves_the_sql_read(home, monkeypatch):
    """A newer snapshot's writer removed the one a read had found (a load committed meanwhile): the
    read is answered through SQL."""
    import shutil

    from mipflow.node.query import snapshot as module

    store, folder = home
    found = write_snapshot(store, MODEL, KEY)

    def removed_meanwhile(*args):
        shutil.rmtree(found.path)
        return found

    monkeypatch.setattr(module, "current_snapshot", removed_meanwhile)
    kwargs = dict(datasets=ALL_DATASETS, variables=["age", "grade"])
    assert_same(sql_read(store, snapshot=True, **kwargs), sql_read(store, **kwargs))
