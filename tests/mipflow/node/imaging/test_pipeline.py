"""The imaging pipeline (capture -> de-identify -> features -> load) on a landing tree of
pydicom's shipped test files with injected identifying values."""
from __future__ import annotations

import copy
import hashlib
import logging
import shutil

import pandas as pd
import pydicom
import pytest
import sqlalchemy as sa
from pydicom.data import get_testdata_file

from mipflow.node.home import NodeHome
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.imaging import pipeline as imaging
from mipflow.node.store.feature_store import open_store
from mipflow.node.store.tables import files_table
from tests.mipflow.node.ingest.test_pipeline import all_text

from .conftest import inject_phi, phi_strings, read

NODE_KEY = bytes(range(100, 132))

#: patient id -> (consent, [(series tag, shipped file, copies)])
PATIENTS = {
    "PHIPAT-A1": ("granted", [("ct", "CT_small.dcm", 3), ("sc", "SC_rgb_small_odd.dcm", 1)]),
    "PHIPAT-B2": ("granted", [("mr", "MR_small.dcm", 2)]),
    "PHIPAT-C3": ("refused", [("ct", "CT_small.dcm", 2)]),
    "PHIPAT-D4": (None, [("mr", "MR_small.dcm", 1)]),  # not in the registry: no consent
}


def _uid(patient: str, tag: str, n: int | None = None) -> str:
    code = "".join(str(ord(c)) for c in patient[-2:]) + str(sum(map(ord, tag)))
    return f"1.2.999.5.{code}" + ("" if n is None else f".{n}")


def _folder(p: int, patient: str, tag: str) -> str:
    """A landing folder named after the patient, as exports often are."""
    return f"site{p % 2}/PHINAME{p}_{patient}/{tag}"


def raw_identifiers() -> list[str]:
    """Every injected or raw identifying string written into the landing tree (file names too)."""
    out = [s for s in phi_strings() if not s.isdigit()]  # dates are checked apart (shifted)
    out += [f"PHINAME{p}" for p in range(len(PATIENTS))] + ["PHIJUNK"]
    for patient, (_, series) in PATIENTS.items():
        out.append(patient)
        for tag, _, copies in series:
            out.append(_uid(patient, tag))
            out += [_uid(patient, tag, i) for i in range(copies)]
    return out


def build_landing(home: NodeHome) -> dict[str, int]:
    """A nested landing tree; returns the expected file accounting."""
    root = home.landing_dir / "dicom"
    rows = []
    n_files = 0
    for p, (patient, (consent, series)) in enumerate(PATIENTS.items()):
        if consent:
            rows.append({"patient_id": patient, "consent": consent})
        for tag, name, copies in series:
            base = inject_phi(read(name))
            base.PatientID = patient
            base.PatientName = f"PHINAME{p}^{patient}"
            base.StudyInstanceUID = _uid(patient, "study")
            base.SeriesInstanceUID = _uid(patient, tag)
            for i in range(copies):
                ds = copy.deepcopy(base)
                ds.SOPInstanceUID = _uid(patient, tag, i)
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                if "ImagePositionPatient" in ds:
                    pos = [float(v) for v in ds.ImagePositionPatient]
                    ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * i]
                folder = root / _folder(p, patient, tag)
                folder.mkdir(parents=True, exist_ok=True)
                ds.save_as(folder / f"IM{i:04d}_PHINAME{p}", enforce_file_format=True)
                n_files += 1
    pd.DataFrame(rows).to_csv(home.consent_path, index=False)
    junk = root / "junk"
    junk.mkdir(parents=True)
    (junk / "PHIJUNK_empty.dcm").write_bytes(b"")
    (junk / "PHIJUNK_notes.txt").write_text("scanner export log: nothing to see here\n")
    dicomdir = get_testdata_file("DICOMDIR", download=False)
    extra_quarantined = 2
    if dicomdir:
        shutil.copyfile(dicomdir, junk / "PHIJUNK_DICOMDIR")
        extra_quarantined += 1
    # the same bytes twice: the copy counts as known
    shutil.copyfile(root / _folder(1, "PHIPAT-B2", "mr") / "IM0000_PHINAME1", junk / "PHIJUNK_copy")
    (junk / ".partial_upload.tmp").write_bytes(b"half a file")
    return {"files_in": n_files + extra_quarantined + 2, "no_consent": 3, "known": 1, "pending": 1,
            "written": 5, "quarantined": extra_quarantined + 1}


@pytest.fixture
def home(tmp_path) -> NodeHome:
    home = NodeHome.init(tmp_path / "imaging_test", "imaging_test")
    (home.root / "secret.key").write_text(NODE_KEY.hex() + "\n")
    home.set_setting("settle_seconds", "0")
    return home


def test_pipeline_counts_pseudonyms_and_no_phi(home, caplog):
    expected = build_landing(home)
    caplog.set_level(logging.DEBUG)
    result = imaging.run_imaging(home)
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
    again = imaging.run_imaging(home)
    assert again["files"]["known"] == expected["files_in"] - expected["pending"] - expected["no_consent"]
    assert again["files"]["conserved"] and again["loaded"] == 0
    assert store.count_rows(model) == 2


def test_consent_granted_later_takes_the_series_up(home):
    build_landing(home)
    imaging.run_imaging(home)
    registry = pd.read_csv(home.consent_path)
    registry.loc[len(registry)] = ["PHIPAT-D4", "granted"]
    registry.to_csv(home.consent_path, index=False)
    result = imaging.run_imaging(home)
    assert result["files"]["written"] == 1 and result["loaded"] == 1
    store = open_store(home)
    assert store.count_rows(store.data_model("imaging:0.1")) == 3


def test_withdrawal_deletes_rows_and_staged_images(home):
    build_landing(home)
    imaging.run_imaging(home)
    registry = pd.read_csv(home.consent_path)
    registry.loc[registry.patient_id == "PHIPAT-B2", "consent"] = "withdrawn"
    registry.to_csv(home.consent_path, index=False)
    result = imaging.run_imaging(home)
    assert result["withdrawn_rows_deleted"] == 1
    store = open_store(home)
    assert store.count_rows(store.data_model("imaging:0.1")) == 1
    assert len([p for p in (home.staging_dir / "dicom").rglob("*.dcm")]) == 3


def test_unknown_dataset_is_refused(tmp_path):
    home = NodeHome.init(tmp_path / "elsewhere", "elsewhere")
    with pytest.raises(Exception, match="not one of the imaging:0.1 datasets"):
        imaging.extract_and_load(home, [])


def test_chunked_bounds_the_number_of_mapped_tasks():
    items = [f"b{i}" for i in range(1000)]
    chunks = imaging.chunked(items, 64)
    assert len(chunks) <= 64 and sum(chunks, []) == items
    assert imaging.chunked([], 8) == []


def test_manifest_holds_keyed_path_hashes_and_content_hashes(home):
    build_landing(home)
    imaging.capture_dicom(home)
    store = open_store(home)
    root = home.landing_dir / "dicom"
    with store.engine.connect() as conn:
        rows = {r.sha256: r.path for r in conn.execute(sa.select(files_table))}
    registered: dict[str, object] = {}
    for p in sorted(root.rglob("*")):        # capture's order: the first of equal bytes is registered
        if p.is_file() and not p.name.startswith("."):
            registered.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), p)
    consented = {sha: p for sha, p in registered.items() if sha in rows}
    assert len(consented) >= 6   # the series of consented patients and the quarantined junk
    for sha, path in consented.items():
        assert rows[sha] == imaging.landing_path_key(home.key(), root, path, kind=imaging.KIND)
        assert rows[sha].startswith("hmac-sha256:") and len(rows[sha]) == 12 + 64
        assert path.name not in rows[sha]
    # another key gives other names: the hash is keyed, not a plain digest of the path
    some = next(iter(consented.values()))
    assert imaging.landing_path_key(bytes(32), root, some, kind=imaging.KIND) != \
        imaging.landing_path_key(home.key(), root, some, kind=imaging.KIND)


def test_files_changed_or_gone_after_capture_are_quarantined(home, caplog):
    build_landing(home)
    batches = imaging.capture_dicom(home)
    ct = next(b for b in batches if b["files"] == 3)
    folder = home.landing_dir / "dicom" / _folder(0, "PHIPAT-A1", "ct")
    (folder / "IM0001_PHINAME0").unlink()
    with open(folder / "IM0002_PHINAME0", "ab") as handle:
        handle.write(b"\0\0")                                 # new content, same name
    caplog.set_level(logging.DEBUG)
    out = imaging.deidentify_series(home, ct)
    assert out["written"] == 1 and out["quarantined"] == 2
    assert out["reasons"] == {imaging.MISSING_AFTER_CAPTURE: 1, imaging.CHANGED_AFTER_CAPTURE: 1}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "PHINAME0" not in logged and "IM0002" not in logged
    # the changed file is a new file for the next capture
    again = imaging.capture_dicom(home)
    assert sum(b["files"] for b in again) == 1
