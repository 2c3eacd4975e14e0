"""An eighteenth outside review, from the documents only: k-means clusters as released groups (ADR 0051's
seventeenth-review amendment, "the chain sees each cohort's latest assignment"), histogram bins over a declared range
(ADR 0051, the public grid) and the rows outside it.

The reviewer read README.md, docs/privacy.md, docs/adr/*.md and the test harness (``tests/nodes.py``,
``tests/privacy/conftest.py``, rounds 16-17); not ``plugins/mipflow``.  Every attack runs through real node processes
(``mipflow node serve`` on loopback) with the shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3,
differencing on); standard mode is the admin's documented choice per node (``standard_home``).  Every release here is
exact (standard mode, no noise): each strict xfail fails the same way on every run.

``test_hole_*`` are strict xfails: the attack runs, checks what it recovered against the truth, and its last assertion
is the condition that would hold if the defence held.  ``test_defence_*`` pass while a control holds, naming it.

Found (holes):

1. **An earlier k-means assignment of a cohort, out of the chain once a later one is released** (ADR 0051 seventeenth
   amendment, residual "clusters of earlier ... assignments than a cohort's latest are not in later chains").  85
   patients: 13 young (19-24; the target the only one aged 19, glucose 7.3, the rest glucose 10.2-10.8) and 72 adults
   in three glucose bands.  k-means (k 2) of glucose on everyone converges on ``L ∪ M`` (43 rows: the target and the
   adults under 9 mmol/l) and ``H``; its count and centre are its glucose sum.  Then k-means (k 2) of age on the same
   cohort: the chain's latest assignment of everyone is now the age split.  Descriptive statistics of glucose on
   ``age >= 25`` (72 rows) and on ``age >= 25 AND glucose >= 9`` (30 rows): each far from every cohort and cluster
   pairwise, and the chain (the cohorts and the age clusters) isolates no small atom.  ``sum(L ∪ M) - (R2 - R3)`` is
   the target alone: her glucose, 7.3 (and her membership in the low cluster).  Without the second k-means run the
   same last cohort is refused by the chain (``test_defence_...``): the hole is exactly the "latest only" window.
   **Closed** the same day: the chain keeps each k-means *run's* latest assignment (its analysis key in the
   cluster's kind), not each cohort's (ADR 0051, seventeenth-review amendment, amended); the last cohort is refused.

Held (defences): the same three releases with the glucose clusters still the cohort's latest assignment (the chain
rule, control ``differencing``); 80-bin histograms of age and of glucose, a step function of age but for the target
(glucose bin 0 is age bins 0-1 less her: a cross-tabulated count of 1; every glucose bin 3 or more rows from every
age bin; 80 cells, more than the chain's cell window of 32): the chain refuses the second (``differencing``); Cox
regression (one node, round 0) where two women died (the event cell within a level the sixteenth amendment left
unchecked), then the women aged 20 or more (the women's level less the target): refused by rule 4, answered on a node
without the Cox release, so the level reached the group memory (since issue 14 the Cox step itself is refused at
round 0, ``nfilter_tab``, and the cohort answered); a histogram over the declared range of a variable
one patient's value lies outside (glucose 45 mmol/l, declared 1-40) is refused by the complement rule (rule 2,
``differencing``: 1 row outside the released bins), in words carrying no value, while descriptive statistics of the
same cohort answer.  That refusal is one bit ("1-2 rows outside the range"): the documented refusal oracle (ADR
0038), not counted here.

Not tried (time): the union search cap (256 steps) as an oracle or to force refusals; Cox's deaths within a level in
the sealed Newton rounds of a federation; three or more k-means assignments of one cohort (k-means cells are
Voronoi cells: three two-cluster splits span ``1, a, b, c``, which holds no single atom of their cross-cells; a
concrete family needs non-convex data, not found in the time); PostgreSQL snapshots (ADR 0062 amendments 8-10).
Assessed on paper only: ``hide_nested``'s extra hiding says the finer release's hidden cells under a coarse bin hold
1-2 rows, the bit primary suppression already gives; the windows rule's group threshold (ADR 0059: the same rows for
one level) lets a per-node group curve one or two deaths from the pooled group's through when the window's every-level
set moves by ``min_row_count`` or more, but the subtraction then gives A's part plus an error of 1-2 the attacker
does not know (no exact value found).

Honest work refused on the way: none met.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeClient, NodeEndpoint
from mipflow.central.rounds import run_analysis
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import RESEARCHER
from tests.privacy.test_explore_attacks import Served, served_standard

pytestmark = pytest.mark.xdist_group("redteam_round18")

AUDIT = "audit"
NODE = "hospital_a"
TARGET_GLUCOSE = 7.3


def request(y, x=(), filters=None, **parameters) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def typed(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


def band_rows() -> pd.DataFrame:
    """85 patients: the target (age 19, glucose 7.3), 12 other young (19.5-24, glucose 10.2-10.8), 36 aged 40-45 and 36
    aged 75-85, each age band with 10 low (4.2-4.8), 11 middle (6.9-7.5) and 15 high (10.2-10.8) glucose values."""
    rng = np.random.default_rng(31)
    frame = stroke_rows(311, 85, NODE, "ka")
    frame["age"] = np.round(np.r_[[19.0], rng.uniform(19.5, 24, 12), rng.uniform(40, 45, 36), rng.uniform(75, 85, 36)],
                            1)

    def band(low: float, high: float, count: int) -> np.ndarray:
        return rng.uniform(low, high, count)

    def adults() -> np.ndarray:
        return np.r_[band(4.2, 4.8, 10), band(6.9, 7.5, 11), band(10.2, 10.8, 15)]

    frame["glucose_mmol"] = np.round(np.r_[[TARGET_GLUCOSE], band(10.2, 10.8, 12), adults(), adults()], 2)
    return frame


def range_rows() -> pd.DataFrame:
    """60 patients with glucose 4-12 mmol/l but one at 45 (outside the declared 1-40)."""
    rng = np.random.default_rng(5)
    frame = stroke_rows(411, 60, NODE, "hb")
    frame["glucose_mmol"] = np.round(rng.uniform(4, 12, 60), 2)
    frame.loc[0, "glucose_mmol"] = 45.0
    return frame


def sliver_rows() -> pd.DataFrame:
    """160 patients, four in each of the first 40 age bins of the 80-bin grid over 18-90 (width 0.9); glucose a step
    function of age: the rows of age bins ``2j, 2j + 1`` in glucose bin ``j`` of the 80-bin grid over 1-40 (width
    0.4875), but the target's (age 18.1, bin 0), whose glucose (6.12) lies in bin 10 with age bins 20 and 21."""
    frame = stroke_rows(511, 160, NODE, "hx")
    index = np.repeat(np.arange(40), 4)
    frame["age"] = np.round(18 + 0.9 * index + np.tile([0.1, 0.3, 0.5, 0.7], 40), 2)
    frame["glucose_mmol"] = np.round(1 + 0.4875 * (index // 2 + 0.5), 3)
    frame.loc[0, "glucose_mmol"] = round(1 + 0.4875 * 10.5, 3)
    return frame


def cox_rows() -> pd.DataFrame:
    """80 patients: 40 women (the target the only one under 25, aged 19; two women died) and 40 men (20 died)."""
    rng = np.random.default_rng(41)
    frame = stroke_rows(611, 80, NODE, "cx")
    frame["sex"] = ["F"] * 40 + ["M"] * 40
    frame["age"] = np.round(np.r_[[19.0], rng.uniform(25, 85, 79)], 1)
    dead = np.zeros(80, bool)
    dead[[1, 2]] = True
    dead[40:60] = True
    frame["death_90d"] = np.where(dead, "yes", "no")
    frame["followup_days"] = np.where(dead, rng.integers(5, 90, 80), 400).astype(float)
    return frame


PLAN = {"latest": band_rows, "chain": band_rows, "range": range_rows, "sliver": sliver_rows, "cox": cox_rows}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """One standard-mode node per attack (their memories apart), each ``hospital_a``, project ``audit`` granted to any
    researcher id; served as processes."""
    with served_standard(Path(tmp_path_factory.mktemp("round18")), PLAN, NODE, AUDIT) as served:
        yield served


def kmeans(node: Served, y, **parameters) -> dict:
    client = NodeClient(NodeEndpoint(NODE, node.url, node.credential.client_id, node.credential.secret.hex()),
                        retries=0)
    try:
        return run_analysis("kmeans", request(y, **parameters), [client], researcher=RESEARCHER,
                            project=AUDIT).result
    finally:
        client.close()


#: R2 (adults: everyone but the 13 young) and R3 (adults with high glucose: the adults outside L ∪ M)
ADULTS = where(rule("age", "greater_or_equal", 25))
ADULTS_HIGH = where(rule("age", "greater_or_equal", 25), rule("glucose_mmol", "greater_or_equal", 9))


def glucose_sum(reply) -> float:
    moments = reply.json()["aggregates"]["datasets"][NODE]["variable_based"]["glucose_mmol"]["moments"]
    return moments["n"] * moments["mean"][0]


def low_cluster(node: Served) -> tuple[int, float]:
    """k-means (k 2) of glucose on everyone: the low cluster's count and glucose sum, checked against the rows."""
    rows = node.rows
    result = kmeans(node, ["glucose_mmol"], k=2)
    assert result["converged"] is True
    low = int(np.argmin([centre[0] for centre in result["centers"]]))
    count = result["cluster_counts"][low]
    assert count == int((rows["glucose_mmol"] < 9).sum()) == 43
    return count, count * result["centers"][low][0]


def test_hole_1_an_earlier_k_means_assignment_out_of_the_chain_with_two_cohorts_gives_one_glucose(nodes):
    """Hole 1.  Class: the chain rule sees each cohort's latest k-means assignment only (ADR 0051, seventeenth-review
    amendment, "the chain sees each cohort's latest assignment"); an earlier assignment's clusters meet later releases
    in pairs only (the group memory's rules 1 and 4).  Adversary: a researcher with a standard-mode grant (documented
    requests only: two k-means runs and two descriptive statistics).

    k-means of glucose (``L ∪ M``, 43 rows, the target the only young patient in it), then k-means of age on the same
    rows (the latest assignment now), then glucose on ``age >= 25`` (72 rows) and on ``age >= 25 AND glucose >= 9``
    (30).  Pairwise: every cohort 13 or more rows from everyone and from each cluster (the glucose clusters included);
    the partition memory's two assignments cut into cells of 15-22 rows.  Chain of the cohorts and the age clusters:
    atoms of 13-21 rows.  ``L ∪ M - (R2 - R3)`` is the target."""
    node = nodes["latest"]
    rows = node.rows
    count, total = low_cluster(node)
    ages = kmeans(node, ["age"], k=2)
    assert ages["converged"] is True and sorted(ages["cluster_counts"]) == [36, 49]
    adults = node.call("descriptive_stats", request(["glucose_mmol"], filters=ADULTS), project=AUDIT)
    assert adults.status_code == 200 and adults.json()["rows"] == 72
    high = node.call("descriptive_stats", request(["glucose_mmol"], filters=ADULTS_HIGH), project=AUDIT)
    if high.status_code == 200:  # the attack
        assert high.json()["rows"] == 30
        glucose = total - (glucose_sum(adults) - glucose_sum(high))
        members = rows[(rows["glucose_mmol"] < 9) & (rows["age"] < 25)]
        assert len(members) == 1 and members.iloc[0]["age"] == 19.0
        assert round(glucose, 6) == members.iloc[0]["glucose_mmol"] == TARGET_GLUCOSE
    assert typed(high) == (403, "differencing"), "the earlier low cluster less R2 - R3 is the target's glucose"


def test_defence_the_same_cohorts_after_the_cohort_s_latest_clusters_are_refused_by_the_chain(nodes):
    """Held: the chain rule with the group memory's cells (ADR 0051, thirteenth and seventeenth amendments; control
    ``differencing``).  Hole 1 without the k-means of age: the glucose clusters are the cohort's latest assignment, so
    the chain sees ``L ∪ M`` beside R2 and R3 and refuses R3 (the target an atom of one); R2 alone answers.  The
    refusal carries no value."""
    node = nodes["chain"]
    low_cluster(node)
    adults = node.call("descriptive_stats", request(["glucose_mmol"], filters=ADULTS), project=AUDIT)
    assert adults.status_code == 200 and adults.json()["rows"] == 72
    high = node.call("descriptive_stats", request(["glucose_mmol"], filters=ADULTS_HIGH), project=AUDIT)
    assert typed(high) == (403, "differencing"), high.text
    assert "7.3" not in high.text and "30" not in high.text


def test_defence_a_histogram_leaving_one_value_outside_the_declared_range_is_refused_by_the_complement(nodes):
    """Held: rule 2, the complement (ADR 0051, ``check_complement``; control ``differencing``).  Attack tried: a
    histogram's bins cover a variable's declared range only (a value outside lies in no cell), so a histogram of
    glucose on everyone, beside the cohort's row count, would count the rows outside 1-40 mmol/l: one (45).  The node
    refuses it naming ``nfilter_tab`` (3) and no value or count of the data; descriptive statistics of the same cohort
    answer (60 rows)."""
    node = nodes["range"]
    assert int(((node.rows["glucose_mmol"] < 1) | (node.rows["glucose_mmol"] > 40)).sum()) == 1
    histogram = node.call("multiple_histograms", request(["glucose_mmol"], bins=5), project=AUDIT)
    assert typed(histogram) == (403, "differencing"), histogram.text
    assert "nfilter_tab (3)" in histogram.text and "45" not in histogram.text and "60" not in histogram.text
    stats = node.call("descriptive_stats", request(["glucose_mmol"]), project=AUDIT)
    assert stats.status_code == 200 and stats.json()["rows"] == 60


def test_defence_histograms_of_two_variables_nearly_functions_of_each_other_are_refused_by_the_chain(nodes):
    """Held: the chain rule over histogram bins as cells (ADR 0051, fifteenth amendment and the public grid; control
    ``differencing``), the stated residual "histograms of two different variables whose values are nearly functions of
    each other".  Attack tried: 80 bins of age (every shown bin 4 rows), then 80 bins of glucose, a step function of
    age but for the target: glucose bin 0 (7 rows) is age bins 0 and 1 less her, bin 10 (9) age bins 20 and 21 and her.
    Each glucose bin is 3 or more rows from every age bin (rule 1 by rows passes); the 80 age cells exceed the chain's
    cell window (32), yet the chain still finds the target an atom of one (a cross-tabulated count of 1) and refuses."""
    node = nodes["sliver"]
    rows = node.rows
    age = node.call("multiple_histograms", request(["age"], bins=80), project=AUDIT)
    assert age.status_code == 200
    (counts,) = [h["counts"] for h in age.json()["aggregates"]["histograms"] if h["grouping_var"] is None]
    assert counts[:40] == [4] * 40 and not any(counts[40:])
    sliver = int(((rows["age"] < 18 + 2 * 0.9) & (rows["glucose_mmol"] >= 1 + 0.4875)).sum())
    assert sliver == 1  # what the glucose histogram's bin 0 (7) less age bins 0 and 1 (8) would count
    glucose = node.call("multiple_histograms", request(["glucose_mmol"], bins=80), project=AUDIT)
    assert typed(glucose) == (403, "differencing"), glucose.text
    assert "6.12" not in glucose.text and "18.1" not in glucose.text


def test_defence_a_cox_release_with_two_deaths_among_women_is_refused_at_round_0(nodes):
    """Held: Cox regression of death on sex and age (round 0, one node) where two women died (an event cell under
    ``nfilter_tab``).  When this review ran, the release was answered (the stated residual "Cox's event set within a
    level is declared but not checked per release") and the group memory's rule 4 refused the later cohort, ``sex = F
    AND age >= 20`` (39 rows: the women's level less the target), 1 row from the remembered women's level.  Since
    issue 14 (ADR 0051, amendment "Cox's events within a level") the events within each level are checked at round 0:
    the node refuses the Cox step (``nfilter_tab``, no size said), so no level of it reaches anyone and the later
    cohort, far from everything this node released, is answered."""
    node = nodes["cox"]
    cox = node.call("cox_regression", request(["followup_days", "death_90d"], ["sex", "age"], event_level="yes",
                                              bin_width=7.0), project=AUDIT)
    assert typed(cox) == (403, "nfilter_tab"), cox.text
    assert set(re.findall(r"\d+", cox.json()["refused"])) == {"3"}, cox.text  # the setting, no size
    women = node.call("descriptive_stats", request(["age"], filters=where(rule("sex", "equal", "F"),
                                                                          rule("age", "greater_or_equal", 20))),
                      project=AUDIT)
    assert women.status_code == 200 and women.json()["aggregates"] is not None, women.text
