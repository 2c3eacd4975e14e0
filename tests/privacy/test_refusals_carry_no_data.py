"""Refusals carry no data (issue 14.2): the principle, through two real nodes.

Two node services run on loopback (``mipflow node serve``, :func:`tests.nodes.running_nodes`)
under the same name and the default settings, with stroke rows that differ: sizes (120 and
300 rows), extremes (the youngest patients, the highest NIHSS), the longest follow-up (3650 and
3000 days) and the size of every small group the cases below aim at.  For each refusal case the
same signed request goes to both; the nodes refuse it for the same reason, so a refusal that
depends on the request and the settings alone must be the same bytes at both, and may hold no
number that is not in the request or the node's settings.  A refusal naming a row count, a
group size, an observed extreme or the longest follow-up fails this test, whatever its wording.

The same two nodes answer a ``max_time`` sweep: whether a request is answered or refused does
not depend on the rows' follow-up (issue 14.4, the attack of issue 14's ``max_time`` item).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from mipflow.node.home import NodeHome
from mipflow.protocol.signing import Credential, issue_client, signed_headers
from tests.mipflow.algorithms.survival_data import STROKE
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, running_nodes
from tests.privacy.conftest import DATASETS, make_rows, rule, where
from tests.nodes import standard_home

#: Both nodes answer as this node (no digit: the name is in every refusal).
NAME = "hospital"

#: The oldest age of the synthetic rows is 89; the cases' small cohort is exactly these rows.
OLD = 89.0
#: Ages of the young patients at each node: below every other row's (30 and up).
YOUNG = {"small": [18.5], "large": [18.5, 18.7, 21.0]}
#: NIHSS of the young patients (the first is the target of the k-means case).
YOUNG_NIHSS = {"small": [42.0], "large": [42.0, 41.0, 20.0]}
#: Rows aged OLD at each node: at least min_row_count, too few for 12 parameters or 3 folds.
OLD_ROWS = {"small": 15, "large": 25}
#: The longest follow-up at each node.
LONGEST = {"small": 3650.0, "large": 3000.0}
#: How many rows had thrombolysis (a contingency cell and a survival group under nfilter_tab).
THROMBOLYSIS = {"small": 1, "large": 2}


def node_rows(which: str) -> pd.DataFrame:
    """The stroke rows of one node (see the module docstring for how the two differ)."""
    seed, n = {"small": (3, 120), "large": (5, 300)}[which]
    frame = make_rows(seed, n)
    rng = np.random.default_rng(seed)
    frame["followup_days"] = np.minimum(frame["followup_days"], LONGEST[which] - 1)
    frame.loc[0, "followup_days"] = LONGEST[which]
    frame.loc[frame["age"] >= OLD, "age"] = OLD - 1
    young = len(YOUNG[which])
    old = rng.choice(np.arange(young, len(frame)), OLD_ROWS[which], replace=False)
    frame.loc[old, "age"] = OLD
    frame.loc[: young - 1, "age"] = YOUNG[which]
    frame.loc[: young - 1, "nihss_admission"] = YOUNG_NIHSS[which]
    frame["thrombolysis"] = "no"
    frame.loc[: THROMBOLYSIS[which] - 1, "thrombolysis"] = "yes"
    frame["subjectcode"] = [f"{which}-{i}" for i in range(len(frame))]
    return frame


@dataclasses.dataclass
class Served:
    """One loopback node: its URL, the central site's credential, its rows and settings."""

    url: str
    credential: Credential
    rows: pd.DataFrame
    home: NodeHome

    def call(self, algorithm: str, request: dict[str, Any], *, round: int = 0, state=None,
             analysis_id: str | None = None) -> httpx.Response:
        body = json.dumps({"request": request, "round": round, "state": state, "researcher": RESEARCHER,
                           "project": PROJECT, "analysis_id": analysis_id}).encode()
        path = f"/v1/steps/{algorithm}"
        headers = signed_headers(self.credential.client_id, self.credential.secret, "POST", path, body)
        return httpx.post(self.url + path, content=body, headers={**headers, "Content-Type": "application/json"},
                          timeout=60)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """The two nodes, default settings, served by ``mipflow node serve`` on loopback."""
    roots, frames, credentials = {}, {}, {}
    for which in ("small", "large"):
        root = Path(tmp_path_factory.mktemp(f"refusals-{which}"))
        standard_home(root, NAME)
        frames[which] = node_rows(which)
        assert load_frame(root, STROKE, frames[which]) == len(frames[which])
        grant_all(root)
        credentials[which] = issue_client(root, "central")
        roots[which] = root
    with running_nodes(list(roots.values())) as urls:
        yield {which: Served(url, credentials[which], frames[which], NodeHome(roots[which]))
               for which, url in zip(roots, urls)}


def request_of(y=(), x=(), filters=None, parameters=None) -> dict[str, Any]:
    return {"inputdata": {"data_model": STROKE.key, "datasets": DATASETS, "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters or {}}


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _numbers(text: str) -> set[str]:
    return set(_NUMBER.findall(text))


def public_numbers(node: Served, *texts: str) -> set[str]:
    """Numbers the requester knows: those of the request and of the node's settings."""
    settings = json.dumps(dataclasses.asdict(node.home.settings), default=str)
    return set().union(*(_numbers(t) for t in texts), _numbers(settings))


YOUNG_FILTER = where(rule("age", "less", 25))            # 1 row at one node, 3 at the other
ALL_BUT_YOUNGEST = where(rule("age", "greater", 19))     # everyone but 1 row, or but 2
OLD_FILTER = where(rule("age", "greater", OLD - 0.5))    # 15 rows, or 25
MANY_COVARIATES = ["sex", "stroke_type", "age", "onset_to_door_min", "systolic_bp", "glucose_mmol",
                   "atrial_fibrillation", "diabetes", "hypertension", "mrs_90d"]  # 12 parameters
#: k-means centres: one on the target, whose cluster holds 1 row at one node and 2 at the other
CENTRES = [[18.5, 7.0], [25.0, 7.0]]  # age and glucose: k-means takes real variables (ADR 0050)
SURVIVAL_Y = ["followup_days", "death_90d"]

#: (id, algorithm, request, round, state, status, control or None for a 400)
CASES = [
    ("min_row_count", "descriptive_stats", request_of(y=["age", "nihss_admission"], filters=YOUNG_FILTER),
     0, None, 403, "min_row_count"),
    ("nfilter_glm", "linear_regression", request_of(y=["nihss_admission"], x=MANY_COVARIATES, filters=OLD_FILTER),
     0, None, 403, "nfilter_glm"),
    ("cv-fold-under-min_row_count", "linear_regression_cv",
     request_of(y=["nihss_admission"], x=["glucose_mmol"], filters=OLD_FILTER, parameters={"n_splits": 3}),
     0, None, 403, "min_row_count"),
    ("contingency-cell", "contingency_table", request_of(y=["thrombolysis"], x=["sex"]), 0, None, 403,
     "nfilter_tab"),
    ("survival-group", "kaplan_meier", request_of(y=SURVIVAL_Y, x=["thrombolysis"], parameters={"event_level": "yes"}),
     0, None, 403, "nfilter_tab"),
    ("kmeans-extremes", "kmeans", request_of(y=["age", "glucose_mmol"], parameters={"k": 2, "init": "exareme2"}),
     0, None, 403, "raw_extremes"),
    # a later round's state of the centre's making: refused before the step reads it (ADR 0029)
    ("kmeans-small-cluster", "kmeans", request_of(y=["age", "glucose_mmol"], parameters={"k": 2}),
     1, {"k": 2, "centers": CENTRES}, 403, "round_verification"),
    ("differencing", "descriptive_stats", request_of(y=["age", "nihss_admission"], filters=ALL_BUT_YOUNGEST),
     0, None, 403, "differencing"),
    ("max_time-beyond-declared", "kaplan_meier",
     request_of(y=SURVIVAL_Y, parameters={"event_level": "yes", "max_time": 4000.0}), 0, None, 400, None),
    ("histogram-range-narrowed", "multiple_histograms", request_of(y=["age"], parameters={"bins": 1}),
     1, {"range": [18.0, 19.0], "bins": 1}, 403, "round_verification"),
]


def _kmeans_cluster_sizes(rows: pd.DataFrame, centres: list[list[float]]) -> np.ndarray:
    values = rows[["age", "glucose_mmol"]].to_numpy(dtype=float)
    nearest = np.argmin(((values[:, None, :] - np.asarray(centres)[None]) ** 2).sum(axis=2), axis=1)
    return np.bincount(nearest, minlength=len(centres))


def test_the_two_nodes_differ_where_the_cases_aim(pair) -> None:
    """The cases' preconditions: each node refuses for the case's reason, with different data."""
    small, large = pair["small"].rows, pair["large"].rows
    assert len(small) != len(large)
    assert small["followup_days"].max() != large["followup_days"].max()
    assert small["age"].min() == large["age"].min() == 18.5  # the target is at both ...
    assert sorted(small["age"])[1] != sorted(large["age"])[1]  # ... the next youngest is not
    counts = {w: int((pair[w].rows["age"] < 25).sum()) for w in pair}
    assert counts == {"small": 1, "large": 3}
    old = {w: int((pair[w].rows["age"] > OLD - 0.5).sum()) for w in pair}
    assert old == OLD_ROWS and all(10 <= n < 12 / 0.33 and n // 3 < 10 for n in old.values())
    assert {w: int((pair[w].rows["thrombolysis"] == "yes").sum()) for w in pair} == THROMBOLYSIS
    sizes = {w: _kmeans_cluster_sizes(pair[w].rows, CENTRES)[0] for w in pair}
    assert sizes["small"] == 1 < sizes["large"] < pair["small"].home.settings.min_row_count


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_refusal_is_the_same_bytes_at_two_nodes_with_different_data(pair, case) -> None:
    name, algorithm, request, round_no, state, status, control = case
    if control == "differencing":  # the cohort the near-duplicate is compared with: answered at both
        for node in pair.values():
            assert node.call(algorithm, request_of(y=["age", "nihss_admission"])).status_code == 200
    replies = {w: node.call(algorithm, request, round=round_no, state=state, analysis_id=name)
               for w, node in pair.items()}
    for reply in replies.values():
        assert reply.status_code == status, reply.text
        doc = reply.json()
        if control is not None:
            assert doc["control"] == control, doc
    assert replies["small"].content == replies["large"].content
    body = replies["small"].text
    sent = json.dumps({"request": request, "round": round_no, "state": state})
    extra = _numbers(body) - public_numbers(pair["small"], sent)
    assert not extra, (extra, body)


@pytest.mark.parametrize("max_time", [100.0, 2999.0, 3000.0, 3001.0, 3649.0, 3650.0, 3651.0, 5000.0])
def test_a_max_time_sweep_answers_the_same_whatever_the_longest_follow_up(pair, max_time) -> None:
    """Before, a node refused a ``max_time`` below its longest follow-up ("holds times after the
    end of follow-up"): sweeping ``max_time`` found the longest follow-up (3650 at one node, 3000
    at the other).  Now rows followed longer are censored at ``max_time``, and only a ``max_time``
    beyond the declared range (``followup_days``: 0 to 3650) is refused, the same at both."""
    request = request_of(y=SURVIVAL_Y, parameters={"event_level": "yes", "max_time": max_time, "bin_width": 50.0})
    replies = {w: node.call("kaplan_meier", request, analysis_id=f"sweep-{max_time}") for w, node in pair.items()}
    declared = STROKE.variable("followup_days").max_value
    expected = 200 if max_time <= declared else 400
    assert {w: r.status_code for w, r in replies.items()} == {"small": expected, "large": expected}, \
        {w: r.text for w, r in replies.items()}
    if expected == 400:
        assert replies["small"].content == replies["large"].content
        assert "max_time must lie within the declared range" in replies["small"].json()["detail"]
    else:
        for w, reply in replies.items():
            group = reply.json()["aggregates"]["groups"][0]
            assert sum(group["events"]) + sum(group["censored"]) == len(pair[w].rows)  # nobody left out
