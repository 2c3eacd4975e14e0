"""lifelines on the pooled rows: a second, independent reference for the survival tests.

lifelines 0.30.3 declares ``pandas<3``; the Makefile installs it from
``requirements-reference.txt`` with ``--no-deps`` into the project's venv, where
it runs on the pinned pandas 3 (it only warns about keyword-only arguments in
pandas 4, warnings silenced here).  Without it the tests skip, except in CI
(``CI=true``), where they must run.

Each function takes the pooled rows as arrays (times already rounded up to the
result's bin ends by the caller, as the federated analysis sees them).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from types import ModuleType
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pytest

#: lifelines' Newton-Raphson for the Cox model takes damped steps (``step_size`` 0.95: linear
#: convergence) and stops when the step norm (on its standardised covariates) or the Newton
#: decrement falls below ``precision`` (1e-7), or the log-likelihood changes by less than
#: ``r_precision`` (1e-9, relative); it returns the coefficients at which it computed that last
#: step, without taking it.  With those defaults its coefficients are ~1e-4 relative from the
#: optimum (measured on the tests' data), and with a decrement of 1e-14 still ~1e-9 (the untaken
#: step is ~sqrt(decrement)).  Full Newton steps (quadratic convergence, as ours and statsmodels')
#: until the decrement is below 1e-20 put it at the floating-point optimum (~1e-14 from ours), so a
#: 1e-9 relative comparison measures our maths, not its stopping rule.
COX_FIT_OPTIONS = {"step_size": 1.0, "precision": 1e-20, "r_precision": 0.0, "max_steps": 100}


def lifelines() -> ModuleType:
    """The lifelines package, or skip (fail in CI) with the reason."""
    try:
        import lifelines as module
    except ImportError as exc:  # pragma: no cover - depends on the environment
        reason = ("lifelines (the test reference) is not installed: "
                  "pip install --no-deps -r requirements-reference.txt")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason} ({exc})")
        pytest.skip(reason)
    return module


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lifelines calls pandas reductions positionally (``Pandas4Warning``); no number compared here
    depends on a warning, so they are silenced around its calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def kaplan_meier(times: np.ndarray, events: np.ndarray, at: Sequence[float], confidence: float
                 ) -> dict[str, np.ndarray]:
    """``KaplanMeierFitter``: survival and its log(-log) confidence bounds just after each time in ``at``."""
    module = lifelines()
    with _quiet():
        fit = module.KaplanMeierFitter(alpha=1.0 - confidence).fit(np.asarray(times, dtype=float),
                                                                   np.asarray(events, dtype=bool))
        survival = fit.survival_function_.iloc[:, 0]
        bounds = fit.confidence_interval_
        # the fitted timeline holds every observed time; the values at ``at`` are rows of it
        rows = survival.index.get_indexer(np.asarray(at, dtype=float))
        assert np.all(rows >= 0), "a requested time is not on lifelines' timeline"
        return {"survival": survival.to_numpy()[rows], "lower_ci": bounds.iloc[rows, 0].to_numpy(),
                "upper_ci": bounds.iloc[rows, 1].to_numpy()}


def logrank(times: np.ndarray, groups: np.ndarray, events: np.ndarray) -> dict[str, float]:
    """``multivariate_logrank_test``: chi-squared statistic, p-value and degrees of freedom."""
    lifelines()
    from lifelines.statistics import multivariate_logrank_test

    with _quiet():
        test = multivariate_logrank_test(np.asarray(times, dtype=float), np.asarray(groups),
                                         np.asarray(events, dtype=bool))
        return {"chi2": float(test.test_statistic), "p_value": float(test.p_value),
                "df": int(test.degrees_of_freedom)}


def cox(times: np.ndarray, events: np.ndarray, design: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """``CoxPHFitter`` (Efron's ties) run to convergence (:data:`COX_FIT_OPTIONS`): coefficients,
    standard errors, and the log partial likelihood."""
    module = lifelines()
    frame = pd.DataFrame(np.asarray(design, dtype=float), columns=list(names))
    frame["_T"] = np.asarray(times, dtype=float)
    frame["_E"] = np.asarray(events, dtype=float)
    with _quiet():
        fit = module.CoxPHFitter().fit(frame, duration_col="_T", event_col="_E", fit_options=COX_FIT_OPTIONS)
        return {"coefficients": fit.params_.loc[list(names)].to_numpy(),
                "stderr": fit.standard_errors_.loc[list(names)].to_numpy(),
                "ll": float(fit.log_likelihood_)}
