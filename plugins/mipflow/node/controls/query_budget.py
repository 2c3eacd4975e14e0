"""Query budget: how many analyses one researcher may run at a node per day.

The node setting ``query_budget`` (0 = unlimited) bounds the distinct analyses
a researcher may run in any 24 hours, which bounds how many differencing
queries one person can aim at one node.  An *analysis* is the central site's
``analysis_id`` together with the request it carries: all rounds (and restarts)
of one analysis count once, the same id re-used for another request counts
again, and a request sent without an id counts once per distinct request.

The ledger is rebuilt from the node's audit log at start (allowed steps carry
``researcher`` and ``analysis``) and kept in memory afterwards, so the count
survives restarts and is exactly what the audit log shows.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict
from datetime import datetime
from typing import Any, Iterable, Mapping

from mipflow.exceptions import DisclosureError

WINDOW_SECONDS = 24 * 3600


def analysis_key(analysis_id: str | None, algorithm: str, request: Mapping[str, Any]) -> str:
    """Identify one analysis: SHA-256 of the central site's id, the algorithm and the request."""
    doc = json.dumps([analysis_id or "", algorithm, request], sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


class QueryBudget:
    """Per-researcher count of distinct analyses in a sliding 24-hour window."""

    def __init__(self, records: Iterable[Mapping[str, Any]] = (), *,
                 window_seconds: float = WINDOW_SECONDS) -> None:
        self.window_seconds = window_seconds
        self._first_seen: dict[str, dict[str, float]] = defaultdict(dict)
        self._lock = threading.Lock()
        for record in records:
            if record.get("decision") == "allowed" and record.get("researcher") and record.get("analysis"):
                try:
                    at = datetime.fromisoformat(record["at"]).timestamp()
                except (KeyError, TypeError, ValueError):
                    continue
                self._first_seen[record["researcher"]].setdefault(record["analysis"], at)

    def used(self, researcher: str, now: float | None = None) -> int:
        """Distinct analyses of ``researcher`` in the window ending ``now``."""
        now = time.time() if now is None else now
        with self._lock:
            seen = self._first_seen.get(researcher, {})
            return sum(1 for at in seen.values() if now - at < self.window_seconds)

    def check(self, researcher: str, key: str, limit: int, now: float | None = None) -> None:
        """Allow a step of analysis ``key`` or raise.

        Raises
        ------
        DisclosureError
            Control ``query_budget``, when ``key`` is a new analysis and the
            researcher already ran ``limit`` analyses in the window.
        """
        if limit <= 0:
            return
        now = time.time() if now is None else now
        with self._lock:
            seen = self._first_seen.get(researcher, {})
            at = seen.get(key)
            if at is not None and now - at < self.window_seconds:
                return  # a later round or restart of an analysis already counted
            used = sum(1 for t in seen.values() if now - t < self.window_seconds)
        if used >= limit:
            raise DisclosureError(f"researcher {researcher!r} has used the query budget of this node "
                                  f"({used} of {limit} analyses in the last 24 hours)",
                                  control="query_budget")

    def charge(self, researcher: str, key: str, now: float | None = None) -> None:
        """Record an allowed step of analysis ``key`` (a no-op for later rounds)."""
        now = time.time() if now is None else now
        with self._lock:
            seen = self._first_seen[researcher]
            if key not in seen or now - seen[key] >= self.window_seconds:
                seen[key] = now
            cutoff = now - self.window_seconds
            for old in [k for k, t in seen.items() if t < cutoff]:
                del seen[old]
