"""What turns an imaging task red, and the messages that say what to fix (issue 15 item 6)."""
from __future__ import annotations

import pytest

from mipflow.node.imaging.deid_series import NOT_WAITING
from mipflow.node.imaging.stages import capture_problem, load_problem, series_problem


@pytest.mark.parametrize("summary, expected", [
    pytest.param({"quarantined": 0, "quarantine_reasons": {}, "quarantine_batch": None}, None, id="none"),
    pytest.param({"quarantined": 3, "quarantine_reasons": {"not-dicom": 2, "empty-file": 1},
                  "quarantine_batch": "qabc"},
                 "3 file(s) of landing/dicom/ quarantined at capture (empty-file 1, not-dicom 2), batch qabc",
                 id="quarantined"),
])
def test_capture_problem(summary, expected):
    problem = capture_problem(summary)
    if expected is None:
        assert problem is None
    else:
        assert problem.startswith(expected) and "mipflow node files" in problem


def test_series_problem_names_this_runs_failed_series_only():
    outcomes = [
        {"batch_id": "i1", "status": "running", "reasons": {"burned-in-risk": 1}},  # some files written
        {"batch_id": "i2", "status": "failed", "reasons": {"burned-in-risk": 2, "truncated": 1}},
        {"batch_id": "i3", "status": "failed", "reasons": {}, "message": NOT_WAITING},  # another run's
    ]
    assert series_problem(outcomes) == ("series batch i2 failed: every file quarantined at de-identification "
                                        "(burned-in-risk 2, truncated 1)")
    assert series_problem(outcomes[:1] + outcomes[2:]) is None


def test_load_problem():
    assert load_problem({"failed": [], "failed_reasons": {}}) is None
    assert load_problem({"failed": ["i2", "i1"], "failed_reasons": {"i2": "no staged files", "i1": "x"}}) == (
        "series batch i1 failed at the feature load: x; series batch i2 failed at the feature load: no staged files")
