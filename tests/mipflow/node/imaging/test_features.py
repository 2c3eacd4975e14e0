"""Tests of mipflow.node.imaging.features on de-identified pydicom test files."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from mipflow.node.imaging.deidentify import deidentify_file
from mipflow.node.imaging.features import series_features

from .conftest import KEY, read, shipped


def _ct_series(n: int = 3):
    base = read("CT_small.dcm")
    out = []
    for i in range(n):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = f"{base.SOPInstanceUID}.{i}"
        z = float(base.ImagePositionPatient[2]) + 5.0 * i
        ds.ImagePositionPatient = [base.ImagePositionPatient[0], base.ImagePositionPatient[1], z]
        out.append(ds)
    return out


def test_ct_series_features():
    series = _ct_series(3)
    [feat] = series_features(series, hu_threshold=0.0)
    ds = series[0]
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert feat.modality == "CT"
    assert feat.n_instances == 3 and feat.n_frames == 3
    assert (feat.rows, feat.columns) == (128, 128)
    assert feat.slice_thickness_mm == 5.0
    assert feat.slice_spacing_mm == pytest.approx(5.0)
    assert feat.pixel_spacing_mm == pytest.approx((0.661468, 0.661468))
    assert feat.intensity_mean == pytest.approx(hu.mean())
    assert feat.intensity_std == pytest.approx(hu.std())
    assert feat.intensity_min == hu.min() and feat.intensity_max == hu.max()
    voxel_ml = 0.661468 * 0.661468 * 5.0 / 1000.0
    assert feat.volume_above_threshold_ml == pytest.approx(3 * np.count_nonzero(hu > 0) * voxel_ml)
    assert feat.hu_threshold == 0.0
    assert feat.to_dict()["pixel_spacing_mm"] == pytest.approx([0.661468, 0.661468])


def test_features_of_deidentified_files_join_the_pseudonym(tmp_path):
    paths = []
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm"):
        out = tmp_path / name
        assert deidentify_file(shipped(name), out, key=KEY).ok
        paths.append(out)
    feats = series_features(paths)
    assert {f.modality for f in feats} == {"CT", "MR"}
    ct = next(f for f in feats if f.modality == "CT")
    from mipflow.node.deid.pseudonyms import Pseudonymiser
    assert ct.patient_id == Pseudonymiser(KEY).pseudonym("1CT1")
    mr = [f for f in feats if f.modality == "MR"]
    assert all(f.volume_above_threshold_ml is None for f in mr)   # CT only
    assert all(f.intensity_mean is not None for f in feats)


def test_undecodable_pixels_give_a_reason_not_an_error():
    ds = read("CT_small.dcm")
    ds.Rows = 1000          # pixel data no longer matches the geometry
    [feat] = series_features([ds])
    assert feat.pixel_error and feat.intensity_mean is None
    assert feat.modality == "CT" and feat.n_instances == 1
