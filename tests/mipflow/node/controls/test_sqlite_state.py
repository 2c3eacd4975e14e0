"""The durable state file shared by the cohort ledger and the partition memory."""
from __future__ import annotations

import sqlite3

import pytest

from mipflow.node.controls.sqlite_state import SqliteState


def test_one_connection_in_wal_mode_each_use_one_transaction(tmp_path) -> None:
    state = SqliteState(tmp_path / "state.sqlite")
    with state._lock, state._connect() as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ZeroDivisionError), state._lock, state._connect() as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        raise ZeroDivisionError  # the use fails: its transaction is rolled back
    with state._lock, state._connect() as again:
        assert again is conn and [r[0] for r in again.execute("SELECT x FROM t")] == [1]
        assert again.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    state.close()
    state.close()  # twice is fine
    other = sqlite3.connect(tmp_path / "state.sqlite")  # another process on the same home sees it
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 1
