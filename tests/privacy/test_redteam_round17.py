"""A seventeenth outside review, from the documents only: the chain rule's atoms (ADR 0030, ADR 0051's thirteenth-review
amendment), k-means clusters as released groups (ADR 0050, ADR 0051 "what this does not close"), the fold systems of
cross-validation (ADR 0026), changed-value units over several corrected rows (ADR 0061 "Value stamps", fifteenth-review
amendment) and data-derived words in refusals (ADR 0053, docs/privacy.md section 7).

The reviewer read README.md, docs/privacy.md, docs/adr/*.md and the test harness (``tests/nodes.py``,
``tests/privacy/conftest.py``, rounds 14-16); not ``plugins/mipflow``.  Every attack runs through real node processes
(``mipflow node serve`` on loopback) with the shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3,
differencing on); standard mode is the admin's documented choice per node (``standard_home``).  Every release here is
exact (standard mode, no noise): each strict xfail fails the same way on every run.  Not targeted (being fixed):
histogram bins as groups, pooled Kaplan-Meier groups and the reverse order, regression joint dummy counts.

``test_hole_*`` are strict xfails: the attack runs, checks what it recovered against the truth, and its last assertion
is the condition that would hold if the defence held.  ``test_defence_*`` pass while a control holds, naming it.

Found (holes):

1. **A union of two small atoms in the chain rule** (ADR 0030 "what it leaves open": unions of several small atoms;
   ADR 0023's limit of the atom rule).  Linear regression of NIHSS on age over four cohorts: ``S3`` women 21-89,
   ``S4`` men 21-89, ``S1`` age 20-50, ``S2`` age >= 50 (40-41 rows each).  Every pair is 0 or >= 20 rows apart
   each way, and no single atom of the family is a linear combination of the four (each is refused alone), but
   ``S1 + S2 - S3 - S4`` is the two patients outside both sexes' 21-89 ranges: the target (aged 20.5) and the
   oldest (89.5).  Their count (2), sums of age and NIHSS and co-moments solve: the target's NIHSS, 41.  Closed:
   the chain rule refuses any new combination living on small atoms of fewer than ``min_row_count`` rows in all
   (``node/controls/unions.py``, ADR 0030 amended); S2 last is refused.
2. **A k-means cluster less a cohort** (ADR 0051 "what this does not close": k-means clusters compared between
   assignments of one cohort only, not across cohorts; ADR 0050).  k-means (k 2, ``init`` pca) of age and glucose
   on everyone converges on the young (50) and the old (50): the young cluster's count and centre are its sums.
   Descriptive statistics of ``age >= 19.5 AND age < 40`` (49 rows: far from every cohort the ledger holds) leave
   the one patient under 19.5: her glucose (15.3) and age.

Held (defences): the fold systems of one cohort over every ``n_splits`` (``validate_request``'s maximum 20 and
``min_row_count`` per fold: the systems of k = 1..20 span 128 of a cohort's >= 200 rows and isolate none); a
correction of ten rows at once (the target's and nine others') then the cohort less the young and the young alone
(``differencing``: the changed-value units, ADR 0061 amended, separate the target's unit from the nine); refusals
and errors on filters around an extreme value or a transformation of a non-positive value carry no value and are the
same bytes for one matching patient and none.

Not tried (time): the weighted memory's chain after a correction (ADR 0058 with ADR 0061's residual "the weighted
memory carries no versions"), Poisson and Gaussian GEE responses, fold cells across two cohorts (ADR 0026's
connected-graph argument), study mode's suppression of nominal level counts across a project's results, explore
budget accounting under fresh ids, consent withdrawals against k-means partitions.
Honest work met on the way: k-means (k 2) of age and glucose on 12 young and 100 old patients stops labelled
``approximate`` after three Lloyd updates (the partition rule, ADR 0020/0050), its last shift 17.7 years: answered,
labelled, far from convergence (an honest cost, not a refusal; no test).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeClient, NodeEndpoint
from mipflow.central.rounds import run_analysis
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, stroke_rows, where
from tests.nodes import RESEARCHER, load_frame
from tests.privacy.test_explore_attacks import Served, served_standard

pytestmark = pytest.mark.xdist_group("redteam_round17")

AUDIT = "audit"
NODE = "hospital_a"


def request(y, x=(), filters=None, **parameters) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def typed(reply) -> tuple[int, str | None]:
    return reply.status_code, reply.json().get("control")


def raw_sums(reply) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, sums, sums of products) of a regression's columns (covariates, then y) from its ``n``, means and ``m2``."""
    moments = reply.json()["aggregates"]["moments"]
    n, mean = moments["n"], np.asarray(moments["mean"])
    return n, n * mean, np.asarray(moments["m2"]) + n * np.outer(mean, mean)


def union_rows() -> pd.DataFrame:
    """20 patients under 20; 40 aged 21-50 and 40 aged 50-89 (women and men alternately); the target (a woman aged
    20.5, NIHSS 41) and the oldest (89.5): 102 rows, every value present."""
    rng = np.random.default_rng(17)
    ages = np.r_[rng.uniform(18, 19.9, 20), rng.uniform(21, 49.9, 40), [20.5], rng.uniform(50, 88.9, 40), [89.5]]
    frame = stroke_rows(171, len(ages), NODE, "un")
    frame["age"] = np.round(ages, 1)
    frame["sex"] = ["F", "M"] * (len(ages) // 2)
    frame["nihss_admission"] = rng.integers(0, 30, len(ages)).astype(float)
    frame.loc[60, ["sex", "nihss_admission"]] = ["F", 41.0]
    return frame


def kmeans_rows() -> pd.DataFrame:
    """50 patients aged 19-26 (the target the only one under 21: age 19, glucose 15.3) and 50 aged 60-85."""
    rng = np.random.default_rng(23)
    frame = stroke_rows(231, 100, NODE, "km")
    frame["age"] = np.round(np.r_[[19.0], rng.uniform(21, 26, 49), rng.uniform(60, 85, 50)], 1)
    frame["glucose_mmol"] = np.round(rng.normal(7.0, 1.0, 100), 2)
    frame.loc[0, "glucose_mmol"] = 15.3
    frame["nihss_admission"] = rng.integers(0, 30, 100).astype(float)
    return frame


def correction_rows() -> pd.DataFrame:
    """200 patients: ten under 20 (the target aged 19, NIHSS 41), 181 aged 20-85, nine aged 86-88."""
    rng = np.random.default_rng(29)
    frame = stroke_rows(291, 200, NODE, "cr")
    frame["age"] = np.round(np.r_[[19.0], rng.uniform(19.1, 19.9, 9), rng.uniform(20, 85, 181),
                                  np.linspace(86, 88, 9)], 2)
    frame["nihss_admission"] = rng.integers(0, 30, 200).astype(float)
    frame.loc[0, "nihss_admission"] = 41.0
    return frame


PLAN = {"union": union_rows, "kmeans": kmeans_rows, "corrections": correction_rows}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """One standard-mode node per attack (their memories apart), each ``hospital_a``, project ``audit`` granted to any
    researcher id; served as processes."""
    with served_standard(Path(tmp_path_factory.mktemp("round17")), PLAN, NODE, AUDIT) as served:
        yield served


# ------------------------------------------------------------------ the chain rule's atoms (ADR 0030, 0023)

#: S3, S4 (each sex at 21-89), then S1 (20-50) and S2 (>= 50): S1 + S2 - S3 - S4 = {20.5, 89.5}
UNION = {"S3": where(rule("sex", "equal", "F"), rule("age", "greater_or_equal", 21), rule("age", "less", 89)),
         "S4": where(rule("sex", "equal", "M"), rule("age", "greater_or_equal", 21), rule("age", "less", 89)),
         "S1": where(rule("age", "greater_or_equal", 20), rule("age", "less", 50)),
         "S2": where(rule("age", "greater_or_equal", 50))}


def family_isolates(members: dict[str, set], target: set) -> bool:
    """Whether ``target`` (a set of row indices) is a linear combination of the sets' indicators."""
    universe = sorted(set().union(*members.values()))
    matrix = np.array([[i in s for i in universe] for s in members.values()], dtype=float).T
    vector = np.array([i in target for i in universe], dtype=float)
    coefficients = np.linalg.lstsq(matrix, vector, rcond=None)[0]
    return bool(np.allclose(matrix @ coefficients, vector))


def test_hole_1_closed_a_union_of_two_one_patient_atoms_is_refused(nodes):
    """Hole 1.  Class: the chain rule asks whether a linear combination isolates a new *atom* under ``min_row_count``;
    a union of two small atoms can be a combination while neither atom is (ADR 0030 "what it leaves open", ADR
    0023's limit).  Adversary: a researcher with a standard-mode grant (documented requests only).

    Linear regression of NIHSS on age over S3 (women 21-89), S4 (men 21-89), S1 (age 20-50), S2 (age >= 50).  Atoms:
    women and men 21-50 and 50-89 (20 rows each), the target (S1 only) and the oldest patient (S2 only).  Every pair
    of cohorts is disjoint or 20 rows apart each way; no atom alone is in the span (checked below); ``S1 + S2 - S3 -
    S4`` is the target and the oldest: n 2, their ages by sum and sum of squares, NIHSS by sum and the age-NIHSS
    co-moment."""
    node = nodes["union"]
    rows = node.rows
    age, sex = rows["age"], rows["sex"]
    members = {"S3": set(rows.index[(sex == "F") & (age >= 21) & (age < 89)]),
               "S4": set(rows.index[(sex == "M") & (age >= 21) & (age < 89)]),
               "S1": set(rows.index[(age >= 20) & (age < 50)]), "S2": set(rows.index[age >= 50])}
    for a in members:  # every pair disjoint or far apart, each way
        for b in set(members) - {a}:
            parts = (members[a] - members[b], members[a] & members[b])
            assert all(len(part) == 0 or len(part) >= 20 for part in parts)
    pair = {60, len(rows) - 1}
    assert family_isolates(members, pair) and not any(family_isolates(members, {i}) for i in pair)
    replies = {name: node.call("linear_regression", request(["nihss_admission"], ["age"], filters), project=AUDIT)
               for name, filters in UNION.items()}
    assert all(replies[name].status_code == 200 for name in ("S3", "S4", "S1")), {k: r.text for k, r in replies.items()}
    if replies["S2"].status_code == 200:  # the attack
        sums = [raw_sums(replies[name]) for name in ("S1", "S2", "S3", "S4")]
        n = sums[0][0] + sums[1][0] - sums[2][0] - sums[3][0]
        first = sums[0][1] + sums[1][1] - sums[2][1] - sums[3][1]
        second = sums[0][2] + sums[1][2] - sums[2][2] - sums[3][2]
        assert n == 2
        spread = np.sqrt(2 * second[0, 0] - first[0] ** 2)  # the two ages: (sum -+ spread) / 2
        young, old = (first[0] - spread) / 2, (first[0] + spread) / 2
        nihss_young = (old * first[1] - second[0, 1]) / (old - young)
        assert (round(young, 6), round(old, 6)) == (20.5, 89.5)
        assert round(nihss_young, 6) == rows.loc[60, "nihss_admission"] == 41.0
    assert typed(replies["S2"]) == (403, "differencing"), "S1 + S2 - S3 - S4 is two patients: the target's NIHSS"


# ------------------------------------------------------------------ k-means clusters across cohorts (ADR 0050, 0051)


def kmeans(node: Served, **parameters):
    client = NodeClient(NodeEndpoint(NODE, node.url, node.credential.client_id, node.credential.secret.hex()),
                        retries=0)
    try:
        return run_analysis("kmeans", request(["age", "glucose_mmol"], **parameters), [client],
                            researcher=RESEARCHER, project=AUDIT)
    finally:
        client.close()


def test_hole_2_closed_a_k_means_cluster_less_a_cohort_of_its_rows_but_one_is_refused(nodes):
    """Hole 2.  Class: a k-means cluster is a set of rows released with its count and sums (centre), compared only
    with assignments of the same cohort (partition memory, ADR 0050); neither the ledger nor the group memory holds
    it (ADR 0051 "what this does not close").  Adversary: a researcher with a standard-mode grant.

    k-means with k 2 (``init`` pca) of age and glucose on everyone (100 rows) converges in two updates: the young
    cluster (50 rows: every patient under 40) and the old.  Descriptive statistics of age and glucose for
    ``age >= 19.5 AND age < 40`` (49 rows; 51 from the everyone cohort, far from every cohort) are the cluster but the
    target: ``50 centre - 49 mean`` is her glucose, 15.3, and her age, 19."""
    node = nodes["kmeans"]
    rows = node.rows
    result = kmeans(node, k=2).result
    assert result["converged"] is True
    (young,) = [c for c, centre in enumerate(result["centers"]) if centre[0] < 40]
    count, centre = result["cluster_counts"][young], np.asarray(result["centers"][young])
    assert count == int((rows["age"] < 40).sum()) == 50
    cohort = node.call("descriptive_stats", request(["age", "glucose_mmol"], filters=where(
        rule("age", "greater_or_equal", 19.5), rule("age", "less", 40))), project=AUDIT)
    if cohort.status_code == 200:  # the attack
        stats = cohort.json()["aggregates"]["datasets"][NODE]["variable_based"]
        n = stats["glucose_mmol"]["moments"]["n"]
        assert n == count - 1
        age = count * centre[0] - n * stats["age"]["moments"]["mean"][0]
        glucose = count * centre[1] - n * stats["glucose_mmol"]["moments"]["mean"][0]
        assert (round(age, 6), round(glucose, 6)) == (rows.loc[0, "age"], rows.loc[0, "glucose_mmol"]) == (19.0, 15.3)
    assert typed(cohort) == (403, "differencing"), "the young cluster less this cohort is the target's glucose"


# ------------------------------------------------------------------ fold systems of one cohort (ADR 0026)


def fold_system(n: int, splits) -> np.ndarray:
    """Indicators of the folds ``rank % k == a`` for every k in ``splits`` (ADR 0026: rows ranked by their keyed fold
    hash, dealt round robin), over ranks 0..n-1."""
    ranks = np.arange(n)
    return np.array([ranks % k == a for k in splits for a in range(k)], dtype=float)


def test_defence_every_n_splits_of_one_cohort_spans_too_few_fold_sums_to_isolate_a_row(nodes):
    """Held: ``validate_request`` (``n_splits`` at most 20) with ``min_row_count`` per fold (``check_rows``).  Attack
    tried: one cohort's per-fold sums (single node: in the clear at the central site, ADR 0026) for every ``n_splits``.
    Folds are ranks modulo k of one fixed secret order; the systems for k up to K span the periodic sequences of
    period <= K, ``1 + sum phi(k)`` dimensions: with K 20 that is 128, every rank of a 128-row cohort (folds of 6
    rows), i.e. every row's record.  Shipped: folds of 10 rows at K 20 need n >= 200 rows, the span stays 128 and no
    rank's indicator is in it (a combination of m periodic sequences vanishing on m consecutive ranks vanishes).  The
    node refuses ``n_splits`` 21 by the request and 20 folds of 5 rows by the count, with no value."""
    node = nodes["kmeans"]
    above = node.call("linear_regression_cv", request(["glucose_mmol"], ["age"], n_splits=21), project=AUDIT)
    assert above.status_code == 400 and "above its maximum 20" in above.text
    small = node.call("linear_regression_cv", request(["glucose_mmol"], ["age"], n_splits=20), project=AUDIT)
    assert typed(small) == (403, "min_row_count") and "use fewer splits" in small.text
    system = fold_system(200, range(1, 21))
    rank = np.linalg.matrix_rank(system)
    assert rank == 128 < 200
    assert not any(np.linalg.matrix_rank(np.vstack([system, np.eye(200)[r]])) == rank for r in (0, 60, 99, 140, 199))
    assert np.linalg.matrix_rank(fold_system(128, range(1, 21))) == 128  # folds of 6 rows would give every row


# ------------------------------------------------------------------ several rows corrected at once (ADR 0061)


def test_defence_ten_rows_corrected_at_once_still_leave_no_one_row_s_change(nodes):
    """Held: ADR 0061's changed-value units (``value_memory``, the chain's ``units_allow``), control ``differencing``.
    Attack tried (the residual "combinations over several changed rows' atoms holding ``min_row_count`` rows or
    more"): descriptive statistics of NIHSS on everyone (B) and on ``age >= 20`` (K, 190 rows: B less the ten under
    20); a nightly load corrects ten rows at once: the target's (41 -> 12) and the nine oldest patients'; 12 new
    patients aged 89-90; everyone again (B' ∪ N, answered: its change is the ten rows together).  Then ``age >= 20``
    again (K' ∪ N): ``(B - K) - (B' ∪ N - K' ∪ N)`` is the target's old less new NIHSS alone (the nine other young
    unchanged); or the young alone (``age < 20``): ``B - K - young'`` the same.  Both refused; the new rows alone
    (no changed row) answered."""
    node = nodes["corrections"]
    stats = lambda filters: node.call("descriptive_stats", request(["nihss_admission"], filters=filters),  # noqa: E731
                                      project=AUDIT)
    adults = where(rule("age", "greater_or_equal", 20))
    assert [stats(None).json()["rows"], stats(adults).json()["rows"]] == [200, 190]
    changed = node.rows.loc[[0, *range(191, 200)]].copy()
    changed["nihss_admission"] = np.r_[[12.0], changed["nihss_admission"].iloc[1:] + 1]
    assert load_frame(node.root, STROKE, changed) == 10
    fresh = stroke_rows(292, 12, NODE, "new").assign(age=np.linspace(89, 90, 12), nihss_admission=5.0)
    assert load_frame(node.root, STROKE, fresh) == 12
    assert stats(None).json()["rows"] == 212
    again, young = stats(adults), stats(where(rule("age", "less", 20)))
    for reply in (again, young):
        assert typed(reply) == (403, "differencing"), reply.text
        assert "41" not in reply.text and "12." not in reply.text
    assert stats(where(rule("age", "greater_or_equal", 89))).json()["rows"] == 12


# ------------------------------------------------------------------ refusals and errors carry no data


def test_defence_refusals_around_an_extreme_value_carry_no_value_and_no_membership(nodes):
    """Held: ``check_rows`` (``min_row_count``) and ``validate_request``'s fixed words (docs/privacy.md "Refusals name
    the rule, not the data").  Attack tried: filters around the target's extreme glucose (15.3: the only value above
    12) and none above 30: the same bytes, no value; a ``log`` transformation over a column holding zeros names the
    column (a documented data-dependent 400 of standard mode, ADR 0053) but no value or count."""
    node = nodes["kmeans"]
    one = node.call("pearson_correlation", request(["age", "glucose_mmol"], filters=where(
        rule("glucose_mmol", "greater", 12))), project=AUDIT)
    none = node.call("pearson_correlation", request(["age", "glucose_mmol"], filters=where(
        rule("glucose_mmol", "greater", 30))), project=AUDIT)
    assert typed(one) == (403, "min_row_count") and one.content == none.content
    assert "15.3" not in one.text and "19" not in one.text
    log = node.call("pca_with_transformation", request(["age", "glucose_mmol", "nihss_admission"],
                                                       data_transformation={"log": ["nihss_admission"]}),
                    project=AUDIT)
    assert log.status_code == 400 and "nihss_admission" in log.text
    assert not any(ch.isdigit() for ch in log.json()["detail"])
