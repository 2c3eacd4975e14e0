"""Ingest throughput: the mipflow pipeline beside a plain baseline, measured in the same run.

For N synthetic stroke-export rows (hospital_a's format):

* baseline SQLite:     ``pandas.read_csv`` + ``DataFrame.to_sql`` (chunked) into SQLite
* pipeline SQLite:     ``mipflow ingest`` (consent, depersonalise, harmonise, GX validation, upsert)
* baseline PostgreSQL: ``read_csv`` + ``to_sql`` and ``COPY`` of the same file (when a server is reachable)
* pipeline PostgreSQL

Each measurement runs in its own process so its peak memory (max RSS) is its own.  Output: rows/s,
peak MiB, and the ratio of the pipeline's throughput to the baseline's (target >= 0.5).

Usage: ``python bench/ingest.py [--rows 1000000] [--no-postgres]``
"""
from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, csv_path: str, url: str, work: str) -> None:
    """One measurement (run in a subprocess); prints a JSON line."""
    import pandas as pd
    import sqlalchemy as sa

    started = time.perf_counter()
    if kind == "generate":
        from mipflow.demo.synth import generate_export, write_export

        write_export(csv_path, generate_export("hospital_a", int(url), seed=1))
    elif kind == "baseline":
        engine = sa.create_engine(url)
        for i, chunk in enumerate(pd.read_csv(csv_path, chunksize=100_000, dtype=str)):
            chunk.to_sql("baseline", engine, if_exists="replace" if i == 0 else "append", index=False,
                         method=None, chunksize=10_000)
        engine.dispose()
    elif kind == "copy":
        import psycopg2

        dsn = url.replace("postgresql+psycopg2://", "postgresql://")
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur, open(csv_path, encoding="utf-8") as handle:
            header = handle.readline().strip().split(",")
            cols = ", ".join(f'"{c}" text' for c in header)
            cur.execute(f"CREATE TABLE baseline_copy ({cols})")
            cur.copy_expert("COPY baseline_copy FROM STDIN WITH (FORMAT csv)", handle)
    else:
        from mipflow.node import ops
        from mipflow.node.home import NodeHome

        home = NodeHome.init(Path(work) / f"node-{uuid.uuid4().hex[:6]}", "bench", url)
        home.set_setting("max_failure_rate", "1")
        ops.add_data_model(home, REPO / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
        summary = ops.ingest(home, [csv_path], profile=REPO / "include" / "schemas" / "profiles" / "hospital_a.json")
        assert summary["totals"]["conserved"], summary["totals"]
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_mib": _peak_mib()}))


def measure(kind: str, csv_path: Path, url: str, work: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(csv_path), url, str(work)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pg_database() -> str | None:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        return None
    import sqlalchemy as sa

    name = f"mipflow_bench_{uuid.uuid4().hex[:8]}"
    with sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return name


def drop_pg(name: str) -> None:
    import sqlalchemy as sa

    with sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mipflow-bench-") as tmp:
        work = Path(tmp)
        csv_path = work / "export.csv"
        # generated in a child too, so no measurement inherits the generator's memory
        generated = measure("generate", csv_path, str(args.rows), work)
        size = csv_path.stat().st_size / 2**20
        print(f"{args.rows} rows, {size:.0f} MiB CSV (generated in {generated['seconds']:.1f}s)")
        rows = []
        base = measure("baseline", csv_path, f"sqlite:///{work / 'base.sqlite'}", work)
        ours = measure("pipeline", csv_path, f"sqlite:///{work / 'ours.sqlite'}", work)
        rows.append(("SQLite", "read_csv+to_sql", base, ours))
        if not args.no_postgres:
            db = pg_database()
            if db is None:
                print("PostgreSQL not reachable: PostgreSQL rows skipped")
            else:
                url = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
                try:
                    base_pg = measure("baseline", csv_path, url, work)
                    copy_pg = measure("copy", csv_path, url, work)
                    ours_pg = measure("pipeline", csv_path, url, work)
                    rows.append(("PostgreSQL", "read_csv+to_sql", base_pg, ours_pg))
                    rows.append(("PostgreSQL", "COPY (raw text)", copy_pg, ours_pg))
                finally:
                    drop_pg(db)
        print(f"\n{'store':11s} {'baseline':16s} {'baseline rows/s':>16s} {'pipeline rows/s':>16s} "
              f"{'ratio':>6s} {'base MiB':>9s} {'ours MiB':>9s}")
        for store, label, b, o in rows:
            rb, ro = args.rows / b["seconds"], args.rows / o["seconds"]
            print(f"{store:11s} {label:16s} {rb:16,.0f} {ro:16,.0f} {ro / rb:6.2f} {b['peak_mib']:9.0f} "
                  f"{o['peak_mib']:9.0f}")
        print("\nratio = pipeline throughput / baseline throughput (target >= 0.5 against read_csv+to_sql); "
              "the pipeline also depersonalises, validates and upserts.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
