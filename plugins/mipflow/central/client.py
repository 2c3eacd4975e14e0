"""Signed HTTP calls from the central site to one node.

:class:`NodeClient` signs every call (:mod:`mipflow.protocol.signing`), retries connection
errors and 5xx answers with a backoff, and never retries a 4xx: a node that answers but will
not run a step raises :class:`NodeRefused` (with the disclosure control that refused), a node
that cannot be reached :class:`NodeUnavailable`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from mipflow.exceptions import MipflowError
from mipflow.protocol.signing import signed_headers


#: An idle connection to a node is dropped after this many seconds, well before a node closes it
#: (the node's 30 s, and uvicorn's default of 5 s for a node behind another server): reusing a
#: connection the node is closing gets no answer, and a call without retries would call the node
#: unavailable.
KEEP_ALIVE_SECONDS = 2.0


@dataclass(frozen=True)
class NodeEndpoint:
    """How to reach one node."""

    name: str
    url: str
    client_id: str
    secret: str = field(repr=False)
    #: The pinned trust anchor for an ``https://`` node: the federation's CA, or the node's certificate.
    ca_cert: str | None = None
    #: The central site's client certificate and key, for nodes that require mutual TLS.
    client_cert: str | None = None
    client_key: str | None = None


class NodeRefused(MipflowError):
    """A node answered, but would not run the step (disclosure control or invalid request)."""

    def __init__(self, node: str, reason: str, control: str, status: int) -> None:
        super().__init__(f"{node}: {reason}")
        self.node, self.reason, self.control, self.status = node, reason, control, status


class NodeUnavailable(MipflowError):
    """A node could not be reached or failed after retries."""


class NodeTlsError(NodeUnavailable):
    """The TLS connection to a node failed on a certificate, a CA or the scheme: a retry cannot help.

    The message names the certificate or CA at fault (:func:`mipflow.protocol.tls.explain_tls_failure`).
    """


class NodeClient:
    """Signed HTTP calls to one node; retries connection errors and 5xx, never 4xx nor TLS failures.

    An ``https://`` node is verified against the endpoint's pinned ``ca_cert`` (else the system's
    trust store) with hostname verification; ``client_cert``/``client_key`` answer a node that
    requires mutual TLS.  Connections are kept alive between calls.
    """

    def __init__(self, endpoint: NodeEndpoint, *, timeout: float = 60.0, retries: int = 2,
                 backoff: float = 0.2) -> None:
        import httpx

        from mipflow.exceptions import ConfigError

        self.endpoint = endpoint
        self.retries = retries
        self.backoff = backoff
        self._secret = bytes.fromhex(endpoint.secret)
        tls_files = endpoint.ca_cert or endpoint.client_cert or endpoint.client_key
        if endpoint.url.startswith("https://") or tls_files:
            if not endpoint.url.startswith("https://"):
                raise ConfigError(f"{endpoint.name}: ca_cert/client_cert are set but the node URL {endpoint.url} "
                                  "is not https://")
            from mipflow.protocol.tls import client_context

            self._tls: Any = client_context(endpoint.ca_cert, endpoint.client_cert, endpoint.client_key)
        else:
            self._tls = None
        self._http = httpx.Client(base_url=endpoint.url.rstrip("/"), timeout=timeout,
                                  verify=self._tls if self._tls is not None else _default_verify(),
                                  limits=httpx.Limits(keepalive_expiry=KEEP_ALIVE_SECONDS))

    @property
    def name(self) -> str:
        return self.endpoint.name

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        import httpx

        body = b"" if payload is None else json.dumps(payload, allow_nan=False).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            headers = signed_headers(self.endpoint.client_id, self._secret, method, path, body)
            if payload is not None:
                headers["Content-Type"] = "application/json"
            try:
                response = self._http.request(method, path, content=body, headers=headers)
            except httpx.TransportError as exc:
                tls_failure = self._tls_failure(exc)
                if tls_failure is not None:
                    raise NodeTlsError(tls_failure) from None
                last = exc
            else:
                if response.status_code < 400:
                    return response.json()
                if response.status_code < 500:
                    detail = _detail(response)
                    raise NodeRefused(self.name, detail.get("refused") or detail.get("detail") or
                                      f"HTTP {response.status_code}", detail.get("control", "request"),
                                      response.status_code)
                last = NodeUnavailable(f"{self.name}: HTTP {response.status_code}")
            if attempt < self.retries:
                time.sleep(self.backoff * (2 ** attempt))
        raise NodeUnavailable(f"{self.name} unreachable at {self.endpoint.url}: {type(last).__name__}")

    def _tls_failure(self, exc: Exception) -> str | None:
        """A sentence if ``exc`` is a TLS failure: a certificate or CA refused, a node that closes a TLS
        connection without answering (mutual TLS refused the client), or a plain-HTTP request cut off
        by a node that speaks TLS.  ``None`` for anything else (retried as usual)."""
        import httpx

        from mipflow.protocol import tls

        endpoint = self.endpoint
        explained = tls.explain_tls_failure(exc, node=self.name, url=endpoint.url, ca_cert=endpoint.ca_cert,
                                            client_cert=endpoint.client_cert)
        if explained is not None or not isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return explained
        url = httpx.URL(endpoint.url)
        if url.scheme == "https" and self._tls is not None:
            if tls.closes_after_handshake(url.host, url.port or 443, self._tls):
                return tls.mutual_tls_refusal(self.name, endpoint.url, endpoint.client_cert)
        elif url.scheme == "http" and tls.speaks_tls(url.host, url.port or 80):
            return (f"{self.name}: the node at {endpoint.url} serves HTTPS, not plain HTTP: use an https:// "
                    "URL and pin the federation's CA (ca_cert)")
        return None

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def metadata(self, researcher: str | None = None, project: str | None = None) -> dict[str, Any]:
        """What the node holds; datasets only those ``researcher`` (in ``project``) is approved for."""
        from urllib.parse import urlencode

        query = {k: v for k, v in (("researcher", researcher), ("project", project)) if v is not None}
        return self._call("GET", "/v1/metadata" + (f"?{urlencode(query)}" if query else ""))

    def algorithms(self) -> dict[str, Any]:
        """The node's catalogue: enabled and disabled algorithms with their code digests."""
        return self._call("GET", "/v1/algorithms")

    def step(self, algorithm: str, request: Mapping[str, Any], round_no: int,
             state: Mapping[str, Any] | None, *, researcher: str | None = None, project: str | None = None,
             analysis_id: str | None = None, secure_aggregation: Mapping[str, Any] | None = None,
             transcript: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = {"request": dict(request), "round": round_no, "state": state,
                "researcher": researcher, "project": project, "analysis_id": analysis_id}
        if secure_aggregation is not None:  # mask the aggregates for a secure sum (mipflow.secagg)
            body["secure_aggregation"] = dict(secure_aggregation)
        if transcript is not None:  # verifiable rounds (mipflow.secagg.transcript)
            body["transcript"] = dict(transcript)
        return self._call("POST", f"/v1/steps/{algorithm}", body)

    def secagg_key(self) -> dict[str, Any]:
        """The node's secure-aggregation public key (``mipflow.secagg``)."""
        return self._call("GET", "/v1/secagg/key")


def _detail(response: Any) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        return {}
    if isinstance(doc, dict) and isinstance(doc.get("detail"), (str, dict)):
        return doc if not isinstance(doc["detail"], dict) else doc["detail"]
    return doc if isinstance(doc, dict) else {}


_default_contexts: dict[tuple[str | None, str | None], Any] = {}


def _default_verify() -> Any:
    """What ``httpx.Client(verify=True)`` builds (certifi's bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``),
    built once per process and environment: loading the bundle costs ~20 ms of CPU per client, and a
    plain ``http://`` node (tests, demo, a loopback federation) never uses it.  An ``ssl.SSLContext``
    may be shared by clients and threads."""
    import os

    import httpx

    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    context = _default_contexts.get(key)
    if context is None:
        context = _default_contexts.setdefault(key, httpx.create_ssl_context())
    return context
