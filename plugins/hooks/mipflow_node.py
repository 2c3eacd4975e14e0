"""Airflow hook for one mipflow node (an Airflow connection per node).

Connection fields: ``host`` is the node API URL (``http://127.0.0.1:8701``, or a
host name with ``port``), ``login`` the client id the node issued, ``password``
the client secret (hex), optional extra ``{"node_name": "hospital_a",
"timeout": 60}``.  The hook owns the connection; the HTTP client, signing and
retry policy (connection errors and 5xx only) live in :mod:`mipflow.central.client`.

Defaults for every node: ``MIPFLOW_NODE_TIMEOUT_SECONDS`` (60; a connection's
extra ``timeout`` wins) and ``MIPFLOW_NODE_RETRIES`` (2 retries of one call).
"""
from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook


class NodeHook(BaseHook):
    """Reach one node's aggregate API."""

    conn_name_attr = "mipflow_conn_id"
    default_conn_name = "mipflow_node_default"
    conn_type = "mipflow_node"
    hook_name = "mipflow node"

    def __init__(self, mipflow_conn_id: str = default_conn_name, *, timeout: float | None = None,
                 retries: int | None = None) -> None:
        from mipflow_dags import setting

        super().__init__()
        self.mipflow_conn_id = mipflow_conn_id
        self.timeout = timeout
        self.retries = int(setting("MIPFLOW_NODE_RETRIES", "2")) if retries is None else retries

    def endpoint(self):
        from mipflow.central.client import NodeEndpoint

        conn = self.get_connection(self.mipflow_conn_id)
        host = conn.host or ""
        if not host.startswith(("http://", "https://")):
            scheme = conn.schema if conn.schema in ("http", "https") else "http"
            host = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
        extra = conn.extra_dejson or {}
        name = extra.get("node_name") or self.mipflow_conn_id.removeprefix("mipflow_node_")
        if not conn.login or not conn.password:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"connection {self.mipflow_conn_id} needs login (client id) and "
                                       "password (client secret) issued by the node")
        return NodeEndpoint(name=name, url=host, client_id=conn.login, secret=conn.password), extra

    def get_conn(self):
        """A :class:`mipflow.central.client.NodeClient` for this node."""
        from mipflow.central.client import NodeClient

        endpoint, extra = self.endpoint()
        from mipflow_dags import setting

        timeout = self.timeout or float(extra.get("timeout") or setting("MIPFLOW_NODE_TIMEOUT_SECONDS", "60"))
        return NodeClient(endpoint, timeout=timeout, retries=self.retries)

    def test_connection(self) -> tuple[bool, str]:
        client = self.get_conn()
        try:
            health = client.health()
            client.metadata()  # also checks the credential
            return True, f"node {health.get('node')} answered"
        except Exception as exc:  # noqa: BLE001 - reported to the UI, not raised
            return False, str(exc)
        finally:
            client.close()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {"hidden_fields": ["schema"],
                "relabeling": {"host": "Node API URL", "login": "Client id", "password": "Client secret"}}
