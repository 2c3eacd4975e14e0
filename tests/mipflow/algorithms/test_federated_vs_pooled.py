"""Federated == pooled: every algorithm, random data, random splits over 3 nodes.

Hypothesis draws the data (seeded), the assignment of rows to three nodes and
whether one node is left empty; :func:`run_in_process` must reproduce
statsmodels / scipy / numpy on the concatenated rows to a relative error of
1e-9 (:data:`EXACT_RTOL`).  Logistic regression is iterative: both sides stop
when no coefficient moves by more than ``tol = 1e-8`` (statsmodels' Newton
rule), after which Newton's quadratic convergence leaves both at the same
optimum far below that; it is held to the same 1e-9.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.multicomp import pairwise_tukeyhsd

from mipflow.algorithms import AnalysisRequest, get_algorithm, run_in_process
from mipflow.exceptions import RequestError
from tests.mipflow.algorithms.helpers import EXACT_RTOL, POOLED_SUMMARY, assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

@st.composite
def split_data(draw, min_rows: int = 40, max_rows: int = 160):
    """(pooled frame, three node frames): random rows-to-node assignment, maybe an empty node."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(min_rows, max_rows))
    data = make_data(seed, n)
    assignment = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    if draw(st.booleans()):
        assignment[assignment == 2] = draw(st.integers(0, 1))  # node 2 holds nothing
    nodes = [data[assignment == k].reset_index(drop=True) for k in range(3)]
    return data, nodes


#: Examples per property (raise with MIPFLOW_HYPOTHESIS_EXAMPLES for a deeper search).
SETTINGS = settings(max_examples=int(os.environ.get("MIPFLOW_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def federated(name: str, nodes, req: AnalysisRequest) -> dict:
    return run_in_process(get_algorithm(name), nodes, req, MODEL)


def check(algorithm: str, what: str, actual, expected, *, floor: float = 1e-12,
          rel: float = EXACT_RTOL) -> None:
    worst = assert_rel_close(actual, expected, rel=rel, floor=floor, what=f"{algorithm}.{what}")
    POOLED_SUMMARY.record(algorithm, worst, what)


def finite(values) -> list[float]:
    """Result numbers as floats ("Infinity" strings included)."""
    return [float(str(v).replace("Infinity", "inf")) for v in np.atleast_1d(values)]


# --------------------------------------------------------------------------- regressions


def centred_ols(pooled: pd.DataFrame, formula: str, numerical: tuple[str, ...]):
    """statsmodels' OLS of ``formula`` on ``pooled`` with the ``numerical`` covariates centred.

    The reference for the uncentred model's statistics, computed from a well-conditioned design.
    ``x2`` (mean 1000, sd 0.5) makes the uncentred design ill-conditioned (cond(X) ~ 2e6), and
    statsmodels' pinv solve of it loses digits: on the falsifying example of
    ``tests/mipflow/secagg/test_federated_vs_pooled.py::...[linear_regression]`` (make_data(3357, 123),
    106 complete rows) its ``stage[3]`` coefficient (-7.44e-5, 3e-4 standard errors) is 2.67e-9 from
    the exact rational least-squares solution (pinv's QR 2.46e-9), while this reference is 2.1e-11 from
    it (and ours 7.6e-13).  Centring changes neither the slopes, their standard errors, t statistics,
    p-values and intervals nor the residuals (same column space); the uncentred intercept
    ``b0 - sum(shift_j * b_j)`` and its standard error, t, p and interval are statsmodels' t-test of
    that contrast.

    Returns ``(fit, params, bse, tvalues, pvalues, ci)``: the centred fit (for the residual statistics
    and names) and numpy arrays for the uncentred model.
    """
    shifted = pooled.copy()
    shifts = {}
    for code in numerical:
        values = shifted[code].to_numpy(float)
        shifts[code] = math.fsum(values) / len(values)
        shifted[code] = values - shifts[code]
    fit = smf.ols(formula, shifted).fit()
    contrast = np.zeros(len(fit.params))
    contrast[0] = 1.0
    for code, shift in shifts.items():
        contrast[fit.params.index.get_loc(code)] = -shift
    intercept = fit.t_test(contrast)
    params, bse = fit.params.to_numpy().copy(), fit.bse.to_numpy().copy()
    tvalues, pvalues = fit.tvalues.to_numpy().copy(), fit.pvalues.to_numpy().copy()
    ci = fit.conf_int(alpha=0.05).to_numpy().copy()
    params[0], bse[0] = float(np.squeeze(intercept.effect)), float(np.squeeze(intercept.sd))
    tvalues[0], pvalues[0] = float(np.squeeze(intercept.tvalue)), float(np.squeeze(intercept.pvalue))
    ci[0] = np.squeeze(intercept.conf_int(alpha=0.05))
    return fit, params, bse, tvalues, pvalues, ci


@SETTINGS
@given(split_data())
def test_linear_regression(split) -> None:
    data, nodes = split
    req = request(x=("grp", "x1", "x2", "age", "stage"), y=("y",))
    ours = federated("linear_regression", nodes, req)
    pooled = data.dropna(subset=["y", "grp", "x1", "x2", "age", "stage"]).copy()
    pooled["stage"] = pooled["stage"].astype(int).astype(str)
    # statsmodels on the centred design: the uncentred one is ill-conditioned (see centred_ols)
    fit, params, bse, tvalues, pvalues, ci = centred_ols(pooled, "y ~ C(grp) + C(stage) + x1 + x2 + age",
                                                         ("x1", "x2", "age"))
    names = ["Intercept"] + [
        name.replace("C(grp)[T.", "grp[").replace("C(stage)[T.", "stage[")
        for name in fit.params.index[1:]
    ]
    assert ours["indep_vars"] == names
    assert ours["n_obs"] == int(fit.nobs) and ours["df_resid"] == fit.df_resid
    # stage has no effect: its coefficients (and t, CI ends) can be ~0, where
    # relative errors mean nothing; "~0" is below 1e-4 standard errors.
    near_zero = 1e-4 * float(bse.min())
    check("linear_regression", "coefficients", ours["coefficients"], params, floor=near_zero)
    check("linear_regression", "std_err", ours["std_err"], bse)
    check("linear_regression", "t_stats", ours["t_stats"], tvalues, floor=1e-4)
    check("linear_regression", "pvalues", ours["pvalues"], pvalues)
    check("linear_regression", "lower_ci", ours["lower_ci"], ci[:, 0], floor=near_zero)
    check("linear_regression", "upper_ci", ours["upper_ci"], ci[:, 1], floor=near_zero)
    for ours_key, value in (("rse", math.sqrt(fit.scale)), ("r_squared", fit.rsquared),
                            ("r_squared_adjusted", fit.rsquared_adj), ("f_stat", fit.fvalue),
                            ("f_pvalue", fit.f_pvalue)):
        check("linear_regression", ours_key, ours[ours_key], value)


@SETTINGS
@given(split_data(min_rows=60, max_rows=200))
def test_logistic_regression(split) -> None:
    data, nodes = split
    req = request(x=("grp", "sex", "x1"), y=("outcome",), positive_class="yes")
    pooled = data.dropna(subset=["outcome", "grp", "sex", "x1"]).copy()
    pooled["is_yes"] = (pooled["outcome"] == "yes").astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels warns where it does not converge
        try:
            fit = smf.logit("is_yes ~ C(grp) + C(sex) + x1", pooled).fit(method="newton", tol=1e-8, disp=False)
        except np.linalg.LinAlgError:
            fit = None  # the pooled Hessian is singular on the way (complete separation)
    if fit is None or not fit.mle_retvals["converged"]:
        # (quasi-)separation, e.g. a group without positives: a clean refusal
        with pytest.raises(RequestError, match="converge|separated"):
            federated("logistic_regression", nodes, req)
        return
    ours = federated("logistic_regression", nodes, req)
    names = ["Intercept"] + [
        name.replace("C(grp)[T.", "grp[").replace("C(sex)[T.", "sex[") for name in fit.params.index[1:]
    ]
    assert ours["indep_vars"] == names
    assert ours["n_obs"] == int(fit.nobs) and ours["df_model"] == fit.df_model
    check("logistic_regression", "coefficients", ours["coefficients"], fit.params.to_numpy())
    check("logistic_regression", "stderr", ours["stderr"], fit.bse.to_numpy())
    check("logistic_regression", "z_scores", ours["z_scores"], fit.tvalues.to_numpy())
    check("logistic_regression", "pvalues", ours["pvalues"], fit.pvalues.to_numpy())
    ci = fit.conf_int(alpha=0.05).to_numpy()
    check("logistic_regression", "lower_ci", ours["lower_ci"], ci[:, 0])
    check("logistic_regression", "upper_ci", ours["upper_ci"], ci[:, 1])
    # statsmodels fits the null model numerically (llnull is off by up to ~2e-10);
    # the intercept-only log-likelihood has a closed form, used for ll0 and the R2s.
    n, k = len(pooled), pooled["is_yes"].sum()
    ll0 = k * math.log(k / n) + (n - k) * math.log1p(-k / n)
    check("logistic_regression (ll0 vs statsmodels' numerical llnull)", "ll0", ours["ll0"], fit.llnull,
          rel=1e-8)
    for ours_key, value in (("ll", fit.llf), ("ll0", ll0), ("aic", fit.aic), ("bic", fit.bic),
                            ("r_squared_mcf", 1 - fit.llf / ll0),
                            ("r_squared_cs", -math.expm1(2 * (ll0 - fit.llf) / n))):
        check("logistic_regression", ours_key, ours[ours_key], value)


# --------------------------------------------------------------------------- t-tests


@SETTINGS
@given(split_data(min_rows=5), st.sampled_from(["two-sided", "less", "greater"]),
       st.floats(0.01, 0.5), st.floats(-10, 10))
def test_ttest_onesample(split, alternative, alpha, mu) -> None:
    data, nodes = split
    req = request(y=("x2",), alt_hypothesis=alternative, alpha=alpha, mu=mu)
    ours = federated("ttest_onesample", nodes, req)
    values = data["x2"].dropna().to_numpy()
    res = stats.ttest_1samp(values, mu, alternative=alternative)
    ci = res.confidence_interval(1 - alpha)
    assert ours["n_obs"] == len(values) and ours["df"] == res.df
    check("ttest_onesample", "t_value", ours["t_value"], res.statistic)
    check("ttest_onesample", "p_value", ours["p_value"], res.pvalue, floor=1e-300)
    check("ttest_onesample", "mean_diff", ours["mean_diff"], values.mean())
    check("ttest_onesample", "se_diff", ours["se_diff"], values.std(ddof=1) / math.sqrt(len(values)))
    check("ttest_onesample", "ci", finite([ours["ci_lower"], ours["ci_upper"]]), [ci.low, ci.high])
    check("ttest_onesample", "cohens_d", ours["cohens_d"], (values.mean() - mu) / values.std(ddof=1))


@SETTINGS
@given(split_data(min_rows=5), st.sampled_from(["two-sided", "less", "greater"]), st.floats(0.01, 0.5))
def test_ttest_paired(split, alternative, alpha) -> None:
    data, nodes = split
    req = request(x=("x1",), y=("y",), alt_hypothesis=alternative, alpha=alpha)
    ours = federated("ttest_paired", nodes, req)
    pooled = data.dropna(subset=["x1", "y"])
    x, y = pooled["x1"].to_numpy(), pooled["y"].to_numpy()
    res = stats.ttest_rel(x, y, alternative=alternative)  # x - y, as Exareme2
    ci = res.confidence_interval(1 - alpha)
    diff = x - y
    assert ours["n_obs"] == len(x) and ours["df"] == res.df
    check("ttest_paired", "statistic", ours["statistic"], res.statistic)
    check("ttest_paired", "p_value", ours["p_value"], res.pvalue, floor=1e-300)
    check("ttest_paired", "mean_diff", ours["mean_diff"], diff.mean())
    check("ttest_paired", "se_difference", ours["se_difference"], diff.std(ddof=1) / math.sqrt(len(x)))
    check("ttest_paired", "ci", finite([ours["ci_lower"], ours["ci_upper"]]), [ci.low, ci.high])
    check("ttest_paired", "cohens_d", ours["cohens_d"],
          diff.mean() / math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2))


@SETTINGS
@given(split_data(min_rows=20), st.sampled_from(["two-sided", "less", "greater"]), st.floats(0.01, 0.5))
def test_ttest_independent(split, alternative, alpha) -> None:
    data, nodes = split
    req = request(x=("grp",), y=("y",), alt_hypothesis=alternative, alpha=alpha, groupA="b", groupB="a")
    pooled = data.dropna(subset=["grp", "y"])
    a = pooled.loc[pooled["grp"] == "b", "y"].to_numpy()
    b = pooled.loc[pooled["grp"] == "a", "y"].to_numpy()
    if min(len(a), len(b)) < 2:
        with pytest.raises(RequestError, match="at least 2"):
            federated("ttest_independent", nodes, req)
        return
    ours = federated("ttest_independent", nodes, req)
    res = stats.ttest_ind(a, b, equal_var=False, alternative=alternative)
    ci = res.confidence_interval(1 - alpha)
    pooled_sd = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    assert ours["df"] == len(a) + len(b) - 2
    check("ttest_independent", "statistic", ours["statistic"], res.statistic)
    check("ttest_independent", "p_value", ours["p_value"], res.pvalue, floor=1e-300)
    check("ttest_independent", "df_welch", ours["df_welch"], res.df)
    check("ttest_independent", "mean_diff", ours["mean_diff"], a.mean() - b.mean())
    check("ttest_independent", "se_difference", ours["se_difference"],
          math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
    check("ttest_independent", "ci", finite([ours["ci_lower"], ours["ci_upper"]]), [ci.low, ci.high])
    check("ttest_independent", "cohens_d", ours["cohens_d"], (a.mean() - b.mean()) / pooled_sd)


# --------------------------------------------------------------------------- ANOVA, correlation


@SETTINGS
@given(split_data(min_rows=20))
def test_anova_oneway(split) -> None:
    data, nodes = split
    ours = federated("anova_oneway", nodes, request(x=("grp",), y=("y",)))
    pooled = data.dropna(subset=["grp", "y"])
    table = sm.stats.anova_lm(smf.ols("y ~ C(grp)", pooled).fit())
    assert ours["n_obs"] == len(pooled)
    check("anova_oneway", "ss_explained", ours["ss_explained"], table["sum_sq"].iloc[0])
    check("anova_oneway", "ss_residual", ours["ss_residual"], table["sum_sq"].iloc[1])
    check("anova_oneway", "df", [ours["df_explained"], ours["df_residual"]], table["df"].to_numpy())
    check("anova_oneway", "f_stat", ours["f_stat"], table["F"].iloc[0])
    check("anova_oneway", "p_value", ours["p_value"], table["PR(>F)"].iloc[0], floor=1e-300)
    tukey = pairwise_tukeyhsd(pooled["y"].to_numpy(), pooled["grp"].to_numpy())
    groups = list(tukey.groupsunique)
    i_idx, j_idx = tukey._multicomp.pairindices
    pairs = [(groups[i], groups[j]) for i, j in zip(i_idx, j_idx)]
    assert [(t["groupA"], t["groupB"]) for t in ours["tuckey_test"]] == pairs
    check("anova_oneway", "tukey.diff", [t["diff"] for t in ours["tuckey_test"]], -tukey.meandiffs)
    check("anova_oneway", "tukey.se", [t["se"] for t in ours["tuckey_test"]], tukey.std_pairs * math.sqrt(2))
    check("anova_oneway", "tukey.p", [t["p_tuckey"] for t in ours["tuckey_test"]], tukey.pvalues,
          floor=1e-300)


@SETTINGS
@given(split_data(min_rows=10), st.floats(0.01, 0.99), st.booleans())
def test_pearson_correlation(split, alpha, with_x) -> None:
    data, nodes = split
    ys, xs = ("y", "x1", "x2"), (("age", "x1") if with_x else ())
    ours = federated("pearson_correlation", nodes, request(x=xs, y=ys, alpha=alpha))
    pooled = data.dropna(subset=list(dict.fromkeys(ys + xs)))
    rows = list(xs) or list(ys)
    assert ours["n_obs"] == len(pooled) and ours["correlations"]["variables"] == rows
    for yv in ys:
        results = [stats.pearsonr(pooled[yv], pooled[xv]) for xv in rows]
        off = [i for i, xv in enumerate(rows) if xv != yv]  # r == 1 on the diagonal: p, CI degenerate
        r = [res.statistic for res in results]
        # r and the interval ends can be ~0: absolute floor 1e-6 there
        check("pearson_correlation", "r", ours["correlations"][yv], r, floor=1e-6)
        cis = [results[i].confidence_interval(1 - alpha) for i in off]
        check("pearson_correlation", "p", [ours["p-values"][yv][i] for i in off],
              [results[i].pvalue for i in off], floor=1e-300)
        check("pearson_correlation", "ci_low", [ours["low_confidence_intervals"][yv][i] for i in off],
              [c.low for c in cis], floor=1e-6)
        check("pearson_correlation", "ci_high", [ours["high_confidence_intervals"][yv][i] for i in off],
              [c.high for c in cis], floor=1e-6)


# --------------------------------------------------------------------------- descriptive, histograms


@SETTINGS
@given(split_data(min_rows=10))
def test_descriptive_stats(split) -> None:
    data, nodes = split
    ours = federated("descriptive_stats", nodes, request(x=("grp",), y=("y", "x2", "dataset")))
    variables = ["grp", "y", "x2"]
    complete = data.dropna(subset=variables)
    for kind, frame in (("variable_based", data), ("model_based", complete)):
        records = {(r["variable"], r["dataset"]): r["data"] for r in ours[kind]}
        assert len(records) == len(variables) * 4
        for ds in ("d0", "d1", "d2", "all datasets"):
            for var in variables:
                if ds == "all datasets":
                    # Exareme2's rule: only datasets where the variable has data count
                    has_data = frame.groupby("dataset")[var].count()
                    rows = frame[frame["dataset"].isin(has_data[has_data > 0].index)]
                else:
                    rows = frame[frame["dataset"] == ds]
                got = records[(var, ds)]
                values = rows[var].dropna()
                if len(values) == 0:
                    assert got is None
                    continue
                assert (got["num_dtps"], got["num_total"]) == (len(values), len(rows))
                if var == "grp":
                    counts = values.value_counts()
                    assert got["counts"] == {k: int(counts[k]) for k in ("c", "a", "b") if k in counts}
                else:
                    check("descriptive_stats", "mean", got["mean"], values.mean())
                    if len(values) > 1:
                        check("descriptive_stats", "std", got["std"], values.std(ddof=1))
                assert not {"min", "max", "q1", "q2", "q3"} & set(got)


@SETTINGS
@given(split_data(min_rows=5), st.integers(1, 30))
def test_multiple_histograms(split, bins) -> None:
    data, nodes = split
    ours = federated("multiple_histograms", nodes, request(x=("grp", "sex"), y=("x1",), bins=bins))
    pooled = data.dropna(subset=["x1", "grp", "sex"])
    counts, edges = np.histogram(pooled["x1"].to_numpy(), bins=bins)
    overall = ours["histogram"][0]
    assert overall["grouping_var"] is None
    assert overall["bins"] == edges.tolist()
    assert overall["counts"] == [int(c) if c else None for c in counts]
    expected_groups = [("grp", g) for g in ("c", "a", "b", "zz")] + [("sex", s) for s in ("M", "F")]
    assert [(h["grouping_var"], h["grouping_enum"]) for h in ours["histogram"][1:]] == expected_groups
    for h in ours["histogram"][1:]:
        sub = pooled[pooled[h["grouping_var"]] == h["grouping_enum"]]["x1"].to_numpy()
        sub_counts, _ = np.histogram(sub, bins=edges)
        assert h["counts"] == [int(c) if c else None for c in sub_counts]
    POOLED_SUMMARY.record("multiple_histograms", 0.0, "counts and edges identical")


@SETTINGS
@given(split_data(min_rows=5))
def test_multiple_histograms_nominal(split) -> None:
    data, nodes = split
    ours = federated("multiple_histograms", nodes, request(x=("sex",), y=("grp",)))
    pooled = data.dropna(subset=["grp", "sex"])
    overall = ours["histogram"][0]
    assert overall["bins"] == ["c", "a", "b", "zz"]
    counts = pooled["grp"].value_counts()
    assert overall["counts"] == [int(counts[k]) if k in counts else None for k in overall["bins"]]


@pytest.mark.parametrize("seed", range(5))
def test_logistic_regression_standard_errors_with_a_large_mean_covariate(seed) -> None:
    """x2 has mean 1000 and sd 0.5: inverting the uncentred Hessian (as
    statsmodels does) loses ~1e-9; mipflow centres the covariates.  Reference:
    standard errors from a QR factorisation of sqrt(W) X at statsmodels' fit."""
    import scipy.linalg

    data = make_data(seed, 150)
    nodes = [data.iloc[:50], data.iloc[50:51], data.iloc[51:]]
    ours = federated("logistic_regression", nodes,
                     request(x=("grp", "x2", "age"), y=("outcome",), positive_class="yes"))
    pooled = data.dropna(subset=["outcome", "grp", "x2", "age"]).copy()
    pooled["is_yes"] = (pooled["outcome"] == "yes").astype(float)
    model = smf.logit("is_yes ~ C(grp) + x2 + age", pooled)
    fit = model.fit(method="newton", tol=1e-8, disp=False)
    beta = fit.params.to_numpy()
    mu = 1.0 / (1.0 + np.exp(-model.exog @ beta))
    r = np.linalg.qr(np.sqrt(mu * (1 - mu))[:, None] * model.exog, mode="r")
    r_inv = scipy.linalg.solve_triangular(r, np.eye(len(beta)))
    check("logistic_regression", "coefficients (large mean)", ours["coefficients"], beta)
    check("logistic_regression", "stderr (large mean, vs QR)", ours["stderr"],
          np.sqrt(np.sum(r_inv**2, axis=1)))


# --------------------------------------------------------------------------- two-way ANOVA, PCA


def _anova_reference(pooled, sstype: int) -> dict[str, tuple[float, int, float, float]]:
    """term -> (sum_sq, df, F, p) of ``y ~ C(grp) * C(stage)`` on the pooled rows.

    With every cell present: statsmodels' ``anova_lm(typ=sstype)``.  With an
    empty cell anova_lm counts design columns (not rank) and reports aliased
    effects, so the table is built from statsmodels' nested OLS fits instead:
    sums of squares are differences of ``ssr``, df differences of ``df_model``
    (the rank), F against the full model's residual mean square.
    """
    full = smf.ols("y ~ C(grp) * C(stage)", pooled).fit()
    if (pd.crosstab(pooled["grp"], pooled["stage"]) > 0).all(axis=None):
        table = sm.stats.anova_lm(full, typ=sstype)
        rows = ("C(grp)", "C(stage)", "C(grp):C(stage)")
        return {term: (table.loc[row, "sum_sq"], int(table.loc[row, "df"]), table.loc[row, "F"],
                       table.loc[row, "PR(>F)"]) for term, row in zip(("grp", "stage", "grp:stage"), rows)}
    fits = {f: smf.ols(f"y ~ {f}", pooled).fit() for f in ("1", "C(grp)", "C(stage)", "C(grp) + C(stage)")}
    fits["full"] = full
    if sstype == 1:
        pairs = (("1", "C(grp)"), ("C(grp)", "C(grp) + C(stage)"), ("C(grp) + C(stage)", "full"))
    else:
        pairs = (("C(stage)", "C(grp) + C(stage)"), ("C(grp)", "C(grp) + C(stage)"), ("C(grp) + C(stage)", "full"))
    out = {}
    for term, (small, big) in zip(("grp", "stage", "grp:stage"), pairs):
        ss = fits[small].ssr - fits[big].ssr
        df = int(round(fits[big].df_model - fits[small].df_model))
        f = (ss / df) / full.scale if df else math.nan
        out[term] = (ss, df, f, stats.f.sf(f, df, full.df_resid) if df else math.nan)
    return out


@SETTINGS
@given(split_data(min_rows=40, max_rows=200), st.sampled_from([1, 2]))
def test_anova(split, sstype) -> None:
    """Two-way ANOVA; small samples leave some of the 3 x 3 cells empty (rank-deficient designs)."""
    data, nodes = split
    ours = federated("anova", nodes, request(x=("grp", "stage"), y=("y",), sstype=sstype))
    pooled = data.dropna(subset=["y", "grp", "stage"]).copy()
    pooled["stage"] = pooled["stage"].astype(int).astype(str)
    full = smf.ols("y ~ C(grp) * C(stage)", pooled).fit()
    assert ours["n_obs"] == len(pooled) and ours["sstype"] == sstype
    assert ours["df"]["Residuals"] == full.df_resid
    check("anova", "sum_sq[Residuals]", ours["sum_sq"]["Residuals"], full.ssr)
    scale = float(((pooled["y"] - pooled["y"].mean()) ** 2).sum())
    for term, (ss, df, f, p) in _anova_reference(pooled, sstype).items():
        assert ours["df"][term] == df, term
        if df == 0:  # the term adds nothing: no test
            assert ours["sum_sq"][term] == 0.0 and abs(ss) <= 1e-9 * scale, term
            assert ours["f_stat"][term] is None and ours["f_pvalue"][term] is None
            continue
        check("anova", f"sum_sq[{term}]", ours["sum_sq"][term], ss)
        check("anova", f"f_stat[{term}]", ours["f_stat"][term], f)
        check("anova", f"f_pvalue[{term}]", ours["f_pvalue"][term], p, floor=1e-300)


PCA_VARIABLES = ("y", "x1", "x2", "age")


def _sklearn_pca(values: np.ndarray):
    """scikit-learn's PCA of the columns standardised with ddof=1 (Exareme2's PCA)."""
    from sklearn.decomposition import PCA

    z = (values - values.mean(axis=0)) / values.std(axis=0, ddof=1)
    return PCA(svd_solver="full").fit(z)


@SETTINGS
@given(split_data(min_rows=10))
def test_pca(split) -> None:
    data, nodes = split
    ours = federated("pca", nodes, request(y=PCA_VARIABLES))
    pooled = data.dropna(subset=list(PCA_VARIABLES))[list(PCA_VARIABLES)].to_numpy()
    ref = _sklearn_pca(pooled)
    assert ours["n_obs"] == len(pooled)
    check("pca", "eigen_vals", ours["eigen_vals"], ref.explained_variance_)
    # unit vectors: components below 1e-3 are compared absolutely (to 1e-12)
    check("pca", "eigen_vecs", ours["eigen_vecs"], ref.components_, floor=1e-3)


@SETTINGS
@given(split_data(min_rows=10))
def test_pca_with_transformation(split) -> None:
    data, nodes = split
    transformation = {"log": ["age"], "exp": ["x1"], "center": ["y"], "standardize": ["x2"]}
    ours = federated("pca_with_transformation", nodes,
                     request(y=PCA_VARIABLES, data_transformation=transformation))
    pooled = data.dropna(subset=list(PCA_VARIABLES))[list(PCA_VARIABLES)].copy()
    pooled["age"] = np.log(pooled["age"])
    pooled["x1"] = np.exp(pooled["x1"])
    pooled["y"] = pooled["y"] - pooled["y"].mean()
    pooled["x2"] = (pooled["x2"] - pooled["x2"].mean()) / pooled["x2"].std(ddof=0)
    values = pooled.to_numpy()
    ref = _sklearn_pca(values)
    assert ours["n_obs"] == len(values)
    # centred / standardised columns have mean 0: exactly here, up to rounding
    # (~1e-13 for x2, whose mean is 1000) in the pooled reference
    assert ours["means"][0] == 0.0 and ours["means"][2] == 0.0
    assert abs(values[:, [0, 2]].mean(axis=0)).max() < 1e-10
    check("pca_with_transformation", "means", [ours["means"][i] for i in (1, 3)], values.mean(axis=0)[[1, 3]])
    check("pca_with_transformation", "sigmas", ours["sigmas"], values.std(axis=0, ddof=1))
    check("pca_with_transformation", "eigen_vals", ours["eigen_vals"], ref.explained_variance_)
    check("pca_with_transformation", "eigen_vecs", ours["eigen_vecs"], ref.components_, floor=1e-3)
