"""The catalogue of vetted federated algorithms.

Each algorithm is a pair of pure functions, a local step run by a node on its
own rows and a global step run centrally on the nodes' aggregates (see
:mod:`mipflow.algorithms.base`).  Nodes accept only the names in
:data:`ALGORITHMS`.
"""
from __future__ import annotations

from mipflow.algorithms.anova import Anova
from mipflow.algorithms.anova_oneway import AnovaOneway
from mipflow.algorithms.base import (
    AnalysisRequest, Algorithm, Step, design_matrix, prepare_local_data, run_in_process,
)
from mipflow.algorithms.descriptive_stats import DescriptiveStats
from mipflow.algorithms.linear_regression import LinearRegression
from mipflow.algorithms.logistic_regression import LogisticRegression
from mipflow.algorithms.multiple_histograms import MultipleHistograms
from mipflow.algorithms.pca import PCA, PCAWithTransformation
from mipflow.algorithms.pearson_correlation import PearsonCorrelation
from mipflow.algorithms.ttest_independent import TTestIndependent
from mipflow.algorithms.ttest_onesample import TTestOneSample
from mipflow.algorithms.ttest_paired import TTestPaired
from mipflow.exceptions import RequestError

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
        Anova(),
        PCA(),
        PCAWithTransformation(),
    )
}


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called ``name``.

    Raises
    ------
    RequestError
        If there is no such algorithm.
    """
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
