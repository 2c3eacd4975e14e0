"""Node operations the CLI calls (no Airflow imports): add a data model, ingest, landing runs, status.

Landing conventions: ``landing/<source>/*.csv`` is read with the source
profile ``profiles/<source>.json``; CSV files directly in ``landing/`` (or in a
folder without a profile) use the default profile (MIP CSV layout).  The data
model comes from the profile's ``data_model`` or, failing that, the node
setting ``default_data_model``.  The helpers that apply them, shared with the
node DAGs' stages, sit below this module: :func:`mipflow.node.ingest.capture.landing_sources`,
:func:`mipflow.node.ingest.capture.resolve_consent`, :func:`mipflow.node.ingest.profile.resolve_profile`,
:func:`mipflow.node.ingest.profile.resolve_model` and :func:`mipflow.node.store.feature_store.open_store`.

File and folder names of exports can carry patient names: the store, the
results and the log lines name a file by its reference only
(:mod:`mipflow.node.files`); :func:`file_references` maps references back to
paths for the node admin's console.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa

from mipflow.node.ingest.capture import landing_csv_files, landing_sources, resolve_consent
from mipflow.node.home import NodeHome
from mipflow.protocol.datamodel import DataModel, load_data_model
from mipflow.node.files import DICOM_KIND, EHR_KIND, below, file_label, file_ref, landing_path_key
from mipflow.failures import notify_file
from mipflow.node.ingest.pipeline import COUNT_FIELDS, BatchCounts, BatchResult, apply_withdrawals, ingest_file
from mipflow.node.ingest.profile import resolve_model, resolve_profile
from mipflow.node.store.feature_store import FeatureStore, open_store
from mipflow.node.store.tables import files_table

log = logging.getLogger(__name__)


def add_data_model(home: NodeHome, path: str | Path, store: FeatureStore | None = None) -> DataModel:
    """Register a CDE data model at the node (copy in ``data_models/`` and a table in the store)."""
    model = load_data_model(path)
    store = store or open_store(home)
    store.add_data_model(model)
    target = home.data_models_dir / f"{model.code}_{model.version}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(path).resolve() != target.resolve():
        shutil.copyfile(path, target)
    return model


def summarise(home: NodeHome, results: list[BatchResult], withdrawn_deleted: int) -> dict[str, Any]:
    totals = BatchCounts()
    for result in results:
        totals.add(result.counts)
    return {
        "node": home.name,
        "files": [r.to_dict() for r in results],
        "totals": {**totals.__dict__, "conserved": totals.conserved},
        "withdrawn_rows_deleted": withdrawn_deleted,
        "failed_files": sum(r.status == "failed" for r in results),
        "held_batches": sum(r.status == "held" for r in results),
    }


def ingest(home: NodeHome, files: Iterable[str | Path], *, data_model: str | None = None,
           profile: str | Path | None = None, consent: str | Path | None = None,
           force: bool = False, store: FeatureStore | None = None) -> dict[str, Any]:
    """Ingest files synchronously (what ``mipflow ingest`` does); returns a JSON-able summary."""
    store = store or open_store(home)
    source_profile = resolve_profile(home, profile)
    registry = resolve_consent(home, consent)
    model = resolve_model(home, store, data_model, source_profile)
    deleted = apply_withdrawals(store, registry, home.key())
    results = [ingest_file(path, store=store, model=model, profile=source_profile, key=home.key(),
                           consent=registry, settings=home.settings, force=force, landing=home.landing_dir,
                           notify=notify_file(str(home.root)))
               for path in files]
    for result in results:
        log.info("%s: %s (%s) %s", file_label(result.file), result.status, result.message,
                 result.counts.equation())
    refresh_snapshots(home, store)
    return summarise(home, results, deleted)


def file_references(home: NodeHome, paths: Iterable[str | Path] = (),
                    store: FeatureStore | None = None) -> list[dict[str, Any]]:
    """File references with their local paths: for the node admin's console only, never a log.

    Parameters
    ----------
    paths : iterable of path, optional
        Files to name (e.g. given to ``mipflow ingest``); default: every file
        below ``landing/`` (imaging files below ``landing/dicom/`` included).

    Returns
    -------
    list of dict
        ``file`` (reference), ``kind``, ``path``, and ``batches``: the batch
        ids the manifest holds under this path (any content version).
    """
    store = store or open_store(home)
    key = home.key()
    dicom_root = home.landing_dir / "dicom"
    listed = [Path(p) for p in paths] if paths else [*landing_csv_files(home), *(
        sorted(p for p in dicom_root.rglob("*") if p.is_file()) if dicom_root.is_dir() else [])]
    with store.engine.connect() as conn:
        manifest: dict[str, list[str]] = {}
        for row in conn.execute(sa.select(files_table.c.path, files_table.c.batch_id)):
            manifest.setdefault(row.path, []).append(row.batch_id or "")
    out = []
    for path in listed:
        dicom = below(dicom_root, path) is not None
        kind = DICOM_KIND if dicom else EHR_KIND
        path_key = landing_path_key(key, dicom_root if dicom else home.landing_dir, path, kind=kind)
        out.append({"file": file_ref(path_key), "kind": kind, "path": str(path),
                    "batches": sorted(manifest.get(path_key, []))})
    return out


def run_landing(home: NodeHome, *, consent: str | Path | None = None,
                store: FeatureStore | None = None) -> dict[str, Any]:
    """Ingest every new landing file with its source's profile (one pass per file)."""
    store = store or open_store(home)
    registry = resolve_consent(home, consent)
    deleted = apply_withdrawals(store, registry, home.key())
    results: list[BatchResult] = []
    for item in landing_sources(home, store):
        if item["status"] != "new" and item["status"] != "empty":
            if item["status"] == "skipped":
                results.append(BatchResult(source=item["file"], file=item["file"], sha256="", status="skipped",
                                           message=item["reason"]))
            continue
        profile = resolve_profile(home, None, item["source"])
        model = resolve_model(home, store, None, profile)
        results.append(ingest_file(item["path"], store=store, model=model, profile=profile, key=home.key(),
                                   consent=registry, settings=home.settings, landing=home.landing_dir,
                                   source=item["source"], notify=notify_file(str(home.root))))
    refresh_snapshots(home, store)
    return summarise(home, results, deleted)


def ingest_db(home: NodeHome, *, source: str | None = None, connections: Any = None) -> dict[str, Any]:
    """Extract, depersonalise, validate and load what changed at the node's database sources, now.

    The stages the node DAGs run (:mod:`mipflow.node.ingest.stages`), one after
    the other: first every database batch a crashed or failed run left in the
    chain, then a new batch per source that changed since its committed
    watermark.  Re-running after a crash therefore finishes the batch in flight
    (the watermark moved only if its load committed) and loads nothing twice.

    Parameters
    ----------
    source : str, optional
        Just this source (``profiles/<source>.json``); default every profile with a ``database`` section.
    connections : callable, optional
        Resolves ``airflow_conn_id`` connections (default: Airflow's ``AIRFLOW_CONN_<ID>`` variables).

    Returns
    -------
    dict
        Per batch its status and row accounting (``rows_in = loaded + quarantined + no_consent +
        duplicates``) and the rows deleted at the source; the sources without changes; problems.
    """
    from mipflow.node.ingest import stages

    store = open_store(home)
    results: dict[str, dict[str, Any]] = {}

    def run_chain(batch_ids: Iterable[str], first: str) -> None:
        order = ("depersonalise", "validate", "load")
        for batch_id in batch_ids:
            for stage in order[order.index(first):]:
                if stage == "depersonalise":
                    result = stages.depersonalise(home, batch_id, connections=connections)
                else:
                    result = getattr(stages, stage)(home, batch_id)
                if result.get("status") != "running":
                    break
            results[batch_id] = result

    def ours(batch_id: str) -> bool:
        extract = stages.db_extract(store, batch_id)
        return extract is not None and (source is None or extract["source"] == source)

    for after, first in (("capture", "depersonalise"), ("depersonalise", "validate"), ("validate", "load")):
        run_chain([b for b in stages.waiting(store, after) if ours(b)], first)  # left by a crashed run
    summary = stages.capture(home, connections=connections, landing=False, only=source)
    run_chain(summary["captured"], "depersonalise")
    if results:
        refresh_snapshots(home, store)
    batches = []
    totals = BatchCounts()
    for batch_id in results:
        batch = store.batch(batch_id)
        extract = stages.db_extract(store, batch_id) or {}
        counts = BatchCounts.from_record(batch)
        totals.add(counts)
        batches.append({"batch_id": batch_id, "source": extract.get("source"), "status": batch["status"],
                        "message": batch["message"], **counts.__dict__, "conserved": counts.conserved,
                        "deleted": int(extract.get("deleted") or 0)})
    return {"node": home.name, "batches": batches, "totals": {**totals.__dict__, "conserved": totals.conserved},
            "unchanged_sources": summary["unchanged_sources"], "problems": summary["problems"],
            "withdrawn_rows_deleted": summary["withdrawn_rows_deleted"],
            "failed_batches": sum(b["status"] in ("failed", "empty") for b in batches),
            "held_batches": sum(b["status"] == "held" for b in batches)}


def refresh_snapshots(home: NodeHome, store: FeatureStore | None = None) -> dict[str, int]:
    """Write the columnar snapshot of every data model whose rows changed (ADR 0049), as a load's last step.

    The node API writes a stale snapshot itself at its next keyed read; writing it here, after the
    load, keeps that work off the first analysis (PostgreSQL too: its streamed reads, ADR 0062).  Nothing
    to do with the ``columnar_snapshot`` setting off.  A failure is logged (its type only) and left to the node's
    next read: the load itself has committed.

    Returns
    -------
    dict
        Rows per data model whose snapshot is current.
    """
    from mipflow.node.controls.differencing import hash_key
    from mipflow.node.query.snapshot import current_snapshot

    if not home.settings.columnar_snapshot:
        return {}
    store = store or open_store(home)
    if store.dialect not in ("sqlite", "postgresql"):
        return {}
    key = hash_key(home.key())
    out: dict[str, int] = {}
    for model in store.data_models():
        try:
            snapshot = current_snapshot(store, model, key)
        except Exception as exc:  # noqa: BLE001 - the node writes it at its next read instead
            log.warning("columnar snapshot of %s not written (%s); the node writes it at its next read",
                        model.key, type(exc).__name__)
            continue
        if snapshot is not None:
            out[model.key] = snapshot.rows
    return out


def node_status(home: NodeHome, store: FeatureStore | None = None) -> dict[str, Any]:
    """Data models, datasets, batches, and the secure-aggregation trust policy (labelled) with the
    peers accepted now (:func:`mipflow.secagg.trust.summary`)."""
    from mipflow.secagg.trust import summary as trust_summary

    store = store or open_store(home)
    return {
        "node": home.name,
        "store": redact_url(home.db_url),
        "data_models": [m.key for m in store.data_models()],
        "datasets": store.datasets(),
        "batches": [{k: b[k] for k in ("batch_id", "source", "data_model", "status", *COUNT_FIELDS, "message")}
                    for b in store.batches()],
        "secure_aggregation": trust_summary(home.root),
    }


def redact_url(url: str) -> str:
    """Hide a password in a database URL."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # pragma: no cover - invalid URL is reported elsewhere
        return "<invalid url>"


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, default=str)
