"""The node imaging pipeline: capture -> de-identify -> features -> load (no Airflow imports).

``capture_dicom``
    Scans ``landing/dicom/`` recursively, hashes every settled file (SHA-256)
    and skips the ones the manifest already holds.  The manifest
    (``mipflow_files``) keeps the content hash and a keyed hash of the path
    relative to ``landing/dicom/`` (:func:`mipflow.node.files.landing_path_key`,
    HMAC-SHA256 with the node key), never the path itself: file and folder names often
    carry patient names.  Only headers are read
    (``stop_before_pixels``), to group instances by Study/Series Instance UID
    and to apply the consent registry by the Patient ID in the header.  Files
    that are empty, not DICOM, unreadable, a DICOMDIR or without a Series
    Instance UID are quarantined at once; files of patients without consent
    are counted and left alone (not registered, so they are taken up once
    consent is granted).  Every consented series becomes one batch
    (``mipflow_batches``; ``rows_in`` etc. count *files* for imaging batches)
    and its files are registered in the manifest under that batch.
``deidentify_series``
    De-identifies the files of one series batch (PS3.15 Annex E, the node's
    :class:`~mipflow.node.imaging.DeidOptions`) into
    ``staging/dicom/<de-identified series UID>/<de-identified SOP UID>.dcm``,
    one file at a time (bounded memory); failures are quarantined with their
    reason.  Staging never holds a raw identifier, not even in a file name.
``extract_and_load``
    Computes the per-series features from the staged files and upserts one row
    per series into the ``imaging:0.1`` table: ``_pid`` is the EHR pseudonym of
    the Patient ID (the de-identified Patient ID), ``_visit`` the de-identified
    Series Instance UID, so image features join the clinical rows.

File accounting: ``files_in = written + quarantined + no_consent + known +
pending`` where *known* files were registered by an earlier run (or repeat
the bytes of another file in this run) and *pending* ones are still being
written (temporary name or modified within ``settle_seconds``).

Identifiers: the raw Patient ID and UIDs live only in memory and in
``landing/``; batch records, the file manifest, quarantine entries, staging
paths, log lines and XCom values carry pseudonyms, keyed UIDs, hashes and
reason codes.  De-identification finds a batch's files again by the keyed
hash of their landing path and checks their content hash before reading them.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa

from mipflow.node.ingest.capture import resolve_consent, sha256_file
from mipflow.node.home import NodeHome
from mipflow.protocol.datamodel import DataModel, bundled_data_model_path, load_data_model
from mipflow.exceptions import ConfigError, StoreError
from mipflow.node.files import DICOM_KIND, landing_path_key, path_index
from mipflow.node.store.feature_store import FeatureStore, open_store, utcnow
from mipflow.node.store.tables import batches_table, files_table

log = logging.getLogger(__name__)

DATA_MODEL = "imaging:0.1"
BUNDLED_MODEL = "imaging_v_0_1"
KIND = DICOM_KIND
#: Batch stages of imaging batches (distinct from the EHR stages, so the EHR DAGs never pick them up).
STAGE_CAPTURED = "dicom_captured"
STAGE_DEIDENTIFIED = "dicom_deidentified"
STAGE_LOADED = "dicom_loaded"
STAGE_CAPTURE_REPORT = "dicom_capture"
_IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart")
#: Quarantine reasons of files that changed between capture and de-identification.
MISSING_AFTER_CAPTURE = "missing-after-capture"
CHANGED_AFTER_CAPTURE = "changed-after-capture"
_HEADER_TAGS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "SOPClassUID", "Modality", "DirectoryRecordSequence")
#: Modalities the imaging data model enumerates; others are recorded as ``OT``.
MODALITIES = frozenset({"CT", "MR", "PT", "NM", "CR", "DX", "MG", "XA", "RF", "US", "OT"})


@dataclass
class FileCounts:
    """Where the files went. ``files_in`` must equal the sum of the rest."""

    files_in: int = 0
    written: int = 0
    quarantined: int = 0
    no_consent: int = 0
    known: int = 0
    pending: int = 0

    @property
    def conserved(self) -> bool:
        return self.files_in == (self.written + self.quarantined + self.no_consent + self.known
                                 + self.pending)

    def add(self, other: "FileCounts") -> None:
        for name in ("files_in", "written", "quarantined", "no_consent", "known", "pending"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def equation(self) -> str:
        ok = "OK" if self.conserved else "MISMATCH"
        return (f"files_in={self.files_in} = written {self.written} + quarantined {self.quarantined} "
                f"+ no_consent {self.no_consent} + known {self.known} + pending {self.pending} [{ok}]")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "conserved": self.conserved}


@dataclass
class _Series:
    pseudo_uid: str
    pid_raw: str
    files: list[tuple[Path, str, int]] = field(default_factory=list)  # (path, sha256, size)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def imaging_model(store: FeatureStore) -> DataModel:
    """The ``imaging:0.1`` data model, registered from ``include/schemas`` when missing."""
    try:
        return store.data_model(DATA_MODEL)
    except StoreError:
        model = load_data_model(bundled_data_model_path(BUNDLED_MODEL))
        store.add_data_model(model)
        return model


def dicom_staging(home: NodeHome) -> Path:
    return home.staging_dir / "dicom"


def _engine(home: NodeHome):
    from mipflow.node.imaging.deidentify import Deidentifier, options_from_settings

    return Deidentifier(home.key(), options_from_settings(home.settings))


def landing_index(home: NodeHome) -> dict[str, Path]:
    """Keyed path hash -> path of every file under ``landing/dicom/``."""
    root = home.landing_dir / "dicom"
    if not root.is_dir():
        return {}
    return path_index(home.key(), root, (p for p in root.rglob("*") if p.is_file()), kind=KIND)


def _series_batch_id(pseudo_series: str, shas: Iterable[str]) -> str:
    digest = hashlib.sha256(pseudo_series.encode())
    for sha in sorted(shas):
        digest.update(sha.encode())
    return "i" + digest.hexdigest()[:20]


def _combined_sha(shas: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for sha in sorted(shas):
        digest.update(sha.encode())
    return digest.hexdigest()


def _read_header(path: Path) -> tuple[Any, str | None, str | None]:
    """``(dataset, None, None)`` or ``(None, reason, detail)`` — headers only, no pixel data."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from mipflow.node.imaging.deidentify import Quarantine

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
    except InvalidDicomError:
        return None, Quarantine.NOT_DICOM, "not a DICOM Part 10 file (no 'DICM' prefix at offset 128)"
    except Exception as exc:  # noqa: BLE001 - any parse failure
        return None, Quarantine.UNREADABLE, f"pydicom cannot read the header ({type(exc).__name__})"
    meta = getattr(ds, "file_meta", None)
    meta_class = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta is not None else ""
    if meta_class == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in ds:
        return None, Quarantine.DICOMDIR, "a DICOMDIR (media directory), not an instance"
    if not str(ds.get("SeriesInstanceUID", "") or "").strip() or not ds.get("SOPInstanceUID"):
        return None, Quarantine.NOT_AN_INSTANCE, "no Series or SOP Instance UID: not a composite instance"
    return ds, None, None


def _pending(path: Path, settle: float, now: float) -> bool:
    if path.name.startswith(".") or path.suffix.lower() in _IGNORED_SUFFIXES:
        return True
    try:
        return settle > 0 and now - path.stat().st_mtime < settle
    except OSError:
        return True


# --------------------------------------------------------------------------
# capture
# --------------------------------------------------------------------------

def capture_dicom(home: NodeHome, *, store: FeatureStore | None = None,
                  summary: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Register new DICOM files in ``landing/dicom/`` as one batch per consented series.

    Parameters
    ----------
    summary : dict, optional
        Filled with the run's file accounting (``FileCounts.to_dict()``, with
        ``quarantine_reasons``, ``series`` and ``withdrawn_rows_deleted``).

    Returns
    -------
    list of dict
        One per new series batch: ``batch_id``, ``series`` (de-identified
        Series Instance UID), ``files``.  No raw identifier.
    """
    import pandas as pd

    from mipflow.node.ingest.pipeline import apply_withdrawals

    store = store or open_store(home)
    model = imaging_model(store)
    registry = resolve_consent(home, None)
    _drop_withdrawn_staging(home, store, registry, model)  # before their rows (the lookup) go
    withdrawn_deleted = apply_withdrawals(store, registry, home.key())
    engine = _engine(home)
    root = home.landing_dir / "dicom"
    counts = FileCounts()
    reasons: Counter = Counter()
    quarantined: list[tuple[Path, str, int, str, str]] = []  # (path, sha, size, reason, detail)
    series: dict[str, _Series] = {}
    with store.engine.connect() as conn:
        known = {r[0] for r in conn.execute(sa.select(files_table.c.sha256)
                                            .where(files_table.c.kind == KIND))}
    seen: set[str] = set()
    now = time.time()
    paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    from mipflow.node.imaging.deidentify import Quarantine

    for path in paths:
        counts.files_in += 1
        if _pending(path, home.settings.settle_seconds, now):
            counts.pending += 1
            continue
        try:
            size = path.stat().st_size
            sha = sha256_file(path)
        except OSError as exc:
            counts.pending += 1  # vanished or unreadable right now: retried next run
            log.warning("cannot read a landing file (%s); retried next run", type(exc).__name__)
            continue
        if sha in known or sha in seen:
            counts.known += 1
            continue
        seen.add(sha)
        if size == 0:
            quarantined.append((path, sha, size, Quarantine.EMPTY_FILE, "the file is empty (0 bytes)"))
            continue
        ds, reason, detail = _read_header(path)
        if ds is None:
            quarantined.append((path, sha, size, reason, detail))  # type: ignore[arg-type]
            continue
        raw_series = str(ds.SeriesInstanceUID).strip()
        pid = str(ds.get("PatientID", "") or "").strip()
        item = series.get(raw_series)
        if item is None:
            item = series[raw_series] = _Series(pseudo_uid=engine.new_uid(raw_series), pid_raw=pid)
        item.files.append((path, sha, size))

    # consent by the Patient ID in the header (series without one go on, to be quarantined by the engine)
    if registry is not None and series:
        pids = pd.Series([s.pid_raw for s in series.values()], dtype=object)
        granted = (registry.granted(pids) | pids.str.strip().eq("")).tolist()
        for (raw, item), ok in zip(list(series.items()), granted):
            if not ok:
                counts.no_consent += len(item.files)
                del series[raw]

    batches: list[dict[str, Any]] = []
    key = home.key()
    with store.begin() as conn:
        for item in series.values():
            shas = [sha for _, sha, _ in item.files]
            batch_id = _series_batch_id(item.pseudo_uid, shas)
            store.start_batch(conn, batch_id=batch_id, data_model=model.key,
                              source=f"dicom/{item.pseudo_uid}", sha256=_combined_sha(shas))
            store.update_batch(conn, batch_id, stage=STAGE_CAPTURED, rows_in=len(item.files))
            for path, sha, size in item.files:
                store.register_file(conn, sha256=sha, path=landing_path_key(key, root, path, kind=KIND),
                                    size=size, kind=KIND, batch_id=batch_id)
            batches.append({"batch_id": batch_id, "series": item.pseudo_uid, "files": len(item.files)})
        if quarantined:
            shas = [q[1] for q in quarantined]
            report_id = "q" + _combined_sha(shas)[:20]
            store.start_batch(conn, batch_id=report_id, data_model=model.key, source="dicom/capture",
                              sha256=_combined_sha(shas))
            store.quarantine(conn, report_id, "capture", [
                (n, reason, {"sha256": sha, "size": size, "detail": detail})
                for n, (_, sha, size, reason, detail) in enumerate(quarantined, start=1)])
            for path, sha, size, reason, _ in quarantined:
                store.register_file(conn, sha256=sha, path=landing_path_key(key, root, path, kind=KIND),
                                    size=size, kind=KIND, batch_id=report_id)
                reasons[reason] += 1
            store.update_batch(conn, report_id, stage=STAGE_CAPTURE_REPORT, status="quarantined",
                               rows_in=len(quarantined), quarantined=len(quarantined),
                               message="files quarantined at capture: " + ", ".join(
                                   f"{r} {n}" for r, n in sorted(reasons.items())),
                               finished_at=utcnow())
    counts.quarantined += len(quarantined)
    # the consented series' files are neither written nor quarantined yet: counted when de-identified
    captured_files = sum(b["files"] for b in batches)
    log.info("dicom capture: %d file(s), %d new series batch(es) with %d file(s), %d quarantined, "
             "%d without consent, %d known, %d pending", counts.files_in, len(batches), captured_files,
             counts.quarantined, counts.no_consent, counts.known, counts.pending)
    if summary is not None:
        summary.update(counts.to_dict())
        summary["captured"] = captured_files
        summary["conserved"] = counts.files_in == (captured_files + counts.quarantined + counts.no_consent
                                                   + counts.known + counts.pending)
        summary["series"] = len(batches)
        summary["quarantine_reasons"] = dict(reasons)
        summary["withdrawn_rows_deleted"] = withdrawn_deleted
    return batches


def _drop_withdrawn_staging(home: NodeHome, store: FeatureStore, registry: Any, model: DataModel) -> None:
    """Remove staged images of withdrawn patients (their rows go with ``apply_withdrawals``)."""
    if registry is None:
        return
    withdrawn = registry.withdrawn()
    if not withdrawn:
        return
    from mipflow.node.deid.pseudonyms import Pseudonymiser

    pseudo = Pseudonymiser(home.key())
    pids = sorted({pseudo.pseudonym(p) for p in withdrawn})
    table = store.model_table(model)
    with store.engine.connect() as conn:
        visits = [r[0] for start in range(0, len(pids), 500)
                  for r in conn.execute(sa.select(table.c._visit).where(table.c._pid.in_(pids[start:start + 500])))]
    for visit in visits:
        folder = dicom_staging(home) / visit
        if folder.parent == dicom_staging(home) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------
# de-identification
# --------------------------------------------------------------------------

def waiting_series(home: NodeHome, stage: str = STAGE_CAPTURED, *,
                   store: FeatureStore | None = None) -> list[str]:
    """Imaging batches that finished ``stage`` (oldest first); catches up after failed runs."""
    store = store or open_store(home)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(batches_table.c.batch_id).where(
            batches_table.c.stage == stage, batches_table.c.status == "running")
            .order_by(batches_table.c.started_at, batches_table.c.batch_id)).all()
    return [r[0] for r in rows]


def deidentify_series(home: NodeHome, series: str | dict[str, Any], *,
                      store: FeatureStore | None = None, engine: Any = None,
                      landing: dict[str, Path] | None = None) -> dict[str, Any]:
    """De-identify the files of one series batch into ``staging/dicom/<series>/``.

    Parameters
    ----------
    series : str or dict
        A batch id or a batch dict from :func:`capture_dicom`.
    landing : dict, optional
        :func:`landing_index` of the landing folder (built when not given;
        pass it when de-identifying many batches).  A file no longer found
        there, or whose content hash changed since capture, is quarantined
        (``missing-after-capture``, ``changed-after-capture``); a changed file
        is captured anew by the next capture run.

    Returns
    -------
    dict
        ``batch_id``, ``series``, ``files_in``, ``written``, ``quarantined``,
        ``reasons``, ``patient_pseudonym``, ``status``; JSON-able, no raw identifier.
    """
    store = store or open_store(home)
    batch_id = series if isinstance(series, str) else series["batch_id"]
    batch = store.batch(batch_id)
    pseudo_series = batch["source"].split("/", 1)[1]
    out = {"batch_id": batch_id, "series": pseudo_series, "files_in": int(batch["rows_in"]),
           "written": 0, "quarantined": 0, "reasons": {}, "patient_pseudonym": None}
    if batch["stage"] != STAGE_CAPTURED or batch["status"] != "running":  # done already: idempotent
        out.update(written=int(batch["loaded"]), quarantined=int(batch["quarantined"]),
                   status=batch["status"], stage=batch["stage"])
        return out
    with store.engine.connect() as conn:
        files = conn.execute(sa.select(files_table.c.path, files_table.c.sha256)
                             .where(files_table.c.batch_id == batch_id)
                             .order_by(files_table.c.sha256)).all()
    engine = engine or _engine(home)
    if landing is None:
        landing = landing_index(home)
    target = dicom_staging(home) / pseudo_series
    target.mkdir(parents=True, exist_ok=True)
    reasons: Counter = Counter()
    entries: list[tuple[int, str, dict[str, Any]]] = []
    pseudonyms: set[str] = set()
    for n, (path_key, sha) in enumerate(files, start=1):
        path = landing.get(path_key)
        moved = None
        if path is None:
            moved = (MISSING_AFTER_CAPTURE, "the file left the landing folder after capture")
        else:
            try:
                if sha256_file(path) != sha:
                    moved = (CHANGED_AFTER_CAPTURE, "the file's content changed after capture; "
                                                    "the new content is captured by the next run")
            except OSError as exc:
                moved = (MISSING_AFTER_CAPTURE, f"the file cannot be read ({type(exc).__name__})")
        if moved is not None:
            reasons[moved[0]] += 1
            entries.append((n, moved[0], {"sha256": sha, "detail": moved[1]}))
            log.info("batch %s: file sha256:%s quarantined: %s", batch_id, sha, moved[0])
            continue
        fd, tmp = tempfile.mkstemp(prefix=".in-", suffix=".dcm", dir=target)
        os.close(fd)
        try:
            outcome = engine.file(path, tmp)
            if outcome.reason is None and outcome.sop_instance_uid:
                os.replace(tmp, target / f"{outcome.sop_instance_uid}.dcm")
                out["written"] += 1
                if outcome.patient_pseudonym:
                    pseudonyms.add(outcome.patient_pseudonym)
                if outcome.series_uid and outcome.series_uid != pseudo_series:
                    log.warning("batch %s: an instance's de-identified series UID differs from the batch's",
                                batch_id)
            else:
                reason = outcome.reason or "processing-error"
                reasons[reason] += 1
                entries.append((n, reason, {"sha256": sha, "detail": outcome.detail}))
            outcome.dataset = None  # drop the pixels now: one instance in memory at a time
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    out["quarantined"] = len(entries)
    out["reasons"] = dict(reasons)
    if len(pseudonyms) == 1:
        out["patient_pseudonym"] = next(iter(pseudonyms))
    elif len(pseudonyms) > 1:
        log.warning("batch %s: one series holds instances of %d patients", batch_id, len(pseudonyms))
    if not any(target.iterdir()):
        target.rmdir()
    with store.begin() as conn:
        store.quarantine(conn, batch_id, "deidentify", entries)
        if out["written"]:
            store.update_batch(conn, batch_id, stage=STAGE_DEIDENTIFIED, loaded=out["written"],
                               quarantined=out["quarantined"])
            out["status"] = "running"
        else:
            message = "every file quarantined: " + ", ".join(f"{r} {c}" for r, c in sorted(reasons.items()))
            store.update_batch(conn, batch_id, stage=STAGE_DEIDENTIFIED, status="failed", loaded=0,
                               quarantined=out["quarantined"], message=message, finished_at=utcnow())
            out["status"] = "failed"
    out["stage"] = STAGE_DEIDENTIFIED
    return out


def deidentify_many(home: NodeHome, batch_ids: Iterable[str]) -> list[dict[str, Any]]:
    """De-identify several series batches with one engine (one mapped task's chunk)."""
    store = open_store(home)
    engine = _engine(home)
    landing = landing_index(home)
    return [deidentify_series(home, b, store=store, engine=engine, landing=landing) for b in batch_ids]


def chunked(items: list[str], max_chunks: int = 256) -> list[list[str]]:
    """Split ``items`` into at most ``max_chunks`` lists of consecutive items (for task mapping)."""
    if not items:
        return []
    size = -(-len(items) // max_chunks)
    return [items[i:i + size] for i in range(0, len(items), size)]


# --------------------------------------------------------------------------
# features and load
# --------------------------------------------------------------------------

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
            "files": totals.to_dict(), "dataset": dataset, "data_model": model.key}


def run_imaging(home: NodeHome, *, dataset: str | None = None,
                store: FeatureStore | None = None) -> dict[str, Any]:
    """The whole chain in one call (CLI, tests): capture, de-identify, load; with file accounting."""
    store = store or open_store(home)
    summary: dict[str, Any] = {}
    captured = {b["batch_id"] for b in capture_dicom(home, store=store, summary=summary)}
    engine = _engine(home)
    landing = landing_index(home)
    done = [deidentify_series(home, b, store=store, engine=engine, landing=landing)
            for b in waiting_series(home, STAGE_CAPTURED, store=store)]
    outcomes = [o for o in done if o["batch_id"] in captured]  # earlier runs' batches are caught up too
    result = extract_and_load(home, pending_outcomes(home, store=store), dataset=dataset, store=store)
    counts = FileCounts(files_in=summary["files_in"], quarantined=summary["quarantined"],
                        no_consent=summary["no_consent"], known=summary["known"], pending=summary["pending"])
    for outcome in outcomes:
        counts.written += outcome["written"]
        counts.quarantined += outcome["quarantined"]
    reasons: Counter = Counter(summary["quarantine_reasons"])
    for outcome in outcomes:
        reasons.update(outcome.get("reasons", {}))
    return {"files": counts.to_dict(), "equation": counts.equation(), "reasons": dict(reasons),
            "series": summary["series"], "loaded": result["loaded"], "failed": result["failed"],
            "caught_up": len(done) - len(outcomes),
            "withdrawn_rows_deleted": summary["withdrawn_rows_deleted"]}
