"""Central federated analysis DAGs: one per algorithm, triggered from a Params form.

Nodes are Airflow connections (``mipflow_node_<name>``: host = node API URL,
login = client id, password = client secret).  The default node list comes
from ``MIPFLOW_NODE_CONN_IDS`` (comma-separated) and can be changed in the
form.  Each run is one task, :class:`FederatedAnalysisOperator` (ADR 0047): the
request from the form -> rounds across nodes -> the result (or the refusal) stored
with provenance -> a summary in the task log.
The form's inputs and algorithm parameters come from the algorithm catalogue
(:func:`mipflow.algorithms.catalogue.describe`): the labels, defaults, bounds and
choices a node checks requests against (docs/adr/0022-algorithm-catalogue.md).
An analysis runs on behalf of the Airflow user who triggered the run (the
researcher) in the project named in the form; every node checks both against
its own grants.  The analysis DAGs have no schedule and are created unpaused
(whatever ``dags_are_paused_at_creation`` says), so a fresh central runs what is triggered.  ``federation_metadata`` syncs what every node holds (datasets
only for the triggering user and project; a scheduled run syncs data models).
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

from airflow.sdk import DAG, Param, get_current_context, task

from mipflow.algorithms.catalogue import describe
from mipflow_airflow.dags import default_args, federation_pool
from mipflow_airflow.operators.federated import FederatedAnalysisOperator

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFAULT_NODES = [c for c in os.environ.get("MIPFLOW_NODE_CONN_IDS", "").split(",") if c]
DEFAULT_MODEL = os.environ.get("MIPFLOW_DEFAULT_DATA_MODEL", "stroke:0.1")
#: Pool of the tasks that call nodes (MIPFLOW_POOLS=1; see docs/adr/0017-operability.md), else default_pool.
NODE_POOL = {"pool": federation_pool()} if federation_pool() else {}

def _form(algorithm: dict) -> dict[str, Param]:
    """The trigger form of one algorithm: its inputs and parameters from the catalogue, then the run's settings."""
    params: dict[str, Param] = {
        "data_model": Param(DEFAULT_MODEL, type="string", title="Data model (CODE:VERSION)"),
        "datasets": Param([], type="array", items={"type": "string"}, minItems=1, title="Datasets"),
    }
    params |= {which: Param(**item["form"]) for which, item in algorithm["inputs"].items() if item is not None}
    params["filters"] = Param(None, type=["object", "null"], title="Filters (jQuery QueryBuilder JSON)")
    params |= {name: Param(**item["form"]) for name, item in algorithm["parameters"].items()}
    # Exareme2's preprocessing (the longitudinal transformer, ADR 0034) for the algorithms that take it
    params |= {name: Param(**item["form"]) for name, item in (algorithm.get("preprocessing") or {}).items()}
    params["nodes"] = Param(DEFAULT_NODES, type="array", items={"type": "string"},
                            title="Node connections", description="Airflow connection ids of the nodes")
    params["project"] = Param("", type="string", minLength=1, title="Project",
                              description="the project this analysis belongs to (nodes check their grants)")
    params["min_nodes"] = Param(None, type=["integer", "null"], minimum=1, title="Minimum contributing nodes",
                                description="empty: every node selected must contribute; 3 or more "
                                            "recommended: with fewer, one node's aggregates can be read "
                                            "off the result")
    params["secure_aggregation"] = Param("auto", type="string", enum=["auto", "on", "off"],
                                         title="Secure aggregation",
                                         description="mask each node's aggregates so that only their sum is "
                                                     "seen centrally (auto: on from 3 nodes; ADR 0014)")
    params["standing"] = Param(False, type="boolean", title="Keep as a standing analysis",
                               description="re-run this analysis whenever a node's data change (new batches "
                                           "loaded), keeping every version (ADR 0043; the nodes' controls "
                                           "decide whether a re-run may be answered)")
    return params


for _algorithm in describe():
    _name = _algorithm["name"]
    with DAG(
        dag_id=f"federated_{_name}",
        description=f"Federated {_algorithm['label']}: aggregates only, equal to the pooled analysis",
        schedule=None,
        start_date=START,
        catchup=False,
        # unpaused at creation: a run is only ever triggered (no schedule), and a run of a paused DAG (the
        # "New analysis" page's, a REST trigger) would stay queued until an admin unpaused it
        is_paused_upon_creation=False,
        params=_form(_algorithm),
        tags=["mipflow", "central", "federated"],
        default_args=default_args(),
        render_template_as_native_obj=True,
        doc_md=__doc__,
    ):

        # One task per analysis run (ADR 0047): it makes the request from the form, runs the rounds,
        # stores the result (or the refusal, failing the task) and logs the summary; its "Result" link
        # opens the run's results page.
        FederatedAnalysisOperator(
            task_id="run_analysis",
            algorithm=_name,
            node_conn_ids="{{ params.nodes }}",
            min_nodes="{{ params.min_nodes }}",
            project="{{ params.project }}",
            secure_aggregation="{{ params.secure_aggregation }}",
            standing="{{ params.standing }}",
            **NODE_POOL,
        )


with DAG(
    dag_id="federation_metadata",
    description="Sync what each node holds (data models, datasets, counts above threshold)",
    schedule="@hourly",
    start_date=START,
    catchup=False,
    params={"nodes": Param(DEFAULT_NODES, type="array", items={"type": "string"}, title="Node connections"),
            "project": Param("", type="string", title="Project (datasets listed for you in this project)")},
    tags=["mipflow", "central"],
    default_args=default_args(),
):

    @task(**NODE_POOL)
    def sync_metadata() -> dict:
        """What every node holds, for the triggering user and the form's project (:mod:`mipflow.central.metadata`)."""
        from mipflow.central.metadata import sync_metadata as sync
        from mipflow_airflow.hooks.node import NodeHook
        from mipflow_airflow.operators.federated import triggering_user

        from airflow.sdk.exceptions import AirflowFailException

        from mipflow_airflow.exceptions import NodeConnectionError

        context = get_current_context()
        clients = {}
        try:
            for conn_id in context["params"]["nodes"]:
                clients[conn_id] = NodeHook(conn_id).get_conn()
            return sync(clients, researcher=triggering_user(context), project=context["params"].get("project"))
        except NodeConnectionError as exc:  # an unknown or incomplete connection: a retry cannot help
            raise AirflowFailException(str(exc)) from None
        finally:
            for client in clients.values():
                client.close()

    sync_metadata()
