"""Trigger-to-result time of a federated analysis DAG through the real Airflow scheduler.

Builds the demo federation (three hospital nodes with synthetic stroke data, ingested in
process), starts the three node APIs and ``airflow standalone`` (scheduler, dag-processor,
api-server, triggerer; LocalExecutor, SQLite) in a temporary AIRFLOW_HOME, all on 127.0.0.1.
Then, through the REST API v2, triggers ``federated_linear_regression`` N times one after
another and measures trigger -> run ``success`` as seen by the client, beside the same
analysis called in process with :func:`mipflow.central.federation_file.analyze` (the baseline). The ratio
of the two is the price of going through Airflow (scheduling, task start-up, XCom, storing).

Airflow runs with the shipped ``airflow.cfg`` (scheduling, executor, logging): the environment sets only
paths, loopback addresses, users and fresh keys (``tests.airflow_server.airflow_env(shipped=True)``);
``--test-settings`` adds what the tests set on top (faster heartbeats and parsing, no retries), to compare.
Each run's time is split into the run's queue wait, the scheduler and executor until its first task
starts, the tasks themselves and what follows the last task (task instances' timestamps).

Usage: ``.venv/bin/python bench/trigger.py [--runs 10] [--patients 400] [--test-settings]``.
Everything started here is stopped and the temporary directory removed on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

# tests.airflow_server and tests.nodes import nothing with side effects (not tests.conftest)
from tests.airflow_server import VENV_BIN, airflow_env  # noqa: E402
from tests.nodes import free_port  # noqa: E402

DAG_ID = "federated_linear_regression"
FORM = {"y": "mrs_90d", "x": ["age", "nihss_admission"]}


class BenchError(Exception):
    pass


def wait_for(what: str, check, timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def stop_group(proc: subprocess.Popen, name: str, grace: float = 30.0) -> None:
    """Stop a process started in its own session, and its children: SIGINT, then SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                print(f"{name}: still running after {sig.name}", file=sys.stderr)
    # Children of the group (components, task workers) may outlive the leader briefly.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def parse_ts(value: str | None) -> float | None:
    from datetime import datetime

    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="DAG runs to trigger (one after another)")
    parser.add_argument("--patients", type=int, default=400, help="synthetic patients per hospital")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--run-timeout", type=float, default=120.0, help="per DAG run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (for debugging)")
    parser.add_argument("--test-settings", action="store_true",
                        help="add the tests' Airflow settings (tests.airflow_server.TEST_ONLY_SETTINGS) to the "
                             "shipped airflow.cfg")
    args = parser.parse_args()

    # SIGTERM / SIGHUP -> the finally blocks run (processes stopped, temp dir removed).
    def _raise(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)

    tmp = Path(tempfile.mkdtemp(prefix="mipflow-trigbench-"))
    procs: list[tuple[str, subprocess.Popen]] = []
    airflow_log = tmp / "airflow" / "standalone.log"
    try:
        return run(args, tmp, procs, airflow_log, lambda p: procs.append(("airflow standalone", p)))
    except BenchError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        print(f"\n--- tail of {airflow_log.name} ---\n{tail(airflow_log)}", file=sys.stderr)
        return 1
    finally:
        for name, proc in reversed(procs):
            stop_group(proc, name)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path, procs: list, airflow_log: Path, register_airflow) -> int:
    import httpx

    from mipflow.node.controls.access import AccessRegistry
    from mipflow.protocol.signing import issue_client
    from mipflow.node.home import NodeHome
    from mipflow.demo.run import prepare_nodes
    from mipflow.central.federation_file import add_node, analyze
    from mipflow.node.ops import run_landing

    # 1. Federation: three node homes, ingested in process, node APIs on loopback.
    t = time.perf_counter()
    homes = prepare_nodes(tmp / "fed", n_patients=args.patients, seed=args.seed)
    rows = {}
    for hospital, home in homes.items():
        summary = run_landing(NodeHome(home))
        if summary["failed_files"] or not summary["totals"]["loaded"]:
            raise BenchError(f"ingest failed at {hospital}: {summary['files']}")
        rows[hospital] = summary["totals"]["loaded"]
    print(f"federation: {len(homes)} nodes prepared and ingested in {time.perf_counter() - t:.1f}s "
          f"(rows loaded: {rows})")

    node_env: dict[str, str] = {}
    federation_file = tmp / "federation.json"
    urls = {}
    for hospital, home in homes.items():
        port = free_port()
        log = open(home / "serve.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "mipflow.cli", "node", "serve", str(home), "--port", str(port),
                                 "--insecure-http"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        procs.append((f"node {hospital}", proc))
        url = f"http://127.0.0.1:{port}"
        urls[hospital] = url
        cred = issue_client(home, "central")
        # the REST API run is triggered by user "admin"; the direct baseline runs as "bench"
        for researcher in ("admin", "bench"):
            AccessRegistry(home).grant(researcher=researcher, project="bench", data_model="stroke:0.1",
                                       datasets="*", algorithms="linear_regression", expires="never")
        node_env[f"AIRFLOW_CONN_MIPFLOW_NODE_{hospital.upper()}"] = json.dumps(
            {"conn_type": "mipflow_node", "host": url, "login": cred.client_id, "password": cred.secret.hex(),
             "extra": {"node_name": hospital}})
        add_node(federation_file, name=hospital, url=url, credentials_from=home)
    for hospital, url in urls.items():
        try:
            wait_for(f"node API {hospital}", lambda: httpx.get(url + "/health", timeout=1).status_code == 200, 60)
        except BenchError:
            raise BenchError(f"node {hospital} did not start:\n{tail(homes[hospital] / 'serve.log')}") from None
    conn_ids = [f"mipflow_node_{h}" for h in homes]
    conf = {"data_model": "stroke:0.1", "datasets": list(homes), "filters": None, "nodes": conn_ids,
            "min_nodes": len(homes), "project": "bench", "secure_aggregation": "off", **FORM}
    request = {"inputdata": {"data_model": "stroke:0.1", "datasets": list(homes), "x": FORM["x"],
                             "y": [FORM["y"]], "filters": None}, "parameters": {}}

    # 2. Baseline: the same analysis through the Python API, in this process (first call = cold selection).
    t = time.perf_counter()
    first = analyze("linear_regression", request, federation_file, researcher="bench", project="bench",
                    min_nodes=len(homes), secure_aggregation=False)
    direct_cold = time.perf_counter() - t
    direct: list[float] = []
    for _ in range(args.runs):
        t = time.perf_counter()
        outcome = analyze("linear_regression", request, federation_file, researcher="bench", project="bench",
                    min_nodes=len(homes), secure_aggregation=False)
        direct.append(time.perf_counter() - t)
    reference = outcome.result["coefficients"]
    assert first.result["coefficients"] == reference
    print(f"direct analyze(): cold {direct_cold:.3f}s, then p50 {statistics.median(direct):.3f}s over "
          f"{args.runs} calls ({outcome.rounds} round(s), rows {outcome.contributed})")

    # 3. airflow standalone in a temporary AIRFLOW_HOME, loopback only.
    af_home = tmp / "airflow"
    af_home.mkdir()
    api_port = free_port()
    # the shipped airflow.cfg; this checkout's DAGs and plugins, loopback, fresh keys (--test-settings: the tests' too)
    env = airflow_env(af_home, api_port, {"admin": "admin"}, shipped=not args.test_settings)
    print(f"load average before Airflow starts: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs); settings: {'shipped + tests' if args.test_settings else 'shipped airflow.cfg'}")
    env.update(node_env)
    env.update({
        "MIPFLOW_NODE_CONN_IDS": ",".join(conn_ids),
        "MIPFLOW_CENTRAL_HOME": str(tmp / "central"),
    })
    t_start = time.perf_counter()
    log = open(airflow_log, "wb")
    airflow = subprocess.Popen([str(VENV_BIN / "airflow"), "standalone"], cwd=af_home, env=env,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    log.close()
    register_airflow(airflow)
    base = f"http://127.0.0.1:{api_port}"
    client = httpx.Client(base_url=base, timeout=30)

    def alive() -> None:
        if airflow.poll() is not None:
            raise BenchError(f"airflow standalone exited with code {airflow.returncode}")

    def token() -> str | None:
        alive()
        resp = client.post("/auth/token", json={"username": "admin", "password": "admin"})
        return resp.json()["access_token"] if resp.status_code in (200, 201) else None

    client.headers["Authorization"] = "Bearer " + wait_for("the api-server (/auth/token)", token, args.startup_timeout)
    t_api = time.perf_counter() - t_start
    remaining = args.startup_timeout - t_api

    def healthy() -> bool:
        alive()
        doc = client.get("/api/v2/monitor/health").json()
        return all(doc.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler", "dag_processor"))

    wait_for("scheduler and dag-processor to be healthy", healthy, max(remaining, 10))

    def parsed() -> bool:
        alive()
        return client.get(f"/api/v2/dags/{DAG_ID}").status_code == 200

    wait_for(f"{DAG_ID} to be parsed", parsed, max(args.startup_timeout - (time.perf_counter() - t_start), 10))
    print(f"airflow standalone: api-server up after {t_api:.1f}s, scheduler healthy and {DAG_ID} parsed after "
          f"{time.perf_counter() - t_start:.1f}s (api at {base})")
    errors = client.get("/api/v2/importErrors").json()
    if errors.get("total_entries"):
        print(f"  (note: {errors['total_entries']} DAG import error(s) in other files: "
              + ", ".join(Path(e.get('filename', '?')).name for e in errors.get("import_errors", [])) + ")")
    resp = client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    if resp.status_code != 200:
        raise BenchError(f"unpause failed: {resp.status_code} {resp.text}")

    # 4. Trigger N runs one after another; time trigger -> success.
    from mipflow.central.results import ResultStore

    store = ResultStore(tmp / "central")
    observed: list[float] = []
    server: list[float] = []
    breakdown: list[dict[str, float]] = []
    for i in range(args.runs):
        t = time.perf_counter()
        resp = client.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
        if resp.status_code not in (200, 201):
            raise BenchError(f"trigger failed: {resp.status_code} {resp.text}")
        run_id = resp.json()["dag_run_id"]
        deadline = time.monotonic() + args.run_timeout
        state = ""
        while time.monotonic() < deadline:
            alive()
            try:
                doc = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()
            except httpx.TimeoutException:  # a loaded machine: the run's own timestamps still time it
                continue
            state = doc.get("state")
            if state in ("success", "failed"):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t
        if state != "success":
            tis = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()
            states = {ti["task_id"]: ti["state"] for ti in tis.get("task_instances", [])}
            raise BenchError(f"run {run_id} ended {state or 'unfinished'} after {elapsed:.1f}s; tasks: {states}")
        stored = store.get(run_id)
        if stored is None or stored["result"]["coefficients"] != reference:
            raise BenchError(f"run {run_id}: stored result missing or different from the direct call")
        observed.append(elapsed)
        queued, end = parse_ts(doc.get("queued_at")), parse_ts(doc.get("end_date"))
        if queued and end:
            server.append(end - queued)
        tis = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        run_start = parse_ts(doc.get("start_date")) or queued or 0.0
        starts = [parse_ts(ti["start_date"]) or 0.0 for ti in tis]
        ends = [parse_ts(ti["end_date"]) or 0.0 for ti in tis]
        task_time = sum(e - s for s, e in zip(starts, ends))
        breakdown.append({"tasks": task_time, "queued_to_start": run_start - (queued or run_start),
                          "to_first_task": min(starts) - run_start, "after_last_task": (end or 0.0) - max(ends),
                          "between_tasks": (max(ends) - min(starts)) - task_time})
        b = breakdown[-1]
        print(f"  run {i + 1:2d}/{args.runs}: {elapsed:6.2f}s trigger->success (server queued->end "
              f"{server[-1] if server else float('nan'):.2f}s: run queued {b['queued_to_start']:.2f}s, to first task "
              f"{b['to_first_task']:.2f}s, {len(tis)} task(s) {task_time:.2f}s, between {b['between_tasks']:.2f}s, "
              f"after {b['after_last_task']:.2f}s); load {os.getloadavg()[0]:.2f}")

    # 5. Report.
    d50 = statistics.median(direct)
    p50, p95 = percentile(observed, 50), percentile(observed, 95)
    print(f"\n== {DAG_ID}: 3 nodes x ~{args.patients} patients, mrs_90d ~ age + nihss_admission, "
          f"{args.runs} runs, polling every 50 ms")
    print(f"trigger -> success through Airflow (REST API, scheduler, LocalExecutor): "
          f"p50 {p50:.2f}s  p95 {p95:.2f}s  min {min(observed):.2f}s  max {max(observed):.2f}s")
    if server:
        print(f"  same runs, server-side queued_at -> end_date:   p50 {percentile(server, 50):.2f}s  "
              f"p95 {percentile(server, 95):.2f}s")
    for key, label in (("queued_to_start", "run queued -> running"), ("to_first_task", "running -> first task starts"),
                       ("tasks", "inside the task(s) (sum of durations)"),
                       ("between_tasks", "between tasks (scheduling)"), ("after_last_task", "last task end -> run end")):
        print(f"  {label + ':':42s} p50 {statistics.median(b[key] for b in breakdown):.2f}s")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"direct mipflow.central.federation_file.analyze() in process:    p50 {d50 * 1000:.1f} ms  "
          f"(cold first call {direct_cold * 1000:.1f} ms)")
    print(f"ratio (Airflow p50 / direct p50): {p50 / d50:.0f}x; scheduler overhead per run: "
          f"~{p50 - d50:.2f}s (p50)")
    print("results: every run's stored result equals the direct call's coefficients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
