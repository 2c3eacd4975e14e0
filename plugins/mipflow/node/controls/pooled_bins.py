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
   same parts, and no difference of two isolates one node;
3. **no other survival release of a bound cohort** (:func:`check_pooled_parts`, ADR 0059): the cohort is
   the node's **rows** (keyed row hashes, as the cohort ledger's; by patients against cohorts of another
   data model), not their counts.  Once bound, any Kaplan-Meier or Cox release of those rows, or of rows
   within ``min_row_count`` of them (per-node bins, another participant set, another dataset list,
   masked or not), is refused, control ``pooled_bins``, naming the rule and telling the researcher to
   re-run with all the original datasets: pooled ``{A, B, C}`` less per-node ``{B, C}`` is A's own counts
   on the pooled bins, cells of 1 and 2 (twelfth outside review).  The other way round, rows released
   on per-node bins are not answered on pooled bins (the central site falls back to per-node ones).  In
   a study the bound cohort is the study's family at the node (population, subgroups, complements) and
   its snapshot: once one of its survival releases is pooled, none is per-node, and the reverse.
   Honest dropouts, new data at a peer and refreshed studies now end a bound cohort's survival
   analyses (no per-node fallback): the cost is an answer, not resolution (ADR 0059).

Since ADR 0060, in standard mode, a changed pool of the **same analysis** (new data at another node) is
answered when its bins, derived by every node against the analysis's chain of earlier pools
(:mod:`mipflow.node.controls.pool_chain`), nest with theirs and keep the pooled difference 0 or at least
``nfilter_tab`` in every common bin; the binding then holds every pool answered.

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
from mipflow.node.controls.epochs import PATIENTS, ROWS, EpochView
from mipflow.node.controls.keycodec import decode_keys, encode_keys
from mipflow.node.controls.sqlite_state import SqliteState

#: The file of the bindings in the node home.
BINDINGS_FILE = "pooled_bins.sqlite"
#: The least number of participants of a pooled-threshold step.
MIN_PARTICIPANTS = 3
#: The algorithms whose releases count a cohort's events on time bins (ADR 0008, 0048): any of their
#: releases of a bound cohort other than the same pooled one is a part ADR 0027 forbids (ADR 0059).
SURVIVAL_ALGORITHMS = ("kaplan_meier", "cox_regression")
#: The kinds of survival release remembered per cohort.
POOLED_RELEASE, PER_NODE_RELEASE = "pooled", "per_node"
#: The ``data_model`` column of a study's marks (its family and snapshot as one cohort).
STUDY_MARK = "(study)"


def _refuse(what: str) -> DisclosureError:
    return DisclosureError(f"pooled time bins: {what}; per-node bins are answered", control="pooled_bins")


def _rule_refusal() -> DisclosureError:
    """A bound cohort's survival release other than on its pooled bins (ADR 0059); no count, no value."""
    return DisclosureError(
        "pooled time bins (ADR 0052, 0059): these rows took part in a survival analysis on time bins derived "
        "from counts pooled with other nodes, so this node answers survival analyses of them, or of rows within "
        "min_row_count of them, only on those pooled bins with the same participating nodes: any other release "
        "of their counts (per-node bins, other nodes or datasets) would subtract from the pooled one to another "
        "hospital's own small counts. Re-run the analysis with all the original datasets, on the same nodes. If a "
        "node loaded new data since, the same analysis is answered again on pooled bins once the change is large "
        "enough that the difference of the two pooled releases holds 0 or at least nfilter_tab rows in every time "
        "bin (ADR 0060): wait until more data are loaded there and run it again, or run it in explore mode or in "
        "a study. Cox regression has no pooled bins, so it cannot follow a pooled Kaplan-Meier of the same rows: "
        "run Cox regression on a cohort before its Kaplan-Meier curves (Kaplan-Meier then uses per-node bins), or "
        "in explore mode or a study", control="pooled_bins")


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


def participants_of(work: Any) -> str:
    """The verified round's participants (names and public keys) as bindings and pool chains key them."""
    return json.dumps(sorted(work.transcript.participants_hex.items()))


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


def _cohort_key(request: Any, work: Any) -> str:
    """What identifies the node's rows for the binding: in a study its snapshot; else the rows
    themselves (the cohort ledger's digest of the rows used, the same whatever the grouping).  Not
    their leaving counts (ADR 0059): two filters whose rows differ but count alike are two cohorts."""
    head = ["pooled-bins", request.algorithm, request.analysis.data_model, list(request.analysis.y)]
    if work.study is not None:
        return _digest(*head, "study", _study_mark(work))
    return _digest(*head, "rows", work.cohorts.digest)


def _study_mark(work: Any) -> str:
    """A study's family at this node as one cohort: its project, protocol and snapshot."""
    study = work.study.study
    return _digest("study", study.project, study.protocol.name, study.snapshot)


def _overlap(a: np.ndarray, b: np.ndarray) -> int:
    from mipflow.node.controls.ledger import _overlap as overlap

    return overlap(a, b)


def _near(new: np.ndarray, old: np.ndarray, threshold: int) -> bool:
    """The same rows, or rows within ``threshold`` of them: they share some and each difference is
    smaller than ``threshold``."""
    both = _overlap(new, old)
    return both > 0 and len(new) - both < threshold and len(old) - both < threshold


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

    def _pools_table(self, conn: Any) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS binding_pools (cohort TEXT NOT NULL, seq INTEGER NOT NULL, "
                     "pool TEXT NOT NULL, PRIMARY KEY (cohort, pool))")

    def bind(self, key: str, participants: str, pool: str | None, chain: list[str] | None = None) -> None:
        """Record or check the binding of cohort ``key``.  The first pool is recorded here; a later one
        (ADR 0060) is accepted only if every pool the cohort was bound to is in ``chain`` (the earlier
        pools its bins were derived against, :mod:`mipflow.node.controls.pool_chain`), and joins the
        binding when the release is answered (:meth:`extend`).

        Raises
        ------
        DisclosureError
            Control ``pooled_bins``: another participant set; an earlier pool than the latest; another pool
            whose bins were not derived against every pool the cohort was bound to.
        """
        with self._lock, self._connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bindings (cohort TEXT PRIMARY KEY, participants TEXT NOT NULL, "
                         "pool TEXT)")
            self._pools_table(conn)
            row = conn.execute("SELECT participants, pool FROM bindings WHERE cohort = ?", (key,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO bindings VALUES (?, ?, ?)", (key, participants, pool))
                return
            if row[0] != participants:
                raise _refuse("this node answers them on these rows with one participant set only, and it "
                              "answered them with another")
            if pool is None:
                return
            if row[1] is None:
                conn.execute("UPDATE bindings SET pool = ? WHERE cohort = ?", (pool, key))
                return
            bound = [row[1], *(p for (p,) in conn.execute("SELECT pool FROM binding_pools WHERE cohort = ? "
                                                          "ORDER BY seq", (key,)))]
            if pool == bound[-1]:
                return
            if pool in bound:
                raise _refuse("this node answers them on these rows only on the latest pooled data, and the other "
                              "participants' data are now as they were for an earlier run")
            if chain is None or not set(bound) <= set(chain):
                raise _refuse("this node answers them on these rows only while the other participants' rows are "
                              "those it answered them with first, or changed from them by new data loaded for the same "
                              "analysis (ADR 0060: the same datasets and filters); run the original analysis again, "
                              "or run this one in explore mode or in a study")

    def extend(self, key: str, pool: str) -> None:
        """A changed pool answered for cohort ``key`` joins its binding (ADR 0060)."""
        with self._lock, self._connect() as conn:
            self._pools_table(conn)
            row = conn.execute("SELECT pool FROM bindings WHERE cohort = ?", (key,)).fetchone()
            if row is None or row[0] in (None, pool):
                return
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM binding_pools WHERE cohort = ?",
                               (key,)).fetchone()[0]
            conn.execute("INSERT OR IGNORE INTO binding_pools VALUES (?, ?, ?)", (key, seq, pool))

    def _cohorts_table(self, conn: Any) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS survival_cohorts (kind TEXT NOT NULL, data_model TEXT NOT NULL, "
                     "digest TEXT NOT NULL, binding TEXT NOT NULL, rows BLOB NOT NULL, patients BLOB, "
                     "PRIMARY KEY (kind, data_model, digest, binding))")
        if "epoch" not in {row[1] for row in conn.execute("PRAGMA table_info(survival_cohorts)")}:
            conn.execute("ALTER TABLE survival_cohorts ADD COLUMN epoch TEXT")  # before: the epoch "" (ADR 0061)

    def remember(self, kind: str, data_model: str, digest: str, rows: np.ndarray | None = None,
                 patients: np.ndarray | None = None, binding: str = "", epoch: str = "") -> None:
        """Remember a survival release of ``kind`` (:data:`POOLED_RELEASE`, :data:`PER_NODE_RELEASE`) on a
        cohort: its sorted row keys and patients (None: a study's mark, ``data_model`` :data:`STUDY_MARK`),
        for a pooled one the binding (:func:`_cohort_key`) it was answered under, and the consent ``epoch``
        (ADR 0061; one remembered before keeps its epoch)."""
        rows = np.zeros(0, dtype=np.uint64) if rows is None else rows
        with self._lock, self._connect() as conn:
            self._cohorts_table(conn)
            conn.execute("INSERT OR IGNORE INTO survival_cohorts (kind, data_model, digest, binding, rows, patients, "
                         "epoch) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (kind, data_model, digest, binding, encode_keys(rows),
                          None if patients is None else encode_keys(patients), epoch))

    def marked(self, kind: str, mark: str) -> bool:
        """Whether a study's mark was remembered with ``kind``."""
        with self._lock, self._connect() as conn:
            self._cohorts_table(conn)
            return conn.execute("SELECT 1 FROM survival_cohorts WHERE kind = ? AND data_model = ? AND digest = ?",
                                (kind, STUDY_MARK, mark)).fetchone() is not None

    def near(self, kind: str, data_model: str, rows: np.ndarray, patients: np.ndarray | None, threshold: int,
             *, other_than: str | None = None, view: EpochView | None = None) -> bool:
        """Whether a cohort remembered with ``kind`` is these rows or within ``threshold`` rows of them
        (by rows under ``data_model``, by patients under another); ``other_than``: a binding whose
        cohorts are left out (the pooled release being answered again).  Remembered cohorts are seen
        through the epoch ``view`` (ADR 0061: one of an earlier consent epoch by its rows still held, at
        every node alike; the same rows are near already)."""
        threshold = max(int(threshold), 1)
        view = view if view is not None else EpochView()
        with self._lock, self._connect() as conn:
            self._cohorts_table(conn)
            stored = conn.execute("SELECT data_model, binding, rows, patients, epoch FROM survival_cohorts "
                                  "WHERE kind = ? AND data_model != ?", (kind, STUDY_MARK)).fetchall()
        for model, binding, row_blob, patient_blob, epoch in stored:
            if other_than is not None and binding == other_than:
                continue
            if model == data_model:
                if view.near(_near, rows, decode_keys(row_blob), model, ROWS, epoch, threshold):
                    return True
            elif patients is not None and patient_blob is not None:
                if view.near(_near, patients, decode_keys(patient_blob), model, PATIENTS, epoch, threshold):
                    return True
        return False


def bindings(root: str | Path) -> PooledBindings:
    """The node home's bindings (one object per home and process)."""
    return PooledBindings.of_home(root)


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
    key = _cohort_key(request, work)
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
    participants = participants_of(work)
    pool = None
    if isinstance(work.state, dict) and POOLED in work.state:
        pool = _pool_digest(work.state[POOLED])
    memory = bindings(context.home.root)
    prepared = None
    if work.study is None and pool is not None and POOL_KEY in aggregates:
        from mipflow.node.controls import pool_chain

        # ADR 0060: the pool's bins against the request's chain of earlier pools (the same at every node)
        prepared = pool_chain.prepare(memory, request, participants, pool, work.state[POOLED],
                                      work.settings.nfilter_tab)
    memory.bind(key, participants, pool, None if prepared is None else prepared["pools"])
    if prepared is not None and prepared["derived"]:
        from mipflow.algorithms.survival_pooled import CHAIN_KEY

        aggregates = {**aggregates, POOL_KEY: {**aggregates[POOL_KEY],
                                               CHAIN_KEY: {"ends": prepared["ends"], "levels": prepared["levels"]}}}
    work.pool_chain = prepared
    work.aggregates = aggregates


def _selection(work: Any) -> tuple[str, str, np.ndarray, np.ndarray | None]:
    """The step's cohort: data model, digest, sorted row keys, sorted patients (or None)."""
    cohorts = work.cohorts
    return (cohorts.data_model, cohorts.digest, cohorts.sets[0],
            None if cohorts.patients is None else cohorts.patients[0])


def _bound_sets(work: Any) -> list[tuple[str, str, np.ndarray | None, np.ndarray | None]]:
    """What a pooled step binds, by rows: the step's cohort; in a study also the study's mark and its
    family at this node (the population, every subgroup and its complement: every pooled release of
    the study is summed from the family's cells)."""
    sets = [_selection(work)]
    if work.study is not None:
        from mipflow.node.controls.ledger import cohort_digest

        study = work.study.study
        model = work.cohorts.data_model
        family = [study.population]
        for keys in study.subgroups.values():
            family += [keys, np.setdiff1d(study.population, keys, assume_unique=True)]
        sets += [(model, cohort_digest(model, keys), keys, None) for keys in family if len(keys)]
        sets.append((STUDY_MARK, _study_mark(work), None, None))
    return sets


def is_survival(work: Any, request: Any) -> bool:
    """Whether the step releases a cohort's counts on time bins (and is not an explore release, whose
    noise makes it safe beside any other release)."""
    return work.explore is None and request.algorithm in SURVIVAL_ALGORITHMS and work.cohorts is not None


def check_pooled_parts(request: Any, context: Any, work: Any) -> None:
    """ADR 0059, after the rows are read: a survival step on rows bound to a pool (or within
    ``min_row_count`` of them) is answered only as that pooled release (:func:`bind_pooled` checks the
    participants and the pool); a pooled step on rows released on per-node bins is declined (the
    central site falls back to per-node bins).  In a study, by the study's mark as well.

    Raises
    ------
    DisclosureError
        Control ``pooled_bins``.
    """
    if not is_survival(work, request):
        return
    memory = bindings(context.home.root)
    model, digest, rows, patients = _selection(work)
    threshold = work.settings.min_row_count
    view = epoch_view(context, work)
    if is_pooled(work, request):
        if work.study is not None and memory.marked(PER_NODE_RELEASE, _study_mark(work)):
            raise _refuse("this study's survival analyses were answered on per-node bins at this node")
        if memory.near(PER_NODE_RELEASE, model, rows, patients, threshold, view=view):
            raise _refuse("these rows, or rows within min_row_count of them, were answered on per-node bins")
        if memory.near(POOLED_RELEASE, model, rows, patients, threshold, other_than=_cohort_key(request, work),
                       view=view):
            raise _rule_refusal()  # the rows, or rows near them, bound under another binding (a refreshed study)
        return
    if work.study is not None and memory.marked(POOLED_RELEASE, _study_mark(work)):
        raise _rule_refusal()
    if memory.near(POOLED_RELEASE, model, rows, patients, threshold, view=view):
        raise _rule_refusal()


def epoch_view(context: Any, work: Any) -> EpochView:
    """The step's view of the consent epochs (ADR 0061): the node's epoch and its data models' current rows
    (read at most once, only for releases remembered under an earlier epoch)."""
    from mipflow.node.controls.differencing import consent_epoch

    store = getattr(context, "store", None)
    return EpochView("" if store is None else consent_epoch(store), getattr(work, "current_rows", None))


def remember_pooled_parts(request: Any, context: Any, work: Any) -> None:
    """After a survival release (ADR 0059): on pooled bins (the masked round, whose state holds the
    pool), the rows it binds (:func:`_bound_sets`), so that no other survival release of them follows;
    on per-node bins, its rows (and in a study, the study's mark), so that no pooled release of them
    follows.  Round 0 of pooled bins releases ``group_n`` and sealed parts only: nothing is
    remembered then (a node refused at round 0 leaves its peers free to answer per-node bins)."""
    if not is_survival(work, request):
        return
    memory = bindings(context.home.root)
    epoch = epoch_view(context, work).epoch
    if not is_pooled(work, request):
        memory.remember(PER_NODE_RELEASE, *_selection(work), epoch=epoch)
        if work.study is not None:
            memory.remember(PER_NODE_RELEASE, STUDY_MARK, _study_mark(work))
        return
    from mipflow.algorithms.sealed import POOLED

    if isinstance(work.state, dict) and POOLED in work.state:
        key = _cohort_key(request, work)
        for model, digest, rows, patients in _bound_sets(work):
            memory.remember(POOLED_RELEASE, model, digest, rows, patients, binding=key, epoch=epoch)
        prepared = getattr(work, "pool_chain", None)
        if prepared is not None:  # ADR 0060: the pool joins the request's chain and the cohort's binding
            from mipflow.node.controls import pool_chain

            pool_chain.record(memory, prepared)
            memory.extend(key, prepared["pool"])
