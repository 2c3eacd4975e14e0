"""A changed pool after new data at one node, through real, pinned node processes (ADR 0060).

Kaplan-Meier by sex over three pinned nodes runs on pooled bins (ADR 0052); then hospital_a loads a
nightly export and the researcher runs the same analysis again.  b and c, whose rows did not change,
are bound to the first pool (ADR 0059); they answer the new pool because every node derives its bins
against the analysis's chain of earlier pools (the partitions nest, the pooled difference is 0 or at
least ``nfilter_tab`` in every common bin).  What this file shows:

* the re-run is answered on pooled bins and equals the pooled computation on the rows with their
  times rounded up to the result's bin ends;
* between the two results, the counts at every end both share differ by 0 or at least ``nfilter_tab``
  per curve (the central site's own subtraction, done here on what it received);
* an attack by a change of 2 rows at hospital_a is refused by hospital_a's ledger (rows near its bound
  cohort), before anything is pooled;
* a load of 12 rows whose difference holds one death among the women is refused by the rule at b and c
  at round 1 (no count in the reason); their rows get no per-node release either (ADR 0059), and the
  message tells the researcher what to do.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.rounds import run_analysis
from mipflow.exceptions import MipflowError
from mipflow.node.controls.audit import AUDIT_FILE
from mipflow.node.home import NodeHome
from tests.mipflow.algorithms.survival_data import STROKE, complete, make_stroke, request
from tests.mipflow.algorithms.test_survival import KM_COLUMNS, check_km
from tests.nodes import PROJECT, RESEARCHER, load_frame, pinned_federation

pytestmark = pytest.mark.xdist_group("pooled_chain")

DATA = make_stroke(20261208, 600)
NODES = ("hospital_a", "hospital_b", "hospital_c")


class Federation:
    def __init__(self, roots: dict[str, Path], clients: dict[str, Any], frames: dict[str, pd.DataFrame]) -> None:
        self.roots, self.clients, self.frames = roots, clients, frames
        self.results: list[dict] = []

    def run(self) -> Any:
        doc = request("kaplan_meier", x=("sex",), bin_width=7.0).to_dict()
        return run_analysis("kaplan_meier", doc, [self.clients[n] for n in NODES], researcher=RESEARCHER,
                            project=PROJECT)

    def load(self, name: str, rows: pd.DataFrame) -> None:
        load_frame(self.roots[name], STROKE, rows)
        self.frames[name] = pd.concat([self.frames[name], rows], ignore_index=True)

    def pooled(self) -> pd.DataFrame:
        return complete(pd.concat([self.frames[n] for n in NODES], ignore_index=True), KM_COLUMNS)

    def refusals(self, name: str) -> list[dict]:
        path = self.roots[name] / AUDIT_FILE
        audit = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r for r in audit if r.get("decision") == "refused" and r.get("control") == "pooled_bins"]


def new_rows(seed: int, n: int, prefix: str) -> pd.DataFrame:
    rows = make_stroke(seed, n).assign(dataset="hospital_a")
    rows["subjectcode"] = [f"{prefix}-{i}" for i in range(n)]
    return rows


def censored_men(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows as men censored at day 400 (complete cases): the tests control what a difference holds."""
    return rows.assign(sex="M", death_90d="no", followup_days=400.0, nihss_admission=5.0)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[Federation]:
    with pinned_federation(tmp_path_factory.mktemp("pooled_chain"), DATA, STROKE, NODES) as (roots, clients, frames):
        yield Federation(roots, clients, frames)


def tab(federation: Federation) -> int:
    return int(NodeHome(federation.roots["hospital_a"]).settings.nfilter_tab)


def cumulative(result: dict) -> dict[str, dict[float, np.ndarray]]:
    """Per curve, at each time point, the events and censorings up to it (what the central site sums)."""
    out = {}
    for curve in result["curves"]:
        events, censored = np.cumsum(curve["events"]), np.cumsum(curve["censored"])
        out[curve["group"]] = {t: np.array([e, c]) for t, e, c in zip(curve["timeline"], events, censored)}
    return out


def test_first_run_is_pooled(federation) -> None:
    outcome = federation.run()
    assert outcome.result["binning"]["partition"] == "pooled"
    check_km(outcome.result, federation.pooled(), grouped=True)
    federation.results.append(outcome.result)


def test_a_nightly_load_at_one_node_is_answered_on_pooled_bins(federation) -> None:
    before = {n: len(federation.refusals(n)) for n in NODES}
    federation.load("hospital_a", new_rows(11, 160, "night-1"))
    outcome = federation.run()
    assert outcome.result["binning"]["partition"] == "pooled" and set(outcome.contributed) == set(NODES)
    check_km(outcome.result, federation.pooled(), grouped=True)  # the pooled computation on the new bins
    assert all(len(c["timeline"]) >= 4 for c in outcome.result["curves"])
    assert {n: len(federation.refusals(n)) for n in NODES} == before
    # what the central site can subtract: at every time point both results share, per curve, the
    # cumulative events and censorings differ by 0 or at least nfilter_tab
    first, second = cumulative(federation.results[0]), cumulative(outcome.result)
    shared = 0
    for group, points in second.items():
        for t, counts in points.items():
            if t in first[group]:
                shared += 1
                difference = counts - first[group][t]
                assert np.all((difference == 0) | (difference >= tab(federation))), (group, t)
    assert shared >= 4  # (7 on this data: 2 per curve besides the end, the new deaths per sex over tab)
    federation.results.append(outcome.result)
    # the same analysis again on the same data: the same result
    again = federation.run()
    assert again.result["curves"] == outcome.result["curves"]


def test_a_change_of_two_rows_is_refused_by_the_changed_node(federation) -> None:
    before = {n: len(federation.refusals(n)) for n in NODES}
    federation.load("hospital_a", censored_men(new_rows(12, 2, "attack")))
    with pytest.raises(MipflowError, match="pooled_bins"):
        federation.run()
    refused = federation.refusals("hospital_a")[before["hospital_a"]:]
    assert refused and refused[0]["round"] == 0  # a's ledger: rows near its bound cohort, before sealing
    for name in ("hospital_b", "hospital_c"):  # nothing pooled was answered by the others
        assert all(r["round"] == 0 for r in federation.refusals(name)[before[name]:])


def test_a_load_whose_difference_holds_one_death_is_refused_by_the_rule(federation) -> None:
    rows = censored_men(new_rows(13, 12, "night-2"))
    rows.loc[0, ["sex", "death_90d"]] = ["F", "yes"]  # one death among the new women: a difference cell of 1
    federation.load("hospital_a", rows)
    before = {n: len(federation.refusals(n)) for n in NODES}
    with pytest.raises(MipflowError, match="pooled_bins") as refused_run:
        federation.run()
    # b and c refuse the pool at round 1; the central site's per-node attempt is refused by them too (ADR 0059),
    # and by hospital_a: its new cohort is its bound one in the windows of time the new rows do not reach, so its
    # own bins would subtract from the pooled release to b's and c's counts (ADR 0059's thirteenth-review amendment)
    message = str(refused_run.value).lower()
    assert "wait until more data are loaded" in message and "explore mode" in message
    assert "window of follow-up time" in message
    for name in ("hospital_b", "hospital_c"):
        refused = federation.refusals(name)[before[name]:]
        assert [r["round"] for r in refused][:1] == [1]
        assert "ADR 0060" in refused[0]["reason"] and "wait until more data" in refused[0]["reason"].lower()
        # no count echoed: the only digits are the ADR's number and the rule's "0 or at least"
        assert not re.search(r"\d", re.sub(r"ADR \d{4}|0 or at least", "", refused[0]["reason"]))
