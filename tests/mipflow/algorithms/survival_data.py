"""Synthetic survival data on the stroke data model, helpers to run survival
analyses through a node's disclosure controls in process, and pooled references."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mipflow.algorithms import AnalysisRequest, get_algorithm, prepare_local_data
from mipflow.algorithms.contract import MAX_ROUNDS
from mipflow.algorithms.sealed import local_state
from mipflow.protocol.wire import transport
from mipflow.node.home import NodeSettings
from mipflow.protocol.datamodel import load_data_model
from mipflow.node.controls.disclosure import DisclosureControls
from mipflow.node.controls.effective_rows import check_effective_rows
from mipflow.exceptions import DisclosureError
from tests.conftest import REPO_ROOT

STROKE = load_data_model(REPO_ROOT / "include" / "schemas" / "stroke_v_0_1" / "CDEsMetadata.json")
HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")


def make_stroke(seed: int, n: int, *, scale_days: float = 600.0, real_times: bool = False) -> pd.DataFrame:
    """Stroke-registry rows with a proportional-hazards survival time (days, censored).

    Times are whole days (``followup_days`` is an int variable) unless
    ``real_times``; a few rows have missing covariates (complete case).
    """
    rng = np.random.default_rng(seed)
    age = rng.integers(30, 90, n).astype(float)
    sex = rng.choice(["M", "F"], n)
    stroke_type = rng.choice(["ischaemic", "haemorrhagic", "tia"], n, p=[0.6, 0.25, 0.15])
    nihss = rng.integers(0, 30, n).astype(float)
    risk = 0.03 * (age - 60) + 0.05 * (nihss - 10) + 0.4 * (sex == "F") - 0.5 * (stroke_type == "tia")
    event_time = rng.exponential(scale_days * np.exp(-risk))
    censor_time = rng.uniform(0, 4 * scale_days, n)
    time = np.minimum(np.minimum(event_time, censor_time), 3650.0)
    time = time if real_times else np.ceil(time)
    frame = pd.DataFrame({
        "subjectcode": [f"p{seed}-{i}" for i in range(n)],
        "dataset": rng.choice(HOSPITALS, n),
        "age": age, "sex": sex, "stroke_type": stroke_type, "nihss_admission": nihss,
        "followup_days": time, "death_90d": np.where(event_time <= censor_time, "yes", "no"),
    })
    frame.loc[rng.random(n) < 0.03, "nihss_admission"] = np.nan
    return frame


def request(algorithm: str, x: Sequence[str] = (), **parameters) -> AnalysisRequest:
    return AnalysisRequest(data_model=STROKE.key, datasets=HOSPITALS, x=tuple(x),
                           y=("followup_days", "death_90d"), parameters={"event_level": "yes", **parameters})


def run_with_controls(algorithm: str, frames: Sequence[pd.DataFrame], req: AnalysisRequest,
                      settings: NodeSettings) -> tuple[dict | None, list[int], dict[int, DisclosureError]]:
    """Run an analysis in process with every node's disclosure controls, as a node API does.

    A node refused in round 0 is left out (as :func:`mipflow.central.rounds.run_analysis` does); a
    refusal in a later round is raised.

    Returns
    -------
    result : dict or None
        None when every node was refused.
    used : list of int
        Indices of the frames that contributed.
    refused : dict
        Frame index -> the refusal.
    """
    alg = get_algorithm(algorithm)
    alg.validate(req, STROKE)
    controls = DisclosureControls(settings)
    local = {i: prepare_local_data(alg, f, req) for i, f in enumerate(frames)}
    refused: dict[int, DisclosureError] = {}
    state = None
    pooled = None  # the state with the previous round's pooled sealed sums, as the nodes compute on it
    for round_no in range(MAX_ROUNDS):
        aggregates = []
        for i, data in list(local.items()):
            try:
                controls.check_rows(alg, req, STROKE, len(data))
                out = alg.local_step(round_no, data, req, STROKE, pooled)
                check_effective_rows(alg.row_weights(round_no, data, req, STROKE, pooled), settings.min_row_count)
                aggregates.append(transport(controls.release(alg, req, STROKE, round_no, out)))
            except DisclosureError as exc:
                if round_no:
                    raise
                refused[i] = exc
                del local[i]
        if not aggregates:
            return None, [], refused
        step = alg.global_step(round_no, aggregates, req, STROKE, state)
        if step.done:
            return transport(step.result), sorted(local), refused
        state = transport(step.state)
        pooled = local_state(alg, transport(state), aggregates)
    raise AssertionError("did not finish")


def round_up(times: np.ndarray, timeline: Sequence[float]) -> np.ndarray:
    """Each time replaced by the first timeline point at or after it."""
    points = np.asarray(timeline, dtype=float)
    index = np.searchsorted(points, np.asarray(times, dtype=float), side="left")
    assert np.all(index < len(points)), "a time lies after the timeline"
    return points[index]


def complete(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    return frame.dropna(subset=list(columns)).reset_index(drop=True)


def cox_design(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """The design matrix of the named mipflow columns (``var[level]`` indicators, numerical as is)."""
    out = []
    for name in columns:
        if "[" in name:
            var, level = name[:-1].split("[")
            out.append((frame[var].astype(str) == level).to_numpy(dtype=float))
        else:
            out.append(frame[name].to_numpy(dtype=float))
    return np.column_stack(out)
