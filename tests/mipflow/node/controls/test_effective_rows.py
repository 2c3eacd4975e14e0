"""The effective-rows rule (ADR 0054): Kish's ``(sum |w|)^2 / sum w^2`` and the node's refusal."""
from __future__ import annotations

import re

import numpy as np
import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.effective_rows import CONTROL, check_effective_rows, effective_rows


def test_equal_weights_hold_every_row_and_one_weight_holds_one() -> None:
    assert effective_rows(np.full(240, 0.25)) == pytest.approx(240.0, rel=1e-12)
    assert effective_rows(np.r_[np.zeros(239), 3.0]) == 1.0
    # two rows hold the weight, 238 hold ~1e-12 of it each: two rows in effect, whatever n says
    assert effective_rows(np.r_[np.full(238, 1e-12), 0.5, 0.5]) == pytest.approx(2.0, rel=1e-9)


def test_the_rule_ignores_scale_and_sign_and_never_exceeds_the_non_zero_rows() -> None:
    rng = np.random.default_rng(3)
    w = rng.exponential(size=50) * (rng.random(50) < 0.6)
    k = effective_rows(w)
    assert k == pytest.approx(effective_rows(1e-300 * w), rel=1e-12)  # no underflow: scaled by the largest
    assert k == pytest.approx(effective_rows(1e300 * w), rel=1e-12)
    assert k == pytest.approx(effective_rows(-w), rel=1e-12)  # residuals of either sign count by magnitude
    assert 1.0 <= k <= np.count_nonzero(w)


def test_no_weight_is_nothing_to_check_and_a_non_finite_weight_is_refused() -> None:
    assert effective_rows(np.zeros(10)) is None and effective_rows(np.zeros(0)) is None
    assert effective_rows(np.array([1.0, np.inf])) == 0.0 and effective_rows(np.array([1.0, np.nan])) == 0.0
    check_effective_rows([np.zeros(10)], 10)
    with pytest.raises(DisclosureError):
        check_effective_rows([np.array([1.0, np.nan] * 20)], 10)


def test_a_vector_under_min_row_count_is_refused_with_the_control_and_no_number_of_the_rows() -> None:
    spread, concentrated = np.ones(40), np.r_[np.full(200, 1e-9), 1.0, 0.7, 0.2]
    check_effective_rows([spread], 10)
    check_effective_rows([np.ones(10)], 10)  # exactly min_row_count equal weights: answered
    with pytest.raises(DisclosureError) as info:
        check_effective_rows([spread, concentrated], 10)
    assert info.value.control == CONTROL == "effective_rows"
    assert re.findall(r"\d+(?:\.\d+)?", str(info.value)) == ["10"]  # the setting only
    with pytest.raises(DisclosureError) as other:
        check_effective_rows(iter([np.r_[1.0, np.zeros(5)]]), 10)
    assert str(other.value) == str(info.value)  # the same bytes whatever the rows


def test_min_row_count_one_checks_nothing_as_the_exareme2_suite_runs() -> None:
    check_effective_rows([np.r_[1.0, np.zeros(99)]], 1)
    check_effective_rows(None, 10)
