"""A small synthetic data model and data generator for the algorithm tests."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mipflow.algorithms import AnalysisRequest
from mipflow.protocol.datamodel import DataModel

MODEL = DataModel.from_dict({
    "code": "synth", "version": "1", "label": "synthetic test model",
    "variables": [
        {"code": "dataset", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": "d0"}, {"code": "d1"}, {"code": "d2"}]},
        {"code": "y", "sql_type": "real", "isCategorical": False},
        {"code": "x1", "sql_type": "real", "isCategorical": False},
        # large mean, small spread: what raw sums of squares get wrong
        {"code": "x2", "sql_type": "real", "isCategorical": False},
        {"code": "age", "sql_type": "int", "isCategorical": False},
        # declared bounds: histograms bin over them without releasing extremes
        {"code": "score", "sql_type": "int", "isCategorical": False, "minValue": 0, "maxValue": 30},
        # enumeration order unsorted, and "zz" never occurs
        {"code": "grp", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": "c"}, {"code": "a"}, {"code": "b"}, {"code": "zz"}]},
        {"code": "sex", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": "M"}, {"code": "F"}]},
        # an integer-coded categorical stored as numbers
        {"code": "stage", "sql_type": "int", "isCategorical": True,
         "enumerations": [{"code": "1"}, {"code": "2"}, {"code": "3"}]},
        {"code": "outcome", "sql_type": "text", "isCategorical": True,
         "enumerations": [{"code": "yes"}, {"code": "no"}, {"code": "unknown"}]},
    ],
})


def make_data(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    grp = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    sex = rng.choice(["M", "F"], size=n)
    stage = rng.integers(1, 4, size=n).astype(float)
    x1 = rng.normal(2.0, 1.5, size=n)
    x2 = 1000.0 + rng.normal(0.0, 0.5, size=n)
    age = rng.integers(20, 90, size=n).astype(float)
    effect = pd.Series(grp).map({"a": 0.0, "b": 1.5, "c": -2.0}).to_numpy()
    y = 3.0 + 0.7 * x1 + 2.0 * (x2 - 1000.0) + 0.03 * age + effect + rng.normal(0, 1.0, size=n)
    logit = -0.3 + 0.9 * (x1 - 2.0) + 0.5 * (sex == "F") + 0.4 * effect
    outcome = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes",
                       rng.choice(["no", "unknown"], size=n))
    df = pd.DataFrame({
        "dataset": rng.choice(["d0", "d1", "d2"], size=n),
        "y": y, "x1": x1, "x2": x2, "age": age, "grp": grp, "sex": sex,
        "stage": stage, "outcome": outcome, "score": rng.integers(0, 31, size=n).astype(float),
    })
    # a few missing values: complete-case analysis must drop the same rows
    for col in ("y", "x1", "grp"):
        df.loc[rng.random(n) < 0.04, col] = np.nan
    return df


def request(x=(), y=(), **parameters) -> AnalysisRequest:
    return AnalysisRequest(data_model=MODEL.key, datasets=("d0", "d1", "d2"),
                           x=tuple(x), y=tuple(y), filters=None, parameters=parameters)
