"""A hostile central site against secure aggregation, by choosing participants and datasets (issue 13.3).

Three real node processes whose admins pinned each other.  The central site
holds valid credentials for each and runs the same cohort masked among
different participant sets, or with dataset lists that differ at one node,
and subtracts the unmasked sums (ADR 0027):

* ``{A, B, C}`` minus ``{B, C}`` gives A's aggregate: exactly what A releases
  in the clear under its own controls (suppressed cells stay suppressed),
  nothing more;
* a selection whose cohort at A is one patient away from an earlier masked
  one is refused at A (control ``differencing``), masked or plain: a masked
  release is in A's ledger like a plain one;
* at a node whose admin requires secure aggregation, the same ``analysis_id``
  asked in the clear, a masked step listing only that node, or an algorithm
  that cannot be masked, is refused (control ``secure_aggregation``) before a
  row is read.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from mipflow.algorithms.descriptive_stats import POOLED
from mipflow.central.client import NodeClient, NodeRefused
from mipflow.central.rounds import run_analysis
from mipflow.exceptions import FederationError
from mipflow.node.controls.audit import AUDIT_FILE
from mipflow.node.home import NodeHome
from mipflow.secagg.codec import RING, SCHEME, additive_form, decode, encode
from mipflow.secagg.node_side import secure_form
from tests.mipflow.algorithms.synthetic import MODEL, make_data
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, pin_each_other, served_clients
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("masked_selections")

A, B, C = NODES = ("hospital_a", "hospital_b", "hospital_c")
ALL = ["d0", "d1", "d2"]
#: Without d2: at hospital_a that leaves out exactly one patient (its only d2 row).
ALL_BUT_D2 = ["d0", "d1"]


def frames() -> dict[str, Any]:
    """Each node's rows; hospital_a holds one patient in d2 and a group 'c' of 2 rows in d1."""
    data = make_data(20270313, 360).assign(subjectcode=[f"p{i}" for i in range(360)])
    # no missing group: descriptive statistics' per-variable cohorts are then the whole cohort
    data["grp"] = data["grp"].fillna("a")
    parts = {node: data.iloc[k::3].reset_index(drop=True) for k, node in enumerate(NODES)}
    a = parts[A]
    a["dataset"] = np.where(np.arange(len(a)) % 2 == 0, "d0", "d1")
    a.loc[0, "dataset"] = "d2"
    a.loc[a["grp"] == "c", "grp"] = "a"  # then exactly two rows of group c, both in d1
    c_rows = a.index[a["dataset"] == "d1"][:2]
    a.loc[c_rows, "grp"] = "c"
    return parts


def body(participants: dict[str, str]) -> dict[str, Any]:
    return {"scheme": SCHEME, "participants": [{"node": n, "public_key": k} for n, k in sorted(participants.items())]}


def summed(replies: list[dict[str, Any]]) -> tuple[Any, list[Fraction]]:
    """The central site's unmasking: layout and the exact sum of the masked vectors."""
    parts = [r["aggregates"]["secure_aggregation"] for r in replies]
    assert len({json.dumps(p["layout"], sort_keys=True) for p in parts}) == 1
    total = [0] * len(parts[0]["masked"])
    for part in parts:
        total = [(t + int(v, 16)) % RING for t, v in zip(total, part["masked"])]
    return parts[0]["layout"], [decode(v) for v in total]


def request(algorithm: str, datasets: list[str]) -> dict[str, Any]:
    y = {"ttest_onesample": ["x2"], "descriptive_stats": ["grp", "x2"], "pca": ["x2", "age"]}[algorithm]
    parameters = {"alt_hypothesis": "two-sided", "alpha": 0.05, "mu": 0.0} if algorithm == "ttest_onesample" else {}
    return {"inputdata": {"data_model": MODEL.key, "datasets": datasets, "x": [], "y": y, "filters": None},
            "parameters": parameters}


@dataclass
class Fed:
    roots: dict[str, Path]
    clients: dict[str, NodeClient]

    def keys(self, *nodes: str) -> dict[str, str]:
        return {n: self.clients[n].secagg_key()["public_key"] for n in nodes}

    def step(self, node: str, algorithm: str, datasets: list[str], *, among: tuple[str, ...] | None,
             analysis_id: str | None = None) -> dict[str, Any]:
        """One round-0 step at ``node``, masked among ``among`` (None: in the clear)."""
        return self.clients[node].step(
            algorithm, request(algorithm, datasets), 0, None, researcher=RESEARCHER, project=PROJECT,
            analysis_id=analysis_id or uuid.uuid4().hex,
            secure_aggregation=body(self.keys(*among)) if among else None)

    def masked_sum(self, algorithm: str, datasets: list[str], among: tuple[str, ...],
                   analysis_id: str | None = None) -> tuple[Any, list[Fraction]]:
        analysis_id = analysis_id or uuid.uuid4().hex
        return summed([self.step(n, algorithm, datasets, among=among, analysis_id=analysis_id) for n in among])

    def refused(self, node: str, control: str, *args, **kwargs) -> NodeRefused:
        with pytest.raises(NodeRefused) as err:
            self.step(node, *args, **kwargs)
        assert err.value.status == 403 and err.value.control == control, err.value
        return err.value

    def last_audit(self, node: str) -> dict[str, Any]:
        return json.loads((self.roots[node] / AUDIT_FILE).read_text().splitlines()[-1])


@pytest.fixture
def fed(tmp_path) -> Iterator[Fed]:
    """A fresh federation per test (each node's ledger starts empty); default disclosure settings
    (min_row_count 10, nfilter_tab 3, differencing on)."""
    roots = {}
    for node, frame in frames().items():
        roots[node] = tmp_path / node
        standard_home(roots[node], node)
        load_frame(roots[node], MODEL, frame)
        grant_all(roots[node])
    pin_each_other(roots)
    with served_clients(roots) as clients:
        yield Fed(roots, clients)


def exact(vector: list[float | Fraction]) -> list[Fraction]:
    """What the ring carries of each quantity (fixed point): the unmasked sums are exact in it."""
    return [decode(encode(v)) for v in vector]


@pytest.mark.parametrize("algorithm, datasets", [
    pytest.param("ttest_onesample", ALL, id="ttest_onesample"),
    # descriptive statistics release per dataset: A's d2 (one patient) would be refused by nfilter_tab
    pytest.param("descriptive_stats", ALL_BUT_D2, id="descriptive_stats"),
])
def test_subtracting_participant_selections_gives_only_what_a_releases_in_the_clear(fed: Fed, algorithm,
                                                                                    datasets) -> None:
    layout, everyone = fed.masked_sum(algorithm, datasets, (A, B, C))
    layout_bc, without_a = fed.masked_sum(algorithm, datasets, (B, C))
    assert layout_bc == layout
    recovered = [x - y for x, y in zip(everyone, without_a)]  # the subset attack: A's masked contribution
    # ... is A's own release in the clear, after A's controls, in the summed form
    plain = fed.step(A, algorithm, datasets, among=None)["aggregates"]
    assert plain != {} and "secure_aggregation" not in plain
    pooled = secure_form(algorithm, plain, request(algorithm, datasets), MODEL)
    plain_layout, plain_vector = additive_form(pooled)
    assert plain_layout == layout and recovered == exact(plain_vector)
    if algorithm == "descriptive_stats":
        # A's group c (2 rows, below nfilter_tab 3) is suppressed in the clear; the subtraction gives 0
        c = MODEL.variable("grp").enumeration_codes.index("c")
        assert plain["datasets"]["d1"]["variable_based"]["grp"]["counts"][c] is None
        assert pooled[POOLED]["variable_based"]["grp"]["counts"][c] == 0
        assert pooled[POOLED]["variable_based"]["grp"]["hidden"][c] == 1  # the central learns only the sum of these
    # every masked release is in A's audit log as what it is
    records = [json.loads(line) for line in (fed.roots[A] / AUDIT_FILE).read_text().splitlines()]
    assert [r.get("secure_aggregation", False) for r in records if r.get("algorithm") == algorithm] == [True, False]


def test_a_masked_release_enters_the_ledger_like_a_plain_one(fed: Fed) -> None:
    """Masked Q, then Q minus one patient at A (datasets without d2), masked or plain: A refuses."""
    fed.masked_sum("ttest_onesample", ALL, (A, B, C))
    for among in ((A, B, C), (A, B), None):
        refusal = fed.refused(A, "differencing", "ttest_onesample", ALL_BUT_D2, among=among)
        assert "min_row_count (10)" in refusal.reason
        assert fed.last_audit(A)["control"] == "differencing"
    # B and C, whose d2 holds many patients, answer the narrower selection: but without A's
    # masks their masked releases do not even unmask, and with A left out the sum is B's and C's
    for node in (B, C):
        assert "secure_aggregation" in fed.step(node, "ttest_onesample", ALL_BUT_D2, among=(A, B, C))["aggregates"]
    # also across algorithms: A released Q masked; descriptive statistics of Q minus one patient are refused
    fed.refused(A, "differencing", "descriptive_stats", ALL_BUT_D2, among=(A, B, C))


def test_a_subset_selection_one_patient_away_at_a_is_refused_at_a(fed: Fed) -> None:
    """The dataset form of the subset attack: {A, B, C} over d0..d2, then over d0, d1 (which at A
    leaves out one patient) among {A, B} or {A, C}: A refuses each, so no two sums differ by one row."""
    fed.masked_sum("ttest_onesample", ALL, (A, B, C))
    for among in ((A, B), (A, C), (A, B, C)):
        fed.refused(A, "differencing", "ttest_onesample", ALL_BUT_D2, among=among)
    fed.masked_sum("ttest_onesample", ALL, (A, B))  # the same cohort again, among others: answered


def test_a_node_that_requires_masking_answers_only_masked_steps_with_another_node(fed: Fed) -> None:
    for root in fed.roots.values():
        NodeHome(root).set_setting("secure_aggregation_required", 1)
    analysis_id = uuid.uuid4().hex
    fed.masked_sum("ttest_onesample", ALL, (A, B, C), analysis_id=analysis_id)
    for node in NODES:
        # the same analysis asked again in the clear
        refusal = fed.refused(node, "secure_aggregation", "ttest_onesample", ALL, among=None,
                              analysis_id=analysis_id)
        assert "secure_aggregation_required" in refusal.reason and "secure aggregation on" in refusal.reason
        record = fed.last_audit(node)
        assert record["control"] == "secure_aggregation" and "rows" not in record  # decided before any row
    alone = fed.refused(A, "secure_aggregation", "ttest_onesample", ALL, among=(A,))  # only itself
    assert "more nodes" in alone.reason
    fed.refused(A, "secure_aggregation", "pca", ALL, among=(A, B))  # cannot be masked
    # the same refusals whatever the data: B gives the same text as A
    assert fed.refused(B, "secure_aggregation", "ttest_onesample", ALL, among=(B,)).reason == \
        alone.reason.replace(A, B)
    # through the central site's loop: plain is refused by every node, masked runs
    with pytest.raises(FederationError, match="secure_aggregation_required"):
        run_analysis("ttest_onesample", request("ttest_onesample", ALL), list(fed.clients.values()),
                     researcher=RESEARCHER, project=PROJECT, secure_aggregation=False)
    outcome = run_analysis("ttest_onesample", request("ttest_onesample", ALL), list(fed.clients.values()),
                           researcher=RESEARCHER, project=PROJECT, secure_aggregation=True)
    assert not outcome.excluded and outcome.secure_aggregation["enabled"]
