"""Which remembered rows a correction changed: the cohort ledger's value memory (ADR 0061, fifteenth review).

A cohort's value stamp (:mod:`mipflow.node.query.stamps`) says that *some* of its rows now hold other values;
the chain rule needs to know *which*.  Three releases ``B`` (everyone), ``B' ∪ N`` (everyone after a correction
and 12 new rows) and ``N`` (the new rows) are, by row keys, a zero combination ``B - (B' ∪ N) + N``; by values it
is the corrected row's old value less its new one (round 15, hole 2).

The memory, in the ledger's file, per data model and stamped column:

* ``row_cells``: every row a release read that column of, with a 32-bit digest of the value it released last
  (:func:`mipflow.node.query.stamps.digests_of`): the keys as the ledger stores a cohort's
  (:mod:`mipflow.node.controls.keycodec`, about 6 bytes a row) and 4 bytes a row, **about 10 bytes a row and
  column released**, whatever the number of cohorts; since ADR 0049's amendment on the first round's controls,
  the keys are written once for every column holding the same rows (``row_keysets``, named in ``row_cells.keys``
  by :data:`KEYSET_REF` and their blob's SHA-256; a blob written inline before is read as it is): **about 4 bytes
  a row and column and 6 a row**;
* ``row_changes``: for every row whose released value changed, each earlier digest with the last stamp
  (the ``stamps`` table's ``rowid``) recorded while it was the value: a few rows, 4 integers each.

A remembered cohort's row is the row it was for the stamps recorded after its last change and a **changed-value
unit** of its own before: its key mixed with the digests it released (:func:`versions`), for the columns the new
release reads only (a correction to a column it does not read changes nothing it could combine).  The chain rule
(:func:`mipflow.node.controls.chain.units_allow`) then refuses any combination of the family's sums that lives
on the versions of fewer than ``min_row_count`` rows: ``B - (B' ∪ N) + N`` is ``old - new`` of one row.
An honest repeat with no change keeps every row's identity, and rows never corrected are never versioned.
"""
from __future__ import annotations

import hashlib
import sqlite3
import zlib
from typing import Mapping, Sequence

import numpy as np

from mipflow.node.controls.keycodec import decode_keys, encode_keys
from mipflow.node.query.stamps import Cells, _mix, sorted_cells

#: ``entry index -> (sorted base row keys, their versioned keys)``
Versions = dict[int, tuple[np.ndarray, np.ndarray]]


#: The first bytes of a ``row_cells.keys`` that names a shared key set (``row_keysets``) rather than holding one:
#: a key blob starts with a zlib header or :data:`~mipflow.node.controls.keycodec.TAG`, never with these.
KEYSET_REF = b"MKR\x01"


def create(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS row_cells (data_model TEXT NOT NULL, variable TEXT NOT NULL, "
                 "keys BLOB NOT NULL, digests BLOB NOT NULL, PRIMARY KEY (data_model, variable))")
    # the columns of one release hold the same rows: their keys are stored once, named by their blob's SHA-256
    conn.execute("CREATE TABLE IF NOT EXISTS row_keysets (data_model TEXT NOT NULL, ref BLOB NOT NULL, "
                 "keys BLOB NOT NULL, PRIMARY KEY (data_model, ref))")
    conn.execute("CREATE TABLE IF NOT EXISTS row_changes (data_model TEXT NOT NULL, variable TEXT NOT NULL, "
                 "row_key INTEGER NOT NULL, digest INTEGER NOT NULL, until INTEGER NOT NULL)")
    conn.execute("CREATE INDEX IF NOT EXISTS row_changes_of ON row_changes (data_model, variable)")


def _as_int(keys: np.ndarray) -> list[int]:
    return np.asarray(keys, dtype=np.uint64).view(np.int64).tolist()  # SQLite's INTEGER is signed


def _load(conn: sqlite3.Connection, data_model: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    found = conn.execute("SELECT keys, digests FROM row_cells WHERE data_model = ? AND variable = ?",
                         (data_model, column)).fetchone()
    if found is None:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint32)
    keys = bytes(found[0])
    if keys.startswith(KEYSET_REF):  # a shared key set (a blob written inline before is read as it is)
        shared = conn.execute("SELECT keys FROM row_keysets WHERE data_model = ? AND ref = ?",
                              (data_model, keys)).fetchone()
        if shared is None:
            raise ValueError("the value memory names a key set it does not hold")
        keys = shared[0]
    return decode_keys(keys), np.frombuffer(found[1], dtype="<u4").astype(np.uint32)


def _last_stamp(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM stamps").fetchone()[0])


def _differing(keys: np.ndarray, digests: np.ndarray, known: np.ndarray, known_digests: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows not remembered (mask), rows whose remembered digest differs (mask), their remembered digests)``."""
    if not len(known):
        return np.ones(len(keys), dtype=bool), np.zeros(len(keys), dtype=bool), np.zeros(0, dtype=np.uint32)
    at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
    hit = known[at] == keys
    differ = hit & (known_digests[at] != digests)
    return ~hit, differ, known_digests[at[differ]]


def versions(conn: sqlite3.Connection, data_model: str, cells: Cells,
             entries: Sequence[tuple[str, np.ndarray]]) -> Versions:
    """The remembered cohorts ``entries`` (``(digest, sorted row keys)`` of ``data_model``) whose rows hold, in a
    column of ``cells`` (the new release's rows and digests) they were stamped with, a value released before a
    change: per such entry, those rows and their versioned keys (the key mixed with the old digests)."""
    if not cells or not entries:
        return {}
    now = _last_stamp(conn)
    events: dict[str, dict[int, list[tuple[int, int]]]] = {}
    for column, (keys, digests) in cells.items():
        found: dict[int, list[tuple[int, int]]] = {}
        for row, digest, until in conn.execute("SELECT row_key, digest, until FROM row_changes WHERE "
                                               "data_model = ? AND variable = ?", (data_model, column)):
            found.setdefault(int(np.int64(row).view(np.uint64)), []).append((int(until), int(digest)))
        known, known_digests = _load(conn, data_model, column)
        _, differ, old = _differing(np.asarray(keys, dtype=np.uint64), np.asarray(digests), known, known_digests)
        for row, digest in zip(np.asarray(keys, dtype=np.uint64)[differ].tolist(), old.tolist()):
            found.setdefault(int(row), []).append((now, int(digest)))  # changed since its last release
        if found:
            events[column] = {row: sorted(v) for row, v in found.items()}
    if not events:
        return {}
    marks = ",".join("?" * len(events))
    stamped: dict[str, dict[str, int]] = {}
    for digest, column, rowid in conn.execute(
            f"SELECT digest, variable, rowid FROM stamps WHERE data_model = ? AND variable IN ({marks})",
            (data_model, *events)):
        stamped.setdefault(digest, {})[column] = int(rowid)
    changed_rows = {c: np.array(sorted(e), dtype=np.uint64) for c, e in events.items()}
    out: Versions = {}
    for index, (digest, rows) in enumerate(entries):
        seen = stamped.get(digest)
        if not seen or not len(rows):
            continue
        old: dict[int, int] = {}
        for column in sorted(seen):
            candidates = changed_rows[column]
            at = np.minimum(np.searchsorted(rows, candidates), len(rows) - 1)
            for row in candidates[rows[at] == candidates].tolist():
                version = next((d for until, d in events[column][row] if until >= seen[column]), None)
                if version is not None:  # released before a change: the old value's unit
                    tag = zlib.crc32(column.encode()) << 32 | version
                    old[row] = (old.get(row, 0) * 1_000_003 + tag) % 2 ** 64
        if old:
            bases = np.array(sorted(old), dtype=np.uint64)
            tags = np.array([old[int(b)] for b in bases], dtype=np.uint64)
            out[index] = (bases, _mix(bases ^ _mix(tags | np.uint64(1))))
    return out


def versioned(rows: np.ndarray, change: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """A remembered cohort's sorted row keys with its changed rows' keys replaced by their versions."""
    if change is None:
        return rows
    bases, keys = change
    at = np.minimum(np.searchsorted(bases, rows), len(bases) - 1)
    kept = rows[bases[at] != rows]
    # only rows the set still holds take their versions (a set of an earlier consent epoch, ADR 0061, is seen
    # by its rows still held: a withdrawn row's version is not added back)
    present = np.isin(bases, rows)
    return np.sort(np.concatenate([kept, keys[present]]))


def unit_map(found: Versions) -> dict[int, int]:
    """``versioned key -> row key`` of every version in ``found``."""
    return {int(v): int(b) for bases, keys in found.values() for b, v in zip(bases.tolist(), keys.tolist())}


def record(conn: sqlite3.Connection, data_model: str, cells: Mapping[str, tuple[np.ndarray, np.ndarray]],
           sets: Sequence[np.ndarray]) -> None:
    """Remember the digests a release's rows (those of its recorded ``sets``) held in each stamped column, and
    each earlier digest that changed with the last stamp recorded under it; before the release's stamps."""
    if not cells or not sets:
        return
    from mipflow.node.controls.ledger import sorted_unique

    union = sorted_unique(np.concatenate([np.asarray(s, dtype=np.uint64) for s in sets]))
    now = _last_stamp(conn)
    refs: list[tuple[np.ndarray, bytes]] = []  # key sets written for a column before (the same rows in several)
    for column, (keys, digests) in cells.items():
        keys, digests = np.asarray(keys, dtype=np.uint64), np.asarray(digests, dtype=np.uint32)
        if len(keys) == len(union) and np.array_equal(keys, union):
            pass  # every row inside: the search below would keep them all
        elif len(union) and len(keys):
            at = np.minimum(np.searchsorted(union, keys), len(union) - 1)
            inside = union[at] == keys
            keys, digests = keys[inside], digests[inside]
        if not len(keys):
            continue
        known, known_digests = _load(conn, data_model, column)
        new, differ, old = _differing(keys, digests, known, known_digests)
        if differ.any():
            conn.executemany("INSERT INTO row_changes (data_model, variable, row_key, digest, until) "
                             "VALUES (?, ?, ?, ?, ?)", [(data_model, column, k, int(d), now) for k, d in
                                                        zip(_as_int(keys[differ]), old.tolist())])
        if differ.any() or new.any():
            merged, merged_digests = sorted_cells(np.concatenate([keys, known]),
                                                  np.concatenate([digests, known_digests]))
            ref = next((r for k, r in refs if len(k) == len(merged) and np.array_equal(k, merged)), None)
            if ref is None:  # keys not written for another column of this release: encoded and stored once
                blob = encode_keys(merged)
                ref = KEYSET_REF + hashlib.sha256(blob).digest()
                conn.execute("INSERT OR IGNORE INTO row_keysets (data_model, ref, keys) VALUES (?, ?, ?)",
                             (data_model, ref, blob))
                refs.append((merged, ref))
            conn.execute("INSERT OR REPLACE INTO row_cells (data_model, variable, keys, digests) VALUES (?, ?, ?, ?)",
                         (data_model, column, ref, merged_digests.astype("<u4").tobytes()))
    if refs:  # key sets no column names any more (a column's rows grew): dropped in the same transaction
        conn.execute("DELETE FROM row_keysets WHERE data_model = ? AND ref NOT IN "
                     "(SELECT keys FROM row_cells WHERE data_model = ? AND LENGTH(keys) = ?)",
                     (data_model, data_model, len(KEYSET_REF) + 32))
