"""The node API against its own OpenAPI schema, fuzzed with schemathesis (in process, ASGI).

Every operation gets generated requests; none may end in a 5xx, and every response
must conform to the schema.

* Unsigned, every ``/v1`` request is refused with 401 (``docs/adr/0003-authentication.md``).
* Signed as the central site signs (:class:`CentralSigner`, a ``requests`` auth that
  schemathesis applies to each generated case: HMAC over method, path, body, timestamp
  and nonce, :mod:`mipflow.protocol.signing`), the requests get past authentication to a node with
  rows and a grant, so the generated step body (``StepCall`` in the schema: request,
  filters, parameters, round, state, secure_aggregation...) reaches the request parser,
  the access and disclosure controls and the algorithm code.  Each generated body has
  some of its fields swapped for names the node knows (data model, datasets, variables,
  the granted identity, the algorithm's own parameters) so that many steps run.

A 2xx step reply carries only the documented fields and aggregates with no row key
and no per-row vector; a refusal (403/404) names its control.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipflow.algorithms import ALGORITHMS
from mipflow.node.controls.audit import AUDIT_FILE, AuditLog
from mipflow.protocol.signing import Credential, issue_client, signed_headers
from mipflow.node.home import NodeHome
from mipflow.node.api.app import StepReply, create_app
from mipflow.secagg.codec import SCHEME
from mipflow.secagg.crypto import load_keypair
from tests.mipflow.algorithms.survival_data import STROKE
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame
from tests.privacy.conftest import DATASETS, make_rows
from tests.nodes import standard_home

NODE = "fuzzed"
OPERATIONS = ["GET /health", "GET /v1/metadata", "GET /v1/algorithms", "GET /v1/secagg/key",
              "POST /v1/steps/{algorithm}"]
SIGNED = [label for label in OPERATIONS if " /v1/" in label]
#: Every control a step refusal may name (mipflow.node.controls.disclosure, access, budget, cohorts, dp, secagg).
CONTROLS = {"access", "budget", "data_model", "disabled_algorithm", "min_row_count", "nfilter_tab",
            "nfilter_string", "differencing", "privacy_budget", "secure_aggregation", "dp", "round_verification"}
EXAMPLES_PER_ALGORITHM = 15
VARIABLES = [v.code for v in STROKE if v.code not in ("subjectcode", "visitid")]
#: Reasons of a 400 that a body valid under the documented schema (``StepCall``) must never get:
#: they are about its structure, which the schema describes.  The others are about names and
#: values only the node knows (a variable it does not hold, a parameter out of an algorithm's
#: range, an algorithm that does not take secure aggregation...).
STRUCTURAL = ("body is not a valid step call", "an analysis request", "inputdata.", "'parameters' must",
              "filter group has unknown", "filter rule has unknown", "filter condition must", "filter key",
              "a filter group needs", "filter rule needs the variable code", "is not supported; supported",
              "is not a QueryBuilder", "secure_aggregation must name the scheme", "secure aggregation needs 2",
              "participant needs a node name", "is not 32 bytes of hex", "transcript must name the scheme",
              "a transcript lists 1 to", "each transcript participant needs", "transcript 'previous' needs")
VALUES = ["yes", "no", "F", "M", "ischaemic", "tia", "hospital_a", 0, 1, 18.5, 42, 3650, -1, 1e9, "", None]


class CentralSigner(requests.auth.AuthBase):
    """Sign each request as :class:`mipflow.central.client.NodeClient` does.

    The signature covers the path the node sees (percent-decoded, as ASGI gives it)
    with the query string as sent, and the exact body bytes schemathesis serialised.
    """

    def __init__(self, credential: Credential) -> None:
        self.credential = credential

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        url = urlsplit(request.url or "")
        path = unquote(url.path) + (f"?{url.query}" if url.query else "")
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else body
        request.headers.update(signed_headers(self.credential.client_id, self.credential.secret,
                                              request.method or "GET", path, body))
        return request


@dataclass
class Fuzzed:
    root: Path
    rows: Any
    unsigned: Any  # schemathesis schemas of one app
    signed: Any

    def audit(self) -> list[dict[str, Any]]:
        return AuditLog(self.root / AUDIT_FILE).records()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[Fuzzed]:
    root = tmp_path_factory.mktemp("fuzz") / "n"
    home = standard_home(root, NODE)
    # hundreds of fuzzed calls are hundreds of analyses: the budgets (ADR 0025, tests/privacy/test_budgets.py)
    # would refuse all calls after the first few algorithms, and the fuzz is after what lies behind them
    home.set_setting("query_budget", 0)
    home.set_setting("query_budget_project", 0)
    rows = make_rows()
    load_frame(root, STROKE, rows)
    grant_all(root)
    credential = issue_client(root, "central")
    app = create_app(NodeHome(root))
    unsigned = schemathesis.openapi.from_asgi("/openapi.json", app)
    signed = schemathesis.openapi.from_asgi("/openapi.json", app)
    signed.auth.set_from_requests(CentralSigner(credential))
    yield Fuzzed(root, rows, unsigned, signed)


def test_the_schema_lists_every_operation(fuzzed):
    found = sorted(r.ok().label for r in fuzzed.signed.get_all_operations())
    assert found == sorted(OPERATIONS)
    paths = fuzzed.signed.raw_schema["paths"]
    body = paths["/v1/steps/{algorithm}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/StepCall"}
    components = fuzzed.signed.raw_schema["components"]["schemas"]
    assert components["StepCall"]["properties"]["request"]["$ref"].endswith("/AnalysisRequestBody")
    assert {"FilterGroup", "FilterRule", "InputData", "SecureAggregation"} <= set(components)
    assert [p["name"] for p in paths["/v1/metadata"]["get"]["parameters"]] == ["researcher", "project"]


def _fuzz(operation, check, *, aim=None, examples: int = 25, **fixed) -> list[int]:
    """Call ``operation`` with generated cases (``aim`` may edit each one); return the statuses.

    Derandomised, so that ``make test`` runs the same cases every time.  A step may be refused
    with 400 for a well-formed body (``positive_data_acceptance`` is left to ``check``: see
    :data:`STRUCTURAL`).
    """
    steps = operation.path.startswith("/v1/steps")
    calls: list[int] = []

    @given(case=operation.as_strategy(**fixed), data=st.data())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def fuzz(case, data):
        if aim is not None:
            aim(case, data)
        response = case.call()
        calls.append(response.status_code)
        assert response.status_code < 500, response.text
        case.validate_response(response, excluded_checks=[positive_data_acceptance] if steps else None)
        if steps and response.status_code == 400:
            detail = response.json()["detail"]
            assert not [part for part in STRUCTURAL if part in detail], (detail, case.body)
        check(response)

    fuzz()
    return calls


@pytest.mark.parametrize("label", OPERATIONS)
def test_unsigned_no_server_errors_and_responses_conform(fuzzed, label):
    method, path = label.split(" ")

    def check(response):
        if path.startswith("/v1"):
            assert response.status_code == 401  # unsigned

    assert _fuzz(fuzzed.unsigned[path][method], check)


@pytest.mark.parametrize("label", [label for label in SIGNED if label.startswith("GET")])
def test_signed_reads_pass_authentication_and_conform(fuzzed, label):
    method, path = label.split(" ")
    calls = _fuzz(fuzzed.signed[path][method], lambda response: None)
    assert 401 not in calls
    assert 200 in calls


# --------------------------------------------------------------------------- signed step bodies


_LOADED = set(make_rows().columns) - {"subjectcode", "dataset"}
#: Variables the node holds values of, by kind (the others of the model are empty there).
NUMERICAL = sorted(v.code for v in STROKE if v.code in _LOADED and v.is_numerical)
NOMINAL = sorted(v.code for v in STROKE if v.code in _LOADED and not v.is_numerical)


#: One request per algorithm that runs on the node's rows (y, x, parameters): the bodies built
#: from it, with some parameters and the filters fuzzed, reach the algorithm's code.
SEEDS: dict[str, tuple[list[str], list[str], dict[str, Any]]] = {
    "anova": (["age"], ["sex", "stroke_type"], {}),
    "anova_oneway": (["age"], ["stroke_type"], {}),
    "cmh_test": (["death_90d"], ["diabetes", "sex"], {}),
    "contingency_table": (["death_90d"], ["sex"], {}),
    "cox_regression": (["followup_days", "death_90d"], ["age"], {"event_level": "yes"}),
    "descriptive_stats": (["age", "sex"], [], {}),
    "gee": (["age"], ["systolic_bp", "sex"], {"family": "gaussian", "cov_struct": "exchangeable"}),
    "kaplan_meier": (["followup_days", "death_90d"], [], {"event_level": "yes"}),
    "kmeans": (["age", "glucose_mmol"], [], {"k": 2}),
    "linear_mixed_model": (["age"], ["systolic_bp", "sex"], {}),
    "linear_regression": (["age"], ["systolic_bp", "sex"], {}),
    "linear_regression_cv": (["age"], ["systolic_bp"], {"n_splits": 2}),
    "logistic_regression": (["death_90d"], ["age"], {"positive_class": "yes"}),
    "logistic_regression_cv": (["death_90d"], ["age"], {"positive_class": "yes", "n_splits": 2}),
    "multiple_histograms": (["age"], ["sex"], {}),
    "naive_bayes_categorical_cv": (["death_90d"], ["sex", "diabetes"], {"n_splits": 2}),
    "naive_bayes_gaussian_cv": (["death_90d"], ["age"], {"n_splits": 2}),
    "pca": (["age", "systolic_bp"], [], {}),
    "pca_with_transformation": (["age", "systolic_bp"], [], {"data_transformation": {"standardize": ["age"]}}),
    "pearson_correlation": (["age", "systolic_bp"], [], {}),
    "ttest_independent": (["age"], ["sex"], {"groupA": "F", "groupB": "M"}),
    "ttest_onesample": (["age"], [], {"mu": 5}),
    "ttest_paired": (["age"], ["systolic_bp"], {}),
}


def _variables(data, spec: dict[str, Any] | None, label: str) -> list[str]:
    """Variable codes for ``x`` or ``y``: mostly of the kinds the algorithm's spec asks for."""
    if spec is None:
        return data.draw(st.sampled_from([[], [data.draw(st.sampled_from(VARIABLES))]]), label=label)
    pool = (NUMERICAL if "numerical" in spec["stattypes"] else []) + \
        (NOMINAL if "nominal" in spec["stattypes"] else [])
    if data.draw(st.integers(0, 9), label=f"{label} kind") == 9:
        pool = VARIABLES
    most = 3 if spec["multiple"] else 1
    return data.draw(st.lists(st.sampled_from(pool), min_size=0 if data.draw(st.integers(0, 9)) == 9 else 1,
                              max_size=most, unique=True), label=label)


def _parameter_values(spec: dict[str, Any]) -> st.SearchStrategy:
    """Values of one spec parameter: mostly in range, else out of range, of another type, or null."""
    types, low, high = spec["types"], spec.get("min"), spec.get("max")
    enums = spec.get("enums") or {}
    valid: list[st.SearchStrategy] = []
    if enums.get("type") == "list":
        valid.append(st.sampled_from(enums["source"]))
    elif enums:  # levels of an input variable
        valid.append(st.sampled_from(["yes", "no", "F", "M", "ischaemic"]))
    if "int" in types:
        valid.append(st.integers(min_value=None if low is None else int(low),
                                 max_value=100 if high is None else min(int(high), 100)))
    if "real" in types:
        valid.append(st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False))
    if "text" in types and not enums:
        valid.append(st.sampled_from(["yes", "no", "F", "M"]))
    invalid = st.one_of(st.none(), st.sampled_from(VALUES), st.text(max_size=8), st.booleans(),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                             max_size=2))
    if "int" in types:
        invalid |= st.integers()
    if "real" in types:
        invalid |= st.floats(allow_nan=False, allow_infinity=False)
    return st.one_of(*valid, *valid, invalid) if valid else invalid


def _aim(case, data, algorithm: str, secagg_key: str) -> None:
    """Swap some generated fields of a step body for names the node knows, so that steps run."""
    body = case.body
    request, inputdata = body["request"], body["request"]["inputdata"]
    spec = ALGORITHMS[algorithm].spec()
    if data.draw(st.integers(0, 9), label="identity") < 9:
        body["researcher"], body["project"] = RESEARCHER, PROJECT
    if data.draw(st.integers(0, 9), label="data model") < 9:
        inputdata["data_model"] = STROKE.key
    if data.draw(st.integers(0, 9), label="datasets") < 9:
        inputdata["datasets"] = data.draw(st.lists(st.sampled_from(DATASETS), min_size=1, unique=True))
    mode = data.draw(st.integers(0, 9), label="variables")
    if mode < 6:  # the seed request, some of its parameters fuzzed
        y, x, parameters = SEEDS[algorithm]
        inputdata["y"], inputdata["x"] = list(y), list(x)
        request["parameters"] = {**parameters, **{name: data.draw(_parameter_values(item), label=name)
                                                  for name, item in spec["parameters"].items()
                                                  if data.draw(st.integers(0, 4), label=f"fuzz {name}") == 4}}
    elif mode < 9:  # variables of the kinds the spec asks for, parameters fuzzed
        inputdata["y"] = _variables(data, spec["inputdata"]["y"], "y")
        inputdata["x"] = _variables(data, spec["inputdata"].get("x"), "x")
        if data.draw(st.integers(0, 9), label="parameters") < 8:
            request["parameters"] = {name: data.draw(_parameter_values(item), label=name)
                                     for name, item in spec["parameters"].items() if data.draw(st.booleans())}
    choice = data.draw(st.integers(0, 5), label="filters")
    if choice < 5:  # the generated group's variables are random text: give most groups real ones
        inputdata["filters"] = None if choice < 3 else {
            "condition": data.draw(st.sampled_from(["AND", "OR"])), "rules": [
                {"id": data.draw(st.sampled_from(VARIABLES)),
                 "operator": data.draw(st.sampled_from(["equal", "not_equal", "less", "greater_or_equal", "between",
                                                        "in", "is_null", "is_not_null"])),
                 "value": data.draw(st.one_of(st.sampled_from(VALUES), st.lists(st.sampled_from(VALUES),
                                                                                 max_size=3)))}
                for _ in range(data.draw(st.integers(1, 3)))]}
    if data.draw(st.integers(0, 3), label="round") < 2:
        body["round"], body["state"] = 0, None
    choice = data.draw(st.integers(0, 4), label="secure aggregation")
    if choice < 3:
        body["secure_aggregation"] = None
    elif choice == 3:  # a well-formed call: this node and a peer
        body["analysis_id"] = body.get("analysis_id") or "fuzzed-analysis"
        body["secure_aggregation"] = {"scheme": SCHEME, "participants": [
            {"node": NODE, "public_key": secagg_key}, {"node": "peer", "public_key": "11" * 32}]}
    case.body = body


def _row_level(value: Any, pids: set[str], rows: int, path: str = "aggregates") -> list[str]:
    """Paths in a reply that look row-level: a row key, or a numeric vector as long as the rows."""
    found = []
    if isinstance(value, str):
        if value in pids:
            found.append(path)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in pids:
                found.append(f"{path}.{key}")
            found += _row_level(item, pids, rows, f"{path}.{key}")
    elif isinstance(value, list):
        if rows >= 10 and len(value) == rows and all(isinstance(v, (int, float)) for v in value):
            found.append(f"{path} (a vector of {rows} numbers)")
        for i, item in enumerate(value):
            found += _row_level(item, pids, rows, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_signed_step_bodies_reach_the_algorithms_and_release_only_aggregates(fuzzed, algorithm):
    operation = fuzzed.signed["/v1/steps/{algorithm}"]["POST"]
    pids = set(fuzzed.rows["subjectcode"].astype(str))
    secagg_key = load_keypair(fuzzed.root).public_hex
    before = len(fuzzed.audit())

    def check(response):
        status, doc = response.status_code, response.json()
        assert status != 401, doc  # signed: authentication never refuses
        if status == 200:
            assert set(doc) <= set(StepReply.model_fields), sorted(doc)
            assert doc["node"] == NODE and doc["algorithm"] == algorithm and doc["rows"] >= 10
            assert _row_level(doc["aggregates"], pids, doc["rows"]) == [], algorithm
        elif status in (403, 404):
            assert set(doc) == {"node", "refused", "control"} and doc["control"] in CONTROLS, doc
        else:
            assert status == 400 and isinstance(doc.get("detail"), str), (status, doc)

    calls = _fuzz(operation, check, aim=lambda case, data: _aim(case, data, algorithm, secagg_key),
                  examples=EXAMPLES_PER_ALGORITHM, path_parameters={"algorithm": algorithm})
    steps = [r for r in fuzzed.audit()[before:] if r.get("endpoint") == "/v1/steps"]
    assert len(steps) == len(calls)  # every call was audited, past authentication
    assert all(r.get("control") != "authentication" for r in steps)
    # some fuzzed bodies got through the request checks to the node's data and the algorithm
    assert any("rows" in r for r in steps), [(r["decision"], r.get("reason")) for r in steps]


def test_signed_step_with_fuzzed_algorithm_names(fuzzed):
    """Any algorithm name in the path: a 400 (unknown), never a 5xx or a failed signature."""
    operation = fuzzed.signed["/v1/steps/{algorithm}"]["POST"]

    def check(response):
        assert response.status_code in (400, 403, 404), response.text

    assert _fuzz(operation, check)


def test_the_step_body_schema_accepts_the_exareme2_requests(fuzzed, shared_dir):
    """The documented body (``StepCall``) admits every request of the Exareme2 test suites."""
    import jsonschema

    schema = fuzzed.signed.raw_schema
    step_call = {"$ref": "#/components/schemas/StepCall", "components": schema["components"]}
    validator = jsonschema.Draft202012Validator(step_call)
    expected = sorted((shared_dir / "exareme2" / "expected").glob("*.json"))
    assert expected
    checked = 0
    for path in expected:
        doc = json.loads(path.read_text())
        cases = doc.get("test_cases") if isinstance(doc, dict) else doc
        for item in cases or []:
            body = {"request": item.get("input", item), "round": 0, "state": None, "researcher": RESEARCHER,
                    "project": PROJECT, "analysis_id": None}
            errors = [e.message for e in validator.iter_errors(body)]
            assert errors == [], (path.name, errors)
            checked += 1
    assert checked > 500
    # and what the schema forbids the node refuses too
    assert not validator.is_valid({"request": {"inputdata": {"data_model": "stroke", "datasets": ["a"]}}})
