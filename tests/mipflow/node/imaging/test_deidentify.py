"""Tests of mipflow.node.imaging.deidentify: whole instances and files, identity, method, file meta.

Inputs are pydicom's own test files (no download) with identifying values
injected.  Outputs are checked byte by byte for leaks, re-read by pydicom and
opened by a second reader (GDCM, from the python-gdcm wheel).
"""
from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest

from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.imaging.deidentify import (
    Deidentifier,
    deidentify_dataset,
    deidentify_file,
)
from mipflow.node.imaging.options import DeidOptions
from mipflow.node.imaging.quarantine import Quarantine

from .conftest import (
    KEY,
    assert_no_phi,
    gdcm_read,
    inject_phi,
    phi_strings,
    read,
    run,
    shipped,
)

CLEAN_INPUTS = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "rtplan.dcm", "rtdose.dcm",
                "waveform_ecg.dcm", "liver_1frame.dcm", "examples_overlay.dcm",
                "J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm"]


OPTION_SETS = {
    "basic": {},
    "modified-dates": {"retain_longitudinal_modified_dates": True},
    "all-cleaning": {"retain_longitudinal_modified_dates": True, "clean_descriptors": True,
                     "clean_structured_content": True, "clean_graphics": True},
}


@pytest.mark.parametrize("name", CLEAN_INPUTS)
@pytest.mark.parametrize("opts", list(OPTION_SETS), ids=list(OPTION_SETS))
def test_no_injected_value_in_output_bytes(name, opts, tmp_path):
    src = tmp_path / "in.dcm"
    ds = inject_phi(read(name))
    ds.save_as(src, enforce_file_format=True)
    assert all(s.encode("latin-1") in src.read_bytes() for s in phi_strings()[:5])
    out = tmp_path / "out.dcm"
    outcome = deidentify_file(src, out, key=KEY, options=DeidOptions(**OPTION_SETS[opts]))
    assert outcome.ok, (outcome.reason, outcome.detail)
    data = out.read_bytes()
    assert_no_phi(data)
    assert data[:128] == b"\0" * 128 and data[128:132] == b"DICM"
    # pydicom re-reads it as a Part 10 file, GDCM opens it too.
    again = pydicom.dcmread(out)
    pseudonym = Pseudonymiser(KEY).pseudonym("PHIMRN998877")
    assert again.PatientID == pseudonym
    assert again.PatientIdentityRemoved == "YES"
    seen = gdcm_read(out)
    assert seen["PatientID"] == pseudonym
    assert seen["SOPInstanceUID"] == again.SOPInstanceUID
    assert seen["PatientIdentityRemoved"] == "YES"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm",
                                  "rtdose.dcm"])
def test_pixels_are_unchanged(name, tmp_path):
    out = tmp_path / "out.dcm"
    outcome = deidentify_file(shipped(name), out, key=KEY)
    assert outcome.ok
    before = pydicom.dcmread(shipped(name)).pixel_array
    after = pydicom.dcmread(out).pixel_array
    np.testing.assert_array_equal(before, after)


def test_gdcm_decodes_the_image(tmp_path):
    gdcm = pytest.importorskip("gdcm")
    out = tmp_path / "out.dcm"
    assert deidentify_file(shipped("MR_small_RLE.dcm"), out, key=KEY).ok
    reader = gdcm.ImageReader()
    reader.SetFileName(str(out))
    assert reader.Read()
    image = reader.GetImage()
    assert image.GetDimension(0) == 64 and image.GetDimension(1) == 64


def test_method_attributes(ct):
    ds = run(ct, retain_longitudinal_modified_dates=True, retain_patient_characteristics=True)
    assert ds.PatientIdentityRemoved == "YES"
    assert any("Basic Profile" in v for v in ds.DeidentificationMethod)
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in ds.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113108", "DCM"), ("113107", "DCM")]
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    for item in ds.DeidentificationMethodCodeSequence:
        assert item.CodeMeaning


def test_file_meta_is_rebuilt(tmp_path):
    src = tmp_path / "in.dcm"
    ds = read("CT_small.dcm")
    ds.file_meta.SourceApplicationEntityTitle = "PHISTATION7"
    ds.file_meta.add_new(0x00020102, "OB", b"PHIPRIVATE5521")
    ds.file_meta.PrivateInformationCreatorUID = "1.2.999.4711.7"
    ds.preamble = b"PHIMRN998877".ljust(128, b"\0")
    ds.save_as(src, enforce_file_format=True)
    out = tmp_path / "out.dcm"
    assert deidentify_file(src, out, key=KEY).ok
    data = out.read_bytes()
    for s in (b"PHISTATION7", b"PHIPRIVATE5521", b"1.2.999.4711.7", b"PHIMRN998877"):
        assert s not in data
    meta = pydicom.dcmread(out).file_meta
    assert meta.MediaStorageSOPInstanceUID == pydicom.dcmread(out).SOPInstanceUID
    assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


def test_given_pseudonym_is_used(ct):
    outcome = deidentify_dataset(ct, key=KEY, patient_pseudonym="EHR-PSEUDO-1")
    assert outcome.dataset.PatientID == "EHR-PSEUDO-1"
    assert outcome.patient_pseudonym == "EHR-PSEUDO-1"


def test_pseudonym_joins_the_ehr_rows(ct):
    """The DICOM Patient ID is the same pseudonym the EHR depersonalisation gives."""
    import pandas as pd
    ehr = Pseudonymiser(KEY).pseudonyms(pd.Series([" 1CT1 "]))
    assert run(ct).PatientID == ehr.iloc[0]


def test_key_is_checked_and_hidden():
    from mipflow.exceptions import ProfileError
    with pytest.raises(ProfileError):
        Deidentifier(b"short")
    deid = Deidentifier(KEY)
    assert KEY.hex() not in repr(deid)
    import pickle
    with pytest.raises(TypeError):
        pickle.dumps(deid)


def test_processing_error_is_quarantined(monkeypatch, ct):
    deid = Deidentifier(KEY)

    def boom(*args, **kwargs):
        raise RuntimeError("PHIDOE boom")

    monkeypatch.setattr(Deidentifier, "_walk", boom)
    outcome = deid.dataset(ct)
    assert outcome.reason == Quarantine.PROCESSING_ERROR
    assert "PHIDOE" not in outcome.detail


def test_deidentified_output_is_stable(tmp_path):
    """Same input, key and options: byte-identical output (useful for caching)."""
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    deidentify_file(shipped("MR_small.dcm"), a, key=KEY)
    deidentify_file(shipped("MR_small.dcm"), b, key=KEY)
    assert a.read_bytes() == b.read_bytes()
    assert os.path.getsize(a) > 0
