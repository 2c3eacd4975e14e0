"""Differencing controls: a node remembers the cohorts it answered and refuses near-copies.

Per-request thresholds (``min_row_count``, ``nfilter_*``) cannot stop a
*differencing attack*: the sums over "all patients" and over "all patients but
one" (``age != 67.3``) are each over many rows, yet their difference is one
patient.  A node therefore remembers every cohort it has answered (per data
model, across researchers, algorithms and restarts) and refuses a new cohort
that, against any remembered one, leaves a small non-empty remainder.

A **cohort** is the set of rows a local step uses, after datasets, filters and
complete-case.  A row is identified at the node by a keyed 64-bit hash
(SipHash-2-4, key derived from the node secret) of its feature-store key
``(_pid, dataset, _visit)``; pseudonyms never leave the node and the ledger
holds only these hashes.

The rule (:func:`pair_conflict`), with ``m = min_row_count``: for the new
cohort ``A`` and every answered cohort ``B`` of the same data model, each of
``|A \\ B|``, ``|B \\ A|`` and ``|A ∩ B|`` must be 0 or at least ``m``.
Identical cohorts (the rounds of one analysis, a repeated analysis) pass.
Algorithms that do not drop incomplete rows (``descriptive_stats``) release
statistics over each variable's non-missing rows, so each such per-variable
subset is a cohort too.  What this covers and what it does not is in
``docs/adr/0013-differencing.md``.

K-means rounds release per-cluster sums: two rounds whose clusters differ by a
row or two give those rows away.  The node's guard (:class:`DifferencingGuard`)
therefore also compares the partition a round releases, as the algorithm
states it (``Algorithm.differencing_partition``), with those it released on the
same rows before (:mod:`mipflow.node.controls.partitions`, on disk, never evicted).

Masked releases (secure aggregation) are releases of the node's own
aggregates: they pass every check here and are recorded exactly like plain
ones, so no choice of participants or datasets can subtract one node's
aggregate out of masked sums beyond what plain releases would give
(``docs/adr/0027-masked-releases-and-durable-partitions.md``).

The ledger (:class:`CohortLedger`) is a SQLite file in the node home
(``cohorts.sqlite``): one row per distinct cohort with its SHA-256 digest, size,
first and last use and its sorted hashes, delta-encoded and zlib-compressed
(about 7 bytes a row; a cohort of 100 000 rows costs about 0.7 MB).  Growth is
bounded by the number of *distinct* cohorts answered; repeats cost nothing.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import sqlite3
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from mipflow.algorithms.contract import Algorithm
from mipflow.exceptions import DisclosureError
from mipflow.node.controls.partitions import PARTITIONS_PER_COHORT, PartitionMemory

#: Ledger file in the node home.
LEDGER_FILE = "cohorts.sqlite"


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

    if not len(frame):
        return np.zeros(0, dtype=np.uint64)
    if ROW_MD5 in frame.columns:  # computed by PostgreSQL on the binary read path
        digests = frame[ROW_MD5].to_numpy(dtype=object)
    else:
        parts = [frame[c].astype(object).where(frame[c].notna(), "").astype(str)
                 for c in ("_pid", "dataset", "_visit")]
        joined = parts[0] + "\x1f" + parts[1] + "\x1f" + parts[2]
        digests = np.array([hashlib.md5(text.encode("utf-8")).hexdigest() for text in joined], dtype=object)
    # the node's key makes the ledger's row keys its own (the MD5 only fixes the identity's width)
    return pd.util.hash_array(digests, hash_key=key, categorize=False)


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

    if not len(frame):
        return np.zeros(0, dtype=np.uint64)
    if PID_MD5 in frame.columns:  # computed by PostgreSQL on the binary read path
        digests = frame[PID_MD5].to_numpy(dtype=object)
    elif "_pid" in frame.columns:
        pids = frame["_pid"].astype(object).where(frame["_pid"].notna(), "").astype(str)
        digests = np.array([hashlib.md5(text.encode("utf-8")).hexdigest() for text in pids], dtype=object)
    else:
        return None
    return pd.util.hash_array(digests, hash_key=key, categorize=False)


def cohort_sets(frame: pd.DataFrame, variables: Sequence[str], complete_case: bool,
                key: str) -> tuple[list[np.ndarray], np.ndarray]:
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

    Returns
    -------
    cohorts : list of numpy.ndarray of uint64
        Sorted unique hashes: the rows used and, without complete-case, each
        variable's non-missing rows where they differ from the rows used.
    used : numpy.ndarray of uint64, shape (n_used,)
        Hashes of the rows used, in the order the local step sees them.
    """
    cohorts, _, used = cohort_sets_and_patients(frame, variables, complete_case, key)
    return cohorts, used


def cohort_sets_and_patients(frame: pd.DataFrame, variables: Sequence[str], complete_case: bool, key: str
                             ) -> tuple[list[np.ndarray], list[np.ndarray] | None, np.ndarray]:
    """:func:`cohort_sets`, with each cohort's patients (:func:`patient_keys`, sorted unique) beside
    its rows (None when the frame carries no patient identity)."""
    keys = row_keys(frame, key)
    pids = patient_keys(frame, key)
    columns = [c for c in variables if c in frame.columns]
    present = frame[columns].notna().to_numpy() if columns else np.ones((len(frame), 0), dtype=bool)
    if complete_case:
        mask = present.all(axis=1) if len(frame) else np.ones(0, dtype=bool)
        used = keys[mask]
        return [sorted_unique(used)], None if pids is None else [sorted_unique(pids[mask])], used
    cohorts = [sorted_unique(keys)]
    patients = None if pids is None else [sorted_unique(pids)]
    for j in range(present.shape[1]):
        if not present[:, j].all():
            subset = sorted_unique(keys[present[:, j]])
            if len(subset) and not any(np.array_equal(subset, c) for c in cohorts):
                cohorts.append(subset)
                if patients is not None:
                    patients.append(sorted_unique(pids[present[:, j]]))
    return cohorts, patients, keys


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``numpy.unique`` of row hashes by one sort (several times faster on millions of uint64)."""
    ordered = np.sort(np.asarray(keys, dtype=np.uint64))
    if len(ordered) > 1:
        distinct = ordered[1:] != ordered[:-1]
        if not distinct.all():
            ordered = ordered[np.concatenate(([True], distinct))]
    return ordered


def cohort_digest(data_model: str, keys: np.ndarray) -> str:
    """SHA-256 of a data model and a sorted cohort: equal digests, equal cohorts."""
    h = hashlib.sha256(data_model.encode() + b"\0")
    h.update(np.ascontiguousarray(keys, dtype="<u8").tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the rule


def _overlap(a: np.ndarray, b: np.ndarray) -> int:
    """``|a ∩ b|`` of two sorted unique uint64 arrays."""
    if not len(a) or not len(b):
        return 0
    if len(a) > len(b):
        a, b = b, a
    at = np.searchsorted(b, a)
    at[at == len(b)] = len(b) - 1
    return int(np.count_nonzero(b[at] == a))


def _small(count: int, threshold: int) -> bool:
    return 0 < count < threshold


def pair_conflict(new: np.ndarray, old: np.ndarray, threshold: int) -> bool:
    """Whether answering ``new`` after ``old`` would isolate fewer than ``threshold`` rows.

    True when ``|new \\ old|``, ``|old \\ new|`` or ``|new ∩ old|`` is
    non-empty but smaller than ``threshold``.  Both arrays are sorted and unique.
    """
    both = _overlap(new, old)
    return any(_small(n, threshold) for n in (len(new) - both, len(old) - both, both))


def _refusal(threshold: int) -> DisclosureError:
    # no sizes, and one message for every way a cohort conflicts (a pair, a chain, another data model):
    # which rule refused, and by how much, is exactly what must not leak
    return DisclosureError(
        "the selected rows are too close to rows this node already answered for, under this or another "
        "data model: on its own or combined with earlier answers, this answer could single out fewer than "
        f"min_row_count ({threshold}) patients (differencing control). Use the same filters and variables as "
        "an earlier analysis, or a filter that selects many more or many fewer rows; for subgroups and "
        "variable sets that must all be answered exactly, ask the node's admin for a study protocol "
        "(mipflow study, ADR 0028)", control="differencing")


def _cross_conflict(new: np.ndarray, old: np.ndarray, threshold: int) -> bool:
    """Two cohorts of different data models: the same patients but for a few (ADR 0030).

    Only the differences are compared, and only when the cohorts share someone: a small overlap of
    two data models' cohorts (a few patients with both diseases) is left to the chain rule, which
    refuses it only when a third cohort would make it computable."""
    both = _overlap(new, old)
    return both > 0 and (_small(len(new) - both, threshold) or _small(len(old) - both, threshold))


#: The chain rule (ADR 0030) looks at the new cohorts with at most this many recorded ones ...
CHAIN_COHORTS = 32
#: ... found by this many rounds of "overlaps what is already in the family", most recent first.
CHAIN_DEPTH = 3


def related(seeds: Sequence[np.ndarray], candidates: Sequence[np.ndarray], cap: int = CHAIN_COHORTS,
            depth: int = CHAIN_DEPTH) -> list[int]:
    """Indices of ``candidates`` (oldest first) that share members with the seeds, or with
    candidates taken before, up to ``cap``, most recent first, over ``depth`` rounds."""
    union = sorted_unique(np.concatenate(list(seeds))) if seeds else np.zeros(0, dtype=np.uint64)
    remaining = list(range(len(candidates)))[::-1]
    chosen: list[int] = []
    for _ in range(depth):
        hits = [i for i in remaining if _overlap(union, candidates[i])]
        if not hits:
            break
        take = hits[:cap - len(chosen)]
        chosen += take
        if len(chosen) >= cap:
            break
        taken = set(take)
        remaining = [i for i in remaining if i not in taken]
        union = sorted_unique(np.concatenate([union, *(candidates[i] for i in take)]))
    return sorted(chosen)


@dataclass
class _Entry:
    """One recorded cohort in memory."""

    data_model: str
    digest: str
    rows: np.ndarray
    patients: np.ndarray | None


# --------------------------------------------------------------------------- the ledger


class CohortLedger:
    """The cohorts a node has answered, under every data model, in ``HOME/cohorts.sqlite``.

    Use :meth:`check` before a local step runs and :meth:`record` once its
    aggregates are released.  Several node processes may share one home: each
    reads the cohorts other processes added since its last look.  A cohort is
    stored with its rows and, since ADR 0030, its patients (column ``patients``,
    added to a ledger from before; its older cohorts have none and are compared
    by rows, under their own data model, as before).
    """

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / LEDGER_FILE
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}            # rowid -> cohort, every data model
        self._digests: dict[str, dict[str, int]] = {}    # data model -> digest -> rowid
        self._seen_rowid = 0
        self._conn: sqlite3.Connection | None = None
        with self._lock, self._connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS cohorts (data_model TEXT NOT NULL, digest TEXT NOT NULL, "
                         "n_rows INTEGER NOT NULL, keys BLOB NOT NULL, first_at TEXT NOT NULL, "
                         "PRIMARY KEY (data_model, digest))")
            if "patients" not in {row[1] for row in conn.execute("PRAGMA table_info(cohorts)")}:
                conn.execute("ALTER TABLE cohorts ADD COLUMN patients BLOB")  # a ledger from before ADR 0030

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The ledger's connection (opened once, used under the lock), in one transaction."""
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

    def _refresh(self) -> None:
        with self._connect() as conn:
            rows = conn.execute("SELECT rowid, data_model, digest, keys, patients FROM cohorts WHERE rowid > ? "
                                "ORDER BY rowid", (self._seen_rowid,)).fetchall()
        for rowid, data_model, digest, blob, patients in rows:
            self._entries[rowid] = _Entry(data_model, digest, decode_keys(blob),
                                          None if patients is None else decode_keys(patients))
            self._digests.setdefault(data_model, {})[digest] = rowid
            self._seen_rowid = max(self._seen_rowid, rowid)

    def cohorts(self, data_model: str) -> dict[str, np.ndarray]:
        """Digest -> sorted row hashes of every cohort answered for ``data_model``."""
        with self._lock:
            self._refresh()
            return {d: self._entries[r].rows for d, r in self._digests.get(data_model, {}).items()}

    def check(self, data_model: str, cohorts: Iterable[np.ndarray], threshold: int,
              digests: Sequence[str] | None = None, patients: Sequence[np.ndarray] | None = None,
              primes: Sequence[int] | None = None) -> list[str]:
        """Allow cohorts (return their digests) or raise.

        Each cohort is compared with the other cohorts of the same request and, by the pairwise
        rule, with every answered cohort of the data model (rows); with ``patients`` (the
        cohorts' patient keys, in the same order), also with every answered cohort of the other
        data models (patients, :func:`_cross_conflict`).  With ``primes``
        (:func:`mipflow.node.controls.atoms.node_primes`), cohorts not answered before then pass
        the chain rule: with the answered cohorts they overlap (:func:`related`), no combination
        isolates a new atom smaller than ``threshold`` (:func:`~mipflow.node.controls.atoms.check_addition`;
        in rows within the data model, in patients when a related cohort is of another one).

        Raises
        ------
        DisclosureError
            Control ``differencing``, when a rule refuses (one message for all, :func:`_refusal`).
        """
        from mipflow.node.controls.atoms import check_addition

        cohorts = list(cohorts)
        digests = list(digests) if digests is not None else [cohort_digest(data_model, c) for c in cohorts]
        patients = list(patients) if patients is not None else None
        if threshold <= 1:
            return digests  # no count is in (0, 1): nothing to compare
        with self._lock:
            self._refresh()
            known = self._digests.get(data_model, {})
            entries = list(self._entries.values())  # oldest first
            fresh = [i for i, d in enumerate(digests) if d not in known]
            for i, cohort in enumerate(cohorts):
                if any(pair_conflict(cohort, other, threshold) for other in cohorts[:i]):
                    raise _refusal(threshold)
            for i in fresh:  # a cohort answered before: nothing new can be learnt from the difference
                for entry in entries:
                    if entry.data_model == data_model:
                        conflict = pair_conflict(cohorts[i], entry.rows, threshold)
                    elif patients is not None and entry.patients is not None:
                        conflict = _cross_conflict(patients[i], entry.patients, threshold)
                    else:
                        continue  # an older cohort of another data model, recorded without its patients
                    if conflict:
                        raise _refusal(threshold)
            if primes is None or not fresh:
                return digests
            own = [e for e in entries if e.data_model == data_model]
            new_rows = [cohorts[i] for i in fresh]
            chosen = related(new_rows, [e.rows for e in own])
            if not check_addition([own[j].rows for j in chosen], new_rows, threshold, primes):
                raise _refusal(threshold)
            if patients is not None:
                with_patients = [e for e in entries if e.patients is not None]
                new_patients = [patients[i] for i in fresh]
                chosen = related(new_patients, [e.patients for e in with_patients])
                if any(with_patients[j].data_model != data_model for j in chosen) and not check_addition(
                        [with_patients[j].patients for j in chosen], new_patients, threshold, primes):
                    raise _refusal(threshold)
        return digests

    def record(self, data_model: str, cohorts: Iterable[np.ndarray],
               digests: Sequence[str] | None = None, patients: Sequence[np.ndarray] | None = None) -> None:
        """Remember answered cohorts (a cohort already remembered costs nothing; one remembered
        without its patients gains them)."""
        cohorts = list(cohorts)
        digests = list(digests) if digests is not None else [cohort_digest(data_model, c) for c in cohorts]
        patients = list(patients) if patients is not None else [None] * len(cohorts)
        with self._lock:
            self._refresh()
            known = self._digests.get(data_model, {})
            new = [(d, c, p) for d, c, p in zip(digests, cohorts, patients) if d not in known]
            completed = [(d, p) for d, p in zip(digests, patients)
                         if p is not None and d in known and self._entries[known[d]].patients is None]
            if not new and not completed:
                return  # later rounds of an analysis, repeated analyses
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            with self._connect() as conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO cohorts (data_model, digest, n_rows, keys, first_at, patients) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(data_model, d, len(c), encode_keys(c), now, None if p is None else encode_keys(p))
                     for d, c, p in new])
                conn.executemany("UPDATE cohorts SET patients = ? WHERE data_model = ? AND digest = ? "
                                 "AND patients IS NULL", [(encode_keys(p), data_model, d) for d, p in completed])
            for d, p in completed:
                self._entries[known[d]].patients = p
            self._refresh()

    def stats(self) -> list[dict]:
        """Per data model: distinct cohorts, their rows and bytes on disk (for the node admin)."""
        with self._lock, self._connect() as conn:
            rows = conn.execute("SELECT data_model, COUNT(*), SUM(n_rows), "
                                "SUM(LENGTH(keys) + COALESCE(LENGTH(patients), 0)) FROM cohorts "
                                "GROUP BY data_model ORDER BY data_model").fetchall()
        return [{"data_model": m, "cohorts": c, "rows": r, "bytes": b} for m, c, r, b in rows]


def encode_keys(keys: np.ndarray) -> bytes:
    """Sorted unique uint64 hashes -> zlib-compressed little-endian deltas."""
    keys = np.asarray(keys, dtype=np.uint64)
    deltas = np.diff(keys, prepend=np.uint64(0)) if len(keys) else keys
    # level 1: the deltas of uniform hashes hardly compress further at higher levels, which cost 4x the time
    return zlib.compress(deltas.astype("<u8").tobytes(), 1)


def decode_keys(blob: bytes) -> np.ndarray:
    """Inverse of :func:`encode_keys`."""
    deltas = np.frombuffer(zlib.decompress(blob), dtype="<u8").astype(np.uint64)
    return np.cumsum(deltas, dtype=np.uint64)


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

    def cohorts(self, data_model: str, frame: pd.DataFrame, variables: Sequence[str],
                complete_case: bool) -> Cohorts:
        """The cohorts of a selection with row identity (see :func:`cohort_sets`)."""
        sets, patients, used = cohort_sets_and_patients(frame, variables, complete_case, self.key)
        return Cohorts(data_model, tuple(sets), tuple(cohort_digest(data_model, c) for c in sets),
                       order=used if complete_case else None,
                       patients=None if patients is None else tuple(patients))

    def before_step(self, cohorts: Cohorts, min_row_count: int) -> None:
        """Refuse (control ``differencing``) cohorts near answered ones, under any data model, or
        completing a chain with them (:meth:`CohortLedger.check`)."""
        self.ledger.check(cohorts.data_model, cohorts.sets, min_row_count, cohorts.digests,
                          patients=cohorts.patients, primes=self.primes)

    def check_partition(self, algorithm: Algorithm | str, round_no: int, data: pd.DataFrame, request: Any,
                        state: dict | None, cohorts: Cohorts, nfilter_tab: int,
                        limit: int = PARTITIONS_PER_COHORT) -> np.ndarray | None:
        """Refuse a released partition a few rows away from one released before (k-means rounds).

        The partition is the algorithm's own (``Algorithm.differencing_partition``:
        the node assigns its rows to the state's centres itself, as the local
        step does) and is compared with the partitions released on the same
        rows before; what the central site says about earlier rounds is not
        trusted.  Returns the partition for :meth:`after_step` (in the cohort's
        canonical row order), or None for steps that release none.  ``limit`` is the
        node setting ``partitions_per_cohort`` (:meth:`PartitionMemory.check`).
        """
        if nfilter_tab <= 1:
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
        if np.any((sizes > 0) & (sizes < nfilter_tab)):
            # a cluster of 1 .. nfilter_tab - 1 rows is a cut of that weight too, but it is the cell
            # control's refusal (nfilter_tab, at release), which excludes the node (ADR 0020)
            return labels
        self.partitions.check(self._partition_key(cohorts), labels, nfilter_tab, limit)
        return labels

    def after_step(self, cohorts: Cohorts, request: Any, labels: np.ndarray | None) -> None:
        """Remember what was released."""
        self.ledger.record(cohorts.data_model, cohorts.sets, cohorts.digests, patients=cohorts.patients)
        if labels is not None:
            self.partitions.record(self._partition_key(cohorts), labels)

    @staticmethod
    def _partition_key(cohorts: Cohorts) -> str:
        """Partitions are remembered per cohort (data model and rows), whatever the variables:
        the same rows clustered on ``(a, b)``, ``(b, a)`` or ``(a, c)`` release counts (and sums
        of shared variables) that combine."""
        return f"{cohorts.data_model}|{cohorts.digest}"
