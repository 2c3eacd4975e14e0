"""Federated k-means beside pooled k-means, measured in the same run.

Three nodes hold N rows each of 3 numerical variables drawn around 4 centres.
Federated: :func:`mipflow.central.rounds.run_analysis` of ``kmeans`` (k=4, tol,
maxiter 100) over the three loopback node services: one moments round, the
Lloyd rounds, one evaluation round.  Pooled baseline: read every row from the
three stores, then scikit-learn's ``KMeans(algorithm="lloyd", n_init=1)`` from
the same initial centres with the equivalent tolerance, and a plain numpy
Lloyd loop.  Prints rounds, wall times, ratios and the largest relative
difference of the centres.  With default disclosure settings the nodes'
differencing control may end the run before full convergence (``stopped`` in
the result, ADR 0020; since the exact minimum-cut rule of ADR 0013 only when a
round would single out fewer than ``nfilter_tab`` rows): the centres are then
compared with the pooled numpy Lloyd run for the same number of updates (they
must agree to rounding), and the fully converged references (and the Frobenius
distance to them) show how far the privacy stop is from them.

Usage: ``python bench/kmeans.py [--rows-per-node 1000000] [--sqlite]``
(PostgreSQL at 127.0.0.1:5432 by default; ``--sqlite`` for SQLite stores.)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# this checkout's code, here and in the node services it starts (not an installed copy)
sys.path.insert(0, str(REPO / "plugins"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"),
                                            *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
VARIABLES = ("v0", "v1", "v2")
TRUE_CENTRES = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, -1.0], [4.0, 5.0, 3.0]])


def model_doc() -> dict:
    variables = [{"code": "dataset", "sql_type": "text", "isCategorical": True,
                  "enumerations": [{"code": f"site{i}", "label": f"Site {i}"} for i in range(3)]}]
    variables += [{"code": v, "sql_type": "real", "isCategorical": False} for v in VARIABLES]
    return {"code": "kbench", "version": "1", "label": "k-means benchmark", "variables": variables}


def make_rows(n: int, site: int) -> pd.DataFrame:
    rng = np.random.default_rng(100 + site)
    which = rng.integers(0, len(TRUE_CENTRES), size=n)
    values = TRUE_CENTRES[which] + rng.normal(scale=1.2, size=(n, len(VARIABLES)))
    frame = pd.DataFrame(values, columns=list(VARIABLES))
    frame.insert(0, "dataset", f"site{site}")
    frame.insert(0, "subjectcode", [f"s{site}-{i}" for i in range(n)])
    return frame


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows-per-node", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()

    from sklearn.cluster import KMeans

    from bench.common import loaded_federation, print_machine, read_pooled
    from mipflow.algorithms.kmeans import principal_axis_centres
    from mipflow.protocol.datamodel import DataModel
    from mipflow.central.rounds import run_analysis
    from tests.mipflow.algorithms.test_kmeans import numpy_lloyd
    from tests.nodes import PROJECT, RESEARCHER

    print_machine()
    model = DataModel.from_dict(model_doc())
    with loaded_federation("kmbench", model, lambda site: make_rows(args.rows_per_node, site),
                           rows_per_node=args.rows_per_node, sqlite=args.sqlite, pinned=True) as (homes, clients, round_log):
        request = {"inputdata": {"data_model": "kbench:1", "datasets": ["site0", "site1", "site2"],
                                 "x": [], "y": list(VARIABLES), "filters": None},
                   "parameters": {"k": args.k, "tol": args.tol, "maxiter": 100}}
        t = time.perf_counter()
        outcome = run_analysis("kmeans", request, clients, min_nodes=3,
                           researcher=RESEARCHER, project=PROJECT)
        fed_s = time.perf_counter() - t

        t = time.perf_counter()
        values = read_pooled(homes, f"SELECT {', '.join(VARIABLES)} FROM dm_kbench_1").dropna().to_numpy(dtype=float)
        read_s = time.perf_counter() - t
        start = principal_axis_centres(values.mean(axis=0), np.cov(values, rowvar=False), args.k)
        t = time.perf_counter()
        sk = KMeans(n_clusters=args.k, init=start, n_init=1, algorithm="lloyd", max_iter=100,
                    tol=args.tol ** 2 / float(np.mean(np.var(values, axis=0)))).fit(values)
        sk_s = time.perf_counter() - t
        t = time.perf_counter()
        ref = numpy_lloyd(values, start, args.tol, 100)
        np_s = time.perf_counter() - t
        centres = np.asarray(outcome.result["centers"])
        stopped = outcome.result.get("stopped")
        if stopped:  # the same number of updates, never stopping on tol
            same = numpy_lloyd(values, start, -1.0, outcome.result["n_iter"])["centers"]
            rel_same = float(np.max(np.abs(centres - same) / np.abs(same)))
        rel_sk = float(np.max(np.abs(centres - sk.cluster_centers_) / np.abs(sk.cluster_centers_)))
        rel_np = float(np.max(np.abs(centres - ref["centers"]) / np.abs(ref["centers"])))
        store = "SQLite" if args.sqlite else "PostgreSQL"
        print(f"\nkmeans k={args.k}, tol={args.tol:g}, 3 nodes x {args.rows_per_node} rows x "
              f"{len(VARIABLES)} variables ({store} stores)")
        print(f"  federated: {fed_s:7.2f}s  {outcome.rounds} rounds ({outcome.result['n_iter']} Lloyd "
              f"updates + moments{'' if stopped else ' + evaluation'}), "
              f"converged={outcome.result['converged']}")
        if stopped:
            print(f"  stopped: reason={stopped['reason']} control={stopped['control']} at round "
                  f"{stopped['round']} by {', '.join(stopped['nodes'])}; last shift "
                  f"{outcome.result['last_shift']:.2e} (tol {args.tol:g}); inertia of the "
                  f"{outcome.result['inertia_of']}; max rel diff of centres vs pooled numpy Lloyd with "
                  f"the same {outcome.result['n_iter']} updates {rel_same:.1e}")
        print(f"  pooled sklearn: {read_s + sk_s:7.2f}s (read {read_s:.2f}s + fit {sk_s:.2f}s, "
              f"{sk.n_iter_} iterations)  ratio federated/pooled {fed_s / (read_s + sk_s):.2f}  "
              f"max rel diff of centres {rel_sk:.1e}")
        print(f"  pooled numpy Lloyd: {read_s + np_s:7.2f}s (read {read_s:.2f}s + fit {np_s:.2f}s, "
              f"{ref['n_iter']} iterations)  ratio {fed_s / (read_s + np_s):.2f}  "
              f"max rel diff of centres {rel_np:.1e}, Frobenius distance "
              f"{float(np.linalg.norm(centres - ref['centers'])):.1e}")
        print(round_log.table(homes, "kmeans", summary=True))

    return 0


if __name__ == "__main__":
    sys.exit(main())
