"""The imaging capture stage: new DICOM files of ``landing/dicom/``, one batch per consented series.

:func:`capture_dicom` scans ``landing/dicom/`` recursively, hashes every settled file (SHA-256)
and skips the ones the manifest already holds.  The manifest (``mipflow_files``) keeps the content
hash and a keyed hash of the path relative to ``landing/dicom/``
(:func:`mipflow.node.files.landing_path_key`, HMAC-SHA256 with the node key), never the path
itself: file and folder names often carry patient names.  Only headers are read
(``stop_before_pixels``), to group instances by Study/Series Instance UID and to apply the consent
registry by the Patient ID in the header.  Files that are empty, not DICOM, unreadable, a DICOMDIR
or without a Series Instance UID are quarantined at once; files of patients without consent are
counted and left alone (not registered, so they are taken up once consent is granted).  Every
consented series becomes one batch (:mod:`mipflow.node.imaging.stages`) and its files are
registered in the manifest under that batch.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa

from mipflow.node.files import landing_path_key
from mipflow.node.home import NodeHome
from mipflow.node.imaging.stages import (
    KIND,
    STAGE_CAPTURE_REPORT,
    STAGE_CAPTURED,
    FileCounts,
    dicom_staging,
    imaging_model,
    node_deidentifier,
)
from mipflow.node.ingest.capture import resolve_consent, sha256_file
from mipflow.node.store.feature_store import FeatureStore, open_store, utcnow
from mipflow.node.store.tables import files_table
from mipflow.protocol.datamodel import DataModel

log = logging.getLogger(__name__)

#: Below ``landing/dicom/``: the instances the PACS pull downloads (:mod:`mipflow.node.imaging.pacs`).
PACS_FOLDER = "pacs"
_IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart")
_HEADER_TAGS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "SOPClassUID", "Modality", "DirectoryRecordSequence")


@dataclass
class _Series:
    pseudo_uid: str
    pid_raw: str
    files: list[tuple[Path, str, int]] = field(default_factory=list)  # (path, sha256, size)


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

    from mipflow.node.imaging.quarantine import DICOMDIR_SOP_CLASS, Quarantine

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
    if meta_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return None, Quarantine.DICOMDIR, "a DICOMDIR (media directory), not an instance"
    if not str(ds.get("SeriesInstanceUID", "") or "").strip() or not ds.get("SOPInstanceUID"):
        return None, Quarantine.NOT_AN_INSTANCE, "no Series or SOP Instance UID: not a composite instance"
    return ds, None, None


def _pending(path: Path, settle: float, now: float, pacs_root: Path | None = None) -> bool:
    if path.name.startswith(".") or path.suffix.lower() in _IGNORED_SUFFIXES:
        return True
    if pacs_root is not None and pacs_root in path.parents:
        return False  # written by the PACS pull itself, whole files renamed into place
    try:
        return settle > 0 and now - path.stat().st_mtime < settle
    except OSError:
        return True


def capture_dicom(home: NodeHome, *, store: FeatureStore | None = None,
                  summary: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Register new DICOM files in ``landing/dicom/`` as one batch per consented series.

    Parameters
    ----------
    summary : dict, optional
        Filled with the run's file accounting (``FileCounts.to_dict()``, with
        ``quarantine_reasons``, ``quarantine_batch`` (the batch id of this run's quarantined files,
        or None), ``series`` and ``withdrawn_rows_deleted``).

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
    engine = node_deidentifier(home)
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
    from mipflow.node.imaging.quarantine import Quarantine

    for path in paths:
        counts.files_in += 1
        if _pending(path, home.settings.settle_seconds, now, root / PACS_FOLDER):
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
        summary["quarantine_batch"] = report_id if quarantined else None
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
