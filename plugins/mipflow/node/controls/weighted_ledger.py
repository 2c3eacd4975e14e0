"""Weighted differencing: the rows between two releases of the same weighted sums hold min_row_count rows in effect (ADR 0058).

ADR 0053 holds a sum weighted by the rows' own values (PCA's ``exp``: ``sum exp(g)``, ``sum v exp(g)``)
to ``min_row_count`` rows in effect, ``sum w / max w``, per release.  Two releases of the same
weighted sums over cohorts ``A`` and ``B`` subtract to the weighted sums over ``A \\ B`` less those over
``B \\ A``; the cohort ledger counts those rows, not their weight, so ten rows of which one carries
nearly all the weight passed it (twelfth outside review, hole 4: one patient's glucose, age and NIHSS).

The rule (:meth:`WeightedMemory.check`): for every **weight family** a release uses
(:class:`mipflow.algorithms.weighted.WeightFamily`: the transformation and its variables, declared by
the algorithm from the request, ``weight_families``) and every earlier release of the same family at
this node whose rows overlap the new ones (any researcher, algorithm, data model, across restarts),
each of ``new \\ old``, ``old \\ new`` and ``new ∩ old`` is empty or holds ``min_row_count`` rows in
effect (``sum w / max w``; the intersection under either release's weights).  Within a data model the
units are rows (the ledger's row keys); across data models, patients (the ledger's patient keys), a
patient's weight the sum of its rows'.  The weights are **recomputed from the current rows** at check
time: the memory holds no value, only the rows' keyed hashes and a keyed fingerprint of the weights
each release used (:func:`fingerprint`).  When an earlier release's rows no longer give the weights it
used (a row withdrawn or deleted, a value corrected, a variable now missing, its data model gone), the
difference cannot be measured and an overlapping release is refused.

Pairs are not enough: ``U``, ``U \\ X``, ``U \\ Y``, ``U \\ (X ∪ Y)`` isolate ``X ∩ Y``.  The chain rule
(:func:`chain_dominated`, ADR 0058's amendment) runs the cohort ledger's (ADR 0030,
:func:`mipflow.node.controls.atoms.check_addition`) on the family's releases chained to the new one,
atoms sized by the rows they hold in effect (:func:`rows_in_effect`): no linear combination of the
releases may isolate a new atom holding fewer than ``min_row_count`` rows in effect.

Refusals are control ``dominated_sums`` with the message of ADR 0053's per-release rule
(:func:`mipflow.node.controls.disclosure.dominated_refusal`): the rule and the setting, never a size,
and the same bytes whether the release alone or its difference with an earlier one is dominated.
Checked in standard mode with ``differencing_check`` on and ``min_row_count`` above 1; a study's
releases are decided at approval (its transformations and cohorts are the protocol's, ADR 0053) and
remembered like any other; explore mode refuses PCA.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from mipflow.algorithms.weighted import WeightFamily, weighted_rows
from mipflow.node.controls import chain_exact, weighted_unions
from mipflow.node.controls.atoms import AtomSizes, check_addition, node_primes
from mipflow.node.controls.ledger import (
    _overlap, bounded, cohort_digest, decode_keys, encode_keys, related, sorted_unique,
)
from mipflow.node.controls.sqlite_state import SqliteState

#: The weighted release memory's file in the node home.
WEIGHTED_FILE = "weighted.sqlite"


def fingerprint(key: bytes, rows: np.ndarray, log_weights: np.ndarray) -> str:
    """A keyed digest of a release's rows (sorted keys) and the log-weights it used, in key order:
    equal when the current rows give exactly the weights released (no value is stored)."""
    mac = hmac.new(key, b"mipflow weighted release v1\0", hashlib.sha256)
    mac.update(np.ascontiguousarray(rows, dtype="<u8").tobytes())
    mac.update(np.ascontiguousarray(log_weights, dtype="<f8").tobytes())
    return mac.hexdigest()[:32]


def fingerprint_key(ledger_key: str) -> bytes:
    """The fingerprints' key, derived from the ledger's row-hash key (itself from the node secret)."""
    return hmac.new(ledger_key.encode(), b"mipflow weighted fingerprint v1", hashlib.sha256).digest()


@dataclass(frozen=True)
class FamilyRows:
    """One release's rows under one weight family (stays at the node).

    ``rows`` are sorted unique row keys; ``log_weights`` and ``patients`` (per-row patient keys, None
    when unknown) are aligned with them."""

    family: str
    data_model: str
    rows: np.ndarray
    log_weights: np.ndarray
    patients: np.ndarray | None = None

    @property
    def digest(self) -> str:
        return cohort_digest(self.data_model, self.rows)


@dataclass(frozen=True)
class Population:
    """Every current row of a data model complete on some variables: sorted row keys, their patients
    and values (aligned), for recomputing earlier releases' weights."""

    rows: np.ndarray
    patients: np.ndarray | None
    columns: dict[str, np.ndarray]

    def take(self, keys: np.ndarray, family: WeightFamily) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The log-weights (and patients) of ``keys`` (sorted) under ``family``; None when a key is no
        longer a row complete on the family's variables, or a variable is not read."""
        if any(code not in self.columns for code in family.variables):
            return None
        at = np.searchsorted(self.rows, keys)
        if len(keys) and (at.max(initial=0) >= len(self.rows) or not np.array_equal(self.rows[at], keys)):
            return None
        logw = family.log_weights({code: self.columns[code][at] for code in family.variables})
        return logw, None if self.patients is None else self.patients[at]


#: What the check reads an earlier release's data model with: ``(data_model, variables) -> Population``
#: (None: the node no longer holds that data model).
PopulationReader = Callable[[str, Sequence[str]], "Population | None"]


def per_patient(patients: np.ndarray, log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique patients and the log of the sum of their rows' weights (no overflow)."""
    order = np.argsort(patients, kind="stable")
    keys, logw = patients[order], log_weights[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1]))) if len(keys) else np.zeros(0, int)
    top = np.maximum.reduceat(logw, starts) if len(keys) else np.zeros(0)
    spans = np.diff(np.append(starts, len(keys)))
    sums = np.add.reduceat(np.exp(logw - np.repeat(top, spans)), starts) if len(keys) else np.zeros(0)
    return keys[starts], top + np.log(sums)


def _member(keys: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Which of sorted ``keys`` are in sorted ``of``."""
    if not len(of):
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(of, keys), len(of) - 1)
    return of[at] == keys


def pair_dominated(new: np.ndarray, new_logw: np.ndarray, old: np.ndarray, old_logw: np.ndarray,
                   threshold: int) -> bool:
    """Whether two overlapping releases of one family leave ``new \\ old``, ``old \\ new`` or
    ``new ∩ old`` (under either one's weights) non-empty but holding fewer than ``threshold`` rows
    in effect (``sum w / max w``).  ``new`` and ``old`` are sorted unique unit keys, the log-weights
    aligned with them.  Disjoint releases subtract to nothing: False."""
    if not _overlap(new, old):
        return False
    in_old, in_new = _member(new, old), _member(old, new)
    parts = (new_logw[~in_old], old_logw[~in_new], new_logw[in_old], old_logw[in_new])
    return any(len(p) and weighted_rows(p) < threshold for p in parts)


def unit_bounds(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique units of ``parts`` (``(keys, least, largest log-weight)`` of several releases) and
    the least and largest log-weight each carries in them.  Equal within a data model, where a row's
    weight is a function of its current values; a patient's may differ across data models (her rows in
    each); ``-inf`` and ``inf`` for the units of a release whose weights are no longer known."""
    keys = np.concatenate([np.asarray(k, dtype=np.uint64) for k, _, _ in parts])
    low = np.concatenate([np.asarray(w, dtype=float) for _, w, _ in parts])
    high = np.concatenate([np.asarray(w, dtype=float) for _, _, w in parts])
    order = np.argsort(keys, kind="stable")
    keys, low, high = keys[order], low[order], high[order]
    if not len(keys):
        return keys, low, high
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.minimum.reduceat(low, starts), np.maximum.reduceat(high, starts)


def rows_in_effect(units: np.ndarray, low: np.ndarray, high: np.ndarray) -> AtomSizes:
    """Atoms sized by the rows they hold in effect, ``sum w / max w`` over their units (with ``units``'
    weights known only within bounds, the least: ``sum low / max high``), for
    :func:`mipflow.node.controls.atoms.check_addition`."""

    def sizes(universe: np.ndarray, labels: np.ndarray, n_atoms: int) -> np.ndarray:
        at = np.searchsorted(units, universe)
        order = np.argsort(labels, kind="stable")
        ordered = labels[order]
        out = np.zeros(n_atoms)
        if not len(ordered):
            return out
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        top = np.maximum.reduceat(high[at][order], starts)
        spans = np.diff(np.append(starts, len(ordered)))
        out[ordered[starts]] = np.add.reduceat(np.exp(low[at][order] - np.repeat(top, spans)), starts)
        return out

    return sizes


def _part(keys: np.ndarray, log_weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A release's units with their log-weights as bounds (unknown: ``[-inf, inf]``, every atom holding
    one of them weighs nothing in effect)."""
    if log_weights is None:
        return keys, np.full(len(keys), -np.inf), np.full(len(keys), np.inf)
    return keys, log_weights, log_weights


def chain_dominated(new: FamilyRows, olds: Sequence["_Remembered"],
                    used: Callable[[int], tuple[np.ndarray, np.ndarray | None] | None], threshold: int,
                    primes: Sequence[int]) -> bool:
    """The chain rule (ADR 0058, ADR 0030's atoms with weighted sizes): with the remembered releases of
    its family it is chained to (:func:`mipflow.node.controls.ledger.related`, oldest first, bounded as
    the cohort ledger bounds them), the new release lets no linear combination isolate a new atom
    holding fewer than ``threshold`` rows in effect (:func:`rows_in_effect`).  Within the data model,
    atoms of rows; when a chained release is of another data model, of patients (a patient's weight
    the sum of her rows' in each release: the least counted, the largest dividing).  The rows of a
    chained release whose weights the current rows no longer give (``used`` None) weigh nothing: an
    isolatable new atom holding one refuses."""
    own = [i for i, old in enumerate(olds) if old.data_model == new.data_model]
    chosen = [own[j] for j in related([new.rows], [olds[i].rows for i in own])]
    chosen = chosen[len(chosen) - len(bounded([olds[i].rows for i in chosen], [new.rows])):]
    if chosen:
        taken = [used(i) for i in chosen]
        parts = [_part(new.rows, new.log_weights),
                 *(_part(olds[i].rows, None if t is None else t[0]) for i, t in zip(chosen, taken))]
        if not check_addition([olds[i].rows for i in chosen], [new.rows], threshold, primes,
                              rows_in_effect(*unit_bounds(parts))):
            return True
    if new.patients is None:
        return False
    patients = sorted_unique(new.patients)
    known = [i for i, old in enumerate(olds) if old.patients is not None]
    chosen = [known[j] for j in related([patients], [olds[i].patients for i in known])]
    chosen = chosen[len(chosen) - len(bounded([olds[i].patients for i in chosen], [patients])):]
    if not any(olds[i].data_model != new.data_model for i in chosen):
        return False  # one data model: its rows were weighed above
    parts = [_part(*per_patient(new.patients, new.log_weights))]
    for i in chosen:
        t = used(i)
        parts.append(_part(olds[i].patients, None) if t is None or t[1] is None else _part(*per_patient(t[1], t[0])))
    return not check_addition([olds[i].patients for i in chosen], [patients], threshold, primes,
                              rows_in_effect(*unit_bounds(parts)))


def backstop_dominated(new: FamilyRows, olds: Sequence["_Remembered"],
                       used: Callable[[int], tuple[np.ndarray, np.ndarray | None] | None], threshold: int,
                       primes: Sequence[int]) -> bool:
    """The chain rule's exact backstop for a weight family (twenty-first review, hole 1; ADR 0058 amended): the
    atom rule over *every* remembered release of the family in the new one's data model, no window
    (:mod:`mipflow.node.controls.chain_exact`'s incremental state, cached per family, data model and level), the
    atoms it newly isolates sized by the rows they hold in effect as :func:`chain_dominated` sizes them (each
    remembered release's weights verified from the current rows; an unknown one weighs nothing), and every new
    combination living on a union of atoms under ``threshold`` in effect (:mod:`mipflow.node.controls.weighted_unions`,
    twenty-second review hole 1).  True: refuse."""
    if threshold <= 1:
        return False
    own = [i for i, old in enumerate(olds) if old.data_model == new.data_model]
    if own:
        def by_rows() -> list:
            taken = [used(i) for i in own]
            return [_part(new.rows, new.log_weights),
                    *(_part(olds[i].rows, None if t is None else t[0]) for i, t in zip(own, taken))]

        if _newly_light(f"weighted:{new.family}:{new.data_model}", [olds[i].rows for i in own], new.rows, by_rows,
                        threshold, primes):
            return True
    known = [i for i, old in enumerate(olds) if old.patients is not None]
    if new.patients is None or not any(olds[i].data_model != new.data_model for i in known):
        return False  # one data model: its rows were weighed above

    def by_patients() -> list:
        parts = [_part(*per_patient(new.patients, new.log_weights))]
        for i in known:
            t = used(i)
            parts.append(_part(olds[i].patients, None) if t is None or t[1] is None
                         else _part(*per_patient(t[1], t[0])))
        return parts

    return _newly_light(f"weighted:{new.family}:*patients*", [olds[i].patients for i in known],
                        sorted_unique(new.patients), by_patients, threshold, primes)


def _newly_light(name: str, pool: list[np.ndarray], new: np.ndarray, parts: Callable[[], list], threshold: int,
                 primes: Sequence[int]) -> bool:
    """Whether adding ``new`` to the backstop state over ``pool`` (cached under ``name``) isolates an atom not
    isolatable before with the same members and holding fewer than ``threshold`` units in effect, or lets a new
    combination live on a union of atoms holding fewer than ``threshold`` units in effect
    (:func:`mipflow.node.controls.weighted_unions.light_union`; twenty-second review, hole 1).  The units' weight
    bounds come from ``parts()``, read only when some atom is newly isolatable or the addition grows the family."""
    states = chain_exact.extended((tuple(primes), name, threshold), [pool], [new], primes, threshold)
    if states is None:
        return False
    before, after = states
    candidates = np.flatnonzero(chain_exact.newly_isolatable(before, after))
    grew = bool(pool) and (after.atoms != before.atoms or
                           any(a.shape[0] != b.shape[0] for a, b in zip(after.reduced, before.reduced)))
    if not candidates.size and not grew:
        return False
    bounds = unit_bounds(parts())
    sizes = rows_in_effect(*bounds)(after.universe, after.labels, after.atoms)
    if np.any(sizes[candidates] < threshold):
        return True
    if not grew or not np.any(sizes < threshold):
        return False  # only an atom under the threshold in effect can top a union under it
    log_total, log_top = weighted_unions.atom_weights(after.universe, after.labels, after.atoms, *bounds)
    return weighted_unions.light_span(after.reduced, weighted_unions.widened(before, after), log_total, log_top,
                                      threshold, after.primes)


@dataclass(frozen=True)
class _Remembered:
    data_model: str
    rows: np.ndarray
    fingerprint: str
    patients: np.ndarray | None = None  # sorted unique
    epoch: str = ""  # the consent epoch it was released under (ADR 0061; "" for a memory from before)


class WeightedMemory(SqliteState):
    """Every weighted release of the node, per family, in ``HOME/weighted.sqlite`` (never evicted):
    its data model, its rows (keyed hashes) and the fingerprint of the weights it used.

    Parameters
    ----------
    root : path or None
        The node home; None keeps the memory in this process only (tests of the rule).
    key : str
        The ledger's row-hash key (:func:`mipflow.node.controls.differencing.hash_key`).
    primes : sequence of int, optional
        The chain rule's primes (:func:`mipflow.node.controls.atoms.node_primes`, the ledger's); by
        default derived from ``key``.
    """

    def __init__(self, root: str | Path | None, key: str, primes: Sequence[int] | None = None) -> None:
        super().__init__(Path(root) / WEIGHTED_FILE if root is not None else None)
        self.key = fingerprint_key(key)
        self.primes = tuple(primes) if primes is not None else node_primes(self.key)
        self._releases: dict[str, dict[tuple[str, str, str], _Remembered]] = {}  # family -> id -> release
        self._seen = 0
        if self.path is not None:
            with self._lock, self._connect() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS weighted (family TEXT NOT NULL, data_model TEXT NOT NULL, "
                             "digest TEXT NOT NULL, fingerprint TEXT NOT NULL, n_rows INTEGER NOT NULL, "
                             "keys BLOB NOT NULL, patients BLOB, first_at TEXT NOT NULL, "
                             "PRIMARY KEY (family, data_model, digest, fingerprint))")
                if "epoch" not in {row[1] for row in conn.execute("PRAGMA table_info(weighted)")}:
                    conn.execute("ALTER TABLE weighted ADD COLUMN epoch TEXT")  # before ADR 0061: the epoch ""

    def _refresh(self) -> None:
        if self.path is None:
            return
        with self._connect() as conn:
            rows = conn.execute("SELECT rowid, family, data_model, digest, fingerprint, keys, patients, epoch "
                                "FROM weighted WHERE rowid > ? ORDER BY rowid", (self._seen,)).fetchall()
        for rowid, family, data_model, digest, mark, blob, patients, epoch in rows:
            self._releases.setdefault(family, {}).setdefault((data_model, digest, mark), _Remembered(
                data_model, decode_keys(blob), mark, None if patients is None else decode_keys(patients), epoch or ""))
            self._seen = max(self._seen, rowid)

    def remembered(self, family: str) -> int:
        """How many distinct releases of ``family`` are remembered (for the node admin and tests)."""
        with self._lock:
            self._refresh()
            return len(self._releases.get(family, {}))

    def check(self, releases: Sequence[FamilyRows], families: Sequence[WeightFamily], threshold: int,
              read: PopulationReader, epoch: str = "") -> bool:
        """Whether every family's rows pass, against every remembered release of that family they
        overlap, :func:`pair_dominated`, and with the remembered releases they are chained to, the chain
        rule (:func:`chain_dominated`) (False: refuse).  ``read`` gives an earlier release's data
        model's current rows; an earlier release whose weights they no longer give refuses an
        overlapping or chained one.

        A release remembered under another consent ``epoch`` (ADR 0061) is taken as the rows of it still
        current with their current weights, at every node alike (holder of a withdrawn patient or not):
        it is no repeat, and a new release with exactly those rows is refused."""
        if threshold <= 1:
            return True
        by_name = {f.name: f for f in families}
        with self._lock:
            self._refresh()
            remembered = {r.family: list(self._releases.get(r.family, {}).values()) for r in releases}
        for release in releases:
            family = by_name[release.family]
            olds, stale = self._as_of_epoch(remembered[release.family], family, read, epoch)
            mark = fingerprint(self.key, release.rows, release.log_weights)
            if any(old.data_model == release.data_model and old.fingerprint == mark and old.epoch == epoch
                   and np.array_equal(old.rows, release.rows) for old in olds):
                continue  # released before, rows and weights: nothing new (a repeat, a later round)
            verified: dict[int, tuple[np.ndarray, np.ndarray | None] | None] = dict(stale)

            def used(i: int, family: WeightFamily = family) -> tuple[np.ndarray, np.ndarray | None] | None:
                """Remembered release ``i``'s log-weights (and patients) from the current rows, when they
                still give the weights it released (its fingerprint); None when not."""
                if i not in verified:
                    verified[i] = self._weights_used(olds[i], family, read)
                return verified[i]

            if not all(self._pair_allowed(release, old, used, i, threshold) for i, old in enumerate(olds)):
                return False
            if chain_dominated(release, olds, used, threshold, self.primes):
                return False
            if backstop_dominated(release, olds, used, threshold, self.primes):
                return False
        return True

    def _as_of_epoch(self, olds: list[_Remembered], family: WeightFamily, read: PopulationReader, epoch: str
                     ) -> tuple[list[_Remembered], dict[int, tuple[np.ndarray, np.ndarray | None] | None]]:
        """``olds`` with each release of another consent epoch replaced by its rows still current (complete
        on the family's variables) and their current weights, and those weights by index (ADR 0061)."""
        out, weights = list(olds), {}
        for i, old in enumerate(olds):
            if old.epoch == epoch:
                continue
            population = read(old.data_model, family.variables)
            if population is None:
                weights[i] = None  # the data model is gone: its weights are not known, at every node alike
                continue
            rows = old.rows[_member(old.rows, population.rows)]
            taken = population.take(rows, family)
            if taken is None:
                weights[i] = None
                continue
            patients = None if taken[1] is None else sorted_unique(taken[1])
            out[i] = _Remembered(old.data_model, rows, fingerprint(self.key, rows, taken[0]), patients, old.epoch)
            weights[i] = taken
        return out, weights

    def _weights_used(self, old: _Remembered, family: WeightFamily,
                      read: PopulationReader) -> tuple[np.ndarray, np.ndarray | None] | None:
        population = read(old.data_model, family.variables)
        taken = None if population is None else population.take(old.rows, family)
        if taken is None or fingerprint(self.key, old.rows, taken[0]) != old.fingerprint:
            return None  # the weights released are gone or changed: the difference is not measurable
        return taken

    @staticmethod
    def _pair_allowed(new: FamilyRows, old: _Remembered, used: Callable[[int], Any], at: int,
                      threshold: int) -> bool:
        same_model = old.data_model == new.data_model
        if same_model:
            if not _overlap(new.rows, old.rows):
                return True  # disjoint: nothing subtracts
            if old.rows.size == new.rows.size and np.array_equal(old.rows, new.rows):
                return False  # the same rows with other weights (a value changed): the change, dominated
        elif new.patients is None or old.patients is None or not _overlap(sorted_unique(new.patients), old.patients):
            return True  # another data model: compared by patients, when both releases know them and share some
        taken = used(at)
        if taken is None:
            return False
        if same_model:
            return not pair_dominated(new.rows, new.log_weights, old.rows, taken[0], threshold)
        if taken[1] is None:
            return False
        new_patients, new_logw = per_patient(new.patients, new.log_weights)
        old_patients, old_logw = per_patient(taken[1], taken[0])
        return not pair_dominated(new_patients, new_logw, old_patients, old_logw, threshold)

    def record(self, releases: Iterable[FamilyRows], epoch: str = "") -> None:
        """Remember released rows under their families and the consent ``epoch`` (a release remembered
        before costs nothing and keeps its epoch)."""
        with self._lock:
            self._refresh()
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            new = []
            for r in releases:
                mark = fingerprint(self.key, r.rows, r.log_weights)
                ident = (r.data_model, r.digest, mark)
                if ident in self._releases.get(r.family, {}):
                    continue
                patients = None if r.patients is None else sorted_unique(r.patients)
                if self.path is None:
                    self._releases.setdefault(r.family, {})[ident] = _Remembered(r.data_model, r.rows, mark, patients,
                                                                                 epoch)
                else:
                    new.append((r.family, r.data_model, r.digest, mark, len(r.rows), encode_keys(r.rows),
                                None if patients is None else encode_keys(patients), now, epoch))
            if new:
                with self._connect() as conn:
                    conn.executemany("INSERT OR IGNORE INTO weighted (family, data_model, digest, fingerprint, n_rows, "
                                     "keys, patients, first_at, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", new)
                self._refresh()


# --------------------------------------------------------------------------- the step's controls


def read_population(store: Any, model: Any, variables: Sequence[str], key: str, columnar: bool) -> Population:
    """Every current row of ``model`` (all datasets the node holds, no filter) complete on ``variables``:
    its row and patient keys (the ledger's) and values, sorted by row key.  Stays at the node."""
    from mipflow.algorithms.design import numeric_values
    from mipflow.node.controls.differencing import patient_keys, row_keys
    from mipflow.node.query.read import select_frame

    datasets = sorted({str(r["dataset"]) for r in store.datasets(model.key)})
    variables = list(dict.fromkeys(variables))
    frame = select_frame(store, model, datasets=datasets, variables=variables, filters=None, complete_case=True,
                         row_identity=True, row_key=key, snapshot=columnar)
    rows = row_keys(frame, key)
    pids = patient_keys(frame, key)
    order = np.argsort(rows, kind="stable")
    return Population(rows[order], None if pids is None else pids[order],
                      {code: numeric_values(frame[code])[order] for code in variables})


def population_reader(store: Any, model_of: Callable[[str], Any], key: str, columnar: bool) -> PopulationReader:
    """``(data_model, variables) -> Population`` of the current rows complete on those variables
    (:func:`read_population`), each read once; None where ``model_of`` gives None (the data model is gone)."""
    read: dict[tuple[str, tuple[str, ...]], Population | None] = {}

    def population(data_model: str, wanted: Sequence[str]) -> Population | None:
        at = (data_model, tuple(sorted(set(wanted))))
        if at not in read:
            model = model_of(data_model)
            read[at] = None if model is None else read_population(store, model, at[1], key, columnar)
        return read[at]

    return population


def release_rows(families: Sequence[WeightFamily], data: Any, cohorts: Any,
                 population: Population | None, order: Any = None) -> list[FamilyRows] | None:
    """The step's rows under each family, weighted by the values the local step reads (``data``, in the
    order of ``cohorts.order``, or of ``order`` where the cohorts keep none: the ledger keys of rows left on
    disk in their order, ADR 0062 amendment 13), with their patients from ``population`` (None: rows not
    aligned).  Rows on disk: each family variable's column read whole (8 B a row, as the rows' log weights
    the memory keeps)."""
    from mipflow.algorithms.design import numeric_values
    from mipflow.algorithms.streamed import on_disk

    order = getattr(cohorts, "order", None) if order is None else order
    if order is None or len(order) != len(data):
        return None
    keys = np.asarray(order, dtype=np.uint64)
    sort = np.argsort(keys, kind="stable")
    rows = keys[sort]
    patients = None
    if population is not None and population.patients is not None and len(rows):
        at = np.minimum(np.searchsorted(population.rows, rows), max(len(population.rows) - 1, 0))
        if len(population.rows) and np.array_equal(population.rows[at], rows):
            patients = population.patients[at]
    columns = {code: (data.values(code) if on_disk(data) else numeric_values(data[code]))[sort]
               for f in families for code in f.variables}
    return [FamilyRows(f.name, cohorts.data_model, rows, f.log_weights(columns), patients) for f in families]


def check_weighted(request: Any, context: Any, work: Any) -> None:
    """Control (after ``check_groups``): a release of sums weighted by the rows' values (the algorithm's
    ``weight_families``) against every earlier release of the same family at this node (ADR 0058;
    control ``dominated_sums``).  The release's rows are worked out even while ``differencing_check``
    is off or in a study, so that :func:`remember_weighted` remembers them; explore releases are DP."""
    from mipflow.exceptions import DataModelNotHeld
    from mipflow.node.controls.disclosure import dominated_refusal

    work.weighted = None
    declared = getattr(work.algo, "weight_families", None)
    if work.explore is not None or declared is None:
        return
    families = tuple(declared(request.analysis, work.model))
    if not families:
        return
    guard, settings = context.differencing, work.settings
    variables = sorted({code for f in families for code in f.variables})

    def model_of(data_model: str) -> Any:
        try:
            return work.model if data_model == work.model.key else context.data_model(data_model)
        except DataModelNotHeld:
            return None

    reader = population_reader(context.store, model_of, guard.key, bool(settings.columnar_snapshot))

    def population(data_model: str, wanted: Sequence[str] = variables) -> Population | None:
        """The rows of ``data_model`` complete on ``wanted`` (read once per step)."""
        return reader(data_model, wanted)

    order = None
    if getattr(work.cohorts, "order", None) is None:  # a complete-case selection on disk split by nothing
        from mipflow.node.controls.pooled_counts import step_order

        order = step_order(work)[0]  # its rows' keys in their order (the frame's cohorts' order), once a step
    rows = release_rows(families, work.data, work.cohorts, population(work.cohorts.data_model), order)
    if rows is None:  # rows the node cannot key (none of today's weighted algorithms): not answered
        raise dominated_refusal(settings.min_row_count)
    work.weighted = (families, rows)
    if not settings.differencing_check or work.study is not None or settings.min_row_count <= 1:
        return
    from mipflow.node.controls.differencing import consent_epoch

    if not guard.weighted.check(rows, families, settings.min_row_count, population, consent_epoch(context.store)):
        raise dominated_refusal(settings.min_row_count)


def remember_weighted(context: Any, work: Any) -> None:
    """After the release: its rows under each family join the weighted memory."""
    if getattr(work, "weighted", None) is not None:
        from mipflow.node.controls.differencing import consent_epoch

        context.differencing.weighted.record(work.weighted[1], consent_epoch(context.store))


__all__ = ["FamilyRows", "Population", "PopulationReader", "WEIGHTED_FILE", "WeightedMemory", "chain_dominated",
           "check_weighted", "fingerprint", "pair_dominated", "per_patient", "read_population", "release_rows",
           "remember_weighted", "rows_in_effect", "unit_bounds"]
