"""The pools one pooled Kaplan-Meier analysis was answered on at a node, and a changed pool's bins (ADR 0060).

A node bound to a pool (ADR 0052, 0059) answers a **changed** pool of the same participants and the same
request (another node loaded new rows) only on bins derived against every earlier pool of that request
(:func:`~mipflow.algorithms.survival_chain.chained_bins`): the two pools' partitions nest and their pooled
difference is 0 or at least ``nfilter_tab`` in every common bin.  For that each node keeps, per **chain**
(the participants with their keys, the algorithm, data model, datasets, filters and ``y``: the same at every
node, unlike the cohort's rows, which changed at the node that loaded), the pools it answered in order:
their pooled fine counts (summed over groups, and per grouping asked) and the canonical ends derived, in
``HOME/pooled_bins.sqlite``.

Storing them keeps **pooled counts of all participants** at the node, day by day, cells of 1 included:
what the node opened when it answered (ADR 0052's peer residual), now durable.  They are never released
and never leave the node; the file is as sensitive as the sealed parts were (the node home's protection
covers it).  A deployment that does not want them kept deletes the file: bound cohorts then stay refused on
any changed pool, as under ADR 0059.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any

import numpy as np

from mipflow.algorithms.survival_chain import ChainRefused, chained_bins
from mipflow.exceptions import DisclosureError

#: The ``grouping`` of the entries holding a pool's counts summed over groups (its ``all`` partition).
TOTAL = ""


def refusal(what: str) -> DisclosureError:
    """A changed pool refused (control ``pooled_bins``): what to do, no count."""
    return DisclosureError(
        f"pooled time bins (ADR 0060): another node's data changed since this analysis was answered on pooled "
        f"bins, and {what}. Wait until more data are loaded at the node whose data changed (or until every node "
        "has loaded its new data) and run it again, or run the analysis in explore mode or in a study",
        control="pooled_bins")


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def chain_key(request: Any, participants: str) -> str:
    """The request's chain: participants (names and keys), algorithm, data model, datasets, filters, ``y``
    (not the grouping: every grouping's release is a function of one pool)."""
    analysis = request.analysis
    return _digest("pool-chain", participants, request.algorithm, analysis.data_model, sorted(analysis.datasets),
                   analysis.filters, list(analysis.y))


def grouping_of(request: Any) -> str:
    return json.dumps(list(request.analysis.x))


def _pack(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype="<i8")
    return json.dumps(array.shape).encode() + b"\n" + zlib.compress(array.tobytes())


def _unpack(blob: bytes) -> np.ndarray:
    head, body = bytes(blob).split(b"\n", 1)
    return np.frombuffer(zlib.decompress(body), dtype="<i8").reshape(json.loads(head)).astype(np.int64)


def _table(conn: Any) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS pool_chain (chain TEXT NOT NULL, seq INTEGER NOT NULL, pool TEXT NOT "
                 "NULL, grouping TEXT NOT NULL, counts BLOB NOT NULL, ends TEXT NOT NULL, "
                 "PRIMARY KEY (chain, pool, grouping))")


def entries(memory: Any, chain: str) -> list[tuple[str, str, np.ndarray, dict[str, list[int]]]]:
    """The chain's entries in the order they were answered: (pool, grouping, counts, ends)."""
    with memory._lock, memory._connect() as conn:
        _table(conn)
        rows = conn.execute("SELECT pool, grouping, counts, ends FROM pool_chain WHERE chain = ? ORDER BY seq",
                            (chain,)).fetchall()
    return [(pool, grouping, _unpack(blob), json.loads(ends)) for pool, grouping, blob, ends in rows]


def record(memory: Any, prepared: dict[str, Any]) -> None:
    """After the release is answered: the pool's entries join the chain (once)."""
    with memory._lock, memory._connect() as conn:
        _table(conn)
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM pool_chain WHERE chain = ?",
                           (prepared["chain"],)).fetchone()[0]
        for grouping, counts, ends in prepared["new_entries"]:
            conn.execute("INSERT OR IGNORE INTO pool_chain VALUES (?, ?, ?, ?, ?, ?)",
                         (prepared["chain"], seq, prepared["pool"], grouping, _pack(counts), json.dumps(ends)))


def prepare(memory: Any, request: Any, participants: str, pool: str, pooled: dict[str, Any], tab: int
            ) -> dict[str, Any]:
    """Round 1 of a standard-mode pooled release: the pool's bins against the chain.

    Returns ``chain``, ``pool``, the chain's ``pools`` before this one (the all-level entries, in order),
    ``ends`` and ``levels`` of the release's groups, ``derived`` (whether earlier pools shaped them, so the
    release must use them), ``context`` (a digest of the entries used, bound into the masks: nodes whose
    chains differ derive other bins and their masks do not cancel; None without earlier entries) and
    ``new_entries`` (what :func:`record` adds).

    Raises
    ------
    DisclosureError
        Control ``pooled_bins``: the pool is an earlier one of the chain, or no bins keep the difference safe.
    """
    chain = chain_key(request, participants)
    grouping = grouping_of(request)
    stored = entries(memory, chain)
    order = [p for p, g, _, _ in stored if g == TOTAL]
    if pool in order and pool != order[-1]:
        raise refusal("the data are now as they were for an earlier run of this analysis, not the latest")
    before = order[:order.index(pool)] if pool in order else order
    totals = {p: (c, e) for p, g, c, e in stored if g == TOTAL}
    by_grouping = {p: (c, e) for p, g, c, e in stored if g == grouping}
    series = np.asarray(pooled["series"], dtype=np.int64)
    groups = [{"events": ev, "censored": ce, "series": s}
              for ev, ce, s in zip(np.asarray(pooled["events"]), np.asarray(pooled["censored"]), series)]
    flat = series.reshape(-1, series.shape[-1])
    new_entries = []
    if pool in by_grouping:
        ends = by_grouping[pool][1]
        parts = {"groups": ends["groups"], "levels": ends["levels"], "all": totals[pool][1]["all"]}
    else:
        try:
            parts = chained_bins(groups, tab, [(totals[p][0], totals[p][1]["all"]) for p in before],
                                 [(by_grouping[p][0], by_grouping[p][1]["groups"]) for p in before if p in by_grouping],
                                 fixed_all=totals[pool][1]["all"] if pool in totals else None)
        except ChainRefused:
            raise refusal("the change is too small, or too thinly spread over time, for the difference of the two "
                          "pooled releases to hold 0 or at least nfilter_tab rows in every time bin") from None
        if pool not in totals:
            new_entries.append((TOTAL, series.sum(axis=0), {"all": parts["all"]}))
        new_entries.append((grouping, flat, {"groups": parts["groups"], "levels": parts["levels"]}))
    used = [(p, g) for p, g, _, _ in stored if p in before or p == pool]
    return {"chain": chain, "pool": pool, "pools": before, "ends": parts["groups"], "levels": parts["levels"],
            "derived": bool(before), "context": _digest("pool-chain-context", chain, used) if used
            else None, "new_entries": new_entries}
