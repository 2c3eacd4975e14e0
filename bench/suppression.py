"""The study family's suppression pattern (ADR 0035): the secondary-suppression search of
:mod:`mipflow.node.controls.suppression` beside its first implementation (the relations over the
hidden cells decomposed at every pass, kept in ``tests/.../suppression_reference.py``), on the
family a study of ``--rows`` stroke rows makes: population, elderly, women and men, over two
datasets and per dataset, with their nested differences and atoms; ``histogram_bins`` bins,
records overall and per level of sex and stroke type.

Prints CPU seconds (one BLAS thread, as at approval) per search, the ratio, and checks that both
hide the same cells.  Goal: >= 4x on the default family (an approval runs one search per
numerical study variable).

Usage: ``python bench/suppression.py [--rows 400] [--bins 10] [--repeat 1]``
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO)]


def main() -> None:
    from threadpoolctl import threadpool_limits

    from mipflow.node.controls import study_suppression as ss
    from mipflow.node.controls.suppression import suppress
    from tests.mipflow.algorithms.survival_data import STROKE, make_stroke
    from tests.mipflow.node.controls import suppression_reference as reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    frame = make_stroke(11, args.rows).dropna().reset_index(drop=True)
    frame["dataset"] = np.random.default_rng(1).choice(["a", "b"], len(frame), p=[0.6, 0.4])
    whole = np.ones(len(frame), dtype=bool)
    subgroups = [whole, (frame["age"] >= 65).to_numpy(), (frame["sex"] == "F").to_numpy(),
                 (frame["sex"] == "M").to_numpy()]
    per_dataset = [s & (frame["dataset"] == d).to_numpy() for d in ("a", "b") for s in subgroups]
    membership = np.unique(np.column_stack(subgroups + per_dataset), axis=1)
    system = np.hstack([membership, ss.derived_sets(membership)])
    records = [(None, None)] + [(v, level) for v in ("sex", "stroke_type")
                                for level in STROKE.variable(v).enumeration_codes]
    layout = ss.Layout("age", args.bins, tuple(records))
    counts = ss.cells(frame, system, layout, STROKE).reshape(-1)
    relations = ss.family_relations(system, layout)
    unreleased = np.zeros((system.shape[1], counts.size // system.shape[1]), dtype=bool)
    unreleased[membership.shape[1]:] = True
    kwargs = {"batch": ss.BATCH, "unreleased": unreleased.reshape(-1)}
    print(f"family: {membership.shape[1]} distinct cohorts + {system.shape[1] - membership.shape[1]} derived sets, "
          f"{counts.size} cells, {relations.shape[0]} relations")
    seconds: dict[str, list[float]] = {"first (row space per pass)": [], "mipflow (null space once)": []}
    patterns = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(args.repeat):
            for label, run in zip(seconds, (reference.suppress, suppress)):
                start = time.process_time()
                patterns[label] = run(counts, relations, 3, **kwargs)
                seconds[label].append(time.process_time() - start)
    first, mine = (statistics.median(v) for v in seconds.values())
    for label, values in seconds.items():
        print(f"{label:28s} {statistics.median(values):7.3f} s CPU (median of {args.repeat})")
    same = np.array_equal(*patterns.values())
    print(f"ratio {first / mine:.1f}x; same hidden cells: {same} ({int(patterns[label].sum())} of {counts.size})")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
