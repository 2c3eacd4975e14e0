"""Linear mixed model benchmark: federated (3 real nodes) beside statsmodels MixedLM on the pooled rows.

Each node holds N patients with 5 visits each (rows = 5 N per node): a visit time, an outcome with a
random intercept and a random slope on time per patient, and three covariates (two numerical, one
nominal with three levels).  The federated ``linear_mixed_model`` (random intercept and slope, REML,
verified rounds, default disclosure settings) is timed from the first request to the result; the
baseline reads every row from the three stores and fits ``MixedLM(...).fit(reml=True)`` (statsmodels'
defaults) on them, in the same run.  Printed: rounds, wall times, their ratio, and the largest
relative differences of the fixed effects and covariance parameters and the log-likelihoods (the
federated fit converges further than statsmodels' default BFGS; see ADR 0041).

Usage: ``python bench/lmm.py [--patients-per-node 20000] [--sqlite]``
(PostgreSQL at 127.0.0.1:5432 by default, as ``bench/federation.py``; ``--sqlite`` for SQLite stores.)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# this checkout's code, here and in the node services it starts (not an installed copy)
sys.path.insert(0, str(REPO / "plugins"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"),
                                            *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
NUMERICAL = ["x0", "x1"]
VISITS = 5


def model_doc() -> dict:
    variables = [
        {"code": "dataset", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": f"site{i}", "label": f"Site {i}"} for i in range(3)]},
        {"code": "y", "sql_type": "real", "isCategorical": False},
        {"code": "months", "sql_type": "real", "isCategorical": False},
        {"code": "arm", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": c, "label": c} for c in ("a", "b", "c")]},
    ]
    variables += [{"code": c, "sql_type": "real", "isCategorical": False} for c in NUMERICAL]
    return {"code": "lmmbench", "version": "1", "label": "LMM benchmark", "variables": variables}


def make_rows(patients: int, seed: int, site: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = patients * VISITS
    patient = np.repeat(np.arange(patients), VISITS)
    months = np.tile(np.arange(VISITS) * 6.0, patients) + rng.uniform(0, 2, n)
    effects = rng.multivariate_normal([0.0, 0.0], [[1.0, -0.02], [-0.02, 0.004]], patients)[patient]
    arm = rng.choice(["a", "b", "c"], patients)[patient]
    x = rng.normal(size=(n, len(NUMERICAL)))
    y = 2.0 + x @ np.array([0.5, -0.3]) + 0.4 * (arm == "b") - 0.1 * months + effects[:, 0] \
        + effects[:, 1] * months + rng.normal(0, 1.0, n)
    frame = pd.DataFrame(x, columns=NUMERICAL)
    frame.insert(0, "arm", arm)
    frame.insert(0, "months", months)
    frame.insert(0, "y", y)
    frame.insert(0, "dataset", f"site{site}")
    frame.insert(0, "visit", [f"V{v}" for v in np.tile(np.arange(VISITS), patients)])
    frame.insert(0, "subjectcode", [f"s{site}-{i}" for i in patient])
    return frame


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients-per-node", type=int, default=20_000)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()

    import statsmodels.api as sm

    from bench.common import loaded_federation, print_machine
    from mipflow.central.rounds import run_analysis
    from mipflow.protocol.datamodel import DataModel
    from tests.nodes import PROJECT, RESEARCHER

    print_machine()
    model = DataModel.from_dict(model_doc())
    rows_per_node = args.patients_per_node * VISITS
    with loaded_federation("lmmbench", model, lambda site: make_rows(args.patients_per_node, 200 + site, site),
                           rows_per_node=rows_per_node, sqlite=args.sqlite, visit_column="visit",
                           pinned=True) as (homes, clients, round_log):
        request = {"inputdata": {"data_model": "lmmbench:1", "datasets": ["site0", "site1", "site2"],
                                 "x": ["arm", *NUMERICAL, "months"], "y": ["y"], "filters": None},
                   "parameters": {"random_effects": "intercept_slope", "time": "months", "method": "reml"}}
        t = time.perf_counter()
        fed = run_analysis("linear_mixed_model", request, clients, min_nodes=3,
                           researcher=RESEARCHER, project=PROJECT)
        fed_s = time.perf_counter() - t

        import sqlalchemy as sa

        t = time.perf_counter()
        frames = []
        for home in homes:
            engine = sa.create_engine(home.db_url)
            with engine.connect() as conn:
                frames.append(pd.read_sql(sa.text(f"SELECT dataset, _pid, y, months, arm, {', '.join(NUMERICAL)} "
                                                  "FROM dm_lmmbench_1"), conn))
            engine.dispose()
        pooled = pd.concat(frames, ignore_index=True)
        read_s = time.perf_counter() - t
        exog = np.column_stack([np.ones(len(pooled)), pooled["arm"] == "b", pooled["arm"] == "c",
                                pooled[NUMERICAL].to_numpy(), pooled["months"]]).astype(float)
        groups = (pooled["dataset"] + "\x1f" + pooled["_pid"]).to_numpy()
        exog_re = np.column_stack([np.ones(len(pooled)), pooled["months"]])
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.MixedLM(pooled["y"].to_numpy(), exog, groups=groups, exog_re=exog_re).fit(reml=True)
        fit_s = time.perf_counter() - t
        rounds_table = round_log.table(homes, "linear_mixed_model")

    ours = fed.result
    assert ours["indep_vars"] == ["Intercept", "arm[b]", "arm[c]", *NUMERICAL, "months"], ours["indep_vars"]
    rel_fe = np.max(np.abs(np.array(ours["coefficients"]) - fit.fe_params) / np.abs(fit.fe_params))
    rel_cov = np.max(np.abs(np.array(ours["cov_re"]) - fit.cov_re) / np.abs(fit.cov_re))
    pooled_s = read_s + fit_s
    print(f"\nLinear mixed model (random intercept and slope, REML), 3 nodes x {args.patients_per_node} patients "
          f"x {VISITS} visits, 6 fixed effects ({'SQLite' if args.sqlite else 'PostgreSQL'} stores)")
    print(f"  federated: {fed_s:6.2f}s in {fed.rounds} rounds ({ours['iterations']} Newton steps, "
          f"decrement {ours['newton_decrement']:.1e})")
    print(f"  pooled:    {pooled_s:6.2f}s (read {read_s:.2f}s + MixedLM {fit_s:.2f}s, converged={fit.converged})")
    print(f"  ratio federated/pooled {fed_s / pooled_s:.2f}  max rel diff vs statsmodels' default fit: fixed "
          f"effects {rel_fe:.1e}, cov_re {rel_cov:.1e}; llf federated {ours['llf']:.6f} statsmodels {fit.llf:.6f}  "
          f"n={ours['n_obs']} patients={ours['n_groups']}")
    print(rounds_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
