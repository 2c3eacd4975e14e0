"""Row accounting that reconciles (ADR 0004, issue 15 item 7): inserted / updated / unchanged per batch,
re-exports that change identifying-derived values flagged and notified, held batches that add up."""
from __future__ import annotations

import json
import shutil

import pytest

from mipflow.demo.synth import generate_export, write_export
from mipflow.node import ops
from mipflow.node.ingest.pipeline import ROW_BUCKETS
from mipflow.node.store.feature_store import open_store
from tests.conftest import REPO_ROOT
from tests.nodes import standard_home

STROKE = REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILES = REPO_ROOT / "include" / "schemas" / "profiles"
N_PATIENTS = 20
CHANGED_VALUES = [0, 1, 2, 3, 4]         # another NIHSS score: updated, identity unchanged
CHANGED_BIRTH = [5, 6, 7]                 # another birth date: updated, identity changed (age)
N_NEW = 6                                 # new patients: inserted


def make_node(tmp_path, db_url=""):
    home = standard_home(tmp_path / "hospital_a", "hospital_a", db_url)
    home.set_setting("settle_seconds", "0")
    ops.add_data_model(home, STROKE)
    return home


def exports():
    """A first export and a re-export: some keys with other values, some with another birth date, new keys."""
    first = generate_export("hospital_a", N_PATIENTS, seed=3, bad_rows=0)
    second = first.copy()
    for i in CHANGED_VALUES:
        second.loc[i, "nihss_on_admission"] = str((int(first.loc[i, "nihss_on_admission"]) + 1) % 40)
    for i in CHANGED_BIRTH:  # born ten years later: age at admission -10 (see the test's check)
        year, rest = first.loc[i, "date_of_birth"].split("-", 1)
        second.loc[i, "date_of_birth"] = f"{int(year) + 10}-{rest}"
    new = first.iloc[-N_NEW:].copy()
    new["mrn"] = [f"Z{9000000 + i}" for i in range(N_NEW)]
    new["encounter_id"] = [f"ENC9{i:011d}" for i in range(N_NEW)]
    return first, __import__("pandas").concat([second, new], ignore_index=True)


def assert_reconciles(batch):
    assert batch["rows_in"] == sum(int(batch[b]) for b in ROW_BUCKETS)
    assert batch["loaded"] == batch["inserted"] + batch["updated"] + batch["unchanged"]


def notifications(home):
    path = home.root / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_reexport_counts_inserted_updated_unchanged_and_flags_changed_birth_dates(tmp_path, db_url, monkeypatch):
    monkeypatch.delenv("MIPFLOW_NOTIFY_FILE", raising=False)
    home = make_node(tmp_path, db_url)
    first, second = exports()
    ages = first["admission_date"].str[:4].astype(int) - first["date_of_birth"].str[:4].astype(int)
    assert all(20 < ages[i] < 101 for i in CHANGED_BIRTH)  # -10 years: still an age, below the top code of 90
    profile = PROFILES / "hospital_a.json"
    one = ops.ingest(home, [write_export(tmp_path / "e1.csv", first)], profile=profile)["files"][0]
    assert one["status"] == "loaded" and one["counts"]["loaded"] == N_PATIENTS
    assert (one["counts"]["inserted"], one["counts"]["updated"], one["counts"]["unchanged"]) == (N_PATIENTS, 0, 0)
    assert one["counts"]["identity_changed"] == 0 and notifications(home) == []

    two = ops.ingest(home, [write_export(tmp_path / "e2.csv", second)], profile=profile)["files"][0]
    counts = two["counts"]
    assert two["status"] == "loaded" and two["conserved"]
    assert counts["inserted"] == N_NEW
    assert counts["updated"] == len(CHANGED_VALUES) + len(CHANGED_BIRTH)
    assert counts["unchanged"] == N_PATIENTS - len(CHANGED_VALUES) - len(CHANGED_BIRTH)
    assert counts["identity_changed"] == len(CHANGED_BIRTH)
    assert f"IDENTITY CHANGED: {len(CHANGED_BIRTH)} existing keys" in two["message"] and "(age 3)" in two["message"]
    store = open_store(home)
    batch = store.batch(two["batch_id"])
    assert_reconciles(batch)
    assert batch["identity_changed"] == len(CHANGED_BIRTH) and "IDENTITY CHANGED" in batch["message"]
    assert store.count_rows(store.data_model("stroke:0.1")) == N_PATIENTS + N_NEW
    (notice,) = notifications(home)
    assert notice["event"] == "identity_changed" and notice["batch_id"] == two["batch_id"]
    assert notice["identity_changed"] == len(CHANGED_BIRTH) and notice["updated"] == counts["updated"]
    text = (home.root / "notifications.jsonl").read_text()
    for i in CHANGED_BIRTH:  # no identifier or birth date in the notification
        assert first.loc[i, "mrn"] not in text and second.loc[i, "date_of_birth"] not in text
    status = {b["batch_id"]: b for b in ops.node_status(home, store)["batches"]}
    assert status[two["batch_id"]]["inserted"] == N_NEW and status[two["batch_id"]]["identity_changed"] == 3


def test_the_dag_stages_count_the_same_and_notify(tmp_path, monkeypatch):
    from mipflow.node.ingest import stages

    monkeypatch.delenv("MIPFLOW_NOTIFY_FILE", raising=False)
    home = make_node(tmp_path)
    shutil.copyfile(PROFILES / "hospital_a.json", home.profiles_dir / "hospital_a.json")
    (home.landing_dir / "hospital_a").mkdir()
    first, second = exports()
    results = []
    for name, frame in (("e1.csv", first), ("e2.csv", second)):
        write_export(home.landing_dir / "hospital_a" / name, frame)
        (batch_id,) = stages.capture(home)["captured"]
        stages.depersonalise(home, batch_id)
        stages.validate(home, batch_id)
        results.append(stages.load(home, batch_id))
    one, two = results
    assert (one["inserted"], one["updated"], one["unchanged"], one["identity_changed"]) == (N_PATIENTS, 0, 0, 0)
    assert (two["inserted"], two["updated"], two["unchanged"], two["identity_changed"]) == (
        N_NEW, len(CHANGED_VALUES) + len(CHANGED_BIRTH), N_PATIENTS - len(CHANGED_VALUES) - len(CHANGED_BIRTH),
        len(CHANGED_BIRTH))
    assert "IDENTITY CHANGED" in two["message"]
    assert_reconciles(open_store(home).batch(two["batch_id"]))
    assert [n["batch_id"] for n in notifications(home)] == [two["batch_id"]]


def test_an_explicit_identity_columns_list_replaces_the_default():
    from mipflow.node.ingest.profile import SourceProfile

    doc = json.loads((PROFILES / "hospital_a.json").read_text())
    assert SourceProfile.from_dict(doc).identity_derived_columns() == ("age",)
    doc["identity_columns"] = ["age", "sex"]
    assert SourceProfile.from_dict(doc).identity_derived_columns() == ("age", "sex")
    doc["identity_columns"] = "age"
    with pytest.raises(Exception, match="identity_columns"):
        SourceProfile.from_dict(doc)


@pytest.mark.parametrize("path", ["cli", "dag"])
def test_a_held_batch_accounts_every_row(tmp_path, path):
    from mipflow.node.ingest import stages

    home = make_node(tmp_path)
    home.set_setting("max_failure_rate", "0.01")
    export = generate_export("hospital_a", 30, seed=5, bad_rows=7)
    if path == "cli":
        result = ops.ingest(home, [write_export(tmp_path / "e.csv", export)],
                            profile=PROFILES / "hospital_a.json")["files"][0]
        assert result["status"] == "held" and result["conserved"]
        batch_id = result["batch_id"]
    else:
        shutil.copyfile(PROFILES / "hospital_a.json", home.profiles_dir / "hospital_a.json")
        (home.landing_dir / "hospital_a").mkdir()
        write_export(home.landing_dir / "hospital_a" / "e.csv", export)
        (batch_id,) = stages.capture(home)["captured"]
        stages.depersonalise(home, batch_id)
        assert stages.validate(home, batch_id)["status"] == "held"
    store = open_store(home)
    batch = store.batch(batch_id)
    assert batch["status"] == "held" and batch["loaded"] == 0 and batch["held"] > 0
    assert batch["rows_in"] == len(export) == batch["quarantined"] + batch["held"] + batch["no_consent"] + batch["duplicates"]
    # every quarantined row has its entry with a reason; the held rows carry the batch's reason
    entries = store.quarantined(batch_id)
    assert len(entries) == batch["quarantined"] and all(e["reason"] and e["row_number"] > 0 for e in entries)
    assert f"{batch['held']} valid rows held (not loaded)" in batch["message"]
    assert store.count_rows(store.data_model("stroke:0.1")) == 0
