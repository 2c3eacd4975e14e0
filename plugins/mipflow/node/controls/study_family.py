"""The family of cohorts a study's protocol produces at a node (ADR 0028): what study approval checks.

:func:`compute_family` reads the protocol's population and subgroups from the store (row and patient
keys only, plus what the level-cell, survival, k-means and transformation rules need); the checks on it
and the decisions are :mod:`mipflow.node.controls.study_approval`'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mipflow.node.controls.study import Study, value_hashes
from mipflow.node.controls.study_protocol import Protocol
from mipflow.node.controls.study_transforms import transformation_values


@dataclass(frozen=True)
class Family:
    """The cohorts a protocol produces on the rows now in a node's store.

    ``patients`` holds, for every label of :meth:`sets`, the cohort's patients (sorted keyed
    hashes of ``_pid``, ADR 0030), so approval compares the family with cohorts answered under
    other data models (or versions) holding the same patients; empty when the rows carry no
    patient identity.
    """

    population: np.ndarray            # sorted row keys
    values: np.ndarray                # value hashes in that order
    subgroups: dict[str, np.ndarray]  # name -> sorted row keys
    per_dataset: dict[str, dict[str | None, np.ndarray]]  # dataset -> subgroup (None: population) -> keys
    patients: dict[str, np.ndarray] = field(default_factory=dict)  # label of sets() -> sorted patient keys
    #: the level-cell rule (:mod:`mipflow.node.controls.study_cells`): every cohort's cells' row
    #: counts, and per population row (sorted order) its nominal variables' levels
    cells: dict[str, int] = field(default_factory=dict)
    cell_levels: Any = None
    nominal: tuple[str, ...] = ()
    cross: int = 0
    #: Kaplan-Meier's cells (:func:`~mipflow.node.controls.study_cells.survival_masks`) and each
    #: population row's bin on the protocol's survival grid (none without Kaplan-Meier)
    survival_cells: list[tuple[str, np.ndarray]] = field(default_factory=list)
    bins: np.ndarray | None = None
    bin_labels: tuple[str, ...] = ()
    #: the study's survival partition (:mod:`mipflow.node.controls.study_survival`): merged bin ends,
    #: every survival cell's counts on them (admin-facing, for the next refresh) and, at a refresh,
    #: the cells whose change cannot be merged away
    survival_ends: tuple[int, ...] = ()
    #: each population row's patient key (sorted order; None without ``_pid``): other studies under
    #: other data models are mapped onto these rows by patient (ADR 0030)
    row_patients: np.ndarray | None = None
    survival_counts: dict[str, list[int]] = field(default_factory=dict)
    survival_problems: tuple[str, ...] = ()
    #: with k-means: rows of the 3 most frequent values of each real study variable (ADR 0050)
    ties: dict[str, int] = field(default_factory=dict)
    #: with pca_with_transformation: the protocol's log/exp variables' values, sorted order (ADR 0053)
    transformed: dict[str, np.ndarray] = field(default_factory=dict)
    #: the population's rows as read from the store (store order) and their row keys: the
    #: suppression patterns are counted on them (read once per approval or refresh; never stored)
    frame: Any = field(default=None, repr=False, compare=False)
    frame_keys: np.ndarray | None = field(default=None, repr=False, compare=False)

    def sets(self) -> list[tuple[str, np.ndarray]]:
        """Every cohort a request of the family can be answered on or combined from, labelled."""
        out = [("population", self.population)]
        out += [(f"subgroup {name!r}", keys) for name, keys in self.subgroups.items()]
        for dataset, cohorts in self.per_dataset.items():
            for name, keys in cohorts.items():
                out.append((_label(dataset, name), keys))
        return out


def _label(dataset: str | None, subgroup: str | None) -> str:
    label = "population" if subgroup is None else f"subgroup {subgroup!r}"
    return label if dataset is None else f"{label} in dataset {dataset!r}"


def compute_family(store: Any, model: Any, protocol: Protocol, hash_key: str, tab: int = 1,
                   old: Study | None = None) -> Family:
    """Read the population and the subgroups from the store (row and patient keys only are kept).

    With Kaplan-Meier and a survival grid in the protocol, also the study's survival partition for
    ``tab`` (``nfilter_tab``): at a refresh of ``old``, a coarsening of the partition in force
    that keeps the change safe too (:mod:`mipflow.node.controls.study_survival`)."""
    from mipflow.node.controls.differencing import patient_keys, row_keys, sorted_unique
    from mipflow.node.query.read import select_frame

    def read(subgroup: Any) -> Any:
        return select_frame(store, model, datasets=list(protocol.datasets), variables=list(protocol.variables),
                            filters=protocol.subgroup_filter(subgroup), complete_case=True, row_identity=True)

    patients: dict[str, np.ndarray] = {}

    def note_patients(pids: np.ndarray | None, datasets: np.ndarray, subgroup: str | None,
                      held: list[str]) -> None:
        if pids is None:
            return
        patients[_label(None, subgroup)] = sorted_unique(pids)
        for d in held:
            patients[_label(d, subgroup)] = sorted_unique(pids[datasets == d])

    frame = read(None)
    keys = row_keys(frame, hash_key)
    order = np.argsort(keys, kind="stable")
    population, values = keys[order], value_hashes(frame, protocol.variables)[order]
    datasets = frame["dataset"].to_numpy(dtype=object)
    held = {d["dataset"] for d in store.datasets(model.key)}
    per_dataset: dict[str, dict[str | None, np.ndarray]] = {
        d: {None: sorted_unique(keys[datasets == d])} for d in protocol.datasets if d in held}
    note_patients(patient_keys(frame, hash_key), datasets, None, list(per_dataset))
    subgroups = {}
    for subgroup in protocol.subgroups:
        sub = read(subgroup)
        sub_keys = row_keys(sub, hash_key)
        subgroups[subgroup.name] = sorted_unique(sub_keys)
        sub_datasets = sub["dataset"].to_numpy(dtype=object)
        for d, cohorts in per_dataset.items():
            cohorts[subgroup.name] = sorted_unique(sub_keys[sub_datasets == d])
        note_patients(patient_keys(sub, hash_key), sub_datasets, subgroup.name, list(per_dataset))
    from mipflow.node.controls.study_cells import cohort_cells, crossing, nominal_variables

    nominal = nominal_variables(model, protocol.variables)
    levels = frame[nominal].reset_index(drop=True).iloc[order].reset_index(drop=True)
    row_pids = patient_keys(frame, hash_key)
    family = Family(population=population, values=values, subgroups=subgroups, per_dataset=per_dataset,
                    patients=patients, cell_levels=levels, nominal=tuple(nominal),
                    cross=crossing(protocol.algorithms), row_patients=None if row_pids is None else row_pids[order],
                    frame=frame, frame_keys=keys)
    if protocol.survival is not None and set(protocol.algorithms) & {"kaplan_meier", "cox_regression"}:
        family = _with_survival(family, frame[protocol.survival["time"]].to_numpy(dtype=float)[order], model,
                                protocol, tab, old)
    family.cells.update(cohort_cells(family.sets(), population, levels, nominal, family.cross))
    if "kmeans" in protocol.algorithms:
        from mipflow.node.controls.study_kmeans import tie_counts

        family.ties.update(tie_counts(frame, model, protocol.variables))
    family.transformed.update(transformation_values(frame, protocol, order))
    return family


def _with_survival(family: Family, times: np.ndarray, model: Any, protocol: Protocol, tab: int,
                   old: Study | None) -> Family:
    """``family`` with the study's survival partition and its cells (see :func:`compute_family`)."""
    from mipflow.node.controls import study_survival as sv
    from mipflow.node.controls.study_cells import survival_base, survival_masks

    time_var, width = model.variable(protocol.survival["time"]), protocol.survival["bin_width"]
    points, n_points = sv.grid_bins(times, time_var, width)
    base = survival_base(family.cell_levels, family.nominal, protocol.survival.get("event"))
    cells = sv.labelled_cells(family.sets(), family.population, base)
    previous = None if old is None else old.record.get("survival")
    problems: list[str] = []
    if previous:
        change = sv.refresh_partition(cells, points, n_points, added_since(old, family), previous, tab)
        ends, counts, problems = change.ends, change.counts, change.problems
    else:
        fine = sv.cell_counts(cells, points, n_points)
        ends = sv.partition(fine, tab)
        counts = {label: row.tolist() for (label, _), row in zip(cells, sv.merge(fine, ends))}
    merged = sv.merged_bins(points, ends)
    labels = sv.grid_labels(time_var, width, ends)
    return replace(family, survival_cells=survival_masks(base, merged, labels), bins=merged,
                   bin_labels=tuple(labels), survival_ends=tuple(int(e) for e in ends),
                   survival_counts=counts, survival_problems=tuple(problems))


def added_since(old: Study, family: Family) -> np.ndarray:
    """Rows of ``family``'s population added or changed since ``old``'s snapshot (a mask)."""
    both = np.intersect1d(old.population, family.population, assume_unique=True)
    old_values = old.values[np.searchsorted(old.population, both)]
    changed_keys = both[old_values != family.values[np.searchsorted(family.population, both)]]
    return ~np.isin(family.population, old.population, assume_unique=True) | \
        np.isin(family.population, changed_keys, assume_unique=True)
