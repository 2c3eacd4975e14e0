"""``row_weights`` per algorithm (ADR 0054): the weights are those the round's sums put on the rows;
honest fits hold many rows in effect every round; diverging fits concentrate on a few."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm, prepare_local_data, run_in_process
from mipflow.algorithms.logistic_regression import _centred_design
from mipflow.node.controls.effective_rows import effective_rows
from mipflow.protocol.wire import transport
from tests.mipflow.algorithms.helpers import fold_keyed
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke, request as survival_request
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.mipflow.algorithms.test_gee import DATA as LONG, MODEL_LONG, split

LOGISTIC = get_algorithm("logistic_regression")


def logistic_state(data: pd.DataFrame, req, coefficients=None) -> dict:
    first = transport(LOGISTIC.local_step(0, data, req, MODEL, None))
    state = transport(LOGISTIC.global_step(0, [first], req, MODEL, None).state)
    if coefficients is not None:
        state["coefficients"] = list(coefficients)
    return state


def test_logistic_weights_are_those_of_the_newton_sums() -> None:
    req = request(x=("x1", "sex", "age"), y=("outcome",), positive_class="yes")
    data = prepare_local_data(LOGISTIC, make_data(5, 300), req)
    state = logistic_state(data, req, [0.2, -0.7, 0.4, 0.03])
    out = LOGISTIC.local_step(1, data, req, MODEL, state)
    information, score = LOGISTIC.row_weights(1, data, req, MODEL, state)
    design = _centred_design(data, req, MODEL, state)
    y = (data["outcome"] == "yes").to_numpy(float)
    np.testing.assert_allclose(design.T @ (design * information[:, None]), out["hessian"], rtol=1e-12)
    np.testing.assert_allclose(design.T @ (np.where(y == 1.0, 1.0, -1.0) * score), out["gradient"],
                               rtol=1e-10, atol=1e-10)


def test_logistic_weights_concentrate_as_a_separated_fit_diverges() -> None:
    req = request(x=("x1",), y=("outcome",), positive_class="yes")
    frame = make_data(7, 200).dropna(subset=["x1"])
    frame["outcome"] = np.where(frame["x1"] > 2.0, "yes", "no")  # perfectly separated by x1
    data = prepare_local_data(LOGISTIC, frame, req)
    spread = [effective_rows(w) for w in LOGISTIC.row_weights(1, data, req, MODEL, logistic_state(data, req))]
    assert min(spread) > 0.9 * len(data)  # at zero: p = 1/2 on every row
    steep = logistic_state(data, req)
    steep["coefficients"] = [-400.0 * (2.0 - steep["center"][0]), 400.0]  # the boundary at x1 = 2, steep
    assert max(effective_rows(w) for w in LOGISTIC.row_weights(1, data, req, MODEL, steep)) < 3.0


def counting(monkeypatch, name: str) -> list[float]:
    """The fewest effective rows of every vector ``name``'s ``row_weights`` gives, round by round."""
    alg = get_algorithm(name)
    seen: list[float] = []
    original = type(alg).row_weights

    def recorded(self, *args, **kwargs):
        vectors = original(self, *args, **kwargs)
        if vectors is None:
            return None
        vectors = list(vectors)
        seen.append(min(k for k in map(effective_rows, vectors) if k is not None))
        return vectors

    monkeypatch.setattr(type(alg), "row_weights", recorded)
    return seen


def weights_every_round(monkeypatch, name: str, frames, req, model) -> tuple[dict, list[float]]:
    """Run ``name`` in process, asking every node's ``row_weights`` after each local step, as the node does."""
    alg = get_algorithm(name)
    seen = counting(monkeypatch, name)
    step = type(alg).local_step

    def local_step(self, round, data, request, model_, state):
        out = step(self, round, data, request, model_, state)
        self.row_weights(round, data, request, model_, state)
        return out

    monkeypatch.setattr(type(alg), "local_step", local_step)
    return run_in_process(alg, frames, req, model), seen


def test_an_honest_logistic_fit_holds_many_rows_in_effect_every_round(monkeypatch) -> None:
    req = request(x=("x1", "sex", "grp"), y=("outcome",), positive_class="yes")
    frames = [make_data(s, 150) for s in (1, 2, 3)]
    result, seen = weights_every_round(monkeypatch, "logistic_regression", frames, req, MODEL)
    assert len(seen) == 3 * (result_rounds := len(seen) // 3) and result_rounds >= 4
    assert min(seen) > 30  # of ~140 complete rows per node
    assert np.all(np.isfinite(result["coefficients"]))


def test_logistic_cv_weighs_each_unfinished_folds_training_rows(monkeypatch) -> None:
    req = request(x=("x1", "sex"), y=("outcome",), positive_class="yes", n_splits=3)
    cv = get_algorithm("logistic_regression_cv")
    frames = fold_keyed([make_data(s, 150) for s in (4, 5)])
    result, seen = weights_every_round(monkeypatch, "logistic_regression_cv", frames, req, MODEL)
    assert result["n_splits"] == 3 and seen and min(seen) > 30
    data = prepare_local_data(cv, frames[0], req)
    first = transport(cv.local_step(0, data, req, MODEL, None))
    state = transport(cv.global_step(0, [first], req, MODEL, None).state)
    assert len(cv.row_weights(1, data, req, MODEL, state)) == 2 * 3  # two vectors per fold
    state["folds"][1] = None  # a finished fold is not weighed again
    assert len(cv.row_weights(1, data, req, MODEL, state)) == 2 * 2
    assert cv.row_weights(1, data, req, MODEL, {"phase": "evaluate", "models": []}) is None


COX = get_algorithm("cox_regression")


def test_cox_declares_no_row_weights() -> None:
    """ADR 0054's amendment: a per-risk-set measure refused an honest Cox fit (its last risk sets and tied
    events are few rows by nature), so Cox is not checked by ``effective_rows`` until a measure on its
    released shares exists; the capability stays the default."""
    req = survival_request("cox_regression", ["age"])
    data = prepare_local_data(COX, make_stroke(5, 300), req)
    assert "row_weights" not in type(COX).__dict__
    assert COX.row_weights(1, data, req, STROKE, {"coefficients": [5.0]}) is None


GEE = get_algorithm("gee")


@pytest.mark.parametrize("family,y", [("binomial", "yb"), ("poisson", "yc")])
def test_gee_weighs_patients_by_variance_and_residual_with_a_non_identity_link(monkeypatch, family, y) -> None:
    req = request(x=["x1", "age"], y=[y], family=family, cov_struct="exchangeable")
    result, seen = weights_every_round(monkeypatch, "gee", split(LONG, 3, 1), req, MODEL_LONG)
    assert result["family"] == family and seen and min(seen) > 20  # of ~80 patients per node
    data = prepare_local_data(GEE, split(LONG, 3, 1)[0], req)
    state = {"phase": "mean", "columns": ["Intercept", "x1", "age"], "beta": [0.0, 0.0, 0.0], "dep": 0.1}
    variance, residual = GEE.row_weights(1, data, req, MODEL_LONG, state)
    assert len(variance) == len(residual) == GEE.cluster_count(data)  # one weight per patient


def test_gee_gaussian_and_its_first_round_weigh_rows_alike() -> None:
    data = prepare_local_data(GEE, split(LONG, 3, 1)[0], request(x=["x1"], y=["y"], family="gaussian"))
    state = {"phase": "mean", "columns": ["Intercept", "x1"], "beta": [0.0, 0.0], "dep": 0.1}
    assert GEE.row_weights(1, data, request(x=["x1"], y=["y"], family="gaussian"), MODEL_LONG, state) is None
    binomial = request(x=["x1"], y=["yb"], family="binomial")
    assert GEE.row_weights(1, data, binomial, MODEL_LONG, {**state, "phase": "glm", "beta": None}) is None
