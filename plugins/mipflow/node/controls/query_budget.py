"""Query budget: how many analyses a researcher, and a project, may run at a node per day.

Two node settings bound the distinct analyses in any 24 hours: ``query_budget``
per researcher and ``query_budget_project`` per project, all of its researcher
ids together (0 = unlimited; ADR 0025).  A step runs only when both have room.
The project's budget is the bound that holds whoever claims to ask: a central
site can vouch for any researcher id of a granted project, so fresh ids get
fresh researcher budgets but share the project's.  A request without a
researcher (or without a project) is charged to the empty id, which all such
requests share.

An *analysis* is the central site's ``analysis_id`` together with the algorithm
and the request it carries: all rounds (and restarts) of one analysis count
once, the same id re-used for another request counts again, and a request sent
without an id counts once per distinct request.

**Every request counts**, answered or refused (by access, validation, the
disclosure controls, differencing, DP...): a refusal tells the requester
something, so it costs what an answer costs.  A step refused *because* a budget
is spent is not charged again; a step refused before the budget check (access,
a disabled algorithm) is charged while the budgets have room.  A body that does
not parse is not charged: nothing but its own bytes decides that.

The ledger is rebuilt from the node's audit log at start: an allowed step, and
a refused one marked ``counted``, carries ``researcher``, ``project`` and
``analysis``, so a restart forgets nothing and the count is what the audit log
shows.  Records written before projects were charged count for the project
they name.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from mipflow.exceptions import DisclosureError

WINDOW_SECONDS = 24 * 3600
#: The two budgets, as the messages name them.
KINDS = ("researcher", "project")


def analysis_key(analysis_id: str | None, algorithm: str, request: Mapping[str, Any]) -> str:
    """Identify one analysis: SHA-256 of the central site's id, the algorithm and the request."""
    doc = json.dumps([analysis_id or "", algorithm, request], sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


def counted(record: Mapping[str, Any]) -> bool:
    """Whether an audit record is a step that counted against the query budget: an allowed
    step, or a refused one the node marked ``counted``."""
    if not record.get("analysis"):
        return False
    return record.get("decision") == "allowed" or record.get("counted") is True


@dataclass(frozen=True)
class Spent:
    """One budget with no room for a new analysis.

    Attributes
    ----------
    kind : str
        ``"researcher"`` or ``"project"``.
    who : str
        The researcher or project id.
    used, limit : int
        Distinct analyses in the window, and the node's limit.
    frees_at : float
        When (seconds since the epoch) the window slides past enough analyses to admit one more.
    """

    kind: str
    who: str
    used: int
    limit: int
    frees_at: float

    def message(self) -> str:
        """What the refusal says: which budget, how full, when it frees up (no data-derived value)."""
        at = datetime.fromtimestamp(self.frees_at, timezone.utc).isoformat(timespec="seconds")
        whose = "" if self.kind == "researcher" else " by all its researchers"
        setting = "query_budget" if self.kind == "researcher" else "query_budget_project"
        return (f"{self.kind} {self.who!r} has used the query budget of this node ({self.used} of {self.limit} "
                f"analyses in the last 24 hours{whose}, {setting}), which frees up at {at}")


class QueryBudget:
    """Distinct analyses per researcher and per project in a sliding 24-hour window.

    Parameters
    ----------
    records : iterable of mapping
        The node's audit records (:func:`counted` ones are charged again).
    window_seconds : float
        Length of the sliding window.
    """

    def __init__(self, records: Iterable[Mapping[str, Any]] = (), *,
                 window_seconds: float = WINDOW_SECONDS) -> None:
        self.window_seconds = window_seconds
        self._first_seen: dict[str, dict[str, dict[str, float]]] = {kind: defaultdict(dict) for kind in KINDS}
        self._lock = threading.Lock()
        for record in records:
            if not counted(record):
                continue
            try:
                at = datetime.fromisoformat(record["at"]).timestamp()
            except (KeyError, TypeError, ValueError):
                continue
            for kind in KINDS:
                self._first_seen[kind][str(record.get(kind) or "")].setdefault(record["analysis"], at)

    def _live(self, kind: str, who: str, now: float) -> dict[str, float]:
        seen = self._first_seen[kind].get(who, {})
        return {key: at for key, at in seen.items() if now - at < self.window_seconds}

    def used(self, researcher: str | None, now: float | None = None) -> int:
        """Distinct analyses of ``researcher`` in the window ending ``now``."""
        now = time.time() if now is None else now
        with self._lock:
            return len(self._live("researcher", researcher or "", now))

    def used_by_project(self, project: str | None, now: float | None = None) -> int:
        """Distinct analyses of all researchers of ``project`` in the window ending ``now``."""
        now = time.time() if now is None else now
        with self._lock:
            return len(self._live("project", project or "", now))

    def _spent(self, ids: Mapping[str, str], key: str, limits: Mapping[str, int], now: float) -> list[Spent]:
        """The budgets (of ``ids``, by kind) that have no room for analysis ``key``; call with the lock."""
        spent = []
        for kind in KINDS:
            limit = int(limits.get(kind, 0) or 0)
            if limit <= 0:
                continue
            live = self._live(kind, ids[kind], now)
            if key in live or len(live) < limit:
                continue  # a later round or restart of a counted analysis, or room for a new one
            times = sorted(live.values())
            spent.append(Spent(kind, ids[kind], len(live), limit,
                               times[len(live) - limit] + self.window_seconds))
        return spent

    def check(self, researcher: str | None, key: str, limit: int, now: float | None = None, *,
              project: str | None = None, project_limit: int = 0) -> None:
        """Allow a step of analysis ``key`` or raise.

        Parameters
        ----------
        researcher, project : str or None
            Who the step is for (``None`` is the shared empty id).
        key : str
            The analysis (:func:`analysis_key`).
        limit, project_limit : int
            ``query_budget`` and ``query_budget_project`` (0 = unlimited).
        now : float, optional
            The time (seconds since the epoch).

        Raises
        ------
        DisclosureError
            Control ``query_budget``, when ``key`` is a new analysis for a budget
            that already holds its limit in the window; the message names the
            budget(s) and when they free up.
        """
        now = time.time() if now is None else now
        with self._lock:
            spent = self._spent({"researcher": researcher or "", "project": project or ""}, key,
                                {"researcher": limit, "project": project_limit}, now)
        if spent:
            raise DisclosureError("; ".join(s.message() for s in spent), control="query_budget")

    def charge(self, researcher: str | None, key: str, now: float | None = None, *, project: str | None = None,
               limit: int = 0, project_limit: int = 0) -> bool:
        """Count analysis ``key`` for the researcher and the project, if both budgets have room.

        A later round of a counted analysis changes nothing.  ``limit`` and
        ``project_limit`` (0 = unlimited) keep a step refused before
        :meth:`check` from counting over a spent budget.

        Returns
        -------
        bool
            Whether the analysis counts (now or already) against the budgets.
        """
        now = time.time() if now is None else now
        ids = {"researcher": researcher or "", "project": project or ""}
        with self._lock:
            if self._spent(ids, key, {"researcher": limit, "project": project_limit}, now):
                return False
            cutoff = now - self.window_seconds
            for kind in KINDS:
                seen = self._first_seen[kind][ids[kind]]
                if key not in seen or seen[key] <= cutoff:
                    seen[key] = now
                for old in [k for k, t in seen.items() if t <= cutoff]:
                    del seen[old]
            return True
