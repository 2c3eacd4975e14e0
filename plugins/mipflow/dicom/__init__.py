"""Imaging at the node: DICOM de-identification (PS3.15 Annex E) and features.

* :mod:`mipflow.dicom.profile_table` — Table E.1-1 as data;
* :mod:`mipflow.dicom.deidentify` — the de-identification engine and its
  quarantine rules;
* :mod:`mipflow.dicom.features` — per-series image features.

Nothing here imports Airflow.
"""
from __future__ import annotations

from mipflow.dicom.deidentify import (
    DeidOptions,
    DeidOutcome,
    Deidentifier,
    FileOutcome,
    Quarantine,
    deidentify_dataset,
    deidentify_file,
)

__all__ = [
    "DeidOptions",
    "DeidOutcome",
    "Deidentifier",
    "FileOutcome",
    "Quarantine",
    "deidentify_dataset",
    "deidentify_file",
]
