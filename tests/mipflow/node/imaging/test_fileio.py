"""Tests of mipflow.node.imaging.fileio: atomic writes.

Inputs are pydicom's own test files (no download), often with identifying values injected.
"""
from __future__ import annotations

from mipflow.node.imaging.deidentify import deidentify_file

from .conftest import (
    KEY,
    shipped,
)


def test_output_overwrites_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "o" / "x.dcm"
    for _ in range(2):
        assert deidentify_file(shipped("CT_small.dcm"), out, key=KEY).ok
    assert [p.name for p in out.parent.iterdir()] == ["x.dcm"]
