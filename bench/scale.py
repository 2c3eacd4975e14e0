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


#: Rows generated and loaded at a time (a 10M-row frame and its load would take several GiB at once).
LOAD_CHUNK = 1_000_000


def make_rows(n: int, seed: int, dataset: str, first: int = 0) -> pd.DataFrame:
    """Rows ``first .. first + n`` of a site: the first chunk from ``seed`` (as before chunks), each
    later chunk from a seed of its own."""
    from bench.common import regression_rows

    chunk_seed = seed if first == 0 else seed * 1_000_003 + first // LOAD_CHUNK
    return regression_rows(n, chunk_seed, dataset, f"s{seed}", COVARIATES, first=first)


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
            for first in range(0, rows, LOAD_CHUNK):
                frame = make_rows(min(LOAD_CHUNK, rows - first), site, "site0" if not distinct else f"site{site}",
                                  first)
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

#: (label, field, format) of the phases' table
ROWS = [
    ("node resident once started, MiB (median)", "idle", ".0f"),
    ("node peak after one linear step, MiB (node 0)", "peak_one", ".0f"),
    ("node peak after the linear analyses, MiB (largest)", "peak_linear", ".0f"),
    ("sum of the nodes' peaks after the linear analyses, MiB", "peak_sum", ".0f"),
    ("node peak in the logistic fit alone, MiB (largest)", "peak_logit", ".0f"),
    ("node peak after every analysis, MiB (largest)", "peak_all", ".0f"),
    ("first round, one node over HTTP, ms (new cohort)", "first_ms", ".0f"),
    ("new selection, same cohort, over HTTP, ms", "new_selection_ms", ".0f"),
    ("later round, ms (median)", "later_ms", ".1f"),
    ("federated linear, cold, s", "ols_cold", ".2f"),
    ("federated linear, warm, s", "ols_warm", ".2f"),
    ("federated logistic, cold, s", "logit_cold", ".2f"),
    ("logistic rounds (node 0's audit records)", "logit_rounds", ".0f"),
    ("logistic round 0 at node 0, ms (its own step)", "logit_first_ms", ".0f"),
    ("logistic Newton round at node 0, ms (median)", "logit_later_ms", ".1f"),
]
#: Each phase's node settings (new node processes per phase).  ``frame``: rows read from the snapshot
#: into a frame, as every step that cannot leave its rows on disk, i.e. linear and logistic regression
#: before ADR 0049's streamed reads; a node with differential privacy on streams nothing, and with
#: both algorithms exempted it adds no noise: the same releases through the frame's path.
PHASES = {
    "snapshot": {"columnar_snapshot": 1},
    "frame": {"columnar_snapshot": 1, "dp_enabled": 1, "dp_exempt_algorithms": "linear_regression,logistic_regression"},
    "before": {"columnar_snapshot": 0},
}
DEFAULTS = {"columnar_snapshot": 1, "dp_enabled": 0, "dp_exempt_algorithms": ""}


def forget_cohorts(root: Path) -> None:
    """Benchmark only: remove a node's cohort ledger, so the next phase's first round is a new cohort
    there too (the ledger's check and record of a new 1M-row cohort are most of a first round)."""
    from mipflow.node.controls.counted_memory import COUNTED_FILE
    from mipflow.node.controls.ledger import LEDGER_FILE

    # the counted-set memory too: a new cohort is new to it (its sets are remembered once per cohort)
    for path in [*Path(root).glob(LEDGER_FILE + "*"), *Path(root).glob(COUNTED_FILE + "*")]:
        path.unlink()


def run_phase(homes, model, args, request, logit_request, store_kind) -> dict:
    """One node process per home: a node's first and later rounds, federated linear (cold, warm) and
    logistic (cold) regression, the nodes' memory."""
    from bench.common import central_clients, drop_node_caches, node_pids
    from mipflow.central.rounds import run_analysis
    from mipflow.node.controls.audit import AUDIT_FILE, read_records
    from tests.nodes import running_nodes

    out: dict = {}
    with running_nodes([h.root for h in homes], timeout=120.0) as urls:
        clients = central_clients(homes, urls, timeout=600.0)
        pids = node_pids(homes)
        out["idle"] = float(np.median([rss_mib(pid, "VmRSS") for pid in pids.values()]))
        one = clients[0]
        # 1. one node's step: first round (new selection), then later rounds (selection kept)
        t = time.perf_counter()
        one.step("linear_regression", request, 0, None, **WHO)
        out["first"] = time.perf_counter() - t
        later = []
        for _ in range(args.later):
            t = time.perf_counter()
            one.step("linear_regression", request, 0, None, **WHO)
            later.append(time.perf_counter() - t)
        out["peak_one"] = rss_mib(pids[homes[0].name], "VmHWM")
        # a new selection (covariates in another order) of the same rows: a cohort the ledger holds
        again = {**request, "inputdata": {**request["inputdata"], "x": COVARIATES[::-1]}}
        t = time.perf_counter()
        one.step("linear_regression", again, 0, None, **WHO)
        out["new_selection_ms"] = (time.perf_counter() - t) * 1000
        # 2. federated analyses end to end, every node cold (the snapshot stays: the rows did not change)
        drop_node_caches(homes, model)
        t = time.perf_counter()
        out["ols"] = run_analysis("linear_regression", request, clients, min_nodes=args.nodes, **WHO)
        out["ols_cold"] = time.perf_counter() - t
        t = time.perf_counter()
        run_analysis("linear_regression", request, clients, min_nodes=args.nodes, **WHO)
        out["ols_warm"] = time.perf_counter() - t
        out["peak_linear"] = max(rss_mib(pid, "VmHWM") for pid in pids.values())
        out["peak_sum"] = sum(rss_mib(pid, "VmHWM") for pid in pids.values())  # every node process together
        out["peak_all"] = out["peak_linear"]
        if not args.no_logistic:
            # the logistic fit's own peak: each node's high-water mark reset first (Linux clear_refs 5)
            for pid in pids.values():
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            audit = Path(homes[0].root) / AUDIT_FILE
            seen = len(read_records(audit))
            drop_node_caches(homes, model)
            t = time.perf_counter()
            out["logit"] = run_analysis("logistic_regression", logit_request, clients, min_nodes=args.nodes, **WHO)
            out["logit_cold"] = time.perf_counter() - t
            out["peak_logit"] = max(rss_mib(pid, "VmHWM") for pid in pids.values())
            out["peak_all"] = max(out["peak_all"], out["peak_logit"])
            steps = [float(r["ms"]) for r in read_records(audit)[seen:]
                     if r.get("algorithm") == "logistic_regression" and r.get("decision") == "allowed"]
            out["logit_rounds"] = len(steps)
            if steps:  # node 0's own step time (its audit record), round 0 and the median Newton round
                out["logit_first_ms"] = steps[0]
                out["logit_later_ms"] = float(np.median(steps[1:])) if len(steps) > 1 else None
        for c in clients:
            c.close()
    out["first_ms"] = out["first"] * 1000
    out["later_ms"] = float(np.median(later)) * 1000
    out["summary"] = (f"first round {out['first_ms']:.0f} ms, later {out['later_ms']:.1f} ms, node peak "
                      f"{out['peak_one']:.0f} MiB; federated linear cold {out['ols_cold']:.2f} s "
                      f"(n={out['ols'].result['n_obs']})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per node")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL stores instead of SQLite")
    parser.add_argument("--distinct-rows", action="store_true", help="every node loads rows of its own")
    parser.add_argument("--no-logistic", action="store_true")
    parser.add_argument("--no-pooled", action="store_true", help="skip the pooled baseline (all rows in one process)")
    parser.add_argument("--later", type=int, default=5, help="later rounds measured (median)")
    parser.add_argument("--no-before", action="store_true",
                        help="SQLite: skip the SQL read (columnar_snapshot 0) measured beside the snapshot")
    parser.add_argument("--no-frame", action="store_true",
                        help="SQLite: skip the frame read from the snapshot (no streamed rows) measured beside it")
    parser.add_argument("--home", help="one node's existing home with --rows rows of this model (bench/first_round.py "
                        "builds one: a 10M-row load takes minutes), measured instead of new homes")
    args = parser.parse_args()

    from bench.common import print_machine, read_pooled, site_homes
    from mipflow.protocol.datamodel import DataModel

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
    if args.home:
        import contextlib

        from mipflow.node.home import NodeHome

        if args.nodes != 1 or not sqlite:
            parser.error("--home is one SQLite node's home")
        built = contextlib.nullcontext([NodeHome(Path(args.home))])
    else:
        built = site_homes("scale", sqlite=sqlite, sites=args.nodes)
    with built as homes:
        if not args.home:
            load(homes, model, args.rows, distinct, sqlite)
        if args.nodes >= 3:  # secure aggregation (on by default from 3 nodes) needs the peers' pinned keys
            from tests.nodes import pin_each_other

            pin_each_other([h.root for h in homes])
        phases = ["snapshot"] + (["frame"] if sqlite and not args.no_frame else []) + \
            (["before"] if sqlite and not args.no_before else [])
        if sqlite:  # as a load's last step writes them (mipflow.node.ops.refresh_snapshots, ADR 0049)
            from mipflow.node.home import NodeHome
            from mipflow.node.ops import refresh_snapshots

            for home in homes:
                t = time.perf_counter()
                refresh_snapshots(NodeHome(home.root))
                if home is homes[0] or home is homes[-1]:
                    print(f"{home.name}: columnar snapshot written in {time.perf_counter() - t:.1f}s", flush=True)
        measured = {}
        for phase in phases:  # each phase its own node processes: its own peak memory
            for home in homes:
                for key, value in {**DEFAULTS, **PHASES[phase]}.items():
                    home.set_setting(key, value)
                forget_cohorts(home.root)  # each phase's first round answers a cohort new to the node
            measured[phase] = run_phase(homes, model, args, request, logit_request, store_kind)
            print(f"[{phase}] {measured[phase]['summary']}", flush=True)
        for home in homes:  # the node's defaults again (an existing home is used again)
            for key, value in DEFAULTS.items():
                home.set_setting(key, value)
        print()
        names = list(phases)
        print(f"{'':52s}" + "".join(f"{n:>14s}" for n in names))
        for label, field, unit in ROWS:
            cells = [measured[n].get(field) for n in names]
            print(f"{label:52s}" + "".join(f"{'-' if v is None else format(v, unit):>14s}" for v in cells))
        fed_ols, fed_ols_s = measured["snapshot"]["ols"], measured["snapshot"]["ols_cold"]
        fed_logit, fed_logit_s = measured["snapshot"].get("logit"), measured["snapshot"].get("logit_cold")
        fed_ols_warm, first = measured["snapshot"]["ols_warm"], measured["snapshot"]["first"]
        for other in names[1:]:  # the same analyses through the frame or the SQL read: the same results, bit for bit
            for name in ("ols", "logit"):
                if name in measured[other]:
                    a = np.array(measured["snapshot"][name].result["coefficients"])
                    b = np.array(measured[other][name].result["coefficients"])
                    print(f"{name}: snapshot vs {other}, coefficients identical: {bool(np.array_equal(a, b))} "
                          f"(max abs diff {np.max(np.abs(a - b)):.1e})")
        for other in names[1:]:  # memory against the in-run baselines
            for field in ("peak_one", "peak_linear", "peak_logit", "peak_all"):
                if measured[other].get(field) and measured["snapshot"].get(field):
                    print(f"{field}: snapshot / {other} = {measured['snapshot'][field] / measured[other][field]:.2f}")
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
