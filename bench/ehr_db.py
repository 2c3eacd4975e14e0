"""Capture throughput from an EHR database: mipflow's extraction beside ``pandas.read_sql`` of the same rows.

For N synthetic stroke-registry rows (hospital_a's columns, typed: dates, integers, a numeric) in a real
PostgreSQL and a real MariaDB source database on loopback (a database created and dropped here):

* baseline: ``pandas.read_sql`` of the extraction query (``include/sql/ehr_changes.sql``, the whole range)
* mipflow:  :func:`mipflow.node.ingest.database.read_changes`, what the depersonalise stage reads a database
  batch with: streamed (server-side cursor), ``chunk_rows`` at a time, every cell turned into the text a CSV
  export holds, the watermark column dropped
* also printed, without a target: the whole chain (``ops.ingest_db``: extract, consent, depersonalise,
  validate, load into a SQLite feature store) in rows/s

Both reads alternate, ``--repeat`` times each; the best of each is compared.  Goal (issue 16):
mipflow >= 0.5x the baseline.

Usage: ``python bench/ehr_db.py [--rows 200000] [--repeat 3] [--only postgresql|mariadb] [--no-chain]``
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

ADMIN = {"postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
         "mariadb": "mysql+pymysql://root@127.0.0.1:3306/"}
INT_COLUMNS = ("nihss_on_admission", "onset_to_arrival_min", "sbp_admission", "door_to_needle_min", "mrs_day90")
DATE_COLUMNS = ("date_of_birth", "admission_date", "last_contact_date")


def _ddl(columns: list[str], kind: str) -> str:
    typed = []
    for c in columns:
        if c in INT_COLUMNS:
            typed.append(f"{c} INTEGER")
        elif c in DATE_COLUMNS:
            typed.append(f"{c} DATE")
        elif c == "glucose_admission_mmol":
            typed.append(f"{c} NUMERIC(5,1)")
        elif c in ("mrn", "encounter_id"):
            typed.append(f"{c} VARCHAR(40)")
        else:
            typed.append(f"{c} VARCHAR(400)")
    wm = "row_version BIGINT NOT NULL"
    return f"CREATE TABLE stroke_registry ({', '.join(typed)}, {wm}, PRIMARY KEY (mrn, encounter_id))"


def fill(kind: str, url: str, frame) -> None:
    """The source table with the export's rows (row_version 1..N)."""
    import sqlalchemy as sa

    frame = frame.drop_duplicates(["mrn", "encounter_id"]).copy()
    frame["row_version"] = range(1, len(frame) + 1)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(_ddl(list(frame.columns[:-1]), kind))
    if kind == "postgresql":
        raw = engine.raw_connection()
        try:
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, header=False)
            buffer.seek(0)
            with raw.cursor() as cur:
                cur.copy_expert(f"COPY stroke_registry ({', '.join(frame.columns)}) FROM STDIN "
                                "WITH (FORMAT csv, NULL '')", buffer)
            raw.commit()
        finally:
            raw.close()
    else:
        import numpy as np

        rows = []
        for record in frame.itertuples(index=False):
            row = []
            for c, v in zip(frame.columns, record):
                if v is None or v == "" or (isinstance(v, float) and np.isnan(v)):
                    row.append(None)
                elif c in DATE_COLUMNS:
                    row.append(date.fromisoformat(v))
                else:
                    row.append(v)
            rows.append(tuple(row))
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur:
                sql = (f"INSERT INTO stroke_registry ({', '.join(frame.columns)}) "
                       f"VALUES ({', '.join(['%s'] * len(frame.columns))})")
                for start in range(0, len(rows), 5000):
                    cur.executemany(sql, rows[start:start + 5000])
            raw.commit()
        finally:
            raw.close()
    engine.dispose()


def measure(kind: str, url: str, n_rows: int, repeat: int, chain: bool) -> dict:
    import pandas as pd
    import sqlalchemy as sa

    from mipflow.demo.synth import generate_export
    from mipflow.node import ops
    from mipflow.node.deid.pseudonyms import Pseudonymiser
    from mipflow.node.home import NodeHome
    from mipflow.node.ingest.database import changes_sql, read_changes, source_engine
    from mipflow.node.ingest.pipeline import BatchCounts, ChunkProcessor
    from mipflow.node.ingest.profile import SourceProfile

    started = time.perf_counter()
    frame = generate_export("hospital_a", n_rows, seed=1)
    fill(kind, url, frame)
    setup = time.perf_counter() - started

    work = Path(tempfile.mkdtemp(prefix="mipflow-bench-ehr-"))
    home = NodeHome.init(work / "node", "hospital_a")
    ops.add_data_model(home, REPO / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
    secret = home.root / "ehr.url"
    secret.write_text(url + "\n")
    secret.chmod(0o600)
    doc = json.loads((REPO / "include" / "schemas" / "profiles" / "hospital_a.json").read_text())
    doc |= {"source": "ehr_a", "database": {"connection": {"secret_file": "ehr.url"}, "table": "stroke_registry",
                                            "watermark": {"column": "row_version", "type": "integer"}}}
    (home.profiles_dir / "ehr_a.json").write_text(json.dumps(doc))
    profile = SourceProfile.from_dict(doc)
    db = profile.database
    model = next(iter(__import__("mipflow.node.store.feature_store", fromlist=["open_store"])
                      .open_store(home).data_models()))
    engine = source_engine(url)
    with engine.connect() as conn:
        upto = str(conn.execute(sa.text("SELECT MAX(row_version) FROM stroke_registry")).scalar())
    sql = changes_sql(engine, db, has_after=False)

    def baseline() -> int:
        with engine.connect() as conn:
            return len(pd.read_sql(sa.text(sql), conn, params={"upto": int(upto)}))

    def mipflow() -> int:
        processor = ChunkProcessor(model, profile, Pseudonymiser(home.key()), None, home.settings)
        counts = BatchCounts()
        rows = 0
        for chunk in read_changes("ehr_a", engine, db, processor, None, upto, counts):
            rows += len(chunk)
        assert rows == counts.rows_in
        return rows

    times: dict[str, list[float]] = {"baseline": [], "mipflow": []}
    rows = {}
    for _ in range(repeat):
        for name, fn in (("baseline", baseline), ("mipflow", mipflow)):
            t0 = time.perf_counter()
            rows[name] = fn()
            times[name].append(time.perf_counter() - t0)
    assert rows["baseline"] == rows["mipflow"], rows
    out = {"source": kind, "rows": rows["mipflow"], "setup_s": round(setup, 1),
           "baseline_rows_per_s": round(rows["baseline"] / min(times["baseline"])),
           "mipflow_rows_per_s": round(rows["mipflow"] / min(times["mipflow"])),
           "baseline_s": [round(t, 3) for t in times["baseline"]],
           "mipflow_s": [round(t, 3) for t in times["mipflow"]]}
    out["ratio"] = round(out["mipflow_rows_per_s"] / out["baseline_rows_per_s"], 2)
    if chain:
        t0 = time.perf_counter()
        summary = ops.ingest_db(home)
        elapsed = time.perf_counter() - t0
        assert summary["totals"]["conserved"]
        out["chain_rows_per_s"] = round(summary["totals"]["rows_in"] / elapsed)
        out["chain_loaded"] = summary["totals"]["loaded"]
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=tuple(ADMIN), default=None)
    parser.add_argument("--no-chain", action="store_true", help="skip the whole-chain measurement")
    args = parser.parse_args()
    import sqlalchemy as sa

    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} rows={args.rows} repeat={args.repeat}")
    for kind, admin_url in ADMIN.items():
        if args.only and kind != args.only:
            continue
        name = f"mipflow_bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        quote = '"' if kind == "postgresql" else "`"
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {quote}{name}{quote}")
        except sa.exc.OperationalError:
            print(f"{kind}: no server on loopback; skipped")
            continue
        url = (admin_url.rsplit("/", 1)[0] + "/" + name if kind == "postgresql"
               else admin_url.rstrip("/") + "/" + name + "?charset=utf8mb4")
        try:
            result = measure(kind, url, args.rows, args.repeat, not args.no_chain)
            print(json.dumps(result))
            goal = "met" if result["ratio"] >= 0.5 else "NOT met"
            print(f"{kind}: mipflow capture {result['mipflow_rows_per_s']:,} rows/s vs pandas.read_sql "
                  f"{result['baseline_rows_per_s']:,} rows/s: {result['ratio']}x (goal >= 0.5x {goal})"
                  + (f"; whole chain {result['chain_rows_per_s']:,} rows/s" if "chain_rows_per_s" in result else ""))
        finally:
            with admin.connect() as conn:
                suffix = " WITH (FORCE)" if kind == "postgresql" else ""
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{suffix}")
            admin.dispose()


if __name__ == "__main__":
    main()
