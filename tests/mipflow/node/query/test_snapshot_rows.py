"""A snapshot's selection left on disk (ADR 0049, amended "Memory at 10M rows"): read a block at a time,
the same rows, sums and cohorts as the frame read from the same snapshot, bit for bit, and the pooled
statsmodels fit to 1e-9 on values with a large offset.

Blocks are made small (``READ_ROWS``, ``STREAM_BLOCK``) so that a few hundred rows cross many of them:
selections that end exactly on a block's edge, filters that leave whole blocks empty.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.local import prepare_local_data
from mipflow.node.controls.differencing import DifferencingGuard, hash_key
from mipflow.node.query.read import _check_variables, select_frame, select_rows
from mipflow.node.query.snapshot import current_snapshot, select_columns
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import transport

from tests.mipflow.node.query.streamed import EDGE_SELECTIONS, block_model, block_store, number_rule

SECRET = b"node secret of the streamed selection tests"
KEY = hash_key(SECRET)
#: Snapshot rows read at a time here (a multiple of 8), and rows: 10 blocks exactly.
BLOCK = 64
ROWS = 10 * BLOCK
MODEL = block_model(
    "blk", "Blocks",
    {"code": "y", "sql_type": "real", "isCategorical": False},
    {"code": "band", "sql_type": "int", "isCategorical": False},
    {"code": "grp", "sql_type": "text", "isCategorical": True,
     "enumerations": [{"code": c, "label": c} for c in ("u", "v")]})


def _rows() -> pd.DataFrame:
    """Large offsets and small spreads; ``band`` is the row's block in key order (``_pid`` sorts as
    the rows' number), so a filter on it selects whole blocks; a few values missing."""
    rng = np.random.default_rng(19)
    x1 = 1e6 + rng.normal(0, 1.0, ROWS)
    x2 = -2e5 + rng.normal(0, 3.0, ROWS)
    y = 5e6 + 0.7 * (x1 - 1e6) - 0.2 * (x2 + 2e5) + rng.normal(0, 0.5, ROWS)
    frame = pd.DataFrame({
        "_pid": [f"p{i:05d}" for i in range(ROWS)], "_visit": ["v1"] * ROWS,
        "dataset": np.where(np.arange(ROWS) % 3 == 0, "b", "a"),
        "x1": x1, "x2": x2, "y": y, "band": np.arange(ROWS) // BLOCK,
        "grp": rng.choice(["u", "v"], ROWS)})
    frame.loc[[5, 64, 200, 639], "x2"] = np.nan  # on and beside blocks' edges
    return frame


@pytest.fixture
def store(tmp_path, monkeypatch):
    with block_store(tmp_path, monkeypatch, MODEL, _rows(), BLOCK) as store:
        yield store


SELECTIONS = [
    *EDGE_SELECTIONS,
    pytest.param(["a", "b"], number_rule("band", "greater", 8), id="last-block"),
    pytest.param(["b"], number_rule("x1", "greater", 1e6), id="scattered"),
    pytest.param(["a", "b"], number_rule("band", "greater", 20), id="no-row"),
]
VARIABLES = ["y", "x1", "x2"]


def _both(store, datasets, filters):
    snap = current_snapshot(store, MODEL, KEY)
    chosen = _check_variables(MODEL, VARIABLES)
    frame = select_columns(snap, MODEL, chosen, datasets, filters, KEY)
    rows = select_rows(store, MODEL, datasets=datasets, variables=VARIABLES, filters=filters, row_key=KEY)
    assert frame is not None and rows is not None
    return frame, rows


@pytest.mark.parametrize("datasets, filters", SELECTIONS)
def test_the_rows_left_on_disk_are_the_frames(datasets, filters, store):
    frame, rows = _both(store, datasets, filters)
    assert len(rows) == len(frame)
    for code in VARIABLES:
        np.testing.assert_array_equal(rows.values(code), frame[code].to_numpy())
    np.testing.assert_array_equal(rows.keys("row_key"), frame["_row_key"].to_numpy())
    np.testing.assert_array_equal(rows.sorted_keys("pid_key"), np.sort(frame["_pid_key"].to_numpy()))
    # a pass read in pieces of every size, across the blocks' edges
    next_rows = rows.reader(["x1", "y"])
    sizes = [1, BLOCK - 1, BLOCK, BLOCK + 1, 3, 2 * BLOCK]
    got, left = [], len(rows)
    for size in sizes * 10:
        take = min(size, left)
        got.append(np.array(next_rows(take)[1]))
        left -= take
    assert left == 0
    np.testing.assert_array_equal(np.concatenate(got), frame["y"].to_numpy())
    with pytest.raises(ValueError, match="more rows"):
        next_rows(1)


def _linear(data, request):
    algo = get_algorithm("linear_regression")
    return algo.local_step(0, data, request, MODEL, None)


def _request(datasets, filters, x=("x1", "x2")):
    return AnalysisRequest.from_dict({"inputdata": {"data_model": MODEL.key, "datasets": datasets, "x": list(x),
                                                    "y": ["y"], "filters": filters}, "parameters": {}})


@pytest.mark.parametrize("datasets, filters", [s for s in SELECTIONS if s.id != "no-row"])
def test_linear_regression_from_rows_on_disk_is_the_frames_bit_for_bit_and_statsmodels(datasets, filters, store,
                                                                                        monkeypatch):
    from mipflow.algorithms import moments

    monkeypatch.setattr(moments, "STREAM_BLOCK", 2 * BLOCK)  # the first pass's runs cross blocks too
    monkeypatch.setattr(moments, "MOMENT_BLOCK", BLOCK // 2 + 3)  # and the second's and third's
    frame, rows = _both(store, datasets, filters)
    request = _request(datasets, filters)
    algo = get_algorithm("linear_regression")
    streamed = transport(_linear(rows, request))
    whole = transport(_linear(prepare_local_data(algo, frame, request), request))
    assert json.dumps(streamed, sort_keys=True) == json.dumps(whole, sort_keys=True)
    result = algo.global_step(0, [streamed], request, MODEL, None).result
    import statsmodels.api as sm

    fit = sm.OLS(frame["y"], sm.add_constant(frame[["x1", "x2"]])).fit()
    assert result["n_obs"] == len(frame)
    np.testing.assert_allclose(result["coefficients"], fit.params.to_numpy(), rtol=1e-9, atol=0)
    # statsmodels' standard errors of this uncentred design (offsets 1e6) are ~1e-8 off the exact ones;
    # the centred sums are within 1e-15: both checked against exact rational arithmetic
    beta, std_err = _exact_ols(frame[["x1", "x2"]].to_numpy(), frame["y"].to_numpy())
    np.testing.assert_allclose(result["coefficients"], beta, rtol=1e-12, atol=0)
    np.testing.assert_allclose(result["std_err"], std_err, rtol=1e-12, atol=0)


@pytest.mark.parametrize("datasets, filters", [s for s in SELECTIONS if s.id != "no-row"])
def test_linear_regression_with_a_nominal_covariate_from_rows_on_disk_is_the_frames_bit_for_bit(datasets, filters,
                                                                                                 store):
    """Dummies built a block at a time from the snapshot's level codes (ADR 0049 amended, "logistic
    regression"; a node keeps such a selection as a frame still, for its released groups)."""
    x = ("x1", "grp", "x2")
    request = _request(datasets, filters, x)
    variables = [*x, "y"]
    frame = select_columns(current_snapshot(store, MODEL, KEY), MODEL, _check_variables(MODEL, variables),
                           datasets, filters, KEY)
    rows = select_rows(store, MODEL, datasets=datasets, variables=variables, filters=filters, row_key=KEY)
    algo = get_algorithm("linear_regression")
    streamed = transport(_linear(rows, request))
    whole = transport(_linear(prepare_local_data(algo, frame, request), request))
    assert json.dumps(streamed, sort_keys=True) == json.dumps(whole, sort_keys=True)
    assert len(streamed["moments"]["mean"]) == 5  # grp[u], grp[v], x1, x2, y


def _exact_ols(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """OLS with an intercept in exact rational arithmetic (the float inputs taken as they are)."""
    from fractions import Fraction

    n, k = len(y), x.shape[1] + 1
    cols = [[Fraction(1)] * n] + [[Fraction(float(v)) for v in x[:, j]] for j in range(k - 1)]
    ys = [Fraction(float(v)) for v in y]
    gram = [[sum(a * b for a, b in zip(cols[i], cols[j])) for j in range(k)]
            for i in range(k)]
    aug = [row + [Fraction(int(i == j)) for j in range(k)] for i, row in enumerate(gram)]
    for c in range(k):  # Gauss-Jordan: the Gram matrix's inverse
        pivot = aug[c][c]
        aug[c] = [v / pivot for v in aug[c]]
        for r in range(k):
            if r != c and aug[r][c]:
                factor = aug[r][c]
                aug[r] = [a - factor * b for a, b in zip(aug[r], aug[c])]
    inverse = [row[k:] for row in aug]
    xty = [sum(a * v for a, v in zip(cols[i], ys)) for i in range(k)]
    beta = [sum(inverse[i][j] * xty[j] for j in range(k)) for i in range(k)]
    ssr = sum((v - sum(beta[i] * cols[i][r] for i in range(k))) ** 2 for r, v in enumerate(ys))
    sigma2 = ssr / (n - k)
    return [float(b) for b in beta], [float(sigma2 * inverse[i][i]) ** 0.5 for i in range(k)]


@pytest.mark.parametrize("datasets, filters", SELECTIONS)
def test_the_cohorts_of_rows_on_disk_are_those_of_the_frame(datasets, filters, store, tmp_path):
    frame, rows = _both(store, datasets, filters)
    guard = DifferencingGuard(tmp_path, SECRET)
    want = guard.cohorts(MODEL.key, frame, VARIABLES, True)
    got = guard.cohorts_of_selection(MODEL.key, rows)
    assert got.digests == want.digests[:1] and len(got.sets) == 1
    np.testing.assert_array_equal(got.sets[0], want.sets[0])
    np.testing.assert_array_equal(got.patients[0], want.patients[0])
    assert got.order is None  # not kept: no per-row label, no group released by such a step
    rows.snapshot.meta.pop("sorted_keys")  # a snapshot written before: the keys are read and sorted
    again = guard.cohorts_of_selection(MODEL.key, rows)
    assert again.digests == got.digests
    np.testing.assert_array_equal(again.patients[0], got.patients[0])


def test_wrong_sorted_keys_are_never_used(store, monkeypatch, tmp_path):
    frame, rows = _both(store, ["a", "b"], number_rule("band", "less", 5))
    guard = DifferencingGuard(tmp_path, SECRET)
    want = guard.cohorts(MODEL.key, frame, VARIABLES, True)
    true_sorted = rows.sorted_keys

    def off_by_one(name):
        keys = true_sorted(name)
        keys[-1] -= np.uint64(1)  # still sorted
        return keys

    monkeypatch.setattr(rows, "sorted_keys", off_by_one)
    got = guard.cohorts_of_selection(MODEL.key, rows)
    np.testing.assert_array_equal(got.sets[0], want.sets[0])
    np.testing.assert_array_equal(got.patients[0], want.patients[0])


def test_rows_on_disk_only_for_numerical_and_nominal_variables_and_checked_requests(store):
    nominal = select_rows(store, MODEL, datasets=["a"], variables=["y", "grp"], filters=None, row_key=KEY)
    frame = select_frame(store, MODEL, datasets=["a"], variables=["y", "grp"], row_identity=True, row_key=KEY,
                         snapshot=True)
    assert len(nominal) == len(frame) > 0 and nominal.levels_of("y") is None
    np.testing.assert_array_equal(np.array(nominal.levels_of("grp"), dtype=object)[nominal.values("grp")],
                                  frame["grp"].to_numpy())  # the levels as the SQL read's codes
    assert select_rows(store, MODEL, datasets=["a"], variables=["y", "dataset"], filters=None, row_key=KEY) is None
    from mipflow.exceptions import RequestError

    with pytest.raises(RequestError):
        select_rows(store, MODEL, datasets=["a"], variables=["nope"], filters=None, row_key=KEY)
    with pytest.raises(RequestError):
        select_rows(store, MODEL, datasets=["a"], variables=["y"], filters=number_rule("nope", "less", 1),
                    row_key=KEY)


def test_a_selection_holds_a_bit_a_row_at_most(store):
    every = select_rows(store, MODEL, datasets=["a", "b"], variables=["y", "x1"], filters=None, row_key=KEY)
    assert len(every) == ROWS and every.nbytes == 0  # no missing value in those: every row, no mask
    _, some = _both(store, ["b"], None)
    assert 0 < some.nbytes <= (ROWS + 7) // 8


def test_a_recorded_cohort_is_kept_once_the_ledgers_arrays(store, tmp_path):
    _, rows = _both(store, ["a", "b"], None)
    guard = DifferencingGuard(tmp_path, SECRET)
    first = guard.cohorts_of_selection(MODEL.key, rows)
    guard.ledger.record(MODEL.key, first.sets, first.digests, first.patients)
    again = guard.cohorts_of_selection(MODEL.key, rows)  # the same cohort, another selection of it
    held = guard.ledger.recorded(MODEL.key, first.digest)
    assert again.sets[0] is held[0] and again.patients[0] is held[1]
    np.testing.assert_array_equal(again.sets[0], first.sets[0])
    other = DifferencingGuard(tmp_path, SECRET)  # another process: reads what is stored
    np.testing.assert_array_equal(other.cohorts_of_selection(MODEL.key, rows).patients[0], first.patients[0])


@pytest.mark.parametrize("datasets, filters", SELECTIONS)
def test_the_value_stamps_of_rows_on_disk_are_those_of_either_frame(datasets, filters, store, tmp_path):
    """ADR 0061, hole 2: the streamed path stamps the values its step reads exactly as the frame paths do (the
    SQL read and the snapshot's frame), a nominal variable by its enumeration codes; each stamp moves when one
    selected row's value does."""
    variables = ["y", "x1", "grp"]
    snap = current_snapshot(store, MODEL, KEY)
    from_snapshot = select_columns(snap, MODEL, _check_variables(MODEL, variables), datasets, filters, KEY)
    from_sql = select_frame(store, MODEL, datasets=datasets, variables=variables, filters=filters,
                            complete_case=True, row_identity=True, row_key=KEY, snapshot=False)
    rows = select_rows(store, MODEL, datasets=datasets, variables=variables, filters=filters, row_key=KEY)
    guard = DifferencingGuard(tmp_path, SECRET)
    on_disk = guard.cohorts_of_selection(MODEL.key, rows)
    streamed = on_disk.stamps[0]
    assert set(streamed) == set(variables)
    assert guard.cohorts(MODEL.key, from_sql, variables, True).stamps[0] == streamed
    assert guard.cohorts(MODEL.key, from_snapshot, variables, True).stamps[0] == streamed
    for read in (from_sql, from_snapshot):  # the patient stamps and each row's value digests too (round 15)
        framed = guard.cohorts(MODEL.key, read, variables, True)
        assert framed.patient_stamps == on_disk.patient_stamps and set(on_disk.patient_stamps[0]) == set(variables)
        assert set(framed.cells) == set(on_disk.cells) == set(variables)
        for column, (keys, digests) in framed.cells.items():
            np.testing.assert_array_equal(keys, on_disk.cells[column][0])
            np.testing.assert_array_equal(digests, on_disk.cells[column][1])
            np.testing.assert_array_equal(keys, on_disk.sets[0])
    if len(from_sql):
        middle = len(from_sql) // 2
        flipped = "u" if from_sql["grp"].iloc[middle] == "v" else "v"
        for column, value in (("y", 1.5), ("grp", flipped), ("x1", 2.0)):
            moved = from_sql.copy()
            moved.iloc[middle, moved.columns.get_loc(column)] = value
            stamps = guard.cohorts(MODEL.key, moved, variables, True).stamps[0]
            assert {c for c in variables if stamps[c] != streamed[c]} == {column}
