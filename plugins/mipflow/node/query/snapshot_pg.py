"""The columnar snapshot of a PostgreSQL store's data model table (ADR 0062, amendment 8; ADR 0049).

The same folder, files and ``meta.json`` as a SQLite store's snapshot (:mod:`mipflow.node.query.snapshot`),
written from PostgreSQL so that rows left on disk (:class:`~mipflow.node.query.snapshot_rows.SnapshotRows`)
give what the node's PostgreSQL frame read gives (:func:`mipflow.node.query.pgcopy.binary_copy_frame`),
bit for bit:

* **one transaction** (``REPEATABLE READ``, read only): the stamp (:mod:`mipflow.node.store.stamp_pg`), the
  row count, the checks and every row, through a server-side cursor a chunk at a time, ``ORDER BY _pid,
  dataset, _visit`` (the frame read's order, the server's collation: the same order);
* numerical values as the frame read takes them, ``CAST(... AS DOUBLE PRECISION)`` by the server; a column
  holding a float ``NaN`` (which SQL keeps as a value, the snapshot would take for a missing one) is not
  usable, nor is a categorical one holding it; categorical values as stored (``str``, ``int`` or ``float``,
  the column's type: :func:`~mipflow.node.query.snapshot.select_rows` gives them as the SQL read's codes);
* the ledger's keys from the server's own digests (``_row_md5`` and ``md5(_pid)``, what the binary read
  carries) hashed under the node's key as :func:`mipflow.node.controls.differencing.row_keys` hashes them.

Filters are evaluated by :mod:`mipflow.node.query.masks` on typed columns: equality of text with text
(PostgreSQL compares deterministic collations' text byte by byte) and of numbers by value, ordering only on
numbers (float64 and the server's float8 comparison, integers beyond 2**53 refused as on SQLite).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mipflow.node.query.snapshot import CHUNK_ROWS, held_variables, write_at_stamp, write_columns
from mipflow.node.store import stamp_pg
from mipflow.node.store.stamp import quote_name
from mipflow.protocol.datamodel import DataModel

__all__ = ["write_rows_pg"]


def write_rows_pg(store: Any, model: DataModel, table: str, folder: Path, key: str) -> Any:
    """The snapshot of ``table``'s rows at its current stamp: ``(temporary folder, final folder, meta,
    stamp)`` to be put in place, the snapshot of that stamp when written already, or None (no table)."""
    store.ensure_row_md5(model)  # the server's row digests (a store from before them: added once)
    raw = store.engine.raw_connection()
    try:
        dbapi = raw.dbapi_connection
        cursor = dbapi.cursor()
        try:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (quote_name(table),))
            present = cursor.fetchone()[0]
            missing = present and stamp_pg.read_stamp(cursor, table) is None
        finally:
            cursor.close()
            dbapi.rollback()
        if not present:
            return None
        if missing:  # a table from before stamps, or its trigger dropped or disabled: a new epoch
            stamp_pg.install_stamp(dbapi, table)
        cursor = dbapi.cursor()
        try:  # one snapshot of the database: the stamp and the rows it names
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            stamp = stamp_pg.read_stamp(cursor, table)
            if stamp is None:
                return None
            return write_at_stamp(folder, table, stamp, key,
                                  lambda tmp: _write_rows(dbapi, cursor, model, table, tmp, key))
        finally:
            cursor.close()
            dbapi.rollback()
    finally:
        raw.close()


def _write_rows(dbapi: Any, cursor: Any, model: DataModel, table: str, tmp: Path, key: str) -> dict[str, Any]:
    held = held_variables(model)
    name = quote_name(table)
    cursor.execute(f"SELECT count(*) FROM {name}")
    rows = int(cursor.fetchone()[0])
    usable = {v.code: True for v in held}
    numbers = [v for v in held if v.is_numerical or v.sql_type in ("int", "real")]
    if numbers and rows:  # a float NaN is a value to SQL (never NULL, equal to itself, above every number)
        checks = ", ".join(f"count(*) FILTER (WHERE CAST({quote_name(v.code)} AS DOUBLE PRECISION) = 'NaN')"
                           for v in numbers)
        cursor.execute(f"SELECT {checks} FROM {name}")
        usable.update({v.code: not n for v, n in zip(numbers, cursor.fetchone())})
    fields = ["dataset", *(f"CAST({quote_name(v.code)} AS DOUBLE PRECISION)" if v.is_numerical else quote_name(v.code)
                           for v in held), "_row_md5", "md5(coalesce(_pid, ''))"]
    reader = dbapi.cursor(name="mipflow_snapshot")  # server-side: a chunk at a time
    try:
        reader.itersize = CHUNK_ROWS
        reader.execute(f"SELECT {', '.join(fields)} FROM {name} ORDER BY _pid, dataset, _visit")

        def keys_of(columns: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
            # differencing.row_keys / patient_keys of the binary read's digests, bit for bit
            return tuple(pd.util.hash_array(np.array(columns[i], dtype=object), hash_key=key, categorize=False)
                         for i in (-2, -1))

        return write_columns(iter(lambda: reader.fetchmany(CHUNK_ROWS), []), held, usable, rows, tmp, keys_of)
    finally:
        reader.close()

