"""The cost of verifiable rounds (ADR 0029) at one node, per round, beside the same round unverified.

One node (SQLite store, synthetic rows) answers round 1 of a logistic regression among
``n`` participants: itself and ``n - 1`` peers whose keys the benchmark holds and the node has
pinned (their contributions are the node's own round-0 aggregates, tagged with their keys).
Measured in process through :func:`mipflow.node.api.step.answer_step` (parse, every control,
the local step, the reply), repeated, p50 and p90 of the wall time per round:

* verified: the call carries the transcript; the node checks ``n`` tags, recomputes the global
  step, computes on its recomputation and tags its reply for ``n`` participants;
* unverified: the same round with the state given and the two controls taken out of the chain
  (what a node did before ADR 0029).

Then whole federated rounds: ``n`` in-process nodes (their real signed API through a FastAPI
``TestClient``, no network) run logistic regressions through :func:`mipflow.central.rounds.run_analysis`;
wall time per round (the analysis' seconds over its rounds), p50 over the analyses, verified
beside the same nodes answering through the chain without the two controls (the central site
sends its transcripts either way, so its own part of the protocol is in both).

Last, the same over real node processes on loopback (``mipflow node serve``; the baseline's
processes start through a bench-only launcher that takes the two controls out of their chain),
both federations serving the same homes, analyses interleaved.

Goal (issue 13): verified <= 1.2 x unverified per round, and p50 <= 5 ms, at 3 and 10 nodes.

Usage: ``python bench/verification.py [--rows 3000] [--repeat 200] [--analyses 15]``
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--analyses", type=int, default=15)
    args = parser.parse_args()
    node_round(args)
    federated_round(args)
    process_round(args)
    return 0


#: Starts a node service whose steps skip round verification (bench only: the baseline).
UNVERIFIED_SERVE = (
    "import sys, mipflow.node.api.step as s; "
    "s.answer_step.__kwdefaults__ = {'chain': tuple(c for c in s.CHAIN if c not in (s.verify_round, s.tag_release))}; "
    "from mipflow.cli import main; sys.exit(main(['node', 'serve', sys.argv[1], '--port', sys.argv[2]]))")


def _serve(homes: list, unverified: bool) -> tuple[list, list[str]]:
    import os
    import subprocess

    import httpx

    from tests.nodes import free_port

    procs, urls = [], []
    for home in homes:
        port = str(free_port())
        command = ([sys.executable, "-c", UNVERIFIED_SERVE, str(home.root), port] if unverified else
                   [sys.executable, "-m", "mipflow.cli", "node", "serve", str(home.root), "--port", port])
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
    """Rounds over real node processes on loopback: per-round wall time, verified and not."""
    from mipflow.central.client import NodeClient, NodeEndpoint
    from mipflow.central.rounds import run_analysis
    from mipflow.protocol.signing import issue_client
    from tests.mipflow.algorithms.synthetic import request
    from tests.nodes import PROJECT, RESEARCHER, in_process_node, pin_each_other

    case = request(x=("x1", "age", "sex"), y=("outcome",), positive_class="yes").to_dict()
    print(f"node processes on loopback (HTTP), logistic regression, {args.analyses} analyses per line, "
          f"{args.rows // 3} rows per node")
    print("  nodes  secure  rounds  unverified p50 ms/round   verified p50 ms/round   ratio")
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
            try:
                for secure in (False, True):
                    per_round: dict[str, list[float]] = {"unverified": [], "verified": []}
                    rounds = 0
                    for _ in range(args.analyses + 1):
                        for label in ("unverified", "verified"):
                            outcome = run_analysis("logistic_regression", case, clients[label], researcher=RESEARCHER,
                                                   project=PROJECT, secure_aggregation=secure)
                            rounds = outcome.rounds
                            per_round[label].append(1000.0 * outcome.seconds / outcome.rounds)
                    base = statistics.median(per_round["unverified"][1:])
                    check = statistics.median(per_round["verified"][1:])
                    print(f"  {n:5d}  {str(secure):6}  {rounds:6d}  {base:23.2f}   {check:21.2f}   {check / base:5.2f}x")
            finally:
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


def node_round(args: argparse.Namespace) -> None:
    from common import print_machine
    from mipflow.algorithms import get_algorithm
    from mipflow.node.api.context import StepContext
    from mipflow.node.api.step import CHAIN, answer_step
    from mipflow.node.home import NodeHome
    from mipflow.secagg.crypto import KeyPair, load_keypair
    from mipflow.secagg.transcript import TRANSCRIPT_SCHEME, genesis, message, tags_for
    from mipflow.secagg.trust import TrustStore
    from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
    from tests.nodes import grant_all, load_frame, unverified_chain

    print_machine()
    case = request(x=("x1", "age", "sex"), y=("outcome",), positive_class="yes")
    doc = case.to_dict()
    algorithm = get_algorithm("logistic_regression")
    unverified = unverified_chain()
    print(f"logistic regression, round 1, one node with {args.rows} rows, {args.repeat} calls each")
    print("  nodes  unverified p50 ms  p90 ms   verified p50 ms  p90 ms   ratio p50   request kB")
    with tempfile.TemporaryDirectory(prefix="mipflow-verify-") as tmp:
        home = NodeHome.init(Path(tmp) / "site", "site")
        home.set_setting("query_budget", 0)
        home.set_setting("query_budget_project", 0)
        home.set_setting("differencing_check", 0)
        data = make_data(11, args.rows)
        load_frame(home.root, MODEL, data.assign(subjectcode=[f"p{i}" for i in range(len(data))]))
        grant_all(home.root)
        context = StepContext.open(home)
        own = load_keypair(home.root)
        for n in (3, 10):
            peers = {f"peer{i}": KeyPair.generate() for i in range(n - 1)}
            store = TrustStore(home.root)
            for name, pair in peers.items():
                store.pin(name, pair.public_hex)
            keys = {"site": own.public_bytes, **{name: pair.public_bytes for name, pair in peers.items()}}
            hexes = {name: key.hex() for name, key in keys.items()}
            analysis_id = uuid.uuid4().hex
            transcript0 = {"scheme": TRANSCRIPT_SCHEME, "participants": [
                {"node": name, "public_key": key} for name, key in sorted(hexes.items())], "previous": None}
            body0 = {"request": doc, "round": 0, "state": None, "researcher": "tester", "project": "mipflow-tests",
                     "analysis_id": analysis_id, "transcript": transcript0}
            reply = answer_step(context, "central", "logistic_regression", json.dumps(body0).encode())
            chain = genesis(analysis_id=analysis_id, algorithm="logistic_regression", request=doc,
                            participants=hexes)
            contributions = [{"node": "site", "aggregates": reply["aggregates"], "tags": reply["tags"]}]
            for name, pair in peers.items():
                msg = message(chain=chain, analysis_id=analysis_id, algorithm="logistic_regression", round_no=0,
                              request=doc, state=None, participants=hexes, node=name, aggregates=reply["aggregates"])
                contributions.append({"node": name, "aggregates": reply["aggregates"], "tags": tags_for(pair, keys, msg)})
            state = algorithm.global_step(0, [c["aggregates"] for c in contributions], case, MODEL, None).state
            state = json.loads(json.dumps(state))
            verified = dict(body0, round=1, state=state, transcript={
                **transcript0, "previous": {"chain": chain, "state": None, "contributions": contributions}})
            plain = dict(body0, round=1, state=state)
            plain.pop("transcript")
            raw_verified, raw_plain = json.dumps(verified).encode(), json.dumps(plain).encode()

            def timed(raw: bytes, chain_=CHAIN) -> list[float]:
                out = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    answer_step(context, "central", "logistic_regression", raw, chain=chain_)
                    out.append(1000.0 * (time.perf_counter() - started))
                return out

            timed(raw_plain, unverified)[:5], timed(raw_verified)[:5]  # warm
            base, check = timed(raw_plain, unverified), timed(raw_verified)
            q = lambda xs, p: statistics.quantiles(xs, n=10)[p]  # noqa: E731
            b50, v50 = statistics.median(base), statistics.median(check)
            print(f"  {n:5d}  {b50:17.2f}  {q(base, 8):6.2f}   {v50:15.2f}  {q(check, 8):6.2f}   "
                  f"{v50 / b50:9.2f}x   {len(raw_verified) / 1e3:10.1f}")
        context.close() if hasattr(context, "close") else None


if __name__ == "__main__":
    raise SystemExit(main())
