"""The first round's fast paths (ADR 0049, amendment "the first round's privacy controls") give what the slow paths
gave: the value digests' cells sorted once for every column, the counted sets told apart by a sort (once for the
masks keeping every row) rather than ``numpy.unique`` of each, and the value memory's record skipping a search that
keeps every row and encoding the same keys once.  Random and adversarial inputs; each reference is the code as it
was before the change."""
from __future__ import annotations

import sqlite3
import zlib
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mipflow.node.controls import value_memory
from mipflow.node.controls.keycodec import encode_keys
from mipflow.node.controls.pooled_counts import counted_sets, counted_sets_unique
from mipflow.node.query.stamps import first_of_sorted, frame_values, sorted_cells

TOP = np.uint64(2 ** 64 - 1)


def old_sorted_cells(keys, digests):
    """``stamps.sorted_cells`` before the change."""
    keys = np.asarray(keys, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    keys, digests = keys[order], np.asarray(digests, dtype=np.uint32)[order]
    if len(keys) > 1:
        first = np.concatenate(([True], keys[1:] != keys[:-1]))
        keys, digests = keys[first], digests[first]
    return keys, digests


def key_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(49)
    random = rng.integers(0, 2 ** 64 - 1, 5000, dtype=np.uint64, endpoint=True)
    few = rng.integers(0, 40, 3000).astype(np.uint64)  # many repeats
    increasing = np.unique(random)
    return [np.zeros(0, np.uint64), np.array([7], np.uint64), np.array([TOP, TOP, 0, TOP], np.uint64),
            np.full(100, 5, np.uint64), random, few, increasing, increasing[::-1].copy(),
            np.sort(few),  # non-decreasing with repeats: not the strictly increasing fast path
            np.concatenate([increasing, increasing[:10]]),  # a sorted run, then repeats of its start
            np.concatenate([increasing[1:], increasing[:1]]),  # sorted but for the last key
            np.array([0, TOP], np.uint64), np.array([TOP, 0], np.uint64)]


@pytest.mark.parametrize("case", range(len(key_cases())))
def test_sorted_cells_with_and_without_a_shared_order_are_the_old_ones(case: int) -> None:
    keys = key_cases()[case]
    digests = np.random.default_rng(case).integers(0, 2 ** 32, len(keys), dtype=np.uint64).astype(np.uint32)
    want = old_sorted_cells(keys, digests)
    for got in (sorted_cells(keys, digests), sorted_cells(keys, digests, first_of_sorted(keys))):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])  # a repeated key keeps its first position's digest
        assert got[0].dtype == np.uint64 and got[1].dtype == np.uint32
    np.testing.assert_array_equal(keys[first_of_sorted(keys)], np.unique(keys))


def test_a_repeated_key_keeps_its_first_digest() -> None:
    """Not vacuous: the digest kept for a repeated key is the first one (the other would differ)."""
    keys = np.array([9, 3, 9, 3, 1], np.uint64)
    digests = np.array([1, 2, 3, 4, 5], np.uint32)
    got = sorted_cells(keys, digests, first_of_sorted(keys))
    np.testing.assert_array_equal(got[0], [1, 3, 9])
    np.testing.assert_array_equal(got[1], [5, 2, 1])


def test_frame_values_cells_are_each_columns_own_sort() -> None:
    rng = np.random.default_rng(3)
    n = 4000
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
                          "c": rng.integers(0, 3, n).astype(float)})
    row_keys = rng.integers(0, 2 ** 64 - 1, n, dtype=np.uint64, endpoint=True)
    row_keys[::50] = row_keys[1::50]  # repeated keys
    masks = [rng.random(n) < 0.5, rng.random(n) < 0.3]
    stamps, _, cells = frame_values(frame, row_keys, None, masks, ["a", "b", "c"], "k")
    union = masks[0] | masks[1]
    from mipflow.node.query.stamps import cell_hashes, column_salt, digests_of, value_bits

    for column in ("a", "b", "c"):
        hashes = cell_hashes(row_keys, value_bits(frame[column], "k"), column_salt("k", column))
        want = old_sorted_cells(row_keys[union], digests_of(hashes[union]))
        np.testing.assert_array_equal(cells[column][0], want[0])
        np.testing.assert_array_equal(cells[column][1], want[1])
    assert len({cells[c][1].tobytes() for c in "abc"}) == 3  # the columns' digests differ: compared for real


# --------------------------------------------------------------------------- counted sets


def old_counted_sets(work):
    """``pooled_counts.counted_sets`` before the change (no groups, numerical variables)."""
    cohorts = work.cohorts
    sets = [(keys, None if cohorts.patients is None else cohorts.patients[i], None)
            for i, keys in enumerate(cohorts.sets)]
    order, people = np.asarray(cohorts.order, dtype=np.uint64), np.asarray(cohorts.patient_order)
    sets[0] = (sets[0][0], sets[0][1], np.ones(len(order), dtype=bool))
    for code in work.variables:
        mask = ~np.isnan(work.data[code].to_numpy(dtype=float))
        sets.append((order[mask], people[mask], mask))
    seen, out = set(), []
    for keys, patients, mask in sets:
        ident = np.unique(np.asarray(keys, dtype=np.uint64)).tobytes()
        if ident not in seen:
            seen.add(ident)
            out.append((keys, patients, mask))
    return out


def a_work(order: np.ndarray, cohort: np.ndarray, frame: pd.DataFrame):
    variable = SimpleNamespace(is_categorical=False)
    cohorts = SimpleNamespace(sets=[cohort], patients=[cohort // np.uint64(3)], order=order,
                              patient_order=order // np.uint64(3), data_model="m:1", digest="d")
    return SimpleNamespace(cohorts=cohorts, data=frame, variables=list(frame.columns),
                           model=SimpleNamespace(variable=lambda code: variable), algo=None, groups=None)


def counted_cases():
    rng = np.random.default_rng(11)
    n = 3000
    order = rng.integers(0, 2 ** 64 - 1, n, dtype=np.uint64, endpoint=True)
    order[5] = order[9]  # a repeated row key
    full = pd.DataFrame({"x": rng.normal(size=n), "y": rng.normal(size=n)})
    holes = full.assign(z=np.where(rng.random(n) < 0.2, np.nan, 1.0), w=np.where(rng.random(n) < 0.2, np.nan, 2.0))
    same_holes = full.assign(z=np.where(np.arange(n) % 7 == 0, np.nan, 1.0))
    same_holes = same_holes.assign(w=same_holes["z"] * 2)
    cohort = np.unique(order)
    return [(order, cohort, full), (order, cohort, holes), (order, cohort, same_holes),
            # adversarial: the cohort is not the step's rows (a set all-True masks must not be confused with)
            (order, cohort[:-1], full), (order, np.unique(order[:10]), holes),
            (np.sort(order), cohort, full), (order[:1], np.unique(order[:1]), full.iloc[:1]),
            (order[:0], np.zeros(0, np.uint64), full.iloc[:0])]


@pytest.mark.parametrize("case", range(len(counted_cases())))
def test_counted_sets_are_the_old_ones_with_their_unique_keys(case: int) -> None:
    work = a_work(*counted_cases()[case])
    want = old_counted_sets(work)
    got = counted_sets_unique(work=work, request=None)
    assert len(got) == len(want) == len(counted_sets(None, work))
    for (keys, people, mask, unique), (w_keys, w_people, w_mask) in zip(got, want):
        np.testing.assert_array_equal(keys, w_keys)
        np.testing.assert_array_equal(people, w_people)
        np.testing.assert_array_equal(mask, w_mask)
        np.testing.assert_array_equal(unique, np.unique(np.asarray(w_keys, dtype=np.uint64)))
        assert unique.dtype == np.uint64


def test_counted_sets_tell_the_step_rows_from_a_cohort_missing_one() -> None:
    """Not vacuous: a cohort short of one row is a set of its own beside the variables' all-row sets."""
    order, cohort, frame = counted_cases()[3]
    got = counted_sets_unique(None, a_work(order, cohort, frame))
    assert len(got) == 2
    np.testing.assert_array_equal(got[1][3], np.unique(order))


# --------------------------------------------------------------------------- the value memory's record


def test_the_value_memory_records_each_columns_rows_inside_the_release() -> None:
    rng = np.random.default_rng(5)
    union = np.unique(rng.integers(0, 2 ** 63, 3000, dtype=np.uint64))
    extra = np.setdiff1d(np.unique(rng.integers(0, 2 ** 63, 500, dtype=np.uint64)), union)
    wider = np.union1d(union, extra)
    digests = {name: rng.integers(0, 2 ** 32, size, dtype=np.uint64).astype(np.uint32)
               for name, size in (("a", len(union)), ("b", len(wider)), ("c", len(union)), ("d", 40))}
    cells = {"a": (union, digests["a"]), "b": (wider, digests["b"]), "c": (union.copy(), digests["c"]),
             "d": (union[::75].copy(), digests["d"])}
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE stamps (x)")
    value_memory.create(conn)
    value_memory.record(conn, "m:1", cells, [union[: len(union) // 2], union[len(union) // 2:]])
    inside_b = np.isin(wider, union)
    want = {"a": (union, digests["a"]), "b": (wider[inside_b], digests["b"][inside_b]),
            "c": (union, digests["c"]), "d": (union[::75], digests["d"])}
    for column, (keys, values) in want.items():
        got_keys, got_digests = value_memory._load(conn, "m:1", column)
        np.testing.assert_array_equal(got_keys, keys)
        np.testing.assert_array_equal(got_digests, values)
    assert inside_b.sum() < len(wider)  # b's rows outside the release were dropped: the search ran
    # the same rows' keys are stored once: a, b and c share one key set, d has its own
    assert conn.execute("SELECT COUNT(*) FROM row_keysets").fetchone()[0] == 2
    refs = dict(conn.execute("SELECT variable, keys FROM row_cells").fetchall())
    assert refs["a"] == refs["b"] == refs["c"] != refs["d"] and refs["a"].startswith(value_memory.KEYSET_REF)
    # a later release over more rows in column d: d's old key set, named by no column, is dropped
    more = np.union1d(union[::75], union[1::75])
    value_memory.record(conn, "m:1", {"d": (more, np.zeros(len(more), np.uint32))}, [more])
    assert conn.execute("SELECT COUNT(*) FROM row_keysets").fetchone()[0] == 2
    np.testing.assert_array_equal(value_memory._load(conn, "m:1", "d")[0], more)
    np.testing.assert_array_equal(value_memory._load(conn, "m:1", "a")[0], union)


def test_a_value_memory_written_inline_before_is_read_and_rewritten_shared() -> None:
    """Rows of ``row_cells`` holding their key blob (format 1 or 2, written before) are read as they are; a later
    record of the column writes it shared and keeps the digests it had for rows it does not release again."""
    rng = np.random.default_rng(8)
    keys = np.unique(rng.integers(0, 2 ** 64 - 1, 2000, dtype=np.uint64, endpoint=True))
    digests = rng.integers(0, 2 ** 32, len(keys), dtype=np.uint64).astype(np.uint32)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE stamps (x)")
    value_memory.create(conn)
    old = np.diff(keys, prepend=np.uint64(0)).astype("<u8").tobytes()
    conn.execute("INSERT INTO row_cells VALUES ('m:1', 'a', ?, ?)", (zlib.compress(old), digests.tobytes()))
    conn.execute("INSERT INTO row_cells VALUES ('m:1', 'b', ?, ?)", (encode_keys(keys), digests.tobytes()))
    for column in "ab":
        np.testing.assert_array_equal(value_memory._load(conn, "m:1", column)[0], keys)
        np.testing.assert_array_equal(value_memory._load(conn, "m:1", column)[1], digests)
    fresh = np.unique(rng.integers(0, 2 ** 64 - 1, 30, dtype=np.uint64, endpoint=True))
    value_memory.record(conn, "m:1", {"a": (fresh, np.ones(len(fresh), np.uint32))}, [fresh])
    got, got_digests = value_memory._load(conn, "m:1", "a")
    np.testing.assert_array_equal(got, np.union1d(keys, fresh))
    np.testing.assert_array_equal(got_digests[np.isin(got, keys)], digests)
    assert conn.execute("SELECT COUNT(*) FROM row_keysets").fetchone()[0] == 1  # b's inline blob kept as it is
    np.testing.assert_array_equal(value_memory._load(conn, "m:1", "b")[0], keys)


def test_a_missing_shared_key_set_is_an_error_not_an_empty_memory() -> None:
    conn = sqlite3.connect(":memory:")
    value_memory.create(conn)
    conn.execute("INSERT INTO row_cells VALUES ('m:1', 'a', ?, ?)", (value_memory.KEYSET_REF + bytes(32), b""))
    with pytest.raises(ValueError):
        value_memory._load(conn, "m:1", "a")
