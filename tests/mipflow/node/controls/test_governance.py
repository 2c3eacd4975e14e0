"""Governance at a node: access grants, query budget, audit verification and summary, code approval.

Unit tests of :mod:`mipflow.node.controls.access`, :mod:`mipflow.node.controls.query_budget`, :mod:`mipflow.node.controls.audit`
and :mod:`mipflow.algorithms.provenance`, then the same rules through two real node
services on loopback (signed HTTP, as the central site calls them).
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import inspect
import json
import sys
from datetime import date, datetime, timedelta, timezone

import httpx
import pandas as pd
import pytest

from mipflow import cli
from mipflow.node.controls.access import AccessDenied, AccessRegistry
from mipflow.node.controls.audit import AuditLog, read_records, verify_log
from mipflow.protocol.signing import issue_client, signed_headers
from mipflow.node.controls.query_budget import QueryBudget, analysis_key
from mipflow.algorithms.provenance import algorithm_code, catalogue, code_of
from mipflow.node.home import NodeHome
from mipflow.exceptions import ConfigError, DisclosureError, FederationError, RequestError
from mipflow.central.client import NodeClient, NodeEndpoint, NodeRefused
from mipflow.central.rounds import run_analysis
from tests.nodes import load_frame, running_nodes

pytestmark = pytest.mark.xdist_group("governance")

TODAY = date(2026, 6, 15)
LINREG = {"inputdata": {"data_model": "dementia:0.1", "datasets": ["edsd0"], "x": ["leftamygdala"],
                        "y": ["lefthippocampus"], "filters": None}, "parameters": {}}


def linreg(*datasets: str) -> dict:
    doc = json.loads(json.dumps(LINREG))
    doc["inputdata"]["datasets"] = list(datasets)
    return doc


# --------------------------------------------------------------------------- access grants (unit)


@pytest.fixture
def registry(tmp_path) -> AccessRegistry:
    return AccessRegistry(tmp_path)


def check(registry, researcher="alice", project="p1", datasets=("edsd0",), algorithm="linear_regression",
          data_model="dementia:0.1", today=TODAY):
    return registry.check(researcher=researcher, project=project, data_model=data_model, datasets=list(datasets),
                          algorithm=algorithm, today=today)


@pytest.mark.parametrize("grant, request_, allowed", [
    pytest.param(dict(researcher="alice"), {}, True, id="researcher-any-project"),
    pytest.param(dict(researcher="alice"), dict(researcher="bob"), False, id="other-researcher"),
    pytest.param(dict(project="p1"), dict(researcher="bob"), True, id="project-anyone-in-it"),
    pytest.param(dict(project="p1"), dict(project="p2"), False, id="other-project"),
    pytest.param(dict(researcher="alice", project="p2"), {}, False, id="researcher-in-other-project"),
    pytest.param(dict(researcher="*", project="*"), dict(researcher="zoe", project="q"), True, id="explicit-anyone"),
    pytest.param(dict(researcher="alice", datasets="edsd0,edsd1"), dict(datasets=("edsd0", "edsd1")), True,
                 id="listed-datasets"),
    pytest.param(dict(researcher="alice", datasets="edsd0"), dict(datasets=("edsd0", "edsd1")), False,
                 id="one-dataset-not-granted"),
    pytest.param(dict(researcher="alice", datasets="*"), dict(datasets=("edsd0", "x9")), True, id="all-datasets"),
    pytest.param(dict(researcher="alice", algorithms="ttest_onesample"), {}, False, id="algorithm-not-granted"),
    pytest.param(dict(researcher="alice", data_model="stroke:0.1"), {}, False, id="other-data-model"),
    pytest.param(dict(researcher="alice", data_model="*"), {}, True, id="any-data-model"),
    pytest.param(dict(researcher="alice", expires=TODAY.isoformat()), {}, True, id="last-day"),
    pytest.param(dict(researcher="alice", expires=(TODAY - timedelta(days=1)).isoformat()), {}, False,
                 id="expired"),
])
def test_grants_decide(registry, grant, request_, allowed):
    args = dict(data_model="dementia:0.1", datasets="*", algorithms="*", expires="never") | grant
    made = registry.grant(**args)
    if allowed:
        assert check(registry, **request_) == [made.id]
    else:
        with pytest.raises(AccessDenied) as info:
            check(registry, **request_)
        assert info.value.control == "access"


def test_datasets_may_come_from_several_grants(registry):
    registry.grant(researcher="alice", data_model="dementia:0.1", datasets="edsd0", algorithms="*", expires="never")
    with pytest.raises(AccessDenied, match=r"not approved for dataset\(s\) \['edsd1'\]"):
        check(registry, datasets=("edsd0", "edsd1"))
    registry.grant(researcher="alice", data_model="dementia:0.1", datasets="edsd1", algorithms="*", expires="never")
    assert len(check(registry, datasets=("edsd0", "edsd1"))) == 2


def test_expired_and_revoked_grants_say_so(registry):
    old = registry.grant(researcher="alice", data_model="*", datasets="*", algorithms="*", expires="2026-01-31")
    with pytest.raises(AccessDenied, match=f"grant {old.id} expired on 2026-01-31"):
        check(registry)
    new = registry.grant(researcher="alice", data_model="*", datasets="*", algorithms="*", expires="2027-01-01")
    assert check(registry) == [new.id]
    assert [g.id for g in registry.revoke(new.id)] == [new.id]
    with pytest.raises(AccessDenied, match=f"grant {new.id} revoked"):
        check(registry)
    with pytest.raises(ConfigError, match="no unrevoked grant"):
        registry.revoke(new.id)  # a second revoke of the same grant matches nothing


def test_revoke_everything_of_a_researcher(registry):
    for dataset in ("edsd0", "edsd1"):
        registry.grant(researcher="alice", data_model="*", datasets=dataset, algorithms="*", expires="never")
    keep = registry.grant(researcher="bob", data_model="*", datasets="*", algorithms="*", expires="never")
    assert len(registry.revoke(researcher="alice")) == 2
    with pytest.raises(AccessDenied):
        check(registry)
    assert check(registry, researcher="bob") == [keep.id]


@pytest.mark.parametrize("args, message", [
    pytest.param(dict(), "names a researcher, a project, or both", id="no-subject"),
    pytest.param(dict(researcher="alice", datasets="*,edsd0"), "do not combine", id="wildcard-with-names"),
    pytest.param(dict(researcher="alice", datasets=""), "at least one dataset", id="no-datasets"),
    pytest.param(dict(researcher="alice", expires="next week"), "must be a date", id="bad-expiry"),
    pytest.param(dict(researcher="al ice"), "not a valid identity", id="bad-identity"),
    pytest.param(dict(researcher="alice", data_model="dementia"), "CODE:VERSION", id="bad-data-model"),
])
def test_bad_grants_are_refused(registry, args, message):
    base = dict(data_model="dementia:0.1", datasets="*", algorithms="*", expires="never")
    with pytest.raises(ConfigError, match=message):
        registry.grant(**(base | args))


@pytest.mark.parametrize("researcher, project, message", [
    pytest.param(None, "p1", "names no researcher", id="no-researcher"),
    pytest.param("alice", "", "names no project", id="no-project"),
    pytest.param("alice'; --", "p1", "not a valid identity", id="injection"),
])
def test_requests_without_a_valid_identity_are_refused(registry, researcher, project, message):
    registry.grant(researcher="*", project="*", data_model="*", datasets="*", algorithms="*", expires="never")
    with pytest.raises(AccessDenied, match=message):
        check(registry, researcher=researcher, project=project)


def test_access_cli_grant_list_revoke(tmp_path, capsys):
    NodeHome.init(tmp_path / "h", "h")
    home = str(tmp_path / "h")
    assert cli.main(["access", "grant", home, "--researcher", "alice", "--data-model", "dementia:0.1",
                     "--datasets", "edsd0,edsd1", "--algorithms", "*", "--until", "2099-12-31",
                     "--note", "ethics 2026/17"]) == 0
    granted = json.loads(capsys.readouterr().out)["granted"]
    assert granted["project"] == "*" and granted["datasets"] == ["edsd0", "edsd1"]
    assert cli.main(["access", "list", home]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == granted["id"] and listed["status"] == "active"
    assert cli.main(["access", "revoke", home, granted["id"]]) == 0
    capsys.readouterr()
    assert cli.main(["access", "list", home]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["access", "list", home, "--all"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "revoked"
    assert cli.main(["access", "grant", home, "--data-model", "*", "--datasets", "*", "--algorithms", "*",
                     "--until", "never"]) == 2
    assert "names a researcher" in capsys.readouterr().err
    assert oct((tmp_path / "h" / "access.json").stat().st_mode & 0o777) == "0o600"


# --------------------------------------------------------------------------- query budget (unit)


def test_budget_counts_distinct_analyses_in_24_hours():
    budget = QueryBudget()
    t0 = 1_000_000.0
    first, second, third = (analysis_key(f"id{i}", "linear_regression", LINREG) for i in range(3))
    for key in (first, second):
        budget.check("alice", key, 2, now=t0)
        budget.charge("alice", key, now=t0)
    budget.check("alice", first, 2, now=t0 + 60)  # a later round of a counted analysis
    with pytest.raises(DisclosureError, match=r"2 of 2 analyses") as info:
        budget.check("alice", third, 2, now=t0 + 60)
    assert info.value.control == "query_budget"
    budget.check("bob", third, 2, now=t0 + 60)  # per researcher
    budget.check("alice", third, 0, now=t0 + 60)  # 0 = unlimited
    budget.check("alice", third, 2, now=t0 + 24 * 3600 + 1)  # the window slid past both
    # the same id re-used for another request is another analysis
    assert analysis_key("id0", "linear_regression", linreg("edsd1")) != first


def test_budget_is_rebuilt_from_the_audit_log(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    for i in range(3):
        log.append(researcher="alice", decision="allowed", analysis=f"k{i}", round=0)
        log.append(researcher="alice", decision="allowed", analysis=f"k{i}", round=1)
    log.append(researcher="alice", decision="refused", analysis="k9", control="min_row_count")
    budget = QueryBudget(read_records(tmp_path / "audit.log"))
    assert budget.used("alice") == 3 and budget.used("bob") == 0


# --------------------------------------------------------------------------- audit log (unit + CLI)


def _write_log(path, n=6):
    log = AuditLog(path)
    for i in range(n):
        log.append(client="central", researcher="alice" if i % 2 else "bob", endpoint="/v1/steps",
                   algorithm="linear_regression", decision="allowed" if i < n - 2 else "refused",
                   control="" if i < n - 2 else "access", analysis=f"a{i}")
    return path.read_bytes().splitlines(keepends=True)


def _edit(line: bytes, **changes) -> bytes:
    doc = json.loads(line)
    doc.update(changes)
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


def _recomputed(line: bytes, **changes) -> bytes:
    """An edit whose forger also recomputed the record's own digest."""
    from mipflow.node.controls.audit import _content_digest

    doc = json.loads(line)
    doc.update(changes)
    doc["digest"] = _content_digest(doc)
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


@pytest.mark.parametrize("tamper, broken_at, words", [
    pytest.param(lambda ls: ls[:2] + [_edit(ls[2], decision="allowed", researcher="eve")] + ls[3:], 3,
                 "edited", id="edited"),
    pytest.param(lambda ls: ls[:2] + [_recomputed(ls[2], researcher="eve")] + ls[3:], 4,
                 "does not chain to record 3", id="edited-digest-recomputed"),
    pytest.param(lambda ls: ls[:2] + ls[3:], 3, "deleted or reordered", id="deleted"),
    pytest.param(lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:], 3, "deleted or reordered", id="reordered"),
    pytest.param(lambda ls: ls[:-1], 6, "deleted from", id="last-deleted"),
    pytest.param(lambda ls: ls[:-1] + [_recomputed(ls[-1], decision="allowed")], 6, "(the last) was edited",
                 id="last-edited"),
    pytest.param(lambda ls: ls[:3] + [b"{not json\n"] + ls[4:], 4, "not a JSON object", id="garbled"),
])
def test_audit_verify_finds_the_first_broken_record(tmp_path, capsys, tamper, broken_at, words):
    home = NodeHome.init(tmp_path / "h", "h")
    path = home.root / "audit.log"
    lines = _write_log(path)
    assert verify_log(path).ok and verify_log(path).records == 6
    assert cli.main(["audit", "verify", str(home.root)]) == 0
    assert "6 record(s), chain intact" in capsys.readouterr().out
    path.write_bytes(b"".join(tamper(lines)))
    report = verify_log(path)
    assert not report.ok and report.broken_at == broken_at and words in report.reason, report
    assert cli.main(["audit", "verify", str(home.root)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN at record {broken_at}" in out and words in out


def test_audit_log_continues_its_chain_after_a_restart(tmp_path):
    path = tmp_path / "audit.log"
    _write_log(path, n=3)
    AuditLog(path).append(decision="allowed", what="metadata")  # a new process appends
    report = verify_log(path)
    assert report.ok and report.records == 4 and read_records(path)[-1]["seq"] == 4


def test_audit_show_summarises_per_researcher_algorithm_and_reason(tmp_path, capsys):
    home = NodeHome.init(tmp_path / "h", "h")
    log = AuditLog(home.root / "audit.log")
    rows = [("alice", "linear_regression", "allowed", "", "a1"), ("alice", "linear_regression", "allowed", "", "a1"),
            ("alice", "anova_oneway", "refused", "min_row_count", None), ("bob", "linear_regression", "refused",
                                                                         "access", None),
            ("bob", "ttest_onesample", "refused", "query_budget", None), ("carol", "anova_oneway", "allowed", "", "c1")]
    for who, algorithm, decision, control, analysis in rows:
        log.append(researcher=who, algorithm=algorithm, decision=decision, control=control, analysis=analysis)
    assert cli.main(["audit", "show", str(home.root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == 6
    assert summary["by_researcher"]["alice"] == {"allowed": 2, "refused": 1, "analyses": 1}
    assert summary["by_researcher"]["bob"] == {"refused": 2, "analyses": 0}
    assert summary["by_algorithm"]["anova_oneway"] == {"refused": 1, "allowed": 1}
    assert summary["refusals_by_control"] == {"min_row_count": 1, "access": 1, "query_budget": 1}
    assert cli.main(["audit", "show", str(home.root), "--researcher", "bob", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["by_researcher"]) == ["bob"]
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    assert cli.main(["audit", "show", str(home.root), "--since", tomorrow, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 0
    assert cli.main(["audit", "show", str(home.root)]) == 0
    text = capsys.readouterr().out
    assert "alice" in text and "query_budget" in text and "6 record(s)" in text
    assert cli.main(["audit", "show", str(home.root), "--since", "yesterday"]) == 2


# --------------------------------------------------------------------------- code approval (unit)


def test_algorithm_digest_covers_its_module_and_the_algorithm_modules_it_uses():
    from mipflow.algorithms import ALGORITHMS

    cat = catalogue()
    assert set(cat["algorithms"]) == set(ALGORITHMS)  # generic over the registry
    for name, algorithm in ALGORITHMS.items():
        item = cat["algorithms"][name]
        assert type(algorithm).__module__ in item["modules"] and "mipflow.algorithms.contract" in item["modules"]
        lines = ""
        for module in item["modules"]:
            with open(inspect.getsourcefile(sys.modules[module]), "rb") as handle:
                lines += f"{module} {hashlib.sha256(handle.read()).hexdigest()}\n"
        assert item["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
        assert code_of(name) == {"catalogue_version": cat["version"], "algorithm_sha256": item["sha256"]}
    # one digest per distinct body of code (two algorithms may share a module, e.g. naive Bayes)
    code_sets = {tuple(item["modules"]) for item in cat["algorithms"].values()}
    assert len({item["sha256"] for item in cat["algorithms"].values()}) == len(code_sets) > 1
    assert cat["version"].endswith("+" + cat["sha256"][:12])


def test_digest_changes_with_the_code(tmp_path, monkeypatch):
    """A module whose source changes gets another digest (a new module under the package)."""
    import importlib

    import mipflow.algorithms as package

    source = ("from mipflow.algorithms.contract import Step\n\nclass Toy:\n    name = 'toy'\n    VERSION = {v}\n")
    folder = tmp_path / "pkg"
    folder.mkdir()
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    digests = []
    for version in (1, 2):
        (folder / "toy_for_digest.py").write_text(source.format(v=version))
        sys.modules.pop("mipflow.algorithms.toy_for_digest", None)
        importlib.invalidate_caches()
        module = importlib.import_module("mipflow.algorithms.toy_for_digest")
        from mipflow.algorithms import provenance as cat_module

        cat_module._source_digest.cache_clear()
        digests.append(algorithm_code(module.Toy())["sha256"])
        assert algorithm_code(module.Toy())["modules"] == ["mipflow.algorithms.contract",
                                                             "mipflow.algorithms.toy_for_digest"]
    sys.modules.pop("mipflow.algorithms.toy_for_digest", None)
    from mipflow.algorithms import provenance as cat_module

    cat_module._source_digest.cache_clear()
    assert digests[0] != digests[1]


def test_disabled_algorithms_setting(tmp_path, capsys):
    home = NodeHome.init(tmp_path / "h", "h")
    assert cli.main(["node", "config", str(home.root), "disabled_algorithms", "ttest_paired, anova_oneway"]) == 0
    assert NodeHome(home.root).settings.disabled_algorithms == "anova_oneway,ttest_paired"
    capsys.readouterr()
    assert cli.main(["node", "config", str(home.root), "disabled_algorithms", "no_such_thing"]) == 2
    assert "unknown algorithm" in capsys.readouterr().err
    assert cli.main(["node", "config", str(home.root), "query_budget", "-1"]) == 2


def test_run_analysis_needs_a_researcher_and_project():
    for who in (dict(project="p1"), dict(researcher="alice"), dict(researcher="a b", project="p1")):
        with pytest.raises(RequestError, match="researcher|project"):
            run_analysis("linear_regression", LINREG, [], **who)


# --------------------------------------------------------------------------- through real node services


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, shared_dir, dementia_model):
    base = tmp_path_factory.mktemp("governance")
    csv = shared_dir / "data" / "dementia_v_0_1"
    holdings = {"hosp_a": ["edsd0", "edsd1", "edsd2"], "hosp_b": ["ppmi0", "ppmi1"]}
    roots, data = {}, {}
    for name, datasets in holdings.items():
        roots[name] = base / name
        NodeHome.init(roots[name], name)
        data[name] = pd.concat([pd.read_csv(csv / f"{d}.csv", dtype=str) for d in datasets], ignore_index=True)
        load_frame(roots[name], dementia_model, data[name])
    credentials = {name: issue_client(root, "central") for name, root in roots.items()}
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
        assert "edsd2" in refused(nodes, "hosp_a", "access", request=linreg("edsd0", "edsd2"))
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
    request = {"inputdata": {"data_model": "dementia:0.1", "datasets": ["edsd0", "edsd1", "ppmi0"], "x": [],
                             "y": ["lefthippocampus"], "filters": None}, "parameters": {"mu": 3.0}}
    clients = list(nodes["clients"].values())
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
                    "cohort"}  # cohort: SHA-256 digest of the keyed row hashes (ADR 0013), no row data
    for name, root in nodes["roots"].items():
        assert verify_log(root / "audit.log").ok
        records = read_records(root / "audit.log")
        assert any(r["decision"] == "allowed" and r.get("rows") for r in records)
        for record in records:
            assert set(record) <= allowed_keys, set(record) - allowed_keys
            assert isinstance(record.get("rows", 0), int)
        text = (root / "audit.log").read_text()
        data = nodes["data"][name]
        for code in data["subjectcode"]:
            assert not re.search(rf"(?<![0-9A-Za-z+]){re.escape(code)}(?![0-9A-Za-z])", text), code
        # no measured value of any patient either, as written in the export or as a float
        for cell in data["lefthippocampus"].dropna().head(300):
            for form in {cell, repr(float(cell))}:
                assert not re.search(rf"(?<![0-9.]){re.escape(form)}(?![0-9])", text), form
