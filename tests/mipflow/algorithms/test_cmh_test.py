"""cmh_test: federated == statsmodels' StratifiedTable on the pooled rows, request errors,
and what a node's stratified tables could reveal about one patient."""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.contingency_tables import StratifiedTable

from mipflow.algorithms import get_algorithm, prepare_local_data, run_in_process
from mipflow.protocol.wire import transport
from mipflow.node.home import NodeSettings
from mipflow.node.controls.disclosure import DisclosureControls
from mipflow.exceptions import DisclosureError, RequestError
from tests.mipflow.algorithms.helpers import EXACT_RTOL, POOLED_SUMMARY, assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.mipflow.algorithms.test_contingency_table import as_codes

ALG = get_algorithm("cmh_test")
SETTINGS = settings(max_examples=int(os.environ.get("MIPFLOW_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check(what: str, actual, expected) -> None:
    if not np.isfinite(expected):  # statsmodels gives nan / inf (e.g. a zero common odds ratio)
        assert actual is None or actual in ("Infinity", "-Infinity") or not np.isfinite(actual), what
        return
    worst = assert_rel_close(actual, expected, rel=EXACT_RTOL, floor=1e-12, what=f"cmh_test.{what}")
    POOLED_SUMMARY.record("cmh_test", worst, what)


def pooled_tables(data: pd.DataFrame, exposure: str, stratum: str, outcome: str, outcome_level: str
                  ) -> tuple[np.ndarray, list[str]]:
    """Per stratum level (enumeration order) with 2 or more rows: the 2x2 table, shape (2, 2, K)."""
    rows = data.dropna(subset=[exposure, stratum, outcome])
    exposed = as_codes(rows[exposure])
    first_row = MODEL.variable(exposure).enumeration_codes[0]
    event = as_codes(rows[outcome]) == outcome_level
    tables, used = [], []
    for level in MODEL.variable(stratum).enumeration_codes:
        inside = (as_codes(rows[stratum]) == level).to_numpy()
        if inside.sum() < 2:
            continue
        e, o = (exposed[inside] == first_row).to_numpy(), event[inside].to_numpy()
        tables.append([[np.sum(e & o), np.sum(e & ~o)], [np.sum(~e & o), np.sum(~e & ~o)]])
        used.append(level)
    return np.transpose(np.asarray(tables, dtype=float), (1, 2, 0)), used


def breslow_day_at_unit_odds(tables: np.ndarray, tarone: bool) -> float:
    """Breslow-Day when the pooled odds ratio is exactly 1. statsmodels solves a quadratic whose
    leading coefficient is 1 - OR and returns nan there; under OR = 1 the expected first cell is the
    independence count row1 * col1 / n (the textbook form), with statsmodels' Tarone adjustment."""
    a, row1, col1, n = tables[0, 0], tables[0].sum(axis=0), tables[:, 0].sum(axis=0), tables.sum(axis=(0, 1))
    expected = row1 * col1 / n
    var = 1.0 / (1.0 / expected + 1.0 / (row1 - expected) + 1.0 / (col1 - expected)
                 + 1.0 / (n - row1 - col1 + expected))
    statistic = float(np.sum((a - expected) ** 2 / var))
    if tarone:
        statistic -= float(a.sum() - expected.sum()) ** 2 / float(var.sum())
    return statistic


def compare(ours: dict, tables: np.ndarray, used: list[str], correction: bool, tarone: bool, alpha: float) -> None:
    assert ours["strata"] == used
    assert np.array_equal(np.transpose(np.asarray(ours["tables"]), (1, 2, 0)), tables)
    ref = StratifiedTable(tables)
    null = ref.test_null_odds(correction=correction)
    check("cmh", ours["cmh"]["statistic"], null.statistic)
    check("cmh_pvalue", ours["cmh"]["p_value"], stats.chi2.sf(null.statistic, 1))
    check("odds_ratio", ours["common_odds_ratio"]["estimate"], ref.oddsratio_pooled)
    check("log_odds_se", ours["common_odds_ratio"]["log_se"], ref.logodds_pooled_se)
    lower, upper = ref.oddsratio_pooled_confint(alpha=alpha)
    check("odds_ratio_lower", ours["common_odds_ratio"]["ci_lower"], lower)
    check("odds_ratio_upper", ours["common_odds_ratio"]["ci_upper"], upper)
    check("risk_ratio", ours["common_risk_ratio"]["estimate"], ref.riskratio_pooled)
    if tables.shape[2] > 1:
        statistic = ref.test_equal_odds(adjust=tarone).statistic
        if ref.oddsratio_pooled == 1.0:
            statistic = breslow_day_at_unit_odds(tables, tarone)
        check("breslow_day", ours["breslow_day"]["statistic"], statistic)
        if np.isfinite(statistic):
            check("breslow_day_pvalue", ours["breslow_day"]["p_value"],
                  stats.chi2.sf(statistic, tables.shape[2] - 1))
        assert ours["breslow_day"]["df"] == tables.shape[2] - 1


@st.composite
def split_data(draw, min_rows: int = 30, max_rows: int = 300):
    data = make_data(draw(st.integers(0, 2**32 - 1)), draw(st.integers(min_rows, max_rows)))
    n = len(data)
    assignment = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    if draw(st.booleans()):
        assignment[assignment == 2] = draw(st.integers(0, 1))
    return data, [data[assignment == k].reset_index(drop=True) for k in range(3)]


@SETTINGS
@given(split_data(), st.sampled_from(["stage", "grp"]), st.booleans(), st.booleans(), st.floats(0.01, 0.5))
def test_equals_statsmodels_on_pooled_rows(split, stratum, correction, tarone, alpha) -> None:
    data, nodes = split
    req = request(x=("sex", stratum), y=("outcome",), outcome_level="yes",
                  continuity_correction="yes" if correction else "no",
                  tarone_adjustment="yes" if tarone else "no", alpha=alpha)
    tables, used = pooled_tables(data, "sex", stratum, "outcome", "yes")
    ours = run_in_process(ALG, nodes, req, MODEL)
    assert ours["row_levels"] == ["M", "F"] and ours["col_levels"] == ["yes", "not yes"]
    assert ours["excluded_strata"] == [lvl for lvl in MODEL.variable(stratum).enumeration_codes if lvl not in used]
    compare(ours, tables, used, correction, tarone, alpha)


def test_breslow_day_when_the_pooled_odds_ratio_is_exactly_one() -> None:
    """Two strata whose Mantel-Haenszel odds ratio is exactly 1 but whose own odds ratios differ
    (4 and 1/4): the quadratic of the Breslow-Day expectation is linear there."""
    tables = np.transpose(np.array([[[20.0, 10.0], [10.0, 20.0]], [[10.0, 20.0], [20.0, 10.0]]]), (1, 2, 0))
    assert StratifiedTable(tables).oddsratio_pooled == 1.0
    parts = []
    for k, stage in enumerate([1.0, 2.0]):
        for (i, sex), (j, outcome) in [((i, s), (j, o)) for i, s in enumerate(["M", "F"])
                                       for j, o in enumerate(["yes", "no"])]:
            parts += [{"sex": sex, "stage": stage, "outcome": outcome}] * int(tables[i, j, k])
    data = pd.DataFrame(parts)
    for tarone in (False, True):
        req = request(x=("sex", "stage"), y=("outcome",), outcome_level="yes",
                      tarone_adjustment="yes" if tarone else "no")
        ours = run_in_process(ALG, [data.iloc[::2].reset_index(drop=True), data.iloc[1::2].reset_index(drop=True)],
                              req, MODEL)
        assert ours["common_odds_ratio"]["estimate"] == pytest.approx(1.0, rel=1e-12)
        expected = breslow_day_at_unit_odds(tables, tarone)
        assert expected > 10  # the strata's odds ratios differ: far from homogeneous
        assert_rel_close(ours["breslow_day"]["statistic"], expected, rel=EXACT_RTOL, floor=1e-12,
                         what="cmh_test.breslow_day at OR 1")


def test_two_level_outcome_needs_no_outcome_level() -> None:
    data = make_data(21, 300)
    data = data[data["outcome"] != "unknown"].reset_index(drop=True)
    ours = run_in_process(ALG, [data.iloc[:100], data.iloc[100:]], request(x=("sex", "stage"), y=("outcome",)),
                          MODEL)
    assert ours["col_levels"] == ["yes", "no"]
    tables, used = pooled_tables(data, "sex", "stage", "outcome", "yes")
    compare(ours, tables, used, False, False, 0.05)


@pytest.mark.parametrize("req, message", [
    pytest.param(request(x=("sex",), y=("outcome",)), "exposure, stratum", id="one-x"),
    pytest.param(request(x=("sex", "outcome"), y=("outcome",)), "three different", id="y-in-x"),
    pytest.param(request(x=("sex", "stage"), y=("outcome",), outcome_level="maybe"), "not a level", id="level"),
    pytest.param(request(x=("sex", "stage"), y=("y",)), "must be nominal", id="numerical-y"),
])
def test_invalid_requests(req, message) -> None:
    with pytest.raises(RequestError, match=message):
        ALG.validate(req, MODEL)


def test_an_outcome_with_three_levels_needs_outcome_level() -> None:
    with pytest.raises(RequestError, match="exactly two levels of 'outcome'.*outcome_level"):
        run_in_process(ALG, [make_data(22, 200)], request(x=("sex", "stage"), y=("outcome",)), MODEL)


# --------------------------------------------------------------------------- disclosure


def _frame(cells: dict[tuple[str, str, str], int]) -> pd.DataFrame:
    """Rows with (sex, stage, outcome) repeated as many times as given."""
    rows = [(sex, float(stage), outcome) for (sex, stage, outcome), k in cells.items() for _ in range(k)]
    frame = pd.DataFrame(rows, columns=["sex", "stage", "outcome"])
    return frame.assign(dataset="d0")


def released(frame: pd.DataFrame, nfilter_tab: int = 3) -> dict:
    req = request(x=("sex", "stage"), y=("outcome",), outcome_level="yes")
    controls = DisclosureControls(NodeSettings(nfilter_tab=nfilter_tab))
    data = prepare_local_data(ALG, frame, req)
    controls.check_rows(ALG, req, MODEL, len(data))
    return controls.release(ALG, req, MODEL, 0, ALG.local_step(0, data, req, MODEL, None))


SAFE = {("M", "1", "yes"): 5, ("M", "1", "no"): 6, ("F", "1", "yes"): 4, ("F", "1", "no"): 7,
        ("M", "2", "yes"): 3, ("M", "2", "no"): 8, ("F", "2", "yes"): 5, ("F", "2", "no"): 4}


def test_a_safe_node_releases_its_tables_whole_with_zero_cells() -> None:
    out = released(_frame(SAFE))
    assert set(out) == {"shape", "group_counts"}          # counts only, never rows
    assert out["shape"] == [3, 2, 3]                       # every enumeration level: stage 3 absent here
    assert sum(out["group_counts"]) == sum(SAFE.values())
    assert all(v == 0 or v >= 3 for v in out["group_counts"])


@pytest.mark.parametrize("extra", [
    pytest.param({("F", "3", "no"): 1}, id="one-patient-alone-in-a-stratum"),
    pytest.param({("M", "2", "unknown"): 2}, id="two-patients-in-a-merged-away-level"),
    pytest.param({("F", "1", "yes"): -3, ("F", "1", "unknown"): 0}, id="a-cell-of-one"),
])
def test_one_or_two_patients_in_a_cell_refuse_the_step(extra) -> None:
    """A stratum holding one patient would give away their exposure and outcome; so would any
    small cell, even of a level the central side merges away (the node releases every level)."""
    cells = dict(SAFE)
    for key, delta in extra.items():
        cells[key] = cells.get(key, 0) + delta
    with pytest.raises(DisclosureError) as info:
        released(_frame(cells))
    assert info.value.control == "nfilter_tab"


def test_a_refused_node_leaves_no_trace_in_the_result() -> None:
    req = request(x=("sex", "stage"), y=("outcome",), outcome_level="yes")
    safe = [_frame(SAFE), _frame({k: v + 2 for k, v in SAFE.items()})]
    risky = _frame({**SAFE, ("F", "3", "no"): 1})
    aggregates = []
    for frame in (*safe, risky):
        try:
            aggregates.append(transport(released(frame)))
        except DisclosureError:
            pass
    assert len(aggregates) == 2
    result = ALG.global_step(0, aggregates, req, MODEL, None).result
    assert result == run_in_process(ALG, safe, req, MODEL)
    assert result["excluded_strata"] == ["3"]


def test_the_global_step_never_pools_a_suppressed_cell() -> None:
    req = request(x=("sex", "stage"), y=("outcome",), outcome_level="yes")
    good = transport(released(_frame(SAFE)))
    bad = {**good, "group_counts": [None if v == 4 else v for v in good["group_counts"]]}
    with pytest.raises(RequestError, match="not counts"):
        ALG.global_step(0, [good, bad], req, MODEL, None)
    assert math.isfinite(ALG.global_step(0, [good], req, MODEL, None).result["cmh"]["statistic"])
