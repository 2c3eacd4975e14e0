"""Secure aggregation over three real node services (signed HTTP on loopback).

The central site sees each node's aggregates only masked; the unmasked sum gives the
plain federated result and the pooled statsmodels / scipy / numpy result (regressions,
correlation, t-tests, one-way ANOVA with Tukey, k-means; descriptive statistics, on
request, pooled over all datasets only, small cells suppressed at the node first).  A node dropping out after it
masked restarts the analysis without it; disclosure controls still run before masking;
a substituted peer key is refused by a node that pinned its peers.
"""
from __future__ import annotations

import json

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import statsmodels.formula.api as smf

from mipflow.secagg.codec import SCHEME, additive_form, decode
from mipflow.secagg.crypto import KeyPair
from mipflow.secagg.node_side import secure_form
from mipflow.secagg.trust import TrustStore
from mipflow.node.controls.audit import AUDIT_FILE
from mipflow.node.home import NodeHome
from mipflow.exceptions import RequestError
from mipflow.central.client import NodeClient, NodeRefused, NodeUnavailable
from mipflow.central.rounds import run_analysis
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, pin_each_other, served_clients
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("secagg_federation")

NODES = ("hospital_a", "hospital_b", "hospital_c")
DATA = make_data(20261201, 330)
SPLIT = np.arange(len(DATA)) % 3

CASES = {
    "linear_regression": request(x=("grp", "x1", "x2", "age"), y=("y",)),
    "logistic_regression": request(x=("grp", "sex", "x1"), y=("outcome",), positive_class="yes"),
    "pearson_correlation": request(x=("age", "x1"), y=("y", "x2"), alpha=0.95),
    "ttest_onesample": request(y=("x2",), alt_hypothesis="two-sided", alpha=0.05, mu=0.0),
    "ttest_paired": request(x=("x1",), y=("y",), alt_hypothesis="less", alpha=0.05),
    "ttest_independent": request(x=("grp",), y=("y",), alt_hypothesis="two-sided", alpha=0.05,
                                 groupA="b", groupB="a"),
    "anova_oneway": request(x=("grp",), y=("y",)),
    "kmeans": request(y=("x1", "y", "x2"), k=3, maxiter=30, tol=1e-6),  # real variables (ADR 0050)
}
#: Requested with secure_aggregation=True only (automatic mode leaves it off: ADR 0014).
DESCRIBED = request(x=("grp",), y=("y", "x2", "dataset"))


@dataclass
class Fed:
    roots: dict[str, Path]
    clients: list[NodeClient]

    def run(self, name: str, clients=None, **kwargs):
        return run_analysis(name, kwargs.pop("doc") if "doc" in kwargs else CASES[name].to_dict(),
                            clients or self.clients, researcher=RESEARCHER, project=PROJECT, **kwargs)


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("secagg")
    roots = {}
    data = DATA.assign(subjectcode=[f"p{i}" for i in range(len(DATA))])
    for k, node in enumerate(NODES):
        roots[node] = base / node
        home = standard_home(roots[node], node)  # default disclosure settings (min_row_count 10, nfilter_tab 3)
        # the analyses here use overlapping cohorts on purpose (complete cases of different
        # variables); the differencing control has its own tests (tests/mipflow/node/controls/test_differencing.py)
        home.set_setting("differencing_check", 0)
        load_frame(roots[node], MODEL, data[SPLIT == k].reset_index(drop=True))
        grant_all(roots[node])
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with served_clients(roots) as served:
        yield Fed(roots, list(served.values()))


def _numbers(doc) -> list[float]:
    if isinstance(doc, dict):
        return [v for k in sorted(doc) for v in _numbers(doc[k])]
    if isinstance(doc, list):
        return [v for item in doc for v in _numbers(item)]
    if isinstance(doc, bool) or doc is None or isinstance(doc, str) and "Infinity" not in doc:
        return []
    return [float(str(doc).replace("Infinity", "inf"))]


def _same_result(secure: dict, plain: dict, what: str) -> float:
    """Secure == plain federated result, number by number (floor for values ~0)."""
    return assert_rel_close(_numbers(secure), _numbers(plain), rel=1e-9, floor=1e-6, what=what)


@pytest.mark.parametrize("name", list(CASES))
def test_secure_result_equals_plain_federated(fed: Fed, name: str) -> None:
    secure = fed.run(name)  # automatic: 3 nodes take part
    assert secure.secure_aggregation["enabled"] is True and secure.secure_aggregation["mode"] == "auto-on"
    assert sorted(secure.secure_aggregation["participants"]) == sorted(NODES)
    plain = fed.run(name, secure_aggregation=False)
    assert plain.secure_aggregation == {"enabled": False, "mode": "off", "reason": "not requested"}
    assert secure.contributed == plain.contributed and not secure.excluded
    worst = _same_result(secure.result, plain.result, name)
    print(f"{name}: secure vs plain federated, worst relative error {worst:.3g}")


def test_secure_linear_regression_equals_pooled_statsmodels(fed: Fed) -> None:
    ours = fed.run("linear_regression", secure_aggregation=True).result
    pooled = DATA.dropna(subset=["y", "grp", "x1", "x2", "age"])
    fit = smf.ols("y ~ C(grp) + x1 + x2 + age", pooled).fit()
    assert ours["n_obs"] == len(pooled)
    worst = max(assert_rel_close(ours[key], value, rel=1e-9, what=key) for key, value in (
        ("coefficients", fit.params.to_numpy()), ("std_err", fit.bse.to_numpy()),
        ("pvalues", fit.pvalues.to_numpy()), ("r_squared", fit.rsquared), ("f_stat", fit.fvalue)))
    print(f"linear_regression over HTTP with secure aggregation vs pooled statsmodels: {worst:.3g}")


def test_secure_group_tests_equal_pooled_scipy_and_statsmodels(fed: Fed) -> None:
    """Welch's t-test (two groups' sums) and one-way ANOVA with Tukey HSD (per-group sums), masked."""
    import statsmodels.api as sm
    from scipy import stats
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    pooled = DATA.dropna(subset=["grp", "y"])
    a, b = (pooled.loc[pooled["grp"] == g, "y"].to_numpy() for g in ("b", "a"))
    ours = fed.run("ttest_independent", secure_aggregation=True)
    assert ours.secure_aggregation["enabled"] is True
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    worst = max(assert_rel_close(ours.result[key], value, rel=1e-9, what=key) for key, value in (
        ("statistic", ref.statistic), ("p_value", ref.pvalue), ("df_welch", ref.df),
        ("mean_diff", a.mean() - b.mean()), ("ci_lower", ci.low), ("ci_upper", ci.high)))
    assert ours.result["n_obs"] == len(a) + len(b)

    ours = fed.run("anova_oneway", secure_aggregation=True)
    assert ours.secure_aggregation["enabled"] is True
    table = sm.stats.anova_lm(smf.ols("y ~ C(grp)", pooled).fit())
    worst = max(worst, *(assert_rel_close(ours.result[key], value, rel=1e-9, what=key) for key, value in (
        ("ss_explained", table["sum_sq"].iloc[0]), ("ss_residual", table["sum_sq"].iloc[1]),
        ("f_stat", table["F"].iloc[0]), ("p_value", table["PR(>F)"].iloc[0]))))
    tukey = pairwise_tukeyhsd(pooled["y"].to_numpy(), pooled["grp"].to_numpy())
    rows = ours.result["tuckey_test"]
    worst = max(worst, assert_rel_close([t["diff"] for t in rows], -tukey.meandiffs, rel=1e-9, what="tukey.diff"),
                assert_rel_close([t["p_tuckey"] for t in rows], tukey.pvalues, rel=1e-9, floor=1e-300,
                                 what="tukey.p"))
    print(f"ttest_independent, anova_oneway over HTTP with secure aggregation vs pooled scipy/statsmodels: "
          f"{worst:.3g}")


def test_secure_kmeans_equals_pooled_lloyd(fed: Fed) -> None:
    """Every round masked (moments in round 0, per-cluster counts and sums after): numpy's Lloyd on the
    pooled rows from the same initial centres (the pooled mean and covariance's principal axis)."""
    from mipflow.algorithms.kmeans import principal_axis_centres
    from tests.mipflow.algorithms.test_kmeans import numpy_lloyd

    outcome = fed.run("kmeans")  # automatic: 3 nodes take part
    assert outcome.secure_aggregation["enabled"] is True and outcome.rounds > 3
    ours = outcome.result
    pooled = DATA.dropna(subset=["x1", "y", "x2"])[["x1", "y", "x2"]].to_numpy(dtype=float)
    start = principal_axis_centres(pooled.mean(axis=0), np.cov(pooled, rowvar=False), 3)
    ref = numpy_lloyd(pooled, start, 1e-6, 30)
    assert ours["n_obs"] == len(pooled) and ours["cluster_counts"] == ref["counts"].tolist()
    assert (ours["n_iter"], ours["converged"]) == (ref["n_iter"], ref["converged"])
    worst = max(assert_rel_close(ours["initial_centers"], start, rel=1e-9, what="initial_centers"),
                assert_rel_close(ours["centers"], ref["centers"], rel=1e-9, what="centers"),
                assert_rel_close(ours["inertia"], ref["inertia"], rel=1e-9, what="inertia"))
    print(f"kmeans over HTTP with secure aggregation vs pooled numpy Lloyd: {worst:.3g}")


def test_kmeans_exareme2_initialisation_is_refused_under_secure_aggregation(fed: Fed) -> None:
    doc = request(y=("x1", "y"), k=3, init="exareme2").to_dict()
    with pytest.raises(RequestError, match="init 'exareme2'.*not sums"):
        fed.run("kmeans", doc=doc, secure_aggregation=True)


def _all_datasets_rows(result: dict) -> dict:
    return {(kind, r["variable"]): r["data"] for kind in ("variable_based", "model_based")
            for r in result[kind] if r["dataset"] == "all datasets"}


def test_secure_descriptive_stats_release_pooled_rows_only(fed: Fed) -> None:
    """On request only: the rows over all datasets are the nodes' sum (== plain == pandas); the
    per-dataset rows, one node's aggregates where a dataset lives at one node, are withheld."""
    from mipflow.algorithms.descriptive_stats import WITHHELD

    auto = fed.run("descriptive_stats", doc=DESCRIBED.to_dict())
    assert auto.secure_aggregation["enabled"] is False
    assert "request it explicitly" in auto.secure_aggregation["reason"]
    assert any(r["dataset"] == "d0" for r in auto.result["variable_based"])  # the plain result, unchanged

    secure = fed.run("descriptive_stats", doc=DESCRIBED.to_dict(), secure_aggregation=True)
    assert secure.secure_aggregation["enabled"] is True and secure.secure_aggregation["mode"] == "on"
    assert secure.result["per_dataset"] == WITHHELD
    assert {r["dataset"] for kind in ("variable_based", "model_based") for r in secure.result[kind]} == {
        "all datasets"}
    ours, plain = _all_datasets_rows(secure.result), _all_datasets_rows(auto.result)
    assert set(ours) == set(plain) and len(ours) == 6
    variables = ["grp", "y", "x2"]
    for (kind, var), got in ours.items():
        frame = DATA if kind == "variable_based" else DATA.dropna(subset=variables)
        values = frame[var].dropna()
        assert (got["num_dtps"], got["num_total"]) == (len(values), len(frame))
        assert (got["num_dtps"], got["num_total"]) == (plain[(kind, var)]["num_dtps"], plain[(kind, var)]["num_total"])
        if var == "grp":
            counts = values.value_counts()
            assert got["counts"] == plain[(kind, var)]["counts"] == {k: int(counts[k]) for k in ("c", "a", "b")}
        else:
            assert_rel_close([got["mean"], got["std"]], [values.mean(), values.std(ddof=1)], rel=1e-9, what=var)
            _same_result(got, plain[(kind, var)], f"descriptive_stats {kind} {var}")


def _hidden_levels(counts: dict[str, int], tab: int) -> set[str]:
    """The levels a node's control hides in one dataset's counts: those in (0, tab), and when that is one
    level, the smallest other non-empty one too (complementary suppression), written out independently."""
    small = {k for k, n in counts.items() if 0 < n < tab}
    rest = sorted((n, k) for k, n in counts.items() if n >= tab)
    return small | {rest[0][1]} if len(small) == 1 and rest else small


#: nfilter_tab per node for the suppression cases (the others keep 3, under which nothing here is small).
SUPPRESSING = {
    "one_level_shown": {"hospital_b": 10},    # b hides c and b (c small, b small or its complement): a shown
    "all_hidden_at_b": {"hospital_b": 1000},  # b hides every non-empty level
    "two_nodes_hide": {"hospital_b": 10, "hospital_c": 10},  # c and b hidden at two nodes, a at one
}


@pytest.mark.parametrize("case", list(SUPPRESSING))
def test_secure_descriptive_stats_suppress_small_cells_at_the_node_first(fed: Fed, case: str) -> None:
    """A node suppresses its small grp cells before it masks, and adds a masked 0/1 "hidden" flag per level:
    the central site learns per level only how many nodes hid it, and shows a level any node hid as the plain
    result does (suppressed, a lower bound and a note; ADR 0005 amendment), never the others' sum as the
    total.  Levels hidden nowhere are the pooled counts (pandas on the concatenated rows)."""
    from mipflow.algorithms.descriptive_stats import POOLED
    from mipflow.secagg.central_side import unmask_sum

    tabs = SUPPRESSING[case]
    doc = request(y=("grp",)).to_dict()
    levels = MODEL.variable("grp").enumeration_codes
    hidden_at = {node: set().union(*(_hidden_levels(part["grp"].value_counts().to_dict(), tabs.get(node, 3))
                                    for _, part in DATA[SPLIT == k].dropna(subset=["grp"]).groupby("dataset")))
                 for k, node in enumerate(NODES)}
    suppressed = [level for level in levels if any(level in h for h in hidden_at.values())]
    assert suppressed, "not vacuous: some node hides a level"
    homes = {node: NodeHome(fed.roots[node]) for node in tabs}
    for node, tab in tabs.items():
        homes[node].set_setting("nfilter_tab", tab)
    try:
        secure = fed.run("descriptive_stats", doc=doc, secure_aggregation=True)
        plain = fed.run("descriptive_stats", doc=doc, secure_aggregation=False)
        # what the central site unmasks: per level, the number of nodes that hid it
        keys = [c.secagg_key() for c in fed.clients]
        masking = {"scheme": SCHEME, "participants": [{"node": k["node"], "public_key": k["public_key"]}
                                                      for k in keys]}
        analysis_id = uuid.uuid4().hex
        replies = [c.step("descriptive_stats", doc, 0, None, researcher=RESEARCHER, project=PROJECT,
                          analysis_id=analysis_id, secure_aggregation=masking) for c in fed.clients]
    finally:
        for node in tabs:
            homes[node].set_setting("nfilter_tab", 3)
    assert not secure.excluded and sorted(secure.secure_aggregation["participants"]) == sorted(NODES)
    assert all(set(r["aggregates"]) == {"secure_aggregation"} for r in replies)
    pooled = unmask_sum([r["aggregates"] for r in replies])[POOLED]
    for kind in ("variable_based", "model_based"):
        assert pooled[kind]["grp"]["hidden"] == [sum(level in h for h in hidden_at.values()) for level in levels]

    values = DATA["grp"].dropna()
    counts = values.value_counts()
    for kind in ("variable_based", "model_based"):
        got = _all_datasets_rows(secure.result)[(kind, "grp")]
        shown = _all_datasets_rows(plain.result)[(kind, "grp")]
        assert got["suppressed"] == shown["suppressed"] == suppressed
        assert got["counts"] == {k: int(counts[k]) for k in levels if k not in suppressed and counts.get(k, 0) > 0}
        assert got["num_dtps"] is None and got["num_na"] is None and "at least one participating node" in got["note"]
        assert got["num_dtps_at_least"] == sum(got["counts"].values()) == sum(
            int(counts.get(k, 0)) for k in levels if k not in suppressed)
        # every node's part has grp values, hidden or shown: all rows (model-based: those with grp)
        assert got["num_total"] == (len(DATA) if kind == "variable_based" else len(values))
        assert got == shown  # the same row as the plain path, note and bound included
    if case == "one_level_shown":
        assert suppressed == ["c", "b"] and got["counts"] == {"a": int(counts["a"])}


def _step_of_one_node(fed: Fed, name: str, doc: dict, round_no: int, analysis_id: str,
                      participants: list, secure: bool) -> dict:
    """hospital_a's reply to round ``round_no`` of an honest run: a later round carries the transcript
    of the rounds before it, with the state the global step gives on them (ADR 0029)."""
    from mipflow.algorithms import get_algorithm
    from mipflow.protocol.request import AnalysisRequest
    from mipflow.secagg.central_side import unmask_sum
    from mipflow.secagg.transcript import TRANSCRIPT_SCHEME, advance, genesis

    masking = {"secure_aggregation": {"scheme": SCHEME, "participants": participants}} if secure else {}
    if round_no == 0:
        return fed.clients[0].step(name, doc, 0, None, researcher=RESEARCHER, project=PROJECT,
                                   analysis_id=analysis_id, **masking)
    names = {p["node"]: p["public_key"] for p in participants}
    chain = genesis(analysis_id=analysis_id, algorithm=name, request=doc, participants=names)
    transcript = {"scheme": TRANSCRIPT_SCHEME, "participants": participants, "previous": None}
    state = None
    request = AnalysisRequest.from_dict(doc)
    for r in range(round_no + 1):
        clients = fed.clients if r < round_no else fed.clients[:1]
        replies = [c.step(name, doc, r, state, researcher=RESEARCHER, project=PROJECT, analysis_id=analysis_id,
                          transcript=transcript, **masking) for c in clients]
        if r == round_no:
            return replies[0]
        aggregates = [reply["aggregates"] for reply in replies]
        step = get_algorithm(name).global_step(r, [unmask_sum(aggregates)] if secure else aggregates, request,
                                               MODEL, json.loads(json.dumps(state)))
        contributions = [{"node": reply["node"], "aggregates": reply["aggregates"], "tags": reply["tags"]}
                         for reply in replies]
        transcript = {**transcript, "previous": {"chain": chain, "state": state, "contributions": contributions}}
        chain = advance(chain, r, state, contributions)
        state = json.loads(json.dumps(step.state))
    raise AssertionError("unreachable")


@pytest.mark.parametrize("name, round_no", [
    ("pearson_correlation", 0),
    ("ttest_independent", 0),
    ("anova_oneway", 0),
    ("kmeans", 0),                  # moments of the initialisation
    ("kmeans", 1),                  # per-cluster counts, deviation sums, within-cluster sums
    ("descriptive_stats", 0),
])
def test_node_releases_only_masked_values(fed: Fed, name: str, round_no: int) -> None:
    """What the central site receives from one node: ring elements and a layout, no statistic
    (every element far from the node's own value), no dataset name."""
    from mipflow.protocol.request import AnalysisRequest

    keys = {c.name: c.secagg_key() for c in fed.clients}
    body = {"scheme": SCHEME,
            "participants": [{"node": k["node"], "public_key": k["public_key"]} for k in keys.values()]}
    doc = (DESCRIBED if name == "descriptive_stats" else CASES[name]).to_dict()
    analysis_id = uuid.uuid4().hex
    reply = _step_of_one_node(fed, name, doc, round_no, analysis_id, body["participants"], secure=True)
    assert set(reply["aggregates"]) == {"secure_aggregation"}
    release = reply["aggregates"]["secure_aggregation"]
    assert not {"d0", "d1", "d2"} & set(_strings(release["layout"]))
    masked = [int(v, 16) for v in release["masked"]]
    plain = _step_of_one_node(fed, name, doc, round_no, analysis_id, body["participants"],
                              secure=False)["aggregates"]
    layout, vector = additive_form(secure_form(name, plain, AnalysisRequest.from_dict(doc), MODEL))
    assert layout == release["layout"] and len(masked) == len(vector) > 0
    assert all(abs(decode(m) - v) > 1e20 for m, v in zip(masked, vector))
    assert len(set(masked)) == len(masked)  # even equal values (zeros, counts) are masked apart
    records = (fed.roots["hospital_a"] / AUDIT_FILE).read_text().splitlines()
    assert any('"secure_aggregation": true' in line and f'"algorithm": "{name}"' in line for line in records)


def _strings(doc) -> list[str]:
    if isinstance(doc, dict):
        return [*map(str, doc), *(t for v in doc.values() for t in _strings(v))]
    if isinstance(doc, list):
        return [t for v in doc for t in _strings(v)]
    return [doc] if isinstance(doc, str) else []


def test_dropout_after_masking_reruns_without_the_node(fed: Fed) -> None:
    """hospital_c masks and answers, but its reply is lost: the others' masks cannot cancel, so the
    analysis restarts with fresh masks for the two remaining nodes."""

    class LosesReply(NodeClient):
        drop_round = 0
        lost = 0

        def step(self, *args, **kwargs):
            reply = super().step(*args, **kwargs)  # the node did mask and release
            assert set(reply["aggregates"]) == {"secure_aggregation"}
            if args[2] == self.drop_round and not self.lost:
                self.lost += 1
                raise NodeUnavailable(f"{self.name}: reply lost")
            return reply

    for name, drop_round in (("linear_regression", 0), ("logistic_regression", 2)):
        lossy = LosesReply(fed.clients[2].endpoint, retries=0)
        lossy.drop_round = drop_round
        try:
            outcome = fed.run(name, clients=[fed.clients[0], fed.clients[1], lossy])
        finally:
            lossy.close()
        assert lossy.lost == 1
        assert list(outcome.excluded) == ["hospital_c"] and "reply lost" in outcome.excluded["hospital_c"]
        assert outcome.secure_aggregation["enabled"] is True
        assert sorted(outcome.secure_aggregation["participants"]) == ["hospital_a", "hospital_b"]
        two = fed.run(name, clients=fed.clients[:2], secure_aggregation=False)
        assert outcome.contributed == two.contributed
        _same_result(outcome.result, two.result, f"{name} after dropout")


def test_disclosure_controls_still_refuse_before_masking(fed: Fed) -> None:
    home = NodeHome(fed.roots["hospital_b"])
    home.set_setting("nfilter_tab", 1000)  # every group of hospital_b is now "small"
    try:
        outcome = fed.run("linear_regression")
    finally:
        home.set_setting("nfilter_tab", 3)
    assert list(outcome.excluded) == ["hospital_b"] and "nfilter_tab" in outcome.excluded["hospital_b"]
    assert sorted(outcome.secure_aggregation["participants"]) == ["hospital_a", "hospital_c"]
    plain = fed.run("linear_regression", clients=[fed.clients[0], fed.clients[2]], secure_aggregation=False)
    _same_result(outcome.result, plain.result, "linear_regression without hospital_b")


def test_unsupported_algorithm(fed: Fed) -> None:
    doc = request(y=("x1", "age")).to_dict()
    with pytest.raises(RequestError, match="not available for pca.*linear_regression"):
        fed.run("pca", doc=doc, secure_aggregation=True)
    outcome = fed.run("pca", doc=doc)
    assert outcome.secure_aggregation["enabled"] is False
    assert "does not support" in outcome.secure_aggregation["reason"]


def test_pinned_node_refuses_a_substituted_key(fed: Fed) -> None:
    keys = {c.name: c.secagg_key()["public_key"] for c in fed.clients}
    store = TrustStore(fed.roots["hospital_a"])
    for peer in ("hospital_b", "hospital_c"):
        store.pin(peer, keys[peer])
    store.set_policy("pinned")
    assert fed.run("ttest_onesample").secure_aggregation["enabled"] is True  # the real keys pass

    fake = KeyPair.generate().public_hex
    for participants in ({**keys, "hospital_b": fake},             # substituted
                         {"hospital_a": keys["hospital_a"], "hospital_x": fake}):  # invented peer
        body = {"scheme": SCHEME, "participants": [{"node": n, "public_key": k}
                                                          for n, k in participants.items()]}
        with pytest.raises(NodeRefused) as err:
            fed.clients[0].step("ttest_onesample", CASES["ttest_onesample"].to_dict(), 0, None,
                                researcher=RESEARCHER, project=PROJECT, analysis_id=uuid.uuid4().hex,
                                secure_aggregation=body)
        assert err.value.status == 403 and err.value.control == "secure_aggregation"
