"""What the federation benchmarks share: node homes on fresh stores, dropped afterwards."""
from __future__ import annotations

import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@contextmanager
def site_homes(tag: str, *, sqlite: bool = False, sites: int = 3) -> Iterator[list]:
    """``sites`` node homes ``site0``, ``site1``... in a temporary folder, each with its own
    PostgreSQL database (``mipflow_<tag>_<random>``) or, with ``sqlite``, its default SQLite store.

    The databases are dropped on exit, also when loading or the benchmark fails.
    """
    import sqlalchemy as sa

    from mipflow.node.home import NodeHome

    databases: list[str] = []
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT") if not sqlite else None
    try:
        with tempfile.TemporaryDirectory(prefix=f"mipflow-{tag}-") as tmp:
            homes = []
            for site in range(sites):
                url = ""
                if admin is not None:
                    name = f"mipflow_{tag}_{uuid.uuid4().hex[:8]}"
                    with admin.connect() as conn:
                        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                    databases.append(name)
                    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
                homes.append(NodeHome.init(Path(tmp) / f"site{site}", f"site{site}", url))
                homes[-1].set_setting("default_mode", "standard")  # exact algorithms (ADR 0038)
            yield homes
    finally:
        if admin is not None:
            with admin.connect() as conn:
                for name in databases:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


def node_peak_rss_mib(home: Path) -> float | None:
    """Peak resident memory (``VmHWM``, MiB) of the ``mipflow node serve HOME`` process, if running."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"serve" in argv and str(home).encode() in argv:
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return None


def print_machine() -> None:
    """Which mipflow runs, the CPU count and the load average (benchmarks are read beside these)."""
    import os

    import mipflow

    print(f"mipflow from {Path(mipflow.__file__).parent}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")


@contextmanager
def loaded_federation(tag: str, model: Any, rows_for: Callable[[int], Any], *, rows_per_node: int,
                      sqlite: bool = False, timeout: float = 600.0, pid_column: str = "subjectcode",
                      visit_column: str | None = None, pinned: bool = False) -> Iterator[tuple[list, list, Any]]:
    """Three node homes (:func:`site_homes`) loaded with ``rows_for(site)`` and access granted to the
    test identity, served on loopback; yields the homes, a client per node (slow steps allowed
    ``timeout`` seconds) and a :class:`bench.rounds.RoundLog` attached to every client.
    ``pid_column`` / ``visit_column`` name the rows' patient and visit keys (:func:`tests.nodes.load_frame`);
    ``pinned``: each node pins the others' keys (verified rounds of an iterative analysis, ADR 0029)."""
    import time

    from bench.rounds import RoundLog
    from mipflow.protocol.signing import issue_client
    from mipflow.central.client import NodeClient, NodeEndpoint
    from tests.nodes import grant_all, load_frame, pin_each_other, running_nodes

    with site_homes(tag, sqlite=sqlite) as homes:
        for site, home in enumerate(homes):
            t = time.perf_counter()
            load_frame(home.root, model, rows_for(site), pid_column=pid_column, visit_column=visit_column)
            print(f"site{site}: loaded {rows_per_node} rows in {time.perf_counter() - t:.1f}s")
            grant_all(home.root)
        if pinned:
            pin_each_other([h.root for h in homes])
        with running_nodes([h.root for h in homes]) as urls:
            clients = [NodeClient(NodeEndpoint(h.name, u, "central", issue_client(h.root, "central").secret.hex()),
                                  timeout=timeout)
                       for h, u in zip(homes, urls)]
            round_log = RoundLog()
            for client in clients:
                round_log.attach(client)
            try:
                yield homes, clients, round_log
            finally:
                for client in clients:
                    client.close()


def read_pooled(homes: list, sql: str) -> Any:
    """The pooled baseline's read: ``sql`` on every home's store, the rows concatenated."""
    import pandas as pd
    import sqlalchemy as sa

    frames = []
    for home in homes:
        engine = sa.create_engine(home.db_url)
        with engine.connect() as conn:
            frames.append(pd.read_sql(sa.text(sql), conn))
        engine.dispose()
    return pd.concat(frames, ignore_index=True)
