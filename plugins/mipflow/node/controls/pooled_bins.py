"""Pooled thresholds at a node: masked among pinned peers, one participant set and one pool per cohort.

An algorithm step whose release is checked on **pooled** counts (``pooled_threshold``: Kaplan-Meier's
pooled time bins, ADR 0052) releases the node's own counts on bins in which only the *pooled* count
is guaranteed to reach ``nfilter_tab``: a release the node would not make in the clear.  ADR 0027
states what such a relaxation needs: the central site must not be able to form two sums that differ
by one node's part.  So a node answers such a step only

1. **masked among at least 3 participants** (:func:`require_pooled_masking`, before a row is read),
   each of them in the round's transcript (pinned peers: the roster checks the keys, ADR 0014/0029),
   in a round the algorithm masks or seals (round 0 releases ``group_n`` in the clear, as a per-node
   release does);
2. for **one participant set and one pool per cohort** (:func:`bind_pooled`, after the local step,
   durable in ``HOME/pooled_bins.sqlite``): the node's cohort (its rows' leaving counts on the fine
   grid, whatever the grouping; in a study, the study's snapshot) is bound, the first time, to the
   participants (names and keys) and, at round 1, to a digest of the pooled counts it opened.  Another
   participant set (a subset: ``{A, B, C}`` then ``{B, C}``), or another pool (the same participants
   with another node's rows changed: a dataset left out, a filter, new data, a refreshed study) is
   refused, control ``pooled_bins``.  So every pooled release that involves this node's rows sums the
   same parts, and no difference of two isolates one node.  Honest dropouts, new data at a peer and
   refreshed studies end in that refusal too: the central site then runs the analysis again with
   per-node bins (which need no fixed set), and says so in the result.

In a study the node also seals its family's cells (:func:`mipflow.node.controls.study_pooled.family_cells`),
from which every node derives the family's pooled partition (and, for a release of the population,
its refinement, ADR 0056).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.sqlite_state import SqliteState

#: The file of the bindings in the node home.
BINDINGS_FILE = "pooled_bins.sqlite"
#: The least number of participants of a pooled-threshold step.
MIN_PARTICIPANTS = 3


def _refuse(what: str) -> DisclosureError:
    return DisclosureError(f"pooled time bins: {what}; per-node bins are answered", control="pooled_bins")


def is_pooled(work: Any, request: Any) -> bool:
    """Whether the step's release is checked on pooled counts (and not an explore mode release)."""
    return work.explore is None and bool(work.algo.pooled_threshold(request.analysis, work.model))


def require_pooled_masking(request: Any, context: Any, work: Any) -> None:
    """A pooled-threshold step is answered only masked among at least :data:`MIN_PARTICIPANTS` participants,
    this node among them and every one of them in the round's transcript.  Decided from the request
    and the verified transcript, before a row is read.

    Raises
    ------
    DisclosureError
        Control ``pooled_bins``.
    """
    if not is_pooled(work, request):
        return
    from mipflow.node.controls.masking import other_participants

    others = other_participants(request.secure_aggregation, context.name)
    if request.secure_aggregation is None or len(others) + 1 < MIN_PARTICIPANTS:
        raise _refuse(f"they are answered only under secure aggregation among at least {MIN_PARTICIPANTS} nodes")
    named = {item.get("node") for item in request.secure_aggregation.get("participants", [])
             if isinstance(item, dict)}
    if context.name not in named:
        raise _refuse("this node is not among the secure-aggregation participants")
    if work.transcript is None or set(work.transcript.participants) != named:
        raise _refuse("the round's participants must be the secure-aggregation participants")


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(repr((part.dtype.str, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _cohort_key(request: Any, work: Any, aggregates: dict) -> str:
    """What identifies the node's rows for the binding: in a study its snapshot; else the rows' leaving
    counts per level of the event variable on the fine grid, summed over the groups (the same
    whatever the grouping)."""
    head = ["pooled-bins", request.algorithm, request.analysis.data_model, list(request.analysis.y)]
    if work.study is not None:
        study = work.study.study
        return _digest(*head, "study", study.project, study.protocol.name, study.snapshot)
    from mipflow.algorithms.sealed import SEALED

    if SEALED in aggregates:
        series = np.asarray(aggregates[SEALED]["series"], dtype=np.int64)
    else:
        series = np.asarray([g["series"] for g in aggregates["groups"]], dtype=np.int64)
    return _digest(*head, series.sum(axis=0))


def _pool_digest(pool: dict[str, Any]) -> str:
    """The pooled counts the binding fixes: the family's cells in a study, else the pooled leaving
    counts summed over the groups."""
    if "family" in pool:
        return _digest("family", np.asarray(pool["family"], dtype=np.int64))
    return _digest("series", np.asarray(pool["series"], dtype=np.int64).sum(axis=0))


class PooledBindings(SqliteState):
    """Each cohort's participant set and pool, durable (``HOME/pooled_bins.sqlite``)."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(Path(root) / BINDINGS_FILE)

    def bind(self, key: str, participants: str, pool: str | None) -> None:
        """Record or check the binding of cohort ``key``.

        Raises
        ------
        DisclosureError
            Control ``pooled_bins``: another participant set, or another pool, than the first.
        """
        with self._lock, self._connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bindings (cohort TEXT PRIMARY KEY, participants TEXT NOT NULL, "
                         "pool TEXT)")
            row = conn.execute("SELECT participants, pool FROM bindings WHERE cohort = ?", (key,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO bindings VALUES (?, ?, ?)", (key, participants, pool))
                return
            if row[0] != participants:
                raise _refuse("this node answers them on these rows with one participant set only, and it "
                              "answered them with another")
            if pool is not None and row[1] is not None and row[1] != pool:
                raise _refuse("this node answers them on these rows only while the other participants' rows are "
                              "those it answered them with first (a node's data changed or a dataset was left out)")
            if pool is not None and row[1] is None:
                conn.execute("UPDATE bindings SET pool = ? WHERE cohort = ?", (pool, key))


_BINDINGS: dict[str, PooledBindings] = {}


def bindings(root: str | Path) -> PooledBindings:
    """The node home's bindings (one object per home and process)."""
    key = str(Path(root).resolve())
    if key not in _BINDINGS:
        _BINDINGS[key] = PooledBindings(root)
    return _BINDINGS[key]


def bind_pooled(request: Any, context: Any, work: Any) -> None:
    """After the local step of a pooled-threshold step: in a study, the family's cells join what round 0
    seals (and round 1 learns the grid they are on); then the node's cohort is bound to one participant
    set and, from round 1, one pool (see the module docstring).

    Raises
    ------
    DisclosureError
        Control ``pooled_bins``.
    """
    if not is_pooled(work, request) or not isinstance(work.aggregates, dict):
        return
    from mipflow.algorithms.sealed import POOLED, SEALED
    from mipflow.algorithms.survival_pooled import FAMILY_POINTS_KEY, FAMILY_POPULATION_KEY, POOL_KEY

    aggregates = work.aggregates
    key = _cohort_key(request, work, aggregates)
    if work.study is not None:
        from mipflow.node.controls.study_pooled import family_cells

        if SEALED in aggregates:
            cells, _ = family_cells(work.study, context.selections.store, work.model, context.selections.differencing.key)
            sealed = {k: v for k, v in aggregates[SEALED].items() if k != "series"}  # not needed in a study
            aggregates = {**aggregates, SEALED: {**sealed, "family": cells.tolist()}}
        elif POOL_KEY in aggregates:
            from mipflow.algorithms.survival import request_points
            from mipflow.node.controls.study_pooled import base_levels

            protocol = work.study.study.protocol
            grid = protocol.survival
            points = request_points(work.model.variable(grid["time"]), float(grid["bin_width"]), None)
            # the population's release is on the family partition's refinement (ADR 0056): its cells lead
            population = len(base_levels(work.model, protocol)) if work.study.subgroup is None else 0
            aggregates = {**aggregates, POOL_KEY: {**aggregates[POOL_KEY], FAMILY_POINTS_KEY: points,
                                                   FAMILY_POPULATION_KEY: population}}
    participants = json.dumps(sorted(work.transcript.participants_hex.items()))
    pool = None
    if isinstance(work.state, dict) and POOLED in work.state:
        pool = _pool_digest(work.state[POOLED])
    bindings(context.home.root).bind(key, participants, pool)
    work.aggregates = aggregates
