"""Shared helpers of the algorithm tests: tolerant comparison and data loading."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from mipflow.protocol.datamodel import DataModel

#: Relative tolerance of federated-vs-pooled comparisons for exact methods.
EXACT_RTOL = 1e-9


def as_float(value: Any) -> float:
    """A result number as float: Exareme2 writes infinities and some numbers as strings."""
    if value is None:
        return math.nan
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return as_float(value[0])
    if isinstance(value, str):
        return float(value.replace("Infinity", "inf"))
    return float(value)


def rel_error(actual: Any, expected: Any, floor: float) -> float:
    """``|a - e| / max(|e|, floor)``; 0 when both are the same infinity or both NaN."""
    a, e = as_float(actual), as_float(expected)
    if math.isnan(a) and math.isnan(e):
        return 0.0
    if math.isinf(a) or math.isinf(e):
        return 0.0 if a == e else math.inf
    return abs(a - e) / max(abs(e), floor)


def assert_rel_close(actual: Any, expected: Any, *, rel: float = EXACT_RTOL,
                     floor: float = 1e-12, what: str = "") -> float:
    """Assert element-wise ``rel_error <= rel``; return the worst relative error.

    ``floor`` is an absolute scale used only for expected values that are ~0
    (``|expected| < floor``).
    """
    a = np.atleast_1d(np.asarray(actual, dtype=float))
    e = np.atleast_1d(np.asarray(expected, dtype=float))
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    errors = [rel_error(x, y, floor) for x, y in zip(a.ravel(), e.ravel())]
    worst = max(errors, default=0.0)
    assert worst <= rel, f"{what}: relative error {worst:.3g} > {rel:g}\nactual={a}\nexpected={e}"
    return worst


@dataclass
class ErrorSummary:
    """Worst relative error per algorithm, collected across tests."""

    worst: dict[str, tuple[float, str]] = field(default_factory=dict)
    cases: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    notes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def record(self, algorithm: str, error: float, where: str) -> None:
        if error > self.worst.get(algorithm, (-1.0, ""))[0]:
            self.worst[algorithm] = (error, where)

    def lines(self) -> list[str]:
        out = []
        for name in sorted(set(self.worst) | set(self.cases)):
            err, where = self.worst.get(name, (0.0, ""))
            cases = f"cases={self.cases[name]:<4} " if self.cases.get(name) else ""
            out.append(f"{name:<22} {cases}worst rel err={err:.3g}  ({where})")
            out.extend(f"{'':<22} note: {note}" for note in sorted(self.notes.get(name, ())))
        return out

    def state(self) -> dict[str, Any]:
        """What was recorded, in plain types (pytest-xdist sends it from a worker to the controller)."""
        return {"worst": {name: [err, where] for name, (err, where) in self.worst.items()},
                "cases": dict(self.cases), "notes": {name: sorted(notes) for name, notes in self.notes.items()}}

    def merge(self, state: dict[str, Any]) -> None:
        """Add what another process recorded (a :meth:`state`)."""
        for name, (err, where) in state["worst"].items():
            self.record(name, err, where)
        for name, count in state["cases"].items():
            self.cases[name] += count
        for name, notes in state["notes"].items():
            self.notes[name].update(notes)


#: The summaries printed in pytest's terminal summary, by section title. ``tests/conftest.py``
#: prints them and, under pytest-xdist, first gathers what each worker recorded.
REPORTED: dict[str, ErrorSummary] = {}


def reported_summary(title: str) -> ErrorSummary:
    """The summary printed under ``title`` at the end of the run (made on first use)."""
    return REPORTED.setdefault(title, ErrorSummary())


#: Filled by the federated-vs-pooled tests.
POOLED_SUMMARY = reported_summary("mipflow algorithms: federated vs pooled (statsmodels/scipy)")
#: Filled by the Exareme2 validation tests.
VALIDATION_SUMMARY = reported_summary("mipflow algorithms: federated vs Exareme2 expected results")


def read_dataset_csvs(folder: Path, model: DataModel, *, include_test: bool = False) -> pd.DataFrame:
    """Every CSV of a data model folder, typed by the data model (text -> str)."""
    dtypes = {v.code: ("str" if v.sql_type == "text" else "float64") for v in model}
    files = sorted(p for p in folder.glob("*.csv") if include_test or "-test" not in p.name)
    return pd.concat([pd.read_csv(p, dtype=dtypes) for p in files], ignore_index=True)


def split_by(frame: pd.DataFrame, key: Iterable[str]) -> list[pd.DataFrame]:
    """Rows per node given one node label per row."""
    labels = pd.Series(list(key), index=frame.index)
    return [frame[labels == label].reset_index(drop=True) for label in sorted(labels.unique())]


def node_secret(index: int) -> bytes:
    """A test node's secret (distinct per node, fixed across runs)."""
    return f"test node {index} secret".encode()


def fold_keyed(frames: Iterable[pd.DataFrame], secrets: Iterable[bytes] | None = None) -> list[pd.DataFrame]:
    """Node frames as a node hands them to a cross-validated local step: with the node's fold keys.

    Each row's identity is its node and position (``_pid``), visit ``"1"`` and its dataset; its fold
    key is the node's keyed hash of that (:func:`mipflow.node.controls.folds.add_fold_keys`, key from
    ``secrets[i]``, by default :func:`node_secret`).  The identity columns are dropped again.
    """
    from mipflow.node.controls.differencing import hash_key
    from mipflow.node.controls.folds import add_fold_keys, fold_key

    frames = list(frames)
    secrets = list(secrets) if secrets is not None else [node_secret(i) for i in range(len(frames))]
    out = []
    for i, (frame, secret) in enumerate(zip(frames, secrets)):
        identity = frame.copy()  # one block: the columns below do not fragment it
        identity["_pid"], identity["_visit"] = [f"n{i}-{j}" for j in range(len(frame))], "1"
        out.append(add_fold_keys(identity, fold_key(secret), hash_key(secret)).drop(columns=["_pid", "_visit"]))
    return out
