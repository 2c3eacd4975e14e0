"""contingency_table: federated == pooled (scipy / statsmodels), request errors,
and what a node's table could reveal about one patient."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.stats.contingency import association
from statsmodels.stats.contingency_tables import Table, Table2x2

from mipflow.algorithms import get_algorithm, prepare_local_data, run_in_process
from mipflow.protocol.wire import transport
from mipflow.node.home import NodeSettings
from mipflow.node.controls.disclosure import DisclosureControls
from mipflow.exceptions import DisclosureError, RequestError
from tests.mipflow.algorithms.helpers import EXACT_RTOL, POOLED_SUMMARY, assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

ALG = get_algorithm("contingency_table")
SETTINGS = settings(max_examples=int(os.environ.get("MIPFLOW_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NOMINAL_PAIRS = [("sex", "outcome"), ("grp", "outcome"), ("stage", "grp"), ("outcome", "sex"),
                 ("grp", "stage")]


def check(what: str, actual, expected, *, floor: float = 1e-12) -> None:
    worst = assert_rel_close(actual, expected, rel=EXACT_RTOL, floor=floor, what=f"contingency_table.{what}")
    POOLED_SUMMARY.record("contingency_table", worst, what)


def as_codes(series: pd.Series) -> pd.Series:
    """Enumeration codes as strings (stage is stored as 1.0, 2.0...)."""
    return series.map(lambda v: str(int(v)) if isinstance(v, float) else str(v))


def pooled_table(data: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The pooled crosstab in enumeration order, empty rows and columns dropped."""
    rows = data.dropna(subset=[x, y])
    table = pd.crosstab(as_codes(rows[x]), as_codes(rows[y]))
    table = table.reindex(index=list(MODEL.variable(x).enumeration_codes),
                          columns=list(MODEL.variable(y).enumeration_codes), fill_value=0)
    return table.loc[table.sum(axis=1) > 0, table.sum(axis=0) > 0]


@st.composite
def split_data(draw, min_rows: int, max_rows: int, keep_grp: tuple[str, ...] | None = None):
    """(pooled frame, three node frames), random assignment of rows, maybe an empty node."""
    data = make_data(draw(st.integers(0, 2**32 - 1)), draw(st.integers(min_rows, max_rows)))
    if keep_grp is not None:  # as a node filter would: fewer levels, smaller tables
        data = data[data["grp"].isin(keep_grp)].reset_index(drop=True)
    n = len(data)
    assignment = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    if draw(st.booleans()):
        assignment[assignment == 2] = draw(st.integers(0, 1))
    return data, [data[assignment == k].reset_index(drop=True) for k in range(3)]


def compare_with_scipy(ours: dict, table: pd.DataFrame, yates: bool) -> None:
    observed = table.to_numpy()
    assert ours["row_levels"] == list(table.index) and ours["col_levels"] == list(table.columns)
    assert ours["observed"] == observed.tolist()
    assert ours["n_obs"] == int(observed.sum())
    assert ours["row_totals"] == observed.sum(axis=1).tolist()
    assert ours["col_totals"] == observed.sum(axis=0).tolist()
    ref = stats.chi2_contingency(observed, correction=yates)
    check("expected", ours["expected"], ref.expected_freq)
    assert ours["chi2"]["df"] == ref.dof
    assert ours["chi2"]["yates_correction"] == (yates and ref.dof == 1)
    check("chi2", ours["chi2"]["statistic"], ref.statistic)
    check("chi2_pvalue", ours["chi2"]["p_value"], ref.pvalue)
    g = stats.chi2_contingency(observed, correction=False, lambda_="log-likelihood")
    check("g_stat", ours["g_test"]["statistic"], g.statistic)
    check("g_pvalue", ours["g_test"]["p_value"], g.pvalue)
    check("cramers_v", ours["cramers_v"], association(observed, method="cramer", correction=False))
    # statsmodels' Pearson statistic (uncorrected) on the same table, via V
    sm_chi2 = Table(observed, shift_zeros=False).test_nominal_association().statistic
    v_squared_scale = observed.sum() * (min(observed.shape) - 1)
    check("chi2 (statsmodels, uncorrected)", ours["cramers_v"] ** 2 * v_squared_scale, sm_chi2)
    assert ours["expected_below_5"] == int((ref.expected_freq < 5).sum())


@SETTINGS
@given(split_data(40, 200), st.sampled_from(NOMINAL_PAIRS), st.booleans())
def test_rxc_equals_pooled(split, pair, yates) -> None:
    data, nodes = split
    x, y = pair
    req = request(x=(x,), y=(y,), yates_correction="yes" if yates else "no")
    ours = run_in_process(ALG, nodes, req, MODEL)
    table = pooled_table(data, x, y)
    compare_with_scipy(ours, table, yates)
    absent_x = [lvl for lvl in MODEL.variable(x).enumeration_codes if lvl not in table.index]
    assert ours["absent_levels"][x] == absent_x
    assert ours["fisher_exact"] is None if table.shape != (2, 2) else ours["fisher_exact"] is not None


@SETTINGS
@given(split_data(12, 120, keep_grp=("a", "b")), st.booleans(),
       st.sampled_from(["two-sided", "less", "greater"]), st.floats(0.01, 0.5))
def test_2x2_equals_pooled(split, yates, alternative, alpha) -> None:
    """sex x grp restricted to two groups: Fisher, Yates, odds and risk ratios."""
    data, nodes = split
    req = request(x=("sex",), y=("grp",), yates_correction="yes" if yates else "no",
                  alt_hypothesis=alternative, alpha=alpha)
    table = pooled_table(data, "sex", "grp")
    if table.shape != (2, 2):
        with pytest.raises(RequestError, match="only one level"):
            run_in_process(ALG, nodes, req, MODEL)
        return
    ours = run_in_process(ALG, nodes, req, MODEL)
    compare_with_scipy(ours, table, yates)
    observed = table.to_numpy()
    fisher = stats.fisher_exact(observed, alternative=alternative)
    assert ours["fisher_exact"]["alternative"] == alternative
    check("fisher_odds_ratio", ours["fisher_exact"]["sample_odds_ratio"], fisher.statistic)
    check("fisher_pvalue", ours["fisher_exact"]["p_value"], fisher.pvalue)
    sm = Table2x2(observed)  # zero cells -> 0.5, statsmodels' default
    assert ours["zero_cells_shifted"] == bool((observed == 0).any())
    check("odds_ratio", ours["odds_ratio"]["estimate"], sm.oddsratio)
    check("odds_ratio_log_se", ours["odds_ratio"]["log_se"], sm.log_oddsratio_se)
    check("odds_ratio_ci", [ours["odds_ratio"]["ci_lower"], ours["odds_ratio"]["ci_upper"]],
          sm.oddsratio_confint(alpha))
    check("risk_ratio", ours["risk_ratio"]["estimate"], sm.riskratio)
    check("risk_ratio_log_se", ours["risk_ratio"]["log_se"], sm.log_riskratio_se)
    check("risk_ratio_ci", [ours["risk_ratio"]["ci_lower"], ours["risk_ratio"]["ci_upper"]],
          sm.riskratio_confint(alpha))
    assert ours["confidence_level"] == pytest.approx(1 - alpha, rel=1e-15)


def test_fisher_on_a_sparse_table_matches_the_hypergeometric_sum() -> None:
    """A 2x2 table with a zero cell, Fisher's two-sided p from its definition:
    the probability of every table with the same margins no more likely than this one."""
    rows = [("M", "a")] * 9 + [("M", "b")] * 3 + [("F", "b")] * 7
    frame = pd.DataFrame(rows, columns=["sex", "grp"])
    ours = run_in_process(ALG, [frame.iloc[:10], frame.iloc[10:]], request(x=("sex",), y=("grp",)), MODEL)
    assert ours["observed"] == [[9, 3], [0, 7]]
    dist = stats.hypergeom(19, 12, 9)  # N, row M total, column a total
    support = np.arange(max(0, 9 - 7), 10)
    pmf = dist.pmf(support)
    p_two = pmf[pmf <= dist.pmf(9) * (1 + 1e-7)].sum()
    check("fisher_pvalue (hypergeometric)", ours["fisher_exact"]["p_value"], p_two)
    assert ours["fisher_exact"]["sample_odds_ratio"] == "Infinity"
    assert ours["zero_cells_shifted"] is True


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize("req, message", [
    pytest.param(request(x=("sex",), y=("sex",)), "both x and y", id="same-variable"),
    pytest.param(request(x=("x1",), y=("sex",)), "must be nominal", id="numerical-x"),
    pytest.param(request(x=("sex",), y=("y",)), "must be nominal", id="numerical-y"),
    pytest.param(request(x=(), y=("sex",)), "at least one variable in x", id="no-x"),
    pytest.param(request(x=("sex", "grp"), y=("outcome",)), "exactly one", id="two-x"),
    pytest.param(request(x=("sex",), y=("grp",), yates_correction="maybe"), "not one of", id="yates"),
    pytest.param(request(x=("sex",), y=("grp",), alpha=0), "strictly between", id="alpha-zero"),
    pytest.param(request(x=("sex",), y=("grp",), alt_hypothesis="bigger"), "not one of", id="alternative"),
])
def test_invalid_requests(req, message) -> None:
    with pytest.raises(RequestError, match=message):
        ALG.validate(req, MODEL)


def test_one_level_present_is_a_request_error() -> None:
    frame = pd.DataFrame({"sex": ["M"] * 12, "grp": ["a", "b"] * 6})
    with pytest.raises(RequestError, match="'sex' has only one level"):
        run_in_process(ALG, [frame], request(x=("sex",), y=("grp",)), MODEL)


def test_no_rows_is_a_request_error() -> None:
    empty = make_data(3, 10).iloc[:0]
    with pytest.raises(RequestError, match="no rows"):
        run_in_process(ALG, [empty, empty], request(x=("sex",), y=("grp",)), MODEL)


@pytest.mark.parametrize("mutate, message", [
    pytest.param(lambda a: a["group_counts"].__setitem__(0, None), "not counts", id="suppressed-cell"),
    pytest.param(lambda a: a.update(shape=[1, 8]), "shape", id="other-shape"),
    pytest.param(lambda a: a["group_counts"].pop(), "not counts", id="short"),
])
def test_global_step_never_pools_an_unknown_table(mutate, message) -> None:
    """A suppressed (None) or malformed cell makes the pooled table unknown: an error,
    never a statistic computed as if the cell were zero."""
    req = request(x=("sex",), y=("grp",))
    data = prepare_local_data(ALG, make_data(1, 100), req)
    good = transport(ALG.local_step(0, data, req, MODEL, None))
    bad = json.loads(json.dumps(good))
    mutate(bad)
    with pytest.raises(RequestError, match=message):
        ALG.global_step(0, [good, bad], req, MODEL, None)


def test_local_step_releases_only_the_table() -> None:
    req = request(x=("grp",), y=("outcome",))
    data = prepare_local_data(ALG, make_data(4, 300), req)
    aggregate = transport(ALG.local_step(0, data, req, MODEL, None))
    assert sorted(aggregate) == ["group_counts", "shape"]
    assert aggregate["shape"] == [4, 3] and len(aggregate["group_counts"]) == 12
    assert sum(aggregate["group_counts"]) == len(data)


# --------------------------------------------------------------------------- disclosure


def released(frame: pd.DataFrame, req, nfilter_tab: int = 3) -> dict:
    """What a node with default controls (and this nfilter_tab) lets out, as the node API does."""
    controls = DisclosureControls(NodeSettings(nfilter_tab=nfilter_tab))
    data = prepare_local_data(ALG, frame, req)
    controls.check_rows(ALG, req, MODEL, len(data))
    return controls.release(ALG, req, MODEL, 0, ALG.local_step(0, data, req, MODEL, None))


def _frame(cells: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = [pair for pair, count in cells.items() for _ in range(count)]
    return pd.DataFrame(rows, columns=["sex", "grp"])


def test_one_patient_alone_in_a_cell_refuses_the_table() -> None:
    """One woman in group c: her cell (and the row and column margins that would
    give it away by subtraction) never leave the node."""
    req = request(x=("sex",), y=("grp",))
    frame = _frame({("M", "a"): 10, ("M", "b"): 6, ("M", "c"): 5,
                    ("F", "a"): 7, ("F", "b"): 8, ("F", "c"): 1})
    with pytest.raises(DisclosureError) as info:
        released(frame, req)
    assert info.value.control == "nfilter_tab"


@pytest.mark.parametrize("cells", [
    pytest.param({("M", "a"): 12, ("M", "b"): 2, ("F", "a"): 9, ("F", "b"): 4}, id="small-cell"),
    # a margin of 1 (one woman) is a cell of 1 whatever her group: refused too
    pytest.param({("M", "a"): 12, ("M", "b"): 9, ("F", "b"): 1}, id="small-row-margin"),
    # one patient in group b: her sex would follow from the column margin
    pytest.param({("M", "a"): 12, ("F", "a"): 9, ("F", "b"): 1}, id="small-column-margin"),
])
def test_tables_whose_margins_would_reveal_a_patient_are_refused(cells) -> None:
    with pytest.raises(DisclosureError, match="nfilter_tab"):
        released(_frame(cells), request(x=("sex",), y=("grp",)))


def test_safe_table_is_released_whole_with_zero_cells() -> None:
    cells = {("M", "a"): 12, ("M", "b"): 3, ("F", "a"): 9, ("F", "c"): 4}
    out = released(_frame(cells), request(x=("sex",), y=("grp",)))
    # enumeration order: sex M, F; grp c, a, b, zz
    assert out == {"shape": [2, 4], "group_counts": [0, 12, 3, 0, 4, 9, 0, 0]}


def test_a_refused_node_leaves_no_trace_in_the_result() -> None:
    """The central result over the nodes that released is the pooled analysis of
    those nodes alone: nothing of the refused node (its one-patient cell) is in it."""
    req = request(x=("sex",), y=("grp",))
    safe = [_frame({("M", "a"): 12, ("M", "b"): 5, ("F", "a"): 9, ("F", "b"): 4}),
            _frame({("M", "a"): 8, ("M", "b"): 7, ("F", "a"): 3, ("F", "b"): 11})]
    risky = _frame({("M", "a"): 12, ("M", "b"): 5, ("F", "a"): 9, ("F", "b"): 1})
    aggregates = [transport(released(f, req)) for f in safe]
    with pytest.raises(DisclosureError):
        released(risky, req)
    result = ALG.global_step(0, aggregates, req, MODEL, None).result
    assert result == run_in_process(ALG, safe, req, MODEL)
    assert result["observed"] == [[20, 12], [12, 15]]
