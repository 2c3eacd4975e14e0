"""Issue 19 / ADR 0062: a node's peak memory in one step of a sums-only algorithm, rows on disk beside the
frame path, measured in the same run.

Builds (once, kept in ``--home``) bench/first_round.py's SQLite node home (R rows of bench/scale.py's data
model, y and five covariates, and its columnar snapshot), then, for each algorithm, runs one
``answer_step`` (a new cohort: the ledger removed first) in a new process per path:

- ``disk``: the node's defaults (the algorithm ``streams_rows``: its selection left on disk, ADR 0062);
- ``frame``: the same step with the algorithm's ``streams_rows`` set off in that process (the selection read
  into a frame, as before: for descriptive statistics the SQL read, which keeps missing values).

Algorithms releasing groups (``GROUPED``: t-test, one-way ANOVA, regressions with a nominal covariate) run
on a second home, ``<home>-groups``, whose model adds a nominal ``grp`` of four levels; their group memory is
removed too before the step, and its records (kinds, digests, keys) must be identical on both paths.

Two-way ANOVA (``y ~ grp * event``) and the contingency table (``grp`` x ``event``) run there too (ADR 0062,
amendment 9), PCA (amendment 10) on the first home; histograms of ``dose`` (declared 0..10) by ``grp`` and
``event`` and naive Bayes (Gaussian: ``grp`` from ``x0..x2``; categorical: ``event`` from ``grp``; round 0,
five folds) on the groups home (amendment 11); k-means on ``x0..x2`` (k 4) on the first home, its round 0 and
first Lloyd round in one measurement (amendment 12: the round's assignment, clusters as released groups and the
partition memory; the group and partition memories removed first, the second round past round verification);
cross-validated linear and logistic regression on the groups home, round 0 and round 1 in one measurement likewise
(amendments 14 and 15; their releases compared to 1e-9 relative when not bit for bit); Cox regression (``dose`` as
the time, ``event``, ``x0, x1, grp``) on the groups home, round 0 and the start round at the node, then a sums round
and its score round by the local step on the node's kept selection, in one measurement (amendment 16).  With ``--postgresql ADMIN_URL`` every chosen algorithm runs again on a PostgreSQL copy of the
groups home (``<home>-groups-pg``, its store the database ``mipflow_bench_ss_<rows>`` created through
``ADMIN_URL``; amendment 8): the frame path there is the binary ``COPY`` read.

Per path: the process's peak RSS (VmHWM) over the step beside its RSS before it (the high-water mark reset
first, ``/proc/self/clear_refs``), the step's seconds, and the peak's growth per selected row; then
disk / frame ratios and whether both released the same aggregates.

Usage::

    python bench/stream_stats.py --rows 1000000 --home /tmp/ss-home \
        [--algorithms descriptive_stats,pearson_correlation,ttest_paired] \
        [--postgresql postgresql+psycopg2://postgres@127.0.0.1:5432/postgres]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ALGORITHMS = {
    "descriptive_stats": (["y", "x0", "x1", "x2", "x3", "x4"], [], {}),
    "pearson_correlation": (["y"], ["x0", "x1", "x2", "x3", "x4"], {}),
    "ttest_onesample": (["y"], [], {"mu": 0.0}),
    "ttest_paired": (["y"], ["x0"], {}),
    # released groups (ADR 0051) on the groups home: the group memory's release from the level codes too
    "ttest_independent": (["y"], ["grp"], {"groupA": "g0", "groupB": "g1"}),
    "anova_oneway": (["y"], ["grp"], {}),
    "logistic_regression": (["event"], ["x0", "x1", "grp"], {"positive_class": "yes"}),
    "linear_regression": (["y"], ["x0", "x1", "grp"], {}),
    "pca": (["y", "x0", "x1", "x2", "x3", "x4"], [], {}),
    "anova": (["y"], ["grp", "event"], {}),
    "contingency_table": (["grp"], ["event"], {}),
    # amendment 11: bins over dose's declared range by two levels (their cells released groups), naive Bayes
    "multiple_histograms": (["dose"], ["grp", "event"], {"bins": 20}),
    "naive_bayes_gaussian_cv": (["grp"], ["x0", "x1", "x2"], {}),
    "naive_bayes_categorical_cv": (["event"], ["grp"], {}),
    # amendment 12: round 0 and one Lloyd round (its clusters released groups, its assignment remembered)
    "kmeans": (["x0", "x1", "x2"], [], {"k": 4, "maxiter": 5}),
    # amendments 14 and 15: round 0 and round 1 (linear: the test folds' residuals; logistic: every fold's first
    # Newton round and its effective rows), five folds narrowed from the node's fold keys
    "linear_regression_cv": (["y"], ["x0", "x1", "grp"], {}),
    "logistic_regression_cv": (["event"], ["x0", "x1", "grp"], {"positive_class": "yes"}),
    # amendment 16: dose (declared 0..10) as the time, event "yes"; round 0 and the start round at the node, then
    # a sums round and its score round by the local step on the node's kept selection (sealing needs peers)
    "cox_regression": (["dose", "event"], ["x0", "x1", "grp"], {"event_level": "yes", "bin_width": 0.5}),
}
#: Cox: four rounds in one measurement (round 0, start, a sums round and its score round).
COX_ROUNDS = {"cox_regression"}
#: Algorithms measured over round 0 and round 1 together (the second round's state from round 0, one node).
TWO_ROUNDS = {"kmeans", "linear_regression_cv", "logistic_regression_cv"}
#: Algorithms run on the groups home (a nominal ``grp`` of 4 levels beside the scale model's columns).
GROUPED = {"ttest_independent", "anova_oneway", "logistic_regression", "linear_regression", "anova",
           "contingency_table", "multiple_histograms", "naive_bayes_gaussian_cv", "naive_bayes_categorical_cv",
           "linear_regression_cv", "logistic_regression_cv", "cox_regression"}
GROUP_LEVELS = ("g0", "g1", "g2", "g3")


def groups_home(home: str) -> Path:
    return Path(f"{home}-groups")


def postgresql_store(admin: str, rows: int) -> str:
    """The URL of the PostgreSQL database of the groups home's copy (created through ``admin`` if missing)."""
    import sqlalchemy as sa

    name = f"mipflow_bench_ss_{rows}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if conn.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %(n)s", {"n": name}).first() is None:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return admin.rsplit("/", 1)[0] + "/" + name


def prepare_groups(root: Path, rows: int, db_url: str = "") -> None:
    """bench/first_round.py's home with a nominal ``grp`` (4 levels, unequal sizes) added to its model (its
    store ``db_url``: the home's SQLite file when empty)."""
    import numpy as np

    from bench.common import regression_model_doc
    from bench.scale import COVARIATES, LOAD_CHUNK, make_rows
    from mipflow.node.home import NodeHome
    from mipflow.node.ops import refresh_snapshots
    from mipflow.protocol.datamodel import DataModel
    from tests.nodes import grant_all, load_frame

    if (root / "ready").exists():
        return
    home = NodeHome.init(root, "site0", db_url, exist_ok=True)
    home.set_setting("default_mode", "standard")
    doc = regression_model_doc("ssg", "Streamed groups benchmark", 1, COVARIATES)
    doc["variables"].append({"code": "grp", "sql_type": "text", "isCategorical": True,
                             "enumerations": [{"code": c, "label": c} for c in GROUP_LEVELS]})
    doc["variables"].append({"code": "dose", "sql_type": "real", "isCategorical": False,  # a histogram's range
                             "minValue": 0, "maxValue": 10})
    model = DataModel.from_dict(doc)
    for first in range(0, rows, LOAD_CHUNK):
        frame = make_rows(min(LOAD_CHUNK, rows - first), 0, "site0", first)
        rng = np.random.default_rng(first + 19)
        frame["grp"] = rng.choice(GROUP_LEVELS, len(frame), p=[0.4, 0.3, 0.2, 0.1])
        frame["y"] = frame["y"] + 0.5 * (frame["grp"] == "g1")
        frame["dose"] = rng.uniform(-0.5, 10.5, len(frame))  # a few outside the declared range
        load_frame(home.root, model, frame)
    grant_all(home.root, "bench", "bench")
    refresh_snapshots(NodeHome(root))
    (root / "ready").write_text("1")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(home: str, algorithm: str, path: str, store: str = "sqlite") -> None:
    """One step in this process (``store`` "pg": on the groups home's PostgreSQL copy); prints one JSON line."""
    from bench.scale import forget_cohorts
    from mipflow.algorithms import get_algorithm
    from mipflow.node.api.context import StepContext
    from mipflow.node.api.step import answer_step
    from mipflow.node.home import NodeHome

    y, x, params = ALGORITHMS[algorithm]
    if path == "frame":
        type(get_algorithm(algorithm)).streams_rows = False
    data_model = "ssg:1" if algorithm in GROUPED or store == "pg" else "scale:1"
    if algorithm in GROUPED or store == "pg":  # the PostgreSQL copy holds the groups home's model
        home = str(groups_home(home)) + ("-pg" if store == "pg" else "")
        (Path(home) / "groups.sqlite").unlink(missing_ok=True)  # new groups too: their check and record
    if algorithm == "kmeans":
        for name in ("groups.sqlite", "partitions.sqlite"):
            (Path(home) / name).unlink(missing_ok=True)
    forget_cohorts(Path(home))
    context = StepContext.open(NodeHome(home))
    doc = {"request": {"inputdata": {"data_model": data_model, "datasets": ["site0"], "x": x, "y": y,
                                     "filters": None}, "parameters": params},
           "round": 0, "state": None, "researcher": "bench", "project": "bench",
           "analysis_id": f"ss-{algorithm}-{path}-{time.time_ns()}", "secure_aggregation": None}
    if algorithm == "kmeans":  # its clusters' kinds name the run (the analysis key): one key on both paths
        doc["analysis_id"] = "ss-kmeans"
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    t = time.perf_counter()
    reply = answer_step(context, "central", algorithm, json.dumps(doc).encode())
    if algorithm in TWO_ROUNDS:  # its round 1 (k-means: the first Lloyd round) from round 0 (one node), not verified
        from mipflow.node.api.step import CHAIN, tag_release, verify_round
        from mipflow.protocol.request import AnalysisRequest

        request = AnalysisRequest.from_dict(doc["request"])
        state = get_algorithm(algorithm).global_step(0, [reply["aggregates"]], request,
                                                     context.data_model(data_model), None).state
        reply = answer_step(context, "central", algorithm, json.dumps({**doc, "round": 1, "state": state}).encode(),
                            chain=tuple(c for c in CHAIN if c not in (verify_round, tag_release)))
    later = cox_rounds(context, algorithm, doc, data_model, reply) if algorithm in COX_ROUNDS else None
    seconds = time.perf_counter() - t
    peak = _status_kib("VmHWM")
    kept = [type(v[1]).__name__ for v in context.selections._kept.values()]
    digest = hashlib.sha256(json.dumps([reply["aggregates"], later], sort_keys=True).encode()).hexdigest()[:16]
    groups = None
    if (Path(home) / "groups.sqlite").exists():  # the group memory's records (same node key: comparable)
        import sqlite3

        with sqlite3.connect(Path(home) / "groups.sqlite") as conn:
            records = conn.execute("SELECT kind, digest, keys, patients, cell FROM groups ORDER BY rowid").fetchall()
        if (Path(home) / "partitions.sqlite").exists():  # k-means: and the assignments remembered
            with sqlite3.connect(Path(home) / "partitions.sqlite") as conn:
                records += conn.execute("SELECT key, digest, labels FROM partitions ORDER BY rowid").fetchall()
        groups = hashlib.sha256(repr(records).encode()).hexdigest()[:16] if records else None
    print(json.dumps({"before_kib": before, "peak_kib": peak, "seconds": seconds, "rows": reply["rows"],
                      "kept": kept, "aggregates": digest, "groups": groups,
                      "released": reply["aggregates"] if algorithm in TWO_ROUNDS else None}), flush=True)


def cox_rounds(context, algorithm: str, doc: dict, data_model: str, reply: dict) -> list:
    """Cox's start round at the node (past round verification), then a sums round and its score round by the
    local step on the selection the node keeps (its sealed sums pooled in the clear, one node): the releases."""
    from mipflow.algorithms import get_algorithm
    from mipflow.algorithms.sealed import local_state
    from mipflow.node.api.step import CHAIN, answer_step, tag_release, verify_round
    from mipflow.protocol.request import AnalysisRequest
    from mipflow.protocol.wire import transport

    algo = get_algorithm(algorithm)
    request = AnalysisRequest.from_dict(doc["request"])
    model = context.data_model(data_model)
    state = transport(algo.global_step(0, [reply["aggregates"]], request, model, None).state)
    started = answer_step(context, "central", algorithm, json.dumps({**doc, "round": 1, "state": state}).encode(),
                          chain=tuple(c for c in CHAIN if c not in (verify_round, tag_release)))
    state = transport(algo.global_step(1, [started["aggregates"]], request, model, state).state)
    (data,) = [v[1] for v in context.selections._kept.values()]
    sums = transport(algo.local_step(2, data, request, model, state))
    scoring = local_state(algo, transport(algo.global_step(2, [sums], request, model, state).state), [sums])
    score = transport(algo.local_step(3, data, request, model, scoring))
    return [started["aggregates"], sums, score]


def relative_distance(a, b) -> float:
    """The largest relative difference between two releases' numbers (inf: another structure or count)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return max([relative_distance(a[k], b[k]) for k in a] or [0.0]) if a.keys() == b.keys() else float("inf")
    if isinstance(a, list) and isinstance(b, list):
        return max([relative_distance(x, y) for x, y in zip(a, b)] or [0.0]) if len(a) == len(b) else float("inf")
    if isinstance(a, float) and isinstance(b, float):
        return 0.0 if a == b else abs(a - b) / max(abs(a), abs(b))
    return 0.0 if a == b else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--home", default="/tmp/ss-home")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--postgresql", default="", metavar="ADMIN_URL",
                        help="also run every algorithm on a PostgreSQL copy of the groups home")
    parser.add_argument("--child", nargs=3, metavar=("ALGORITHM", "PATH", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.home, *args.child)
        return 0
    from bench.first_round import prepare

    chosen = args.algorithms.split(",")
    if set(chosen) - GROUPED:
        prepare(Path(args.home), args.rows)
    runs_of = [(a, "sqlite") for a in chosen]
    if set(chosen) & GROUPED:
        prepare_groups(groups_home(args.home), args.rows)
    if args.postgresql:  # every chosen algorithm again, on the groups home's PostgreSQL copy
        pg_home = Path(str(groups_home(args.home)) + "-pg")
        prepare_groups(pg_home, args.rows, postgresql_store(args.postgresql, args.rows))
        runs_of += [(a, "pg") for a in chosen]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    print(f"{'algorithm':25} {'path':6} {'rows':>9} {'RSS before':>11} {'peak':>9} {'growth':>9} "
          f"{'B/row':>7} {'seconds':>8}  kept")
    same = True
    for algorithm, store in runs_of:
        runs = {}
        label = algorithm + (" (pg)" if store == "pg" else "")
        for path in ("frame", "disk"):  # the baseline first, each in a new process
            out = subprocess.run([sys.executable, __file__, "--home", args.home, "--child", algorithm, path, store],
                                 env=env, check=True, capture_output=True, text=True).stdout
            runs[path] = run = json.loads(out.strip().splitlines()[-1])
            growth = (run["peak_kib"] - run["before_kib"]) * 1024
            print(f"{label:25} {path:6} {run['rows']:>9} {run['before_kib'] / 1024:>8.0f} MiB "
                  f"{run['peak_kib'] / 1024:>5.0f} MiB {growth / 2**20:>5.0f} MiB {growth / max(run['rows'], 1):>7.1f} "
                  f"{run['seconds']:>8.2f}  {','.join(run['kept'])}", flush=True)
        frame, disk = runs["frame"], runs["disk"]
        grow = [(r["peak_kib"] - r["before_kib"]) for r in (disk, frame)]
        equal = disk["aggregates"] == frame["aggregates"] and disk["groups"] == frame["groups"]
        close = disk.get("released") is not None and disk["groups"] == frame["groups"] and \
            relative_distance(disk["released"], frame["released"]) <= 1e-9
        if not equal and close:  # e.g. a Newton round's sums: BLAS's bits depend on the blocks' memory layout
            print(f"{label:25} aggregates equal to {relative_distance(disk['released'], frame['released']):.1e} "
                  "relative, not bit for bit", flush=True)
        how = "identical" if equal else "equal to 1e-9" if close else "DIFFERENT"
        equal = equal or close
        if not equal:
            print(f"{label:25} aggregates {disk['aggregates']} / {frame['aggregates']}, group memory "
                  f"{disk['groups']} / {frame['groups']}", flush=True)
        same &= equal
        print(f"{label:25} disk / frame: peak {disk['peak_kib'] / frame['peak_kib']:.2f}x, growth "
              f"{grow[0] / max(grow[1], 1):.2f}x, time {disk['seconds'] / frame['seconds']:.2f}x; "
              f"aggregates{' and group memory' if disk['groups'] else ''} {how}",
              flush=True)
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
