"""`mipflow dicom deidentify HOME IN_DIR OUT_DIR` on a nested tree with good and bad files."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pydicom

from mipflow.node.deid.pseudonyms import Pseudonymiser
from tests.mipflow.node.imaging.conftest import PHI_TOP, read, shipped
from tests.nodes import standard_home


def test_cli_names_outputs_by_new_uids_and_reports_quarantine_without_paths(tmp_path):
    home = standard_home(tmp_path / "node", "hospital_a")
    src = tmp_path / "in"
    (src / "DOE_JOHNATHAN" / "series1").mkdir(parents=True)
    ds = read("CT_small.dcm")
    for keyword, value in PHI_TOP:
        setattr(ds, keyword, value)
    ds.save_as(src / "DOE_JOHNATHAN" / "series1" / "ct_DOE.dcm")
    shutil.copyfile(shipped("MR_small.dcm"), src / "DOE_JOHNATHAN" / "mr.dcm")
    (src / "DOE_JOHNATHAN_empty.dcm").write_bytes(b"")
    (src / "notes_DOE.txt").write_text("not dicom")
    out = subprocess.run([sys.executable, "-m", "mipflow.cli", "dicom", "deidentify", str(home.root), str(src),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["files_in"] == 4 == summary["written"] + len(summary["quarantined"])
    assert summary["written"] == 2
    assert sorted(q["reason"] for q in summary["quarantined"]) == ["empty-file", "not-dicom"]
    assert {q["sha256"] for q in summary["quarantined"]} == {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (src / "DOE_JOHNATHAN_empty.dcm", src / "notes_DOE.txt")}
    assert "DOE" not in out.stdout and "DOE" not in out.stderr and str(src) not in out.stdout
    outputs = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert len(outputs) == 2 and not any("DOE" in str(p.relative_to(tmp_path / "out")) for p in outputs)
    by_sop = {}
    for path in outputs:
        dsx = pydicom.dcmread(path)
        # OUT/<new study UID>/<new series UID>/<new SOP instance UID>.dcm
        assert path.relative_to(tmp_path / "out").parts == (
            dsx.StudyInstanceUID, dsx.SeriesInstanceUID, f"{dsx.SOPInstanceUID}.dcm")
        by_sop[dsx.Modality] = path
    written = by_sop["CT"]
    data = written.read_bytes()
    for _, value in PHI_TOP:
        assert value.encode() not in data
    result = pydicom.dcmread(written)
    # the same pseudonym as the EHR pipeline gives this patient at this node
    assert result.PatientID == Pseudonymiser(home.key()).pseudonym("PHIMRN998877")
    assert result.PatientIdentityRemoved == "YES"
    assert written.parts[-3] != ds.StudyInstanceUID and written.stem != ds.SOPInstanceUID
