"""The counted-set memory (ADR 0059, sixteenth-review amendment): every set an earlier release counted, with its rows'
grid indexes for each time-like variable it used; durable, one copy per distinct set, seen through the epoch view."""
from __future__ import annotations

import sqlite3

import numpy as np

from mipflow.node.controls.counted_memory import COUNTED_FILE, MISSING, CountedMemory
from mipflow.node.controls.epochs import EpochView

FINE = np.arange(0.0, 11.0)


def test_sets_survive_a_restart_with_their_times_only_for_the_variable_used(tmp_path):
    keys = np.array([3, 5, 9], dtype=np.uint64)
    CountedMemory(tmp_path).remember("r1", "m", [(keys, {"t": np.array([2, MISSING, 10])}), (keys[:2], {})])
    again = CountedMemory(tmp_path)  # a new process on the same home
    assert again.seen("r1") and not again.seen("r2")
    found = {tuple(k.tolist()): t for k, t in again.sets("m", "t", FINE)}
    assert set(found) == {(3, 5, 9), (3, 5)}
    np.testing.assert_array_equal(found[(3, 5, 9)], [2.0, np.nan, 10.0])
    assert found[(3, 5)] is None  # counted whole: its release did not use the time variable
    assert all(t is None for _, t in again.sets("m", "other", FINE))
    assert list(again.sets("another model", "t", FINE)) == []


def test_a_set_is_kept_once_however_often_it_is_released(tmp_path):
    memory = CountedMemory(tmp_path)
    keys = np.arange(1, 200, dtype=np.uint64)
    for k in range(20):
        memory.remember(f"r{k}", "m", [(keys, {"t": np.zeros(len(keys), dtype=np.int64)})])
    with sqlite3.connect(tmp_path / COUNTED_FILE) as conn:
        assert conn.execute("SELECT COUNT(*) FROM sets").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM times").fetchone()[0] == 1


def test_a_set_of_an_earlier_epoch_is_seen_by_its_rows_still_held(tmp_path):
    memory = CountedMemory(tmp_path)
    memory.remember("r", "m", [(np.array([1, 2, 3, 4], dtype=np.uint64), {"t": np.array([1, 2, 3, 4])})], epoch="")
    view = EpochView("after", lambda model: (np.array([1, 3, 4, 8], dtype=np.uint64), None))
    ((keys, times),) = list(memory.sets("m", "t", FINE, view))
    assert keys.tolist() == [1, 3, 4] and times.tolist() == [1.0, 3.0, 4.0]
