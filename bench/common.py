"""What the federation benchmarks share: node homes on fresh stores (dropped afterwards), their node
processes' memory, clients, and the regression benchmarks' data model and rows."""
from __future__ import annotations

import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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


def node_processes(roots: Sequence[Any]) -> Iterator[tuple[int, int]]:
    """``(i, pid)`` for each running ``mipflow node serve`` process of the home ``roots[i]``, in the
    order of ``/proc``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for i, root in enumerate(roots):
            if b"serve" in argv and str(root).encode() in argv:
                yield i, int(proc.name)


def status_mib(pid: int, field: str) -> float | None:
    """A memory field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``...) in MiB, None if absent.

    Raises
    ------
    OSError
        If the process is gone or not ours to read.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def node_pids(homes: Sequence[Any]) -> dict[str, int]:
    """The process id of each home's ``mipflow node serve`` process (home name -> pid)."""
    return {homes[i].name: pid for i, pid in node_processes([home.root for home in homes])}


def node_peak_rss_mib(home: Path) -> float | None:
    """Peak resident memory (``VmHWM``, MiB) of the ``mipflow node serve HOME`` process, if running."""
    for _, pid in node_processes([home]):
        try:
            peak = status_mib(pid, "VmHWM")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if peak is not None:
            return peak
    return None


def drop_node_caches(homes: Sequence[Any], model: Any) -> None:
    """Make every node read its rows again: rewrite its datasets registry, as a load does."""
    from mipflow.node.store.feature_store import FeatureStore

    for home in homes:
        store = FeatureStore(home.db_url)
        with store.begin() as conn:
            store.refresh_datasets(conn, model)
        store.dispose()


def central_clients(homes: Sequence[Any], urls: Sequence[str], *, timeout: float = 60.0) -> list:
    """A central client (identity ``central``) per served home, slow steps allowed ``timeout`` seconds."""
    from mipflow.central.client import NodeClient, NodeEndpoint
    from mipflow.protocol.signing import issue_client

    return [NodeClient(NodeEndpoint(h.name, u, "central", issue_client(h.root, "central").secret.hex()),
                       timeout=timeout) for h, u in zip(homes, urls)]


def regression_model_doc(code: str, label: str, sites: int, covariates: Sequence[str]) -> dict:
    """The regression benchmarks' data model: ``dataset`` (``site0``... ``site<sites-1>``), a
    numerical outcome ``y``, a binary ``event`` (no/yes) and numerical ``covariates``."""
    variables = [{"code": "dataset", "sql_type": "text", "isCategorical": True,
                  "enumerations": [{"code": f"site{i}", "label": f"Site {i}"} for i in range(sites)]},
                 {"code": "y", "sql_type": "real", "isCategorical": False},
                 {"code": "event", "sql_type": "text", "isCategorical": True,
                  "enumerations": [{"code": "no", "label": "No"}, {"code": "yes", "label": "Yes"}]}]
    variables += [{"code": c, "sql_type": "real", "isCategorical": False} for c in covariates]
    return {"code": code, "version": "1", "label": label, "variables": variables}


def regression_rows(n: int, seed: int, dataset: str, subject_prefix: str, covariates: Sequence[str],
                    first: int = 0) -> Any:
    """``n`` rows of :func:`regression_model_doc` from seed ``seed``: normal covariates, ``y`` linear
    in them with normal noise, ``event`` logistic in them; subject codes ``<subject_prefix>-<i>``
    (``i`` from ``first``)."""
    import numpy as np
    import pandas as pd

    k = len(covariates)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k))
    beta = np.linspace(-1, 1, k)
    y = 2.0 + x @ beta + rng.normal(scale=1.5, size=n)
    p = 1 / (1 + np.exp(-(-0.5 + x @ (beta / 3))))
    frame = pd.DataFrame(x, columns=list(covariates))
    frame.insert(0, "y", y)
    frame.insert(0, "event", np.where(rng.random(n) < p, "yes", "no"))
    frame.insert(0, "dataset", dataset)
    frame.insert(0, "subjectcode", [f"{subject_prefix}-{i}" for i in range(first, first + n)])
    return frame


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
            clients = central_clients(homes, urls, timeout=timeout)
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
