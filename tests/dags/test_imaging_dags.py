"""The imaging DAG chain run through Airflow (dag.test) on a SQLite feature store."""
from __future__ import annotations

import json
from datetime import datetime

import pytest
import sqlalchemy as sa

from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.store.feature_store import open_store
from tests.conftest import REPO_ROOT
from tests.dags.test_node_dags import assert_first_run_is_the_next
from tests.mipflow.node.imaging.conftest import NODE_KEY, build_landing, raw_identifiers
from tests.nodes import standard_home

pytestmark = [pytest.mark.airflow, pytest.mark.xdist_group("airflow")]
CHAIN = ("imaging_capture", "imaging_deidentify")


@pytest.fixture(scope="module")
def dags(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "mipflow_imaging.py"))
    assert not bag.import_errors
    return bag.dags


def run_chain(dags, home) -> None:
    for dag_id in CHAIN:
        run = dags[dag_id].test(run_conf={"node_home": str(home.root)})
        assert "success" in str(run.state), f"{dag_id} ended {run.state}"


def run_states(dags, home) -> dict[str, str]:
    return {dag_id: str(dags[dag_id].test(run_conf={"node_home": str(home.root)}).state) for dag_id in CHAIN}


def notifications(home) -> list[dict]:
    path = home.root / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_dags_are_linked_by_assets(dags):
    capture = dags["imaging_capture"]
    assert {o.name for t in capture.tasks for o in t.outlets} == {"mipflow_imaging_captured"}
    assert dags["imaging_deidentify"].timetable.__class__.__name__ == "AssetOrTimeSchedule"
    assert {a.name for a in dags["imaging_deidentify"].timetable.asset_condition.objects} == {
        "mipflow_imaging_captured"}
    assert {o.name for t in dags["imaging_deidentify"].tasks for o in t.outlets} == {"mipflow_imaging_features"}
    assert "node_home" in capture.params


def test_imaging_chain_through_airflow(dags, tmp_path):
    home = standard_home(tmp_path / "imaging_test", "imaging_test")
    (home.root / "secret.key").write_text(NODE_KEY.hex() + "\n")
    home.set_setting("settle_seconds", "0")
    expected = build_landing(home)

    # the junk files (empty, a text file, a DICOMDIR) turn capture red, the series of the patient whose
    # every instance is quarantined turns de-identification red; the other series are loaded all the same
    assert run_states(dags, home) == {"imaging_capture": "failed", "imaging_deidentify": "failed"}
    store = open_store(home)
    model = store.data_model("imaging:0.1")
    table = store.model_table(model)
    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(table))]
    pseudo = Pseudonymiser(home.key())
    assert {r["_pid"] for r in rows} == {pseudo.pseudonym("PHIPAT-A1"), pseudo.pseudonym("PHIPAT-B2")}
    series = [b for b in store.batches() if b["source"] != "dicom/capture"]
    capture = next(b for b in store.batches() if b["source"] == "dicom/capture")
    assert sum(b["loaded"] for b in series) == expected["written"]
    assert sum(b["quarantined"] for b in series) + capture["quarantined"] == expected["quarantined"]
    assert sorted(b["status"] for b in series) == ["failed", "loaded", "loaded"]
    staged = [p for p in (home.staging_dir / "dicom").rglob("*") if p.is_file()]
    assert len(staged) == expected["written"]
    forbidden = [v.encode() for v in raw_identifiers()]
    for path in staged:
        data = path.read_bytes()
        assert not any(v in data for v in forbidden), path.name

    # each failure is notified with what to fix, by batch and reason code, never a file name or header value
    records = notifications(home)
    by_task: dict[str, list[str]] = {}
    for record in records:
        assert record["exception"] == "AirflowFailException"
        by_task.setdefault(f"{record['dag_id']}.{record['task_id']}", []).append(record["message"])
    assert set(by_task) == {"imaging_capture.landing_problems", "imaging_deidentify.deidentify_chunk"}
    (landing,) = by_task["imaging_capture.landing_problems"]
    assert landing.startswith(f"{expected['quarantined'] - 1} file(s) of landing/dicom/ quarantined at capture")
    assert f"batch {capture['batch_id']}" in landing and "empty-file 1" in landing
    failed = next(b for b in series if b["status"] == "failed")
    (chunk,) = by_task["imaging_deidentify.deidentify_chunk"]
    assert chunk.startswith(f"series batch {failed['batch_id']} failed: every file quarantined")
    text = json.dumps(records)
    assert "PHI" not in text and str(home.landing_dir) not in text and not any(v in text for v in raw_identifiers())

    # nothing new: both DAGs succeed again, nothing more is notified and the store is unchanged
    run_chain(dags, home)
    assert store.count_rows(model) == 2 and len(store.batches()) == len(series) + 1
    assert notifications(home) == records


def next_run(dag) -> datetime:
    """When the scheduler would run ``dag`` next by its timetable (as serialised by the dag-processor)."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    serialised = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    return serialised.timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=None, latest=None, catchup=False)).run_after


def test_imaging_dags_are_created_unpaused_without_surprise_runs(dags):
    """Like the EHR chain (ADR 0037): unpaused at creation (the same switch), no start_date, and the first
    capture is the next 02:30 and the first catch-up de-identification the next 04:00, whatever the time of
    day the DAGs are first seen (Airflow's run_immediately would otherwise reach back up to 2.4 h)."""
    for dag_id in CHAIN:
        assert dags[dag_id].is_paused_upon_creation is False, dag_id
        assert dags[dag_id].catchup is False, dag_id
    for dag_id, (hour, minute) in zip(CHAIN, ((2, 30), (4, 0))):
        assert_first_run_is_the_next(dags[dag_id], hour, minute)


def test_the_imaging_dags_follow_the_node_dags_pause_switch(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("MIPFLOW_NODE_DAGS_PAUSED", "1")
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "mipflow_imaging.py"))
    assert not bag.import_errors
    assert {dag_id: dag.is_paused_upon_creation for dag_id, dag in bag.dags.items()} == {
        "imaging_capture": True, "imaging_deidentify": True}


def test_series_missed_while_deidentify_was_paused_are_picked_up_by_the_catch_up_run(dags, tmp_path):
    """A capture whose Asset event imaging_deidentify never saw (paused): the 04:00 run, which has no
    triggering event, de-identifies and loads the waiting series."""
    import sqlalchemy as sa
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    from mipflow.node.imaging.stages import waiting_series

    home = standard_home(tmp_path / "imaging_test", "imaging_test")
    (home.root / "secret.key").write_text(NODE_KEY.hex() + "\n")
    home.set_setting("settle_seconds", "0")
    build_landing(home)
    dags["imaging_capture"].test(run_conf={"node_home": str(home.root)})
    waiting = waiting_series(home)
    assert len(waiting) == 3
    with create_session() as session:  # the event is lost: the stage was paused
        session.execute(sa.delete(AssetDagRunQueue))
    catch_up = next_run(dags["imaging_deidentify"])  # what the scheduler runs next without an event
    assert (catch_up.hour, catch_up.minute) == (4, 0)
    run = dags["imaging_deidentify"].test(run_after=catch_up, run_conf={"node_home": str(home.root)})
    assert "failed" in str(run.state)  # one of the three series has every file quarantined
    assert waiting_series(home) == []
    store = open_store(home)
    assert store.count_rows(store.data_model("imaging:0.1")) == 2


def test_pacs_studies_through_the_imaging_dags(dags, tmp_path, capsys, monkeypatch):
    """A real Orthanc: its stable studies pulled, de-identified and loaded by the DAGs; the cursor committed."""
    from mipflow.node.imaging.pacs import committed_cursor, load_pacs_source
    from tests.mipflow.node.imaging.test_pacs import assert_nothing_identifying, pacs_home, store_state, \
        upload_patients
    from tests.orthanc import running_orthanc

    with running_orthanc(tmp_path / "orthanc") as orthanc:
        home = pacs_home(tmp_path, orthanc)
        # the credentials from an Airflow connection this time (environment secrets backend)
        (home.root / "secrets" / "pacs.auth").unlink()
        (home.root / "pacs.json").write_text(__import__("json").dumps({
            "name": "main", "url": orthanc.url, "credentials": {"airflow_conn_id": "pacs_test"}}))
        monkeypatch.setenv("AIRFLOW_CONN_PACS_TEST", __import__("json").dumps(
            {"conn_type": "http", "host": "127.0.0.1", "login": orthanc.user, "password": orthanc.password}))
        assert upload_patients(orthanc) == 9
        orthanc.wait_stable()
        # the series of burned-in-risk images is quarantined whole: de-identification is red, the rest loads
        assert run_states(dags, home) == {"imaging_capture": "success", "imaging_deidentify": "failed"}
        (record,) = notifications(home)
        assert record["task_id"] == "deidentify_chunk" and "(burned-in-risk 1)" in record["message"]
        state = store_state(home)
        pseudo = Pseudonymiser(home.key())
        assert {pid for pid, _ in state["rows"]} == {pseudo.pseudonym("PHIPAT-A1"), pseudo.pseudonym("PHIPAT-B2")}
        (pull,) = state["pulls"]
        accounting = __import__("json").loads(pull["accounting"])
        assert pull["state"] == "committed" and accounting["conserved"]
        assert (accounting["loaded"], accounting["quarantined"], accounting["no_consent"]) == (5, 1, 3)
        assert state["cursor"] == pull["until"]

        run_chain(dags, home)  # nothing new
        assert store_state(home) == state

        assert upload_patients(orthanc, study="study2", only=("PHIPAT-A1",)) == 3
        orthanc.wait_stable()
        run_chain(dags, home)
        after = store_state(home)
        assert len(after["rows"]) == 3 and len(after["pulls"]) == 2
        assert after["pulls"][1]["since"] == state["cursor"] and after["pulls"][1]["state"] == "committed"
        assert committed_cursor(open_store(home), load_pacs_source(home)) == after["pulls"][1]["until"]
        assert_nothing_identifying(home, orthanc, capsys.readouterr().out)
