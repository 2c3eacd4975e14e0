"""NodeHook: builds a node client from an Airflow connection and talks to a real node service."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.mipflow_airflow.conftest import PROJECT, RESEARCHER, set_connection


def test_the_hook_reaches_a_real_node_with_the_connections_credential(nodes, node_connections):
    from mipflow_airflow.hooks.node import NodeHook

    client = NodeHook(node_connections[0]).get_conn()
    try:
        assert client.name == "node0" and client.endpoint.url == nodes["node0"]["url"]
        assert client.health()["node"] == "node0"
        (model,) = client.metadata(RESEARCHER, PROJECT)["data_models"]  # signed with the connection's secret
        assert model["data_model"] == "synth:1"
        assert {d["dataset"] for d in model["datasets"]} == {"d0", "d1", "d2"}
    finally:
        client.close()


@pytest.mark.parametrize(("fields", "url", "name"), [
    pytest.param({"host": "http://10.0.0.5:8701", "extra": {"node_name": "hospital_a"}},
                 "http://10.0.0.5:8701", "hospital_a", id="url-and-node-name"),
    pytest.param({"host": "node.example", "port": 8443, "schema": "https"},
                 "https://node.example:8443", "x", id="host-port-scheme"),
    pytest.param({"host": "node.example"}, "http://node.example", "x", id="bare-host-name-from-conn-id"),
])
def test_endpoint_from_connection_fields(monkeypatch, fields, url, name):
    from mipflow_airflow.hooks.node import NodeHook

    set_connection(monkeypatch, "mipflow_node_x", login="central", password="ab" * 32, **fields)
    endpoint, _ = NodeHook("mipflow_node_x").endpoint()
    assert (endpoint.url, endpoint.name, endpoint.client_id, endpoint.secret) == (url, name, "central", "ab" * 32)


@pytest.mark.parametrize("missing", ["login", "password"])
def test_a_connection_without_its_credential_raises_the_hooks_own_error(monkeypatch, missing):
    from airflow.sdk.exceptions import AirflowFailException

    from mipflow_airflow.exceptions import NodeConnectionError
    from mipflow_airflow.hooks.node import NodeHook

    fields = {"host": "http://127.0.0.1:1", "login": "central", "password": "ab" * 32}
    fields.pop(missing)
    set_connection(monkeypatch, "mipflow_node_x", **fields)
    with pytest.raises(NodeConnectionError, match="needs login .client id. and password") as caught:
        NodeHook("mipflow_node_x").get_conn()
    assert not isinstance(caught.value, AirflowFailException)  # what a failure means for a task is the operator's call


def test_test_connection_reports_a_working_node_a_wrong_secret_and_a_dead_port(monkeypatch, nodes, node_connections,
                                                                             dead_connection):
    from mipflow_airflow.hooks.node import NodeHook

    assert NodeHook(node_connections[1]).test_connection() == (True, "node node1 answered")
    set_connection(monkeypatch, "mipflow_node_forged", host=nodes["node1"]["url"], login="central",
                   password="11" * 32)
    ok, message = NodeHook("mipflow_node_forged").test_connection()
    assert not ok and "bad signature" in message
    ok, message = NodeHook(dead_connection, retries=0).test_connection()
    assert not ok and "unreachable" in message
    set_connection(monkeypatch, "mipflow_node_blank", host=nodes["node1"]["url"])
    ok, message = NodeHook("mipflow_node_blank").test_connection()
    assert not ok and "needs login" in message


def test_node_hook_timeout_and_retries_from_the_environment(monkeypatch):
    from mipflow_airflow.hooks.node import NodeHook

    set_connection(monkeypatch, "mipflow_node_x", host="http://127.0.0.1:1", login="central", password="00" * 32)
    monkeypatch.setenv("MIPFLOW_NODE_TIMEOUT_SECONDS", "12.5")
    monkeypatch.setenv("MIPFLOW_NODE_RETRIES", "5")
    client = NodeHook("mipflow_node_x").get_conn()
    try:
        assert client.retries == 5 and client._http.timeout.read == 12.5
    finally:
        client.close()
    # a connection's extra timeout wins over the environment; arguments win over both
    set_connection(monkeypatch, "mipflow_node_x", host="http://127.0.0.1:1", login="central", password="00" * 32,
                   extra={"timeout": 3})
    client = NodeHook("mipflow_node_x").get_conn()
    try:
        assert client._http.timeout.read == 3.0
    finally:
        client.close()
    client = NodeHook("mipflow_node_x", timeout=7, retries=0).get_conn()
    try:
        assert client.retries == 0 and client._http.timeout.read == 7.0
    finally:
        client.close()
    monkeypatch.setenv("MIPFLOW_NODE_RETRIES", "few")
    with pytest.raises(ValueError, match="MIPFLOW_NODE_RETRIES='few' is not a valid int"):
        NodeHook("mipflow_node_x")


def test_the_hook_owns_the_connection_only():
    """No task-level exception and no DAG helpers in the hook's module."""
    import mipflow_airflow.hooks.node as module

    tree = ast.parse(Path(module.__file__).read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "AirflowFailException" not in names and "mipflow_airflow.dags" not in modules


def test_an_unknown_connection_is_the_hooks_own_error_naming_it():
    """Not Airflow's not-found error (a retryable failure): the operator fails the task at once."""
    from mipflow_airflow.exceptions import NodeConnectionError
    from mipflow_airflow.hooks.node import NodeHook

    with pytest.raises(NodeConnectionError, match=r"no Airflow connection 'mipflow_node_nowhere'.*param 'nodes'"):
        NodeHook("mipflow_node_nowhere").get_conn()

