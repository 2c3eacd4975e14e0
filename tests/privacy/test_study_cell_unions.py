"""The union rule on a study's level cells (ADR 0028 amended, round 17's rule lifted to the cells).

A study of one population with three two-level nominal variables (sex, stroke type, 90-day death) and a linear
regression releases, over the study, every cell crossing two of them: the three two-way margins of a 2x2x2 table.
Their span misses one direction only, the table's three-way interaction (``+1`` on the cells of even parity, ``-1``
on the odd ones).  So no single cell of the table follows (each has a non-zero entry there: the atom rule passes),
but ``x_000 + x_111`` (``+1 - 1 = 0``) does: with one patient in each of the two corners and ten in each other
cell, the regression's sums over the study's cells give the two patients' count, ages and NIHSS added up, and
``x_000 - x_011`` their difference, though every released cell holds eleven rows or more.  Approval and refresh
refuse it, with no count; one one-patient corner alone is approved (no combination lives on it); and the same
decision is taken within each bin of the survival grid.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import ConfigError
from mipflow.node.controls import study_approval
from mipflow.node.controls.atoms import check_family, node_primes
from mipflow.node.controls.study import read_study
from mipflow.node.controls.study_cells import chain_problem
from mipflow.node.home import NodeHome
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import PROJECT, protocol, stroke_rows
from tests.nodes import grant_all, load_frame, standard_home

NAME = "corners"
CORNERS = {("M", "ischaemic", "yes"): "000", ("F", "haemorrhagic", "no"): "111"}
TABLE = [(s, t, d) for s in ("M", "F") for t in ("ischaemic", "haemorrhagic") for d in ("yes", "no")]


def table_rows(counts: dict[tuple[str, str, str], int], seed: int, prefix: str) -> pd.DataFrame:
    """Stroke rows with ``counts[(sex, stroke type, death)]`` rows in each cell of the 2x2x2 table, every study
    variable present."""
    cells = [cell for cell in TABLE for _ in range(counts[cell])]
    frame = stroke_rows(seed, len(cells), "hospital_a", prefix)
    frame["sex"] = [c[0] for c in cells]
    frame["stroke_type"] = [c[1] for c in cells]
    frame["death_90d"] = [c[2] for c in cells]
    frame["nihss_admission"] = np.random.default_rng(seed).integers(0, 30, len(cells)).astype(float)  # all present
    return frame


def counts(one_row: tuple[tuple[str, str, str], ...], other: int = 10) -> dict[tuple[str, str, str], int]:
    return {cell: 1 if cell in one_row else other for cell in TABLE}


def home_with(root, frame: pd.DataFrame) -> NodeHome:
    standard_home(root, "hospital_a")
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project=PROJECT)
    return NodeHome(root)


def corner_protocol() -> dict:
    doc = protocol(datasets=["hospital_a"], name=NAME, subgroups=[],
                   variables=["age", "nihss_admission", "sex", "stroke_type", "death_90d"],
                   algorithms=["descriptive_stats", "linear_regression"])
    doc.pop("survival")
    return doc


def assert_no_data(message: str, start: str) -> None:
    assert message.startswith(start), message
    assert "single out several small groups" in message, message
    # the only number is the setting the admin chose (nfilter_tab) and the ADR's: no size, no value
    assert set(re.findall(r"\d+", message)) <= {"3", "0028"}, message


def test_two_one_patient_corners_of_the_table_are_refused_at_approval(tmp_path) -> None:
    frame = table_rows(counts(tuple(CORNERS)), 31, "c")
    home = home_with(tmp_path / "a", frame)
    # the atom rule alone passes: no single cell of the table is isolated by the margins
    with pytest.raises(ConfigError) as caught:
        study_approval.approve(home, PROJECT, corner_protocol())
    assert_no_data(str(caught.value), f"study {NAME!r} not approved:")
    assert read_study(home.root, PROJECT) is None
    # the combination is real: x_000 + x_111 is a combination of the released two-way margins
    pooled = frame
    margins = []
    for a, b in (("sex", "stroke_type"), ("sex", "death_90d"), ("stroke_type", "death_90d")):
        margins += [pooled[(pooled[a] == u) & (pooled[b] == v)] for u in pooled[a].unique() for v in pooled[b].unique()]
    design = np.array([[((pooled["sex"] == s) & (pooled["stroke_type"] == t) & (pooled["death_90d"] == d)).any()
                        and ((m["sex"] == s) & (m["stroke_type"] == t) & (m["death_90d"] == d)).any()
                        for (s, t, d) in TABLE] for m in margins], dtype=float)
    target = np.array([1.0 if cell in CORNERS else 0.0 for cell in TABLE])
    weights, *_ = np.linalg.lstsq(design.T, target, rcond=None)
    assert np.allclose(design.T @ weights, target, atol=1e-9)
    ages = np.array([m["age"].sum() for m in margins])
    corners = frame[[(s, t, d) in CORNERS for s, t, d in zip(frame["sex"], frame["stroke_type"], frame["death_90d"])]]
    assert len(corners) == 2 and abs(weights @ ages - corners["age"].sum()) <= 1e-9 * max(1.0, corners["age"].sum())
    assert all(len(m) >= 11 for m in margins)  # every released cell is large


def test_one_one_patient_corner_is_approved_and_the_refresh_emptying_the_other_is_refused(tmp_path) -> None:
    """One corner holds one patient, the opposite eleven: approved.  Ten of the eleven get another 90-day outcome
    (rows changed: ten removed and ten added in every cell that moves, nothing small for the other rules); the
    opposite corner holds one patient then, and the refresh is refused by the union rule alone; the same change
    moving ten patients into that corner instead is refreshed."""
    start = counts((TABLE[0],)) | {TABLE[-2]: 20, TABLE[-1]: 11}
    frame = table_rows(start, 32, "c")
    home = home_with(tmp_path / "b", frame)
    approved = study_approval.approve(home, PROJECT, corner_protocol())
    assert approved["status"] == "approved"
    changed = frame.copy()
    changed.iloc[-11:-1, changed.columns.get_loc("death_90d")] = "yes"
    assert (changed["sex"].iloc[-11:] == "F").all() and (changed["stroke_type"].iloc[-11:] == "haemorrhagic").all()
    load_frame(home.root, STROKE, changed)
    with pytest.raises(ConfigError) as caught:
        study_approval.refresh(home, PROJECT)
    message, _ = str(caught.value).split("; the study stays on its snapshot")
    assert_no_data(message, f"study {NAME!r} not refreshed:")
    assert read_study(home.root, PROJECT).snapshot == approved["snapshot"]
    other = home_with(tmp_path / "c", frame)
    study_approval.approve(other, PROJECT, corner_protocol())
    into = frame.copy()
    into.iloc[-31:-21, into.columns.get_loc("death_90d")] = "no"  # ten of (F, haemorrhagic, yes) into the corner
    assert (frame["death_90d"].iloc[-31:-11] == "yes").all()
    load_frame(other.root, STROKE, into)
    assert study_approval.refresh(other, PROJECT)["status"] == "refreshed"


def test_the_rule_is_decided_within_each_bin_of_the_survival_grid() -> None:
    """Two bins: over both the corners hold eleven rows each (nothing small), within the first bin one each."""
    first = [cell for cell in TABLE for _ in range(counts(tuple(CORNERS))[cell])]
    second = [cell for cell in TABLE for _ in range(10)]
    cells = first + second
    population = np.arange(len(cells), dtype=np.uint64)
    levels = pd.DataFrame({"sex": [c[0] for c in cells], "stroke_type": [c[1] for c in cells],
                           "death_90d": [c[2] for c in cells]})
    bins = np.r_[np.zeros(len(first), dtype=np.int64), np.ones(len(second), dtype=np.int64)]
    nominal, primes = ["sex", "stroke_type", "death_90d"], node_primes(b"k" * 32)
    sets = [("population", population)]
    assert chain_problem(sets, population, levels, nominal, 2, 3, primes) is None
    problem = chain_problem(sets, population, levels, nominal, 2, 3, primes, bins=bins, labels=["early", "late"])
    assert problem is not None and "within early" in problem and "single out several small groups" in problem
    assert not re.search(r"\d", problem), problem
    # the atom rule alone would not see it: within the first bin no single cell is isolated
    corner_rows = [population[:len(first)][levels["sex"][:len(first)].eq(s) & levels["stroke_type"][:len(first)].eq(t)
                                           & levels["death_90d"][:len(first)].eq(d)] for s, t, d in TABLE]
    margins = [np.concatenate([corner_rows[i] for i, cell in enumerate(TABLE) if cell[a] == u and cell[b] == v])
               for a, b in ((0, 1), (0, 2), (1, 2)) for u in {c[a] for c in TABLE} for v in {c[b] for c in TABLE}]
    verdict = check_family(margins, 3, primes)
    assert verdict.allowed and verdict.smallest_isolatable is None
    assert not check_family(margins, 3, primes, unions=True).allowed
