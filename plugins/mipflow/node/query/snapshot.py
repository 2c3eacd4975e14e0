"""A data model's rows as columns on disk, kept beside a SQLite store and read instead of it (ADR 0049).

A node's first round of a new selection read every row through SQLite's key index, hashed each
row's identity twice and built columns from Python tuples: about 6 s at 1M rows.  The snapshot does
that work once per change of the rows.  It holds, in the store's key order
(``_pid, dataset, _visit``, the order every selection has):

* one ``.npy`` file per numerical variable (float64, NaN where NULL, converted as the SQL read
  converts), per categorical variable (int32 codes, -1 where NULL, into a level table of the stored
  values) and for the dataset (codes and levels);
* the ledger's row and patient keys (uint64, :func:`mipflow.node.query.rowkeys.identity_keys` under
  the node's key, bit for bit those of the SQL read), and each in key order with the rows' positions
  (``*_sorted.npy``, ``*_order.npy``; ``meta.json``'s ``sorted_keys``): a selection's sorted keys,
  which the differencing controls need, are a gather instead of a sort;
* ``meta.json``: the stamp it was written at, the key's fingerprint, the row count, the columns and
  their level tables.  Text variables are not held.

**Never stale.**  The folder's name carries the table's row stamp
(:mod:`mipflow.node.store.stamp`: triggers move it with every committed insert, update and delete)
and the key's fingerprint; a reader takes the current stamp first and reads only the snapshot of
that name, else writes one.  The writer reads the stamp and the rows in one read transaction, so the
snapshot is of exactly the rows that stamp names.

**Written atomically.**  Into a temporary folder beside it, renamed into place when complete; a
concurrent writer of the same stamp loses the rename and removes its copy; older snapshots of the
table are removed after.  Folders are ``0700`` and files ``0600``: row-level data, like the store.  They live in
:data:`~mipflow.node.store.stamp.SNAPSHOT_DIR` beside the store's file (the node home for the default
store); a consent withdrawal drops the table's snapshots at once
(:meth:`~mipflow.node.store.feature_store.FeatureStore.delete_patients`).

:func:`select_columns` answers :func:`mipflow.node.query.read.select_frame`'s keyed reads from it:
datasets, filters (:mod:`mipflow.node.query.masks`) and complete-case as boolean masks, then the
chosen columns taken at the selected rows.  It returns None whenever it cannot give the SQL read's
frame exactly (a text variable, a filter it cannot evaluate exactly, a column holding values SQLite
would compare otherwise); the caller then reads through SQL as before.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from mipflow.node.query.masks import MaskColumn, Unsupported, filter_mask
from mipflow.node.query.rowkeys import (
    KEY_OWNER, PID_KEY, ROW_KEY, attach_sorted_keys, identity_keys, key_fingerprint,
)
from mipflow.node.store.stamp import (
    SNAPSHOT_DIR,
    current_stamp,
    install_stamp,
    read_stamp,
    snapshot_folder,
    snapshot_name,
    sqlite_file,
)
from mipflow.protocol.datamodel import DataModel, Variable

log = logging.getLogger(__name__)

__all__ = ["SNAPSHOT_DIR", "Snapshot", "current_snapshot", "select_columns", "write_snapshot"]
#: Layout version of a snapshot folder (another is ignored and written again).
FORMAT = 1
#: Rows fetched from SQLite per round trip while writing.
CHUNK_ROWS = 50_000
#: SQLite page cache (KiB, negative) while a snapshot is written: the rows stream past once.
_PAGE_CACHE = -8192
_EXACT = 2.0 ** 53
#: A temporary snapshot folder untouched this long was left by a writer that crashed.
STALE_TEMPORARY_SECONDS = 3600


def _connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=60, isolation_level=None)  # transactions begun explicitly


def _name(table: str, stamp: tuple[str, int], key: str) -> str:
    return snapshot_name(table, stamp, key_fingerprint(key))


# --------------------------------------------------------------------------- the snapshot on disk


@dataclass(frozen=True)
class Snapshot:
    """A written snapshot: its folder and ``meta.json``."""

    path: Path
    meta: dict[str, Any]

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    def array(self, name: str) -> np.ndarray:
        """A column file, mapped read-only (``name``: a file stem of ``meta.json``)."""
        return np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    def column(self, code: str) -> dict[str, Any] | None:
        """``meta.json``'s entry of a variable (None: not held)."""
        return self.meta["columns"].get(code)


def _open(path: Path, key: str) -> Snapshot | None:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or meta.get("key") != key_fingerprint(key):
        return None
    return Snapshot(path, meta)


def _private_file(path: Path) -> Any:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


class _ColumnFile:
    """A ``.npy`` file of ``rows`` values written chunk by chunk (no memory map: the pages written
    would count as the node's resident memory)."""

    def __init__(self, path: Path, dtype: Any, rows: int) -> None:
        self.handle = _private_file(path)
        self.dtype = np.dtype(dtype)
        self.expected = rows
        self.written = 0
        np.lib.format.write_array_header_1_0(self.handle, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (rows,)})

    def append(self, values: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.written += len(values)

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        if self.written != self.expected:  # a bug, never a request's fault
            raise RuntimeError(f"snapshot column has {self.written} rows, expected {self.expected}")


class _Levels:
    """A categorical column's level table, filled chunk by chunk."""

    def __init__(self) -> None:
        self.index: dict[Any, int] = {}
        self.values: list[Any] = []
        self.mixed = False  # int and float levels (impossible under SQLite's affinities): not usable

    def codes(self, raw: Sequence[Any]) -> np.ndarray:
        local, uniques = pd.factorize(np.array(raw, dtype=object), use_na_sentinel=True)
        lut = np.empty(len(uniques) + 1, dtype=np.int32)
        lut[-1] = -1
        for i, value in enumerate(uniques.tolist()):
            code = self.index.get(value)
            if code is None:
                code = self.index[value] = len(self.values)
                self.values.append(value)
            elif type(self.values[code]) is not type(value):
                self.mixed = True
            lut[i] = code
        return lut[local]


def _encode_level(value: Any) -> list[Any]:
    kind = "int" if isinstance(value, int) else "float" if isinstance(value, float) else \
        "str" if isinstance(value, str) else "other"
    return [kind, value if kind != "other" else None]


def _decode_level(pair: list[Any]) -> Any:
    kind, value = pair
    return int(value) if kind == "int" else float(value) if kind == "float" else value


def write_snapshot(store: Any, model: DataModel, key: str) -> Snapshot | None:
    """Write the snapshot of ``model``'s rows as they are now (unless it exists); return it.

    Parameters
    ----------
    store : mipflow.node.store.feature_store.FeatureStore
        The node's store; a SQLite file, or PostgreSQL opened with its node home
        (:mod:`mipflow.node.query.snapshot_pg`), has snapshots (None otherwise).
    model : DataModel
        The data model whose table is written.
    key : str
        The ledger's key (:func:`mipflow.node.controls.differencing.hash_key`).

    Returns
    -------
    Snapshot or None
        None when the store has no snapshot (no file or home, or no table yet).
    """
    folder = snapshot_folder(store)
    if folder is None:
        return None
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    table = store.model_table(model)
    if store.dialect == "postgresql":
        from mipflow.node.query.snapshot_pg import write_rows_pg

        written = write_rows_pg(store, model, table.name, folder, key)
    else:
        written = _write_sqlite(store, model, table.name, folder, key)
    if written is None or isinstance(written, Snapshot):
        return written
    tmp, final, meta, stamp = written
    meta.update(format=FORMAT, table=table.name, data_model=model.key, epoch=stamp[0], counter=stamp[1],
                key=key_fingerprint(key))
    try:
        with _private_file(tmp / "meta.json") as handle:
            handle.write(json.dumps(meta, sort_keys=True).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, final)
    except OSError:  # no room; or another writer put the same snapshot in place first
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    _fsync_dir(folder)
    for old in folder.glob(f"{table.name}@*"):
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    for left in folder.glob(f".{table.name}@*.tmp"):  # a writer that crashed (never one at work: an hour)
        try:
            if time.time() - left.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                shutil.rmtree(left, ignore_errors=True)
        except OSError:
            continue
    if current_stamp(store, table.name) != stamp:  # rows changed meanwhile (a deletion may have dropped
        shutil.rmtree(final, ignore_errors=True)  # the snapshots before this one was in place): not kept
        return None
    return _open(final, key)


Written = tuple[Path, Path, dict, tuple[str, int]]  # (temporary folder, final folder, meta, stamp)


def _write_sqlite(store: Any, model: DataModel, table: str, folder: Path, key: str) -> Snapshot | Written | None:
    """SQLite: the stamp and every row in one read transaction, into a temporary folder (or the snapshot
    of that stamp, already written; None: no table or stamp)."""
    conn = _connect(sqlite_file(store))
    try:
        cursor = conn.cursor()
        if not cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (table,)).fetchone():
            return None
        if read_stamp(cursor, table) is None:  # a store from before stamps, or its triggers dropped
            install_stamp(conn, table)
        cursor.execute(f"PRAGMA cache_size={_PAGE_CACHE}")
        cursor.execute("BEGIN")
        try:  # one read transaction: the stamp and the rows it names
            stamp = read_stamp(cursor, table)
            if stamp is None:
                return None
            return write_at_stamp(folder, table, stamp, key,
                                  lambda tmp: _write_rows(cursor, model, table, tmp, key))
        finally:
            cursor.execute("COMMIT")
    finally:
        conn.close()


def write_at_stamp(folder: Path, table: str, stamp: tuple[str, int], key: str,
                   write: Callable[[Path], dict[str, Any]]) -> Snapshot | Written:
    """Inside the writer's read transaction: the snapshot of ``table`` at ``stamp`` when written already, else
    its rows written by ``write`` into a new temporary folder (removed when writing fails), as ``(temporary
    folder, final folder, meta, stamp)`` to be put in place.  Shared by the SQLite and PostgreSQL writers."""
    final = folder / _name(table, stamp, key)
    done = _open(final, key)
    if done is not None:
        return done
    tmp = temporary_folder(final)
    try:
        meta = write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, final, meta, stamp


def temporary_folder(final: Path) -> Path:
    """A new private folder beside ``final`` to write its files into."""
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(mode=0o700)
    return tmp


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_rows(cursor: sqlite3.Cursor, model: DataModel, table: str, tmp: Path, key: str) -> dict[str, Any]:
    """The column files of every row (in key order) into ``tmp``; returns the meta entries."""
    held = held_variables(model)
    quoted = {v.code: '"' + v.code.replace('"', '""') + '"' for v in held}
    rows = int(cursor.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    numerical = [v for v in held if v.is_numerical]
    usable: dict[str, bool] = {v.code: True for v in held}
    if numerical and rows:  # text or blobs in a number column: SQL compares them otherwise
        checks = ", ".join(f"sum(typeof({quoted[v.code]}) IN ('text', 'blob'))" for v in numerical)
        found = cursor.execute(f'SELECT {checks} FROM "{table}"').fetchone()
        usable.update({v.code: not n for v, n in zip(numerical, found)})
    selected = ", ".join(["dataset", *(quoted[v.code] for v in held), "_pid", "_visit"])
    cursor.execute(f'SELECT {selected} FROM "{table}" ORDER BY _pid, dataset, _visit')
    return write_columns(iter(lambda: cursor.fetchmany(CHUNK_ROWS), []), held, usable, rows, tmp,
                         lambda columns: identity_keys(columns[-2], columns[0], columns[-1], key))


def held_variables(model: DataModel) -> list[Variable]:
    """The variables a snapshot holds (numerical and categorical ones, not ``dataset``), in order."""
    return [v for v in model if v.code != "dataset" and (v.is_numerical or v.is_categorical)]


def write_columns(chunks: Any, held: list[Variable], usable: dict[str, bool], rows: int, tmp: Path,
                  keys_of: Any) -> dict[str, Any]:
    """The column files of ``rows`` rows into ``tmp``, from ``chunks`` of DB-API tuples ``(dataset, *held
    values, two identity fields)`` in key order; ``keys_of(columns)`` gives a chunk's ``(row keys, patient
    keys)`` from its columns.  ``usable``: the held variables not refused already.  Returns the meta entries."""
    numerical = [v for v in held if v.is_numerical]
    files = {v.code: f"c{i}" for i, v in enumerate(held)}
    writers = {v.code: _ColumnFile(tmp / f"{files[v.code]}.npy", np.float64 if v.is_numerical else np.int32, rows)
               for v in held}
    writers["dataset"] = _ColumnFile(tmp / "dataset.npy", np.int32, rows)
    writers[ROW_KEY] = _ColumnFile(tmp / "row_key.npy", np.uint64, rows)
    writers[PID_KEY] = _ColumnFile(tmp / "pid_key.npy", np.uint64, rows)
    levels = {v.code: _Levels() for v in held if v.is_categorical}
    datasets = _Levels()
    exact = {v.code: True for v in numerical}
    for chunk in chunks:
        columns = list(zip(*chunk))
        del chunk
        writers["dataset"].append(datasets.codes(columns[0]))
        for i, var in enumerate(held, start=1):
            if var.is_numerical:
                values = np.zeros(len(columns[i]))
                if usable[var.code]:
                    try:  # as the SQL read converts them (read.sqlite_columns), bit for bit
                        values = np.asarray(columns[i], dtype=np.float64)
                    except (TypeError, ValueError):
                        usable[var.code] = False
                exact[var.code] = exact[var.code] and not bool((np.abs(values) >= _EXACT).any())
                writers[var.code].append(values)
            else:
                writers[var.code].append(levels[var.code].codes(columns[i]))
        row_keys, pid_keys = keys_of(columns)
        writers[ROW_KEY].append(row_keys)
        writers[PID_KEY].append(pid_keys)
        del columns, row_keys, pid_keys
    for writer in writers.values():
        writer.close()
    for name in ("row_key", "pid_key"):
        _write_sorted(tmp, name, rows)
    meta_columns: dict[str, Any] = {}
    for var in held:
        entry: dict[str, Any] = {"file": files[var.code], "usable": usable[var.code]}
        if var.is_numerical:
            entry.update(kind="numerical", exact=exact[var.code])
        else:
            found = levels[var.code]
            entry.update(kind="categorical", levels=[_encode_level(v) for v in found.values])
            entry["usable"] = usable[var.code] and not found.mixed and all(
                isinstance(v, (int, float, str)) for v in found.values)
        meta_columns[var.code] = entry
    dataset_ok = not datasets.mixed and all(isinstance(v, str) for v in datasets.values)
    return {"rows": rows, "columns": meta_columns, "datasets": datasets.values if dataset_ok else None,
            "sorted_keys": True}


def _write_sorted(tmp: Path, name: str, rows: int) -> None:
    """Beside a key file ``<name>.npy``: ``<name>_order.npy``, the rows' positions in key order (a
    stable sort), and ``<name>_sorted.npy``, the keys in that order.  A selection's sorted keys are then
    a gather of its mask, not a sort (:func:`_sorted_selection`)."""
    keys = np.load(tmp / f"{name}.npy", mmap_mode="r", allow_pickle=False)
    order = np.argsort(keys, kind="stable")
    positions = _ColumnFile(tmp / f"{name}_order.npy", np.int64, rows)
    ordered = _ColumnFile(tmp / f"{name}_sorted.npy", np.uint64, rows)
    for start in range(0, rows, CHUNK_ROWS):
        chunk = order[start:start + CHUNK_ROWS]
        positions.append(chunk)
        ordered.append(keys[chunk])
    positions.close()
    ordered.close()
    del keys, order


def _sorted_selection(snapshot: Snapshot, name: str, mask: np.ndarray | None) -> np.ndarray:
    """The keys of file ``name`` at the rows ``mask`` selects (None: every row), sorted."""
    ordered = np.asarray(snapshot.array(f"{name}_sorted"))
    if mask is None:
        return np.array(ordered)
    return ordered[mask[np.asarray(snapshot.array(f"{name}_order"))]]


def current_snapshot(store: Any, model: DataModel, key: str) -> Snapshot | None:
    """The snapshot of ``model``'s rows as they are now: the one on disk if its stamp is current,
    else a new one written now (:func:`write_snapshot`).  None when the store has none (or the rows
    changed while it was written: the caller reads through SQL)."""
    folder = snapshot_folder(store)
    if folder is None:
        return None
    table = store.model_table(model)
    stamp = current_stamp(store, table.name)
    if stamp is not None:
        done = _open(folder / _name(table.name, stamp, key), key)
        if done is not None:
            return done
    return write_snapshot(store, model, key)


# --------------------------------------------------------------------------- selections


def _as_codes(levels: list[Any], var: Variable) -> np.ndarray:
    from mipflow.node.query.read import _as_codes as convert  # the SQL read's own conversion

    return convert(pd.Series(np.array(levels, dtype=object)), var).to_numpy()


class _Columns:
    """A snapshot's variables as :class:`~mipflow.node.query.masks.MaskColumn`, mapped (not copied),
    each opened once (those a filter names)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.cache: dict[str, MaskColumn] = {}

    def __call__(self, var: Variable) -> MaskColumn:
        if var.code not in self.cache:
            self.cache[var.code] = self._read(var)
        return self.cache[var.code]

    def _read(self, var: Variable) -> MaskColumn:
        snap = self.snapshot
        if var.code == "dataset":
            if not var.is_categorical or snap.meta["datasets"] is None:
                raise Unsupported("dataset")
            codes = np.asarray(snap.array("dataset"))
            return MaskColumn(null=codes < 0, codes=codes, levels=snap.meta["datasets"])
        entry = snap.column(var.code)
        if entry is None or not entry["usable"]:
            raise Unsupported(var.code)
        data = np.asarray(snap.array(entry["file"]))
        if entry["kind"] == "numerical":
            return MaskColumn(null=np.isnan(data), values=data, exact=entry["exact"])
        return MaskColumn(null=data < 0, codes=data, levels=[_decode_level(p) for p in entry["levels"]])


def selection_mask(snapshot: Snapshot, model: DataModel, chosen: list[Variable], datasets: list[str],
                   filters: Mapping[str, Any] | None, row_key: str, complete_case: bool = True
                   ) -> tuple[np.ndarray, list[dict[str, Any]]] | None:
    """The snapshot rows a checked request selects, complete on ``chosen`` (unless not
    ``complete_case``): ``(mask, entries)``, the mask (one bool a snapshot row) and the ``meta.json``
    entries of the chosen variables other than ``dataset``; None when the snapshot cannot select exactly
    the SQL read's rows.  The columns a filter names are mapped while it is evaluated, then one column
    at a time."""
    levels = snapshot.meta["datasets"]
    if snapshot.meta.get("key") != key_fingerprint(row_key) or levels is None:
        return None
    held = [v for v in chosen if v.code != "dataset"]
    entries = [snapshot.column(v.code) for v in held]
    if any(not (v.is_numerical or v.is_categorical) for v in chosen) \
            or any(entry is None or not entry["usable"] for entry in entries):
        return None  # a text variable, or one the snapshot does not hold exactly
    wanted = set(datasets)
    mask = np.array([level in wanted for level in levels] + [False])[np.asarray(snapshot.array("dataset"))]
    columns = _Columns(snapshot)
    try:
        selected = filter_mask(filters, model, columns)
    except Unsupported:
        return None
    columns.cache.clear()
    if selected is not None:
        mask &= selected
        del selected
    for entry in entries if complete_case else ():  # complete cases, one column mapped at a time
        data = np.asarray(snapshot.array(entry["file"]))
        mask &= ~np.isnan(data) if entry["kind"] == "numerical" else data >= 0
        del data
    return mask, entries


def select_rows(snapshot: Snapshot, model: DataModel, chosen: list[Variable], datasets: list[str],
                filters: Mapping[str, Any] | None, row_key: str, complete_case: bool = True,
                dataset: bool = False) -> Any:
    """The rows of :func:`select_columns` left on disk: a
    :class:`mipflow.node.query.snapshot_rows.SnapshotRows` (read a block at a time), or None (the
    ``dataset`` variable chosen without ``dataset``, a stored level of a chosen categorical variable that
    the SQL read would not give as one of its enumeration codes, or whatever :func:`select_columns` cannot
    answer).  A categorical variable's levels are those the SQL read gives (:func:`_as_codes`); a stored
    value outside the enumerations, even in rows not selected, leaves the request to the frame's read,
    which refuses it if a selected row holds it.

    ``complete_case`` False: the rows of the datasets and filters, missing values kept (NaN, level code
    -1), as :func:`mipflow.node.query.read.select_frame` without complete-case gives them.  ``dataset``:
    the ``dataset`` variable may be chosen; its levels are the stored dataset names (the SQL read's
    strings), not the data model's enumeration codes."""
    from mipflow.node.query.snapshot_rows import SnapshotRows

    if any(not (v.is_numerical or v.is_categorical) for v in chosen) \
            or any(v.code == "dataset" for v in chosen) and not dataset:
        return None
    chosen_mask = selection_mask(snapshot, model, chosen, datasets, filters, row_key, complete_case)
    if chosen_mask is None:
        return None
    mask, entries = chosen_mask
    files = {v.code: e["file"] for v, e in zip([v for v in chosen if v.code != "dataset"], entries)}
    levels: dict[str, list[str]] = {}
    if any(v.code == "dataset" for v in chosen):
        files["dataset"], levels["dataset"] = "dataset", list(snapshot.meta["datasets"])
    for var, entry in zip([v for v in chosen if v.code != "dataset"], entries):
        if entry["kind"] != "categorical":
            continue
        try:
            codes = list(_as_codes([_decode_level(p) for p in entry["levels"]], var))
        except (TypeError, ValueError):
            return None
        allowed = set(var.enumeration_codes)
        if any(code not in allowed for code in codes):
            return None
        levels[var.code] = codes
    return SnapshotRows(snapshot, {v.code: files[v.code] for v in chosen}, mask, levels)


def select_columns(snapshot: Snapshot, model: DataModel, chosen: list[Variable], datasets: list[str],
                   filters: Mapping[str, Any] | None, row_key: str) -> pd.DataFrame | None:
    """The frame of :func:`mipflow.node.query.read.sqlite_columns` (complete-case), read from ``snapshot``.

    ``datasets`` and ``filters`` must have been checked (as ``select_frame`` does first).  Memory
    beyond the frame returned: a mask and the selected rows' positions (9 bytes a row), the columns
    a filter names while it is evaluated, one column mapped at a time otherwise.

    Returns
    -------
    pandas.DataFrame or None
        ``dataset``, the chosen variables, ``_row_key`` and ``_pid_key`` (their key named in
        ``frame.attrs``), in the store's key order; None when the snapshot cannot give exactly the SQL
        read's frame (the caller reads through SQL).
    """
    chosen_mask = selection_mask(snapshot, model, chosen, datasets, filters, row_key)
    if chosen_mask is None:
        return None
    mask, entries = chosen_mask
    levels = snapshot.meta["datasets"]
    held = [v for v in chosen if v.code != "dataset"]
    try:
        # the stored levels as the SQL read converts them (a value it refuses: it reports it)
        codes_of = {v.code: np.append(_as_codes([_decode_level(p) for p in e["levels"]], v), None)
                    for v, e in zip(held, entries) if e["kind"] == "categorical"}
    except (TypeError, ValueError):
        return None
    whole = bool(mask.all())
    # the selection's keys sorted, from the snapshot's key order (a gather, no sort; the differencing
    # controls check them against the key columns before they use them)
    presorted = [_sorted_selection(snapshot, name, None if whole else mask) for name in ("row_key", "pid_key")] \
        if snapshot.meta.get("sorted_keys") else None
    if whole:  # every row: whole copies (a memory copy, no gather)
        del mask

        def take(name: str) -> np.ndarray:
            return np.array(snapshot.array(name))
    else:
        rows = np.flatnonzero(mask)
        del mask

        def take(name: str) -> np.ndarray:
            return np.asarray(snapshot.array(name))[rows]
    outputs = {"dataset": np.array(list(levels) + [None], dtype=object)[take("dataset")]}
    for var, entry in zip(held, entries):
        values = take(entry["file"])
        outputs[var.code] = values if entry["kind"] == "numerical" else codes_of[var.code][values]
    outputs[ROW_KEY] = take("row_key")
    outputs[PID_KEY] = take("pid_key")
    numerical = {v.code for v in held if v.is_numerical}
    dtypes = {name: np.float64 if name in numerical else object for name in outputs}
    dtypes.update({ROW_KEY: np.uint64, PID_KEY: np.uint64})
    frame = pd.DataFrame({name: pd.Series(values, dtype=dtypes[name], copy=False)
                          for name, values in outputs.items()}, copy=False)
    frame.attrs[KEY_OWNER] = key_fingerprint(row_key)
    if presorted is not None:
        attach_sorted_keys(frame, *presorted)
    return frame
