"""The imaging pipeline (capture -> de-identify -> features -> load) on a landing tree of
pydicom's shipped test files with injected identifying values."""
from __future__ import annotations

import logging

import pandas as pd
import pydicom
import pytest
import sqlalchemy as sa

from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.imaging.pipeline import run_imaging
from mipflow.node.store.feature_store import open_store
from tests.mipflow.node.ingest.test_pipeline import all_text

from .conftest import build_landing, raw_identifiers


def test_pipeline_counts_pseudonyms_and_no_phi(home, caplog):
    expected = build_landing(home)
    caplog.set_level(logging.DEBUG)
    result = run_imaging(home)
    files = result["files"]
    assert files["conserved"], result["equation"]
    for key, value in expected.items():
        assert files[key] == value, (key, result)
    assert result["reasons"].get("burned-in-risk") == 1
    assert {"empty-file", "not-dicom"} <= set(result["reasons"])
    assert result["series"] == 3 and result["loaded"] == 2  # the SC series is quarantined whole

    store = open_store(home)
    model = store.data_model("imaging:0.1")
    table = store.model_table(model)
    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(table))]
    pseudo = Pseudonymiser(home.key())
    by_pid = {r["_pid"]: r for r in rows}
    assert set(by_pid) == {pseudo.pseudonym("PHIPAT-A1"), pseudo.pseudonym("PHIPAT-B2")}
    ct = by_pid[pseudo.pseudonym("PHIPAT-A1")]
    mr = by_pid[pseudo.pseudonym("PHIPAT-B2")]
    assert (ct["modality"], ct["n_instances"], ct["image_rows"]) == ("CT", 3, 128)
    assert ct["dataset"] == "imaging_test" and ct["subjectcode"] == ct["_pid"]
    assert ct["_visit"].startswith("2.25.") and ct["visitid"] == ct["_visit"]
    assert ct["slice_spacing"] == pytest.approx(5.0)
    assert ct["ct_volume_ml"] > 0 and ct["intensity_std"] > 0
    assert mr["modality"] == "MR" and mr["n_instances"] == 2 and mr["ct_volume_ml"] is None
    assert "intensity_min" not in table.c and "intensity_max" not in table.c
    assert store.datasets("imaging:0.1")[0]["row_count"] == 2

    # staging: one folder per de-identified series, files named by de-identified UIDs only
    staged = sorted(p for p in (home.staging_dir / "dicom").rglob("*") if p.is_file())
    assert len(staged) == 5
    assert {p.parent.name for p in staged} == {ct["_visit"], mr["_visit"]}
    forbidden = raw_identifiers()
    store_text = all_text(store)
    assert str(home.landing_dir) not in store_text and "IM0000" not in store_text
    for value in forbidden:
        assert value not in store_text, value
    # logs (quarantine reasons included) name files by content hash, never by path
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "quarantined file sha256:" in logged
    for value in [*forbidden, "IM0000", str(home.landing_dir)]:
        assert value not in logged, value
    for path in staged:
        data = path.read_bytes()
        assert not any(v.encode() in data for v in forbidden), path.name
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID in by_pid
        for _, value in (("StudyDate", "20010203"), ("PatientBirthDate", "19230417")):
            assert value.encode() not in data

    # a second run finds nothing new and changes nothing
    again = run_imaging(home)
    assert again["files"]["known"] == expected["files_in"] - expected["pending"] - expected["no_consent"]
    assert again["files"]["conserved"] and again["loaded"] == 0
    assert store.count_rows(model) == 2


def test_consent_granted_later_takes_the_series_up(home):
    build_landing(home)
    run_imaging(home)
    registry = pd.read_csv(home.consent_path)
    registry.loc[len(registry)] = ["PHIPAT-D4", "granted"]
    registry.to_csv(home.consent_path, index=False)
    result = run_imaging(home)
    assert result["files"]["written"] == 1 and result["loaded"] == 1
    store = open_store(home)
    assert store.count_rows(store.data_model("imaging:0.1")) == 3


def test_withdrawal_deletes_rows_and_staged_images(home):
    build_landing(home)
    run_imaging(home)
    registry = pd.read_csv(home.consent_path)
    registry.loc[registry.patient_id == "PHIPAT-B2", "consent"] = "withdrawn"
    registry.to_csv(home.consent_path, index=False)
    result = run_imaging(home)
    assert result["withdrawn_rows_deleted"] == 1
    store = open_store(home)
    assert store.count_rows(store.data_model("imaging:0.1")) == 1
    assert len([p for p in (home.staging_dir / "dicom").rglob("*.dcm")]) == 3
