"""Running the local steps (:mod:`mipflow.algorithms.local`): a node's rows prepared for them, every
node in one process, and what aggregates reveal."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import ALGORITHMS
from mipflow.algorithms.crossval import CrossValidated
from mipflow.algorithms.local import prepare_local_data, run_in_process
from mipflow.exceptions import RequestError
from mipflow.protocol.wire import transport
from tests.mipflow.algorithms.helpers import fold_keyed
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.mipflow.algorithms.test_contract import VALID


def test_prepare_local_data_drops_incomplete_rows_unless_told_not_to() -> None:
    frame = pd.DataFrame({"y": [1.0, np.nan, 3.0], "grp": ["a", "b", None], "x1": [0.0, 0.0, 0.0],
                          "dataset": ["d0"] * 3})
    req = request(x=("grp",), y=("y",), groupA="a", groupB="b")
    assert len(prepare_local_data(ALGORITHMS["ttest_independent"], frame, req)) == 1
    assert list(prepare_local_data(ALGORITHMS["ttest_independent"], frame, req).columns) == ["y", "grp"]
    assert len(prepare_local_data(ALGORITHMS["descriptive_stats"], frame, req)) == 3
    with pytest.raises(RequestError, match="no column"):
        prepare_local_data(ALGORITHMS["ttest_paired"], frame, request(x=("age",), y=("y",)))


def _with_identity(alg, data):
    """The rows as a node hands them to an algorithm clustered by patient (gee): with their row
    identity, five visits per patient."""
    if not getattr(alg, "row_identity", False):
        return data
    return data.assign(_pid=[f"p{i // 5}" for i in range(len(data))], _visit=[f"V{i % 5}" for i in range(len(data))])


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_algorithm_copes_with_empty_nodes(name) -> None:
    data = _with_identity(ALGORITHMS[name], make_data(7, 120))
    cross_validated = isinstance(ALGORITHMS[name], CrossValidated)
    if cross_validated:  # as the node hands its rows: with its fold keys (ADR 0026)
        (data,) = fold_keyed([data])
    empty = data.iloc[:0]
    alone = run_in_process(ALGORITHMS[name], [data], VALID[name], MODEL)
    # cross-validation assigns folds inside each node: rows may not move between nodes
    parts = [data] if cross_validated else [data.iloc[:50], empty, data.iloc[50:]]
    spread = run_in_process(ALGORITHMS[name], [empty, *parts, empty], VALID[name], MODEL)
    assert json.dumps(spread, sort_keys=True) == json.dumps(alone, sort_keys=True) or \
        _close(spread, alone)


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(abs(b), 1e-12)
    return a == b


@pytest.mark.parametrize("name", sorted(set(VALID) - {"descriptive_stats"}))
def test_no_rows_anywhere_is_a_request_error(name) -> None:
    empty = make_data(3, 10).iloc[:0]
    with pytest.raises(RequestError):
        run_in_process(ALGORITHMS[name], [empty, empty], VALID[name], MODEL)


@pytest.mark.parametrize("name", sorted(VALID))
def test_local_aggregates_do_not_grow_with_rows(name) -> None:
    """What a node releases is a fixed set of aggregates, never rows: its size
    does not depend on the number of rows (privacy review)."""
    alg = ALGORITHMS[name]
    req = VALID[name]
    sizes = []
    for n in (60, 600):
        rows = _with_identity(alg, make_data(11, n))
        frame = prepare_local_data(alg, fold_keyed([rows])[0] if isinstance(alg, CrossValidated) else rows, req)
        state = None
        if name == "multiple_histograms":
            state = {"range": [-10.0, 10.0], "bins": 5}
        elif name == "logistic_regression":
            state = None
        aggregate = transport(alg.local_step(1 if state else 0, frame, req, MODEL, state))
        sizes.append(_shape(aggregate))
    assert sizes[0] == sizes[1]


def _shape(obj):
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    return type(obj).__name__
