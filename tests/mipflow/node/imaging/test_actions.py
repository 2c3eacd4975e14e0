"""Tests of mipflow.node.imaging.actions: every row of Table E.1-1, single actions, cleaning, private elements.

Inputs are pydicom's own test files (no download), often with identifying values injected.
"""
from __future__ import annotations

import copy

import pytest
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mipflow.node.imaging.deidentify import Deidentifier
from mipflow.node.imaging.plan import resolve_action
from mipflow.node.imaging.profile_table import exact_rows

from .conftest import (
    KEY,
    PHI_NESTED,
    PHI_NESTED_ID,
    PHI_REF_UID,
    inject_phi,
    read,
    run,
    to_bytes,
    valid_uid,
)

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
