"""What verification and sealing cost in a Cox regression's rounds (issue 13, ADR 0029/0046/0055).

``n`` in-process nodes (their real signed API through a FastAPI ``TestClient``, no network) hold
``--rows`` rows of ``bench/cox.py``'s data together, split evenly; whole Cox regressions (Breslow, bin
width 1 day, secure aggregation automatic, so from 3 nodes the sealed sums are masked) run through
:func:`mipflow.central.rounds.run_analysis`, the nodes called one after the other (one GIL; each
call's time is then its own).  Every control of each node's chain is timed, and the node's whole
call (the signature check, parsing the body, the chain, the reply's JSON); the central site's
transcript work (each call's transcript, the chain) per round.

Per kind of round (0, start, sums, score), p50 over every node and warm analysis, in ms:

* ``node``: a node's call in its app; ``v+s``: the stages of verification and sealing in it
  (``verify_round``, ``open_sealed``, ``seal``, ``tag_release``), ``mask`` (secure aggregation)
  beside them; ``ratio``: ``node / (node - v+s)``, the round over the same round without those stages
  (issue 13's goal: <= 1.2 at 3 and 10 nodes);
* ``body``: the signature check, parsing the body and encoding the reply (what grows with the
  ciphertexts' bytes), and the largest request and reply in kB; last, over all rounds, the share of
  verification and sealing in the nodes' calls and the central's transcript work per round.

``--profile FILE`` writes cProfile statistics of the last analysis: the central site's thread to
``FILE.<n>.central``, the nodes' calls (each from its body to its reply's JSON, in the app's thread) to
``FILE.<n>.node``.

Usage: ``python bench/cox_sealing.py [--rows 60000] [--analyses 4] [--nodes 3,10] [--profile FILE]``
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "plugins"))

STAGES = ("verify_round", "open_sealed", "seal", "tag_release")


class _Serial:
    """A pool that runs each call when submitted (one node at a time, so each call's time is its own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 (handed to the caller, as a pool does)
            future.set_exception(exc)
        return future

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> "_Serial":
        return self

    def __exit__(self, *args: Any) -> bool:
        return False


def federation(tmp: Path, n: int, rows: int) -> tuple[list, dict]:
    from fastapi.testclient import TestClient

    import cox as coxbench
    from mipflow.central.client import NodeClient, NodeEndpoint
    from mipflow.node.api.app import create_app
    from mipflow.node.home import NodeHome
    from mipflow.protocol.datamodel import DataModel
    from mipflow.protocol.signing import issue_client
    from tests.nodes import grant_all, load_frame, pin_each_other

    doc = coxbench.model_doc()
    doc["variables"][0]["enumerations"] = [{"code": f"site{i}", "label": f"Site {i}"} for i in range(n)]
    model = DataModel.from_dict(doc)
    homes, clients = [], []
    for i in range(n):
        home = NodeHome.init(tmp / f"site{i}", f"site{i}")
        home.set_setting("default_mode", "standard")  # the exact rounds (ADR 0038)
        for key in ("query_budget", "query_budget_project", "differencing_check"):
            home.set_setting(key, 0)
        load_frame(home.root, model, coxbench.make_rows(rows // n, 100 + i, i))
        grant_all(home.root)
        homes.append(home)
    pin_each_other([h.root for h in homes])
    for home in homes:
        cred = issue_client(home.root, "central")
        client = NodeClient(NodeEndpoint(home.name, "http://testserver", cred.client_id, cred.secret.hex()), retries=0)
        client._http.close()
        client._http = TestClient(create_app(home), base_url="http://testserver")
        clients.append(client)
    request = {"inputdata": {"data_model": "coxbench:1", "datasets": [f"site{i}" for i in range(n)],
                             "x": ["arm", *coxbench.NUMERICAL], "y": ["days", "death"], "filters": None},
               "parameters": {"event_level": "yes", "bin_width": 1}}
    return clients, request


def kind_of(round_no: int) -> str:
    return "0" if round_no == 0 else "start" if round_no == 1 else "sums" if round_no % 2 == 0 else "score"


def measure(n: int, rows: int, analyses: int, profile: str | None) -> None:
    import mipflow.central.rounds as central_rounds
    import mipflow.node.api.app as app
    import mipflow.node.api.step as step
    from mipflow.central.rounds import run_analysis
    from tests.nodes import PROJECT, RESEARCHER

    calls: list[dict[str, Any]] = []  # one per node call: round, per-stage seconds, call seconds, bytes
    current: dict[str, Any] = {}
    central = [0.0]  # the central's transcript work over the warm analyses

    def timed(control: Any) -> Any:
        def run(request: Any, context: Any, work: Any) -> None:
            started = time.perf_counter()
            try:
                control(request, context, work)
            finally:
                current["stages"][control.__name__] = time.perf_counter() - started
                current["round"] = request.round
        run.__name__ = control.__name__
        return run

    chain = tuple(timed(c) for c in step.CHAIN)
    defaults = step.answer_step.__kwdefaults__
    original_request = {}

    def attach(client: Any) -> None:
        http = client._http
        original_request[client.name] = original = http.request

        def request(method: str, path: str, **kwargs: Any) -> Any:
            if not path.startswith("/v1/steps/"):
                return original(method, path, **kwargs)
            current.clear()
            current["stages"] = {}
            started = time.perf_counter()
            response = original(method, path, **kwargs)
            calls.append({"round": current.get("round", -1), "stages": dict(current["stages"]),
                          "call": current.get("call", float("nan")), "body": current.get("json", 0.0),
                          "sent": len(kwargs.get("content") or b""), "received": len(response.content),
                          "wall": time.perf_counter() - started})
            return response
        http.request = request

    original_json = app.json_bytes

    import cProfile

    node_profile = cProfile.Profile()  # the nodes' calls of the last analysis, in the app's thread
    profiling = [False]

    def json_bytes(doc: Any) -> bytes:
        started = time.perf_counter()
        try:
            return original_json(doc)
        finally:
            current["json"] = time.perf_counter() - started
            current["call"] = time.perf_counter() - current["app_started"]
            if profiling[0]:
                node_profile.disable()

    def central_timed(method: Any) -> Any:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                central[0] += time.perf_counter() - started
        return run

    import starlette.requests

    original_body = starlette.requests.Request.body

    async def body(self: Any) -> bytes:  # the app's first touch of a step call: its clock starts here
        if self.url.path.startswith("/v1/steps/"):
            if profiling[0]:
                node_profile.enable()
            current["app_started"] = time.perf_counter()
        return await original_body(self)

    patches = [(central_rounds, "ThreadPoolExecutor", _Serial), (app, "json_bytes", json_bytes),
               (starlette.requests.Request, "body", body),
               (central_rounds._Rounds, "bodies", central_timed(central_rounds._Rounds.bodies)),
               (central_rounds._Rounds, "advance", central_timed(central_rounds._Rounds.advance))]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    with tempfile.TemporaryDirectory(prefix="mipflow-cox-sealing-") as tmp:
        clients, request = federation(Path(tmp), n, rows)
        for client in clients:
            attach(client)
        for obj, name, value in patches:
            setattr(obj, name, value)
        step.answer_step.__kwdefaults__ = {**defaults, "chain": chain}
        cpu: list[float] = []
        try:
            for i in range(analyses + 1):  # the first is a warm-up
                if i == 1:
                    calls.clear()
                    central[0] = 0.0
                rounds_before = len(calls)
                started = time.process_time()
                if profile and i == analyses:
                    profiler = cProfile.Profile()
                    profiling[0] = True
                    profiler.enable()
                outcome = run_analysis("cox_regression", request, clients, min_nodes=n, researcher=RESEARCHER,
                                       project=PROJECT)
                if profile and i == analyses:
                    profiler.disable()
                    profiling[0] = False
                    profiler.dump_stats(f"{profile}.{n}.central")
                    node_profile.dump_stats(f"{profile}.{n}.node")
                if i:
                    cpu.append(time.process_time() - started)
                for call in calls[rounds_before:]:
                    call["analysis"] = i
        finally:
            step.answer_step.__kwdefaults__ = defaults
            for obj, name, value in saved:
                setattr(obj, name, value)
            for client in clients:
                client._http.request = original_request[client.name]
                client.close()
    report(n, rows, outcome, calls, cpu, 1000 * central[0] / (analyses * outcome.rounds))


def report(n: int, rows: int, outcome: Any, calls: list[dict[str, Any]], cpu: list[float], central_ms: float) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for call in calls:
        by_kind[kind_of(call["round"])].append(call)
    print(f"\n{n} nodes x {rows // n} rows, {outcome.rounds} rounds ({outcome.result['iterations']} Newton steps), "
          f"CPU per warm analysis (all nodes and the central) p50 {statistics.median(cpu):.3f} s")
    print("  round   node ms   v+s ms  mask ms   ratio   body ms  sent kB  recv kB   "
          "verify  open  seal   tag")
    for kind in ("0", "start", "sums", "score"):
        group = by_kind.get(kind, [])
        if not group:
            continue
        node = [1000 * c["call"] for c in group]
        vs = [1000 * sum(c["stages"].get(s, 0.0) for s in STAGES) for c in group]
        ratio = [t / (t - v) for t, v in zip(node, vs)]
        body = [1000 * (c["call"] - sum(c["stages"].values())) for c in group]
        per = {s: statistics.median(1000 * c["stages"].get(s, 0.0) for c in group) for s in STAGES}
        print(f"  {kind:>5}  {statistics.median(node):8.2f}  {statistics.median(vs):7.2f}  "
              f"{statistics.median(1000 * c['stages'].get('mask', 0.0) for c in group):7.2f}  "
              f"{statistics.median(ratio):6.2f}x  {statistics.median(body):8.2f}  "
              f"{max(c['sent'] for c in group) / 1e3:7.1f}  {max(c['received'] for c in group) / 1e3:7.1f}   "
              f"{per['verify_round']:6.2f} {per['open_sealed']:5.2f} {per['seal']:5.2f} {per['tag_release']:5.2f}")
    node_all = sum(c["call"] for c in calls)
    vs_all = sum(sum(c["stages"].get(s, 0.0) for s in STAGES) for c in calls)
    print(f"  all rounds: nodes' calls {1000 * node_all / len(calls):.2f} ms each on average, of which "
          f"verification and sealing {100 * vs_all / node_all:.1f}%: ratio {node_all / (node_all - vs_all):.2f}x; "
          f"the central's transcripts {central_ms:.2f} ms per round")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=60_000, help="rows over all nodes")
    parser.add_argument("--analyses", type=int, default=4)
    parser.add_argument("--nodes", default="3,10")
    parser.add_argument("--profile", default=None, help="cProfile the last analysis into FILE.<n>.{central,node}")
    args = parser.parse_args()
    from common import print_machine

    print_machine()
    for n in (int(v) for v in args.nodes.split(",")):
        measure(n, args.rows, args.analyses, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
