"""The node imaging pipeline: capture -> de-identify -> features -> load (no Airflow imports).

``capture_dicom`` (:mod:`mipflow.node.imaging.capture`)
    Registers the settled new files of ``landing/dicom/`` by content hash and keyed path hash,
    reading headers only; applies the consent registry; quarantines what is not an instance;
    one batch per consented series.
``deidentify_series`` (:mod:`mipflow.node.imaging.deid_series`)
    De-identifies the files of one series batch into ``staging/dicom/<series>/``.
``extract_and_load`` (:mod:`mipflow.node.imaging.load`)
    Computes the per-series features and upserts one row per series into ``imaging:0.1``.

The batches, their stages and the file accounting are in :mod:`mipflow.node.imaging.stages`;
:func:`run_imaging` runs the whole chain in one call (CLI, tests), the imaging DAGs one stage per
task.

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

from collections import Counter
from typing import Any

from mipflow.node.home import NodeHome
from mipflow.node.imaging.capture import capture_dicom
from mipflow.node.imaging.deid_series import deidentify_series, landing_index
from mipflow.node.imaging.load import extract_and_load, pending_outcomes
from mipflow.node.imaging.stages import STAGE_CAPTURED, FileCounts, node_deidentifier, waiting_series
from mipflow.node.store.feature_store import FeatureStore, open_store


def run_imaging(home: NodeHome, *, dataset: str | None = None,
                store: FeatureStore | None = None) -> dict[str, Any]:
    """The whole chain in one call (CLI, tests): capture, de-identify, load; with file accounting."""
    store = store or open_store(home)
    summary: dict[str, Any] = {}
    captured = {b["batch_id"] for b in capture_dicom(home, store=store, summary=summary)}
    engine = node_deidentifier(home)
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
