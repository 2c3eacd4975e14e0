"""The imaging pipeline's batches: stage names, the data model, the staging folder, file accounting.

Every consented DICOM series becomes one batch in ``mipflow_batches`` (``rows_in`` etc. count
*files* for imaging batches) that moves through ``dicom_captured`` -> ``dicom_deidentified`` ->
``dicom_loaded`` (:mod:`mipflow.node.imaging.capture`, :mod:`mipflow.node.imaging.deid_series`,
:mod:`mipflow.node.imaging.load`); :func:`waiting_series` finds the batches waiting for the next
stage.  De-identified series wait in ``staging/dicom/<de-identified series UID>/``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from mipflow.exceptions import StoreError
from mipflow.node.files import DICOM_KIND
from mipflow.node.home import NodeHome
from mipflow.node.store.feature_store import FeatureStore, open_store
from mipflow.node.store.tables import batches_table
from mipflow.protocol.datamodel import DataModel, bundled_data_model_path, load_data_model

if TYPE_CHECKING:
    from mipflow.node.imaging.deidentify import Deidentifier

DATA_MODEL = "imaging:0.1"
BUNDLED_MODEL = "imaging_v_0_1"
KIND = DICOM_KIND
#: Batch stages of imaging batches (distinct from the EHR stages, so the EHR DAGs never pick them up).
STAGE_CAPTURED = "dicom_captured"
STAGE_DEIDENTIFIED = "dicom_deidentified"
STAGE_LOADED = "dicom_loaded"
STAGE_CAPTURE_REPORT = "dicom_capture"


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


def imaging_model(store: FeatureStore) -> DataModel:
    """The ``imaging:0.1`` data model, registered from ``include/schemas`` when missing."""
    try:
        return store.data_model(DATA_MODEL)
    except StoreError:
        model = load_data_model(bundled_data_model_path(BUNDLED_MODEL))
        store.add_data_model(model)
        return model


def dicom_staging(home: NodeHome) -> Path:
    """``staging/dicom/``: one folder of de-identified files per series."""
    return home.staging_dir / "dicom"


def node_deidentifier(home: NodeHome) -> Deidentifier:
    """The node's :class:`~mipflow.node.imaging.deidentify.Deidentifier`: its key and its ``dicom_*`` settings."""
    from mipflow.node.imaging.deidentify import Deidentifier
    from mipflow.node.imaging.options import options_from_settings

    return Deidentifier(home.key(), options_from_settings(home.settings))


def waiting_series(home: NodeHome, stage: str = STAGE_CAPTURED, *,
                   store: FeatureStore | None = None) -> list[str]:
    """Imaging batches that finished ``stage`` (oldest first); catches up after failed runs."""
    store = store or open_store(home)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(batches_table.c.batch_id).where(
            batches_table.c.stage == stage, batches_table.c.status == "running")
            .order_by(batches_table.c.started_at, batches_table.c.batch_id)).all()
    return [r[0] for r in rows]



# --------------------------------------------------------------------------
# what makes an imaging task red (issue 15 item 6, ADR 0037): the messages name batches and
# reason codes, never a file name or a header value
# --------------------------------------------------------------------------

def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "no reason recorded"


def capture_problem(summary: dict[str, Any]) -> str | None:
    """What to fix when a capture run quarantined files of ``landing/dicom/`` (``None`` otherwise).

    ``summary`` is :func:`mipflow.node.imaging.capture.capture_dicom`'s: empty files, files that are
    not DICOM instances, DICOMDIRs.  Each such file is captured once (by its SHA-256), so it turns one
    run red, not every run.
    """
    if not summary.get("quarantined"):
        return None
    return (f"{summary['quarantined']} file(s) of landing/dicom/ quarantined at capture "
            f"({_reasons(summary.get('quarantine_reasons') or {})}), batch {summary.get('quarantine_batch')}: "
            "replace them with readable DICOM instances or remove them; `mipflow node files HOME` "
            "lists the landing files by reference on the node's console")


def series_problem(outcomes: list[dict[str, Any]]) -> str | None:
    """What to fix when de-identification failed series of this run: every file quarantined (``None`` otherwise).

    ``outcomes`` are :func:`mipflow.node.imaging.deid_series.deidentify_series`'s; a series another run
    had already finished is not this run's failure.  A series with some files quarantined and some
    written goes on (its quarantine entries say which and why).
    """
    from mipflow.node.imaging.deid_series import NOT_WAITING

    failed = [o for o in outcomes if o.get("status") == "failed" and o.get("message") != NOT_WAITING]
    if not failed:
        return None
    return "; ".join(f"series batch {o['batch_id']} failed: every file quarantined at de-identification "
                     f"({_reasons(o.get('reasons') or {})})" for o in failed)


def load_problem(result: dict[str, Any]) -> str | None:
    """What to fix when the feature load failed series (``None`` otherwise); ``result`` is
    :func:`mipflow.node.imaging.load.extract_and_load`'s."""
    reasons = result.get("failed_reasons") or {b: "" for b in result.get("failed") or ()}
    if not reasons:
        return None
    return "; ".join(f"series batch {batch_id} failed at the feature load: {message or 'no reason recorded'}"
                     for batch_id, message in sorted(reasons.items()))
