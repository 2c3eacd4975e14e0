"""The imaging DAG chain run through Airflow (dag.test) on a SQLite feature store."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.store.feature_store import open_store
from tests.conftest import REPO_ROOT
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


def test_dags_are_linked_by_assets(dags):
    capture = dags["imaging_capture"]
    assert {o.name for t in capture.tasks for o in t.outlets} == {"mipflow_imaging_captured"}
    assert dags["imaging_deidentify"].timetable.__class__.__name__ == "AssetTriggeredTimetable"
    assert {o.name for t in dags["imaging_deidentify"].tasks for o in t.outlets} == {"mipflow_imaging_features"}
    assert "node_home" in capture.params


def test_imaging_chain_through_airflow(dags, tmp_path):
    home = standard_home(tmp_path / "imaging_test", "imaging_test")
    (home.root / "secret.key").write_text(NODE_KEY.hex() + "\n")
    home.set_setting("settle_seconds", "0")
    expected = build_landing(home)

    run_chain(dags, home)
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

    # nothing new: both DAGs still succeed and the store is unchanged
    run_chain(dags, home)
    assert store.count_rows(model) == 2 and len(store.batches()) == len(series) + 1


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
        run_chain(dags, home)
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
