"""Federation benchmarks, measured in one run against baselines from the same run.

1. Round latency: p50/p99 of one federated round (signed HTTP call to 3 loopback nodes in parallel,
   authentication, audit, disclosure checks, store query, local step) for a linear-regression local
   step, beside a bare round (unauthenticated /health on the same 3 servers).
2. Federated linear and logistic regression on 3 nodes x N rows x 10 covariates, beside the pooled
   baseline (read every row from the three stores, fit with statsmodels).

Usage: ``python bench/federation.py [--rows-per-node 200000] [--rounds 200] [--repeat 3] [--sqlite]``
(PostgreSQL at 127.0.0.1:5432 by default, as in production; ``--sqlite`` for SQLite stores.)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
N_COVARIATES = 10
COVARIATES = [f"x{i}" for i in range(N_COVARIATES)]


def model_doc() -> dict:
    from bench.common import regression_model_doc

    return regression_model_doc("bench", "Benchmark", 3, COVARIATES)


def make_rows(n: int, seed: int, site: int) -> pd.DataFrame:
    from bench.common import regression_rows

    return regression_rows(n, seed, f"site{site}", f"s{site}", COVARIATES)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows-per-node", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions of the fits (medians)")
    args = parser.parse_args()

    import httpx
    import statsmodels.api as sm

    from bench.common import central_clients, drop_node_caches, read_pooled, site_homes
    from mipflow.protocol.datamodel import DataModel
    from mipflow.central.rounds import run_analysis
    from tests.nodes import grant_all, load_frame, pin_each_other, running_nodes

    model = DataModel.from_dict(model_doc())
    with site_homes("fedbench", sqlite=args.sqlite) as homes:
        for site, home in enumerate(homes):
            t = time.perf_counter()
            load_frame(home.root, model, make_rows(args.rows_per_node, site, site))
            print(f"site{site}: loaded {args.rows_per_node} rows in {time.perf_counter() - t:.1f}s")
        pin_each_other([h.root for h in homes])  # three nodes mask by default: pinned peers (ADR 0014)
        with running_nodes([h.root for h in homes]) as urls:
            clients = central_clients(homes, urls)
            for h in homes:
                grant_all(h.root, "bench", "bench")
            who = {"researcher": "bench", "project": "bench"}
            request = {"inputdata": {"data_model": "bench:1", "datasets": ["site0", "site1", "site2"],
                                     "x": ["x0", "x1"], "y": ["y"], "filters": None}, "parameters": {}}
            small = {**request, "inputdata": {**request["inputdata"],
                                             "filters": {"condition": "AND", "rules": [
                                                 {"id": "x0", "operator": "greater", "value": 2.4}]}}}
            pool = ThreadPoolExecutor(3)
            bare = httpx.Client()
            bare_times, round_times, cold_times = [], [], []
            for i in range(args.rounds):
                t = time.perf_counter()
                list(pool.map(lambda u: bare.get(u + "/health"), urls))
                bare_times.append(time.perf_counter() - t)
                t = time.perf_counter()
                list(pool.map(lambda c: c.step("linear_regression", small, 0, None, **who), clients))
                round_times.append(time.perf_counter() - t)
                # a new selection (the store is queried) with the same rows: a rule that holds for
                # every row (|x1| is far below 1000), so the differencing control sees the same
                # cohort (a cohort a few rows away would rightly be refused, ADR 0013)
                cold = json.loads(json.dumps(small))
                cold["inputdata"]["filters"]["rules"].append(
                    {"id": "x1", "operator": "less", "value": 1000.0 + i})
                t = time.perf_counter()
                list(pool.map(lambda c: c.step("linear_regression", cold, 0, None, **who), clients))
                cold_times.append(time.perf_counter() - t)
            print(f"\nround latency over {args.rounds} rounds, 3 loopback nodes "
                  f"(linear_regression local step on the rows with x0 > 2.4, ~0.8% of each node):")
            print(f"  bare /health round:   p50 {percentile(bare_times, 50):6.2f} ms  "
                  f"p99 {percentile(bare_times, 99):6.2f} ms")
            print(f"  mipflow round, selection cached at the nodes (later rounds of an analysis): "
                  f"p50 {percentile(round_times, 50):6.2f} ms  p99 {percentile(round_times, 99):6.2f} ms  "
                  f"(p50 {np.median(round_times) / np.median(bare_times):.1f}x bare)")
            print(f"  mipflow round, new selection (store queried, first round): "
                  f"p50 {percentile(cold_times, 50):6.2f} ms  p99 {percentile(cold_times, 99):6.2f} ms  "
                  f"(p50 {np.median(cold_times) / np.median(bare_times):.1f}x bare)")

            covariates = COVARIATES
            full = {**request, "inputdata": {**request["inputdata"], "x": covariates}}
            logit_request = {**full, "inputdata": {**full["inputdata"], "y": ["event"]},
                             "parameters": {"positive_class": "yes"}}
            timings: dict[str, list[float]] = {k: [] for k in ("read", "ols", "logit", "fed_ols", "fed_logit")}
            for _repeat in range(args.repeat):  # interleaved: each repetition runs every contender once
                t = time.perf_counter()
                pooled = read_pooled(homes, f"SELECT y, event, {', '.join(covariates)} FROM dm_bench_1")
                timings["read"].append(time.perf_counter() - t)
                X = sm.add_constant(pooled[covariates])
                t = time.perf_counter()
                ols = sm.OLS(pooled["y"], X).fit()
                timings["ols"].append(time.perf_counter() - t)
                t = time.perf_counter()
                logit = sm.Logit((pooled["event"] == "yes").astype(float), X).fit(disp=0, tol=1e-8)
                timings["logit"].append(time.perf_counter() - t)
                drop_node_caches(homes, model)
                t = time.perf_counter()
                fed_ols = run_analysis("linear_regression", full, clients, min_nodes=3, **who)
                timings["fed_ols"].append(time.perf_counter() - t)
                drop_node_caches(homes, model)
                t = time.perf_counter()
                fed_logit = run_analysis("logistic_regression", logit_request, clients, min_nodes=3, **who)
                timings["fed_logit"].append(time.perf_counter() - t)
            med = {k: float(np.median(v)) for k, v in timings.items()}
            ratios_ols = [f / (r + o) for f, r, o in zip(timings["fed_ols"], timings["read"], timings["ols"])]
            ratios_logit = [f / (r + o) for f, r, o in
                            zip(timings["fed_logit"], timings["read"], timings["logit"])]
            read_s, ols_s, logit_s, fed_ols_s, fed_logit_s = (med[k] for k in timings)
            rel_ols = np.max(np.abs(np.array(fed_ols.result["coefficients"]) - ols.params.to_numpy())
                             / np.abs(ols.params.to_numpy()))
            rel_logit = np.max(np.abs(np.array(fed_logit.result["coefficients"]) - logit.params.to_numpy())
                               / np.abs(logit.params.to_numpy()))
            n = 3 * args.rows_per_node
            print(f"\n3 nodes x {args.rows_per_node} rows x {N_COVARIATES} covariates "
                  f"({'SQLite' if args.sqlite else 'PostgreSQL'} stores); pooled = read all rows + statsmodels; "
                  f"medians of {args.repeat} interleaved repetition(s)")
            print(f"  linear_regression:   federated {fed_ols_s:6.2f}s  pooled {read_s + ols_s:6.2f}s "
                  f"(read {read_s:.2f}s + fit {ols_s:.2f}s)  ratio {np.median(ratios_ols):.2f} "
                  f"(per repetition {', '.join(f'{r:.2f}' for r in ratios_ols)})  "
                  f"max rel diff {rel_ols:.1e}  n={fed_ols.result['n_obs']} of {n}")
            print(f"  logistic_regression: federated {fed_logit_s:6.2f}s  pooled {read_s + logit_s:6.2f}s "
                  f"(read {read_s:.2f}s + fit {logit_s:.2f}s)  ratio {np.median(ratios_logit):.2f} "
                  f"(per repetition {', '.join(f'{r:.2f}' for r in ratios_logit)})  "
                  f"max rel diff {rel_logit:.1e}  rounds={fed_logit.rounds}")
            from bench.common import node_peak_rss_mib

            peaks = {h.name: node_peak_rss_mib(h.root) for h in homes}
            print("  node peak memory (VmHWM) after both fits: " + ", ".join(
                f"{name} {peak:.0f} MiB" if peak is not None else f"{name} unknown" for name, peak in peaks.items())
                + " (selections kept between rounds: at most frame_cache_mb, default 1024 MiB)")
            for c in clients:
                c.close()

    return 0


if __name__ == "__main__":
    sys.exit(main())
