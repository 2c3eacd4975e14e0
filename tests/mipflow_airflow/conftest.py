"""Real node services on loopback, and Airflow connections to them, for the Airflow layer's tests."""
from __future__ import annotations

import json
from typing import Any

import pytest

from tests.nodes import PROJECT, RESEARCHER, free_port, grant_all, load_frame, pin_each_other, running_nodes
from tests.nodes import standard_home

#: The synthetic model's request the operator tests analyse (tests/mipflow/algorithms/synthetic.py).
REQUEST = {"inputdata": {"data_model": "synth:1", "datasets": ["d0", "d1", "d2"], "x": ["x1", "age"],
                         "y": ["y"], "filters": None}, "parameters": {}}


@pytest.fixture(scope="package")
def nodes(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Two nodes (``node0``, ``node1``) holding synthetic rows, served by ``mipflow node serve``.

    Each entry: ``url``, ``client_id``, ``secret`` (hex) and ``home``.  Both nodes approve
    :data:`tests.nodes.RESEARCHER` in :data:`tests.nodes.PROJECT`; nobody else.
    """
    from mipflow.protocol.signing import issue_client
    from tests.mipflow.algorithms.synthetic import MODEL, make_data

    root = tmp_path_factory.mktemp("airflow-layer-nodes")
    homes = []
    for i in range(2):
        home = standard_home(root / f"node{i}", f"node{i}")
        home.set_setting("differencing_check", 0)  # the tests ask overlapping cohorts on purpose
        grant_all(home.root)
        frame = make_data(60 + i, 150)
        frame.insert(0, "subjectcode", [f"p{i}_{k:04d}" for k in range(len(frame))])
        load_frame(home.root, MODEL, frame)
        homes.append(home)
    credentials = [issue_client(home.root, "central") for home in homes]
    pin_each_other([home.root for home in homes])  # the admins pinned each other's keys (ADR 0014)
    with running_nodes([home.root for home in homes]) as urls:
        yield {home.name: {"url": url, "client_id": cred.client_id, "secret": cred.secret.hex(), "home": home.root}
               for home, url, cred in zip(homes, urls, credentials)}


def set_connection(monkeypatch, conn_id: str, **fields: Any) -> None:
    """Define the Airflow connection ``conn_id`` from a real :class:`airflow.sdk.Connection`
    through the environment (``AIRFLOW_CONN_<ID>``), as a deployment does."""
    from airflow.sdk import Connection

    extra = fields.pop("extra", None)
    conn = Connection(conn_id=conn_id, conn_type="mipflow_node",
                      extra=json.dumps(extra) if extra is not None else None, **fields)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn.as_json())


@pytest.fixture
def node_connections(monkeypatch, nodes) -> list[str]:
    """``mipflow_node_node0`` and ``mipflow_node_node1``, as Airflow connections."""
    conn_ids = []
    for name, node in nodes.items():
        conn_id = f"mipflow_node_{name}"
        set_connection(monkeypatch, conn_id, host=node["url"], login=node["client_id"], password=node["secret"],
                       extra={"node_name": name})
        conn_ids.append(conn_id)
    return conn_ids


@pytest.fixture
def dead_connection(monkeypatch) -> str:
    """``mipflow_node_gone``: a connection to a loopback port nothing listens on."""
    set_connection(monkeypatch, "mipflow_node_gone", host=f"http://127.0.0.1:{free_port()}", login="central",
                   password="00" * 32, extra={"node_name": "gone"})
    return "mipflow_node_gone"


__all__ = ["PROJECT", "REQUEST", "RESEARCHER", "set_connection"]
