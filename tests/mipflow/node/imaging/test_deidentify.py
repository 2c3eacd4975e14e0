"""Tests of mipflow.node.imaging.deidentify: actions, options, UIDs, dates, quarantine.

Inputs are pydicom's own test files (no download) with identifying values
injected.  Outputs are checked byte by byte for leaks, re-read by pydicom and
opened by a second reader (GDCM, from the python-gdcm wheel).
"""
from __future__ import annotations

import copy
import io
import os
import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.imaging import (
    DeidOptions,
    Deidentifier,
    Quarantine,
    deidentify_dataset,
    deidentify_file,
)
from mipflow.node.imaging.deidentify import resolve_action
from mipflow.node.imaging.profile_table import exact_rows, profile_rows

from .conftest import (
    KEY,
    OTHER_KEY,
    PHI_NESTED,
    PHI_NESTED_ID,
    PHI_REF_UID,
    gdcm_read,
    inject_phi,
    phi_strings,
    read,
    shipped,
)

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
# No identifying value survives; the output is valid DICOM for two readers
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# Every row of the table, under the Basic Profile
# --------------------------------------------------------------------------

SAMPLE = {
    "AE": "PHIAE", "AS": "045Y", "CS": "PHICS", "DA": "20010203", "DS": "12.5",
    "DT": "20010203101112", "IS": "42", "LO": "PHILO value", "LT": "PHILT value",
    "PN": "PHIPN^VALUE", "SH": "PHISH", "ST": "PHIST value", "TM": "101112",
    "UC": "PHIUC", "UT": "PHIUT value", "UR": "http://phi.example/x", "UI": "1.2.999.4711.55",
    "FL": 1.5, "FD": 2.5, "SL": 7, "SS": 7, "UL": 7, "US": 7, "OB": b"PHIOB\0",
    "OW": b"PHIOW\0", "AT": 0x00100010,
}


def _sample_dataset():
    ds = read("CT_small.dcm")
    placed = {}
    for tag, row in exact_rows().items():
        # Command/meta/DICOMDIR groups, the patient identity (set apart) and the
        # encapsulated document (whose SOP classes are quarantined) are left out.
        if tag >> 16 in (0x0000, 0x0002, 0x0004) or tag in (0x00100010, 0x00100020, 0x00420011):
            continue
        entry = DicomDictionary.get(tag)
        if entry is None:
            continue
        vr = entry[0].split()[0]
        if vr == "SQ":
            item = Dataset()
            item.CodeMeaning = "PHI item"
            ds.add_new(tag, "SQ", Sequence([item]))
        elif vr in SAMPLE:
            ds.add_new(tag, vr, SAMPLE[vr])
        else:
            continue
        placed[tag] = (vr, row)
    return ds, placed


def test_every_row_under_the_basic_profile():
    ds, placed = _sample_dataset()
    assert len(placed) > 550
    deid = Deidentifier(KEY)
    outcome = deid.dataset(ds)
    assert outcome.ok, (outcome.reason, outcome.detail)
    out = outcome.dataset
    for tag, (vr, row) in placed.items():
        action, _ = resolve_action(row, ())
        here = tag in out
        where = f"{row.tag} {row.name} ({row.basic})"
        if action == "X" or (action == "D" and vr in ("OB", "OW", "AT")):
            # D on a binary value: no meaningful dummy, so it is removed.
            assert not here, where
            continue
        assert here, where
        value = out[tag].value
        if action == "Z":
            assert value in (None, "", b"", []) or (vr == "SQ" and len(value) == 0), where
        elif action == "D":
            if vr == "SQ":
                assert len(value) == 1 and len(value[0]) == 0, where
            elif vr == "UI":
                assert value != SAMPLE["UI"] and valid_uid(value), where
            else:
                assert value not in (None, "", b"") and value != SAMPLE[vr], where
        elif action == "U":
            if vr == "UI":
                assert value == deid.new_uid(SAMPLE["UI"]) and valid_uid(value), where
            else:   # X/Z/U* sequences: kept, cleaned inside
                assert vr == "SQ", where
        else:
            pytest.fail(f"unexpected basic action {action} for {where}")


@pytest.mark.parametrize(
    ("basic", "expected"),
    [("X", "X"), ("Z", "Z"), ("D", "D"), ("U", "U"), ("X/Z", "X"), ("X/D", "X"),
     ("X/Z/D", "X"), ("Z/D", "Z"), ("X/Z/U*", "U")],
)
def test_combined_codes_reduce(basic, expected):
    row = next(r for r in profile_rows() if r.basic == basic)
    assert resolve_action(row, ()) == (expected, expected)


def test_option_precedence():
    rows = {r.tag: r for r in profile_rows()}
    study_date = rows["(0008,0020)"]
    assert resolve_action(study_date, {"full_dates"}) == ("K", "Z")
    assert resolve_action(study_date, {"modified_dates"}) == ("C", "Z")
    device_uid = rows["(0018,1002)"]
    assert resolve_action(device_uid, {"device"}) == ("K", "U")
    allergies = rows["(0010,2110)"]
    assert resolve_action(allergies, {"patient_chars", "clean_desc"}) == ("C", "X")
    # C wins over K when two options disagree (calibration dates: device K, dates C).
    calibration = rows["(0018,1200)"]
    assert resolve_action(calibration, {"device", "modified_dates"})[0] == "C"


# --------------------------------------------------------------------------
# Single actions on concrete attributes
# --------------------------------------------------------------------------


def test_actions_on_injected_instance(ct_phi):
    deid = Deidentifier(KEY)
    ds = deid.dataset(ct_phi).dataset
    assert "OtherPatientIDs" not in ds                      # X
    assert "InstitutionName" not in ds                       # X/Z/D -> X
    assert "SeriesDate" not in ds                            # X/D -> X
    assert "AcquisitionDateTime" not in ds                   # X/Z/D -> X
    assert ds.AccessionNumber == "" and "AccessionNumber" in ds   # Z
    assert ds.StudyDate == ""                                 # Z
    assert ds.ContentDate == ""                               # Z/D -> Z
    assert ds.PatientName == deid.pseudonym("PHIMRN998877")   # Z, pseudonym as dummy
    assert ds.PatientID == deid.pseudonym("PHIMRN998877")     # Z/D -> pseudonym
    assert ds.StudyInstanceUID == deid.new_uid("1.2.999.4711.1")   # U
    assert "ReferencedPatientSequence" not in ds              # X on a sequence
    # X/Z/U*: kept, UIDs replaced, SOP class kept.
    ref = ds.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == deid.new_uid(PHI_REF_UID)
    assert ref.ReferencedSOPClassUID == ds.SOPClassUID
    # A sequence the table does not list: kept, cleaned inside, at any depth.
    item = ds.ProcedureCodeSequence[0]
    assert item.CodeMeaning == "CT HEAD"
    assert item.ReferringPhysicianName == ""
    assert item.PatientID == deid.pseudonym(PHI_NESTED_ID)
    inner = item.ProcedureCodeSequence[0]
    assert "OperatorsName" not in inner
    assert not any(elem.tag.is_private for elem in inner)
    # Private, overlay and curve groups are gone.
    assert not any(elem.tag.is_private for elem in ds)
    assert not any(0x5000 <= elem.tag.group <= 0x60FF for elem in ds)
    # Attributes outside the table are kept.
    assert ds.Manufacturer == "GE MEDICAL SYSTEMS" and ds.Modality == "CT"
    assert ds.SliceThickness == 5


def test_d_action_dummies():
    ds = read("CT_small.dcm")
    ds.add_new(0x0040A123, "PN", PHI_NESTED)                      # Person Name: D
    ds.add_new(0x0040A730, "SQ", Sequence([Dataset()]))           # Content Sequence: D
    ds.ContentSequence[0].TextValue = "PHI free text"
    ds.add_new(0x0040A121, "DA", "20010203")                      # Date: D
    ds.add_new(0x00120040, "LO", "PHISUBJECT1")                   # Clinical Trial Subject ID: D
    out = run(ds)
    assert out[0x0040A123].value == "ANONYMIZED"
    assert len(out.ContentSequence) == 1 and len(out.ContentSequence[0]) == 0
    assert out[0x0040A121].value == "19000101"
    assert out.ClinicalTrialSubjectID == "ANONYMIZED"
    assert b"PHI free text" not in to_bytes(out)


def test_unlisted_instance_uids_are_replaced(ct):
    ct.SOPInstanceUIDOfConcatenationSource = "1.2.999.4711.20"
    ct.add_new(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2")     # a SOP class: kept
    out = run(ct)
    assert out.SOPInstanceUIDOfConcatenationSource != "1.2.999.4711.20"
    assert valid_uid(out.SOPInstanceUIDOfConcatenationSource)
    assert out.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"


def test_registered_uids_are_kept(ct):
    ct.FrameOfReferenceUID = "1.2.840.10008.1.4.1.1"      # Talairach brain atlas frame
    out = run(ct)
    assert out.FrameOfReferenceUID == "1.2.840.10008.1.4.1.1"


# --------------------------------------------------------------------------
# Options, one at a time
# --------------------------------------------------------------------------


def _ct_with_characteristics():
    ds = read("CT_small.dcm")
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    ds.PatientWeight = 61.5
    ds.PatientSize = 1.7
    ds.EthnicGroup = "PHIETHNIC"
    ds.SmokingStatus = "NO"
    return ds


OPTION_CASES = [
    # option, attribute, value set, value expected with option, predicate without option
    ("retain_patient_characteristics", "PatientSex", "F", "F", lambda ds: ds.PatientSex == ""),
    ("retain_patient_characteristics", "PatientAge", "045Y", "045Y",
     lambda ds: "PatientAge" not in ds),
    ("retain_patient_characteristics", "PatientWeight", 61.5, 61.5,
     lambda ds: "PatientWeight" not in ds),
    ("retain_device_identity", "DeviceSerialNumber", "SN123", "SN123",
     lambda ds: "DeviceSerialNumber" not in ds),
    ("retain_device_identity", "StationName", "CT01", "CT01", lambda ds: "StationName" not in ds),
    ("retain_institution_identity", "InstitutionName", "HOSP A", "HOSP A",
     lambda ds: "InstitutionName" not in ds),
    ("retain_institution_identity", "InstitutionalDepartmentName", "RAD", "RAD",
     lambda ds: "InstitutionalDepartmentName" not in ds),
    ("retain_longitudinal_full_dates", "StudyDate", "20010203", "20010203",
     lambda ds: ds.StudyDate == ""),
    ("retain_longitudinal_full_dates", "AcquisitionDate", "20010203", "20010203",
     lambda ds: "AcquisitionDate" not in ds),
    ("retain_uids", "StudyInstanceUID", "1.2.999.4711.1", "1.2.999.4711.1",
     lambda ds: ds.StudyInstanceUID != "1.2.999.4711.1"),
]


@pytest.mark.parametrize(("option", "keyword", "value", "kept", "without"), OPTION_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in OPTION_CASES])
def test_option_retains(option, keyword, value, kept, without, fresh):
    ds = fresh()
    setattr(ds, keyword, value)
    assert getattr(run(copy.deepcopy(ds), **{option: True}), keyword) == kept
    assert without(run(ds))


def test_retain_uids_keeps_every_uid(ct):
    original = (ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    out = run(ct, retain_uids=True)
    assert (out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID) == original
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert "113110" in codes


def test_modified_dates_shift_by_the_patient_offset(ct):
    ct.PatientID = "PAT-001"
    ct.StudyDate = "20010203"
    ct.AcquisitionDateTime = "20010203101112.5+0100"
    ct.StudyTime = "101112"
    ct.PatientBirthDate = "19500101"
    ct.add_new(0x00181200, "DA", ["20000101", "20000102"])     # Date of Last Calibration
    ct.DateOfSecondaryCapture = "20010203"                     # listed X, C
    ct.add_new(0x00189507, "SQ", Sequence([Dataset()]))        # an unlisted sequence ...
    ct[0x00189507].value[0].add_new(0x00189516, "DT", "20010203")  # ... with a listed DT
    ct.add_new(0x00321040, "DA", "20010203")                   # Study Arrival Date: listed
    ct.add_new(0x00400244, "DA", "20010203")                   # PPS Start Date: listed
    ct.add_new(0x300A0006, "DA", "20010203")                   # RT Plan Date: listed
    ct.add_new(0x00700082, "DA", "20010203")                   # Presentation Creation Date
    ct.add_new(0x00181202, "DA", "20010203")                   # listed
    ct.add_new(0x00143076, "DA", "20010203")                   # Date of Gain Calibration:
                                                               # not listed, shifted too
    shift = Pseudonymiser(KEY).date_shift_days("PAT-001")
    outcome = deidentify_dataset(ct, key=KEY, options=DeidOptions(
        retain_longitudinal_modified_dates=True))
    assert outcome.date_shift_days == shift
    out = outcome.dataset
    moved = (date(2001, 2, 3) + timedelta(days=shift)).strftime("%Y%m%d")
    assert out.StudyDate == moved
    assert out.AcquisitionDateTime == moved + "101112.5+0100"
    assert out.StudyTime == "101112"                         # times of day are kept
    assert out.PatientBirthDate == ""                        # Z, no date option column
    calib = [(date(2000, 1, d) + timedelta(days=shift)).strftime("%Y%m%d") for d in (1, 2)]
    assert list(out[0x00181200].value) == calib
    assert out.DateOfSecondaryCapture == moved
    assert out[0x00189507].value[0][0x00189516].value == moved
    assert out[0x00321040].value == moved and out[0x00400244].value == moved
    assert out[0x00143076].value == moved
    assert b"20010203" not in to_bytes(out)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_unparseable_dates_are_removed_not_kept(ct):
    ct.StudyDate = "2001"            # not a full date: cannot be shifted
    ct.AcquisitionDate = "notadate"
    out = run(ct, retain_longitudinal_modified_dates=True)
    assert out.StudyDate == ""        # back to Z
    assert "AcquisitionDate" not in out


def test_clean_descriptors_scrubs_known_identifiers(ct_phi):
    ct_phi.SeriesDescription = "Head PHIDOE 03.02.2001 PHIACC4471 contrast"
    ct_phi.StudyDescription = "Brain 19230417"
    ct_phi.ImageComments = "PHIMRN998877"
    out = run(ct_phi, clean_descriptors=True)
    assert out.SeriesDescription == "Head contrast"
    assert out.StudyDescription == "Brain"
    assert "ImageComments" not in out          # nothing left after cleaning: removed
    assert "PHI protocol name" not in str(out.get("ProtocolName", ""))
    without = run(copy.deepcopy(inject_phi(read("CT_small.dcm"))))
    assert "SeriesDescription" not in without


def test_clean_structured_content_keeps_sr_tree():
    ds = read("CT_small.dcm")
    ds.PatientName = "PHIDOE^JOHNATHAN"
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = "Patient PHIDOE seen on 03.02.2001"
    item.add_new(0x0040A123, "PN", "PHIREADER^ZED")          # Person Name: D inside
    ds.ContentSequence = Sequence([item])
    out = run(ds, clean_structured_content=True)
    kept = out.ContentSequence[0]
    assert kept.ValueType == "TEXT"
    assert kept.TextValue == "Patient seen on"
    assert kept[0x0040A123].value == "ANONYMIZED"
    assert "113104" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_clean_graphics_keeps_annotations():
    ds = _with_annotation()
    ds.PatientName = "PHIDOE^JOHNATHAN"
    out = run(ds, clean_graphics=True)
    assert out.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == "left"
    basic = run(_with_annotation())
    assert len(basic.GraphicAnnotationSequence) == 1
    assert len(basic.GraphicAnnotationSequence[0]) == 0     # D: one empty item


def _with_annotation():
    ds = read("CT_small.dcm")
    text = Dataset()
    text.UnformattedTextValue = "PHIDOE left"
    ann = Dataset()
    ann.TextObjectSequence = Sequence([text])
    ds.GraphicAnnotationSequence = Sequence([ann])
    return ds


def test_private_tags_removed_by_default_and_safe_ones_kept(ct_phi):
    ct_phi.add_new(0x00110010, "LO", "SAFE CREATOR")
    ct_phi.add_new(0x00111001, "DS", "2.5")           # declared safe
    ct_phi.add_new(0x00111002, "LO", "PHIUNSAFE")     # same block, not declared
    out = run(copy.deepcopy(ct_phi))
    assert not any(e.tag.is_private for e in out)
    kept = run(ct_phi, retain_safe_private=True,
               safe_private=frozenset({(0x0011, "SAFE CREATOR", 0x01)}))
    private = {e.tag: e.value for e in kept if e.tag.is_private}
    assert private == {0x00110010: "SAFE CREATOR", 0x00111001: "2.5"}
    assert "113111" in [i.CodeValue for i in kept.DeidentificationMethodCodeSequence]


def test_retain_safe_private_without_allow_list_keeps_nothing(ct_phi):
    out = run(ct_phi, retain_safe_private=True, safe_private=frozenset())
    assert not any(e.tag.is_private for e in out)


def test_patient_name_can_be_emptied(ct):
    out = run(ct, patient_name="empty")
    assert out.PatientName == ""
    assert out.PatientID == Pseudonymiser(KEY).pseudonym("1CT1")


def test_given_pseudonym_is_used(ct):
    outcome = deidentify_dataset(ct, key=KEY, patient_pseudonym="EHR-PSEUDO-1")
    assert outcome.dataset.PatientID == "EHR-PSEUDO-1"
    assert outcome.patient_pseudonym == "EHR-PSEUDO-1"


def test_pseudonym_joins_the_ehr_rows(ct):
    """The DICOM Patient ID is the same pseudonym the EHR depersonalisation gives."""
    import pandas as pd
    ehr = Pseudonymiser(KEY).pseudonyms(pd.Series([" 1CT1 "]))
    assert run(ct).PatientID == ehr.iloc[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retain_longitudinal_full_dates": True, "retain_longitudinal_modified_dates": True},
        {"max_shift_days": 0},
        {"uid_root": "1.02.3"},
        {"uid_root": "1.2.x"},
        {"uid_root": "1." * 30},
        {"patient_name": "keep"},
        {"safe_private": frozenset({("X", 0x1001)})},
        {"clean_descriptors": "yes"},
    ],
)
def test_invalid_options(kwargs):
    with pytest.raises((ValueError, TypeError)):
        DeidOptions(**kwargs)


def test_key_is_checked_and_hidden():
    from mipflow.exceptions import ProfileError
    with pytest.raises(ProfileError):
        Deidentifier(b"short")
    deid = Deidentifier(KEY)
    assert KEY.hex() not in repr(deid)
    import pickle
    with pytest.raises(TypeError):
        pickle.dumps(deid)


# --------------------------------------------------------------------------
# UIDs: deterministic, consistent across files, valid
# --------------------------------------------------------------------------


def _two_files_of_one_study(fresh):
    a, b = fresh(), fresh()
    b.SOPInstanceUID = a.SOPInstanceUID + ".2"
    b.InstanceNumber = 2
    ref = Dataset()
    ref.ReferencedSOPClassUID = a.SOPClassUID
    ref.ReferencedSOPInstanceUID = a.SOPInstanceUID
    b.ReferencedImageSequence = Sequence([ref])
    b.SourceImageSequence = Sequence([copy.deepcopy(ref)])
    return a, b


def test_uids_consistent_across_files_of_one_study(fresh, tmp_path):
    a, b = _two_files_of_one_study(fresh)
    originals = (a.StudyInstanceUID, a.SeriesInstanceUID, a.FrameOfReferenceUID)
    paths = []
    for i, ds in enumerate((a, b)):
        p = tmp_path / f"{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    deid = Deidentifier(KEY)
    out_a = deid.file(paths[0], tmp_path / "a.dcm")
    out_b = Deidentifier(KEY).file(paths[1], tmp_path / "b.dcm")   # a fresh engine: same result
    da, db = pydicom.dcmread(out_a.out_path), pydicom.dcmread(out_b.out_path)
    assert da.StudyInstanceUID == db.StudyInstanceUID == out_a.study_uid
    assert da.SeriesInstanceUID == db.SeriesInstanceUID
    assert da.FrameOfReferenceUID == db.FrameOfReferenceUID
    assert da.SOPInstanceUID != db.SOPInstanceUID
    assert db.ReferencedImageSequence[0].ReferencedSOPInstanceUID == da.SOPInstanceUID
    assert db.SourceImageSequence[0].ReferencedSOPInstanceUID == da.SOPInstanceUID
    assert da.file_meta.MediaStorageSOPInstanceUID == da.SOPInstanceUID
    for uid in (da.StudyInstanceUID, da.SeriesInstanceUID, da.SOPInstanceUID,
                da.FrameOfReferenceUID, db.SOPInstanceUID):
        assert valid_uid(uid) and uid.startswith("2.25.")
        assert uid not in originals


def test_uids_depend_on_the_key(ct, fresh):
    one = run(fresh()).StudyInstanceUID
    other = run(fresh(), key=OTHER_KEY).StudyInstanceUID
    assert one != other and valid_uid(other)
    assert run(fresh()).StudyInstanceUID == one


@pytest.mark.parametrize("root", ["1.2.826.0.1.3680043.10.543", "1.2.3.", "2.25.1234"])
def test_uid_root(root, fresh):
    out = run(fresh(), uid_root=root)
    prefix = root.rstrip(".") + "."
    for uid in (out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID):
        assert uid.startswith(prefix) and valid_uid(uid)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_long_uid_root_still_fits():
    root = "1.2.826.0.1.3680043.10.543.1234567890.1234567890.1"
    deid = Deidentifier(KEY, DeidOptions(uid_root=root))
    uids = {deid.new_uid(f"1.2.3.{i}") for i in range(200)}
    assert len(uids) == 200
    assert all(valid_uid(u) and len(u) <= 64 for u in uids)


# --------------------------------------------------------------------------
# Date shifts: consistent per patient, different across patients
# --------------------------------------------------------------------------


def test_date_shift_consistent_per_patient_and_different_across(fresh):
    opts = DeidOptions(retain_longitudinal_modified_dates=True)
    shifts = {}
    for pid in ("PAT-A", "PAT-B", "PAT-C"):
        for _ in range(2):
            ds = fresh()
            ds.PatientID = pid
            ds.StudyDate = "20200101"
            outcome = deidentify_dataset(ds, key=KEY, options=opts)
            got = (outcome.date_shift_days, outcome.dataset.StudyDate)
            assert shifts.setdefault(pid, got) == got       # same patient, same shift
    assert len({s for s, _ in shifts.values()}) == 3        # three patients, three shifts
    for pid, (shift, study_date) in shifts.items():
        assert shift == Pseudonymiser(KEY).date_shift_days(pid)
        assert shift != 0 and abs(shift) <= 365
        assert study_date == (date(2020, 1, 1) + timedelta(days=shift)).strftime("%Y%m%d")


def test_max_shift_days(fresh):
    ds = fresh()
    outcome = deidentify_dataset(ds, key=KEY, options=DeidOptions(
        retain_longitudinal_modified_dates=True, max_shift_days=3))
    assert 1 <= abs(outcome.date_shift_days) <= 3
    assert outcome.date_shift_days == Pseudonymiser(KEY).date_shift_days("1CT1", 3)


# --------------------------------------------------------------------------
# Quarantine: a reason, nothing written, never a crash
# --------------------------------------------------------------------------


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


def test_processing_error_is_quarantined(monkeypatch, ct):
    deid = Deidentifier(KEY)

    def boom(*args, **kwargs):
        raise RuntimeError("PHIDOE boom")

    monkeypatch.setattr(Deidentifier, "_walk", boom)
    outcome = deid.dataset(ct)
    assert outcome.reason == Quarantine.PROCESSING_ERROR
    assert "PHIDOE" not in outcome.detail


def test_output_overwrites_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "o" / "x.dcm"
    for _ in range(2):
        assert deidentify_file(shipped("CT_small.dcm"), out, key=KEY).ok
    assert [p.name for p in out.parent.iterdir()] == ["x.dcm"]


def test_deidentified_output_is_stable(tmp_path):
    """Same input, key and options: byte-identical output (useful for caching)."""
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    deidentify_file(shipped("MR_small.dcm"), a, key=KEY)
    deidentify_file(shipped("MR_small.dcm"), b, key=KEY)
    assert a.read_bytes() == b.read_bytes()
    assert os.path.getsize(a) > 0
