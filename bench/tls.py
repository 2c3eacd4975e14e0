"""What TLS costs a round: a node step over HTTPS beside plain HTTP, measured in the same run.

Three node processes on loopback hold the same synthetic rows (SQLite stores): one serves plain
HTTP (``--insecure-http``), one HTTPS, one HTTPS with mutual TLS.  The central client
(:class:`mipflow.central.client.NodeClient`, keep-alive) sends the same signed
``linear_regression`` step to each in turn (interleaved, so load on the shared machine hits all
three alike); p50 and p99 per transport and the p50 ratios against plain HTTP are printed.  A last
line shows a call on a new connection each time (full TLS handshake), for scale.

Goal (issue 18): HTTPS with keep-alive <= 1.5x plain HTTP at p50.

Usage: ``python bench/tls.py [--rows 20000] [--rounds 300]``
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000, help="rows per node")
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()

    import os

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])
    from bench.common import print_machine
    from mipflow.central.client import NodeClient, NodeEndpoint
    from mipflow.node.home import NodeHome
    from mipflow.protocol.signing import issue_client
    from mipflow.protocol.tls import client_context
    from tests.mipflow.algorithms.synthetic import MODEL, make_data
    from tests.nodes import grant_all, load_frame, running_nodes, tls_federation

    print_machine()
    request = {"inputdata": {"data_model": "synth:1", "datasets": ["d0", "d1", "d2"], "x": ["x1", "age"],
                             "y": ["y"], "filters": None}, "parameters": {}}
    who = {"researcher": "bench", "project": "bench"}
    with tempfile.TemporaryDirectory(prefix="mipflow-tlsbench-") as tmp:
        frame = make_data(7, args.rows)
        frame.insert(0, "subjectcode", [f"p{k:06d}" for k in range(len(frame))])
        homes = {}
        for name in ("plain", "https", "mutual"):
            home = NodeHome.init(Path(tmp) / name, name)
            for key in ("query_budget", "query_budget_project"):
                home.set_setting(key, 0)  # the same step many times: budgets would run out
            grant_all(home.root, "bench", "bench")
            load_frame(home.root, MODEL, frame)
            homes[name] = home.root
        central = tls_federation(Path(tmp) / "ca", [homes["https"]])
        tls_federation(Path(tmp) / "ca-mutual", [homes["mutual"]], mutual=True)
        mutual = {"ca_cert": str(Path(tmp) / "ca-mutual" / "ca.crt"),
                  "client_cert": str(Path(tmp) / "ca-mutual" / "central.crt"),
                  "client_key": str(Path(tmp) / "ca-mutual" / "central.key")}
        probe = client_context(**mutual)
        probe.load_verify_locations(central["ca_cert"])
        with running_nodes([homes["plain"]]) as (plain_url,), \
                running_nodes([homes["https"], homes["mutual"]], https=True, verify=probe) as (https_url, mutual_url):
            def client(name: str, url: str, **tls) -> NodeClient:
                cred = issue_client(homes[name], "central")
                return NodeClient(NodeEndpoint(name, url, cred.client_id, cred.secret.hex(), **tls), retries=0)

            clients = {"plain HTTP": client("plain", plain_url),
                       "HTTPS": client("https", https_url, ca_cert=central["ca_cert"]),
                       "HTTPS, mutual TLS": client("mutual", mutual_url, **mutual)}
            replies = {label: c.step("linear_regression", request, 0, None, **who) for label, c in clients.items()}
            assert all(isinstance(r, dict) for r in replies.values())  # warm-up: every node answered
            times: dict[str, list[float]] = {label: [] for label in clients}
            times["HTTPS, new connection per call"] = []
            for _ in range(args.rounds):
                for label, c in clients.items():
                    t = time.perf_counter()
                    c.step("linear_regression", request, 0, None, **who)
                    times[label].append(time.perf_counter() - t)
                fresh = client("https", https_url, ca_cert=central["ca_cert"])
                t = time.perf_counter()
                fresh.step("linear_regression", request, 0, None, **who)
                times["HTTPS, new connection per call"].append(time.perf_counter() - t)
                fresh.close()
            for c in clients.values():
                c.close()
    base = float(np.median(times["plain HTTP"]))
    print(f"\none node step (linear_regression, {args.rows} rows, selection cached), {args.rounds} calls each, "
          "interleaved; keep-alive unless said:")
    for label, values in times.items():
        ms = np.array(values) * 1000
        print(f"  {label:32s} p50 {np.percentile(ms, 50):6.2f} ms  p99 {np.percentile(ms, 99):6.2f} ms  "
              f"p50 {np.median(values) / base:4.2f}x plain HTTP")
    ratio = float(np.median(times["HTTPS"])) / base
    print(f"\nHTTPS / plain HTTP p50 ratio: {ratio:.2f}x (goal <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
