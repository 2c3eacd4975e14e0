"""Value stamps: what a remembered cohort's rows held in the columns a release read (ADR 0061, hole 2).

The memories identify a row by a keyed hash of its store identity ``(_pid, dataset, _visit)``
(:func:`mipflow.node.controls.differencing.row_keys`).  A nightly load that corrects a value in place
keeps that identity: the release before the correction and the same release after it were the same
cohort to every memory, an exact repeat, both answered, and their difference was the corrected
patient's old and new value (thirteenth outside review, hole 2).

A **stamp** is, per cohort and per column a release reads, the sum mod 2**64 of a keyed 64-bit hash
of every cell ``(row key, column, value)`` of the cohort's rows (:func:`cell_hashes`): a multiset hash,
equal for the same rows holding the same values in that column, whatever their order, and different
(but for a chance of 2**-64) once any of them holds another value.  It is computed from the frame a
step reads (:func:`frame_stamps`) or a block at a time from rows left on disk
(:meth:`mipflow.node.query.snapshot_rows.SnapshotRows.stamps`): the same numbers, since both hash the
same canonical value bits (:func:`value_bits`).  The cohort ledger keeps the first stamp of each
(cohort, column) and compares an exact repeat's stamps with them on the columns both read
(:meth:`mipflow.node.controls.ledger.CohortLedger.check`): any difference refuses the repeat.

The columns: the variables the step reads and the columns splitting its statistics (``released_by``).
Filter variables enter through the cohort's rows: a corrected filter value either moves the row in or
out of the cohort (another cohort, the ordinary rules) or changes nothing the release computes.  A
column the release does not read is not stamped, so correcting it leaves an honest repeat a repeat.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

#: Canonical bits of a missing value (any NaN, None): one constant, never a float's bits.
MISSING = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wraps mod 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def column_salt(key: str, column: str) -> np.uint64:
    """A column's 64-bit salt, keyed by the ledger key (from the node secret, never the request)."""
    digest = hmac.new(key.encode(), b"mipflow value stamp v1\0" + column.encode(), hashlib.sha256).digest()
    return np.frombuffer(digest[:8], dtype="<u8")[0].astype(np.uint64)


def level_bits(levels: Sequence[object], key: str) -> np.ndarray:
    """Canonical bits of categorical values (their text; missing: :data:`MISSING`)."""
    values = pd.Series(list(levels), dtype=object)
    missing = values.isna().to_numpy()
    bits = pd.util.hash_array(values.where(~missing, "").astype(str).to_numpy(dtype=object), hash_key=key,
                              categorize=True)
    bits[missing] = MISSING
    return bits


def value_bits(values: object, key: str) -> np.ndarray:
    """Canonical 64-bit images of a column's values: a number's float64 bits (``-0.0`` as ``0.0``), a
    category's keyed hash of its text, :data:`MISSING` for a missing value."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        numbers = series.to_numpy(dtype=float, na_value=np.nan) + 0.0
        bits = numbers.view(np.uint64).copy()
        bits[np.isnan(numbers)] = MISSING
        return bits
    return level_bits(series.astype(object).tolist(), key)


def code_table(levels: Sequence[object] | None, key: str) -> np.ndarray | None:
    """The canonical bits of a stored categorical column's level codes, then :data:`MISSING` (for a code
    outside the table); None for a numerical column (``levels`` None)."""
    return None if levels is None else np.append(level_bits(levels, key), MISSING)


def stored_bits(values: np.ndarray, table: np.ndarray | None, key: str) -> np.ndarray:
    """:func:`value_bits` of a block of a column left on disk: numbers as they are, level codes through their
    :func:`code_table` (a code outside it, none in a complete-case selection: missing)."""
    if table is None:
        return value_bits(values, key)
    codes = np.asarray(values, dtype=np.int64)
    return table[np.where((codes >= 0) & (codes < len(table) - 1), codes, len(table) - 1)]


def cell_hashes(row_keys: np.ndarray, bits: np.ndarray, salt: np.uint64) -> np.ndarray:
    """A keyed 64-bit hash of each cell ``(row, column, value)``."""
    return _mix(np.asarray(row_keys, dtype=np.uint64) ^ salt ^ _mix(np.asarray(bits, dtype=np.uint64) ^ salt))


def stamp_of(hashes: np.ndarray) -> int:
    """The stamp of a set of cells: their hashes' sum mod 2**64."""
    return int(np.add.reduce(np.asarray(hashes, dtype=np.uint64), dtype=np.uint64))


def stamped_columns(frame_columns: Iterable[str], variables: Sequence[str], by: Sequence[str] = ()) -> list[str]:
    """The columns a step reads that are stamped: its variables and its ``by`` columns, as the frame holds
    them (each once, in order)."""
    present = set(frame_columns)
    return [c for c in dict.fromkeys([*variables, *by]) if c in present]


def frame_stamps(frame: pd.DataFrame, row_keys: np.ndarray, masks: Sequence[np.ndarray], columns: Sequence[str],
                 key: str) -> tuple[dict[str, int], ...]:
    """Per mask (a cohort of ``frame``'s rows), ``column -> stamp`` of each of ``columns``."""
    out: list[dict[str, int]] = [{} for _ in masks]
    for column in columns:
        hashes = cell_hashes(row_keys, value_bits(frame[column], key), column_salt(key, column))
        for stamps, mask in zip(out, masks):
            stamps[column] = stamp_of(hashes if bool(np.all(mask)) else hashes[mask])
    return tuple(out)


def changed(new: Mapping[str, int], old: Mapping[str, int]) -> bool:
    """Whether two stamps of one cohort differ on a column both read."""
    return any(int(new[c]) != int(old[c]) for c in new.keys() & old.keys())


# --------------------------------------------------------------------------- which rows changed (ADR 0061, round 15)


def patient_salt(key: str, column: str) -> np.uint64:
    """A column's salt for its **patient stamp**: the stamp of ``(patient key, column, value)`` cells, the same
    for two data-model versions holding the same patients with the same values (round 15 hole 3)."""
    return column_salt(key, "\0patient\0" + column)


def digests_of(hashes: np.ndarray) -> np.ndarray:
    """A row's short value digest of a column: the low 32 bits of its cell hash (a change is missed with
    chance 2**-32 a corrected row; the cohort's 64-bit stamp still sees it on an exact repeat)."""
    return (np.asarray(hashes, dtype=np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def first_of_sorted(keys: np.ndarray) -> np.ndarray:
    """The order that sorts ``keys`` (stably), without its repeats' later positions: ``keys[first_of_sorted(keys)]``
    is the sorted unique keys, each at its first position.  One sort, shared by every column of the same rows."""
    keys = np.asarray(keys, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    if len(keys) > 1:
        ordered = keys[order]
        distinct = ordered[1:] != ordered[:-1]
        if not distinct.all():
            order = order[np.concatenate(([True], distinct))]
    return order


def sorted_cells(keys: np.ndarray, digests: np.ndarray, order: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted unique row keys, their digests)`` of rows given in any order (a key twice: its first).
    ``order``: :func:`first_of_sorted` of these very ``keys``, when the caller has it (several columns of the
    same rows).  Keys already strictly increasing are returned as they are (the sort would not move them)."""
    keys = np.asarray(keys, dtype=np.uint64)
    digests = np.asarray(digests, dtype=np.uint32)
    if order is None:
        if len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1])):
            return keys.copy(), digests.copy()
        order = first_of_sorted(keys)
    return keys[order], digests[order]


#: ``column -> (sorted unique row keys, 32-bit value digests)`` of the rows a release reads.
Cells = dict[str, tuple[np.ndarray, np.ndarray]]


def frame_values(frame: pd.DataFrame, row_keys: np.ndarray, patient_keys: np.ndarray | None,
                 masks: Sequence[np.ndarray], columns: Sequence[str], key: str
                 ) -> tuple[tuple[dict[str, int], ...], tuple[dict[str, int], ...] | None, Cells]:
    """:func:`frame_stamps`, each mask's patient stamps (None without patient keys) and the rows' value
    digests of each column over the union of the masks (:data:`Cells`)."""
    out: list[dict[str, int]] = [{} for _ in masks]
    by_patient: list[dict[str, int]] | None = None if patient_keys is None else [{} for _ in masks]
    union = np.logical_or.reduce([np.asarray(m, dtype=bool) for m in masks]) if masks else np.zeros(len(frame), bool)
    cells: Cells = {}
    union_keys = np.asarray(row_keys, dtype=np.uint64)[union]
    order = first_of_sorted(union_keys) if columns else None  # the same rows in every column: one sort
    ordered_keys = union_keys[order] if columns else union_keys
    ordered_keys.flags.writeable = False  # shared by every column's cells
    for column in columns:
        bits = value_bits(frame[column], key)
        hashes = cell_hashes(row_keys, bits, column_salt(key, column))
        patient = None if patient_keys is None else cell_hashes(patient_keys, bits, patient_salt(key, column))
        for i, mask in enumerate(masks):
            every = bool(np.all(mask))
            out[i][column] = stamp_of(hashes if every else hashes[mask])
            if by_patient is not None and patient is not None:
                by_patient[i][column] = stamp_of(patient if every else patient[mask])
        cells[column] = (ordered_keys, digests_of(hashes[union])[order])  # sorted_cells(union_keys, ..., order)
    return tuple(out), None if by_patient is None else tuple(by_patient), cells
