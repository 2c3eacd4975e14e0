"""One suppression pattern per histogram layout over a study's whole family (issue 14.3, ADR 0035).

Inside one result, :mod:`mipflow.node.controls.suppression` hides small cells consistently with
the result's own margins (ADR 0031).  Across the results of a study it cannot: a histogram of
``age`` over the population (bin: 12) and over subgroup ``men`` (the same bin: 10) gives the bin of
``women`` (2) although the women's histogram hid it, because the population is women plus men.
Every linear relation between the family's cohorts (``population = women + men``, ``population =
sum of its datasets``, ...) holds bin by bin for every count table over them, and the requester
knows the family.

So in study mode the node fixes, once per snapshot (at approval and refresh), one pattern of hidden
cells per numerical study variable, over the whole family at once:

* cells ``(c, r, j)``: cohort ``c`` (the population and each subgroup, over all the node's study
  datasets and per dataset: :meth:`~mipflow.node.controls.study_family.Family.sets`), record
  ``r`` (the overall histogram and one per level of each nominal study variable, as
  ``multiple_histograms`` lays out its groupings ``x``), bin ``j`` (the protocol's
  ``histogram_bins`` over the declared range);
* relations the requester may know: for every ``lambda`` with ``sum_c lambda_c 1_c = 0`` over the
  rows (the left null space of the cohort x atom incidence, exact over the rationals) and every
  ``(r, j)``, ``sum_c lambda_c cell(c, r, j) = 0``; within each cohort, the levels of a grouping
  variable sum to the overall bin, the overall bins sum to the released row count, and each
  record's bins sum to the level's count (released elsewhere, e.g. by ``descriptive_stats``:
  assumed known, which is conservative);
* :func:`~mipflow.node.controls.suppression.suppress` on that joint system (primary: cells in
  ``(0, nfilter_tab)``);
* the sets the requester can subtract out of the cohorts without asking for them
  (:func:`derived_sets`: each nested pair's difference, the young as the population less the
  elderly, and each atom) join the system as cohorts whose cells are never released but must not
  be determined when small: two released cells whose difference is a young cell of one are never
  both released (a fourth outside review subtracted the elderly's histograms by sex from the
  population's).

The patterns (booleans only, no count) are stored beside the study
(``HOME/studies/<project>.suppression.npz``, mode 0600).  At a step, a histogram of the study takes
its hidden cells from the pattern (:func:`apply_pattern`) before the per-result controls run, so
every result of the study hides the same cells.  A request over a subset of the node's datasets is
a union of per-dataset cohorts: a cell is hidden there when any of its parts is hidden, so what it
releases is a sum of released cells.
"""
from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mipflow.exceptions import ConfigError, DisclosureError

#: The algorithm whose releases take the family's pattern.
HISTOGRAMS = "multiple_histograms"
BATCH = True

Record = tuple[str | None, str | None]   # (grouping variable, level); (None, None): overall
Cohort = tuple[str | None, str | None]   # (subgroup, dataset); None: the population / every dataset


@dataclass(frozen=True)
class Layout:
    """The cells of one variable's histograms over the family."""

    variable: str
    n_bins: int
    records: tuple[Record, ...]


@dataclass(frozen=True)
class Patterns:
    """A study's stored patterns: per variable, hidden flags of shape (cohorts, records, bins)."""

    snapshot: str
    tab: int
    cohorts: tuple[Cohort, ...]
    layouts: dict[str, Layout]
    hidden: dict[str, np.ndarray]
    #: per variable, the cells' counts ``(records, bins)`` of every cohort and nested difference by
    #: label (admin-facing, 0600): a refresh compares them with the new snapshot's
    counts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


# --------------------------------------------------------------------------- the layouts


def layouts(protocol: Any, model: Any) -> list[Layout]:
    """One layout per numerical study variable with a declared range (records: overall, then the
    levels of each nominal study variable in the protocol's order)."""
    from mipflow.algorithms.multiple_histograms import grid_bins

    nominal = [v for v in protocol.variables if model.variable(v).is_categorical]
    records: list[Record] = [(None, None)]
    for code in nominal:
        records.extend((code, level) for level in model.variable(code).enumeration_codes)
    # the survival time has no histograms in a study with survival analyses (:func:`check_layout`)
    survival = protocol.survival if set(protocol.algorithms) & set(SURVIVAL_ALGORITHMS) else None
    out = []
    for code in protocol.variables:
        var = model.variable(code)
        if var.is_categorical or var.min_value is None or var.max_value is None:
            continue
        if survival is not None and code == survival["time"]:
            continue
        out.append(Layout(code, grid_bins(protocol.histogram_bins), tuple(records)))  # as the histogram bins it
    return out


def cohorts_of(protocol: Any, held: Sequence[str]) -> list[Cohort]:
    """The family's cohorts in a fixed order: over all held datasets, then per held dataset."""
    names: list[str | None] = [None, *(s.name for s in protocol.subgroups)]
    return [(s, None) for s in names] + [(s, d) for d in held for s in names]


def cells(frame: Any, membership: np.ndarray, layout: Layout, model: Any) -> np.ndarray:
    """The counts ``(cohorts, records, bins)`` of ``layout`` on the snapshot's rows ``frame``,
    binned exactly as ``multiple_histograms``' local step bins them."""
    from mipflow.algorithms.design import category_codes, numeric_values
    from mipflow.algorithms.multiple_histograms import bin_counter

    var = model.variable(layout.variable)
    count = bin_counter(numeric_values(frame[layout.variable]), layout.n_bins,
                        (float(var.min_value), float(var.max_value)))
    codes = {g: category_codes(frame[g], model.variable(g)).to_numpy()
             for g in dict.fromkeys(g for g, _ in layout.records if g is not None)}
    out = np.zeros((membership.shape[1], len(layout.records), layout.n_bins))
    for c in range(membership.shape[1]):
        for r, (g, level) in enumerate(layout.records):
            mask = membership[:, c] if g is None else membership[:, c] & (codes[g] == level)
            out[c, r] = count(mask)
    return out


# --------------------------------------------------------------------------- the relations


def cohort_relations(membership: np.ndarray) -> np.ndarray:
    """A basis of ``{lambda : sum_c lambda_c 1_c = 0}`` over the rows, exact (integer entries).

    Parameters
    ----------
    membership : numpy.ndarray of bool, shape (rows, cohorts)

    Returns
    -------
    numpy.ndarray, shape (k, cohorts)
        The left null space of the cohort x atom incidence (atoms: the distinct membership
        patterns of the rows), from a reduced row echelon form over the rationals.
    """
    atoms = np.unique(np.asarray(membership, dtype=np.int64), axis=0)  # (atoms, cohorts)
    n = atoms.shape[1]
    rows = [[Fraction(int(v)) for v in atom] for atom in atoms]
    pivots: list[int] = []
    r = 0
    for col in range(n):
        pivot = next((i for i in range(r, len(rows)) if rows[i][col] != 0), None)
        if pivot is None:
            continue
        rows[r], rows[pivot] = rows[pivot], rows[r]
        lead = rows[r][col]
        rows[r] = [v / lead for v in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][col] != 0:
                factor = rows[i][col]
                rows[i] = [a - factor * b for a, b in zip(rows[i], rows[r])]
        pivots.append(col)
        r += 1
    basis = []
    for free in (c for c in range(n) if c not in pivots):
        vec = [Fraction(0)] * n
        vec[free] = Fraction(1)
        for i, p in enumerate(pivots):
            vec[p] = -rows[i][free]
        scale = np.lcm.reduce([v.denominator for v in vec])
        basis.append([float(v * scale) for v in vec])
    return np.array(basis, dtype=float).reshape(len(basis), n)


def within_relations(layout: Layout) -> np.ndarray:
    """Relations between one cohort's cells ``(r, j)`` (column ``r * n_bins + j``): the grouped
    histogram's (:func:`~mipflow.node.controls.suppression.histogram_equations`) and each grouping
    record's bins summing to the level's count."""
    from mipflow.node.controls.suppression import histogram_equations

    J = layout.n_bins
    base = histogram_equations(J, [g for g, _ in layout.records])
    sums = []
    for r, (g, _) in enumerate(layout.records):
        if g is not None:
            row = np.zeros(len(layout.records) * J)
            row[r * J:(r + 1) * J] = 1.0
            sums.append(row)
    return np.vstack([base, *sums]) if sums else base


def family_relations(membership: np.ndarray, layout: Layout) -> np.ndarray:
    """Every relation of the joint system, cell ``(c, r, j)`` at column ``(c * R + r) * J + j``."""
    C = membership.shape[1]
    RJ = len(layout.records) * layout.n_bins
    between = np.kron(cohort_relations(membership), np.eye(RJ))
    within = np.kron(np.eye(C), within_relations(layout))
    return np.vstack([between, within])


def derived_sets(membership: np.ndarray) -> np.ndarray:
    """Row sets the requester can subtract out of the family's cohorts without asking for them
    (:func:`derived_sets_labelled` without the labels)."""
    return derived_sets_labelled(membership)[0]


def derived_sets_labelled(membership: np.ndarray, names: Sequence[str] | None = None
                          ) -> tuple[np.ndarray, list[str]]:
    """Row sets the requester can subtract out of the family's cohorts without asking for them: the
    difference of every two nested cohorts (the population less the elderly are the young; a
    subgroup's rows outside one dataset) and every atom (rows alike in every cohort: the young men
    of one dataset), each once and only when it is not a cohort of the family already; labelled
    ``"<a> minus <b>"`` (``names``: the cohorts' labels) and ``"atom <bits>"``.

    Their cells are sums and differences of released cells, so a small one is as disclosive as a
    cohort's own (a fourth outside review subtracted the elderly's histogram by sex from the
    population's and read a young patient's bin); :func:`family_pattern` adds them to the system as
    cells that are never released but must not be determined when small.

    Parameters
    ----------
    membership : numpy.ndarray of bool, shape (rows, cohorts)

    Returns
    -------
    numpy.ndarray of bool, shape (rows, k), and the k labels
    """
    from mipflow.node.controls.study_cells import nested_differences

    member = np.asarray(membership, dtype=bool)
    names = [str(c) for c in range(member.shape[1])] if names is None else list(names)
    differences = nested_differences([(names[c], member[:, c]) for c in range(member.shape[1])])
    out = [rows for _, rows in differences]
    labels = [label for label, _ in differences]
    seen = {member[:, c].tobytes() for c in range(member.shape[1])} | {rows.tobytes() for rows in out}
    atoms, which = np.unique(member, axis=0, return_inverse=True)
    which = np.asarray(which).reshape(-1)
    for i, atom in enumerate(atoms):
        rows = which == i
        if atom.any() and rows.tobytes() not in seen:  # rows in no cohort are never counted
            seen.add(rows.tobytes())
            out.append(rows)
            labels.append("atom " + "".join("1" if v else "0" for v in atom))
    masks = np.column_stack(out) if out else np.zeros((member.shape[0], 0), dtype=bool)
    return masks, labels


def cohort_pattern(frame: Any, membership: np.ndarray, layout: Layout, model: Any, tab: int,
                   derived: np.ndarray | None = None, sensitive: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The cohorts' counts and hidden cells ``(cohorts, records, bins)`` of ``layout`` on ``frame``,
    protecting the :func:`derived_sets` of ``membership`` too (pass them to reuse them) and the
    ``sensitive`` cells (shape of cohorts and derived sets together)."""
    derived = derived_sets(membership) if derived is None else derived
    system = np.hstack([membership, derived])
    counts = cells(frame, system, layout, model)
    hidden = family_pattern(counts, system, layout, tab, derived=derived.shape[1], sensitive=sensitive)
    n = membership.shape[1]
    return counts[:n], hidden[:n]


def family_pattern(counts: np.ndarray, membership: np.ndarray, layout: Layout, tab: int,
                   derived: int = 0, sensitive: np.ndarray | None = None, null: np.ndarray | None = None
                   ) -> np.ndarray:
    """The hidden cells ``(cohorts, records, bins)`` of one layout over the family.

    The last ``derived`` columns of ``membership`` (and cohorts of ``counts``) are
    :func:`derived_sets`: never released, sensitive when small; their flags come back hidden.
    ``null``: :func:`~mipflow.node.controls.suppression.null_basis` of the family's relations, when
    another layout of the same shape computed it already.

    Raises
    ------
    DisclosureError
        (``nfilter_tab``) if a small cell follows from the known relations whatever is hidden.
    """
    from mipflow.node.controls.suppression import suppress

    unreleased = np.zeros(counts.shape, dtype=bool)
    if derived:
        unreleased[-derived:] = True
    with _one_thread():
        hidden = suppress(counts.reshape(-1), family_relations(membership, layout), tab, batch=BATCH,
                          unreleased=unreleased.reshape(-1),
                          sensitive=None if sensitive is None else np.asarray(sensitive, dtype=bool).reshape(-1),
                          null=null)
    return hidden.reshape(counts.shape)


def _one_thread() -> Any:
    """One BLAS thread for the decompositions (on a busy node, threads only fight; 5-10x faster)."""
    import contextlib

    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


_controller: list[Any] = []


def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once per process (a scan of the
    process' shared libraries takes ~10 ms; numpy's BLAS, the one used here, is loaded with numpy)."""
    if not _controller:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - an optional speed-up
            _controller.append(None)
        else:
            _controller.append(ThreadpoolController())
    return _controller[0]


# --------------------------------------------------------------------------- approval


def compute_patterns(store: Any, model: Any, protocol: Any, family: Any, hash_key: str, tab: int,
                     snapshot: str, previous: Patterns | None = None,
                     added_keys: np.ndarray | None = None) -> tuple[Patterns, dict[str, Any]]:
    """The study's patterns on the snapshot's rows (``family``: from ``compute_family``), with
    an admin-facing summary (cells, hidden cells, seconds per variable).

    At a refresh (``previous``: the patterns in force, with their counts; ``added_keys``: the row
    keys added or changed since), a cell of a cohort or of a nested difference whose rows added or
    removed are 1 to ``tab - 1`` must not be determined either: the same histogram before and after
    the refresh would subtract to them (a fifth outside review read a new patient's death so).

    Raises
    ------
    ConfigError
        Naming the variable whose pattern cannot be made safe.
    """
    from mipflow.node.controls.differencing import row_keys
    from mipflow.node.query.read import select_frame

    frame, keys = getattr(family, "frame", None), getattr(family, "frame_keys", None)
    if frame is None or keys is None:  # the family read them already (the same rows: the population's)
        frame = select_frame(store, model, datasets=list(protocol.datasets), variables=list(protocol.variables),
                             filters=protocol.population_filter, complete_case=True, row_identity=True)
        keys = row_keys(frame, hash_key)
    datasets = frame["dataset"].to_numpy(dtype=object)
    held = list(family.per_dataset)
    cohorts = cohorts_of(protocol, held)
    membership = np.zeros((len(frame), len(cohorts)), dtype=bool)
    for c, (subgroup, dataset) in enumerate(cohorts):
        rows = np.isin(keys, family.population if subgroup is None else family.subgroups[subgroup])
        membership[:, c] = rows if dataset is None else rows & (datasets == dataset)
    # cohorts with the same rows (a node holding one dataset: the population and the population in
    # that dataset) have the same cells: one set of cells, one pattern
    distinct, first, which = np.unique(membership, axis=1, return_index=True, return_inverse=True)
    which = np.asarray(which).reshape(-1)
    names = [json.dumps(list(cohorts[int(k)])) for k in first]
    derived, derived_names = derived_sets_labelled(distinct, names)
    system = np.hstack([distinct, derived])
    labels = names + derived_names
    added = None if added_keys is None else np.isin(keys, added_keys)
    hidden, found, summary, stored = {}, {}, {}, {}
    bases: dict[tuple[Any, ...], np.ndarray] = {}  # layouts alike (bins, records) share their relations
    for layout in layouts(protocol, model):
        started = time.perf_counter()
        shape = (layout.n_bins, layout.records)
        if shape not in bases:
            from mipflow.node.controls.suppression import null_basis

            with _one_thread():
                bases[shape] = null_basis(family_relations(system, layout))
        all_counts = cells(frame, system, layout, model)
        sensitive = None
        old = previous.counts.get(layout.variable) if previous is not None else None
        if old is not None and added is not None and previous.layouts.get(layout.variable) == layout:
            plus = cells(frame, system & added[:, None], layout, model)
            sensitive = np.zeros(all_counts.shape, dtype=bool)
            for i, label in enumerate(labels):
                if label in old:
                    minus = old[label] - all_counts[i] + plus[i]
                    sensitive[i] = ((plus[i] > 0) & (plus[i] < tab)) | ((minus > 0) & (minus < tab))
        try:
            flags = family_pattern(all_counts, system, layout, tab, derived=derived.shape[1], sensitive=sensitive,
                                   null=bases[shape])
        except DisclosureError:
            raise ConfigError(f"variable {layout.variable!r}: a histogram cell under nfilter_tab ({tab}) of a cohort, "
                              "of a difference of two nested cohorts or of rows alike in every cohort (or its "
                              "change since the last snapshot) follows from the study's cohorts and margins "
                              "whatever is hidden; use fewer histogram_bins, other subgroups, or leave the "
                              "variable out") from None
        counts = all_counts[:distinct.shape[1]]
        hidden[layout.variable] = flags[:distinct.shape[1]][which]
        stored[layout.variable] = {label: all_counts[i] for i, label in enumerate(labels)
                                   if not label.startswith("atom ")}
        found[layout.variable] = layout
        small = int(np.count_nonzero((counts > 0) & (counts < tab)))
        summary[layout.variable] = {"cells": int(counts.size), "small": small, "distinct_cohorts": len(counts),
                                    "derived_sets": int(derived.shape[1]),
                                    "changed_small": 0 if sensitive is None else int(np.count_nonzero(sensitive)),
                                    "hidden": int(np.count_nonzero(flags[:distinct.shape[1]])),
                                    "seconds": round(time.perf_counter() - started, 3)}
    return Patterns(snapshot=snapshot, tab=tab, cohorts=tuple(cohorts), layouts=found, hidden=hidden,
                    counts=stored), summary


# --------------------------------------------------------------------------- storage


def pattern_path(root: str | Path, project: str) -> Path:
    from mipflow.node.controls.study import _paths

    record_path, _ = _paths(Path(root), project)
    return record_path.with_name(f"{project}.suppression.npz")


def write_patterns(root: str | Path, project: str, patterns: Patterns) -> None:
    """Store the hidden flags (booleans only) and the layout they index, mode 0600."""
    from mipflow.node.controls.study import _write_private

    labels = {v: list(counts) for v, counts in patterns.counts.items()}
    meta = {"snapshot": patterns.snapshot, "tab": patterns.tab, "cohorts": [list(c) for c in patterns.cohorts],
            "layouts": {v: {"n_bins": lay.n_bins, "records": [list(r) for r in lay.records]}
                        for v, lay in patterns.layouts.items()}, "count_labels": labels}
    buffer = io.BytesIO()
    arrays = {f"hidden:{v}": flags.astype(bool) for v, flags in patterns.hidden.items()}
    arrays.update({f"counts:{v}": np.array([patterns.counts[v][label] for label in names], dtype=np.int64)
                   for v, names in labels.items() if names})
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    _write_private(pattern_path(root, project), buffer.getvalue())


def read_patterns(root: str | Path, project: str) -> Patterns | None:
    path = pattern_path(root, project)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"]))
        hidden = {name.split(":", 1)[1]: arrays[name].astype(bool) for name in arrays.files
                  if name.startswith("hidden:")}
        counts = {v: dict(zip(names, arrays[f"counts:{v}"])) for v, names in meta.get("count_labels", {}).items()
                  if names and f"counts:{v}" in arrays.files}
    lays = {v: Layout(v, int(d["n_bins"]), tuple(tuple(r) for r in d["records"]))  # type: ignore[misc]
            for v, d in meta["layouts"].items()}
    return Patterns(snapshot=meta["snapshot"], tab=int(meta["tab"]),
                    cohorts=tuple(tuple(c) for c in meta["cohorts"]), layouts=lays, hidden=hidden,  # type: ignore[misc]
                    counts=counts)


_cache: dict[Path, tuple[Any, Patterns | None]] = {}
_lock = threading.Lock()


def patterns_for(root: str | Path, project: str) -> Patterns | None:
    """The stored patterns of ``project``'s study, re-read when the file changes."""
    from mipflow.node.freshness import file_signature

    path = pattern_path(root, project)
    signature = file_signature(path)
    with _lock:
        seen = _cache.get(path)
        if seen is not None and seen[0] == signature:
            return seen[1]
        patterns = read_patterns(root, project) if signature is not None else None
        _cache[path] = (signature, patterns)
        return patterns


# --------------------------------------------------------------------------- at a step


def check_layout(study: Any, algorithm: str, analysis: Any, model: Any) -> None:
    """A histogram of a numerical study variable uses the protocol's ``histogram_bins`` (decided
    from the request, the protocol and the data model alone; control ``study``)."""
    if algorithm in SURVIVAL_ALGORITHMS:
        _check_survival_grid(study, analysis, algorithm)
        return
    if algorithm != HISTOGRAMS or not analysis.y:
        return
    var = model.variable(analysis.y[0])
    if var.is_categorical:
        return
    survival = study.protocol.survival
    if survival is not None and analysis.y[0] == survival["time"]:
        # its counts come from the survival partition; a histogram's left-closed bins beside the
        # partition's right-closed ends would leave single days between them (a fifth outside review)
        raise study._refuse(f"the survival time {survival['time']!r} is counted by the study's survival analyses "
                            "(Kaplan-Meier's numbers at risk and events on the study's survival partition), not by "
                            "histograms; use kaplan_meier")
    bins = study.protocol.histogram_bins
    asked = analysis.parameters.get("bins") if isinstance(analysis.parameters, dict) else None
    if asked != bins:
        raise study._refuse(f"histograms of its numerical variables have the study's bins ({bins} equal bins over "
                            f"the declared range); send the parameter bins = {bins}")


#: the algorithms that bin a time variable: in a study they take the protocol's survival grid and
#: the study's survival partition (ADR 0028)
SURVIVAL_ALGORITHMS = ("kaplan_meier", "cox_regression")
_TITLES = {"kaplan_meier": "Kaplan-Meier", "cox_regression": "Cox regression"}


def _check_survival_grid(study: Any, analysis: Any, algorithm: str = "kaplan_meier") -> None:
    """Survival analyses in a study use the protocol's survival grid: its time variable, bin width
    and event variable, no ``max_time`` (a requester's cut point censors later rows there, so
    sweeping it counts events up to any point; any numerical variable as "time" is a grouping by cut
    points: outside reviews recovered a young death's day through Kaplan-Meier and a patient's
    record through Cox regression this way).  Decided from the request and the protocol."""
    title = _TITLES.get(algorithm, algorithm)
    grid = study.protocol.survival
    if grid is None:
        raise study._refuse(f"{title} needs the study's survival grid, which this protocol does not declare "
                            "(the node admins add \"survival\": {\"time\": ..., \"bin_width\": ...})")
    parameters = analysis.parameters if isinstance(analysis.parameters, dict) else {}
    asked_width = parameters.get("bin_width", 1.0)
    try:
        same_width = asked_width is not None and float(asked_width) == float(grid["bin_width"])
    except (TypeError, ValueError):
        same_width = False
    time = analysis.y[0] if analysis.y else None
    event = analysis.y[1] if len(analysis.y or ()) > 1 else None
    if time != grid["time"] or not same_width or parameters.get("max_time") is not None \
            or ("event" in grid and event != grid["event"]):
        named = f", event variable {grid['event']!r}" if "event" in grid else ""
        raise study._refuse(f"{title} analyses take the study's survival grid: time variable "
                            f"{grid['time']!r}{named}, bin_width = {grid['bin_width']:g}, and no max_time")


def apply_pattern(root: str | Path, selection: Any, analysis: Any, model: Any, aggregates: Any) -> Any:
    """``aggregates`` of a study histogram with the family pattern's cells hidden (``None``).

    Histograms of a nominal variable keep the per-result suppression only (ADR 0035: left).

    Raises
    ------
    DisclosureError
        (control ``study``) if the study has no pattern for the numerical variable at its snapshot
        (a study approved before patterns existed: its node admin refreshes it).  Decided without data.
    """
    from mipflow.node.controls.suppression import is_histogram_release

    variable = analysis.y[0] if analysis.y else None
    if variable is None or model.variable(variable).is_categorical or not is_histogram_release(aggregates):
        return aggregates
    study = selection.study
    patterns = patterns_for(root, study.project)
    if patterns is None or patterns.snapshot != study.snapshot or variable not in patterns.hidden:
        raise study._refuse("its histograms are answered with the study's suppression pattern, which this node "
                            "has not computed for the snapshot; it is answered once its node admin refreshes the "
                            "study (mipflow study refresh)")
    layout, flags = patterns.layouts[variable], patterns.hidden[variable]
    index = {cohort: c for c, cohort in enumerate(patterns.cohorts)}
    held = [d for s, d in patterns.cohorts if s is None and d is not None]
    asked = [d for d in selection.datasets if d in held]
    parts = [index[(selection.subgroup, None)]] if set(asked) == set(held) else \
        [index[(selection.subgroup, d)] for d in asked]
    hidden = np.any(flags[parts], axis=0) if parts else np.zeros(flags.shape[1:], dtype=bool)
    where = {record: r for r, record in enumerate(layout.records)}
    out = []
    for record in aggregates["histograms"]:
        r = where[(record["grouping_var"], record["grouping_enum"])]
        counts = [None if hidden[r, j] else c for j, c in enumerate(record["counts"])]
        out.append({**record, "counts": counts})
    return {**aggregates, "histograms": out}
