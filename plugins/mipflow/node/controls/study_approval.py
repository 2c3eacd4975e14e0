"""The node admin's side of study mode: approve, refresh, withdraw and show a project's study.

Every decision of study mode that looks at the data is taken here, once, by the node admin
(ADR 0023, 0028), on the whole family of cohorts the protocol can produce at this node:

* **sizes**: in every dataset of the study the node holds, the population and every subgroup,
  and each subgroup's complement within the population, hold at least ``min_row_count`` rows;
* **the ledger**: none of these cohorts (per dataset and over all the node's datasets) is a few
  rows away from a cohort the node answered before (the pairwise rule of ADR 0013, against
  everything in ``cohorts.sqlite``; by patients against cohorts of other data models and
  versions holding the same patients, ADR 0030), and no linear combination of them isolates fewer than
  ``min_row_count`` patients, one atom or several small ones together (the atom rule,
  :mod:`mipflow.node.controls.atoms`, and its union rule, :mod:`mipflow.node.controls.unions`);
* once approved, the cohorts are recorded in the ledger (analyses outside the study cannot
  difference against them) and the population's row keys become the study's **snapshot**.

A refresh runs the same checks on the rows now in the store, with the snapshot's cohorts in the
ledger, so the rows added, removed or changed since must each be none or at least
``min_row_count``; else the study stays on its snapshot.  The messages are for the admin and may
give counts; nothing here is ever sent to a researcher.  The family of cohorts itself is read by
:mod:`mipflow.node.controls.study_family` (:class:`Family` and :func:`compute_family` are importable from here too).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from mipflow.exceptions import ConfigError, DisclosureError
from mipflow.node.controls.study import Study, list_records, now_utc, read_record, read_study, write_study
from mipflow.node.controls.study_protocol import Protocol, check_against_model, parse_protocol
from mipflow.node.controls.atoms import node_primes
from mipflow.node.controls.study_cells import check_moment_cells, moment_crossing, moment_problems
from mipflow.node.controls.study_kmeans import check_ties
from mipflow.node.controls.study_suppression import Patterns, compute_patterns, read_patterns, write_patterns
from mipflow.node.controls.study_family import Family, added_since, compute_family
from mipflow.node.controls.study_chain import (APPROVAL_HINT, RECORD_KEY, REFRESH_HINT, chain_with_answered,
                                               own_digests, recorded_digests)
from mipflow.node.controls.study_transforms import check_transformed, check_weighted_history, remember_weighted_cohorts


#: What to change when a cohort of the family is too small (approval and refresh; said after the counts).
SIZE_HINT = ("Widen the population filter or the subgroups, leave out the datasets named, or wait until more rows "
             "are loaded")

#: algorithms whose releases a study fixes per family (ADR 0035 patterns, the survival partition):
#: two different families at one node would each be consistent only with itself
PER_FAMILY_LAYOUTS = frozenset({"multiple_histograms", "kaplan_meier", "cox_regression"})


def other_studies(root: Any, project: str) -> list[Study]:
    """The node's other approved studies (under any data model: the same patients may be loaded
    under several, ADR 0030)."""
    out = []
    for record in list_records(root):
        other = record.get("project")
        if other == project or record.get("status") != "approved":
            continue
        study = read_study(root, other)
        if study is not None:
            out.append(study)
    return out


def _on_these_rows(study: Study, family: Family, data_model: str, store: Any, hash_key: str
                   ) -> list[tuple[str, np.ndarray]]:
    """``study``'s cohorts as row keys of ``family``: by row under the same data model, by patient
    under another (its snapshot's rows read again for their patients; a cohort with no patient
    identity, or a data model the node no longer holds, maps to nothing)."""
    cohorts = [("population", study.population), *((f"subgroup {n!r}", k) for n, k in study.subgroups.items())]
    if study.protocol.data_model == data_model:
        return cohorts
    if family.row_patients is None:
        return []
    from mipflow.node.controls.differencing import patient_keys, row_keys
    from mipflow.node.query.read import select_frame

    try:
        model = store.data_model(study.protocol.data_model)
    except Exception:  # noqa: BLE001 - the other data model is gone: nothing to compare with
        return []
    frame = select_frame(store, model, datasets=list(study.protocol.datasets), variables=list(study.protocol.variables),
                         filters=study.protocol.population_filter, complete_case=True, row_identity=True)
    keys, pids = row_keys(frame, hash_key), patient_keys(frame, hash_key)
    if pids is None:
        return []
    out = []
    for label, members in cohorts:
        patients = pids[np.isin(keys, members)]
        out.append((label, family.population[np.isin(family.row_patients, patients)]))
    return out


def other_sets(others: list[Study], family: Family, data_model: str = "", store: Any = None,
               hash_key: str = "") -> list[tuple[str, np.ndarray]]:
    """Every cohort of the other studies' families on the rows now in the store (whole and per
    dataset of this family; under another data model, by patient): for the level-cell and atom rules
    across studies (a fifth outside review subtracted two projects' studies, elderly >= 65 and older
    >= 70, to one death aged 65-69; a sixth did it across two versions of the data model)."""
    out: list[tuple[str, np.ndarray]] = []
    for study in others:
        cohorts = _on_these_rows(study, family, data_model, store, hash_key) if store is not None else \
            [("population", study.population), *((f"subgroup {n!r}", k) for n, k in study.subgroups.items())]
        for label, keys in cohorts:
            rows = np.intersect1d(keys, family.population, assume_unique=True)
            if rows.size:
                out.append((f"project {study.project!r}: {label}", rows))
            for dataset, mine in family.per_dataset.items():
                part = np.intersect1d(rows, mine[None], assume_unique=True)
                if part.size and part.size != rows.size:
                    out.append((f"project {study.project!r}: {label} in dataset {dataset!r}", part))
    return out


def layout_conflict(protocol: Protocol, others: list[Study], shared: set[str] | None = None) -> str | None:
    """A reason to refuse when this study and another at the node both release per-family layouts
    (``shared``: the projects whose cohorts hold rows or patients of this family; None: all)."""
    if not set(protocol.algorithms) & PER_FAMILY_LAYOUTS:
        return None
    for study in others:
        if shared is not None and study.project not in shared:
            continue
        if set(study.protocol.algorithms) & PER_FAMILY_LAYOUTS:
            return (f"project {study.project!r} has an approved study at this node with histograms or survival "
                    "analyses on the same patients; suppression patterns and survival partitions are decided per "
                    "study, so two families' releases could subtract: leave multiple_histograms, kaplan_meier and "
                    "cox_regression out of one of the two studies, or serve both projects with one study")
    return None


def cell_problems(family: Family, tab: int, key: bytes, others: list[tuple[str, np.ndarray]] = (),
                  min_row_count: int | None = None) -> list[str]:
    """The level-cell rule at approval (admin-facing, with counts; :mod:`study_cells`), over this
    family and ``others`` (the node's other studies' cohorts, :func:`other_sets`).  Without a nominal
    variable and a survival grid the cells are the cohorts themselves: their chains (single atoms and
    unions) are the family rule's (:func:`_check_family`, at ``min_row_count``), left to it when that is
    at least ``tab``."""
    from mipflow.node.controls.atoms import node_primes
    from mipflow.node.controls.study_cells import chain_problem, difference_problems

    sets = family.sets() + list(others)
    problems = difference_problems(sets, family.population, family.cell_levels, family.nominal, family.cross, tab,
                                   extra=family.survival_cells)
    covered = min_row_count is not None and min_row_count >= tab and not family.nominal and family.bins is None
    if not problems and not covered:
        chain = chain_problem(sets, family.population, family.cell_levels, family.nominal, family.cross, tab,
                              node_primes(key), bins=family.bins, labels=family.bin_labels)
        problems += [chain] if chain else []
    return problems


def cell_change_problems(old: Study, family: Family, tab: int, cross: int | None = None) -> list[str]:
    """The level-cell rule at a refresh: rows added and removed per cell since the snapshot (with
    ``cross``: of the cells crossing at most that many variables only, ADR 0050)."""
    from mipflow.node.controls.study_cells import change_cells, cohort_cells, moment_cells

    added = added_since(old, family)
    added_cells = cohort_cells(family.sets(), family.population, family.cell_levels, family.nominal,
                               family.cross if cross is None else cross, added)
    if cross is not None:
        previous, now = moment_cells(old.record.get("cells") or {}, cross), moment_cells(family.cells, cross)
        earlier = [moment_cells(cells, cross) for cells in old.record.get("cells_history", [])]
        return change_cells(previous, now, added_cells, tab, earlier) if old.record.get("cells") is not None \
            else change_cells({}, {}, added_cells, tab)
    previous = old.record.get("cells")
    if previous is None:  # approved before the rule: only what was added can be checked
        removed = int(len(old.population) - np.count_nonzero(np.isin(old.population, family.population))
                      + np.count_nonzero(added & np.isin(family.population, old.population)))
        problems = change_cells({}, {}, added_cells, tab)
        return problems + ([f"{removed} row(s) removed from a study approved before the level-cell rule: "
                            "withdraw it and approve it again"] if removed else [])
    return change_cells(previous, family.cells, added_cells, tab, old.record.get("cells_history", []))


def size_problems(family: Family, min_row_count: int) -> list[str]:
    """What is too small (admin-facing: with counts)."""
    if not family.per_dataset:
        return ["this node holds none of the study's datasets"]
    problems = []
    for dataset, cohorts in family.per_dataset.items():
        whole = len(cohorts[None])
        if whole < min_row_count:
            problems.append(f"dataset {dataset!r}: the population holds {whole} row(s)")
            continue
        for name, keys in cohorts.items():
            if name is None:
                continue
            if len(keys) < min_row_count:
                problems.append(f"dataset {dataset!r}: subgroup {name!r} holds {len(keys)} row(s)")
            if whole - len(keys) < min_row_count:
                problems.append(f"dataset {dataset!r}: the population outside subgroup {name!r} holds "
                                f"{whole - len(keys)} row(s)")
    return problems


def change_problems(old: Study, family: Family, min_row_count: int) -> tuple[dict[str, int], list[str]]:
    """Rows added, removed and changed since the snapshot; each must be 0 or >= min_row_count."""
    both = np.intersect1d(old.population, family.population, assume_unique=True)
    old_values = old.values[np.searchsorted(old.population, both)]
    new_values = family.values[np.searchsorted(family.population, both)]
    changed = int(np.count_nonzero(old_values != new_values))
    counts = {"added": len(family.population) - len(both) + changed,
              "removed": len(old.population) - len(both) + changed, "changed": changed}
    problems = [f"{counts[k]} row(s) {k}" + (" (changed rows count as removed and added)" if changed else "")
                for k in ("added", "removed") if 0 < counts[k] < min_row_count]
    return counts, problems


def _check_family(root: Any, key: bytes, data_model: str, family: Family, min_row_count: int,
                  earlier: Study | None, epoch: str = "") -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """The ledger's pairwise rule against every cohort answered before (by rows under the study's
    data model, by patients under any other, ADR 0030), the atom rule with its union rule over the
    family (and the snapshot it replaces, no combination excused), and the chain rule with everything
    answered (:mod:`mipflow.node.controls.study_chain`; at a refresh, the study's own earlier cohorts seen as
    remembered); returns the distinct sets to record, with their patients."""
    from mipflow.node.controls.atoms import check_family, node_primes
    from mipflow.node.controls.differencing import CohortLedger, cohort_digest

    distinct: dict[str, tuple[str, np.ndarray, np.ndarray | None]] = {}
    for label, keys in family.sets():
        distinct.setdefault(cohort_digest(data_model, keys), (label, keys, family.patients.get(label)))
    ledger = CohortLedger(root)
    try:
        for digest, (label, keys, patients) in distinct.items():
            try:
                ledger.check(data_model, [keys], min_row_count, [digest],
                             patients=None if patients is None else [patients])
            except DisclosureError:
                raise ConfigError(f"the study's {label} differs from rows this node already answered for by "
                                  f"fewer than min_row_count ({min_row_count}) rows or patients, under this or "
                                  "another data model (differencing): choose a broader population or other "
                                  "subgroups") from None
        sets = [keys for _, keys, _ in distinct.values()]
        if earlier is not None:
            sets += [earlier.population, *earlier.subgroups.values()]
        verdict = check_family(sets, min_row_count, node_primes(key), unions=True)
        if verdict.small_union:  # no count: which atoms and how many rows the search met is data
            raise ConfigError(f"a combination of the study's cohorts would single out a group of fewer than "
                              f"min_row_count ({min_row_count}) patients in all (several small groups together, "
                              "none alone): choose subgroups that overlap by more rows")
        if not verdict.allowed:  # no count either (the group's size is data, as the union rule's above)
            raise ConfigError(f"a combination of the study's cohorts would isolate a group of fewer than "
                              f"min_row_count ({min_row_count}) patients: choose subgroups that overlap by more rows")
        own = () if earlier is None else own_digests(earlier, family, data_model)  # ADR 0028 amended (issue 14)
        chain_with_answered(root, ledger, data_model, list(distinct.values()), min_row_count, node_primes(key),
                            epoch, own, APPROVAL_HINT if earlier is None else REFRESH_HINT)
    finally:
        ledger.close()
    return list(distinct.values())


def _cells_message(failed: str, problems: list[str], tab: int) -> str:
    shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    return (f"{failed}: subtracting the study's results would give groups of fewer than nfilter_tab ({tab}) rows "
            f"(levels of nominal study variables inside the difference of two cohorts, or rows added or removed "
            f"since the snapshot): {shown}. Choose subgroups whose differences hold more rows, leave the "
            "variable out of the study, or wait for more data (docs/adr/0028-study-mode.md, level cells)")


def _record(root: Any, data_model: str, sets: list[tuple[str, np.ndarray, np.ndarray | None]]) -> None:
    from mipflow.node.controls.differencing import CohortLedger

    ledger = CohortLedger(root)
    try:
        if all(patients is not None for _, _, patients in sets):
            ledger.record(data_model, [keys for _, keys, _ in sets], patients=[p for _, _, p in sets])
        else:  # rows without a patient identity: compared by rows only, as before ADR 0030
            ledger.record(data_model, [keys for _, keys, _ in sets])
    finally:
        ledger.close()


def _survival_record(family: Family) -> dict[str, Any]:
    """The survival partition for the study record (grid points; what every release shows anyway)."""
    if not family.survival_ends:
        return {}
    return {"survival_ends": list(family.survival_ends),
            "survival": {"ends": list(family.survival_ends), "counts": family.survival_counts}}


def _survival_summary(family: Family) -> dict[str, Any]:
    """For the admin: how many bins the survival partition kept, with a warning when survival curves
    of the study would show at most two time points (small subgroups or differences make the bins
    wide; naming the protocol's ``event`` or dropping a subgroup narrows them)."""
    if not family.survival_ends:
        return {}
    bins = int(np.unique(family.bins).size) if family.bins is not None else len(family.survival_ends)
    out: dict[str, Any] = {"survival_bins": bins}
    if bins <= 2:
        out["warning"] = (f"the survival partition kept {bins} bin(s) holding rows: Kaplan-Meier curves and Cox "
                          "models of this study will have at most that many time points; name the protocol's "
                          "survival event, use fewer subgroups or wait for more data for finer bins")
    return out


def _counts(family: Family) -> dict[str, Any]:
    return {"population": len(family.population),
            "subgroups": {name: len(keys) for name, keys in family.subgroups.items()},
            "datasets": {d: len(c[None]) for d, c in family.per_dataset.items()}}


def _open(home: Any, protocol: Protocol) -> tuple[Any, Any]:
    from mipflow.node.store.feature_store import FeatureStore

    store = FeatureStore(home.db_url, home.root)
    try:
        model = store.data_model(protocol.data_model)
    except Exception:
        store.dispose()
        raise ConfigError(f"this node holds no data model {protocol.data_model}: name a data model the node holds "
                          "in the protocol, or have the node admin add it (mipflow data-model add)") from None
    check_against_model(protocol, model)
    return store, model


def _patterns(home: Any, store: Any, model: Any, protocol: Protocol, family: Family, snapshot: str,
              failed: str, stays: str = "", old: Study | None = None) -> tuple[Patterns, dict[str, Any]]:
    """The family's suppression patterns (ADR 0035); a variable that cannot be made safe fails the
    approval or refresh, named for the admin."""
    from mipflow.node.controls.differencing import hash_key

    try:
        previous = added = None
        if old is not None:  # a refresh: the change since the snapshot is protected too
            previous = read_patterns(home.root, old.project)
            if previous is not None and previous.snapshot == old.snapshot:
                added = family.population[added_since(old, family)]
            else:
                previous = None
        return compute_patterns(store, model, protocol, family, hash_key(home.key()), home.settings.nfilter_tab,
                                snapshot, previous, added)
    except ConfigError as exc:
        raise ConfigError(f"{failed}: {exc}{stays}") from None


def _prefixed(failed: str, stays: str = ""):
    """A context turning every :class:`ConfigError` of an approval or refresh into one that starts with
    ``failed`` ("study 'S' not approved", "... not refreshed") and ends with ``stays``, as the checks that
    name them already do: one form for every failure of the family, whichever check raised it."""
    from contextlib import contextmanager

    @contextmanager
    def context():
        try:
            yield
        except ConfigError as exc:
            text = str(exc)
            text = text if text.startswith(f"{failed}: ") else f"{failed}: {text}"
            text = text if text.endswith(stays) else text + stays
            if text == str(exc):
                raise
            raise ConfigError(text) from None
    return context()


def approve(home: Any, project: str, document: Any) -> dict[str, Any]:
    """Approve ``document`` as ``project``'s study at the node ``home`` (a :class:`NodeHome`).

    Raises
    ------
    ConfigError
        For a malformed protocol, a project that already has a study, or a check that fails; every message
        starts with "study 'NAME' not approved: " ("study not approved: " for a protocol without a valid
        name), names the check and what to change (with counts where ADR 0028 gives them to the node admin).
    """
    with _prefixed("study not approved"):
        protocol = parse_protocol(document)
    with _prefixed(f"study {protocol.name!r} not approved"):
        return _approve(home, project, protocol)


def _approve(home: Any, project: str, protocol: Protocol) -> dict[str, Any]:
    from mipflow.node.controls.differencing import hash_key

    from mipflow.node.controls.modes import refuse_study_if_exploring

    refuse_study_if_exploring(home.root, project)
    existing = read_record(home.root, project)
    if existing is not None and existing.get("status") == "approved":
        raise ConfigError(f"project {project!r} already has an approved study ({existing['protocol']['name']!r}): "
                          "refresh it (mipflow study refresh) or withdraw it first")
    min_row_count = home.settings.min_row_count
    store, model = _open(home, protocol)
    try:
        family = compute_family(store, model, protocol, hash_key(home.key()), home.settings.nfilter_tab)
        problems = size_problems(family, min_row_count)
        if problems:
            raise ConfigError(f"study {protocol.name!r} not approved: fewer than min_row_count ({min_row_count}): "
                              + "; ".join(problems) + f". {SIZE_HINT}")
        check_ties(family.ties, min_row_count, f"study {protocol.name!r} not approved")
        check_transformed(family, protocol, min_row_count, node_primes(home.key()),
                          f"study {protocol.name!r} not approved")
        # its exp-weighted cohorts against earlier releases of the same weighted sums (ADR 0058)
        weighted = check_weighted_history(home, store, model, family, protocol, min_row_count,
                                          f"study {protocol.name!r} not approved")
        others = other_studies(home.root, project)
        theirs = other_sets(others, family, protocol.data_model, store, hash_key(home.key()))
        shared = {study.project for study in others
                  if any(label.startswith(f"project {study.project!r}: ") for label, _ in theirs)}
        conflict = layout_conflict(protocol, others, shared)
        if conflict:
            raise ConfigError(f"study {protocol.name!r} not approved: {conflict}")
        small = cell_problems(family, home.settings.nfilter_tab, home.key(), theirs, min_row_count)
        if small:
            raise ConfigError(_cells_message(f"study {protocol.name!r} not approved", small, home.settings.nfilter_tab))
        check_moment_cells(moment_problems(family.sets() + list(theirs), family.population, family.cell_levels,
                                           family.nominal, protocol.algorithms, min_row_count,
                                           node_primes(home.key())), min_row_count, f"study {protocol.name!r} not approved")
        consent = store.consent_applied()
        sets = _check_family(home.root, home.key(), protocol.data_model, family, min_row_count, None, consent)
        at = now_utc()
        patterns, summary = _patterns(home, store, model, protocol, family, at, f"study {protocol.name!r} not approved")
    finally:
        store.dispose()
    _record(home.root, protocol.data_model, sets)
    remember_weighted_cohorts(home, weighted, consent)
    study = Study(project=project, protocol=protocol, snapshot=at, population=family.population,
                  values=family.values, subgroups=family.subgroups,
                  record={"status": "approved", "approved_at": at, "min_row_count": min_row_count,
                          "counts": _counts(family), "suppression": summary, "refreshes": [],
                          "cells": family.cells, "consent_applied": consent,
                          RECORD_KEY: recorded_digests(protocol.data_model, sets), **_survival_record(family)})
    write_patterns(home.root, project, patterns)
    write_study(home.root, study)
    return {"project": project, "study": protocol.name, "status": "approved", "snapshot": at, **_counts(family),
            **_survival_summary(family)}


def refresh(home: Any, project: str) -> dict[str, Any]:
    """Move ``project``'s study to the rows now in the store, if the checks pass.

    Raises
    ------
    ConfigError
        If the project has no approved study or a check fails (the study stays on its snapshot); a failed
        check's message starts with "study 'NAME' not refreshed: " and ends saying the study stays on its snapshot.
    """
    old = read_study(home.root, project)
    if old is None or old.record.get("status") != "approved":
        raise ConfigError(f"project {project!r} has no approved study to refresh")
    with _prefixed(f"study {old.protocol.name!r} not refreshed", f"; the study stays on its snapshot of {old.snapshot}"):
        return _refresh(home, project, old)


def _refresh(home: Any, project: str, old: Study) -> dict[str, Any]:
    from mipflow.node.controls.differencing import hash_key

    min_row_count = home.settings.min_row_count
    store, model = _open(home, old.protocol)
    try:
        family = compute_family(store, model, old.protocol, hash_key(home.key()), home.settings.nfilter_tab, old)
        counts, problems = change_problems(old, family, min_row_count)
        consent = store.consent_applied()
        # a consent registry applied since the snapshot is a change even where it deleted no row: the
        # study moves to a new snapshot at every node that applied it alike (ADR 0059)
        unchanged = counts["added"] == counts["removed"] == 0 and old.consent_applied == consent and all(
            np.array_equal(family.subgroups[name], keys) for name, keys in old.subgroups.items())
        stays = f"; the study stays on its snapshot of {old.snapshot}"
        if unchanged:
            stored = read_patterns(home.root, project)
            if stored is None or stored.snapshot != old.snapshot or stored.tab != home.settings.nfilter_tab:
                # patterns missing (a study approved before ADR 0035) or nfilter_tab changed: recomputed
                patterns, _ = _patterns(home, store, model, old.protocol, family, old.snapshot,
                                        f"study {old.protocol.name!r} not refreshed")
                write_patterns(home.root, project, patterns)
            if family.survival_ends and old.record.get("survival_ends") != list(family.survival_ends):
                # a study approved before survival partitions (or with another nfilter_tab): computed now
                write_study(home.root, replace(old, record={**old.record, "cells": family.cells,
                                                            **_survival_record(family)}))
            return {"project": project, "study": old.protocol.name, "status": "unchanged", "snapshot": old.snapshot}
        problems += size_problems(family, min_row_count)
        if problems:
            raise ConfigError(f"study {old.protocol.name!r} not refreshed: fewer than min_row_count "
                              f"({min_row_count}): " + "; ".join(problems) + f". {SIZE_HINT}" + stays)
        check_ties(family.ties, min_row_count, f"study {old.protocol.name!r} not refreshed", stays)
        check_transformed(family, old.protocol, min_row_count, node_primes(home.key()),
                          f"study {old.protocol.name!r} not refreshed", stays)
        tab = home.settings.nfilter_tab
        others = other_sets(other_studies(home.root, project), family, old.protocol.data_model, store,
                            hash_key(home.key()))
        cells = cell_problems(family, tab, home.key(), others, min_row_count) + cell_change_problems(old, family, tab) \
            + list(family.survival_problems)
        if cells:
            raise ConfigError(_cells_message(f"study {old.protocol.name!r} not refreshed", cells, tab) + stays)
        moments = moment_crossing(old.protocol.algorithms)
        check_moment_cells(moment_problems(family.sets() + list(others), family.population, family.cell_levels,
                                           family.nominal, old.protocol.algorithms, min_row_count,
                                           node_primes(home.key()))
                           + (cell_change_problems(old, family, min_row_count, moments) if moments else []),
                           min_row_count, f"study {old.protocol.name!r} not refreshed", stays)
        try:
            sets = _check_family(home.root, home.key(), old.protocol.data_model, family, min_row_count, old, consent)
        except ConfigError as exc:
            raise ConfigError(f"study {old.protocol.name!r} not refreshed: {exc}{stays}") from None
        at = now_utc()
        patterns, summary = _patterns(home, store, model, old.protocol, family, at,
                                      f"study {old.protocol.name!r} not refreshed", stays, old)
    finally:
        store.dispose()
    _record(home.root, old.protocol.data_model, sets)
    write_patterns(home.root, project, patterns)
    refreshes = [*old.record.get("refreshes", []), {"at": at, "previous_snapshot": old.snapshot, **counts}]
    study = Study(project=project, protocol=old.protocol, snapshot=at, population=family.population,
                  values=family.values, subgroups=family.subgroups,
                  record={**old.record, "min_row_count": min_row_count, "counts": _counts(family),
                          "consent_applied": consent,
                          RECORD_KEY: recorded_digests(old.protocol.data_model, sets,
                                                       own_digests(old, family, old.protocol.data_model)),
                          "suppression": summary, "refreshes": refreshes, "cells": family.cells,
                          # every earlier snapshot's cells (counts only): a later refresh's net change
                          # is checked against each of them too
                          "cells_history": [old.record["cells"], *old.record.get("cells_history", [])]
                          if old.record.get("cells") is not None else old.record.get("cells_history", []),
                          **_survival_record(family)})
    write_study(home.root, study)
    return {"project": project, "study": old.protocol.name, "status": "refreshed", "snapshot": at,
            "previous_snapshot": old.snapshot, **counts}


def withdraw(home: Any, project: str) -> dict[str, Any]:
    """End ``project``'s study: its requests go through the standard controls again (the ledger
    keeps the study's cohorts, so analyses cannot difference against them)."""
    study = read_study(home.root, project)
    if study is None or study.record.get("status") != "approved":
        raise ConfigError(f"project {project!r} has no approved study to withdraw")
    at = now_utc()
    write_study(home.root, Study(project=project, protocol=study.protocol, snapshot=study.snapshot,
                                 population=study.population, values=study.values, subgroups=study.subgroups,
                                 record={**study.record, "status": "withdrawn", "withdrawn_at": at}))
    return {"project": project, "study": study.protocol.name, "status": "withdrawn", "withdrawn_at": at}


def show(home: Any, project: str | None = None) -> list[dict[str, Any]]:
    """The node's studies (or ``project``'s) as the admin sees them, counts included."""
    records = list_records(home.root)
    if project is not None:
        records = [r for r in records if r.get("project") == project]
        if not records:
            raise ConfigError(f"project {project!r} has no study at this node")
    return records
