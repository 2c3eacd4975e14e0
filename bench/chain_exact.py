"""The cost of the chain rule's exact backstop (ADR 0030 amended, :mod:`mipflow.node.controls.chain_exact`): one
check of a new cohort at a node that remembers ``--sets`` cohorts of its data model, every one in the family.

Two families over ``--rows`` rows:

* ``filters``: cohorts an honest session makes: age bands of 5 to 40 years (random ends), each alone, by sex and
  by one of four stroke types (the rows' own values), so that the family's atoms are the cells of a grid;
* ``random``: random subsets of a tenth of the rows (the worst case: every row its own atom soon).

Measured in process: the first check (cold: the state built over every remembered set), then ``--repeat`` checks of
new cohorts against the warm cache (p50, p90; each check adds the request's cohort to a copy), and the
``chain_allows`` call around it for the window rule's cost beside it (the backstop with the union rule at
``min_row_count``, as ``chain_allows`` runs it, and without it).  Prints JSON.

Usage: ``python bench/chain_exact.py [--sets 300] [--rows 20000] [--repeat 20] [--family filters|random]``
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))


def cohorts(kind: str, n: int, rows: int, rng: np.random.Generator) -> list[np.ndarray]:
    keys = np.sort(rng.choice(np.iinfo(np.int64).max, rows, replace=False)).astype(np.uint64)
    if kind == "random":
        return [np.sort(rng.choice(keys, rows // 10, replace=False)) for _ in range(n)]
    age = rng.uniform(18, 95, rows)
    sex = rng.integers(0, 2, rows)
    kind_of = rng.integers(0, 4, rows)
    out = []
    for _ in range(n):
        low = float(rng.uniform(18, 80))
        mask = (age >= low) & (age < low + float(rng.uniform(5, 40)))
        cut = rng.integers(0, 3)
        if cut == 1:
            mask &= sex == rng.integers(0, 2)
        elif cut == 2:
            mask &= kind_of == rng.integers(0, 4)
        out.append(keys[mask])
    return out


def main() -> None:
    from mipflow.node.controls import chain_exact
    from mipflow.node.controls.atoms import node_primes
    from mipflow.node.controls.chain import ChainSet, backstop_allows, chain_allows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=300)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--family", choices=("filters", "random"), default="filters")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    primes = node_primes(b"bench-chain-exact")
    made = cohorts(args.family, args.sets + args.repeat + 1, args.rows, rng)
    old = [ChainSet("dm", c, None, 10) for c in made[:args.sets]]
    fresh = [ChainSet("dm", c, None, 10) for c in made[args.sets:]]

    def level(s):
        return min(s.threshold, 10)

    def backstop(new, unions=None):
        return backstop_allows("dm", [old, []], [new], level, primes, unions_from=unions)

    start = time.perf_counter()
    backstop(fresh[0])
    cold = time.perf_counter() - start
    state = chain_exact.remembered((tuple(primes), "dm", 10), [[s.rows for s in old], []], primes)
    warm, with_unions, whole, refused, refused_unions = [], [], [], 0, 0
    for new in fresh[1:]:
        start = time.perf_counter()
        refused += not backstop(new)
        warm.append(time.perf_counter() - start)
        start = time.perf_counter()
        refused_unions += not backstop(new, unions=10)
        with_unions.append(time.perf_counter() - start)
        start = time.perf_counter()
        chain_allows("dm", old, [], [new], 10, primes)
        whole.append(time.perf_counter() - start)
    ms = lambda xs, q: round(1000 * float(np.quantile(xs, q)), 1)  # noqa: E731
    print(json.dumps({"family": args.family, "sets": args.sets, "rows": args.rows, "atoms": state.atoms,
                      "rank": state.reduced[0].shape[0], "over_bound": state.over, "cold_ms": round(1000 * cold, 1),
                      "backstop_p50_ms": ms(warm, 0.5), "backstop_p90_ms": ms(warm, 0.9),
                      "with_unions_p50_ms": ms(with_unions, 0.5), "with_unions_p90_ms": ms(with_unions, 0.9),
                      "refused_by_unions": refused_unions,
                      "chain_allows_p50_ms": ms(whole, 0.5), "chain_allows_p90_ms": ms(whole, 0.9),
                      "refused_by_backstop": refused, "checks": len(warm),
                      "median_cohort_rows": int(statistics.median(len(c) for c in made))}))


if __name__ == "__main__":
    main()
