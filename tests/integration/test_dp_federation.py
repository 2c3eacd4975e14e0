"""Differential privacy through the federation (ADR 0015): two real node services, one with DP on.

The DP node's answers are noisy and labelled, its budget is charged per
researcher, refusals are HTTP 403 ``dp_budget`` and audited, the ledger
survives a restart, and the node without DP still gives the exact pooled
statistics with no privacy label.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mipflow.protocol.signing import issue_client
from mipflow.node.home import NodeHome
from mipflow.protocol.datamodel import load_data_model
from mipflow.central.client import NodeClient, NodeEndpoint, NodeRefused
from mipflow.central.rounds import run_analysis
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, pin_each_other, running_nodes
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("dp_federation")

DATASETS = {"dp_node": "hospital_a", "exact_node": "hospital_b"}


def stroke_frame(seed: int, n: int, dataset: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "subjectcode": [f"{dataset}-{i:04d}" for i in range(n)], "dataset": dataset,
        "age": np.round(rng.uniform(18, 90, size=n), 1).astype(str),
        "nihss_admission": rng.integers(0, 43, size=n).astype(str),
        "sex": rng.choice(["M", "F"], size=n),
        "stroke_type": rng.choice(["ischaemic", "haemorrhagic", "tia"], size=n),
    })


def descriptive(*datasets: str) -> dict:
    return {"inputdata": {"data_model": "stroke:0.1", "datasets": list(datasets), "x": [],
                          "y": ["age", "sex"], "filters": None}, "parameters": {}}


def histogram(*datasets: str) -> dict:
    return {"inputdata": {"data_model": "stroke:0.1", "datasets": list(datasets), "x": ["sex"],
                          "y": ["age"], "filters": None}, "parameters": {"bins": 6}}


@pytest.fixture(scope="module")
def federation(tmp_path_factory, stroke_model_path):
    model = load_data_model(stroke_model_path)
    base = tmp_path_factory.mktemp("dp")
    roots, frames = {}, {}
    for seed, (name, dataset) in enumerate(DATASETS.items()):
        roots[name] = base / name
        standard_home(roots[name], name)
        frames[name] = stroke_frame(seed, 400, dataset)
        load_frame(roots[name], model, frames[name])
        grant_all(roots[name])
        for who in ("dp_alice", "dp_bob", "dp_carol"):
            grant_all(roots[name], researcher=who)
    NodeHome(roots["dp_node"]).set_setting("dp_enabled", 1)
    NodeHome(roots["dp_node"]).set_setting("dp_epsilon", 0.5)
    NodeHome(roots["dp_node"]).set_setting("dp_budget_epsilon", 1.0)
    credentials = {name: issue_client(root, "central") for name, root in roots.items()}
    yield {"roots": roots, "frames": frames, "credentials": credentials, "model": model}


def clients(federation, urls) -> dict[str, NodeClient]:
    return {name: NodeClient(NodeEndpoint(name, url, federation["credentials"][name].client_id,
                                          federation["credentials"][name].secret.hex()), retries=0)
            for name, url in zip(federation["roots"], urls)}


def audit(federation, name) -> list[dict]:
    path = federation["roots"][name] / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def exact_age(frame: pd.DataFrame) -> tuple[float, float]:
    age = pd.to_numeric(frame["age"])
    return float(age.mean()), float(age.std(ddof=1))


def test_noisy_results_are_labelled_budgeted_refused_and_remembered(federation):
    roots = list(federation["roots"].values())
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with running_nodes(roots) as urls:
        nodes = clients(federation, urls)
        both = list(nodes.values())
        # 1. the DP node's share is noisy and labelled; the exact node is named as exact
        outcome = run_analysis("descriptive_stats", descriptive("hospital_a", "hospital_b"), both,
                               researcher="dp_alice", project=PROJECT)
        block = outcome.privacy
        assert block and outcome.result["privacy"] == block and block["approximate"] is True
        assert block["exact_nodes"] == ["exact_node"] and set(block["noisy_nodes"]) == {"dp_node"}
        label = block["noisy_nodes"]["dp_node"]
        assert label["mechanism"] == "laplace" and label["epsilon"] == pytest.approx(0.5, rel=1e-9)
        assert label["delta"] == 0.0 and label["clamped"] == {"age": [18.0, 90.0]}
        by_dataset = {(r["variable"], r["dataset"]): r["data"] for r in outcome.result["variable_based"]}
        exact_mean, _ = exact_age(federation["frames"]["exact_node"])
        assert by_dataset[("age", "hospital_b")]["mean"] == pytest.approx(exact_mean, rel=1e-9)
        noisy_mean, _ = exact_age(federation["frames"]["dp_node"])
        assert by_dataset[("age", "hospital_a")]["mean"] != pytest.approx(noisy_mean, rel=1e-9)
        # the stated row count is noisy too; the exact one stays in the node's audit log
        record = audit(federation, "dp_node")[-1]
        assert record["rows"] == 400 and record["dp"]["epsilon"] == pytest.approx(0.5, rel=1e-9)
        assert outcome.contributed["exact_node"] == 400

        # 2. the second step spends the budget (1.0), the third is refused with its reason, audited
        nodes["dp_node"].step("multiple_histograms", histogram("hospital_a"), 0, None, researcher="dp_alice",
                              project=PROJECT)
        with pytest.raises(NodeRefused) as info:
            nodes["dp_node"].step("descriptive_stats", descriptive("hospital_a"), 0, None, researcher="dp_alice",
                                  project=PROJECT)
        assert info.value.status == 403 and info.value.control == "dp_budget"
        assert "spent epsilon 1" in info.value.reason
        record = audit(federation, "dp_node")[-1]
        assert (record["decision"], record["control"], record["researcher"]) == ("refused", "dp_budget", "dp_alice")
        # in a federated run the node is left out with that reason; the exact node still answers
        outcome = run_analysis("descriptive_stats", descriptive("hospital_a", "hospital_b"), both,
                               researcher="dp_alice", project=PROJECT)
        assert outcome.excluded["dp_node"].startswith("refused (dp_budget)")
        assert outcome.privacy == {} and "privacy" not in outcome.result
        # another researcher has their own budget
        reply = nodes["dp_node"].step("multiple_histograms", histogram("hospital_a"), 0, None,
                                      researcher="dp_bob", project=PROJECT)
        assert reply["privacy"]["spent"]["epsilon"] == pytest.approx(0.5, rel=1e-9)
        # algorithms without a DP mechanism are refused clearly
        logreg = {"inputdata": {"data_model": "stroke:0.1", "datasets": ["hospital_a"], "x": ["age"],
                                "y": ["sex"], "filters": None}, "parameters": {"positive_class": "M"}}
        with pytest.raises(NodeRefused) as info:
            nodes["dp_node"].step("logistic_regression", logreg, 0, None, researcher="dp_bob", project=PROJECT)
        assert info.value.control == "dp_unsupported"
        for client in both:
            client.close()

    # 3. after a restart the ledger still holds dp_alice's spending
    with running_nodes(roots) as urls:
        nodes = clients(federation, urls)
        with pytest.raises(NodeRefused) as info:
            nodes["dp_node"].step("multiple_histograms", histogram("hospital_a"), 0, None, researcher="dp_alice",
                                  project=PROJECT)
        assert info.value.control == "dp_budget"
        for client in nodes.values():
            client.close()


def test_gaussian_node_and_the_exact_path(federation):
    dp_home = NodeHome(federation["roots"]["dp_node"])
    dp_home.set_setting("dp_mechanism", "gaussian")
    try:
        pin_each_other(federation["roots"])  # the admins pinned each other's keys (ADR 0014)
        with running_nodes(list(federation["roots"].values())) as urls:
            nodes = clients(federation, urls)
            outcome = run_analysis("multiple_histograms", histogram("hospital_a", "hospital_b"),
                                   list(nodes.values()), researcher="dp_carol", project=PROJECT)
            label = outcome.result["privacy"]["noisy_nodes"]["dp_node"]
            assert label["mechanism"] == "gaussian" and label["delta"] == 1e-6 and label["rho"] > 0
            assert label["epsilon"] == pytest.approx(0.5, rel=1e-6)
            overall = outcome.result["histogram"][0]
            ages = pd.concat([pd.to_numeric(f["age"]) for f in federation["frames"].values()])
            exact = np.histogram(ages, bins=6, range=(18, 90))[0]
            assert [c or 0 for c in overall["counts"]] != exact.tolist()
            # six bins, each with Gaussian noise of sigma = 1 / sqrt(2 rho / 2 blocks): within six SDs of the sum
            sigma = 1 / math.sqrt(label["rho"])
            assert abs(sum(c or 0 for c in overall["counts"]) - exact.sum()) < 6 * math.sqrt(6) * sigma
            # the node without DP alone: exact, unlabelled, as before
            exact_only = run_analysis("descriptive_stats", descriptive("hospital_b"), [nodes["exact_node"]],
                                      researcher=RESEARCHER, project=PROJECT)
            assert exact_only.privacy == {} and "privacy" not in exact_only.result
            mean, std = exact_age(federation["frames"]["exact_node"])
            data = next(r["data"] for r in exact_only.result["variable_based"]
                        if (r["variable"], r["dataset"]) == ("age", "hospital_b"))
            assert data["mean"] == pytest.approx(mean, rel=1e-9) and data["std"] == pytest.approx(std, rel=1e-9)
            reply = nodes["exact_node"].step("descriptive_stats", descriptive("hospital_b"), 0, None,
                                             researcher=RESEARCHER, project=PROJECT)
            assert reply["privacy"] is None and reply["rows"] == 400
            assert "dp" not in audit(federation, "exact_node")[-1]
            assert not (federation["roots"]["exact_node"] / "privacy_ledger.jsonl").exists()
            for client in nodes.values():
                client.close()
    finally:
        dp_home.set_setting("dp_mechanism", "laplace")
