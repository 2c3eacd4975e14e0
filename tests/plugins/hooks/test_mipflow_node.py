"""The node hook's timeout and retries from the environment (``plugins/hooks/mipflow_node.py``)."""
from __future__ import annotations

import json


def test_node_hook_timeout_and_retries_from_the_environment(monkeypatch):
    from hooks.mipflow_node import NodeHook

    monkeypatch.setenv("AIRFLOW_CONN_MIPFLOW_NODE_X", json.dumps(
        {"conn_type": "mipflow_node", "host": "http://127.0.0.1:1", "login": "central", "password": "00" * 32}))
    monkeypatch.setenv("MIPFLOW_NODE_TIMEOUT_SECONDS", "12.5")
    monkeypatch.setenv("MIPFLOW_NODE_RETRIES", "5")
    client = NodeHook("mipflow_node_x").get_conn()
    try:
        assert client.retries == 5 and client._http.timeout.read == 12.5
    finally:
        client.close()
