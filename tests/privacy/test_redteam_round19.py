"""A nineteenth outside review, from the documents only: the chain rule's window (docs/privacy.md "chains beyond that
cap", ADR 0051 thirteenth-review amendment "Windows and caps"), categorical naive Bayes' class x level counts (ADR 0051
sixteenth-review amendment, "still open": "categorical naive Bayes' class x level cells (counts per fold; not
declared)"), Cox's event set within a level (same amendment) and an honest session at the shipped default.

The reviewer read README.md, docs/privacy.md, docs/adr/*.md and the test harness (``tests/nodes.py``,
``tests/privacy/conftest.py``, rounds 17-18); not ``plugins/mipflow``.  Every attack runs through real node processes
(``mipflow node serve`` on loopback) with the shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3,
differencing on, query budgets 100 / 300); standard mode is the admin's documented choice per node
(``standard_home``).  Every release in the holes is exact (standard mode): each strict xfail fails the same way on
every run.

``test_hole_*`` were strict xfails (both holes are closed now and pass through their defence): the attack runs, checks what it recovered against the truth, and its last assertion
is the condition that would hold if the defence held.  ``test_defence_*`` pass while a control holds, naming it;
``test_honest_*`` pass while honest work is answered.

Found (holes):

1. **A three-cohort chain pushed out of the chain's window by 31 nested decoys** (docs/privacy.md: the chain rule
   "per request over up to 32 overlapping cohorts"; "*Not stopped* (open, section 4): chains beyond that cap";
   ADR 0051 "Windows and caps": related sets "most recent first", at most 32 cohorts).  Descriptive statistics of
   NIHSS on ``A = age < 60`` (371 rows), ``B = 20 <= age < 40`` (30), then 31 decoys ``D_i = 40 <= age < 60 AND
   glucose >= g_i`` (nested, 10 rows apart, each answered: with A and B they isolate nothing smaller than the 10
   lowest-glucose rows plus the target), then ``C = 40 <= age < 60`` (340).  Every pair is 10 or more rows apart each
   way; ``A - B - C`` is the one patient under 20: her NIHSS, 41.  Without the decoys C is refused (defence below):
   the hole is exactly the window.  34 requests, within one researcher's daily budget (100).  **Closed** (ADR 0030
   amended, issue 14 item 5): beside the window, an exact atom rule over every remembered set of the data model
   (:mod:`mipflow.node.controls.chain_exact`, incremental); C is refused (``differencing``), the decoys answered.
2. **Categorical naive Bayes' class x level count less a cohort** (ADR 0051 sixteenth-review amendment, "still
   open": categorical naive Bayes' class x level cells "not declared").  ``naive_bayes_categorical_cv`` of death on
   stroke type (everyone, 2 folds) releases each fold's class x level counts and the model's summed
   ``category_count``: 90 TIA patients died.  Descriptive statistics of ``stroke_type = tia AND death_90d = yes AND
   age >= 25`` (89 rows; far from every cohort and group) leave one: the target, the only TIA patient under 25,
   died (her value of ``death_90d``; a cell of 1 < ``nfilter_tab``).  The same cell from a contingency table or a
   logistic regression is a declared group (rule 4 would refuse the cohort).  **Closed** (ADR 0051, issue-14
   amendment): the classifier declares its summed class x level cells as released groups; the cohort is refused
   (``differencing``), in either order (``tests/privacy/test_naive_bayes_cell_attacks.py``).

Held (defences): the same A, B, C with the decoys (the backstop) and without them (the chain rule, ``differencing``); refusals carry neither the
target's value nor a count.

Seen, not counted as a hole (no value recovered in the time): Cox regression of death on sex and NIHSS, one node,
after descriptive statistics of ``sex = F AND age >= 20`` (the women but the target, 39 rows), where two women died
(the event cell within a level, "declared but not checked per release"): the Cox analysis is **answered**, every round,
although its women's level is 1 row from that cohort (rule 4 refuses this pair in the other order, round 18).  It
releases the women's count (40) beside the cohort's 39 (membership of the target in the complete cases) and, per
iterate, ``l``, ``U``, ``I`` whose risk-set terms mix the level's NIHSS with the bins' risk sets; no exact value was
solved from them.  The documented cause: the release "skips the group rules for all its groups".  Since the same
stop Cox checks the events within each level at round 0 (``tests/privacy/test_cox_level_events_attacks.py``): a node
with two deaths among its women is left out (``nfilter_tab``).

Honest work: an honest researcher's session at the shipped default (explore mode, ADR 0038): regressions on two
variable sets, the subgroup ``age >= 65``, women and men, Kaplan-Meier with and without ``sex``, and the first
regression again after a new export: every step answered and labelled (test below).  Standard mode refuses such a
session by design (docs/privacy.md section 7, "Use a study"); not counted.

Not tried (time): the study's level-cell atom rule at ``nfilter_tab`` with unions of small atoms (a 2x2x2 table's
``x_000 + x_111`` is in the span of its two-way margins; needs sums over two-way cells, e.g. two-way ANOVA in a
protocol); counted-set memory per data model and releases older than it (pooled Kaplan-Meier, three pinned nodes);
the weighted memory's chain with unions (assessed on paper: the pair rule refuses any difference the dominating row
sits in, so a union of small weighted atoms gives a sum over 10+ rows, not one value); the window of 32 cells
(a two-way ANOVA's cells instead of cohorts as decoys); the atom cap (2048 atoms: 10 old sets kept) at a node of
several thousand rows, which would need fewer decoys; k-means rows left on disk (ADR 0062 keeps k-means on a frame).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeClient, NodeEndpoint
from mipflow.central.rounds import run_analysis
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes
from tests.privacy.test_explore_attacks import Served, served_standard

pytestmark = pytest.mark.xdist_group("redteam_round19")

AUDIT = "audit"
NODE = "hospital_a"
DECOYS = 31
TARGET_NIHSS = 41.0


def request(y, x=(), filters=None, **parameters) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def typed(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


def client_of(node: Served) -> NodeClient:
    return NodeClient(NodeEndpoint(NODE, node.url, node.credential.client_id, node.credential.secret.hex()), retries=0)


def decoy_band_rows(decoys: int, seed: int, prefix: str) -> pd.DataFrame:
    """The target (age 19, NIHSS 41: the only patient under 20), 30 aged 20-40, ``10 + 10 * decoys + 20`` aged 40-60
    with distinct glucose values 4.00, 4.01, ... (the decoys' thresholds), 20 aged 60-85; every NIHSS present."""
    rng = np.random.default_rng(19)
    band = 10 + 10 * decoys + 20
    n = 1 + 30 + band + 20
    frame = stroke_rows(seed, n, NODE, prefix)
    frame["age"] = np.round(np.r_[[19.0], rng.uniform(20, 39.9, 30), rng.uniform(40, 59.9, band),
                                  rng.uniform(60, 85, 20)], 1)
    glucose = np.full(n, 7.0)
    glucose[31:31 + band] = np.round(4.0 + 0.01 * np.arange(band), 2)
    frame["glucose_mmol"] = glucose
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    frame.loc[0, "nihss_admission"] = TARGET_NIHSS
    return frame


def window_rows() -> pd.DataFrame:
    """:func:`decoy_band_rows` for 31 decoys: 340 aged 40-60."""
    return decoy_band_rows(DECOYS, 1901, "w")


def bayes_rows() -> pd.DataFrame:
    """390 patients aged 30-85 but the target (row 0: age 19, TIA, died): 120 TIA (90 died), 180 ischaemic (45 died),
    90 haemorrhagic (30 died)."""
    rng = np.random.default_rng(3)
    frame = stroke_rows(901, 390, NODE, "nb")
    frame["age"] = np.round(rng.uniform(30, 85, 390), 1)
    frame["stroke_type"] = (["tia"] * 40 + ["ischaemic"] * 60 + ["haemorrhagic"] * 30) * 3
    frame["death_90d"] = (["yes"] * 30 + ["no"] * 10 + ["yes"] * 15 + ["no"] * 45 + ["yes"] * 10 + ["no"] * 20) * 3
    frame["nihss_admission"] = rng.integers(0, 30, 390).astype(float)
    frame.loc[0, "age"] = 19.0
    return frame


PLAN = {"window": window_rows, "chain": window_rows, "bayes": bayes_rows}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """One standard-mode node per attack (their memories apart), each ``hospital_a``, project ``audit`` granted to any
    researcher id; served as processes."""
    with served_standard(Path(tmp_path_factory.mktemp("round19")), PLAN, NODE, AUDIT) as served:
        yield served


# ------------------------------------------------------------------ the chain rule's window (ADR 0030, 0051)

A = where(rule("age", "less", 60))
B = where(rule("age", "greater_or_equal", 20), rule("age", "less", 40))
C = where(rule("age", "greater_or_equal", 40), rule("age", "less", 60))


def nihss(node: Served, filters) -> object:
    return node.call("descriptive_stats", request(["nihss_admission"], filters=filters), project=AUDIT)


def sums(reply) -> tuple[int, float]:
    moments = reply.json()["aggregates"]["datasets"][NODE]["variable_based"]["nihss_admission"]["moments"]
    return moments["n"], moments["n"] * moments["mean"][0]


def decoy(node: Served, i: int) -> dict:
    """``40 <= age < 60 AND glucose >= g_i``: the band less its 10 + 10 i lowest-glucose rows."""
    band = np.sort(node.rows["glucose_mmol"][(node.rows["age"] >= 40) & (node.rows["age"] < 60)].to_numpy())
    return where(*C["rules"], rule("glucose_mmol", "greater_or_equal", float(band[10 + 10 * i])))


def test_hole_1_closed_thirty_one_nested_decoys_no_longer_push_a_three_cohort_chain_out_of_the_window(nodes):
    """Hole 1 (closed: the chain rule's exact backstop over every remembered set, ADR 0030 amended;
    :mod:`mipflow.node.controls.chain_exact`).  Class: the chain rule looked at most 32 related cohorts, most recent
    first (ADR 0051 "Windows and caps"); docs/privacy.md listed "chains beyond that cap" as not stopped.  Adversary:
    one researcher with a standard-mode grant (documented requests only, 34 of them).

    A (age < 60), B (20-40), 31 nested decoys inside C (each 10 rows from the next), then C (40-60).  Pairwise every
    cohort is 10 or more rows from every other (the ledger's rule holds for each answer); at C the 31 decoys are the
    most recent related sets, so A leaves the window, but the backstop's family holds A: ``A - B - C`` would be the
    one patient under 20, and C is refused (``differencing``), in words carrying neither her NIHSS nor a count."""
    node = nodes["window"]
    first = [nihss(node, A), nihss(node, B)]
    assert [r.status_code for r in first] == [200, 200] and [r.json()["rows"] for r in first] == [371, 30]
    decoys = [nihss(node, decoy(node, i)) for i in range(DECOYS)]
    assert all(r.status_code == 200 for r in decoys), [r.text for r in decoys if r.status_code != 200][:1]
    last = nihss(node, C)
    assert typed(last) == (403, "differencing"), "A - B - C is the one patient under 20: her NIHSS"
    assert "41" not in last.text and "340" not in last.text and "min_row_count (10)" in last.text


def test_defence_the_same_three_cohorts_without_decoys_are_refused_by_the_chain(nodes):
    """Held: the chain rule (ADR 0030, ``differencing``).  Hole 1 without the decoys: A and B answered, C refused
    (``A - B - C`` an atom of one row), in words carrying neither the target's NIHSS nor a count."""
    node = nodes["chain"]
    assert [nihss(node, A).status_code, nihss(node, B).status_code] == [200, 200]
    last = nihss(node, C)
    assert typed(last) == (403, "differencing"), last.text
    assert "41" not in last.text and "340" not in last.text and "min_row_count (10)" in last.text


# ------------------------------------------------------------------ categorical naive Bayes (ADR 0051, 0026)

TIA_DEAD_ADULTS = where(rule("stroke_type", "equal", "tia"), rule("death_90d", "equal", "yes"),
                        rule("age", "greater_or_equal", 25))


def test_hole_2_closed_categorical_naive_bayes_class_by_level_count_less_a_cohort_is_refused(nodes):
    """Hole 2 (closed: the classifier's class x level cells are released groups, ADR 0051 issue-14 amendment).  Class: a count of rows a release gives, not declared to the group memory (ADR 0051 sixteenth-review
    amendment, "still open": "categorical naive Bayes' class x level cells (counts per fold; not declared)").
    Adversary: a researcher with a standard-mode grant (two documented requests).

    ``naive_bayes_categorical_cv`` (y death, x stroke type, 2 folds) on everyone: the model's ``category_count`` (the
    folds' counts summed) says 90 TIA patients died.  Descriptive statistics of ``tia AND died AND age >= 25``: 89.
    The one TIA death under 25 is the target (the only TIA patient under 25, background knowledge): she died."""
    node = nodes["bayes"]
    rows = node.rows
    client = client_of(node)
    try:
        model = run_analysis("naive_bayes_categorical_cv", request(["death_90d"], ["stroke_type"], n_splits=2),
                             [client], researcher="mallory", project=AUDIT).result["model"]
    finally:
        client.close()
    dead = model["classes"].index("yes")
    tia = model["levels"][0].index("tia")
    cell = model["category_count"][0][dead][tia]
    assert cell == int(((rows["stroke_type"] == "tia") & (rows["death_90d"] == "yes")).sum()) == 90
    adults = node.call("descriptive_stats", request(["age"], filters=TIA_DEAD_ADULTS), project=AUDIT)
    if adults.status_code == 200:  # the attack
        young_tia = rows[(rows["stroke_type"] == "tia") & (rows["age"] < 25)]
        assert len(young_tia) == 1 and young_tia.index[0] == 0
        assert cell - adults.json()["rows"] == 1  # the one young TIA patient is among the deaths
        assert young_tia.iloc[0]["death_90d"] == "yes"
    assert typed(adults) == (403, "differencing"), "the TIA deaths less the adult ones are the target: she died"


# ------------------------------------------------------------------ an honest session at the shipped default


@pytest.fixture(scope="module")
def default_node(tmp_path_factory) -> Iterator[Served]:
    """A node with the shipped settings (``NodeHome.init``: explore by default), 300 stroke rows, project ``honest``
    granted to any researcher id."""
    root = Path(tmp_path_factory.mktemp("round19-default"))
    NodeHome.init(root, NODE)
    frame = stroke_rows(1919, 300, NODE, "hs")
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="honest")
    credential = issue_client(root, "central")
    with running_nodes([root]) as (url,):
        yield Served(url, credential, root, frame)


def test_honest_a_session_at_the_shipped_default_is_answered_and_labelled(default_node):
    """Honest work (issue 14.7's session, docs/privacy.md "What researchers notice"): regressions of NIHSS on age and
    on age and sex, the subgroup ``age >= 65``, descriptive statistics of women and of men, Kaplan-Meier without and
    with ``sex``, then the first regression again after the node loads a new export.  Every step is answered by the
    node (no refusal, no node left out), labelled explore."""
    node = default_node
    client = client_of(node)

    def run(algorithm, doc):
        outcome = run_analysis(algorithm, doc, [client], researcher="alice", project="honest")
        assert outcome.result is not None
        assert set(outcome.mode) == {NODE} and outcome.mode[NODE]["mode"] == "explore", outcome.mode
        return outcome

    survival = dict(event_level="yes")
    try:
        first = run("linear_regression", request(["nihss_admission"], ["age"]))
        run("linear_regression", request(["nihss_admission"], ["age", "sex"]))
        run("linear_regression", request(["nihss_admission"], ["age"], where(rule("age", "greater_or_equal", 65))))
        for sex in ("F", "M"):
            run("descriptive_stats", request(["nihss_admission", "age"], filters=where(rule("sex", "equal", sex))))
        run("kaplan_meier", request(["followup_days", "death_90d"], **survival))
        run("kaplan_meier", request(["followup_days", "death_90d"], ["sex"], **survival))
        export = stroke_rows(1920, 40, NODE, "hs-new")
        assert load_frame(node.root, STROKE, export) == 40
        again = run("linear_regression", request(["nihss_admission"], ["age"]))
    finally:
        client.close()
    assert len(again.result["coefficients"]) == len(first.result["coefficients"]) == 2
