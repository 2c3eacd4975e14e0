"""A data model table's row stamp on PostgreSQL (ADR 0062, amendment 8; the SQLite stamp: ADR 0049).

The same contract as :mod:`mipflow.node.store.stamp`: ``(epoch, counter)`` in ``mipflow_row_stamps``, the
counter moved in the writer's own transaction by a trigger on the table, the epoch drawn at random
whenever the trigger is (re)created.  Here one statement-level trigger (``AFTER INSERT OR UPDATE OR
DELETE OR TRUNCATE ... FOR EACH STATEMENT``, so a load of a million rows moves it once per statement, not
a million times) calls one function, ``mipflow_bump_row_stamp``.  It is ``ENABLE ALWAYS``: it fires under
``session_replication_role = replica`` too (logical replication's apply, ``pg_restore
--disable-triggers`` aside).  A stamp is read only while that trigger is in place and enabled that way;
otherwise (the table dropped and created again, the trigger dropped or disabled) it is missing, and the
snapshot writer installs a new epoch.  The writer reads the stamp and the rows in one ``REPEATABLE READ``
transaction: the rows it writes are those its stamp names.
"""
from __future__ import annotations

import hashlib
import uuid
from typing import Any

from mipflow.node.store.stamp import quote_name

__all__ = ["current_stamp", "install_stamp", "read_stamp", "trigger_name"]

STAMP_TABLE = "mipflow_row_stamps"
FUNCTION = "mipflow_bump_row_stamp"
#: Serialises installers (``pg_advisory_xact_lock``): two node processes may install at once.
_LOCK = 0x6D6970666C6F77  # "mipflow"


def trigger_name(table: str) -> str:
    """The stamp's trigger on ``table`` (fixed length: PostgreSQL truncates names beyond 63 bytes)."""
    return "mipflow_stamp_" + hashlib.sha256(table.encode("utf-8")).hexdigest()[:24]


def read_stamp(cursor: Any, table: str) -> tuple[str, int] | None:
    """``(epoch, counter)`` of ``table``, or None when its counter or its trigger (enabled ``ALWAYS``) is
    missing.  ``cursor``: a psycopg2 cursor; inside a ``REPEATABLE READ`` transaction the stamp is that of
    the rows the transaction sees."""
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (STAMP_TABLE,))
    if not cursor.fetchone()[0]:
        return None
    cursor.execute(f"SELECT epoch, counter FROM {STAMP_TABLE} WHERE table_name = %s", (table,))
    row = cursor.fetchone()
    if row is None:
        return None
    cursor.execute("SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                   "WHERE t.tgrelid = to_regclass(%s) AND t.tgname = %s AND t.tgenabled = 'A' "
                   "AND p.proname = %s", (quote_name(table), trigger_name(table), FUNCTION))
    if cursor.fetchone()[0] != 1:
        return None
    return str(row[0]), int(row[1])


def install_stamp(dbapi_connection: Any, table: str) -> tuple[str, int]:
    """Create (or re-create, under a new epoch) ``table``'s counter and trigger; return the stamp.  One
    transaction, serialised with other installers; a stamp already complete is left as it is."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {STAMP_TABLE} (table_name TEXT PRIMARY KEY, "
                       "epoch TEXT NOT NULL, counter BIGINT NOT NULL)")
        stamp = read_stamp(cursor, table)
        if stamp is None:
            cursor.execute(f"CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                           f"BEGIN UPDATE {STAMP_TABLE} SET counter = counter + 1 "
                           "WHERE table_name = TG_TABLE_NAME; RETURN NULL; END $$")
            epoch = uuid.uuid4().hex
            cursor.execute(f"INSERT INTO {STAMP_TABLE} (table_name, epoch, counter) VALUES (%s, %s, 0) "
                           "ON CONFLICT (table_name) DO UPDATE SET epoch = excluded.epoch, counter = 0",
                           (table, epoch))
            name = quote_name(trigger_name(table))
            cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {quote_name(table)}")
            cursor.execute(f"CREATE TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {quote_name(table)} "
                           f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()")
            cursor.execute(f"ALTER TABLE {quote_name(table)} ENABLE ALWAYS TRIGGER {name}")
            stamp = (epoch, 0)
        dbapi_connection.commit()
    except BaseException:
        dbapi_connection.rollback()
        raise
    finally:
        cursor.close()
    return stamp


def current_stamp(store: Any, table: str) -> tuple[str, int] | None:
    """``table``'s stamp now (a pooled connection's short transaction), None when it has none."""
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            return read_stamp(cursor, table)
        finally:
            cursor.close()
            raw.rollback()
    finally:
        raw.close()
