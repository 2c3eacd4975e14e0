"""FederatedAnalysisOperator against real node services: results, and what each failure means for the task."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest

from tests.mipflow_airflow.conftest import PROJECT, REQUEST, RESEARCHER, set_connection


def _operator(**kwargs):
    from mipflow_airflow.operators.federated import FederatedAnalysisOperator

    args = {"task_id": "run_analysis", "algorithm": "linear_regression", "request": copy.deepcopy(REQUEST),
            "project": PROJECT, "secure_aggregation": "off"}
    return FederatedAnalysisOperator(**{**args, **kwargs})


def _context(user: str | None = RESEARCHER) -> dict:
    return {"dag_run": SimpleNamespace(triggering_user_name=user)}


def test_execute_runs_the_analysis_on_behalf_of_the_triggering_user(nodes, node_connections):
    from mipflow.central.client import NodeClient, NodeEndpoint
    from mipflow.central.rounds import run_analysis

    outcome = _operator(node_conn_ids=node_connections, min_nodes=2).execute(_context())
    assert set(outcome["contributed"]) == {"node0", "node1"} and outcome["excluded"] == {}
    assert outcome["researcher"] == RESEARCHER and outcome["project"] == PROJECT
    # the same analysis without Airflow: the operator adds nothing to the numbers
    clients = [NodeClient(NodeEndpoint(name, n["url"], n["client_id"], n["secret"])) for name, n in nodes.items()]
    try:
        direct = run_analysis("linear_regression", REQUEST, clients, researcher=RESEARCHER, project=PROJECT,
                              min_nodes=2, secure_aggregation=False).to_dict()
    finally:
        for client in clients:
            client.close()
    np.testing.assert_allclose(outcome["result"]["coefficients"], direct["result"]["coefficients"], rtol=1e-12)
    assert outcome["contributed"] == direct["contributed"]


def test_comma_separated_connections_and_an_explicit_researcher(node_connections):
    outcome = _operator(node_conn_ids=",".join(node_connections), min_nodes="2", researcher=RESEARCHER
                        ).execute(_context(user=None))
    assert set(outcome["contributed"]) == {"node0", "node1"} and outcome["researcher"] == RESEARCHER


@pytest.mark.parametrize(("kwargs", "user", "message"), [
    pytest.param({"researcher": "mallory"}, RESEARCHER,
                 r"no node lists dataset\(s\) d0, d1, d2 for researcher mallory", id="approved-nowhere"),
    pytest.param({"researcher": "trudy"}, RESEARCHER, r"fewer than min_nodes \(2\).*refused \(access\)",
                 id="refused-by-every-node"),
    pytest.param({"researcher": "trudy", "min_nodes": 1}, RESEARCHER,
                 r"fewer than min_nodes \(1\).*refused \(access\)", id="refused-by-every-node-min-1"),
    pytest.param({"node_conn_ids": ["mipflow_node_node0", "mipflow_node_nowhere"]}, RESEARCHER,
                 r"no Airflow connection 'mipflow_node_nowhere'", id="unknown-connection"),
    pytest.param({"min_nodes": 0}, RESEARCHER, "min_nodes must be at least 1", id="min-nodes-zero"),
    pytest.param({"request": {**REQUEST, "inputdata": {**REQUEST["inputdata"], "y": ["no_such_variable"]}}},
                 RESEARCHER, "no_such_variable", id="invalid-request"),
    pytest.param({"node_conn_ids": []}, RESEARCHER, r"no nodes: give node connection ids \(param 'nodes'\)",
                 id="no-nodes"),
    pytest.param({}, None, "this run has no triggering user", id="no-researcher"),
    pytest.param({"project": ""}, RESEARCHER, "no project", id="no-project"),
    pytest.param({"secure_aggregation": "maybe"}, RESEARCHER, "secure_aggregation must be auto, on or off",
                 id="bad-secure-aggregation"),
    pytest.param({"min_nodes": "two"}, RESEARCHER, "min_nodes must be a whole number", id="bad-min-nodes"),
    pytest.param({"node_conn_ids": ["mipflow_node_blank"]}, RESEARCHER, "needs login", id="connection-without-secret"),
])
def test_failures_a_retry_cannot_help_fail_the_task_at_once(monkeypatch, nodes, node_connections, kwargs, user,
                                                            message):
    from airflow.sdk.exceptions import AirflowFailException

    from tests.nodes import grant_all

    set_connection(monkeypatch, "mipflow_node_blank", host=nodes["node0"]["url"])
    if kwargs.get("researcher") == "trudy":  # approved for another algorithm only: the nodes list her datasets
        for node in nodes.values():  # but refuse her steps
            grant_all(node["home"], "trudy", algorithms="ttest_onesample")
    operator = _operator(**{"node_conn_ids": node_connections, **kwargs})
    with pytest.raises(AirflowFailException, match=message):
        operator.execute(_context(user))


@pytest.mark.parametrize("min_nodes", [1, 2])
def test_too_few_reachable_nodes_is_a_retryable_failure(node_connections, dead_connection, min_nodes):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from mipflow_airflow.exceptions import NodesUnavailableError

    conn_ids = [dead_connection] if min_nodes == 1 else [node_connections[0], dead_connection]
    with pytest.raises(NodesUnavailableError, match=rf"of {len(conn_ids)} node\(s\) reachable.*unreachable: gone"
                       ) as caught:
        _operator(node_conn_ids=conn_ids, min_nodes=min_nodes).execute(_context())
    # an ordinary task failure: Airflow retries it (MIPFLOW_TASK_RETRIES); AirflowFailException would not be
    assert isinstance(caught.value, AirflowException) and not isinstance(caught.value, AirflowFailException)


@pytest.mark.parametrize("empty", [None, "", "None"])
def test_min_nodes_defaults_to_every_node_selected(node_connections, dead_connection, empty):
    """Empty min_nodes (the form's default; "None" is how a template renders it as text): every
    node selected must contribute, so an unreachable one fails the run instead of being left out."""
    from mipflow_airflow.exceptions import NodesUnavailableError

    outcome = _operator(node_conn_ids=node_connections, min_nodes=empty).execute(_context())
    assert set(outcome["contributed"]) == {"node0", "node1"}
    with pytest.raises(NodesUnavailableError, match=r"2 of 3 node\(s\) reachable, fewer than min_nodes \(3\)"):
        _operator(node_conn_ids=[*node_connections, dead_connection], min_nodes=empty).execute(_context())


def test_an_unreachable_node_is_left_out_when_enough_others_answer(node_connections, dead_connection):
    outcome = _operator(node_conn_ids=[*node_connections, dead_connection], min_nodes=2).execute(_context())
    assert set(outcome["contributed"]) == {"node0", "node1"}
    assert outcome["excluded"]["gone"].startswith("unavailable")


def test_template_fields_render_to_typed_values():
    from airflow.sdk import DAG

    from mipflow_airflow.operators.federated import FederatedAnalysisOperator

    assert set(FederatedAnalysisOperator.template_fields) == {"request", "node_conn_ids", "min_nodes", "researcher",
                                                              "project", "secure_aggregation", "standing"}
    with DAG("templated", schedule=None, render_template_as_native_obj=True):
        operator = FederatedAnalysisOperator(
            task_id="run_analysis", algorithm="linear_regression", request={"inputdata": "{{ params.inputdata }}"},
            node_conn_ids="{{ params.nodes }}", min_nodes="{{ params.min_nodes }}", project="{{ params.project }}",
            secure_aggregation="{{ params.secure_aggregation }}")
    params = {"nodes": ["mipflow_node_a", "mipflow_node_b"], "min_nodes": 2, "project": "p",
              "secure_aggregation": "on", "inputdata": {"y": ["y"]}}
    operator.render_template_fields({"params": params})
    assert operator.node_conn_ids == ["mipflow_node_a", "mipflow_node_b"] and operator.min_nodes == 2
    assert (operator.project, operator.secure_aggregation) == ("p", "on")
    assert operator.request == {"inputdata": {"y": ["y"]}} and operator.researcher is None
    operator.min_nodes = "{{ params.min_nodes }}"
    operator.render_template_fields({"params": {**params, "min_nodes": None}})  # the form's default
    assert operator._min_nodes(operator.node_conn_ids) == 2


def test_arguments_are_keyword_only():
    from mipflow_airflow.operators.federated import FederatedAnalysisOperator

    with pytest.raises(TypeError):
        FederatedAnalysisOperator("run_analysis", "linear_regression")  # type: ignore[misc]


def test_a_refused_or_failed_run_is_stored_for_the_results_pages(monkeypatch, tmp_path, nodes, node_connections):
    from airflow.sdk.exceptions import AirflowFailException

    from mipflow.central.results import ResultStore
    from tests.nodes import grant_all

    monkeypatch.setenv("MIPFLOW_CENTRAL_HOME", str(tmp_path / "central"))
    monkeypatch.delenv("MIPFLOW_RESULTS_DB_URL", raising=False)
    for node in nodes.values():  # approved for another algorithm only: every node refuses the step
        grant_all(node["home"], "trudy", algorithms="ttest_onesample")
    context = {**_context(), "run_id": "manual__refused"}
    with pytest.raises(AirflowFailException):
        _operator(node_conn_ids=node_connections, researcher="trudy").execute(context)
    doc = ResultStore(tmp_path / "central").document("manual__refused")
    assert doc["status"] == "refused" and "fewer than min_nodes (2)" in doc["error"]
    assert doc["researcher"] == "trudy" and doc["request"]["inputdata"]["datasets"] == ["d0", "d1", "d2"]
    assert {n["control"] for n in doc["nodes"].values()} == {"access"} and set(doc["nodes"]) == {"node0", "node1"}
    assert all("grant" in n["what_to_change"] for n in doc["nodes"].values())

    context = {**_context(), "run_id": "manual__failed"}
    with pytest.raises(AirflowFailException):
        _operator(node_conn_ids=["mipflow_node_nowhere"]).execute(context)
    doc = ResultStore(tmp_path / "central").document("manual__failed")
    assert doc["status"] == "failed" and "no Airflow connection 'mipflow_node_nowhere'" in doc["error"]


def _run_context(run_id: str, params: dict, user: str = RESEARCHER) -> dict:
    """What a DAG run gives the task: its id, its DAG, its triggering user and its form's values."""
    return {"dag_run": SimpleNamespace(triggering_user_name=user, dag_id="federated_linear_regression"),
            "run_id": run_id, "params": params}


def _form(node_connections) -> dict:
    inputdata = REQUEST["inputdata"]
    return {"data_model": inputdata["data_model"], "datasets": list(inputdata["datasets"]), "x": list(inputdata["x"]),
            "y": inputdata["y"][0], "filters": None, "nodes": node_connections, "min_nodes": 2, "project": PROJECT,
            "secure_aggregation": "off", "standing": False}


def test_one_task_makes_the_request_from_the_form_stores_the_result_and_logs_its_summary(
        monkeypatch, tmp_path, caplog, capfd, node_connections):
    """The central DAGs' single task (ADR 0047): no request given, so the run's Params make it; the
    outcome is stored under the run id with the triggering user and the DAG, the summary is in the log,
    and the result is not pushed to XCom (private to the researcher and the project)."""
    import logging

    from mipflow.central.results import ResultStore

    monkeypatch.setenv("MIPFLOW_CENTRAL_HOME", str(tmp_path / "central"))
    monkeypatch.delenv("MIPFLOW_RESULTS_DB_URL", raising=False)
    operator = _operator(request=None, node_conn_ids=node_connections, min_nodes=2)
    assert operator.do_xcom_push is False
    with caplog.at_level(logging.INFO):
        outcome = operator.execute(_run_context("manual__one_task", _form(node_connections)))
    assert operator.request == REQUEST  # the form made the same request as the test's own
    stored = ResultStore(tmp_path / "central").document("manual__one_task")
    assert stored["result"]["coefficients"] == outcome["result"]["coefficients"]
    assert (stored["triggered_by"], stored["dag_id"], stored["researcher"]) == (
        RESEARCHER, "federated_linear_regression", RESEARCHER)
    assert set(stored["contributed"]) == {"node0", "node1"}
    out, err = capfd.readouterr()
    text = out + err + caplog.text  # the operator's own log goes through Airflow's structlog
    assert "linear_regression: 2 node(s) contributed" in text and "result stored: run manual__one_task in" in text
    # outside a DAG run (no run id) nothing is stored
    _operator(node_conn_ids=node_connections, min_nodes=2).execute(_context())
    assert [r["run_id"] for r in ResultStore(tmp_path / "central").runs()] == ["manual__one_task"]


def test_a_form_that_makes_no_request_fails_the_task_and_is_stored_as_failed(monkeypatch, tmp_path,
                                                                            node_connections):
    from airflow.sdk.exceptions import AirflowFailException

    from mipflow.central.results import ResultStore

    monkeypatch.setenv("MIPFLOW_CENTRAL_HOME", str(tmp_path / "central"))
    monkeypatch.delenv("MIPFLOW_RESULTS_DB_URL", raising=False)
    with pytest.raises(AirflowFailException, match="unknown algorithm 'no_such_algorithm'"):
        _operator(algorithm="no_such_algorithm", request=None, node_conn_ids=node_connections).execute(
            _run_context("manual__no_request", _form(node_connections)))
    doc = ResultStore(tmp_path / "central").document("manual__no_request")
    assert doc["status"] == "failed" and "unknown algorithm" in doc["error"] and doc["result"] == {}
