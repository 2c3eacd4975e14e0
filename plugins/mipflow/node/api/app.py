"""The node's aggregate API: the only door out of a node.

Endpoints (OpenAPI schema at ``/openapi.json``)::

    GET  /health                      liveness, no data
    GET  /v1/metadata?researcher=R&project=P
                                      data models, variables, and the datasets R is approved for
                                      (counts only at or above min_row_count)
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
"""
from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from typing import Annotated, Any, Literal, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from mipflow import __version__
from mipflow.node.controls.access import AccessDenied, AccessRegistry, check_identity
from mipflow.node.controls.audit import AUDIT_FILE, AuditLog
from mipflow.protocol.signing import AuthError, Verifier, load_clients
from mipflow.node.home import NodeHome
from mipflow.exceptions import DisclosureError, MipflowError, RequestError, StoreError
from mipflow.node.freshness import DataVersion, file_signature
from mipflow.protocol.filters import QB_INPUTS, QB_TYPES, SUPPORTED_OPERATORS
from mipflow.secagg import MAX_PARTICIPANTS, SCHEME

log = logging.getLogger(__name__)
#: Data selections kept in node memory between rounds (see ``local_data``).
FRAME_CACHE_SIZE = 4


class StepBody(BaseModel):
    """Body of a local-step call, as the node parses it.

    ``request`` is parsed by :meth:`mipflow.algorithms.contract.AnalysisRequest.from_dict`
    and its filters by :mod:`mipflow.node.query`, which give the precise reasons of a
    refusal; :class:`StepCall` is the same body as the OpenAPI schema describes it.
    """

    request: dict[str, Any] = Field(description="MIP / Exareme2 algorithm request: {inputdata, parameters}")
    round: int = Field(0, ge=0, le=1000, description="round number of an iterative algorithm")
    state: dict[str, Any] | None = Field(None, description="global state broadcast by the central site")
    researcher: str | None = Field(None, max_length=128,
                                   description="the person the analysis runs for (vouched for by the signed client)")
    project: str | None = Field(None, max_length=128, description="the project the analysis belongs to")
    analysis_id: str | None = Field(None, max_length=64,
                                    description="the central site's id of the analysis (all rounds share it)")
    secure_aggregation: dict[str, Any] | None = Field(
        None, description="mask the released aggregates for a secure sum: {scheme, participants: "
                          "[{node, public_key}]} (mipflow.secagg, docs/adr/0014-secure-aggregation.md)")


# --- the step body as documented in the OpenAPI schema (what schemathesis fuzzes) ---
# These models describe the Exareme2 request format that AnalysisRequest.from_dict and
# mipflow.node.query accept; the node does not validate with them (StepBody and those parsers do).

# the literals are the parser's own sets (mipflow.node.query), so schema and parser cannot drift apart
FilterOperator = Literal[tuple(sorted(SUPPORTED_OPERATORS))]  # type: ignore[valid-type]


class FilterRule(BaseModel):
    """One jQuery QueryBuilder rule of a filter (:mod:`mipflow.node.query`)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="variable code of the data model")
    field: str | None = Field(None, min_length=1, description="the variable code again (QueryBuilder writes both)")
    type: Literal[tuple(sorted(QB_TYPES))] | None = None  # type: ignore[valid-type]
    input: Literal[tuple(sorted(QB_INPUTS))] | None = None  # type: ignore[valid-type]
    operator: FilterOperator
    value: Any = Field(None, description="a number or text; a list for in/not_in, two bounds for "
                                         "between/not_between; absent for is_null/is_not_null")
    data: Any = None
    flags: Any = None


class FilterGroup(BaseModel):
    """A jQuery QueryBuilder rule group: rules and nested groups (:mod:`mipflow.node.query`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    condition: Literal["AND", "OR"] = "AND"
    rules: list[Union[FilterRule, "FilterGroup"]] = Field(min_length=1, max_length=100)
    not_: bool = Field(False, alias="not", description="negate the group")
    valid: Literal[True] = True
    data: Any = None
    flags: Any = None


Name = Annotated[str, Field(min_length=1, max_length=1000)]


class InputData(BaseModel):
    """``inputdata`` of an Exareme2 request: what the local step reads."""

    data_model: str = Field(pattern=r"^[^:]+:.+$", description="CODE:VERSION of the data model")
    datasets: list[Name] = Field(min_length=1, max_length=1000, description="datasets to analyse")
    x: list[Name] | None = Field(None, description="covariates (variable codes)")
    y: list[Name] | None = Field(None, description="variables of interest (variable codes)")
    filters: FilterGroup | None = Field(None, description="rows to keep (jQuery QueryBuilder rule group)")


class AnalysisRequestBody(BaseModel):
    """An Exareme2 algorithm request; other top-level keys (``type``, ``test_case_num``) are ignored."""

    inputdata: InputData
    parameters: dict[str, Any] | None = Field(None, description="algorithm parameters (see the Exareme2 specs)")


class Participant(BaseModel):
    node: str = Field(min_length=1, max_length=128)
    public_key: str = Field(pattern="^[0-9a-fA-F]{64}$", description="X25519 public key, hex")


class SecureAggregation(BaseModel):
    """Ask for a masked release (:mod:`mipflow.secagg`, docs/adr/0014-secure-aggregation.md)."""

    scheme: Literal[SCHEME] = Field(description="the secure-aggregation scheme (GET /v1/secagg/key)")
    participants: list[Participant] = Field(min_length=2, max_length=MAX_PARTICIPANTS)


class StepCall(StepBody):
    """Body of a local-step call: one round of ``algorithm`` for ``researcher`` in ``project``."""

    request: AnalysisRequestBody = Field(description="MIP / Exareme2 algorithm request: {inputdata, parameters}")
    secure_aggregation: SecureAggregation | None = Field(
        None, description="mask the released aggregates for a secure sum (mipflow.secagg, docs/adr/0014)")


def selection_bytes(data: Any, cohorts: Any) -> int:
    """Memory a cached selection holds: the frame's arrays (object columns as their pointers; their
    values are shared codes) and the cohorts' row keys."""
    size = int(data.memory_usage(index=True, deep=False).sum())
    return size + sum(int(keys.nbytes) for keys in getattr(cohorts, "sets", ()))


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


class StepReply(BaseModel):
    node: str
    algorithm: str
    round: int
    rows: int = Field(description="rows the local step used (at least min_row_count)")
    aggregates: dict[str, Any]
    code: dict[str, str] = Field(description="catalogue version and SHA-256 of the step code that ran")
    privacy: dict[str, Any] | None = Field(None, description="differential privacy: mechanism, epsilon, delta "
                                                             "and clamping of the noise this node added (ADR 0015)")


class Refusal(BaseModel):
    node: str
    refused: str
    control: str


#: The reply every signed endpoint documents for a missing or bad signature (mipflow.protocol.signing).
UNAUTHENTICATED: dict[int | str, dict[str, Any]] = {401: {"description": "not authenticated"}}


def _identity_parameter(name: str) -> dict[str, Any]:
    """The OpenAPI description of the ``researcher`` or ``project`` query parameter of ``/v1/metadata``
    (read from the signed query string, hence not declared to FastAPI, which would check it before
    the signature)."""
    return {"name": name, "in": "query", "required": False,
            "description": f"the {name} the datasets are listed for (vouched for by the signed client)",
            "schema": {"type": "string", "maxLength": 128}}


class DataModelNotHeld(MipflowError):
    """The node holds no data of the request's data model: it is left out of the
    analysis (HTTP 404, control ``data_model``), the request itself is not invalid."""


#: What a step raises reading a central state that is not the one it broadcast (a key missing,
#: a list too short, text for numbers...).  The node cannot check the state of every
#: algorithm beforehand; it answers such a call as a bad request.
STATE_ERRORS = (KeyError, IndexError, TypeError, ValueError, ArithmeticError)


def malformed_state(algorithm: str, round_no: int, exc: BaseException) -> str:
    """The refusal of a step whose central state does not fit: the error's type only, as its
    text may quote values the step computed."""
    return (f"{algorithm}: the state of round {round_no} does not fit this step "
            f"({type(exc).__name__}); it must be the one the central site broadcast")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists (``json.dumps`` fallback)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_bytes(doc: Any) -> bytes:
    """Strict JSON (no NaN or infinity, as Starlette's ``JSONResponse``), compact, UTF-8."""
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                      default=_plain).encode("utf-8")


def create_app(home: NodeHome) -> FastAPI:
    """Build the node's FastAPI application."""
    from mipflow.algorithms import ALGORITHMS, get_algorithm
    from mipflow.algorithms.contract import prepare_local_data
    from mipflow.protocol.request import AnalysisRequest
    from mipflow.node.controls.query_budget import QueryBudget, analysis_key
    from mipflow.node.controls.differencing import DifferencingGuard
    from mipflow.algorithms.provenance import catalogue, code_of
    from mipflow.node.controls.disclosure import DisclosureControls
    from mipflow.node.store import FeatureStore
    from mipflow.node.query.read import select_frame

    store = FeatureStore(home.db_url)
    data_version = DataVersion(store)
    verifier = Verifier(load_clients(home.root))
    audit = AuditLog(home.root / AUDIT_FILE)
    access = AccessRegistry(home.root)
    budget = QueryBudget(audit.records())
    from mipflow.node.controls.dp import NodePrivacy  # differential privacy (ADR 0015)

    privacy = NodePrivacy(home.root)
    differencing = DifferencingGuard(home.root, home.key())  # cohorts answered (docs/adr/0013)
    models: dict[str, Any] = {}

    app = FastAPI(title=f"mipflow node {home.name}", version=__version__,
                  description="Aggregate-only API of a mipflow hospital node. No endpoint returns a row.")

    def model_for(key: str):
        if key not in models:
            models.clear()
            models.update({m.key: m for m in store.data_models()})
        if key not in models:
            raise DataModelNotHeld(f"data model {key} is not held at node {home.name}")
        return models[key]

    config_file = home.root / "node.json"
    config_seen = [file_signature(config_file), home.settings]

    def settings():
        """The node's settings, re-read when the admin changed node.json (no restart needed)."""
        signature = file_signature(config_file)
        if signature != config_seen[0]:
            config_seen[:] = [signature, NodeHome(home.root).settings]
        return config_seen[1]

    frames: OrderedDict[str, tuple[Any, Any, Any, int]] = OrderedDict()  # key -> (version, data, cohorts, bytes)

    def local_data(algo: Any, analysis: Any, model: Any, variables: list[str]):
        """The rows a step uses, cached in node memory between the rounds of one analysis.

        Iterative algorithms call the node once per round with the same data
        selection; re-reading the store each time would dominate.  The cache is
        keyed on the selection and invalidated whenever the node's data may have
        changed: :class:`mipflow.node.freshness.DataVersion` gives a token, read
        before the rows are, that changes with every load and consent deletion
        (on SQLite with every commit), without a query per request.
        Nothing cached ever leaves the node, nor do the row keys of the cohorts
        (:mod:`mipflow.node.controls.differencing`) cached with the rows.
        """
        key = json.dumps([model.key, sorted(analysis.datasets), variables, analysis.filters,
                          algo.complete_case, algo.name], sort_keys=True, default=str)
        version = data_version.token(model.key)
        budget = int(settings().frame_cache_mb) * 1024 ** 2
        while frames and sum(v[3] for v in frames.values()) > budget:  # the admin lowered it
            frames.popitem(last=False)
        hit = frames.get(key)
        if hit is not None and hit[0] == version:
            frames.move_to_end(key)
            return hit[1], hit[2]
        frame = select_frame(store, model, datasets=analysis.datasets, variables=variables,
                             filters=analysis.filters, complete_case=algo.complete_case, row_identity=True)
        cohorts = differencing.cohorts(model.key, frame, variables, algo.complete_case)
        data = prepare_local_data(algo, frame, analysis)  # keeps the variables only: no row keys
        del frame
        frames.pop(key, None)  # a stale version
        size = selection_bytes(data, cohorts)
        if size <= budget:
            frames[key] = (version, data, cohorts, size)
            while len(frames) > FRAME_CACHE_SIZE or sum(v[3] for v in frames.values()) > budget:
                frames.popitem(last=False)
        else:
            log.info("a selection of %.0f MiB is larger than frame_cache_mb (%d): used once, not kept",
                     size / 1024 ** 2, settings().frame_cache_mb)
        return data, cohorts

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
            audit.append(client=request.headers.get("x-mipflow-client", ""), endpoint=request.url.path,
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
        researcher = request.query_params.get("researcher")
        project = request.query_params.get("project")
        record = {"client": client, "endpoint": "/v1/metadata", "what": "metadata",
                  "researcher": (researcher or "")[:128], "project": (project or "")[:128]}
        on_behalf = researcher is not None or project is not None
        try:
            if on_behalf:
                check_identity(researcher, "researcher")
                check_identity(project, "project")
        except AccessDenied as exc:
            audit.append(**record, decision="refused", control="access", reason=str(exc))
            return JSONResponse(status_code=403, content={"node": home.name, "refused": str(exc),
                                                          "control": "access"})
        controls = DisclosureControls(settings())
        out = {"node": home.name, "data_models": [], "datasets_for": {"researcher": researcher, "project": project}
               if on_behalf else None}
        for model in store.data_models():
            datasets = []
            if on_behalf:  # only what this researcher is approved for; nothing without a researcher
                every, names = access.visible_datasets(researcher, project, model.key)
                datasets = [{"dataset": d["dataset"], "row_count": controls.released_count(d["row_count"])}
                            for d in store.datasets(model.key) if every or d["dataset"] in names]
            out["data_models"].append({"data_model": model.key, "label": model.label,
                                       "variables": [v.to_dict() for v in model], "datasets": datasets})
        audit.append(**record, decision="allowed")
        return out

    @app.get("/v1/algorithms", responses=UNAUTHENTICATED)
    async def algorithms(request: Request) -> dict[str, Any]:
        client = await authenticate(request, b"", "algorithms")
        audit.append(client=client, endpoint="/v1/algorithms", what="algorithms", decision="allowed")
        disabled = disabled_algorithms()
        cat = catalogue()
        return {"node": home.name, "algorithms": sorted(set(ALGORITHMS) - disabled),
                "disabled": sorted(disabled & set(ALGORITHMS)),
                "catalogue": {"version": cat["version"], "sha256": cat["sha256"],
                              "algorithms": {name: {"sha256": item["sha256"], "modules": item["modules"]}
                                             for name, item in cat["algorithms"].items()}}}

    def disabled_algorithms() -> set[str]:
        return {name.strip() for name in settings().disabled_algorithms.split(",") if name.strip()}

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
        started = time.perf_counter()
        record: dict[str, Any] = {"client": client, "endpoint": "/v1/steps", "algorithm": algorithm}
        try:
            try:
                body = StepBody.model_validate(json.loads(raw or b"{}"))
            except (ValueError, TypeError) as exc:
                raise RequestError(f"body is not a valid step call: {type(exc).__name__}") from None
            record.update(researcher=(body.researcher or "")[:128], project=(body.project or "")[:128])
            controls = DisclosureControls(settings())
            controls.check_strings(body.request)
            analysis = AnalysisRequest.from_dict(body.request)
            record.update(round=body.round, data_model=analysis.data_model, datasets=list(analysis.datasets),
                          x=list(analysis.x), y=list(analysis.y), filters=analysis.filters)
            algo = get_algorithm(algorithm)
            record.update(code_of(algorithm))
            if algorithm in disabled_algorithms():
                raise DisclosureError(f"algorithm {algorithm!r} is disabled by the admin of node {home.name}",
                                      control="disabled_algorithm")
            record["grants"] = access.check(researcher=body.researcher, project=body.project,
                                            data_model=analysis.data_model, datasets=analysis.datasets,
                                            algorithm=algorithm)
            key = analysis_key(body.analysis_id, algorithm, analysis.to_dict())
            record["analysis"] = key
            budget.check(body.researcher, key, settings().query_budget)
            model = model_for(analysis.data_model)
            algo.validate(analysis, model)
            variables = list(algo.variables(analysis))
            controls.check_request(algo, analysis, model)
            data, cohorts = local_data(algo, analysis, model, variables)
            n_rows = len(data)
            record["rows"] = n_rows
            controls.check_rows(algo, analysis, model, n_rows)  # before anything is computed
            # --- differencing controls (mipflow.node.controls.differencing, docs/adr/0013-differencing.md) ---
            guard, labels = bool(controls.settings.differencing_check), None
            record["cohort"] = cohorts.digest[:16]
            if guard:
                differencing.before_step(cohorts, controls.settings.min_row_count)
            # --- end differencing controls ---
            try:
                aggregates = algo.local_step(body.round, data, analysis, model, body.state)
                if guard:  # k-means rounds, once the step has checked the state's centres
                    labels = differencing.check_partition(algorithm, body.round, data, analysis, body.state,
                                                          cohorts, controls.settings.nfilter_tab)
            except MipflowError:
                raise
            except STATE_ERRORS as exc:
                if body.round == 0 and body.state is None:
                    raise  # no central state to blame: a bug of the step, a 500
                raise RequestError(malformed_state(algorithm, body.round, exc)) from None
            aggregates = controls.release(algo, analysis, model, body.round, aggregates)
            # -- differential privacy (ADR 0015): noise and budget after the controls, before the reply --
            noisy = privacy.apply(settings(), algo, analysis, model, body.round, data, body.researcher or "",
                                  details={"analysis": key})
            if noisy is not None:
                aggregates, record["dp"], n_rows = noisy.aggregates, noisy.label, noisy.rows  # exact rows stay here
            # -- end differential privacy --
            if body.secure_aggregation is not None:  # secure aggregation (ADR 0014): mask after the controls
                from mipflow import secagg

                record["secure_aggregation"] = True
                aggregates = secagg.mask_release(home.root, home.name, algorithm, analysis.to_dict(), body.round,
                                                 body.state, body.analysis_id, body.secure_aggregation, aggregates,
                                                 model=model)
            differencing.after_step(cohorts, analysis, labels)  # remembered even while the check is off
        except DisclosureError as exc:
            audit.append(**record, decision="refused", control=exc.control, reason=str(exc))
            return JSONResponse(status_code=403, content={"node": home.name, "refused": str(exc),
                                                          "control": exc.control})
        except DataModelNotHeld as exc:
            audit.append(**record, decision="refused", control="data_model", reason=str(exc))
            return JSONResponse(status_code=404, content={"node": home.name, "refused": str(exc),
                                                          "control": "data_model"})
        except (RequestError, StoreError) as exc:
            audit.append(**record, decision="refused", control="request", reason=str(exc))
            raise HTTPException(status_code=400, detail=str(exc)) from None
        except MipflowError as exc:
            audit.append(**record, decision="error", reason=str(exc))
            raise HTTPException(status_code=400, detail=str(exc)) from None
        audit.append(**record, decision="allowed", ms=round(1000 * (time.perf_counter() - started), 2))
        budget.charge(body.researcher, key)
        # StepReply documents the reply; it is encoded here directly (one json.dumps, no model pass)
        return Response(json_bytes({"node": home.name, "algorithm": algorithm, "round": body.round,
                                    "rows": n_rows, "aggregates": aggregates, "code": code_of(algorithm),
                                    "privacy": record.get("dp")}),
                        media_type="application/json")

    from mipflow import secagg

    secagg.add_routes(app, home, authenticate, audit)  # GET /v1/secagg/key (ADR 0014)
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


def serve(home: NodeHome, host: str = "127.0.0.1", port: int = 8700) -> None:
    """Run the node API with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(create_app(home), host=host, port=port, log_level="warning", access_log=False)
