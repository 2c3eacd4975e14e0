"""Cross-validation folds at the node: fixed by the node's secret and the rows' identity (ADR 0026).

The node's own selection path (a real node home, its feature store and
:class:`mipflow.node.api.context.StepContext`) adds the fold keys; the folds are
dealt from them by :func:`mipflow.algorithms.crossval.deal_folds`.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.crossval import FOLD_KEY, deal_folds, fold_sizes
from mipflow.node.api.context import StepContext
from mipflow.node.controls.differencing import hash_key
from mipflow.node.controls.differencing import cohort_sets
from mipflow.node.controls.folds import add_fold_keys, fold_hashes, fold_key, needs_fold_keys
from mipflow.node.home import NodeHome
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.nodes import load_frame
from tests.nodes import standard_home

CV = request(x=("x1", "x2"), y=("grp",), n_splits=5)
ROWS = make_data(31, 300).assign(subjectcode=[f"p{i:04d}" for i in range(300)])


def _identity(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(_pid=frame["subjectcode"], _visit="")


def _folds_by_patient(frame: pd.DataFrame, secret: bytes, n_splits: int) -> dict[str, int]:
    keyed = add_fold_keys(_identity(frame), fold_key(secret), hash_key(secret))
    return dict(zip(keyed["_pid"], deal_folds(keyed[FOLD_KEY].to_numpy(), n_splits).tolist()))


def _node(root, rows=ROWS) -> NodeHome:
    home = standard_home(root, root.name)
    load_frame(home.root, MODEL, rows)
    return NodeHome(root)


def _selection(home: NodeHome, req=CV) -> pd.DataFrame:
    """The rows the node hands the local step of ``req`` (a fresh node process each time)."""
    context = StepContext.open(home)
    algo = get_algorithm("naive_bayes_gaussian_cv")
    model = context.data_model(MODEL.key)
    data, _ = context.selections.rows(algo, req, model, algo.variables(req), 64)
    context.store.dispose()
    context.differencing.ledger.close()
    return data


# --------------------------------------------------------------------------- the key


def test_the_fold_key_is_the_node_secrets_own_and_not_the_ledgers() -> None:
    secret = b"\x01" * 32
    assert fold_key(secret) == fold_key(secret) and len(fold_key(secret)) == 16
    assert fold_key(secret) != fold_key(b"\x02" * 32)
    assert fold_key(secret) != hash_key(secret)  # its own HMAC label


def test_only_cross_validated_algorithms_get_fold_keys() -> None:
    assert {name for name in ("linear_regression_cv", "logistic_regression_cv", "naive_bayes_gaussian_cv",
                              "naive_bayes_categorical_cv", "linear_regression", "kmeans")
            if needs_fold_keys(get_algorithm(name))} == {
        "linear_regression_cv", "logistic_regression_cv", "naive_bayes_gaussian_cv", "naive_bayes_categorical_cv"}


# --------------------------------------------------------------------------- the folds


def test_a_rows_fold_does_not_depend_on_the_order_the_rows_come_in() -> None:
    secret = b"node secret"
    shuffled = ROWS.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert _folds_by_patient(ROWS, secret, 5) == _folds_by_patient(shuffled, secret, 5)


def test_another_node_secret_gives_other_folds() -> None:
    a = _folds_by_patient(ROWS, b"secret of node a", 5)
    b = _folds_by_patient(ROWS, b"secret of node b", 5)
    same = sum(a[p] == b[p] for p in a)
    # independent assignments agree on about a fifth of the rows (60 of 300); far from all
    assert same < 0.35 * len(a)


@pytest.mark.parametrize("n_splits", [2, 3, 5, 7])
def test_fold_sizes_depend_on_the_number_of_rows_only(n_splits) -> None:
    """Any cohort of n patients, under any secret: the sizes are fold_sizes(n, k), a function of n."""
    rng = np.random.default_rng(n_splits)
    for trial in range(20):
        n = int(rng.integers(n_splits, 200))
        cohort = ROWS.iloc[rng.choice(len(ROWS), size=n, replace=False)]
        folds = _folds_by_patient(cohort, rng.bytes(16), n_splits)
        sizes = Counter(folds.values())
        assert [sizes.get(k, 0) for k in range(n_splits)] == fold_sizes(n, n_splits)


def test_deal_folds_ranks_the_keys_and_deals_round_robin() -> None:
    keys = np.array([50, 10, 40, 20, 30], dtype=np.uint64)
    # ranks 4 0 3 1 2 -> folds (rank % 2) 0 0 1 1 0
    assert deal_folds(keys, 2).tolist() == [0, 0, 1, 1, 0]
    assert deal_folds(np.zeros(0, dtype=np.uint64), 3).tolist() == []


# --------------------------------------------------------------------------- at the node


def test_the_node_hands_the_local_step_its_fold_keys_the_same_every_time(tmp_path) -> None:
    home = _node(tmp_path / "hospital_a")
    first, again = _selection(home), _selection(home)
    assert FOLD_KEY in first.columns and "_pid" not in first.columns and "_visit" not in first.columns
    np.testing.assert_array_equal(first[FOLD_KEY].to_numpy(), again[FOLD_KEY].to_numpy())
    # the keys are the node's fold key over the rows' identity, nothing from the request
    complete = _identity(ROWS.dropna(subset=["x1", "x2", "grp"]))
    expected = add_fold_keys(complete, fold_key(home.key()), hash_key(home.key()))[FOLD_KEY]
    assert sorted(first[FOLD_KEY].tolist()) == sorted(expected.tolist())


def test_two_nodes_holding_the_same_rows_assign_them_to_different_folds(tmp_path) -> None:
    a, b = _node(tmp_path / "hospital_a"), _node(tmp_path / "hospital_b")
    keys_a, keys_b = _selection(a)[FOLD_KEY].to_numpy(), _selection(b)[FOLD_KEY].to_numpy()
    assert len(keys_a) == len(keys_b) and not np.array_equal(deal_folds(keys_a, 5), deal_folds(keys_b, 5))


def test_a_plain_algorithm_gets_no_fold_keys(tmp_path) -> None:
    home = _node(tmp_path / "hospital_a")
    context = StepContext.open(home)
    algo, req = get_algorithm("linear_regression"), request(x=("x1",), y=("y",))
    data, _ = context.selections.rows(algo, req, context.data_model(MODEL.key), algo.variables(req), 64)
    assert FOLD_KEY not in data.columns


def test_the_folds_of_a_cohort_follow_from_its_ledger_entry(tmp_path) -> None:
    """Fold hashes are the fold key over the ledger's row keys: the folds of any cohort the ledger
    holds can be recomputed from it (and the node's secret) alone."""
    home = _node(tmp_path / "hospital_a")
    data = _selection(home)
    complete = _identity(ROWS.dropna(subset=["x1", "x2", "grp"]))
    (ledger_rows,), _ = cohort_sets(complete, ["x1", "x2", "grp"], True, hash_key(home.key()))
    assert sorted(fold_hashes(ledger_rows, fold_key(home.key())).tolist()) == sorted(data[FOLD_KEY].tolist())
