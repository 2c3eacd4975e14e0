"""The pipeline split into stages for the node DAGs (one DAG per stage, chained by Assets).

Each stage works on every batch waiting at the stage before it, so a DAG run
triggered by an Asset event also catches up on batches left behind by a
failed run, and a re-run does nothing twice.

``capture``        register new landing files (manifest, batch records); delete withdrawn patients;
                   for each database source, the watermark range changed since the last load
``depersonalise``  read the landing file (or the database range), keep consented rows,
                   depersonalise -> staging file (deleted rows' keys, pseudonymised, beside it)
``validate``       harmonise and validate -> staging file; quarantine; hold a bad batch
``load``           upsert into the feature store in one transaction; datasets registry; a database
                   batch's deletions and its source's watermark in the same transaction

Staging files never hold direct identifiers: the raw export stays in
``landing/`` and the first staging file is already depersonalised.  Nor do
batch records, task results or log lines name a landing file: the manifest
keeps a keyed hash of its path, the rest its reference (:mod:`mipflow.node.files`);
the depersonalise stage finds the file again by that hash.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import sqlalchemy as sa

from mipflow.node.home import NodeHome
from mipflow.exceptions import InputFileError, MipflowError
from mipflow.node.files import EHR_KIND, file_label, file_ref
from mipflow.node.ingest.capture import landing_index, landing_sources, resolve_consent
from mipflow.node.ingest.profile import SourceProfile, database_profiles, resolve_model, resolve_profile
from mipflow.node.ingest.outcome import (account_load, decide_status, held_message, identity_notice,
                                       notify_identity_changed)
from mipflow.node.ingest.pipeline import (HEADER_ONLY, ROW_COLUMN, BatchCounts, ChunkProcessor, MalformedCSV,
                              apply_withdrawals, batch_id_for, merge_summaries)
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.ingest.progress import Progress, estimate_rows
from mipflow.node.store.feature_store import FeatureStore, open_store, utcnow
from mipflow.node.store.tables import batches_table, db_extracts_table, quarantine_table, watermarks_table

if TYPE_CHECKING:  # pragma: no cover
    from mipflow.node.ingest.database import ConnectionResolver

log = logging.getLogger(__name__)

STAGES = ("capture", "depersonalise", "validate", "load")
#: Batch statuses that end a batch without loading it: the DAG task that reaches one fails.
FAILED_STATUSES = ("failed", "held", "empty")
EMPTY_FILE = "empty file (0 bytes): nothing to ingest; re-export it"
NOT_WAITING = "not waiting for this stage"


def failure_message(result: dict[str, Any]) -> str | None:
    """What to fix when a stage left a batch failed, held or empty (``None`` otherwise).

    The message names the batch and repeats the stage's reason (which names
    the file by reference only and carries no row data).
    """
    if result.get("status") not in FAILED_STATUSES or result.get("message") == NOT_WAITING:
        return None  # a batch another run already finished is not this run's failure
    return f"batch {result.get('batch_id')} {result['status']}: {result.get('message') or 'no reason recorded'}"


def _processor(home: NodeHome, store: FeatureStore, batch: dict[str, Any]) -> ChunkProcessor:
    source = batch["source"].split("/")[0] if "/" in batch["source"] else None
    profile = resolve_profile(home, None, source)
    model = store.data_model(batch["data_model"])
    return ChunkProcessor(model, profile, Pseudonymiser(home.key()), resolve_consent(home, None),
                          home.settings)


def _counts(batch: dict[str, Any]) -> BatchCounts:
    return BatchCounts.from_record(batch)


def _identity_columns(home: NodeHome, batch: dict[str, Any], model: Any) -> tuple[str, ...]:
    """The batch's identifying-derived columns (its source's profile, :meth:`SourceProfile.identity_derived_columns`)."""
    source = batch["source"].split("/")[0] if "/" in batch["source"] else None
    profile = resolve_profile(home, None, source)
    return tuple(c for c in profile.identity_derived_columns() if c in model)


def _staging(home: NodeHome, batch_id: str) -> Path:
    path = home.staging_dir / batch_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def waiting(store: FeatureStore, stage: str) -> list[str]:
    """Batches that finished ``stage`` and wait for the next one."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(batches_table.c.batch_id).where(
            batches_table.c.stage == stage, batches_table.c.status == "running")
            .order_by(batches_table.c.started_at)).all()
    return [r[0] for r in rows]


def _fail(store: FeatureStore, batch_id: str, message: str) -> dict[str, Any]:
    store.update_batch(None, batch_id, status="failed", message=message, finished_at=utcnow(),
                       **asdict(BatchCounts()))
    log.warning("batch %s failed: %s", batch_id, message)
    return {"batch_id": batch_id, "status": "failed", "message": message}


def capture(home: NodeHome, *, connections: "ConnectionResolver | None" = None, landing: bool = True,
            databases: bool = True, only: str | None = None) -> dict[str, Any]:
    """Register new landing files and database changes as batches; delete rows of withdrawn patients.

    Parameters
    ----------
    connections : callable, optional
        Resolves a database profile's ``airflow_conn_id`` to its URL (the DAG passes Airflow's).
    landing, databases : bool
        Capture the landing folder, the database sources (both by default).
    only : str, optional
        Just this database source.
    """
    store = open_store(home)
    registry = resolve_consent(home, None)
    deleted = apply_withdrawals(store, registry, home.key())
    batches, skipped, problems = [], [], []
    unchanged: list[str] = []
    for item in (landing_sources(home, store) if landing else ()):
        if item["status"] == "skipped":
            skipped.append({"file": item["file"], "reason": item["reason"]})
            continue
        if item["status"] == "known":
            continue
        source_name = f"{item['source']}/{item['file']}" if item["source"] else item["file"]
        try:
            profile = resolve_profile(home, None, item["source"])
            model = resolve_model(home, store, None, profile)
        except MipflowError as exc:
            skipped.append({"file": item["file"], "reason": str(exc)})
            problems.append(f"{file_label(item['file'])}: {exc}")
            continue
        batch_id = batch_id_for(item["sha256"], model.key)
        with store.begin() as conn:
            store.register_file(conn, sha256=item["sha256"], path=item["key"], size=item["size"],
                                kind=EHR_KIND, batch_id=batch_id)
            store.start_batch(conn, batch_id=batch_id, data_model=model.key, source=source_name,
                              sha256=item["sha256"])
            if item["status"] == "empty":
                message = f"{file_label(item['file'])}: {EMPTY_FILE}"
                store.update_batch(conn, batch_id, status="empty", message=message, finished_at=utcnow())
                problems.append(message)
        batches.append(batch_id)
    if databases:
        profiles, profile_problems = database_profiles(home, only)
        problems += profile_problems
        for profile in profiles:
            try:
                model = resolve_model(home, store, None, profile)
                batch_id = capture_database(home, store, profile, model.key, connections)
            except MipflowError as exc:
                problems.append(str(exc))
                continue
            if batch_id is None:
                unchanged.append(profile.source)
            else:
                batches.append(batch_id)
    return {"node": home.name, "captured": batches, "skipped": skipped, "problems": problems,
            "withdrawn_rows_deleted": deleted, "unchanged_sources": unchanged}


# -- database sources ------------------------------------------------------------

def db_extract(store: FeatureStore, batch_id: str) -> dict[str, Any] | None:
    """The watermark range of a database batch (``None`` for a landing file's batch)."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(db_extracts_table).where(db_extracts_table.c.batch_id == batch_id)).first()
    return dict(row._mapping) if row else None


def watermark(store: FeatureStore, source: str) -> dict[str, Any] | None:
    """The committed watermarks of a database source (``None`` before its first capture)."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(watermarks_table).where(watermarks_table.c.source == source)).first()
    return dict(row._mapping) if row else None


def _in_flight(store: FeatureStore, source: str) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(
            sa.select(batches_table.c.batch_id)
            .join(db_extracts_table, db_extracts_table.c.batch_id == batches_table.c.batch_id)
            .where(db_extracts_table.c.source == source, batches_table.c.status == "running")).scalar()


def capture_database(home: NodeHome, store: FeatureStore, profile: SourceProfile, data_model: str,
                     connections: "ConnectionResolver | None" = None) -> str | None:
    """Register what changed at a database source since its committed watermark as one batch.

    Reads only the source's highest watermarks (no row): the batch extracts the
    range ``(committed, upto]``; the depersonalise stage reads its rows.  While
    a batch of the source is still in the chain, no new one is captured (its
    load has not committed the watermark yet).  A range captured before whose
    batch failed or was held is captured again under the same batch id.

    Returns
    -------
    str or None
        The batch id, or ``None`` when nothing changed (or a batch is in flight).
    """
    from mipflow.node.ingest.database import current_watermarks, source_engine, source_url

    db = profile.database
    assert db is not None
    source = profile.source
    if _in_flight(store, source) is not None:
        log.info("source %s: a batch is still in the chain; nothing new captured", source)
        return None
    engine = source_engine(source_url(source, db, home, connections))
    try:
        upto, del_upto = current_watermarks(source, engine, db)
    finally:
        engine.dispose()
    pending = _pending_range(store, profile, upto, del_upto)
    if pending is None:
        return None
    state, (after, upto, del_after, del_upto), sha = pending
    changed = upto != after
    deleted = del_upto != del_after
    batch_id = batch_id_for(sha, data_model)
    with store.begin() as conn:
        if state == {}:
            conn.execute(watermarks_table.insert().values(source=source, data_model=data_model, changes=None,
                                                          deletions=None, batch_id=None, updated_at=utcnow()))
        for table in (quarantine_table, db_extracts_table, batches_table):  # an earlier failed/held try
            conn.execute(table.delete().where(table.c.batch_id == batch_id))
        store.start_batch(conn, batch_id=batch_id, data_model=data_model, source=f"{source}/db", sha256=sha)
        conn.execute(db_extracts_table.insert().values(
            batch_id=batch_id, source=source, changes_after=after, changes_upto=upto,
            deletions_after=del_after, deletions_upto=del_upto, deleted=0))
    log.info("source %s: batch %s captured (changes %s, deletions %s)", source, batch_id,
             "yes" if changed else "no", "yes" if deleted else "no")
    return batch_id


def _pending_range(store: FeatureStore, profile: SourceProfile, upto: str | None, del_upto: str | None
                   ) -> tuple[dict[str, Any], tuple[str | None, str | None, str | None, str | None], str] | None:
    """The range a capture would register for these current watermarks of the source, or ``None``.

    Returns the committed watermark row (``{}`` before the first capture), the
    range ``(after, upto, deletions after, deletions upto)`` and its content id
    (:func:`mipflow.node.ingest.database.range_id`); ``None`` when nothing lies
    beyond the committed watermarks.
    """
    from mipflow.node.ingest.database import range_id

    db = profile.database
    assert db is not None
    state = watermark(store, profile.source) or {}
    after, del_after = state.get("changes"), state.get("deletions")
    changed = db.watermark.after(upto, after)
    deleted = db.deletion_watermark is not None and db.deletion_watermark.after(del_upto, del_after)
    if not changed and not deleted:
        return None
    upto = upto if changed else after
    del_upto = del_upto if deleted else del_after
    return state, (after, upto, del_after, del_upto), range_id(profile.source, after, upto, del_after, del_upto)


def capture_due(store: FeatureStore, profile: SourceProfile, upto: str | None, del_upto: str | None) -> bool:
    """Whether a capture would register a new batch of a database source whose watermarks are now these.

    No while a batch of the source is in the chain (the capture would wait for
    its load), nor when nothing lies beyond the committed watermarks, nor when
    this very range was captured before (its batch failed or was held: the
    nightly capture tries it again; a new change makes a new range).  What the
    node's watermark watcher (:mod:`mipflow.node.ingest.watch`) asks before it
    wakes ``node_capture``; reads only the feature store.
    """
    if _in_flight(store, profile.source) is not None:
        return False
    pending = _pending_range(store, profile, upto, del_upto)
    if pending is None:
        return False
    with store.engine.connect() as conn:
        seen = conn.execute(sa.select(batches_table.c.batch_id).where(
            batches_table.c.sha256 == pending[2], batches_table.c.source == f"{profile.source}/db").limit(1)).first()
    return seen is None


def _depersonalise_db(home: NodeHome, store: FeatureStore, batch: dict[str, Any], extract: dict[str, Any],
                      connections: "ConnectionResolver | None") -> dict[str, Any]:
    """Read a database batch's range, keep consented rows, depersonalise -> staging; deleted keys beside."""
    from mipflow.node.ingest.database import read_changes, read_deleted_keys, source_engine, source_url

    batch_id = batch["batch_id"]
    source = extract["source"]
    try:
        profile = resolve_profile(home, None, source)
        db = profile.database
        if db is None:
            raise InputFileError(f"source {source}: its profile no longer has a 'database' section")
        processor = _processor(home, store, batch)
        engine = source_engine(source_url(source, db, home, connections))
    except MipflowError as exc:
        return _fail(store, batch_id, str(exc))
    counts = BatchCounts()
    staging = _staging(home, batch_id)
    out = staging / "depersonalised.csv"
    try:
        with store.begin() as conn:
            conn.execute(quarantine_table.delete().where(quarantine_table.c.batch_id == batch_id))
            header = True
            if extract["changes_upto"] is not None and extract["changes_upto"] != extract["changes_after"]:
                progress = Progress(f"batch {batch_id} depersonalise", None)
                for chunk in read_changes(source, engine, db, processor, extract["changes_after"],
                                          extract["changes_upto"], counts, progress):
                    kept, no_consent = processor.capture(chunk)
                    counts.no_consent += no_consent
                    good, entries = processor.depersonalise(kept)
                    counts.quarantined += store.quarantine(conn, batch_id, "depersonalise", entries)
                    good.to_csv(out, mode="w" if header else "a", header=header, index=False)
                    header = False
                progress.finish()
            if header:
                out.write_text("")
            deletions = staging / "deleted_keys.csv"
            if extract["deletions_upto"] is not None and extract["deletions_upto"] != extract["deletions_after"]:
                read_deleted_keys(source, engine, db, processor, extract["deletions_after"],
                                  extract["deletions_upto"]).to_csv(deletions, index=False)
            else:
                deletions.unlink(missing_ok=True)
            store.update_batch(conn, batch_id, stage="depersonalise", **asdict(counts))
    except InputFileError as exc:
        return _fail(store, batch_id, str(exc))
    finally:
        engine.dispose()
    return {"batch_id": batch_id, "status": "running", **asdict(counts)}


def _apply_deletions(store: FeatureStore, conn: Any, model: Any, staging: Path) -> int:
    """Inside the load's transaction: delete the rows deleted at the source (their keys, pseudonymised)."""
    import pandas as pd

    from mipflow.node.store.tables import KEY_COLUMNS

    path = staging / "deleted_keys.csv"
    if not path.is_file() or not path.stat().st_size:
        return 0
    keys = pd.read_csv(path, dtype=str, keep_default_na=False)
    table = store.model_table(model)
    statement = table.delete().where(*(table.c[k] == sa.bindparam(f"k_{k}") for k in KEY_COLUMNS))
    deleted = 0
    for row in keys.to_dict("records"):
        deleted += max(int(conn.execute(statement, {f"k_{k}": row[k] for k in KEY_COLUMNS}).rowcount or 0), 0)
    return deleted


def _advance_watermark(conn: Any, batch_id: str, extract: dict[str, Any], deleted: int) -> None:
    """Inside the load's transaction, last: move the source's watermark to the batch's upper bound.

    Compare-and-set: the watermark moves only from the value the batch was
    captured at; if another load moved it, the transaction rolls back.
    """
    w = watermarks_table.c
    moved = conn.execute(watermarks_table.update().where(
        w.source == extract["source"], w.changes.is_not_distinct_from(extract["changes_after"]),
        w.deletions.is_not_distinct_from(extract["deletions_after"])).values(
        changes=extract["changes_upto"], deletions=extract["deletions_upto"], batch_id=batch_id,
        updated_at=utcnow()))
    if moved.rowcount != 1:
        raise MipflowError(f"batch {batch_id}: the watermark of source {extract['source']} moved since the batch "
                           "was captured; nothing loaded (the next capture starts from the committed watermark)")
    conn.execute(db_extracts_table.update().where(db_extracts_table.c.batch_id == batch_id).values(deleted=deleted))


def _landing_path(home: NodeHome, store: FeatureStore, batch: dict[str, Any]) -> tuple[Path | None, str]:
    """The landing file of a batch, found by its keyed path hash (``None`` when gone), and its label."""
    record = store.file_record(batch["sha256"])
    if record is None:
        raise InputFileError(f"batch {batch['batch_id']} has no manifest entry")
    return landing_index(home).get(record["path"]), file_label(file_ref(record["path"]))


def depersonalise(home: NodeHome, batch_id: str, *,
                  connections: "ConnectionResolver | None" = None) -> dict[str, Any]:
    """Consent filter and depersonalisation of one captured batch into its staging file.

    ``connections`` resolves a database source's Airflow connection (see :func:`capture`).
    """
    from mipflow.node.ingest.capture import sha256_file

    store = open_store(home)
    batch = store.batch(batch_id)
    if batch["stage"] != "capture" or batch["status"] != "running":
        return {"batch_id": batch_id, "status": batch["status"], "message": NOT_WAITING}
    extract = db_extract(store, batch_id)
    if extract is not None:
        return _depersonalise_db(home, store, batch, extract, connections)
    path, label = _landing_path(home, store, batch)
    try:
        unchanged = path is not None and path.is_file() and sha256_file(path) == batch["sha256"]
    except OSError:  # the exception's message would name the file
        unchanged = False
    if not unchanged:
        return _fail(store, batch_id, f"{label}: landing file changed or vanished since capture; "
                                      "a new version is captured as a new batch")
    processor = _processor(home, store, batch)
    try:
        return _depersonalise_pass(home, store, processor, path, batch_id, label)
    except MalformedCSV:
        processor.tolerant = True  # rolled back: read again, setting malformed lines aside
        return _depersonalise_pass(home, store, processor, path, batch_id, label)


def _depersonalise_pass(home: NodeHome, store: FeatureStore, processor: ChunkProcessor, path: Path,
                        batch_id: str, label: str) -> dict[str, Any]:
    counts = BatchCounts()
    bad_lines: list[tuple[int, str]] = []
    out = _staging(home, batch_id) / "depersonalised.csv"
    try:
        with store.begin() as conn:
            conn.execute(quarantine_table.delete().where(quarantine_table.c.batch_id == batch_id))
            header = True
            try:
                total: int | None = estimate_rows(path)
            except OSError:  # read_chunks reports it, by the file's label
                total = None
            progress = Progress(f"batch {batch_id} depersonalise", total)
            for chunk in processor.read_chunks(path, counts, bad_lines, progress, label=label):
                kept, no_consent = processor.capture(chunk)
                counts.no_consent += no_consent
                good, entries = processor.depersonalise(kept)
                counts.quarantined += store.quarantine(conn, batch_id, "depersonalise", entries)
                good.to_csv(out, mode="w" if header else "a", header=header, index=False)
                header = False
            progress.finish()
            if header:  # no rows at all: still leave a header-less marker
                out.write_text("")
            counts.quarantined += store.quarantine(conn, batch_id, "capture", [(n, r, None) for n, r in bad_lines])
            if counts.rows_in == 0:  # a header-only file is empty, not "loaded, no consented rows"
                message = f"{label}: {HEADER_ONLY}"
                store.update_batch(conn, batch_id, stage="depersonalise", status="empty", message=message,
                                   finished_at=utcnow(), **asdict(counts))
                return {"batch_id": batch_id, "status": "empty", "message": message, **asdict(counts)}
            store.update_batch(conn, batch_id, stage="depersonalise", **asdict(counts))
    except MalformedCSV:
        raise
    except InputFileError as exc:
        return _fail(store, batch_id, str(exc))
    return {"batch_id": batch_id, "status": "running", **asdict(counts)}


def _read_staged(path: Path, chunk_rows: int, progress: Progress | None = None) -> Iterator[Any]:
    """Chunks of a staging file; with ``progress``, each chunk done is logged."""
    import pandas as pd

    if path.stat().st_size == 0:
        return
    for chunk in pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], chunksize=chunk_rows):
        chunk[ROW_COLUMN] = chunk[ROW_COLUMN].astype(int)
        chunk["_visit"] = chunk["_visit"].fillna("")
        yield chunk
        if progress is not None:
            progress.advance(len(chunk))
    if progress is not None:
        progress.finish()


def _staged_progress(path: Path, label: str) -> Progress:
    return Progress(label, estimate_rows(path) if path.is_file() and path.stat().st_size else 0)


def validate(home: NodeHome, batch_id: str) -> dict[str, Any]:
    """Harmonise and validate one batch; quarantine failures; hold the batch if too many fail."""
    store = open_store(home)
    batch = store.batch(batch_id)
    if batch["stage"] != "depersonalise" or batch["status"] != "running":
        return {"batch_id": batch_id, "status": batch["status"], "message": NOT_WAITING}
    processor = _processor(home, store, batch)
    counts = _counts(batch)
    staged = _staging(home, batch_id) / "depersonalised.csv"
    out = staged.with_name("validated.csv")
    summaries = []
    ready_rows = 0
    with store.begin() as conn:
        conn.execute(quarantine_table.delete().where(quarantine_table.c.batch_id == batch_id,
                                                     quarantine_table.c.stage == "validate"))
        header = True
        for chunk in _read_staged(staged, home.settings.chunk_rows,
                                  _staged_progress(staged, f"batch {batch_id} validate")):
            ready, entries, duplicates, summary = processor.validate(chunk)
            summaries.append(summary)
            counts.duplicates += duplicates
            counts.quarantined += store.quarantine(conn, batch_id, "validate", entries)
            ready.to_csv(out, mode="w" if header else "a", header=header, index=False)
            ready_rows += len(ready)
            header = False
        if header:
            out.write_text("")
        counts.loaded = ready_rows  # provisional: what the load stage will load
        status, message = decide_status(counts, home.settings)
        if status == "held":  # every row accounted: quarantined (with reasons) or held with the batch
            counts.held, counts.loaded = ready_rows, 0
            message = held_message(message, ready_rows)
            store.update_batch(conn, batch_id, stage="validate", status="held", message=message,
                               validation=merge_summaries(summaries), finished_at=utcnow(), **asdict(counts))
        else:
            counts.loaded = 0
            store.update_batch(conn, batch_id, stage="validate", message=message,
                               validation=merge_summaries(summaries), **asdict(counts))
    staged.unlink(missing_ok=True)
    if status == "held":
        out.unlink(missing_ok=True)
    return {"batch_id": batch_id, "status": "held" if status == "held" else "running", "ready": ready_rows,
            "message": message}


def load(home: NodeHome, batch_id: str) -> dict[str, Any]:
    """Load one validated batch into the feature store in a single transaction.

    The loaded rows are counted as inserted, updated or unchanged in the same
    transaction; when existing keys got other identifying-derived values, the
    batch's message says so and a record goes to the node's notifications.
    """
    import pandas as pd

    from mipflow.failures import notify_file
    from mipflow.node.store.feature_store import LoadCounts

    store = open_store(home)
    batch = store.batch(batch_id)
    if batch["stage"] != "validate" or batch["status"] != "running":
        return {"batch_id": batch_id, "status": batch["status"], "message": NOT_WAITING}
    model = store.data_model(batch["data_model"])
    counts = _counts(batch)
    staged = _staging(home, batch_id) / "validated.csv"
    extract = db_extract(store, batch_id)
    loaded = deleted = 0
    accounting = LoadCounts()
    identity = _identity_columns(home, batch, model)
    with store.begin() as conn:
        if extract is not None:  # deletions first: a row deleted and re-inserted at the source is loaded again
            deleted = _apply_deletions(store, conn, model, staged.parent)
        progress = _staged_progress(staged, f"batch {batch_id} load")
        for chunk in _read_staged(staged, home.settings.chunk_rows, progress):
            for var in model:
                if var.code in chunk.columns and var.sql_type == "int":
                    chunk[var.code] = pd.to_numeric(chunk[var.code]).astype("Int64")
                elif var.code in chunk.columns and var.sql_type == "real":
                    chunk[var.code] = pd.to_numeric(chunk[var.code]).astype("float64")
            loaded += store.upsert_rows(conn, model, chunk.drop(columns=[ROW_COLUMN]), batch_id=batch_id,
                                        sha256=batch["sha256"], accounting=accounting, identity_columns=identity)
        store.refresh_datasets(conn, model)
        counts.loaded = loaded
        message = account_load(counts, accounting, batch["message"])
        if not counts.conserved:
            raise MipflowError(f"row conservation violated for batch {batch_id}: {counts.equation()}")
        store.update_batch(conn, batch_id, stage="load", status="loaded", finished_at=utcnow(), message=message,
                           **asdict(counts))
        if extract is not None:  # last, so the watermark commits with the rows or not at all
            _advance_watermark(conn, batch_id, extract, deleted)
    shutil.rmtree(home.staging_dir / batch_id, ignore_errors=True)
    if deleted:  # rows deleted at the source: no copy of them left in an older columnar snapshot (ADR 0049)
        from mipflow.node.store.stamp import drop_snapshots

        drop_snapshots(store, store.model_table(model).name, stale_only=True)
    log.info("batch %s loaded: %s", batch_id, counts.equation())
    if counts.identity_changed:
        notify_identity_changed(notify_file(str(home.root)), identity_notice(
            batch_id, batch["source"], batch["data_model"], counts, message))
    out = {"batch_id": batch_id, "status": "loaded", "equation": counts.equation(), "message": message,
           **asdict(counts)}
    if extract is not None:
        out["deleted"] = deleted
    return out
