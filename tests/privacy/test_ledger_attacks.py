"""One ledger per node (ADR 0030), attacked through real node processes.

Two node services (``mipflow node serve`` on loopback, default settings, the same name) hold
different stroke rows (240 and 300 patients): every patient has a distinct age, and the target is
the only one aged exactly :data:`TARGET_AGE`.  Both hold their patients twice, under the stroke
data model and under a second version of it with the same variables (a new model version loaded
from the same export).  The attacks:

* **a chain of three cohorts**: everyone, ``age < T`` and ``age > T``; each pair differs and
  overlaps by 0 or at least ``min_row_count`` rows, so the pairwise rule (ADR 0013) answers all
  three, yet the first minus the other two is the target.  Refused at the third, control
  ``differencing``, with a message naming the study protocol;
* **a near copy under the second data model**: everyone under version 1, everyone but the target
  under version 2 (before ADR 0030, two ledgers that never met).  Refused;
* the refusals are the same bytes at both nodes, whose rows differ.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from mipflow.protocol.signing import Credential, issue_client, signed_headers
from tests.mipflow.algorithms.survival_data import STROKE
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, running_nodes
from tests.privacy.conftest import DATASETS, make_rows, rule, where
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("ledger-attacks")

NAME = "hospital"
#: The second version of the stroke model: the same variables.
STROKE_V2 = dataclasses.replace(STROKE, version="0.2", raw={**STROKE.raw, "version": "0.2"})
#: The target's age, unique at both nodes.
TARGET_AGE = 60.5


def node_rows(seed: int, n: int) -> pd.DataFrame:
    frame = make_rows(seed, n)
    rng = np.random.default_rng(seed)
    ages = rng.permutation(np.arange(len(frame))) * 0.25 + 30.0  # distinct, never 60.5 (a multiple of 0.25 off)
    ages[ages == TARGET_AGE] += 0.1
    frame["age"] = ages
    frame.loc[0, "age"] = TARGET_AGE
    return frame


@dataclasses.dataclass
class Served:
    url: str
    credential: Credential

    def call(self, model: str, filters=None) -> httpx.Response:
        request = {"inputdata": {"data_model": model, "datasets": DATASETS, "x": ["systolic_bp"],
                                 "y": ["nihss_admission"], "filters": filters}, "parameters": {}}
        body = json.dumps({"request": request, "round": 0, "state": None, "researcher": RESEARCHER,
                           "project": PROJECT, "analysis_id": None}).encode()
        path = "/v1/steps/linear_regression"
        headers = signed_headers(self.credential.client_id, self.credential.secret, "POST", path, body)
        return httpx.post(self.url + path, content=body, headers={**headers, "Content-Type": "application/json"},
                          timeout=60)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[list[Served]]:
    roots, credentials = [], []
    for seed, n in ((3, 240), (5, 300)):
        root = Path(tmp_path_factory.mktemp(f"ledger-{seed}"))
        standard_home(root, NAME)
        rows = node_rows(seed, n)
        assert (rows["age"] == TARGET_AGE).sum() == 1 and rows["age"].is_unique
        for model in (STROKE, STROKE_V2):
            assert load_frame(root, model, rows) == len(rows)
        grant_all(root)
        credentials.append(issue_client(root, "central"))
        roots.append(root)
    with running_nodes(roots) as urls:
        yield [Served(url, credential) for url, credential in zip(urls, credentials)]


def _answered(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def _refusal(response: httpx.Response) -> bytes:
    assert response.status_code == 403, response.text
    assert response.json()["control"] == "differencing", response.text
    return response.content


def test_a_chain_of_three_cohorts_is_refused_the_same_at_both_nodes(nodes):
    below, above = where(rule("age", "less", TARGET_AGE)), where(rule("age", "greater", TARGET_AGE))
    refusals = []
    for node in nodes:
        _answered(node.call(STROKE.key))
        _answered(node.call(STROKE.key, below))
        refusals.append(_refusal(node.call(STROKE.key, above)))
        # the chain's complement side is not a way round: "age >= T" with the two answered ones
        # isolates nothing (it is everyone minus "age < T"), and is answered
        _answered(node.call(STROKE.key, where(rule("age", "greater_or_equal", TARGET_AGE))))
    assert refusals[0] == refusals[1]
    message = json.loads(refusals[0])
    text = json.dumps(message)
    assert "study protocol" in text and "mipflow study" in text
    assert str(TARGET_AGE) not in text


def test_a_near_copy_under_a_second_data_model_version_is_refused_the_same_at_both_nodes(nodes):
    all_but_target = where(rule("age", "not_equal", TARGET_AGE))
    refusals = []
    for node in nodes:
        _answered(node.call(STROKE.key))  # answered before (or now): everyone under version 0.1
        refusals.append(_refusal(node.call(STROKE_V2.key, all_but_target)))
        _answered(node.call(STROKE_V2.key))  # the same patients under the new version: a re-run
    assert refusals[0] == refusals[1]
