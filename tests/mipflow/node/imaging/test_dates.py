"""Tests of mipflow.node.imaging.dates: shifts consistent per patient, different across patients.

Inputs are pydicom's own test files (no download), often with identifying values injected.
"""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.imaging.deidentify import deidentify_dataset
from mipflow.node.imaging.options import DeidOptions

from .conftest import (
    KEY,
    run,
    to_bytes,
)


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
