"""A twenty-second outside review, from the documents only: the weighted memory's limits beside the backstop (ADR 0058,
amendments "the chain rule, with atoms sized in effect" and "the exact backstop for weight families") and the union
rule of ADR 0030's backstop.

The reviewer read README.md, docs/privacy.md (sections 1-4), ADR 0030 (all amendments, the newest "the union rule in
the backstop"), 0051, 0058 (both amendments), 0059, 0061 and the test harness (``tests/nodes.py``,
``tests/privacy/conftest.py``, rounds 20 and 21, ``served_standard``); not ``plugins/mipflow``.  Every attack runs
through real node processes (``mipflow node serve`` on loopback) with the shipped thresholds (``min_row_count`` 10,
``nfilter_tab`` 3, differencing on, query budgets 100 / 300); standard mode is the admin's documented choice per node
(``standard_home``).  Every release is exact (standard mode): each strict xfail fails the same way on every run.

``test_hole_*`` were strict xfails (all four are closed now and pass through their defence): the attack runs, checks what it recovered against the truth, and its last assertion
is the condition that would hold if the defence held.  ``test_defence_*`` pass while a control holds, naming it.

Found (holes):

1. **A union of two atoms whose size in effect is not the sum of theirs, inside the window** (ADR 0058 amendment
   "the chain rule", Limits: "a union of several small atoms is not always caught"; amendment "the exact backstop",
   Limits: "Unions of several atoms are not searched here (a union's size in effect is not the sum of its atoms')").
   PCA of ``(exp glucose, age, NIHSS)`` on four age intervals over the bands ``P | M1 | M3 | Q | N`` (``P`` 12
   low-glucose rows aged 20-21, ``M1`` 12 rows aged 30-31, ``M3`` 15 rows aged 40-41 with glucose 19.90-19.95,
   ``Q`` the target alone at 50-55, ``N`` 15 rows aged 60-61 with glucose 19.90-19.95): ``A = P ∪ M1``,
   ``C = M1 ∪ M3``, ``B = M3 ∪ Q ∪ N``, ``D = N``.  Every pair's parts hold 12 rows or more, by rows and in effect;
   no single atom is a combination (so neither the atom rule in effect nor the backstop has anything to refuse);
   ``P ∪ Q`` holds 13 rows (the cohort ledger's union rule at ``min_row_count`` passes), ``P`` alone 12 in effect.
   But ``A - C + B - D = P ∪ Q``, whose weights are the target's ``exp(20.0)`` against twelve ``exp(4.0)``: about
   one row in effect.  Its weighted sums give her glucose (20.0), age (50.3) and NIHSS (37), exact at the data's
   precision.  Four requests, no decoys.  Without ``P`` (``Q`` ten rows of which nine light) the same chain is refused
   (``dominated_sums``, defence below): the hole is exactly the union.  Closed: the weighted backstop searches the
   unions of atoms under ``min_row_count`` in effect (``weighted_unions.light_union``, ADR 0058 amended); ``D`` is
   refused, and the same chain whose union holds the threshold in effect is answered.
2. **Round 21's weighted chain across two versions of the data model, beyond the window** (ADR 0058 amendment "the
   exact backstop", Limits: "across data models the window (by patients) still decides"; the backstop runs "over
   *every* remembered release of the family in the new one's data model").  The node holds the same patients under
   stroke 0.1 and 0.2.  ``U``, ``U \\ X``, ``U \\ Y`` under 0.1 (round 21's rows and filters), 32 nested decoys inside
   ``V`` and then ``V`` under 0.2.  The 0.2 backstop holds the decoys and ``V`` (no atom); by patients the window is the
   decoys; every pair passes.  ``U - (U \\ X) - (U \\ Y) + V`` is ``X ∩ Y``: ten patients, the target's ``exp(20.0)``
   dominating: glucose 20.0, age 21.5, NIHSS 37.  36 requests.  Without the decoys ``V`` is refused
   (``dominated_sums``, defence below): the hole is exactly the window.  Closed: the weighted backstop runs by
   patients over every data model's releases too (``weighted_ledger.backstop_dominated``, ADR 0058 amended).

3. **A study's weighted release less an earlier standard-mode one** (ADR 0058, Consequences: "**Open** (as for plain
   sums): a study release is not checked against earlier standard-mode releases of the same family"; docs/privacy.md
   row 12b: ``check_weighted`` "skipped in study mode (approval)").  PCA with ``exp`` of glucose on everyone in the
   standard project; the admin approves an ordinary protocol (population aged 25 or more, the same PCA: each cohort's
   own weighted sums hold, ADR 0053; ten rows from the ledger's cohort, the pairwise rule passes); the study's one
   release.  Everyone less the population is the ten patients under 25, the target's ``exp(20.0)`` against nine
   ``exp(4-4.5)``: glucose 20.0, age 21.5, NIHSS 37.  Two requests and an honest approval.  Closed: approval
   checks the study's exp-weighted cohorts against the weighted memory (pairs, chain rule, backstop) and remembers
   them (``study_transforms.check_weighted_history``, ADR 0058 amended); the study is not approved.
4. **A study population completing a chain of standard-mode cohorts, plain sums** (ADR 0028, approval: "the pairwise
   rule against the whole ledger; no linear combination of *them* isolates an atom" — the study's cohorts only;
   ``check_cohort`` skipped in study mode).  PCA of (age, NIHSS) on ``A`` (age < 60) and ``B`` (20-40) in the
   standard project; the admin approves a protocol with population 40-60 (30 rows from ``A``, disjoint from ``B``);
   the study's one release.  ``A - B - C`` is the one patient under 20: age 19, NIHSS 41.  Three requests.
   Closed: approval runs the chain rule (window and exact backstop) over the study's cohorts as one addition to
   the ledger's cohorts and the group memory's cells (``study_chain.chain_with_answered``, ADR 0028 amended).

Adversary of holes 3-4: a researcher granted a standard-mode project and a study project at one node (or two
researchers pooling results); the node admin only approves an ordinary protocol.

Held (defences): hole 1 with a single dominated atom in place of the union (``dominated_sums``, the chain rule in
effect); hole 2 without decoys (``dominated_sums``, the window by patients); holes 3 and 4 the other way round (the
study first: its releases are remembered, so the standard release is refused, ``dominated_sums`` and the chain rule's
``differencing``); every refusal carries neither the target's values nor a count.

Judged, not exploited: the union search's work bound (``UNION_WORK`` 3e6, ``UNION_CAP`` 256: "past either the release
is refused") is decided on the atoms, hence on the rows; it refuses with the chain rule's words, so it adds no bit
beyond standard mode's documented refusal oracle (one bit per charged request), and a refusal never releases a sum.

Not tried (time): unions of cells of fewer than ``nfilter_tab`` rows beyond the 32-cell window (histogram bins,
dummies: documented open, ADR 0030 "Why not at nfilter_tab"; what they give is a one-or-two-row count or sum);
``EXACT_ENTRIES`` (needs tens of thousands of atoms); explore mode's noise (repeats are the same bytes, documented);
a study refresh against standard-mode cohorts (hole 4's class; since closed, ADR 0028's issue-14 amendment); hole 1
across data models or with decoys (not needed: it holds in the window); fold cells and per-node survival bins across
cohorts; the central site's per-node values under masking.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import ConfigError
from mipflow.node.controls import study_approval
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import protocol, rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_explore_attacks import Served
from tests.privacy.test_redteam_round21 import (BOTH, NOT_X, NOT_Y, V, chain_and_decoys, effect, moment_sums,
                                                pairs_hold, weighted_rows)

pytestmark = pytest.mark.xdist_group("redteam_round22")

AUDIT = "audit"
NODE = "hospital_a"
DECOYS = 32
VARIABLES = ["glucose_mmol", "age", "nihss_admission"]
EXP = {"data_transformation": {"exp": ["glucose_mmol"]}}
#: hole 1's target: the only row aged 50-55
TARGET = {"glucose_mmol": 20.0, "age": 50.3, "nihss_admission": 37.0}
#: round 21's target (hole 2): the only heavy row of ``X ∩ Y``
TARGET21 = {"glucose_mmol": 20.0, "age": 21.5, "nihss_admission": 37.0}
STROKE_V2 = dataclasses.replace(STROKE, version="0.2", raw={**STROKE.raw, "version": "0.2"})


def request(y, filters=None, model: str = STROKE.key, **parameters) -> dict:
    return {"inputdata": {"data_model": model, "datasets": [NODE], "x": [], "y": list(y), "filters": filters},
            "parameters": parameters}


def typed(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


def pca(node: Served, filters, model: str = STROKE.key):
    return node.call("pca_with_transformation", request(VARIABLES, filters, model, **EXP), project=AUDIT)


def recover(parts, signs) -> tuple[int, dict]:
    """The weighted record of ``sum sign * part``: glucose from ``sum exp(2 g)``, age and NIHSS as their
    ``exp(g)``-weighted means (the dominating row's values)."""
    n = sum(sign * p[0] for p, sign in zip(parts, signs))
    s = sum(sign * p[1] for p, sign in zip(parts, signs))
    q = sum(sign * p[2] for p, sign in zip(parts, signs))
    return n, {"glucose_mmol": round(float(np.log(q[0, 0]) / 2), 2), "age": round(float(q[1, 0] / s[0]), 1),
               "nihss_admission": float(round(q[2, 0] / s[0]))}


def quiet(reply, *values) -> bool:
    """A refusal without aggregates, rows, the target's values or a count of the node."""
    body = reply.json()
    text = body.get("refused", "").replace("min_row_count (10)", "")
    return "aggregates" not in body and "rows" not in body and not any(str(v) in text for v in values)


# ------------------------------------------------------------------ rows

BANDS = {"P": (20.0, 12, 4.00), "M1": (30.0, 12, 5.00), "M3": (40.0, 15, 19.90), "N": (60.0, 15, 19.90)}
OUTSIDE = 20


def union_rows(with_p: bool = True, target_glucose: float = TARGET["glucose_mmol"]) -> pd.DataFrame:
    """The bands ``P | M1 | M3 | Q | N`` along age (each band's ages ``a0 + 0.1 k``, glucose ``g0 + 0.003 k``), the
    target alone in ``Q`` (50-55), and OUTSIDE rows aged 70-85 in no set.  ``with_p`` False: ``P`` empty and nine
    light rows (glucose 4.00-4.02) beside the target in ``Q`` (the defence's single dominated atom).
    ``target_glucose``: the lone row's glucose (4.05 in the honest chain: ``P ∪ Q`` holds 13 rows in effect)."""
    ages, glucose = [TARGET["age"]], [target_glucose]
    for name, (a0, n, g0) in BANDS.items():
        if name == "P" and not with_p:
            continue
        ages += [round(a0 + 0.1 * k, 1) for k in range(n)]
        glucose += [round(g0 + 0.003 * k, 3) for k in range(n)]
    if not with_p:
        ages += [round(51.0 + 0.1 * k, 1) for k in range(9)]
        glucose += [round(4.0 + 0.002 * k, 3) for k in range(9)]
    ages += list(np.round(np.linspace(70, 85, OUTSIDE), 1))
    glucose += [6.0] * OUTSIDE
    frame = stroke_rows(2201 if with_p else 2202, len(ages), NODE, "un" if with_p else "at")
    rng = np.random.default_rng(22)
    frame["age"], frame["glucose_mmol"] = ages, glucose
    frame["nihss_admission"] = rng.integers(0, 30, len(ages)).astype(float)
    frame.loc[0, "nihss_admission"] = TARGET["nihss_admission"]
    return frame


def band(lo: float, hi: float) -> dict:
    return where(rule("age", "greater_or_equal", lo), rule("age", "less", hi))


#: A = P ∪ M1, C = M1 ∪ M3, B = M3 ∪ Q ∪ N, D = N: A - C + B - D = P ∪ Q
CHAIN = {"A": band(15, 35), "C": band(25, 45), "B": band(35, 65), "D": band(55, 65)}


def members(rows: pd.DataFrame) -> dict[str, set]:
    age = rows["age"]
    return {name: set(rows.index[(age >= f["rules"][0]["value"]) & (age < f["rules"][1]["value"])])
            for name, f in CHAIN.items()}


def span_holds(sets: dict[str, set], target: set) -> bool:
    """Whether ``target``'s indicator is a combination of the sets' (over the reals)."""
    universe = sorted(set().union(*sets.values()))
    m = np.array([[i in s for i in universe] for s in sets.values()], float)
    t = np.array([i in target for i in universe], float)
    return np.linalg.matrix_rank(np.vstack([m, t])) == np.linalg.matrix_rank(m)


def atoms(sets: dict[str, set]) -> list[set]:
    universe = set().union(*sets.values())
    by = {}
    for i in universe:
        by.setdefault(tuple(i in s for s in sets.values()), set()).add(i)
    return list(by.values())


def both_ways_hold(rows: pd.DataFrame, sets: dict[str, set]) -> bool:
    """Every pair's parts 0 or >= 12 rows and >= 10 rows in effect (ADR 0013, ADR 0058 point 3), every release >= 10
    in effect (ADR 0053)."""
    if any(effect(rows, s) < 10 for s in sets.values()):
        return False
    return pairs_hold(rows, sets) and all(not (a & b) or min(len(a - b) or 99, len(b - a) or 99, len(a & b)) >= 12
                                          for a in sets.values() for b in sets.values() if a is not b)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """One standard-mode node per attack (memories apart), each ``hospital_a``, project ``audit`` (and the study
    projects the admin approves during the tests) granted to any researcher id; hole 2's nodes hold their rows under
    stroke 0.1 and 0.2 (the same patients); served as processes."""
    plan = {"union": (union_rows, 1), "union_honest": (lambda: union_rows(target_glucose=4.05), 1), "atom": (lambda: union_rows(with_p=False), 1), "models": (weighted_rows, 2),
            "models_chain": (weighted_rows, 2), "standard_first": (study_rows, 1), "study_first": (study_rows, 1),
            "chain_standard_first": (chain_rows, 1), "chain_study_first": (chain_rows, 1)}
    base = Path(tmp_path_factory.mktemp("round22"))
    roots, frames, credentials = {}, {}, {}
    for name, (rows, versions) in plan.items():
        roots[name] = base / name
        standard_home(roots[name], NODE)
        frames[name] = rows()
        for model in (STROKE, STROKE_V2)[:versions]:
            assert load_frame(roots[name], model, frames[name]) == len(frames[name])
        for project in (AUDIT, STUDY, CHAIN_STUDY):
            grant_all(roots[name], researcher="*", project=project)
        credentials[name] = issue_client(roots[name], "central")
    with running_nodes(list(roots.values())) as urls:
        yield {name: Served(url, credentials[name], roots[name], frames[name]) for name, url in zip(roots, urls)}


# ------------------------------------------------------------------ hole 1: a union light by rows, one row in effect


def test_hole_1_closed_a_union_of_two_atoms_one_row_in_effect_is_refused(nodes):
    """Hole 1 (closed: the weighted backstop searches unions of atoms in effect, ``weighted_unions.light_union``, ADR
    0058 amended).  Class: the weighted chain rule sized single atoms in effect (ADR 0058 amendment, "Limits": "a
    union of several small atoms is not always caught"); its backstop: "Unions of several atoms are not searched here
    (a union's size in effect is not the sum of its atoms')".  Adversary: one researcher with a standard-mode grant
    (four documented requests).

    ``A``, ``C``, ``B`` (age intervals) answered; no pair is refused by rows or in effect, no single atom is a
    combination, ``P ∪ Q`` holds 13 rows; ``A - C + B - D`` would be the weighted sums over ``P ∪ Q``, where the
    target's ``exp(20.0)`` outweighs twelve ``exp(4.0)``: her glucose, age and NIHSS.  ``D`` is refused
    (``dominated_sums``), in words carrying neither her values nor a count."""
    node = nodes["union"]
    rows = node.rows
    sets = members(rows)
    p_and_q = (sets["A"] - sets["C"]) | (sets["B"] - sets["C"] - sets["D"])
    assert len(p_and_q) == 13 and 0 in p_and_q and effect(rows, p_and_q) < 1.001
    assert both_ways_hold(rows, sets) and span_holds(sets, p_and_q)
    assert not any(span_holds(sets, atom) for atom in atoms(sets) if atom != sets["D"]), "no single atom follows"
    assert min(effect(rows, atom) for atom in atoms(sets) if 0 not in atom) >= 10
    replies = {name: pca(node, CHAIN[name]) for name in ("A", "C", "B")}
    assert all(r.status_code == 200 for r in replies.values()), {k: r.text for k, r in replies.items()}
    last = pca(node, CHAIN["D"])
    if last.status_code == 200:  # the attack
        parts = [moment_sums(replies["A"]), moment_sums(replies["C"]), moment_sums(replies["B"]), moment_sums(last)]
        n, record = recover(parts, (1, -1, 1, -1))
        assert n == 13 and record == TARGET == {k: rows.loc[0, k] for k in TARGET}
    assert typed(last) == (403, "dominated_sums"), "A - C + B - D is the target's weighted record"
    assert quiet(last, "20", "50.3", "37", len(rows), 13)
    assert "min_row_count (10)" in last.json()["refused"]


def test_defence_the_same_chain_whose_union_holds_the_threshold_in_effect_is_answered(nodes):
    """Honest: hole 1's four intervals where the lone row of ``Q`` is as light as ``P``'s (glucose 4.05): ``A - C + B -
    D`` is ``P ∪ Q``, 13 rows and 13 in effect, and every other union of atoms the four releases reach holds ten rows
    in effect or more.  All four are answered, and the union's weighted sums are those of its rows."""
    node = nodes["union_honest"]
    rows = node.rows
    sets = members(rows)
    p_and_q = (sets["A"] - sets["C"]) | (sets["B"] - sets["C"] - sets["D"])
    assert len(p_and_q) == 13 and effect(rows, p_and_q) > 12 and both_ways_hold(rows, sets)
    replies = [pca(node, CHAIN[name]) for name in ("A", "C", "B", "D")]
    assert [r.status_code for r in replies] == [200, 200, 200, 200], [r.text for r in replies]
    n, sums, _ = (sum(sign * np.asarray(p[i]) for p, sign in zip(map(moment_sums, replies), (1, -1, 1, -1)))
                  for i in range(3))
    union = rows.loc[sorted(p_and_q)]
    assert n == 13 and np.isclose(sums[1], union["age"].sum(), rtol=1e-9)
    assert np.isclose(sums[0], np.exp(union["glucose_mmol"]).sum(), rtol=1e-9)


def test_defence_the_same_chain_on_one_dominated_atom_is_refused(nodes):
    """Held: the weighted chain rule, single atoms sized in effect (ADR 0058 amendment, ``dominated_sums``).  Hole 1's
    four intervals where ``P`` is empty and ``Q`` holds the target and nine light rows: ``A - C + B - D`` is the atom
    ``Q`` (10 rows, one in effect).  ``D`` is refused in the pair rule's words, without values or counts."""
    node = nodes["atom"]
    rows = node.rows
    sets = members(rows)
    q = sets["B"] - sets["C"] - sets["D"]
    assert len(q) == 10 and span_holds(sets, q) and effect(rows, q) < 1.001
    assert [pca(node, CHAIN[name]).status_code for name in ("A", "C", "B")] == [200, 200, 200]
    last = pca(node, CHAIN["D"])
    assert typed(last) == (403, "dominated_sums"), last.text
    assert quiet(last, "20", "50.3", "37", len(rows))
    assert "min_row_count (10)" in last.json()["refused"] and "study" in last.json()["refused"]


# ------------------------------------------------------------------ hole 2: round 21's chain across model versions


def test_hole_2_closed_a_weighted_chain_across_model_versions_beyond_the_window_is_refused(nodes):
    """Hole 2 (closed: the weighted backstop by patients over every data model's releases, ADR 0058 amended).  Class: the weighted memory's exact backstop runs "over every remembered release of the family in the
    new one's data model"; "across data models the window (by patients) still decides" (ADR 0058, twenty-first
    review amendment, Limits).  Adversary: one researcher with a standard-mode grant (36 documented requests) at a
    node that loaded its export under a new model version.

    ``U``, ``U \\ X``, ``U \\ Y`` under stroke 0.1; 32 nested decoys inside ``V`` and then ``V`` under 0.2.  The 0.2
    backstop sees only the decoys and ``V``; the window by patients is the decoys; no pair is dominated and no row
    atom is under 10.  ``U - (U \\ X) - (U \\ Y) + V`` is ``X ∩ Y``, where the target's weight dominates."""
    node = nodes["models"]
    rows, first = chain_and_decoys(node, pca, lambda n, f: pca(n, f, STROKE_V2.key))
    last = pca(node, V, STROKE_V2.key)
    if last.status_code == 200:  # the attack
        parts = [moment_sums(first["U"]), moment_sums(first["U-X"]), moment_sums(first["U-Y"]), moment_sums(last)]
        n, record = recover(parts, (1, -1, -1, 1))
        assert n == BOTH and record == TARGET21 == {k: rows.loc[0, k] for k in TARGET21}
    assert typed(last) == (403, "dominated_sums"), "U - (U \\ X) - (U \\ Y) + V (0.1 and 0.2) is the target"


def test_defence_the_chain_across_model_versions_without_decoys_is_refused(nodes):
    """Held: the weighted chain rule's window by patients across data models (ADR 0058 amendment, ``dominated_sums``).
    Hole 2 without the decoys: ``U``, ``U \\ X``, ``U \\ Y`` under 0.1 answered, ``V`` under 0.2 refused, in words
    carrying neither the target's values nor a count."""
    node = nodes["models_chain"]
    assert [pca(node, f).status_code for f in (None, NOT_X, NOT_Y)] == [200, 200, 200]
    last = pca(node, V, STROKE_V2.key)
    assert typed(last) == (403, "dominated_sums"), last.text
    assert quiet(last, "20", "21.5", "37", len(node.rows))


# ------------------------------------------------------------------ hole 3: a study release against a standard one

STUDY = "cohort"
YOUNG = 25


def study_rows() -> pd.DataFrame:
    """The target (row 0: glucose 20.0, age 21.5, NIHSS 37) and nine light rows (glucose 4.0-4.5) under 25; 30 rows
    aged 30-85 with glucose 19.90-19.95 and 60 with 5-9.  Every value present."""
    rng = np.random.default_rng(2203)
    n = 10 + 30 + 60
    frame = stroke_rows(2203, n, NODE, "st")
    frame["age"] = np.round(np.r_[[TARGET21["age"]], rng.uniform(19, 24.5, 9), rng.uniform(30, 85, 90)], 1)
    frame["glucose_mmol"] = np.round(np.r_[[TARGET21["glucose_mmol"]], rng.uniform(4.0, 4.5, 9),
                                           rng.uniform(19.90, 19.95, 30), rng.uniform(5, 9, 60)], 2)
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    frame.loc[0, "nihss_admission"] = TARGET21["nihss_admission"]
    return frame


def approve(root: Path) -> bool:
    """The admin approves project ``cohort``: PCA of the three variables with ``exp`` of glucose, population aged 25
    or more (every cohort holds its weighted sums' rows, checked at approval, ADR 0053); False if refused."""
    document = protocol(datasets=[NODE], variables=VARIABLES, algorithms=["pca_with_transformation"],
                        population={"filter": where(rule("age", "greater_or_equal", YOUNG))}, subgroups=[],
                        data_transformation={"exp": ["glucose_mmol"]})
    document.pop("survival")
    try:
        return study_approval.approve(NodeHome(root), STUDY, document)["status"] == "approved"
    except ConfigError:
        return False


def study_pca(node: Served):
    return node.call("pca_with_transformation", request(VARIABLES, None, **EXP), project=STUDY)


def test_hole_3_closed_a_study_whose_weighted_cohorts_less_an_earlier_standard_release_are_dominated_is_not_approved(
        nodes):
    """Hole 3 (closed: approval checks the study's exp-weighted cohorts against the node's weighted memory as
    ``check_weighted`` checks a standard release, pairs, chain and backstop, and remembers them;
    ``study_transforms.check_weighted_history``, ADR 0058 and ADR 0028 amended).  Class: ADR 0058, Consequences: "**Open** (as for plain sums): a study release is not checked against
    earlier standard-mode releases of the same family"; ``check_weighted`` is "skipped in study mode (approval)"
    (docs/privacy.md, row 12b), and approval checks each cohort's own weighted sums (ADR 0053) and the ledger's rows
    (ten rows apart: passes).  Adversary: a researcher granted a standard-mode project and a study project at one
    node (or two researchers pooling results); the admin approves an ordinary protocol.

    PCA with ``exp`` of glucose on everyone (standard project ``audit``); the admin approves study ``cohort``
    (population aged 25 or more, the same PCA); the study's one release.  Everyone less the population is the ten
    patients under 25, of whom the target's ``exp(20.0)`` outweighs nine ``exp(4-4.5)``: her record."""
    node = nodes["standard_first"]
    rows = node.rows
    young = set(rows.index[rows["age"] < YOUNG])
    assert len(young) == 10 and 0 in young and effect(rows, young) < 1.001
    assert effect(rows, set(rows.index) - young) >= 10
    first = pca(node, None)
    assert first.status_code == 200, first.text
    approved = approve(node.root)
    last = study_pca(node) if approved else None
    if approved and last.status_code == 200:  # the attack
        n, record = recover([moment_sums(first), moment_sums(last)], (1, -1))
        assert n == 10 and record == TARGET21 == {k: rows.loc[0, k] for k in TARGET21}
    assert not approved or typed(last) == (403, "dominated_sums"), "everyone less the population is the target"


def test_defence_a_standard_release_after_the_study_s_is_refused(nodes):
    """Held: the weighted pair rule against a remembered study release (``dominated_sums``, ADR 0058: releases are
    remembered in every mode, row 19).  Hole 3 the other way round: the study approved and its release answered, then
    PCA with ``exp`` on everyone in the standard project is refused, in words carrying neither values nor a count."""
    node = nodes["study_first"]
    assert approve(node.root)
    assert study_pca(node).status_code == 200
    last = pca(node, None)
    assert typed(last) == (403, "dominated_sums"), last.text
    assert quiet(last, "20", "21.5", "37", len(node.rows))


# ------------------------------------------------------------------ hole 4: a study cohort chained to standard ones

CHAIN_STUDY = "bands"
PLAIN_TARGET = 41.0


def chain_rows() -> pd.DataFrame:
    """The target (row 0: age 19, NIHSS 41), 30 rows aged 20-40, 30 aged 40-60, 30 aged 60-85; every NIHSS present."""
    rng = np.random.default_rng(2204)
    frame = stroke_rows(2204, 91, NODE, "ch")
    frame["age"] = np.round(np.r_[[19.0], rng.uniform(20, 39.9, 30), rng.uniform(40, 59.9, 30),
                                  rng.uniform(60, 85, 30)], 1)
    frame["nihss_admission"] = rng.integers(0, 30, 91).astype(float)
    frame.loc[0, "nihss_admission"] = PLAIN_TARGET
    return frame


def nihss(node: Served, filters, project: str = AUDIT):
    """PCA of (age, NIHSS), no transformation: its ``n``, means and co-moments."""
    return node.call("pca_with_transformation", request(["age", "nihss_admission"], filters), project=project)


def nihss_sums(reply) -> tuple[int, float]:
    n, s, _ = moment_sums(reply)
    return n, float(s[1])


A60, B2040, C4060 = where(rule("age", "less", 60)), band(20, 40), band(40, 60)


def approve_bands(root: Path) -> bool:
    """The admin approves project ``bands``: PCA of (age, NIHSS), population aged 40-60 (30 patients), no subgroup."""
    document = protocol(datasets=[NODE], variables=["age", "nihss_admission"], algorithms=["pca_with_transformation"],
                        population={"filter": C4060}, subgroups=[])
    document.pop("survival")
    try:
        return study_approval.approve(NodeHome(root), CHAIN_STUDY, document)["status"] == "approved"
    except ConfigError:
        return False


def test_hole_4_closed_a_study_population_completing_a_chain_of_standard_cohorts_is_not_approved(nodes):
    """Hole 4 (closed: approval runs the chain rule over the study's cohorts as one addition to everything the node
    answered, window and exact backstop, ADR 0028 amended).  Class: study approval checks the study's cohorts against the ledger pairwise only ("none of these
    cohorts ... is a few rows from a cohort answered before (ADR 0013's pairwise rule against the whole ledger); no
    linear combination of them isolates an atom", ADR 0028; ADR 0058: "a study release is not checked against
    earlier standard-mode releases ... (as for plain sums)"), and ``check_cohort`` is skipped in study mode.
    Adversary: a researcher granted a standard-mode project and a study project (or two pooling results); the admin
    approves an ordinary protocol (one age band).

    PCA of (age, NIHSS) on ``A`` (age < 60) and ``B`` (20-40) in the standard project (each 30 or more rows from the
    other); the admin approves study ``bands`` (population 40-60: 30 rows from ``A``, disjoint from ``B``); the
    study's one release.  ``A - B - C`` is the one patient under 20: her age (19) and NIHSS (41)."""
    node = nodes["chain_standard_first"]
    rows = node.rows
    sets = {"A": set(rows.index[rows["age"] < 60]), "B": set(rows.index[(rows["age"] >= 20) & (rows["age"] < 40)]),
            "C": set(rows.index[(rows["age"] >= 40) & (rows["age"] < 60)])}
    assert sets["A"] - sets["B"] - sets["C"] == {0} and pairs_hold(rows.assign(glucose_mmol=0.0), sets)
    first = [nihss(node, A60), nihss(node, B2040)]
    assert [r.status_code for r in first] == [200, 200], [r.text for r in first]
    approved = approve_bands(node.root)
    last = nihss(node, None, CHAIN_STUDY) if approved else None
    if approved and last.status_code == 200:  # the attack
        (na, sa), (nb, sb), (nc, sc) = nihss_sums(first[0]), nihss_sums(first[1]), nihss_sums(last)
        ages = [moment_sums(r)[1][0] for r in (*first, last)]
        assert na - nb - nc == 1 and round(ages[0] - ages[1] - ages[2], 6) == rows.loc[0, "age"] == 19.0
        assert round(sa - sb - sc, 6) == rows.loc[0, "nihss_admission"] == PLAIN_TARGET
    assert not approved or last.status_code == 403, "A - B - C is the one patient under 20"


def test_defence_standard_cohorts_completing_a_chain_with_a_study_s_are_refused(nodes):
    """Held: the study's cohorts recorded in the ledger (ADR 0028: "analyses outside the study meet them"), the chain
    rule (``differencing``).  Hole 4 the other way round: study ``bands`` approved and answered, ``A`` answered in the
    standard project, ``B`` refused, in words carrying neither her values nor a count."""
    node = nodes["chain_study_first"]
    assert approve_bands(node.root)
    assert nihss(node, None, CHAIN_STUDY).status_code == 200
    assert nihss(node, A60).status_code == 200
    last = nihss(node, B2040)
    assert typed(last) == (403, "differencing"), last.text
    assert quiet(last, "19", "41", len(node.rows))
