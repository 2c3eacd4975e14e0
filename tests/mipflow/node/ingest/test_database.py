"""EHR databases as a source (mipflow.node.ingest.database): real PostgreSQL and MariaDB source databases,
incremental runs, updates and deletions at the source, consent withdrawn after a load, and a crash between
extract and load (a killed process, an error inside the load's transaction): nothing lost, nothing doubled."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest
import sqlalchemy as sa

from mipflow import cli
from mipflow.demo.synth import generate_export, write_export
from mipflow.exceptions import ConfigError, ProfileError
from mipflow.node import ops
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.home import NodeHome
from mipflow.node.ingest import stages
from mipflow.node.ingest.database import DatabaseSource, source_url
from mipflow.node.ingest.profile import SourceProfile
from mipflow.node.store.feature_store import FeatureStore, open_store
from tests.conftest import REPO_ROOT

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILE = REPO_ROOT / "include" / "schemas" / "profiles" / "hospital_a.json"
INT_COLUMNS = ("nihss_on_admission", "onset_to_arrival_min", "sbp_admission", "door_to_needle_min", "mrs_day90")
DATE_COLUMNS = ("date_of_birth", "admission_date", "last_contact_date")
PASSWORD = "Pw-never-logged-41"  # PostgreSQL's trust authentication ignores it; it must appear nowhere


class Source:
    """A hospital's EHR table on a real server: PostgreSQL (timestamp watermark, deleted-rows table) or
    MariaDB (integer row version, tombstone column)."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.engine = sa.create_engine(url)
        self.version = 0
        self.clock = datetime(2026, 1, 1, 8, 0, 0)
        columns = list(generate_export("hospital_a", 1, seed=1).columns)
        self.columns = columns
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
        with self.engine.begin() as conn:
            if kind == "postgresql":
                conn.exec_driver_sql("CREATE SCHEMA ehr")
                conn.exec_driver_sql(f"CREATE TABLE ehr.stroke_registry ({', '.join(typed)}, "
                                     "updated_at TIMESTAMP(6) NOT NULL, PRIMARY KEY (mrn, encounter_id))")
                conn.exec_driver_sql("CREATE TABLE ehr.stroke_registry_deleted (deletion_id BIGSERIAL PRIMARY KEY, "
                                     "mrn VARCHAR(40), encounter_id VARCHAR(40), deleted_at TIMESTAMP NOT NULL)")
            else:
                conn.exec_driver_sql(f"CREATE TABLE stroke_registry ({', '.join(typed)}, row_version BIGINT NOT NULL, "
                                     "is_deleted BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (mrn, encounter_id))")

    @property
    def table(self) -> str:
        return "ehr.stroke_registry" if self.kind == "postgresql" else "stroke_registry"

    def database_section(self, connection: dict) -> dict:
        if self.kind == "postgresql":
            return {"connection": connection, "table": "ehr.stroke_registry",
                    "watermark": {"column": "updated_at", "type": "timestamp"},
                    "deletions": {"table": "ehr.stroke_registry_deleted",
                                  "watermark": {"column": "deletion_id", "type": "integer"}}}
        return {"connection": connection, "table": "stroke_registry",
                "watermark": {"column": "row_version", "type": "integer"},
                "deletions": {"tombstone": "is_deleted"}}

    def _tick(self) -> dict:
        self.version += 1
        self.clock += timedelta(seconds=1)
        return {"row_version": self.version} if self.kind == "mariadb" else {"updated_at": self.clock}

    def insert(self, frame: pd.DataFrame) -> None:
        rows = []
        for record in frame.to_dict("records"):
            row = {}
            for c in self.columns:
                v = record[c]
                v = None if v is None or (isinstance(v, float) and pd.isna(v)) or v == "" else v
                if v is not None and c in INT_COLUMNS:
                    v = int(v)
                elif v is not None and c in DATE_COLUMNS:
                    v = date.fromisoformat(v)
                elif v is not None and c == "glucose_admission_mmol":
                    v = Decimal(v)
                row[c] = v
            rows.append(row | self._tick())
        names = list(rows[0])
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO {self.table} ({', '.join(names)}) "
                                 f"VALUES ({', '.join(':' + n for n in names)})"), rows)

    def update(self, mrns: list[str], nihss: int) -> None:
        with self.engine.begin() as conn:
            for mrn in mrns:
                tick = self._tick()
                (col, value), = tick.items()
                conn.execute(sa.text(f"UPDATE {self.table} SET nihss_on_admission = :n, {col} = :v WHERE mrn = :m"),
                             {"n": nihss, "v": value, "m": mrn})

    def delete(self, mrns: list[str]) -> None:
        with self.engine.begin() as conn:
            for mrn in mrns:
                if self.kind == "postgresql":
                    conn.execute(sa.text("INSERT INTO ehr.stroke_registry_deleted (mrn, encounter_id, deleted_at) "
                                         "SELECT mrn, encounter_id, now() FROM ehr.stroke_registry WHERE mrn = :m"),
                                 {"m": mrn})
                    conn.execute(sa.text("DELETE FROM ehr.stroke_registry WHERE mrn = :m"), {"m": mrn})
                else:
                    conn.execute(sa.text("UPDATE stroke_registry SET is_deleted = TRUE, row_version = :v "
                                         "WHERE mrn = :m"), {"v": self._tick()["row_version"], "m": mrn})

    def restore(self, frame: pd.DataFrame) -> None:
        """A deleted row back under its key: inserted again, or its tombstone cleared."""
        if self.kind == "postgresql":
            self.insert(frame)
            return
        with self.engine.begin() as conn:
            for mrn in frame["mrn"]:
                conn.execute(sa.text("UPDATE stroke_registry SET is_deleted = FALSE, row_version = :v "
                                     "WHERE mrn = :m"), {"v": self._tick()["row_version"], "m": mrn})

    def rows(self) -> pd.DataFrame:
        where = "" if self.kind == "postgresql" else " WHERE NOT is_deleted"
        with self.engine.connect() as conn:
            return pd.read_sql(sa.text(f"SELECT mrn, encounter_id, nihss_on_admission FROM {self.table}{where}"),
                               conn)


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mariadb)])
def source(request):
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "mariadb_url")
    src = Source(request.param, url)
    src.url = url
    yield src
    src.engine.dispose()


def url_with_password(src: Source) -> str:
    return sa.engine.make_url(src.url).set(password=PASSWORD).render_as_string(hide_password=False) \
        if src.kind == "postgresql" else src.url


def make_home(tmp_path, src: Source, db_url: str = "", name: str = "ehr_a") -> NodeHome:
    home = NodeHome.init(tmp_path / "node", "hospital_a", db_url)
    ops.add_data_model(home, STROKE)
    secret = home.root / "secrets" / "ehr.url"
    secret.parent.mkdir()
    secret.write_text(url_with_password(src) + "\n")
    secret.chmod(0o600)
    doc = json.loads(PROFILE.read_text()) | {"source": name}
    doc["database"] = src.database_section({"secret_file": "secrets/ehr.url"})
    (home.profiles_dir / f"{name}.json").write_text(json.dumps(doc))
    return home


def pid(home: NodeHome, mrn: str) -> str:
    return Pseudonymiser(home.key()).pseudonym(mrn)


def stored(store: FeatureStore) -> pd.DataFrame:
    model = store.data_model("stroke:0.1")
    with store.engine.connect() as conn:
        return pd.read_sql(sa.select(store.model_table(model)), conn)


def all_text(home: NodeHome, store: FeatureStore) -> str:
    """Everything the store's bookkeeping, staging and results hold, as text."""
    from tests.mipflow.node.ingest.test_pipeline import all_text as store_text

    staged = "".join(p.read_text(errors="replace") for p in home.staging_dir.rglob("*") if p.is_file())
    return store_text(store) + staged


def check_conserved(summary: dict) -> None:
    for batch in summary["batches"]:
        assert batch["conserved"], batch
    assert summary["totals"]["conserved"]


def test_incremental_runs_with_updates_and_deletions(tmp_path, source, caplog):
    export = generate_export("hospital_a", 60, seed=3)
    source.insert(export.iloc[:40])
    home = make_home(tmp_path, source)
    caplog.set_level(logging.DEBUG)

    first = ops.ingest_db(home)
    check_conserved(first)
    (batch,) = first["batches"]
    assert (batch["rows_in"], batch["loaded"], batch["deleted"]) == (40, 40, 0)
    store = open_store(home)
    assert len(stored(store)) == 40
    assert stages.watermark(store, "ehr_a")["changes"] is not None

    again = ops.ingest_db(home)  # nothing changed: no batch, nothing written
    assert again["batches"] == [] and again["unchanged_sources"] == ["ehr_a"]
    assert len(store.batches()) == 1 and len(stored(store)) == 40

    mrns = list(export["mrn"])
    source.update(mrns[:3], nihss=41)
    source.insert(export.iloc[40:45])
    source.delete(mrns[10:12])
    third = ops.ingest_db(home)
    check_conserved(third)
    (batch,) = third["batches"]
    assert (batch["rows_in"], batch["loaded"], batch["deleted"]) == (8, 8, 2)  # only what changed
    table = stored(store)
    assert len(table) == 40 + 5 - 2
    assert set(table["_pid"]) == {pid(home, m) for m in mrns[:45]} - {pid(home, m) for m in mrns[10:12]}
    updated = table[table["_pid"].isin([pid(home, m) for m in mrns[:3]])]
    assert list(updated["nihss_admission"]) == [41, 41, 41]
    # the store equals the source's current rows, one row each
    assert len(table) == len(source.rows()) and not table.duplicated(["_pid", "dataset", "_visit"]).any()
    if store.dialect == "sqlite":  # one columnar snapshot, of the rows after the deletions (ADR 0049)
        from mipflow.node.store.stamp import snapshot_folder

        (snapshot,) = snapshot_folder(store).glob("dm_*@*")
        assert json.loads((snapshot / "meta.json").read_text())["rows"] == len(table)

    # a deleted row back at the source (same key) comes back
    source.restore(export[export["mrn"] == mrns[10]])
    fourth = ops.ingest_db(home)
    assert fourth["batches"][0]["loaded"] == 1 and len(stored(store)) == 44

    # nothing read from the source, nor the connection's password, reaches the store, staging or logs
    text = all_text(home, store) + caplog.text + json.dumps([first, third, fourth])
    for value in (PASSWORD, *export["first_name"][:45], *export["last_name"][:45], *mrns[:45],
                  *export["nhs_number"][:45]):
        assert str(value) not in text


@pytest.mark.postgres
def test_a_database_source_loads_what_the_same_rows_as_csv_load(tmp_path, pg_url):
    """The SQL path (typed columns: dates, integers, numerics) gives the store the CSV path gives."""
    src = Source("postgresql", pg_url)
    src.url = pg_url
    export = generate_export("hospital_a", 50, seed=5, bad_rows=4)
    clean = export[export["mrn"].notna() & (export["mrn"] != "")]
    ok = []
    for record in clean.to_dict("records"):
        try:  # rows whose typed columns the source database would not accept stay out of both
            for c in INT_COLUMNS:
                if record[c] not in ("", None) and not pd.isna(record[c]):
                    int(record[c])
            for c in DATE_COLUMNS:
                if record[c] not in ("", None) and not pd.isna(record[c]):
                    date.fromisoformat(record[c])
            Decimal(record["glucose_admission_mmol"]) if record["glucose_admission_mmol"] else None
            ok.append(True)
        except Exception:
            ok.append(False)
    rows = clean[ok].drop_duplicates(["mrn", "encounter_id"])
    src.insert(rows)
    db_home = make_home(tmp_path / "db", src)
    summary = ops.ingest_db(db_home)
    check_conserved(summary)

    csv_home = NodeHome.init(tmp_path / "csv" / "node", "hospital_a")
    ops.add_data_model(csv_home, STROKE)
    shutil.copyfile(db_home.root / "secret.key", csv_home.root / "secret.key")
    path = write_export(tmp_path / "export.csv", rows)
    ops.ingest(csv_home, [path], data_model="stroke:0.1", profile=PROFILE)
    lineage = ["_batch_id", "_source_sha256", "_loaded_at"]
    a = stored(open_store(db_home)).drop(columns=lineage).sort_values(["_pid", "_visit"]).reset_index(drop=True)
    b = stored(open_store(csv_home)).drop(columns=lineage).sort_values(["_pid", "_visit"]).reset_index(drop=True)
    assert len(a) == summary["batches"][0]["loaded"] > 30
    pd.testing.assert_frame_equal(a, b)
    src.engine.dispose()


def test_consent_withdrawn_after_a_load(tmp_path, source):
    export = generate_export("hospital_a", 30, seed=4)
    source.insert(export)
    home = make_home(tmp_path, source)
    mrns = list(export["mrn"])
    pd.DataFrame({"patient_id": mrns, "consent": "granted"}).to_csv(home.consent_path, index=False)
    assert ops.ingest_db(home)["batches"][0]["loaded"] == 30

    consent = pd.DataFrame({"patient_id": mrns, "consent": ["withdrawn"] * 2 + ["granted"] * 28})
    consent.to_csv(home.consent_path, index=False)
    source.update(mrns[:3], nihss=7)  # a withdrawn patient's row changes at the source after the withdrawal
    summary = ops.ingest_db(home)
    check_conserved(summary)
    assert summary["withdrawn_rows_deleted"] == 2
    (batch,) = summary["batches"]
    assert (batch["rows_in"], batch["loaded"], batch["no_consent"]) == (3, 1, 2)
    table = stored(open_store(home))
    assert len(table) == 28 and not set(table["_pid"]) & {pid(home, m) for m in mrns[:2]}


def _locked_load(store_url: str):
    """A connection holding the store's watermark rows: a load blocks at its watermark update (inside its
    transaction, after its rows are written) until this connection lets go."""
    engine = sa.create_engine(store_url)
    conn = engine.connect()
    conn.begin()
    conn.execute(sa.text("SELECT * FROM mipflow_watermarks FOR UPDATE")).all()
    return engine, conn


@pytest.mark.postgres
def test_a_load_killed_in_its_transaction_loses_and_doubles_nothing(tmp_path, source, request):
    """kill -9 the ``mipflow ingest-db`` process while its load transaction has written the rows; rerun."""
    store_url = request.getfixturevalue("pg_url") if source.kind != "postgresql" else _second_pg(request)
    export = generate_export("hospital_a", 50, seed=6)
    source.insert(export.iloc[:30])
    home = make_home(tmp_path, source, store_url)
    assert ops.ingest_db(home)["batches"][0]["loaded"] == 30
    store = open_store(home)
    committed = stages.watermark(store, "ehr_a")
    mrns = list(export["mrn"])
    source.update(mrns[:4], nihss=33)
    source.insert(export.iloc[30:50])
    source.delete(mrns[5:7])

    engine, lock = _locked_load(store_url)
    watcher = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)]))
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from mipflow.cli import main; "
                             f"sys.exit(main(['ingest-db', {str(home.root)!r}]))"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:  # until the load waits for the watermark row, its rows written
            waiting = watcher.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE mipflow_watermarks%'")).scalar()
            if waiting:
                # the blocked transaction has written into the data model's table already
                assert watcher.execute(sa.text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE l.pid = :pid "
                    "AND c.relname = 'dm_stroke_0_1' AND l.mode = 'RowExclusiveLock'"), {"pid": waiting}).scalar()
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the load never reached its watermark update"
            time.sleep(0.05)
        (batch_id,) = stages.waiting(store, "validate")  # extracted, validated: the load was running
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        lock.rollback()
        lock.close()
        watcher.close()
        engine.dispose()
    proc.stderr.close()
    time.sleep(0.2)  # the killed client's server session rolls back when it finds its client gone
    # nothing of the killed load is visible: the old rows, the old watermark, the batch still waiting
    assert stages.watermark(store, "ehr_a")["changes"] == committed["changes"]
    table = stored(store)
    assert len(table) == 30 and set(table["_batch_id"]) != {batch_id}
    assert store.batch(batch_id)["stage"] == "validate" and store.batch(batch_id)["status"] == "running"

    rerun = ops.ingest_db(home)  # finishes the batch in flight, then finds nothing new
    check_conserved(rerun)
    (batch,) = rerun["batches"]
    assert batch["batch_id"] == batch_id
    assert (batch["rows_in"], batch["loaded"], batch["deleted"]) == (24, 24, 2)
    table = stored(store)
    assert len(table) == 48 and not table.duplicated(["_pid", "dataset", "_visit"]).any()
    assert set(table[table["_pid"].isin([pid(home, m) for m in mrns[:4]])]["nihss_admission"]) == {33}
    assert stages.watermark(store, "ehr_a")["batch_id"] == batch_id
    assert ops.ingest_db(home)["batches"] == [] and len(stored(store)) == 48


def _second_pg(request) -> str:
    """A second fresh PostgreSQL database (the feature store beside a PostgreSQL source)."""
    import uuid

    from tests.conftest import PG_ADMIN_URL

    name = f"mipflow_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    request.addfinalizer(drop)
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def test_an_error_inside_the_load_transaction_rolls_back_rows_deletions_and_watermark(tmp_path, source,
                                                                                      monkeypatch):
    export = generate_export("hospital_a", 20, seed=8)
    source.insert(export.iloc[:15])
    home = make_home(tmp_path, source)
    ops.ingest_db(home)
    store = open_store(home)
    committed = stages.watermark(store, "ehr_a")
    mrns = list(export["mrn"])
    source.insert(export.iloc[15:])
    source.delete(mrns[:3])

    def refresh_fails(self, conn, model):  # after the deletions and the upserts, before the commit
        raise OSError("disk full")

    monkeypatch.setattr(FeatureStore, "refresh_datasets", refresh_fails)
    with pytest.raises(OSError):
        ops.ingest_db(home)
    monkeypatch.undo()
    assert stages.watermark(store, "ehr_a") == committed
    assert len(stored(store)) == 15  # the deleted rows are still there, the new ones are not
    rerun = ops.ingest_db(home)
    check_conserved(rerun)
    assert (rerun["batches"][0]["loaded"], rerun["batches"][0]["deleted"]) == (5, 3)
    assert len(stored(open_store(home))) == 17


# --------------------------------------------------------------------------
# the profile and the connection (no database needed)
# --------------------------------------------------------------------------

BASE = {"connection": {"env": "EHR_URL"}, "table": "t", "watermark": {"column": "updated_at"}}


@pytest.mark.parametrize("section, message", [
    pytest.param(BASE | {"connection": {"url": "postgresql://u:p@h/db"}}, "must not hold credentials", id="url"),
    pytest.param(BASE | {"password": "p"}, "must not hold credentials", id="password"),
    pytest.param(BASE | {"connection": {"env": "postgresql://u:p@h/db"}}, "never the URL itself", id="url-as-name"),
    pytest.param(BASE | {"connection": {"env": "A", "secret_file": "b"}}, "exactly one of", id="two-connections"),
    pytest.param({k: v for k, v in BASE.items() if k != "table"}, "exactly one of \"table\"", id="no-table"),
    pytest.param(BASE | {"query": "SELECT 1"}, "exactly one of \"table\"", id="table-and-query"),
    pytest.param({**{k: v for k, v in BASE.items() if k != "table"}, "query": "DELETE FROM t"}, "one SELECT",
                 id="not-a-select"),
    pytest.param({**{k: v for k, v in BASE.items() if k != "table"}, "query": "SELECT 1; DROP TABLE t"},
                 "one statement", id="two-statements"),
    pytest.param(BASE | {"watermark": {"column": "x", "type": "uuid"}}, "type", id="watermark-type"),
    pytest.param(BASE | {"deletions": {"tombstone": "d", "table": "x"}}, "not both", id="deletions-both"),
])
def test_database_sections_that_are_refused(section, message):
    with pytest.raises(ProfileError, match=message):
        DatabaseSource.from_dict(section)


def test_a_database_profile_round_trips():
    doc = json.loads(PROFILE.read_text())
    doc["database"] = BASE | {"deletions": {"query": "SELECT * FROM d", "watermark": {"column": "id",
                                                                                      "type": "integer"}}}
    profile = SourceProfile.from_dict(doc)
    assert SourceProfile.from_dict(profile.to_dict()) == profile


def test_the_connection_url_comes_from_a_private_file_or_the_environment(tmp_path, monkeypatch):
    home = NodeHome.init(tmp_path / "node", "n")
    secret = home.root / "ehr.url"
    secret.write_text(f"postgres://u:{PASSWORD}@127.0.0.1/ehr\n")
    secret.chmod(0o644)
    db = DatabaseSource.from_dict(BASE | {"connection": {"secret_file": "ehr.url"}})
    with pytest.raises(ConfigError, match="open to other users") as err:
        source_url("s", db, home)
    assert PASSWORD not in str(err.value)
    secret.chmod(0o600)
    assert source_url("s", db, home) == f"postgresql+psycopg2://u:{PASSWORD}@127.0.0.1/ehr"
    env = DatabaseSource.from_dict(BASE)
    monkeypatch.delenv("EHR_URL", raising=False)
    with pytest.raises(ConfigError, match="EHR_URL"):
        source_url("s", env, home)
    monkeypatch.setenv("EHR_URL", "mysql://root@127.0.0.1/ehr")
    assert source_url("s", env, home) == "mysql+pymysql://root@127.0.0.1/ehr"
    airflow = DatabaseSource.from_dict(BASE | {"connection": {"airflow_conn_id": "ehr_a"}})
    monkeypatch.setenv("AIRFLOW_CONN_EHR_A", "postgres://x@127.0.0.1:5432/ehr")
    assert source_url("s", airflow, home) == "postgresql+psycopg2://x@127.0.0.1:5432/ehr"
    assert source_url("s", airflow, home, lambda conn_id: f"mysql://{conn_id}@h/db") == "mysql+pymysql://ehr_a@h/db"


def test_an_unreachable_source_fails_its_batch_without_the_url(tmp_path, capsys):
    home = NodeHome.init(tmp_path / "node", "hospital_a")
    ops.add_data_model(home, STROKE)
    secret = home.root / "ehr.url"
    secret.write_text(f"postgresql://u:{PASSWORD}@127.0.0.1:1/ehr\n")  # nothing listens on port 1
    secret.chmod(0o600)
    doc = json.loads(PROFILE.read_text()) | {"source": "ehr_a"}
    doc["database"] = BASE | {"connection": {"secret_file": "ehr.url"}}
    (home.profiles_dir / "ehr_a.json").write_text(json.dumps(doc))
    assert cli.main(["ingest-db", str(home.root), "--profile", "ehr_a"]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["batches"] == [] and "cannot read the source's watermark (OperationalError)" in \
        summary["problems"][0]
    assert PASSWORD not in out + err and "127.0.0.1:1" not in out + err


@pytest.mark.parametrize("values, date_format, expected", [
    pytest.param([1, None, 30], "%Y-%m-%d", ["1", None, "30"], id="integers"),
    pytest.param([1.5, None, 7.0], "%Y-%m-%d", ["1.5", None, "7.0"], id="floats"),
    pytest.param([Decimal("7.7"), Decimal("1E+1"), None], "%Y-%m-%d", ["7.7", "10", None], id="numerics"),
    pytest.param([date(1950, 11, 23), None], "%Y-%m-%d", ["1950-11-23", None], id="dates-iso"),
    pytest.param([date(1950, 11, 23), datetime(2024, 2, 1, 13, 5)], "%d.%m.%Y", ["23.11.1950", "01.02.2024"],
                 id="dates-profile-format"),
    pytest.param([True, False, None], "%Y-%m-%d", ["true", "false", None], id="booleans"),
    pytest.param(["a", 2, b"b"], "%Y-%m-%d", ["a", "2", "b"], id="mixed"),
    pytest.param([[1, 2], [3, 4]], "%Y-%m-%d", ["[1, 2]", "[3, 4]"], id="arrays-stay-cells"),
])
def test_database_values_become_the_text_a_csv_export_holds(values, date_format, expected):
    from mipflow.node.ingest.database import _text_column

    assert list(_text_column(values, date_format)) == expected
