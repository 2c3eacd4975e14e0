"""Survival analysis: federated == pooled on the rounded times, and what the nodes release.

Hypothesis draws stroke-registry rows with censored proportional-hazards
times, splits them over three nodes (sometimes leaving one empty), and picks a
bin width and the nodes' ``nfilter_tab``.  Every node runs its local step and
its disclosure controls (bins merged until no count is small; a node whose
counts cannot be made safe is left out).  The federated results must equal
statsmodels on the pooled rows of the contributing nodes with every time
rounded up to the result's bin ends (``SurvfuncRight``, ``survdiff``,
``PHReg(ties="breslow")`` and ``PHReg(ties="efron")``) to a relative error of
1e-9, and lifelines (``KaplanMeierFitter``, ``multivariate_logrank_test``,
``CoxPHFitter`` with its Efron ties; with Breslow's ties where no two events
share a time) as a second, independent reference.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import SurvfuncRight, survdiff

from mipflow.algorithms import get_algorithm, prepare_local_data, run_in_process
from mipflow.protocol.wire import transport
from mipflow.algorithms.spec import SpecAlgorithm
from mipflow.algorithms.packed import unpack
from mipflow.algorithms.survival import safe_bins
from mipflow.node.home import NodeSettings
from mipflow.node.controls.disclosure import DisclosureControls
from mipflow.exceptions import DisclosureError, RequestError
from tests.mipflow.algorithms import lifelines_reference
from tests.mipflow.algorithms.helpers import POOLED_SUMMARY, assert_rel_close
from tests.mipflow.algorithms.survival_data import (
    STROKE, complete, cox_design, make_stroke, request, round_up, run_with_controls,
)

SETTINGS = settings(max_examples=int(os.environ.get("MIPFLOW_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KM_COLUMNS = ["followup_days", "death_90d", "sex"]
COX_X = ("age", "sex", "stroke_type", "nihss_admission")
COX_COLUMNS = ["followup_days", "death_90d", *COX_X]


def check(algorithm: str, what: str, actual, expected, *, rel: float = 1e-9, floor: float = 1e-12) -> None:
    worst = assert_rel_close(actual, expected, rel=rel, floor=floor, what=f"{algorithm}.{what}")
    POOLED_SUMMARY.record(algorithm, worst, what)


@st.composite
def survival_split(draw, min_rows: int = 40, max_rows: int = 300):
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(min_rows, max_rows))
    data = make_stroke(seed, n, real_times=draw(st.booleans()))
    assignment = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    if draw(st.booleans()):
        assignment[assignment == 2] = draw(st.integers(0, 1))
    nodes = [data[assignment == k].reset_index(drop=True) for k in range(3)]
    return nodes


WIDTHS = st.sampled_from([1.0, 7.0, 30.5])
TABS = st.sampled_from([1, 3, 5, 10])


def _status(frame: pd.DataFrame) -> np.ndarray:
    return (frame["death_90d"] == "yes").to_numpy(dtype=float)


# --------------------------------------------------------------------------- Kaplan-Meier


def check_km(result: dict, pooled: pd.DataFrame, grouped: bool, logrank: bool = True) -> None:
    levels = sorted(pooled["sex"].unique()) if grouped else [None]
    curves = {c["group"]: c for c in result["curves"]}
    assert sorted(curves, key=str) == sorted(levels, key=str)
    for level, curve in curves.items():
        rows = pooled if level is None else pooled[pooled["sex"] == level]
        times = round_up(rows["followup_days"].to_numpy(), curve["timeline"])
        fit = SurvfuncRight(times, _status(rows))
        with_events = np.asarray(curve["events"]) > 0
        assert curve["n_obs"] == len(rows) and curve["n_events"] == int(_status(rows).sum())
        np.testing.assert_array_equal(np.asarray(curve["timeline"])[with_events], fit.surv_times)
        np.testing.assert_array_equal(np.asarray(curve["at_risk"])[with_events], fit.n_risk)
        np.testing.assert_array_equal(np.asarray(curve["events"])[with_events], fit.n_events)
        check("kaplan_meier", "survival", np.asarray(curve["survival"])[with_events], fit.surv_prob)
        se = np.array([np.nan if v is None else v for v in curve["stderr"]], dtype=float)[with_events]
        np.testing.assert_array_equal(np.isnan(se), np.isnan(fit.surv_prob_se))
        finite = ~np.isnan(se)
        check("kaplan_meier", "stderr", se[finite], fit.surv_prob_se[finite])
        # log(-log) interval from statsmodels' S and Greenwood SE
        s, sd = fit.surv_prob[finite], fit.surv_prob_se[finite]
        inner = (s > 0) & (s < 1)
        q = stats.norm.ppf(0.5 + result["confidence"] / 2)
        half = q * sd[inner] / (s[inner] * np.abs(np.log(s[inner])))
        lower = np.array(curve["lower_ci"], dtype=float)[with_events][finite][inner]
        check("kaplan_meier", "lower_ci", lower, np.exp(-np.exp(np.log(-np.log(s[inner])) + half)))
        # every censoring is counted too (rows leave at the bin end)
        assert sum(curve["censored"]) + sum(curve["events"]) == len(rows)
    if logrank and grouped and len(levels) >= 2:
        logrank = result["logrank"]
        times = round_up(pooled["followup_days"].to_numpy(), logrank["timeline"])
        chi2, p_value = survdiff(times, _status(pooled), pooled["sex"].to_numpy())
        check("kaplan_meier", "logrank.chi2", logrank["chi2"], chi2)
        check("kaplan_meier", "logrank.p_value", logrank["p_value"], p_value)
        assert logrank["df"] == len(levels) - 1


def check_km_lifelines(result: dict, pooled: pd.DataFrame, grouped: bool, logrank: bool = True) -> None:
    """The curves and the log-rank test equal lifelines on the pooled rows with the result's binning."""
    for curve in result["curves"]:
        rows = pooled if curve["group"] is None else pooled[pooled["sex"] == curve["group"]]
        times = round_up(rows["followup_days"].to_numpy(), curve["timeline"])
        reference = lifelines_reference.kaplan_meier(times, _status(rows), curve["timeline"], result["confidence"])
        survival = np.asarray(curve["survival"], dtype=float)
        check("kaplan_meier", "survival (lifelines)", survival, reference["survival"])
        inner = (survival > 0) & (survival < 1)  # lifelines' log(-log) bounds, where they are defined
        for bound in ("lower_ci", "upper_ci"):
            ours = np.array([np.nan if v is None else v for v in curve[bound]], dtype=float)[inner]
            check("kaplan_meier", f"{bound} (lifelines)", ours, reference[bound][inner])
    levels = pooled["sex"].unique()
    if logrank and grouped and len(levels) >= 2:
        logrank = result["logrank"]
        times = round_up(pooled["followup_days"].to_numpy(), logrank["timeline"])
        reference = lifelines_reference.logrank(times, pooled["sex"].to_numpy(), _status(pooled))
        check("kaplan_meier", "logrank.chi2 (lifelines)", logrank["chi2"], reference["chi2"])
        check("kaplan_meier", "logrank.p_value (lifelines)", logrank["p_value"], reference["p_value"])
        assert logrank["df"] == reference["df"]


@SETTINGS
@given(survival_split(), WIDTHS, TABS, st.booleans())
def test_kaplan_meier_equals_pooled_on_rounded_times(nodes, width, tab, grouped) -> None:
    lifelines_reference.lifelines()  # skip (fail in CI) before drawing examples when it is absent
    req = request("kaplan_meier", x=("sex",) if grouped else (), bin_width=width)
    result, used, _ = run_with_controls("kaplan_meier", nodes, req, NodeSettings(min_row_count=1, nfilter_tab=tab))
    assume(result is not None)
    pooled = complete(pd.concat([nodes[i] for i in used], ignore_index=True), KM_COLUMNS)
    check_km(result, pooled, grouped)
    check_km_lifelines(result, pooled, grouped)
    binning = result["binning"]
    event(f"{binning['method']}, merged={binning['merged_for_disclosure']}, nodes={len(used)}")
    assert binning["method"] in ("exact", "binned")
    if binning["method"] == "exact":
        assert width == 1.0 and not binning["merged_for_disclosure"]
    for curve in result["curves"]:
        # nothing small leaves a node, so nothing small is derived centrally
        assert all(v >= tab for v in curve["at_risk"])


@SETTINGS
@given(survival_split(), st.booleans())
def test_kaplan_meier_without_merging_is_the_unbinned_estimate(nodes, grouped) -> None:
    """Integer days, bin width 1, nothing merged: the plain pooled Kaplan-Meier estimate."""
    nodes = [n.assign(followup_days=np.ceil(n["followup_days"])) for n in nodes]
    req = request("kaplan_meier", x=("sex",) if grouped else ())
    result = run_in_process(get_algorithm("kaplan_meier"), nodes, req, STROKE)
    assert result["binning"]["method"] == "exact"
    pooled = complete(pd.concat(nodes, ignore_index=True), KM_COLUMNS)
    for curve in result["curves"]:
        rows = pooled if curve["group"] is None else pooled[pooled["sex"] == curve["group"]]
        fit = SurvfuncRight(rows["followup_days"].to_numpy(), _status(rows))  # unrounded
        with_events = np.asarray(curve["events"]) > 0
        np.testing.assert_array_equal(np.asarray(curve["timeline"])[with_events], fit.surv_times)
        check("kaplan_meier", "survival (unbinned)", np.asarray(curve["survival"])[with_events], fit.surv_prob)


# --------------------------------------------------------------------------- Cox


@SETTINGS
@given(survival_split(min_rows=80), WIDTHS, TABS, st.sampled_from(["breslow", "efron"]))
def test_cox_regression_equals_pooled_phreg_on_rounded_times(nodes, width, tab, ties) -> None:
    lifelines_reference.lifelines()  # skip (fail in CI) before drawing examples when it is absent
    used = cox_equals_pooled_phreg(nodes, width, tab, ties)
    assume(used is not None)
    event(f"{ties}, nodes={len(used)}")


def cox_equals_pooled_phreg(nodes, width, tab, ties) -> list[int] | None:
    """Cox regression over ``nodes`` with every node's controls equals PHReg (and, Efron, lifelines) on the
    pooled rows of the nodes that took part (their indices); None when no estimate is made (no events, a
    monotone likelihood: a clean refusal, checked) or every node is refused."""
    req = request("cox_regression", x=COX_X, bin_width=width, ties=ties)
    try:
        result, used, _ = run_with_controls("cox_regression", nodes, req,
                                            NodeSettings(min_row_count=1, nfilter_tab=tab))
    except RequestError as exc:
        # no events, or a monotone likelihood (a level without events): a clean refusal, no estimate
        assert any(word in str(exc) for word in ("no events", "converge", "does not improve", "constant")), exc
        return None
    if result is None:
        return None
    pooled = complete(pd.concat([nodes[i] for i in used], ignore_index=True), COX_COLUMNS)
    # treatment coding, reference = first level present (sorted)
    expected_columns = []
    for var in ("sex", "stroke_type"):
        expected_columns += [f"{var}[{lvl}]" for lvl in sorted(pooled[var].unique())[1:]]
    assert result["indep_vars"] == expected_columns + ["age", "nihss_admission"]
    assert result["ties"] == ties
    times = round_up(pooled["followup_days"].to_numpy(), result["binning"]["timeline"])
    design = cox_design(pooled, result["indep_vars"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = PHReg(times, design, status=_status(pooled), ties=ties).fit(method="newton", tol=1e-8, maxiter=100)
    assert result["n_obs"] == len(pooled) and result["n_events"] == int(_status(pooled).sum())
    floor = 1e-6  # coefficients ~0 are compared absolutely at this scale
    check("cox_regression", "coefficients", result["coefficients"], fit.params, floor=floor)
    check("cox_regression", "stderr", result["stderr"], fit.bse)
    check("cox_regression", "z_scores", result["z_scores"], fit.tvalues, floor=floor)
    check("cox_regression", "pvalues", result["pvalues"], fit.pvalues, floor=floor)
    ci = fit.conf_int()
    check("cox_regression", "lower_ci", result["lower_ci"], ci[:, 0], floor=floor)
    check("cox_regression", "upper_ci", result["upper_ci"], ci[:, 1], floor=floor)
    check("cox_regression", "hazard_ratios", result["hazard_ratios"], np.exp(fit.params))
    check("cox_regression", "ll", result["ll"], fit.llf)
    if ties == "efron":
        reference = lifelines_reference.cox(times, _status(pooled), design, result["indep_vars"])
        check("cox_regression", "coefficients (efron, lifelines)", result["coefficients"],
              reference["coefficients"], floor=floor)
        check("cox_regression", "stderr (efron, lifelines)", result["stderr"], reference["stderr"])
        check("cox_regression", "ll (efron, lifelines)", result["ll"], reference["ll"])
    return used


def test_cox_without_merging_is_the_unbinned_fit() -> None:
    data = make_stroke(5, 600)
    nodes = [data.iloc[:150], data.iloc[150:400], data.iloc[400:]]
    result = run_in_process(get_algorithm("cox_regression"), nodes, request("cox_regression", x=COX_X), STROKE)
    assert result["binning"]["method"] == "exact"
    pooled = complete(data, COX_COLUMNS)
    fit = PHReg(pooled["followup_days"].to_numpy(), cox_design(pooled, result["indep_vars"]),
                status=_status(pooled), ties="breslow").fit(method="newton", tol=1e-8)
    check("cox_regression", "coefficients (unbinned)", result["coefficients"], fit.params)
    check("cox_regression", "stderr (unbinned)", result["stderr"], fit.bse)


def distinct_times(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with their follow-up replaced by its rank (1..n, whole days): no two rows share a time,
    so Breslow's, Efron's and the exact partial likelihood coincide."""
    order = np.argsort(np.argsort(frame["followup_days"].to_numpy(), kind="stable"), kind="stable")
    return frame.assign(followup_days=(order + 1).astype(float))


@pytest.mark.parametrize("seed", [21, 22])
def test_cox_without_tied_event_times_equals_lifelines(seed) -> None:
    """lifelines' CoxPHFitter (Efron's ties) on the pooled rows, where no two events share a time.

    Integer days with bin width 1 and no node merging bins (nfilter_tab 1): every row is its own
    bin, the fit is ``exact``.  lifelines runs to the floating-point optimum
    (:data:`~tests.mipflow.algorithms.lifelines_reference.COX_FIT_OPTIONS`), not to its default
    stopping rule, so the comparison is at 1e-9 relative.
    """
    data = distinct_times(make_stroke(seed, 500))
    nodes = [data.iloc[:120], data.iloc[120:330], data.iloc[330:]]
    req = request("cox_regression", x=COX_X)
    result, used, refused = run_with_controls("cox_regression", nodes, req,
                                              NodeSettings(min_row_count=1, nfilter_tab=1))
    assert used == [0, 1, 2] and not refused
    assert result["binning"]["method"] == "exact"
    pooled = complete(data, COX_COLUMNS)
    assert pooled["followup_days"].is_unique
    reference = lifelines_reference.cox(pooled["followup_days"].to_numpy(), _status(pooled),
                                        cox_design(pooled, result["indep_vars"]), result["indep_vars"])
    check("cox_regression", "coefficients (lifelines)", result["coefficients"], reference["coefficients"])
    check("cox_regression", "stderr (lifelines)", result["stderr"], reference["stderr"])
    check("cox_regression", "ll (lifelines)", result["ll"], reference["ll"])


# --------------------------------------------------------------------------- safe bins


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=60), st.integers(1, 8))
def test_safe_bins_release_no_small_count_and_keep_totals(cells, tab) -> None:
    events, censored = [c[0] for c in cells], [c[1] for c in cells]
    ends, merged_events, merged_censored = safe_bins(events, censored, tab)
    assert ends == sorted(set(ends)) and ends[-1] == len(cells) - 1
    assert sum(merged_events) == sum(events) and sum(merged_censored) == sum(censored)
    starts = [0] + [e + 1 for e in ends[:-1]]
    for start, end, d, c in zip(starts, ends, merged_events, merged_censored):
        assert d == sum(events[start:end + 1]) and c == sum(censored[start:end + 1])
    small = [v for v in merged_events + merged_censored if 0 < v < tab]
    if small:  # only when all rows together are too few
        assert len(ends) == 1


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(2, 300), st.integers(1, 8), st.floats(0.05, 3.0))
def test_one_release_of_a_cohort_shares_bins_nested_in_the_cohort_s_own(seed, n_groups, n_points, tab, rate) -> None:
    """ADR 0008, one partition per cohort: a grouped release's groups share their bins, which coarsen
    the ungrouped release's (so their sums at the shared ends are cumulative counts of the cohort that
    the ungrouped release holds already), which coarsen the bins of the rows leaving follow-up (the same
    for any event definition of the same rows); every count is 0 or >= tab unless a whole group's is."""
    from mipflow.algorithms.survival import coarsen_groups
    from mipflow.algorithms.survival_bins import nested_bins

    rng = np.random.default_rng(seed)
    leaving = rng.poisson(rate, (n_groups, n_points))
    # two event definitions of the same rows: each leaving row is an event under one, maybe the other
    first, second = rng.binomial(leaving, 0.4).tolist(), rng.binomial(leaving, 0.7).tolist()
    leaving = leaving.tolist()
    floor, _ = nested_bins([np.sum(leaving, axis=0)], tab)
    for events in (first, second):
        groups = [{"events": e, "censored": [v - d for v, d in zip(lv, e)]} for e, lv in zip(events, leaving)]
        merged = coarsen_groups(groups, tab)
        ungrouped = coarsen_groups([{"events": np.sum([g["events"] for g in groups], axis=0).tolist(),
                                     "censored": np.sum([g["censored"] for g in groups], axis=0).tolist()}], tab)[0]
        ends = merged[0]["ends"]
        assert all(g["ends"] == ends and g["levels"] == merged[0]["levels"] for g in merged)
        assert set(ends) <= set(ungrouped["ends"]) <= set(floor) | {n_points - 1}
        assert ends[-1] == n_points - 1
        for g, fine in zip(merged, groups):  # counts are sums of the fine counts between the ends
            assert sum(g["events"]) == sum(fine["events"]) and sum(g["censored"]) == sum(fine["censored"])
        small = any(0 < v < tab for g in merged for v in (*g["events"], *g["censored"]))
        whole_small = any(0 < sum(g[k]) < tab for g in groups for k in ("events", "censored"))
        assert not small or whole_small or len(ends) == 1


# --------------------------------------------------------------------------- disclosure


def _release(algorithm: str, frame: pd.DataFrame, req, tab: int = 3, round_no: int = 0, state=None) -> dict:
    alg = get_algorithm(algorithm)
    controls = DisclosureControls(NodeSettings(nfilter_tab=tab))
    data = prepare_local_data(alg, frame, req)
    controls.check_rows(alg, req, STROKE, len(data))
    return controls.release(alg, req, STROKE, round_no, transport(alg.local_step(round_no, data, req, STROKE, state)))


def _cells(aggregate: dict) -> list[int]:
    return [v for g in aggregate["groups"] for key in ("events", "censored") for v in g[key]]


def test_one_patient_at_risk_at_the_end_of_a_curve_is_not_released() -> None:
    """The longest follow-up belongs to one patient: alone at risk, the curve's tail would give
    away their follow-up time.  The node merges the tail until at least nfilter_tab leave there."""
    data = make_stroke(11, 120, scale_days=200)
    data["followup_days"] = data["followup_days"].clip(upper=900)
    data.loc[0, ["followup_days", "death_90d"]] = [3000.0, "no"]
    req = request("kaplan_meier", x=("sex",))
    fine = get_algorithm("kaplan_meier").local_step(0, prepare_local_data(get_algorithm("kaplan_meier"), data, req),
                                                    req, STROKE, None)
    assert 1 in fine["groups"][[g["level"] for g in fine["groups"]].index(data.loc[0, "sex"])]["censored"]
    released = _release("kaplan_meier", data, req, tab=3)
    assert all(v == 0 or v >= 3 for v in _cells(released))
    result = get_algorithm("kaplan_meier").global_step(0, [released], req, STROKE, None).result
    for curve in result["curves"]:
        assert min(curve["at_risk"]) >= 3
        assert 3000.0 not in curve["timeline"]
    assert result["binning"]["method"] == "binned" and result["binning"]["merged_for_disclosure"]


def test_a_single_event_in_a_bin_is_merged_away() -> None:
    data = make_stroke(12, 150)
    data["death_90d"] = "no"
    data.loc[[3, 4, 5, 6, 7], "death_90d"] = "yes"
    data.loc[[3, 4, 5, 6], "followup_days"] = 100.0
    data.loc[7, "followup_days"] = 2500.0  # one death, alone in its bin
    req = request("kaplan_meier")
    released = _release("kaplan_meier", data, req, tab=3)
    assert released["group_counts"] == _cells(released)
    assert all(v == 0 or v >= 3 for v in _cells(released))
    assert sum(released["groups"][0]["events"]) == 5
    result = get_algorithm("kaplan_meier").global_step(0, [released], req, STROKE, None).result
    assert 2500.0 not in result["curves"][0]["timeline"]
    assert 1 not in result["curves"][0]["events"]


def test_too_few_events_in_a_group_refuse_the_node() -> None:
    """Two deaths among the women of a node cannot be binned safely at nfilter_tab 3."""
    data = make_stroke(13, 120)
    data.loc[data["sex"] == "F", "death_90d"] = "no"
    women = data.index[data["sex"] == "F"][:2]
    data.loc[women, "death_90d"] = "yes"
    with pytest.raises(DisclosureError) as info:
        _release("kaplan_meier", data, request("kaplan_meier", x=("sex",)), tab=3)
    assert info.value.control == "nfilter_tab"


def test_fine_counts_are_refused_by_a_node_without_the_coarsening_step() -> None:
    """The local step's unmerged counts carry group_counts: the generic control refuses them."""
    data = make_stroke(14, 200)
    req = request("kaplan_meier")
    alg = get_algorithm("kaplan_meier")
    fine = alg.local_step(0, prepare_local_data(alg, data, req), req, STROKE, None)

    class Plain(SpecAlgorithm):  # an algorithm object without its own coarsen_for_release (the default)
        name = "kaplan_meier"

    with pytest.raises(DisclosureError, match="nfilter_tab"):
        DisclosureControls(NodeSettings()).release(Plain(), req, STROKE, 0, fine)


def test_cox_on_too_few_rows_is_refused() -> None:
    data = make_stroke(15, 40).dropna().iloc[:12]
    req = request("cox_regression", x=COX_X)
    with pytest.raises(DisclosureError) as info:
        _release("cox_regression", data, req)  # 7 candidate columns for 12 rows > nfilter_glm 0.33
    assert info.value.control == "nfilter_glm"


def test_cox_round_zero_checks_the_level_counts_it_no_longer_sends() -> None:
    """ADR 0055 amendment: the level counts travel in the start round (masked under secure aggregation),
    yet a node holding a level of 1 to nfilter_tab - 1 rows is refused at round 0, as before, and so left
    out before any round whose masks would need it: round 0 checks them (``cell_n``) without sending them."""
    req = request("cox_regression", x=("age", "stroke_type"))
    data = make_stroke(21, 300)
    data = data[data["stroke_type"] != "tia"].reset_index(drop=True)
    released = _release("cox_regression", data, req, tab=3)
    assert not {"level_counts", "group_n", "level_cells", "cell_n", "moments"} & set(released)
    lonely = data.copy()
    lonely.loc[0, "stroke_type"] = "tia"  # one row of a level
    with pytest.raises(DisclosureError) as refusal:
        _release("cox_regression", lonely, req, tab=3)
    assert refusal.value.control == "nfilter_tab" and "1" not in str(refusal.value).replace("nfilter_tab (3)", "")
    lonely.loc[1:2, "stroke_type"] = "tia"  # three rows: released
    assert _release("cox_regression", lonely.copy(), req, tab=3)["events"]


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_refuses_a_grid_finer_than_its_safe_bins(ties) -> None:
    """A central site asking for risk-set sums (or Efron's tied-event sums) on every day would get
    single patients' covariates."""
    data = make_stroke(16, 300)
    req = request("cox_regression", x=("age", "sex"), ties=ties)
    alg = get_algorithm("cox_regression")
    released = _release("cox_regression", data, req, tab=3)
    assert all(v == 0 or v >= 3 for v in released["events"] + released["censored"])
    start = transport(alg.global_step(0, [released], req, STROKE, None).state)
    # the start round (ADR 0055 amendment): rows, level counts and moments, no bins
    started = _release("cox_regression", data, req, tab=3, round_no=1, state=start)
    assert set(started) == {"n", "level_counts", "group_n", "moments"}
    assert not {"moments", "level_counts", "group_n", "level_cells", "cell_n"} & set(released)
    honest = alg.global_step(1, [started], req, STROKE, start).state
    # the per-bin sums, sealed to the participating nodes after the controls saw them (ADR 0046)
    rounds = _release("cox_regression", data, req, tab=3, round_no=2, state=honest)["sealed"]
    assert unpack(rounds["s0"]).shape == (len(honest["event_bins"]),)
    # Efron's sums cover the node's events per event bin, a count the controls saw: 0 or >= 3
    assert ("e0" in rounds) == (ties == "efron")
    if ties == "efron":
        assert unpack(rounds["e0"]).shape == (len(honest["event_bins"]),)
        assert np.all((unpack(rounds["e0"]) > 0) == (unpack(rounds["events"]) >= 3))
        assert np.all((unpack(rounds["events"]) == 0) | (unpack(rounds["events"]) >= 3))
    grid_points = len(released["events"]) and (released["ends"][-1] + 1)
    every_day = dict(honest, ends=list(range(grid_points)),
                     event_bins=list(range(grid_points)))
    with pytest.raises(DisclosureError) as info:
        _release("cox_regression", data, req, tab=3, round_no=2, state=every_day)
    assert info.value.control == "nfilter_tab"


@pytest.mark.parametrize("algorithm", ["kaplan_meier", "cox_regression"])
@pytest.mark.parametrize("parameters, x, y, message", [
    pytest.param({"event_level": "maybe"}, ("sex",), ("followup_days", "death_90d"), "not a category",
                 id="event-level"),
    pytest.param({"event_level": "yes"}, ("sex",), ("death_90d", "followup_days"), "must be numerical",
                 id="y-swapped"),
    pytest.param({"event_level": "yes"}, ("sex",), ("followup_days",), "time variable, event variable",
                 id="one-y"),
    pytest.param({"event_level": "yes", "bin_width": 0.01}, ("sex",), ("followup_days", "death_90d"),
                 "grid points", id="grid-too-long"),
    pytest.param({}, ("sex",), ("followup_days", "death_90d"), "event_level", id="no-event-level"),
])
def test_bad_requests_are_clear_request_errors(algorithm, parameters, x, y, message) -> None:
    from mipflow.algorithms import AnalysisRequest

    req = AnalysisRequest(data_model=STROKE.key, datasets=("hospital_a",), x=x, y=y, parameters=parameters)
    with pytest.raises(RequestError, match=message):
        get_algorithm(algorithm).validate(req, STROKE)


def test_cox_ties_must_be_breslow_or_efron() -> None:
    from mipflow.algorithms import AnalysisRequest

    req = AnalysisRequest(data_model=STROKE.key, datasets=("hospital_a",), x=("sex",),
                          y=("followup_days", "death_90d"), parameters={"event_level": "yes", "ties": "exact"})
    with pytest.raises(RequestError, match="ties"):
        get_algorithm("cox_regression").validate(req, STROKE)


def test_efron_needs_every_node_to_send_tied_event_sums() -> None:
    """A node that answers an Efron round without E0..E2 (an older node) is a clear error, never a
    silent Breslow fit: the sealed sums do not pool, and pooled sums without them do not score."""
    from mipflow.algorithms.sealed import local_state

    data = make_stroke(18, 300)
    req = request("cox_regression", x=("age", "sex"), ties="efron")
    alg = get_algorithm("cox_regression")
    start = transport(alg.global_step(0, [_release("cox_regression", data, req)], req, STROKE, None).state)
    started = _release("cox_regression", data, req, round_no=1, state=start)
    state = transport(alg.global_step(1, [started], req, STROKE, start).state)
    answer = _release("cox_regression", data, req, round_no=2, state=state)
    scoring = transport(alg.global_step(2, [answer], req, STROKE, state).state)
    score = _release("cox_regression", data, req, round_no=3, state=local_state(alg, scoring, [answer]))
    assert alg.global_step(3, [score], req, STROKE, scoring).state["iteration"] == 1
    old = {**answer, "sealed": {k: v for k, v in answer["sealed"].items() if k not in ("e0", "e1", "e2")}}
    with pytest.raises(RequestError, match="e0, e1, e2 in some only"):
        local_state(alg, scoring, [answer, old])
    with pytest.raises(RequestError, match="efron"):
        _release("cox_regression", data, req, round_no=3, state=local_state(alg, scoring, [old]))


def test_times_after_the_end_of_follow_up_are_censored_there() -> None:
    # issue 14.2: refusing rows followed beyond max_time made the refusal an oracle of the
    # longest follow-up; they are censored at max_time instead, and the curve equals the pooled
    # one of the rows censored there
    data = make_stroke(17, 60)
    assert (data["followup_days"] > 100).any() and ((data["followup_days"] > 100) & (data["death_90d"] == "yes")).any()
    req = request("kaplan_meier", max_time=100.0)
    result = run_in_process(get_algorithm("kaplan_meier"), [data], req, STROKE)
    censored = data.copy()
    beyond = censored["followup_days"] > 100
    censored.loc[beyond, "followup_days"] = 100.0
    censored.loc[beyond, "death_90d"] = "no"
    check_km(result, censored.dropna(subset=["followup_days", "death_90d"]), grouped=False)
    assert result["curves"][0]["timeline"][-1] <= 100.0


@pytest.mark.parametrize("algorithm", ["kaplan_meier", "cox_regression"])
@pytest.mark.parametrize("max_time", [3651.0, 1e9, -1.0])
def test_max_time_outside_the_declared_range_is_a_request_error(algorithm, max_time) -> None:
    # issue 14.4: the end of the grid is checked against the data model's declared range, never the rows
    from mipflow.algorithms import AnalysisRequest

    req = AnalysisRequest(data_model=STROKE.key, datasets=("hospital_a",), x=("sex",),
                          y=("followup_days", "death_90d"), parameters={"event_level": "yes", "max_time": max_time})
    with pytest.raises(RequestError, match="max_time must lie within the declared range") as info:
        get_algorithm(algorithm).validate(req, STROKE)
    assert str(int(max_time)) not in str(info.value) and "3650" not in str(info.value)


# --------------------------------------------------------------------------- max_time (issue 14)


def _cut_by_hand(release: dict, last: int) -> dict:
    """What a release with max_time must be, from the release without it alone: each group's merged
    bins up to its last bin end at or before grid index ``last``, the later bins' counts censored at
    that end (written out here, independently of ``survival.truncate_bins``)."""
    groups = []
    for group in release["groups"]:
        ends = [e for e in group["ends"] if e <= last]  # a prefix: the ends ascend
        k = len(ends)
        events, censored = list(group["events"][:k]), list(group["censored"][:k])
        if k:
            censored[-1] += sum(group["events"][k:]) + sum(group["censored"][k:])
        groups.append({**group, "ends": ends, "events": events, "censored": censored})
    return {"group_n": release["group_n"], "groups": groups}


def _release_or_refusal(frame: pd.DataFrame, req, tab: int):
    try:
        return _release("kaplan_meier", frame, req, tab=tab)
    except DisclosureError as exc:
        return exc.control


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(12, 240), WIDTHS, TABS, st.booleans(),
       st.lists(st.floats(0.0, 3650.0), min_size=1, max_size=6))
def test_a_release_with_max_time_is_a_function_of_the_release_without_it(seed, n, width, tab, grouped,
                                                                          drawn) -> None:
    """Issue 14: the merge never sees max_time.  For random data and many max_time values (consecutive
    grid points near the start, where events are few, and drawn ones), the node's release with
    max_time equals the release without it cut by hand at max_time rounded up to the grid, every
    released count is 0 or >= nfilter_tab, and it is refused exactly when the release without it is."""
    data = make_stroke(seed, n, real_times=bool(seed % 2))
    x = ("sex",) if grouped else ()
    without = _release_or_refusal(data, request("kaplan_meier", x=x, bin_width=width), tab)
    sweep = [width * k for k in range(12)] + [width * k + width / 3 for k in range(3)] + drawn
    cut_somewhere = False
    for max_time in sweep:
        if max_time > 3650.0:
            continue
        req = request("kaplan_meier", x=x, bin_width=width, max_time=max_time)
        released = _release_or_refusal(data, req, tab)
        if isinstance(without, str):
            assert released == without  # the same refusal, whatever max_time
            continue
        assert not isinstance(released, str), released
        # max_time rounded up to the request's grid (origin 0), as a fine index: followup_days is an integer
        # variable declared over 0..3650, so its fine grid is every day and the index of day t is t
        last = min(math.floor(width * math.ceil(max_time / width - 1e-12) + 1e-9), 3650)
        expected = _cut_by_hand(without, last)
        assert released["group_n"] == expected["group_n"]
        assert [{k: g[k] for k in ("level", "ends", "events", "censored")} for g in released["groups"]] == \
            [{k: g[k] for k in ("level", "ends", "events", "censored")} for g in expected["groups"]]
        assert all(v == 0 or v >= tab for v in _cells(released))
        assert released["group_counts"] == _cells(released)
        assert "cell_n" not in released and "follow_up_end" not in released  # checked at the node, not sent
        cut_somewhere |= released["groups"] != without["groups"]
    event(f"cut={cut_somewhere}, refused={isinstance(without, str)}")


# --------------------------------------------------------------------------- bin_width (issue 14.4)


def _days(width: float, up_to: float = 3650.0) -> list[int]:
    """The request's grid ``k * width`` (up to the first point at or past ``up_to``) as fine indices,
    written out for followup_days: an integer variable declared over 0..3650, whose fine grid is every
    day (index = day), each point moved down to a whole day, a point at or past 3650 to 3650."""
    last = math.ceil(up_to / width - 1e-12)
    return sorted({min(math.floor(k * width + 1e-9), 3650) for k in range(last + 1)})


def _select_by_hand(canonical: tuple, width: float, max_time: float | None) -> tuple[list, list, list]:
    """What a release must be, from the canonical release ``(ends, events, censored, levels)`` and the
    request alone: at the request's level (the largest power of two of days at most ``width``), for each
    point of its grid the last canonical end of that level or above at or before it, and the last end;
    counts summed; with ``max_time`` cut at the last end at or before it rounded up to the grid, the
    later counts censored there (independently of ``survival.coarsen_to`` and ``truncate_bins``)."""
    ends, events, censored, levels = canonical
    level = 1
    while 2 * level <= width + 1e-9:
        level *= 2
    eligible = [e for e, b in zip(ends, levels) if b >= level]
    keep = {ends[-1]} | {max(e for e in eligible if e <= p) for p in _days(width) if any(e <= p for e in eligible)}
    out_ends, out_events, out_censored = sorted(keep), [], []
    start = 0
    for end in out_ends:
        inside = [k for k in range(start, len(ends)) if ends[k] <= end]
        out_events.append(sum(events[k] for k in inside))
        out_censored.append(sum(censored[k] for k in inside))
        start = inside[-1] + 1 if inside else start
    if max_time is not None:
        last = _days(width, max_time)[-1]
        k = len([e for e in out_ends if e <= last])
        if k == 0:
            return [], [], []
        tail = sum(out_events[k:]) + sum(out_censored[k:])
        out_ends, out_events, out_censored = out_ends[:k], out_events[:k], out_censored[:k]
        out_censored[-1] += tail
    return out_ends, out_events, out_censored


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(12, 240), TABS, st.booleans(), st.sampled_from(["kaplan_meier", "cox_regression"]),
       st.lists(st.floats(0.3, 400.0), min_size=1, max_size=4),
       st.lists(st.one_of(st.none(), st.floats(0.0, 3650.0)), min_size=1, max_size=3))
def test_a_release_for_any_bin_width_is_a_function_of_the_canonical_release(seed, n, tab, grouped, algorithm,
                                                                            drawn, ends_of_follow_up) -> None:
    """Issue 14.4: the node merges on the data model's fine grid only (the canonical release,
    ``survival.coarsen_groups`` on its fine counts: the cohort's shared bins), and a request's ``bin_width`` and ``max_time`` only
    coarsen and cut it.  For random data, widths (common ones, close pairs such as 1 and 1.001, drawn
    ones) and ends of follow-up, each released group equals the selection written out by hand from the
    canonical release, every released end is a canonical end (so the cumulative counts of any two
    releases at their ends are canonical ones, and their differences sums of canonical cells), and
    every count is 0 or >= nfilter_tab; a request is refused exactly when the canonical release is."""
    from mipflow.algorithms.survival import coarsen_groups

    data = make_stroke(seed, n, real_times=bool(seed % 2))
    x = ("sex",) if grouped and algorithm == "kaplan_meier" else ()
    extra = {"x": ("age",)} if algorithm == "cox_regression" else {"x": x}
    alg = get_algorithm(algorithm)
    base = request(algorithm, bin_width=1.0, **extra)
    fine = alg.local_step(0, prepare_local_data(alg, data, base), base, STROKE, None)
    groups = fine["groups"] if algorithm == "kaplan_meier" else [fine]
    # Cox regression's bins hold min_row_count (10) events and censorings (ADR 0046), merged further from
    # Kaplan-Meier's nfilter_tab bins; Kaplan-Meier's nfilter_tab
    bins = max(tab, NodeSettings().min_row_count) if algorithm == "cox_regression" else None
    canonical = [(g["ends"], g["events"], g["censored"], g["levels"]) for g in coarsen_groups(groups, tab, bins)]
    for ends, events, censored, levels in canonical:
        assert ends[-1] == 3650 and ends == sorted(set(ends))
        assert all(e % b == 0 or e == 3650 for e, b in zip(ends, levels))  # level-B ends on multiples of B
    small = any(0 < v < tab for c in canonical for v in (*c[1], *c[2]))
    for width in [1.0, 1.001, 7.0, 10.0, 30.0, 30.5, 365.0, *drawn]:
        for max_time in ends_of_follow_up:
            req = request(algorithm, bin_width=width, max_time=max_time, **extra)
            try:
                released = _release(algorithm, data, req, tab=tab)
            except DisclosureError as exc:
                assert small and exc.control == "nfilter_tab"  # refused exactly when the canonical release is
                continue
            except RequestError as exc:  # cox: too few rows for the model (nfilter_glm is a DisclosureError)
                raise AssertionError(exc)
            assert not small
            got = released["groups"] if algorithm == "kaplan_meier" else [released]
            for group, whole in zip(got, canonical):
                expected = _select_by_hand(whole, width, max_time)
                assert (group["ends"], group["events"], group["censored"]) == expected
                assert set(group["ends"]) <= set(whole[0])
                assert all(v == 0 or v >= tab for v in (*group["events"], *group["censored"]))
            assert "cell_n" not in released and "request_points" not in released


@SETTINGS
@given(survival_split(), WIDTHS, TABS, st.booleans(), st.floats(0.0, 3650.0))
def test_kaplan_meier_with_max_time_equals_pooled_censored_at_the_end_used(nodes, width, tab, grouped,
                                                                           max_time) -> None:
    """Through every node's controls: the result equals statsmodels and lifelines on the pooled rows
    censored at the end of follow-up the result reports (a bin end every node released at or before
    max_time rounded up to the grid), with the result's binning."""
    lifelines_reference.lifelines()
    req = request("kaplan_meier", x=("sex",) if grouped else (), bin_width=width, max_time=max_time)
    try:
        result, used, _ = run_with_controls("kaplan_meier", nodes, req, NodeSettings(min_row_count=1, nfilter_tab=tab))
    except RequestError as exc:  # a node's first merged bin ends after max_time
        assert "max_time lies before the first time bin end" in str(exc)
        event("first bin after max_time")
        return
    assume(result is not None)
    binning = result["binning"]
    end = binning["end_of_follow_up"]
    assert binning["max_time"] == max_time
    # at or before max_time rounded up to the request's grid, on the fine grid (whole days)
    assert end <= width * math.ceil(max_time / width - 1e-12) + 1e-9 and float(end).is_integer()
    # the request's grid points up to the end, each moved down to a whole day
    assert binning["grid_points"] == len({min(math.floor(k * width + 1e-9), 3650) for k in range(4000)
                                          if min(math.floor(k * width + 1e-9), 3650) <= end})
    pooled = complete(pd.concat([nodes[i] for i in used], ignore_index=True), KM_COLUMNS)
    beyond = pooled["followup_days"] > end
    pooled.loc[beyond, "followup_days"] = end
    pooled.loc[beyond, "death_90d"] = "no"
    defined = True
    if grouped and pooled["sex"].nunique() >= 2:
        try:  # statsmodels' reference is undefined without events among two groups at risk (e.g. an early end)
            survdiff(round_up(pooled["followup_days"].to_numpy(), result["logrank"]["timeline"]), _status(pooled),
                     pooled["sex"].to_numpy())
        except np.linalg.LinAlgError:
            defined = False
            assert np.isnan(result["logrank"]["chi2"] if result["logrank"]["chi2"] is not None else np.nan)
    check_km(result, pooled, grouped, logrank=defined)
    check_km_lifelines(result, pooled, grouped, logrank=defined)
    for curve in result["curves"]:
        assert max(curve["timeline"]) <= end and all(v >= tab for v in curve["at_risk"])
    event(f"moved={'moved down' in binning['note']}")


def test_an_honest_max_time_on_the_grid_keeps_the_curve_up_to_it() -> None:
    """Enough rows that nothing is merged near day 100: max_time 100 cuts there exactly, the note
    says rows followed longer are censored there, and the curve is the one without max_time up to
    day 100.  (bin_width 4 days: a power of two of fine steps, so the request's grid points are the
    canonical bins' ends of its level.)"""
    data = make_stroke(21, 2000, scale_days=150)
    alg = get_algorithm("kaplan_meier")
    cut = alg.global_step(0, [_release("kaplan_meier", data, request("kaplan_meier", bin_width=4.0,
                                                                     max_time=100.0))],
                          request("kaplan_meier", bin_width=4.0, max_time=100.0), STROKE, None).result
    full = alg.global_step(0, [_release("kaplan_meier", data, request("kaplan_meier", bin_width=4.0))],
                           request("kaplan_meier", bin_width=4.0), STROKE, None).result
    assert cut["binning"]["end_of_follow_up"] == 100.0 and "max_time rounded up" in cut["binning"]["note"]
    assert "end_of_follow_up" not in full["binning"]
    (c,), (f,) = cut["curves"], full["curves"]
    assert c["timeline"] == [t for t in f["timeline"] if t <= 100.0] and c["timeline"][-1] == 100.0
    k = len(c["timeline"])
    assert c["survival"] == f["survival"][:k] and c["events"] == f["events"][:k]
    assert c["at_risk"] == f["at_risk"][:k]


def test_kaplan_meier_refuses_a_time_variable_without_a_declared_max_value_by_the_request() -> None:
    """Without a declared maxValue the grid of an exact release would follow max_time: refused before
    any row is read, naming what to declare, with or without max_time."""
    import dataclasses

    from mipflow.algorithms import AnalysisRequest

    model = dataclasses.replace(STROKE, variables={
        **STROKE.variables,
        "followup_days": dataclasses.replace(STROKE.variable("followup_days"), max_value=None)})
    for parameters in ({"event_level": "yes", "max_time": 100.0}, {"event_level": "yes"}):
        req = AnalysisRequest(data_model=model.key, datasets=("hospital_a",), x=(),
                              y=("followup_days", "death_90d"), parameters=parameters)
        with pytest.raises(RequestError, match="declares no maxValue") as info:
            get_algorithm("kaplan_meier").validate(req, model)
        assert "maxValue" in str(info.value) and "100" not in str(info.value)
