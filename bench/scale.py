"""How a node scales with its rows: memory, first and later rounds, beside pooled and the physical floor.

N node processes (``mipflow node serve``) x R rows x 10 covariates each; measured in one run:

1. First round at the nodes (a new selection: the store is read, cohorts keyed, the local step run)
   and a later round (the selection kept between rounds), of a one-round linear regression step.
2. Federated linear and logistic regression end to end (``run_analysis``, as the central site runs
   them; secure aggregation with 3 nodes or more, as by default), each from cold node caches.
3. Each node's peak resident memory (``VmHWM`` of the node process, from ``/proc``), beside its
   resident memory once started (before any analysis).
4. The pooled baseline: every row read from the stores into pandas, fitted with statsmodels.
5. The physical floor: the linear regression's sufficient statistics (centred normal equations)
   from numpy arrays already in memory, and solved.

Usage::

    python bench/scale.py [--nodes 1] [--rows 200000] [--postgres] [--no-logistic] [--no-pooled]
    python bench/scale.py --nodes 1 --rows 1000000          # memory and first round at 1M rows
    python bench/scale.py --nodes 10 --rows 100000          # ten nodes
    python bench/scale.py --nodes 30 --rows 1000000 --no-pooled --no-logistic   # the issue's target

Stores are SQLite by default (the embedded default); ``--postgres`` gives each node its own
PostgreSQL database at 127.0.0.1:5432.  With SQLite the first node's store is copied to the others
(same rows under each node's own keys: loading 30 x 1M rows would dominate the run), with
``--distinct-rows`` every node loads rows of its own.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
N_COVARIATES = 10
COVARIATES = [f"x{i}" for i in range(N_COVARIATES)]
WHO = {"researcher": "bench", "project": "bench"}


def model_doc(nodes: int) -> dict:
    from bench.common import regression_model_doc

    return regression_model_doc("scale", "Scale benchmark", nodes, COVARIATES)


def make_rows(n: int, seed: int, dataset: str) -> pd.DataFrame:
    from bench.common import regression_rows

    return regression_rows(n, seed, dataset, f"s{seed}", COVARIATES)


def rss_mib(pid: int, field: str) -> float:
    from bench.common import status_mib

    value = status_mib(pid, field)
    return float("nan") if value is None else value


def load(homes, model, rows: int, distinct: bool, sqlite: bool) -> None:
    from tests.nodes import grant_all, load_frame

    for site, home in enumerate(homes):
        t = time.perf_counter()
        if site and sqlite and not distinct:
            shutil.copyfile(Path(homes[0].root) / "store.sqlite", Path(home.root) / "store.sqlite")
            how = "copied"
        else:
            frame = make_rows(rows, site, "site0" if not distinct else f"site{site}")
            load_frame(home.root, model, frame)
            del frame
            how = "loaded"
        grant_all(home.root, "bench", "bench")
        if site < 3 or site == len(homes) - 1:
            print(f"{home.name}: {how} {rows} rows in {time.perf_counter() - t:.1f}s", flush=True)


def floor_seconds(x: np.ndarray, y: np.ndarray) -> float:
    """Centred normal equations from arrays in memory (one pass for the means, one for the co-moments)."""
    t = time.perf_counter()
    z = np.column_stack([x, y])
    mean = z.mean(axis=0)
    zc = z - mean
    m2 = zc.T @ zc
    np.linalg.solve(m2[:-1, :-1], m2[:-1, -1])
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per node")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL stores instead of SQLite")
    parser.add_argument("--distinct-rows", action="store_true", help="every node loads rows of its own")
    parser.add_argument("--no-logistic", action="store_true")
    parser.add_argument("--no-pooled", action="store_true", help="skip the pooled baseline (all rows in one process)")
    parser.add_argument("--later", type=int, default=5, help="later rounds measured (median)")
    args = parser.parse_args()

    from bench.common import central_clients, drop_node_caches, node_pids, print_machine, read_pooled, site_homes
    from mipflow.central.rounds import run_analysis
    from mipflow.protocol.datamodel import DataModel
    from tests.nodes import running_nodes

    print_machine()
    sqlite = not args.postgres
    distinct = args.distinct_rows or not sqlite
    model = DataModel.from_dict(model_doc(args.nodes if distinct else 1))
    datasets = [f"site{i}" for i in range(args.nodes)] if distinct else ["site0"]
    request = {"inputdata": {"data_model": "scale:1", "datasets": datasets, "x": COVARIATES, "y": ["y"],
                             "filters": None}, "parameters": {}}
    logit_request = {"inputdata": {**request["inputdata"], "y": ["event"]}, "parameters": {"positive_class": "yes"}}
    store_kind = "SQLite" if sqlite else "PostgreSQL"
    print(f"{args.nodes} node(s) x {args.rows} rows x {N_COVARIATES} covariates, {store_kind} stores")
    with site_homes("scale", sqlite=sqlite, sites=args.nodes) as homes:
        load(homes, model, args.rows, distinct, sqlite)
        if args.nodes >= 3:  # secure aggregation (on by default from 3 nodes) needs the peers' pinned keys
            from tests.nodes import pin_each_other

            pin_each_other([h.root for h in homes])
        with running_nodes([h.root for h in homes], timeout=120.0) as urls:
            clients = central_clients(homes, urls, timeout=600.0)
            pids = node_pids(homes)
            idle = {name: rss_mib(pid, "VmRSS") for name, pid in pids.items()}
            one = clients[0]
            # 1. one node's step: first round (new selection), then later rounds (selection kept)
            t = time.perf_counter()
            one.step("linear_regression", request, 0, None, **WHO)
            first = time.perf_counter() - t
            later = []
            for _ in range(args.later):
                t = time.perf_counter()
                one.step("linear_regression", request, 0, None, **WHO)
                later.append(time.perf_counter() - t)
            peak_one = rss_mib(pids[homes[0].name], "VmHWM")
            # 2. federated analyses end to end, every node cold
            drop_node_caches(homes, model)
            t = time.perf_counter()
            fed_ols = run_analysis("linear_regression", request, clients, min_nodes=args.nodes, **WHO)
            fed_ols_s = time.perf_counter() - t
            t = time.perf_counter()
            run_analysis("linear_regression", request, clients, min_nodes=args.nodes, **WHO)
            fed_ols_warm = time.perf_counter() - t
            fed_logit = None
            if not args.no_logistic:
                drop_node_caches(homes, model)
                t = time.perf_counter()
                fed_logit = run_analysis("logistic_regression", logit_request, clients, min_nodes=args.nodes, **WHO)
                fed_logit_s = time.perf_counter() - t
            peaks = {name: rss_mib(pid, "VmHWM") for name, pid in pids.items()}
            for c in clients:
                c.close()
        print(f"\nnode memory: resident once started {np.median(list(idle.values())):.0f} MiB (median); "
              f"peak after one linear step {peak_one:.0f} MiB; peak after every analysis "
              f"{max(peaks.values()):.0f} MiB (largest node), {np.median(list(peaks.values())):.0f} MiB (median)")
        print(f"one node, linear_regression step over HTTP: first round {first * 1000:.0f} ms, later rounds "
              f"{np.median(later) * 1000:.1f} ms (median of {args.later})")
        print(f"federated linear_regression end to end: cold {fed_ols_s:.2f} s, warm {fed_ols_warm:.2f} s "
              f"(n={fed_ols.result['n_obs']})")
        if fed_logit is not None:
            print(f"federated logistic_regression end to end: cold {fed_logit_s:.2f} s, {fed_logit.rounds} rounds")

        if not args.no_pooled:
            import statsmodels.api as sm

            t = time.perf_counter()
            pooled = read_pooled(homes, f"SELECT y, event, {', '.join(COVARIATES)} FROM dm_scale_1")
            read_s = time.perf_counter() - t
            X = sm.add_constant(pooled[COVARIATES])
            t = time.perf_counter()
            ols = sm.OLS(pooled["y"], X).fit()
            ols_s = time.perf_counter() - t
            rel = np.max(np.abs(np.array(fed_ols.result["coefficients"]) - ols.params.to_numpy())
                         / np.abs(ols.params.to_numpy()))
            print(f"pooled (read every row + statsmodels): read {read_s:.2f} s, OLS {ols_s:.2f} s; "
                  f"federated linear / pooled = {fed_ols_s / (read_s + ols_s):.2f} (cold), "
                  f"{fed_ols_warm / (read_s + ols_s):.2f} (warm); max rel diff {rel:.1e}")
            if fed_logit is not None:
                t = time.perf_counter()
                logit = sm.Logit((pooled["event"] == "yes").astype(float), X).fit(disp=0, tol=1e-8)
                logit_s = time.perf_counter() - t
                rel = np.max(np.abs(np.array(fed_logit.result["coefficients"]) - logit.params.to_numpy())
                             / np.abs(logit.params.to_numpy()))
                print(f"pooled logistic: Logit {logit_s:.2f} s; federated logistic / pooled = "
                      f"{fed_logit_s / (read_s + logit_s):.2f}; max rel diff {rel:.1e}")
            x = pooled[COVARIATES].to_numpy()
            y = pooled["y"].to_numpy()
            del pooled, X
            floor = floor_seconds(x, y)
            print(f"physical floor (centred normal equations from arrays in memory, {len(y)} rows): "
                  f"{floor * 1000:.0f} ms; federated linear cold / floor = {fed_ols_s / floor:.0f}x")
        else:
            rng = np.random.default_rng(0)
            x = rng.normal(size=(args.rows, N_COVARIATES))
            floor = floor_seconds(x, x @ np.ones(N_COVARIATES))
            print(f"physical floor (centred normal equations, one node's {args.rows} rows in memory): "
                  f"{floor * 1000:.0f} ms; first round / floor = {first / floor:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
