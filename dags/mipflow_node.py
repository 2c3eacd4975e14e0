"""Hospital node DAGs: capture -> depersonalise -> validate -> load, chained by Assets.

Each node runs its own Airflow with ``MIPFLOW_NODE_HOME`` pointing at its node
home (``mipflow node init``).  The capture DAG runs nightly (and on demand);
each later stage is scheduled on the Asset the stage before it emits, and
works through every batch waiting for it, so a failed run is caught up by
the next one.  The logic lives in :mod:`mipflow.stages`; the tasks only call
it (imports happen inside tasks to keep parsing cheap).
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, Asset, Param, get_current_context, task

CAPTURED = Asset(name="mipflow_node_captured", uri="mipflow://node/captured")
DEPERSONALISED = Asset(name="mipflow_node_depersonalised", uri="mipflow://node/depersonalised")
VALIDATED = Asset(name="mipflow_node_validated", uri="mipflow://node/validated")
FEATURE_STORE = Asset(name="mipflow_node_feature_store", uri="mipflow://node/feature_store")

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFAULT_ARGS = {"retries": int(os.environ.get("MIPFLOW_TASK_RETRIES", "1")), "retry_delay": timedelta(seconds=30)}


def _params() -> dict[str, Param]:
    return {"node_home": Param(os.environ.get("MIPFLOW_NODE_HOME", ""), type="string",
                               title="Node home", description="Folder made by `mipflow node init`")}


def _home():
    from mipflow.config import NodeHome

    home = get_current_context()["params"]["node_home"]
    if not home:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("no node home: set MIPFLOW_NODE_HOME or the node_home param")
    return NodeHome(home)


def _waiting(stage: str) -> list[str]:
    from mipflow.node import open_store
    from mipflow.stages import waiting

    return waiting(open_store(_home()), stage)


with DAG(
    dag_id="node_capture",
    description="Register new EHR exports from the landing folder; apply consent withdrawals",
    schedule="0 2 * * *",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    params=_params(),
    default_args=DEFAULT_ARGS,
    tags=["mipflow", "node"],
    doc_md=__doc__,
):

    @task(outlets=[CAPTURED])
    def capture_landing(*, outlet_events=None) -> list[str]:
        """Scan landing/, register new files by SHA-256, delete withdrawn patients' rows."""
        from mipflow.stages import capture

        summary = capture(_home())
        for item in summary["skipped"]:
            print(f"skipped {item['path']}: {item['reason']}")
        print(f"captured {len(summary['captured'])} batch(es); "
              f"{summary['withdrawn_rows_deleted']} row(s) deleted for withdrawn consent")
        outlet_events[CAPTURED].extra = {"batches": summary["captured"]}
        return summary["captured"]

    capture_landing()


with DAG(
    dag_id="node_depersonalise",
    description="Keep consented rows, pseudonymise, drop identifiers",
    schedule=[CAPTURED],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    params=_params(),
    default_args=DEFAULT_ARGS,
    tags=["mipflow", "node"],
):

    @task
    def batches_captured() -> list[str]:
        return _waiting("capture")

    @task(max_active_tis_per_dag=2)
    def depersonalise_batch(batch_id: str) -> dict:
        from mipflow.stages import depersonalise

        result = depersonalise(_home(), batch_id)
        print(f"{batch_id}: {result}")
        return result

    @task(outlets=[DEPERSONALISED], trigger_rule="all_done")
    def announce_depersonalised(batches: list[str], *, outlet_events=None) -> None:
        outlet_events[DEPERSONALISED].extra = {"batches": batches}

    captured = batches_captured()
    depersonalise_batch.expand(batch_id=captured) >> announce_depersonalised(captured)


with DAG(
    dag_id="node_validate",
    description="Harmonise onto the data model and validate with great-expectations; quarantine failures",
    schedule=[DEPERSONALISED],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    params=_params(),
    default_args=DEFAULT_ARGS,
    tags=["mipflow", "node"],
):

    @task
    def batches_depersonalised() -> list[str]:
        return _waiting("depersonalise")

    @task(max_active_tis_per_dag=2)
    def validate_batch(batch_id: str) -> dict:
        from mipflow.stages import validate

        result = validate(_home(), batch_id)
        print(f"{batch_id}: {result}")
        return result

    @task(outlets=[VALIDATED], trigger_rule="all_done")
    def announce_validated(batches: list[str], *, outlet_events=None) -> None:
        outlet_events[VALIDATED].extra = {"batches": batches}

    depersonalised = batches_depersonalised()
    validate_batch.expand(batch_id=depersonalised) >> announce_validated(depersonalised)


with DAG(
    dag_id="node_load",
    description="Load validated batches into the feature store (one transaction per batch)",
    schedule=[VALIDATED],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    params=_params(),
    default_args=DEFAULT_ARGS,
    tags=["mipflow", "node"],
):

    @task
    def batches_validated() -> list[str]:
        return _waiting("validate")

    @task
    def load_batch(batch_id: str) -> dict:
        from mipflow.stages import load

        result = load(_home(), batch_id)
        print(f"{batch_id}: {result.get('equation', result)}")
        return result

    @task(outlets=[FEATURE_STORE], trigger_rule="all_done")
    def report(batches: list[str], *, outlet_events=None) -> dict:
        """Per-batch row accounting, as shown in the task log."""
        from mipflow.node import node_status

        status = node_status(_home())
        for batch in status["batches"]:
            print(f"{batch['source']}: {batch['status']} rows_in={batch['rows_in']} loaded={batch['loaded']} "
                  f"quarantined={batch['quarantined']} no_consent={batch['no_consent']} "
                  f"duplicates={batch['duplicates']} {batch['message']}")
        outlet_events[FEATURE_STORE].extra = {"batches": batches}
        return {"datasets": status["datasets"]}

    validated = batches_validated()
    load_batch.expand(batch_id=validated) >> report(validated)
