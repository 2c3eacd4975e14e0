"""Cox regression from a snapshot's selection left on disk (ADR 0062, amendment 16): every round's release
(round 0's counts, series and checked cells, the start round's level counts and moments, every sums round's
sealed per-bin sums, every score round's share) equal to the frame path's, bit for bit, at chunk sizes that
put a chunk's edge almost everywhere; the fit equal to the frame's and to statsmodels' ``PHReg`` on the pooled
rows (times rounded up to the bins, rows followed beyond the end of follow-up censored there) to 1e-9.

Nothing is kept a row between rounds on disk: each round reads its chunks again (checked by counting passes).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import cox_streamed, get_algorithm
from mipflow.algorithms.sealed import local_state
from mipflow.exceptions import RequestError
from mipflow.node.controls.differencing import hash_key
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import transport
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.survival_data import cox_design, round_up
from tests.mipflow.node.query.streamed import frame_and_rows, EDGE_SELECTIONS, block_model, block_store, number_rule, stream_blocks

SECRET = b"node secret of the streamed Cox tests"
KEY = hash_key(SECRET)
BLOCK = 64  # snapshot rows read at a time (a multiple of 8)
ROWS = 10 * BLOCK
COX = get_algorithm("cox_regression")
MODEL = block_model(
    "cxs", "Streamed Cox",
    {"code": "band", "sql_type": "int", "isCategorical": False},
    {"code": "days", "sql_type": "real", "isCategorical": False, "minValue": 0, "maxValue": 400},
    {"code": "grp", "sql_type": "text", "isCategorical": True,
     "enumerations": [{"code": c, "label": c} for c in ("w", "u", "v")]},  # "w" never stored
    {"code": "stage", "sql_type": "int", "isCategorical": True,
     "enumerations": [{"code": c, "label": c} for c in ("1", "2", "3")]},
    {"code": "status", "sql_type": "text", "isCategorical": True,  # "dead" the event; two levels censored
     "enumerations": [{"code": c, "label": c} for c in ("alive", "dead", "lost")]})


def _rows() -> pd.DataFrame:
    """Times on a tenth of a day (ties once binned), hazards depending on every covariate, an offset on
    ``x2``; ``band`` is the row's block of the snapshot."""
    rng = np.random.default_rng(55)
    x1 = rng.normal(50.0, 10.0, ROWS)
    x2 = 1e4 + rng.normal(0.0, 30.0, ROWS)
    grp = rng.choice(["u", "v"], ROWS)
    stage = rng.choice([3, 1, 2], ROWS)  # stored in another order than the sorted levels
    rate = np.exp(0.03 * (x1 - 50) - 0.01 * (x2 - 1e4) + 0.5 * (grp == "v") - 0.4 * (stage == 3)) / 150.0
    event_time = rng.exponential(1.0 / rate)
    censor_time = rng.uniform(20.0, 400.0, ROWS)
    days = np.round(np.minimum(np.minimum(event_time, censor_time), 400.0), 1)
    # a third of the times exactly on the request's bin ends (every 64 fine points at bin width 5; a bin's end is
    # in the bin), as far as the merge keeps them
    fine = np.linspace(0.0, 400.0, 10_001)
    on_ends = rng.random(ROWS) < 1 / 3
    days[on_ends] = fine[np.minimum(64 * np.ceil(np.searchsorted(fine, days[on_ends]) / 64), 10_000).astype(int)]
    status = np.where(event_time <= censor_time, "dead", rng.choice(["alive", "lost"], ROWS))
    frame = pd.DataFrame({
        "_pid": [f"p{i:05d}" for i in range(ROWS)], "_visit": ["v1"] * ROWS,
        "dataset": np.where(np.arange(ROWS) % 3 == 0, "b", "a"),
        "x1": x1, "x2": x2, "band": np.arange(ROWS) // BLOCK, "grp": grp, "stage": stage.astype(object),
        "days": days, "status": status})
    frame.loc[[5, 64, 200, 639], "x2"] = np.nan  # on and beside blocks' edges
    frame.loc[[7, 128, 300], "status"] = None
    frame.loc[[9, 511], "stage"] = None
    frame.loc[[63, 400], "days"] = np.nan
    beyond = np.arange(ROWS) % 41 == 10  # beyond the declared range (enough to leave the merge its bins)
    frame.loc[beyond, "days"] = 400.02 + np.round(rng.exponential(30.0, int(beyond.sum())), 1)
    return frame


@pytest.fixture
def store(tmp_path, monkeypatch, request):
    size = getattr(request, "param", 48)
    stream_blocks(monkeypatch, size)  # the counts', moments' and controls' passes
    monkeypatch.setattr(cox_streamed, "CHUNK_ROWS", size)  # the Cox rounds' chunks
    with block_store(tmp_path, monkeypatch, MODEL, _rows(), BLOCK) as store:
        yield store


SELECTIONS = [
    *EDGE_SELECTIONS,
    pytest.param(["b"], number_rule("x1", "greater", 45.0), id="scattered"),
]
#: one covariate (its event sum a single column), numerical and nominal ones together
COVARIATES = [pytest.param(["x1"], id="one"), pytest.param(["x1", "grp", "x2", "stage"], id="nominal")]
CHUNKS = [pytest.param(7, id="chunks-of-7"), pytest.param(48, id="chunks-of-48"),
          pytest.param(100_000, id="whole")]


def _request(datasets, filters, x, **parameters):
    return AnalysisRequest.from_dict({"inputdata": {"data_model": MODEL.key, "datasets": datasets, "x": list(x),
                                                    "y": ["days", "status"], "filters": filters},
                                      "parameters": {"event_level": "dead", "bin_width": 5.0, **parameters}})


def _both(store, request):
    return frame_and_rows(store, MODEL, KEY, COX, request)


def _fit(data, request):
    """Every round of the fit on one node's ``data`` (round 0 coarsened by its controls at 3, the score rounds
    on the pooled sealed sums): each local step's release as sent and the result (or the central refusal)."""
    state, local, releases = None, None, []
    for round_no in range(80):
        released = transport(COX.local_step(round_no, data, request, MODEL, local))
        releases.append(json.dumps(released, sort_keys=True))
        if round_no == 0:
            released = transport(COX.coarsen_for_release(0, released, 3))
        try:
            step = COX.global_step(round_no, [released], request, MODEL, state)
        except RequestError as refused:  # e.g. a max_time before the first bin end the merge left
            return releases, str(refused)
        if step.done:
            return releases, transport(step.result)
        state = transport(step.state)
        local = local_state(COX, transport(state), [released])
    raise AssertionError("no convergence")


def _phreg(frame: pd.DataFrame, result: dict, ties: str):
    from statsmodels.duration.hazard_regression import PHReg

    timeline = np.asarray(result["binning"]["timeline"], dtype=float)
    end = timeline[-1]
    times = frame["days"].to_numpy(dtype=float)
    status = (frame["status"] == "dead").to_numpy(dtype=float)
    status[times > end] = 0.0  # followed beyond the end of follow-up: censored there
    times = round_up(np.minimum(times, end), timeline)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PHReg(times, cox_design(frame, result["indep_vars"]), status=status, ties=ties).fit(
            method="newton", tol=1e-8, maxiter=100)


@pytest.mark.parametrize("store", CHUNKS, indirect=True)
@pytest.mark.parametrize("ties, max_time", [("breslow", None), ("efron", 300.0)])
@pytest.mark.parametrize("x", COVARIATES)
@pytest.mark.parametrize("datasets, filters", SELECTIONS)
def test_every_round_from_rows_on_disk_is_the_frames_bit_for_bit_and_phreg(datasets, filters, x, ties, max_time,
                                                                          store):
    parameters = {"ties": ties, **({"max_time": max_time} if max_time is not None else {})}
    request = _request(datasets, filters, x, **parameters)
    frame, rows = _both(store, request)
    assert len(rows) == len(frame) > 40
    streamed, result = _fit(rows, request)
    whole, expected = _fit(frame, request)
    assert streamed == whole and result == expected
    if isinstance(expected, str):  # refused alike: the rows beyond the range left a small selection no early bin end
        assert "max_time" in expected and filters is not None  # every larger selection is fitted
        return
    assert len(streamed) >= 6  # round 0, start, pairs of sums and score rounds, the final pair
    assert any('"sealed"' in r for r in streamed) and any('"loglik"' in r for r in streamed)
    assert streamed == whole  # every round's release, bit for bit
    assert json.dumps(result, sort_keys=True) == json.dumps(expected, sort_keys=True)
    fit = _phreg(frame, result, ties)
    assert result["n_obs"] == len(frame)
    assert_rel_close(result["coefficients"], fit.params, rel=1e-9, floor=1e-6, what="coefficients")
    assert_rel_close(result["stderr"], fit.bse, rel=1e-9, what="stderr")
    assert_rel_close(result["ll"], fit.llf, rel=1e-9, what="ll")
    if max_time is not None:  # not vacuous: rows were followed beyond the end of follow-up
        assert (frame["days"] > result["binning"]["end_of_follow_up"]).any()
    assert (frame["days"] > 400).any()  # and beyond the grid


def test_nothing_is_kept_a_row_between_rounds_each_round_reads_its_chunks_again(store, monkeypatch):
    request = _request(["a", "b"], None, ["x1", "grp"])
    _, rows = _both(store, request)
    passes: list[list[str]] = []
    reader = rows.reader
    monkeypatch.setattr(rows, "reader", lambda codes: passes.append(list(codes)) or reader(codes))
    first = transport(COX.local_step(0, rows, request, MODEL, None))
    state = transport(COX.global_step(0, [transport(COX.coarsen_for_release(0, first, 3))], request, MODEL,
                                      None).state)
    started = transport(COX.local_step(1, rows, request, MODEL, state))
    state = transport(COX.global_step(1, [started], request, MODEL, state).state)
    for round_no in (2, 3):
        before = len(passes)
        sums = transport(COX.local_step(round_no, rows, request, MODEL, state))
        assert len(passes) > before and any({"days", "status"} <= set(p) for p in passes[before:])
        assert "sealed" in sums
    assert not any(isinstance(v, np.ndarray) and v.size >= len(rows) for v in vars(rows).values()
                   if v is not rows._packed)


@pytest.mark.parametrize("bad, message", [
    ({"phase": "other"}, "state.phase"),
    ({"event_bins": [999]}, "outside the common bins"),
    ({"columns": ["nope"], "center": [0.0], "coefficients": [0.0]}, "unknown design columns"),
    ({"center": []}, "differ in length"),
    ({"ends": [3, 2]}, "state.ends"),
])
def test_a_malformed_state_is_the_same_request_error_on_both_paths(bad, message, store):
    request = _request(["a", "b"], None, ["x1", "grp"])
    frame, rows = _both(store, request)
    first = transport(COX.local_step(0, frame, request, MODEL, None))
    state = transport(COX.global_step(0, [transport(COX.coarsen_for_release(0, first, 3))], request, MODEL,
                                      None).state)
    started = transport(COX.local_step(1, frame, request, MODEL, state))
    state = {**transport(COX.global_step(1, [started], request, MODEL, state).state), **bad}
    errors = []
    for data in (frame, rows):
        with pytest.raises(RequestError, match=message) as raised:
            COX.local_step(2, data, request, MODEL, state)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]
