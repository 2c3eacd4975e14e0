"""Per-series image features, computed at the node from de-identified instances.

:func:`series_features` groups instances by Series Instance UID and returns
one :class:`SeriesFeatures` per series: acquisition descriptors (modality,
body part, slice thickness, pixel spacing, size) and intensity statistics in
modality units (Rescale Slope/Intercept applied, so Hounsfield units for CT),
plus, for CT, the volume above a HU threshold.

The patient key is the de-identified Patient ID (the EHR pseudonym), so the
features join the depersonalised clinical rows.  Pixel data that cannot be
decoded here (a compressed transfer syntax without an installed decoder)
leaves the intensity features empty and says why in
:attr:`SeriesFeatures.pixel_error`; it never raises.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset

__all__ = ["DEFAULT_HU_THRESHOLD", "SeriesFeatures", "series_features"]

#: Default CT threshold: voxels above it count as tissue (air is about -1000 HU).
DEFAULT_HU_THRESHOLD = -500.0


@dataclass
class SeriesFeatures:
    """Features of one series (``None`` where not available)."""

    series_uid: str
    patient_id: str | None = None
    study_uid: str | None = None
    modality: str | None = None
    body_part: str | None = None
    n_instances: int = 0
    n_frames: int = 0
    rows: int | None = None
    columns: int | None = None
    slice_thickness_mm: float | None = None
    slice_spacing_mm: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    intensity_mean: float | None = None
    intensity_std: float | None = None
    intensity_min: float | None = None
    intensity_max: float | None = None
    volume_above_threshold_ml: float | None = None
    hu_threshold: float | None = None
    pixel_error: str | None = None
    _positions: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a feature table row (no private fields)."""
        out = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        if self.pixel_spacing_mm is not None:
            out["pixel_spacing_mm"] = list(self.pixel_spacing_mm)
        return out


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _text(value: Any) -> str | None:
    text = str(value).strip() if value not in (None, "") else ""
    return text or None


def _slice_position(ds: Dataset) -> float | None:
    """Position along the slice normal (from Image Position/Orientation)."""
    try:
        pos = np.asarray([float(v) for v in ds.ImagePositionPatient])
        ori = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    except (AttributeError, TypeError, ValueError):
        return None
    if pos.shape != (3,) or ori.shape != (6,):
        return None
    normal = np.cross(ori[:3], ori[3:])
    return float(pos @ normal)


def _pixels(ds: Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array.astype(np.float64)
    slope = _float(ds.get("RescaleSlope", 1)) or 1.0
    intercept = _float(ds.get("RescaleIntercept", 0)) or 0.0
    return arr * slope + intercept


def series_features(
    instances: Iterable[Dataset | str | os.PathLike[str]],
    *,
    hu_threshold: float = DEFAULT_HU_THRESHOLD,
) -> list[SeriesFeatures]:
    """Compute per-series features.

    Parameters
    ----------
    instances : iterable of pydicom.Dataset or path
        De-identified instances (datasets or files), of one or many series.
    hu_threshold : float
        CT only: voxels above it count towards
        :attr:`SeriesFeatures.volume_above_threshold_ml`.

    Returns
    -------
    list of SeriesFeatures
        One per Series Instance UID, in order of first appearance.
    """
    series: dict[str, SeriesFeatures] = {}
    sums: dict[str, list[float]] = {}
    thickness: dict[str, list[float]] = {}
    for item in instances:
        ds = item if isinstance(item, Dataset) else pydicom.dcmread(item)
        uid = str(ds.get("SeriesInstanceUID", "") or "") or "unknown"
        feat = series.get(uid)
        if feat is None:
            feat = series[uid] = SeriesFeatures(
                series_uid=uid,
                patient_id=_text(ds.get("PatientID")),
                study_uid=_text(ds.get("StudyInstanceUID")),
                modality=_text(ds.get("Modality")),
                body_part=_text(ds.get("BodyPartExamined")),
                rows=int(ds.Rows) if "Rows" in ds else None,
                columns=int(ds.Columns) if "Columns" in ds else None,
            )
            spacing = ds.get("PixelSpacing")
            if spacing is not None and len(spacing) == 2:
                a, b = _float(spacing[0]), _float(spacing[1])
                if a and b:
                    feat.pixel_spacing_mm = (a, b)
            sums[uid] = [0.0, 0.0, 0.0, math.inf, -math.inf, 0.0]  # n, sum, sumsq, min, max, above
            thickness[uid] = []
        feat.n_instances += 1
        frames = int(_float(ds.get("NumberOfFrames", 1)) or 1)
        feat.n_frames += frames
        t = _float(ds.get("SliceThickness"))
        if t:
            thickness[uid].append(t)
        s = _float(ds.get("SpacingBetweenSlices"))
        if s and feat.slice_spacing_mm is None:
            feat.slice_spacing_mm = abs(s)
        p = _slice_position(ds)
        if p is not None:
            feat._positions.append(p)
        if "PixelData" not in ds or feat.pixel_error is not None:
            continue
        try:
            values = _pixels(ds)
        except Exception as exc:  # noqa: BLE001 - no decoder, corrupt data, ...
            feat.pixel_error = f"pixel data not decodable ({type(exc).__name__})"
            continue
        acc = sums[uid]
        acc[0] += values.size
        acc[1] += float(values.sum())
        acc[2] += float(np.square(values).sum())
        acc[3] = min(acc[3], float(values.min()))
        acc[4] = max(acc[4], float(values.max()))
        acc[5] += float(np.count_nonzero(values > hu_threshold))

    for uid, feat in series.items():
        if thickness[uid]:
            feat.slice_thickness_mm = float(np.median(thickness[uid]))
        if feat.slice_spacing_mm is None and len(feat._positions) > 1:
            gaps = np.diff(np.sort(np.asarray(feat._positions)))
            gaps = gaps[gaps > 1e-6]
            if gaps.size:
                feat.slice_spacing_mm = float(np.median(gaps))
        n, total, total_sq, lo, hi, above = sums[uid]
        if feat.pixel_error is None and n > 0:
            mean = total / n
            feat.intensity_mean = mean
            feat.intensity_std = math.sqrt(max(total_sq / n - mean * mean, 0.0))
            feat.intensity_min, feat.intensity_max = lo, hi
            if feat.modality == "CT" and feat.pixel_spacing_mm is not None:
                depth = feat.slice_spacing_mm or feat.slice_thickness_mm
                if depth:
                    voxel_mm3 = feat.pixel_spacing_mm[0] * feat.pixel_spacing_mm[1] * depth
                    feat.volume_above_threshold_ml = above * voxel_mm3 / 1000.0
                    feat.hu_threshold = hu_threshold
        elif feat.pixel_error is not None:
            feat.intensity_mean = feat.intensity_std = None
    return list(series.values())
