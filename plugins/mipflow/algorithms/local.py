"""Running the local steps: a node's rows prepared for them, and every node in this process.

:func:`prepare_local_data` is what a node does to its (already filtered) rows
before an algorithm's local step; :func:`run_in_process` drives a whole
federated analysis with every node in this process, passing aggregates,
states and the result through strict JSON as they would pass over HTTP.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from mipflow.algorithms.contract import MAX_ROUNDS, Algorithm
from mipflow.exceptions import FederationError, RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import transport

if TYPE_CHECKING:  # imported by the catalogue, which must not load pandas
    import pandas as pd


def prepare_local_data(algorithm: Algorithm, data: pd.DataFrame, request: AnalysisRequest) -> pd.DataFrame:
    """What a node does before the local step: keep :meth:`Algorithm.variables`
    (and the node's fold keys, :data:`mipflow.algorithms.crossval.FOLD_KEY`, when it added them)
    and, if the algorithm wants it, drop incomplete rows.

    The node must have applied the request's datasets and filters already.
    """
    from mipflow.algorithms.crossval import FOLD_KEY

    cols = list(algorithm.variables(request))
    missing = [c for c in cols if c not in data.columns]
    if missing:
        raise RequestError(f"the data holds no column {', '.join(map(repr, missing))}")
    if FOLD_KEY in data.columns and FOLD_KEY not in cols:
        cols.append(FOLD_KEY)
    if getattr(algorithm, "row_identity", False):  # clusters of patients (gee): kept at the node, never released
        # (a PostgreSQL node's binary read gives the patient as ``_pid_md5`` and the visits' order as
        # ``_visit_rank`` instead)
        cols += [c for c in ("dataset", "_pid", "_visit", "_pid_md5", "_visit_rank")
                 if c in data.columns and c not in cols]
    out = data.loc[:, cols]
    if algorithm.complete_case:
        out = out.dropna(how="any")
    return out.reset_index(drop=True)


def run_in_process(
    algorithm: Algorithm,
    frames: Sequence[pd.DataFrame],
    request: AnalysisRequest,
    model: DataModel,
) -> dict:
    """Run a federated analysis with every "node" in this process.

    Each frame is one node's rows, already restricted to the request's
    datasets and filters; for a cross-validated algorithm, with the node's fold
    keys (:func:`mipflow.node.controls.folds.add_fold_keys`), as a node hands them.  Aggregates, states and the result all pass through
    strict JSON, as they would over HTTP; sealed sums (:mod:`mipflow.algorithms.sealed`) are pooled
    as the nodes pool them and handed to the next local steps only.

    Raises
    ------
    RequestError
        If the request is invalid or the data cannot give a result.
    FederationError
        If the algorithm does not finish within :data:`MAX_ROUNDS` rounds.
    """
    from mipflow.algorithms.sealed import local_state

    algorithm.validate(request, model)
    local_frames = [prepare_local_data(algorithm, f, request) for f in frames]
    state: dict | None = None
    local: dict | None = None  # the state the local steps compute on: with the pooled sealed sums, if any
    for round_no in range(MAX_ROUNDS):
        aggregates = [
            transport(algorithm.local_step(round_no, frame, request, model, local))
            for frame in local_frames
        ]
        step = algorithm.global_step(round_no, aggregates, request, model, state)
        if step.done:
            if step.result is None:
                raise FederationError(f"{algorithm.name} finished without a result")
            return transport(step.result)
        state = transport(step.state)
        # sealed sums (ADR 0046): pooled as the nodes pool what they open, never seen by the global step
        local = local_state(algorithm, transport(state), aggregates)
    raise FederationError(f"{algorithm.name} did not finish within {MAX_ROUNDS} rounds")
