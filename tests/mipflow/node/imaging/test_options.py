"""Tests of mipflow.node.imaging.options: each option on its own, and invalid options.

Inputs are pydicom's own test files (no download), often with identifying values injected.
"""
from __future__ import annotations

import copy

import pytest

from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.imaging.options import DeidOptions

from .conftest import (
    KEY,
    read,
    run,
)


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


def test_patient_name_can_be_emptied(ct):
    out = run(ct, patient_name="empty")
    assert out.PatientName == ""
    assert out.PatientID == Pseudonymiser(KEY).pseudonym("1CT1")


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
