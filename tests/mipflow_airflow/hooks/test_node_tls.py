"""The hook and the operator reach a node over mutual TLS with the connection's extra (``ca_cert``,
``client_cert``, ``client_key``); a wrong CA fails the task at once, naming the CA."""
from __future__ import annotations

import ssl
from types import SimpleNamespace

import pytest

from tests.mipflow_airflow.conftest import PROJECT, REQUEST, RESEARCHER, set_connection
from tests.nodes import grant_all, load_frame, running_nodes, tls_federation, standard_home


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory):
    """One node (``secure0``) holding synthetic rows, serving HTTPS with mutual TLS required."""
    from mipflow.protocol.signing import issue_client
    from mipflow.protocol.tls import client_context
    from tests.mipflow.algorithms.synthetic import MODEL, make_data

    root = tmp_path_factory.mktemp("airflow-tls")
    home = standard_home(root / "secure0", "secure0")
    grant_all(home.root)
    frame = make_data(80, 150)
    frame.insert(0, "subjectcode", [f"s_{k:04d}" for k in range(len(frame))])
    load_frame(home.root, MODEL, frame)
    central = tls_federation(root / "ca", [home.root], mutual=True)
    cred = issue_client(home.root, "central")
    with running_nodes([home.root], https=True, verify=client_context(**central)) as (url,):
        yield {"url": url, "login": cred.client_id, "password": cred.secret.hex(), "tls": central, "root": root}


def _connect(monkeypatch, node, **extra) -> str:
    set_connection(monkeypatch, "mipflow_node_secure0", host=node["url"], login=node["login"],
                   password=node["password"], extra={"node_name": "secure0", **extra})
    return "mipflow_node_secure0"


def test_the_operator_runs_an_analysis_over_mutual_tls(monkeypatch, tls_node):
    from mipflow_airflow.hooks.node import NodeHook
    from mipflow_airflow.operators.federated import FederatedAnalysisOperator

    conn_id = _connect(monkeypatch, tls_node, **tls_node["tls"])
    client = NodeHook(conn_id).get_conn()
    try:
        assert isinstance(client._tls, ssl.SSLContext) and client.health()["node"] == "secure0"
    finally:
        client.close()
    operator = FederatedAnalysisOperator(task_id="t", algorithm="linear_regression", request=REQUEST,
                                         project=PROJECT, secure_aggregation="off", node_conn_ids=[conn_id])
    outcome = operator.execute({"dag_run": SimpleNamespace(triggering_user_name=RESEARCHER)})
    assert list(outcome["contributed"]) == ["secure0"] and outcome["contributed"]["secure0"] > 100


def test_a_node_certificate_from_another_ca_fails_the_task_at_once_naming_the_ca(monkeypatch, tls_node):
    from airflow.sdk.exceptions import AirflowFailException

    from mipflow.protocol.tls import make_ca
    from mipflow_airflow.operators.federated import FederatedAnalysisOperator

    other = make_ca(tls_node["root"] / "other-ca")
    conn_id = _connect(monkeypatch, tls_node, **{**tls_node["tls"], "ca_cert": str(other.cert)})
    operator = FederatedAnalysisOperator(task_id="t", algorithm="linear_regression", request=REQUEST,
                                         project=PROJECT, node_conn_ids=[conn_id])
    with pytest.raises(AirflowFailException, match=f"not issued by the pinned CA {other.cert}"):
        operator.execute({"dag_run": SimpleNamespace(triggering_user_name=RESEARCHER)})


def test_a_missing_tls_file_is_a_connection_error_naming_it(monkeypatch, tls_node):
    from mipflow_airflow.exceptions import NodeConnectionError
    from mipflow_airflow.hooks.node import NodeHook

    conn_id = _connect(monkeypatch, tls_node, ca_cert="/nonexistent/ca.crt")
    with pytest.raises(NodeConnectionError, match="mipflow_node_secure0: CA file ca_cert=/nonexistent/ca.crt"):
        NodeHook(conn_id).get_conn()
    ok, message = NodeHook(conn_id).test_connection()
    assert not ok and "/nonexistent/ca.crt" in message
