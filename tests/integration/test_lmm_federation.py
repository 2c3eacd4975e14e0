"""``linear_mixed_model`` (issue 17.3) through three real node processes on the MIP's ``longitudinal_dementia`` data.

The CSVs of ``../shared/data/longitudinal_dementia_v_0_1`` (one dataset per node, standard-mode
homes, read in place), loaded with their visits as the rows' visit keys, are fitted by the federated
linear mixed model (rounds verified by every node, ADR 0029) and compared with statsmodels'
``MixedLM`` on the pooled rows (groups = ``subjectid`` within dataset), converged to its optimum
(``tests.mipflow.algorithms.test_lmm.converged_reference``), to 1e-8 relative.  With three nodes every round is masked (secure aggregation, automatic from 3
nodes, ADR 0014 / 0041): the central site receives only ring elements, and the masked fit equals the
plain one and statsmodels to the same tolerance.  A node with fewer
patients than its ``min_row_count`` (but more rows) refuses, naming the control and no count, and
is left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mipflow.algorithms.lmm import LinearMixedModel
from mipflow.central.rounds import run_analysis
from mipflow.node.home import NodeHome
from mipflow.protocol.datamodel import DataModel, load_data_model
from tests.mipflow.algorithms.helpers import assert_rel_close, reported_summary
from tests.mipflow.algorithms.test_lmm import converged_reference, fit_quietly
from tests.nodes import (PROJECT, RESEARCHER, assert_only_masked, assert_round_zero_is_the_plain_sum, csv_nodes,
                         recording_clients, served_clients)

pytestmark = pytest.mark.xdist_group("lmm")

SUMMARY = reported_summary("mipflow linear_mixed_model: federated via HTTP vs pooled statsmodels MixedLM")
FOLDER = "longitudinal_dementia_v_0_1"
DATASETS = ["longitudinal_dementia0", "longitudinal_dementia1", "longitudinal_dementia2"]
NUMERICAL = ("lefthippocampus", "righthippocampus", "leftamygdala", "minimentalstate", "timesincebaseline",
             "subjectage")
LMM_RTOL = 1e-8
TIME = "timesincebaseline"
ALGO_NOTES = LinearMixedModel.NOTES


@dataclass
class Federation:
    roots: dict[str, Path]
    clients: list
    raw: pd.DataFrame
    model: DataModel

    def run(self, doc: dict, clients=None, **kwargs):
        return run_analysis("linear_mixed_model", doc, clients or self.clients, researcher=RESEARCHER,
                            project=PROJECT, **kwargs)


@pytest.fixture(scope="module")
def federation(tmp_path_factory, shared_dir: Path) -> Iterator[Federation]:
    folder = shared_dir / "data" / FOLDER
    model = load_data_model(folder / "CDEsMetadata.json")
    # several analyses of the same rows, on purpose: differencing off
    roots, raw = csv_nodes(tmp_path_factory.mktemp("lmm"), "node_m", folder, DATASETS, model,
                           differencing_check=0)
    for var in NUMERICAL:
        raw[var] = pd.to_numeric(raw[var])
    with served_clients(roots) as served:
        yield Federation(roots=roots, clients=list(served.values()), raw=raw, model=model)


def request(y: str, x: list[str], **parameters) -> dict:
    return {"inputdata": {"data_model": "longitudinal_dementia:0.1", "datasets": DATASETS, "y": [y], "x": x,
                          "filters": None}, "parameters": parameters}


def pooled_model(raw: pd.DataFrame, y: str, x: list[str], slope: bool) -> tuple[sm.MixedLM, list[str]]:
    rows = raw.dropna(subset=[y, *x] + ([TIME] if slope else [])).copy()
    groups = rows["dataset"] + "\x1f" + rows["subjectid"]
    parts, names = [np.ones(len(rows))], ["Intercept"]
    for code in x:
        if code in NUMERICAL:
            continue
        levels = sorted(rows[code].unique())
        parts += [(rows[code] == lvl).to_numpy(dtype=float) for lvl in levels[1:]]
        names += [f"{code}[{lvl}]" for lvl in levels[1:]]
    parts += [rows[c].to_numpy(dtype=float) for c in x if c in NUMERICAL]
    names += [c for c in x if c in NUMERICAL]
    exog_re = np.ones((len(rows), 1)) if not slope else np.column_stack([np.ones(len(rows)), rows[TIME]])
    return sm.MixedLM(rows[y].to_numpy(dtype=float), np.column_stack(parts), groups=groups.to_numpy(),
                      exog_re=exog_re), names


CASES = [
    pytest.param("lefthippocampus", ["subjectage", "gender", TIME], False, "reml", id="intercept-reml"),
    pytest.param("lefthippocampus", ["subjectage", "gender", TIME], False, "ml", id="intercept-ml"),
    pytest.param("lefthippocampus", ["subjectage", TIME], True, "reml", id="slope-reml"),
    pytest.param("righthippocampus", ["subjectage", TIME], True, "reml", id="slope-reml-right"),
]


@pytest.mark.parametrize("y, x, slope, method", CASES)
def test_equal_to_statsmodels_on_pooled_rows(federation: Federation, y, x, slope, method) -> None:
    extra = {"random_effects": "intercept_slope", "time": TIME} if slope else {}
    outcome = federation.run(request(y, x, method=method, **extra))
    assert not outcome.excluded
    assert outcome.secure_aggregation["enabled"] is True and outcome.secure_aggregation["mode"] == "auto-on"
    ours = outcome.result
    model, names = pooled_model(federation.raw, y, x, slope)
    reference, _ = converged_reference(model, method == "reml")
    assert ours["indep_vars"] == names
    assert ours["n_obs"] == model.nobs == sum(outcome.contributed.values())
    assert ours["n_groups"] == model.n_groups and ours["converged"] is True
    worst = 0.0
    for key, expected in (("coefficients", reference.fe_params), ("stderr", reference.bse_fe),
                          ("cov_re", reference.cov_re), ("scale", reference.scale), ("llf", reference.llf),
                          ("cov_re_stderr", reference.bse_re)):
        worst = max(worst, assert_rel_close(ours[key], expected, rel=LMM_RTOL, floor=1e-12, what=key))
    SUMMARY.record("linear_mixed_model", worst, f"{'slope' if slope else 'intercept'}.{method}")


@pytest.mark.parametrize("y, x", [
    pytest.param("lefthippocampus", ["subjectage", TIME], id="left"),
    pytest.param("righthippocampus", ["subjectage", TIME], id="right"),
])
def test_on_the_boundary_equal_to_statsmodels_rank_one_model(federation: Federation, y, x) -> None:
    """ML with a random slope on these data: the maximum has a correlation of -1 between intercept and
    slope (a singular covariance, on the edge of the parameter space), where statsmodels' BFGS stops
    short (its score is not zero there) and its own log-likelihood is imprecise (it adds the
    covariance's log-determinant to that of its inverse plus ``Z'Z``).  The federated fit says so
    (``boundary``); its covariance is ``s^2 u u'``, i.e. one random effect on ``(1, time) . u``:
    statsmodels' MixedLM with that single random effect, converged, has the same fixed effects,
    variance and log-likelihood, and that log-likelihood is at least the (dense, exact) one at
    statsmodels' fits of the full model."""
    outcome = federation.run(request(y, x, method="ml", random_effects="intercept_slope", time=TIME))
    ours = outcome.result
    assert not outcome.excluded and ours["converged"] is True and ours["boundary"] is True
    full, _ = pooled_model(federation.raw, y, x, True)
    values, vectors = np.linalg.eigh(np.asarray(ours["cov_re"]))
    direction = vectors[:, -1]
    single = sm.MixedLM(full.endog, full.exog, groups=full.groups, exog_re=full.exog_re @ direction[:, None])
    reference, _ = converged_reference(single, False)
    worst = max(assert_rel_close(ours["coefficients"], reference.fe_params, rel=LMM_RTOL, what="coefficients"),
                assert_rel_close(values[-1], reference.cov_re[0, 0], rel=LMM_RTOL, what="variance"),
                assert_rel_close(ours["scale"], reference.scale, rel=LMM_RTOL, what="scale"),
                assert_rel_close(ours["llf"], reference.llf, rel=LMM_RTOL, what="llf"))
    SUMMARY.record("linear_mixed_model (boundary, vs rank-one model)", worst, y)
    for fit in (fit_quietly(full, reml=False), fit_quietly(full, reml=False, method=["bfgs"], gtol=1e-12,
                                                           maxiter=5000)):
        assert ours["llf"] >= dense_loglike(full, fit.fe_params, np.asarray(fit.cov_re_unscaled))


def dense_loglike(model: sm.MixedLM, beta: np.ndarray, psi: np.ndarray) -> float:
    """statsmodels' ML log-likelihood (scale profiled out) at ``beta`` and ``cov_re / scale = psi``,
    from each patient's dense ``V_i = I + Z_i psi Z_i'``: near a singular ``psi`` statsmodels' own
    ``loglike`` loses digits (it adds ``log|psi|`` to ``log|psi^-1 + Z'Z|``), this does not."""
    quadratic, logdet = 0.0, 0.0
    for endog, exog, exog_re in zip(model.endog_li, model.exog_li, model.exog_re_li):
        cov = np.eye(len(endog)) + exog_re @ psi @ exog_re.T
        resid = endog - exog @ beta
        quadratic += resid @ np.linalg.solve(cov, resid)
        logdet += np.linalg.slogdet(cov)[1]
    n = model.nobs
    return -logdet / 2 - n * np.log(quadratic) / 2 - n * np.log(2 * np.pi) / 2 + n * np.log(n) / 2 - n / 2


def test_a_node_with_too_few_patients_refuses(federation: Federation) -> None:
    """``min_row_count`` above one node's patients (but below its rows): that node refuses, naming the
    control and patients and no count, and the fit is the other two nodes' pooled one."""
    y, x = "lefthippocampus", ["subjectage"]
    raw = federation.raw
    first = raw[raw["dataset"] == DATASETS[0]].dropna(subset=[y, *x])
    patients, rows = first["subjectid"].nunique(), len(first)
    assert patients + 1 < rows  # the rule counts patients, not rows
    node = next(iter(federation.roots))
    home = NodeHome(federation.roots[node])
    default = home.settings.min_row_count
    home.set_setting("min_row_count", patients + 1)
    try:
        outcome = federation.run(request(y, x))
    finally:
        home.set_setting("min_row_count", default)
    assert set(outcome.excluded) == {node}
    reason = str(outcome.excluded[node])
    assert "min_row_count" in reason and "patients" in reason
    without_threshold = reason.replace(f"({patients + 1})", "")
    assert str(patients) not in without_threshold and str(rows) not in without_threshold
    model, _ = pooled_model(raw[raw["dataset"] != DATASETS[0]], y, x, False)
    reference, _ = converged_reference(model, True)
    assert outcome.result["n_groups"] == model.n_groups
    assert_rel_close(outcome.result["coefficients"], reference.fe_params, rel=LMM_RTOL, floor=1e-12,
                     what="coefficients")


@pytest.mark.parametrize("y, x, slope, method", [CASES[0], CASES[2]])
def test_masked_equals_plain_and_the_central_sees_only_masked_vectors(federation: Federation, y, x, slope,
                                                                      method) -> None:
    """Every reply of every round, as the central site receives it, is a masked vector (no statistic,
    no dataset name); round 0's masked vectors are far from each node's plain release and sum to the
    plain releases' sum; the masked fit equals the plain fit (1e-9) and the converged pooled MixedLM
    (1e-8), in as many rounds, every round verified by every node (ADR 0029)."""
    extra = {"random_effects": "intercept_slope", "time": TIME} if slope else {}
    doc = request(y, x, method=method, **extra)
    with recording_clients(federation.clients) as (clients, seen):
        secure = federation.run(doc, clients)
        masked = list(seen)
        seen.clear()
        plain = federation.run(doc, clients, secure_aggregation=False)
    assert secure.secure_aggregation["enabled"] is True
    assert sorted(secure.secure_aggregation["participants"]) == sorted(federation.roots)
    assert plain.secure_aggregation["enabled"] is False and not secure.excluded and not plain.excluded
    assert len(masked) == 3 * secure.rounds and secure.rounds == plain.rounds > 3
    assert_only_masked(masked, federation.roots, DATASETS)
    assert all(set(reply["aggregates"]) != {"secure_aggregation"} for _, _, reply in seen)
    assert_round_zero_is_the_plain_sum(masked, seen, "linear_mixed_model", doc, federation.model)
    for key in ("coefficients", "stderr", "cov_re", "scale", "llf", "cov_re_stderr"):
        assert_rel_close(secure.result[key], plain.result[key], rel=1e-9, floor=1e-12, what=f"masked {key}")
    model, _ = pooled_model(federation.raw, y, x, slope)
    reference, _ = converged_reference(model, method == "reml")
    worst = 0.0
    for key, expected in (("coefficients", reference.fe_params), ("stderr", reference.bse_fe),
                          ("cov_re", reference.cov_re), ("scale", reference.scale), ("llf", reference.llf)):
        worst = max(worst, assert_rel_close(secure.result[key], expected, rel=LMM_RTOL, floor=1e-12, what=key))
    SUMMARY.record("linear_mixed_model (masked)", worst, f"{'slope' if slope else 'intercept'}.{method}")


# --------------------------------------------------------------------------- a node of single-visit patients


@pytest.fixture(scope="module")
def single_visit_federation(tmp_path_factory, shared_dir: Path) -> Iterator[Federation]:
    """The three CSVs, the last node's reduced to its patients' baseline visits: one visit each."""
    source = shared_dir / "data" / FOLDER
    folder = tmp_path_factory.mktemp("lmm_single_visit_data")
    (folder / "CDEsMetadata.json").write_text((source / "CDEsMetadata.json").read_text())
    for i, dataset in enumerate(DATASETS):
        frame = pd.read_csv(source / f"{dataset}.csv", dtype=str)
        if i == len(DATASETS) - 1:
            frame = frame[frame["visitid"] == "BL"]
        frame.to_csv(folder / f"{dataset}.csv", index=False)
    model = load_data_model(folder / "CDEsMetadata.json")
    roots, raw = csv_nodes(tmp_path_factory.mktemp("lmm_single"), "node_s", folder, DATASETS, model,
                           differencing_check=0)
    for var in NUMERICAL:
        raw[var] = pd.to_numeric(raw[var])
    with served_clients(roots) as served:
        yield Federation(roots=roots, clients=list(served.values()), raw=raw, model=model)


@pytest.mark.parametrize("slope", [pytest.param(True, id="slope"), pytest.param(False, id="intercept")])
def test_a_node_of_single_visit_patients_is_named_and_the_fit_is_pooled(single_visit_federation: Federation,
                                                                         slope) -> None:
    """A random slope: the node whose patients have one visit each says so (a flag beside its masked
    aggregates, after its patients passed min_row_count), the result names it and the results page
    shows it; the fit still equals the converged pooled MixedLM.  A random intercept: no note."""
    fed = single_visit_federation
    y, x = "lefthippocampus", ["subjectage", TIME]
    single = list(fed.roots)[-1]
    assert fed.raw[fed.raw["dataset"] == DATASETS[-1]]["subjectid"].is_unique  # the data are as meant
    extra = {"random_effects": "intercept_slope", "time": TIME} if slope else {}
    outcome = fed.run(request(y, x, method="reml", **extra))
    assert not outcome.excluded and outcome.secure_aggregation["enabled"] is True
    ours = outcome.result
    if slope:
        assert ours["notes"] == [f"Node {single} {ALGO_NOTES['single_visit']}."]
        assert all(node not in ours["notes"][0] for node in list(fed.roots)[:-1])
        from mipflow.central.report.readable import result_warnings

        warnings = result_warnings({"status": "succeeded", "result": ours})
        assert [w.kind for w in warnings] == ["partial"] and single in warnings[0].text
        assert "one visit each" in warnings[0].text
    else:
        assert "notes" not in ours
    model, names = pooled_model(fed.raw, y, x, slope)
    reference, _ = converged_reference(model, True)
    assert ours["indep_vars"] == names and ours["n_groups"] == model.n_groups and ours["converged"] is True
    worst = 0.0
    for key, expected in (("coefficients", reference.fe_params), ("stderr", reference.bse_fe),
                          ("cov_re", reference.cov_re), ("scale", reference.scale), ("llf", reference.llf),
                          ("cov_re_stderr", reference.bse_re)):
        worst = max(worst, assert_rel_close(ours[key], expected, rel=LMM_RTOL, floor=1e-12, what=key))
    SUMMARY.record("linear_mixed_model (a single-visit node)", worst, "slope.reml" if slope else "intercept.reml")
