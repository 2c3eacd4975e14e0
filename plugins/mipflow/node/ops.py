"""Node operations shared by the CLI and the node DAGs (no Airflow imports).

Landing conventions: ``landing/<source>/*.csv`` is read with the source
profile ``profiles/<source>.json``; CSV files directly in ``landing/`` (or in a
folder without a profile) use the default profile (MIP CSV layout).  The data
model comes from the profile's ``data_model`` or, failing that, the node
setting ``default_data_model``.

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

from mipflow.node.ingest.capture import ConsentRegistry, open_registry, scan_landing
from mipflow.node.home import NodeHome
from mipflow.protocol.datamodel import DataModel, load_data_model
from mipflow.exceptions import ConfigError, ProfileError
from mipflow.node.files import DICOM_KIND, EHR_KIND, below, file_label, file_ref, landing_path_key, path_index
from mipflow.node.ingest.pipeline import BatchCounts, BatchResult, apply_withdrawals, ingest_file
from mipflow.node.ingest.profile import SourceProfile, default_profile
from mipflow.node.store import FeatureStore, files_table

log = logging.getLogger(__name__)


def open_store(home: NodeHome) -> FeatureStore:
    """The node's feature store; the first open rewrites raw landing paths of older stores.

    See :meth:`~mipflow.node.store.FeatureStore.migrate_path_names` (one primary-key
    lookup once done).
    """
    store = FeatureStore(home.db_url)
    if not store.path_names_migrated():
        changed = store.migrate_path_names(home.key(), home.landing_dir, home.profiles_dir)
        if changed:
            log.info("feature store: %d manifest entries and batch records renamed to keyed path hashes "
                     "and file references", changed)
    return store


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


def resolve_profile(home: NodeHome, profile: str | Path | None, source: str | None = None) -> SourceProfile:
    """The profile named, else ``profiles/<source>.json`` when it exists, else the default."""
    if profile is not None:
        return SourceProfile.load(profile)
    if source:
        candidate = home.profiles_dir / f"{source}.json"
        if candidate.is_file():
            return SourceProfile.load(candidate)
    return default_profile()


def resolve_consent(home: NodeHome, consent: str | Path | None) -> ConsentRegistry | None:
    """The registry named, else ``HOME/consent.csv`` when present, else ``None`` (all consented)."""
    if consent is not None:
        return open_registry(consent)
    if home.consent_path.is_file():
        return open_registry(home.consent_path)
    return None


def resolve_model(home: NodeHome, store: FeatureStore, data_model: str | None,
                  profile: SourceProfile) -> DataModel:
    key = data_model or profile.data_model or home.settings.default_data_model
    if not key:
        raise ConfigError("no data model given: pass --data-model CODE:VERSION, set 'data_model' in the "
                          "source profile, or set the node setting default_data_model")
    if profile.data_model and data_model and profile.data_model != data_model:
        raise ProfileError(f"profile is for data model {profile.data_model}, not {data_model}")
    return store.data_model(key)


def summarise(home: NodeHome, results: list[BatchResult], withdrawn_deleted: int) -> dict[str, Any]:
    totals = BatchCounts()
    for result in results:
        for field in ("rows_in", "loaded", "quarantined", "no_consent", "duplicates"):
            setattr(totals, field, getattr(totals, field) + getattr(result.counts, field))
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
                           consent=registry, settings=home.settings, force=force, landing=home.landing_dir)
               for path in files]
    for result in results:
        log.info("%s: %s (%s) %s", file_label(result.file), result.status, result.message,
                 result.counts.equation())
    return summarise(home, results, deleted)


def landing_source(home: NodeHome, path: Path) -> str | None:
    """The landing source of a file: its first folder below ``landing/`` when ``profiles/<it>.json`` exists.

    A folder without a profile is read with the default profile and is no
    source: its name (which may be a patient's) is never stored.
    """
    rel = path.relative_to(home.landing_dir).parts
    if len(rel) > 1 and (home.profiles_dir / f"{rel[0]}.json").is_file():
        return rel[0]
    return None


def landing_sources(home: NodeHome, store: FeatureStore) -> list[dict[str, Any]]:
    """New files in the landing folder with their source (for the capture DAG).

    Each item has ``path`` (for this process only: never log, store or return
    it from a task), ``key`` (the manifest's path key), ``file`` (the
    reference), ``sha256``, ``size``, ``status`` and ``source``.
    """
    found, skipped = scan_landing(home.landing_dir, store, settle_seconds=home.settings.settle_seconds)
    key = home.key()
    items = []
    for item in found:
        path_key = landing_path_key(key, home.landing_dir, item.path, kind=EHR_KIND)
        items.append({"path": str(item.path), "key": path_key, "file": file_ref(path_key), "sha256": item.sha256,
                      "size": item.size, "status": item.status, "source": landing_source(home, item.path)})
    for item in skipped:
        path_key = landing_path_key(key, home.landing_dir, item.path, kind=EHR_KIND)
        items.append({"path": str(item.path), "key": path_key, "file": file_ref(path_key), "sha256": "",
                      "size": 0, "status": "skipped", "reason": item.reason, "source": None})
    return items


def landing_csv_files(home: NodeHome) -> list[Path]:
    """Every file below ``landing/`` outside ``landing/dicom/`` (the EHR side of the landing folder)."""
    root = home.landing_dir
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "dicom")


def landing_index(home: NodeHome) -> dict[str, Path]:
    """Path key -> path of every EHR landing file (to find a manifest entry's file again)."""
    return path_index(home.key(), home.landing_dir, landing_csv_files(home), kind=EHR_KIND)


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
                                   source=item["source"]))
    return summarise(home, results, deleted)


def node_status(home: NodeHome, store: FeatureStore | None = None) -> dict[str, Any]:
    store = store or open_store(home)
    return {
        "node": home.name,
        "store": redact_url(home.db_url),
        "data_models": [m.key for m in store.data_models()],
        "datasets": store.datasets(),
        "batches": [{k: b[k] for k in ("batch_id", "source", "data_model", "status", "rows_in", "loaded",
                                       "quarantined", "no_consent", "duplicates", "message")}
                    for b in store.batches()],
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
