"""Cox regression's node-side fast paths give the same aggregates as the plain sums.

The node keeps sorted risk-set arrays between rounds (:mod:`mipflow.algorithms.prepared`)
and sends its sums packed (:mod:`mipflow.algorithms.packed`).  Here every round's
S0 / S1 / S2 (and Efron's E0 / E1 / E2) are checked against sums written out directly from
their definition (rows whose rounded time is at or after the bin; rows with an event in it),
whether the product columns are cached
or formed each round, and with the memo cleared or warm.
"""
from __future__ import annotations

import base64
import gc

import numpy as np
import pytest

from mipflow.algorithms import cox_regression, get_algorithm, prepare_local_data
from mipflow.algorithms import prepared
from mipflow.algorithms.design import design_matrix
from mipflow.protocol.wire import transport
from mipflow.algorithms.packed import pack, unpack
from mipflow.algorithms.survival import grid_for, outcome
from mipflow.exceptions import FederationError, RequestError
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke, request
from tests.mipflow.algorithms.test_survival import COX_X

ALG = get_algorithm("cox_regression")


def _state(data, req, coefficients=None) -> dict:
    first = transport(ALG.local_step(0, data, req, STROKE, None))
    first = ALG.coarsen_for_release(0, first, 3)
    start = transport(ALG.global_step(0, [first], req, STROKE, None).state)
    started = transport(ALG.local_step(1, data, req, STROKE, start))  # rows, level counts, moments
    state = transport(ALG.global_step(1, [started], req, STROKE, start).state)
    if coefficients is not None:
        state["coefficients"] = list(coefficients)
    return state


def _direct_sums(data, req, state, magnitude: bool = False, tied: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S0, S1, S2 at each event bin straight from the definition (no sorting, no memo);
    with ``tied`` E0, E1, E2 (the rows with an event in the bin); with ``magnitude`` the same
    sums of absolute values (the scale of a sum's rounding error)."""
    params = ALG.params(req, STROKE)
    grid = grid_for(req, STROKE, params)
    index, event = outcome(data, req, STROKE, grid, params["event_level"])
    x, _ = design_matrix(data, req.x, STROKE, columns=state["columns"], intercept=False)
    x = x - np.asarray(state["center"])
    if magnitude:
        x = np.abs(x)
    w = np.exp(x @ np.asarray(state["coefficients"]))
    ends = np.asarray(state["ends"])
    s0, s1, s2 = [], [], []
    for j in state["event_bins"]:
        at_risk = index > (ends[j - 1] if j > 0 else -1)
        if tied:
            at_risk &= (index <= ends[j]) & event
        s0.append(w[at_risk].sum())
        s1.append((w[at_risk, None] * x[at_risk]).sum(axis=0))
        s2.append(np.einsum("i,ia,ib->ab", w[at_risk], x[at_risk], x[at_risk]))
    return np.array(s0), np.array(s1), np.array(s2)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
@pytest.mark.parametrize("cache_products", [True, False], ids=["cached-products", "products-each-round"])
@pytest.mark.parametrize("seed", [1, 2])
def test_round_sums_equal_the_definition(seed: int, cache_products: bool, ties: str, monkeypatch) -> None:
    if not cache_products:
        monkeypatch.setattr(cox_regression, "MAX_PRODUCTS_BYTES", 0)
    prepared.clear()
    req = request("cox_regression", x=COX_X, ties=ties)
    data = prepare_local_data(ALG, make_stroke(seed, 400), req)
    state = _state(data, req)
    p = len(state["columns"])
    rng = np.random.default_rng(seed)
    for round_no, beta in enumerate([np.zeros(p), rng.normal(scale=0.05, size=p), rng.normal(scale=0.1, size=p)],
                                    start=1):
        state["coefficients"] = beta.tolist()
        sent = transport(ALG.local_step(round_no, data, req, STROKE, state))["sealed"]  # (ADR 0046)
        s0, s1, s2 = _direct_sums(data, req, state)
        _, scale1, scale2 = _direct_sums(data, req, state, magnitude=True)
        assert_rel_close(unpack(sent["s0"]), s0, rel=1e-12, what="s0")
        # centred sums cancel: their error is measured against the sum of magnitudes
        assert np.all(np.abs(unpack(sent["s1"]) - s1) <= 1e-12 * scale1)
        full = cox_regression._full_s2(unpack(sent["s2"]), p)
        assert np.all(np.abs(full - s2) <= 1e-12 * scale2)
        assert unpack(sent["s2"]).shape == (len(state["event_bins"]), p * (p + 1) // 2)  # upper triangle only
        assert ("e0" in sent) == (ties == "efron")
        if ties == "efron":
            e0, e1, e2 = _direct_sums(data, req, state, tied=True)
            _, scale1, scale2 = _direct_sums(data, req, state, magnitude=True, tied=True)
            assert np.all(e0 > 0) and np.all(e0 < s0)  # one node: every event bin has its events
            assert_rel_close(unpack(sent["e0"]), e0, rel=1e-12, what="e0")
            assert np.all(np.abs(unpack(sent["e1"]) - e1) <= 1e-12 * scale1)
            assert np.all(np.abs(cox_regression._full_s2(unpack(sent["e2"]), p) - e2) <= 1e-12 * scale2)
    assert ("products" in _risk(data, req, state)) is cache_products


def _risk(data, req, state) -> dict:
    params = ALG.params(req, STROKE)
    return cox_regression._risk_sets(data, req, STROKE, params, grid_for(req, STROKE, params), state)


def test_the_memo_is_per_frame_and_per_state() -> None:
    prepared.clear()
    req = request("cox_regression", x=COX_X)
    data = prepare_local_data(ALG, make_stroke(3, 300), req)
    state = _state(data, req)
    first = _risk(data, req, state)
    assert _risk(data, req, state) is first                      # kept between rounds
    assert _risk(data, req, {**state, "coefficients": [0.1] * len(state["columns"])}) is first
    assert _risk(data, req, {**state, "center": [c + 1.0 for c in state["center"]]}) is not first
    assert _risk(data.copy(), req, state) is not first              # another frame, other arrays
    with pytest.raises(ValueError):
        first["design"][0, 0] = 1.0                                 # cached arrays are read-only


def test_memo_entries_go_with_their_frame() -> None:
    prepared.clear()
    req = request("cox_regression", x=COX_X)
    data = prepare_local_data(ALG, make_stroke(4, 200), req)
    _risk(data, req, _state(data, req))
    assert len(prepared._entries) == 2  # the rows and the risk sets
    del data
    gc.collect()
    assert len(prepared._entries) == 0


@pytest.mark.parametrize("bad, message", [
    pytest.param({"event_bins": [10 ** 6]}, "outside the common bins", id="event-bin"),
    pytest.param({"columns": ["age", "no_such_column"]}, "differ in length|unknown design columns", id="column"),
    pytest.param({"ends": [5, 3]}, "state.ends", id="ends"),
])
def test_a_malformed_state_is_a_request_error(bad: dict, message: str) -> None:
    req = request("cox_regression", x=COX_X)
    data = prepare_local_data(ALG, make_stroke(5, 200), req)
    state = _state(data, req)
    with pytest.raises(RequestError, match=message):
        ALG.local_step(1, data, req, STROKE, {**state, **bad})


def test_packed_arrays_are_exact_and_strict() -> None:
    values = np.random.default_rng(6).normal(size=(7, 3)) * 10.0 ** np.arange(-150, 150, 100)
    doc = transport(pack(values, "x"))
    assert np.array_equal(unpack(doc), values)
    assert np.array_equal(unpack(values.tolist()), values)
    with pytest.raises(RequestError, match="not finite"):
        pack([1.0, np.inf], "the risk-set sum S0")
    with pytest.raises(FederationError, match="malformed"):
        unpack({**doc, "shape": [8, 3]})
    with pytest.raises(FederationError, match="malformed"):
        unpack({**doc, "base64": base64.b64encode(b"abc").decode() + "!"})
