"""Cox regression benchmark: federated (3 real nodes) beside statsmodels PHReg on the pooled rows.

Each node holds N rows with a whole-day follow-up time (0..3650, declared in the data model), a
death indicator and five covariates (four numerical, one nominal with three levels).  The
federated fit (bin width 1 day, Breslow ties, default disclosure settings) is timed from the
first request to the result; the baseline reads every row from the three stores and fits
``PHReg(ties="breslow")`` on the same rounded times, in the same run.  Printed: rounds, wall
times, their ratio, and the largest relative difference of the coefficients.

Usage: ``python bench/cox.py [--rows-per-node 1000000] [--sqlite]``
(PostgreSQL at 127.0.0.1:5432 by default, as ``bench/federation.py``; ``--sqlite`` for SQLite stores.)
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
NUMERICAL = [f"x{i}" for i in range(4)]


def model_doc() -> dict:
    variables = [
        {"code": "dataset", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": f"site{i}", "label": f"Site {i}"} for i in range(3)]},
        {"code": "days", "sql_type": "int", "isCategorical": False, "minValue": 0, "maxValue": 3650},
        {"code": "death", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": "no", "label": "No"}, {"code": "yes", "label": "Yes"}]},
        {"code": "arm", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": c, "label": c} for c in ("a", "b", "c")]},
    ]
    variables += [{"code": c, "sql_type": "real", "isCategorical": False} for c in NUMERICAL]
    return {"code": "coxbench", "version": "1", "label": "Cox benchmark", "variables": variables}


def make_rows(n: int, seed: int, site: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(NUMERICAL)))
    arm = rng.choice(["a", "b", "c"], n)
    risk = x @ np.array([0.5, -0.3, 0.2, 0.0]) + 0.4 * (arm == "b") - 0.2 * (arm == "c")
    event_time = rng.exponential(800.0 * np.exp(-risk))
    censor_time = rng.uniform(0, 3650, n)
    frame = pd.DataFrame(x, columns=NUMERICAL)
    frame.insert(0, "arm", arm)
    frame.insert(0, "death", np.where(event_time <= censor_time, "yes", "no"))
    frame.insert(0, "days", np.ceil(np.minimum(np.minimum(event_time, censor_time), 3650.0)).astype(np.int64))
    frame.insert(0, "dataset", f"site{site}")
    frame.insert(0, "subjectcode", [f"s{site}-{i}" for i in range(n)])
    return frame


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows-per-node", type=int, default=1_000_000)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()

    from statsmodels.duration.hazard_regression import PHReg

    from bench.common import loaded_federation, print_machine, read_pooled
    from mipflow.protocol.datamodel import DataModel
    from mipflow.central.rounds import run_analysis
    from tests.nodes import PROJECT, RESEARCHER

    print_machine()
    model = DataModel.from_dict(model_doc())
    with loaded_federation("coxbench", model, lambda site: make_rows(args.rows_per_node, 100 + site, site),
                           rows_per_node=args.rows_per_node, sqlite=args.sqlite, pinned=True) as (homes, clients, round_log):
        request = {"inputdata": {"data_model": "coxbench:1", "datasets": ["site0", "site1", "site2"],
                                 "x": ["arm", *NUMERICAL], "y": ["days", "death"], "filters": None},
                   "parameters": {"event_level": "yes", "bin_width": 1}}
        t = time.perf_counter()
        fed = run_analysis("cox_regression", request, clients, min_nodes=3,
                           researcher=RESEARCHER, project=PROJECT)
        fed_s = time.perf_counter() - t

        t = time.perf_counter()
        pooled = read_pooled(homes, f"SELECT days, death, arm, {', '.join(NUMERICAL)} FROM dm_coxbench_1")
        read_s = time.perf_counter() - t
        timeline = np.asarray(fed.result["binning"]["timeline"], dtype=float)
        times = timeline[np.searchsorted(timeline, pooled["days"].to_numpy(dtype=float), side="left")]
        design = np.column_stack([(pooled["arm"] == "b"), (pooled["arm"] == "c"),
                                  pooled[NUMERICAL].to_numpy()]).astype(float)
        t = time.perf_counter()
        fit = PHReg(times, design, status=(pooled["death"] == "yes").to_numpy(dtype=float),
                    ties="breslow").fit(method="newton", tol=1e-8)
        fit_s = time.perf_counter() - t
        rounds_table = round_log.table(homes, "cox_regression")

    assert fed.result["indep_vars"] == ["arm[b]", "arm[c]", *NUMERICAL], fed.result["indep_vars"]
    rel = np.max(np.abs(np.array(fed.result["coefficients"]) - fit.params) / np.abs(fit.params))
    pooled_s = read_s + fit_s
    binning = fed.result["binning"]
    print(f"\nCox regression, 3 nodes x {args.rows_per_node} rows, 5 covariates "
          f"({'SQLite' if args.sqlite else 'PostgreSQL'} stores), bin width 1 day, Breslow ties")
    print(f"  federated: {fed_s:6.2f}s in {fed.rounds} rounds ({fed.result['iterations']} Newton steps), "
          f"binning {binning['method']} ({binning['bins_used']} of {binning['grid_points']} bins)")
    print(f"  pooled:    {pooled_s:6.2f}s (read {read_s:.2f}s + PHReg {fit_s:.2f}s)")
    print(f"  ratio federated/pooled {fed_s / pooled_s:.2f}  max rel diff of coefficients {rel:.1e}  "
          f"n={fed.result['n_obs']} events={fed.result['n_events']}")
    print(rounds_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
