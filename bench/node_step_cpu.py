"""CPU cost of one node step request, measured in process (no network, no scheduler noise).

Calls the node's ASGI application directly with signed ``POST /v1/steps/linear_regression``
requests (the later-round case: the selection is cached at the node) and reports the CPU
time per request (``time.process_time``), optionally with a cProfile listing of the hottest
functions.  Use it to find overhead on the node's request path; use ``bench/federation.py``
for wall-clock ratios.

Usage: ``python bench/node_step_cpu.py [--requests 2000] [--rows 30000] [--sqlite] [--profile]``
(PostgreSQL at 127.0.0.1:5432 by default.)
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


async def _call(app, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path.split("?")[0], "raw_path": path.split("?")[0].encode(),
             "query_string": (path.split("?", 1)[1] if "?" in path else "").encode(),
             "root_path": "", "server": ("127.0.0.1", 8700), "client": ("127.0.0.1", 50000),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=35)
    args = parser.parse_args()

    import sqlalchemy as sa

    from federation import make_rows, model_doc
    from mipflow.protocol.signing import issue_client, signed_headers
    from mipflow.node.home import NodeHome
    from mipflow.protocol.datamodel import DataModel
    from mipflow.node.api.app import create_app
    from tests.nodes import grant_all, load_frame

    model = DataModel.from_dict(model_doc())
    database = None
    with tempfile.TemporaryDirectory(prefix="mipflow-stepcpu-") as tmp:
        url = ""
        if not args.sqlite:
            database = f"mipflow_stepcpu_{uuid.uuid4().hex[:8]}"
            with sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
            url = PG_ADMIN.rsplit("/", 1)[0] + "/" + database
        try:
            home = NodeHome.init(Path(tmp) / "site0", "site0", url)
            home.set_setting("default_mode", "standard")  # the exact local steps (ADR 0038)
            load_frame(home.root, model, make_rows(args.rows, 0, 0))
            grant_all(home.root, "bench", "bench")
            secret = issue_client(home.root, "central").secret
            app = create_app(home)
            request = {"inputdata": {"data_model": "bench:1", "datasets": ["site0"], "x": ["x0", "x1"],
                                     "y": ["y"], "filters": {"condition": "AND", "rules": [
                                         {"id": "x0", "operator": "greater", "value": 2.4}]}},
                       "parameters": {}}
            body = json.dumps({"request": request, "round": 0, "state": None, "researcher": "bench",
                               "project": "bench", "analysis_id": uuid.uuid4().hex}).encode()
            path = "/v1/steps/linear_regression"

            async def run(n: int) -> None:
                for _ in range(n):
                    headers = signed_headers("central", secret, "POST", path, body)
                    headers["Content-Type"] = "application/json"
                    status, out = await _call(app, "POST", path, body, headers)
                    if status != 200:
                        raise RuntimeError(f"HTTP {status}: {out[:300]!r}")

            loop = asyncio.new_event_loop()
            loop.run_until_complete(run(20))  # warm: selection cached, imports done
            cpu, wall = time.process_time(), time.perf_counter()
            loop.run_until_complete(run(args.requests))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(f"{'SQLite' if args.sqlite else 'PostgreSQL'} store, {args.rows} rows, selection cached: "
                  f"{1e6 * cpu / args.requests:.0f} us CPU per step request "
                  f"({1e6 * wall / args.requests:.0f} us wall)")
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                loop.run_until_complete(run(args.requests))
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
            loop.close()
        finally:
            if database:
                with sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
