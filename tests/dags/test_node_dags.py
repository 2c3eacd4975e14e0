"""The node DAG chain run through Airflow (dag.test) on SQLite and PostgreSQL feature stores."""
from __future__ import annotations

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
    home = NodeHome.init(tmp_path / "hospital_b", "hospital_b", db_url)
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
    model = store.data_model("stroke:0.1")
    assert store.count_rows(model) == batch["loaded"] > 0
    assert not any((home.staging_dir / batch["batch_id"]).glob("*"))  # staging cleaned up

    # same file again: nothing new; the chain still succeeds (idempotent)
    run_chain(dags, home)
    assert len(store.batches()) == 1 and store.count_rows(model) == batch["loaded"]

    # the CLI path on the same export gives the same store content
    other = NodeHome.init(tmp_path / "cli", "cli")
    ops.add_data_model(other, REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
    home_key = (home.root / "secret.key").read_text()
    (other.root / "secret.key").write_text(home_key)
    summary = ops.ingest(other, [landing / "export1_Doe_John.csv"], profile=home.profiles_dir / "hospital_b.json",
                         consent=home.consent_path)
    counts = summary["files"][0]["counts"]
    assert (counts["loaded"], counts["quarantined"], counts["no_consent"], counts["duplicates"]) == (
        batch["loaded"], batch["quarantined"], batch["no_consent"], batch["duplicates"])
