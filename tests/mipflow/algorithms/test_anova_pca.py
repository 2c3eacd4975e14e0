"""Two-way ANOVA and PCA: bad requests, rank-deficient designs, and what a node refuses to release.

The pooled-reference properties live in ``test_federated_vs_pooled.py`` (and
run over HTTP in ``tests/integration/test_federation.py``); Exareme2's cases in
``test_exareme2_validation.py``.  Here: the request errors, an explicit
design with empty cells, and the disclosure controls of a real node app
(signed requests through FastAPI's test client, default settings unless
said otherwise).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from fastapi.testclient import TestClient

from mipflow.algorithms import ALGORITHMS, run_in_process
from mipflow.protocol.signing import issue_client, signed_headers
from mipflow.exceptions import RequestError
from mipflow.node.api.app import create_app
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.mipflow.algorithms.test_federated_vs_pooled import _anova_reference
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame
from tests.nodes import standard_home

PCA_Y = ("y", "x1", "x2", "age")


# --------------------------------------------------------------------------- request errors


@pytest.mark.parametrize("name, req, message", [
    pytest.param("anova", request(x=("grp",), y=("y",)), "two covariates", id="anova-one-factor"),
    pytest.param("anova", request(x=("grp", "sex", "stage"), y=("y",)), "two covariates", id="anova-three-factors"),
    pytest.param("anova", request(x=("grp", "x1"), y=("y",)), "must be nominal", id="anova-numerical-factor"),
    pytest.param("anova", request(x=("grp", "sex"), y=("y",), sstype=3), "above its maximum", id="anova-sstype-3"),
    pytest.param("anova", request(x=("grp", "sex"), y=("y",), sstype="III"), "1 or 2", id="anova-sstype-text"),
    pytest.param("pca", request(y=("y", "grp")), "must be numerical", id="pca-nominal"),
    pytest.param("pca", request(x=("x1",), y=("y", "x2")), "no covariates", id="pca-with-x"),
    pytest.param("pca_with_transformation", request(y=PCA_Y, data_transformation={"sqrt": ["y"]}),
                 "Unknown transformation", id="unknown-transformation"),
    pytest.param("pca_with_transformation", request(y=PCA_Y, data_transformation={"log": ["score"]}),
                 "not one of the variables", id="transform-a-variable-not-in-y"),
    pytest.param("pca_with_transformation", request(y=PCA_Y, data_transformation={"log": ["age"], "center": ["age"]}),
                 "two transformations", id="two-transformations"),
    pytest.param("pca_with_transformation", request(y=PCA_Y, data_transformation=["log"]),
                 "must be an object", id="transformation-not-an-object"),
])
def test_invalid_requests_raise_request_error(name, req, message) -> None:
    with pytest.raises(RequestError, match=message):
        ALGORITHMS[name].validate(req, MODEL)


def test_sstype_defaults_to_2_and_accepts_exareme2s_string_form() -> None:
    anova = ALGORITHMS["anova"]
    assert anova.params(request(x=("grp", "sex"), y=("y",)), MODEL) == {"sstype": 2}
    assert anova.params(request(x=("grp", "sex"), y=("y",), sstype="1"), MODEL) == {"sstype": 1}


def test_log_of_a_non_positive_value_is_a_clear_error() -> None:
    data = make_data(3, 80)
    data.loc[5, "x1"] = -0.5 if data.loc[5, "x1"] > 0 else data.loc[5, "x1"]
    req = request(y=PCA_Y, data_transformation={"log": ["x1"]})
    with pytest.raises(RequestError, match="Log transformation cannot be applied to non-positive values "
                                           "in column 'x1'"):
        run_in_process(ALGORITHMS["pca_with_transformation"], [data.iloc[:40], data.iloc[40:]], req, MODEL)


def test_a_factor_with_one_level_in_the_data_is_a_request_error() -> None:
    data = make_data(5, 60).assign(sex="F")
    with pytest.raises(RequestError, match="sex contain less than 2 levels"):
        run_in_process(ALGORITHMS["anova"], [data], request(x=("grp", "sex"), y=("y",)), MODEL)


def test_a_constant_variable_cannot_be_standardised() -> None:
    data = make_data(5, 60).assign(x2=3.0)
    with pytest.raises(RequestError, match="x2 is constant"):
        run_in_process(ALGORITHMS["pca"], [data], request(y=PCA_Y), MODEL)


# --------------------------------------------------------------------------- rank-deficient designs


@pytest.mark.parametrize("sstype", [1, 2])
def test_empty_cells_use_rank_increments(sstype) -> None:
    """grp c only at stage 1, grp b never at stage 3: three of the 3 x 3 cells are empty, so the
    interaction adds rank 6 - 5 = 1 (not 4), and the sums of squares are those of statsmodels'
    nested fits."""
    data = make_data(11, 300).dropna(subset=["y", "grp", "stage"])
    data = data[~((data["grp"] == "c") & (data["stage"] != 1)) & ~((data["grp"] == "b") & (data["stage"] == 3))]
    ours = run_in_process(ALGORITHMS["anova"], [data.iloc[:120], data.iloc[120:]],
                          request(x=("grp", "stage"), y=("y",), sstype=sstype), MODEL)
    pooled = data.copy()
    pooled["stage"] = pooled["stage"].astype(int).astype(str)
    reference = _anova_reference(pooled, sstype)
    assert ours["df"]["grp:stage"] == reference["grp:stage"][1] == 1
    assert ours["df"]["Residuals"] == len(pooled) - 6
    for term, (ss, df, f, p) in reference.items():
        assert ours["df"][term] == df
        assert_rel_close(ours["sum_sq"][term], ss, what=f"sum_sq[{term}]")
        assert_rel_close(ours["f_stat"][term], f, what=f"f_stat[{term}]")
        assert_rel_close(ours["f_pvalue"][term], p, floor=1e-300, what=f"f_pvalue[{term}]")
    assert_rel_close(ours["sum_sq"]["Residuals"], smf.ols("y ~ C(grp) * C(stage)", pooled).fit().ssr)


def test_confounded_factors_leave_terms_with_df_0() -> None:
    """When one factor determines the other, B adds nothing after A: df 0, sum_sq 0, no F test."""
    data = make_data(13, 200).dropna(subset=["y", "grp"])
    data = data[data["grp"] != "c"].copy()
    data["sex"] = np.where(data["grp"] == "a", "F", "M")
    ours = run_in_process(ALGORITHMS["anova"], [data], request(x=("grp", "sex"), y=("y",), sstype=1), MODEL)
    assert ours["df"] == {"grp": 1, "sex": 0, "grp:sex": 0, "Residuals": len(data) - 2}
    assert ours["sum_sq"]["sex"] == ours["sum_sq"]["grp:sex"] == 0.0
    assert ours["f_stat"]["sex"] is None and ours["f_pvalue"]["grp:sex"] is None
    one_way = smf.ols("y ~ C(grp)", data).fit()
    assert_rel_close(ours["sum_sq"]["grp"], one_way.ess)


def test_centre_and_standardise_do_not_change_the_components() -> None:
    """They are affine per column: the correlation matrix, and so the PCA, is the same."""
    data = make_data(17, 150)
    plain = run_in_process(ALGORITHMS["pca"], [data], request(y=PCA_Y), MODEL)
    moved = run_in_process(ALGORITHMS["pca_with_transformation"], [data.iloc[:70], data.iloc[70:]],
                           request(y=PCA_Y, data_transformation={"center": ["y", "x1"], "standardize": ["x2"]}),
                           MODEL)
    assert_rel_close(moved["eigen_vals"], plain["eigen_vals"])
    assert_rel_close(moved["eigen_vecs"], plain["eigen_vecs"], floor=1e-3)
    n = moved["n_obs"]
    assert moved["means"][:3] == [0.0, 0.0, 0.0]
    assert_rel_close(moved["sigmas"][2], np.sqrt(n / (n - 1)), rel=1e-12)  # population sd, as Exareme2


# --------------------------------------------------------------------------- disclosure at a real node


@pytest.fixture
def node(tmp_path):
    """A node home holding synthetic rows, and a function posting one signed local step."""
    home = standard_home(tmp_path / "hospital_x", "hospital_x")
    cred = issue_client(home.root, "central")
    grant_all(home.root)
    client = TestClient(create_app(home))

    def load(frame: pd.DataFrame) -> None:
        rows = frame.copy()
        rows.insert(0, "subjectcode", [f"s{i:04d}" for i in range(len(rows))])
        load_frame(home.root, MODEL, rows)

    def step(name: str, req) -> tuple[int, dict]:
        path = f"/v1/steps/{name}"
        raw = json.dumps({"request": req.to_dict(), "round": 0, "state": None,
                          "researcher": RESEARCHER, "project": PROJECT}).encode()
        headers = signed_headers(cred.client_id, cred.secret, "POST", path, raw)
        response = client.post(path, content=raw, headers={**headers, "Content-Type": "application/json"})
        return response.status_code, response.json()

    yield home, load, step
    client.close()


def _complete(n: int, seed: int = 21) -> pd.DataFrame:
    return make_data(seed, 4 * n).dropna().iloc[:n].reset_index(drop=True)


@pytest.mark.parametrize("name, req", [
    pytest.param("pca", request(y=PCA_Y), id="pca"),
    pytest.param("pca_with_transformation", request(y=PCA_Y, data_transformation={"exp": ["x1"]}),
                 id="pca_with_transformation"),
    pytest.param("anova", request(x=("grp", "sex"), y=("y",)), id="anova"),
])
def test_two_rows_at_a_node_are_refused(node, name, req) -> None:
    home, load, step = node
    load(_complete(2))
    status, body = step(name, req)
    assert status == 403 and body["control"] == "min_row_count", body
    # with min_row_count lowered by the node admin, nfilter_tab still refuses two rows
    home.set_setting("min_row_count", 1)
    status, body = step(name, req)
    assert status == 403 and body["control"] == "nfilter_tab", body
    assert "aggregates" not in body


def test_pca_on_enough_rows_is_released(node) -> None:
    _, load, step = node
    load(_complete(40))
    status, body = step("pca", request(y=PCA_Y))
    assert status == 200 and body["rows"] == 40
    assert set(body["aggregates"]) == {"moments", "group_n"}


def test_small_anova_cell_is_not_released(node) -> None:
    """One (grp, sex) cell of 2 rows at the node: the step is refused, the cell's mean never sent (a cell is
    held to min_row_count: its mean beside the pooled sum of squares, ADR 0050's amendment)."""
    home, load, step = node
    data = _complete(80)
    small = data[(data["grp"] == "c") & (data["sex"] == "F")]
    assert len(small) >= 2
    data = data[~data.index.isin(small.index[2:])].reset_index(drop=True)
    load(data)
    req = request(x=("grp", "sex"), y=("y",))
    status, body = step("anova", req)
    assert status == 403 and body["control"] == "min_row_count", body
    assert "min_row_count" in body["refused"] and "2 row" not in body["refused"]
    # the same node answers once every cell holds at least min_row_count (and nfilter_tab) rows
    home.set_setting("nfilter_tab", 2)
    home.set_setting("min_row_count", 2)
    status, body = step("anova", req)
    assert status == 200
    assert sorted(set(body["aggregates"]["group_n"]) - {0})[0] == 2
