"""`mipflow dicom deidentify HOME IN_DIR OUT_DIR` on a nested tree with good and bad files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pydicom

from mipflow.node.deid.pseudonyms import Pseudonymiser
from tests.mipflow.node.imaging.conftest import PHI_TOP, read, shipped
from tests.nodes import standard_home


def test_cli_mirrors_tree_and_reports_quarantine(tmp_path):
    home = standard_home(tmp_path / "node", "hospital_a")
    src = tmp_path / "in"
    (src / "study1" / "series1").mkdir(parents=True)
    ds = read("CT_small.dcm")
    for keyword, value in PHI_TOP:
        setattr(ds, keyword, value)
    ds.save_as(src / "study1" / "series1" / "ct.dcm")
    shutil.copyfile(shipped("MR_small.dcm"), src / "study1" / "mr.dcm")
    (src / "empty.dcm").write_bytes(b"")
    (src / "notes.txt").write_text("not dicom")
    out = subprocess.run([sys.executable, "-m", "mipflow.cli", "dicom", "deidentify", str(home.root), str(src),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["files_in"] == 4 == summary["written"] + len(summary["quarantined"])
    assert summary["written"] == 2
    assert {q["path"] for q in summary["quarantined"]} == {"empty.dcm", "notes.txt"}
    written = tmp_path / "out" / "study1" / "series1" / "ct.dcm"
    data = written.read_bytes()
    for _, value in PHI_TOP:
        assert value.encode() not in data
    result = pydicom.dcmread(written)
    # the same pseudonym as the EHR pipeline gives this patient at this node
    assert result.PatientID == Pseudonymiser(home.key()).pseudonym("PHIMRN998877")
    assert result.PatientIdentityRemoved == "YES"
    assert not (tmp_path / "out" / "empty.dcm").exists()
