"""What the federation benchmarks share: node homes on fresh stores, dropped afterwards."""
from __future__ import annotations

import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@contextmanager
def site_homes(tag: str, *, sqlite: bool = False, sites: int = 3) -> Iterator[list]:
    """``sites`` node homes ``site0``, ``site1``... in a temporary folder, each with its own
    PostgreSQL database (``mipflow_<tag>_<random>``) or, with ``sqlite``, its default SQLite store.

    The databases are dropped on exit, also when loading or the benchmark fails.
    """
    import sqlalchemy as sa

    from mipflow.config import NodeHome

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
