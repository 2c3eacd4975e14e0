"""The node API against its own OpenAPI schema, fuzzed with schemathesis (in process, ASGI).

Every operation gets generated requests; none may end in a 5xx, and every response
must conform to the schema.  Unsigned requests to ``/v1`` are refused with 401 by
design (``docs/adr/0003-authentication.md``); the signed paths are attacked in
``test_injection_and_auth.py``.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from mipflow.config import NodeHome
from mipflow.nodeapi import create_app
from tests.mipflow.algorithms.survival_data import STROKE
from tests.privacy.conftest import make_rows
from tests.nodes import grant_all, load_frame


def _app(root):
    home = NodeHome.init(root, "fuzzed")
    load_frame(root, STROKE, make_rows())
    grant_all(root)
    return create_app(NodeHome(root))


@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory):
    return schemathesis.openapi.from_asgi("/openapi.json", _app(tmp_path_factory.mktemp("fuzz") / "n"))


OPERATIONS = ["GET /health", "GET /v1/metadata", "GET /v1/algorithms", "GET /v1/secagg/key",
              "POST /v1/steps/{algorithm}"]


def test_the_schema_lists_every_operation(fuzz_schema):
    found = sorted(r.ok().label for r in fuzz_schema.get_all_operations())
    assert found == sorted(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_server_errors_and_responses_conform(fuzz_schema, label):
    method, path = label.split(" ")
    operation = fuzz_schema[path][method]
    calls = []

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        response = case.call()
        calls.append(response.status_code)
        assert response.status_code < 500, response.text
        if path.startswith("/v1"):
            assert response.status_code == 401  # unsigned
        case.validate_response(response)

    fuzz()
    assert calls
