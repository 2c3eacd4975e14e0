"""Study mode against a hostile researcher (ADR 0028), through two real node processes.

Two node services (``mipflow node serve``) run under the same name with the same study protocol
approved for the project, on stroke rows that differ (sizes 220 and 340, other patients, other
ages).  Every request outside the study's family must be refused by the request alone: the two
nodes answer the same bytes, with control ``study``, and no number that is not in the request or
the protocol.  A filter that is not one of the named subgroups (a threshold one step away, an
intersection of two subgroups, a negation) is refused the same way, whatever it would select.
A researcher id new to the project is bound by the study like the first one; and an analysis in
another project cannot difference against the study's cohorts (they are in the node's ledger).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from mipflow.node.controls import study_approval
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client, signed_headers
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import (
    ALGORITHMS, ELDERLY, PROJECT, WOMEN, protocol, rule, stroke_rows, where,
)
from tests.nodes import grant_all, load_frame, running_nodes
from tests.nodes import standard_home

NAME = "hospital"
DATASETS = ["hospital_a", "hospital_b", "hospital_c"]
OTHER_PROJECT = "side-project"


class Served:
    def __init__(self, url: str, credential: Any) -> None:
        self.url, self.credential = url, credential

    def call(self, algorithm: str, request: dict[str, Any], *, researcher: str = "alice",
             project: str = PROJECT) -> httpx.Response:
        body = json.dumps({"request": request, "round": 0, "state": None, "researcher": researcher,
                           "project": project, "analysis_id": None}).encode()
        path = f"/v1/steps/{algorithm}"
        headers = signed_headers(self.credential.client_id, self.credential.secret, "POST", path, body)
        return httpx.post(self.url + path, content=body, headers={**headers, "Content-Type": "application/json"},
                          timeout=60)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[dict[str, Served]]:
    roots, credentials = {}, {}
    # the small node's rows were seed 21's until the union rule reached the level cells (ADR 0028, amended): its
    # elderly survivors were five, one or two per sex and stroke type, and the study's cells (cohorts by two of
    # sex, stroke type and death, the women and men by the other two) determine every combination of the table
    # age band x sex x stroke type x death but its four-way interaction, so the sums of two of those patients
    # (their ages added up or subtracted) followed from cells of three rows or more: a real leak, refused at
    # approval.  Seed 24's rows hold no such union (as seed 22's), so the honest protocol is approved on both
    for which, (seed, n) in {"small": (24, 220), "large": (22, 340)}.items():
        root = Path(tmp_path_factory.mktemp(f"study-{which}"))
        standard_home(root, NAME)
        load_frame(root, STROKE, stroke_rows(seed, n, "hospital_a", which))
        grant_all(root, researcher="*", project=PROJECT)  # a project-wide grant: any id in the project
        grant_all(root, researcher="alice", project=OTHER_PROJECT)
        # without the t-test: its groups of a nominal variable hold min_row_count rows in a study (ADR 0050),
        # and these small nodes' elderly survivors are fewer; the attacks here do not use it
        study_approval.approve(NodeHome(root), PROJECT,
                               protocol(algorithms=[a for a in ALGORITHMS if a != "ttest_independent"]))
        credentials[which] = issue_client(root, "central")
        roots[which] = root
    with running_nodes(list(roots.values())) as urls:
        yield {which: Served(url, credentials[which]) for which, url in zip(roots, urls)}


def request_of(y=("nihss_admission",), x=("age",), filters=None, datasets=DATASETS,
               data_model=STROKE.key, **parameters) -> dict[str, Any]:
    return {"inputdata": {"data_model": data_model, "datasets": list(datasets), "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


OUTSIDE = [
    pytest.param("pca", request_of(y=("age", "nihss_admission"), x=()), "algorithm 'pca' is not in the study",
                 id="algorithm"),
    pytest.param("linear_regression", request_of(x=("age", "glucose_mmol")),
                 "variable(s) 'glucose_mmol' are not study variables", id="variable"),
    pytest.param("linear_regression", request_of(datasets=["hospital_a", "elsewhere"]),
                 "dataset(s) 'elsewhere' are not in the study", id="dataset"),
    # filters that are not a named subgroup, each aimed at a few rows
    pytest.param("linear_regression", request_of(filters=where(rule("age", "greater_or_equal", 64))),
                 "the filter is not one of the study's subgroups", id="threshold-one-step-away"),
    pytest.param("linear_regression", request_of(filters=where(rule("age", "greater_or_equal", 65),
                                                                rule("sex", "equal", "F"))),
                 "the filter is not one of the study's subgroups", id="intersection-of-subgroups"),
    pytest.param("linear_regression", request_of(filters={**ELDERLY, "not": True}),
                 "the filter is not one of the study's subgroups", id="complement-of-a-subgroup"),
    pytest.param("linear_regression", request_of(filters=where(rule("age", "not_equal", 18.5))),
                 "the filter is not one of the study's subgroups", id="all-but-one"),
    pytest.param("kaplan_meier", request_of(y=("followup_days", "death_90d"), x=(),
                                            filters=where(rule("followup_days", "less", 30)), event_level="yes"),
                 "the filter is not one of the study's subgroups", id="survival-window"),
]


@pytest.mark.parametrize("algorithm, request_, words", OUTSIDE)
def test_a_request_outside_the_study_is_refused_by_the_request_alone(pair, algorithm, request_, words) -> None:
    replies = {which: node.call(algorithm, request_) for which, node in pair.items()}
    for reply in replies.values():
        assert reply.status_code == 403, reply.text
        assert reply.json()["control"] == "study" and words in reply.json()["refused"]
    assert replies["small"].content == replies["large"].content  # the same bytes, whatever the rows
    public = set(re.findall(r"\d+", json.dumps(request_) + json.dumps(protocol()) + NAME))
    assert set(re.findall(r"\d+", replies["small"].json()["refused"])) <= public


def test_a_new_researcher_id_does_not_escape_the_study(pair) -> None:
    for node in pair.values():
        for researcher in ("alice", "alice2", "mallory"):
            refused = node.call("linear_regression", request_of(filters=where(rule("age", "greater", 88))),
                                researcher=researcher)
            assert refused.status_code == 403 and refused.json()["control"] == "study"
            answered = node.call("linear_regression", request_of(filters=WOMEN), researcher=researcher)
            assert answered.status_code == 200, answered.text
            assert answered.json()["mode"]["study"] == "stroke-outcomes"


def test_another_project_cannot_difference_against_the_study(pair) -> None:
    """The study population minus a few rows, asked in a project without a study, meets the
    study's cohorts in the ledger (approval recorded them): refused as differencing."""
    for node in pair.values():
        whole = node.call("linear_regression", request_of(), project=OTHER_PROJECT)
        assert whole.status_code == 200 and "mode" not in whole.json()  # standard mode, the same rows
        near = node.call("linear_regression", request_of(filters=where(rule("age", "less", 89))),
                         project=OTHER_PROJECT)
        assert near.status_code == 403 and near.json()["control"] == "differencing", near.text
