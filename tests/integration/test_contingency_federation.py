"""contingency_table through three real node services over signed HTTP, default disclosure settings.

Nodes A and B hold tables whose every cell is at least ``nfilter_tab`` (3); node C
holds one woman whose outcome is "unknown", alone in her cell.  Node C must refuse
the table (403, ``nfilter_tab``, audited), the central result must be the pooled
analysis of A and B, and C contributes again once a filter drops the rare level.
The generic ``mipflow analyze`` CLI runs the same analysis.
"""
from __future__ import annotations

import functools

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mipflow.node.controls.audit import AuditLog
from mipflow.exceptions import FederationError
from mipflow.central.client import NodeClient, NodeRefused
from mipflow.central.federation_file import add_node, load_federation
from mipflow.central.rounds import run_analysis as _run_analysis
from mipflow.node.api.app import AUDIT_FILE
from tests.mipflow.algorithms.synthetic import MODEL, make_data
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, pin_each_other, running_nodes
from tests.nodes import standard_home

#: every analysis here runs as the identity the nodes' grants approve
run_analysis = functools.partial(_run_analysis, researcher=RESEARCHER, project=PROJECT)

pytestmark = pytest.mark.xdist_group("federation")

#: node C: (sex, outcome) -> patients; F/unknown is a single patient
NODE_C_CELLS = {("M", "yes"): 8, ("M", "no"): 6, ("M", "unknown"): 5,
                ("F", "yes"): 7, ("F", "no"): 6, ("F", "unknown"): 1}


def _node_c() -> pd.DataFrame:
    rows = [pair for pair, count in NODE_C_CELLS.items() for _ in range(count)]
    frame = pd.DataFrame(rows, columns=["sex", "outcome"])
    frame["dataset"] = "d2"
    return frame


def _with_ids(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
    frame = frame.copy()
    frame["subjectcode"] = [f"{prefix}{i}" for i in range(len(frame))]
    return frame


def _big(seed: int, n: int) -> pd.DataFrame:
    frame = make_data(seed, n)[["dataset", "sex", "outcome"]]
    cells = pd.crosstab(frame["sex"], frame["outcome"]).to_numpy()
    assert cells.min() >= 3, "test data: every cell of nodes A and B must pass nfilter_tab"
    return frame


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("contingency")
    frames = {"node_a": _big(101, 150), "node_b": _big(202, 90), "node_c": _node_c()}
    roots = {}
    for name, frame in frames.items():
        roots[name] = base / name
        standard_home(roots[name], name)  # default controls: min_row_count 10, nfilter_tab 3
        assert load_frame(roots[name], MODEL, _with_ids(frame, name)) == len(frame)
        grant_all(roots[name])
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with running_nodes(list(roots.values())) as urls:
        path = base / "fed.json"
        for (name, root), url in zip(roots.items(), urls):
            add_node(path, name=name, url=url, credentials_from=root)
        clients = [NodeClient(e, retries=0) for e in load_federation(path)]
        try:
            yield {"frames": frames, "roots": roots, "clients": clients, "path": path}
        finally:
            for client in clients:
                client.close()


def doc(filters=None, **parameters) -> dict:
    return {"inputdata": {"data_model": MODEL.key, "datasets": ["d0", "d1", "d2"], "x": ["sex"],
                          "y": ["outcome"], "filters": filters}, "parameters": parameters}


def scipy_table(frames: list[pd.DataFrame]) -> np.ndarray:
    data = pd.concat(frames, ignore_index=True).dropna(subset=["sex", "outcome"])
    table = pd.crosstab(data["sex"], data["outcome"]).reindex(
        index=["M", "F"], columns=["yes", "no", "unknown"], fill_value=0)
    return table.loc[table.sum(axis=1) > 0, table.sum(axis=0) > 0].to_numpy()


def test_one_patient_cell_is_refused_and_result_is_pooled_of_the_others(fed) -> None:
    outcome = run_analysis("contingency_table", doc(), fed["clients"])
    assert sorted(outcome.excluded) == ["node_c"] and "(nfilter_tab)" in outcome.excluded["node_c"]
    a, b = fed["frames"]["node_a"], fed["frames"]["node_b"]
    assert outcome.contributed == {"node_a": len(a), "node_b": len(b)}
    table = scipy_table([a, b])
    result = outcome.result
    assert result["observed"] == table.tolist() and result["n_obs"] == len(a) + len(b)
    ref = stats.chi2_contingency(table)
    np.testing.assert_allclose([result["chi2"]["statistic"], result["chi2"]["p_value"]],
                               [ref.statistic, ref.pvalue], rtol=1e-9)
    np.testing.assert_allclose(result["expected"], ref.expected_freq, rtol=1e-9)
    # the refusal is in node C's audit log; what C said holds no count of its table
    records = AuditLog(fed["roots"]["node_c"] / AUDIT_FILE).records()
    refused = [r for r in records if r.get("algorithm") == "contingency_table" and r["decision"] == "refused"]
    assert refused and refused[-1]["control"] == "nfilter_tab"


def test_node_reply_to_a_direct_call_holds_no_cell(fed) -> None:
    client = next(c for c in fed["clients"] if c.name == "node_c")
    with pytest.raises(NodeRefused) as info:
        client.step("contingency_table", doc(), 0, None, researcher=RESEARCHER, project=PROJECT)
    assert info.value.status == 403 and info.value.control == "nfilter_tab"
    # the reason names the smallest group size only, not the table or its margins
    for count in {8, 6, 5, 7, 19, 14, 15, 11, 13, 33}:
        assert f" {count} " not in f" {info.value.reason} "


def test_min_nodes_turns_the_refusal_into_an_error(fed) -> None:
    with pytest.raises(FederationError, match="node_c: refused \\(nfilter_tab\\)"):
        run_analysis("contingency_table", doc(), fed["clients"], min_nodes=3)


def test_filter_dropping_the_rare_level_lets_every_node_contribute(fed) -> None:
    rule = {"condition": "AND", "rules": [{"id": "outcome", "field": "outcome", "type": "string",
                                           "operator": "not_equal", "value": "unknown"}]}
    outcome = run_analysis("contingency_table", doc(rule, alt_hypothesis="less", yates_correction="no"),
                           fed["clients"], min_nodes=3)
    assert not outcome.excluded
    frames = [f[f["outcome"] != "unknown"] for f in fed["frames"].values()]
    table = scipy_table(frames)
    assert table.shape == (2, 2) and outcome.result["observed"] == table.tolist()
    assert outcome.result["absent_levels"] == {"sex": [], "outcome": ["unknown"]}
    fisher = stats.fisher_exact(table, alternative="less")
    np.testing.assert_allclose(outcome.result["fisher_exact"]["p_value"], fisher.pvalue, rtol=1e-9)
    ref = stats.chi2_contingency(table, correction=False)
    np.testing.assert_allclose(outcome.result["chi2"]["statistic"], ref.statistic, rtol=1e-9)


def test_cli_analyze_runs_contingency_table(fed, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(doc()), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "mipflow.cli", "analyze", "contingency_table",
                           "--federation", str(fed["path"]), "--request", str(request),
                           "--researcher", RESEARCHER, "--project", PROJECT],
                          capture_output=True, text=True, timeout=120, check=True)
    printed = json.loads(proc.stdout)
    assert printed["algorithm"] == "contingency_table" and sorted(printed["excluded"]) == ["node_c"]
    direct = run_analysis("contingency_table", doc(), fed["clients"]).result
    assert printed["result"] == direct
