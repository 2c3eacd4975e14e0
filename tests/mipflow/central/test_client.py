"""The central site's node client: what it builds per node."""
from __future__ import annotations

import ssl

import certifi

from mipflow.central import client as node_client
from mipflow.central.client import NodeClient, NodeEndpoint


def test_plain_http_clients_share_one_verifying_default_context(monkeypatch) -> None:
    """Each client used to load the CA bundle again (~20 ms of CPU) for a context a plain http://
    node never uses; now one per process and environment, verifying as httpx's default does."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    loads = []
    monkeypatch.setattr(node_client, "_default_contexts", {})
    real = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations",
                        lambda self, *a, **k: (loads.append(a or k), real(self, *a, **k))[1])
    clients = [NodeClient(NodeEndpoint(f"n{i}", f"http://127.0.0.1:{9000 + i}", "central", "00" * 32))
               for i in range(3)]
    try:
        context = node_client._default_verify()
        assert len(loads) == 1 and context is node_client._default_verify()
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        monkeypatch.setenv("SSL_CERT_FILE", certifi.where())  # the environment httpx honours
        assert node_client._default_verify() is not context and len(loads) == 2
    finally:
        for c in clients:
            c.close()


def test_a_client_lets_an_idle_connection_go_before_a_node_closes_it() -> None:
    """A connection reused just as the node closes it gets no answer (RemoteProtocolError): the client's
    keep-alive ends well before the node's, and before uvicorn's default for a node behind another server."""
    from mipflow.central.client import KEEP_ALIVE_SECONDS as CLIENT
    from mipflow.node.api.app import KEEP_ALIVE_SECONDS as NODE

    assert 0 < CLIENT < 5 < NODE  # 5 s: uvicorn's default timeout_keep_alive
    client = NodeClient(NodeEndpoint("hospital_a", "http://127.0.0.1:1", "client", "00" * 32))
    try:
        assert client._http._transport._pool._keepalive_expiry == CLIENT
    finally:
        client.close()
