"""Cross-validated logistic regression from a snapshot's selection left on disk (ADR 0062, amendment 15): the node's
folds dealt from the fold keys it keeps beside the rows, each fold's training rows narrowed from them; every round
(round 0's counts, moments and test folds' level counts, each Newton round's log-likelihood, score and information
of each unfinished fold, the evaluation round's confusion cells and ROC bins) is the frame path's, as a rule bit for
bit, always with the same counts and every sum within 1e-9 relative (``_same_release``); each
Newton round's sums equal plain numpy's on the pooled training rows to 1e-9, each fold's model statsmodels' ``Logit``
on them to 1e-9, the confusion cells and bins plain numpy's counts; the effective rows (ADR 0054) of every round the
frame's, whether the local step's pass is reused or not; the same cohorts, stamps, released groups and counted sets
(``same_controls``).

Blocks of 1, 7, 64 rows and the whole selection (``streamed.blocks_and_selections``) with Newton's and the
evaluation's blocks crossing them; the selections of the streamed group tests; and a PostgreSQL store's snapshot
against its frame read (blocks of 7 and whole), when a server is reachable.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import logistic_regression, logistic_regression_cv
from mipflow.algorithms.crossval import FOLD_KEY, deal_folds, score_bins
from mipflow.algorithms.local import prepare_local_data
from mipflow.algorithms.moments import WeightTotals
from mipflow.exceptions import RequestError
from mipflow.node.controls.effective_rows import effective_rows
from mipflow.node.controls.folds import add_fold_keys, fold_hashes, fold_key
from mipflow.protocol.wire import transport

from tests.mipflow.node.query.test_snapshot_rows_counts import folded_both, same_controls
from tests.mipflow.node.query.test_snapshot_rows_groups import MODEL, SECRET, SELECTIONS, _rows
from tests.mipflow.node.query.streamed import blocks_and_selections
from tests.mipflow.node.query import test_snapshot_rows_groups

store = test_snapshot_rows_groups.store  # the fixture: the groups file's rows at each block size

CASES = [
    pytest.param(["x1", "x2"], {"n_splits": 3}, id="numerical"),
    pytest.param(["x1", "arm", "x2"], {}, id="nominal-covariate"),
]
#: statsmodels does not converge on the stored offsets: fitted on the covariates less them (exact subtractions)
OFFSETS = {"x1": 1e6, "x2": -2e5}


@pytest.fixture(autouse=True)
def _newton_blocks(monkeypatch):
    """Newton's blocks (the frame's and the stream's) and the evaluation's cross the snapshot's reads."""
    monkeypatch.setattr(logistic_regression, "BLOCK_ROWS", 48)
    monkeypatch.setattr(logistic_regression_cv, "EVALUATE_ROWS", 37)


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name == "Intercept":
        return np.ones(len(frame))
    if name in frame.columns:
        return frame[name].to_numpy(dtype=float)
    code, level = name[:-1].split("[")
    return (frame[code] == level).to_numpy(dtype=float)


def _numpy_newton(frame: pd.DataFrame, y: np.ndarray, fold: dict) -> tuple[float, np.ndarray, np.ndarray]:
    """A Newton round's sums of the centred design at the fold's coefficients, plain numpy on the pooled rows."""
    design = np.column_stack([_column(frame, c) for c in fold["columns"]])
    design[:, 1:] -= np.asarray(fold["center"])
    eta = design @ np.asarray(fold["coefficients"])
    mu = 1.0 / (1.0 + np.exp(-eta))
    return (float(np.sum(y * eta - np.logaddexp(0.0, eta))), design.T @ (y - mu),
            design.T @ (design * (mu * (1.0 - mu))[:, None]))


def _statsmodels(frame: pd.DataFrame, y: np.ndarray, columns: list[str]) -> np.ndarray:
    import statsmodels.api as sm

    shifted = frame.copy()
    for code, offset in OFFSETS.items():
        shifted[code] = shifted[code] - offset
    design = np.column_stack([_column(shifted, c) for c in columns])
    fit = sm.Logit(y, design).fit(disp=0, method="newton", tol=1e-8, maxiter=100)
    assert fit.mle_retvals["converged"]
    params = np.array(fit.params, dtype=float)
    params[0] -= sum(OFFSETS[c] * params[columns.index(c)] for c in OFFSETS if c in columns)
    return params


def _close(got, want, atol: float = 0.0) -> None:
    """The same structure, the same integers, floats within 1e-9 relative (or ``atol``)."""
    if isinstance(want, dict):
        assert sorted(got) == sorted(want)
        for key in want:
            _close(got[key], want[key], atol)
    elif isinstance(want, list):
        assert len(got) == len(want)
        for mine, theirs in zip(got, want):
            _close(mine, theirs, atol)
    elif isinstance(want, float):
        assert isinstance(got, float) and (got == want or abs(got - want) <= max(atol, 1e-9 * abs(want))), \
            (got, want)
    else:
        assert type(got) is type(want) and got == want


def _same_release(got: dict, want: dict) -> None:
    """A round's release on disk against the frame's: byte-equal as a rule; the counts, cells and bins always
    equal, every sum within 1e-9 relative, a score summed to ~0 (a converged fold's gradient is rounding noise,
    ~1e-16, whose last bits a BLAS kernel's alignment-dependent accumulation may change) within 1e-9 of its fold's
    information (the Hessian's largest entry)."""
    if json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True):
        return
    assert sorted(got) == sorted(want)
    for key in want:
        if key != "folds":
            _close(got[key], want[key])
    for mine, theirs in zip(got["folds"], want["folds"], strict=True):
        if isinstance(theirs, dict) and "gradient" in theirs:
            scale = float(np.abs(np.asarray(theirs["hessian"])).max())
            _close(mine["gradient"], theirs["gradient"], 1e-9 * scale)
            _close({k: v for k, v in mine.items() if k != "gradient"},
                   {k: v for k, v in theirs.items() if k != "gradient"})
        else:
            _close(mine, theirs)


def _fit_both(algo, request, rows, local, labels, n_splits, on_round=None):
    """Every round on both paths, compared byte for byte; ``(releases, result)`` (result None: the fit was
    refused centrally, as it is from either path's aggregates)."""
    state, releases = None, []
    for round_no in range(80):
        released = [transport(algo.local_step(round_no, data, request, MODEL, state)) for data in (rows, local)]
        _same_release(released[0], released[1])
        releases.append(released[0])
        if state is not None and state["phase"] == "fit":
            # the effective rows (ADR 0054): the local step's totals, the totals read again, the frame's vectors
            remembered = algo.row_weights(round_no, rows, request, MODEL, state)
            logistic_regression_cv._WEIGHTS_MEMO.clear()
            again = algo.row_weights(round_no, rows, request, MODEL, state)
            vectors = algo.row_weights(round_no, local, request, MODEL, state)
            unfinished = sum(s is not None for s in state["folds"])
            assert len(remembered) == len(again) == len(vectors) == 2 * unfinished
            for mine, read, vector in zip(remembered, again, vectors):
                assert isinstance(mine, WeightTotals) and mine == read and mine.size == len(vector)
                assert effective_rows(mine) == pytest.approx(effective_rows(vector), rel=1e-12, abs=0)
        if on_round is not None:
            on_round(round_no, state, released[0])
        try:
            step = algo.global_step(round_no, [released[1]], request, MODEL, state)
        except RequestError:
            return releases, None
        if step.done:
            return releases, step.result
        state = transport(step.state)
    raise AssertionError("no convergence")


#: every block size and selection once, the two covariate cases in turn (both at every block size; the suite's time)
ALTERNATING = pytest.mark.parametrize(
    "store, datasets, filters, x, parameters",
    [pytest.param(*case.values, *CASES[i % len(CASES)].values, id=f"{case.id}-{CASES[i % len(CASES)].id}")
     for i, case in enumerate(blocks_and_selections(SELECTIONS))], indirect=["store"])


@ALTERNATING
def test_logistic_regression_cv_of_rows_on_disk_releases_the_frames(x, parameters, datasets, filters, store,
                                                                    tmp_path):
    algo, request, frame, rows, local = folded_both("logistic_regression_cv", store, datasets, filters, ["event"],
                                                    x, {"positive_class": "yes", **parameters})
    np.testing.assert_array_equal(rows.fold_keys, local[FOLD_KEY].to_numpy())
    n_splits = algo.params(request, MODEL)["n_splits"]
    labels = deal_folds(local[FOLD_KEY].to_numpy(), n_splits)
    y = (local["event"] == "yes").to_numpy(dtype=float)
    same_controls(algo, request, frame, rows, local, list(algo.variables(request)), tmp_path)
    checked = {"newton": 0}

    def on_round(round_no, state, released):
        if state is None:  # round 0: each fold's training rows and its test rows' levels
            assert [f["n"] for f in released["folds"]] == [int(np.sum(labels != k)) for k in range(n_splits)]
            for k, test in enumerate(released["test_folds"]):
                want = [int(np.sum((labels == k) & (local["arm"] == level).to_numpy()))
                        for level in ("ctl", "trt")] if "arm" in x else []
                assert test["group_n"] == want
            return
        if state["phase"] != "fit":
            return
        for k, (fold, part) in enumerate(zip(state["folds"], released["folds"], strict=True)):
            if fold is None:
                assert part is None
                continue
            training = labels != k
            loglik, gradient, hessian = _numpy_newton(local[training], y[training], fold)
            scale = float(np.abs(hessian).max())
            np.testing.assert_allclose(part["loglik"], loglik, rtol=1e-9, atol=0)
            np.testing.assert_allclose(part["hessian"], hessian, rtol=1e-9, atol=1e-9 * scale)
            np.testing.assert_allclose(part["gradient"], gradient, rtol=1e-9, atol=1e-9 * scale)
            checked["newton"] += 1

    releases, result = _fit_both(algo, request, rows, local, labels, n_splits, on_round)
    if result is None:  # a selection too small to fit every fold: refused alike (the releases were equal)
        assert len(frame) < 100
        return
    assert checked["newton"] >= 3 * n_splits  # not vacuous: several Newton rounds of every fold
    evaluated = releases[-1]["folds"]
    for k, (fitted, part) in enumerate(zip(result["folds"]["coefficients"], evaluated, strict=True)):
        columns = result["folds"]["indep_vars"][k]
        training, test = labels != k, labels == k
        np.testing.assert_allclose(fitted, _statsmodels(local[training], y[training], columns), rtol=1e-9, atol=0)
        eta = np.column_stack([_column(local[test], c) for c in columns]) @ np.asarray(fitted)
        positive, predicted = y[test] == 1.0, eta > 0.0
        assert part["confusion"]["group_counts"] == [
            int(np.sum(~positive & ~predicted)), int(np.sum(~positive & predicted)),
            int(np.sum(positive & ~predicted)), int(np.sum(positive & predicted))]
        bins = score_bins(1.0 / (1.0 + np.exp(-eta)), 50)
        assert part["roc"]["counts"] == [np.bincount(bins[~positive], minlength=50).tolist(),
                                         np.bincount(bins[positive], minlength=50).tolist()]
    assert sum(result["confusion_matrix"].values()) == len(frame) > 0


def test_the_evaluation_and_the_weights_read_each_fold_once(monkeypatch, tmp_path):
    """Rows on disk: the weights of a Newton round are the local step's (no pass of their own); the evaluation
    round reads the rows once for every fold."""
    from tests.mipflow.node.query.streamed import block_store, stream_blocks

    stream_blocks(monkeypatch, 64)
    with block_store(tmp_path, monkeypatch, MODEL, _rows(), 64) as opened:
        algo, request, frame, rows, local = folded_both("logistic_regression_cv", opened, ["a", "b"], None,
                                                        ["event"], ["x1", "arm"], {"positive_class": "yes"})
        passes: list = []
        reader = type(rows).reader
        monkeypatch.setattr(type(rows), "reader", lambda self, codes: passes.append(list(codes)) or
                            reader(self, codes))
        first = transport(algo.local_step(0, rows, request, MODEL, None))
        state = transport(algo.global_step(0, [first], request, MODEL, None).state)
        algo.local_step(1, rows, request, MODEL, state)
        newton = len(passes)
        algo.row_weights(1, rows, request, MODEL, state)
        assert len(passes) == newton  # the local step's totals
        algo.row_weights(1, rows, request, MODEL, {**state, "folds": [None] + state["folds"][1:]})
        assert len(passes) > newton  # another state: read again
        done = {"phase": "evaluate", "roc_bins": 20, "models": [
            {"columns": ["Intercept", "x1"], "coefficients": [-1e6 * 0.9, 0.9], "n_train": 1}] * 5}
        before = len(passes)
        evaluated = transport(algo.local_step(2, rows, request, MODEL, done))
        assert len(passes) == before + 1
        assert sum(sum(f["confusion"]["group_counts"]) for f in evaluated["folds"]) == len(frame)
        assert json.dumps(evaluated, sort_keys=True) == json.dumps(
            transport(algo.local_step(2, local, request, MODEL, done)), sort_keys=True)


@pytest.fixture(params=[7, 100_000], ids=["seven", "whole"])
def pg_store(pg_url, tmp_path, monkeypatch, request):
    """The groups tests' rows in a PostgreSQL store whose snapshots live in ``tmp_path / "home"`` (as
    ``test_snapshot_pg``'s store)."""
    from tests.mipflow.node.query.test_snapshot_pg import groups_rows_store

    yield from groups_rows_store(pg_url, tmp_path, monkeypatch, request.param)


@pytest.mark.parametrize("x", [["x1", "x2"], ["x1", "arm", "x2"]], ids=["numerical", "nominal-covariate"])
def test_a_postgresql_stores_rows_on_disk_fit_as_its_frame_read(x, pg_store):
    from mipflow.algorithms import get_algorithm
    from mipflow.node.query.read import select_frame, select_rows
    from mipflow.node.query.snapshot_rows import SnapshotRows
    from tests.mipflow.node.query.test_snapshot_rows_groups import KEY, _request

    algo = get_algorithm("logistic_regression_cv")
    request = _request(["a", "b"], None, ["event"], x, {"positive_class": "yes", "n_splits": 4})
    variables = list(algo.variables(request))
    rows = select_rows(pg_store, MODEL, datasets=request.datasets, variables=variables, filters=None, row_key=KEY)
    assert isinstance(rows, SnapshotRows)
    frame = select_frame(pg_store, MODEL, datasets=request.datasets, variables=variables, filters=None,
                         complete_case=True, row_identity=True)  # the PostgreSQL read
    frame = add_fold_keys(frame, fold_key(SECRET), KEY)
    rows.fold_keys = fold_hashes(rows.keys("row_key"), fold_key(SECRET))
    local = prepare_local_data(algo, frame, request)
    labels = deal_folds(local[FOLD_KEY].to_numpy(), 4)
    releases, result = _fit_both(algo, request, rows, local, labels, 4)
    assert result is not None and len(releases) >= 5
    y = (local["event"] == "yes").to_numpy(dtype=float)
    for k, fitted in enumerate(result["folds"]["coefficients"]):
        np.testing.assert_allclose(fitted, _statsmodels(local[labels != k], y[labels != k],
                                                        result["folds"]["indep_vars"][k]), rtol=1e-9, atol=0)


@pytest.mark.parametrize("block", [1, 7, 64, 1_000_000])
def test_folds_dealt_a_block_at_a_time_as_bytes_are_the_whole_deal(block, monkeypatch):
    """``deal_folds`` in blocks of ranks, into int8 labels (rows on disk) or int64 ones: the deal of every rank at
    once, ties (a repeated key) by position."""
    from mipflow.algorithms import crossval

    monkeypatch.setattr(crossval, "DEAL_BLOCK", block)
    keys = np.random.default_rng(15).integers(0, 2**63, 1000, dtype=np.uint64)
    keys[::7] = keys[3]
    for n_splits in (2, 5, 20):
        want = np.empty(len(keys), dtype=np.int64)
        want[np.argsort(keys, kind="stable")] = np.arange(len(keys)) % n_splits
        small, wide = deal_folds(keys, n_splits, np.int8), deal_folds(keys, n_splits)
        assert small.dtype == np.int8 and wide.dtype == np.int64
        np.testing.assert_array_equal(small, want)
        np.testing.assert_array_equal(wide, want)
