"""The node DAG chain run through Airflow (dag.test) on SQLite and PostgreSQL feature stores."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from mipflow.node import ops
from mipflow.node.store.feature_store import open_store
from mipflow.node.home import NodeHome
from mipflow.node.files import EHR_KIND, file_ref, landing_path_key
from mipflow.demo.synth import generate_consent, generate_export, write_export
from tests.conftest import REPO_ROOT
from tests.mipflow.node.ingest.test_pipeline import all_text
from tests.nodes import standard_home

pytestmark = [pytest.mark.airflow, pytest.mark.xdist_group("airflow")]
CHAIN = ("node_capture", "node_depersonalise", "node_validate", "node_load")


@pytest.fixture(scope="module")
def dags(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "mipflow_node.py"))
    assert not bag.import_errors
    return bag.dags


def run_chain(dags, home) -> None:
    for dag_id in CHAIN:
        run = dags[dag_id].test(run_conf={"node_home": str(home.root)})
        assert "success" in str(run.state), f"{dag_id} ended {run.state}"


def test_node_chain_through_airflow(dags, tmp_path, db_url, caplog, capfd):
    home = standard_home(tmp_path / "hospital_b", "hospital_b", db_url)
    home.set_setting("settle_seconds", "0")
    ops.add_data_model(home, REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
    shutil.copyfile(REPO_ROOT / "include" / "schemas" / "profiles" / "hospital_b.json",
                    home.profiles_dir / "hospital_b.json")
    export = generate_export("hospital_b", 80, seed=9, bad_rows=7)
    landing = home.landing_dir / "hospital_b" / "Doe_John_MRN8812345"  # exports named after a patient
    landing.mkdir(parents=True)
    write_export(landing / "export1_Doe_John.csv", export)
    (landing / "export2_Doe_John.csv.part").write_text("still being written")
    generate_consent(export, seed=2).to_csv(home.consent_path, index=False)

    caplog.set_level(logging.DEBUG)
    run_chain(dags, home)
    store = open_store(home)
    (batch,) = store.batches()
    # neither the store nor the task logs name the file or its folder
    ref = file_ref(landing_path_key(home.key(), home.landing_dir, landing / "export1_Doe_John.csv", kind=EHR_KIND))
    assert batch["source"] == f"hospital_b/{ref}"
    out, err = capfd.readouterr()
    assert "skipped file " in out + err + caplog.text  # the task output is captured here, and names
    assert f"hospital_b/{ref}: loaded" in out + err + caplog.text  # files by reference
    for text in (all_text(store), out, err, caplog.text):
        assert "Doe" not in text and "MRN8812345" not in text and str(home.landing_dir) not in text
    assert batch["status"] == "loaded", batch["message"]
    assert batch["rows_in"] == len(export) == 87
    assert batch["rows_in"] == batch["loaded"] + batch["quarantined"] + batch["no_consent"] + batch["duplicates"]
    assert batch["inserted"] == batch["loaded"] and batch["updated"] == batch["unchanged"] == 0  # a first load
    model = store.data_model("stroke:0.1")
    assert store.count_rows(model) == batch["loaded"] > 0
    assert not any((home.staging_dir / batch["batch_id"]).glob("*"))  # staging cleaned up
    if store.dialect == "sqlite":  # node_load's report wrote the columnar snapshot (ADR 0049)
        from mipflow.node.store.stamp import snapshot_folder

        (snapshot,) = snapshot_folder(store).glob(model.table_name + "@*")
        assert json.loads((snapshot / "meta.json").read_text())["rows"] == batch["loaded"]

    # same file again: nothing new; the chain still succeeds (idempotent)
    run_chain(dags, home)
    assert len(store.batches()) == 1 and store.count_rows(model) == batch["loaded"]

    # the CLI path on the same export gives the same store content
    other = standard_home(tmp_path / "cli", "cli")
    ops.add_data_model(other, REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
    home_key = (home.root / "secret.key").read_text()
    (other.root / "secret.key").write_text(home_key)
    summary = ops.ingest(other, [landing / "export1_Doe_John.csv"], profile=home.profiles_dir / "hospital_b.json",
                         consent=home.consent_path)
    counts = summary["files"][0]["counts"]
    assert (counts["loaded"], counts["quarantined"], counts["no_consent"], counts["duplicates"]) == (
        batch["loaded"], batch["quarantined"], batch["no_consent"], batch["duplicates"])


# --------------------------------------------------------------------------
# the chain runs by itself (issue 15, item 5)
# --------------------------------------------------------------------------

def test_node_dags_are_created_unpaused_without_catch_up(dags):
    from mipflow_airflow.dags import node_dags_paused

    for dag_id in CHAIN:
        assert dags[dag_id].is_paused_upon_creation is False, dag_id
        assert dags[dag_id].catchup is False, dag_id
    # each stage is scheduled on the Asset the stage before it emits
    for before, after in zip(CHAIN, CHAIN[1:]):
        emitted = {o.uri for t in dags[before].tasks for o in t.outlets}
        assert len(emitted) == 1
        assert {a.uri for a in dags[after].timetable.asset_condition.objects} == emitted
    # the first nightly capture is the next 02:00, never the one already past (no surprise run), and the
    # later stages' daily catch-up run (for Asset events missed while paused) is the next 04:00
    for dag_id, hour in zip(CHAIN, (2, 4, 4, 4)):
        assert_first_run_is_the_next(dags[dag_id], hour, 0)
    # one switch pauses the four together
    assert node_dags_paused({}) is False
    assert node_dags_paused({"MIPFLOW_NODE_DAGS_PAUSED": "1"}) is True


def test_node_home_is_not_a_run_parameter_where_mipflow_node_home_is_set(airflow_db, tmp_path, monkeypatch):
    """With MIPFLOW_NODE_HOME set (a deployed node) the trigger form has no node_home field, and a run whose
    conf names another folder fails at once (red, notified in the node's own home) without touching either
    home; a run without it works on MIPFLOW_NODE_HOME."""
    home = make_node_home(tmp_path)
    other = make_node_home(tmp_path / "other")
    for target in (home, other):
        write_export(target.landing_dir / "hospital_b" / "export1.csv", generate_export("hospital_b", 20, seed=6))
    assert all("node_home" in dag.params for dag in parse_node_dags(monkeypatch, MIPFLOW_NODE_HOME=None).values())
    dags = parse_node_dags(monkeypatch, MIPFLOW_NODE_HOME=str(home.root), MIPFLOW_NODE_WATCH_SECONDS="0")
    assert set(CHAIN) <= set(dags)
    assert [dag_id for dag_id, dag in dags.items() if "node_home" in dag.params] == []

    run = dags["node_capture"].test(run_conf={"node_home": str(other.root)})
    assert "failed" in str(run.state)
    assert open_store(home).batches() == [] and open_store(other).batches() == []
    assert notifications(other) == []
    (record,) = notifications(home)
    assert (record["dag_id"], record["task_id"], record["exception"]) == (
        "node_capture", "capture_landing", "AirflowFailException")
    assert "set by MIPFLOW_NODE_HOME" in record["message"] and str(other.root) not in record["message"]

    run = dags["node_capture"].test(run_conf={})
    assert "success" in str(run.state)
    assert len(open_store(home).batches()) == 1 and open_store(other).batches() == []


def test_a_capture_run_queues_the_next_stage_by_itself(dags, tmp_path):
    """After a capture run, the metadata DB has the DAGs unpaused and depersonalise queued by the Asset event."""
    import sqlalchemy as sa
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    home = make_node_home(tmp_path)
    write_export(home.landing_dir / "hospital_b" / "export1.csv", generate_export("hospital_b", 20, seed=4))
    run = dags["node_capture"].test(run_conf={"node_home": str(home.root)})
    assert "success" in str(run.state)
    with create_session() as session:
        paused = dict(session.execute(sa.select(DagModel.dag_id, DagModel.is_paused)
                                      .where(DagModel.dag_id.in_(CHAIN))).all())
        queued = set(session.scalars(sa.select(AssetDagRunQueue.target_dag_id)))
    assert paused == {dag_id: False for dag_id in CHAIN}
    assert "node_depersonalise" in queued


def next_scheduled_run(dag):
    """When the scheduler runs ``dag`` next by its timetable (serialised as the dag-processor stores it)."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    serialised = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    return serialised.timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=None, latest=None, catchup=False)).run_after


def test_a_batch_left_waiting_while_a_stage_was_paused_is_picked_up_by_the_catch_up_run(dags, tmp_path):
    """node_validate paused when node_depersonalise emitted its event: the event is lost and the batch waits
    at "depersonalise"; the 04:00 catch-up runs (no triggering event) validate and then load it."""
    import sqlalchemy as sa
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    home = make_node_home(tmp_path)
    write_export(home.landing_dir / "hospital_b" / "export1.csv", generate_export("hospital_b", 20, seed=5))
    for dag_id in CHAIN[:2]:
        assert "success" in str(dags[dag_id].test(run_conf={"node_home": str(home.root)}).state), dag_id
    with create_session() as session:  # what a paused consumer gets: no queued run
        session.execute(sa.delete(AssetDagRunQueue))
    store = open_store(home)
    (batch,) = store.batches()
    assert (batch["stage"], batch["status"]) == ("depersonalise", "running")

    for dag_id, stage in (("node_validate", "validate"), ("node_load", "load")):
        with create_session() as session:
            session.execute(sa.delete(AssetDagRunQueue))  # no Asset event: the timetable's run only
        catch_up = next_scheduled_run(dags[dag_id])
        assert (catch_up.hour, catch_up.minute) == (4, 0), dag_id
        run = dags[dag_id].test(run_after=catch_up, run_conf={"node_home": str(home.root)})
        assert "success" in str(run.state), dag_id
        (batch,) = store.batches()
        assert batch["stage"] == stage, dag_id
    assert batch["status"] == "loaded" and batch["loaded"] > 0
    assert store.count_rows(store.data_model("stroke:0.1")) == batch["loaded"]


# --------------------------------------------------------------------------
# failure is red (issue 15, item 6)
# --------------------------------------------------------------------------

def make_node_home(tmp_path, db_url: str = "") -> NodeHome:
    home = standard_home(tmp_path / "hospital_b", "hospital_b", db_url)
    home.set_setting("settle_seconds", "0")
    ops.add_data_model(home, REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
    shutil.copyfile(REPO_ROOT / "include" / "schemas" / "profiles" / "hospital_b.json",
                    home.profiles_dir / "hospital_b.json")
    return home


def notifications(home: NodeHome) -> list[dict]:
    path = home.root / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_broken_files_turn_the_runs_red_with_what_to_fix(dags, tmp_path, db_url):
    home = make_node_home(tmp_path, db_url)
    home.set_setting("max_failure_rate", "0.05")
    landing = home.landing_dir / "hospital_b"
    landing.mkdir(parents=True)
    held = generate_export("hospital_b", 40, seed=11, bad_rows=10)  # 20 % of rows fail: held
    write_export(landing / "held.csv", held)
    good = generate_export("hospital_b", 30, seed=12, start_mrn=900)
    good.to_csv(landing / "semicolon.csv", sep=";", index=False)
    good.drop(columns=["pat_nr", "geburtsdatum", "plz"]).to_csv(landing / "columns.csv", index=False)
    good.head(0).to_csv(landing / "header_only.csv", index=False)
    (landing / "zero.csv").write_bytes(b"")
    latin = good.copy()
    latin["nachname"] = "Müller"
    latin.to_csv(landing / "latin1.csv", index=False, encoding="latin-1")
    refs = {name: file_ref(landing_path_key(home.key(), home.landing_dir, landing / name, kind=EHR_KIND))
            for name in ("held.csv", "semicolon.csv", "columns.csv", "header_only.csv", "zero.csv", "latin1.csv")}

    runs = {dag_id: dags[dag_id].test(run_conf={"node_home": str(home.root)}) for dag_id in CHAIN}
    states = {dag_id: str(run.state) for dag_id, run in runs.items()}
    assert "failed" in states["node_capture"]  # the 0-byte file
    assert "failed" in states["node_depersonalise"]  # delimiter, columns, header only, encoding
    assert "failed" in states["node_validate"]  # the held batch
    # the good batch went on: each red run still emitted its Asset event for the next stage
    import sqlalchemy as sa
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        for dag_id in ("node_capture", "node_depersonalise"):
            assert session.scalar(sa.select(sa.func.count()).select_from(AssetEvent).where(
                AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == runs[dag_id].run_id)) == 1, dag_id

    records = notifications(home)
    by_task: dict[str, list[str]] = {}
    for record in records:
        assert record["exception"] == "AirflowFailException"
        by_task.setdefault(f"{record['dag_id']}.{record['task_id']}", []).append(record["message"])
    assert set(by_task) == {"node_capture.landing_problems", "node_depersonalise.depersonalise_batch",
                            "node_validate.validate_batch"}
    (empty,) = by_task["node_capture.landing_problems"]
    assert f"file {refs['zero.csv']}: empty file" in empty
    messages = "\n".join(by_task["node_depersonalise.depersonalise_batch"])
    assert len(by_task["node_depersonalise.depersonalise_batch"]) == 4
    latin_message = next(m for m in by_task["node_depersonalise.depersonalise_batch"] if refs["latin1.csv"] in m)
    assert "not valid utf-8 text" in latin_message and "'encoding' in the source profile" in latin_message
    semicolon = next(m for m in by_task["node_depersonalise.depersonalise_batch"] if refs["semicolon.csv"] in m)
    assert "looks ';'-delimited" in semicolon and "reads ','" in semicolon
    columns = next(m for m in by_task["node_depersonalise.depersonalise_batch"] if refs["columns.csv"] in m)
    for column in ("'pat_nr'", "'geburtsdatum'", "'plz'"):  # every missing column, not only the first
        assert column in columns
    assert "delimited" not in columns
    assert f"file {refs['header_only.csv']}: header line only" in messages
    (held_message,) = by_task["node_validate.validate_batch"]
    assert "held" in held_message and "max_failure_rate" in held_message
    # no row data in the notifications: no patient number, name or birth date of the exports
    text = json.dumps(records)
    values = {str(v) for column in ("nachname", "vorname", "geburtsdatum", "versichertennummer")
              for frame in (held, good, latin) for v in frame[column]}
    assert [v for v in values if len(v) >= 4 and v in text] == []

    # the batches tell the same story, and their rows still add up
    batches = {b["source"].split("/")[1]: b for b in open_store(home).batches()}
    from airflow.models.taskinstance import TaskInstance

    with create_session() as session:  # mapped tasks are labelled by batch, not 0..n
        labels = set(session.scalars(sa.select(TaskInstance.rendered_map_index).where(
            TaskInstance.dag_id == "node_depersonalise", TaskInstance.run_id == runs["node_depersonalise"].run_id,
            TaskInstance.task_id == "depersonalise_batch")))
    assert labels == {b["batch_id"] for ref, b in batches.items() if ref != refs["zero.csv"]}  # 0 bytes: not mapped
    status = {name: batches[f"{ref}"]["status"] for name, ref in refs.items()}
    assert status == {"held.csv": "held", "semicolon.csv": "failed", "columns.csv": "failed",
                      "header_only.csv": "empty", "zero.csv": "empty", "latin1.csv": "failed"}
    for batch in batches.values():  # held: the valid rows of the held batch (ADR 0004)
        assert batch["rows_in"] == (batch["loaded"] + batch["quarantined"] + batch["held"] + batch["no_consent"]
                                    + batch["duplicates"])
    assert batches[refs["held.csv"]]["rows_in"] == len(held) and batches[refs["held.csv"]]["loaded"] == 0
    assert batches[refs["held.csv"]]["held"] > 0


@pytest.mark.postgres
def test_a_database_source_through_the_dag_chain(dags, tmp_path, pg_url, monkeypatch, capfd):
    """The capture task reads an EHR database named by an Airflow connection (common.sql's DbApiHook);
    the chain loads it, a second chain with changes at the source loads only those."""
    from sqlalchemy.engine import make_url

    from mipflow.node.ingest import stages
    from tests.mipflow.node.ingest.test_database import PASSWORD, Source, stored

    src = Source("postgresql", pg_url)
    export = generate_export("hospital_a", 30, seed=12)
    src.insert(export.iloc[:25])
    url = make_url(pg_url)
    monkeypatch.setenv("AIRFLOW_CONN_EHR_HOSPITAL_A", json.dumps(  # Airflow reads connections from the environment
        {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username,
         "password": PASSWORD, "schema": url.database}))
    home = NodeHome.init(tmp_path / "hospital_a", "hospital_a")
    ops.add_data_model(home, REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
    doc = json.loads((REPO_ROOT / "include" / "schemas" / "profiles" / "hospital_a.json").read_text())
    doc |= {"source": "ehr_a", "database": src.database_section({"airflow_conn_id": "ehr_hospital_a"})}
    (home.profiles_dir / "ehr_a.json").write_text(json.dumps(doc))

    run_chain(dags, home)
    store = open_store(home)
    (batch,) = store.batches()
    assert (batch["status"], batch["rows_in"], batch["loaded"]) == ("loaded", 25, 25)
    src.insert(export.iloc[25:])
    src.delete(list(export["mrn"][:2]))
    run_chain(dags, home)
    latest = store.batches()[-1]
    assert (latest["status"], latest["rows_in"], latest["loaded"]) == ("loaded", 5, 5)
    assert len(stored(store)) == 28
    assert stages.watermark(store, "ehr_a")["batch_id"] == latest["batch_id"]
    out, err = capfd.readouterr()
    for text in (out, err, all_text(store)):
        assert PASSWORD not in text and export["last_name"][0] not in text
    src.engine.dispose()


# --------------------------------------------------------------------------
# the EHR watermark watcher wakes node_capture (issue 16 item 3, ADR 0043 "Latency")
# --------------------------------------------------------------------------

WATCHER = "mipflow_airflow.triggers.ehr_watermark.EhrWatermarkTrigger"


def parse_node_dags(monkeypatch, **env: str | None) -> dict:
    """The node DAG file parsed afresh with ``env`` (None removes a variable)."""
    from airflow.dag_processing.dagbag import DagBag

    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "mipflow_node.py"))
    assert not bag.import_errors
    return bag.dags


def ehr_profile(home: NodeHome, connection: dict, src=None) -> None:
    """``profiles/ehr_a.json``: hospital_a's profile reading an EHR database (the connection need not work)."""
    from tests.mipflow.node.ingest.test_database import Source

    doc = json.loads((REPO_ROOT / "include" / "schemas" / "profiles" / "hospital_a.json").read_text())
    section = src.database_section(connection) if src is not None else Source.database_section(
        type("S", (), {"kind": "postgresql"})(), connection)
    doc |= {"source": "ehr_a", "database": section}
    (home.profiles_dir / "ehr_a.json").write_text(json.dumps(doc))


def test_node_capture_is_scheduled_on_the_ehr_watcher_or_the_nightly_cron(tmp_path, monkeypatch):
    """With a database source in the node home, node_capture runs on the watcher's Asset OR at 02:00; without
    one (or with MIPFLOW_NODE_WATCH_SECONDS=0) at 02:00 only, and no trigger exists.  The serialised DAG (what
    the dag-processor stores) keeps both, and the file still parses without importing mipflow."""
    import subprocess
    import sys
    from datetime import datetime, timedelta, timezone

    from airflow.sdk import CronTriggerTimetable
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction
    from airflow.triggers.base import BaseEventTrigger

    home = NodeHome.init(tmp_path / "hospital_a", "hospital_a")
    shutil.copyfile(REPO_ROOT / "include" / "schemas" / "profiles" / "hospital_b.json",
                    home.profiles_dir / "hospital_b.json")  # a landing-folder profile: nothing to watch
    for env in ({"MIPFLOW_NODE_HOME": None}, {"MIPFLOW_NODE_HOME": str(home.root)}):
        capture = parse_node_dags(monkeypatch, MIPFLOW_NODE_WATCH_SECONDS=None, **env)["node_capture"]
        assert isinstance(capture.timetable, CronTriggerTimetable), env
        assert capture.timetable.expression == "0 2 * * *"

    ehr_profile(home, {"secret_file": "secrets/ehr.url"})
    dags = parse_node_dags(monkeypatch, MIPFLOW_NODE_HOME=str(home.root), MIPFLOW_NODE_WATCH_SECONDS=None)
    capture = dags["node_capture"]
    assert capture.timetable.__class__.__name__ == "AssetOrTimeSchedule"
    assert capture.timetable.timetable.expression == "0 2 * * *"
    (asset,) = capture.timetable.asset_condition.objects
    assert asset.name == "mipflow_node_ehr_changed"
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, BaseEventTrigger)
    assert watcher.trigger.serialize() == (WATCHER, {"node_home": str(home.root), "poll_seconds": 10.0})
    assert dags["node_depersonalise"].timetable.asset_condition.objects[0].name == "mipflow_node_captured"

    serialised = DagSerialization.to_dict(capture)
    assert WATCHER in json.dumps(serialised)
    again = DagSerialization.from_dict(serialised)
    assert again.timetable.__class__.__name__ == "AssetOrTimeSchedule"
    first = again.timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=None, latest=None, catchup=False))
    now = datetime.now(timezone.utc)
    assert now < first.run_after <= now + timedelta(days=1) and (first.run_after.hour, first.run_after.minute) == (2, 0)

    capture = parse_node_dags(monkeypatch, MIPFLOW_NODE_WATCH_SECONDS="3")["node_capture"]
    assert capture.timetable.asset_condition.objects[0].watchers[0].trigger.poll_seconds == 3.0
    capture = parse_node_dags(monkeypatch, MIPFLOW_NODE_WATCH_SECONDS="0")["node_capture"]  # switched off
    assert isinstance(capture.timetable, CronTriggerTimetable)

    code = ("import sys, runpy\n"
            f"sys.path.insert(0, {str(REPO_ROOT / 'plugins')!r})\n"
            "import airflow.sdk, airflow.triggers.base\n"
            "before = set(sys.modules)\n"
            f"runpy.run_path({str(REPO_ROOT / 'dags' / 'mipflow_node.py')!r})\n"
            "new = set(sys.modules) - before\n"
            "print(sorted({m.split('.')[0] for m in new} & {'mipflow', 'pandas', 'numpy', 'sqlalchemy'}))\n"
            "print('mipflow_airflow.triggers.ehr_watermark' in new)\n")
    env = {**__import__("os").environ, "MIPFLOW_NODE_HOME": str(home.root)}
    env.pop("MIPFLOW_NODE_WATCH_SECONDS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=REPO_ROOT, timeout=120).stdout.splitlines()
    assert out[-2:] == ["[]", "True"]  # the watcher's trigger is imported, mipflow's logic is not


@pytest.mark.postgres
def test_a_row_committed_at_the_ehr_database_wakes_node_capture(dags, tmp_path, pg_url, monkeypatch, capfd):
    """End to end short of the scheduler and triggerer processes: the DAG sync writes the watcher's trigger
    row; that trigger, built from its row as the triggerer builds it (Airflow connection read asynchronously),
    stays quiet while nothing changes; a committed row fires it; the event, submitted as the triggerer submits
    it, queues a node_capture run; the chain then loads the row and the watcher is quiet again."""
    import asyncio
    import time

    import sqlalchemy as sa
    from airflow.models.asset import AssetDagRunQueue, AssetEvent
    from airflow.models.trigger import Trigger
    from airflow._shared.module_loading import import_string
    from airflow.serialization.decoders import smart_decode_trigger_kwargs
    from airflow.utils.session import create_session
    from sqlalchemy.engine import make_url

    from mipflow.node.ingest import stages
    from tests.mipflow.node.ingest.test_database import PASSWORD, Source, stored

    src = Source("postgresql", pg_url)
    export = generate_export("hospital_a", 30, seed=14)
    src.insert(export.iloc[:20])
    url = make_url(pg_url)
    monkeypatch.setenv("AIRFLOW_CONN_EHR_HOSPITAL_A", json.dumps(
        {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username,
         "password": PASSWORD, "schema": url.database}))
    home = NodeHome.init(tmp_path / "hospital_a", "hospital_a")
    ops.add_data_model(home, REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
    ehr_profile(home, {"airflow_conn_id": "ehr_hospital_a"}, src)
    monkeypatch.setenv("MIPFLOW_NODE_HOME", str(home.root))  # the node's Airflow: its home, a 1 s watcher
    monkeypatch.setenv("MIPFLOW_NODE_WATCH_SECONDS", "1")
    run_chain(dags, home)  # the first load; dag.test syncs the DAG files (and so the watcher) to the metadata DB
    store = open_store(home)
    assert len(stored(store)) == 20

    with create_session() as session:
        row = session.scalars(sa.select(Trigger).where(Trigger.classpath == WATCHER)).one()
        assert [a.name for a in row.assets] == ["mipflow_node_ehr_changed"]
        kwargs = {k: smart_decode_trigger_kwargs(v) for k, v in Trigger._decrypt_kwargs(row.encrypted_kwargs).items()}
        trigger_id, trigger = row.id, import_string(row.classpath)(**kwargs)  # as the triggerer inflates it
        session.execute(sa.delete(AssetDagRunQueue))
    assert (trigger.node_home, trigger.poll_seconds) == (str(home.root), 1.0)

    events: list = []

    async def watch() -> float:
        async def collect() -> None:
            async for event in trigger.run():
                events.append((time.monotonic(), event))

        task = asyncio.create_task(collect())
        try:
            await asyncio.sleep(2.5)  # three checks, nothing changed
            assert events == []
            await asyncio.to_thread(src.insert, export.iloc[20:21])
            committed = time.monotonic()
            while not events and time.monotonic() - committed < 15:
                await asyncio.sleep(0.05)
            return committed
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    committed = asyncio.run(watch())
    (fired_at, event), = events
    assert event.payload == {"sources": ["ehr_a"]} and fired_at - committed < 3.5

    Trigger.submit_event(trigger_id, event)  # what the triggerer does with a watcher's event
    with create_session() as session:
        queued = set(session.scalars(sa.select(AssetDagRunQueue.target_dag_id)))
        extra = session.scalars(sa.select(AssetEvent.extra).order_by(AssetEvent.id.desc()).limit(1)).one()
    assert queued == {"node_capture"}  # the scheduler makes it a node_capture run
    assert extra == {"from_trigger": True, "payload": {"sources": ["ehr_a"]}}  # no value read from the source

    run_chain(dags, home)  # that run and the chain it sets off
    latest = store.batches()[-1]
    assert (latest["status"], latest["rows_in"], latest["loaded"]) == ("loaded", 1, 1)
    assert len(stored(store)) == 21 and stages.watermark(store, "ehr_a")["batch_id"] == latest["batch_id"]
    assert asyncio.run(trigger.poll()) is None  # loaded: the committed watermark is the source's again
    trigger.close()
    out, err = capfd.readouterr()
    assert PASSWORD not in out + err and export["last_name"][20] not in out + err
    src.engine.dispose()


def assert_first_run_is_the_next(dag, hour: int, minute: int) -> None:
    """A DAG without start_date first runs at the next ``hour:minute`` UTC, never at the slot already
    past, whatever the time of day it is first seen (Airflow 3.3 reaches back up to 10% of the period
    unless ``run_immediately`` is a zero timedelta); checked at minutes around the slots and now."""
    from datetime import datetime, timedelta, timezone

    import airflow.timetables.trigger as trigger
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    dag = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert dag.start_date is None, dag.dag_id
    day = datetime(2026, 12, 7, tzinfo=timezone.utc)
    slot = 60 * hour + minute
    offsets = {0, 1, slot - 1, slot, slot + 1, slot + 30, slot + 144, slot + 145, 300, 1439}
    for now in [day + timedelta(minutes=m % 1440) for m in sorted(offsets)] + [datetime.now(timezone.utc)]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trigger, "utcnow", lambda now=now: now)
            first = dag.timetable.next_dagrun_info(
                last_automated_data_interval=None,
                restriction=TimeRestriction(earliest=None, latest=None, catchup=False))
        assert now <= first.run_after <= now + timedelta(days=1), (dag.dag_id, now)
        assert (first.run_after.hour, first.run_after.minute) == (hour, minute), (dag.dag_id, now)
