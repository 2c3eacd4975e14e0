"""K-means: federated Lloyd == pooled Lloyd, and what a node refuses to release.

The pooled references start from the same initial centres, computed from the
pooled rows with numpy (:func:`principal_axis_centres` of ``np.mean`` /
``np.cov``): a plain numpy Lloyd loop with the same stopping rule, and
scikit-learn's ``KMeans(init=centres, n_init=1, algorithm="lloyd")`` with its
variance-relative ``tol`` set to the equivalent of mipflow's absolute one
(``tol_sklearn = tol**2 / mean(var(X))``: sklearn compares the squared
Frobenius shift with ``tol_sklearn * mean(var(X))``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats
from sklearn.cluster import KMeans as SkKMeans

from mipflow.algorithms import get_algorithm, run_in_process
from mipflow.algorithms.kmeans import principal_axis_centres
from mipflow.node.home import NodeSettings
from mipflow.node.controls.disclosure import DisclosureControls
from mipflow.exceptions import DisclosureError, RequestError
from tests.mipflow.algorithms.helpers import EXACT_RTOL, POOLED_SUMMARY, assert_rel_close
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request
from tests.mipflow.algorithms.test_federated_vs_pooled import SETTINGS, split_data

VARIABLES = ("x1", "y", "x2")  # real variables only (ADR 0050)


def numpy_lloyd(values: np.ndarray, centres: np.ndarray, tol: float, maxiter: int) -> dict:
    """Lloyd's algorithm on pooled rows, Exareme2's stopping rule; empty clusters keep their centre."""
    centres = centres.copy()
    had_empty = False
    iteration, converged = 0, False
    for iteration in range(1, maxiter + 1):
        labels = ((values[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        new = centres.copy()
        for j in range(len(centres)):
            members = values[labels == j]
            if len(members):
                new[j] = members.mean(axis=0)
            else:
                had_empty = True
        shift = np.linalg.norm(new - centres)
        centres = new
        if shift <= tol:
            converged = True
            break
    dist = ((values[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    labels = dist.argmin(axis=1)
    return {"centers": centres, "n_iter": iteration, "converged": converged, "had_empty": had_empty,
            "counts": np.bincount(labels, minlength=len(centres)), "inertia": dist.min(axis=1).sum()}


def record(what: str, actual, expected, floor: float = 1e-12) -> None:
    worst = assert_rel_close(actual, expected, rel=EXACT_RTOL, floor=floor, what=f"kmeans.{what}")
    POOLED_SUMMARY.record("kmeans", worst, what)


@SETTINGS
@given(split_data(min_rows=30, max_rows=200), st.integers(1, 6), st.sampled_from([0.0, 1e-6, 1e-3, 0.05]),
       st.integers(1, 40), st.integers(1, 3))
def test_federated_lloyd_equals_pooled_lloyd(split, k, tol, maxiter, n_vars) -> None:
    data, nodes = split
    variables = VARIABLES[:n_vars]
    req = request(y=variables, k=k, tol=tol, maxiter=maxiter)
    pooled = data.dropna(subset=list(variables))[list(variables)].to_numpy(dtype=float)
    if len(pooled) < k:
        with pytest.raises(RequestError, match="needs at least"):
            run_in_process(get_algorithm("kmeans"), nodes, req, MODEL)
        return
    ours = run_in_process(get_algorithm("kmeans"), nodes, req, MODEL)
    start = principal_axis_centres(pooled.mean(axis=0), np.atleast_2d(np.cov(pooled, rowvar=False)), k)
    record("initial_centers", ours["initial_centers"], start)
    ref = numpy_lloyd(pooled, start, tol, maxiter)
    assert ours["n_obs"] == len(pooled)
    if tol > 0:
        # with tol = 0 "converged" means a shift of exactly 0.0, which is decided by the last
        # bit of the summation order (np.mean of a copy vs of the pooled array): not comparable
        assert (ours["n_iter"], ours["converged"]) == (ref["n_iter"], ref["converged"])
    assert ours["cluster_counts"] == ref["counts"].tolist()
    record("centers", ours["centers"], ref["centers"])
    record("inertia", ours["inertia"], ref["inertia"])
    if ref["had_empty"]:
        return  # scikit-learn relocates an empty cluster onto a far row; mipflow keeps its centre
    scale = float(np.mean(np.var(pooled, axis=0)))
    assume(scale > 0)
    sk = SkKMeans(n_clusters=k, init=start, n_init=1, algorithm="lloyd", max_iter=maxiter,
                  tol=tol ** 2 / scale).fit(pooled)
    record("centers_vs_sklearn", ours["centers"], sk.cluster_centers_)
    record("inertia_vs_sklearn", ours["inertia"], sk.inertia_)
    if tol > 0:
        assert ours["n_iter"] == sk.n_iter_


def test_initial_centres_lie_on_the_principal_axis() -> None:
    """The initialisation uses the mean and covariance only: moving one row's value changes
    the centres only through those, and no centre equals a row."""
    data = make_data(3, 120).dropna(subset=["x1", "y"])
    values = data[["x1", "y"]].to_numpy()
    centres = principal_axis_centres(values.mean(axis=0), np.cov(values, rowvar=False), 4)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(values, rowvar=False))
    offsets = centres - values.mean(axis=0)
    # every offset is parallel to the first eigenvector, in increasing order along it
    along = offsets @ eigenvectors[:, -1]
    assert_rel_close(np.abs(offsets), np.abs(np.outer(along, eigenvectors[:, -1])), floor=1e-12)
    assert np.all(np.diff(along) > 0)
    # the outer slices' centres sit at the normal quantiles 1/8 and 7/8 of that axis
    assert_rel_close(along[-1], stats.norm.ppf(7 / 8) * np.sqrt(eigenvalues[-1]), rel=1e-12)
    assert_rel_close(along[0], stats.norm.ppf(1 / 8) * np.sqrt(eigenvalues[-1]), rel=1e-12)
    assert not any(np.any(np.all(np.isclose(values, c), axis=1)) for c in centres)


# --------------------------------------------------------------------------- disclosure

def _outlier_node() -> pd.DataFrame:
    """30 patients around (0, 0) and one outlier patient at (40, 40)."""
    rng = np.random.default_rng(1)
    rows = rng.normal(0.0, 1.0, size=(30, 2))
    return pd.DataFrame(np.vstack([rows, [[40.0, 40.0]]]), columns=["x1", "y"])


def test_a_one_patient_cluster_is_refused_by_the_node() -> None:
    algo = get_algorithm("kmeans")
    req = request(y=("x1", "y"), k=2, maxiter=10)
    state = {"k": 2, "centers": [[0.0, 0.0], [40.0, 40.0]], "iteration": 0, "final": False}
    aggregates = algo.local_step(1, _outlier_node(), req, MODEL, state)
    # what the node computed: the outlier alone in cluster 1, its sum is its row
    assert aggregates["group_n"] == [30, 1]
    assert aggregates["deviation_sums"][1] == [0.0, 0.0]
    settings = NodeSettings()
    assert settings.nfilter_tab < settings.min_row_count
    # a cluster of 1, and of nfilter_tab to min_row_count - 1 patients (ADR 0050), is refused
    for extra in (0, settings.nfilter_tab - 1, settings.min_row_count - 2):
        near = pd.DataFrame([[40.0 - 0.1 * i, 40.0] for i in range(1, extra + 1)], columns=["x1", "y"])
        rows = pd.concat([_outlier_node(), near])
        aggregates = algo.local_step(1, rows, req, MODEL, state)
        assert aggregates["group_n"] == [30, 1 + extra]
        with pytest.raises(DisclosureError) as refused:
            DisclosureControls(settings).release(algo, req, MODEL, 1, aggregates)
        assert refused.value.control == "min_row_count" and "min_row_count (10)" in str(refused.value)
    # min_row_count patients in the small cluster pass
    near = pd.DataFrame([[40.0 - 0.1 * i, 40.0] for i in range(1, settings.min_row_count)], columns=["x1", "y"])
    released = DisclosureControls(settings).release(
        algo, req, MODEL, 1, algo.local_step(1, pd.concat([_outlier_node(), near]), req, MODEL, state))
    assert released["group_n"] == [30, settings.min_row_count]


def test_exareme2_initialisation_needs_raw_extremes() -> None:
    algo = get_algorithm("kmeans")
    req = request(y=("x1", "y"), k=2, init="exareme2")
    aggregates = algo.local_step(0, _outlier_node(), req, MODEL, None)
    with pytest.raises(DisclosureError) as refused:
        DisclosureControls(NodeSettings()).release(algo, req, MODEL, 0, aggregates)
    assert refused.value.control == "raw_extremes"
    # the default initialisation releases moments only
    default = algo.local_step(0, _outlier_node(), request(y=("x1", "y"), k=2), MODEL, None)
    assert set(default) == {"n", "moments"}
    DisclosureControls(NodeSettings()).release(algo, req, MODEL, 0, default)


@pytest.mark.parametrize("parameters, message", [
    pytest.param({"k": 0}, "below its minimum", id="k-zero"),
    pytest.param({"k": 101}, "above its maximum", id="k-too-large"),
    pytest.param({"init": "random"}, "is not one of", id="unknown-init"),
    pytest.param({"tol": 2.0}, "above its maximum", id="tol-too-large"),
    pytest.param({"maxiter": 0}, "below its minimum", id="maxiter-zero"),
])
def test_bad_parameters_are_request_errors(parameters, message) -> None:
    with pytest.raises(RequestError, match=message):
        get_algorithm("kmeans").validate(request(y=("x1",), **parameters), MODEL)


def test_nominal_variables_and_covariates_are_refused() -> None:
    with pytest.raises(RequestError, match="numerical"):
        get_algorithm("kmeans").validate(request(y=("grp",)), MODEL)
    with pytest.raises(RequestError, match="takes no covariates"):
        get_algorithm("kmeans").validate(request(y=("x1",), x=("x2",)), MODEL)


@pytest.mark.parametrize("y", [
    pytest.param(("age",), id="integer"),
    pytest.param(("score",), id="integer-with-declared-range"),
    pytest.param(("x1", "age"), id="integer-beside-a-real"),
    pytest.param(("stage",), id="integer-coded-categorical"),
])
def test_variables_not_declared_real_are_refused_from_the_request(y) -> None:
    """ADR 0050: decided from the request and the data model alone (no row), saying why and what instead."""
    with pytest.raises(RequestError) as refused:
        get_algorithm("kmeans").validate(request(y=y, k=2), MODEL)
    message = str(refused.value)
    assert "of type real" in message and "multiple_histograms" in message
    get_algorithm("kmeans").validate(request(y=("x1", "x2"), k=2), MODEL)  # real variables pass


# --------------------------------------------------------------------------- privacy stop (ADR 0020)

DIFFERENCING = ("differencing", "a cluster differs from a cluster this node already released ...")


def _drive(frames: list[pd.DataFrame], req, rounds: int) -> tuple[dict, dict | None]:
    """The state and central memo after ``rounds`` global steps, as the central side holds them."""
    from mipflow.algorithms.local import prepare_local_data
    from mipflow.protocol.wire import transport

    alg = get_algorithm("kmeans")
    local = [prepare_local_data(alg, f, req) for f in frames]
    state, memo = None, None
    for round_no in range(rounds):
        aggregates = [transport(alg.local_step(round_no, f, req, MODEL, transport(state))) for f in local]
        step = alg.global_step(round_no, aggregates, req, MODEL, state)
        assert not step.done
        state, memo = transport(step.state), step.memo
    return state, memo


def _split() -> tuple[list[pd.DataFrame], np.ndarray]:
    data = make_data(7, 600)
    frames = [data.iloc[:200], data.iloc[200:450], data.iloc[450:]]
    return frames, data.dropna(subset=["x1", "y"])[["x1", "y"]].to_numpy(dtype=float)


def test_a_differencing_refusal_after_an_update_stops_on_the_last_released_round() -> None:
    frames, pooled = _split()
    req = request(y=("x1", "y"), k=3, maxiter=100, tol=1e-12)
    state, memo = _drive(frames, req, 4)  # moments + 3 Lloyd rounds: centres after 3 updates
    assert state["iteration"] == 3 and not state["final"]
    step = get_algorithm("kmeans").on_refusal(4, {"n2": DIFFERENCING, "n1": DIFFERENCING}, req, MODEL, state, memo)
    assert step is not None and step.done
    result = step.result
    # pooled Lloyd from the same start: the last released assignment is the one at the centres after 2 updates
    centres = principal_axis_centres(pooled.mean(axis=0), np.cov(pooled, rowvar=False), 3)
    for _ in range(3):
        labels = ((pooled[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        centres = np.array([pooled[labels == j].mean(axis=0) for j in range(3)])
    assert_rel_close(result["centers"], centres, rel=EXACT_RTOL)
    assert result["cluster_counts"] == np.bincount(labels, minlength=3).tolist()
    within = np.bincount(labels, weights=((pooled - centres[labels]) ** 2).sum(axis=1), minlength=3)
    assert_rel_close(result["within_ss"], within, rel=EXACT_RTOL)
    assert_rel_close(result["inertia"], within.sum(), rel=EXACT_RTOL)
    assert (result["n_iter"], result["converged"], result["approximate"]) == (3, False, True)
    assert result["inertia_of"] == "last released assignment"
    assert result["stopped"] == {**result["stopped"], "reason": "privacy", "control": "differencing", "round": 4,
                                 "nodes": ["n1", "n2"]}
    assert "Lloyd update 4" in result["stopped"]["message"] and "after 3 update(s)" in result["stopped"]["message"]
    # the reported inertia bounds that of the nearest-centre assignment at the final centres
    nearest = ((pooled[:, None, :] - centres[None]) ** 2).sum(axis=2).min(axis=1).sum()
    assert result["inertia"] >= nearest * (1 - 1e-12)


def test_a_refused_evaluation_round_keeps_the_convergence_verdict() -> None:
    frames, _ = _split()
    req = request(y=("x1", "y"), k=2, maxiter=100, tol=0.5)
    rounds = 2
    while not (state := _drive(frames, req, rounds)[0])["final"]:
        rounds += 1
    state, memo = _drive(frames, req, rounds)
    assert state["converged"] is True
    result = get_algorithm("kmeans").on_refusal(rounds, {"n1": DIFFERENCING}, req, MODEL, state, memo).result
    assert result["converged"] is True and result["approximate"] is True
    assert result["stopped"]["message"].startswith("Stopped before the evaluation round at the final centres")


@pytest.mark.parametrize("refusals, rounds", [
    ({"n1": DIFFERENCING}, 1),  # the first Lloyd round: no update yet, nothing to stop at
    ({"n1": ("nfilter_tab", "a cluster holds fewer than nfilter_tab rows")}, 3),
    ({"n1": DIFFERENCING, "n2": ("access", "no grant")}, 3),  # not all of them differencing
    ({"n1": ("query_budget", "over budget")}, 3),
])
def test_other_refusals_leave_the_node_out_as_before(refusals, rounds) -> None:
    frames, _ = _split()
    req = request(y=("x1", "y"), k=3, maxiter=100, tol=1e-12)
    state, memo = _drive(frames, req, rounds)
    assert get_algorithm("kmeans").on_refusal(rounds, refusals, req, MODEL, state, memo) is None


def test_the_default_hook_leaves_refusing_nodes_out() -> None:
    alg = get_algorithm("linear_regression")
    assert alg.on_refusal(1, {"n1": DIFFERENCING}, request(x=("x1",), y=("y",)), MODEL, {}, {}) is None
