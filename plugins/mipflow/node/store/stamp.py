"""A data model table's row stamp on SQLite: a counter every committed change of its rows moves (ADR 0049).

The node keeps a columnar snapshot of each data model's rows beside the store
(:mod:`mipflow.node.query.snapshot`); it may be read only while the rows are the ones it was written
from.  The stamp says so cheaply and whoever writes the rows: triggers on the table (after every
insert, update and delete, so a load, a consent deletion, a source's deletions or an admin's own SQL
all count) add one to the table's counter in ``mipflow_row_stamps``, in the writer's own
transaction.  A stamp is ``(epoch, counter)``: the epoch is drawn at random whenever the triggers are
(re)created, so a table dropped and created again (which drops its triggers) or a store written by
an older mipflow starts a new series and no snapshot of before can match.

PostgreSQL stores have a stamp of their own (:mod:`mipflow.node.store.stamp_pg`, ADR 0062 amendment 8);
their snapshots live in the node home's :data:`SNAPSHOT_DIR` (``FeatureStore(url, snapshot_home)``: a
store opened without its home has none).

The snapshots live in :data:`SNAPSHOT_DIR` beside the store's file (for the default store, in the
node home), so the store can drop a table's snapshots itself when rows must be gone from disk (a
consent withdrawal: :meth:`mipflow.node.store.feature_store.FeatureStore.delete_patients`).
"""
from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Any

#: The counters: one row per data model table.
STAMP_TABLE = "mipflow_row_stamps"
_EVENTS = ("INSERT", "UPDATE", "DELETE")
#: The folder of columnar snapshots, beside the SQLite file (:mod:`mipflow.node.query.snapshot`).
SNAPSHOT_DIR = "snapshots"


def sqlite_file(store: Any) -> str | None:
    """The path of a store's SQLite file, None for PostgreSQL or an in-memory / URI database."""
    url = store.engine.url
    if store.dialect != "sqlite" or not url.database or url.database == ":memory:" \
            or str(url.database).startswith("file:"):
        return None
    return str(url.database)


def snapshot_folder(store: Any) -> Path | None:
    """Where a store's columnar snapshots live (None: it has none): beside a SQLite file; in the node
    home for a PostgreSQL store opened with it."""
    if store.dialect == "postgresql":
        home = getattr(store, "snapshot_home", None)
        return None if home is None else Path(home) / SNAPSHOT_DIR
    path = sqlite_file(store)
    return None if path is None else Path(path).parent / SNAPSHOT_DIR


def snapshot_name(table: str, stamp: tuple[str, int], key_fingerprint: str) -> str:
    """A snapshot folder's name: the table, the stamp it was written at, its key's fingerprint."""
    return f"{table}@{stamp[0]}.{stamp[1]}.{key_fingerprint}"


def current_stamp(store: Any, table: str) -> tuple[str, int] | None:
    """``table``'s stamp now (a short connection of its own), None when it has none."""
    if store.dialect == "postgresql":
        from mipflow.node.store import stamp_pg

        return stamp_pg.current_stamp(store, table)
    path = sqlite_file(store)
    if path is None:
        return None
    conn = sqlite3.connect(path, timeout=60)
    try:
        return read_stamp(conn.cursor(), table)
    finally:
        conn.close()


def drop_snapshots(store: Any, table: str, *, stale_only: bool = False) -> int:
    """Remove ``table``'s snapshots (``stale_only``: those not of its current stamp); returns how many.

    Called after rows were deleted (consent withdrawn, rows deleted at a source), so that no copy of
    them waits on disk for the node's next read to replace it.
    """
    folder = snapshot_folder(store)
    if folder is None or not folder.is_dir():
        return 0
    keep = None
    if stale_only:
        stamp = current_stamp(store, table)
        keep = None if stamp is None else f"{table}@{stamp[0]}.{stamp[1]}."
    removed = 0
    for old in folder.glob(f"{table}@*"):
        if keep is None or not old.name.startswith(keep):
            shutil.rmtree(old, ignore_errors=True)
            removed += 1
    if not stale_only:  # and what writers left or are writing (a writer that loses its folder gives up)
        for left in folder.glob(f".{table}@*.tmp"):
            shutil.rmtree(left, ignore_errors=True)
    return removed


def quote_name(name: str) -> str:
    """An SQL identifier quoted for SQLite and PostgreSQL alike (a double quote doubled)."""
    return '"' + name.replace('"', '""') + '"'


def trigger_names(table: str) -> list[str]:
    """The names of the three triggers that move ``table``'s counter."""
    return [f"mipflow_stamp_{event.lower()}_{table}" for event in _EVENTS]


def read_stamp(cursor: Any, table: str) -> tuple[str, int] | None:
    """``(epoch, counter)`` of ``table``, or None when its stamp is missing or incomplete.

    ``cursor`` is a DB-API cursor on the SQLite store; inside a read transaction the stamp is that of
    the rows the transaction sees.
    """
    try:
        row = cursor.execute(f"SELECT epoch, counter FROM {STAMP_TABLE} WHERE table_name = ?", (table,)).fetchone()
    except Exception as exc:  # noqa: BLE001 - no stamp table yet (an older store)
        if "no such table" in str(exc):
            return None
        raise
    if row is None:
        return None
    names = trigger_names(table)
    marks = ", ".join("?" for _ in names)
    present = cursor.execute(f"SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
                             f"AND name IN ({marks})", (table, *names)).fetchone()[0]
    if present != len(names):
        return None
    return str(row[0]), int(row[1])


def install_stamp(dbapi_connection: Any, table: str) -> tuple[str, int]:
    """Create (or re-create, under a new epoch) ``table``'s counter and triggers; return the stamp.

    One write transaction (``BEGIN IMMEDIATE``): a load running meanwhile finishes first.  A stamp
    already complete is left as it is.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE")
        try:
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {STAMP_TABLE} (table_name TEXT PRIMARY KEY, "
                           "epoch TEXT NOT NULL, counter INTEGER NOT NULL)")
            stamp = read_stamp(cursor, table)
            if stamp is None:
                epoch = uuid.uuid4().hex
                cursor.execute(f"INSERT INTO {STAMP_TABLE} (table_name, epoch, counter) VALUES (?, ?, 0) "
                               "ON CONFLICT (table_name) DO UPDATE SET epoch = excluded.epoch, counter = 0",
                               (table, epoch))
                literal = "'" + table.replace("'", "''") + "'"
                for name, event in zip(trigger_names(table), _EVENTS):
                    cursor.execute(f"DROP TRIGGER IF EXISTS {quote_name(name)}")
                    cursor.execute(f"CREATE TRIGGER {quote_name(name)} AFTER {event} ON {quote_name(table)} BEGIN "
                                   f"UPDATE {STAMP_TABLE} SET counter = counter + 1 WHERE table_name = {literal}; END")
                stamp = (epoch, 0)
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
    finally:
        cursor.close()
    return stamp
