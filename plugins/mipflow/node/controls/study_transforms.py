"""The row transformations of a study (``log``/``exp`` of ``pca_with_transformation``, ADR 0053).

A transformation shapes a release: ``exp`` weights every sum by the exponential of a variable, so the
row with the largest value can take nearly all of a weighted mean (an eleventh outside review read
the patient with the highest glucose, her age and NIHSS, from one admitted request); ``log`` of a
value <= 0 and ``exp`` of a large one fail, and a failure that depends on the rows answers who is in
a cohort.  In a study both are fixed like ``histogram_bins`` (issue 14.4: release-shaping parameters
from the protocol, not the request):

* :func:`check_transformations`, at every request, from the request and the protocol alone: a
  ``pca_with_transformation`` request transforms each of its variables exactly as the protocol's
  ``data_transformation`` says (``center`` and ``standardize`` are affine maps of the released
  moments the central site applies: free); anything else is refused (control ``study``).
* :func:`transformation_problems`, at approval and refresh (the admin's one data-reading step), on
  the snapshot's population: ``log`` needs every value > 0; ``exp`` needs sums far from the float
  range, and every cohort of the family, every subgroup's complement and every atom a combination of
  the cohorts isolates (:mod:`mipflow.node.controls.atoms`) to hold at least ``min_row_count`` rows
  in each exp-weighted sum (:mod:`mipflow.algorithms.weighted`).  A union of such cohorts holds at
  least as many, so a request on some of the study's datasets passes too.

* :func:`check_weighted_history`, at approval: every cohort of the family under every weight family of
  the protocol's ``exp`` (:func:`mipflow.algorithms.weighted.exp_families`, as the algorithm declares
  its ``weight_families``) against the node's weighted memory, as ``check_weighted`` checks a standard
  release (ADR 0058: pairs, the chain rule and its backstop), and remembered there as the cohort ledger
  remembers the cohorts: a study's releases skip ``check_weighted``, so an earlier standard release of
  the same weighted sums (everyone, less a population aged >= 25: ten rows, one heavy) refuses the
  approval, and a later one meets the study's cohorts (twenty-second review, hole 3).

A study answers on its snapshot: rows loaded since are left out, and a changed or removed row
refuses every request of the study until a refresh, which runs these checks again.  No request of an
approved study can meet a failing transformation, a dominated sum or an overflow.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mipflow.algorithms.weighted import exp_log_weights, weighted_rows

#: The algorithm whose row transformations a study fixes.
TRANSFORMING = "pca_with_transformation"
#: The largest ``log`` of a sum of weights approval accepts: ``exp(690.8)`` is 1e300, 1.8e8 below
#: the float range, room for the centred co-moments and the products with other variables.
LOG_SUM_LIMIT = float(np.log(1e300))


def check_transformations(study: Any, algorithm: str, analysis: Any) -> None:
    """A ``pca_with_transformation`` request of the study transforms each variable as the protocol
    does (decided from the request and the protocol; control ``study``).

    Raises
    ------
    StudyRefusal
        For a variable transformed otherwise.
    RequestError
        For a malformed ``data_transformation`` (from the request alone).
    """
    if algorithm != TRANSFORMING:
        return
    from mipflow.algorithms.pca import ROW_TRANSFORMS, parse_transformations

    parameters = analysis.parameters if isinstance(analysis.parameters, dict) else {}
    asked = parse_transformations(parameters.get("data_transformation"), tuple(analysis.y))
    protocol = study.protocol
    for code in analysis.y:
        mine = next((m for m in ROW_TRANSFORMS if code in asked.get(m, [])), None)
        if mine != protocol.row_transform(code):
            wanted: dict[str, list[str]] = {}
            for c in analysis.y:
                method = protocol.row_transform(c)
                if method is not None:
                    wanted.setdefault(method, []).append(c)
            shown = ", ".join(f'"{m}": {c}' for m, c in wanted.items()).replace("'", '"')
            raise study._refuse("pca_with_transformation transforms the study's variables as its protocol fixes "
                                f"(log and exp); for these variables send data_transformation {{{shown}}} "
                                "(center and standardize as you choose)")


def transformation_values(frame: Any, protocol: Any, order: np.ndarray) -> dict[str, np.ndarray]:
    """The population's values of the protocol's transformed variables, in the sorted row order
    (none without ``pca_with_transformation`` or transformations)."""
    if TRANSFORMING not in protocol.algorithms or not protocol.data_transformation:
        return {}
    codes = [c for codes in protocol.data_transformation.values() for c in codes]
    return {c: frame[c].to_numpy(dtype=float)[order] for c in codes}


def _cohorts(family: Any, primes: Any) -> list[tuple[str, np.ndarray]]:
    """Masks over the population's rows: every cohort, every subgroup's complement (whole and per
    dataset), every atom a combination of the cohorts isolates."""
    from mipflow.node.controls.atoms import Atoms, isolatable

    population = family.population
    labelled = [(label, np.isin(population, keys, assume_unique=True)) for label, keys in family.sets()]
    out = list(labelled)
    for name, keys in family.subgroups.items():
        out.append((f"the population outside subgroup {name!r}", ~np.isin(population, keys, assume_unique=True)))
    for dataset, cohorts in family.per_dataset.items():
        whole = np.isin(population, cohorts[None], assume_unique=True)
        for name, keys in cohorts.items():
            if name is not None:
                out.append((f"the population outside subgroup {name!r} in dataset {dataset!r}",
                            whole & ~np.isin(population, keys, assume_unique=True)))
    if primes is not None and labelled:
        signature = np.column_stack([mask for _, mask in labelled])
        kinds, inverse, sizes = np.unique(signature, axis=0, return_inverse=True, return_counts=True)
        inverse = np.asarray(inverse).ravel()
        atoms = Atoms(incidence=kinds.T.astype(np.uint8), sizes=sizes.astype(np.int64))
        for a in np.flatnonzero(isolatable(atoms, primes)):
            out.append((f"an atom of the study's cohorts (rows of one membership, {int(sizes[a])} row(s))",
                        inverse == a))
    return out


def transformation_problems(family: Any, protocol: Any, min_row_count: int, primes: Any = None) -> list[str]:
    """What makes the protocol's transformations unsafe on ``family`` (admin-facing, with counts;
    empty when there is nothing to check)."""
    values = family.transformed
    if not values:
        return []
    problems = []
    for code in (protocol.data_transformation or {}).get("log", ()):
        bad = int(np.count_nonzero(~(values[code] > 0)))
        if bad:
            problems.append(f"log of {code!r}: {bad} row(s) of the population hold a value <= 0")
    exp = list((protocol.data_transformation or {}).get("exp", ()))
    if not exp:
        return problems
    matrix = np.column_stack([values[c] for c in exp])
    columns = list(range(len(exp)))
    for log_w in exp_log_weights(matrix, columns):
        top = float(log_w.max()) if log_w.size else 0.0
        if top + np.log(weighted_rows(log_w) or 1.0) > LOG_SUM_LIMIT:
            problems.append(f"exp of {', '.join(map(repr, exp))}: the population's sums of exponentials reach the "
                            "float range (values over ~345)")
            return problems
    for label, mask in _cohorts(family, primes):
        if not mask.any():
            continue
        held = min(weighted_rows(w) for w in exp_log_weights(matrix[mask], columns))
        if held < min_row_count:
            problems.append(f"exp of {', '.join(map(repr, exp))}: in {label}, the largest values take so much of "
                            f"the exp-weighted sums that they hold {held:.1f} row(s)")
    return problems


def check_transformed(family: Any, protocol: Any, min_row_count: int, primes: Any, failed: str,
                      stays: str = "") -> None:
    """Approval's and refresh's check (:func:`transformation_problems`).

    Raises
    ------
    ConfigError
        For the admin: ``failed``, the first problems, what to change, and ``stays``.
    """
    from mipflow.exceptions import ConfigError

    problems = transformation_problems(family, protocol, min_row_count, primes)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ConfigError(f"{failed}: the protocol's data_transformation is not safe on these rows "
                          f"(min_row_count {min_row_count}): {shown}. Remove the transformation from the protocol "
                          f"or choose broader subgroups (docs/adr/0053-release-shaping-transformations.md){stays}")


def weighted_releases(home: Any, store: Any, model: Any, family: Any, protocol: Any) -> tuple[Any, list, Any]:
    """The weight families of the protocol's ``exp``, the family's distinct cohorts as releases of each
    (row keys, log-weights from the rows as a standard step reads them, patients) and the reader of a data
    model's current rows (:func:`mipflow.node.controls.weighted_ledger.read_population`)."""
    from mipflow.algorithms.weighted import exp_families
    from mipflow.node.controls.differencing import hash_key
    from mipflow.node.controls.weighted_ledger import FamilyRows, population_reader

    exp = list((protocol.data_transformation or {}).get("exp", ())) if TRANSFORMING in protocol.algorithms else []
    families = exp_families(exp)
    if not families:
        return families, [], None

    def model_of(data_model: str) -> Any:
        try:
            return model if data_model == model.key else store.data_model(data_model)
        except Exception:  # noqa: BLE001 - the data model is gone: weights unknown
            return None

    read = population_reader(store, model_of, hash_key(home.key()), bool(home.settings.columnar_snapshot))

    releases, seen = [], set()
    for _, keys in family.sets():
        ident = keys.tobytes()
        if not len(keys) or ident in seen:
            continue
        seen.add(ident)
        mask = np.isin(family.population, keys, assume_unique=True)
        for f in families:
            taken = read(model.key, f.variables).take(keys, f)
            if taken is None:  # not a current row complete on the variables: the values approval read
                taken = (f.log_weights({c: family.transformed[c][mask] for c in f.variables}),
                         None if family.row_patients is None else family.row_patients[mask])
            releases.append(FamilyRows(f.name, model.key, keys, *taken))
    return families, releases, read


def check_weighted_history(home: Any, store: Any, model: Any, family: Any, protocol: Any, min_row_count: int,
                           failed: str) -> list:
    """Approval's check of the study's exp-weighted cohorts against the node's weighted memory (ADR 0058;
    see the module).  Returns the releases to remember once approved.

    Raises
    ------
    ConfigError
        ``failed``, the rule and the setting: no count, no value (control ``dominated_sums``'s words).
    """
    from mipflow.exceptions import ConfigError
    from mipflow.node.controls.atoms import node_primes
    from mipflow.node.controls.differencing import hash_key
    from mipflow.node.controls.weighted_ledger import WeightedMemory

    families, releases, read = weighted_releases(home, store, model, family, protocol)
    if not releases or not home.settings.differencing_check:
        return releases
    memory = WeightedMemory(home.root, hash_key(home.key()), node_primes(home.key()))
    try:
        allowed = memory.check(releases, families, min_row_count, read, store.consent_applied())
    finally:
        memory.close()
    if not allowed:
        raise ConfigError(f"{failed}: an exp-weighted sum of the study's cohorts, less the same weighted sum of an "
                          "earlier release of this node over overlapping rows, is dominated by fewer rows than "
                          f"min_row_count ({min_row_count}) (dominated_sums): remove the exp transformation from the "
                          "protocol or choose a population and subgroups that repeat or stay far from the cohorts "
                          "already analysed with it (docs/adr/0058-weighted-differencing.md)")
    return releases


def remember_weighted_cohorts(home: Any, releases: list, epoch: str) -> None:
    """Remember an approved study's exp-weighted cohorts (:func:`check_weighted_history`'s releases)."""
    if not releases:
        return
    from mipflow.node.controls.atoms import node_primes
    from mipflow.node.controls.differencing import hash_key
    from mipflow.node.controls.weighted_ledger import WeightedMemory

    memory = WeightedMemory(home.root, hash_key(home.key()), node_primes(home.key()))
    try:
        memory.record(releases, epoch)
    finally:
        memory.close()


__all__ = ["LOG_SUM_LIMIT", "TRANSFORMING", "check_transformations", "check_transformed", "check_weighted_history",
           "remember_weighted_cohorts", "transformation_problems", "transformation_values", "weighted_releases"]
