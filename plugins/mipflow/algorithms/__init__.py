"""The catalogue of vetted federated algorithms.

Each algorithm is a pair of pure functions, a local step run by a node on its
own rows and a global step run centrally on the nodes' aggregates (see
:mod:`mipflow.algorithms.contract`).  Nodes accept only the names in
:data:`ALGORITHMS`.
"""
from __future__ import annotations

from mipflow.algorithms.anova import Anova
from mipflow.algorithms.anova_oneway import AnovaOneway
from mipflow.algorithms.cmh_test import CMHTest
from mipflow.algorithms.contingency_table import ContingencyTable
from mipflow.algorithms.contract import Algorithm, Step
from mipflow.algorithms.cox_regression import CoxRegression
from mipflow.algorithms.descriptive_stats import DescriptiveStats
from mipflow.algorithms.gee import Gee
from mipflow.algorithms.design import design_matrix
from mipflow.algorithms.kaplan_meier import KaplanMeier
from mipflow.algorithms.kmeans import KMeans
from mipflow.algorithms.linear_regression import LinearRegression
from mipflow.algorithms.linear_regression_cv import LinearRegressionCV
from mipflow.algorithms.lmm import LinearMixedModel
from mipflow.algorithms.local import prepare_local_data, run_in_process
from mipflow.algorithms.logistic_regression import LogisticRegression
from mipflow.algorithms.logistic_regression_cv import LogisticRegressionCV
from mipflow.algorithms.multiple_histograms import MultipleHistograms
from mipflow.algorithms.naive_bayes import NaiveBayesCategoricalCV, NaiveBayesGaussianCV
from mipflow.algorithms.pca import PCA, PCAWithTransformation
from mipflow.algorithms.pearson_correlation import PearsonCorrelation
from mipflow.algorithms.ttest_independent import TTestIndependent
from mipflow.algorithms.ttest_onesample import TTestOneSample
from mipflow.algorithms.ttest_paired import TTestPaired
from mipflow.exceptions import RequestError
from mipflow.protocol.request import AnalysisRequest

ALGORITHMS: dict[str, Algorithm] = {
    alg.name: alg
    for alg in (
        DescriptiveStats(),
        PearsonCorrelation(),
        LinearRegression(),
        LogisticRegression(),
        TTestOneSample(),
        TTestIndependent(),
        TTestPaired(),
        AnovaOneway(),
        MultipleHistograms(),
        ContingencyTable(),
        LinearRegressionCV(),
        LogisticRegressionCV(),
        NaiveBayesGaussianCV(),
        NaiveBayesCategoricalCV(),
        KaplanMeier(),
        CoxRegression(),
        KMeans(),
        Anova(),
        PCA(),
        PCAWithTransformation(),
        CMHTest(),
        Gee(),
        LinearMixedModel(),
    )
}

#: Exareme2 algorithms deliberately not offered, with the reason given to the requester.
NOT_OFFERED: dict[str, str] = {
    "svm_scikit": (
        "svm_scikit is not offered: a support vector machine's model is made of support vectors, "
        "which are patients' rows, so no node can release it (see docs/adr/0007-svm-not-offered.md; "
        "use logistic_regression or naive_bayes_gaussian_cv instead)"
    ),
}


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called ``name``.

    Raises
    ------
    RequestError
        If there is no such algorithm.
    """
    if isinstance(name, str) and name in NOT_OFFERED:
        raise RequestError(NOT_OFFERED[name])
    try:
        return ALGORITHMS[name]
    except (KeyError, TypeError):
        raise RequestError(
            f"unknown algorithm {name!r}; available: {', '.join(sorted(ALGORITHMS))}"
        ) from None


__all__ = [
    "ALGORITHMS", "Algorithm", "AnalysisRequest", "Step", "design_matrix",
    "get_algorithm", "prepare_local_data", "run_in_process",
]
