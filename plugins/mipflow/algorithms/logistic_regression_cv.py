"""k-fold cross-validated logistic regression (Exareme2's ``logistic_regression_cv``).

Fit: the ``n_splits`` models are fitted side by side, each by
:class:`~mipflow.algorithms.logistic_regression.LogisticRegression`'s own
rounds (Newton/IRLS, statsmodels' stopping rule): in every round a node runs
that local step once per unfinished fold, on its rows outside the fold, and
the central side runs the global step per fold.  Each fold's model is
therefore exactly the pooled logistic regression of its training rows.  Each
node also releases, once, the rows per covariate level of each of its folds.

Evaluate (one round): nodes score their fold-``k`` rows with model ``k`` and
release the 2x2 confusion counts (predicted positive when ``p > 0.5``, as
scikit-learn's ``predict``) and, per class, how many scores fall into each bin
of a shared grid of ``roc_bins`` equal bins on [0, 1].  Accuracy, precision,
recall and F1 are exact.  **The AUC is approximate**: it is the exact AUC of
the binned scores (pairs of a positive and a negative in the same bin count
one half), within half the share of such pairs of the exact one; ROC curves
have one point per bin edge.

Rows on disk (ADR 0062, amendment 15): at a node without differential privacy or explore mode the selection
stays on disk with the node's fold keys beside it; each fold's training rows are narrowed from them
(:func:`~mipflow.algorithms.crossval.fold_rows`) and summed by :class:`LogisticRegression`'s streamed step (its
block-wise Newton sums), the test folds' level counts and the evaluation's cells and bins are counted in one pass
each (every row scored elementwise by its fold's model, as the frame path scores it).

Disclosure: confusion cells are released under ``group_counts``.  A node whose
folds hold a cell in ``(0, nfilter_tab)`` merges its folds' cells
(:meth:`LogisticRegressionCV.coarsen_for_release`): it releases only its cells
summed over the folds (every test row once), still checked (a cell in
``(0, nfilter_tab)`` refuses the node's step), and the result gives no per-fold
metrics, only those of the confusion matrix over every test row (``pooled``,
labelled); ROC bin counts under ``counts`` (small bins suppressed: a fold with
a suppressed bin gets no AUC, and says so).
"""
from __future__ import annotations

import json
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.crossval import (
    N_SPLITS,
    CrossValidated,
    binary_metrics,
    fold_rows,
    mean_std,
    roc_from_bins,
    score_bins,
    split_folds,
)
from mipflow.algorithms.design import (
    COUNT_BLOCK,
    DesignSource,
    category_codes,
    design_columns_of,
    level_counts,
    level_positions,
    sorted_levels,
)
from mipflow.algorithms.linear_regression_cv import base_request, linear_predictor
from mipflow.algorithms.logistic_regression import LogisticRegression, _positive_levels
from mipflow.algorithms.spec import ParamSpec
from mipflow.algorithms.streamed import on_disk
from mipflow.exceptions import FederationError, RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

#: Parameters passed through to the per-fold logistic regression.
_PLAIN = ("positive_class", "max_iter", "tol")


#: The result's note when a node merged its folds' confusion cells (static words).
FOLDS_MERGED_NOTE = (
    "At least one node's folds held a confusion cell (true x predicted class) below its nfilter_tab, so it "
    "released its cells summed over its folds only: per-fold accuracy, precision, recall and F1 (and their "
    "average and stdev) are not given; 'pooled' gives them over every test row (each row is tested once, by "
    "the model not fitted on its fold). Fewer folds or more rows per node give per-fold metrics.")


class LogisticRegressionCV(CrossValidated, LogisticRegression):
    name = "logistic_regression_cv"
    label = "Logistic Regression Cross-validation"
    description = ("k-fold cross-validation of a logistic regression: per-fold and mean accuracy, precision, "
                   "recall, F1 and the (binned) ROC curve and AUC.")
    parameter_specs = MappingProxyType({
        **LogisticRegression.parameter_specs,
        "n_splits": N_SPLITS,
        # mipflow addition: resolution of the shared ROC thresholds
        "roc_bins": ParamSpec(types=("int",), default=50, min=2, max=1000, label="ROC bins",
                              description="Score bins of the ROC curve (the AUC is computed on them)."),
    })
    small_group_hint = (
        "logistic_regression_cv checks, at each node: in its fit rounds, each fold's training rows per class and "
        "per class and covariate level, and each fold's test rows per covariate level; in its evaluation round "
        "(the last), the confusion cells of the test rows (true class x predicted class: true and false "
        "positives and negatives) summed over the folds (a node whose folds hold a small cell sends only these "
        "sums, and the result then gives the metrics over every test row, not per fold). ROC bins are not "
        "checked this way (a small bin is suppressed and that fold's AUC left out), so fewer roc_bins do not "
        "help. Use fewer "
        "folds (n_splits, down to its minimum), select more rows (a wider filter, more datasets), use "
        "covariates with fewer levels, or fit logistic_regression without cross-validation.")
    #: Rows on disk too (ADR 0062, amendment 15): each fold's training rows narrowed from the node's fold keys
    #: kept beside them (``SnapshotRows.fold_keys``), each Newton round :class:`LogisticRegression`'s streamed
    #: step of each (the frame path's sums), the evaluation round one pass over every fold's test rows.
    streams_rows = True

    # -- local ------------------------------------------------------------------

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        params = self.params(request, model)
        n_splits = params["n_splits"]
        streamed = on_disk(data)  # at most 20 folds: rows on disk take their labels as a byte a row
        folds, data = split_folds(data, n_splits, np.int8 if streamed else np.int64)
        plain = base_request(request, _PLAIN)
        if state is None or state["phase"] == "fit":
            fold_states = state["folds"] if state else [None] * n_splits
            out: dict = {"folds": []}
            weights: list = []
            for k, s in enumerate(fold_states):
                if state is not None and s is None:
                    out["folds"].append(None)
                    continue
                part = _training(data, folds, k)
                out["folds"].append(LogisticRegression.local_step(self, round, part, plain, model, s))
                if streamed and s is not None:  # the totals of the pass just made (LogisticRegression's memo)
                    weights += LogisticRegression.row_weights(self, round, part, plain, model, s) or []
            if streamed and state is not None:  # for row_weights of the same rows and state (effective_rows)
                _WEIGHTS_MEMO.update(key=_weights_key(round, request, state), data=data, weights=weights)
            if state is None:
                # every fold's own level counts are released too (as differences of the above)
                counts = _fold_level_counts(data, folds, n_splits, request.x, model) if streamed else \
                    [level_counts(data[folds == k], request.x, model) for k in range(n_splits)]
                out["test_folds"] = [{"group_n": [c for values in fold.values() for c in values]}
                                     for fold in counts]
            return out
        if streamed:
            return {"folds": _evaluate_on_disk(data, folds, plain, model, state, params["positive_class"])}
        yvar = model.variable(request.y[0])
        y_all = (category_codes(data[yvar.code], yvar).to_numpy() == params["positive_class"])
        out_folds = []
        for k, fitted in enumerate(state["models"]):
            rows = folds == k
            columns, _ = design_columns_of(data[rows], request.x, model, columns=fitted["columns"])
            eta = linear_predictor(columns, np.asarray(fitted["coefficients"], dtype=float), int(rows.sum()))
            out_folds.append(_fold_release(*_fold_counts(y_all[rows], eta, state["roc_bins"])))
        return {"folds": out_folds}

    # -- global -----------------------------------------------------------------

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        params = self.params(request, model)
        n_splits = params["n_splits"]
        if state is not None and state["phase"] == "evaluate":
            return Step(done=True, result=self._evaluate(aggregates, request, state, n_splits))
        plain = base_request(request, _PLAIN)
        fold_states = state["folds"] if state else [None] * n_splits
        models = list(state["models"]) if state else [None] * n_splits
        for k, s in enumerate(fold_states):
            if state is not None and s is None:
                continue  # this fold's model is finished
            try:
                step = LogisticRegression.global_step(self, round, [a["folds"][k] for a in aggregates],
                                                      plain, model, s)
            except RequestError as exc:
                raise RequestError(f"fold {k + 1} of {n_splits}: {exc}") from None
            if step.done:
                fit = step.result
                models[k] = {"columns": fit["indep_vars"], "coefficients": fit["coefficients"],
                             "n_train": fit["n_obs"]}
                fold_states[k] = None
            else:
                fold_states[k] = step.state
        if all(m is not None for m in models):
            return Step(done=False, state={"phase": "evaluate", "models": models,
                                           "roc_bins": params["roc_bins"]})
        return Step(done=False, state={"phase": "fit", "folds": fold_states, "models": models})

    def _evaluate(self, aggregates: list[dict], request: AnalysisRequest, state: dict,
                  n_splits: int) -> dict:
        metrics: dict[str, list] = {"accuracy": [], "precision": [], "recall": [], "fscore": []}
        total = np.zeros(4, dtype=int)
        roc_curves, suppressed = [], []
        # a node that merged its folds' cells (coarsen_for_release) sent zeros per fold, marked; under secure
        # aggregation the marks arrive summed: how many nodes merged, never which
        merged = any(int(a["folds"][k]["confusion"].get("merged", 0)) for a in aggregates for k in range(n_splits))
        for k in range(n_splits):
            cells = np.sum([a["folds"][k]["confusion"]["group_counts"] for a in aggregates], axis=0)
            total += cells
            for key, value in binary_metrics(*cells).items():
                metrics[key].append(None if merged else value)
            bins = [a["folds"][k]["roc"]["counts"] for a in aggregates]
            if any(c is None for b in bins for row in b for c in row) or \
                    any(a["folds"][k]["roc"].get("suppressed") for a in aggregates):
                suppressed.append(f"fold_{k + 1}")
                roc_curves.append({"name": f"fold_{k + 1}", "tpr": None, "fpr": None, "auc": None})
                continue
            neg, pos = np.sum([b[0] for b in bins], axis=0), np.sum([b[1] for b in bins], axis=0)
            tpr, fpr, auc = roc_from_bins(neg, pos)
            roc_curves.append({"name": f"fold_{k + 1}", "tpr": tpr, "fpr": fpr, "auc": auc})
        n_train = [int(m["n_train"]) for m in state["models"]]
        if all("confusion_total" in a for a in aggregates):  # every node's cells over its folds
            total = np.sum([a["confusion_total"]["group_counts"] for a in aggregates], axis=0)
        elif merged:  # a node from before the merge sent no totals: nothing exact to show
            raise FederationError("logistic_regression_cv: a node merged its folds' confusion cells and another "
                                  "sent no totals; every node must run the same mipflow version")
        tn, fp, fn, tp = (int(v) for v in total)
        summary = {"row_names": [f"fold_{k + 1}" for k in range(n_splits)] + ["average", "stdev"],
                   "n_obs": n_train + [None, None]}
        for key, values in metrics.items():
            summary[key] = values + mean_std(values)
        aucs = [c["auc"] for c in roc_curves]
        return json_ready({
            "dependent_var": request.y[0],
            "indep_vars": state["models"][0]["columns"],
            "summary": summary,
            "confusion_matrix": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
            # the metrics of the confusion matrix over every test row (each row is tested once)
            "pooled": binary_metrics(tn, fp, fn, tp),
            "folds_merged": merged,
            **({"note": FOLDS_MERGED_NOTE} if merged else {}),
            "roc_curves": roc_curves,
            "auc": aucs,
            "auc_method": (f"approximate: exact AUC of the scores binned on {state['roc_bins']} "
                           "equal bins of [0, 1] (ties within a bin count one half)"),
            "auc_suppressed": suppressed,
            "n_splits": n_splits,
            "folds": {"indep_vars": [m["columns"] for m in state["models"]],
                      "coefficients": [m["coefficients"] for m in state["models"]],
                      "n_train": n_train},
        })

    # -- privacy capabilities (mipflow.algorithms.contract) ------------------------------------

    def row_weights(self, round: int, data: pd.DataFrame, request: AnalysisRequest, model: DataModel,
                    state: dict | None) -> list[np.ndarray] | None:
        """Each unfinished fold's Newton weights on its training rows (ADR 0054); the evaluation
        round releases counts only."""
        if state is None or state["phase"] != "fit":
            return None
        if on_disk(data) and _WEIGHTS_MEMO.get("data") is data and \
                _WEIGHTS_MEMO.get("key") == _weights_key(round, request, state):
            return list(_WEIGHTS_MEMO["weights"])  # type: ignore[call-overload]  # the local step's pass
        folds, data = split_folds(data, self.params(request, model)["n_splits"],
                                  np.int8 if on_disk(data) else np.int64)
        plain = base_request(request, _PLAIN)
        return [w for k, s in enumerate(state["folds"]) if s is not None
                for w in LogisticRegression.row_weights(self, round, _training(data, folds, k), plain, model, s)
                or ()]

    def coarsen_for_release(self, round: int, aggregates: dict, min_count: int, bin_count: int | None = None) -> dict:
        """The evaluation round's confusion cells: each fold's, and the node's summed over its folds
        (``confusion_total``); when a fold holds a cell in ``(0, min_count)`` the folds' cells are sent as
        zeros marked ``merged`` and only the sums remain, which the node's checks still hold to
        ``min_count``.  The layout depends on the request only (secure aggregation sums it)."""
        folds = aggregates.get("folds")
        if not folds or not all(isinstance(f, dict) and "confusion" in f for f in folds):
            return aggregates  # a fit round
        cells = np.array([f["confusion"]["group_counts"] for f in folds], dtype=np.int64)
        small = bool(np.any((cells > 0) & (cells < min_count)))
        out = [{**f, "confusion": {"group_counts": [0] * cells.shape[1] if small else f["confusion"]["group_counts"],
                                   "merged": int(small)}} for f in folds]
        return {**aggregates, "folds": out, "confusion_total": {"group_counts": cells.sum(axis=0).tolist()}}

    # per-fold sums, masked from 2 nodes (crossval.CrossValidated)
    secure_aggregation = "automatic"

    def secure_aggregates(self, aggregates: dict, request: AnalysisRequest, model: DataModel) -> dict:
        """What a node sums under secure aggregation: a finished fold's ``None`` as ``{}``, and a
        fold's ROC counts with a suppressed bin as zeros with ``suppressed`` 1 (else 0), so the
        layout depends on the request and state only; a fold suppressed at any node gets no AUC."""
        folds = []
        for fold in aggregates["folds"]:
            if fold is None:
                folds.append({})
            elif "roc" in fold:
                counts = fold["roc"]["counts"]
                hidden = any(c is None for row in counts for c in row)
                roc = {"counts": [[0] * len(row) for row in counts] if hidden else counts,
                       "suppressed": int(hidden)}
                folds.append({**fold, "roc": roc})
            else:
                folds.append(fold)
        return {**aggregates, "folds": folds}


# --------------------------------------------------------------------------- the folds, a frame's or on disk


def _training(data: Any, folds: np.ndarray, k: int) -> Any:
    """Fold ``k``'s training rows (every other fold's), in their order: the frame's (index reset) or rows on
    disk narrowed from the fold labels (:func:`~mipflow.algorithms.crossval.fold_rows`, a bit a snapshot row)."""
    if on_disk(data):
        return fold_rows(data, folds, k, training=True)
    return data[folds != k].reset_index(drop=True)


#: The last Newton round's effective-rows totals of every unfinished fold, summed by the local step on rows
#: on disk: :meth:`LogisticRegressionCV.row_weights` of the same rows and state (the node's control
#: ``effective_rows``, after the local step) takes them instead of reading every fold again.
_WEIGHTS_MEMO: dict[str, object] = {}


def _weights_key(round: int, request: AnalysisRequest, state: dict) -> str:
    return json.dumps([round, list(request.x), list(request.y), request.parameters, state], sort_keys=True,
                      default=str)


def _fold_level_counts(rows: Any, folds: np.ndarray, n_splits: int, x: Sequence[str], model: DataModel
                       ) -> list[dict[str, list[int]]]:
    """Each fold's rows per level of each categorical covariate of rows on disk, in one pass over their stored
    level codes: what :func:`~mipflow.algorithms.design.level_counts` gives of each fold's frame."""
    cats = [code for code in dict.fromkeys(x) if model.variable(code).is_categorical]
    sizes = {code: len(sorted_levels(model.variable(code))) for code in cats}
    totals = {code: np.zeros(n_splits * sizes[code], dtype=np.int64) for code in cats}
    n = len(rows)
    if cats and n:
        positions = {code: level_positions(rows, model.variable(code)) for code in cats}
        next_rows = rows.reader(cats)
        for start in range(0, n, COUNT_BLOCK):
            m = min(COUNT_BLOCK, n - start)
            labels = folds[start:start + m].astype(np.intp)
            for code, stored in zip(cats, next_rows(m)):
                totals[code] += np.bincount(labels * sizes[code] + positions[code][stored],
                                            minlength=n_splits * sizes[code])
    return [{code: [int(c) for c in totals[code][k * sizes[code]:(k + 1) * sizes[code]]]
             for code in x if code in totals} for k in range(n_splits)]


def _fold_counts(y: np.ndarray, eta: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """A test fold's confusion cells ``[tn, fp, fn, tp]`` (predicted positive when ``eta > 0``, i.e. ``p >
    0.5``) and its ROC bin counts ``[negatives, positives]`` (int64): integer sums, so any blocking adds up to
    the same."""
    from scipy import special

    predicted = eta > 0.0
    bins = score_bins(special.expit(eta), n_bins)
    cells = np.array([np.sum(~y & ~predicted), np.sum(~y & predicted), np.sum(y & ~predicted),
                      np.sum(y & predicted)], dtype=np.int64)
    return cells, np.stack([np.bincount(bins[~y], minlength=n_bins), np.bincount(bins[y], minlength=n_bins)])


def _fold_release(cells: np.ndarray, roc: np.ndarray) -> dict:
    return {"confusion": {"group_counts": [int(c) for c in cells]},
            "roc": {"counts": [[int(c) for c in row] for row in roc]}}


#: Rows read at a time by the evaluation round on disk.
EVALUATE_ROWS = 65_536


def _evaluate_on_disk(rows: Any, folds: np.ndarray, plain: AnalysisRequest, model: DataModel, state: dict,
                      positive: object) -> list[dict]:
    """The evaluation round of rows on disk: one pass over the union of the folds' design columns and the
    response (:class:`~mipflow.algorithms.design.DesignSource`), each row scored by its own fold's model
    (:func:`~mipflow.algorithms.linear_regression_cv.linear_predictor`: the frame path's bits), the cells and
    bins counted block by block.  Memory: a block of the columns read."""
    models = state["models"]
    n_bins = int(state["roc_bins"])
    cells = np.zeros((len(models), 4), dtype=np.int64)
    roc = np.zeros((len(models), 2, n_bins), dtype=np.int64)
    names = list(dict.fromkeys(str(c) for fitted in models for c in fitted["columns"]))
    response = "\0response"  # not a design column's name
    n = len(rows)
    if n:
        source = DesignSource(rows, plain.x, model, {response: _positive_levels(rows, plain, positive)})
        next_rows = source.reader([*names, response])
        for start in range(0, n, EVALUATE_ROWS):
            m = min(EVALUATE_ROWS, n - start)
            *values, outcome = next_rows(m)
            by_name = dict(zip(names, values))
            labels = folds[start:start + m]
            for k, fitted in enumerate(models):
                chosen = labels == k
                count = int(np.count_nonzero(chosen))
                if not count:
                    continue
                eta = linear_predictor([by_name[str(c)][chosen] for c in fitted["columns"]],
                                       np.asarray(fitted["coefficients"], dtype=float), count)
                fold_cells, fold_roc = _fold_counts(outcome[chosen] == 1.0, eta, n_bins)
                cells[k] += fold_cells
                roc[k] += fold_roc
    return [_fold_release(cells[k], roc[k]) for k in range(len(models))]
