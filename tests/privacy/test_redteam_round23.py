"""A twenty-third outside review, from the documents only: ADR 0063 (between releases of sums only the pairwise rule
stands aside; the chain rule with its exact backstop and the group memory decide).

The reviewer read README.md, docs/privacy.md (sections 1-4), ADR 0013, 0030 (all amendments), 0051, 0061, 0063 and
the test harness (``tests/nodes.py``, ``tests/privacy/conftest.py``, rounds 20-22, ``served_standard``); not
``plugins/mipflow``.  Every attack runs through real node processes (``mipflow node serve`` on loopback) with the
shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3, differencing on, query budgets 100 / 300); standard mode
is the admin's documented choice per node (``standard_home``).  Every release is exact: each strict xfail fails the
same way on every run.

Holes 1 and 2 are closed (ADR 0063 amended: a release that is not sums only over a cohort answered as sums meets
the pairs set aside; a release reading a nominal variable, and ``descriptive_stats`` always, is not sums only): their
tests pass through the defence.  Hole 3 is closed too (ADR 0064: the cohorts a filter pins are checked and recorded
beside the request's); its test runs the attack and asserts the refusal.  ``test_defence_*`` pass while a control holds.

The pair every attack uses: ``O`` = age < 60 at ``hospital_a`` (the target, aged 18.5, is the youngest) and ``N`` =
18.6 <= age < 60 at ``hospital_a`` and ``hospital_b`` (or 18.6 <= age < 70 at ``hospital_a``).  ``O \\ N`` is the
target alone, ``N \\ O`` 10 rows or more: ADR 0013 refused ``N``; ADR 0063 answers it between sums only (no
combination of ``1_O`` and ``1_N`` lives on fewer than 10 rows).

Found (holes):

1. **A cohort made sums-only first is re-released by a non-sums algorithm as an "exact repeat"** (ADR 0063 point 2:
   "a cohort once answered by a release that is not sums only stays so, whichever order"; ADR 0030: "Repeats ...
   skip 2 and 3").  Linear regressions of NIHSS on age over ``O`` and ``N`` (sums only: answered, the pair exempt),
   then a non-sums release over ``O`` and over ``N``: both the same rows as an answered cohort, both answered,
   although ADR 0063 keeps the pairwise rule for exactly these releases.  (a) Kaplan-Meier of ``followup_days`` /
   ``death_90d`` by ``dataset``: Kaplan-Meier's groups are not released groups (ADR 0051, fifteenth-review
   amendment), so ``hospital_a``'s curve over ``O`` less the one over ``N`` is the target alone: her death (or, at a
   node where she survived, her censoring) and a day she outlived (524).  (b) Histograms of NIHSS by ``dataset``, 80
   bins over the declared 0-42: ``hospital_a``'s shown cells are the same rows in both, hidden cells are no groups,
   and the one cell hidden over ``O`` and 0 over ``N`` is hers: NIHSS 42, exact.  Four requests each.  Without the
   two regressions first, ``N``'s Kaplan-Meier is refused (``differencing``, defence below): the hole is the order.
   Fix: when a release that is not sums only meets a cohort answered as sums only (a repeat included), run the
   pairwise rule against every cohort answered beside it.
2. **The suppression pattern of a nominal variable across the answered pair** (ADR 0063, "What the argument does not
   cover": "Suppression decisions ... two releases whose cohorts differ only by sets no combination isolates show
   them for sets that differ by at least min_row_count rows, as before" -- not so: ``O`` and ``N`` differ by one row
   one way).  Descriptive statistics of ``thrombolysis`` over ``O`` and over ``N`` (18.6 <= age < 70): both answered.
   Over ``O`` the level counts are ``[null, null]`` (1-2 thrombolysed), over ``N`` ``yes`` is ``0`` (none in ``O``'s
   other rows), so the target was thrombolysed; when she was not, both show ``0``.  Two requests; the target's
   attribute either way.  (A single release with an OR filter, ``age < 18.6 OR thrombolysis = no``, gives the same
   bit without ADR 0063 -- checked by hand on these rows, not a test here: zeros shown beside hidden 1-2 counts are
   the standard-mode suppression oracle; ADR 0063's pair is a second, AND-only way to it and falsifies its claim.)
3. **Known-value padding (not ADR 0063: the rows' count, not their values, is held)**.  Descriptive statistics of
   NIHSS over ``O`` and over ``18.6 <= age < 60 AND nihss_admission > 0`` (nested, 13 rows apart: the pairwise rule
   and the chain rule pass): the 12 rows between besides the target all have NIHSS 0 (as a filter says), so the
   difference of sums is her NIHSS (42) exactly and her sum of squares confirms it.  The homogeneous-group residual
   of ADR 0050/0051 ("groups over 2-3 distinct values"), here over a cohort difference.  Judged, not run: ADR 0063
   adds an asymmetric form (9 pinned rows on ``N``'s side: ``{t} ∪ B`` is 10 rows for the union rule).

Held (defences): the third cohort completing the pair (``N`` at ``hospital_b`` alone: ``O - N + B`` is the target) is
refused (``differencing``: the chain rule); Kaplan-Meier over ``O`` then over ``N`` without the sums-only releases
first is refused (``differencing``: the pairwise rule for releases that are not sums only); a one-way ANOVA by
``dataset`` over ``O`` and ``N`` (sums only, the pair exempt) is refused at ``N`` (``differencing``: the group memory,
``hospital_a``'s groups one row apart, ADR 0051 unchanged by ADR 0063); the pair across a consent registry change
(a stranger withdrawn) is refused (``differencing``: ADR 0063's epoch clause).  No refusal carries a count or a value.

Judged, not exploited: the pair across data models (by patients, as within one model: nothing new); per-dataset
descriptive statistics (their per-dataset cohorts make the pair nested: the chain rule refuses it).  Not tried
(time): logistic regression, k-means and Cox as the non-sums re-release of hole 1 (their groups are declared, so the
group memory may hold; their fitted iterates confound the target with ``N \\ O``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.mipflow.node.controls.study_helpers import rule, where
from tests.nodes import apply_consent
from tests.privacy.conftest import TARGET_NIHSS, make_rows
from tests.privacy.test_explore_attacks import Served, served_standard

pytestmark = pytest.mark.xdist_group("redteam_round23")

AUDIT = "audit"
A, B = "hospital_a", "hospital_b"
O = where(rule("age", "less", 60))
N = where(rule("age", "greater_or_equal", 18.6), rule("age", "less", 60))
N70 = where(rule("age", "greater_or_equal", 18.6), rule("age", "less", 70))
SURVIVAL = {"event_level": "yes"}


def request(y, x=(), filters=None, datasets=(A,), **parameters) -> dict:
    return {"inputdata": {"data_model": "stroke:0.1", "datasets": list(datasets), "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def typed(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


def quiet(reply, *values) -> bool:
    """A refusal without aggregates, rows, the target's values or a count."""
    body = reply.json()
    text = body.get("refused", "").replace("min_row_count (10)", "").replace("nfilter_tab (3)", "")
    return "aggregates" not in body and "rows" not in body and not any(str(v) in text for v in values)


def regression(node: Served, filters, datasets):
    return node.call("linear_regression", request(["nihss_admission"], ["age"], filters, datasets), project=AUDIT)


def survival(node: Served, filters, datasets):
    return node.call("kaplan_meier", request(["followup_days", "death_90d"], ["dataset"], filters, datasets,
                                             **SURVIVAL), project=AUDIT)


# ------------------------------------------------------------------ rows


def died(outcome: str):
    """:func:`make_rows` (the target: row 0, hospital_a, aged 18.5, died at day 3650) with her outcome set."""
    def rows():
        frame = make_rows()
        frame.loc[0, "death_90d"] = outcome
        return frame
    return rows


def thrombolysed(target: str):
    """:func:`make_rows` with twelve more thrombolysed patients at ``hospital_a``, aged 75-80.5 (outside ``O`` and
    ``N70``), and the target's thrombolysis ``target``."""
    def rows():
        frame = make_rows()
        others = frame.index[(frame["dataset"] == A) & (frame.index > 0)][:12]
        frame.loc[others, "age"] = [75.0 + 0.5 * k for k in range(12)]
        frame.loc[others, "thrombolysis"] = "yes"
        frame.loc[0, "thrombolysis"] = target
        return frame
    return rows


def padded():
    """:func:`make_rows` with twelve ``hospital_a`` patients aged 30-59 at NIHSS 0 (minor strokes), none other."""
    frame = make_rows()
    frame.loc[frame["nihss_admission"] == 0, "nihss_admission"] = 1.0
    inside = frame.index[(frame["dataset"] == A) & (frame["age"] < 60) & (frame.index > 0)][:12]
    frame.loc[inside, "nihss_admission"] = 0.0
    return frame


PLAN = {"km_died": died("yes"), "km_survived": died("no"), "km_direct": died("yes"), "hist": died("yes"),
        "epochs": died("yes"), "completing": died("yes"),
        "anova": died("yes"), "suppressed_yes": thrombolysed("yes"), "suppressed_no": thrombolysed("no"),
        "padding": padded}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    with served_standard(Path(tmp_path_factory.mktemp("round23")), PLAN, A, AUDIT) as served:
        yield served


# ------------------------------------------------------------------ hole 1: a sums-only pair re-released as curves


def group(reply, level: str) -> dict:
    doc = reply.json()["aggregates"]
    return next(g for g in doc["groups"] if g["level"] == level)


def cumulative(curve: dict, end: float) -> int:
    """Rows that left the curve (events and censorings) up to ``end``."""
    return sum(e + c for e, c, t in zip(curve["events"], curve["censored"], curve["ends"]) if t <= end)


def target_from_curves(with_her: dict, without: dict) -> tuple[str, float]:
    """Her outcome (one more event or one more censoring in the curve holding her) and a day she outlived: the
    largest end ``e`` of her curve whose departures up to ``e`` are those of the other curve up to an end ``<= e``
    (``C``'s departures up to ``e`` are at least those, so hers is after ``e``)."""
    events = sum(with_her["events"]) - sum(without["events"])
    censored = sum(with_her["censored"]) - sum(without["censored"])
    assert (events, censored) in ((1, 0), (0, 1))
    outlived = max(e for e in with_her["ends"]
                   if cumulative(with_her, e) == cumulative(without, max(t for t in without["ends"] if t <= e)))
    return ("yes" if events else "no"), outlived


def curves_attack(node: Served):
    assert [regression(node, f, d).status_code for f, d in ((O, [A]), (N, [A, B]))] == [200, 200]
    first = survival(node, O, [A])
    if first.status_code != 200:  # closed: the first re-release meets the pair set aside (ADR 0063 amended)
        return first, first
    return first, survival(node, N, [A, B])


def test_hole_1_closed_curves_over_a_pair_first_answered_as_sums_are_refused(nodes):
    """Hole 1.  Class: the pairwise rule is kept for releases that are not sums only (ADR 0063), but an exact repeat
    skips it (ADR 0030) and ``sums_only`` is lost only *after* the pair was answered.  Adversary: one researcher with
    a standard-mode grant; four documented requests.

    Regressions over ``O`` and ``N`` (exempt pair), then Kaplan-Meier by dataset over both (repeats): ``hospital_a``'s
    curves differ by the target alone.  Run at two nodes, her death and her survival are each read right."""
    outcomes = {}
    for name in ("km_died", "km_survived"):
        node = nodes[name]
        first, last = curves_attack(node)
        if first.status_code != 200 or last.status_code != 200:
            outcomes[name] = last
            continue
        outcome, outlived = target_from_curves(group(first, A), group(last, A))
        truth = node.rows.loc[0]
        assert outcome == truth["death_90d"] and truth["followup_days"] > outlived >= 365
        assert group(first, A)["level"] == A and group(last, B)["level"] == B
        outcomes[name] = last
    assert all(typed(r) == (403, "differencing") for r in outcomes.values()), "O's curve less N's is the target"


def histograms(node: Served, filters, datasets):
    return node.call("multiple_histograms", request(["nihss_admission"], ["dataset"], filters, datasets, bins=80),
                     project=AUDIT)


def cells(reply, level: str) -> list:
    return next(h["counts"] for h in reply.json()["aggregates"]["histograms"] if h["grouping_enum"] == level)


def test_hole_1b_closed_histograms_over_a_pair_first_answered_as_sums_are_refused(nodes):
    """Hole 1, second release.  The same order with histograms of NIHSS by dataset, 80 bins over the declared 0-42
    (one whole NIHSS value a bin): ``hospital_a``'s shown cells are the same rows in both (no group rule meets them),
    hidden cells are no groups (ADR 0051), and the one cell hidden over ``O`` (1-2 rows) and 0 over ``N`` holds the
    target alone: her NIHSS.  Four requests."""
    node = nodes["hist"]
    assert [regression(node, f, d).status_code for f, d in ((O, [A]), (N, [A, B]))] == [200, 200]
    first = histograms(node, O, [A])
    last = histograms(node, N, [A, B]) if first.status_code == 200 else first  # closed: refused at O already
    if last.status_code == 200:  # the attack
        edges = np.linspace(0, 42, 81)
        hers = [k for k, (o, n) in enumerate(zip(cells(first, A), cells(last, A))) if o is None and n == 0]
        assert len(hers) == 1
        values = [v for v in range(43) if edges[hers[0]] <= v < edges[hers[0] + 1] or (hers[0] == 79 and v == 42)]
        assert values == [node.rows.loc[0, "nihss_admission"]] == [TARGET_NIHSS]
    assert typed(last) == (403, "differencing"), "O's hidden hospital_a bin less N's zero is the target's NIHSS"


def test_defence_curves_over_the_pair_without_the_sums_first_are_refused(nodes):
    """Held: the pairwise rule between releases that are not sums only (``differencing``, ADR 0063 "What the argument
    does not cover").  Kaplan-Meier by dataset over ``O`` answered, over ``N`` refused, in words without a count."""
    node = nodes["km_direct"]
    assert survival(node, O, [A]).status_code == 200
    last = survival(node, N, [A, B])
    assert typed(last) == (403, "differencing"), last.text
    assert quiet(last, "3650", "18.5", len(node.rows))


def test_defence_the_third_cohort_completing_the_pair_is_refused(nodes):
    """Held: the chain rule (``differencing``, ADR 0030 and its backstop).  Regressions over ``O`` and ``N`` answered;
    descriptive statistics of ``N``'s rows at ``hospital_b`` (``B = N \\ O``: ``O - N + B`` is the target) refused."""
    node = nodes["completing"]
    assert [regression(node, f, d).status_code for f, d in ((O, [A]), (N, [A, B]))] == [200, 200]
    last = node.call("descriptive_stats", request(["nihss_admission", "age"], (), N, [B]), project=AUDIT)
    assert typed(last) == (403, "differencing"), last.text
    assert quiet(last, "42", "18.5", len(node.rows))


def test_defence_groups_of_the_exempt_pair_one_row_apart_are_refused(nodes):
    """Held: the group memory (``differencing``, ADR 0051: its pairwise rules unchanged by ADR 0063).  A one-way ANOVA
    of NIHSS by ``dataset`` over ``O`` (hospitals a and c) answered; over ``N`` (a and b) refused: the ``hospital_a``
    groups are the same rows but the target."""
    node = nodes["anova"]
    first = node.call("anova_oneway", request(["nihss_admission"], ["dataset"], O, [A, "hospital_c"]), project=AUDIT)
    assert first.status_code == 200, first.text
    last = node.call("anova_oneway", request(["nihss_admission"], ["dataset"], N, [A, B]), project=AUDIT)
    assert typed(last) == (403, "differencing"), last.text
    assert quiet(last, "42", "18.5", len(node.rows))


def test_defence_the_pair_across_a_consent_epoch_is_refused(nodes):
    """Held: the epoch clause of ADR 0063 point 3 (the pairwise rule between a fresh cohort and an answered one of an
    earlier consent epoch, ADR 0061; ``differencing``).  A regression over ``O``; the node applies a consent registry
    withdrawing a patient it never held (the epoch moves at every node); the regression over ``N`` is refused."""
    node = nodes["epochs"]
    assert regression(node, O, [A]).status_code == 200
    assert apply_consent(node.root, ["someone-elsewhere"]) == 0
    last = regression(node, N, [A, B])
    assert typed(last) == (403, "differencing"), last.text
    assert quiet(last, "42", "18.5", len(node.rows))


# ------------------------------------------------------------------ hole 2: the suppression pattern across the pair


def levels(reply) -> dict:
    """The counts by level, in the data model's order of the levels (``yes``, ``no``: its public metadata)."""
    counts = reply.json()["aggregates"]["datasets"][A]["variable_based"]["thrombolysis"]["counts"]
    return dict(zip(("yes", "no"), counts))


def test_hole_2_closed_hidden_level_counts_over_the_pair_are_refused(nodes):
    """Hole 2.  Class: ADR 0063 says suppression decisions across such a pair concern sets at least min_row_count
    apart; ``O \\ N`` is one row.  Adversary: one researcher with a standard-mode grant; two documented requests.

    Descriptive statistics of thrombolysis over ``O`` and over ``N70``: if ``O``'s counts are hidden (1-2 thrombolysed)
    and ``N70``'s ``yes`` is 0 (none among ``O``'s other rows), the target was thrombolysed; both 0: she was not."""
    seconds = []
    for name in ("suppressed_yes", "suppressed_no"):
        node = nodes[name]
        first = node.call("descriptive_stats", request(["thrombolysis"], (), O), project=AUDIT)
        assert first.status_code == 200, first.text
        last = node.call("descriptive_stats", request(["thrombolysis"], (), N70), project=AUDIT)
        seconds.append(last)
        if last.status_code != 200:
            continue
        hidden = all(c is None for c in first.json()["aggregates"]["datasets"][A]["variable_based"]["thrombolysis"]
                     ["counts"])
        assert levels(last)["yes"] == 0
        recovered = "yes" if hidden else "no"
        assert hidden or levels(first)["yes"] == 0
        assert recovered == node.rows.loc[0, "thrombolysis"] == name.rsplit("_", 1)[1]
    assert all(typed(r) == (403, "differencing") for r in seconds), "O's hidden count less N's zero is the target"


# ------------------------------------------------------------------ hole 3: rows of a known value between two cohorts

PADDED = where(rule("age", "greater_or_equal", 18.6), rule("age", "less", 60), rule("nihss_admission", "greater", 0))


def moments(reply, variable: str = "nihss_admission") -> tuple[int, float, float]:
    """``(n, sum, sum of squares)`` of ``variable`` at hospital_a from descriptive statistics' ``n, mean, m2``."""
    m = reply.json()["aggregates"]["datasets"][A]["variable_based"][variable]["moments"]
    n, mean, m2 = m["n"], m["mean"][0], m["m2"][0]
    return n, n * mean, m2 + n * mean * mean


def test_hole_3_closed_rows_a_filter_pins_at_zero_do_not_pad_the_target_s_nihss(nodes):
    """Hole 3 (not ADR 0063's; the homogeneous-group residual of ADR 0050/0051 over a cohort difference), closed by
    ADR 0064.  Adversary: one researcher with a standard-mode grant; two documented requests, nested cohorts 13 rows
    apart.

    Descriptive statistics of NIHSS over ``O`` and over ``PADDED`` (``nihss_admission > 0``): the 13 rows between are
    the target and twelve at NIHSS 0, so the differences of the sums would give her NIHSS, and of the squares its
    square.  Now ``PADDED`` widened (its NIHSS rule true) is ``O`` less the target: refused.  The other orders and
    forms of the class: ``tests/privacy/test_pinned_padding.py``."""
    node = nodes["padding"]
    rows = node.rows
    between = rows[(rows["dataset"] == A) & (rows["age"] < 60) & ~((rows["age"] >= 18.6)
                                                                   & (rows["nihss_admission"] > 0))]
    assert len(between) == 13 and (between.drop(index=0)["nihss_admission"] == 0).all()
    first = node.call("descriptive_stats", request(["nihss_admission"], (), O), project=AUDIT)
    assert first.status_code == 200, first.text
    last = node.call("descriptive_stats", request(["nihss_admission"], (), PADDED), project=AUDIT)
    if last.status_code == 200:  # the attack
        (n1, s1, q1), (n2, s2, q2) = moments(first), moments(last)
        assert n1 - n2 == 13
        assert round(s1 - s2, 6) == rows.loc[0, "nihss_admission"] == TARGET_NIHSS
        assert round(q1 - q2, 4) == TARGET_NIHSS ** 2
    assert typed(last) == (403, "differencing"), "twelve known zeros and the target's NIHSS"
