"""Hospital node imaging DAGs: capture DICOM -> de-identify per series -> features into the store.

``imaging_capture`` runs nightly (and on demand): it registers new files of
``landing/dicom/`` by SHA-256, reading headers only, applies the consent
registry by Patient ID and quarantines what is not an instance; every
consented series becomes a batch.  ``imaging_deidentify`` is scheduled on the
Asset capture emits: it de-identifies every waiting series (PS3.15 Annex E)
in mapped tasks over chunks of series (at most ``MAX_CHUNKS`` mapped task
instances, one instance in memory at a time), then computes the per-series
features and upserts them into the ``imaging:0.1`` table, keyed on the EHR
pseudonym so they join the clinical rows.

Like the EHR chain (docs/adr/0037-node-chain-runs-and-fails-visibly.md): both DAGs are created
unpaused (``MIPFLOW_NODE_DAGS_PAUSED=1`` pauses them with the node DAGs), never run a past
schedule (no ``start_date``; the first capture is the next 02:30), and ``imaging_deidentify``
also runs daily at 04:00 to pick up series whose Asset event came while it was paused.  Files
quarantined at capture (empty, not DICOM instances), a series whose every file was quarantined at
de-identification and a series whose features failed fail their task (no retry) with what to fix;
the failure notifier records it in ``HOME/notifications.jsonl``; the other series go on.  The logic lives in
:mod:`mipflow.node.imaging` (``capture``, ``deid_series``, ``load``); the tasks only call it (imports happen inside
tasks to keep parsing cheap).

When the node has a PACS (``HOME/pacs.json``, :mod:`mipflow.node.imaging.pacs`), ``imaging_capture``
first pulls the studies that became stable there since the committed cursor into
``landing/dicom/pacs/`` (``pull_pacs``), and ``imaging_deidentify`` ends by accounting for every
pulled instance and advancing the cursor once none is still in the chain (``commit_pacs``).
"""
from __future__ import annotations

import os

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, task

from mipflow_airflow.dags import daily_at, default_args, node_dags_paused, node_home, node_params, site_runs

IMAGING_CAPTURED = Asset(name="mipflow_imaging_captured", uri="mipflow://node/imaging/captured")
IMAGING_FEATURES = Asset(name="mipflow_imaging_features", uri="mipflow://node/imaging/features")

#: Most mapped de-identification tasks per run (series are grouped into this many chunks).
MAX_CHUNKS = int(os.environ.get("MIPFLOW_DICOM_MAX_CHUNKS", "64"))
#: The nightly capture (after the EHR capture at 02:00); no start_date: the first run is the next 02:30.
NIGHTLY = daily_at("30 2 * * *")
#: imaging_deidentify also runs daily at 04:00, for series whose Asset event came while it was paused.
CATCH_UP = daily_at("0 4 * * *")


# Defined only where node DAGs belong (MIPFLOW_SITE node or local, not central: ADR 0045).
if site_runs("node"):
    with DAG(
        dag_id="imaging_capture",
        description="Register new DICOM files from landing/dicom/ (headers only), apply consent, one batch per series",
        schedule=NIGHTLY,
        catchup=False,
        is_paused_upon_creation=node_dags_paused(),
        max_active_runs=1,
        params=node_params(),
        default_args=default_args(),
        tags=["mipflow", "node", "imaging"],
        doc_md=__doc__,
    ):

        @task
        def pull_pacs() -> dict:
            """Download the PACS's newly stable studies into landing/dicom/pacs/ (no-op without pacs.json)."""
            from mipflow.node.imaging.pacs import pull_pacs as pull
            from mipflow_airflow.hooks.pacs import pacs_connection_credentials

            result = pull(node_home(), connections=pacs_connection_credentials)
            if result.get("configured"):
                print(f"PACS {result['source']}: changes {result['since']}..{result['until']}, "
                      f"{result['studies']} stable study(ies), {result['instances']} instance(s), {result['gone']} gone")
            else:
                print("no PACS configured (HOME/pacs.json)")
            return result

        @task(outlets=[IMAGING_CAPTURED])
        def capture_dicom(*, outlet_events=None) -> dict:
            """Scan landing/dicom/, register new files by SHA-256, group by series, quarantine non-instances."""
            from mipflow.node.imaging.capture import capture_dicom as capture

            summary: dict = {}
            batches = capture(node_home(), summary=summary)
            print(f"captured {summary['series']} series ({summary['captured']} file(s)); files_in="
                  f"{summary['files_in']} quarantined={summary['quarantined']} no_consent={summary['no_consent']} "
                  f"known={summary['known']} pending={summary['pending']} conserved={summary['conserved']} "
                  f"reasons={summary['quarantine_reasons']}")
            outlet_events[IMAGING_CAPTURED].extra = {"series": len(batches), "files": summary["captured"]}
            return summary

        @task
        def landing_problems(summary: dict) -> None:
            """Fail (no retry) when capture quarantined files: empty, not DICOM instances, DICOMDIRs."""
            from airflow.sdk.exceptions import AirflowFailException

            from mipflow.node.imaging.stages import capture_problem

            problem = capture_problem(summary)
            if problem:
                raise AirflowFailException(problem)

        _summary = capture_dicom()
        pull_pacs() >> _summary
        landing_problems(_summary)


    with DAG(
        dag_id="imaging_deidentify",
        description="De-identify waiting DICOM series (PS3.15 Annex E) and load per-series features",
        # the Asset event, or the daily catch-up run (an event that came while the DAG was paused is lost)
        schedule=AssetOrTimeSchedule(assets=[IMAGING_CAPTURED], timetable=CATCH_UP),
        catchup=False,
        is_paused_upon_creation=node_dags_paused(),
        max_active_runs=1,
        params=node_params(),
        default_args=default_args(),
        tags=["mipflow", "node", "imaging"],
        doc_md=__doc__,
    ):

        @task
        def waiting_series() -> list[list[str]]:
            """Every captured series batch not yet de-identified, in at most MAX_CHUNKS chunks."""
            from mipflow.node.imaging.deid_series import chunked
            from mipflow.node.imaging.stages import waiting_series as waiting

            batches = waiting(node_home())
            print(f"{len(batches)} series waiting")
            return chunked(batches, MAX_CHUNKS)

        @task(max_active_tis_per_dag=2)
        def deidentify_chunk(batch_ids: list[str]) -> dict:
            """De-identify the series of one chunk into staging/dicom/<series>/ (one file in memory at a time)."""
            from airflow.sdk.exceptions import AirflowFailException

            from mipflow.node.imaging.deid_series import deidentify_many
            from mipflow.node.imaging.stages import series_problem

            outcomes = deidentify_many(node_home(), batch_ids)
            totals = {k: sum(o[k] for o in outcomes) for k in ("files_in", "written", "quarantined")}
            for outcome in outcomes:
                if outcome["quarantined"]:
                    print(f"{outcome['batch_id']}: {outcome['quarantined']} quarantined {outcome['reasons']}")
            print(f"{len(outcomes)} series: {totals}")
            problem = series_problem(outcomes)
            if problem:  # a series with every file quarantined is red; the other series of the chunk went on
                raise AirflowFailException(problem)
            return {"series": len(outcomes), **totals}

        @task(outlets=[IMAGING_FEATURES], trigger_rule="all_done")
        def load_features(chunks: list[dict], *, outlet_events=None) -> dict:
            """Per-series features of every de-identified series into the imaging:0.1 table (one transaction)."""
            from mipflow.node.imaging.load import extract_and_load, pending_outcomes

            home = node_home()
            result = extract_and_load(home, pending_outcomes(home))
            files = {k: sum(c[k] for c in chunks if c) for k in ("files_in", "written", "quarantined")}
            print(f"files de-identified this run: {files}; series loaded: {result['loaded']}; "
                  f"failed: {len(result['failed'])}")
            outlet_events[IMAGING_FEATURES].extra = {"series": result["loaded"]}
            return {"loaded": result["loaded"], "failed": result["failed"], "files": files,
                    "failed_reasons": result["failed_reasons"]}

        @task
        def load_problems(result: dict) -> None:
            """Fail (no retry) when series failed at the feature load (after the Asset and the PACS commit)."""
            from airflow.sdk.exceptions import AirflowFailException

            from mipflow.node.imaging.stages import load_problem

            problem = load_problem(result)
            if problem:
                raise AirflowFailException(problem)

        @task(task_id="all_series_passed")
        def all_series_passed() -> None:
            """Leaf task: upstream-failed when a chunk failed a series, so the run is red (the load still runs)."""

        @task
        def commit_pacs() -> list:
            """Account for every pulled PACS instance; advance the cursor once none is still in the chain."""
            from mipflow.node.imaging.pacs import commit_pacs as commit

            commits = commit(node_home())
            for item in commits:
                print(f"pull {item['pull_id']} (changes {item['since']}..{item['until']}): {item['instances']} "
                      f"instance(s): loaded {item['loaded']}, quarantined {item['quarantined']} {item['reasons']}, "
                      f"no_consent {item['no_consent']}, failed {item['failed']}, waiting {item['waiting']}; "
                      f"committed={item['committed']}")
            return commits

        _chunks = deidentify_chunk.expand(batch_ids=waiting_series())
        _loaded = load_features(_chunks)
        _loaded >> commit_pacs()
        load_problems(_loaded)
        _chunks >> all_series_passed()
