"""The ledger's stored key sets (mipflow.node.controls.keycodec, ADR 0049 amended): format 2 round-trips,
a ledger written in format 1 (before) is read as it is, and the ledger decides the same either way."""
from __future__ import annotations

import sqlite3
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mipflow.exceptions import DisclosureError
from mipflow.node.controls import ledger as ledger_module
from mipflow.node.controls.atoms import node_primes
from mipflow.node.controls.keycodec import TAG, decode_keys, encode_keys, encode_keys_v1
from mipflow.node.controls.ledger import CohortLedger, sorted_unique

PRIMES = node_primes(bytes(range(32)))
M = 10


def _keys(values) -> np.ndarray:
    return np.unique(np.asarray(list(values), dtype=np.uint64))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=400))
def test_both_formats_round_trip_any_sorted_set(values):
    keys = _keys(values)
    for blob in (encode_keys(keys), encode_keys_v1(keys)):
        back = decode_keys(blob)
        assert back.dtype == np.uint64 and np.array_equal(back, keys)


@pytest.mark.parametrize("keys", [
    np.zeros(0, dtype=np.uint64), np.array([0], dtype=np.uint64), np.array([2**64 - 1], dtype=np.uint64),
    np.array([0, 2**64 - 1], dtype=np.uint64), np.arange(5000, dtype=np.uint64),  # dense: every plane zlib'd
    np.arange(0, 2**64 - 2**52, 2**52, dtype=np.uint64),
])
def test_edge_sets_round_trip(keys):
    assert np.array_equal(decode_keys(encode_keys(keys)), keys)


def test_a_format_1_blob_is_what_ledgers_before_wrote_and_still_reads():
    keys = _keys([3, 10, 2**40, 2**63 + 5])
    deltas = np.array([3, 7, 2**40 - 10, 2**63 + 5 - 2**40], dtype="<u8")
    old = zlib.compress(deltas.tobytes(), 1)  # the stored bytes of a ledger from before, spelled out
    assert encode_keys_v1(keys) == old and not old.startswith(TAG)
    assert np.array_equal(decode_keys(old), keys)
    assert encode_keys(keys).startswith(TAG)


def test_format_2_is_smaller_than_format_1_on_hashed_keys():
    keys = sorted_unique(np.random.default_rng(0).integers(0, 2**64, size=200_000, dtype=np.uint64))
    new, old = len(encode_keys(keys)), len(encode_keys_v1(keys))
    assert new < old and new / len(keys) < 6.5  # ~6.2 at 200k keys (5.8 at 1M), format 1 ~7.1


def test_a_damaged_blob_is_refused_not_misread():
    blob = encode_keys(_keys(range(0, 2**40, 2**30)))
    with pytest.raises((ValueError, zlib.error)):
        decode_keys(blob[:-3])
    with pytest.raises(ValueError):
        decode_keys(blob[:len(TAG) + 9 + 4])


def _session():
    """An honest researcher's cohorts, then near-copies and a chain the rules refuse."""
    everyone = _keys(range(1000, 1200))
    return [
        ("m:1", everyone, _keys(range(200))),
        ("m:1", everyone[:150], _keys(range(150))),
        ("m:1", everyone[1:], _keys(range(1, 200))),  # a near-copy of everyone: refused
        ("m:1", everyone[150:], _keys(range(150, 200))),  # everyone minus the first: answered
        ("m:1", everyone[:149], _keys(range(149))),  # a near-copy of the second: refused
        ("m:2", _keys(range(7000, 7199)), _keys(range(1, 200))),  # the same patients but one: refused
        ("m:2", _keys(range(7000, 7100)), _keys(range(500, 600))),
    ]


def _decisions(ledger: CohortLedger) -> list[bool]:
    out = []
    for model, rows, patients in _session():
        try:
            ledger.check(model, [rows], M, patients=[patients], primes=PRIMES)
        except DisclosureError:
            out.append(False)
            continue
        ledger.record(model, [rows], patients=[patients])
        out.append(True)
    return out


def test_the_ledger_decides_the_same_from_either_format_and_from_a_mix(tmp_path, monkeypatch):
    new = _decisions(CohortLedger(_mkdir(tmp_path / "new")))
    assert new == [True, True, False, True, False, False, True]
    with monkeypatch.context() as patch:  # a ledger written before: every blob in format 1
        patch.setattr(ledger_module, "encode_keys", encode_keys_v1)
        old = _decisions(CohortLedger(_mkdir(tmp_path / "old")))
        assert _formats(tmp_path / "old") == {"v1"}
    assert old == new
    # that old ledger read again by this code (a restart), and answering more in format 2
    again = CohortLedger(tmp_path / "old")
    for model, rows, patients in _session()[:2]:  # answered before: passes, nothing written
        again.check(model, [rows], M, patients=[patients], primes=PRIMES)
    with pytest.raises(DisclosureError):
        again.check("m:1", [_keys(range(1001, 1200))], M, primes=PRIMES)
    again.record("m:3", [_keys(range(9000, 9100))], patients=[_keys(range(300, 400))])
    assert _formats(tmp_path / "old") == {"v1", "v2"}
    mixed = CohortLedger(tmp_path / "old")  # another process reads both formats
    assert set(mixed.cohorts("m:1")) == set(CohortLedger(tmp_path / "new").cohorts("m:1"))
    assert np.array_equal(mixed.cohorts("m:3")[next(iter(mixed.cohorts("m:3")))], _keys(range(9000, 9100)))


def test_what_a_process_records_is_what_another_reads(tmp_path):
    writer, reader = CohortLedger(tmp_path), CohortLedger(tmp_path)
    rows = sorted_unique(np.random.default_rng(1).integers(0, 2**64, size=5000, dtype=np.uint64))
    writer.record("m:1", [rows], patients=[rows[::2]])
    (mine,) = writer.cohorts("m:1").values()
    (theirs,) = reader.cohorts("m:1").values()  # decoded from the stored blob
    assert np.array_equal(mine, rows) and np.array_equal(theirs, rows)
    assert [np.array_equal(e.patients, rows[::2]) for e in (*writer._entries.values(), *reader._entries.values())] \
        == [True, True]


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _formats(root) -> set[str]:
    with sqlite3.connect(root / "cohorts.sqlite") as conn:
        blobs = [b for row in conn.execute("SELECT keys, patients FROM cohorts") for b in row if b is not None]
    return {"v2" if bytes(b).startswith(TAG) else "v1" for b in blobs}


def test_a_cohort_another_process_stored_first_is_kept_as_stored(tmp_path, monkeypatch):
    """The same cohort stored by another process between this one's look and its insert (ignored): this
    process keeps what is stored (its patients none), not what it meant to write."""
    first, second = CohortLedger(tmp_path), CohortLedger(tmp_path)
    rows = sorted_unique(np.random.default_rng(2).integers(0, 2**64, size=3000, dtype=np.uint64))
    real, calls = second._refresh, []

    def then_the_other(written=None):
        real(written)
        calls.append(written)
        if len(calls) == 1:  # after this process's look, before its insert
            first.record("m:1", [rows])

    monkeypatch.setattr(second, "_refresh", then_the_other)
    second.record("m:1", [rows], patients=[rows[::3]])
    assert calls[-1] is not None  # the insert was ignored and what is stored read back
    (entry,) = second._entries.values()
    assert np.array_equal(entry.rows, rows) and entry.patients is None
    with sqlite3.connect(tmp_path / "cohorts.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*), MAX(patients IS NULL) FROM cohorts").fetchone() == (1, 1)
    third = CohortLedger(tmp_path)  # a later process: the same
    (entry,) = third._entries.values() if third._refresh() is None else ()
    assert np.array_equal(entry.rows, rows) and entry.patients is None


def _format_2_as_first_written(keys: np.ndarray) -> bytes:
    """encode_keys as format 2 was first written (every plane transposed at once): the reference."""
    keys = np.asarray(keys, dtype=np.uint64)
    n = len(keys)
    deltas = np.diff(keys, prepend=np.uint64(0)) if n else keys
    raw = min(((int(keys[-1]) // n).bit_length() + 7) // 8, 7) if n else 0
    planes = np.ascontiguousarray(deltas.astype("<u8", copy=False).view(np.uint8).reshape(n, 8).T)
    return b"".join((TAG, struct.pack("<QB", n, raw), planes[:raw].tobytes(),
                     zlib.compress(planes[raw:].tobytes(), 1)))


@pytest.mark.parametrize("size", [0, 1, 2, 1000, 100_000])
def test_format_2_written_plane_by_plane_is_the_same_blob(size):
    rng = np.random.default_rng(size)
    for keys in (sorted_unique(rng.integers(0, 2**64, size=size, dtype=np.uint64)),
                 np.arange(size, dtype=np.uint64) * np.uint64(3)):
        blob = encode_keys(keys)
        assert isinstance(blob, bytes) and blob == _format_2_as_first_written(keys)
        assert np.array_equal(decode_keys(blob), keys)
