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


__all__ = ["LOG_SUM_LIMIT", "TRANSFORMING", "check_transformations", "check_transformed", "transformation_problems",
           "transformation_values"]
