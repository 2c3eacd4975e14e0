"""The imaging de-identification stage: mapped chunks, and files that changed or left after capture."""
from __future__ import annotations

import logging

from mipflow.node.imaging.capture import capture_dicom
from mipflow.node.imaging.deid_series import (
    CHANGED_AFTER_CAPTURE,
    MISSING_AFTER_CAPTURE,
    chunked,
    deidentify_series,
)

from .conftest import _folder, build_landing


def test_chunked_bounds_the_number_of_mapped_tasks():
    items = [f"b{i}" for i in range(1000)]
    chunks = chunked(items, 64)
    assert len(chunks) <= 64 and sum(chunks, []) == items
    assert chunked([], 8) == []


def test_files_changed_or_gone_after_capture_are_quarantined(home, caplog):
    build_landing(home)
    batches = capture_dicom(home)
    ct = next(b for b in batches if b["files"] == 3)
    folder = home.landing_dir / "dicom" / _folder(0, "PHIPAT-A1", "ct")
    (folder / "IM0001_PHINAME0").unlink()
    with open(folder / "IM0002_PHINAME0", "ab") as handle:
        handle.write(b"\0\0")                                 # new content, same name
    caplog.set_level(logging.DEBUG)
    out = deidentify_series(home, ct)
    assert out["written"] == 1 and out["quarantined"] == 2
    assert out["reasons"] == {MISSING_AFTER_CAPTURE: 1, CHANGED_AFTER_CAPTURE: 1}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "PHINAME0" not in logged and "IM0002" not in logged
    # the changed file is a new file for the next capture
    again = capture_dicom(home)
    assert sum(b["files"] for b in again) == 1
