"""A twentieth outside review, from the documents only: what the chain rule's exact backstop (ADR 0030,
nineteenth-review amendment, ``chain_exact``) says it does *not* cover: "unions of several small atoms, changed-value
units and the comparison by patients across data models stay with the window"; "for one atom ..., by rows, within one
data model".

The reviewer read README.md, docs/privacy.md, docs/adr/*.md and the test harness (``tests/nodes.py``,
``tests/privacy/conftest.py``, rounds 17-19, ``served_standard``, ``test_ledger_attacks.py``'s second model version);
not ``plugins/mipflow``.  Every attack runs through real node processes (``mipflow node serve`` on loopback) with the
shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3, differencing on, query budgets 100 / 300); standard mode
is the admin's documented choice per node (``standard_home``).  Every release is exact: each strict xfail fails the
same way on every run.

``test_hole_*`` were strict xfails (both holes are closed now and pass through their defence): the attack runs, checks what it recovered against the truth, and its last assertion
is the condition that would hold if the defence held.  ``test_defence_*`` pass while a control holds, naming it.

Found (holes):

1. **Round 17's union of two one-row atoms, pushed out of the window by 32 decoys** (ADR 0030 nineteenth-review
   amendment, "Not exact: unions of several small atoms ... stay with the window"; ADR 0051 "Windows and caps":
   related sets most recent first, at most 32 cohorts).  Linear regressions of NIHSS on age over ``S3`` women 21-89,
   ``S4`` men 21-89, ``S1`` age 20-50, then 32 nested decoys ``D_i = 50 <= age < 89 AND glucose >= g_i`` (10 rows
   apart), then ``S2`` age >= 50.  Every pair is 0 or >= 10 rows apart each way, no single atom of the whole family
   is a combination (the backstop's question), but ``S1 + S2 - S3 - S4`` is the target (20.5) and the oldest patient
   (89.5): their count (2), sums and co-moments give both ages and the target's NIHSS, 41.  Without the decoys S2
   is refused (defence below): the hole is exactly the window.  36 requests, within one researcher's budget.  Closed:
   the backstop runs the union rule over every remembered set at the ``min_row_count`` level (ADR 0030 amended).
2. **Round 19's three-cohort chain across two versions of the data model** (same amendment: "the comparison by
   patients across data models stay[s] with the window"; docs/privacy.md "a few patients from a cohort of any other
   data model or version").  The node holds the same patients under stroke 0.1 and 0.2 (a new model version loaded
   from the same export).  Descriptive statistics of NIHSS on ``A = age < 60`` and ``B = 20 <= age < 40`` under
   0.1; 32 nested decoys inside ``C = 40 <= age < 60`` and then ``C`` under 0.2.  The backstop of 0.2 holds only the
   decoys and C (no small atom); the window by patients is filled with the decoys.  ``A - B - C``: the one patient
   under 20, NIHSS 41.  Without the decoys C is refused (defence below).  35 requests.  Closed: the backstop runs by
   patients over every data model's remembered sets too (ADR 0030 amended).

Held (defences): both chains without decoys (``differencing``: the union rule in the window, the chain by patients
across versions); the refusals carry neither the target's value nor a count.

Not tried (time): Cox's per-level event checks at later risk sets; categorical naive Bayes' cells against the
backstop (declared since round 19, so inside the same family); the weighted memory's window (ADR 0058); the backstop
past ``EXACT_ENTRIES`` (needs tens of thousands of atoms: a large node, beyond the run-time box); the rebuild after a
correction (``chain_exact`` rebuilds from scratch: exact again on paper, so a correction alone opens nothing); refusal
messages beyond the ones asserted here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_explore_attacks import Served
from tests.privacy.test_redteam_round19 import decoy_band_rows

pytestmark = pytest.mark.xdist_group("redteam_round20")

AUDIT = "audit"
NODE = "hospital_a"
DECOYS = 32
TARGET_NIHSS = 41.0
#: A second version of the stroke model, the same variables (as ``tests/privacy/test_ledger_attacks.py``).
STROKE_V2 = dataclasses.replace(STROKE, version="0.2", raw={**STROKE.raw, "version": "0.2"})


def request(y, x=(), filters=None, model: str = STROKE.key) -> dict:
    return {"inputdata": {"data_model": model, "datasets": [NODE], "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": {}}


def typed(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


def quiet(reply) -> bool:
    """A refusal naming the rule, carrying neither the target's NIHSS nor a row count of the attack's sets."""
    return "41" not in reply.text and "min_row_count (10)" in reply.text and "rows" not in reply.json()


# ------------------------------------------------------------------ rows

BAND = 10 + 10 * DECOYS + 20


def union_rows() -> pd.DataFrame:
    """40 aged 21-50 and BAND aged 50-89 (women and men alternately, distinct glucose in the band: the decoys'
    thresholds), the target (a woman aged 20.5, NIHSS 41) and the oldest (89.5); every value present."""
    rng = np.random.default_rng(20)
    ages = np.r_[[20.5], rng.uniform(21, 49.9, 40), rng.uniform(50, 88.9, BAND), [89.5]]
    n = len(ages)
    frame = stroke_rows(2001, n, NODE, "un")
    frame["age"] = np.round(ages, 1)
    frame["sex"] = ["F"] + ["F", "M"] * 20 + ["F", "M"] * (BAND // 2) + ["M"]
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    frame.loc[0, "nihss_admission"] = TARGET_NIHSS
    glucose = np.full(n, 7.0)
    glucose[41:41 + BAND] = np.round(4.0 + 0.01 * rng.permutation(BAND), 2)
    frame["glucose_mmol"] = glucose
    return frame


def chain_rows() -> pd.DataFrame:
    """Round 19's rows with one more decoy's band (``decoy_band_rows``): BAND aged 40-60 with distinct glucose."""
    return decoy_band_rows(DECOYS, 2002, "ch")


PLAN = {"union": union_rows, "union_chain": union_rows, "models": chain_rows, "models_chain": chain_rows}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """One standard-mode node per attack (memories apart), each ``hospital_a`` holding its rows under stroke 0.1 and
    0.2 (the same patients), project ``audit`` granted to any researcher id; served as processes."""
    base = Path(tmp_path_factory.mktemp("round20"))
    roots, frames, credentials = {}, {}, {}
    for name, rows in PLAN.items():
        roots[name] = base / name
        standard_home(roots[name], NODE)
        frames[name] = rows()
        for model in (STROKE, STROKE_V2):
            assert load_frame(roots[name], model, frames[name]) == len(frames[name])
        grant_all(roots[name], researcher="*", project=AUDIT)
        credentials[name] = issue_client(roots[name], "central")
    with running_nodes(list(roots.values())) as urls:
        yield {name: Served(url, credentials[name], roots[name], frames[name]) for name, url in zip(roots, urls)}


def span_holds(members: dict[str, set], target: set) -> bool:
    """Whether ``target`` (row indices) is a linear combination of the sets' indicators (over the reals)."""
    universe = sorted(set().union(*members.values()) | target)
    matrix = np.array([[i in s for i in universe] for s in members.values()], dtype=float).T
    vector = np.array([i in target for i in universe], dtype=float)
    coefficients = np.linalg.lstsq(matrix, vector, rcond=None)[0]
    return bool(np.allclose(matrix @ coefficients, vector))


def far_apart(members: dict[str, set]) -> bool:
    """Every pair of sets disjoint or at least ``min_row_count`` (10) rows apart each way."""
    return all(len(members[a] - members[b]) == 0 or len(members[a] - members[b]) >= 10
               for a in members for b in members if a != b)


# ------------------------------------------------------------------ hole 1: a union of two atoms beyond the window

UNION = {"S3": where(rule("sex", "equal", "F"), rule("age", "greater_or_equal", 21), rule("age", "less", 89)),
         "S4": where(rule("sex", "equal", "M"), rule("age", "greater_or_equal", 21), rule("age", "less", 89)),
         "S1": where(rule("age", "greater_or_equal", 20), rule("age", "less", 50))}
S2 = where(rule("age", "greater_or_equal", 50))


def union_decoy(rows: pd.DataFrame, i: int) -> tuple[dict, set]:
    """``50 <= age < 89 AND glucose >= g_i``: the band less its 10 + 10 i lowest-glucose rows (filter and members)."""
    band = rows[(rows["age"] >= 50) & (rows["age"] < 89)]
    g = float(np.sort(band["glucose_mmol"].to_numpy())[10 + 10 * i])
    filters = where(rule("age", "greater_or_equal", 50), rule("age", "less", 89), rule("glucose_mmol",
                                                                                         "greater_or_equal", g))
    return filters, set(band.index[band["glucose_mmol"] >= g])


def regression(node: Served, filters):
    return node.call("linear_regression", request(["nihss_admission"], ["age"], filters), project=AUDIT)


def raw_sums(reply) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, sums, sums of products) of a regression's columns (age, then NIHSS) from its ``n``, means and ``m2``."""
    moments = reply.json()["aggregates"]["moments"]
    n, mean = moments["n"], np.asarray(moments["mean"])
    return n, n * mean, np.asarray(moments["m2"]) + n * np.outer(mean, mean)


def union_members(rows: pd.DataFrame) -> dict[str, set]:
    age, sex = rows["age"], rows["sex"]
    return {"S3": set(rows.index[(sex == "F") & (age >= 21) & (age < 89)]),
            "S4": set(rows.index[(sex == "M") & (age >= 21) & (age < 89)]),
            "S1": set(rows.index[(age >= 20) & (age < 50)]), "S2": set(rows.index[age >= 50])}


def test_hole_1_closed_a_union_of_two_one_row_atoms_beyond_the_window_is_refused(nodes):
    """Hole 1 (closed: the backstop's union rule over every remembered set at ``min_row_count``, ADR 0030
    amended).  Class: the exact backstop answers "one small atom?" over every remembered set; "unions of several
    small atoms ... stay with the window" (ADR 0030, nineteenth-review amendment), and the window is 32 related sets,
    most recent first (ADR 0051 "Windows and caps").  Adversary: one researcher with a standard-mode grant
    (documented requests only, 36 of them).

    S3, S4, S1 (round 17's cohorts), 32 nested decoys inside the 50-89 band (each answered), then S2.  No single row
    of the whole family is isolatable (checked below: the backstop has nothing to refuse), every pair is far apart,
    and the window at S2 holds only the decoys; ``S1 + S2 - S3 - S4`` is two rows: the target and the oldest."""
    node = nodes["union"]
    rows = node.rows
    members = union_members(rows)
    decoys = [union_decoy(rows, i) for i in range(DECOYS)]
    family = {**members, **{f"D{i}": d[1] for i, d in enumerate(decoys)}}
    target, oldest = 0, len(rows) - 1
    assert far_apart(family)
    assert span_holds(family, {target, oldest}) and not any(span_holds(family, {i}) for i in (target, oldest))
    first = {name: regression(node, filters) for name, filters in UNION.items()}
    assert all(r.status_code == 200 for r in first.values()), {k: r.text for k, r in first.items()}
    answered = [regression(node, d[0]) for d in decoys]
    assert all(r.status_code == 200 for r in answered), [r.text for r in answered if r.status_code != 200][:1]
    last = regression(node, S2)
    if last.status_code == 200:  # the attack
        parts = [raw_sums(first["S1"]), raw_sums(last), raw_sums(first["S3"]), raw_sums(first["S4"])]
        n = parts[0][0] + parts[1][0] - parts[2][0] - parts[3][0]
        first_sums = parts[0][1] + parts[1][1] - parts[2][1] - parts[3][1]
        second = parts[0][2] + parts[1][2] - parts[2][2] - parts[3][2]
        assert n == 2
        spread = np.sqrt(2 * second[0, 0] - first_sums[0] ** 2)  # the two ages: (sum -+ spread) / 2
        young, old = (first_sums[0] - spread) / 2, (first_sums[0] + spread) / 2
        nihss_young = (old * first_sums[1] - second[0, 1]) / (old - young)
        assert (round(young, 6), round(old, 6)) == (20.5, 89.5)
        assert round(nihss_young, 6) == rows.loc[target, "nihss_admission"] == TARGET_NIHSS
    assert typed(last) == (403, "differencing"), "S1 + S2 - S3 - S4 is two rows: the target's NIHSS"


def test_defence_the_same_union_without_decoys_is_refused_by_the_window(nodes):
    """Held: the union rule inside the window (ADR 0030 round-17 amendment, ``differencing``).  Hole 1 without the
    decoys: S3, S4, S1 answered, S2 refused, in words carrying neither the target's NIHSS nor a count."""
    node = nodes["union_chain"]
    assert [regression(node, f).status_code for f in UNION.values()] == [200, 200, 200]
    last = regression(node, S2)
    assert typed(last) == (403, "differencing"), last.text
    assert quiet(last), last.text


# ------------------------------------------------------------------ hole 2: one chain across two model versions

A = where(rule("age", "less", 60))
B = where(rule("age", "greater_or_equal", 20), rule("age", "less", 40))
C = where(rule("age", "greater_or_equal", 40), rule("age", "less", 60))


def nihss(node: Served, filters, model: str):
    return node.call("descriptive_stats", request(["nihss_admission"], filters=filters, model=model), project=AUDIT)


def sums(reply) -> tuple[int, float]:
    moments = reply.json()["aggregates"]["datasets"][NODE]["variable_based"]["nihss_admission"]["moments"]
    return moments["n"], moments["n"] * moments["mean"][0]


def chain_decoy(rows: pd.DataFrame, i: int) -> dict:
    """``40 <= age < 60 AND glucose >= g_i``: the band less its 10 + 10 i lowest-glucose rows."""
    band = np.sort(rows["glucose_mmol"][(rows["age"] >= 40) & (rows["age"] < 60)].to_numpy())
    return where(*C["rules"], rule("glucose_mmol", "greater_or_equal", float(band[10 + 10 * i])))


def test_hole_2_closed_a_three_cohort_chain_split_over_two_model_versions_is_refused(nodes):
    """Hole 2 (closed: the exact backstop by patients over every remembered set of every data model, ADR 0030
    amended; :func:`mipflow.node.controls.chain.backstop_allows`).  Class: the backstop was "within one data model";
    "the comparison by patients across data models stay[s] with the window" (ADR 0030, nineteenth-review amendment).
    Adversary: one researcher with a standard-mode grant (35 documented requests), at a node that loaded its export
    under a new model version.

    A (age < 60) and B (20-40) under stroke 0.1; 32 nested decoys inside C and then C (40-60) under stroke 0.2, the
    same patients.  Pairwise every cohort is 10 or more patients from every other; by patients the window is the
    decoys, but the backstop by patients holds A and B: ``A - B - C`` would be the one patient under 20, and C is
    refused (``differencing``), in words carrying neither her NIHSS nor a count."""
    node = nodes["models"]
    first = [nihss(node, A, STROKE.key), nihss(node, B, STROKE.key)]
    assert [r.status_code for r in first] == [200, 200], [r.text for r in first]
    assert [r.json()["rows"] for r in first] == [1 + 30 + BAND, 30]
    decoys = [nihss(node, chain_decoy(node.rows, i), STROKE_V2.key) for i in range(DECOYS)]
    assert all(r.status_code == 200 for r in decoys), [r.text for r in decoys if r.status_code != 200][:1]
    last = nihss(node, C, STROKE_V2.key)
    if last.status_code == 200:  # the attack
        (na, sa), (nb, sb), (nc, sc) = sums(first[0]), sums(first[1]), sums(last)
        assert na - nb - nc == 1
        assert round(sa - sb - sc, 6) == node.rows.loc[0, "nihss_admission"] == TARGET_NIHSS
    assert typed(last) == (403, "differencing"), "A (0.1) - B (0.1) - C (0.2) is the one patient under 20"
    assert quiet(last) and str(BAND) not in last.text, last.text


def test_defence_the_same_chain_across_versions_without_decoys_is_refused(nodes):
    """Held: the chain rule by patients across data models (ADR 0030, ``differencing``).  Hole 2 without the decoys:
    A and B answered under 0.1, C refused under 0.2, in words carrying neither her NIHSS nor a count."""
    node = nodes["models_chain"]
    assert [nihss(node, A, STROKE.key).status_code, nihss(node, B, STROKE.key).status_code] == [200, 200]
    last = nihss(node, C, STROKE_V2.key)
    assert typed(last) == (403, "differencing"), last.text
    assert quiet(last) and str(BAND) not in last.text, last.text
