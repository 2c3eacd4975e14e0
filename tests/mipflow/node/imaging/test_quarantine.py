"""Tests of mipflow.node.imaging.quarantine: a reason, nothing written, never a crash.

Inputs are pydicom's own test files (no download), often with identifying values injected.
"""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from mipflow.node.imaging.deidentify import deidentify_dataset, deidentify_file
from mipflow.node.imaging.options import DeidOptions
from mipflow.node.imaging.quarantine import Quarantine

from .conftest import (
    KEY,
    gdcm_read,
    read,
    shipped,
)


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _burned_in(tmp_path):
    ds = read("CT_small.dcm")
    ds.BurnedInAnnotation = "YES"
    return _save(ds, tmp_path / "burned.dcm")


def _zero(tmp_path):
    p = tmp_path / "zero.dcm"
    p.write_bytes(b"")
    return p


def _cut(tmp_path):
    data = shipped("CT_small.dcm").read_bytes()
    p = tmp_path / "cut.dcm"
    p.write_bytes(data[: len(data) // 2])
    return p


def _cut_in_header(tmp_path):
    data = shipped("CT_small.dcm").read_bytes()
    p = tmp_path / "cut_header.dcm"
    p.write_bytes(data[:300])
    return p


def _text(tmp_path):
    p = tmp_path / "notes.dcm"
    p.write_text("PHIDOE^JOHNATHAN was here\n" * 20)
    return p


def _no_preamble(tmp_path):
    data = shipped("CT_small.dcm").read_bytes()
    assert data[128:132] == b"DICM"
    p = tmp_path / "bare.dcm"
    p.write_bytes(data[132:])          # file meta and dataset, no preamble or prefix
    return p


def _pdf(tmp_path):
    ds = read("CT_small.dcm")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    del ds.PixelData
    ds.EncapsulatedDocument = b"%PDF-1.4 PHIDOE"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    return _save(ds, tmp_path / "doc.dcm")


def _no_patient_id(tmp_path):
    ds = read("CT_small.dcm")
    ds.PatientID = ""
    return _save(ds, tmp_path / "nopid.dcm")


def _bad_fragments(tmp_path):
    data = bytearray(shipped("MR_small_RLE.dcm").read_bytes())
    at = data.rfind(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    assert at > 0
    data[at + 12:at + 20] = b"\x01" * 8           # the first item tag is garbage
    p = tmp_path / "badfrag.dcm"
    p.write_bytes(bytes(data))
    return p


def _us_burned_no(tmp_path):
    ds = read("examples_palette.dcm")
    ds.BurnedInAnnotation = "NO"                     # not trusted for US
    return _save(ds, tmp_path / "us.dcm")


QUARANTINE_CASES = [
    ("zero-byte", _zero, Quarantine.EMPTY_FILE),
    ("truncated-pixels", lambda t: shipped("MR_truncated.dcm"), Quarantine.TRUNCATED),
    ("truncated-sequence", lambda t: shipped("rtplan_truncated.dcm"), Quarantine.TRUNCATED),
    ("truncated-half", _cut, Quarantine.TRUNCATED),
    ("truncated-header", _cut_in_header, None),
    ("no-preamble", _no_preamble, Quarantine.NO_PREAMBLE),
    ("no-preamble-pydicom", lambda t: shipped("ExplVR_LitEndNoMeta.dcm"), Quarantine.NO_PREAMBLE),
    ("not-dicom", _text, Quarantine.NOT_DICOM),
    ("dicomdir", lambda t: shipped("dicomdirtests/DICOMDIR"), Quarantine.DICOMDIR),
    ("no-transfer-syntax", lambda t: shipped("meta_missing_tsyntax.dcm"),
     Quarantine.NO_TRANSFER_SYNTAX),
    ("burned-in", _burned_in, Quarantine.BURNED_IN_ANNOTATION),
    ("ultrasound", lambda t: shipped("examples_palette.dcm"), Quarantine.BURNED_IN_RISK),
    ("ultrasound-burned-no", _us_burned_no, Quarantine.BURNED_IN_RISK),
    ("ultrasound-multiframe", lambda t: shipped("examples_ybr_color.dcm"),
     Quarantine.BURNED_IN_RISK),
    ("secondary-capture", lambda t: shipped("SC_rgb_rle.dcm"),
     Quarantine.BURNED_IN_RISK),
    ("secondary-capture-nm", lambda t: shipped("JPEG2000.dcm"), Quarantine.BURNED_IN_RISK),
    ("encapsulated-pdf", _pdf, Quarantine.ENCAPSULATED_DOCUMENT),
    ("no-patient-id", _no_patient_id, Quarantine.NO_PATIENT_ID),
    ("bad-fragments", _bad_fragments, Quarantine.MALFORMED_PIXEL_DATA),
    ("missing-file", lambda t: t / "nope.dcm", Quarantine.UNREADABLE),
]


@pytest.mark.parametrize(("case", "make", "reason"), QUARANTINE_CASES,
                         ids=[c[0] for c in QUARANTINE_CASES])
def test_quarantine(case, make, reason, tmp_path):
    src = make(tmp_path)
    out_dir = tmp_path / "out"
    out = out_dir / "x.dcm"
    outcome = deidentify_file(src, out, key=KEY)
    assert outcome.quarantined and not outcome.ok
    if reason is not None:
        assert outcome.reason == reason, outcome.detail
    else:   # where pydicom fails depends on the cut: any clear reason, no crash
        assert outcome.reason in (Quarantine.TRUNCATED, Quarantine.UNREADABLE,
                                  Quarantine.NOT_AN_INSTANCE, Quarantine.MALFORMED_PIXEL_DATA)
    assert outcome.detail and "PHI" not in outcome.detail
    assert outcome.out_path is None and outcome.dataset is None
    assert not out.exists()
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_pixels_cleaned_lets_risky_images_through(tmp_path):
    out = tmp_path / "us.dcm"
    outcome = deidentify_file(shipped("examples_palette.dcm"), out, key=KEY,
                              options=DeidOptions(pixels_cleaned=True))
    assert outcome.ok
    ds = pydicom.dcmread(out)
    assert "113101" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    gdcm_read(out)


def test_risk_lists_are_configurable(tmp_path):
    opts = DeidOptions(risk_modalities=frozenset({"CT"}))
    outcome = deidentify_file(shipped("CT_small.dcm"), tmp_path / "x.dcm", key=KEY, options=opts)
    assert outcome.reason == Quarantine.BURNED_IN_RISK


def test_dataset_level_quarantine_has_no_dataset(ct):
    ct.BurnedInAnnotation = "YES"
    outcome = deidentify_dataset(ct, key=KEY)
    assert outcome.reason == Quarantine.BURNED_IN_ANNOTATION and outcome.dataset is None
