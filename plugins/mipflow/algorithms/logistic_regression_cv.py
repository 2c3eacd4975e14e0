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

from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from mipflow.algorithms.contract import Step
from mipflow.algorithms.crossval import (
    N_SPLITS,
    CrossValidated,
    binary_metrics,
    mean_std,
    roc_from_bins,
    score_bins,
    split_folds,
)
from mipflow.algorithms.design import category_codes, design_matrix, level_counts
from mipflow.algorithms.linear_regression_cv import base_request
from mipflow.algorithms.logistic_regression import LogisticRegression
from mipflow.algorithms.spec import ParamSpec
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
    #: Its folds need a frame with the node's fold keys (not LogisticRegression's rows left on disk).
    streams_rows = False

    # -- local ------------------------------------------------------------------

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        from scipy import special

        params = self.params(request, model)
        folds, data = split_folds(data, params["n_splits"])
        plain = base_request(request, _PLAIN)
        if state is None or state["phase"] == "fit":
            fold_states = state["folds"] if state else [None] * params["n_splits"]
            out: dict = {"folds": [
                None if (state is not None and s is None)
                else LogisticRegression.local_step(self, round, data[folds != k].reset_index(drop=True),
                                                   plain, model, s)
                for k, s in enumerate(fold_states)]}
            if state is None:
                # every fold's own level counts are released too (as differences of the above)
                out["test_folds"] = [{"group_n": [c for counts in level_counts(
                    data[folds == k], request.x, model).values() for c in counts]}
                    for k in range(params["n_splits"])]
            return out
        yvar = model.variable(request.y[0])
        y_all = (category_codes(data[yvar.code], yvar).to_numpy() == params["positive_class"])
        out_folds = []
        for k, fitted in enumerate(state["models"]):
            rows = folds == k
            design, _ = design_matrix(data[rows], request.x, model, columns=fitted["columns"])
            eta = design @ np.asarray(fitted["coefficients"], dtype=float)
            y, predicted = y_all[rows], eta > 0.0
            bins = score_bins(special.expit(eta), state["roc_bins"])
            out_folds.append({
                "confusion": {"group_counts": [int(np.sum(~y & ~predicted)), int(np.sum(~y & predicted)),
                                               int(np.sum(y & ~predicted)), int(np.sum(y & predicted))]},
                "roc": {"counts": [np.bincount(bins[~y], minlength=state["roc_bins"]).tolist(),
                                   np.bincount(bins[y], minlength=state["roc_bins"]).tolist()]},
            })
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
        folds, data = split_folds(data, self.params(request, model)["n_splits"])
        plain = base_request(request, _PLAIN)
        return [w for k, s in enumerate(state["folds"]) if s is not None
                for w in LogisticRegression.row_weights(self, round, data[folds != k].reset_index(drop=True),
                                                        plain, model, s) or ()]

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
