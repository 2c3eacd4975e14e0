"""How many rows a weighted sum holds (ADR 0053), and the node's rule on it (control ``dominated_sums``)."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.algorithms.weighted import WEIGHTED_ROWS, exp_log_weights, exp_weighted_rows, weighted_rows
from mipflow.exceptions import DisclosureError
from mipflow.node.controls.disclosure import DisclosureControls
from mipflow.node.home import NodeSettings
from tests.mipflow.node.controls.test_disclosure import Algo


def test_equal_weights_hold_every_row_and_one_dominant_weight_holds_one() -> None:
    assert weighted_rows(np.zeros(7)) == 7.0
    assert weighted_rows(np.array([])) == 0.0
    assert weighted_rows(np.array([0.0, -800.0, -900.0])) == pytest.approx(1.0, abs=1e-300)
    # w = (1, 1, 2): sum / max = 2
    assert weighted_rows(np.log([1.0, 1.0, 2.0])) == pytest.approx(2.0, rel=1e-15)


def test_the_rule_is_scale_free_and_needs_no_exponential_that_overflows() -> None:
    x = np.array([1.0, 2.0, 3.0])
    assert weighted_rows(x + 1000.0) == pytest.approx(weighted_rows(x), rel=1e-15)  # exp(1003) overflows
    w = np.exp(x)
    assert weighted_rows(x) == pytest.approx(w.sum() / w.max(), rel=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_it_bounds_every_rows_share_and_kish_s_effective_size(seed: int) -> None:
    w = np.random.default_rng(seed).lognormal(0, 2, 50)
    held = weighted_rows(np.log(w))
    assert (w / w.sum()).max() == pytest.approx(1 / held, rel=1e-12)
    assert w.sum() ** 2 / (w ** 2).sum() >= held * (1 - 1e-12)  # Kish's n_eff is at least as large


def test_exp_columns_give_the_weights_of_means_squares_and_products() -> None:
    values = np.array([[1.0, 10.0, 2.0], [3.0, 20.0, 5.0]])
    logs = [list(w) for w in exp_log_weights(values, [0, 2])]
    assert logs == [[1.0, 3.0], [2.0, 6.0], [3.0, 8.0], [2.0, 5.0], [4.0, 10.0]]
    assert exp_weighted_rows(values, []) is None
    assert exp_weighted_rows(values[:0], [0]) is None
    spread = np.column_stack([np.linspace(0, 0.01, 40), np.zeros(40)])
    assert exp_weighted_rows(spread, [0]) == pytest.approx(40 * np.exp(-0.01), rel=0.01)


def test_the_extreme_glucose_of_the_review_holds_one_row() -> None:
    glucose = np.concatenate([np.random.default_rng(11).uniform(3, 12, 199), [37.93]])
    assert exp_weighted_rows(glucose[:, None], [0]) < 1 + 1e-9


@pytest.mark.parametrize("held, min_row_count, refused", [
    (9.5, 10, True), (10.0, 10, False), (1.0, 1, False), (250.0, 10, False),
])
def test_the_node_refuses_a_dominated_sum_and_never_sends_the_count(held, min_row_count, refused) -> None:
    controls = DisclosureControls(NodeSettings(min_row_count=min_row_count, nfilter_tab=1))
    aggregates = {"moments": {"n": 300}, "group_n": [300], WEIGHTED_ROWS: [held]}
    if refused:
        with pytest.raises(DisclosureError) as info:
            controls.release(Algo(), None, None, 0, aggregates)
        assert info.value.control == "dominated_sums"
        assert str(held) not in str(info.value) and "9.5" not in str(info.value)
    else:
        assert controls.release(Algo(), None, None, 0, aggregates) == {"moments": {"n": 300}, "group_n": [300]}
