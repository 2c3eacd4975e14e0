"""``FederatedAnalysisOperator``: one federated analysis across the nodes of a run."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowFailException

from mipflow_airflow.exceptions import NodeConnectionError, NodesUnavailableError
from mipflow_airflow.hooks.node import NodeHook

if TYPE_CHECKING:
    from airflow.sdk import Context, XComArg

    from mipflow.central.client import NodeClient

#: ``secure_aggregation`` values and what :func:`mipflow.central.rounds.run_analysis` takes for them.
SECURE_AGGREGATION: dict[Any, bool | None] = {"auto": None, "on": True, "off": False, None: None,
                                              True: True, False: False}


#: Where the results pages are mounted in the api-server (``plugins/mipflow_ui_plugin.py``).
RESULTS_PREFIX = "/mipflow"


def results_url(run_id: str, base_url: str | None = None) -> str:
    """The results page of one run: under Airflow's ``[api] base_url`` when set, else from the site root."""
    from urllib.parse import quote

    if base_url is None:
        try:
            from airflow.configuration import conf

            base_url = conf.get("api", "base_url", fallback="") or ""
        except Exception:  # noqa: BLE001 - a link from the site root still works
            base_url = ""
    return f"{base_url.rstrip('/')}{RESULTS_PREFIX}/run?id={quote(run_id, safe='')}"


class ResultLink(BaseOperatorLink):
    """The task's "Result" button: the run's page on the results pages (its result, or why it has none)."""

    name = "Result"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        return results_url(ti_key.run_id)


class FederatedAnalysisOperator(BaseOperator):
    """Run ``algorithm`` over the nodes behind ``node_conn_ids``; store the result with provenance.

    The whole analysis run is this one task (ADR 0047: a task instance's start-up in Airflow 3 costs
    about a second, so the central DAGs do not split the request, the rounds and the storing into
    three tasks): build the request from the run's Params when ``request`` is not given, run the
    rounds, store the outcome in the central results store (:class:`mipflow.central.results.ResultStore`,
    under the run id, with the triggering user and the DAG id) and log its summary at INFO, then
    register it as a standing analysis when ``standing`` is true.

    The rounds, parallel calls, dropout policy (``min_nodes``) and combination
    are :func:`mipflow.central.rounds.run_analysis`; this operator builds one
    :class:`mipflow_airflow.hooks.node.NodeHook` client per connection and decides
    what a failure means for the task:

    - an invalid request, a request the nodes refuse, an unknown connection or one
      without its credential, or too few contributing nodes while enough are
      reachable fail the task at once (``AirflowFailException``: a retry cannot help);
    - fewer reachable nodes than ``min_nodes`` (before the analysis, or when it
      ends with too few contributors) raises :class:`NodesUnavailableError`,
      which Airflow retries (``MIPFLOW_TASK_RETRIES``).  Single calls are retried
      by the client already (connection errors and 5xx).

    Progress (``round k of at most N: n node(s) answered, m left out``) is logged
    by :mod:`mipflow.central.rounds` into the task log.  The central DAGs put
    this task in the federation pool when ``MIPFLOW_POOLS=1`` (``pool=``).
    A run that fails is stored in the central results store as ``failed`` or
    ``refused`` (:func:`mipflow.central.results.failed_outcome`) and the task fails;
    the task's "Result" link (:class:`ResultLink`) opens the run's results page either way.
    Storing happens only in a DAG run (a context with a ``run_id``); ``execute`` returns the
    outcome, which is not pushed to XCom unless ``do_xcom_push=True`` is given: the result
    is private to the researcher and the project (ADR 0011), and XCom is readable by everyone
    who may read the DAG's runs.

    Parameters
    ----------
    algorithm : str
        A catalogue algorithm (``linear_regression``, ...).
    request : dict, XComArg or None
        The MIP / Exareme2 request (``inputdata``, ``parameters``); templated.  ``None`` (the
        central DAGs): made from the run's Params when the task runs
        (:func:`mipflow.central.standing.request_from_conf`).
    node_conn_ids : list of str, or str
        Connection ids of the nodes, or one comma-separated string; templated.
    project : str
        The project the analysis belongs to (every node checks its grants); templated.
    min_nodes : int, str or None
        Fewest contributing nodes for a result (a template rendering to an int); ``None``
        (the default) or empty: every node of ``node_conn_ids``; templated.
    researcher : str, optional
        On whose behalf; default the user who triggered the run
        (``dag_run.triggering_user_name``); templated.
    secure_aggregation : {"auto", "on", "off"} or bool
        Mask each node's aggregates so only their sum is seen (:mod:`mipflow.secagg`); templated.
    standing : bool or str
        Register the analysis as a standing analysis of the researcher after it succeeds
        (ADR 0043; the run's Params are its form); templated (the central DAGs: ``params.standing``).
    """

    template_fields: Sequence[str] = ("request", "node_conn_ids", "min_nodes", "researcher", "project",
                                      "secure_aggregation", "standing")
    ui_color = "#d8e9f5"
    operator_extra_links = (ResultLink(),)

    def __init__(self, *, algorithm: str, node_conn_ids: list[str] | str, project: str,
                 request: dict[str, Any] | XComArg | None = None, min_nodes: int | str | None = None,
                 researcher: str | None = None,
                 secure_aggregation: Literal["auto", "on", "off"] | bool | str = "auto",
                 standing: bool | str = False, **kwargs: Any) -> None:
        kwargs.setdefault("do_xcom_push", False)  # the result lives in the results store (private), not XCom
        super().__init__(**kwargs)
        self.algorithm = algorithm
        self.request = request
        self.node_conn_ids = node_conn_ids
        self.project = project
        self.min_nodes = min_nodes
        self.researcher = researcher
        self.secure_aggregation = secure_aggregation
        self.standing = standing

    def execute(self, context: Context) -> dict[str, Any]:
        """Run the analysis and store its outcome; a run that fails is stored as failed or refused
        (the results pages list it) and fails the task."""
        self._left_out: dict[str, str] = {}
        try:
            outcome = self._execute(context)
        except (AirflowFailException, NodesUnavailableError) as exc:
            self._store_failure(context, str(exc))
            raise
        self._store_result(context, outcome)
        return outcome

    def _store_result(self, context: Context, outcome: dict[str, Any]) -> None:
        """Store a result under the run id, log its summary and where it went; register it as standing
        when asked.  Outside a DAG run (no ``run_id``) nothing is stored."""
        run_id = context.get("run_id") if hasattr(context, "get") else None
        if not run_id:
            return
        from mipflow.central.results import ResultStore, summary_lines

        dag_run = context.get("dag_run")
        path = ResultStore().save(str(run_id), {**outcome, "triggered_by": triggering_user(context),
                                                "dag_id": getattr(dag_run, "dag_id", None) or self.dag_id})
        for line in summary_lines(outcome):
            self.log.info("%s", line)
        self.log.info("result stored: run %s in %s", run_id, path)
        if str(self.standing).strip().lower() not in ("true", "1", "yes", "on"):
            return
        from mipflow.central.standing import StandingRegistry
        from mipflow.exceptions import RequestError

        registry = StandingRegistry()
        try:  # registered for the researcher who triggered it, with the run's Params as its form
            standing = registry.add(algorithm=outcome["algorithm"], conf=dict(context["params"]),
                                    researcher=outcome["researcher"], project=outcome["project"],
                                    dag_id=getattr(dag_run, "dag_id", None) or self.dag_id)
        except RequestError as exc:  # the result is stored; the task says why it is not standing
            raise AirflowFailException(f"result stored, but not registered as a standing analysis: {exc}") from None
        finally:
            registry.dispose()
        self.log.info("registered as standing analysis %s: re-run when a node's data change", standing.standing_id)

    def _request_from_params(self, context: Context) -> dict[str, Any]:
        """The request the run's trigger form makes (``request=None``)."""
        from mipflow.central.standing import request_from_conf
        from mipflow.exceptions import RequestError

        try:
            return request_from_conf(self.algorithm, context["params"])
        except RequestError as exc:
            raise AirflowFailException(str(exc)) from None

    def _store_failure(self, context: Context, error: str) -> None:
        """Keep the failed run in the central results store (never hides the task's own error)."""
        run_id = context.get("run_id") if hasattr(context, "get") else None
        if not run_id:
            return
        try:
            from mipflow.central.results import ResultStore, failed_outcome

            dag_run = context.get("dag_run")
            doc = failed_outcome(self.algorithm, self.request, error, excluded=self._left_out,
                                 researcher=self.researcher or triggering_user(context), project=self.project,
                                 dag_id=getattr(dag_run, "dag_id", None) or self.dag_id)
            path = ResultStore().save(str(run_id), {**doc, "triggered_by": triggering_user(context)})
            self.log.info("analysis %s: stored as %s in %s", run_id, doc["status"], path)
        except Exception:  # noqa: BLE001 - the task fails with its own error either way
            self.log.warning("could not store the failed run %s in the results store", run_id, exc_info=True)

    def _execute(self, context: Context) -> dict[str, Any]:
        from mipflow.central.client import NodeRefused, NodeUnavailable
        from mipflow.central.rounds import run_analysis
        from mipflow.exceptions import FederationError, RequestError

        if self.request is None:
            self.request = self._request_from_params(context)
        conn_ids = self._conn_ids()
        researcher = self.researcher or triggering_user(context)
        if not researcher:
            raise AirflowFailException("this run has no triggering user: federated analyses run on behalf of "
                                       "a person; trigger the DAG from the UI or the REST API")
        if not self.project:
            raise AirflowFailException("no project: give the project the analysis belongs to (param 'project')")
        secure = SECURE_AGGREGATION.get(self.secure_aggregation, "invalid")
        if secure == "invalid":
            raise AirflowFailException("secure_aggregation must be auto, on or off")
        min_nodes = self._min_nodes(conn_ids)
        clients: list[NodeClient] = []
        try:
            for conn_id in conn_ids:
                clients.append(NodeHook(conn_id).get_conn())
            self._check_reachable(clients, min_nodes)
            try:
                outcome = run_analysis(self.algorithm, self.request, clients, researcher=str(researcher),
                                       project=str(self.project), min_nodes=min_nodes, secure_aggregation=secure)
            except FederationError as exc:
                self._left_out = dict(exc.excluded)
                self._check_reachable(clients, min_nodes)  # too few contributed: a retry helps only if nodes were down
                raise AirflowFailException(str(exc)) from None
        except (NodeConnectionError, RequestError, NodeRefused) as exc:
            raise AirflowFailException(str(exc)) from None
        except NodeUnavailable as exc:
            raise NodesUnavailableError(str(exc)) from None
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

    def _conn_ids(self) -> list[str]:
        conn_ids = self.node_conn_ids
        if isinstance(conn_ids, str):
            conn_ids = [c.strip() for c in conn_ids.split(",") if c.strip()]
        if not conn_ids:
            raise AirflowFailException("no nodes: give node connection ids (param 'nodes')")
        return list(conn_ids)

    def _min_nodes(self, conn_ids: Sequence[str]) -> int:
        """``min_nodes`` as a number: empty means every node selected."""
        if self.min_nodes in (None, "", "None"):
            return len(conn_ids)
        try:
            min_nodes = int(self.min_nodes)
        except (TypeError, ValueError):
            raise AirflowFailException(f"min_nodes must be a whole number, not {self.min_nodes!r}") from None
        if min_nodes < 1:
            raise AirflowFailException(f"min_nodes must be at least 1, not {min_nodes}")
        return min_nodes

    def _check_reachable(self, clients: Sequence[NodeClient], min_nodes: int) -> None:
        """Raise :class:`NodesUnavailableError` if fewer than ``min_nodes`` nodes answer ``/health``
        (``AirflowFailException`` if a TLS failure is among the reasons: a retry cannot fix a certificate)."""
        from mipflow.central.client import NodeRefused, NodeTlsError, NodeUnavailable

        down, tls_failures = [], []
        for client in clients:
            try:
                client.health()
            except NodeTlsError as exc:
                down.append(client.name)
                tls_failures.append(str(exc))
            except NodeUnavailable:
                down.append(client.name)
            except NodeRefused:
                pass  # it answered
        if tls_failures and len(clients) - len(down) < min_nodes:
            raise AirflowFailException(f"{len(clients) - len(down)} of {len(clients)} node(s) reachable, fewer than "
                                       f"min_nodes ({min_nodes}); " + "; ".join(tls_failures))
        if down and len(clients) - len(down) < min_nodes:
            raise NodesUnavailableError(f"{len(clients) - len(down)} of {len(clients)} node(s) reachable, fewer "
                                        f"than min_nodes ({min_nodes}); unreachable: {', '.join(down)}")


def triggering_user(context: Context | dict[str, Any]) -> str | None:
    """The Airflow user who triggered this DAG run (``None`` for scheduled runs)."""
    dag_run = context.get("dag_run") if hasattr(context, "get") else None
    return getattr(dag_run, "triggering_user_name", None) or None
