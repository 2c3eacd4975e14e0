"""The cost of verifiable rounds (ADR 0029) per round, beside the same round unverified.

**A node's round** (what issue 13's "round p50 <= 5 ms" is read as for a node): one node (SQLite
store, ``--rows`` synthetic rows) answers round 1 of a logistic regression among ``n`` participants,
itself and ``n - 1`` peers whose keys the benchmark holds and the node has pinned (their
contributions are the node's own round-0 aggregates, released with their own masks under secure
aggregation, so the masks cancel, and tagged with their keys).  Two paths, calls of both kinds
interleaved, ``--repeat`` of each, p50 and p90 of the wall time:

* ``answer_step``: :func:`mipflow.node.api.step.answer_step` in process (parse, every control, the
  local step, the reply as a dict);
* ``ASGI app``: a signed ``POST /v1/steps/logistic_regression`` straight into the node's ASGI app
  (:func:`mipflow.node.api.app.create_app`), no socket and no HTTP client: authentication,
  routing, the step and the reply's JSON, i.e. the node's whole request path except the network;
* ``HTTP``: the same signed call to the node served as a process (``mipflow node serve``, uvicorn)
  on loopback, one call at a time, timed at the client (``httpx``): the above plus HTTP.

and two kinds of call:

* verified: the call carries the transcript; the node checks ``n`` tags, pins ``n - 1`` peers,
  recomputes the global step (summing the masked contributions under secure aggregation), computes
  on its recomputation and tags its reply for ``n`` participants;
* unverified: the same round with the state given, no transcript, and the two controls taken out
  of the chain (what a node did before ADR 0029).

**Whole federated rounds**: ``n`` in-process nodes (their real signed API through a FastAPI
``TestClient``, no network, one GIL for all) run logistic regressions through
:func:`mipflow.central.rounds.run_analysis`; wall time per round (the analysis' seconds over its
rounds), p50 over the analyses, verified beside the same nodes answering through the chain without
the two controls (the central site sends its transcripts either way, so its own part of the
protocol is in both).  Last, the same over real node processes on loopback (``mipflow node
serve``; the baseline's processes start through a bench-only launcher that takes the two controls
out of their chain), both federations serving the same homes, analyses interleaved; besides the
analysis' seconds over its rounds (which include its metadata and key fetches) the p50 of one step
round (every node's call, first sent to last answered).  All ``n`` node processes and the central
site share this machine's CPUs: at 10 nodes on 2 CPUs a round measures the machine's throughput
(every node's verification, ``O(n)`` each, queued on 2 CPUs), not a federation's latency, where
each node runs on its own machine.

Goal (issue 13): verified <= 1.2 x unverified per round, and round p50 <= 5 ms, at 3 and 10 nodes.

``breakdown`` prints the same node's round at 10 participants control by control (each control of
the chain timed), unverified beside verified.

Usage: ``python bench/verification.py [--rows 3000] [--repeat 200] [--analyses 15] [--only node]``
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
# this checkout's code, here and in the node services it starts (not an installed copy)
sys.path.insert(0, str(REPO / "plugins"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO),
                                            *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--analyses", type=int, default=15)
    parser.add_argument("--only", choices=("node", "breakdown", "federated", "processes"), default=None,
                        help="run one part only")
    args = parser.parse_args()
    from common import print_machine

    print_machine()
    for name, part in (("node", node_round), ("breakdown", control_breakdown), ("federated", federated_round),
                       ("processes", process_round)):
        if args.only in (None, name):
            part(args)
    return 0


#: Starts a node service whose steps skip round verification (bench only: the baseline).
UNVERIFIED_SERVE = (
    "import sys, mipflow.node.api.step as s; "
    "s.answer_step.__kwdefaults__ = {'chain': tuple(c for c in s.CHAIN if c not in (s.verify_round, s.tag_release))}; "
    "from mipflow.cli import main; sys.exit(main(['node', 'serve', sys.argv[1], '--port', sys.argv[2], '--insecure-http']))")


def _serve(homes: list, unverified: bool) -> tuple[list, list[str]]:
    import subprocess

    import httpx

    from tests.nodes import free_port

    procs, urls = [], []
    for home in homes:
        port = str(free_port())
        command = ([sys.executable, "-c", UNVERIFIED_SERVE, str(home.root), port] if unverified else
                   [sys.executable, "-m", "mipflow.cli", "node", "serve", str(home.root), "--port", port,
                    "--insecure-http"])
        log = open(Path(home.root) / f"serve-{'u' if unverified else 'v'}.log", "wb")
        procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)))
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
    return procs, urls


def process_round(args: argparse.Namespace) -> None:
    """Rounds over real node processes on loopback, verified and not: an analysis' seconds over its
    rounds (with its metadata and key fetches) and one step round's wall time (every node's call,
    from the first sent to the last answered: what :func:`mipflow.central.rounds._call_all` takes)."""
    import mipflow.central.rounds as central_rounds
    from mipflow.central.client import NodeClient, NodeEndpoint
    from mipflow.central.rounds import run_analysis
    from mipflow.protocol.signing import issue_client
    from tests.mipflow.algorithms.synthetic import request
    from tests.nodes import PROJECT, RESEARCHER, in_process_node, pin_each_other

    case = request(x=("x1", "age", "sex"), y=("outcome",), positive_class="yes").to_dict()
    print(f"node processes on loopback (HTTP), logistic regression, {args.analyses} analyses per line, "
          f"{args.rows // 3} rows per node; p50 ms, unverified / verified (ratio)")
    print("  nodes  secure  rounds  analysis / rounds                step round (all nodes' calls)")
    original = central_rounds._call_all
    step_rounds: list[float] = []

    def timed_call_all(*args_: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args_, **kwargs)
        finally:
            step_rounds.append(1000.0 * (time.perf_counter() - started))

    for n in (3, 10):
        with tempfile.TemporaryDirectory(prefix="mipflow-verify-proc-") as tmp:
            nodes = [in_process_node(Path(tmp) / f"n{i}", f"n{i}", seed=100 + i, rows=args.rows // 3,
                                     patients=f"p{i}") for i in range(n)]
            homes = [home for _, home in nodes]
            for client, home in nodes:
                client.close()
                for key in ("query_budget", "query_budget_project", "differencing_check"):
                    home.set_setting(key, 0)
            pin_each_other(homes)
            creds = [issue_client(home.root, "bench") for home in homes]
            running = {label: _serve(homes, label == "unverified") for label in ("unverified", "verified")}
            clients = {label: [NodeClient(NodeEndpoint(home.name, url, cred.client_id, cred.secret.hex()), retries=0)
                               for home, url, cred in zip(homes, urls, creds)]
                       for label, (_, urls) in running.items()}
            central_rounds._call_all = timed_call_all
            try:
                for secure in (False, True):
                    per_round: dict[str, list[float]] = {"unverified": [], "verified": []}
                    per_step: dict[str, list[float]] = {"unverified": [], "verified": []}
                    rounds = 0
                    for i in range(args.analyses + 1):  # the first of each is a warm-up
                        for label in ("unverified", "verified"):
                            step_rounds.clear()
                            outcome = run_analysis("logistic_regression", case, clients[label], researcher=RESEARCHER,
                                                   project=PROJECT, secure_aggregation=secure)
                            rounds = outcome.rounds
                            if i:
                                per_round[label].append(1000.0 * outcome.seconds / outcome.rounds)
                                per_step[label].extend(step_rounds)
                    cells = []
                    for series in (per_round, per_step):
                        base, check = statistics.median(series["unverified"]), statistics.median(series["verified"])
                        cells.append(f"{base:6.2f} / {check:6.2f} ({check / base:4.2f}x)")
                    print(f"  {n:5d}  {str(secure):6}  {rounds:6d}  {cells[0]:31}  {cells[1]}")
            finally:
                central_rounds._call_all = original
                for group in clients.values():
                    for client in group:
                        client.close()
                for procs, _ in running.values():
                    for proc in procs:
                        proc.terminate()
                    for proc in procs:
                        proc.wait(timeout=10)


def federated_round(args: argparse.Namespace) -> None:
    import mipflow.node.api.step as step
    from mipflow.central.rounds import run_analysis
    from tests.mipflow.algorithms.synthetic import request
    from tests.nodes import PROJECT, RESEARCHER, in_process_node, pin_each_other, unverified_chain

    case = request(x=("x1", "age", "sex"), y=("outcome",), positive_class="yes").to_dict()
    unverified = unverified_chain()
    defaults = step.answer_step.__kwdefaults__
    print(f"federated logistic regression, {args.analyses} analyses per line, {args.rows // 3} rows per node")
    print("  nodes  secure  rounds  unverified p50 ms/round   verified p50 ms/round   ratio")
    for n in (3, 10):
        with tempfile.TemporaryDirectory(prefix="mipflow-verify-fed-") as tmp:
            nodes = [in_process_node(Path(tmp) / f"n{i}", f"n{i}", seed=100 + i, rows=args.rows // 3,
                                     patients=f"p{i}") for i in range(n)]
            homes = [home for _, home in nodes]
            for home in homes:
                for key in ("query_budget", "query_budget_project", "differencing_check"):
                    home.set_setting(key, 0)
            pin_each_other(homes)
            clients = [client for client, _ in nodes]
            for secure in (False, True):
                per_round: dict[str, list[float]] = {"unverified": [], "verified": []}
                rounds = 0
                for _ in range(args.analyses + 1):  # the first of each is a warm-up
                    for label, chain in (("unverified", unverified), ("verified", step.CHAIN)):
                        step.answer_step.__kwdefaults__ = {**defaults, "chain": chain}
                        try:
                            outcome = run_analysis("logistic_regression", case, clients, researcher=RESEARCHER,
                                                   project=PROJECT, secure_aggregation=secure)
                        finally:
                            step.answer_step.__kwdefaults__ = defaults
                        rounds = outcome.rounds
                        per_round[label].append(1000.0 * outcome.seconds / outcome.rounds)
                base = statistics.median(per_round["unverified"][1:])
                check = statistics.median(per_round["verified"][1:])
                print(f"  {n:5d}  {str(secure):6}  {rounds:6d}  {base:23.2f}   {check:21.2f}   {check / base:5.2f}x")
            for client in clients:
                client.close()


def _node_bodies(home: Any, context: Any, n: int, secure: bool) -> tuple[bytes, bytes]:
    """Round 1 of a logistic regression for the node ``home`` among ``n`` participants: the body
    with the transcript (verified) and the same without it (unverified), both with the state the
    global step gives on round 0 (under ``secure``, of masked contributions whose masks cancel)."""
    from mipflow.algorithms import get_algorithm
    from mipflow.node.api.step import answer_step
    from mipflow.secagg.central_side import unmask_sum
    from mipflow.secagg.codec import SCHEME
    from mipflow.secagg.crypto import KeyPair, context_digest, load_keypair
    from mipflow.secagg.node_side import masked_release, secure_form
    from mipflow.secagg.transcript import TRANSCRIPT_SCHEME, addressed_to, genesis, message, tags_for
    from mipflow.secagg.trust import TrustStore
    from tests.mipflow.algorithms.synthetic import MODEL, request

    case = request(x=("x1", "age", "sex"), y=("outcome",), positive_class="yes")
    doc = case.to_dict()
    algorithm = get_algorithm("logistic_regression")
    own = load_keypair(home.root)
    peers = {f"peer{i}": KeyPair.generate() for i in range(n - 1)}
    store = TrustStore(home.root)
    for name, pair in peers.items():
        store.pin(name, pair.public_hex)
    keys = {home.name: own.public_bytes, **{name: pair.public_bytes for name, pair in peers.items()}}
    hexes = {name: key.hex() for name, key in keys.items()}
    listed = [{"node": name, "public_key": key} for name, key in sorted(hexes.items())]
    analysis_id = uuid.uuid4().hex
    transcript0 = {"scheme": TRANSCRIPT_SCHEME, "participants": listed, "previous": None}
    body0 = {"request": doc, "round": 0, "state": None, "researcher": "tester", "project": "mipflow-tests",
             "analysis_id": analysis_id, "transcript": transcript0}
    if secure:
        body0["secure_aggregation"] = {"scheme": SCHEME, "participants": listed}
    reply = answer_step(context, "central", "logistic_regression", json.dumps(body0).encode())
    # the peers' round 0: the node's own aggregates, released (masked with the peer's masks) and tagged
    if secure:
        plain = answer_step(context, "central", "logistic_regression", json.dumps(
            {k: v for k, v in body0.items() if k not in ("transcript", "secure_aggregation")}).encode())
        summed = secure_form("logistic_regression", plain["aggregates"], case, MODEL)
        seeds = context_digest(analysis_id=analysis_id, algorithm="logistic_regression", round_no=0, request=doc,
                               state=None, participants=keys.values())
    chain = genesis(analysis_id=analysis_id, algorithm="logistic_regression", request=doc, participants=hexes)
    contributions = [{"node": home.name, "aggregates": reply["aggregates"], "tags": reply["tags"]}]
    for name, pair in peers.items():
        released = (json.loads(json.dumps(masked_release(pair, keys.values(), seeds, summed))) if secure
                    else reply["aggregates"])
        msg = message(chain=chain, analysis_id=analysis_id, algorithm="logistic_regression", round_no=0,
                      request=doc, state=None, participants=hexes, node=name, aggregates=released)
        contributions.append({"node": name, "aggregates": released, "tags": tags_for(pair, keys, msg)})
    aggregates = [c["aggregates"] for c in contributions]
    state = algorithm.global_step(0, [unmask_sum(aggregates)] if secure else aggregates, case, MODEL, None).state
    state = json.loads(json.dumps(state))
    # as the central site sends it: each contribution with its tag for this node only
    verified = dict(body0, round=1, state=state, transcript={
        **transcript0, "previous": addressed_to({"chain": chain, "state": None, "contributions": contributions},
                                                home.name)})
    bare = dict(body0, round=1, state=state)
    bare.pop("transcript")
    return json.dumps(bare).encode(), json.dumps(verified).encode()


class _Asgi:
    """Signed step calls straight into the node's ASGI app (no socket, no HTTP client): the node's
    whole request path (authentication, routing, the step, the reply's encoding), nothing else."""

    def __init__(self, home: Any) -> None:
        import asyncio

        from mipflow.node.api.app import create_app
        from mipflow.protocol.signing import issue_client

        self.credential = issue_client(home.root, "bench")
        self.app = create_app(home)
        self.loop = asyncio.new_event_loop()

    def call(self, raw: bytes) -> float:
        """One signed call (signed before the clock starts); its wall time in ms."""
        from mipflow.protocol.signing import signed_headers

        path = "/v1/steps/logistic_regression"
        headers = signed_headers(self.credential.client_id, self.credential.secret, "POST", path, raw)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
                 + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        status: list[int] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        started = time.perf_counter()
        self.loop.run_until_complete(self.app(scope, receive, send))
        elapsed = 1000.0 * (time.perf_counter() - started)
        if status != [200]:
            raise RuntimeError(f"the node answered {status}")
        return elapsed

    def close(self) -> None:
        self.loop.close()


def control_breakdown(args: argparse.Namespace) -> None:
    """Where one node's round 1 goes, control by control (``answer_step`` with each control of the
    chain timed), unverified beside verified, at 10 participants in the clear and masked."""
    import mipflow.node.api.step as step
    from mipflow.node.api.context import StepContext
    from mipflow.node.home import NodeHome
    from tests.mipflow.algorithms.synthetic import MODEL, make_data
    from tests.nodes import grant_all, load_frame, unverified_chain

    print(f"where one node's round 1 goes (logistic regression, {args.rows} rows, 10 participants), "
          f"p50 ms over {args.repeat} calls of each kind, interleaved")
    for secure in (False, True):
        with tempfile.TemporaryDirectory(prefix="mipflow-verify-") as tmp:
            home = NodeHome.init(Path(tmp) / "site", "site")
            home.set_setting("default_mode", "standard")  # the exact rounds (ADR 0038)
            for key in ("query_budget", "query_budget_project", "differencing_check"):
                home.set_setting(key, 0)
            data = make_data(11, args.rows)
            load_frame(home.root, MODEL, data.assign(subjectcode=[f"p{i}" for i in range(len(data))]))
            grant_all(home.root)
            context = StepContext.open(home)
            raws = dict(zip(("unverified", "verified"), _node_bodies(home, context, 10, secure)))
            times: dict[str, dict[str, list[float]]] = {"unverified": {}, "verified": {}}

            def timed(kind: str, control: Any) -> Any:
                def run(request: Any, context_: Any, work: Any) -> None:
                    started = time.perf_counter()
                    try:
                        control(request, context_, work)
                    finally:
                        times[kind].setdefault(control.__name__, []).append(time.perf_counter() - started)
                return run

            chains = {"unverified": tuple(timed("unverified", c) for c in unverified_chain()),
                      "verified": tuple(timed("verified", c) for c in step.CHAIN)}
            for i in range(args.repeat + 10):
                if i == 10:  # the first 10 of each are a warm-up
                    times = {"unverified": {}, "verified": {}}
                for kind in ("unverified", "verified"):
                    started = time.perf_counter()
                    step.answer_step(context, "central", "logistic_regression", raws[kind], chain=chains[kind])
                    times[kind].setdefault("total", []).append(time.perf_counter() - started)
            p50 = {kind: {name: 1000.0 * statistics.median(v) for name, v in series.items()}
                   for kind, series in times.items()}
            for kind in p50:
                p50[kind]["parsing the body, the reply"] = p50[kind]["total"] - sum(
                    v for name, v in p50[kind].items() if name != "total")
            print(f"  {'masked' if secure else 'in the clear'}")
            print(f"    {'control':32} {'unverified':>10} {'verified':>10}")
            for name in [c.__name__ for c in step.CHAIN] + ["parsing the body, the reply", "total"]:
                base, check = p50["unverified"].get(name), p50["verified"].get(name)
                if max(base or 0.0, check or 0.0) >= 0.005:
                    cells = ["-" if v is None else f"{v:.3f}" for v in (base, check)]
                    print(f"    {name:32} {cells[0]:>10} {cells[1]:>10}")


def node_round(args: argparse.Namespace) -> None:
    """One node's round 1 of logistic regression, verified and not, in process: through
    :func:`answer_step` (the step and its controls) and through the node's ASGI app (the signed
    request path: authentication, routing, the step, the reply's JSON), calls interleaved."""
    import httpx

    import mipflow.node.api.step as step
    from mipflow.node.api.context import StepContext
    from mipflow.protocol.signing import signed_headers
    from mipflow.node.home import NodeHome
    from tests.mipflow.algorithms.synthetic import MODEL, make_data
    from tests.nodes import grant_all, load_frame, unverified_chain

    unverified = unverified_chain()
    defaults = step.answer_step.__kwdefaults__
    print(f"one node's round 1 of logistic regression, {args.rows} rows, {args.repeat} calls of each kind "
          "(interleaved); p50 [p90] ms")
    print("  nodes  secure  path         unverified        verified           ratio p50   request kB")
    for n in (3, 10):
        for secure in (False, True):
            with tempfile.TemporaryDirectory(prefix="mipflow-verify-") as tmp:
                home = NodeHome.init(Path(tmp) / "site", "site")
                home.set_setting("default_mode", "standard")  # the exact rounds (ADR 0038)
                for key in ("query_budget", "query_budget_project", "differencing_check"):
                    home.set_setting(key, 0)
                data = make_data(11, args.rows)
                load_frame(home.root, MODEL, data.assign(subjectcode=[f"p{i}" for i in range(len(data))]))
                grant_all(home.root)
                context = StepContext.open(home)
                raw_bare, raw_verified = _node_bodies(home, context, n, secure)
                asgi = _Asgi(home)

                def in_process(raw: bytes, chain: tuple) -> float:
                    started = time.perf_counter()
                    step.answer_step(context, "central", "logistic_regression", raw, chain=chain)
                    return 1000.0 * (time.perf_counter() - started)

                def through_app(raw: bytes, chain: tuple) -> float:
                    step.answer_step.__kwdefaults__ = {**defaults, "chain": chain}
                    try:
                        return asgi.call(raw)
                    finally:
                        step.answer_step.__kwdefaults__ = defaults

                # the same node served as two processes (one with the chain without verification)
                served = {label: _serve([home], label == "bare") for label in ("bare", "verified")}
                http = {label: httpx.Client(base_url=urls[0]) for label, (_, urls) in served.items()}
                credential = asgi.credential

                def over_http(raw: bytes, chain: tuple) -> float:
                    path = "/v1/steps/logistic_regression"
                    headers = signed_headers(credential.client_id, credential.secret, "POST", path, raw)
                    headers["Content-Type"] = "application/json"
                    client = http["bare" if chain is unverified else "verified"]
                    started = time.perf_counter()
                    response = client.post(path, content=raw, headers=headers)
                    elapsed = 1000.0 * (time.perf_counter() - started)
                    if response.status_code != 200:
                        raise RuntimeError(f"the node answered {response.status_code}")
                    return elapsed

                for label, call in (("answer_step", in_process), ("ASGI app", through_app), ("HTTP", over_http)):
                    times: dict[str, list[float]] = {"bare": [], "verified": []}
                    for i in range(args.repeat + 10):  # interleaved, the first 10 of each a warm-up
                        for kind, raw, chain in (("bare", raw_bare, unverified),
                                                 ("verified", raw_verified, step.CHAIN)):
                            elapsed = call(raw, chain)
                            if i >= 10:
                                times[kind].append(elapsed)
                    p50 = {k: statistics.median(v) for k, v in times.items()}
                    p90 = {k: statistics.quantiles(v, n=10)[8] for k, v in times.items()}
                    print(f"  {n:5d}  {str(secure):6}  {label:11}  {p50['bare']:6.2f} [{p90['bare']:5.2f}]    "
                          f"{p50['verified']:6.2f} [{p90['verified']:5.2f}]     {p50['verified'] / p50['bare']:5.2f}x"
                          f"   {len(raw_verified) / 1e3:10.1f}")
                asgi.close()
                for client in http.values():
                    client.close()
                for procs, _ in served.values():
                    for proc in procs:
                        proc.terminate()
                        proc.wait(timeout=10)
                context.close() if hasattr(context, "close") else None


if __name__ == "__main__":
    raise SystemExit(main())
