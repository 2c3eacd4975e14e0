"""A twenty-fourth outside review, from the documents only: ADR 0063 as amended after round 23 (between releases of
sums only the pairwise rule stands aside; the chain rule with its exact backstop decides; a later release that is
not sums only over such a cohort meets the pairs set aside).

The reviewer read README.md, docs/privacy.md, ADR 0013, 0030 (all amendments), 0051, 0061, 0063 (with its round-23
amendment) and the test harness (``tests/nodes.py``, ``tests/privacy/conftest.py``, ``served_standard``,
``test_redteam_round23.py``, ``test_sums_only_honest.py``); not ``plugins/mipflow``.  Every attack runs through real
node processes (``mipflow node serve`` on loopback) with the shipped thresholds (``min_row_count`` 10,
``nfilter_tab`` 3, differencing on); standard mode is the admin's documented choice per node (``standard_home``).
Every release is exact.  Hole 1 is closed (Kaplan-Meier declares its level groups, ADR 0051 amended): its test
passes through the defence.

The target (row 0 of :func:`make_rows`): ``hospital_a``, aged 18.5 (the only one under 18.6), NIHSS 42, followed
3650 days.  ``A'`` = ``hospital_a``'s other patients under 60 (34), ``B_y`` and ``C_y`` = ``hospital_b``'s and
``hospital_c``'s patients under 60 (38 each).

Found (holes):

1. **Round 23's hole 1 without the sums: the curves' pair padded by another dataset** (ADR 0063 amendment, hole 1
   "closed"; privacy.md's open row "groups by a categorical variable's levels (... Kaplan-Meier groups ...) checked
   against nfilter_tab per release only"; ADR 0051, fifteenth review: survival groups not declared).  Round 23's
   closure makes Kaplan-Meier over ``N`` meet ``O`` pairwise; but the curves that differ by the target are
   ``hospital_a``'s *group*, not the cohorts.  Kaplan-Meier of ``followup_days`` / ``death_90d`` by ``dataset`` over
   ``P`` = ``age < 60`` at ``hospital_a, hospital_c`` (``t + A' + C_y``), then over ``N`` = ``18.6 <= age < 60`` at
   ``hospital_a, hospital_b`` (``A' + B_y``): ``P \\ N`` = ``t + C_y`` (39 rows), ``N \\ P`` = ``B_y`` (38),
   ``P ∩ N`` = ``A'`` (34): every pairwise rule passes; no combination of ``1_P`` and ``1_N`` lives on ``t``
   (``C_y`` and ``B_y`` each in one set only): the chain rule passes.  ``hospital_a``'s curve over ``P`` less its
   curve over ``N`` is the target alone: her 90-day death (or survival) and a day she outlived.  Two requests, no
   release of sums, no ADR 0063 needed: the class round 23 reported through ADR 0063 stays open without it.  Fix:
   declare Kaplan-Meier's (and Cox's) level groups (``released_groups``: ``x``'s levels over the cohort) so that the
   group memory's rule 1 meets ``hospital_a``'s group of ``P`` and of ``N`` one row apart, as it does for t-tests
   and ANOVAs; a group of a dataset level could also be checked as the ledger's per-dataset cohort.

Held (defences): descriptive statistics of NIHSS per dataset over the same padded pair (sums only: the pairwise rule
stands aside) are refused at ``N`` (``differencing``: ``hospital_a``'s per-dataset cohorts are in the ledger and
the chain rule isolates the target); the same with NIHSS **missing** for twelve other ``hospital_a`` rows of ``O``
and twelve ``hospital_b`` rows (``O``'s dataset cohort and its all-dataset present rows then miss the target's
combination; only ``hospital_a``'s present rows per dataset give it): refused at ``N`` (``differencing``: the
per-dataset present rows are cohorts too, privacy.md row "Algorithm-internal cohorts"); histograms of NIHSS by
dataset over ``P`` and ``N`` are refused at ``N`` (``differencing``: bins by dataset are released groups, ADR 0051
fifteenth review; what Kaplan-Meier's groups lack).  Pearson correlation and the paired t-test take listwise complete
cases (probed by hand: one ``n`` and full co-moments over the rows complete on every variable; no per-pair cohort left
unrecorded).  No refusal carries a count or a value.

Judged, not exploited (time): numerical variables' zero per-dataset blocks (never hidden: a dataset's 1-9 present
rows refuse the step, the refusal oracle as documented); the refusal oracle of a third cohort ``N + t`` (refused by the chain rule
exactly where the pairwise rule refused it before: no new bit); cross-model and consent-epoch pairs (round 23).
Hole 3 of round 23 (known-value padding) is not resubmitted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.mipflow.node.controls.study_helpers import rule, where
from tests.privacy.conftest import TARGET_NIHSS, make_rows
from tests.privacy.test_explore_attacks import Served, served_standard
from tests.privacy.test_redteam_round23 import (A, AUDIT, B, N, cells, died, group, histograms, quiet, request,
                                                survival, target_from_curves, typed)

pytestmark = pytest.mark.xdist_group("redteam_round24")

C = "hospital_c"
O = where(rule("age", "less", 60))
N_PRESENT = where(rule("age", "greater_or_equal", 18.6), rule("age", "less", 60),
                  rule("nihss_admission", "is_not_null"))


def missing():
    """:func:`make_rows` with NIHSS missing for twelve ``hospital_a`` rows under 60 (not the target) and twelve
    ``hospital_b`` rows under 60."""
    frame = make_rows()
    for dataset in (A, B):
        young = frame.index[(frame["dataset"] == dataset) & (frame["age"] < 60) & (frame.index > 0)][:12]
        frame.loc[young, "nihss_admission"] = np.nan
    return frame


PLAN = {"km_died": died("yes"), "km_survived": died("no"), "stats": died("yes"), "stats_missing": missing,
        "hist": died("yes")}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    with served_standard(Path(tmp_path_factory.mktemp("round24")), PLAN, A, AUDIT) as served:
        yield served


def sizes(rows, first, first_sets, last, last_sets) -> tuple[int, int, int]:
    """``|P \\ N|``, ``|N \\ P|``, ``|P ∩ N|`` of the truth (rows by index)."""
    def pick(lo, sets):
        return set(rows.index[rows["dataset"].isin(sets) & (rows["age"] >= lo) & (rows["age"] < 60)])
    p, n = pick(first, first_sets), pick(last, last_sets)
    return len(p - n), len(n - p), len(p & n)


# ------------------------------------------------------------------ hole 1: hospital_a's curves, padded apart


def test_hole_1_closed_hospital_a_s_curves_over_cohorts_padded_by_other_datasets_are_refused(nodes):
    """Hole 1, closed: Kaplan-Meier declares its level groups (``released_groups``), so the group memory holds
    ``hospital_a``'s curve over ``N`` one row from its curve over ``P`` (``differencing``).  Class: groups inside an algorithm not held across releases (ADR 0051's open Kaplan-Meier groups);
    round 23's hole 1 without ADR 0063.  Adversary: one researcher with a standard-mode grant; two documented
    requests.  Kaplan-Meier by dataset over ``P`` (under 60 at hospital_a and hospital_c) and ``N`` (18.6 to 60 at
    hospital_a and hospital_b): the cohorts are 39 / 38 rows apart, hospital_a's groups one.  Run at two nodes, her
    death and her survival are each read right."""
    outcomes = []
    for name in ("km_died", "km_survived"):
        node = nodes[name]
        assert min(sizes(node.rows, 0, [A, C], 18.6, [A, B])) >= 10
        first = survival(node, O, [A, C])
        assert first.status_code == 200, first.text
        last = survival(node, N, [A, B])
        outcomes.append(last)
        if last.status_code != 200:
            continue
        outcome, outlived = target_from_curves(group(first, A), group(last, A))
        truth = node.rows.loc[0]
        assert outcome == truth["death_90d"] == name.split("_")[1].replace("died", "yes").replace("survived", "no")
        assert truth["followup_days"] > outlived >= 365
    assert all(typed(r) == (403, "differencing") for r in outcomes), "hospital_a's curve over P less over N"


def test_defence_histograms_by_dataset_over_the_padded_pair_are_refused(nodes):
    """Held: histogram bins by dataset are released groups (ADR 0051, fifteenth review: rule 1, ``differencing``).
    The same two requests as hole 1 with histograms of NIHSS by dataset (80 bins over 0-42): ``hospital_a``'s cells
    over ``P`` and over ``N`` one row apart; ``N`` refused.  What Kaplan-Meier lacks is that declaration."""
    node = nodes["hist"]
    first = histograms(node, O, [A, C])
    assert first.status_code == 200, first.text
    last = histograms(node, N, [A, B])
    if last.status_code == 200:  # the attack
        hers = [k for k, (o, n) in enumerate(zip(cells(first, A), cells(last, A))) if o != n]
        assert hers == [79]
    assert typed(last) == (403, "differencing"), last.text
    assert quiet(last, "42", "18.5", len(node.rows))


# ------------------------------------------------------------------ defences: the same pair as sums


def stats(node: Served, filters, datasets):
    return node.call("descriptive_stats", request(["nihss_admission"], (), filters, datasets), project=AUDIT)


def block(reply, dataset: str) -> tuple[int, float]:
    """``(n, sum)`` of NIHSS in ``dataset``'s block of descriptive statistics."""
    m = reply.json()["aggregates"]["datasets"][dataset]["variable_based"]["nihss_admission"]["moments"]
    return m["n"], m["n"] * m["mean"][0]


def test_defence_per_dataset_statistics_of_the_padded_pair_are_refused(nodes):
    """Held: the chain rule over the ledger's per-dataset cohorts (``differencing``; ADR 0030 ``released_by``, ADR
    0063: the pairwise rule stands aside, the chain rule decides).  NIHSS per dataset over ``P`` answered; over ``N``
    refused (``hospital_a``'s cohort of ``P`` less that of ``N`` is the target), in words without a count."""
    node = nodes["stats"]
    first = stats(node, O, [A, C])
    assert first.status_code == 200, first.text
    last = stats(node, N, [A, B])
    if last.status_code == 200:  # the attack
        (n1, s1), (n2, s2) = block(first, A), block(last, A)
        assert n1 - n2 == 1 and round(s1 - s2, 6) == TARGET_NIHSS
    assert typed(last) == (403, "differencing"), last.text
    assert quiet(last, "42", "18.5", len(node.rows))


def test_defence_per_dataset_present_rows_of_a_variable_with_missing_values_are_cohorts(nodes):
    """Held: each dataset's present rows of each variable are cohorts of the ledger (privacy.md, algorithm-internal
    cohorts; ``differencing``).  NIHSS missing for 12 other rows of ``hospital_a`` under 60 (``M_A``) and 12 of
    ``hospital_b`` (``M_B``).  Statistics per dataset over ``O`` at hospital_a and hospital_b, then over ``N`` with
    ``nihss_admission is not null`` at hospital_a and hospital_c.  Were only the dataset cohorts (``t + A' + M_A``,
    ``B_v + M_B``), the request's cohorts and present rows (``t + A' + B_v``) remembered, no combination would give
    ``t``; hospital_a's present NIHSS over ``O`` (``t + A'``) less over ``N`` (``A'``) would be her NIHSS."""
    node = nodes["stats_missing"]
    rows = node.rows
    assert int(rows.loc[(rows["dataset"] == A) & (rows["age"] < 60), "nihss_admission"].isna().sum()) == 12
    first = stats(node, O, [A, B])
    assert first.status_code == 200, first.text
    last = stats(node, N_PRESENT, [A, C])
    if last.status_code == 200:  # the attack
        (n1, s1), (n2, s2) = block(first, A), block(last, A)
        assert n1 - n2 == 1 and round(s1 - s2, 6) == rows.loc[0, "nihss_admission"] == TARGET_NIHSS
    assert typed(last) == (403, "differencing"), last.text
    assert quiet(last, "42", "18.5", len(rows))
