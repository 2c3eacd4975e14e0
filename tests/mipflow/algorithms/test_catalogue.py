"""The algorithm catalogue: one declaration per algorithm, read without the heavy libraries,
and the node enforcing exactly the bounds the catalogue (and so every form) shows."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from mipflow.algorithms import ALGORITHMS
from mipflow.algorithms.catalogue import describe, format_table, parameter_schema
from mipflow.algorithms.spec import ParamSpec
from mipflow.exceptions import RequestError
from tests.conftest import REPO_ROOT
from tests.mipflow.algorithms.synthetic import MODEL
from tests.mipflow.algorithms.test_contract import VALID

CATALOGUE = describe()


def test_catalogue_imports_without_pandas_scipy_or_statsmodels():
    """DAG files build their forms from the catalogue: importing it must stay cheap."""
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO_ROOT / 'plugins')!r})\n"
        "from mipflow.algorithms.catalogue import describe\n"
        "describe()\n"
        "print(json.dumps(sorted(m for m in ('pandas', 'scipy', 'statsmodels', 'sklearn') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == []


def test_every_algorithm_is_listed_with_labels_and_descriptions():
    assert [entry["name"] for entry in CATALOGUE] == sorted(ALGORITHMS)
    for entry in CATALOGUE:
        assert entry["label"] and entry["description"], entry["name"]
        assert entry["inputs"]["y"] is not None, entry["name"]
        for which, item in entry["inputs"].items():
            if item is not None:
                assert item["label"] and item["description"], (entry["name"], which)
        for name, item in entry["parameters"].items():
            assert item["label"] and item["description"], (entry["name"], name)
    assert json.loads(json.dumps(CATALOGUE)) == CATALOGUE  # JSON-ready as it is


def test_alpha_says_what_it_is():
    """The wire name stays Exareme2's; the title says whether it is a confidence or a significance level."""
    titles = {entry["name"]: entry["parameters"]["alpha"]["label"] for entry in CATALOGUE
              if "alpha" in entry["parameters"]}
    assert titles["kaplan_meier"].startswith("Confidence level")
    assert "1 - alpha" in titles["pearson_correlation"]
    for name in ("ttest_onesample", "ttest_independent", "ttest_paired", "contingency_table", "cmh_test"):
        assert titles[name].startswith("Significance level"), name
    assert titles["naive_bayes_categorical_cv"].startswith("Smoothing")


@pytest.mark.parametrize(("spec", "schema"), [
    pytest.param(ParamSpec(types=("real",), default=0.05, notblank=True, min=0.0, max=1.0, min_exclusive=True,
                           max_exclusive=True, label="a", description="d"),
                 {"type": "number", "title": "a", "default": 0.05, "description": "d", "exclusiveMinimum": 0.0,
                  "exclusiveMaximum": 1.0}, id="exclusive-bounds"),
    pytest.param(ParamSpec(types=("text", "int"), notblank=True, enums_from="y", label="a"),
                 {"type": ["string", "integer"], "title": "a", "minLength": 1}, id="required-no-default"),
    pytest.param(ParamSpec(types=("text",), default="pca", enums=("pca", "exareme2"), label="a"),
                 {"type": ["string", "null"], "title": "a", "default": "pca", "enum": ["pca", "exareme2", None]},
                 id="optional-enum-accepts-null"),
    pytest.param(ParamSpec(types=("real",), label="a"),
                 {"type": ["number", "null"], "title": "a", "default": None}, id="optional-no-default"),
])
def test_parameter_schema(spec, schema):
    assert parameter_schema(spec) == schema


def _bounded():
    for name, algorithm in sorted(ALGORITHMS.items()):
        for pname, spec in algorithm.parameter_specs.items():
            if spec.min is not None or spec.max is not None:
                yield pytest.param(name, pname, spec, id=f"{name}.{pname}")


@pytest.mark.parametrize(("name", "pname", "spec"), list(_bounded()))
def test_node_enforces_exactly_the_catalogue_bounds(name, pname, spec):
    """At a bound the node accepts the value iff the bound is inclusive; just past it, never."""
    algorithm = ALGORITHMS[name]
    base = VALID[name]

    def accepts(value) -> bool:
        req = dataclasses.replace(base, parameters={**base.parameters, pname: value})
        try:
            return algorithm.params(req, MODEL)[pname] == value
        except RequestError as exc:
            assert pname in str(exc)
            return False

    step = 1 if "int" in spec.types else 1e-6 * max(1.0, abs(spec.min or 0.0), abs(spec.max or 0.0))
    if spec.min is not None:
        assert accepts(spec.min) is not spec.min_exclusive
        assert not accepts(spec.min - step)
        assert accepts(spec.min + step) or (spec.max is not None and spec.min + step > spec.max)
    if spec.max is not None:
        assert accepts(spec.max) is not spec.max_exclusive
        assert not accepts(spec.max + step)


def test_required_and_optional_parameters_at_the_node():
    """A required parameter left out is refused; an optional one left empty (null, as an emptied form
    field sends it) is the same as left out: its default."""
    for name, algorithm in ALGORITHMS.items():
        base = VALID[name]
        for pname, spec in algorithm.parameter_specs.items():
            emptied = dataclasses.replace(base, parameters={**base.parameters, pname: None})
            left_out = dataclasses.replace(base, parameters={k: v for k, v in base.parameters.items() if k != pname})
            if spec.required:
                for req in (emptied, left_out):
                    with pytest.raises(RequestError, match=pname):
                        algorithm.params(req, MODEL)
            elif spec.optional:
                assert algorithm.params(emptied, MODEL)[pname] == algorithm.params(left_out, MODEL)[pname], \
                    (name, pname)
                if spec.default is not None:
                    assert algorithm.params(left_out, MODEL)[pname] == spec.default, (name, pname)


def test_exareme2_deviations_are_deliberate():
    """kmeans runs Lloyd's algorithm to convergence by default; mu is any finite number (ADR 0022)."""
    kmeans = ALGORITHMS["kmeans"].parameter_specs
    assert (kmeans["maxiter"].default, kmeans["tol"].default) == (100, 0.0001)
    mu = ALGORITHMS["ttest_onesample"].parameter_specs["mu"]
    assert mu.min is None and mu.max is None
    req = dataclasses.replace(VALID["ttest_onesample"], parameters={"mu": 90.0})
    assert ALGORITHMS["ttest_onesample"].params(req, MODEL)["mu"] == 90.0


def test_table_lists_every_algorithm_and_parameter():
    text = format_table(CATALOGUE)
    for entry in CATALOGUE:
        assert f"{entry['name']}: {entry['label']}" in text
        for name in entry["parameters"]:
            assert f"  {name}  " in text, (entry["name"], name)
