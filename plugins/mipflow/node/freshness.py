"""Cheap "has it changed?" checks for what the node API keeps between requests.

The node API answers every round of an analysis, so it keeps in memory what
does not change from one request to the next: its settings, client
credentials and access grants (files in the node home), and the rows of a
data selection (the feature store).  Each cache is only as good as its
invalidation rule; the rules are:

* **Files** (``node.json``, ``clients.json``, ``access.json``): the file is
  parsed again when its :func:`file_signature` (inode, size, modification
  and status-change times in nanoseconds) differs from the one seen when it
  was parsed.  Every writer in mipflow replaces these files through a
  temporary file and ``rename``, which gives the path a new inode, so even
  two edits within one tick of the file system's clock are told apart; an
  editor writing in place changes the size or the times.  Cost: one
  ``stat`` per request and file.
* **Data** (:class:`DataVersion`): a token that changes whenever rows of the
  node may have changed.  A cached selection is used only while the token is
  the one read *before* the selection was read from the store, so a change
  committed while the selection was being read also invalidates it.

  - SQLite: ``PRAGMA data_version`` on a connection kept open for the
    purpose.  SQLite changes it whenever any other connection (any process)
    commits to the database file, so every write counts, not only loads.
  - PostgreSQL: the node listens (``LISTEN``) on the channel
    :data:`DATA_CHANNEL`; :meth:`mipflow.node.store.feature_store.FeatureStore.refresh_datasets`
    notifies it in the transaction that rewrites the datasets registry,
    which every load and every consent deletion does (the same rule as
    before: the registry changes with the data).  PostgreSQL queues the
    notification when that transaction commits and signals the listening
    backend before the committer hears of the commit; checking costs one
    ``SELECT 1`` on the listening connection, whose reply the server sends
    only after every notification queued before it.  So a load or deletion
    that finished before a request arrived is always seen (polling the
    socket without that round trip would miss a notification still in
    flight).  If the listening connection breaks, every cached selection is
    invalidated and the node listens again.
  - Otherwise (an in-memory SQLite, or the listener cannot connect): the
    datasets registry itself is read on every request, as before.

Nothing here leaves the node.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Hashable

log = logging.getLogger(__name__)

#: PostgreSQL notification channel raised by every rewrite of the datasets registry.
DATA_CHANNEL = "mipflow_data_changed"


def file_signature(path: str | Path) -> tuple[int, int, int, int] | None:
    """``(inode, size, mtime_ns, ctime_ns)`` of ``path``, or None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class DataVersion:
    """A token that changes whenever the node's data may have changed (see the module docstring).

    Parameters
    ----------
    store : mipflow.node.store.feature_store.FeatureStore
        The node's feature store.
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._generation = 0
        self._conn: Any = None
        self._kind = "registry"
        url = store.engine.url
        if store.dialect == "sqlite" and url.database and url.database != ":memory:" \
                and not str(url.database).startswith("file:"):
            self._kind = "sqlite"
        elif store.dialect == "postgresql":
            self._kind = "postgresql"
        self._connect()

    @property
    def mode(self) -> str:
        """How changes are detected: ``sqlite``, ``postgresql`` or ``registry`` (the fallback)."""
        return self._kind if self._conn is not None else "registry"

    def _connect(self) -> None:
        """Open the watching connection; on failure fall back to reading the registry."""
        self.close()
        try:
            if self._kind == "sqlite":
                import sqlite3

                self._conn = sqlite3.connect(self._store.engine.url.database, check_same_thread=False,
                                             isolation_level=None, timeout=60)
            elif self._kind == "postgresql":
                pooled = self._store.engine.raw_connection()
                pooled.detach()  # the pool forgets it: it is ours until close()
                dbapi = pooled.dbapi_connection
                dbapi.autocommit = True
                with dbapi.cursor() as cursor:
                    cursor.execute(f"LISTEN {DATA_CHANNEL}")
                self._conn = dbapi
        except Exception as exc:  # noqa: BLE001 - any failure: the slower, always-correct rule
            log.warning("data change watcher unavailable (%s); reading the datasets registry per request",
                        type(exc).__name__)
            self._conn = None
        self._generation += 1  # whatever was cached before (re)connecting may be stale

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._conn = None

    def token(self, data_model: str) -> Hashable:
        """An opaque value; two equal tokens mean no change was committed in between."""
        with self._lock:
            for _attempt in range(2):
                if self._conn is None:
                    break
                try:
                    if self._kind == "sqlite":
                        return "sqlite", self._generation, self._conn.execute("PRAGMA data_version").fetchone()[0]
                    # One round trip on the listening connection: the server sends every
                    # notification of a commit that finished before this query ahead of its reply.
                    with self._conn.cursor() as cursor:
                        cursor.execute("SELECT 1")
                    if self._conn.notifies:
                        self._conn.notifies.clear()
                        self._generation += 1
                    return "postgresql", self._generation
                except Exception as exc:  # noqa: BLE001 - the watcher broke: invalidate, watch again
                    log.warning("data change watcher lost (%s); reconnecting", type(exc).__name__)
                    self._connect()
            registry = json.dumps(self._store.datasets(data_model), sort_keys=True, default=str)
            return "registry", self._generation, registry
