"""Secure aggregation over three real node services (signed HTTP on loopback).

The central site sees each node's aggregates only masked; the unmasked sum gives the
plain federated result and the pooled statsmodels fit.  A node dropping out after it
masked restarts the analysis without it; disclosure controls still run before masking;
a substituted peer key is refused by a node that pinned its peers.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from mipflow import secagg
from mipflow.audit import AUDIT_FILE
from mipflow.auth import issue_client
from mipflow.config import NodeHome
from mipflow.exceptions import RequestError
from mipflow.federation import NodeClient, NodeEndpoint, NodeRefused, NodeUnavailable, run_analysis
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, running_nodes

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
}


@dataclass
class Fed:
    roots: dict[str, Path]
    clients: list[NodeClient]

    def run(self, name: str, clients=None, **kwargs):
        return run_analysis(name, CASES[name].to_dict() if name in CASES else kwargs.pop("doc"),
                            clients or self.clients, researcher=RESEARCHER, project=PROJECT, **kwargs)


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("secagg")
    roots = {}
    data = DATA.assign(subjectcode=[f"p{i}" for i in range(len(DATA))])
    for k, node in enumerate(NODES):
        roots[node] = base / node
        home = NodeHome.init(roots[node], node)  # default disclosure settings (min_row_count 10, nfilter_tab 3)
        # the analyses here use overlapping cohorts on purpose (complete cases of different
        # variables); the differencing control has its own tests (tests/mipflow/test_cohorts.py)
        home.set_setting("differencing_check", 0)
        load_frame(roots[node], MODEL, data[SPLIT == k].reset_index(drop=True))
        grant_all(roots[node])
    credentials = {node: issue_client(root, "central") for node, root in roots.items()}
    with running_nodes(list(roots.values())) as urls:
        clients = [NodeClient(NodeEndpoint(node, url, credentials[node].client_id, credentials[node].secret.hex()),
                              retries=0) for node, url in zip(roots, urls)]
        try:
            yield Fed(roots, clients)
        finally:
            for client in clients:
                client.close()


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


def test_node_releases_only_masked_values(fed: Fed) -> None:
    """What the central site receives from one node: ring elements and a layout, no statistic."""
    keys = {c.name: c.secagg_key() for c in fed.clients}
    body = {"scheme": secagg.SCHEME,
            "participants": [{"node": k["node"], "public_key": k["public_key"]} for k in keys.values()]}
    doc = CASES["pearson_correlation"].to_dict()
    analysis_id = uuid.uuid4().hex
    reply = fed.clients[0].step("pearson_correlation", doc, 0, None, researcher=RESEARCHER, project=PROJECT,
                                analysis_id=analysis_id, secure_aggregation=body)
    assert set(reply["aggregates"]) == {"secure_aggregation"}
    masked = [int(v, 16) for v in reply["aggregates"]["secure_aggregation"]["masked"]]
    plain = fed.clients[0].step("pearson_correlation", doc, 0, None, researcher=RESEARCHER, project=PROJECT,
                                analysis_id=analysis_id)["aggregates"]
    _, vector = secagg.additive_form(plain)
    assert len(masked) == len(vector)
    assert all(abs(secagg.decode(m) - v) > 1e20 for m, v in zip(masked, vector))
    records = (fed.roots["hospital_a"] / AUDIT_FILE).read_text().splitlines()
    assert any('"secure_aggregation": true' in line for line in records)


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
    store = secagg.TrustStore(fed.roots["hospital_a"])
    for peer in ("hospital_b", "hospital_c"):
        store.pin(peer, keys[peer])
    store.set_policy("pinned")
    assert fed.run("ttest_onesample").secure_aggregation["enabled"] is True  # the real keys pass

    fake = secagg.KeyPair.generate().public_hex
    for participants in ({**keys, "hospital_b": fake},             # substituted
                         {"hospital_a": keys["hospital_a"], "hospital_x": fake}):  # invented peer
        body = {"scheme": secagg.SCHEME, "participants": [{"node": n, "public_key": k}
                                                          for n, k in participants.items()]}
        with pytest.raises(NodeRefused) as err:
            fed.clients[0].step("ttest_onesample", CASES["ttest_onesample"].to_dict(), 0, None,
                                researcher=RESEARCHER, project=PROJECT, analysis_id=uuid.uuid4().hex,
                                secure_aggregation=body)
        assert err.value.status == 403 and err.value.control == "secure_aggregation"
