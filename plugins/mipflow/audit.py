"""The node's append-only audit log.

One JSON line per request, allowed or refused: when, who, endpoint,
algorithm, variables, datasets, filters, rows used, decision and reason.
Each line carries the SHA-256 of the line before it, so removing or editing
a line breaks the chain (:func:`verify_chain`).  Nothing row-level is ever
written here.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


class AuditLog:
    """Append-only JSON-lines audit log with a hash chain."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._last = self._tail_hash()

    def _tail_hash(self) -> str:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return GENESIS
        with open(self.path, "rb") as handle:
            handle.seek(max(0, self.path.stat().st_size - 65536))
            lines = handle.read().splitlines()
        return hashlib.sha256(lines[-1]).hexdigest() if lines else GENESIS

    def append(self, **record: Any) -> dict[str, Any]:
        with self._lock:
            entry = {"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record,
                     "prev": self._last}
            line = json.dumps(entry, sort_keys=True, default=str).encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line + b"\n")
            finally:
                os.close(fd)
            self._last = hashlib.sha256(line).hexdigest()
        return entry

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]


def verify_chain(path: str | Path) -> bool:
    """True when every line's ``prev`` is the hash of the line before it."""
    previous = GENESIS
    path = Path(path)
    if not path.is_file():
        return True
    for raw in path.read_bytes().splitlines():
        if not raw:
            continue
        if json.loads(raw).get("prev") != previous:
            return False
        previous = hashlib.sha256(raw).hexdigest()
    return True
