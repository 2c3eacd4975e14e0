"""The imaging de-identification stage: the files of one captured series into ``staging/dicom/``.

:func:`deidentify_series` de-identifies the files of one series batch (PS3.15 Annex E, the node's
:class:`~mipflow.node.imaging.options.DeidOptions`) into
``staging/dicom/<de-identified series UID>/<de-identified SOP UID>.dcm``, one file at a time
(bounded memory); failures are quarantined with their reason.  Staging never holds a raw
identifier, not even in a file name.  It finds a batch's files again by the keyed hash of their
landing path (:func:`landing_index`) and checks their content hash before reading them.
:func:`deidentify_many` and :func:`chunked` serve the DAG's mapped tasks.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa

from mipflow.node.files import path_index
from mipflow.node.home import NodeHome
from mipflow.node.imaging.stages import (
    KIND,
    STAGE_CAPTURED,
    STAGE_DEIDENTIFIED,
    dicom_staging,
    node_deidentifier,
)
from mipflow.node.ingest.capture import sha256_file
from mipflow.node.store.feature_store import FeatureStore, open_store, utcnow
from mipflow.node.store.tables import files_table

log = logging.getLogger(__name__)

#: Quarantine reasons of files that changed between capture and de-identification.
MISSING_AFTER_CAPTURE = "missing-after-capture"
CHANGED_AFTER_CAPTURE = "changed-after-capture"
#: ``message`` of a batch another run had already de-identified (not this run's outcome, nor its failure).
NOT_WAITING = "not waiting for de-identification"


def landing_index(home: NodeHome) -> dict[str, Path]:
    """Keyed path hash -> path of every file under ``landing/dicom/``."""
    root = home.landing_dir / "dicom"
    if not root.is_dir():
        return {}
    return path_index(home.key(), root, (p for p in root.rglob("*") if p.is_file()), kind=KIND)


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
        ``reasons``, ``patient_pseudonym``, ``status``; JSON-able, no raw identifier.  A batch
        no longer waiting (another run de-identified it) comes back as recorded, with
        ``message`` :data:`NOT_WAITING`.
    """
    store = store or open_store(home)
    batch_id = series if isinstance(series, str) else series["batch_id"]
    batch = store.batch(batch_id)
    pseudo_series = batch["source"].split("/", 1)[1]
    out = {"batch_id": batch_id, "series": pseudo_series, "files_in": int(batch["rows_in"]),
           "written": 0, "quarantined": 0, "reasons": {}, "patient_pseudonym": None}
    if batch["stage"] != STAGE_CAPTURED or batch["status"] != "running":  # done already: idempotent
        out.update(written=int(batch["loaded"]), quarantined=int(batch["quarantined"]),
                   status=batch["status"], stage=batch["stage"], message=NOT_WAITING)
        return out
    with store.engine.connect() as conn:
        files = conn.execute(sa.select(files_table.c.path, files_table.c.sha256)
                             .where(files_table.c.batch_id == batch_id)
                             .order_by(files_table.c.sha256)).all()
    engine = engine or node_deidentifier(home)
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
    engine = node_deidentifier(home)
    landing = landing_index(home)
    return [deidentify_series(home, b, store=store, engine=engine, landing=landing) for b in batch_ids]


def chunked(items: list[str], max_chunks: int = 256) -> list[list[str]]:
    """Split ``items`` into at most ``max_chunks`` lists of consecutive items (for task mapping)."""
    if not items:
        return []
    size = -(-len(items) // max_chunks)
    return [items[i:i + size] for i in range(0, len(items), size)]
