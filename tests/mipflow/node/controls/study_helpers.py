"""A node home with stroke rows and a study protocol, for the study-mode tests; stroke registries other
controls' tests share."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mipflow.node.home import NodeHome
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke
from tests.nodes import grant_all, load_frame
from tests.nodes import standard_home

PROJECT = "stroke-study"


def rule(field: str, operator: str, value: Any = None) -> dict[str, Any]:
    kind = "double" if isinstance(value, (int, float)) else "string"
    return {"id": field, "field": field, "type": kind, "operator": operator, "value": value}


def where(*rules: dict[str, Any], condition: str = "AND") -> dict[str, Any]:
    return {"condition": condition, "rules": list(rules), "valid": True}


ELDERLY = where(rule("age", "greater_or_equal", 65))
WOMEN = where(rule("sex", "equal", "F"))
MEN = where(rule("sex", "equal", "M"))
VARIABLES = ["age", "sex", "stroke_type", "nihss_admission", "followup_days", "death_90d"]
ALGORITHMS = ["descriptive_stats", "linear_regression", "kaplan_meier", "ttest_independent"]
#: the study's survival grid: every Kaplan-Meier analysis of the study takes it (ADR 0028)
SURVIVAL = {"time": "followup_days", "bin_width": 7.0}


def protocol(datasets=("hospital_a", "hospital_b", "hospital_c"), **changes: Any) -> dict[str, Any]:
    doc = {"name": "stroke-outcomes", "data_model": STROKE.key, "datasets": list(datasets),
           "variables": list(VARIABLES), "population": {"filter": None},
           "subgroups": [{"name": "elderly", "filter": ELDERLY}, {"name": "women", "filter": WOMEN},
                         {"name": "men", "filter": MEN}],
           "algorithms": list(ALGORITHMS), "survival": dict(SURVIVAL), "note": "test protocol"}
    doc.update(copy.deepcopy(changes))
    return doc


def stroke_rows(seed: int, n: int, dataset: str, prefix: str) -> pd.DataFrame:
    """``n`` stroke rows of one dataset (a few with a missing NIHSS), patients ``<prefix>-<k>``."""
    frame = make_stroke(seed, n)
    frame["dataset"] = dataset
    frame["subjectcode"] = [f"{prefix}-{k}" for k in range(n)]
    return frame


def glucose_registry(n: int = 240) -> pd.DataFrame:
    """Glucose 4-9 mmol/l, fifty patients at 11.9-12.25; ten patients under 25 with glucose 4-5.5 but one
    (glucose 12.3, age 21.5, NIHSS 37): the twelfth review's registry (hole 4)."""
    frame = stroke_rows(9, n, "hospital_a", "glc")
    rng = np.random.default_rng(9)
    frame["age"] = np.round(rng.uniform(30, 85, n), 1)
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    frame["glucose_mmol"] = np.round(rng.uniform(4, 9, n), 2)
    frame.loc[frame.index[10:60], "glucose_mmol"] = np.round(rng.uniform(11.9, 12.25, 50), 2)
    young = list(frame.index[200:210])
    frame.loc[young, "age"] = np.round(rng.uniform(19, 24.5, 10), 1)
    frame.loc[young, "glucose_mmol"] = np.round(rng.uniform(4, 5.5, 10), 2)
    frame.loc[young[3], ["glucose_mmol", "age", "nihss_admission"]] = [12.3, 21.5, 37.0]
    return frame


def node_home(root: Path, name: str = "hospital_a", *, seed: int = 11, n: int = 400,
              dataset: str = "hospital_a", **settings: Any) -> tuple[NodeHome, pd.DataFrame]:
    """A node home holding ``n`` rows of ``dataset``, with a grant for every identity in PROJECT."""
    home = standard_home(root, name)
    for key, value in settings.items():
        home.set_setting(key, value)
    frame = stroke_rows(seed, n, dataset, f"{name}-p")
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project=PROJECT)
    return NodeHome(root), frame


def population(frame: pd.DataFrame, filters: dict | None = None) -> pd.DataFrame:
    """The study population of ``frame`` (complete over VARIABLES), restricted by a simple subgroup."""
    rows = frame.dropna(subset=VARIABLES)
    if filters is ELDERLY:
        rows = rows[rows["age"] >= 65]
    elif filters is WOMEN:
        rows = rows[rows["sex"] == "F"]
    elif filters is MEN:
        rows = rows[rows["sex"] == "M"]
    return rows.reset_index(drop=True)


def sorted_keys(values) -> np.ndarray:
    return np.sort(np.asarray(values, dtype=np.uint64))
