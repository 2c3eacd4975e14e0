"""The cost of the one ledger per node (ADR 0030): one check of a new cohort at a node that has
answered ``--cohorts`` distinct cohorts of ``--rows`` rows, half under each of two data models.

Measured in process on :class:`mipflow.node.controls.ledger.CohortLedger` (warm: the recorded
cohorts are in memory, as in a running node), repeated, p50 and p90 of the wall time of
``check`` for a cohort not answered before, overlapping the recorded ones (random subsets of one
population of patients):

* pairwise: the rules of ADR 0013 alone (rows, the cohort's own data model);
* ledger: with patients across data models and the chain rule (ADR 0030).

Goal: the ledger's check stays well under 100 ms at 200 cohorts of 5 000 rows.

Usage: ``python bench/ledger.py [--cohorts 200] [--rows 5000] [--repeat 20]``
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))


def main() -> None:
    from mipflow.node.controls.atoms import node_primes
    from mipflow.node.controls.ledger import CohortLedger, sorted_unique

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, default=200)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    population = rng.integers(0, 2**63, size=4 * args.rows, dtype=np.uint64)
    primes = node_primes(b"\x01" * 32)

    def cohort() -> np.ndarray:
        return sorted_unique(rng.choice(population, args.rows, replace=False))

    results = {}
    with tempfile.TemporaryDirectory() as root:
        ledger = CohortLedger(root)
        for i in range(args.cohorts):
            keys = cohort()
            ledger.record(f"m:{i % 2}", [keys], patients=[keys])
        for label, use in (("pairwise", False), ("ledger", True)):
            times = []
            for _ in range(args.repeat):
                keys = cohort()
                start = time.perf_counter()
                ledger.check("m:0", [keys], 10, patients=[keys] if use else None, primes=primes if use else None)
                times.append(time.perf_counter() - start)
            times.sort()
            results[label] = {"p50_ms": round(1000 * statistics.median(times), 1),
                              "p90_ms": round(1000 * times[int(0.9 * (len(times) - 1))], 1)}
        ledger.close()
    print(json.dumps({"cohorts": args.cohorts, "rows": args.rows, **results}, indent=2))


if __name__ == "__main__":
    main()
