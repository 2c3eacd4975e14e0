"""Longitudinal models benchmark (issue 17): GEE and the linear mixed model, federated beside pooled statsmodels.

3 nodes x N patients x 5 visits (``bench/lmm.py``'s rows: a visit time, an outcome with a random
intercept and slope per patient, two numerical covariates and a nominal one with three levels), on
PostgreSQL stores by default.  Two analyses, each federated through the three node processes (secure
aggregation on, as it is by default from 3 nodes; rounds verified by every node) and timed from the
first request to the result:

- ``gee``, Gaussian, exchangeable working correlation (statsmodels' defaults);
- ``linear_mixed_model``, random intercept, REML;

beside the pooled baseline in the same run: every row read from the three stores (one read, counted
in both baselines) and ``GEE(...).fit()`` / ``MixedLM(...).fit(reml=True)`` with statsmodels' defaults.
Printed: rounds, wall times, ratios federated / pooled (goal <= 0.3), largest relative differences
of the coefficients, each node process's peak resident memory (``VmHWM``) after both analyses, and
this process's peak (the pooled baseline's).

Usage: ``python bench/longitudinal.py [--patients-per-node 100000] [--sqlite] [--only gee|lmm]``
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lmm import NUMERICAL, VISITS, make_rows, model_doc  # noqa: E402  (also sets up this checkout's paths)

X = ["arm", *NUMERICAL, "months"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients-per-node", type=int, default=100_000)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--only", choices=("gee", "lmm"))
    args = parser.parse_args()

    import statsmodels.api as sm

    from bench.common import loaded_federation, node_peak_rss_mib, print_machine, read_pooled
    from mipflow.central.rounds import run_analysis
    from mipflow.protocol.datamodel import DataModel
    from tests.nodes import PROJECT, RESEARCHER

    print_machine()
    model = DataModel.from_dict(model_doc())
    patients = args.patients_per_node
    rows_per_node = patients * VISITS
    datasets = ["site0", "site1", "site2"]
    analyses = {
        "gee": ("gee", {"family": "gaussian", "cov_struct": "exchangeable"}),
        "lmm": ("linear_mixed_model", {"random_effects": "intercept", "method": "reml"}),
    }
    chosen = [args.only] if args.only else list(analyses)
    federated: dict[str, tuple[float, object]] = {}
    tables: dict[str, str] = {}
    with loaded_federation("longbench", model, lambda site: make_rows(patients, 300 + site, site),
                           rows_per_node=rows_per_node, sqlite=args.sqlite, visit_column="visit",
                           pinned=True) as (homes, clients, round_log):
        for key in chosen:
            algorithm, parameters = analyses[key]
            request = {"inputdata": {"data_model": "lmmbench:1", "datasets": datasets, "x": X, "y": ["y"],
                                     "filters": None}, "parameters": parameters}
            round_log.calls.clear()
            t = time.perf_counter()
            outcome = run_analysis(algorithm, request, clients, min_nodes=3, researcher=RESEARCHER, project=PROJECT)
            federated[key] = (time.perf_counter() - t, outcome)
            assert outcome.secure_aggregation.get("enabled") is True, outcome.secure_aggregation
            tables[key] = round_log.table(homes, algorithm, summary=True)
        peaks = {h.name: node_peak_rss_mib(h.root) for h in homes}

        t = time.perf_counter()
        pooled = read_pooled(homes, f"SELECT dataset, _pid, _visit, y, months, arm, {', '.join(NUMERICAL)} "
                                    "FROM dm_lmmbench_1")
        read_s = time.perf_counter() - t
    pooled["_cluster"] = pooled["dataset"] + "\x1f" + pooled["_pid"]
    pooled = pooled.sort_values(["_cluster", "_visit"], kind="stable").reset_index(drop=True)
    exog = np.column_stack([np.ones(len(pooled)), pooled["arm"] == "b", pooled["arm"] == "c",
                            pooled[NUMERICAL].to_numpy(), pooled["months"]]).astype(float)
    groups = pd.factorize(pooled["_cluster"])[0]
    endog = pooled["y"].to_numpy(dtype=float)
    del pooled

    print(f"\nLongitudinal models, 3 nodes x {patients} patients x {VISITS} visits ({3 * rows_per_node} rows, "
          f"6 fixed effects, {'SQLite' if args.sqlite else 'PostgreSQL'} stores, secure aggregation on); pooled "
          f"read {read_s:.2f}s")
    for key in chosen:
        fed_s, outcome = federated[key]
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if key == "gee":
                fit = sm.GEE(endog, exog, groups=groups, family=sm.families.Gaussian(),
                             cov_struct=sm.cov_struct.Exchangeable()).fit()
                params, label = fit.params, "GEE exchangeable"
            else:
                fit = sm.MixedLM(endog, exog, groups=groups).fit(reml=True)
                params, label = fit.fe_params, "LMM random intercept (REML)"
        fit_s = time.perf_counter() - t
        ours = outcome.result
        rel = float(np.max(np.abs(np.asarray(ours["coefficients"]) - params) / np.abs(params)))
        pooled_s = read_s + fit_s
        print(f"  {label}: federated {fed_s:7.2f}s in {outcome.rounds} rounds; pooled {pooled_s:7.2f}s "
              f"(read {read_s:.2f}s + fit {fit_s:.2f}s); ratio {fed_s / pooled_s:.3f}; max rel diff of the "
              f"coefficients {rel:.1e}")
        print(tables[key])
    print("  peak resident memory of each node process (after both analyses): "
          + ", ".join(f"{name} {mib:.0f} MiB" if mib else f"{name} ?" for name, mib in peaks.items()))
    print(f"  peak resident memory of this process (the pooled baseline): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
