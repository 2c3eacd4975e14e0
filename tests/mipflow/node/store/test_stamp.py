"""A data model table's row stamp moves with every committed change, whoever writes (ADR 0049)."""
from __future__ import annotations

import sqlite3

import pandas as pd

from mipflow.node.store.feature_store import FeatureStore
from mipflow.node.store.stamp import install_stamp, read_stamp, trigger_names
from mipflow.protocol.datamodel import DataModel

MODEL = DataModel.from_dict({"code": "stamped", "version": "1", "label": "Stamp test", "variables": [
    {"code": "dataset", "sql_type": "text", "isCategorical": True, "enumerations": [{"code": "a", "label": "A"}]},
    {"code": "age", "sql_type": "real", "isCategorical": False}]})
TABLE = MODEL.table_name


def rows(n: int, age: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame({"_pid": [f"p{i}" for i in range(n)], "dataset": "a", "_visit": "", "age": age})


def stamp_of(path) -> tuple[str, int] | None:
    with sqlite3.connect(path) as conn:
        return read_stamp(conn.cursor(), TABLE)


def test_every_write_moves_the_stamp_and_reads_do_not(tmp_path):
    path = tmp_path / "store.sqlite"
    store = FeatureStore(f"sqlite:///{path}")
    store.add_data_model(MODEL)
    seen = [stamp_of(path)]
    assert seen[0] is not None and seen[0][1] == 0
    with store.begin() as conn:
        store.upsert_rows(conn, MODEL, rows(3), batch_id="b", sha256="0" * 64)
    seen.append(stamp_of(path))
    with store.begin() as conn:  # the same values again: an upsert still writes the rows
        store.upsert_rows(conn, MODEL, rows(3, age=2.0), batch_id="b2", sha256="1" * 64)
    seen.append(stamp_of(path))
    store.delete_patients(["p0"])
    seen.append(stamp_of(path))
    with sqlite3.connect(path) as raw:
        raw.execute(f"UPDATE {TABLE} SET age = 5 WHERE _pid = 'p1'")
    seen.append(stamp_of(path))
    assert stamp_of(path) == seen[-1]  # reading changes nothing
    assert len({epoch for epoch, _ in seen}) == 1
    counters = [counter for _, counter in seen]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    store.dispose()


def test_triggers_dropped_make_a_new_epoch(tmp_path):
    path = tmp_path / "store.sqlite"
    store = FeatureStore(f"sqlite:///{path}")
    store.add_data_model(MODEL)
    first = stamp_of(path)
    with sqlite3.connect(path) as raw:
        raw.execute(f'DROP TRIGGER "{trigger_names(TABLE)[0]}"')
    assert stamp_of(path) is None  # incomplete: no snapshot may be read by it
    with sqlite3.connect(path) as raw:
        again = install_stamp(raw, TABLE)
        assert install_stamp(raw, TABLE) == again  # complete: left as it is
    assert again[0] != first[0] and stamp_of(path) == again
    store.dispose()


def test_an_older_store_has_no_stamp_until_installed(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute(f"CREATE TABLE {TABLE} (_pid TEXT, dataset TEXT, _visit TEXT, age REAL)")
    assert stamp_of(path) is None
    with sqlite3.connect(path) as raw:
        install_stamp(raw, TABLE)
        raw.execute(f"INSERT INTO {TABLE} VALUES ('p', 'a', '', 1.0)")
    assert stamp_of(path)[1] == 1


def test_drop_snapshots_removes_stale_or_all(tmp_path):
    from mipflow.node.store.stamp import drop_snapshots, snapshot_folder, snapshot_name

    path = tmp_path / "store.sqlite"
    store = FeatureStore(f"sqlite:///{path}")
    store.add_data_model(MODEL)
    folder = snapshot_folder(store)
    assert folder == tmp_path / "snapshots"
    current = folder / snapshot_name(TABLE, stamp_of(path), "k")
    stale = folder / snapshot_name(TABLE, (stamp_of(path)[0], 99), "k")
    other = folder / snapshot_name("dm_other_1", stamp_of(path), "k")
    for made in (current, stale, other):
        made.mkdir(parents=True)
    assert drop_snapshots(store, TABLE, stale_only=True) == 1
    assert current.is_dir() and not stale.exists() and other.is_dir()
    assert drop_snapshots(store, TABLE) == 1 and not current.exists() and other.is_dir()
    assert drop_snapshots(FeatureStore("sqlite://"), TABLE) == 0  # no file, no snapshots
    store.dispose()
