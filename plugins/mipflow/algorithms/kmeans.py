"""K-means clustering by federated Lloyd iterations.

Round 0: every node sends the count, means and centred co-moment matrix of
its complete-case rows of ``y`` (:mod:`mipflow.algorithms.moments`).  The
central side merges them into the pooled mean and covariance and places the
``k`` initial centres on the first principal axis (:func:`principal_axis_centres`):
no row is ever chosen as a seed, so the initialisation reveals nothing the
pooled mean and covariance do not.

Rounds 1, 2, ...: the state carries the current centres.  Each node assigns
its rows to the nearest centre (squared Euclidean distance, ties to the
lower index) and returns, per cluster, the row count (``group_n``), the sum
of the rows' deviations from that cluster's centre and the within-cluster sum
of squares about it.  The central side moves each centre by the pooled mean
deviation (an empty cluster keeps its centre) and stops when the Frobenius
norm of the centre shift is at most ``tol`` (Exareme2's absolute rule, not
scikit-learn's variance-relative one) or after ``maxiter`` updates.  One
more round evaluates the cluster sizes and the inertia (within-cluster sum
of squares) at the final centres.

Given the same initial centres the iterates are those of Lloyd's algorithm
on the pooled rows (the node split changes only the summation order).

Disclosure: a cluster is the rows in a range of values the data choose (in
one dimension an interval between midpoints of centres), released with its
count, sum and sum of squares: three moments, which pin the rows of a cluster
of few rows or the per-value counts of one spanning few distinct values (an
outside review recovered NIHSS's whole frequency table and its maximum this
way, ADR 0050).  So the variables must be declared real (``y_spec``: an
integer variable is refused from the request and the data model alone, before
any row is read), and every released cluster holds at least ``min_row_count``
rows (``group_count_setting``; counts travel under ``group_n``, and a node's
controls refuse the step when a cluster has ``0 < n < min_row_count`` rows
there); the central side then leaves the node out (``excluded`` in the
outcome, with the reason) and restarts on the others.  A study protocol with
k-means is approved only if no three neighbouring distinct values of a real
study variable hold ``min_row_count`` rows (:mod:`mipflow.node.controls.study_cells`).
See ``docs/adr/0009-kmeans-initialisation.md`` and ``0050-kmeans-real-variables.md``.

Privacy stop (:meth:`KMeans.on_refusal`, ``docs/adr/0020-kmeans-privacy-stop.md``):
a node also refuses (control ``differencing``, ADR 0013) a round whose
assignment, together with one it released, would let a combination of cluster
sums single out ``0 < d < min_row_count`` rows (a minimum cut of the two
assignments' graph below the cluster threshold ``group_count_setting``, ADR 0050),
which Lloyd rounds near convergence can do on large data, or whose clusters
are a few rows from a cohort or group the node released before (the group
memory and the chain rule, ADR 0051 amended: clusters are released groups).
Such a refusal after at least one update ends the analysis instead of
excluding the node: the result holds the centres of the last update, the
cluster sizes of the last released assignment and that assignment's
within-cluster sums of squares about those centres (``W_j - |s_j|^2 / n_j``
from its released ``within_ss`` ``W_j`` and deviation sums ``s_j``, exact
algebra), flagged ``approximate`` with ``stopped`` and ``inertia_of``.

Rows on disk (``streams_rows``, ADR 0062 amendment 12): at a node without DP or explore mode the rows stay on
disk and every round reads them :data:`ASSIGN_BLOCK` rows at a time; the releases are the frame's bit for bit
(:func:`streamed_cluster_aggregates`), and the node derives the same assignment and clusters from them.

``init = "exareme2"`` reproduces Exareme2's own initialisation for its
validation suite: centres drawn uniformly (``RandomState(123)``) between the
pooled per-column minima and maxima, and an empty cluster's centre reset to
the origin.  It needs raw extremes, which nodes refuse unless their admin set
``release_extremes``.

Secure aggregation (``docs/adr/0014-secure-aggregation.md``): every quantity
of the default initialisation and of the Lloyd rounds is a sum (row counts,
moments, per-cluster counts, deviation sums and within-cluster sums of
squares), so the nodes can mask them and the central side steps on their
sum.  ``init = "exareme2"`` cannot: a sum of per-node minima is not the pooled
minimum (:meth:`KMeans.secure_aggregation_refusal`).
"""
from __future__ import annotations

import json
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.design import numeric_values
from mipflow.algorithms.moments import merge_moment_dicts
from mipflow.algorithms.prepared import memo
from mipflow.algorithms.spec import NUMERICAL, InputSpec, ParamSpec, SpecAlgorithm
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

#: Initialisation schemes: aggregate-only (default) and Exareme2's (needs raw extremes).
INITS = ("pca", "exareme2")
#: Seed of Exareme2's uniform initialisation.
EXAREME2_SEED = 123
#: Rows per block in :func:`assign`.
ASSIGN_BLOCK = 16_384


def principal_axis_centres(mean: np.ndarray, cov: np.ndarray, k: int) -> np.ndarray:
    """Deterministic initial centres from the pooled mean and covariance only.

    Centre ``i`` (``i = 0 .. k-1``) is ``mean + z_i * sqrt(lambda_1) * v_1``,
    with ``lambda_1, v_1`` the largest eigenvalue and its eigenvector of
    ``cov`` and ``z_i = Phi^-1((i + 1/2) / k)`` the standard normal quantiles
    that split the axis into ``k`` equally likely slices.  The eigenvector's
    sign is fixed (its largest-magnitude component positive), so the centres
    come out in increasing order along the axis.

    Parameters
    ----------
    mean : numpy.ndarray, shape (d,)
    cov : numpy.ndarray, shape (d, d)
        Covariance matrix (any positive scaling of it gives other spreads;
        use the ``ddof=1`` sample covariance).
    k : int
        Number of centres.

    Returns
    -------
    numpy.ndarray, shape (k, d)
    """
    from scipy import stats

    mean = np.asarray(mean, dtype=float)
    cov = np.atleast_2d(np.asarray(cov, dtype=float))
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    axis = eigenvectors[:, -1]
    if axis[np.argmax(np.abs(axis))] < 0:
        axis = -axis
    spread = float(np.sqrt(max(eigenvalues[-1], 0.0)))
    z = stats.norm.ppf((np.arange(k) + 0.5) / k)
    return mean + np.outer(z * spread, axis)


def assign(columns: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of each row and the squared distance to it.

    Parameters
    ----------
    columns : numpy.ndarray, shape (d, n)
        The rows' values, one variable per row of the array (column-major rows).
    centres : numpy.ndarray, shape (k, d)

    Returns
    -------
    labels : numpy.ndarray of int, shape (n,)
        Index of the nearest centre (the lowest index on a tie).
    distances : numpy.ndarray, shape (n,)
        Squared Euclidean distance to that centre, summed over the variables in order.
    """
    d, n = columns.shape
    best = np.empty(n)
    labels = np.zeros(n, dtype=np.intp)
    dist, term, closer = np.empty(ASSIGN_BLOCK), np.empty(ASSIGN_BLOCK), np.empty(ASSIGN_BLOCK, dtype=bool)
    for lo in range(0, n, ASSIGN_BLOCK):  # blocks small enough for the temporaries to stay in cache
        hi = min(n, lo + ASSIGN_BLOCK)
        block_best, block_labels = best[lo:hi], labels[lo:hi]
        block_dist, block_term, block_closer = dist[:hi - lo], term[:hi - lo], closer[:hi - lo]
        for j, centre in enumerate(centres):
            block_dist.fill(0.0)
            for a in range(d):
                np.subtract(columns[a, lo:hi], centre[a], out=block_term)
                np.multiply(block_term, block_term, out=block_term)
                block_dist += block_term
            if j == 0:
                block_best[:] = block_dist
                continue
            np.less(block_dist, block_best, out=block_closer)
            np.copyto(block_labels, j, where=block_closer)
            np.minimum(block_best, block_dist, out=block_best)
    return labels, best


def _disk_blocks(source: Any, request: AnalysisRequest) -> Iterator[np.ndarray]:
    """The ``y`` columns of rows on disk, :data:`ASSIGN_BLOCK` rows at a time, each block shape (d, m)."""
    n = len(source)
    next_rows = source.reader(list(request.y)) if n else None
    for start in range(0, n, ASSIGN_BLOCK):
        values = next_rows(min(ASSIGN_BLOCK, n - start))  # type: ignore[misc]
        yield np.vstack([np.asarray(v, dtype=float) for v in values])


def _extremes(data: Any, request: AnalysisRequest) -> tuple[list[float], list[float]]:
    """Per-column minima and maxima of the ``y`` columns (a frame's, or rows on disk a block at a time)."""
    if not hasattr(data, "reader"):
        values = _columns(data, request)
        return values.min(axis=1).tolist(), values.max(axis=1).tolist()
    low = high = None
    for block in _disk_blocks(data, request):
        low = block.min(axis=1) if low is None else np.minimum(low, block.min(axis=1))
        high = block.max(axis=1) if high is None else np.maximum(high, block.max(axis=1))
    return low.tolist(), high.tolist()  # type: ignore[union-attr]


def streamed_cluster_aggregates(source: Any, request: AnalysisRequest, centres: np.ndarray) -> dict:
    """:func:`cluster_aggregates` of the ``y`` columns of rows on disk, read :data:`ASSIGN_BLOCK` rows at a
    time, bit for bit: ``np.bincount`` adds each cluster's weights one row after another in the rows' order,
    and ``np.add.at`` into the running totals does the same additions in the same order, block after block.
    Memory: a block (d x ASSIGN_BLOCK floats) and its labels and distances."""
    k, d = centres.shape
    counts = np.zeros(k, dtype=np.int64)
    sums, within = np.zeros((k, d)), np.zeros(k)
    for block in _disk_blocks(source, request):
        labels, distances = assign(block, centres)
        counts += np.bincount(labels, minlength=k)
        for a in range(d):
            column = np.ascontiguousarray(sums[:, a])
            np.add.at(column, labels, block[a] - centres[:, a][labels])
            sums[:, a] = column
        np.add.at(within, labels, distances)
    return {"group_n": counts.tolist(), "deviation_sums": sums.tolist(), "within_ss": within.tolist()}


def cluster_aggregates(columns: np.ndarray, centres: np.ndarray) -> dict:
    """Per-cluster count, deviation sum and sum of squares about the given centres.

    Parameters
    ----------
    columns : numpy.ndarray, shape (d, n)
    centres : numpy.ndarray, shape (k, d)

    Returns
    -------
    dict
        ``group_n`` (k counts), ``deviation_sums`` (k x d sums of ``x - c_j``
        over the rows nearest ``c_j``) and ``within_ss`` (k sums of
        ``||x - c_j||^2``).
    """
    k, d = centres.shape
    labels, distances = assign(columns, centres)
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, d))
    for a in range(d):
        deviation = columns[a] - centres[:, a][labels]
        sums[:, a] = np.bincount(labels, weights=deviation, minlength=k)
    # float even without rows (bincount of no weights is integer): the layout may not depend on the data
    within = np.bincount(labels, weights=distances, minlength=k).astype(float)
    return {"group_n": counts.tolist(), "deviation_sums": sums.tolist(), "within_ss": within.tolist()}


class KMeans(SpecAlgorithm):
    name = "kmeans"
    label = "K-Means"
    description = ("Federated Lloyd iterations from centres on the pooled first principal axis: centres, "
                   "cluster sizes and inertia.")
    # Real variables only, as Exareme2's spec (ADR 0050): a cluster's count, sum and sum of squares over
    # a range of an integer variable's values solve to each value's count and to the extremes.
    y_spec = InputSpec(types=("real",), stattypes=(NUMERICAL,), notblank=True, multiple=True,
                       label="Variables", description="The real-valued variables to cluster on.",
                       why=("k-means releases each cluster's row count, sum and sum of squares over a range of "
                            "values chosen by the data, which on a variable of whole numbers solve to the count "
                            "of each value and to its extremes (docs/adr/0050-kmeans-real-variables.md); for "
                            "an integer variable ask for a histogram (multiple_histograms, on the study's bins "
                            "in a study) or descriptive statistics, or use explore mode"))
    # every released cluster holds min_row_count rows, not only nfilter_tab (ADR 0050)
    group_count_setting = "min_row_count"
    small_group_hint = ("kmeans checks, at each node, the rows of each cluster (their count, sums and squares are "
                        "released): ask fewer clusters (k), or select more rows (a wider filter, more datasets).")
    x_spec = None
    parameter_specs = MappingProxyType({
        "k": ParamSpec(types=("int",), default=4, notblank=True, min=1, max=100, label="Clusters (k)",
                       description="The number of clusters."),
        # Exareme2's defaults (1 iteration, tol 0.01) stop before Lloyd's algorithm converges; these
        # are the values of Exareme2's own validation requests (ADR 0022).
        "maxiter": ParamSpec(types=("int",), default=100, notblank=True, min=1, max=100,
                             label="Maximum iterations",
                             description="The most Lloyd updates (one federated round each); Exareme2's "
                                         "spec defaults to 1."),
        "tol": ParamSpec(types=("real",), default=0.0001, notblank=True, min=0.0, max=1.0, label="Tolerance",
                         description="Stop when the Frobenius norm of the centre shift is at most this "
                                     "(in the variables' units); Exareme2's spec defaults to 0.01."),
        # mipflow addition: how the centres start (see the module docstring).
        "init": ParamSpec(types=("text",), default="pca", enums=INITS, label="Initial centres",
                          description="pca: on the pooled first principal axis (no row is a seed); "
                                      "exareme2: Exareme2's, which needs release_extremes at the nodes "
                                      "(docs/adr/0009-kmeans-initialisation.md)."),
    })

    def secure_aggregation_refusal(self, request: AnalysisRequest) -> str | None:
        """Why this request cannot run under secure aggregation (``None``: it can)."""
        if str(request.parameters.get("init") or "pca") == "exareme2":
            return "init 'exareme2' needs each node's minima and maxima, which are not sums (use init 'pca')"
        return None

    # -- local ------------------------------------------------------------------

    #: Its rounds' sufficient statistics are sums: at a node without DP or explore mode its rows stay on disk,
    #: read a block at a time (ADR 0062, amendment 12); the node derives its clusters from the snapshot's keys.
    streams_rows = True
    #: Its Lloyd rounds release a partition of the rows (``differencing_partition``): on rows on disk the node
    #: reads their keys in order for it (``cluster_groups.with_step_order``).
    releases_partitions = True

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        from mipflow.algorithms.streamed import moments_of, on_disk

        disk = on_disk(data)
        d = len(request.y)
        if state is None:
            n = len(data)
            out: dict = {"n": n, "moments": moments_of(data, request.y, matrix=True).to_dict()}
            if self.params(request, model)["init"] == "exareme2":
                # raw extremes: the node's controls refuse these unless release_extremes is on
                low, high = _extremes(data, request) if n else (None, None)
                out["min"], out["max"] = low, high
            return out
        centres = np.asarray(state["centers"], dtype=float)
        if centres.shape != (int(state["k"]), d):
            raise RequestError(f"kmeans state holds centres of shape {centres.shape}, "
                               f"expected ({state['k']}, {d})")
        if disk:
            return {"n": len(data), **streamed_cluster_aggregates(data, request, centres)}
        return {"n": len(data), **cluster_aggregates(_columns(data, request), centres)}

    # -- global -----------------------------------------------------------------

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        n = sum(int(a["n"]) for a in aggregates)
        if state is None:
            return Step(done=False, state=self._start(aggregates, n, params, request))
        centres = np.asarray(state["centers"], dtype=float)
        k, d = centres.shape
        counts = np.sum([np.asarray(a["group_n"], dtype=float) for a in aggregates], axis=0)
        sums = np.sum([np.asarray(a["deviation_sums"], dtype=float).reshape(k, d) for a in aggregates], axis=0)
        within = np.sum([np.asarray(a["within_ss"], dtype=float) for a in aggregates], axis=0)
        if state["final"]:
            return Step(done=True, result=self._result(request, params, state, n, counts, within))

        new = centres.copy()
        filled = counts > 0
        new[filled] = centres[filled] + sums[filled] / counts[filled, None]
        if params["init"] == "exareme2":
            new[~filled] = 0.0  # Exareme2 resets an empty cluster's centre to the origin
        shift = float(np.linalg.norm(new - centres))
        iteration = int(state["iteration"]) + 1
        converged = shift <= params["tol"]
        # this round's pooled partition, kept centrally for on_refusal (never sent to the nodes)
        memo = {"n": n, "group_n": counts.tolist(), "deviation_sums": sums.tolist(), "within_ss": within.tolist()}
        return Step(done=False, memo=memo, state={
            **state, "centers": new.tolist(), "iteration": iteration, "shift": shift,
            "converged": converged, "final": converged or iteration >= params["maxiter"],
        })

    def on_refusal(self, round: int, refusals: Mapping[str, tuple[str, str]], request: AnalysisRequest,
                   model: DataModel, state: dict | None, memo: dict | None) -> Step | None:
        """Stop at privacy-limited convergence (ADR 0020) when the differencing control refuses a Lloyd round.

        Only when every refusal is the ``differencing`` control and at least one
        update has been made (a Lloyd round after the first, or the evaluation
        round): the node's own memory says that the assignment at the current
        centres and one it released would let a combination of cluster sums
        single out fewer rows than a released cluster holds (``min_row_count``, ADR 0050).  Any other refusal (or one in the first Lloyd round,
        which has no earlier assignment of this analysis to stop at) returns
        None: the node is left out as before.

        The result uses the aggregates of the round before only: the centres
        ``c_j`` of the last update, the sizes ``n_j`` of the assignment that
        round released (rows nearest the previous centres ``p_j``) and its
        within-cluster sums of squares about ``c_j``,
        ``W_j - |s_j|^2 / n_j`` (``W_j`` about ``p_j``, ``s_j`` the deviation
        sum, ``c_j = p_j + s_j / n_j``).  That is an upper bound of the inertia
        of the nearest-centre assignment at ``c_j`` (Lloyd's monotonicity).
        """
        if (state is None or memo is None or int(state.get("iteration") or 0) < 1
                or not refusals or any(control != "differencing" for control, _ in refusals.values())):
            return None
        params = self.params(request, model)
        centres = np.asarray(state["centers"], dtype=float)
        k, d = centres.shape
        counts = np.asarray(memo["group_n"], dtype=float)
        sums = np.asarray(memo["deviation_sums"], dtype=float).reshape(k, d)
        within = np.asarray(memo["within_ss"], dtype=float)
        filled = counts > 0
        # sum over cluster j of |x - c_j|^2 = W_j - n_j |c_j - p_j|^2 = W_j - |s_j|^2 / n_j
        within[filled] -= np.einsum("ij,ij->i", sums[filled], sums[filled]) / counts[filled]
        within = np.maximum(within, 0.0)  # rounding only: the exact value is >= 0
        nodes = sorted(refusals)
        iteration = int(state["iteration"])
        what = ("the evaluation round at the final centres" if state.get("final")
                else f"Lloyd update {iteration + 1}")
        result = self._result(request, params, state, int(memo["n"]), counts, within)
        result.update(json_ready({
            "approximate": True,
            "inertia_of": "last released assignment",
            "last_shift": state.get("shift"),
            "stopped": {
                "reason": "privacy", "control": "differencing", "round": round, "nodes": nodes,
                "message": (
                    f"Stopped before {what}: node(s) {', '.join(nodes)} refused it under the differencing "
                    f"control (its assignment to these centres and one the node already released, or a cluster "
                    f"of it and a cohort or group the node released before, would let a combination of sums "
                    f"single out fewer rows than a released cluster holds, min_row_count). The centres are those after {iteration} update(s); cluster_counts, within_ss "
                    f"and inertia are those of the last released assignment (rows nearest the centres "
                    f"before), about these centres."),
            },
        }))
        return Step(done=True, result=result)

    @staticmethod
    def _start(aggregates: list[dict], n: int, params: dict, request: AnalysisRequest) -> dict:
        k = params["k"]
        if n == 0:
            raise RequestError("no complete rows to cluster")
        if n < k:
            raise RequestError(f"kmeans with k={k} needs at least {k} rows, got {n}")
        if params["init"] == "exareme2":
            lows = [a["min"] for a in aggregates if a.get("min") is not None]
            highs = [a["max"] for a in aggregates if a.get("max") is not None]
            rng = np.random.RandomState(seed=EXAREME2_SEED)
            centres = rng.uniform(low=np.min(lows, axis=0), high=np.max(highs, axis=0),
                                  size=(k, len(request.y)))
        else:
            moments = merge_moment_dicts(a["moments"] for a in aggregates)
            cov = moments.m2 / (n - 1) if n > 1 else np.zeros_like(moments.m2)
            centres = principal_axis_centres(moments.mean, cov, k)
        return {"k": k, "centers": centres.tolist(), "initial_centers": centres.tolist(),
                "iteration": 0, "shift": None, "converged": False, "final": False}

    @staticmethod
    def _result(request: AnalysisRequest, params: dict, state: dict, n: int,
                counts: np.ndarray, within: np.ndarray) -> dict:
        return json_ready({
            "title": "K-Means Centers",
            "variables": list(request.y),
            "n_obs": n,
            "centers": state["centers"],
            "cluster_counts": counts.astype(int),
            "within_ss": within,
            "inertia": float(within.sum()),
            "n_iter": int(state["iteration"]),
            "converged": bool(state["converged"]),
            "init": params["init"],
            "initial_centers": state["initial_centers"],
        })

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    secure_aggregation = "automatic"  # init "pca" only: see secure_aggregation_refusal

    def differencing_partition(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                               state: dict | None) -> np.ndarray | None:
        """A Lloyd round's assignment of the rows to the state's centres (the node's own, ADR 0013)."""
        if round < 1 or not state or "centers" not in state:
            return None
        centres = np.asarray(state["centers"], dtype=float)
        if hasattr(data, "reader"):  # rows on disk: a block at a time, the frame's labels (8 bytes a row)
            parts = [assign(block, centres)[0] for block in _disk_blocks(data, request)]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)
        labels, _ = assign(_columns(data, request), centres)
        return labels


def _columns(data: pd.DataFrame, request: AnalysisRequest) -> np.ndarray:
    """The ``y`` columns as a float array, one variable per row, shape (d, n); kept between rounds."""
    def build() -> dict:
        if not len(data):
            return {"columns": np.zeros((len(request.y), 0))}
        return {"columns": np.vstack([numeric_values(data[code]) for code in request.y])}
    return memo(data, json.dumps(["kmeans", list(request.y)]), build)["columns"]
