"""The ``secure_aggregation_required`` control (mipflow.node.controls.masking, ADR 0027), without HTTP.

Through real node processes: ``tests/privacy/test_masked_selections.py``.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.api.step import StepRequest, StepWork
from mipflow.node.controls.masking import other_participants, require_secure_aggregation
from mipflow.node.home import NodeSettings
from mipflow.protocol.request import AnalysisRequest
from mipflow.secagg.codec import SCHEME

ANALYSIS = AnalysisRequest.from_dict({"inputdata": {"data_model": "synth:1", "datasets": ["d0"], "x": [],
                                                    "y": ["x2"], "filters": None}, "parameters": {}})
#: The node answering (the control reads only its name from the context).
NODE = SimpleNamespace(name="hospital_a")


def masked(*nodes: str) -> dict[str, Any]:
    return {"scheme": SCHEME, "participants": [{"node": n, "public_key": "00" * 32} for n in nodes]}


def run(required: int, secure_aggregation: Any, algorithm: str = "ttest_onesample", round_no: int = 0,
        state: dict | None = None) -> None:
    request = StepRequest(algorithm=algorithm, round=round_no, analysis=ANALYSIS, analysis_id="a",
                          secure_aggregation=secure_aggregation, state=state)
    work = StepWork(settings=NodeSettings(secure_aggregation_required=required), record={})
    require_secure_aggregation(request, NODE, work)


@pytest.mark.parametrize("spec, others", [
    pytest.param(masked("hospital_a", "hospital_b"), {"hospital_b"}, id="one-other"),
    pytest.param(masked("hospital_a", "hospital_a"), set(), id="itself-twice"),
    pytest.param(masked("hospital_a"), set(), id="itself-only"),
    pytest.param(masked("hospital_b", "hospital_c"), {"hospital_b", "hospital_c"}, id="not-itself"),
    pytest.param({"participants": "hospital_b"}, set(), id="malformed"),
    pytest.param(None, set(), id="none"),
])
def test_other_participants(spec, others) -> None:
    assert other_participants(spec, "hospital_a") == others


@pytest.mark.parametrize("spec, algorithm, says", [
    pytest.param(None, "ttest_onesample", "secure aggregation on", id="plain"),
    pytest.param(masked("hospital_a"), "ttest_onesample", "more nodes", id="itself-only"),
    pytest.param(masked("hospital_a", "hospital_a"), "ttest_onesample", "more nodes", id="itself-twice"),
    pytest.param(masked("hospital_a", "hospital_b"), "pca", "not available for pca", id="cannot-be-masked"),
])
def test_a_node_that_requires_masking_refuses(spec, algorithm, says) -> None:
    with pytest.raises(DisclosureError, match="secure_aggregation_required") as err:
        run(1, spec, algorithm)
    assert err.value.control == "secure_aggregation" and says in str(err.value)
    run(0, spec, algorithm)  # the default: the control lets everything through to the others


def test_a_masked_step_with_another_node_passes() -> None:
    run(1, masked("hospital_a", "hospital_b"))
    # a list without the node itself passes here; the masking step refuses it (own key not listed)
    run(1, masked("hospital_b", "hospital_c"))


@pytest.mark.parametrize("round_no, phase", [pytest.param(0, None, id="round-0"), pytest.param(1, "sums", id="sums")])
def test_a_node_that_requires_masking_refuses_a_round_released_in_the_clear(round_no, phase) -> None:
    """Cox regression masks its start round (ADR 0055 amendment) and score rounds (ADR 0048) only: its
    round 0 (the node's own bins) and its sums rounds (counts beside the sealed sums) go out in the clear
    even under secure aggregation, so a node that requires masking refuses them, from the round and state
    alone."""
    state = None if phase is None else {"phase": phase}
    with pytest.raises(DisclosureError, match="secure_aggregation_required") as err:
        run(1, masked("hospital_a", "hospital_b"), "cox_regression", round_no, state)
    assert err.value.control == "secure_aggregation" and "in the clear" in str(err.value)
    run(0, masked("hospital_a", "hospital_b"), "cox_regression", round_no, state)
    run(1, masked("hospital_a", "hospital_b"), "cox_regression", round_no + 1, {"phase": "score"})  # masked
    run(1, masked("hospital_a", "hospital_b"), "cox_regression", 1, {"phase": "start"})  # masked
