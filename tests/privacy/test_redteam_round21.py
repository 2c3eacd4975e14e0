"""A twenty-first outside review, from the documents only: what stays with the chain rule's window of 32 related sets
beside the exact backstop (ADR 0030's nineteenth-review amendment: "the weighted memory (ADR 0058) keeps its own
window"; "Not exact: unions of several small atoms and changed-value units stay with the window"; ADR 0058's
amendment, "Limits ... releases outside the window are not chained").

The reviewer read README.md, docs/privacy.md (the table of section 3, rows 12a-12b, and section 4), ADR 0030 (with
its round-17, nineteenth- and twentieth-review amendments), 0051 ("Windows and caps"), 0053, 0058, 0061 and the test
harness (``tests/nodes.py``, ``tests/privacy/conftest.py``, rounds 12, 19 and 20, ``served_standard``); not
``plugins/mipflow``.  Every attack runs through real node processes (``mipflow node serve`` on loopback) with the
shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3, differencing on, query budgets 100 / 300); standard mode
is the admin's documented choice per node (``standard_home``).  Every release is exact (standard mode): each strict
xfail fails the same way on every run.

``test_hole_*`` were strict xfails (both holes are closed now and pass through their defence): the attack runs, checks what it recovered against the truth, and its last assertion
is the condition that would hold if the defence held.  ``test_defence_*`` pass while a control holds, naming it.

Found (holes):

1. **ADR 0058's four-release weighted chain, pushed out of the weighted window by 32 decoys** (ADR 0058 amendment,
   "Limits": "releases outside the window are not chained (the pair rule still sees every release of the family)";
   ADR 0030 nineteenth-review amendment: "the weighted memory (ADR 0058) keeps its own window").  PCA of
   ``(exp glucose, age, NIHSS)`` on ``U`` (everyone), ``U \\ X`` (age >= 30), ``U \\ Y`` (NIHSS <= 20), then 32
   nested decoys inside ``V = U \\ (X ∪ Y)`` (``V AND age >= a_i``, 12 rows apart), then ``V``.  Every
   pair's rows between hold 10 or more rows in effect (``sum w / max w``), every atom of the row ledger holds 10 rows
   or more (``X ∩ Y`` exactly 10: the cohort ledger and its exact backstop answer), and at ``V`` the window of 32
   related releases is the decoys: ``U - (U \\ X) - (U \\ Y) + V`` is ``X ∩ Y``, ten rows of which the target's
   ``exp(20.0)`` outweighs the nine others' ``exp(4..4.5)`` about 700 000 to 1.  Its sums give her glucose (20.0),
   age (21.5) and NIHSS (37), each exact at the data's precision.  Without the decoys ``V`` is refused
   (``dominated_sums``, defence below): the hole is exactly the window.  36 requests, one researcher's day.
   Closed: the weighted memory runs the chain rule's exact backstop over every release of the family, atoms sized
   in effect (``weighted_ledger.backstop_dominated``, ADR 0058 amended).
2. **Round 15's corrected-row chain, pushed out of the window by 32 decoys** (ADR 0030 nineteenth-review amendment,
   "Not exact: unions of several small atoms and changed-value units stay with the window"; ADR 0061 "Value stamps"
   amended: the chain rule's changed-value units, "closed for ... ``B``, ``B' ∪ N``, ``N``").  Descriptive statistics
   of NIHSS on everyone (``B``); a nightly load corrects the target's NIHSS in place (41 -> 12) and adds 12 patients
   aged 86-89 (``N``); everyone again (``B' ∪ N``: answered, an honest re-run); 32 nested decoys ``age >= a_i``
   (``N`` and a band of older patients, 10 rows apart); then ``N``.  By rows no atom is under 10 (the exact backstop
   has no versions and allows), every pair is 10 or more rows apart, and at ``N`` the window is the decoys:
   ``B - (B' ∪ N) + N`` gives old less new NIHSS and old squared less new squared, so both values, 41 and 12, exact.
   Without the decoys ``N`` is refused (``differencing``, defence below): again exactly the window.  35 requests
   around one load.  Closed: the backstop's union rule at ``min_row_count`` (ADR 0030 amended) sees the old and the
   new version of the row as two small atoms (a changed-value unit is a key of its own in the remembered cohort).

Held (defences): the same four weighted releases without decoys (``dominated_sums``, the weighted chain rule in its
window, ADR 0058 amendment); its refusal and the pair rule's are the same bytes, carry no value and no count, and
say what to change (an honest researcher's refused ``exp`` PCA gets an actionable message, ADR 0058 point 5); the
corrected-row chain without decoys (``differencing``, the changed-value units in the window), with no value or count
in its words; hole 2's chain with a consent withdrawal in place of the correction, decoys included (``differencing``:
the stale release's phantom unit, ADR 0061 "One view of the epochs", holds beyond the window where the changed-value
unit does not).

Not tried (time): Cox's per-level event checks at later risk sets (sealed sums: a peer's view, two nodes); categorical
naive Bayes' cells against the backstop (declared since round 19: inside the same family as the other cells); unions
of small atoms at the ``nfilter_tab`` level beyond the 32-cell window (the same class as round 20's hole 1, open by
ADR 0030's twentieth-review amendment; not repeated); the weighted window's atom cap (2048 atoms: about ten old
releases kept, needs a node of thousands of rows in general position); the weighted chain across data models (atoms
of patients, the least weight taken: ADR 0058 amendment); refusal bodies beyond the two controls asserted here
(``dominated_sums``, ``differencing``): the ``min_row_count`` / ``differencing`` distinction is the documented
one-bit oracle of standard mode and was not probed further.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from mipflow.node.deid.pseudonyms import Pseudonymiser
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.nodes import apply_consent, grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_explore_attacks import Served, served_standard

pytestmark = pytest.mark.xdist_group("redteam_round21")

AUDIT = "audit"
NODE = "hospital_a"
DECOYS = 32
STEP = 12
#: the target: the only row of ``X ∩ Y`` with a high glucose
TARGET = {"glucose_mmol": 20.0, "age": 21.5, "nihss_admission": 37.0}
VARIABLES = ["glucose_mmol", "age", "nihss_admission"]
EXP = {"data_transformation": {"exp": ["glucose_mmol"]}}
#: hole 2's target: NIHSS 41, corrected to 12 by a nightly load
OLD_NIHSS, NEW_NIHSS = 41.0, 12.0


def request(y, filters=None, **parameters) -> dict:
    return {"inputdata": {"data_model": "stroke:0.1", "datasets": [NODE], "x": [], "y": list(y),
                          "filters": filters}, "parameters": parameters}


def typed(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


# ------------------------------------------------------------------ rows

BOTH, X_ONLY, Y_ONLY = 10, 15, 15
REST = STEP + STEP * DECOYS + STEP


def weighted_rows() -> pd.DataFrame:
    """``X`` (age < 30) and ``Y`` (NIHSS > 20).  ``X ∩ Y``: the target (row 0, glucose 20.0) and nine with glucose
    4-4.5; ``X \\ Y`` and ``Y \\ X``: 15 each at glucose 19.90-19.95; ``V`` (the rest): REST rows aged 30.0, 30.1,
    ... (distinct: the decoys' thresholds) with glucose 19.95-19.99.  Every value present.

    ``V``'s rows weigh nearly as much as the target (twenty-second review, hole 1): were they light (the review's
    5.00-5.05), ``U - (U \\ X) - (U \\ Y) = X ∩ Y - V`` would already be her record after three releases, a union
    one row in effect, which the weighted backstop's union search now refuses at ``U \\ Y``
    (``tests/mipflow/node/controls/test_weighted_unions.py``); heavy, the chain needs its fourth release, ``V``."""
    rng = np.random.default_rng(21)
    n = BOTH + X_ONLY + Y_ONLY + REST
    frame = stroke_rows(2101, n, NODE, "wt")
    x = np.arange(n) < BOTH + X_ONLY
    y = (np.arange(n) < BOTH) | ((np.arange(n) >= BOTH + X_ONLY) & (np.arange(n) < BOTH + X_ONLY + Y_ONLY))
    rest = np.arange(n) >= BOTH + X_ONLY + Y_ONLY
    age = np.where(x, rng.uniform(19, 29.5, n), rng.uniform(30, 85, n))
    age[rest] = 30.0 + 0.1 * np.arange(REST)
    frame["age"] = np.round(age, 1)
    frame["nihss_admission"] = np.where(y, rng.integers(21, 31, n), rng.integers(0, 21, n)).astype(float)
    glucose = rng.uniform(19.95, 19.99, n)
    glucose[:BOTH] = rng.uniform(4.0, 4.5, BOTH)
    glucose[BOTH:BOTH + X_ONLY + Y_ONLY] = rng.uniform(19.90, 19.95, X_ONLY + Y_ONLY)
    frame["glucose_mmol"] = np.round(glucose, 2)
    frame.loc[0, list(TARGET)] = list(TARGET.values())
    return frame


BAND_ROWS = 10 + 10 * DECOYS + 10


def correction_rows() -> pd.DataFrame:
    """The target (row 0: age 19, NIHSS 41), 19 aged 20-30, BAND_ROWS aged 50.0, 50.1, ... (distinct: the decoys'
    thresholds), 20 aged 20-45; every NIHSS present, everyone under 84."""
    rng = np.random.default_rng(2102)
    n = 20 + BAND_ROWS + 20
    frame = stroke_rows(2102, n, NODE, "fx")
    frame["age"] = np.round(np.r_[[19.0], rng.uniform(20, 30, 19), 50.0 + 0.1 * np.arange(BAND_ROWS),
                                  rng.uniform(20, 45, 20)], 1)
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    frame.loc[0, "nihss_admission"] = OLD_NIHSS
    return frame


PLAN = {"window": weighted_rows, "chain": weighted_rows, "fix_window": correction_rows, "fix_chain": correction_rows}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """One standard-mode node per attack (memories apart), each ``hospital_a``, project ``audit`` granted to any
    researcher id; served as processes."""
    with served_standard(Path(tmp_path_factory.mktemp("round21")), PLAN, NODE, AUDIT) as served:
        yield served


NOT_X = where(rule("age", "greater_or_equal", 30))
NOT_Y = where(rule("nihss_admission", "less_or_equal", 20))
V = where(rule("age", "greater_or_equal", 30), rule("nihss_admission", "less_or_equal", 20))


def decoy(i: int) -> dict:
    """``V AND age >= a_i``: V less its ``STEP (i + 1)`` youngest rows (the ages are 30.0 + 0.1 k)."""
    return where(*V["rules"], rule("age", "greater_or_equal", round(30.0 + 0.1 * STEP * (i + 1) - 0.05, 2)))


def pca(node: Served, filters):
    return node.call("pca_with_transformation", request(VARIABLES, filters, **EXP), project=AUDIT)


def chain_and_decoys(node: Served, first_call, decoy_call) -> tuple[pd.DataFrame, dict]:
    """``U``, ``U \\ X``, ``U \\ Y`` through ``first_call`` and the 32 nested decoys inside ``V`` through
    ``decoy_call`` (each ``(node, filters) -> reply``), every one answered: the node's rows and the first three
    replies.  The family is checked on the rows first: ``X ∩ Y`` one row in effect, every pair passing."""
    rows = node.rows
    sets = family(rows)
    both = sets["U"] - sets["U-X"] - sets["U-Y"]
    assert len(both) == BOTH and effect(rows, both) < 1.001 and pairs_hold(rows, sets)
    first = {name: first_call(node, f) for name, f in (("U", None), ("U-X", NOT_X), ("U-Y", NOT_Y))}
    assert all(r.status_code == 200 for r in first.values()), {k: r.text for k, r in first.items()}
    answered = [decoy_call(node, decoy(i)) for i in range(DECOYS)]
    assert all(r.status_code == 200 for r in answered), [r.text for r in answered if r.status_code != 200][:1]
    assert [moment_sums(r)[0] for r in answered] == [len(sets[f"D{i}"]) for i in range(DECOYS)]
    return rows, first


def moment_sums(reply) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, sums, sums of products) of (exp glucose, age, NIHSS) from PCA's ``n``, means and co-moments."""
    moments = reply.json()["aggregates"]["moments"]
    n, mean, m2 = moments["n"], np.asarray(moments["mean"]), np.asarray(moments["m2"])
    return n, n * mean, m2 + n * np.outer(mean, mean)


def effect(frame: pd.DataFrame, members) -> float:
    """Rows in effect over ``members``, ``sum w / max w``, the least of PCA's two families ``exp(glucose)`` and
    ``exp(2 glucose)`` (ADR 0058 point 1)."""
    g = frame.loc[sorted(members), "glucose_mmol"].to_numpy()
    return min(float(np.exp(k * (g - g.max())).sum()) for k in (1, 2))


def family(frame: pd.DataFrame) -> dict[str, set]:
    age, nihss = frame["age"], frame["nihss_admission"]
    sets = {"U": set(frame.index), "U-X": set(frame.index[age >= 30]), "U-Y": set(frame.index[nihss <= 20]),
            "V": set(frame.index[(age >= 30) & (nihss <= 20)])}
    for i in range(DECOYS):
        sets[f"D{i}"] = set(frame.index[(age >= 30) & (nihss <= 20) & (age >= 30.0 + 0.1 * STEP * (i + 1) - 0.05)])
    return sets


def pairs_hold(frame: pd.DataFrame, sets: dict[str, set]) -> bool:
    """ADR 0058 point 3 on every pair: each of ``a \\ b``, ``b \\ a``, ``a ∩ b`` empty or >= 10 rows in effect;
    and ADR 0013 on rows: each difference 0 or >= 10 rows."""
    for a in sets:
        for b in sets:
            if a < b:
                for part in (sets[a] - sets[b], sets[b] - sets[a], sets[a] & sets[b]):
                    if part and (effect(frame, part) < 10 or len(part) < 10):
                        return False
    return True


# ------------------------------------------------------------------ hole 1: the weighted chain beyond its window


def test_hole_1_closed_a_weighted_chain_pushed_out_of_the_window_is_refused(nodes):
    """Hole 1 (closed: the weighted memory's exact backstop, ADR 0058 amended).  Class: the weighted memory's chain rule (ADR 0058 amendment) runs over "the cohort ledger's window,
    32 releases"; its "Limits": "releases outside the window are not chained (the pair rule still sees every
    release of the family)", and ADR 0030's exact backstop is not run for it ("the weighted memory (ADR 0058) keeps
    its own window").  Adversary: one researcher with a standard-mode grant (36 documented requests).

    ``U``, ``U \\ X``, ``U \\ Y`` answered; 32 nested decoys inside ``V`` answered; ``V`` answered.  No pair is
    dominated (checked below on the rows: the pair rule has nothing to refuse), no row atom is under 10 (``X ∩ Y``
    is 10 rows), and ``U - (U \\ X) - (U \\ Y) + V`` is the weighted sums over ``X ∩ Y``: the target's glucose, age
    and NIHSS."""
    node = nodes["window"]
    rows, first = chain_and_decoys(node, pca, pca)
    last = pca(node, V)
    if last.status_code == 200:  # the attack
        parts = [moment_sums(first["U"]), moment_sums(first["U-X"]), moment_sums(first["U-Y"]), moment_sums(last)]
        n = parts[0][0] - parts[1][0] - parts[2][0] + parts[3][0]
        s = parts[0][1] - parts[1][1] - parts[2][1] + parts[3][1]
        q = parts[0][2] - parts[1][2] - parts[2][2] + parts[3][2]
        assert n == BOTH
        recovered = {"glucose_mmol": round(float(np.log(q[0, 0]) / 2), 2), "age": round(float(q[1, 0] / s[0]), 1),
                     "nihss_admission": float(round(q[2, 0] / s[0]))}
        assert recovered == TARGET == {k: rows.loc[0, k] for k in TARGET}
    assert typed(last) == (403, "dominated_sums"), "U - (U \\ X) - (U \\ Y) + V is the target's weighted record"


# ------------------------------------------------------------------ hole 2: a changed-value unit beyond the window

NEW = where(rule("age", "greater_or_equal", 86))


def nihss(node: Served, filters=None):
    return node.call("descriptive_stats", request(["nihss_admission"], filters), project=AUDIT)


def sums(reply) -> tuple[int, float, float]:
    """(n, sum, sum of squares) of NIHSS from descriptive statistics' ``n``, ``mean`` and ``m2``."""
    moments = reply.json()["aggregates"]["datasets"][NODE]["variable_based"]["nihss_admission"]["moments"]
    n, mean, m2 = moments["n"], moments["mean"][0], moments["m2"][0]
    return n, n * mean, m2 + n * mean * mean


def correct_and_load(node: Served) -> None:
    """A nightly load: the target's NIHSS corrected in place (41 -> 12, the same row identity) and 12 new patients
    aged 86-89 (everyone else is under 84)."""
    fixed = node.rows.loc[[0]].assign(nihss_admission=NEW_NIHSS)
    assert load_frame(node.root, STROKE, fixed) == 1
    fresh = stroke_rows(2103, 12, NODE, "new").assign(age=np.linspace(86, 89, 12), nihss_admission=7.0)
    assert load_frame(node.root, STROKE, fresh) == 12


def fix_decoy(i: int) -> dict:
    """``age >= a_i``: the new rows and the band less its ``10 (i + 1)`` youngest rows (ages 50.0 + 0.1 k)."""
    return where(rule("age", "greater_or_equal", round(50.0 + 0.1 * 10 * (i + 1) - 0.05, 2)))


def test_hole_2_closed_a_corrected_row_s_chain_beyond_the_window_is_refused(nodes):
    """Hole 2 (closed: the backstop's union rule over every remembered set, ADR 0030 amended).  Class: the corrected row as a changed-value unit of the chain rule (ADR 0061, "Value stamps"
    amended; round 15 hole 2, closed in the window); ADR 0030's nineteenth-review amendment: "Not exact: unions of
    several small atoms and changed-value units stay with the window".  Adversary: one researcher with a
    standard-mode grant (35 documented requests around one nightly load).

    Descriptive statistics of NIHSS on everyone (``B``); a load corrects the target's NIHSS (41 -> 12) and adds 12
    patients aged 86-89 (``N``); everyone again (``B' ∪ N``, 12 rows from ``B``: answered, as round 15 says an honest
    re-run must be); 32 nested decoys ``age >= a_i`` (``N`` and a band of older patients, 10 rows apart); then ``N``.
    By rows no atom is small (the backstop, which has no versions, allows), every pair is 10 or more rows apart, and
    the window at ``N`` is the decoys: ``B - (B' ∪ N) + N`` is the target's old less new NIHSS and old squared less
    new squared: both values."""
    node = nodes["fix_window"]
    first = nihss(node)
    assert first.status_code == 200, first.text
    correct_and_load(node)
    again = nihss(node)
    assert again.status_code == 200 and again.json()["rows"] == len(node.rows) + 12, again.text
    decoys = [nihss(node, fix_decoy(i)) for i in range(DECOYS)]
    assert all(r.status_code == 200 for r in decoys), [r.text for r in decoys if r.status_code != 200][:1]
    assert [r.json()["rows"] for r in decoys] == [BAND_ROWS - 10 * (i + 1) + 12 for i in range(DECOYS)]
    last = nihss(node, NEW)
    if last.status_code == 200:  # the attack
        (n1, s1, q1), (n2, s2, q2), (n3, s3, q3) = sums(first), sums(again), sums(last)
        assert n1 - n2 + n3 == 0
        d, q = s1 - s2 + s3, q1 - q2 + q3  # old - new, old^2 - new^2
        assert (round((q / d + d) / 2, 6), round((q / d - d) / 2, 6)) == (OLD_NIHSS, NEW_NIHSS)
    assert typed(last) == (403, "differencing"), "B - (B' ∪ N) + N is the corrected row's old and new NIHSS"


# ------------------------------------------------------------------ defences


def test_defence_the_same_chain_without_decoys_is_refused_by_the_weighted_chain_rule(nodes):
    """Held: the weighted chain rule inside its window (ADR 0058 amendment, ``dominated_sums``).  Hole 1 without the
    decoys: ``U``, ``U \\ X``, ``U \\ Y`` answered, ``V`` refused, in the pair rule's words (the same bytes as the
    pair rule's refusal of ``U`` less ``X ∩ Y``), carrying no value and no count, and saying what to change."""
    node = nodes["chain"]
    assert [pca(node, f).status_code for f in (None, NOT_X, NOT_Y)] == [200, 200, 200]
    last = pca(node, V)
    assert typed(last) == (403, "dominated_sums"), last.text
    pair = pca(node, where(*V["rules"], condition="OR"))  # U less X ∩ Y: the pair rule against U
    assert typed(pair) == (403, "dominated_sums") and pair.json()["refused"] == last.json()["refused"], pair.text
    reason = last.json()["refused"]
    assert "rows" not in last.json() and "aggregates" not in last.json()
    for value in ("20", "21.5", "37", str(REST), str(len(node.rows))):
        assert value not in reason, reason
    assert "min_row_count (10)" in reason and "study" in reason, "the refusal names the rule and what to do"


def test_defence_the_corrected_row_s_chain_without_decoys_is_refused(nodes):
    """Held: the chain rule's changed-value units in the window (ADR 0061 amended, ``differencing``).  Hole 2 without
    the decoys (round 15's hole 2 on these rows): ``B`` and ``B' ∪ N`` answered, ``N`` refused, in words carrying
    neither value nor a count."""
    node = nodes["fix_chain"]
    assert nihss(node).status_code == 200
    correct_and_load(node)
    assert nihss(node).status_code == 200
    last = nihss(node, NEW)
    assert typed(last) == (403, "differencing"), last.text
    assert "aggregates" not in last.json() and "rows" not in last.json()
    for value in ("41", "12", str(len(node.rows))):
        assert value not in last.json()["refused"].replace("min_row_count (10)", ""), last.text


@pytest.fixture(scope="module")
def withdrawal(tmp_path_factory) -> Iterator[Served]:
    """A standard-mode node holding :func:`correction_rows` under keyed pseudonyms as an ingest stores them (so a
    consent registry naming ``fx-0`` deletes the target's row), project ``audit``; served as a process."""
    root = Path(tmp_path_factory.mktemp("round21-withdrawal")) / NODE
    home = standard_home(root, NODE)
    pseudonyms = Pseudonymiser(home.key())
    frame = correction_rows()
    frame["pid"] = [pseudonyms.pseudonym(p) for p in frame["subjectcode"]]
    load_frame(root, STROKE, frame, pid_column="pid")
    grant_all(root, researcher="*", project=AUDIT)
    credential = issue_client(root, "central")
    with running_nodes([root]) as urls:
        yield Served(urls[0], credential, root, frame)


def test_defence_a_withdrawn_patient_s_chain_stays_refused_beyond_the_window(withdrawal):
    """Held: the stale release's phantom unit (ADR 0061, "One view of the epochs": ``B``, ``B' ∪ N``, ``N`` "refused
    at its third release"), ``differencing``, also with the window filled.  Hole 2's 35 requests with a withdrawal
    in place of the correction: everyone; a consent registry withdrawing the target deletes her row; 12 new
    patients; everyone again (answered); the same 32 decoys (answered); then ``N``, whose answer would make
    ``B - (B' ∪ N) + N`` her NIHSS: refused, where hole 2's changed-value unit is answered."""
    node = withdrawal
    assert nihss(node).status_code == 200
    assert apply_consent(node.root, ["fx-0"]) == 1
    fresh = stroke_rows(2103, 12, NODE, "new").assign(age=np.linspace(86, 89, 12), nihss_admission=7.0)
    pseudonyms = Pseudonymiser(NodeHome(node.root).key())
    fresh["pid"] = [pseudonyms.pseudonym(p) for p in fresh["subjectcode"]]
    assert load_frame(node.root, STROKE, fresh, pid_column="pid") == 12
    again = nihss(node)
    assert again.status_code == 200 and again.json()["rows"] == len(node.rows) - 1 + 12, again.text
    decoys = [nihss(node, fix_decoy(i)).status_code for i in range(DECOYS)]
    assert decoys == [200] * DECOYS
    last = nihss(node, NEW)
    assert typed(last) == (403, "differencing"), "B - (B' ∪ N) + N would be the withdrawn patient's NIHSS"
    assert "41" not in last.text and "aggregates" not in last.json()
