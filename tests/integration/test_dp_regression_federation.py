"""Noisy sufficient statistics through the federation (ADR 0021): real loopback nodes, one with DP on.

The DP node (Laplace, epsilon 0.5 per step, budget 1.0 per researcher) holds
40,000 stroke rows; the exact node 400.  A linear regression and a Pearson
correlation come back labelled approximate, charged in the node's ledger,
refused once the budget is spent, refused for a variable without declared
bounds, and close to the plain (pooled, statsmodels / numpy) result within a
tolerance derived from the noise scale (see :func:`first_order_sd`).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mipflow.node.home import NodeHome
from mipflow.protocol.datamodel import load_data_model
from mipflow.exceptions import FederationError
from mipflow.central.client import NodeRefused
from mipflow.central.rounds import run_analysis
from tests.nodes import PROJECT, grant_all, load_frame, pin_each_other, served_clients
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("dp_regression_federation")

EPSILON = 0.5
ROWS = {"dp_node": 40_000, "exact_node": 400}
DATASETS = {"dp_node": "hospital_a", "exact_node": "hospital_b"}
BOUNDS = {"age": (18.0, 90.0), "nihss_admission": (0.0, 42.0)}
#: How many first-order standard deviations of the noise a coefficient may be off (see first_order_sd).
K_SD = 10.0


def stroke_frame(seed: int, n: int, dataset: str) -> pd.DataFrame:
    """age = 40 + 0.8 nihss + 5 [male] + N(0, 8), kept inside the declared 18..90 (so clamping changes nothing)."""
    rng = np.random.default_rng(seed)
    nihss = rng.integers(0, 43, size=n)
    sex = rng.choice(["M", "F"], size=n)
    age = np.clip(np.round(40 + 0.8 * nihss + 5 * (sex == "M") + rng.normal(0, 8, size=n), 1), 18, 90)
    return pd.DataFrame({"subjectcode": [f"{dataset}-{i:05d}" for i in range(n)], "dataset": dataset,
                         "age": age.astype(str), "nihss_admission": nihss.astype(str), "sex": sex})


def dementia_frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame({"subjectcode": [f"d-{i:03d}" for i in range(n)], "dataset": "edsd0",
                         "minimentalstate": rng.integers(10, 31, size=n).astype(str),
                         "leftamygdala": np.round(rng.normal(0.7, 0.1, size=n), 4).astype(str)})


def request(y, x, *datasets) -> dict:
    return {"inputdata": {"data_model": "stroke:0.1", "datasets": list(datasets), "x": list(x), "y": list(y),
                          "filters": None}, "parameters": {}}


@pytest.fixture(scope="module")
def federation(tmp_path_factory, stroke_model_path, dementia_model):
    model = load_data_model(stroke_model_path)
    base = tmp_path_factory.mktemp("dpreg")
    roots, frames = {}, {}
    for seed, (name, dataset) in enumerate(DATASETS.items()):
        roots[name] = base / name
        standard_home(roots[name], name)
        frames[name] = stroke_frame(seed, ROWS[name], dataset)
        load_frame(roots[name], model, frames[name])
        for who in ("dp_alice", "dp_bob", "dp_carol"):
            grant_all(roots[name], researcher=who)
    load_frame(roots["dp_node"], dementia_model, dementia_frame(60))  # leftamygdala: no declared bounds
    home = NodeHome(roots["dp_node"])
    for key, value in (("dp_enabled", 1), ("dp_epsilon", EPSILON), ("dp_budget_epsilon", 1.0)):
        home.set_setting(key, value)
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with served_clients(roots) as clients:
        yield {"roots": roots, "frames": frames, "nodes": clients}


# --------------------------------------------------------------------------- the tolerance


def scaled_columns(frame: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """The columns as the DP node scales them: numbers to [-1, 1] over the declared range, indicators 0/1."""
    out, groups = [], []
    for name in columns:
        if name.startswith("sex["):
            out.append((frame["sex"] == name[4:-1]).to_numpy(float))
            groups.append("sex")
        else:
            lo, hi = BOUNDS[name]
            out.append((np.clip(pd.to_numeric(frame[name]).to_numpy(float), lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2))
            groups.append("")
    return np.column_stack(out), groups


def released_sums(v: np.ndarray, groups: list[str]) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The sums a DP node releases: all products of w = (1, v) except indicator x indicator of one variable."""
    g = [""] + groups
    w = np.column_stack([np.ones(len(v)), v])
    pairs = [(j, l) for j in range(len(g)) for l in range(j, len(g)) if not (g[j] and g[j] == g[l])]
    return pairs, np.array([w[:, j] @ w[:, l] for j, l in pairs])


def statistic_from_sums(pairs, sums, columns, groups, statistic):
    """``statistic(mean, m2)`` in the variables' units from released sums (an independent re-implementation)."""
    k = len(columns)
    full = np.zeros((k + 1, k + 1))
    for (j, l), s in zip(pairs, sums):
        full[j, l] = full[l, j] = s
    for j, grp in enumerate(groups, 1):
        if grp:
            full[j, j] = full[0, j]
    n, s1, s2 = full[0, 0], full[0, 1:], full[1:, 1:]
    centre = np.array([0.0 if c.startswith("sex[") else sum(BOUNDS[c]) / 2 for c in columns])
    half = np.array([1.0 if c.startswith("sex[") else (BOUNDS[c][1] - BOUNDS[c][0]) / 2 for c in columns])
    mean = s1 / n
    return statistic(centre + half * mean, (s2 - n * np.outer(mean, mean)) * np.outer(half, half))


def first_order_sd(frames, columns, statistic, l1: float) -> np.ndarray:
    """Standard deviation of ``statistic``'s error from the DP node's Laplace noise, to first order.

    Each released sum gets independent Laplace noise of scale ``b = L1 / epsilon``
    (variance ``2 b**2``); the error of a smooth statistic is to first order
    ``grad . noise``, with standard deviation ``sqrt(2) b |grad|`` (gradient by
    central differences of an independent re-implementation, at the exact sums
    of all the rows that went in).  The second-order remainder is of relative
    size ``(b / n)**2``, about 1e-7 here.  A weighted sum of independent Laplace
    variables has tails no heavier than one Laplace variable of the same
    variance, for which ``P(|error| > 10 sd) = exp(-10 sqrt(2)) < 1e-6``.
    """
    v, groups = scaled_columns(pd.concat(frames), columns)
    pairs, sums = released_sums(v, groups)
    grads = []
    for i in range(len(sums)):
        step = np.zeros(len(sums))
        step[i] = 0.5
        grads.append((statistic_from_sums(pairs, sums + step, columns, groups, statistic)
                      - statistic_from_sums(pairs, sums - step, columns, groups, statistic)) / 1.0)
    b = l1 / EPSILON
    return math.sqrt(2) * b * np.linalg.norm(np.array(grads), axis=0)


def ols(mean: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Intercept and slopes of the last column on the others, from moments."""
    beta = np.linalg.solve(m2[:-1, :-1], m2[:-1, -1])
    return np.concatenate([[mean[-1] - mean[:-1] @ beta], beta])


def plain_fit(frames) -> np.ndarray:
    pooled = pd.concat(frames)
    design = pd.DataFrame({"sex[M]": (pooled["sex"] == "M").astype(float),
                           "nihss_admission": pd.to_numeric(pooled["nihss_admission"])})
    return sm.OLS(pd.to_numeric(pooled["age"]).to_numpy(), sm.add_constant(design).to_numpy()).fit().params


# --------------------------------------------------------------------------- the tests


def ledger(federation) -> list[dict]:
    path = federation["roots"]["dp_node"] / "privacy_ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_noisy_regression_is_labelled_close_charged_and_refused_once_spent(federation):
    nodes, frames = federation["nodes"], federation["frames"]
    columns = ["sex[M]", "nihss_admission", "age"]  # the design the centre selects (F is the reference)
    l1 = 9.0  # groups: constant, sex, nihss, age -> 4 * 3 / 2 + 1 + 2 numerical diagonals (ADR 0021)

    # 1. the DP node alone: labelled, and within K_SD first-order SDs of the plain fit
    doc = request(["age"], ["nihss_admission", "sex"], "hospital_a")
    outcome = run_analysis("linear_regression", doc, [nodes["dp_node"]], researcher="dp_alice", project=PROJECT)
    block = outcome.result["privacy"]
    assert block == outcome.privacy and block["approximate"] is True and block["exact_nodes"] == []
    label = block["noisy_nodes"]["dp_node"]
    assert label["mechanism"] == "laplace" and label["epsilon"] == pytest.approx(EPSILON, rel=1e-9)
    assert label["clamped"] == {"nihss_admission": [0.0, 42.0], "age": [18.0, 90.0]}
    assert "standard errors" in block["derived"][0] and "noise" in block["derived"][0]
    result = outcome.result
    assert result["indep_vars"] == ["Intercept", "sex[M]", "nihss_admission"]
    plain = plain_fit([frames["dp_node"]])
    sd = first_order_sd([frames["dp_node"]], columns, ols, l1)
    assert np.all(sd > 0) and sd[2] < 0.01  # 40,000 rows: the nihss slope is good to about 0.005
    got = np.asarray(result["coefficients"])
    assert np.all(np.abs(got - plain) <= K_SD * sd), (got, plain, sd)
    assert not np.allclose(got, plain, rtol=1e-9, atol=0)  # the noise is there
    assert abs(result["n_obs"] - ROWS["dp_node"]) <= 20 * l1 / EPSILON  # noisy count: Laplace b = 18, e**-20

    # 2. with the exact node: the exact node is named; the pooled fit within the same kind of bound
    both = list(nodes.values())
    doc = request(["age"], ["nihss_admission", "sex"], "hospital_a", "hospital_b")
    outcome = run_analysis("linear_regression", doc, both, researcher="dp_alice", project=PROJECT)
    assert outcome.privacy["exact_nodes"] == ["exact_node"] and set(outcome.privacy["noisy_nodes"]) == {"dp_node"}
    pooled = [frames["dp_node"], frames["exact_node"]]
    got = np.asarray(outcome.result["coefficients"])
    assert np.all(np.abs(got - plain_fit(pooled)) <= K_SD * first_order_sd(pooled, columns, ols, l1))

    # 3. the ledger holds both steps; the budget (1.0) is spent: refused, nothing more charged
    entries = [e for e in ledger(federation) if e["researcher"] == "dp_alice"]
    assert [(e["algorithm"], e["mechanism"]) for e in entries] == [("linear_regression", "laplace")] * 2
    assert [e["epsilon"] for e in entries] == [pytest.approx(EPSILON, rel=1e-9)] * 2
    with pytest.raises(NodeRefused) as info:
        nodes["dp_node"].step("linear_regression", doc, 0, None, researcher="dp_alice", project=PROJECT)
    assert info.value.status == 403 and info.value.control == "dp_budget" and "spent epsilon 1" in info.value.reason
    with pytest.raises(FederationError, match="dp_budget"):
        run_analysis("linear_regression", request(["age"], ["nihss_admission"], "hospital_a"), [nodes["dp_node"]],
                     researcher="dp_alice", project=PROJECT)
    assert len([e for e in ledger(federation) if e["researcher"] == "dp_alice"]) == 2


def test_noisy_pearson_correlation_and_secure_aggregation(federation):
    nodes, frames = federation["nodes"], federation["frames"]
    doc = request(["age"], ["nihss_admission"], "hospital_a")
    outcome = run_analysis("pearson_correlation", doc, [nodes["dp_node"]], researcher="dp_bob", project=PROJECT)
    assert outcome.privacy["noisy_nodes"]["dp_node"]["epsilon"] == pytest.approx(EPSILON, rel=1e-9)
    assert "pearson_correlation" in outcome.privacy["derived"][0]
    frame = frames["dp_node"]
    plain = np.corrcoef(pd.to_numeric(frame["nihss_admission"]), pd.to_numeric(frame["age"]))[0, 1]

    def corr(mean, m2):
        return np.array([m2[0, 1] / math.sqrt(m2[0, 0] * m2[1, 1])])

    l1 = 6.0  # groups: constant, nihss, age -> 3 * 2 / 2 + 1 + 2
    sd = first_order_sd([frame], ["nihss_admission", "age"], corr, l1)[0]
    got = outcome.result["correlations"]["age"][0]
    assert abs(got - plain) <= K_SD * sd and got != pytest.approx(plain, rel=1e-9), (got, plain, sd)
    # masked and noisy together: the noisy release keeps the shape secure aggregation sums
    doc = request(["age"], ["nihss_admission", "sex"], "hospital_a", "hospital_b")
    outcome = run_analysis("linear_regression", doc, list(nodes.values()), researcher="dp_bob", project=PROJECT,
                           secure_aggregation=True)
    assert outcome.secure_aggregation["enabled"] is True and outcome.privacy["approximate"] is True
    pooled = [frames["dp_node"], frames["exact_node"]]
    sd = first_order_sd(pooled, ["sex[M]", "nihss_admission", "age"], ols, 9.0)
    assert np.all(np.abs(np.asarray(outcome.result["coefficients"]) - plain_fit(pooled)) <= K_SD * sd)


def test_a_variable_without_declared_bounds_is_refused(federation):
    node = federation["nodes"]["dp_node"]
    for algorithm, y, x in [("linear_regression", ["minimentalstate"], ["leftamygdala"]),
                            ("pearson_correlation", ["leftamygdala", "minimentalstate"], [])]:
        doc = {"inputdata": {"data_model": "dementia:0.1", "datasets": ["edsd0"], "x": x, "y": y, "filters": None},
               "parameters": {}}
        with pytest.raises(NodeRefused) as info:
            node.step(algorithm, doc, 0, None, researcher="dp_carol", project=PROJECT)
        assert info.value.status == 403 and info.value.control == "dp_unsupported"
        assert "'leftamygdala' has no declared minValue and maxValue" in info.value.reason
    assert not [e for e in ledger(federation) if e["researcher"] == "dp_carol"]  # nothing charged
