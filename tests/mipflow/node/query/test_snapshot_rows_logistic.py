"""Logistic regression from a snapshot's selection left on disk (ADR 0049, amended "logistic regression"):
every round's release equal to the frame's, bit for bit, with numerical and nominal covariates (dummies
built a block at a time from the snapshot's level codes); the fit equal to statsmodels' ``Logit`` on the
pooled rows to 1e-9; the row-weight vectors' effective rows (ADR 0054) from block totals equal to the
whole vectors'.

Blocks are made small and of different sizes (the snapshot's reads, the counts, the moments, Newton's
blocks) so that a few hundred rows cross many edges of each.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import design as design_module
from mipflow.algorithms import get_algorithm, logistic_regression, moments
from mipflow.algorithms.moments import WeightTotals
from mipflow.node.controls.differencing import hash_key
from mipflow.node.controls.effective_rows import effective_rows
from mipflow.node.query.read import select_rows
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import transport

from tests.mipflow.node.query.streamed import frame_and_rows, EDGE_SELECTIONS, block_model, block_store, number_rule

SECRET = b"node secret of the streamed logistic tests"
KEY = hash_key(SECRET)
BLOCK = 64  # snapshot rows read at a time (a multiple of 8)
ROWS = 10 * BLOCK
LOGISTIC = get_algorithm("logistic_regression")
MODEL = block_model(
    "lgt", "Streamed logistic",
    {"code": "band", "sql_type": "int", "isCategorical": False},
    {"code": "grp", "sql_type": "text", "isCategorical": True,
     "enumerations": [{"code": c, "label": c} for c in ("w", "u", "v")]},  # "w" never stored
    {"code": "stage", "sql_type": "int", "isCategorical": True,
     "enumerations": [{"code": c, "label": c} for c in ("1", "2", "3")]},
    {"code": "event", "sql_type": "text", "isCategorical": True,
     "enumerations": [{"code": c, "label": c} for c in ("no", "yes")]})


def _rows() -> pd.DataFrame:
    """Large offsets, small spreads; the event depends on every covariate; ``band`` is the row's block."""
    rng = np.random.default_rng(49)
    x1 = 1e6 + rng.normal(0, 1.0, ROWS)
    x2 = -2e5 + rng.normal(0, 3.0, ROWS)
    grp = rng.choice(["u", "v"], ROWS)
    stage = rng.choice([3, 1, 2], ROWS)  # stored in another order than the sorted levels
    eta = 0.9 * (x1 - 1e6) - 0.25 * (x2 + 2e5) + 0.6 * (grp == "v") - 0.5 * (stage == 3) + 0.2
    event = np.where(rng.random(ROWS) < 1 / (1 + np.exp(-eta)), "yes", "no")
    frame = pd.DataFrame({
        "_pid": [f"p{i:05d}" for i in range(ROWS)], "_visit": ["v1"] * ROWS,
        "dataset": np.where(np.arange(ROWS) % 3 == 0, "b", "a"),
        "x1": x1, "x2": x2, "band": np.arange(ROWS) // BLOCK, "grp": grp, "stage": stage.astype(object),
        "event": event})
    frame.loc[[5, 64, 200, 639], "x2"] = np.nan  # on and beside blocks' edges
    frame.loc[[7, 128, 300], "event"] = None
    frame.loc[[9, 511], "stage"] = None
    return frame


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(design_module, "COUNT_BLOCK", 3 * BLOCK // 2 + 5)
    monkeypatch.setattr(moments, "STREAM_BLOCK", 2 * BLOCK)
    monkeypatch.setattr(moments, "MOMENT_BLOCK", BLOCK // 2 + 3)
    monkeypatch.setattr(logistic_regression, "BLOCK_ROWS", 48)  # Newton's blocks: the frame's and the stream's
    with block_store(tmp_path, monkeypatch, MODEL, _rows(), BLOCK) as store:
        yield store


SELECTIONS = [
    *EDGE_SELECTIONS,
    pytest.param(["b"], number_rule("x1", "greater", 999_999.7), id="scattered"),
]
COVARIATES = [pytest.param(["x1", "x2"], id="numerical"), pytest.param(["x1", "grp", "x2", "stage"], id="nominal")]


def _request(datasets, filters, x):
    return AnalysisRequest.from_dict({"inputdata": {"data_model": MODEL.key, "datasets": datasets, "x": list(x),
                                                    "y": ["event"], "filters": filters},
                                      "parameters": {"positive_class": "yes"}})


def _both(store, request):
    return frame_and_rows(store, MODEL, KEY, LOGISTIC, request)


def _fit(data, request):
    """Every round of the fit on one node's ``data``: the releases and the result."""
    state, releases = None, []
    for round_no in range(60):
        released = transport(LOGISTIC.local_step(round_no, data, request, MODEL, state))
        releases.append(json.dumps(released, sort_keys=True))
        step = LOGISTIC.global_step(round_no, [released], request, MODEL, state)
        if step.done:
            return releases, step.result
        state = transport(step.state)
    raise AssertionError("no convergence")


@pytest.mark.parametrize("x", COVARIATES)
@pytest.mark.parametrize("datasets, filters", SELECTIONS)
def test_every_round_from_rows_on_disk_is_the_frames_bit_for_bit_and_statsmodels(datasets, filters, x, store):
    request = _request(datasets, filters, x)
    frame, rows = _both(store, request)
    assert len(rows) == len(frame) > 40
    streamed, result = _fit(rows, request)
    whole, expected = _fit(frame, request)
    assert len(streamed) >= 4  # round 0, Newton rounds, the final evaluation
    assert streamed == whole  # every round's release, bit for bit
    assert json.dumps(result, sort_keys=True) == json.dumps(expected, sort_keys=True)
    import statsmodels.api as sm

    # statsmodels does not converge on the offsets (1e6, -2e5) as stored: fitted on the covariates less the
    # offsets (exact subtractions, Sterbenz), its intercept taken back to the stored scale
    offsets = {"x1": 1e6, "x2": -2e5}
    shifted = frame[x].copy()
    for code, offset in offsets.items():
        if code in x:
            shifted[code] = shifted[code] - offset
    design = pd.get_dummies(shifted, columns=[c for c in x if MODEL.variable(c).is_categorical],
                            drop_first=True, dtype=float)
    fit = sm.Logit((frame["event"] == "yes").astype(float), sm.add_constant(design)).fit(
        disp=0, method="newton", tol=1e-8, maxiter=100)
    assert fit.mle_retvals["converged"]
    params = fit.params.rename(index={"const": "Intercept"})
    params.index = [name.replace("_", "[", 1) + "]" if name.split("_")[0] in x and "_" in name else name
                    for name in params.index]
    want = params.loc[result["indep_vars"]].to_numpy(copy=True)
    want[0] -= sum(offsets[c] * params[c] for c in offsets if c in x)
    np.testing.assert_allclose(result["coefficients"], want, rtol=1e-9, atol=0)
    np.testing.assert_allclose(result["ll"], fit.llf, rtol=1e-12, atol=0)


@pytest.mark.parametrize("x", COVARIATES)
def test_the_row_weights_totals_hold_the_vectors_effective_rows(x, store):
    request = _request(["a", "b"], number_rule("band", "less", 7), x)
    frame, rows = _both(store, request)
    first = transport(LOGISTIC.local_step(0, frame, request, MODEL, None))
    state = transport(LOGISTIC.global_step(0, [first], request, MODEL, None).state)
    for coefficients in ([0.0] * len(state["coefficients"]), [0.3, 0.9, -0.2] + [0.4] * (len(state["center"]) - 2),
                         [-2.0, 60.0, 9.0] + [5.0] * (len(state["center"]) - 2)):  # a steep boundary: few rows
        state = {**state, "coefficients": coefficients}
        vectors = LOGISTIC.row_weights(1, frame, request, MODEL, state)
        totals = LOGISTIC.row_weights(1, rows, request, MODEL, state)
        assert all(isinstance(t, WeightTotals) for t in totals)
        for vector, total in zip(vectors, totals):
            assert total.size == len(vector) == len(rows)
            assert effective_rows(total) == pytest.approx(effective_rows(vector), rel=1e-12, abs=0)
    assert effective_rows(totals[0]) < 0.25 * len(rows)  # the steep one concentrates: the check can fail


def test_the_local_step_and_the_weights_share_one_pass(store, monkeypatch):
    request = _request(["a", "b"], None, ["x1", "grp"])
    _, rows = _both(store, request)
    first = transport(LOGISTIC.local_step(0, rows, request, MODEL, None))
    state = transport(LOGISTIC.global_step(0, [first], request, MODEL, None).state)
    passes = []
    reader = rows.reader
    monkeypatch.setattr(rows, "reader", lambda codes: passes.append(list(codes)) or reader(codes))
    LOGISTIC.local_step(1, rows, request, MODEL, state)
    newton = len(passes)
    LOGISTIC.row_weights(1, rows, request, MODEL, state)
    assert len(passes) == newton  # the weights of that round: no pass of their own
    LOGISTIC.row_weights(1, rows, request, MODEL, {**state, "coefficients": [0.1] * len(state["coefficients"])})
    assert len(passes) > newton  # another iterate: read again


@pytest.mark.parametrize("sizes", [[640], [1] * 7 + [633], [64] * 10, [100, 0, 540], [320, 320]])
def test_weight_totals_of_blocks_are_the_whole_vectors(sizes):
    rng = np.random.default_rng(len(sizes))
    vector = rng.lognormal(0.0, 4.0, sum(sizes)) * rng.choice([-1.0, 1.0], sum(sizes))
    vector[::97] = 0.0
    totals, at = WeightTotals(), 0
    for size in sizes:
        totals, at = totals.add(vector[at:at + size]), at + size
    assert totals.size == len(vector)
    assert effective_rows(totals) == pytest.approx(effective_rows(vector), rel=1e-12, abs=0)
    tiny = WeightTotals().add(1e-300 * vector[:100]).add(1e-300 * vector[100:])
    assert effective_rows(tiny) == pytest.approx(effective_rows(vector), rel=1e-12, abs=0)  # no underflow


def test_weight_totals_of_nothing_zeros_and_non_numbers():
    assert effective_rows(WeightTotals()) is None
    assert effective_rows(WeightTotals().add(np.zeros(5)).add(np.zeros(0))) is None
    assert effective_rows(WeightTotals().add(np.ones(3)).add(np.array([np.inf]))) == 0.0
    assert effective_rows(WeightTotals().add(np.array([np.nan])).add(np.ones(3))) == 0.0
    assert effective_rows(WeightTotals().add(np.zeros(4)).add(np.full(6, 0.5))) == pytest.approx(6.0, rel=1e-15)


def test_a_stored_level_outside_the_enumerations_is_left_to_the_frames_read(store):
    with store.begin() as conn:  # an admin's load holding a stage the data model does not declare
        store.upsert_rows(conn, MODEL, pd.DataFrame([{**_rows().iloc[0].to_dict(), "_pid": "zz", "stage": 7,
                                                      "band": 99}]), batch_id="c", sha256="1" * 64)
    elsewhere = _request(["a", "b"], number_rule("band", "less", 5), ["x1", "stage"])  # not among the rows selected
    assert select_rows(store, MODEL, datasets=elsewhere.datasets, variables=list(LOGISTIC.variables(elsewhere)),
                       filters=elsewhere.filters, row_key=KEY) is None
    numerical = _request(["a", "b"], None, ["x1"])  # the level of another variable: not in the way
    assert select_rows(store, MODEL, datasets=numerical.datasets, variables=list(LOGISTIC.variables(numerical)),
                       filters=None, row_key=KEY) is not None


def test_nominal_levels_are_the_sql_reads_codes(store):
    request = _request(["a", "b"], None, ["stage", "grp"])
    frame, rows = _both(store, request)
    for code in ("stage", "grp", "event"):
        levels = np.array(rows.levels_of(code), dtype=object)
        np.testing.assert_array_equal(levels[rows.values(code)],
                                      frame[code].to_numpy())
    assert rows.levels_of("x1") is None
