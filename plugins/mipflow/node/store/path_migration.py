"""Stores written before the manifest held keyed path hashes: their raw landing paths and file names rewritten into
keys and references, once (:meth:`mipflow.node.store.feature_store.FeatureStore.migrate_path_names`)."""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from mipflow.node.files import DICOM_KIND, EHR_KIND, file_label, file_ref, is_path_key, landing_path_key
from mipflow.node.store.feature_store import FeatureStore, utcnow
from mipflow.node.store.tables import PATH_NAMES_MARKER, batches_table, files_table, meta_table


def path_names_migrated(store: FeatureStore) -> bool:
    """Whether :func:`migrate_path_names` has run on ``store``."""
    with store.engine.connect() as conn:
        value = conn.execute(sa.select(meta_table.c.value)
                             .where(meta_table.c.name == PATH_NAMES_MARKER[0])).scalar()
    return value == PATH_NAMES_MARKER[1]

def migrate_path_names(store: FeatureStore, key: bytes, landing: Path, profiles: Path | None = None) -> int:
    """Rewrite raw landing paths and file names of older stores into keys and references, once.

    Stores written before the manifest held keyed path hashes have raw
    paths in ``mipflow_files.path`` and file names in the EHR batches'
    ``source`` and failure messages.  This rewrites, in one transaction,

    * every raw manifest path into its path key (EHR files relative to
      ``landing``, DICOM files relative to ``landing/dicom``; a relative
      path recorded by ``mipflow ingest`` is taken from the current
      directory, as the ingest took it);
    * every EHR batch's ``source`` into its file reference, keeping a
      ``<source>/`` prefix only when ``profiles/<source>.json`` names it
      (a batch whose file is no longer in the manifest gets
      ``sha256:<first 12 hex of its content hash>``);
    * the old file name in the batch's message into ``file <ref>``,

    then records the migration in ``mipflow_meta``, so later opens cost
    one primary-key lookup.  Quarantine entries never held file names.

    Parameters
    ----------
    key : bytes
        The node secret (the path keys' HMAC key).
    landing : Path
        The node's landing folder.
    profiles : Path, optional
        The node's profiles folder.

    Returns
    -------
    int
        Manifest entries and batch records rewritten (0 when already done).
    """
    if path_names_migrated(store):
        return 0
    changed = 0
    landing = Path(landing)
    try:
        with store.begin() as conn:
            done = conn.execute(sa.select(meta_table.c.value)
                                .where(meta_table.c.name == PATH_NAMES_MARKER[0])).scalar()
            if done == PATH_NAMES_MARKER[1]:
                return 0
            ehr_keys: dict[str, str] = {}
            for row in conn.execute(sa.select(files_table.c.sha256, files_table.c.path, files_table.c.kind,
                                              files_table.c.batch_id)).all():
                path_key = row.path
                if not is_path_key(path_key):
                    dicom = row.kind == DICOM_KIND
                    path_key = landing_path_key(key, landing / "dicom" if dicom else landing, row.path,
                                                kind=DICOM_KIND if dicom else EHR_KIND)
                    conn.execute(files_table.update().where(files_table.c.sha256 == row.sha256)
                                 .values(path=path_key))
                    changed += 1
                if row.kind != DICOM_KIND and row.batch_id:
                    ehr_keys[row.batch_id] = path_key
            for batch in conn.execute(sa.select(batches_table.c.batch_id, batches_table.c.source,
                                                batches_table.c.sha256, batches_table.c.message)).all():
                if batch.source.startswith("dicom/"):
                    continue
                path_key = ehr_keys.get(batch.batch_id)
                ref = file_ref(path_key) if path_key else f"sha256:{batch.sha256[:12]}"
                head, _, name = batch.source.rpartition("/")
                prefix = head.split("/")[0] if head else ""
                keep = bool(prefix) and profiles is not None and (Path(profiles) / f"{prefix}.json").is_file()
                source = f"{prefix}/{ref}" if keep else ref
                message = batch.message or ""
                if name:
                    message = message.replace(name, file_label(ref))
                if (source, message) != (batch.source, batch.message):
                    conn.execute(batches_table.update().where(batches_table.c.batch_id == batch.batch_id)
                                 .values(source=source, message=message))
                    changed += 1
            conn.execute(meta_table.insert().values(name=PATH_NAMES_MARKER[0], value=PATH_NAMES_MARKER[1],
                                                    updated_at=utcnow()))
    except (sa.exc.IntegrityError, sa.exc.OperationalError):
        if path_names_migrated(store):  # another process migrated the store at the same time
            return 0
        raise
    return changed
