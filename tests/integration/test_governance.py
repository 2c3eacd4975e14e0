"""Governance through two real node services on loopback (signed HTTP, as the central site calls
them): access grants, the query budget, disabled algorithms, the provenance of results and the
audit log. The unit tests of the same rules sit beside their modules in ``tests/mipflow/``.
"""
from __future__ import annotations

import contextlib
import json
import re
from datetime import datetime, timedelta, timezone

import httpx
import pandas as pd
import pytest

from mipflow.algorithms.provenance import catalogue, code_of
from mipflow.central.client import NodeClient, NodeEndpoint, NodeRefused
from mipflow.central.rounds import run_analysis
from mipflow.exceptions import ConfigError, FederationError, RequestError
from mipflow.node.controls.access import AccessRegistry
from mipflow.node.controls.audit import read_records, verify_log
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client, signed_headers
from tests.nodes import LINREG, linreg, load_frame, pin_each_other, running_nodes
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("governance")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, shared_dir, dementia_model):
    base = tmp_path_factory.mktemp("governance")
    csv = shared_dir / "data" / "dementia_v_0_1"
    holdings = {"hosp_a": ["edsd0", "edsd1", "edsd2"], "hosp_b": ["ppmi0", "ppmi1"]}
    roots, data = {}, {}
    for name, datasets in holdings.items():
        roots[name] = base / name
        standard_home(roots[name], name)
        data[name] = pd.concat([pd.read_csv(csv / f"{d}.csv", dtype=str) for d in datasets], ignore_index=True)
        load_frame(roots[name], dementia_model, data[name])
    credentials = {name: issue_client(root, "central") for name, root in roots.items()}
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with running_nodes(list(roots.values())) as urls:
        clients = {name: NodeClient(NodeEndpoint(name, url, credentials[name].client_id,
                                                 credentials[name].secret.hex()), retries=0)
                   for name, url in zip(roots, urls)}
        try:
            yield {"roots": roots, "urls": dict(zip(roots, urls)), "clients": clients, "data": data,
                   "credentials": credentials}
        finally:
            for client in clients.values():
                client.close()


def last_audit(nodes, name):
    return read_records(nodes["roots"][name] / "audit.log")[-1]


def step(nodes, name, request=LINREG, researcher="alice", project="p1", algorithm="linear_regression",
         analysis_id=None):
    return nodes["clients"][name].step(algorithm, request, 0, None, researcher=researcher, project=project,
                                       analysis_id=analysis_id)


def refused(nodes, name, control, **kw) -> str:
    with pytest.raises(NodeRefused) as info:
        step(nodes, name, **kw)
    assert info.value.status == 403 and info.value.control == control, info.value
    record = last_audit(nodes, name)
    assert record["decision"] == "refused" and record["control"] == control
    assert record["researcher"] == (kw.get("researcher", "alice") or "")
    assert record["project"] == kw.get("project", "p1")
    return info.value.reason


def test_node_refuses_without_a_grant_then_allows_and_audits_who(nodes):
    registry = AccessRegistry(nodes["roots"]["hosp_a"])
    assert "has no grant" in refused(nodes, "hosp_a", "access")
    grant = registry.grant(researcher="alice", project="p1", data_model="dementia:0.1", datasets="edsd0,edsd1",
                           algorithms="linear_regression,ttest_onesample", expires="2099-12-31")
    try:
        reply = step(nodes, "hosp_a", linreg("edsd0", "edsd1"))
        record = last_audit(nodes, "hosp_a")
        assert record["decision"] == "allowed" and record["rows"] == reply["rows"]
        assert (record["researcher"], record["project"], record["grants"]) == ("alice", "p1", [grant.id])
        # a request across nodes is answered on the datasets the grant covers (ADR 0033), and refused
        # when it covers none
        across = step(nodes, "hosp_a", linreg("edsd0", "edsd2"))
        record = last_audit(nodes, "hosp_a")
        assert record["decision"] == "allowed" and record["datasets_answered"] == ["edsd0"]
        assert across["rows"] == step(nodes, "hosp_a", linreg("edsd0"))["rows"]
        assert "edsd2" in refused(nodes, "hosp_a", "access", request=linreg("edsd2"))
        refused(nodes, "hosp_a", "access", algorithm="anova_oneway")
        refused(nodes, "hosp_a", "access", researcher="bob")
        refused(nodes, "hosp_a", "access", project="p2")
        refused(nodes, "hosp_a", "access", researcher=None)
        # the node re-reads access.json: revocation applies to the very next request
        registry.revoke(grant.id)
        assert f"grant {grant.id} revoked" in refused(nodes, "hosp_a", "access")
    finally:
        with contextlib.suppress(ConfigError):
            registry.revoke(researcher="alice")


def test_expired_grant_is_refused_at_the_node(nodes):
    registry = AccessRegistry(nodes["roots"]["hosp_b"])
    yesterday = (datetime.now(timezone.utc).date() - timedelta(days=1)).isoformat()
    grant = registry.grant(researcher="carol", data_model="*", datasets="*", algorithms="*", expires=yesterday)
    reason = refused(nodes, "hosp_b", "access", researcher="carol", request=linreg("ppmi0"))
    assert f"grant {grant.id} expired on {yesterday}" in reason


def test_metadata_lists_only_the_approved_datasets(nodes):
    registry = AccessRegistry(nodes["roots"]["hosp_a"])
    grant = registry.grant(researcher="dave", project="p1", data_model="dementia:0.1", datasets="edsd1",
                           algorithms="*", expires="never")
    client = nodes["clients"]["hosp_a"]
    try:
        (model,) = client.metadata("dave", "p1")["data_models"]
        assert [d["dataset"] for d in model["datasets"]] == ["edsd1"] and model["variables"]
        assert client.metadata("dave", "p2")["data_models"][0]["datasets"] == []
        assert client.metadata()["data_models"][0]["datasets"] == []  # nobody named: no datasets
        assert last_audit(nodes, "hosp_a")["what"] == "metadata"
        everything = registry.grant(researcher="dave", project="p1", data_model="dementia:0.1", datasets="*",
                                    algorithms="*", expires="never")
        held = sorted(nodes["data"]["hosp_a"]["dataset"].unique())
        assert [d["dataset"] for d in client.metadata("dave", "p1")["data_models"][0]["datasets"]] == held
        registry.revoke(everything.id)
        with pytest.raises(NodeRefused) as info:
            client.metadata("dave; drop", "p1")
        assert info.value.status == 403 and info.value.control == "access"
    finally:
        registry.revoke(grant.id)


def test_identity_changed_after_signing_is_refused(nodes):
    """The researcher is inside the signed body: changing it breaks the signature (HTTP 401)."""
    AccessRegistry(nodes["roots"]["hosp_b"]).grant(researcher="erin", data_model="*", datasets="*",
                                                   algorithms="*", expires="never")
    path = "/v1/steps/linear_regression"
    body = {"request": linreg("ppmi0", "ppmi1"), "round": 0, "researcher": "erin", "project": "p1"}
    raw = json.dumps(body).encode()
    cred = nodes["credentials"]["hosp_b"]
    headers = {**signed_headers(cred.client_id, cred.secret, "POST", path, raw), "Content-Type": "application/json"}
    forged = json.dumps({**body, "researcher": "mallory"}).encode()
    response = httpx.post(nodes["urls"]["hosp_b"] + path, content=forged, headers=headers)
    assert response.status_code == 401 and response.json()["detail"] == "bad signature"
    assert last_audit(nodes, "hosp_b")["control"] == "authentication"
    # the metadata query string is signed too
    meta_headers = signed_headers(cred.client_id, cred.secret, "GET", "/v1/metadata?researcher=erin&project=p1", b"")
    response = httpx.get(nodes["urls"]["hosp_b"] + "/v1/metadata?researcher=mallory&project=p1",
                         headers=meta_headers)
    assert response.status_code == 401
    # the untouched request goes through
    response = httpx.post(nodes["urls"]["hosp_b"] + path, content=raw, headers=headers)
    assert response.status_code == 200 and last_audit(nodes, "hosp_b")["researcher"] == "erin"


def test_query_budget_counts_analyses_not_rounds(nodes):
    root = nodes["roots"]["hosp_b"]
    for researcher in ("frank", "ivan"):
        AccessRegistry(root).grant(researcher=researcher, data_model="*", datasets="*", algorithms="*",
                                   expires="never")
    home = NodeHome(root)
    home.set_setting("query_budget", 2)
    try:
        request = linreg("ppmi0", "ppmi1")
        for _ in range(3):  # three rounds / restarts of one analysis count once
            step(nodes, "hosp_b", request, researcher="frank", analysis_id="first")
        step(nodes, "hosp_b", request, researcher="frank", analysis_id="second")
        reason = refused(nodes, "hosp_b", "query_budget", request=request, researcher="frank", analysis_id="third")
        assert "2 of 2 analyses in the last 24 hours" in reason
        step(nodes, "hosp_b", request, researcher="frank", analysis_id="first")  # still going
        step(nodes, "hosp_b", request, researcher="ivan", analysis_id="third")   # another researcher
        home.set_setting("query_budget", 0)
        step(nodes, "hosp_b", request, researcher="frank", analysis_id="third")
    finally:
        home.set_setting("query_budget", 0)


def test_disabled_algorithm_is_refused_with_its_reason(nodes):
    root = nodes["roots"]["hosp_b"]
    AccessRegistry(root).grant(researcher="gina", data_model="*", datasets="*", algorithms="*", expires="never")
    home = NodeHome(root)
    home.set_setting("disabled_algorithms", "linear_regression")
    try:
        reason = refused(nodes, "hosp_b", "disabled_algorithm", researcher="gina", request=linreg("ppmi0"))
        assert "disabled by the admin of node hosp_b" in reason
        listed = nodes["clients"]["hosp_b"].algorithms()
        assert listed["disabled"] == ["linear_regression"] and "linear_regression" not in listed["algorithms"]
        assert listed["catalogue"]["version"] == catalogue()["version"]
    finally:
        home.set_setting("disabled_algorithms", "")
    step(nodes, "hosp_b", linreg("ppmi0"), researcher="gina")


def test_result_provenance_names_researcher_and_step_code(nodes):
    """Through run_analysis: code digests from each node, a node without a grant left out with its reason."""
    AccessRegistry(nodes["roots"]["hosp_a"]).grant(researcher="hana", project="study-7", data_model="dementia:0.1",
                                                   datasets="*", algorithms="ttest_onesample", expires="never")
    request = {"inputdata": {"data_model": "dementia:0.1", "datasets": ["edsd0", "edsd1"], "x": [],
                             "y": ["lefthippocampus"], "filters": None}, "parameters": {"mu": 3.0}}
    clients = list(nodes["clients"].values())
    # a dataset no node lists for hana (hosp_b holds ppmi0 but does not approve her): an error before any step
    with pytest.raises(RequestError, match=r"no node lists dataset\(s\) ppmi0 for researcher hana"):
        run_analysis("ttest_onesample", {**request, "inputdata": {**request["inputdata"],
                                                                  "datasets": ["edsd0", "ppmi0"]}},
                     clients, researcher="hana", project="study-7")
    outcome = run_analysis("ttest_onesample", request, clients, researcher="hana", project="study-7")
    assert set(outcome.contributed) == {"hosp_a"}
    assert outcome.excluded["hosp_b"].startswith("refused (access)")
    assert (outcome.researcher, outcome.project) == ("hana", "study-7") and len(outcome.analysis_id) == 32
    assert outcome.code["nodes"] == {"hosp_a": code_of("ttest_onesample")} and outcome.code["consistent"]
    record = last_audit(nodes, "hosp_a")
    assert record["algorithm_sha256"] == code_of("ttest_onesample")["algorithm_sha256"]
    assert record["catalogue_version"] == catalogue()["version"]
    # the federated mean equals the pooled one of the rows hosp_a holds in those datasets
    data = nodes["data"]["hosp_a"]
    values = pd.to_numeric(data[data.dataset.isin(["edsd0", "edsd1"])]["lefthippocampus"]).dropna()
    assert outcome.result["n_obs"] == len(values)
    assert abs(outcome.result["mean_diff"] - values.mean()) <= 1e-9 * abs(values.mean())  # Exareme2: the mean
    with pytest.raises(FederationError, match="hosp_b: refused \\(access\\)"):
        run_analysis("ttest_onesample", request, clients, researcher="hana", project="study-7", min_nodes=2)


def test_audit_log_holds_no_row_level_data_and_verifies(nodes):
    allowed_keys = {"at", "seq", "digest", "prev", "client", "endpoint", "what", "algorithm", "round",
                    "data_model", "datasets", "x", "y", "filters", "rows", "decision", "control", "reason", "ms",
                    "researcher", "project", "grants", "analysis", "algorithm_sha256", "catalogue_version",
                    "cohort",  # cohort: SHA-256 digest of the keyed row hashes (ADR 0013), no row data
                    "counted",  # counted: a refused step charged to the query budgets (ADR 0025), a boolean
                    "chain",  # chain: the analysis' hash chain of rounds (ADR 0029), a digest
                    "datasets_answered"}  # the requested dataset codes the grants cover (ADR 0033)
    for name, root in nodes["roots"].items():
        assert verify_log(root / "audit.log").ok
        records = read_records(root / "audit.log")
        assert any(r["decision"] == "allowed" and r.get("rows") for r in records)
        for record in records:
            assert set(record) <= allowed_keys, set(record) - allowed_keys
            assert isinstance(record.get("rows", 0), int)
            assert isinstance(record.get("counted", False), bool)
        text = (root / "audit.log").read_text()
        data = nodes["data"][name]
        for code in data["subjectcode"]:
            assert not re.search(rf"(?<![0-9A-Za-z+]){re.escape(code)}(?![0-9A-Za-z])", text), code
        # no measured value of any patient either, as written in the export or as a float
        for cell in data["lefthippocampus"].dropna().head(300):
            for form in {cell, repr(float(cell))}:
                assert not re.search(rf"(?<![0-9.]){re.escape(form)}(?![0-9])", text), form
