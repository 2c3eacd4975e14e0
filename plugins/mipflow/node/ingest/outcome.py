"""A batch's outcome: its status, its message and the notice of changed identities.

What the ingest pipeline decides about a batch once its rows are counted, the same for the
synchronous CLI (:func:`mipflow.node.ingest.pipeline.ingest_file`) and the Airflow stages
(:mod:`mipflow.node.ingest.stages`): whether it is held back whole (:func:`decide_status`,
:func:`held_message`), how its loaded rows split and what its message says when loaded keys
changed identifying-derived values (:func:`account_load`, :func:`identity_message`), and the
notification record of such a batch (:func:`identity_notice`, :func:`notify_identity_changed`).
Counts, column names and messages only: nothing here reads or writes a row.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from mipflow.node.home import NodeSettings
    from mipflow.node.ingest.pipeline import BatchCounts
    from mipflow.node.store.feature_store import LoadCounts

log = logging.getLogger(__name__)


def decide_status(counts: BatchCounts, settings: NodeSettings) -> tuple[str, str]:
    """Hold a batch back whole when too many of its consented rows failed."""
    considered = counts.rows_in - counts.no_consent
    if considered <= 0:
        return "loaded", "no consented rows"
    rate = counts.quarantined / considered
    if rate > settings.max_failure_rate:
        return "held", (f"failure rate {rate:.1%} exceeds max_failure_rate {settings.max_failure_rate:.1%}; "
                        "fix the export or raise the limit, then re-run")
    return "loaded", f"failure rate {rate:.1%}"


def held_message(reason: str, held_rows: int) -> str:
    """A held batch's message: the reason, and its valid rows held with it (counted in ``held``)."""
    return f"{reason}; {held_rows} valid rows held (not loaded) with the batch"


def identity_message(accounting: "LoadCounts") -> str:
    """What a batch's message says when loaded keys changed identifying-derived values (names and counts)."""
    columns = ", ".join(f"{c} {n}" for c, n in sorted(accounting.identity_columns.items()))
    return (f"IDENTITY CHANGED: {accounting.identity_changed} existing keys got other identifying-derived values "
            f"({columns}) and were replaced: the export may reuse patient identifiers for other patients, "
            "or correct birth dates; check with the source")


def account_load(counts: BatchCounts, accounting: "LoadCounts", message: str) -> str:
    """Copy the load's inserted/updated/unchanged split into ``counts``; the batch message, flagged when
    identifying-derived values changed."""
    counts.inserted, counts.updated = accounting.inserted, accounting.updated
    counts.unchanged, counts.identity_changed = accounting.unchanged, accounting.identity_changed
    if accounting.identity_changed:
        return f"{message}; {identity_message(accounting)}" if message else identity_message(accounting)
    return message


def identity_notice(batch_id: str, source: str, data_model: str, counts: BatchCounts, message: str,
                    now: Any = None) -> dict[str, Any]:
    """The notification record of a batch whose loaded keys changed identifying-derived values.

    Counts, column names and the batch's message only (its source names the
    file by reference); appended to the node's ``notifications.jsonl`` with
    the failure records (:func:`mipflow.failures.write_record`, ADR 0037).
    """
    from datetime import datetime, timezone

    return {"event": "identity_changed", "site": "node",
            "at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
            "batch_id": batch_id, "source": source, "data_model": data_model,
            "identity_changed": counts.identity_changed, "updated": counts.updated,
            "inserted": counts.inserted, "message": message}


def notify_identity_changed(path: Path | None, record: Mapping[str, Any]) -> None:
    """Append ``record`` (:func:`identity_notice`) to the notification file ``path`` (nothing when ``None``)."""
    from mipflow.failures import write_record

    log.warning("batch %s: %d existing keys changed identifying-derived values", record["batch_id"],
                record["identity_changed"])
    if path is None:
        return
    try:
        write_record(path, record)
    except OSError as exc:
        log.warning("could not write the notification: %s", type(exc).__name__)
