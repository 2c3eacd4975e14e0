"""Naive Bayes classifiers with k-fold cross-validation (Exareme2's
``naive_bayes_gaussian_cv`` and ``naive_bayes_categorical_cv``).

Round 0: each node assigns its rows to folds (fixed by its secret,
:func:`~mipflow.algorithms.crossval.deal_folds`) and releases, per fold and per
class of ``y`` (the data model's enumerations, sorted):

* Gaussian: the class's row count and the means and centred sums of squares
  of every covariate (:mod:`mipflow.algorithms.moments`);
* categorical: the class-by-level counts of every covariate.

Centrally, fold ``k``'s model is fitted from every other fold of every node,
exactly as scikit-learn fits the pooled training rows:
``GaussianNB(var_smoothing)`` (classes absent from the training rows are
left out; ``var_smoothing`` times the largest covariate variance is added to
every variance) or ``CategoricalNB(alpha, min_categories=levels)``, with
every enumeration level of a covariate as a category.  The result's ``model``
is the same fit on all rows (Exareme2's ``theta``/``var``/``class_count`` and
``class_count``/``category_count``).

Round 1: nodes predict their fold-``k`` rows with model ``k`` (the class of
highest joint log-likelihood, as scikit-learn's ``predict``) and release the
fold's confusion matrix.  Metrics are one-vs-rest accuracy, precision, recall
and F1 per class and fold, all exact.

Disclosure: per-class counts, category counts and confusion cells are
released under ``group_n``/``group_counts``: a class or cell of a fold in
``(0, nfilter_tab)`` refuses the node's step (a class mean of one or two
patients is their value); the Gaussian classifier's classes, released with
means and sums of squares, in ``(0, min_row_count)`` (ADR 0050).  Across
releases the classes (Gaussian) and the class x level cells (categorical) of
the cohort are released groups (``released_groups``, ADR 0051).

Rows left on disk (ADR 0062, amendment 11): :mod:`mipflow.algorithms.naive_bayes_streamed`, the same releases.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from mipflow.algorithms.contract import ReleasedGroups, Step
from mipflow.algorithms.crossval import (
    N_SPLITS,
    CrossValidated,
    fit_folds,
    multiclass_metrics,
    split_folds,
)
from mipflow.algorithms.design import category_codes, numeric_values, sorted_levels
from mipflow.algorithms.moments import Moments, column_moments, merge_moments
from mipflow.algorithms.naive_bayes_streamed import categorical_folds, confusions, gaussian_folds
from mipflow.algorithms.streamed import on_disk
from mipflow.algorithms.spec import (
    NOMINAL,
    NUMERICAL,
    InputSpec,
    ParamSpec,
    SpecAlgorithm,
)
from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest
from mipflow.protocol.wire import json_ready

if TYPE_CHECKING:
    import pandas as pd

_Y = InputSpec(types=("text", "int"), stattypes=(NOMINAL,), notblank=True, multiple=False,
               label="Variable (dependent)", description="A nominal variable: the classes.")


class _NaiveBayesCV(CrossValidated, SpecAlgorithm):
    """Shared rounds of the two classifiers; subclasses supply the per-class statistics."""

    y_spec = _Y

    def check(self, request: AnalysisRequest, model: DataModel) -> None:
        if request.y[0] in request.x:
            raise RequestError(f"{request.y[0]!r} cannot be both the class and a covariate")

    def classes(self, request: AnalysisRequest, model: DataModel) -> tuple[str, ...]:
        return sorted_levels(model.variable(request.y[0]))

    def class_index(self, data: pd.DataFrame, request: AnalysisRequest, model: DataModel) -> np.ndarray:
        codes = category_codes(data[request.y[0]], model.variable(request.y[0])).to_numpy()
        lookup = {c: i for i, c in enumerate(self.classes(request, model))}
        return np.array([lookup[c] for c in codes], dtype=int)

    # -- subclass hooks -----------------------------------------------------------
    def fold_statistics(self, data: pd.DataFrame, cls: np.ndarray, request: AnalysisRequest,
                        model: DataModel) -> dict: ...

    def fit(self, parts: list[dict], request: AnalysisRequest, model: DataModel) -> dict: ...

    def joint_log_likelihood(self, data: pd.DataFrame, fitted: dict, request: AnalysisRequest,
                             model: DataModel) -> np.ndarray: ...

    # -- rounds -------------------------------------------------------------------
    #: Per fold and class: counts and moments, sums.  At a node without DP or explore mode its rows stay on
    #: disk, their fold keys beside them (ADR 0062, amendment 11: :mod:`mipflow.algorithms.naive_bayes_streamed`).
    streams_rows = True

    def folds_on_disk(self, data: Any, folds: np.ndarray, request: AnalysisRequest, model: DataModel) -> list[dict]:
        """Round 0's per-fold statistics of rows on disk (subclass hook)."""
        raise NotImplementedError

    def local_step(self, round: int, data: pd.DataFrame, request: AnalysisRequest,
                   model: DataModel, state: dict | None) -> dict:
        params = self.params(request, model)
        folds, data = split_folds(data, params["n_splits"])
        if on_disk(data):
            if state is None:
                return {"folds": self.folds_on_disk(data, folds, request, model)}
            return {"folds": confusions(self, data, folds, state, request, model, self.classes(request, model))}
        cls = self.class_index(data, request, model)
        if state is None:
            return {"folds": [self.fold_statistics(data[folds == k], cls[folds == k], request, model)
                              for k in range(params["n_splits"])]}
        n_classes = len(self.classes(request, model))
        out = []
        for k, fitted in enumerate(state["models"]):
            rows = folds == k
            jll = self.joint_log_likelihood(data[rows], fitted, request, model)
            predicted = np.asarray(fitted["class_index"], dtype=int)[np.argmax(jll, axis=1)] if len(jll) \
                else np.zeros(0, dtype=int)
            confusion = np.zeros((n_classes, n_classes), dtype=int)
            np.add.at(confusion, (cls[rows], predicted), 1)
            out.append({"confusion": {"group_counts": confusion.ravel().tolist()}})
        return {"folds": out}

    def global_step(self, round: int, aggregates: list[dict], request: AnalysisRequest,
                    model: DataModel, state: dict | None) -> Step:
        n_splits = self.params(request, model)["n_splits"]
        if state is None:
            models = fit_folds(aggregates, n_splits, lambda training: self.fit(training, request, model))
            full = self.fit([f for a in aggregates for f in a["folds"]], request, model)
            return Step(done=False, state={"models": models, "full": full})
        return Step(done=True, result=self._result(aggregates, request, model, state, n_splits))

    def _result(self, aggregates, request, model, state, n_splits) -> dict:
        classes = self.classes(request, model)
        k_cls = len(classes)
        present = list(state["full"]["class_index"])
        labels = [classes[i] for i in present]
        confusions = []
        for k in range(n_splits):
            cm = np.sum([np.asarray(a["folds"][k]["confusion"]["group_counts"]).reshape(k_cls, k_cls)
                         for a in aggregates], axis=0)
            confusions.append(cm[np.ix_(present, present)])
        fold_names = [f"fold_{k + 1}" for k in range(n_splits)]
        summary: dict = {key: {label: {} for label in labels}
                         for key in ("accuracy", "precision", "recall", "fscore")}
        for name, cm in zip(fold_names, confusions):
            for key, values in multiclass_metrics(cm).items():
                for label, value in zip(labels, values):
                    summary[key][label][name] = value
        summary["n_obs"] = {name: int(m["n_train"]) for name, m in zip(fold_names, state["models"])}
        return json_ready({
            "dependent_var": request.y[0],
            "indep_vars": list(request.x),
            "confusion_matrix": {"data": np.sum(confusions, axis=0).tolist(), "labels": labels},
            "classification_summary": summary,
            "n_splits": n_splits,
            "model": state["full"],
            "folds": {"confusion_matrix": [cm.tolist() for cm in confusions],
                      "n_train": [int(m["n_train"]) for m in state["models"]]},
        })


class NaiveBayesGaussianCV(_NaiveBayesCV):
    name = "naive_bayes_gaussian_cv"
    # each class of each fold is released with its count and the covariates' means and centred sums of
    # squares (ADR 0050, the class)
    group_count_setting = "min_row_count"
    label = "Gaussian Naive Bayes classifier with cross-validation"
    description = ("Classifies y from numerical features assumed independent and normal within each class; "
                   "k-fold cross-validated.")
    x_spec = InputSpec(types=("real", "int"), stattypes=(NUMERICAL,), notblank=True, multiple=True,
                       label="Covariates (independent)", description="Numerical variables.")
    parameter_specs = MappingProxyType({
        "n_splits": N_SPLITS,
        # mipflow addition: scikit-learn's GaussianNB(var_smoothing)
        "var_smoothing": ParamSpec(types=("real",), default=1e-9, min=0.0, max=1.0, label="Variance smoothing",
                                   description="This share of the largest variance is added to every "
                                               "variance (scikit-learn's var_smoothing)."),
    })

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        # each class's moments, per fold; a class over the cohort is the sum of its folds (ADR 0051;
        # the folds themselves depend on the cohort: not keyed across cohorts)
        return (ReleasedGroups((request.y[0],)),)

    def fold_statistics(self, data: pd.DataFrame, cls: np.ndarray, request: AnalysisRequest,
                        model: DataModel) -> dict:
        # column_moments of the columns (the moments of a Fortran-ordered matrix): the bits rows on disk give
        # (ADR 0062, amendment 11; compute_moments of a C-ordered column_stack summed otherwise)
        x = [numeric_values(data[c]) for c in request.x]
        n_classes = len(self.classes(request, model))
        return {"group_n": np.bincount(cls, minlength=n_classes).tolist(),
                "moments": [column_moments([v[cls == c] for v in x]).to_dict() for c in range(n_classes)]}

    def folds_on_disk(self, data: Any, folds: np.ndarray, request: AnalysisRequest, model: DataModel) -> list[dict]:
        return gaussian_folds(data, folds, self.params(request, model)["n_splits"], request,
                              self.classes(request, model))

    def fit(self, parts: list[dict], request: AnalysisRequest, model: DataModel) -> dict:
        classes = self.classes(request, model)
        per_class = [merge_moments(Moments.from_dict(p["moments"][c]) for p in parts)
                     for c in range(len(classes))]
        total = merge_moments(per_class)
        if total.n == 0:
            raise RequestError("no rows to fit")
        present = [c for c, m in enumerate(per_class) if m.n > 0]
        epsilon = self.params(request, model)["var_smoothing"] * float(np.max(total.m2 / total.n))
        return {
            "classes": [classes[c] for c in present],
            "class_index": present,
            "class_count": [float(per_class[c].n) for c in present],
            "theta": [per_class[c].mean.tolist() for c in present],
            "var": [(per_class[c].m2 / per_class[c].n + epsilon).tolist() for c in present],
            "epsilon": epsilon,
            "n_train": total.n,
        }

    def joint_log_likelihood(self, data: pd.DataFrame, fitted: dict, request: AnalysisRequest,
                             model: DataModel) -> np.ndarray:
        """scikit-learn's ``GaussianNB._joint_log_likelihood``, shape (n, classes present)."""
        x = np.column_stack([numeric_values(data[c]) for c in request.x]) if len(data) \
            else np.zeros((0, len(request.x)))
        theta, var = np.asarray(fitted["theta"]), np.asarray(fitted["var"])
        count = np.asarray(fitted["class_count"])
        jll = []
        for c in range(len(count)):
            term = math.log(count[c] / count.sum()) - 0.5 * np.sum(np.log(2.0 * np.pi * var[c]))
            jll.append(term - 0.5 * np.sum((x - theta[c]) ** 2 / var[c], axis=1))
        return np.array(jll).T


class NaiveBayesCategoricalCV(_NaiveBayesCV):
    name = "naive_bayes_categorical_cv"
    label = "Categorical Naive Bayes classifier with cross-validation"
    description = ("Classifies y from nominal features assumed independent within each class; k-fold "
                   "cross-validated.")
    x_spec = InputSpec(types=("text", "int"), stattypes=(NOMINAL,), notblank=True, multiple=True,
                       label="Covariates (independent)", description="Nominal variables.")
    parameter_specs = MappingProxyType({
        "n_splits": N_SPLITS,
        # mipflow addition: scikit-learn's CategoricalNB(alpha) (Laplace smoothing)
        "alpha": ParamSpec(types=("real",), default=1.0, min=1e-10, max=1e6, label="Smoothing (alpha)",
                           description="Additive (Laplace) smoothing of the category counts "
                                       "(scikit-learn's CategoricalNB alpha); not a significance level."),
    })

    def released_groups(self, request: AnalysisRequest, model: DataModel) -> tuple[ReleasedGroups, ...]:
        # each class within each level of every covariate (issue 14; ADR 0051): the folds' class x level counts,
        # whose sums over the folds (the result's ``category_count``) are the cohort's cells; each fold's are
        # checked per release (``group_counts``, 0 or >= nfilter_tab, so their sums are too) and the cohort's
        # are held across releases, as the other cross-validated models' groups are (the folds depend on the
        # cohort: not keyed across cohorts, ADR 0026); the classes and the levels are the cells' margins
        return tuple(ReleasedGroups((request.y[0], code)) for code in dict.fromkeys(request.x))

    def _level_index(self, data: pd.DataFrame, code: str, model: DataModel) -> np.ndarray:
        var = model.variable(code)
        lookup = {lvl: i for i, lvl in enumerate(sorted_levels(var))}
        return np.array([lookup[c] for c in category_codes(data[code], var).to_numpy()], dtype=int)

    def fold_statistics(self, data: pd.DataFrame, cls: np.ndarray, request: AnalysisRequest,
                        model: DataModel) -> dict:
        n_classes = len(self.classes(request, model))
        features = []
        for code in request.x:
            n_levels = len(sorted_levels(model.variable(code)))
            table = np.zeros((n_classes, n_levels), dtype=int)
            np.add.at(table, (cls, self._level_index(data, code, model)), 1)
            features.append({"group_counts": table.ravel().tolist()})
        return {"group_n": np.bincount(cls, minlength=n_classes).tolist(), "category_count": features}

    def folds_on_disk(self, data: Any, folds: np.ndarray, request: AnalysisRequest, model: DataModel) -> list[dict]:
        return categorical_folds(data, folds, self.params(request, model)["n_splits"], request, model,
                                 self.classes(request, model))

    def fit(self, parts: list[dict], request: AnalysisRequest, model: DataModel) -> dict:
        classes = self.classes(request, model)
        class_count = np.sum([p["group_n"] for p in parts], axis=0)
        if class_count.sum() == 0:
            raise RequestError("no rows to fit")
        present = [c for c in range(len(classes)) if class_count[c] > 0]
        tables = []
        for i, code in enumerate(request.x):
            n_levels = len(sorted_levels(model.variable(code)))
            table = np.sum([np.asarray(p["category_count"][i]["group_counts"]).reshape(len(classes), n_levels)
                            for p in parts], axis=0)
            tables.append(table[present].tolist())
        return {
            "classes": [classes[c] for c in present],
            "class_index": present,
            "class_count": [int(class_count[c]) for c in present],
            "category_count": tables,
            "levels": [list(sorted_levels(model.variable(code))) for code in request.x],
            "alpha": self.params(request, model)["alpha"],
            "n_train": int(class_count.sum()),
        }

    def joint_log_likelihood(self, data: pd.DataFrame, fitted: dict, request: AnalysisRequest,
                             model: DataModel) -> np.ndarray:
        """scikit-learn's ``CategoricalNB._joint_log_likelihood``, shape (n, classes present)."""
        count = np.asarray(fitted["class_count"], dtype=float)
        alpha = float(fitted["alpha"])
        jll = np.tile(np.log(count) - np.log(count.sum()), (len(data), 1))
        for i, code in enumerate(request.x):
            table = np.asarray(fitted["category_count"][i], dtype=float)
            smoothed = table + alpha
            log_prob = np.log(smoothed) - np.log(smoothed.sum(axis=1, keepdims=True))
            jll += log_prob[:, self._level_index(data, code, model)].T
        return jll
