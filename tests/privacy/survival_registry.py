"""Hospitals' survival rows the pooled-survival-bins attacks of the outside reviews share (rounds 12 and 13)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def survival_rows(hospital: str, deaths, censored: int, censored_at: float = 400.0, *, seed: int = 0,
                  prefix: str = "") -> pd.DataFrame:
    """One hospital's ischaemic-stroke patients (dataset ``hospital``): the deaths on days ``deaths``, then
    ``censored`` patients censored at day ``censored_at``; age, sex and NIHSS drawn from a generator seeded by
    the hospital's name (plus ``seed``); patients ``<hospital>-<prefix><k>``."""
    n = len(deaths) + censored
    rng = np.random.default_rng(sum(map(ord, hospital)) + seed)
    return pd.DataFrame({
        "subjectcode": [f"{hospital}-{prefix}{k}" for k in range(n)], "dataset": hospital,
        "age": rng.integers(30, 90, n).astype(float), "sex": rng.choice(["F", "M"], n), "stroke_type": "ischaemic",
        "nihss_admission": rng.integers(0, 30, n).astype(float),
        "followup_days": np.array(list(deaths) + [censored_at] * censored, dtype=float),
        "death_90d": ["yes"] * len(deaths) + ["no"] * censored})
