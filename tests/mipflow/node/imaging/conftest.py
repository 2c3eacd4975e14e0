"""Fixtures and helpers for the DICOM de-identification and imaging pipeline tests.

Every input is a file shipped inside the pydicom wheel (no download), often
with identifying values injected into it.  The pipeline tests run on a landing
tree of such files (:func:`build_landing`).
"""
from __future__ import annotations

import copy
import io
import re
import shutil
from pathlib import Path
from typing import Iterator

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mipflow.node.home import NodeHome
from mipflow.node.imaging.deidentify import deidentify_dataset
from mipflow.node.imaging.options import DeidOptions
from tests.nodes import standard_home

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def shipped(name: str) -> Path:
    """Path of a test file shipped with pydicom (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not shipped in this pydicom wheel")
    return Path(path)


def read(name: str) -> Dataset:
    return pydicom.dcmread(shipped(name))


#: Identifying values injected into instances: (keyword, value).  Each value is
#: distinctive enough that finding it in the output bytes means it leaked.
PHI_TOP: tuple[tuple[str, str], ...] = (
    ("PatientName", "PHIDOE^JOHNATHAN"),
    ("PatientID", "PHIMRN998877"),
    ("PatientBirthDate", "19230417"),
    ("PatientAddress", "PHI 12 ROSE STREET"),
    ("PatientTelephoneNumbers", "PHI5550199"),
    ("OtherPatientIDs", "PHIOTHERID5"),
    ("PatientComments", "PHI comment about the patient"),
    ("AdditionalPatientHistory", "PHI history of the patient"),
    ("InstitutionName", "PHI GENERAL HOSPITAL"),
    ("InstitutionAddress", "PHI 1 HOSPITAL ROAD"),
    ("InstitutionalDepartmentName", "PHI RADIOLOGY DEPT"),
    ("ReferringPhysicianName", "PHIREFERRER^ANNA"),
    ("PerformingPhysicianName", "PHIPERFORMER^BOB"),
    ("OperatorsName", "PHIOPERATOR^CARL"),
    ("AccessionNumber", "PHIACC4471"),
    ("StudyID", "PHISTUDY93"),
    ("StationName", "PHISTATION7"),
    ("DeviceSerialNumber", "PHISERIAL8812"),
    ("SeriesDescription", "PHI series description"),
    ("StudyDescription", "PHI study description"),
    ("ProtocolName", "PHI protocol name"),
    ("ImageComments", "PHI image comments"),
    ("RequestingPhysician", "PHIREQUESTER^DAN"),
    ("AdmissionID", "PHIADMIT321"),
    ("StudyDate", "20010203"),
    ("SeriesDate", "20010204"),
    ("AcquisitionDateTime", "20010205101112"),
    ("StudyInstanceUID", "1.2.999.4711.1"),
    ("SeriesInstanceUID", "1.2.999.4711.2"),
    ("FrameOfReferenceUID", "1.2.999.4711.3"),
)
PHI_NESTED = "PHINESTED^EVE"
PHI_NESTED_ID = "PHINESTEDID42"
PHI_PRIVATE = "PHIPRIVATE5521"
PHI_PRIVATE_NESTED = "PHIPRIVNEST^FAY"
PHI_OVERLAY = "PHI overlay comment"
PHI_CURVE = "PHICURVE77"
PHI_REF_UID = "1.2.999.4711.9"


def phi_strings() -> list[str]:
    """Every injected string, and the name components of the person names."""
    out = [v for _, v in PHI_TOP]
    out += [PHI_NESTED, PHI_NESTED_ID, PHI_PRIVATE, PHI_PRIVATE_NESTED, PHI_OVERLAY,
            PHI_CURVE, PHI_REF_UID]
    for v in list(out):
        if "^" in v:
            out.extend(part for part in v.split("^") if len(part) >= 3)
    return out


def inject_phi(ds: Dataset) -> Dataset:
    """Inject identifying values at the top level, in nested sequences and private tags."""
    for keyword, value in PHI_TOP:
        setattr(ds, keyword, value)
    # A sequence the profile does not list: kept, but cleaned inside.
    item = Dataset()
    item.CodeValue = "12345"
    item.CodingSchemeDesignator = "99LOCAL"
    item.CodeMeaning = "CT HEAD"
    item.ReferringPhysicianName = PHI_NESTED           # Z inside a kept sequence
    item.PatientID = PHI_NESTED_ID                     # nested Patient ID
    inner = Dataset()
    inner.OperatorsName = PHI_NESTED                   # two levels down
    inner.add_new(0x00190010, "LO", "PHICREATOR")
    inner.add_new(0x00191001, "LO", PHI_PRIVATE)
    item.ProcedureCodeSequence = Sequence([inner])
    ds.ProcedureCodeSequence = Sequence([item])
    # A sequence the profile removes.
    ref = Dataset()
    ref.PatientName = PHI_NESTED
    ds.ReferencedPatientSequence = Sequence([ref])
    # X/Z/U*: kept with its UIDs replaced.
    img = Dataset()
    img.ReferencedSOPClassUID = ds.SOPClassUID
    img.ReferencedSOPInstanceUID = PHI_REF_UID
    ds.ReferencedImageSequence = Sequence([img])
    # Private block with a private sequence.
    ds.add_new(0x00090010, "LO", "PHICREATOR")
    ds.add_new(0x00091001, "LO", PHI_PRIVATE)
    priv_item = Dataset()
    priv_item.PatientName = PHI_PRIVATE_NESTED
    ds.add_new(0x00091002, "SQ", Sequence([priv_item]))
    # Overlay and (retired) curve groups.
    ds.add_new(0x60004000, "LT", PHI_OVERLAY)
    ds.add_new(0x50002500, "LO", PHI_CURVE)
    return ds


@pytest.fixture
def ct() -> Dataset:
    return read("CT_small.dcm")


@pytest.fixture
def ct_phi() -> Dataset:
    return inject_phi(read("CT_small.dcm"))


@pytest.fixture(scope="session")
def ct_template() -> Dataset:
    return read("CT_small.dcm")


@pytest.fixture
def fresh(ct_template: Dataset):
    """A factory of deep copies of CT_small (cheaper than re-reading)."""
    return lambda: copy.deepcopy(ct_template)


def gdcm_read(path: Path) -> dict[str, str]:
    """Open ``path`` with GDCM (the second reader); return a few values it sees."""
    gdcm = pytest.importorskip("gdcm")
    reader = gdcm.Reader()
    reader.SetFileName(str(path))
    assert reader.Read(), f"GDCM cannot read {path.name}"
    sf = gdcm.StringFilter()
    sf.SetFile(reader.GetFile())
    return {
        "PatientID": sf.ToString(gdcm.Tag(0x0010, 0x0020)).strip(" \0"),
        "SOPInstanceUID": sf.ToString(gdcm.Tag(0x0008, 0x0018)).strip(" \0"),
        "PatientIdentityRemoved": sf.ToString(gdcm.Tag(0x0012, 0x0062)).strip(" \0"),
    }


# --------------------------------------------------------------------------
# De-identification helpers
# --------------------------------------------------------------------------

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def run(ds: Dataset, key: bytes = KEY, **options) -> Dataset:
    outcome = deidentify_dataset(ds, key=key, options=DeidOptions(**options))
    assert outcome.ok, (outcome.reason, outcome.detail)
    return outcome.dataset


def assert_no_phi(data: bytes, extra: tuple[str, ...] = ()) -> None:
    leaked = [s for s in (*phi_strings(), *extra) if s.encode("latin-1") in data]
    assert not leaked, f"leaked: {leaked}"


def valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and bool(UID_RE.match(uid))


# --------------------------------------------------------------------------
# A landing tree for the imaging pipeline
# --------------------------------------------------------------------------

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


def patient_instances(p: int, patient: str, series: list[tuple[str, str, int]], *,
                      study: str = "study") -> Iterator[tuple[str, int, Dataset]]:
    """The instances of one patient of :data:`PATIENTS`: ``(series tag, number, dataset)``."""
    for tag, name, copies in series:
        base = inject_phi(read(name))
        base.PatientID = patient
        base.PatientName = f"PHINAME{p}^{patient}"
        base.StudyInstanceUID = _uid(patient, study)
        base.SeriesInstanceUID = _uid(patient, tag if study == "study" else study + tag)
        for i in range(copies):
            ds = copy.deepcopy(base)
            ds.SOPInstanceUID = _uid(patient, tag if study == "study" else study + tag, i)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            if "ImagePositionPatient" in ds:
                pos = [float(v) for v in ds.ImagePositionPatient]
                ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * i]
            yield tag, i, ds


def write_consent(home: NodeHome) -> None:
    """The consent registry of :data:`PATIENTS`."""
    rows = [{"patient_id": patient, "consent": consent} for patient, (consent, _) in PATIENTS.items() if consent]
    pd.DataFrame(rows).to_csv(home.consent_path, index=False)


def build_landing(home: NodeHome) -> dict[str, int]:
    """A nested landing tree; returns the expected file accounting."""
    root = home.landing_dir / "dicom"
    rows = []
    n_files = 0
    for p, (patient, (consent, series)) in enumerate(PATIENTS.items()):
        if consent:
            rows.append({"patient_id": patient, "consent": consent})
        for tag, i, ds in patient_instances(p, patient, series):
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
    home = standard_home(tmp_path / "imaging_test", "imaging_test")
    (home.root / "secret.key").write_text(NODE_KEY.hex() + "\n")
    home.set_setting("settle_seconds", "0")
    return home
