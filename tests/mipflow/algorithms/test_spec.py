"""The spec form: requests validated against an algorithm's inputs and parameters, defaults applied
(:mod:`mipflow.algorithms.spec`)."""
from __future__ import annotations

import pytest

from mipflow.algorithms import ALGORITHMS, AnalysisRequest
from mipflow.exceptions import RequestError
from tests.mipflow.algorithms.synthetic import MODEL, request
from tests.mipflow.algorithms.test_contract import VALID


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_requests_validate(name) -> None:
    ALGORITHMS[name].validate(VALID[name], MODEL)


@pytest.mark.parametrize("name, req, message", [
    pytest.param("linear_regression", request(x=("nope",), y=("y",)), "not in data model", id="unknown-var"),
    pytest.param("linear_regression", request(x=("x1",), y=("grp",)), "must be numerical", id="nominal-y"),
    pytest.param("linear_regression", request(x=("y",), y=("y",)), "both", id="y-in-x"),
    pytest.param("linear_regression", request(x=(), y=("y",)), "at least one variable in x", id="no-x"),
    pytest.param("ttest_onesample", request(y=("y", "x1")), "exactly one", id="two-y"),
    pytest.param("ttest_onesample", request(y=("y",), x=("x1",)), "no covariates", id="x-given"),
    pytest.param("ttest_onesample", request(y=("y",), alpha=1.5), "above its maximum", id="alpha-range"),
    pytest.param("ttest_onesample", request(y=("y",), alpha="high"), "must be of type", id="alpha-type"),
    pytest.param("ttest_onesample", request(y=("y",), alt_hypothesis="bigger"), "not one of", id="alt"),
    pytest.param("ttest_onesample", request(y=("y",), **{"lambda": 1}), "no parameter", id="unknown-param"),
    pytest.param("ttest_independent", request(x=("grp",), y=("y",), groupA="a"), "groupB", id="no-groupB"),
    pytest.param("ttest_independent", request(x=("grp",), y=("y",), groupA="a", groupB="a"),
                 "different", id="same-groups"),
    pytest.param("ttest_independent", request(x=("grp",), y=("y",), groupA="a", groupB="q"),
                 "not a category", id="bad-group"),
    pytest.param("ttest_independent", request(x=("x1",), y=("y",), groupA="a", groupB="b"),
                 "must be nominal", id="numerical-x"),
    pytest.param("logistic_regression", request(x=("x1",), y=("outcome",)), "positive_class", id="no-class"),
    pytest.param("logistic_regression", request(x=("x1",), y=("y",), positive_class="1"),
                 "must be nominal", id="numerical-y"),
    pytest.param("pearson_correlation", request(y=("y", "grp")), "must be numerical", id="nominal-var"),
    pytest.param("multiple_histograms", request(y=("y",), bins=0), "below its minimum", id="bins"),
    pytest.param("multiple_histograms", request(y=("y",), bins=2.5), "must be of type", id="bins-float"),
    pytest.param("anova_oneway", request(x=("x1",), y=("y",)), "must be nominal", id="numerical-x"),
])
def test_invalid_requests_raise_request_error(name, req, message) -> None:
    with pytest.raises(RequestError, match=message):
        ALGORITHMS[name].validate(req, MODEL)


def test_request_for_another_data_model_is_refused() -> None:
    req = AnalysisRequest("other:1", ("d0",), (), ("y",), None, {})
    with pytest.raises(RequestError, match="data model"):
        ALGORITHMS["ttest_onesample"].validate(req, MODEL)


def test_parameter_defaults_are_applied() -> None:
    params = ALGORITHMS["ttest_onesample"].params(request(y=("y",)), MODEL)
    assert params == {"alt_hypothesis": "two-sided", "alpha": 0.05, "mu": 0.0}
    assert ALGORITHMS["pearson_correlation"].params(request(y=("y",)), MODEL) == {"alpha": 0.95}
    assert ALGORITHMS["multiple_histograms"].params(request(y=("y",)), MODEL) == {"bins": 20}
