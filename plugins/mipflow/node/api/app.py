"""The node's aggregate API: the only door out of a node.

Endpoints (OpenAPI schema at ``/openapi.json``)::

    GET  /health                      liveness, no data
    GET  /v1/metadata?researcher=R&project=P
                                      data models, variables, each one's data version (ADR 0043),
                                      and the datasets R is approved for (counts only at or
                                      above min_row_count)
    GET  /v1/algorithms               the catalogue of vetted local steps, with code digests
    GET  /v1/secagg/key               the node's secure-aggregation public key (mipflow.secagg)
    POST /v1/steps/{algorithm}        one local step: {"request": <MIP request>, "round": n, "state": {...},
                                      "researcher": R, "project": P, "analysis_id": ...}

Every ``/v1`` request must be signed (:mod:`mipflow.protocol.signing`; the signature covers
the query string and the body, hence the researcher and project the central
site vouches for) and is written to the audit log, allowed or refused.  A step
runs only for a researcher and project the node's own grants cover
(:mod:`mipflow.node.controls.access`), within the node's query budget (:mod:`mipflow.node.controls.query_budget`),
and for an algorithm the node admin has not disabled.  A local step runs only after the node's
disclosure controls (:mod:`mipflow.node.controls.disclosure`) accept the request and the
number of rows it would use; its aggregates pass the controls again before
they leave.  No endpoint returns a row.

This module is the transport only: routes, authentication, the mapping of refusals to HTTP
statuses (a refusal's message names the control and the rule, never a value), and the OpenAPI
description.  The step itself is :func:`mipflow.node.api.step.answer_step`: the request parsed
once and passed through the node's controls in their declared order (:data:`~mipflow.node.api.step.CHAIN`).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from mipflow import __version__
from mipflow.exceptions import DisclosureError, MipflowError
from mipflow.node.api.context import DataModelNotHeld, StepContext, selection_bytes
from mipflow.node.api.describe import describe_algorithms, describe_data, describe_secagg_key
from mipflow.node.api.schema import Refusal, StepCall, StepReply
from mipflow.node.controls.audit import AUDIT_FILE
from mipflow.node.freshness import file_signature
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import AuthError, Verifier, load_clients

if TYPE_CHECKING:
    from mipflow.node.api.tls import ServerTls

# AUDIT_FILE, StepReply and selection_bytes are imported from here by callers of the node API
__all__ = ["AUDIT_FILE", "StepReply", "api_path", "create_app", "json_bytes", "selection_bytes", "serve"]

#: The reply every signed endpoint documents for a missing or bad signature (mipflow.protocol.signing).
UNAUTHENTICATED: dict[int | str, dict[str, Any]] = {401: {"description": "not authenticated"}}


def _document_step_body(app: FastAPI) -> None:
    """Describe ``POST /v1/steps/{algorithm}``'s body with :class:`StepCall` in ``/openapi.json``.

    The endpoint reads the raw body itself (its signature covers those bytes and
    it must be checked before anything is parsed), so FastAPI cannot infer it.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            doc = StepCall.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(doc.pop("$defs", {}))
            components["StepCall"] = doc
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _identity_parameter(name: str) -> dict[str, Any]:
    """The OpenAPI description of the ``researcher`` or ``project`` query parameter of ``/v1/metadata``
    (read from the signed query string, hence not declared to FastAPI, which would check it before
    the signature)."""
    return {"name": name, "in": "query", "required": False,
            "description": f"the {name} the datasets are listed for (vouched for by the signed client)",
            "schema": {"type": "string", "maxLength": 128}}


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists (``json.dumps`` fallback)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_bytes(doc: Any) -> bytes:
    """Strict JSON (no NaN or infinity, as Starlette's ``JSONResponse``), compact, UTF-8."""
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                      default=_plain).encode("utf-8")


def refusal_response(node: str, exc: MipflowError) -> Response:
    """The HTTP answer to a refusal (already audited): 403 with the control for the disclosure
    controls, 404 for a data model the node does not hold; anything else raises a 400
    ``HTTPException`` whose detail is the refusal's message."""
    if isinstance(exc, DisclosureError):
        return JSONResponse(status_code=403, content={"node": node, "refused": str(exc), "control": exc.control})
    if isinstance(exc, DataModelNotHeld):
        return JSONResponse(status_code=404, content={"node": node, "refused": str(exc), "control": "data_model"})
    raise HTTPException(status_code=400, detail=str(exc)) from None


def create_app(home: NodeHome) -> FastAPI:
    """Build the node's FastAPI application (the step code is imported here, not at module import)."""
    from mipflow.secagg.crypto import load_keypair
    from mipflow.node.api.step import answer_step

    context = StepContext.open(home)
    verifier = Verifier(load_clients(home.root))
    load_keypair(home.root)  # created at start, so its first use cannot race

    app = FastAPI(title=f"mipflow node {home.name}", version=__version__,
                  description="Aggregate-only API of a mipflow hospital node. No endpoint returns a row.")

    clients_file = home.root / "clients.json"
    clients_seen = [file_signature(clients_file)]

    async def authenticate(request: Request, body: bytes, what: str) -> str:
        signature = file_signature(clients_file)
        if signature != clients_seen[0]:  # credentials issued or revoked since start
            verifier.update_clients(load_clients(home.root))
            clients_seen[0] = signature
        try:
            path = api_path(request) + (f"?{request.url.query}" if request.url.query else "")
            return verifier.verify(request.headers, request.method, path, body)
        except AuthError as exc:
            context.audit.append(client=request.headers.get("x-mipflow-client", ""), endpoint=request.url.path,
                                 what=what, decision="refused", control="authentication", reason=str(exc))
            raise HTTPException(status_code=401, detail=str(exc)) from None

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "node": home.name, "version": __version__}

    @app.get("/v1/metadata", responses={**UNAUTHENTICATED,
                                         403: {"model": Refusal, "description": "refused: bad researcher or project"}},
             openapi_extra={"parameters": [_identity_parameter("researcher"), _identity_parameter("project")]})
    async def metadata(request: Request) -> dict[str, Any]:
        client = await authenticate(request, b"", "metadata")
        try:
            return describe_data(context, client, request.query_params.get("researcher"),
                                 request.query_params.get("project"))
        except DisclosureError as exc:
            return refusal_response(home.name, exc)

    @app.get("/v1/algorithms", responses=UNAUTHENTICATED)
    async def algorithms(request: Request) -> dict[str, Any]:
        client = await authenticate(request, b"", "algorithms")
        return describe_algorithms(context, client)

    @app.post("/v1/steps/{algorithm}", response_model=StepReply,
              responses={**UNAUTHENTICATED,
                         403: {"model": Refusal, "description": "refused: access grants, query budget, "
                                                                "disabled algorithm or disclosure controls"},
                         404: {"model": Refusal, "description": "the node holds no data of this data model"},
                         400: {"description": "invalid request"}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/StepCall"}}}}})
    async def step(algorithm: str, request: Request) -> Any:
        raw = await request.body()
        client = await authenticate(request, raw, f"step:{algorithm}")
        try:
            reply = answer_step(context, client, algorithm, raw)
        except MipflowError as exc:
            return refusal_response(home.name, exc)
        # StepReply documents the reply; it is encoded here directly (one json.dumps, no model pass)
        return Response(json_bytes(reply), media_type="application/json")

    # the secure-aggregation public key (mipflow.secagg, ADR 0014)
    @app.get("/v1/secagg/key", responses=UNAUTHENTICATED)
    async def secagg_key(request: Request) -> dict[str, Any]:
        client = await authenticate(request, b"", "secagg_key")
        from mipflow.secagg.crypto import load_keypair  # read each time: `mipflow secagg rotate` takes effect

        return describe_secagg_key(context, client, load_keypair(home.root))

    _document_step_body(app)
    return app


def api_path(request: Request) -> str:
    """The request's path below the API's mount point: what the client signed.

    A client signs the path relative to the node URL it was given
    (``/v1/steps/...``).  Served on its own, the API sees exactly that path;
    mounted under a prefix (e.g. ``/mipflow-node`` in the node's Airflow
    api-server, see ``plugins/mipflow_node_api_plugin.py``), ASGI puts the
    prefix in ``root_path`` and it is taken off here.

    The path is the ASGI one, percent-decoded, as the client formats it before
    encoding (not ``request.url.path``, where Starlette quotes ``?``, ``#`` and
    ``\\`` again, so that a signed name holding them failed verification).
    """
    path = str(request.scope.get("path") or request.url.path)
    root = str(request.scope.get("root_path") or "").rstrip("/")
    if root and path.startswith(root + "/"):
        path = path[len(root):]
    return path


#: How long the node keeps an idle connection open.  Clients let theirs go well before
#: (:data:`mipflow.central.client.KEEP_ALIVE_SECONDS`): a client that reuses a connection just as the node
#: closes it gets no answer (``RemoteProtocolError``), and the node would look unavailable.
KEEP_ALIVE_SECONDS = 30


def serve(home: NodeHome, host: str = "127.0.0.1", port: int = 8700, *, tls: ServerTls | None = None) -> None:
    """Run the node API with uvicorn (blocking): HTTPS with ``tls`` (see :mod:`mipflow.node.api.tls`),
    plain HTTP without (development only; the caller decided and it is announced)."""
    import uvicorn

    from mipflow.node.api.tls import announce

    app = create_app(home)
    announce(tls, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                timeout_keep_alive=KEEP_ALIVE_SECONDS, **(tls.uvicorn_options() if tls is not None else {}))
