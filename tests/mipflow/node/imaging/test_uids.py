"""Tests of mipflow.node.imaging.uids: deterministic, consistent across files, valid, keyed.

Inputs are pydicom's own test files (no download), often with identifying values injected.
"""
from __future__ import annotations

import copy

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mipflow.node.imaging.deidentify import Deidentifier
from mipflow.node.imaging.options import DeidOptions

from .conftest import (
    KEY,
    OTHER_KEY,
    run,
    valid_uid,
)


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
