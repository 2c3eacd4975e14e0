"""PCA with transformations from a snapshot's selection left on disk (ADR 0062, amendment 13): ``log`` and ``exp``
applied a block at a time, then the moments as the plain PCA takes them, release the frame path's bits (the
moments and the rows each exp-weighted sum holds, ``weighted_n``); the same ``log`` refusal (the first variable in
the request's order holding a value <= 0, wherever in the rows it is); and the weighted memory's control
(``check_weighted``, ADR 0058) gets the frame path's inputs: each family's rows, log weights and patients.

Blocks of 1, 7, 64 rows and the whole selection (``streamed.blocks_and_selections``), the selections of the
streamed group tests (missing values on and beside blocks' edges, a scattered filter, one leaving no row).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.local import prepare_local_data
from mipflow.exceptions import RequestError
from mipflow.node.controls.differencing import DifferencingGuard
from mipflow.node.controls.weighted_ledger import check_weighted
from mipflow.protocol.wire import transport

from tests.mipflow.node.query.test_snapshot_rows_groups import KEY, MODEL, ON_BLOCKS, SECRET, _both, _request
from tests.mipflow.node.query import test_snapshot_rows_groups

store = test_snapshot_rows_groups.store  # the fixture: the groups file's rows at each block size

TRANSFORMED = [
    # x1 ~ 1e6 and y ~ 5e6 (missing values) logged, dose (-1..11) exponentiated
    pytest.param(["x1", "y", "dose"], {"log": ["x1", "y"], "exp": ["dose"]}, id="log-and-exp"),
    # two exp variables: exp(dose), exp(2 dose), exp(band), exp(2 band), exp(dose + band); an affine one beside
    pytest.param(["dose", "band", "x2"], {"exp": ["band", "dose"], "standardize": ["x2"]}, id="two-exp"),
    # exp of values near 1e6: infinite, a release that is not finite (refused by the node), the same on both
    pytest.param(["x1", "x2"], {"exp": ["x1"]}, id="exp-overflows"),
]


def _weighted_rows(values: dict, codes: list) -> float:
    """The fewest rows an exp-weighted sum holds, in plain numpy (the families of ADR 0053)."""
    families = []
    for i, a in enumerate(codes):
        families += [values[a], 2.0 * values[a]] + [values[a] + values[b] for b in codes[i + 1:]]
    return min(float(np.exp(w - w.max()).sum()) for w in families)


class _Datasets:
    """The test store, with its datasets listed (its rows were loaded without the dataset registry)."""

    def __init__(self, store) -> None:
        self.store = store

    def datasets(self, key):
        return [{"dataset": "a"}, {"dataset": "b"}]

    def __getattr__(self, name):
        return getattr(self.store, name)


def _checked_weighted(algo, request, data, cohorts, store):
    """``check_weighted``'s inputs for the weighted memory (the families' rows), as the node computes them."""
    settings = SimpleNamespace(columnar_snapshot=True, differencing_check=False, min_row_count=10)
    work = SimpleNamespace(algo=algo, model=MODEL, data=data, cohorts=cohorts, explore=None, study=None,
                           settings=settings)
    context = SimpleNamespace(differencing=SimpleNamespace(key=KEY), store=_Datasets(store), data_model=lambda key: MODEL)
    check_weighted(SimpleNamespace(analysis=request), context, work)
    return work.weighted


@pytest.mark.parametrize("y, transformation", TRANSFORMED)
@ON_BLOCKS
def test_pca_with_transformation_of_rows_on_disk_releases_the_frames(y, transformation, datasets, filters, store,
                                                                      tmp_path):
    algo = get_algorithm("pca_with_transformation")
    assert algo.streams_rows
    request = _request(datasets, filters, y, [], {"data_transformation": transformation})
    variables = list(algo.variables(request))
    frame, rows = _both(store, datasets, filters, variables)
    local = prepare_local_data(algo, frame, request)
    released = [algo.local_step(0, data, request, MODEL, None) for data in (rows, local)]
    # every float's repr (an infinity or NaN too: the wire refuses those, the node's control non_finite first)
    assert json.dumps(released[0], sort_keys=True) == json.dumps(released[1], sort_keys=True)
    exp_codes = transformation.get("exp", [])
    assert released[0]["moments"]["n"] == len(frame)
    if not len(frame):
        assert "weighted_n" not in released[0]
        return
    values = {code: local[code].to_numpy(dtype=float) for code in y}
    assert released[0]["weighted_n"] == [pytest.approx(_weighted_rows(values, exp_codes), rel=1e-12)]
    with np.errstate(over="ignore"):
        plain = np.column_stack([np.log(values[c]) if c in transformation.get("log", []) else
                                 np.exp(values[c]) if c in exp_codes else values[c] for c in y])
    if np.isfinite(plain).all():
        assert json.dumps(transport(released[0]), sort_keys=True) == json.dumps(transport(released[1]), sort_keys=True)
        np.testing.assert_allclose(released[0]["moments"]["mean"], plain.mean(axis=0), rtol=1e-9)
        if np.ptp(plain, axis=0).all():  # no constant variable (``band`` is, in one block)
            result = algo.global_step(0, [released[0]], request, MODEL, None).result
            assert result["n_obs"] == len(frame) and len(result["eigen_vals"]) == len(y)
    else:
        assert not np.isfinite(np.asarray(released[0]["moments"]["mean"], dtype=float)).all()
    # the weighted memory's inputs: the frame's cohorts keep the rows' order, the disk's read it from the snapshot
    guard = DifferencingGuard(tmp_path, SECRET)
    cohorts = [guard.cohorts_of_rows(MODEL.key, rows, variables, True), guard.cohorts(MODEL.key, frame, variables, True)]
    assert cohorts[0].order is None and cohorts[1].order is not None
    got, want = (_checked_weighted(algo, request, d, c, store) for d, c in zip((rows, local), cohorts))
    k = len(exp_codes)
    assert [f.name for f in got[0]] == [f.name for f in want[0]] and len(want[1]) == 2 * k + k * (k - 1) // 2
    for mine, theirs in zip(got[1], want[1], strict=True):
        assert (mine.family, mine.data_model) == (theirs.family, theirs.data_model)
        np.testing.assert_array_equal(mine.rows, theirs.rows)
        assert mine.log_weights.tobytes() == theirs.log_weights.tobytes() and len(mine.rows) == len(frame)
        assert mine.patients is not None and theirs.patients is not None
        np.testing.assert_array_equal(mine.patients, theirs.patients)


LOG_REFUSED = [
    # dose holds values <= 0 (not in every block), x2 only negative ones: the request's first is named
    pytest.param(["x1", "x2", "dose"], ["x1", "dose", "x2"], id="dose-first"),
    pytest.param(["x1", "x2", "dose"], ["x2", "dose"], id="x2-first"),
]


@pytest.mark.parametrize("y, logged", LOG_REFUSED)
@ON_BLOCKS
def test_a_log_of_a_value_not_positive_is_refused_alike(y, logged, datasets, filters, store):
    algo = get_algorithm("pca_with_transformation")
    request = _request(datasets, filters, y, [], {"data_transformation": {"log": logged}})
    frame, rows = _both(store, datasets, filters, list(algo.variables(request)))
    local = prepare_local_data(algo, frame, request)
    bad = [code for code in logged if (local[code].to_numpy(dtype=float) <= 0).any()]
    messages = []
    for data in (rows, local):
        if not bad:
            algo.local_step(0, data, request, MODEL, None)
            continue
        with pytest.raises(RequestError) as refused:
            algo.local_step(0, data, request, MODEL, None)
        messages.append(str(refused.value))
    if bad:
        assert messages == [f"Log transformation cannot be applied to non-positive values in column '{bad[0]}'."] * 2
    else:
        assert not len(frame)
