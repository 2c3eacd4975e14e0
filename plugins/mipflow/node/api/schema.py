"""The node API's request and reply bodies, as pydantic models (what ``/openapi.json`` describes).

:class:`StepBody` is what the node parses a step call with (before
:class:`mipflow.node.api.step.StepRequest` is built from it); :class:`StepCall` is the
same body as the OpenAPI schema documents it, down to the Exareme2 request and its
QueryBuilder filters.  :class:`StepReply` and :class:`Refusal` document the replies.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from mipflow.exceptions import RequestError
from mipflow.protocol.filters import QB_INPUTS, QB_TYPES, SUPPORTED_OPERATORS
from mipflow.secagg.codec import SCHEME
from mipflow.secagg.node_side import MAX_PARTICIPANTS
from mipflow.secagg.transcript import TRANSCRIPT_SCHEME


class StepBody(BaseModel):
    """Body of a local-step call, as the node parses it.

    ``request`` is parsed by :meth:`mipflow.protocol.request.AnalysisRequest.from_dict`
    and its filters by :mod:`mipflow.node.query.filters`, which give the precise reasons of a
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
    transcript: dict[str, Any] | None = Field(
        None, description="verifiable rounds: {scheme, participants: [{node, public_key}], previous: null | "
                          "{chain, state, contributions: [{node, aggregates, tags}]}} (mipflow.secagg.transcript, "
                          "docs/adr/0029-verifiable-rounds.md); required from round 1 on")


def read_step_body(raw: bytes) -> StepBody:
    """The step call in ``raw`` (the signed body bytes), checked for its structure only.

    Raises
    ------
    RequestError
        If ``raw`` is not JSON or not a step call; the message names the error's
        type only (its text could quote the body).
    """
    try:
        return StepBody.model_validate(json.loads(raw or b"{}"))
    except (ValueError, TypeError) as exc:
        raise RequestError(f"body is not a valid step call: {type(exc).__name__}") from None


# --- the step body as documented in the OpenAPI schema (what schemathesis fuzzes) ---
# These models describe the Exareme2 request format that AnalysisRequest.from_dict and
# mipflow.node.query.filters accept; the node does not validate with them (StepBody and those parsers do).

# the literals are the parser's own sets (mipflow.protocol.filters), so schema and parser cannot drift apart
FilterOperator = Literal[tuple(sorted(SUPPORTED_OPERATORS))]  # type: ignore[valid-type]


class FilterRule(BaseModel):
    """One jQuery QueryBuilder rule of a filter (:mod:`mipflow.node.query.filters`)."""

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
    """A jQuery QueryBuilder rule group: rules and nested groups (:mod:`mipflow.node.query.filters`)."""

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


class Contribution(BaseModel):
    node: str = Field(min_length=1, max_length=128)
    aggregates: dict[str, Any] = Field(description="the node's reply of the previous round, as it sent it")
    tags: dict[str, str] = Field(description="the node's tag of that reply for each participant")


class PreviousRound(BaseModel):
    chain: str = Field(description="the hash chain before the previous round")
    state: dict[str, Any] | None = Field(description="the state the previous round was sent")
    contributions: list[Contribution] = Field(description="every participant's reply to the previous round")


class Transcript(BaseModel):
    """Verifiable rounds (:mod:`mipflow.secagg.transcript`, docs/adr/0029-verifiable-rounds.md)."""

    scheme: Literal[TRANSCRIPT_SCHEME] = Field(description="the verifiable-rounds scheme")
    participants: list[Participant] = Field(min_length=1, max_length=MAX_PARTICIPANTS)
    previous: PreviousRound | None = Field(None, description="the previous round (null at round 0)")


class StepCall(StepBody):
    """Body of a local-step call: one round of ``algorithm`` for ``researcher`` in ``project``."""

    request: AnalysisRequestBody = Field(description="MIP / Exareme2 algorithm request: {inputdata, parameters}")
    secure_aggregation: SecureAggregation | None = Field(
        None, description="mask the released aggregates for a secure sum (mipflow.secagg, docs/adr/0014)")
    transcript: Transcript | None = Field(
        None, description="the participants and the previous round's tagged replies; required from round 1 on "
                          "(docs/adr/0029-verifiable-rounds.md)")


class StepReply(BaseModel):
    node: str
    algorithm: str
    round: int
    rows: int = Field(description="rows the local step used (at least min_row_count)")
    aggregates: dict[str, Any]
    code: dict[str, str] = Field(description="catalogue version and SHA-256 of the step code that ran")
    privacy: dict[str, Any] | None = Field(None, description="differential privacy: mechanism, epsilon, delta "
                                                             "and clamping of the noise this node added (ADR 0015)")
    tags: dict[str, str] | None = Field(None, description="the node's tag of this reply for each participant "
                                                          "(verifiable rounds, ADR 0029); null without a transcript")
    chain: str | None = Field(None, description="the analysis' hash chain up to this round (ADR 0029)")
    mode: dict[str, Any] | None = Field(None, description="study mode: the study and snapshot date that answered "
                                                          "(ADR 0028); explore mode: {mode: explore, project, "
                                                          "mechanism, epsilon} (ADR 0032); absent in standard mode")
    longitudinal: dict[str, int | None] | None = Field(
        None, description="longitudinal transformer: patients_dropped, or null when under the node's thresholds "
                          "(absent without a transformer; ADR 0034)")
    notes: dict[str, bool] | None = Field(
        None, description="round 0: the algorithm's flags about the node's rows, e.g. linear_mixed_model's "
                          "single_visit (absent when none; ADR 0041)")


class Refusal(BaseModel):
    node: str
    refused: str
    control: str
