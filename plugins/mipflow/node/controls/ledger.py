"""The cohort ledger: what a node answered, under every data model, and the rules it checks.

The rules (ADR 0013, 0030), with ``m = min_row_count``:

* **pairwise, rows, within a data model** (:func:`pair_conflict`): for the new cohort ``A`` and
  every answered cohort ``B`` of the same data model, each of ``|A \\ B|``, ``|B \\ A|`` and
  ``|A ∩ B|`` is 0 or at least ``m``;
* **pairwise, patients, across data models** (:func:`_cross_conflict`): against every answered
  cohort of another data model, compared by patient keys (:func:`mipflow.node.controls.differencing.patient_keys`),
  the two differences are 0 or at least ``m`` whenever the cohorts share a patient;
* **chains** (:func:`mipflow.node.controls.atoms.check_addition`): a cohort not answered before,
  together with the answered cohorts it overlaps (:func:`related`: at most :data:`CHAIN_COHORTS`,
  most recent first, through :data:`CHAIN_DEPTH` rounds of overlap), lets no linear combination
  isolate a new atom of fewer than ``m`` rows (within the data model) or patients (when a related
  cohort is of another data model).

The ledger (:class:`CohortLedger`) is a SQLite file in the node home (``cohorts.sqlite``): one row
per distinct cohort and data model with its SHA-256 digest, size, first use, its sorted row hashes
and (since ADR 0030) its sorted patient hashes, each delta-encoded, split into byte planes and
the high planes zlib-compressed (:mod:`mipflow.node.controls.keycodec`, about 5.8 bytes a row at 1M
rows; entries written before, zlib of every delta byte, stay readable as they are). A ledger from
before ADR 0030 gains the ``patients`` column on open; its cohorts keep working by rows, and gain
their patients when answered again.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Iterable, Mapping, Sequence

import numpy as np

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.keycodec import decode_keys, encode_keys  # noqa: F401 - also the ledger's names
from mipflow.node.controls.epochs import PATIENTS, ROWS, Current, EpochView, still_held  # noqa: F401 - still_held: the ledger's name too
from mipflow.node.controls.release_class import OTHER, apart, worse
from mipflow.node.controls.sqlite_state import SqliteState

if TYPE_CHECKING:
    from mipflow.node.controls.chain import ChainSet
    from mipflow.node.controls.chain_exact import Coverage

#: Ledger file in the node home.
LEDGER_FILE = "cohorts.sqlite"


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``numpy.unique`` of row hashes by one sort (several times faster on millions of uint64); a
    copy, without the sort, of keys already sorted and unique (a cohort, a ledger's entry)."""
    keys = np.asarray(keys, dtype=np.uint64)
    if len(keys) > 1 and bool(np.all(keys[1:] > keys[:-1])):
        return keys.copy()
    return unique_of_sorted(np.sort(keys))


def unique_of_sorted(ordered: np.ndarray) -> np.ndarray:
    """Sorted uint64 keys without their repeats (the second half of :func:`sorted_unique`)."""
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


from mipflow.node.controls.disclosure import STALE_HINT, stamp_refusal  # noqa: E402 - every memory's refusal says it (ADR 0061)


#: What a researcher can change after a ledger refusal: static words (the same at every node, whatever the rows).
DIFFERENCING_HINT = (
    "To be answered: ask complete cases (a filter is_not_null on each variable of the analysis), so that the "
    "variables' rows are the same rows; repeat an earlier analysis's filters, variables and datasets exactly; "
    "leave out small datasets; or use a filter that selects many more or many fewer rows. For subgroups and "
    "variable sets that must all be answered exactly, ask the node's admin for a study protocol (mipflow study).")


def _refusal(threshold: int) -> DisclosureError:
    # no sizes, and one message for every way a cohort conflicts (a pair within the request, a pair or chain
    # with earlier answers, another data model, an earlier consent epoch): which rule refused, and by how much,
    # is exactly what must not leak.  So the words cannot say whether earlier answers took part: a first
    # request to a fresh node is refused when its own cohorts (a variable's non-missing rows, the complete
    # cases, each dataset's rows) are a few rows apart (the honest-day review).
    return DisclosureError(
        "the selected rows are too close to rows this node answered for, under this or another data model, or "
        "that this request itself selects (its variables' non-missing rows, its datasets): on its own or "
        f"combined with earlier answers, this answer could single out fewer than min_row_count ({threshold}) "
        f"patients (differencing control). {DIFFERENCING_HINT} {STALE_HINT}", control="differencing")


def stale_conflict(new: np.ndarray, held: np.ndarray, threshold: int, cross: bool = False) -> bool:
    """A new cohort against the rows still held of a release made under an earlier consent epoch (ADR
    0061): the ordinary rule (pairwise, or :func:`_cross_conflict` across data models) on those rows,
    and no exact repeat of them (0 rows apart is within ``threshold`` too).  The rule every memory
    applies through :meth:`mipflow.node.controls.epochs.EpochView.near`."""
    from mipflow.node.controls.epochs import same

    return same(new, held) or (_cross_conflict if cross else pair_conflict)(new, held, threshold)


def _cross_conflict(new: np.ndarray, old: np.ndarray, threshold: int) -> bool:
    """Two cohorts of different data models: the same patients but for a few (ADR 0030).

    Only the differences are compared, and only when the cohorts share someone: a small overlap of
    two data models' cohorts (a few patients with both diseases) is left to the chain rule, which
    refuses it only when a third cohort would make it computable."""
    both = _overlap(new, old)
    return both > 0 and (_small(len(new) - both, threshold) or _small(len(old) - both, threshold))


from mipflow.node.controls.ledger_window import (  # noqa: E402,F401 - the chain window's names, also the ledger's
    CHAIN_ATOMS, CHAIN_COHORTS, CHAIN_DEPTH, bounded, related)


@dataclass
class _Entry:
    """One recorded cohort in memory."""

    data_model: str
    digest: str
    rows: np.ndarray
    patients: np.ndarray | None
    #: The consent epoch it was answered under (ADR 0061; "" for a ledger from before).
    epoch: str = ""
    #: The worst release class over it (ADR 0063, :mod:`mipflow.node.controls.release_class`; 0 from before).
    sums_only: int = 0
    #: Recorded only as a cohort a request's filter pins (ADR 0064): compared as an answered one, never a repeat.
    pinned: bool = False


# --------------------------------------------------------------------------- the ledger


class CohortLedger(SqliteState):
    """The cohorts a node has answered, under every data model, in ``HOME/cohorts.sqlite``.

    Use :meth:`check` before a local step runs and :meth:`record` once its
    aggregates are released.  Several node processes may share one home: each
    reads the cohorts other processes added since its last look.  A cohort is
    stored with its rows and, since ADR 0030, its patients (column ``patients``,
    added to a ledger from before; its older cohorts have none and are compared
    by rows, under their own data model, as before).
    """

    def __init__(self, root: str | Path) -> None:
        super().__init__(Path(root) / LEDGER_FILE)
        self._entries: dict[int, _Entry] = {}            # rowid -> cohort, every data model
        self._digests: dict[str, dict[str, int]] = {}    # data model -> digest -> rowid
        self._seen_rowid = 0
        with self._lock, self._connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS cohorts (data_model TEXT NOT NULL, digest TEXT NOT NULL, "
                         "n_rows INTEGER NOT NULL, keys BLOB NOT NULL, first_at TEXT NOT NULL, "
                         "PRIMARY KEY (data_model, digest))")
            if "patients" not in {row[1] for row in conn.execute("PRAGMA table_info(cohorts)")}:
                conn.execute("ALTER TABLE cohorts ADD COLUMN patients BLOB")  # a ledger from before ADR 0030
            if "epoch" not in {row[1] for row in conn.execute("PRAGMA table_info(cohorts)")}:
                conn.execute("ALTER TABLE cohorts ADD COLUMN epoch TEXT")  # before ADR 0061: the epoch ""
            if "sums_only" not in {row[1] for row in conn.execute("PRAGMA table_info(cohorts)")}:
                conn.execute("ALTER TABLE cohorts ADD COLUMN sums_only INTEGER")  # before ADR 0063: not known, 0
            if "pinned" not in {row[1] for row in conn.execute("PRAGMA table_info(cohorts)")}:
                conn.execute("ALTER TABLE cohorts ADD COLUMN pinned INTEGER")  # before ADR 0064: every one released
            # the first value stamp of each cohort and column a release read (ADR 0061, hole 2): 8 bytes each
            conn.execute("CREATE TABLE IF NOT EXISTS stamps (data_model TEXT NOT NULL, digest TEXT NOT NULL, "
                         "variable TEXT NOT NULL, stamp TEXT NOT NULL, PRIMARY KEY (data_model, digest, variable))")
            # each cohort's patient stamps (fifteenth review, hole 3) and which rows changed (hole 2)
            conn.execute("CREATE TABLE IF NOT EXISTS patient_stamps (data_model TEXT NOT NULL, digest TEXT NOT NULL, "
                         "variable TEXT NOT NULL, stamp TEXT NOT NULL, PRIMARY KEY (data_model, digest, variable))")
            from mipflow.node.controls import value_memory

            value_memory.create(conn)


    def _refresh(self, written: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] | None = None) -> None:
        """Read the cohorts added since the last look; ``written``: ``(data model, digest)`` of the
        cohorts this process has just written -> their keys and patients.  Those are not read back
        nor decoded (the digest is the SHA-256 of the sorted keys: a row stored under it, by this
        process or another, holds those keys; its patients, when stored, are those of its rows)."""
        written = written or {}
        with self._connect() as conn:
            found = conn.execute("SELECT rowid, data_model, digest, patients IS NULL, epoch, sums_only, pinned "
                                 "FROM cohorts WHERE rowid > ? ORDER BY rowid", (self._seen_rowid,)).fetchall()
            for rowid, data_model, digest, no_patients, epoch, sums_only, pinned in found:
                mine = written.get((data_model, digest))
                if mine is not None and (no_patients or mine[1] is not None):
                    keys, patients = mine[0], None if no_patients else mine[1]
                else:  # another process's cohort (or its patients, where this process had none)
                    blob, patient_blob = conn.execute("SELECT keys, patients FROM cohorts WHERE rowid = ?",
                                                      (rowid,)).fetchone()
                    keys = decode_keys(blob) if mine is None else mine[0]
                    patients = None if patient_blob is None else decode_keys(patient_blob)
                    del blob, patient_blob
                self._entries[rowid] = _Entry(data_model, digest, keys, patients, epoch or "", int(sums_only or 0),
                                              bool(pinned))
                self._digests.setdefault(data_model, {})[digest] = rowid
                self._seen_rowid = max(self._seen_rowid, rowid)

    def _sums_only_now(self) -> None:
        """The entries' ``sums_only`` as on disk now: another process may have answered a cohort with a release
        that is not sums only since it was read (the mark only goes from 1 to 0; ADR 0063).  Read where the mark
        decides (:meth:`check`), not at every refresh."""
        if not any(e.sums_only for e in self._entries.values()):
            return  # none to lose
        with self._connect() as conn:
            flagged = dict(conn.execute("SELECT rowid, sums_only FROM cohorts WHERE sums_only > 0"))
        for rowid, entry in self._entries.items():
            entry.sums_only = worse(entry.sums_only, int(flagged.get(rowid, OTHER)))

    def recorded(self, data_model: str, digest: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The row and patient keys of a cohort this ledger holds (None: not recorded), as held in
        memory (a caller keeping a cohort it recorded shares them rather than holding a copy)."""
        with self._lock:
            self._refresh()
            rowid = self._digests.get(data_model, {}).get(digest)
            if rowid is None:
                return None
            entry = self._entries[rowid]
            return entry.rows, entry.patients

    def cohorts(self, data_model: str) -> dict[str, np.ndarray]:
        """Digest -> sorted row hashes of every cohort answered for ``data_model``."""
        with self._lock:
            self._refresh()
            return {d: self._entries[r].rows for d, r in self._digests.get(data_model, {}).items()}

    def answered(self, data_model: str, epoch: str) -> set[str]:
        """The digests of the cohorts of ``data_model`` answered under the consent ``epoch`` (the repeats; ADR
        0061: one of an earlier epoch is no repeat; ADR 0064: nor one only pinned)."""
        with self._lock:
            self._refresh()
            return {e.digest for e in self._entries.values()
                    if e.data_model == data_model and e.epoch == epoch and not e.pinned}  # pinned: ADR 0064

    def every_cohort(self) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
        """``(data model, sorted row hashes, sorted patient hashes or None)`` of every cohort answered,
        under every data model, oldest first (the group memory compares groups with them, ADR 0051)."""
        with self._lock:
            self._refresh()
            return [(e.data_model, e.rows, e.patients) for e in self._entries.values()]

    def every_release(self) -> list[_Entry]:
        """Every cohort answered, under every data model, oldest first, with the consent epoch it was
        answered under (``data_model``, ``rows``, ``patients``, ``epoch``; ADR 0061: the group memory sees
        them through :class:`~mipflow.node.controls.epochs.EpochView`)."""
        with self._lock:
            self._refresh()
            return list(self._entries.values())

    def check(self, data_model: str, cohorts: Iterable[np.ndarray], threshold: int,
              digests: Sequence[str] | None = None, patients: Sequence[np.ndarray] | None = None,
              primes: Sequence[int] | None = None, released: Sequence[ChainSet] = (), epoch: str = "",
              current: "Current | None" = None, stamps: "Sequence[Mapping[str, int]] | None" = None,
              patient_stamps: "Sequence[Mapping[str, int]] | None" = None, cells: "Mapping | None" = None,
              sums_only: int = 0, pinned: bool = False) -> list[str]:
        """Allow cohorts (return their digests) or raise.

        ``epoch`` is the node's consent epoch (:func:`mipflow.node.controls.differencing.consent_epoch`); a
        cohort answered under another one is seen through :class:`mipflow.node.controls.epochs.EpochView`
        (``current``: a data model's current row and patient keys): its rows still held, no repeat, and in
        the chain rule with a phantom unit (ADR 0061).
        ``stamps`` (the cohorts' value stamps, in the same order, :mod:`mipflow.node.query.stamps`): a
        cohort answered before whose rows now hold other values in a column both releases read is no
        repeat either, and is refused (ADR 0061, hole 2: the two answers' difference is the corrected rows').
        ``patient_stamps`` (the same by patient keys): a fresh cohort holding exactly the patients of one answered
        under another data model (version) under this epoch, whose patients now hold other values in a column
        both read, is refused (fifteenth review, hole 3).  ``cells`` (the rows' value digests per stamped column,
        :mod:`mipflow.node.controls.value_memory`): the chain rule sees a remembered row released with a value
        since corrected as a changed-value unit of its own (fifteenth review, hole 2).

        Each cohort is compared with the other cohorts of the same request and, by the pairwise
        rule, with every answered cohort of the data model (rows); with ``patients`` (the
        cohorts' patient keys, in the same order), also with every answered cohort of the other
        data models (patients, :func:`_cross_conflict`).  With ``primes``
        (:func:`mipflow.node.controls.atoms.node_primes`), cohorts not answered before then pass
        the chain rule: with the answered cohorts they overlap (:func:`related`), no combination
        isolates a new atom smaller than ``threshold`` (:func:`~mipflow.node.controls.atoms.check_addition`;
        in rows within the data model, in patients when a related cohort is of another one).  The
        chain's family holds the ``released`` cells of the group memory too (ADR 0051, thirteenth
        review; :mod:`mipflow.node.controls.chain`).

        ``sums_only`` (the release's class, :mod:`mipflow.node.controls.release_class`, ADR 0063): with
        ``primes``, the pairwise rules are left out between the request's own cohorts when it releases numerical
        sums only, and against an answered cohort of this consent epoch whose every release is of a class
        :func:`~mipflow.node.controls.release_class.apart` from this one (sums, and at most one of the two with
        hidden level counts); the chain rule, its exact backstop over every remembered set (atoms, and unions at
        ``threshold``) and the epoch rules decide.

        ``pinned`` (ADR 0064): the cohorts are those a request's filter pins, checked apart from the request's own
        (the rows between them hold values the filter fixes); a cohort remembered as pinned is a repeat for them
        only, never for a release.  Pinned cohorts meet answered ones by the pairwise rules, never set aside for
        sums, and are held to ``threshold`` rows or none; new, they meet the chain rule as a release's sets would,
        but remembered they are no sets of any chain: only the pinned variable's values are fixed on the rows
        between, not the other columns' sums, and counting them as released would make a chain look computable
        before the release that completes it.

        Raises
        ------
        DisclosureError
            Control ``differencing``, when a rule refuses (one message for all, :func:`_refusal`).
        """
        from mipflow.node.controls.chain import ChainSet
        from mipflow.node.controls.chain_exact import Coverage

        cohorts = list(cohorts)
        digests = list(digests) if digests is not None else [cohort_digest(data_model, c) for c in cohorts]
        patients = list(patients) if patients is not None else None
        if threshold <= 1:
            return digests  # no count is in (0, 1): nothing to compare
        with self._lock:
            self._refresh()
            self._sums_only_now()
            entries = list(self._entries.values())  # oldest first
            # a repeat is a cohort answered under this consent epoch (ADR 0061)
            known = {e.digest for e in entries if e.data_model == data_model and e.epoch == epoch  # answered()
                     and (pinned or not e.pinned)}  # only pinned: no release repeats it (ADR 0064)
            fresh = [i for i, d in enumerate(digests) if d not in known]
            if stamps is not None and self._corrected(data_model, digests, stamps, known):
                raise stamp_refusal()  # the correction said first (ADR 0061)
            if patient_stamps is not None and patients is not None and self._corrected_across(
                    entries, data_model, epoch, [(patients[i], patient_stamps[i]) for i in fresh
                                                 if i < len(patient_stamps)]):
                raise stamp_refusal()
            # ADR 0063: between releases of sums the chain rule decides, the pairs kept aside (``deferred``) for
            # the case its exact backstop says nothing (a family past its bound): then they decide as before
            kind = int(sums_only)  # the release's class (mipflow.node.controls.release_class)
            relaxed = kind != OTHER and primes is not None and not pinned  # some pair may be set aside
            view = EpochView(epoch, current)  # ADR 0061: every rule on the current rows and the epochs
            # a release that is not sums only, over a cohort answered so far by releases of sums only, meets the
            # pairs those answers set aside: as if fresh (round 23 of the reviews, hole 1; ADR 0063)
            # (and a release of hidden counts over a cohort answered as sums only meets the pairs kept aside with
            # other hidden counts; ADR 0063's nominal amendment): a repeat whose class the release worsens
            classes = {e.digest: e.sums_only for e in entries if e.data_model == data_model and e.epoch == epoch
                       and not e.pinned}
            paired = [i for i, d in enumerate(digests)
                      if d not in known or worse(classes.get(d, OTHER), kind) != classes.get(d, OTHER)]

            def pairs(deferred: bool) -> None:
                for i, cohort in enumerate(cohorts):
                    if (relaxed and apart(kind, kind)) == deferred and any(
                            pair_conflict(cohort, other, threshold) for other in cohorts[:i]):
                        raise _refusal(threshold)
                for i in paired:  # a cohort answered before: nothing new can be learnt from the difference
                    for entry in entries:
                        if pinned and entry.pinned:
                            continue  # two cohorts pinned, neither released (ADR 0064)
                        if (relaxed and apart(kind, entry.sums_only) and entry.epoch == epoch
                                and not entry.pinned) != deferred:
                            continue  # two releases of sums, this epoch's rows: the chain rule (ADR 0063)
                        if entry.data_model == data_model:
                            conflict = view.near(pair_conflict, cohorts[i], entry.rows, data_model, ROWS,
                                                 entry.epoch, threshold)
                        elif patients is not None and entry.patients is not None:
                            conflict = view.near(_cross_conflict, patients[i], entry.patients, entry.data_model,
                                                 PATIENTS, entry.epoch, threshold)
                        else:
                            continue  # an older cohort of another data model, recorded without its patients
                        if conflict:
                            raise _refusal(threshold)

            pairs(deferred=False)
            if pinned and any(_small(len(cohorts[i]), threshold) for i in fresh):
                raise _refusal(threshold)  # a few rows whose released sums the filter leaves alone (ADR 0064)
            if primes is None or not fresh:
                return digests
            new = [ChainSet(data_model, cohorts[i], None if patients is None else patients[i], threshold)
                   for i in fresh]
            versions: dict = {}
            entries = [e for e in entries if not e.pinned]  # a chain is of released sets only (ADR 0064)
            if cells:
                from mipflow.node.controls import value_memory

                own = [j for j, e in enumerate(entries) if e.data_model == data_model]
                with self._connect() as conn:
                    found = value_memory.versions(conn, data_model, cells,
                                                  [(entries[j].digest, entries[j].rows) for j in own])
                versions = {own[k]: v for k, v in found.items()}
            coverage = Coverage()
            self._chain(entries, data_model, new, threshold, primes, released, view, versions, coverage=coverage)
            if relaxed and not coverage.complete:
                pairs(deferred=True)
        return digests

    def _corrected_across(self, entries: list[_Entry], data_model: str, epoch: str,
                          fresh: Sequence[tuple[np.ndarray, Mapping[str, int]]]) -> bool:
        """Whether a fresh cohort holds exactly the patients of a cohort answered under another data model (a
        version of it) under this consent epoch, whose patient stamps differ on a column both read (fifteenth
        review, hole 3: the same patients, corrected under one version only)."""
        from mipflow.node.query.stamps import changed

        for pids, new in fresh:
            if not new:
                continue
            for e in entries:
                if (e.data_model == data_model or e.epoch != epoch or e.patients is None
                        or len(e.patients) != len(pids) or not np.array_equal(e.patients, pids)):
                    continue
                with self._connect() as conn:
                    old = {v: int(t) for v, t in conn.execute(
                        "SELECT variable, stamp FROM patient_stamps WHERE data_model = ? AND digest = ?",
                        (e.data_model, e.digest))}
                if changed(new, old):
                    return True
        return False

    def _corrected(self, data_model: str, digests: Sequence[str], stamps: Sequence[Mapping[str, int]],
                   known: set[str]) -> bool:
        """Whether a cohort answered before (a digest in ``known``) now holds other values in a column its
        remembered stamps cover (:func:`mipflow.node.query.stamps.changed`)."""
        from mipflow.node.query.stamps import changed

        repeats = [(d, s) for d, s in zip(digests, stamps) if d in known and s]
        if not repeats:
            return False
        with self._connect() as conn:
            for digest, new in repeats:
                old = {v: int(t) for v, t in conn.execute(
                    "SELECT variable, stamp FROM stamps WHERE data_model = ? AND digest = ?", (data_model, digest))}
                if changed(new, old):
                    return True
        return False

    def stamps(self, data_model: str, digest: str) -> dict[str, int]:
        """The remembered value stamps of a cohort (``column -> stamp``; empty: none)."""
        with self._lock, self._connect() as conn:
            return {v: int(t) for v, t in conn.execute(
                "SELECT variable, stamp FROM stamps WHERE data_model = ? AND digest = ?", (data_model, digest))}

    def chain(self, data_model: str, new: Sequence[ChainSet], threshold: int, primes: Sequence[int],
              released: Sequence[ChainSet] = (), epoch: str = "", current: "Current | None" = None,
              own: Collection[str] = ()) -> None:
        """The chain rule alone for ``new`` sets of one release (a step's fresh cohorts and the cells of
        its groups, :class:`mipflow.node.controls.chain.ChainSet`) against the answered cohorts and the
        ``released`` cells of the group memory (ADR 0051, thirteenth review); raises as :meth:`check`.
        ``epoch`` and ``current`` as there (ADR 0061).  ``own``: digests (of ``data_model``) of cohorts
        seen as remembered whatever their epoch (no rows left out, no phantom unit): a study refresh's own
        earlier cohorts, whose difference with the refreshed ones is the refresh's rules' (ADR 0028 amended)."""
        if threshold <= 1 or not new:
            return
        with self._lock:
            self._refresh()
            self._chain([e for e in self._entries.values() if not e.pinned], data_model, list(new), threshold, primes,
                        released,
                        EpochView(epoch, current), own=frozenset(own))

    @staticmethod
    def _chain(entries: list[_Entry], data_model: str, new: list[ChainSet], threshold: int,
               primes: Sequence[int], released: Sequence[ChainSet], view: EpochView,
               versions: Mapping | None = None, own: Collection[str] = frozenset(),
               coverage: "Coverage | None" = None) -> None:
        """The chain rule over the answered cohorts as the epoch ``view`` sees them (a cohort of an earlier
        consent epoch: its rows still held and a phantom unit, ADR 0061; the same at every node), but the
        ``own`` digests of ``data_model``, seen as remembered (:meth:`chain`).
        ``versions``: entry index -> its rows released with a value since corrected and their versioned keys
        (:func:`mipflow.node.controls.value_memory.versions`; changed-value units, fifteenth review hole 2)."""
        from mipflow.node.controls.chain import ChainSet, chain_allows
        from mipflow.node.controls.value_memory import unit_map, versioned

        versions = versions or {}

        def seen(e: _Entry, which: int) -> np.ndarray | None:
            keys = e.rows if which == ROWS else e.patients
            if e.data_model == data_model and e.digest in own:
                return keys
            return view.chain_keys(keys, e.data_model, which, e.epoch)

        cohorts = [ChainSet(e.data_model, versioned(seen(e, ROWS), versions.get(j)), seen(e, PATIENTS), threshold,
                            versioned=True)
                   for j, e in enumerate(entries)]
        if not chain_allows(data_model, cohorts, list(released), new, threshold, primes,
                            units=unit_map(versions) if versions else None, coverage=coverage):
            raise _refusal(threshold)

    def record(self, data_model: str, cohorts: Iterable[np.ndarray],
               digests: Sequence[str] | None = None, patients: Sequence[np.ndarray] | None = None,
               epoch: str = "", stamps: "Sequence[Mapping[str, int]] | None" = None,
               patient_stamps: "Sequence[Mapping[str, int]] | None" = None, cells: "Mapping | None" = None,
               sums_only: int = 0, pinned: bool = False) -> None:
        """Remember answered cohorts under the consent ``epoch`` (a cohort already remembered costs
        nothing and keeps its epoch: an earlier one is the stricter; one remembered without its patients
        gains them; ``sums_only``: the release's, ADR 0063, a cohort remembered so loses it when a release
        over it is not, never the other way), and the first value stamp of each cohort and column (``stamps``, ADR 0061 hole 2:
        the earliest values answered are those a later repeat is compared with), the first patient stamps
        (``patient_stamps``, hole 3 of the fifteenth review) and the rows' value digests (``cells``,
        :func:`mipflow.node.controls.value_memory.record`, before the stamps: hole 2).  ``pinned``: cohorts a
        request's filter pins (ADR 0064), remembered as such (a release over one of them later makes it answered)."""
        cohorts = list(cohorts)
        digests = list(digests) if digests is not None else [cohort_digest(data_model, c) for c in cohorts]
        patients = list(patients) if patients is not None else [None] * len(cohorts)
        with self._lock:
            if cells:
                from mipflow.node.controls import value_memory

                with self._connect() as conn:
                    marks = ",".join("?" * len(digests))
                    stamped = {(d, v) for d, v in conn.execute(
                        f"SELECT digest, variable FROM stamps WHERE data_model = ? AND digest IN ({marks})",
                        (data_model, *digests))}
                    # a column every cohort was stamped with already: its rows' values are remembered (a repeat)
                    todo = {c: v for c, v in cells.items() if any((d, c) not in stamped for d in digests)}
                    value_memory.record(conn, data_model, todo, cohorts)
            if patient_stamps is not None:
                with self._connect() as conn:
                    conn.executemany("INSERT OR IGNORE INTO patient_stamps (data_model, digest, variable, stamp) "
                                     "VALUES (?, ?, ?, ?)", [(data_model, d, v, str(int(t))) for d, s in
                                                             zip(digests, patient_stamps) for v, t in s.items()])
            if stamps is not None:
                with self._connect() as conn:
                    conn.executemany("INSERT OR IGNORE INTO stamps (data_model, digest, variable, stamp) "
                                     "VALUES (?, ?, ?, ?)", [(data_model, d, v, str(int(t)))
                                                             for d, s in zip(digests, stamps) for v, t in s.items()])
            self._refresh()
            known = self._digests.get(data_model, {})
            new = [(d, c, p) for d, c, p in zip(digests, cohorts, patients) if d not in known]
            completed = [(d, p) for d, p in zip(digests, patients)
                         if p is not None and d in known and self._entries[known[d]].patients is None]
            released = [] if pinned else [d for d in digests if d in known and self._entries[known[d]].pinned]
            if released:  # a cohort pinned before is released now (ADR 0064): a repeat from now on
                with self._connect() as conn:
                    conn.executemany("UPDATE cohorts SET pinned = 0 WHERE data_model = ? AND digest = ?",
                                     [(data_model, d) for d in released])
                for d in released:
                    self._entries[known[d]].pinned = False
            widened = {d: worse(self._entries[known[d]].sums_only, int(sums_only)) for d in digests if d in known}
            widened = {d: c for d, c in widened.items() if c != self._entries[known[d]].sums_only}
            if widened:
                with self._connect() as conn:
                    conn.executemany("UPDATE cohorts SET sums_only = ? WHERE data_model = ? AND digest = ?",
                                     [(c, data_model, d) for d, c in widened.items()])
                for d, c in widened.items():
                    self._entries[known[d]].sums_only = c
            if not new and not completed:
                return  # later rounds of an analysis, repeated analyses
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            # what is written (not read back nor decoded below)
            written = {(data_model, d): (np.asarray(c, dtype=np.uint64),
                                         None if p is None else np.asarray(p, dtype=np.uint64)) for d, c, p in new}
            with self._connect() as conn:
                for d, c, p in new:  # one cohort's blobs at a time (10M keys: ~60 MB each)
                    conn.execute(
                        "INSERT OR IGNORE INTO cohorts (data_model, digest, n_rows, keys, first_at, patients, epoch, "
                        "sums_only, pinned) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (data_model, d, len(c), encode_keys(c), now, None if p is None else encode_keys(p), epoch,
                         int(sums_only), int(pinned)))
                conn.executemany("UPDATE cohorts SET patients = ? WHERE data_model = ? AND digest = ? "
                                 "AND patients IS NULL", [(encode_keys(p), data_model, d) for d, p in completed])
            for d, p in completed:
                self._entries[known[d]].patients = p
            self._refresh(written)

    def stats(self) -> list[dict]:
        """Per data model: distinct cohorts, their rows and bytes on disk (for the node admin)."""
        with self._lock, self._connect() as conn:
            rows = conn.execute("SELECT data_model, COUNT(*), SUM(n_rows), "
                                "SUM(LENGTH(keys) + COALESCE(LENGTH(patients), 0)) FROM cohorts "
                                "GROUP BY data_model ORDER BY data_model").fetchall()
        return [{"data_model": m, "cohorts": c, "rows": r, "bytes": b} for m, c, r, b in rows]
