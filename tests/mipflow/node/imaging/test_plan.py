"""Tests of mipflow.node.imaging.plan: combined codes and option precedence.
"""
from __future__ import annotations

import pytest

from mipflow.node.imaging.plan import resolve_action
from mipflow.node.imaging.profile_table import profile_rows


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
