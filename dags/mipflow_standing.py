"""Standing analyses: re-run when a node's data version changes (docs/adr/0043-standing-analyses.md).

Event-driven scheduling (Airflow 3): the Asset ``mipflow_node_data_versions`` has an
``AssetWatcher`` whose trigger (:class:`mipflow_airflow.triggers.data_version.NodeDataVersionTrigger`,
run by the triggerer) polls every node of every active standing analysis for its data version,
every ``MIPFLOW_STANDING_POLL_SECONDS`` (default 30), and raises an Asset event when one
changed.  The event schedules ``standing_analyses``: one mapped task per active standing
analysis runs it again when its nodes' data versions differ from its last attempt's
(:func:`mipflow.central.standing.rerun`: the same request, researcher, project and nodes, the
nodes' own controls), and stores a new version with its provenance, or "waiting for more data"
with the nodes' reasons when they refuse.  Triggered by hand, it checks every standing analysis
the same way (it never re-runs one whose data did not change).
"""
from __future__ import annotations

from airflow.sdk import DAG, Asset, AssetWatcher, get_current_context, task

from mipflow_airflow.dags import default_args, federation_pool
from mipflow_airflow.settings import number
from mipflow_airflow.triggers.data_version import NodeDataVersionTrigger

NODE_POOL = {"pool": federation_pool()} if federation_pool() else {}
#: The nodes' data versions, as the watcher sees them change.
NODE_DATA_VERSIONS = Asset(
    "mipflow_node_data_versions", uri="mipflow://central/node-data-versions",
    watchers=[AssetWatcher(name="mipflow_node_data_versions", trigger=NodeDataVersionTrigger(
        poll_seconds=number("MIPFLOW_STANDING_POLL_SECONDS", "30", float, minimum=1)))])

with DAG(
    dag_id="standing_analyses",
    description="Re-run standing analyses when a node's data version changes",
    schedule=[NODE_DATA_VERSIONS],
    catchup=False,
    max_active_runs=1,
    tags=["mipflow", "central", "standing"],
    default_args=default_args(),
    doc_md=__doc__,
):

    @task
    def active_standing() -> list[str]:
        """The standing analyses to check: every active one (each task decides whether it is due)."""
        import logging

        from mipflow.central.standing import StandingRegistry

        context = get_current_context()
        for event in (context.get("triggering_asset_events") or {}).get(NODE_DATA_VERSIONS, []):
            payload = (event.extra or {}).get("payload") or {}
            logging.getLogger("mipflow.central.standing").info("data versions changed for: %s",
                                                               ", ".join(payload.get("due") or []))
        registry = StandingRegistry()
        try:
            return [s.standing_id for s in registry.list()]
        finally:
            registry.dispose()

    @task(**NODE_POOL)
    def rerun(standing_id: str) -> dict:
        """Run one standing analysis again if its nodes' data changed; store the version or the wait."""
        from airflow.sdk.exceptions import AirflowFailException

        from mipflow.central.results import ResultStore
        from mipflow.central.standing import StandingRegistry, rerun as rerun_standing
        from mipflow_airflow.exceptions import NodeConnectionError
        from mipflow_airflow.hooks.node import NodeHook

        context = get_current_context()
        registry = StandingRegistry()
        clients = []
        try:
            standing = registry.get(standing_id)
            if standing is None or standing.removed_at:
                return {"status": "removed", "standing_id": standing_id}
            try:
                clients = [NodeHook(conn_id).get_conn() for conn_id in standing.nodes]
            except NodeConnectionError as exc:
                raise AirflowFailException(str(exc)) from None
            outcome = rerun_standing(standing, clients, registry=registry, store=ResultStore(),
                                     run_id=f"{context['run_id']}__{standing_id}")
        finally:
            for client in clients:
                client.close()
            registry.dispose()
        if outcome["status"] == "failed":
            raise AirflowFailException(f"standing analysis {standing_id}: {outcome.get('error', '')[:400]}")
        return {k: outcome.get(k) for k in ("status", "standing_id", "run_id", "version")}

    rerun.expand(standing_id=active_standing())
