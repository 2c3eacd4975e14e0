"""The imaging load stage: per-series features of the de-identified series into ``imaging:0.1``.

:func:`extract_and_load` computes the per-series features (:mod:`mipflow.node.imaging.features`)
from the staged files and upserts one row per series into the ``imaging:0.1`` table: ``_pid`` is
the EHR pseudonym of the Patient ID (the de-identified Patient ID), ``_visit`` the de-identified
Series Instance UID, so image features join the clinical rows.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from mipflow.exceptions import ConfigError
from mipflow.node.home import NodeHome
from mipflow.node.imaging.stages import (
    STAGE_DEIDENTIFIED,
    STAGE_LOADED,
    FileCounts,
    dicom_staging,
    imaging_model,
    waiting_series,
)
from mipflow.node.store.feature_store import FeatureStore, open_store, utcnow

log = logging.getLogger(__name__)

#: Modalities the imaging data model enumerates; others are recorded as ``OT``.
MODALITIES = frozenset({"CT", "MR", "PT", "NM", "CR", "DX", "MG", "XA", "RF", "US", "OT"})


def _feature_row(feat: Any) -> dict[str, Any]:
    modality = (feat.modality or "").upper() or None
    if modality is not None and modality not in MODALITIES:
        modality = "OT"
    spacing = feat.pixel_spacing_mm or (None, None)
    return {
        "modality": modality,
        "body_part": feat.body_part,
        "slice_thickness": feat.slice_thickness_mm,
        "slice_spacing": feat.slice_spacing_mm,
        "pixel_spacing_row": spacing[0],
        "pixel_spacing_col": spacing[1],
        "image_rows": feat.rows,
        "image_columns": feat.columns,
        "n_instances": feat.n_instances,
        "n_frames": feat.n_frames,
        "intensity_mean": feat.intensity_mean,
        "intensity_std": feat.intensity_std,
        "ct_volume_ml": feat.volume_above_threshold_ml,
        # intensity_min/max are deliberately not stored: raw extremes can single out a patient
    }


def pending_outcomes(home: NodeHome, *, store: FeatureStore | None = None) -> list[dict[str, Any]]:
    """Outcomes of every de-identified series waiting for feature extraction."""
    store = store or open_store(home)
    out = []
    for batch_id in waiting_series(home, STAGE_DEIDENTIFIED, store=store):
        batch = store.batch(batch_id)
        out.append({"batch_id": batch_id, "series": batch["source"].split("/", 1)[1],
                    "files_in": int(batch["rows_in"]), "written": int(batch["loaded"]),
                    "quarantined": int(batch["quarantined"]), "status": batch["status"]})
    return out


def extract_and_load(home: NodeHome, series_outcomes: Iterable[dict[str, Any]], *,
                     dataset: str | None = None, store: FeatureStore | None = None) -> dict[str, Any]:
    """Compute features of the de-identified series and upsert one row per series.

    Features cover every staged instance of the series (also those of earlier
    batches of the same series), so a re-run or a late file gives the same row.

    Parameters
    ----------
    dataset : str, optional
        The dataset code (default: the node's name); must be one the imaging
        data model enumerates.

    Returns
    -------
    dict
        ``loaded`` (rows), ``series``, ``failed`` (series whose features could
        not be computed) and the file totals of the batches.
    """
    import pandas as pd

    from mipflow.node.imaging.features import series_features

    store = store or open_store(home)
    model = imaging_model(store)
    dataset = dataset or home.name
    if model.dataset_codes and dataset not in model.dataset_codes:
        raise ConfigError(f"dataset {dataset!r} is not one of the {model.key} datasets "
                          f"{list(model.dataset_codes)}; name the node after one or pass dataset=")
    rows: list[dict[str, Any]] = []
    loaded_batches: list[str] = []
    failed: list[tuple[str, str]] = []
    totals = FileCounts()
    for outcome in series_outcomes:
        batch_id = outcome["batch_id"]
        batch = store.batch(batch_id)
        if batch["stage"] != STAGE_DEIDENTIFIED or batch["status"] != "running":
            continue  # failed at de-identification, or loaded already
        totals.files_in += int(batch["rows_in"])
        totals.written += int(batch["loaded"])
        totals.quarantined += int(batch["quarantined"])
        pseudo_series = batch["source"].split("/", 1)[1]
        folder = dicom_staging(home) / pseudo_series
        files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
        if not files:
            failed.append((batch_id, "no staged files"))
            continue
        try:
            feats = series_features(files)
        except Exception as exc:  # noqa: BLE001 - one bad series must not stop the others
            failed.append((batch_id, f"features failed ({type(exc).__name__})"))
            continue
        feat = next((f for f in feats if f.series_uid == pseudo_series), feats[0])
        if not feat.patient_id:
            failed.append((batch_id, "staged instances carry no patient pseudonym"))
            continue
        row = {"_pid": feat.patient_id, "dataset": dataset, "_visit": pseudo_series,
               "subjectcode": feat.patient_id, "visitid": pseudo_series, **_feature_row(feat)}
        rows.append(row)
        loaded_batches.append(batch_id)
    columns = ["_pid", "dataset", "_visit", *[v.code for v in model if v.code != "dataset"]]
    frame = pd.DataFrame(rows, columns=columns)
    for code in ("image_rows", "image_columns", "n_instances", "n_frames"):
        frame[code] = frame[code].astype("Int64")
    for var in model:
        if var.sql_type == "real":
            frame[var.code] = pd.to_numeric(frame[var.code], errors="coerce").astype("float64")
    loaded = 0
    with store.begin() as conn:
        for i, batch_id in enumerate(loaded_batches):
            part = frame.iloc[[i]]
            batch = store.batch(batch_id)
            loaded += store.upsert_rows(conn, model, part, batch_id=batch_id, sha256=batch["sha256"])
            store.update_batch(conn, batch_id, stage=STAGE_LOADED, status="loaded", finished_at=utcnow(),
                               message=f"series features loaded ({batch['loaded']} instance(s))")
        for batch_id, message in failed:
            store.update_batch(conn, batch_id, stage=STAGE_LOADED, status="failed", message=message,
                               finished_at=utcnow())
        if loaded:
            store.refresh_datasets(conn, model)
    log.info("imaging features: %d series loaded, %d failed", loaded, len(failed))
    return {"loaded": loaded, "series": loaded_batches, "failed": [b for b, _ in failed],
            "failed_reasons": dict(failed),
            "files": totals.to_dict(), "dataset": dataset, "data_model": model.key}
