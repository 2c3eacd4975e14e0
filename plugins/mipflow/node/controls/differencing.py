"""Differencing controls: a node remembers the cohorts it answered and refuses near-copies.

Per-request thresholds (``min_row_count``, ``nfilter_*``) cannot stop a
*differencing attack*: the sums over "all patients" and over "all patients but
one" (``age != 67.3``) are each over many rows, yet their difference is one
patient.  A node therefore remembers every cohort it has answered (under every
data model, across researchers, algorithms and restarts) and refuses a new cohort
that, against any remembered one, leaves a small non-empty remainder, or that
completes a chain of cohorts isolating a few patients (ADR 0030).

A **cohort** is the set of rows a local step uses, after datasets, filters and
complete-case.  A row is identified at the node by a keyed 64-bit hash
(SipHash-2-4, key derived from the node secret) of its feature-store key
``(_pid, dataset, _visit)``, and its patient by a keyed hash of ``_pid`` alone
(:func:`patient_keys`: the same patient under two data models is one patient);
pseudonyms never leave the node and the ledger holds only these hashes.

The rules are in :mod:`mipflow.node.controls.ledger`: pairwise by rows within a
data model (ADR 0013), pairwise by patients across data models, and the chain
rule over the cohorts a new one overlaps (ADR 0030).  Identical cohorts (the rounds of one analysis, a repeated analysis) pass.
Algorithms that do not drop incomplete rows (``descriptive_stats``) release
statistics over each variable's non-missing rows, so each such per-variable
subset is a cohort too.  What this covers and what it does not is in
``docs/adr/0013-differencing.md``.

K-means rounds release per-cluster sums: two rounds whose clusters differ by a
row or two (or any number below min_row_count, ADR 0050) give those rows away.  The node's guard (:class:`DifferencingGuard`)
therefore also compares the partition a round releases, as the algorithm
states it (``Algorithm.differencing_partition``), with those it released on the
same rows before (:mod:`mipflow.node.controls.partitions`, on disk, never evicted).

Masked releases (secure aggregation) are releases of the node's own
aggregates: they pass every check here and are recorded exactly like plain
ones, so no choice of participants or datasets can subtract one node's
aggregate out of masked sums beyond what plain releases would give
(``docs/adr/0027-masked-releases-and-durable-partitions.md``).

The ledger (:class:`~mipflow.node.controls.ledger.CohortLedger`) is a SQLite file in the
node home (``cohorts.sqlite``); growth is bounded by the number of *distinct* cohorts
answered; repeats cost nothing.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from mipflow.algorithms.contract import Algorithm
from mipflow.node.controls.partitions import PARTITIONS_PER_COHORT, PartitionMemory
from mipflow.node.controls.ledger import (  # noqa: F401 - the ledger's names, where they were before ADR 0030
    CHAIN_COHORTS, LEDGER_FILE, CohortLedger, cohort_digest, decode_keys, encode_keys, pair_conflict, related,
    sorted_unique, unique_of_sorted,
)
from mipflow.node.query.rowkeys import (  # noqa: F401 - the read's key columns, named here too
    KEY_OWNER, PID_KEY, ROW_KEY, key_fingerprint, pid_md5, row_md5, sorted_keys_of,
)


# --------------------------------------------------------------------------- row keys


def hash_key(node_secret: bytes) -> str:
    """The 16-character SipHash key for row hashes, derived from the node secret."""
    digest = hmac.new(node_secret, b"mipflow cohort ledger v1", hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")[:16]


def row_keys(frame: pd.DataFrame, key: str) -> np.ndarray:
    """Keyed 64-bit hashes of the rows' ``(_pid, dataset, _visit)``.

    Parameters
    ----------
    frame : pandas.DataFrame, shape (n, ...)
        Rows with columns ``_pid``, ``dataset`` and ``_visit``, or with their MD5 already
        computed by the store (column :data:`mipflow.node.query.ROW_MD5`).
    key : str
        From :func:`hash_key`.

    Returns
    -------
    numpy.ndarray of uint64, shape (n,)
        In the frame's row order.
    """
    from mipflow.node.query.pgcopy import ROW_MD5

    if ROW_KEY in frame.columns:  # computed while the rows were read (select_frame(row_key=...))
        return _read_keys(frame, ROW_KEY, key)
    if not len(frame):
        return np.zeros(0, dtype=np.uint64)
    if ROW_MD5 in frame.columns:  # computed by PostgreSQL on the binary read path
        digests = frame[ROW_MD5].to_numpy(dtype=object)
    else:
        parts = [frame[c].astype(object).where(frame[c].notna(), "").astype(str).tolist()
                 for c in ("_pid", "dataset", "_visit")]
        digests = np.array([row_md5(p, d, v) for p, d, v in zip(*parts)], dtype=object)
    # the node's key makes the ledger's row keys its own (the MD5 only fixes the identity's width)
    return pd.util.hash_array(digests, hash_key=key, categorize=False)


def _read_keys(frame: pd.DataFrame, column: str, key: str) -> np.ndarray:
    if frame.attrs.get(KEY_OWNER) != key_fingerprint(key):  # a bug, never a request's fault
        raise ValueError(f"column {column} was computed under another ledger key")
    return frame[column].to_numpy(dtype=np.uint64)


def patient_keys(frame: pd.DataFrame, key: str) -> np.ndarray | None:
    """Keyed 64-bit hashes of the rows' patient pseudonym ``_pid`` alone (ADR 0030).

    ``_pid`` is the node's patient identity: one pseudonymiser keyed by the node secret makes it
    from the source patient id for every dataset and data model the node loads, and a withdrawal of
    consent deletes by it everywhere.  The dataset and the visit are left out: the same patient
    under two data models (or two versions of one) may carry other dataset codes, other visit ids
    or none, and the ledger's unit across data models is the patient.

    Returns
    -------
    numpy.ndarray of uint64, shape (n,), or None
        In the frame's row order; None when the frame carries no patient identity.
    """
    from mipflow.node.query.pgcopy import PID_MD5

    if PID_KEY in frame.columns:  # computed while the rows were read (select_frame(row_key=...))
        return _read_keys(frame, PID_KEY, key)
    if not len(frame):
        return np.zeros(0, dtype=np.uint64)
    if PID_MD5 in frame.columns:  # computed by PostgreSQL on the binary read path
        digests = frame[PID_MD5].to_numpy(dtype=object)
    elif "_pid" in frame.columns:
        pids = frame["_pid"].astype(object).where(frame["_pid"].notna(), "").astype(str).tolist()
        digests = np.array([pid_md5(text) for text in pids], dtype=object)
    else:
        return None
    return pd.util.hash_array(digests, hash_key=key, categorize=False)


def cohort_sets(frame: pd.DataFrame, variables: Sequence[str], complete_case: bool,
                key: str, by: Sequence[str] = ()) -> tuple[list[np.ndarray], np.ndarray]:
    """The cohorts a local step on ``frame`` would describe, and the used rows' keys in order.

    Parameters
    ----------
    frame : pandas.DataFrame
        The selection (datasets and filters applied) with the row identity columns.
    variables : sequence of str
        The algorithm's variables.
    complete_case : bool
        Whether the algorithm drops rows with a missing value in ``variables``
        (as :func:`mipflow.algorithms.local.prepare_local_data` does).
    by : sequence of str
        Row columns whose levels split the released statistics (``Algorithm.released_by``).

    Returns
    -------
    cohorts : list of numpy.ndarray of uint64
        Sorted unique hashes: the rows used and, without complete-case, each
        variable's non-missing rows and the rows complete on every variable
        where they differ from the rows used; then each of these within each
        level of the ``by`` columns.
    used : numpy.ndarray of uint64, shape (n_used,)
        Hashes of the rows used, in the order the local step sees them.
    """
    cohorts, _, used = cohort_sets_and_patients(frame, variables, complete_case, key, by)
    return cohorts, used


def cohort_masks(frame: pd.DataFrame, variables: Sequence[str], complete_case: bool,
                 by: Sequence[str] = ()) -> list[np.ndarray]:
    """Boolean row masks of the cohorts whose statistics a local step on ``frame`` releases.

    The first is the rows the step uses (complete cases, or every row).  Without complete-case
    (``descriptive_stats``) each variable's non-missing rows follow, and the rows complete on
    every variable (its model-based statistics; issue 14.5: a cohort computed inside an
    algorithm).  Each of these is then split by the levels of the ``by`` columns (per-dataset
    statistics).  Empty masks and repeats are left out.
    """
    n = len(frame)
    columns = [c for c in variables if c in frame.columns]
    if complete_case and frame.columns.is_unique:  # one column at a time: no (rows x columns) matrix
        complete = np.ones(n, dtype=bool)
        for column in dict.fromkeys(columns):
            complete &= frame[column].notna().to_numpy()
        base = [complete]
    else:
        present = frame[columns].notna().to_numpy() if columns else np.ones((n, 0), dtype=bool)
        complete = present.all(axis=1) if n else np.ones(0, dtype=bool)
        base = [complete] if complete_case else [np.ones(n, dtype=bool), *present.T, complete]
    masks = list(base)
    for column in by:
        if column not in frame.columns:
            continue
        levels = frame[column].astype(object).to_numpy()
        for level in pd.unique(frame[column].dropna().astype(object)):
            masks += [mask & (levels == level) for mask in base]
    return distinct_masks(masks)


def rows_cohort_masks(rows: Any, variables: Sequence[str], complete_case: bool,
                      by: Sequence[str] = ()) -> list[np.ndarray]:
    """:func:`cohort_masks` of a selection left on disk (:class:`mipflow.node.query.snapshot_rows.SnapshotRows`,
    its columns ``variables``, missing values as NaN or level code -1): the same masks over its rows in
    order, computed from one pass over its columns (a bool a row and a column, a level code a row of
    each ``by`` column), never a frame."""
    n = len(rows)
    columns = [c for c in dict.fromkeys(variables) if c in rows.columns]
    present = np.ones((len(columns), n), dtype=bool)
    by_codes = {column: np.empty(n, dtype=np.int32) for column in by if column in rows.columns}
    if n and columns:
        next_rows = rows.reader(columns)
        for start in range(0, n, READ_BLOCK):
            count = min(READ_BLOCK, n - start)
            for j, (column, values) in enumerate(zip(columns, next_rows(count))):
                categorical = rows.levels_of(column) is not None
                present[j, start:start + count] = (values >= 0) if categorical else ~np.isnan(values)
                if column in by_codes:
                    by_codes[column][start:start + count] = values
    complete = present.all(axis=0) if len(columns) else np.ones(n, dtype=bool)
    base = [complete] if complete_case else [np.ones(n, dtype=bool), *present, complete]
    del present
    masks = list(base)
    for column in by:
        if column not in by_codes:
            continue
        codes = by_codes[column]
        seen = codes[codes >= 0]
        distinct, first = np.unique(seen, return_index=True)
        for level in distinct[np.argsort(first, kind="stable")]:  # pd.unique's order: first seen first
            masks += [mask & (codes == level) for mask in base]
    return distinct_masks(masks)


#: Rows read at a time by :func:`rows_cohort_masks`.
READ_BLOCK = 262_144


def distinct_masks(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``masks`` without empty masks after the first and without repeats, in order."""
    kept: list[np.ndarray] = []
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        if (mask.any() or not kept) and not any(np.array_equal(mask, m) for m in kept):
            kept.append(mask)
    return kept


def cohort_sets_and_patients(frame: pd.DataFrame, variables: Sequence[str], complete_case: bool, key: str,
                             by: Sequence[str] = ()
                             ) -> tuple[list[np.ndarray], list[np.ndarray] | None, np.ndarray]:
    """:func:`cohort_sets`, with each cohort's patients (:func:`patient_keys`, sorted unique) beside
    its rows (None when the frame carries no patient identity)."""
    cohorts, patients, used, _, _, _, _ = _cohorts_patients_and_order(frame, variables, complete_case, key, by)
    return cohorts, patients, used


def _cohorts_patients_and_order(frame: pd.DataFrame, variables: Sequence[str], complete_case: bool, key: str,
                                by: Sequence[str] = ()
                                ) -> tuple[list[np.ndarray], list[np.ndarray] | None, np.ndarray, np.ndarray | None,
                                           np.ndarray, list[np.ndarray], np.ndarray | None]:
    """:func:`cohort_sets_and_patients`, the used rows' patient keys in the local step's order
    (beside ``used``; None without a patient identity), then every row's key, the cohorts' masks and every
    row's patient key."""
    keys = row_keys(frame, key)
    pids = patient_keys(frame, key)
    masks = cohort_masks(frame, variables, complete_case, by)
    used = keys[masks[0]] if complete_case else keys
    # every row used: the read's sorted keys, when it found them sorted (a columnar snapshot), else a sort
    presorted = sorted_keys_of(frame, keys, pids) if masks[0].all() else None
    cohorts = [unique_of_sorted(presorted[0]) if presorted is not None and i == 0 else sorted_unique(keys[m])
               for i, m in enumerate(masks)]
    patients = None if pids is None else [
        unique_of_sorted(presorted[1]) if presorted is not None and i == 0 else sorted_unique(pids[m])
        for i, m in enumerate(masks)]
    used_patients = None if pids is None else (pids[masks[0]] if complete_case else pids)
    return cohorts, patients, used, used_patients, keys, masks, pids


# --------------------------------------------------------------------------- consent epochs (ADR 0061)


def consent_epoch(store: Any) -> str:
    """The node's consent epoch: the digest of the consent registry last applied ("" before any;
    :meth:`mipflow.node.store.feature_store.FeatureStore.consent_applied`).  It moves alike at every node
    applying a change, whoever the change concerned; a release remembered under another epoch is no
    longer repeated exactly (ADR 0061)."""
    return store.consent_applied()


def current_rows(store: Any, model_of: Callable[[str], Any], key: str, columnar: bool
                 ) -> Callable[[str], tuple[np.ndarray, np.ndarray | None] | None]:
    """``data_model -> (sorted unique row keys, sorted unique patient keys or None)`` of its current rows
    (every dataset, no filter), read once per data model (None: the node no longer holds it)."""
    from mipflow.exceptions import MipflowError
    from mipflow.node.query.read import select_frame

    read: dict[str, tuple[np.ndarray, np.ndarray | None] | None] = {}

    def rows_of(data_model: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        if data_model not in read:
            try:
                model = model_of(data_model)
            except MipflowError:
                read[data_model] = None
                return None
            datasets = sorted({str(r["dataset"]) for r in store.datasets(model.key)})
            frame = select_frame(store, model, datasets=datasets, variables=[], filters=None, complete_case=True,
                                 row_identity=True, row_key=key, snapshot=columnar)
            pids = patient_keys(frame, key)
            read[data_model] = (sorted_unique(row_keys(frame, key)), None if pids is None else sorted_unique(pids))
        return read[data_model]

    return rows_of


# --------------------------------------------------------------------------- the node's guard


@dataclass(frozen=True)
class Cohorts:
    """The cohorts one selection describes (see :func:`cohort_sets`); stays at the node."""

    data_model: str
    sets: tuple[np.ndarray, ...]
    digests: tuple[str, ...]
    #: The used rows' keys in the order the local step sees them (None: not known; per-row labels then
    #: compare in the local step's order).
    order: np.ndarray | None = None
    #: Each cohort's patients (sorted keyed hashes of ``_pid``, ADR 0030); None: not known.
    patients: tuple[np.ndarray, ...] | None = None
    #: The used rows' patient keys, beside ``order`` (None: not known); a released group's patients
    #: (ADR 0051, twelfth review).
    patient_order: np.ndarray | None = None
    #: Longitudinal transformer (ADR 0034): the patients with a row at either visit (the second
    #: cohort's); None without a transformer.
    seen: int | None = None
    #: Each cohort's value stamps, ``column -> stamp`` of the columns the step reads
    #: (:mod:`mipflow.node.query.stamps`; ADR 0061, hole 2); None: not known.
    stamps: tuple[dict[str, int], ...] | None = None
    #: Each cohort's patient stamps (``(patient key, column, value)`` cells; round 15 hole 3); None: not known.
    patient_stamps: tuple[dict[str, int], ...] | None = None
    #: The rows' 32-bit value digests of each stamped column (:data:`mipflow.node.query.stamps.Cells`;
    #: which rows a correction changed, round 15 hole 2); None: not known.
    cells: dict | None = None
    #: The cohorts the request's filter pins (ADR 0064): one family per widened or narrowed filter (the same
    #: request with the rules on a read variable set to true or false), each checked apart and recorded in the
    #: ledger as pinned; never a step's rows.
    pinned: tuple["Cohorts", ...] = ()

    @property
    def digest(self) -> str:
        """Digest of the rows the local step uses."""
        return self.digests[0]

    @cached_property
    def canonical(self) -> np.ndarray | None:
        """The permutation that puts the local step's rows in key order (None: the order is not known).

        Per-row labels indexed by it are in an order that does not depend on how
        the store returned the rows, so a partition remembered on disk compares
        with one computed after a restart row for row.
        """
        return None if self.order is None else np.argsort(self.order, kind="stable")


class DifferencingGuard:
    """What the node API calls around a local step (one per node process).

    Parameters
    ----------
    root : path
        The node home (the ledger lives there).
    node_secret : bytes
        The node's HMAC key (row hashes are keyed with a key derived from it).
    """

    def __init__(self, root: str | Path, node_secret: bytes) -> None:
        from mipflow.node.controls.atoms import node_primes

        self.ledger = CohortLedger(root)
        self.key = hash_key(node_secret)
        self.primes = node_primes(node_secret)  # the chain rule's ranks (ADR 0030)
        self.partitions = PartitionMemory(root)
        from mipflow.node.controls.groups import GroupMemory

        self.groups = GroupMemory(root)  # groups released with their sums, by rows (ADR 0051)
        from mipflow.node.controls.weighted_ledger import WeightedMemory

        # releases of sums weighted by the rows' values, with the chain rule's primes (ADR 0058)
        self.weighted = WeightedMemory(root, self.key, self.primes)

    def cohorts(self, data_model: str, frame: pd.DataFrame, variables: Sequence[str],
                complete_case: bool, by: Sequence[str] = ()) -> Cohorts:
        """The cohorts of a selection with row identity (see :func:`cohort_sets`)."""
        from mipflow.node.query.stamps import frame_values, stamped_columns

        sets, patients, used, used_patients, keys, masks, pids = _cohorts_patients_and_order(
            frame, variables, complete_case, self.key, by)
        stamps, by_patient, cells = frame_values(frame, keys, pids, masks,
                                                 stamped_columns(frame.columns, variables, by), self.key)
        return Cohorts(data_model, tuple(sets), tuple(cohort_digest(data_model, c) for c in sets),
                       order=used if complete_case else None,
                       patients=None if patients is None else tuple(patients),
                       patient_order=used_patients if complete_case else None, stamps=stamps,
                       patient_stamps=by_patient, cells=cells)

    def cohorts_of_selection(self, data_model: str, rows: Any) -> Cohorts:
        """The cohort of a complete-case selection left on disk
        (:class:`mipflow.node.query.snapshot_rows.SnapshotRows`) whose every row a step uses, nothing
        split by level: its row keys and its patients, each sorted and unique, as :meth:`cohorts` of
        its frame gives them.  The snapshot's sorted keys are used when they are those of the rows
        (:func:`~mipflow.node.query.rowkeys.verified_sorted`), else the keys are read and sorted.  The
        rows' order is not kept (``order`` None: 8 bytes a row less; the step releases no per-row label
        and no group)."""
        from mipflow.node.query.rowkeys import verified_sorted

        if rows.snapshot.meta.get("key") != key_fingerprint(self.key):  # a bug, never a request's fault
            raise ValueError("the selection's keys were computed under another ledger key")
        names = ("row_key", "pid_key")
        ordered = verified_sorted([rows.sorted_keys(name) for name in names],
                                  [rows.key_fingerprint(name) for name in names])
        if ordered is None:
            ordered = tuple(np.sort(rows.keys(name)) for name in names)
        sets, patients = unique_of_sorted(ordered[0]), unique_of_sorted(ordered[1])
        del ordered
        digest = cohort_digest(data_model, sets)
        known = self.ledger.recorded(data_model, digest)
        if known is not None and known[1] is not None and np.array_equal(known[1], patients):
            sets, patients = known  # the ledger's arrays, the same keys: one copy in memory, not two
        stamps, by_patient, cells = rows.masked_values(self.key, [None], list(rows.files))
        return Cohorts(data_model, (sets,), (digest,), order=None, patients=(patients,), stamps=stamps,
                       patient_stamps=by_patient, cells=cells)

    def cohorts_of_rows(self, data_model: str, rows: Any, variables: Sequence[str], complete_case: bool,
                        by: Sequence[str] = ()) -> Cohorts:
        """:meth:`cohorts` of a selection left on disk (ADR 0062): the same cohorts, digests, patients and
        (complete-case) order as of its frame.  A complete-case selection split by nothing is
        :meth:`cohorts_of_selection` (no order kept: 16 bytes a row less); otherwise the masks of
        :func:`rows_cohort_masks` over the rows' keys, read whole (16 bytes a row while computed)."""
        if complete_case and not by:
            return self.cohorts_of_selection(data_model, rows)
        if rows.snapshot.meta.get("key") != key_fingerprint(self.key):  # a bug, never a request's fault
            raise ValueError("the selection's keys were computed under another ledger key")
        masks = rows_cohort_masks(rows, variables, complete_case, by)
        keys, pids = rows.keys("row_key"), rows.keys("pid_key")
        order, patient_order = (keys[masks[0]], pids[masks[0]]) if complete_case else (None, None)
        sets = tuple(sorted_unique(keys[m]) for m in masks)
        patients = tuple(sorted_unique(pids[m]) for m in masks)
        del keys, pids
        # the value stamps of each cohort (ADR 0061 hole 2), as :meth:`cohorts` takes them from the frame
        stamps, by_patient, cells = rows.masked_values(
            self.key, [None if m.all() else m for m in masks],
            [c for c in dict.fromkeys([*variables, *by]) if c in rows.columns])
        return Cohorts(data_model, sets, tuple(cohort_digest(data_model, c) for c in sets),
                       order=order, patients=patients, patient_order=patient_order, stamps=stamps,
                       patient_stamps=by_patient, cells=cells)

    def cohorts_of(self, data_model: str, frame: pd.DataFrame, masks: Sequence[np.ndarray],
                   seen: int | None = None, variables: Sequence[str] | None = None) -> Cohorts:
        """The cohorts given by row ``masks`` of a selection with row identity, the first being
        the rows used (empty masks after the first and repeats are left out).  The local step's
        rows are not ``frame``'s (the longitudinal transformer: one row per patient), so their
        order is not known.  ``variables``: the columns the step reads, stamped (None: no stamps)."""
        from mipflow.node.query.stamps import frame_values, stamped_columns

        keys = row_keys(frame, self.key)
        pids = patient_keys(frame, self.key)
        kept = distinct_masks(masks)
        sets = [sorted_unique(keys[m]) for m in kept]
        patients = None if pids is None else tuple(sorted_unique(pids[m]) for m in kept)
        stamps, by_patient, cells = (None, None, None) if variables is None else frame_values(
            frame, keys, pids, kept, stamped_columns(frame.columns, variables), self.key)
        return Cohorts(data_model, tuple(sets), tuple(cohort_digest(data_model, c) for c in sets),
                       order=None, patients=patients, seen=seen, stamps=stamps, patient_stamps=by_patient,
                       cells=cells)

    def before_step(self, cohorts: Cohorts, min_row_count: int, epoch: str = "",
                    current: Callable[[str], tuple[np.ndarray, np.ndarray | None] | None] | None = None,
                    sums_only: bool = False) -> None:
        """Refuse (control ``differencing``) cohorts near answered ones, under any data model, or
        completing a chain with them and the cells of the groups released before (:meth:`CohortLedger.check`,
        ADR 0051's thirteenth-review amendment); ``epoch`` and ``current``: the node's consent epoch and its
        data models' current rows (ADR 0061); an exact repeat whose rows now hold other values in a column
        it reads is refused too (the cohorts' stamps, ADR 0061 hole 2).  ``sums_only``: the algorithm's
        (ADR 0063, :meth:`CohortLedger.check`)."""
        released = self.groups.chain_sets(epoch, current)
        self.ledger.check(cohorts.data_model, cohorts.sets, min_row_count, cohorts.digests,
                          patients=cohorts.patients, primes=self.primes, released=released,
                          epoch=epoch, current=current, stamps=cohorts.stamps,
                          patient_stamps=cohorts.patient_stamps, cells=cohorts.cells, sums_only=sums_only)
        for family in cohorts.pinned:  # each filter the request's pins, apart (ADR 0064)
            self.ledger.check(family.data_model, family.sets, min_row_count, family.digests,
                              patients=family.patients, primes=self.primes, released=released, epoch=epoch,
                              current=current, sums_only=sums_only, pinned=True)

    def check_partition(self, algorithm: Algorithm | str, round_no: int, data: pd.DataFrame, request: Any,
                        state: dict | None, cohorts: Cohorts, threshold: int,
                        limit: int = PARTITIONS_PER_COHORT, setting: str = "nfilter_tab") -> np.ndarray | None:
        """Refuse a released partition a few rows away from one released before (k-means rounds).

        The partition is the algorithm's own (``Algorithm.differencing_partition``:
        the node assigns its rows to the state's centres itself, as the local
        step does) and is compared with the partitions released on the same
        rows before; what the central site says about earlier rounds is not
        trusted.  ``threshold`` is the fewest rows a released group of the
        algorithm holds, named by ``setting``
        (:func:`mipflow.node.controls.disclosure.group_threshold`: ``min_row_count``
        for k-means, ADR 0050): no combination of two assignments' sums may
        single out fewer rows than a cluster holds.  Returns the partition for
        :meth:`after_step` (in the cohort's canonical row order), or None for
        steps that release none.  ``limit`` is the node setting
        ``partitions_per_cohort`` (:meth:`PartitionMemory.check`).
        """
        if threshold <= 1:
            return None
        if isinstance(algorithm, str):
            from mipflow.algorithms import get_algorithm

            algorithm = get_algorithm(algorithm)
        labels = algorithm.differencing_partition(round_no, data, request, state)
        if labels is None:
            return None
        if cohorts.canonical is not None and len(cohorts.canonical) == len(labels):
            labels = np.asarray(labels)[cohorts.canonical]
        sizes = np.bincount(labels)
        if np.any((sizes > 0) & (sizes < threshold)):
            # a cluster of 1 .. threshold - 1 rows is a cut of that weight too, but it is the group
            # control's refusal (the same threshold, at release), which excludes the node (ADR 0020)
            return labels
        self.partitions.check(self._partition_key(cohorts), labels, threshold, limit, setting)
        return labels

    def after_step(self, cohorts: Cohorts, request: Any, labels: np.ndarray | None, epoch: str = "",
                   sums_only: bool = False) -> None:
        """Remember what was released (under the node's consent ``epoch``, ADR 0061; ``sums_only``: the
        algorithm's, ADR 0063)."""
        for family in cohorts.pinned:  # remembered as pinned first: the release's own cohorts are answered
            self.ledger.record(family.data_model, family.sets, family.digests, patients=family.patients,
                               epoch=epoch, sums_only=sums_only, pinned=True)
        self.ledger.record(cohorts.data_model, cohorts.sets, cohorts.digests, patients=cohorts.patients,
                           epoch=epoch, stamps=cohorts.stamps, patient_stamps=cohorts.patient_stamps,
                           cells=cohorts.cells, sums_only=sums_only)
        if labels is not None:
            self.partitions.record(self._partition_key(cohorts), labels)

    @staticmethod
    def _partition_key(cohorts: Cohorts) -> str:
        """Partitions are remembered per cohort (data model and rows), whatever the variables:
        the same rows clustered on ``(a, b)``, ``(b, a)`` or ``(a, c)`` release counts (and sums
        of shared variables) that combine."""
        return f"{cohorts.data_model}|{cohorts.digest}"
