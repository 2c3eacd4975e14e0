"""Results pages' plots of ``gee`` and ``linear_mixed_model`` (issue 17.4): fitted trajectories by group
and the variance components, from real results (the algorithms run in process on longitudinal rows)."""
from __future__ import annotations

import re

import pytest

from mipflow.algorithms import get_algorithm, run_in_process
from mipflow.central.report.plots import result_plots, trajectory_plot, variance_plot
from mipflow.protocol.datamodel import DataModel
from tests.mipflow.algorithms.synthetic import request
from tests.mipflow.algorithms.test_gee import MODEL_LONG, split
from tests.mipflow.algorithms.test_gee import longitudinal as gee_longitudinal
from tests.mipflow.algorithms.test_lmm import longitudinal

#: The longitudinal model with a declared range for ``time`` (the trajectories' axis).
MODEL_TIMED = DataModel.from_dict({
    **{k: v for k, v in MODEL_LONG.to_dict().items() if k != "variables"},
    "variables": [({**v, "minValue": 0, "maxValue": 5} if v["code"] == "time" else v)
                  for v in MODEL_LONG.to_dict()["variables"]],
})
DATA = {"linear_mixed_model": longitudinal(23, 150), "gee": gee_longitudinal(23, 150)}


def run(name: str, model: DataModel = MODEL_TIMED, **req) -> dict:
    return run_in_process(get_algorithm(name), split(DATA[name], 3, 5), request(**req), model)


def lines(svg: str) -> list[str]:
    """The fitted trajectories' ids (one SVG group per line)."""
    return re.findall(r'<g id="trajectory-([^"]+)"', svg)


def texts(svg: str) -> str:
    """Every text of the SVG (matplotlib draws glyphs as paths, each text kept in a comment)."""
    return " ".join(re.findall(r"<!-- (.*?) -->", svg, flags=re.S))


@pytest.fixture(scope="module")
def slope() -> dict:
    return run("linear_mixed_model", x=["x1", "grp", "time"], y=["y"], random_effects="intercept_slope",
               time="time")


def test_mixed_model_trajectories_one_line_per_group(slope):
    assert [c["code"] for c in slope["covariates"]] == ["x1", "grp", "time"]
    assert slope["covariates"][1] == {"code": "grp", "label": "grp", "type": "nominal", "reference": "a",
                                      "levels": ["a", "b", "c"]} | {"label": slope["covariates"][1]["label"]}
    assert slope["covariates"][2]["range"] == [0.0, 5.0]
    svg = trajectory_plot(slope)
    assert svg is not None and svg.startswith("<svg")
    assert lines(svg) == ["a", "b", "c"]
    words = texts(svg)
    for label in ("y: fitted trajectories by grp", "grp = a", "grp = b", "grp = c", "fitted mean of y",
                  "x1 = 0", "its range in the data model"):
        assert label in words, label


def test_mixed_model_variance_components(slope):
    svg = variance_plot(slope)
    assert svg is not None
    words = texts(svg)
    cov = slope["cov_re"]
    correlation = cov[0][1] / (cov[0][0] * cov[1][1]) ** 0.5
    for label in ("Variance components", "random intercept", "random slope (time)", "residual",
                  f"{cov[0][0]:.4g}", f"{cov[1][1]:.4g}", f"{slope['scale']:.4g}", f"{correlation:.3f}",
                  "intercept x slope"):
        assert label in words, label
    titles = [texts(p) for p in result_plots(slope)]  # on the results page: coefficients, trajectories, variances
    assert len(titles) == 3 and "fitted trajectories" in titles[1] and "Variance components" in titles[2]


def test_random_intercept_model_uses_the_time_covariate_and_names_held_values():
    result = run("linear_mixed_model", MODEL_LONG, x=["sex", "x1", "grp", "time"], y=["y"])
    svg = trajectory_plot(result)
    assert lines(svg) == ["F", "M"]  # the first nominal covariate
    words = texts(svg)
    assert "grp at its reference level a" in words and "x1 = 0" in words
    assert "0 to 1 (the data model declares no range)" in words  # no declared range for time here
    variance = texts(variance_plot(result))
    assert "random intercept" in variance and "correlation" not in variance


@pytest.mark.parametrize("family, y, link", [
    pytest.param("gaussian", "y", "identity", id="gaussian"),
    pytest.param("binomial", "yb", "logit", id="binomial"),
])
def test_gee_trajectories(family, y, link):
    result = run("gee", x=["x1", "grp", "time"], y=[y], family=family, cov_struct="exchangeable")
    assert result["link"] == link
    svg = trajectory_plot(result)
    assert lines(svg) == ["a", "b", "c"]
    assert f"fitted mean of {y}" in texts(svg)
    assert variance_plot(result) is None  # no random effects in a GEE


def test_no_trajectories_without_a_time_covariate():
    result = run("gee", x=["x1", "grp"], y=["y"])
    assert trajectory_plot(result) is None
    assert len(result_plots(result)) == 1  # the coefficients only
