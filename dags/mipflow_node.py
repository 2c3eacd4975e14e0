"""Hospital node DAGs: capture -> depersonalise -> validate -> load, chained by Assets.

Each node runs its own Airflow with ``MIPFLOW_NODE_HOME`` pointing at its node
home (``mipflow node init``).  The capture DAG runs nightly (and on demand), and,
when the node home has an EHR database source, also as soon as the node's asset
watcher sees a source's watermark move beyond what was captured (``EhrWatermarkTrigger``
in the triggerer, every ``MIPFLOW_NODE_WATCH_SECONDS``, default 10; 0 turns it off;
docs/adr/0043-standing-analyses.md, "Latency"); an idle source costs one query per check and no run;
each later stage is scheduled on the Asset the stage before it emits, and
works through every batch waiting for it, so a failed run is caught up by
the next one.  The four DAGs are created unpaused (``MIPFLOW_NODE_DAGS_PAUSED=1``
creates them paused, together) and never catch up past schedules: the first
nightly capture is the next 02:00, not the one before the DAG was created.  The
later stages also run daily at 04:00, so a batch whose Asset event came while
its stage was paused is picked up then.

A batch that ends failed, held or empty fails its task at once (no retry) with
what to fix; the failure notifier records it in ``HOME/notifications.jsonl``.
The stage's report still runs and passes the other batches on.  The logic lives in :mod:`mipflow.node.ingest.stages`; the tasks only call
it (imports happen inside tasks to keep parsing cheap).
"""
from __future__ import annotations

import os
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, AssetWatcher, task

from mipflow_airflow.dags import daily_at, default_args, node_dags_paused, node_home, node_params, node_watch_seconds, site_runs

CAPTURED = Asset(name="mipflow_node_captured", uri="mipflow://node/captured")
DEPERSONALISED = Asset(name="mipflow_node_depersonalised", uri="mipflow://node/depersonalised")
VALIDATED = Asset(name="mipflow_node_validated", uri="mipflow://node/validated")
FEATURE_STORE = Asset(name="mipflow_node_feature_store", uri="mipflow://node/feature_store")


def _waiting(stage: str) -> list[str]:
    from mipflow.node.store.feature_store import open_store
    from mipflow.node.ingest.stages import waiting

    return waiting(open_store(node_home()), stage)


#: Defined only where node DAGs belong (MIPFLOW_SITE node or local, not central: ADR 0045).
NODE_SITE = site_runs("node")
#: The nightly capture; no start_date: the first scheduled run is the next 02:00, not the last one (no surprise run).
#: (daily_at: run_immediately is a zero timedelta, not False, which Airflow 3.3 treats like None: ADR 0037.)
NIGHTLY = daily_at("0 2 * * *")
#: Seconds between the EHR watermark checks, or None: no database source (or MIPFLOW_NODE_WATCH_SECONDS=0).
WATCH_SECONDS = node_watch_seconds() if NODE_SITE else None


def _capture_schedule() -> object:
    """The nightly cron, or that cron OR the watcher's Asset when the node has an EHR database source."""
    if WATCH_SECONDS is None:
        return NIGHTLY
    from mipflow_airflow.triggers.ehr_watermark import EhrWatermarkTrigger

    changed = Asset(name="mipflow_node_ehr_changed", uri="mipflow://node/ehr-changed", watchers=[AssetWatcher(
        name="mipflow_node_ehr_watermarks", trigger=EhrWatermarkTrigger(
            node_home=os.environ["MIPFLOW_NODE_HOME"], poll_seconds=WATCH_SECONDS))])
    return AssetOrTimeSchedule(assets=[changed], timetable=NIGHTLY)


if NODE_SITE:
    with DAG(
        dag_id="node_capture",
        description="Register new EHR exports from the landing folder and changes at EHR databases; "
                    "apply consent withdrawals",
        schedule=_capture_schedule(),
        catchup=False,
        is_paused_upon_creation=node_dags_paused(),
        max_active_runs=1,
        params=node_params(),
        default_args=default_args(),
        tags=["mipflow", "node"],
        doc_md=__doc__,
    ):

        @task(outlets=[CAPTURED])
        def capture_landing(*, outlet_events=None) -> dict:
            """Scan landing/, register new files by SHA-256 and keyed path hash, delete withdrawn patients' rows."""
            from mipflow.node.ingest.stages import capture
            from mipflow_airflow.hooks.ehr import ehr_connection_url

            summary = capture(node_home(), connections=ehr_connection_url)  # landing files and EHR databases
            for item in summary["skipped"]:
                print(f"skipped file {item['file']}: {item['reason']}")  # a reference, never the file's name
            for source in summary["unchanged_sources"]:
                print(f"database source {source}: nothing changed since the last load")
            print(f"captured {len(summary['captured'])} batch(es); "
                  f"{summary['withdrawn_rows_deleted']} row(s) deleted for withdrawn consent")
            outlet_events[CAPTURED].extra = {"batches": summary["captured"]}
            return {"captured": summary["captured"], "problems": summary["problems"]}

        @task
        def landing_problems(summary: dict) -> None:
            """Fail (no retry) on an empty file or a file no profile or data model fits."""
            from airflow.sdk.exceptions import AirflowFailException

            if summary["problems"]:
                raise AirflowFailException("; ".join(summary["problems"]))

        landing_problems(capture_landing())

#: Each later stage also runs daily at 04:00 (after the nightly chain) to pick up batches whose Asset event
#: it missed while paused; no start_date, so neither creating nor unpausing it fires a past run.
CATCH_UP = daily_at("0 4 * * *")


#: (dag_id, description, triggering Asset, stage the batches wait after, stage function, emitted Asset)
STAGES = (
    ("node_depersonalise", "Keep consented rows, pseudonymise, drop identifiers",
     CAPTURED, "capture", "depersonalise", DEPERSONALISED),
    ("node_validate", "Harmonise onto the data model and validate with great-expectations; quarantine failures",
     DEPERSONALISED, "depersonalise", "validate", VALIDATED),
    ("node_load", "Load validated batches into the feature store (one transaction per batch)",
     VALIDATED, "validate", "load", FEATURE_STORE),
)

for _dag_id, _description, _trigger, _after, _stage, _outlet in (STAGES if NODE_SITE else ()):
    with DAG(
        dag_id=_dag_id,
        description=_description,
        # the Asset event, or the daily catch-up run (an event that came while the DAG was paused is lost)
        schedule=AssetOrTimeSchedule(assets=[_trigger], timetable=CATCH_UP),
        catchup=False,
        is_paused_upon_creation=node_dags_paused(),
        max_active_runs=1,
        params=node_params(),
        default_args=default_args(),
        tags=["mipflow", "node"],
        doc_md=__doc__,
    ):

        @task(task_id="waiting_batches")
        def waiting_batches(after: str) -> list[str]:
            """Every batch that finished the previous stage (catches up after failed runs)."""
            return _waiting(after)

        @task(task_id=f"{_stage}_batch", max_active_tis_per_dag=2, map_index_template="{{ batch_id }}")
        def run_stage(batch_id: str, stage: str) -> dict:
            from airflow.sdk import get_current_context

            from mipflow.node.ingest import stages

            get_current_context()["batch_id"] = batch_id  # the mapped task is labelled by its batch, not 0..n

            from airflow.sdk.exceptions import AirflowFailException

            if stage == "depersonalise":  # a database batch reads its source through its Airflow connection
                from mipflow_airflow.hooks.ehr import ehr_connection_url

                result = stages.depersonalise(node_home(), batch_id, connections=ehr_connection_url)
            else:
                result = getattr(stages, stage)(node_home(), batch_id)
            print(f"{batch_id}: {result.get('equation', result)}")
            problem = stages.failure_message(result)
            if problem:  # a failed, held or empty batch is red; a retry cannot fix the file
                raise AirflowFailException(problem)
            return result

        @task(task_id="all_batches_passed")
        def all_batches_passed() -> None:
            """Leaf task: upstream-failed when a batch failed, so the run is red too (the report still runs)."""

        @task(task_id="report", outlets=[_outlet], trigger_rule="all_done")
        def report(batches: list[str], outlet: Asset, stage: str, *, outlet_events=None) -> dict:
            """Per-batch row accounting (rows_in = loaded + quarantined + no_consent + duplicates); after
            loads, the columnar snapshots of the rows as they are now (ADR 0049)."""
            from mipflow.node.ops import node_status, refresh_snapshots

            if stage == "load" and batches:
                for model_key, rows in refresh_snapshots(node_home()).items():
                    print(f"columnar snapshot of {model_key}: current ({rows} rows)")
            status = node_status(node_home())
            for batch in status["batches"]:
                if batch["batch_id"] in batches:
                    print(f"{batch['source']}: {batch['status']} rows_in={batch['rows_in']} "
                          f"loaded={batch['loaded']} quarantined={batch['quarantined']} "
                          f"no_consent={batch['no_consent']} duplicates={batch['duplicates']} {batch['message']}")
            outlet_events[outlet].extra = {"batches": batches}
            return {"datasets": status["datasets"]}

        _batches = waiting_batches(_after)
        _runs = run_stage.partial(stage=_stage).expand(batch_id=_batches)
        _runs >> report(_batches, _outlet, _stage)
        _runs >> all_batches_passed()
