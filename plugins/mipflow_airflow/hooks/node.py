"""``NodeHook``: the Airflow connection to one mipflow node.

Connection fields: ``host`` is the node API URL (``http://127.0.0.1:8701``, or a
host name with ``port`` and ``schema`` ``http``/``https``), ``login`` the client
id the node issued, ``password`` the client secret (hex), optional extra
``{"node_name": "hospital_a", "timeout": 60, "ca_cert": "/etc/mipflow/ca.crt",
"client_cert": "/etc/mipflow/central.crt", "client_key": "/etc/mipflow/central.key"}``:
``ca_cert`` pins the CA (or the node's certificate) an ``https://`` node is verified with
(hostname verification on), ``client_cert``/``client_key`` answer a node that requires
mutual TLS (file paths on the workers; docs/adr/0039-tls.md).  The hook owns the connection
only; the HTTP client, request signing and retry policy (connection errors and
5xx, never 4xx) are :class:`mipflow.central.client.NodeClient`'s, and what a
failure means for a task is the operator's decision.

Defaults for every node (:mod:`mipflow_airflow.settings`): ``MIPFLOW_NODE_TIMEOUT_SECONDS``
(60; a connection's extra ``timeout`` wins) and ``MIPFLOW_NODE_RETRIES`` (2 retries of one call).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from mipflow_airflow.exceptions import NodeConnectionError
from mipflow_airflow.settings import node_retries, node_timeout

if TYPE_CHECKING:
    from mipflow.central.client import NodeClient, NodeEndpoint


class NodeHook(BaseHook):
    """Reach one node's aggregate API through the Airflow connection ``mipflow_conn_id``.

    Parameters
    ----------
    mipflow_conn_id : str
        The node's connection (``mipflow_node_<name>`` by convention).
    timeout : float, optional
        Seconds per call; default the connection's extra ``timeout``, else ``MIPFLOW_NODE_TIMEOUT_SECONDS``.
    retries : int, optional
        Retries of one call (connection errors and 5xx); default ``MIPFLOW_NODE_RETRIES``.
    """

    conn_name_attr = "mipflow_conn_id"
    default_conn_name = "mipflow_node_default"
    conn_type = "mipflow_node"
    hook_name = "mipflow node"

    def __init__(self, mipflow_conn_id: str = default_conn_name, *, timeout: float | None = None,
                 retries: int | None = None) -> None:
        super().__init__()
        self.mipflow_conn_id = mipflow_conn_id
        self.timeout = timeout
        self.retries = node_retries() if retries is None else retries

    def endpoint(self) -> tuple[NodeEndpoint, dict[str, Any]]:
        """The node's endpoint (name, URL, credential) and the connection's extra.

        Raises
        ------
        NodeConnectionError
            If the connection is not defined, or has no login (client id) or password
            (client secret): a retry cannot help.
        """
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.mipflow_conn_id)
        except AirflowNotFoundException:
            raise self._not_found() from None
        return self._endpoint(conn)

    async def aendpoint(self) -> tuple[NodeEndpoint, dict[str, Any]]:
        """:meth:`endpoint` for async code (a trigger in the triggerer)."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = await self.aget_connection(self.mipflow_conn_id)
        except AirflowNotFoundException:
            raise self._not_found() from None
        return self._endpoint(conn)

    def _not_found(self) -> NodeConnectionError:
        return NodeConnectionError(f"no Airflow connection {self.mipflow_conn_id!r}: check the node list "
                                   "(param 'nodes') or add the connection (Admin > Connections)")

    def _endpoint(self, conn: Any) -> tuple[NodeEndpoint, dict[str, Any]]:
        from mipflow.central.client import NodeEndpoint

        host = conn.host or ""
        if not host.startswith(("http://", "https://")):
            scheme = conn.schema if conn.schema in ("http", "https") else "http"
            host = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
        extra = conn.extra_dejson or {}
        name = extra.get("node_name") or self.mipflow_conn_id.removeprefix("mipflow_node_")
        if not conn.login or not conn.password:
            raise NodeConnectionError(f"connection {self.mipflow_conn_id} needs login (client id) and "
                                      "password (client secret) issued by the node")
        tls = {key: str(extra[key]) for key in ("ca_cert", "client_cert", "client_key") if extra.get(key)}
        return NodeEndpoint(name=name, url=host, client_id=conn.login, secret=conn.password, **tls), extra

    def get_conn(self) -> NodeClient:
        """A :class:`mipflow.central.client.NodeClient` for this node (the caller closes it)."""
        return self._client(*self.endpoint())

    async def aget_conn(self) -> NodeClient:
        """:meth:`get_conn` for async code: the connection is read asynchronously; the client's
        calls are synchronous (run them with ``asyncio.to_thread``)."""
        return self._client(*await self.aendpoint())

    def _client(self, endpoint: NodeEndpoint, extra: dict[str, Any]) -> NodeClient:
        from mipflow.central.client import NodeClient
        from mipflow.exceptions import ConfigError

        timeout = self.timeout or (float(extra["timeout"]) if extra.get("timeout") else node_timeout())
        try:
            return NodeClient(endpoint, timeout=timeout, retries=self.retries)
        except ConfigError as exc:  # a TLS file missing or unusable: fix the connection
            raise NodeConnectionError(f"connection {self.mipflow_conn_id}: {exc}") from None

    def test_connection(self) -> tuple[bool, str]:
        """Whether the node answers and accepts the credential (Airflow's "Test" button)."""
        try:
            client = self.get_conn()
        except Exception as exc:  # noqa: BLE001 - reported to the UI, not raised
            return False, str(exc)
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
