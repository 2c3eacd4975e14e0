"""Secure aggregation in process: federated == pooled on random splits, every supported algorithm.

Over real HTTP nodes: ``tests/integration/test_secagg_federation.py``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from scipy import stats

from mipflow.secagg.central_side import unmask_sum
from mipflow.secagg.codec import additive_form, from_additive
from mipflow.secagg.crypto import context_digest
from mipflow.secagg.node_side import masked_release, secure_form
from mipflow.algorithms import get_algorithm, prepare_local_data
from mipflow.algorithms.contract import MAX_ROUNDS
from mipflow.protocol.wire import transport
from tests.mipflow.algorithms import test_federated_vs_pooled as pooled_props
from tests.mipflow.algorithms.helpers import ErrorSummary, assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.mipflow.secagg.helpers import KEYS, PUBLIC


def run_secure(name: str, frames, req, model=MODEL) -> dict:
    """:func:`run_in_process` with every node's aggregates masked and only the sum unmasked."""
    algo = get_algorithm(name)
    algo.validate(req, model)
    local = [prepare_local_data(algo, f, req) for f in frames]
    state = None
    for round_no in range(MAX_ROUNDS):
        ctx = context_digest(analysis_id="in-process", algorithm=name, round_no=round_no,
                                    request=req.to_dict(), state=state, participants=PUBLIC)
        plain = [transport(secure_form(name, algo.local_step(round_no, f, req, model, transport(state)),
                                              req, model)) for f in local]
        releases = [transport(masked_release(k, PUBLIC, ctx, a)) for k, a in zip(KEYS, plain)]
        pooled = unmask_sum(releases)
        _check_exact_sum(plain, pooled)
        step = algo.global_step(round_no, [pooled], req, model, state)
        if step.done:
            return transport(step.result)
        state = transport(step.state)
    raise AssertionError("did not finish")


def _check_exact_sum(plain: list[dict], pooled: dict) -> None:
    """The unmasked sum equals the exact (rational) sum of the plain aggregates to fixed-point precision."""
    layout, _ = additive_form(plain[0])
    vectors = [additive_form(a)[1] for a in plain]
    exact = from_additive(layout, [sum(col) for col in zip(*vectors)])
    a, e = _leaves(pooled), _leaves(exact)
    assert len(a) == len(e)
    for x, y in zip(a, e):
        if isinstance(y, int):
            assert x == y
        else:
            # rounding to 2**-64 per node, then one float rounding: a few units in the last place
            assert abs(x - y) <= 4 * math.ulp(abs(y)) + 2.0 ** -50, (x, y)
    SUM_ERRORS.append(max((abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a, e)), default=0.0))


SUM_ERRORS: list[float] = []


def _leaves(doc) -> list:
    if isinstance(doc, dict):
        return [v for k in sorted(doc) for v in _leaves(doc[k])]
    if isinstance(doc, list):
        return [v for item in doc for v in _leaves(item)]
    return [doc]


@contextlib.contextmanager
def _secure_federated() -> Iterator[None]:
    saved = pooled_props.federated, pooled_props.POOLED_SUMMARY
    pooled_props.federated, pooled_props.POOLED_SUMMARY = run_secure, SECURE_SUMMARY
    try:
        yield
    finally:
        pooled_props.federated, pooled_props.POOLED_SUMMARY = saved


#: Worst relative errors against the pooled references with secure aggregation (printed with -s).
SECURE_SUMMARY = ErrorSummary()


@pytest.mark.parametrize("prop", [
    pytest.param(pooled_props.test_linear_regression, id="linear_regression"),
    pytest.param(pooled_props.test_logistic_regression, id="logistic_regression"),
    pytest.param(pooled_props.test_pearson_correlation, id="pearson_correlation"),
    pytest.param(pooled_props.test_ttest_onesample, id="ttest_onesample"),
    pytest.param(pooled_props.test_ttest_paired, id="ttest_paired"),
    pytest.param(pooled_props.test_ttest_independent, id="ttest_independent"),
    pytest.param(pooled_props.test_anova_oneway, id="anova_oneway"),
])
def test_secure_sum_equals_pooled_on_random_splits(prop) -> None:
    """The pooled-reference properties (statsmodels / scipy, <= 1e-9 relative) with every node masked."""
    with _secure_federated():
        prop()
    assert SUM_ERRORS and max(SUM_ERRORS) < 1e-12
    print("\n".join(["secure aggregation vs pooled:", *SECURE_SUMMARY.lines(),
                      f"unmasked sum vs exact sum: worst {max(SUM_ERRORS):.3g}"]))


def test_secure_kmeans_equals_pooled_lloyd_on_random_splits(monkeypatch) -> None:
    """k-means' own pooled-reference property (numpy Lloyd and scikit-learn from the same initial
    centres, <= 1e-9 relative) with every node's round masked, initialisation included."""
    from tests.mipflow.algorithms import test_kmeans

    calls: list[str] = []

    def secure(algo, frames, req, model):
        assert model is MODEL
        calls.append(algo.name)
        return run_secure(algo.name, frames, req)

    SUM_ERRORS.clear()
    monkeypatch.setattr(test_kmeans, "run_in_process", secure)
    test_kmeans.test_federated_lloyd_equals_pooled_lloyd()
    assert calls and set(calls) == {"kmeans"}
    assert SUM_ERRORS and max(SUM_ERRORS) < 1e-12


@pytest.mark.parametrize("family, cov_struct", [
    pytest.param("gaussian", "exchangeable", id="gaussian-exchangeable"),
    pytest.param("binomial", "ar1", id="binomial-ar1"),
    pytest.param("poisson", "independence", id="poisson-independence"),
])
def test_secure_gee_equals_pooled_statsmodels(family, cov_struct) -> None:
    """``gee`` with every round masked (level counts, IRLS, scoring, correlation and covariance sums):
    statsmodels' GEE on the pooled rows to the unmasked tests' 1e-8, and the plain federated fit."""
    from mipflow.algorithms import run_in_process
    from tests.mipflow.algorithms import test_gee

    SUM_ERRORS.clear()
    x = ["x1", "grp", "age"]
    y = test_gee._y(family)
    req = request(x=x, y=[y], family=family, cov_struct=cov_struct)
    frames = test_gee.split(test_gee.DATA, 3, 1)
    ours = run_secure("gee", frames, req, test_gee.MODEL_LONG)
    fit, n, m = test_gee.pooled(test_gee.DATA, y, x, family, cov_struct)
    test_gee.check_against(ours, fit, n, m, f"secure.{family}.{cov_struct}")
    plain = run_in_process(get_algorithm("gee"), frames, req, test_gee.MODEL_LONG)
    assert ours["iterations"] == plain["iterations"] and ours["glm_iterations"] == plain["glm_iterations"]
    assert_rel_close(ours["coefficients"], plain["coefficients"], rel=1e-12, what="secure vs plain")
    assert SUM_ERRORS and max(SUM_ERRORS) < 1e-12


@pytest.mark.parametrize("slope, reml", [pytest.param(False, True, id="intercept-reml"),
                                         pytest.param(True, False, id="slope-ml")])
def test_secure_linear_mixed_model_equals_pooled_statsmodels(slope, reml) -> None:
    """``linear_mixed_model`` with every round masked: statsmodels' converged MixedLM on the pooled rows
    to the unmasked tests' 1e-8 (fixed effects, standard errors, cov_re, scale, llf)."""
    from tests.mipflow.algorithms import test_gee, test_lmm

    SUM_ERRORS.clear()
    x = ["x1", "grp", "age"] + (["time"] if slope else [])
    ours = run_secure("linear_mixed_model", test_gee.split(test_lmm.DATA, 3, 1), test_lmm.requested(slope, reml, x),
                      test_lmm.MODEL_LONG)
    model, names = test_lmm.statsmodels_model(test_lmm.DATA, x, slope)
    reference, _ = test_lmm.converged_reference(model, reml)
    assert ours["indep_vars"] == names and ours["converged"] is True
    assert ours["n_obs"] == model.nobs and ours["n_groups"] == model.n_groups
    for key, expected in (("coefficients", reference.fe_params), ("stderr", reference.bse_fe),
                          ("cov_re", reference.cov_re), ("scale", reference.scale),
                          ("cov_re_stderr", reference.bse_re), ("llf", reference.llf)):
        assert_rel_close(ours[key], expected, rel=test_lmm.LMM_RTOL, floor=1e-12, what=f"secure lmm {key}")
    assert SUM_ERRORS and max(SUM_ERRORS) < 1e-12


def _naive_variance(values_per_node: list[np.ndarray]) -> float:
    """What summing raw power sums in floating point would give (the negative control)."""
    n = sum(len(v) for v in values_per_node)
    s1 = sum(float(np.sum(v)) for v in values_per_node)
    s2 = sum(float(np.sum(v * v)) for v in values_per_node)
    return (s2 - s1 * s1 / n) / (n - 1)


def test_group_moments_with_a_large_offset_stay_exact() -> None:
    """ttest_independent and anova_oneway on a variable at 1e5 with spread 1.5 and group effects of
    about 1/3 of it (well-conditioned differences and p-values): the raw sums of squares a node masks
    are ~1e11, and turning them back into variances in floating point would cancel (the naive
    computation is off by far more than 1e-9); exact rational unmasking keeps 1e-9 against scipy."""
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    data = make_data(20261207, 240)
    data["y"] = 1e5 + data["x1"] + data["grp"].map({"a": 0.0, "b": 0.5, "c": -0.5})
    nodes = [data[np.arange(len(data)) % 3 == k].reset_index(drop=True) for k in range(3)]
    pooled = data.dropna(subset=["grp", "y"])
    groups = {g: pooled.loc[pooled["grp"] == g, "y"].to_numpy() for g in ("a", "b", "c")}

    exact_var = float(np.var(groups["b"], ddof=1))
    naive = _naive_variance([n.loc[n["grp"] == "b", "y"].dropna().to_numpy() for n in nodes])
    assert abs(naive - exact_var) / exact_var > 1e-7  # the cancellation this test guards against

    req = request(x=("grp",), y=("y",), alt_hypothesis="two-sided", alpha=0.05, groupA="b", groupB="a")
    ours = run_secure("ttest_independent", nodes, req)
    ref = stats.ttest_ind(groups["b"], groups["a"], equal_var=False)
    worst = max(assert_rel_close(ours[key], value, what=key) for key, value in (
        ("statistic", ref.statistic), ("p_value", ref.pvalue), ("df_welch", ref.df),
        ("mean_diff", groups["b"].mean() - groups["a"].mean()),
        ("se_difference", math.sqrt(np.var(groups["b"], ddof=1) / len(groups["b"])
                                    + np.var(groups["a"], ddof=1) / len(groups["a"])))))

    ours = run_secure("anova_oneway", nodes, request(x=("grp",), y=("y",)))
    f_ref = stats.f_oneway(*(groups[g] for g in ("a", "b", "c")))
    residual = sum(float(np.sum((v - v.mean()) ** 2)) for v in groups.values())
    worst = max(worst, *(assert_rel_close(ours[key], value, what=key) for key, value in (
        ("f_stat", f_ref.statistic), ("p_value", f_ref.pvalue), ("ss_residual", residual))))
    tukey = pairwise_tukeyhsd(pooled["y"].to_numpy(), pooled["grp"].to_numpy())
    worst = max(worst, assert_rel_close([t["se"] for t in ours["tuckey_test"]], tukey.std_pairs * math.sqrt(2),
                                        what="tukey.se"))
    print(f"group moments at offset 1e5 under secure aggregation vs scipy: worst {worst:.3g}; "
          f"naive raw sums would be off by {abs(naive - exact_var) / exact_var:.3g}")


@settings(max_examples=15, deadline=None)
@given(pooled_props.split_data(min_rows=10))
def test_secure_descriptive_stats_release_only_the_pooled_rows(split) -> None:
    """Under secure aggregation the per-dataset rows are withheld and the "all datasets" rows are the
    sums over the nodes: pandas on the pooled rows (counting, per variable, the rows of every node's
    part of a dataset where the variable has a value), and the plain rows wherever that rule is Exareme2's."""
    from mipflow.algorithms import run_in_process
    from mipflow.algorithms.descriptive_stats import ALL_DATASETS, WITHHELD

    data, nodes = split
    req = request(x=("grp",), y=("y", "x2", "dataset"))
    secure = run_secure("descriptive_stats", nodes, req)
    plain = run_in_process(get_algorithm("descriptive_stats"), nodes, req, MODEL)
    assert secure["per_dataset"] == WITHHELD
    variables = ["grp", "y", "x2"]
    for kind in ("variable_based", "model_based"):
        assert [(r["variable"], r["dataset"]) for r in secure[kind]] == [(v, ALL_DATASETS) for v in variables]
        plain_rows = {r["variable"]: r["data"] for r in plain[kind] if r["dataset"] == ALL_DATASETS}
        parts = [(n if kind == "variable_based" else n.dropna(subset=variables)) for n in nodes]
        for row in secure[kind]:
            var, got = row["variable"], row["data"]
            with_data = [g for part in parts for _, g in part.groupby("dataset") if g[var].count() > 0]
            values = np.concatenate([g[var].dropna().to_numpy() for g in with_data]) if with_data else []
            if len(values) == 0:
                assert got is None and plain_rows[var] is None
                continue
            assert got["num_dtps"] == len(values) == plain_rows[var]["num_dtps"]
            assert got["num_total"] == sum(len(g) for g in with_data)
            whole = data if kind == "variable_based" else data.dropna(subset=variables)
            if all(g[var].count() > 0 for part in parts for _, g in part.groupby("dataset")
                   if whole.loc[whole["dataset"] == g["dataset"].iloc[0], var].count() > 0):
                assert got == plain_rows[var] if var == "grp" else got["num_total"] == plain_rows[var]["num_total"]
            if var == "grp":
                counts = pd.Series(values).value_counts()
                assert got["counts"] == {k: int(counts[k]) for k in ("c", "a", "b") if k in counts}
            else:
                assert_rel_close([got["mean"], got["std"] if len(values) > 1 else 0.0],
                                 [np.mean(values), np.std(values, ddof=1) if len(values) > 1 else 0.0],
                                 what=f"{kind}.{var}")
                assert_rel_close([got["mean"]], [plain_rows[var]["mean"]], what=f"{kind}.{var} vs plain")


def test_secure_cox_regression_equals_pooled_phreg_on_random_splits(monkeypatch) -> None:
    """Cox regression's own pooled-reference property (statsmodels PHReg, Breslow and Efron, and
    lifelines, <= 1e-9 relative; random splits, bin widths and ``nfilter_tab``) with every score round
    masked (ADR 0048), and the start round too (pooled rows, level counts and moments, ADR 0055 amendment):
    the global step gets the unmasked sums. Round 0 and the sums rounds go through as the nodes release them
    (:func:`masked_round`)."""
    from mipflow.secagg.policy import masked_round
    from tests.mipflow.algorithms import test_survival

    cox = get_algorithm("cox_regression")
    plain_step = cox.global_step
    masked_rounds: list[int] = []

    def secure_step(round_no, aggregates, req, model, state):
        if not masked_round(cox, round_no, state) or len(aggregates) < 2:
            return plain_step(round_no, aggregates, req, model, state)
        keys, public = KEYS[:len(aggregates)], PUBLIC[:len(aggregates)]
        ctx = context_digest(analysis_id="in-process", algorithm=cox.name, round_no=round_no,
                             request=req.to_dict(), state=state, participants=public)
        plain = [transport(secure_form(cox.name, a, req, model)) for a in aggregates]
        pooled = unmask_sum([transport(masked_release(k, public, ctx, a)) for k, a in zip(keys, plain)])
        _check_exact_sum(plain, pooled)
        masked_rounds.append(round_no)
        return plain_step(round_no, [pooled], req, model, state)

    SUM_ERRORS.clear()
    monkeypatch.setattr(cox, "global_step", secure_step)
    test_survival.test_cox_regression_equals_pooled_phreg_on_rounded_times()
    # the start round (1) and the score rounds (3, 5, ...) only
    assert 1 in masked_rounds and all(r % 2 == 1 for r in masked_rounds)
    assert SUM_ERRORS and max(SUM_ERRORS) < 1e-12


def test_cox_regression_with_masked_sealed_sums_equals_pooled_phreg_on_random_splits(monkeypatch) -> None:
    """The same Cox property with every sums round's per-bin sums masked in fixed point before they are
    pooled (ADR 0055), wherever 3 nodes take part: each node's part masked with its pairwise masks, and the
    pool decoded from the exact sum in Z/2^256, as the nodes do after opening their ciphertexts.  The
    decoded pool is the exact sum of the parts rounded once (``math.fsum``), and the fits equal PHReg (Breslow,
    Efron) and lifelines to <= 1e-9 as without masking."""
    from mipflow.algorithms.packed import unpack
    from mipflow.algorithms.sealed import REAL_MASKED_SCHEME, sum_parts
    from mipflow.secagg.sealed_masks import mask_real_sums
    from tests.mipflow.algorithms import test_survival

    cox = get_algorithm("cox_regression")
    plain_pool = cox.pool_sealed
    masked_pools: list[int] = []

    def masked_pool(parts):
        if cox.sealed_mask_scheme(len(parts)) is None:
            return plain_pool(parts)
        keys = KEYS[:len(parts)]
        participants = {f"node_{i}": k.public_bytes for i, k in enumerate(keys)}
        ctx = context_digest(analysis_id="in-process", algorithm="cox_regression|sealed", round_no=len(masked_pools),
                             request={}, state=None, participants=participants.values())
        masked = [transport(mask_real_sums(k, participants, ctx, part)) for k, part in zip(keys, parts)]
        assert all(m["scheme"] == REAL_MASKED_SCHEME for m in masked)
        pooled = plain_pool(masked)
        clear = sum_parts(parts)
        for name in clear:
            # the exact sum of the parts (each rounded to 2^-128) rounded once: math.fsum's, to the
            # fixed point's resolution (float addition of centred S1 differs from it by an ulp of the parts)
            stacked = np.stack([unpack(part[name]) for part in parts])
            exact = np.apply_along_axis(math.fsum, 0, stacked)
            assert np.all(np.abs(pooled[name] - exact) <= np.spacing(np.abs(exact)) / 2 + len(parts) * 2.0 ** -129), name
            np.testing.assert_allclose(pooled[name], clear[name], rtol=1e-12, atol=1e-12, err_msg=name)
        masked_pools.append(len(parts))
        return pooled

    monkeypatch.setattr(cox, "pool_sealed", masked_pool)
    test_survival.test_cox_regression_equals_pooled_phreg_on_rounded_times()
    # and one fixed three-node split for each tie rule, whatever examples the property drew (with CI set,
    # Hypothesis draws a fixed set, which in a whole run has held no three-node fit)
    from tests.mipflow.algorithms.survival_data import make_stroke

    data = make_stroke(20261207, 600)  # 200 rows a node: every joint cell of sex x stroke type holds 3 (Cox checks them)
    nodes = [data.iloc[k::3].reset_index(drop=True) for k in range(3)]
    for ties in ("breslow", "efron"):  # called directly: a refusal or a node left out fails here, never skips
        assert test_survival.cox_equals_pooled_phreg(nodes, 7.0, 3, ties) == [0, 1, 2], ties
    assert masked_pools and set(masked_pools) == {3}
