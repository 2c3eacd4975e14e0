"""Commit-to-result latency of a standing analysis: rows committed in a hospital's EHR database to the
new standing-analysis version stored at the central site (issue 16's last evidence item, ADR 0043).

Set-up (all on loopback, everything created here is dropped on exit):

* a PostgreSQL **source database** with one EHR table per hospital (``ehr_hospital_a``, ``ehr_hospital_b``:
  the synthetic exports' columns as text, plus ``row_version BIGSERIAL``, the integer watermark);
* two **node homes** (feature stores in PostgreSQL) reading them through database profiles (ADR 0040:
  the hospitals' shipped profiles plus a ``database`` section whose connection is a 0600 secret file),
  the project set to **standard** at each node (``mipflow mode set HOME --project P standard``), an
  initial load, and real ``mipflow node serve`` processes;
* a **central** home with a one-sample t-test on both hospitals registered as a standing analysis and its
  version 1 stored; the node connections as ``AIRFLOW_CONN_MIPFLOW_NODE_*`` variables.

Then, ``--reps`` times, N new patients are committed at one hospital's source table (alternately), at a
uniformly random moment of the capture period, and these run concurrently in real time:

* the **node schedule**: every ``--capture-every`` seconds (0: right after the commit, as triggering
  ``node_capture`` by hand or ``mipflow ingest-db`` would) each node runs its chain, capture ->
  depersonalise -> validate -> load (``mipflow.node.ops.ingest_db``, the stage functions the node DAG
  tasks call, in process: the Airflow scheduling between the four asset-chained node DAGs is not included);
  or, with ``--watch S``, the **node's EHR watermark watcher** (the shipped configuration of a node with a
  database source): ``EhrWatermarkTrigger.run()`` per node, checking every S seconds from a random phase,
  and on each of its events that node's chain (what the asset-triggered ``node_capture`` run sets off);
* the **watcher**: ``NodeDataVersionTrigger.run()`` in an asyncio loop with ``--poll`` seconds (default: the
  shipped ``MIPFLOW_STANDING_POLL_SECONDS`` default as ``dags/mipflow_standing.py`` reads it), started at a
  random phase;
* on each event, what the ``standing_analyses`` DAG's task does (``standing.rerun`` with ``NodeHook``
  clients), in a worker thread (the Airflow scheduling of that DAG run is not included).

Per repetition: (a) commit -> the node's load committed the rows, split into capture-schedule wait and
chain run; (b) -> the watcher's event (poll wait); (c) -> the new version stored (standing re-run).
p50/p90 over the repetitions.  The shipped node schedule (``node_capture`` at 02:00 UTC daily) cannot be
waited for here: its wait is computed (a commit at a uniformly random time of day) and added to the
measured components.  Goal (issue 16): p50 <= 60 s.

**End to end through Airflow** (``--airflow``, issue 16's evidence item): the same set-up, then a real
``airflow standalone`` (scheduler, dag-processor, triggerer, api-server; LocalExecutor, SQLite metadata) in a
temporary home, ``MIPFLOW_SITE=local`` (one machine as hospital_a's node and the central), with the shipped
settings: the repo's ``airflow.cfg``, ``MIPFLOW_NODE_WATCH_SECONDS`` and ``MIPFLOW_STANDING_POLL_SECONDS`` at
their defaults, none of the tests' fast scheduling settings (printed at the start).  hospital_a's commits run
through its EHR watermark watcher (triggerer) and the four asset-chained node DAGs (node_capture ->
node_depersonalise -> node_validate -> node_load); hospital_b stays static; the central's ``standing_analyses``
DAG runs on its asset watcher and stores the version.  Per repetition (``--warmup`` first, not counted), after a
random wait of up to one poll interval: commit -> rows in the node's feature store -> new version in the
standing registry (both polled every 0.2 s), split with Airflow's run records; the next commit waits until
every run ended.

Usage: ``.venv/bin/python bench/standing_latency.py [--reps 8] [--rows 40] [--capture-every 60 | --watch 10]
[--poll S]`` or ``.venv/bin/python bench/standing_latency.py --airflow [--reps 5] [--warmup 1]``.
Everything started is stopped, and the temporary folders and databases removed, on exit (also on Ctrl-C or
SIGTERM).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import queue
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]
# the node processes import this checkout's plugins too
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO), os.environ.get("PYTHONPATH", "")])

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
NODES = ("hospital_a", "hospital_b")
PROFILES = REPO / "include" / "schemas" / "profiles"
STROKE = REPO / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
DAY = 86400.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def export_rows(name: str, patients: int, start_mrn: int, seed: int) -> tuple[list[str], list[tuple]]:
    """The synthetic export's columns and rows as the text a CSV export holds ("" -> NULL)."""
    import pandas as pd

    from mipflow.demo.synth import generate_export

    buffer = io.StringIO()
    generate_export(name, patients, seed=seed, start_mrn=start_mrn).to_csv(buffer, index=False)
    buffer.seek(0)
    frame = pd.read_csv(buffer, dtype=str, keep_default_na=False)
    rows = [tuple(v if v != "" else None for v in record) for record in frame.itertuples(index=False)]
    return list(frame.columns), rows


def commit_rows(source_url: str, name: str, patients: int, start_mrn: int, seed: int) -> float:
    """Insert ``patients`` new patients into ``ehr_<name>`` in one transaction; returns the commit time."""
    import psycopg2

    columns, rows = export_rows(name, patients, start_mrn, seed)
    conn = psycopg2.connect(source_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cols = ", ".join(f'"{c}"' for c in columns)
            cur.executemany(f'INSERT INTO "ehr_{name}" ({cols}) VALUES ({", ".join(["%s"] * len(columns))})', rows)
        conn.commit()
        return time.monotonic()
    finally:
        conn.close()


def create_source(source_url: str) -> None:
    import psycopg2

    conn = psycopg2.connect(source_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            for name in NODES:
                columns, _ = export_rows(name, 2, 1, 0)
                cols = ", ".join(f'"{c}" TEXT' for c in columns)
                cur.execute(f'CREATE TABLE "ehr_{name}" ({cols}, row_version BIGSERIAL NOT NULL)')
        conn.commit()
    finally:
        conn.close()


def make_node(root: Path, name: str, store_url: str, source_url: str, project: str):
    from mipflow.node import ops
    from mipflow.node.controls.modes import set_mode
    from mipflow.node.home import NodeHome
    from tests.nodes import grant_all

    home = NodeHome.init(root, name, store_url)
    ops.add_data_model(home, STROKE)
    secret = home.root / "ehr.url"
    secret.write_text(source_url + "\n")
    secret.chmod(0o600)
    doc = json.loads((PROFILES / f"{name}.json").read_text())
    doc |= {"source": f"ehr_{name}", "database": {
        "connection": {"secret_file": "ehr.url"}, "table": f"ehr_{name}",
        "watermark": {"column": "row_version", "type": "integer"}}}
    (home.profiles_dir / f"ehr_{name}.json").write_text(json.dumps(doc))
    set_mode(home.root, project, "standard")  # exact answers under the per-request controls (ADR 0038)
    grant_all(home.root)
    return home


class NodeScheduler(threading.Thread):
    """Every ``period`` seconds, each node's chain (``ops.ingest_db``); records each run's times and rows."""

    def __init__(self, homes: dict, period: float) -> None:
        super().__init__(daemon=True)
        self.homes, self.period = homes, period
        self.runs: list[dict] = []  # {node, tick, done, loaded}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.epoch = time.monotonic()

    def chain(self, name: str, tick: float) -> dict:
        from mipflow.node import ops

        start = time.monotonic()
        summary = ops.ingest_db(self.homes[name])
        run = {"node": name, "tick": tick, "start": start, "done": time.monotonic(),
               "loaded": int(summary.get("totals", {}).get("loaded", 0) or 0)}
        with self.lock:
            self.runs.append(run)
        return run

    def run(self) -> None:
        k = 1
        while not self.stop.is_set():
            tick = self.epoch + k * self.period
            if self.stop.wait(max(0.0, tick - time.monotonic())):
                return
            for name in self.homes:
                self.chain(name, tick)
            k = max(k + 1, int((time.monotonic() - self.epoch) // self.period) + 1)  # a late run skips ticks

    def load_after(self, name: str, t0: float) -> dict | None:
        with self.lock:
            return next((r for r in self.runs if r["node"] == name and r["tick"] >= t0 - 1e-3 and r["loaded"]), None)


class NodeWatcher(NodeScheduler):
    """Each node's EHR watermark watcher (``EhrWatermarkTrigger.run()``, a check every ``period`` seconds from a
    random phase); on its event, that node's chain (``ops.ingest_db``), recorded as :class:`NodeScheduler` does."""

    def __init__(self, homes: dict, period: float, rng: random.Random) -> None:
        super().__init__(homes, period)
        self.phases = {name: rng.uniform(0, period) for name in homes}
        self.events: list[dict] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._watch_all())
        except asyncio.CancelledError:
            pass

    async def _watch_all(self) -> None:
        await asyncio.gather(*(self._watch(name) for name in self.homes))

    async def _watch(self, name: str) -> None:
        from mipflow_airflow.triggers.ehr_watermark import EhrWatermarkTrigger

        trigger = EhrWatermarkTrigger(node_home=str(self.homes[name].root), poll_seconds=self.period)
        await asyncio.sleep(self.phases[name])
        async for _event in trigger.run():
            fired = time.monotonic()
            with self.lock:
                self.events.append({"node": name, "at": fired})
            await asyncio.to_thread(self.chain, name, fired)

    def halt(self) -> None:
        self.stop.set()
        if self.loop is not None:
            for task in asyncio.all_tasks(self.loop):
                self.loop.call_soon_threadsafe(task.cancel)


class Watcher(threading.Thread):
    """The asset watcher's trigger in an asyncio loop; each event's re-run in a worker thread."""

    def __init__(self, trigger, standing, registry, store, phase: float) -> None:
        super().__init__(daemon=True)
        self.trigger, self.standing, self.registry, self.store, self.phase = trigger, standing, registry, store, phase
        self.events: list[float] = []
        self.reruns: list[dict] = []
        self.work: queue.Queue = queue.Queue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.worker = threading.Thread(target=self._rerun_worker, daemon=True)

    def run(self) -> None:
        self.worker.start()
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._watch())
        except asyncio.CancelledError:
            pass

    async def _watch(self) -> None:
        await asyncio.sleep(self.phase)
        async for _event in self.trigger.run():
            self.events.append(time.monotonic())
            self.work.put(self.events[-1])

    def _rerun_worker(self) -> None:
        from mipflow.central.standing import rerun
        from mipflow_airflow.hooks.node import NodeHook

        n = 0
        while True:
            event_at = self.work.get()
            if event_at is None:
                return
            n += 1
            started = time.monotonic()
            clients = [NodeHook(c).get_conn() for c in self.standing.nodes]
            try:
                outcome = rerun(self.standing, clients, registry=self.registry, store=self.store,
                                run_id=f"bench_{n}")
            finally:
                for client in clients:
                    client.close()
            self.reruns.append({"event": event_at, "started": started, "stored": time.monotonic(),
                                "status": outcome["status"], "version": outcome.get("version")})

    def stop(self) -> None:
        self.work.put(None)
        if self.loop is not None:
            for task in asyncio.all_tasks(self.loop):
                self.loop.call_soon_threadsafe(task.cancel)


def shipped_capture_wait(samples: int = 100_000, seed: int = 1) -> tuple[float, float]:
    """Wait from a commit at a uniformly random time of day to the next 02:00 UTC capture (p50, p90)."""
    rng = random.Random(seed)
    waits = [(2 * 3600 - rng.uniform(0, DAY)) % DAY for _ in range(samples)]
    return pct(waits, 0.5), pct(waits, 0.9)


@dataclass
class Federation:
    """What :func:`federation` sets up: the source, the node homes (loaded) served on loopback, the central
    home with the standing analysis and its version 1."""

    source_url: str
    homes: dict
    central: Path
    registry: Any
    store: Any
    standing: Any
    mrn: dict  # node -> the next free MRN at its source table
    node_conns: dict  # AIRFLOW_CONN_MIPFLOW_NODE_* -> the connection (JSON)


@contextmanager
def federation(initial: int) -> Iterator[Federation]:
    """Create the databases, the source, both node homes (``initial`` patients each, loaded in process), the
    node processes and the central home with a one-sample t-test registered as a standing analysis and its
    version 1 stored; stop and drop everything on exit (also on an error or Ctrl-C)."""
    import sqlalchemy as sa

    from mipflow.central.results import ResultStore
    from mipflow.central.standing import StandingRegistry, rerun
    from mipflow.node import ops
    from mipflow.protocol.signing import issue_client
    from mipflow_airflow.hooks.node import NodeHook
    from tests.nodes import PROJECT, RESEARCHER, running_nodes

    tag = uuid.uuid4().hex[:8]
    names = {"source": f"mipflow_lat_src_{tag}", **{n: f"mipflow_lat_{n}_{tag}" for n in NODES}}
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        with admin.connect() as conn:
            for db in names.values():
                conn.exec_driver_sql(f'CREATE DATABASE "{db}"')
        source_url = f"{base}/{names['source']}"
        create_source(source_url)
        with tempfile.TemporaryDirectory(prefix="mipflow-latency-") as tmp:
            tmp = Path(tmp)
            homes = {n: make_node(tmp / n, n, f"{base}/{names[n]}", source_url, PROJECT) for n in NODES}
            mrn = {n: 1 for n in NODES}
            for i, n in enumerate(NODES):
                commit_rows(source_url, n, initial, mrn[n], 100 + i)
                mrn[n] += initial
                t = time.perf_counter()
                summary = ops.ingest_db(homes[n])
                print(f"{n}: initial load {summary['totals']['loaded']} rows in {time.perf_counter() - t:.1f}s")
            central = tmp / "central"
            os.environ["MIPFLOW_CENTRAL_HOME"] = str(central)
            with running_nodes([h.root for h in homes.values()]) as urls:
                node_conns = {}
                for (n, home), url in zip(homes.items(), urls):
                    cred = issue_client(home.root, "central")
                    node_conns[f"AIRFLOW_CONN_MIPFLOW_NODE_{n.upper()}"] = json.dumps(
                        {"conn_type": "mipflow_node", "host": url, "login": cred.client_id,
                         "password": cred.secret.hex(), "extra": {"node_name": n}})
                os.environ.update(node_conns)
                conf = {"data_model": "stroke:0.1", "datasets": list(NODES), "y": "nihss_admission", "x": None,
                        "filters": None, "mu": 5.0, "nodes": [f"mipflow_node_{n}" for n in NODES], "min_nodes": 2,
                        "secure_aggregation": "off", "project": PROJECT}
                registry = StandingRegistry(central)
                store = ResultStore(central)
                try:
                    standing = registry.add(algorithm="ttest_onesample", conf=conf, researcher=RESEARCHER,
                                            project=PROJECT)
                    clients = [NodeHook(c).get_conn() for c in standing.nodes]
                    t = time.perf_counter()
                    first = rerun(standing, clients, registry=registry, store=store, run_id="bench_v1")
                    for client in clients:
                        client.close()
                    assert first["status"] == "succeeded", first
                    print(f"standing analysis {standing.standing_id}: version 1 in {time.perf_counter() - t:.2f}s")
                    yield Federation(source_url, homes, central, registry, store, standing, mrn, node_conns)
                finally:
                    registry.dispose()
    finally:
        with admin.connect() as conn:
            for db in names.values():
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.dispose()


def summary_table(reps: list[dict], keys: tuple[str, ...]) -> list[float]:
    """Print p50 / p90 / max of each component; return the totals."""
    print(f"{'component':<14}{'p50 s':>9}{'p90 s':>9}{'max s':>9}")
    for key in keys:
        values = [r[key] for r in reps]
        print(f"{key:<14}{pct(values, .5):>9.2f}{pct(values, .9):>9.2f}{max(values):>9.2f}")
    return [r["total"] for r in reps]


def measure_in_process(args, rng: random.Random, fed: Federation, shipped_poll: float) -> None:
    """The node chain and the watcher's trigger in this process (Airflow's scheduling left out)."""
    from mipflow_airflow.triggers.data_version import NodeDataVersionTrigger

    registry, standing, central = fed.registry, fed.standing, fed.central
    trigger = NodeDataVersionTrigger(poll_seconds=args.poll, central_home=str(central))
    poll_times = []
    for _ in range(3):  # what one poll costs (two signed metadata calls), nothing due
        t = time.perf_counter()
        assert asyncio.run(trigger.poll()) is None
        poll_times.append(time.perf_counter() - t)
    print(f"one watcher poll (nothing due): {statistics.median(poll_times) * 1000:.0f} ms")

    period = args.watch if args.watch > 0 else args.capture_every
    if args.watch > 0:
        scheduler = NodeWatcher(fed.homes, args.watch, rng)
    else:
        scheduler = NodeScheduler(fed.homes, args.capture_every) if args.capture_every > 0 else None
    watcher = None
    if scheduler:
        scheduler.start()
    reps = []
    try:
        for rep in range(args.reps):
            node = NODES[rep % len(NODES)]
            versions_before = len(registry.versions(standing.standing_id))
            if scheduler:  # a uniformly random moment of the capture (or check) period
                time.sleep(rng.uniform(0, period))
            if watcher is not None:
                watcher.stop()
            # the central's poll is not in step with the node's schedule: a watcher whose
            # first poll comes a uniformly random part of the poll interval after the commit
            watcher = Watcher(NodeDataVersionTrigger(poll_seconds=args.poll, central_home=str(central)),
                              standing, registry, fed.store, phase=rng.uniform(0, args.poll))
            watcher.start()
            t0 = commit_rows(fed.source_url, node, args.rows, fed.mrn[node], 1000 + rep)
            fed.mrn[node] += args.rows
            if scheduler is None:
                load = NodeScheduler(fed.homes, 0).chain(node, time.monotonic())
            deadline = t0 + 4 * (period + args.poll) + 120
            while time.monotonic() < deadline:
                done = [r for r in watcher.reruns if r["stored"] > t0 and r["status"] != "unchanged"]
                if done and len(registry.versions(standing.standing_id)) > versions_before:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"rep {rep}: no new version within {deadline - t0:.0f}s")
            if scheduler:
                load = scheduler.load_after(node, t0)
            rerun_rec = done[0]
            row = {"rep": rep, "node": node, "status": rerun_rec["status"], "version": rerun_rec["version"],
                   "capture_wait": load["start"] - t0, "chain": load["done"] - load["start"],
                   "poll_wait": rerun_rec["event"] - load["done"],
                   "rerun": rerun_rec["stored"] - rerun_rec["event"],
                   "total": rerun_rec["stored"] - t0}
            reps.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    finally:
        if watcher is not None:
            watcher.stop()
        if isinstance(scheduler, NodeWatcher):
            scheduler.halt()
            scheduler.join(timeout=60)
            print(f"node watcher events: {len(scheduler.events)} for {args.reps} commits")
        elif scheduler:
            scheduler.stop.set()
            scheduler.join(timeout=60)

    node_side = (f"node watcher every {args.watch:g}s" if args.watch > 0
                 else f"capture_every={args.capture_every:g}s")
    statuses = {r["status"] for r in reps}
    print(f"\nstatuses: {sorted(statuses)}; load average now {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    total = summary_table(reps, ("capture_wait", "chain", "poll_wait", "rerun", "total"))
    goal = "met" if pct(total, .5) <= 60 else "NOT met"
    print(f"measured ({node_side}, poll {args.poll:g}s): commit -> stored version "
          f"p50 {pct(total, .5):.1f}s p90 {pct(total, .9):.1f}s (Airflow's scheduling of the DAG runs not "
          f"included): goal p50 <= 60 s {goal}")
    w50, w90 = shipped_capture_wait()
    work = statistics.median([r["chain"] + r["rerun"] for r in reps])
    print(f"without the node watcher (no database source, or MIPFLOW_NODE_WATCH_SECONDS=0: node_capture daily "
          f"02:00 UTC): capture wait p50 {w50 / 3600:.1f} h, p90 {w90 / 3600:.1f} h (commit at a uniformly random "
          f"time), plus poll wait up to {shipped_poll:g}s and ~{work:.1f}s of chain + re-run: p50 about "
          f"{(w50 + shipped_poll / 2 + work) / 3600:.1f} h; goal NOT met")


# -- end to end through a real Airflow (--airflow) ---------------------------------------------

#: The DAGs of the measured path: the node chain (asset-linked) and the central's standing re-run.
NODE_CHAIN = ("node_capture", "node_depersonalise", "node_validate", "node_load")
AIRFLOW_DAGS = (*NODE_CHAIN, "standing_analyses")
#: Not shipped, set anyway: Airflow's 5 s default for a task's calls to the execution API fails tasks on this
#: loaded shared VM (tests/airflow_server.py); it can only turn a failure into a success, never shorten a run.
NOT_SHIPPED = {"AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60"}


def shipped_airflow_settings() -> dict[str, str]:
    """The scheduling settings the measured Airflow runs with: the repo's airflow.cfg, else Airflow's default
    (its ``config_templates/config.yml``; read as files, Airflow's configuration is not loaded here)."""
    import configparser

    import airflow
    import yaml

    keys = (("scheduler", "scheduler_idle_sleep_time"), ("workers", "min_heartbeat_interval"),
            ("scheduler", "scheduler_heartbeat_sec"), ("dag_processor", "refresh_interval"),
            ("core", "parallelism"), ("core", "executor"))
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "airflow.cfg")
    defaults = yaml.safe_load((Path(airflow.__file__).parent / "config_templates" / "config.yml").read_text())
    found = {}
    for section, key in keys:
        if cfg.has_option(section, key):
            found[f"{section}.{key}"] = cfg.get(section, key) + " (airflow.cfg)"
        else:
            option = (defaults.get(section) or {}).get("options", {}).get(key)
            if option is not None:
                found[f"{section}.{key}"] = f"{option.get('default')} (default)"
    return found


def store_rows(home) -> Any:
    """A function counting the rows of the node's stroke table (what its node API answers from)."""
    import sqlalchemy as sa

    from mipflow.node.store.feature_store import open_store

    store = open_store(home)
    table = store.model_table(store.data_model("stroke:0.1"))

    def count() -> int:
        with store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    count.engine = store.engine  # type: ignore[attr-defined]
    return count


def airflow_ts(value: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def measure_airflow(args, rng: random.Random, fed: Federation, shipped_poll: float, shipped_watch: float) -> None:
    """Commit -> new standing version through a real Airflow (``airflow standalone``, shipped settings)."""
    from tests.airflow_server import central_airflow

    node = NODES[0]  # the Airflow's node: its chain runs through the node DAGs; the other node stays static
    home = fed.homes[node]
    registry, standing = fed.registry, fed.standing
    env = {"MIPFLOW_SITE": "local", "MIPFLOW_NODE_HOME": str(home.root),
           "MIPFLOW_CENTRAL_HOME": str(fed.central), **fed.node_conns, **NOT_SHIPPED}
    settings = shipped_airflow_settings()
    print(f"Airflow: airflow standalone (scheduler, dag-processor, triggerer, api-server; LocalExecutor, SQLite), "
          f"MIPFLOW_SITE=local, node {node} through {' -> '.join(NODE_CHAIN)}, {NODES[1]} static")
    print(f"shipped settings used: MIPFLOW_NODE_WATCH_SECONDS={shipped_watch:g} (default), "
          f"MIPFLOW_STANDING_POLL_SECONDS={shipped_poll:g} (default), MIPFLOW_TASK_RETRIES default; airflow.cfg / "
          f"Airflow defaults: {', '.join(f'{k}={v}' for k, v in settings.items())}; not shipped: "
          f"{', '.join(f'{k}={v}' for k, v in NOT_SHIPPED.items())}")
    rows_now = store_rows(home)
    expected = rows_now()
    reps: list[dict] = []
    warmups: list[dict] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mipflow-latency-airflow-") as af_home:
        with central_airflow(Path(af_home), env, dag_ids=list(AIRFLOW_DAGS), timeout=args.startup_timeout,
                             fast=False) as ready:
            server = ready()
            print(f"Airflow ready in {time.monotonic() - started:.0f}s (the DAGs parsed and unpaused)", flush=True)
            with server.client(timeout=30) as client:
                def runs(dag_id: str) -> list[dict]:
                    resp = client.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100})
                    resp.raise_for_status()
                    return resp.json()["dag_runs"]

                def settled() -> bool:
                    return all(r["state"] not in ("queued", "running") for d in AIRFLOW_DAGS for r in runs(d))

                for rep in range(-args.warmup, args.reps):
                    before = len(registry.versions(standing.standing_id))
                    time.sleep(rng.uniform(0, shipped_poll))  # a random moment of both watchers' intervals
                    load_avg = os.getloadavg()[0]
                    commit_mono = commit_rows(fed.source_url, node, args.rows, fed.mrn[node], 1000 + rep)
                    t0 = time.time() - (time.monotonic() - commit_mono)
                    fed.mrn[node] += args.rows
                    expected += args.rows
                    loaded = stored = None
                    deadline = t0 + args.rep_timeout
                    while time.time() < deadline:
                        if server.process.poll() is not None:
                            raise RuntimeError(f"airflow standalone exited:\n{server.tail()}")
                        if loaded is None and rows_now() >= expected:
                            loaded = time.time()
                        new = registry.versions(standing.standing_id)[before:]
                        if any(v.status != "succeeded" for v in new):
                            raise RuntimeError(f"rep {rep}: the re-run ended {[v.status for v in new]}")
                        if new:
                            stored = time.time()
                            version = new[0]
                            break
                        time.sleep(0.2)
                    else:
                        raise RuntimeError(f"rep {rep}: no new version within {args.rep_timeout:.0f}s "
                                           f"(rows loaded: {loaded is not None}):\n{server.tail()}")
                    if loaded is None:  # loaded between the last two checks
                        loaded = stored
                    # the DAG runs behind it, from Airflow's own records
                    capture = min((r for r in runs("node_capture")
                                   if (airflow_ts(r["queued_at"]) or 0) >= t0 - 1), key=lambda r: r["queued_at"])
                    central_run = next(r for r in runs("standing_analyses")
                                       if version.run_id.startswith(r["dag_run_id"] + "__"))
                    capture_queued = airflow_ts(capture["queued_at"])
                    central_queued = airflow_ts(central_run["queued_at"])
                    row = {"rep": rep, "warmup": rep < 0, "version": version.version, "load1": round(load_avg, 1),
                           "capture_run": capture["run_type"], "standing_run": central_run["run_type"],
                           "watch_wait": capture_queued - t0, "node_dags": loaded - capture_queued,
                           "poll_wait": central_queued - loaded, "central_run": stored - central_queued,
                           "node_loaded": loaded - t0, "total": stored - t0}
                    # where the node DAGs' time goes: each run's wait in the queue and its run (Airflow's records)
                    after = capture_queued - 1
                    for dag_id in NODE_CHAIN:
                        run = min((r for r in runs(dag_id) if (airflow_ts(r["queued_at"]) or 0) >= after),
                                  key=lambda r: r["queued_at"], default=None)
                        if run is None or not run.get("end_date"):
                            break
                        row[f"{dag_id}_queued"] = airflow_ts(run["start_date"]) - airflow_ts(run["queued_at"])
                        row[f"{dag_id}_ran"] = airflow_ts(run["end_date"]) - airflow_ts(run["start_date"])
                        after = airflow_ts(run["start_date"])  # the next stage is queued while this run ends
                    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}),
                          flush=True)
                    (reps if rep >= 0 else warmups).append(row)
                    wait_until = time.monotonic() + 180
                    while not settled():  # the next commit starts from an idle Airflow
                        if time.monotonic() > wait_until:
                            raise RuntimeError("the DAG runs did not end within 180 s")
                        time.sleep(1)
                failed = [(d, r["dag_run_id"]) for d in AIRFLOW_DAGS for r in runs(d) if r["state"] != "success"]
                counts = {d: len(runs(d)) for d in AIRFLOW_DAGS}
        rows_now.engine.dispose()
        logs = [server.log, *Path(af_home, "logs").rglob("*")]  # the components' and the tasks' logs
        leaked = [p.name for p in logs if p.is_file() and fed.source_url in p.read_text(errors="replace")]
    assert not leaked, f"the source's connection URL is in Airflow's logs: {leaked}"

    print(f"\nDAG runs: {counts}; not successful: {failed or 'none'}; "
          f"load average now {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    total = summary_table(reps, ("watch_wait", "node_dags", "poll_wait", "central_run", "node_loaded", "total"))
    parts = [f"{d} {statistics.median(r[d + '_queued'] for r in reps):.1f}s queued + "
             f"{statistics.median(r[d + '_ran'] for r in reps):.1f}s run" for d in NODE_CHAIN
             if all(d + "_ran" in r for r in reps)]
    print(f"node DAG runs, p50 (start - queued_at, end - start): {'; '.join(parts)}")
    goal = "met" if pct(total, .5) <= 60 else "NOT met"
    print(f"measured end to end through Airflow (shipped settings; {len(reps)} repetitions, {args.rows} patients per "
          f"commit, load average {min(r['load1'] for r in reps):.1f}-{max(r['load1'] for r in reps):.1f} at the "
          f"commits): commit -> stored version p50 {pct(total, .5):.1f}s p90 {pct(total, .9):.1f}s: "
          f"goal p50 <= 60 s {goal}")


def main() -> None:
    from mipflow_airflow.settings import number

    shipped_poll = number("MIPFLOW_STANDING_POLL_SECONDS",
                          __import__("re").search(r'MIPFLOW_STANDING_POLL_SECONDS", "(\d+)"',
                                                  (REPO / "dags" / "mipflow_standing.py").read_text()).group(1),
                          float, minimum=1)
    from mipflow_airflow.dags import NODE_WATCH_SECONDS

    shipped_watch = float(NODE_WATCH_SECONDS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 8; 5 with --airflow)")
    parser.add_argument("--rows", type=int, default=40, help="new patients committed per repetition")
    parser.add_argument("--initial", type=int, default=200, help="patients per hospital before the first version")
    parser.add_argument("--capture-every", type=float, default=60.0,
                        help="node chain schedule in seconds (0: right after the commit)")
    parser.add_argument("--watch", type=float, default=0.0,
                        help=f"node-side EHR watermark watcher, seconds between checks (shipped default "
                             f"{shipped_watch:g} for a node with a database source; 0: use --capture-every)")
    parser.add_argument("--poll", type=float, default=shipped_poll, help="watcher poll seconds")
    parser.add_argument("--airflow", action="store_true",
                        help="end to end through a real Airflow with the shipped settings (--capture-every, --watch "
                             "and --poll do not apply: the shipped defaults are used)")
    parser.add_argument("--warmup", type=int, default=1, help="--airflow: repetitions run first and not counted")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="--airflow: seconds for Airflow to start")
    parser.add_argument("--rep-timeout", type=float, default=300.0, help="--airflow: seconds per repetition")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.reps is None:
        args.reps = 5 if args.airflow else 8
    if args.airflow and (args.watch or args.poll != shipped_poll or args.capture_every != 60.0):
        parser.error("--airflow measures the shipped settings: drop --watch, --poll and --capture-every")

    def _raise(signum, _frame):  # SIGTERM / SIGHUP: the finally blocks stop and drop everything
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)

    import logging

    from bench.common import print_machine

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its import chatter, nothing measured
    rng = random.Random(args.seed)
    print_machine()
    if args.airflow:
        print(f"reps={args.reps} (+{args.warmup} warm-up) rows={args.rows}: end to end through Airflow")
    else:
        node_side = (f"node watcher every {args.watch:g}s" if args.watch > 0
                     else f"capture_every={args.capture_every:g}s")
        print(f"reps={args.reps} rows={args.rows} {node_side} poll={args.poll:g}s (shipped: poll {shipped_poll:g}s; "
              f"node_capture daily 02:00 UTC, and on the node's watermark watcher every {shipped_watch:g}s "
              "when the node has a database source)")
    with federation(args.initial) as fed:
        if args.airflow:
            measure_airflow(args, rng, fed, shipped_poll, shipped_watch)
        else:
            measure_in_process(args, rng, fed, shipped_poll)


if __name__ == "__main__":
    main()
