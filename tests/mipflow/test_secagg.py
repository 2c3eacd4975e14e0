"""Secure aggregation (mipflow.secagg): masks cancel, a masked release looks like noise,
the sum is exact, federated == pooled on random splits, keys are checked.

Over real HTTP nodes: ``tests/integration/test_secagg_federation.py``.
"""
from __future__ import annotations

import contextlib
import json
import math
from fractions import Fraction
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mipflow import secagg
from mipflow.algorithms import get_algorithm, prepare_local_data
from mipflow.algorithms.contract import MAX_ROUNDS
from mipflow.protocol.wire import transport
from mipflow.exceptions import DisclosureError, RequestError
from tests.mipflow.algorithms import test_federated_vs_pooled as pooled_props
from tests.mipflow.algorithms.helpers import ErrorSummary, assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

#: Three nodes' long-term keys, fixed so that every statistical test below is deterministic.
KEYS = [secagg.KeyPair.from_bytes(bytes([17 * (i + 1)]) * 32) for i in range(3)]
PUBLIC = [k.public_bytes for k in KEYS]


def _context(analysis_id: str = "analysis-1", round_no: int = 0, state=None, participants=PUBLIC) -> bytes:
    return secagg.context_digest(analysis_id=analysis_id, algorithm="linear_regression", round_no=round_no,
                                 request={"r": 1}, state=state, participants=participants)


# --------------------------------------------------------------------------- fixed point and masks


@pytest.mark.parametrize("value", [0.0, 1.0, -1.0, 1e-12, -3.25e7, 1234567.890123, 2.0 ** -60, 1e30,
                                   Fraction(1, 3)])
def test_fixed_point_round_trip(value) -> None:
    assert abs(secagg.decode(secagg.encode(value)) - Fraction(value)) <= Fraction(1, 2 * secagg.SCALE)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2.0 ** secagg.MAX_MAGNITUDE_BITS, -1e34])
def test_fixed_point_refuses_what_cannot_be_summed(value) -> None:
    with pytest.raises(RequestError):
        secagg.encode(value)


def test_fixed_point_sum_of_many_nodes_does_not_wrap() -> None:
    big = 2.0 ** secagg.MAX_MAGNITUDE_BITS - 2.0 ** 60  # just under the per-node limit
    total = sum(secagg.encode(-big) for _ in range(2 ** secagg.MAX_NODE_BITS)) % secagg.RING
    assert secagg.decode(total) == Fraction(-big) * 2 ** secagg.MAX_NODE_BITS


@pytest.mark.parametrize("n_nodes", [2, 3, 5])
def test_pairwise_masks_cancel_in_the_sum(n_nodes: int) -> None:
    keys = [secagg.KeyPair.generate() for _ in range(n_nodes)]
    public = [k.public_bytes for k in keys]
    ctx = _context(participants=public)
    masks = [secagg.mask(k, public, ctx, 40) for k in keys]
    assert all(sum(column) % secagg.RING == 0 for column in zip(*masks))
    assert all(any(m) for m in masks)  # ... while no node's own mask is zero


def test_seeds_depend_on_every_part_of_the_context() -> None:
    base = secagg.pair_seed(KEYS[0], PUBLIC[1], _context())
    assert base == secagg.pair_seed(KEYS[1], PUBLIC[0], _context())  # both ends agree
    for other in (_context(analysis_id="analysis-2"), _context(round_no=1), _context(state={"b": [0.5]}),
                  _context(participants=PUBLIC[:2])):
        assert secagg.pair_seed(KEYS[0], PUBLIC[1], other) != base
    assert secagg.pair_seed(KEYS[0], PUBLIC[2], _context()) != base


def test_low_order_peer_key_is_refused() -> None:
    with pytest.raises(DisclosureError, match="low-order"):
        KEYS[0].exchange(bytes(32))


# --------------------------------------------------------------------------- a masked release is noise


LOCAL_REQUEST = request(x=("x1", "x2"), y=("y",))


def _aggregate() -> dict:
    """One node's linear-regression aggregates (60 synthetic rows)."""
    algo = get_algorithm("linear_regression")
    return algo.local_step(0, prepare_local_data(algo, make_data(7, 60), LOCAL_REQUEST), LOCAL_REQUEST,
                           MODEL, None)


def _zero_like() -> dict:
    """The same layout with every number 0."""
    return json.loads(json.dumps(_aggregate()), parse_float=lambda _: 0.0, parse_int=lambda _: 0)


def _masked_elements(aggregate: dict, trials: int) -> list[int]:
    """Node 0's masked release of ``aggregate`` in ``trials`` analyses (ring elements)."""
    out = []
    for t in range(trials):
        release = secagg.masked_release(KEYS[0], PUBLIC, _context(analysis_id=f"a{t}"), aggregate)
        out.extend(int(v, 16) for v in release["secure_aggregation"]["masked"])
    return out


def test_masked_release_is_uniform_and_independent_of_the_data() -> None:
    real, zero = _aggregate(), _zero_like()
    elements_real, elements_zero = _masked_elements(real, 150), _masked_elements(zero, 150)
    masked_real = np.array([v / secagg.RING for v in elements_real])
    masked_zero = np.array([v / secagg.RING for v in elements_zero])
    assert len(masked_real) > 1500
    # each masked element is uniform on the ring ...
    assert stats.kstest(masked_real, "uniform").pvalue > 1e-3
    assert stats.kstest(masked_zero, "uniform").pvalue > 1e-3
    # ... and a node's data cannot be told from all-zero data by its masked release
    assert stats.ks_2samp(masked_real, masked_zero).pvalue > 1e-3
    # every bit of the 192 is a fair coin (chi-squared over bit counts)
    bits = np.array([[(v >> b) & 1 for b in range(secagg.RING_BITS)] for v in elements_real[:1500]])
    ones = bits.sum(axis=0)
    chi2 = float(np.sum((ones - 750) ** 2 / 750 + (1500 - ones - 750) ** 2 / 750))
    assert stats.chi2.sf(chi2, bits.shape[1]) > 1e-3
    # negative control: the same test sees the unmasked fixed-point values at once
    _, vector = secagg.additive_form(real)
    plain = np.array([secagg.encode(v) / secagg.RING for v in vector])
    assert stats.kstest(plain, "uniform").pvalue < 1e-6


def test_central_site_cannot_unmask_one_node_but_recovers_the_sum() -> None:
    ctx = _context()
    aggregates = [_aggregate(), _zero_like(), _aggregate()]
    releases = [secagg.masked_release(k, PUBLIC, ctx, a) for k, a in zip(KEYS, aggregates)]
    layout, truth = secagg.additive_form(aggregates[0])
    masked = [int(v, 16) for v in releases[0]["secure_aggregation"]["masked"]]
    # reading a release as if it were plain gives numbers unrelated to the truth
    read = [secagg.decode(v) for v in masked]
    assert all(abs(r - t) > 1e20 for r, t in zip(read, truth))
    # a central site holding its own key pair learns nothing from it about node 0's masks:
    # unmasking with the masks it can compute (its key against the nodes' public keys) fails
    centre = secagg.KeyPair.generate()
    guess = secagg.mask(centre, [PUBLIC[1], PUBLIC[2]], ctx, len(masked))
    assert all(abs(secagg.decode(m - g) - t) > 1e20 for m, g, t in zip(masked, guess, truth))
    # ... but the sum of all three releases is the sum of the aggregates, exactly
    pooled = secagg.unmask_sum(releases)
    _, vectors = zip(*(secagg.additive_form(a) for a in aggregates))
    exact = secagg.from_additive(layout, [sum(col) for col in zip(*vectors)])
    assert pooled["moments"]["n"] == exact["moments"]["n"] == 2 * aggregates[0]["moments"]["n"]
    np.testing.assert_allclose(pooled["moments"]["mean"], exact["moments"]["mean"], rtol=1e-15)
    np.testing.assert_allclose(pooled["moments"]["m2"], exact["moments"]["m2"], rtol=1e-13, atol=1e-15)


def test_key_substitution_would_unmask_a_node_which_is_why_peers_are_checked(tmp_path) -> None:
    """What the trust store is for: with keys the centre controls for every peer of node 0,
    the centre computes node 0's masks.  The trust store refuses those keys."""
    ctx = _context()
    centre = secagg.KeyPair.generate()
    fake = [PUBLIC[0], centre.public_bytes]
    aggregate = _aggregate()
    release = secagg.masked_release(KEYS[0], fake, ctx, aggregate)
    layout, truth = secagg.additive_form(aggregate)
    theirs = secagg.mask(centre, fake, ctx, len(truth))  # the centre's side of the pair
    unmasked = [secagg.decode(int(v, 16) + m) for v, m in zip(release["secure_aggregation"]["masked"], theirs)]
    assert all(abs(u - t) <= Fraction(1, secagg.SCALE) for u, t in zip(unmasked, truth))

    # trust on first use: a known peer's key may not change
    store = secagg.TrustStore(tmp_path)
    store.check({"hospital_b": PUBLIC[1], "hospital_c": PUBLIC[2]})
    store.check({"hospital_b": PUBLIC[1]})
    with pytest.raises(DisclosureError, match="first seen") as err:
        store.check({"hospital_b": centre.public_bytes})
    assert err.value.control == "secure_aggregation"
    # pinned: only keys the admin pinned, so neither substituted nor invented peers
    store.set_policy("pinned")
    with pytest.raises(DisclosureError, match="no pinned"):
        store.check({"hospital_x": centre.public_bytes})
    store.pin("hospital_b", PUBLIC[2].hex())
    with pytest.raises(DisclosureError, match="pinned"):
        store.check({"hospital_b": PUBLIC[1]})
    assert oct((tmp_path / secagg.PEERS_FILE).stat().st_mode & 0o777) == "0o600"


def test_mask_release_checks_the_call(tmp_path) -> None:
    pair = secagg.load_keypair(tmp_path)
    assert oct((tmp_path / secagg.KEY_FILE).stat().st_mode & 0o777) == "0o600"
    assert secagg.load_keypair(tmp_path).public_bytes == pair.public_bytes
    peers = {"scheme": secagg.SCHEME, "participants": [{"node": "me", "public_key": pair.public_hex},
                                                       {"node": "b", "public_key": PUBLIC[1].hex()}]}
    agg = _aggregate()
    args = dict(request={"r": 1}, round_no=0, state=None, analysis_id="a1", aggregates=agg)
    out = secagg.mask_release(tmp_path, "me", "linear_regression", spec=peers, **args)
    assert set(out) == {"secure_aggregation"}
    assert set(out["secure_aggregation"]) == {"scheme", "layout", "masked"}
    released = json.dumps(out)
    assert not any(repr(v) in released for v in agg["moments"]["mean"])
    with pytest.raises(RequestError, match="not available for pca.*linear_regression"):
        secagg.mask_release(tmp_path, "me", "pca", spec=peers, **args)
    exareme2_init = request(y=("x1", "age"), k=2, init="exareme2").to_dict()
    with pytest.raises(RequestError, match="kmeans request.*minima and maxima"):
        secagg.mask_release(tmp_path, "me", "kmeans", spec=peers, **{**args, "request": exareme2_init})
    with pytest.raises(DisclosureError, match="own public key"):
        secagg.mask_release(tmp_path, "other", "linear_regression", spec=peers, **args)
    with pytest.raises(RequestError, match="2 to"):
        secagg.mask_release(tmp_path, "me", "linear_regression",
                            spec={**peers, "participants": peers["participants"][:1]}, **args)
    with pytest.raises(RequestError, match="analysis_id"):
        secagg.mask_release(tmp_path, "me", "linear_regression", spec=peers, **{**args, "analysis_id": None})
    with pytest.raises(RequestError, match="suppressed"):
        secagg.additive_form({"counts": [5, None, 7]})
    # an extreme is one patient's value and a sum of minima is no minimum: never summed
    for key in ("min", "max", "q2"):
        with pytest.raises(RequestError, match=f"aggregates.{key}: extremes and quantiles are not sums"):
            secagg.additive_form({"n": 40, key: [1.5, 2.0]})


def test_resolve_mode() -> None:
    assert secagg.resolve(None, "pca") == "auto"
    assert secagg.resolve(False, "pca") == "off"
    assert secagg.resolve(True, "linear_regression") == "on"
    with pytest.raises(RequestError, match="not available for pca"):
        secagg.resolve(True, "pca")
    # k-means: the default initialisation is sums only; Exareme2's needs per-node extremes
    pca_init = request(y=("x1", "age"), k=3).to_dict()
    exareme2_init = request(y=("x1", "age"), k=3, init="exareme2").to_dict()
    assert secagg.resolve(True, "kmeans", pca_init) == "on"
    assert secagg.automatic_refusal("kmeans", pca_init) is None
    with pytest.raises(RequestError, match="init 'exareme2'.*not sums"):
        secagg.resolve(True, "kmeans", exareme2_init)
    assert "init 'exareme2'" in secagg.automatic_refusal("kmeans", exareme2_init)
    # descriptive statistics: on request only (automatic mode would drop the per-dataset rows)
    described = request(x=("grp",), y=("y",)).to_dict()
    assert secagg.resolve(True, "descriptive_stats", described) == "on"
    assert "request it explicitly" in secagg.automatic_refusal("descriptive_stats", described)
    for name in ("ttest_independent", "anova_oneway", "linear_regression"):
        assert secagg.automatic_refusal(name) is None
    assert "does not support" in secagg.automatic_refusal("pca")


# --------------------------------------------------------------------------- federated == pooled


def run_secure(name: str, frames, req) -> dict:
    """:func:`run_in_process` with every node's aggregates masked and only the sum unmasked."""
    algo = get_algorithm(name)
    algo.validate(req, MODEL)
    local = [prepare_local_data(algo, f, req) for f in frames]
    state = None
    for round_no in range(MAX_ROUNDS):
        ctx = secagg.context_digest(analysis_id="in-process", algorithm=name, round_no=round_no,
                                    request=req.to_dict(), state=state, participants=PUBLIC)
        plain = [transport(secagg.secure_form(name, algo.local_step(round_no, f, req, MODEL, transport(state)),
                                              req, MODEL)) for f in local]
        releases = [transport(secagg.masked_release(k, PUBLIC, ctx, a)) for k, a in zip(KEYS, plain)]
        pooled = secagg.unmask_sum(releases)
        _check_exact_sum(plain, pooled)
        step = algo.global_step(round_no, [pooled], req, MODEL, state)
        if step.done:
            return transport(step.result)
        state = transport(step.state)
    raise AssertionError("did not finish")


def _check_exact_sum(plain: list[dict], pooled: dict) -> None:
    """The unmasked sum equals the exact (rational) sum of the plain aggregates to fixed-point precision."""
    layout, _ = secagg.additive_form(plain[0])
    vectors = [secagg.additive_form(a)[1] for a in plain]
    exact = secagg.from_additive(layout, [sum(col) for col in zip(*vectors)])
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


def test_cli_key_pin_policy(tmp_path, capsys) -> None:
    from mipflow.cli import main
    from mipflow.node.home import NodeHome

    NodeHome.init(tmp_path / "h", "hospital_a")
    assert main(["secagg", "key", str(tmp_path / "h")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["public_key"] == secagg.load_keypair(tmp_path / "h").public_hex
    assert main(["secagg", "pin", str(tmp_path / "h"), "--peer", "hospital_b", "--public-key", PUBLIC[1].hex()]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprint"] == secagg.fingerprint(PUBLIC[1])
    assert main(["secagg", "policy", str(tmp_path / "h"), "pinned"]) == 0
    capsys.readouterr()
    assert main(["secagg", "peers", str(tmp_path / "h")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["policy"] == "pinned" and doc["peers"]["hospital_b"]["source"] == "pinned"
    assert main(["secagg", "pin", str(tmp_path / "h"), "--peer", "x", "--public-key", "abcd"]) == 2
