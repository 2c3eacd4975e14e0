"""Airflow operator that runs one federated analysis across nodes."""
from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator


class FederatedAnalysisOperator(BaseOperator):
    """Run ``algorithm`` over the nodes behind ``node_conn_ids`` and return the result with provenance.

    The rounds, parallel calls, dropout policy (``min_nodes``) and combination
    are :func:`mipflow.central.rounds.run_analysis`; this operator only builds one
    :class:`hooks.mipflow_node.NodeHook` client per connection.  An invalid
    request or too few contributing nodes fail the task without retries
    (retrying cannot help); unreachable nodes are retried by the client.

    The analysis runs on behalf of ``researcher`` (default: the Airflow user who
    triggered the DAG run, ``dag_run.triggering_user_name``) in ``project``;
    every node checks both against its own grants.

    Progress (``round k of at most N: n node(s) answered, m left out``) is
    logged by :mod:`mipflow.central.rounds` into the task log.  The central DAGs put
    this task in the federation pool when ``MIPFLOW_POOLS=1`` (``pool=``; see
    :mod:`mipflow.central.pools`).
    """

    template_fields: Sequence[str] = ("request", "node_conn_ids", "min_nodes", "researcher", "project",
                                      "secure_aggregation")
    ui_color = "#d8e9f5"

    def __init__(self, *, algorithm: str, request: Any, node_conn_ids: Any, min_nodes: Any = 1,
                 project: Any, researcher: Any = None, secure_aggregation: Any = "auto",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.secure_aggregation = secure_aggregation  # "auto" | "on" | "off" (mipflow.secagg)
        self.project = project
        self.researcher = researcher
        self.algorithm = algorithm
        self.request = request
        self.node_conn_ids = node_conn_ids
        self.min_nodes = min_nodes

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from hooks.mipflow_node import NodeHook
        from mipflow.exceptions import FederationError, RequestError
        from mipflow.central.rounds import run_analysis

        conn_ids = self.node_conn_ids
        if isinstance(conn_ids, str):
            conn_ids = [c.strip() for c in conn_ids.split(",") if c.strip()]
        if not conn_ids:
            raise AirflowFailException("no nodes: give node connection ids (param 'nodes')")
        researcher = self.researcher or triggering_user(context)
        if not researcher:
            raise AirflowFailException("this run has no triggering user: federated analyses run on behalf of "
                                       "a person; trigger the DAG from the UI or the REST API")
        if not self.project:
            raise AirflowFailException("no project: give the project the analysis belongs to (param 'project')")
        secure = {"auto": None, "on": True, "off": False, None: None, True: True, False: False}.get(
            self.secure_aggregation, "invalid")
        if secure == "invalid":
            raise AirflowFailException("secure_aggregation must be auto, on or off")
        clients = [NodeHook(conn_id).get_conn() for conn_id in conn_ids]
        try:
            outcome = run_analysis(self.algorithm, self.request, clients, researcher=str(researcher),
                                   project=str(self.project), min_nodes=int(self.min_nodes),
                                   secure_aggregation=secure)
        except (FederationError, RequestError) as exc:
            raise AirflowFailException(str(exc)) from None
        finally:
            for client in clients:
                client.close()
        self.log.info("analysis %s: %d round(s), %d node(s) contributed, %d left out, %.2f s",
                      outcome.analysis_id, outcome.rounds, len(outcome.contributed), len(outcome.excluded),
                      outcome.seconds)
        for node, rows in outcome.contributed.items():
            self.log.info("node %s contributed %d rows", node, rows)
        for node, reason in outcome.excluded.items():
            self.log.warning("node %s left out: %s", node, reason)
        return outcome.to_dict()


def triggering_user(context: Any) -> str | None:
    """The Airflow user who triggered this DAG run (``None`` for scheduled runs)."""
    dag_run = context.get("dag_run") if hasattr(context, "get") else None
    return getattr(dag_run, "triggering_user_name", None) or None
