"""Imaging at the node: DICOM de-identification (PS3.15 Annex E) and features.

* :mod:`mipflow.node.imaging.profile_table` — Table E.1-1 as data;
* :mod:`mipflow.node.imaging.deidentify` — the de-identification engine and its
  quarantine rules;
* :mod:`mipflow.node.imaging.features` — per-series image features.

Nothing here imports Airflow.
"""
from __future__ import annotations

from mipflow.node.imaging.deidentify import (
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
