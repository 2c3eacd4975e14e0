"""Privacy capabilities (the "privacy capabilities" members of mipflow.algorithms.contract.Algorithm):
every algorithm of the catalogue answers every one, and the algorithms that have each capability are
those the controls' own lists named before the algorithms declared them (issue 12)."""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.algorithms import ALGORITHMS, Algorithm, get_algorithm, prepare_local_data
from mipflow.algorithms.contract import SECURE_AGGREGATION
from mipflow.algorithms.spec import SpecAlgorithm
from mipflow.algorithms.dp_release import DPRelease
from tests.mipflow.algorithms.helpers import fold_keyed
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.mipflow.algorithms.test_contract import VALID

#: Every capability member of the protocol.
CAPABILITIES = ("secure_aggregation", "dp_release", "secure_aggregation_refusal", "secure_aggregates",
                "parameter_count", "fold_sizes", "coarsen_for_release", "differencing_partition", "cluster_count",
                "sealed_rounds", "pool_sealed", "masked_round", "row_weights", "sealed_masked",
                "pooled_threshold", "session_request", "sealed_mask_scheme")

# What the per-control lists said before the algorithms declared it themselves.
#: secagg.SUPPORTED minus secagg.EXPLICIT_ONLY
SECURE_AUTOMATIC = {"anova_oneway", "kmeans", "linear_regression", "logistic_regression", "pearson_correlation",
                    "ttest_independent", "ttest_onesample", "ttest_paired",
                    # sums over patients (ADR 0036, 0041)
                    "gee", "linear_mixed_model",
                    # per-fold sums, masked since ADR 0026 (from 2 nodes)
                    "linear_regression_cv", "logistic_regression_cv", "naive_bayes_gaussian_cv",
                    "naive_bayes_categorical_cv",
                    # its score rounds' shares of l, U, I (ADR 0048)
                    "cox_regression",
                    # each node's counts on the pooled time bins (ADR 0052)
                    "kaplan_meier"}
#: secagg.EXPLICIT_ONLY
SECURE_EXPLICIT_ONLY = {"descriptive_stats"}
#: dp.DP_MECHANISMS (with the label's note where it had one)
DP_NOTES = {"descriptive_stats": "", "multiple_histograms": "", "linear_regression": "noisy sufficient statistics",
            "pearson_correlation": "noisy sufficient statistics",
            "kaplan_meier": "noisy counts of events and censorings per time bin (no bin merged)",
            "contingency_table": "the table of noisy cell counts (nothing suppressed)"}
#: disclosure.MODEL_ALGORITHMS
MODELS = {"linear_regression", "logistic_regression", "cox_regression", "linear_regression_cv",
          "logistic_regression_cv", "gee", "linear_mixed_model"}
#: the algorithms with a fold_sizes hook
CROSS_VALIDATED = {"linear_regression_cv", "logistic_regression_cv", "naive_bayes_gaussian_cv",
                   "naive_bayes_categorical_cv"}
#: the algorithms with a coarsen_for_release hook
COARSENED = {"kaplan_meier", "cox_regression", "logistic_regression_cv"}  # the last: its folds' confusion cells merged
#: the algorithms whose later rounds exchange sums among the nodes only (ADR 0046)
SEALED_ROUNDS = {"cox_regression", "kaplan_meier"}
#: the algorithms whose sealed sums are masked, so that a peer learns only their pool (ADR 0052)
SEALED_MASKED = {"kaplan_meier", "cox_regression"}  # Cox in fixed point (ADR 0055)
#: the algorithms with releases checked on pooled counts (ADR 0052), and a request decided per attempt
POOLED_THRESHOLD = {"kaplan_meier"}
#: differencing tested algorithm == "kmeans"
PARTITIONED = {"kmeans"}
#: the algorithms with their own hook (the others keep the contract's default)
OWN_REFUSAL = {"kmeans"}
OWN_SECURE_FORM = {"descriptive_stats", "logistic_regression_cv", "cox_regression", "kaplan_meier",
                   "pearson_correlation", "linear_regression"}  # both: exact nodes add noiseless scaled sums (ADR 0057)
#: the algorithms that mask only some rounds under secure aggregation (ADR 0048)
MASKED_IN_PART = {"cox_regression", "kaplan_meier"}
#: the algorithms whose later rounds weigh the rows by a function of the iterate (ADR 0054)
ITERATE_WEIGHTED = {"logistic_regression", "logistic_regression_cv", "gee"}


def _overrides(member: str) -> set[str]:
    return {name for name, alg in ALGORITHMS.items()
            if getattr(type(alg), member) is not getattr(SpecAlgorithm, member)}


def test_the_catalogue_is_covered_by_the_requests_below() -> None:
    assert set(VALID) == set(ALGORITHMS)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_answers_every_capability(name) -> None:
    alg = get_algorithm(name)
    assert isinstance(alg, Algorithm)
    assert all(hasattr(alg, member) for member in CAPABILITIES)
    req = VALID[name]
    assert alg.secure_aggregation in SECURE_AGGREGATION
    assert alg.dp_release is None or isinstance(alg.dp_release, DPRelease)
    refusal = alg.secure_aggregation_refusal(req)
    assert refusal is None or isinstance(refusal, str)
    count = alg.parameter_count(req, MODEL)
    assert count is None or (isinstance(count, int) and count >= 1)
    folds = alg.fold_sizes(req, 100)
    assert folds is None or (sum(folds) == 100 and len(folds) == alg.params(req, MODEL)["n_splits"])
    rows = make_data(3, 60)
    if getattr(alg, "row_identity", False):  # the node's row identity: patients of 3 visits (gee)
        rows = rows.assign(_pid=[f"p{i // 3}" for i in range(len(rows))], _visit=[f"V{i % 3}" for i in range(len(rows))])
        prepared = prepare_local_data(alg, rows, req)
        assert alg.cluster_count(prepared) == prepared.groupby(["dataset", "_pid"]).ngroups
    else:
        assert alg.cluster_count(rows) is None
    data = prepare_local_data(alg, fold_keyed([rows])[0] if name in CROSS_VALIDATED else rows, req)  # as a node
    aggregates = alg.local_step(0, data, req, MODEL, None)
    coarse = alg.coarsen_for_release(0, aggregates, 3)
    assert isinstance(coarse, dict)
    if name not in COARSENED:
        assert coarse is aggregates
    secure = alg.secure_aggregates(coarse, req, MODEL)
    assert isinstance(secure, dict)
    if name not in OWN_SECURE_FORM:
        assert secure is coarse
    assert alg.differencing_partition(0, data, req, None) is None  # round 0 releases no partition
    assert alg.row_weights(0, data, req, MODEL, None) is None  # round 0: no iterate weighs the rows


def test_the_capabilities_are_what_the_controls_listed_before() -> None:
    by_support = {mode: {n for n, a in ALGORITHMS.items() if a.secure_aggregation == mode}
                  for mode in SECURE_AGGREGATION}
    assert by_support["automatic"] == SECURE_AUTOMATIC
    assert by_support["explicit_only"] == SECURE_EXPLICIT_ONLY
    assert by_support["unsupported"] == set(ALGORITHMS) - SECURE_AUTOMATIC - SECURE_EXPLICIT_ONLY
    noisy = {n: a.dp_release for n, a in ALGORITHMS.items() if a.dp_release is not None}
    assert set(noisy) == set(DP_NOTES)
    for name, note in DP_NOTES.items():
        assert (note in noisy[name].note) and bool(noisy[name].note) == bool(note)
    req = {name: VALID[name] for name in ALGORITHMS}
    assert {n for n, a in ALGORITHMS.items() if a.parameter_count(req[n], MODEL) is not None} == MODELS
    assert {n for n, a in ALGORITHMS.items() if a.fold_sizes(req[n], 100) is not None} == CROSS_VALIDATED
    assert _overrides("coarsen_for_release") == COARSENED
    assert _overrides("differencing_partition") == PARTITIONED
    assert _overrides("secure_aggregation_refusal") == OWN_REFUSAL
    assert _overrides("secure_aggregates") == OWN_SECURE_FORM
    assert _overrides("masked_round") == MASKED_IN_PART
    assert _overrides("row_weights") == ITERATE_WEIGHTED
    assert all(ALGORITHMS[n].masked_round(0, None) for n in set(ALGORITHMS) - MASKED_IN_PART)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_is_the_design_columns(name) -> None:
    from mipflow.algorithms.design import design_columns

    req = VALID[name]
    # a mixed model also counts its random intercept's variance and the residual variance
    extra = {"linear_mixed_model": 2}.get(name, 0)
    assert get_algorithm(name).parameter_count(req, MODEL) == len(design_columns(req.x, MODEL)) + extra


def test_kmeans_partition_is_the_nearest_centre_assignment_of_a_lloyd_round() -> None:
    from mipflow.algorithms.kmeans import assign

    kmeans = get_algorithm("kmeans")
    req = request(y=("x1", "y"), k=2)
    data = prepare_local_data(kmeans, make_data(5, 80), req)
    centres = np.array([[0.0, 0.0], [1.0, 1.0]])
    state = {"centers": centres.tolist(), "k": 2}
    labels = kmeans.differencing_partition(1, data, req, state)
    expected, _ = assign(np.vstack([data["x1"].to_numpy(float), data["y"].to_numpy(float)]), centres)
    np.testing.assert_array_equal(labels, expected)
    assert kmeans.differencing_partition(0, data, req, state) is None
    assert kmeans.differencing_partition(1, data, req, {"k": 2}) is None


def test_sealed_rounds_are_declared_by_the_algorithms_that_seal() -> None:
    assert {name for name, alg in ALGORITHMS.items() if alg.sealed_rounds} == SEALED_ROUNDS
    assert {name for name, alg in ALGORITHMS.items() if alg.sealed_masked} == SEALED_MASKED
    # every algorithm pools by elementwise sums; Kaplan-Meier's masked integer parts by sums modulo 2^64,
    # Cox's masked fixed-point parts by sums modulo 2^256 (ADR 0055)
    assert _overrides("pool_sealed") == SEALED_MASKED
    assert _overrides("sealed_mask_scheme") == {"cox_regression"}  # from 3 participants only
    assert _overrides("pooled_threshold") == POOLED_THRESHOLD == _overrides("session_request")


def test_groups_released_with_their_moments_hold_min_row_count_and_studies_know_them() -> None:
    """ADR 0050 and its amendment: the algorithms whose groups are released with a count, a mean and a
    spread (or a pooled spread) name ``min_row_count``; every other one keeps ``nfilter_tab``; and study
    approval knows how many nominal variables each of them groups by (``study_cells.MOMENT_CROSSES``)."""
    from mipflow.node.controls.study_cells import MOMENT_CROSSES

    named = {name for name, algorithm in ALGORITHMS.items() if algorithm.group_count_setting == "min_row_count"}
    assert named == {"kmeans", "ttest_independent", "anova_oneway", "anova", "naive_bayes_gaussian_cv",
                     "descriptive_stats"}
    assert {a.group_count_setting for name, a in ALGORITHMS.items() if name not in named} == {"nfilter_tab"}
    assert set(MOMENT_CROSSES) == named
