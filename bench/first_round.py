"""One node's first round of a new selection, in process (no HTTP), optionally under cProfile.

Builds (once, kept in ``--home``) a SQLite node home with R rows of bench/scale.py's data model and its
columnar snapshot, then answers ``answer_step`` calls as the node's API does:

- ``new``: the cohort ledger removed first, so the first round's cohort is new to the node;
- ``known``: a new selection (covariates in another order each time) of a cohort the ledger holds.

Usage::

    python bench/first_round.py --rows 1000000 --home /tmp/fr-home [--profile] [--repeat 3]
        [--algorithm linear_regression|logistic_regression] [--case new|known]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale import COVARIATES, LOAD_CHUNK, forget_cohorts, make_rows, model_doc  # noqa: E402


def prepare(root: Path, rows: int) -> None:
    from mipflow.node.home import NodeHome
    from mipflow.node.ops import refresh_snapshots
    from mipflow.protocol.datamodel import DataModel
    from tests.nodes import grant_all, load_frame

    if (root / "ready").exists():
        return
    home = NodeHome.init(root, "site0", "")
    home.set_setting("default_mode", "standard")
    model = DataModel.from_dict(model_doc(1))
    t = time.perf_counter()
    for first in range(0, rows, LOAD_CHUNK):  # a million rows at a time, as bench/scale.py loads them
        load_frame(home.root, model, make_rows(min(LOAD_CHUNK, rows - first), 0, "site0", first))
    grant_all(home.root, "bench", "bench")
    refresh_snapshots(NodeHome(root))
    print(f"prepared {rows} rows in {time.perf_counter() - t:.1f}s", flush=True)
    (root / "ready").write_text("1")


def body(algorithm: str, x: list[str], n: int, round_no: int = 0, state: dict | None = None,
         analysis_id: str | None = None) -> bytes:
    y, params = (["y"], {}) if algorithm == "linear_regression" else (["event"], {"positive_class": "yes"})
    doc = {"request": {"inputdata": {"data_model": "scale:1", "datasets": ["site0"], "x": x, "y": y,
                                     "filters": None}, "parameters": params},
           "round": round_no, "state": state, "researcher": "bench", "project": "bench",
           "analysis_id": analysis_id or f"fr-{n}-{time.time_ns()}", "secure_aggregation": None}
    return json.dumps(doc).encode()


def whole_analysis(context, algorithm: str, x: list[str], n: int) -> list[float]:
    """Every round of one analysis at this one node (the central site's global steps in between, round
    verification left out: tests.nodes.unverified_chain); the seconds of each node round."""
    from mipflow.algorithms import get_algorithm
    from mipflow.node.api.step import answer_step
    from mipflow.protocol.datamodel import DataModel
    from mipflow.protocol.request import AnalysisRequest
    from tests.nodes import unverified_chain

    algo = get_algorithm(algorithm)
    chain = unverified_chain()
    doc = json.loads(body(algorithm, x, n))
    request = AnalysisRequest.from_dict(doc["request"])
    model = DataModel.from_dict(model_doc(1))
    state, times, round_no = None, [], 0
    while True:
        raw = body(algorithm, x, n, round_no, state, doc["analysis_id"])
        t = time.perf_counter()
        reply = answer_step(context, "central", algorithm, raw, chain=chain)
        times.append(time.perf_counter() - t)
        step = algo.global_step(round_no, [reply["aggregates"]], request, model, state)
        if step.done:
            return times
        state, round_no = step.state, round_no + 1



def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--home", default="/tmp/fr-home")
    parser.add_argument("--algorithm", default="linear_regression")
    parser.add_argument("--case", choices=("new", "known"), default="new")
    parser.add_argument("--whole", action="store_true", help="every round of the analysis (known cohort)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=35)
    args = parser.parse_args()

    from mipflow.node.api.context import StepContext
    from mipflow.node.api.step import answer_step
    from mipflow.node.controls.sqlite_state import _HOMES
    from mipflow.node.home import NodeHome

    root = Path(args.home)
    prepare(root, args.rows)
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    context = StepContext.open(NodeHome(root))
    if args.case == "known":  # the cohort recorded once, outside the measure
        answer_step(context, "central", args.algorithm, body(args.algorithm, COVARIATES, -1))
    times = []
    profiler = cProfile.Profile() if args.profile else None
    for i in range(args.repeat):
        if args.case == "new":
            forget_cohorts(root)
            _HOMES.clear()  # the per-process memories reopen their files, as a new node process would
            context = StepContext.open(NodeHome(root))
        x = COVARIATES[i % len(COVARIATES):] + COVARIATES[:i % len(COVARIATES)]
        if args.case == "known" or i % 2:
            x = x[::-1]
        raw = body(args.algorithm, x, i)
        t = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        if args.whole:
            rounds = whole_analysis(context, args.algorithm, x, i)
            print("rounds: " + ", ".join(f"{r:.3f}" for r in rounds) + " s", flush=True)
            reply = {"rows": "-"}
        else:
            reply = answer_step(context, "central", args.algorithm, raw)
        if profiler is not None:
            profiler.disable()
        times.append(time.perf_counter() - t)
        # drop the kept selection: the next call is a new selection again
        context.selections._kept.clear()
    print(f"{args.algorithm} {args.case} cohort: first round " + ", ".join(f"{t:.3f}" for t in times)
          + f" s (rows {reply['rows']}); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
