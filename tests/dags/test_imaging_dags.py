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
