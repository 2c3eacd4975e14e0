"""A control's durable state in one SQLite file of the node home (ledger, partition memory).

One connection per object, opened on first use, in WAL mode so that several node
processes on one home read while one writes; every use is one transaction.  The
caller serialises uses with ``self._lock`` (the connection is shared between threads).
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TypeVar

State = TypeVar("State", bound="SqliteState")
#: The states shared per node home and process (:meth:`SqliteState.of_home`).
_HOMES: dict[tuple[type, str], "SqliteState"] = {}


class SqliteState:
    """Base of the controls whose state lives in ``path`` (None: no file; subclasses keep it in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def of_home(cls: type[State], root: str | Path) -> State:
        """The node home's state of this kind, one object per home and process (built as ``cls(root)``), so
        that every request of a node process shares its connection and what it has read."""
        key = (cls, str(Path(root).resolve()))
        if key not in _HOMES:
            _HOMES[key] = cls(root)  # type: ignore[call-arg]
        return _HOMES[key]  # type: ignore[return-value]

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The connection (opened once, used under ``self._lock``), in one transaction."""
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
        with self._conn:
            yield self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
