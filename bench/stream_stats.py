"""Issue 19 / ADR 0062: a node's peak memory in one step of a sums-only algorithm, rows on disk beside the
frame path, measured in the same run.

Builds (once, kept in ``--home``) bench/first_round.py's SQLite node home (R rows of bench/scale.py's data
model, y and five covariates, and its columnar snapshot), then, for each algorithm, runs one
``answer_step`` (a new cohort: the ledger removed first) in a new process per path:

- ``disk``: the node's defaults (the algorithm ``streams_rows``: its selection left on disk, ADR 0062);
- ``frame``: the same step with the algorithm's ``streams_rows`` set off in that process (the selection read
  into a frame, as before: for descriptive statistics the SQL read, which keeps missing values).

Per path: the process's peak RSS (VmHWM) over the step beside its RSS before it (the high-water mark reset
first, ``/proc/self/clear_refs``), the step's seconds, and the peak's growth per selected row; then
disk / frame ratios and whether both released the same aggregates.

Usage::

    python bench/stream_stats.py --rows 1000000 --home /tmp/ss-home \
        [--algorithms descriptive_stats,pearson_correlation,ttest_paired]
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
}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(home: str, algorithm: str, path: str) -> None:
    """One step in this process; prints one JSON line."""
    from bench.scale import forget_cohorts
    from mipflow.algorithms import get_algorithm
    from mipflow.node.api.context import StepContext
    from mipflow.node.api.step import answer_step
    from mipflow.node.home import NodeHome

    y, x, params = ALGORITHMS[algorithm]
    if path == "frame":
        type(get_algorithm(algorithm)).streams_rows = False
    forget_cohorts(Path(home))
    context = StepContext.open(NodeHome(home))
    doc = {"request": {"inputdata": {"data_model": "scale:1", "datasets": ["site0"], "x": x, "y": y,
                                     "filters": None}, "parameters": params},
           "round": 0, "state": None, "researcher": "bench", "project": "bench",
           "analysis_id": f"ss-{algorithm}-{path}-{time.time_ns()}", "secure_aggregation": None}
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    t = time.perf_counter()
    reply = answer_step(context, "central", algorithm, json.dumps(doc).encode())
    seconds = time.perf_counter() - t
    peak = _status_kib("VmHWM")
    kept = [type(v[1]).__name__ for v in context.selections._kept.values()]
    digest = hashlib.sha256(json.dumps(reply["aggregates"], sort_keys=True).encode()).hexdigest()[:16]
    print(json.dumps({"before_kib": before, "peak_kib": peak, "seconds": seconds, "rows": reply["rows"],
                      "kept": kept, "aggregates": digest}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--home", default="/tmp/ss-home")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--child", nargs=2, metavar=("ALGORITHM", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.home, *args.child)
        return 0
    from bench.first_round import prepare

    prepare(Path(args.home), args.rows)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    print(f"{'algorithm':22} {'path':6} {'rows':>9} {'RSS before':>11} {'peak':>9} {'growth':>9} "
          f"{'B/row':>7} {'seconds':>8}  kept")
    same = True
    for algorithm in args.algorithms.split(","):
        runs = {}
        for path in ("frame", "disk"):  # the baseline first, each in a new process
            out = subprocess.run([sys.executable, __file__, "--home", args.home, "--child", algorithm, path],
                                 env=env, check=True, capture_output=True, text=True).stdout
            runs[path] = run = json.loads(out.strip().splitlines()[-1])
            growth = (run["peak_kib"] - run["before_kib"]) * 1024
            print(f"{algorithm:22} {path:6} {run['rows']:>9} {run['before_kib'] / 1024:>8.0f} MiB "
                  f"{run['peak_kib'] / 1024:>5.0f} MiB {growth / 2**20:>5.0f} MiB {growth / max(run['rows'], 1):>7.1f} "
                  f"{run['seconds']:>8.2f}  {','.join(run['kept'])}", flush=True)
        frame, disk = runs["frame"], runs["disk"]
        grow = [(r["peak_kib"] - r["before_kib"]) for r in (disk, frame)]
        equal = disk["aggregates"] == frame["aggregates"]
        same &= equal
        print(f"{algorithm:22} disk / frame: peak {disk['peak_kib'] / frame['peak_kib']:.2f}x, growth "
              f"{grow[0] / max(grow[1], 1):.2f}x, time {disk['seconds'] / frame['seconds']:.2f}x; "
              f"aggregates {'identical' if equal else 'DIFFERENT'}", flush=True)
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
