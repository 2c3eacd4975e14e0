"""Cox regression's events within a level of a nominal covariate (issue 14; ADR 0051 amended, ADR 0046): through real
node processes (``mipflow node serve`` on loopback), the shipped thresholds (``min_row_count`` 10, ``nfilter_tab`` 3).

A Cox score round's share ``U_i = event_x - sum_j d_ij S1_j / S0_j`` is sent in the clear with one or two nodes (or
``secure_aggregation: false``) and forwarded to every participant with the next round; ``event_x`` is the sum of the
node's covariates over its events, so its entry for a dummy column is the node's events in that level.  A peer opens
the pooled ``S1_j / S0_j`` (ADR 0046) and reads the node's released events per bin (``group_counts``), so it adds
them back: the node's deaths among its women.  Before, the node checked its level counts, joint cells and bins at
round 0 but not the events within a level: a node with two deaths among its women answered (the honest federation of
``tests/integration/test_survival_federation.py`` asserted it), and its share carried the two.

* ``test_the_score_share_carries_a_node_s_events_within_a_level_exactly``: the channel, at a node with three deaths
  among its women (at ``nfilter_tab``, answered): the peer's arithmetic on the replies the central site recorded
  gives three exactly; the counts the node checked before this change are all 0 or at least ``nfilter_tab`` at the
  node with two as well (so that node answered, its share carrying two).
* ``test_a_node_with_two_deaths_among_its_women_is_refused_at_round_0``: now that node refuses at round 0 (control
  ``nfilter_tab``, no size said) and is left out; the other node's fit answers and equals the pooled fit of its rows.
"""
from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from statsmodels.duration.hazard_regression import PHReg

from mipflow.algorithms.design import declared_cell_counts, dummy_level_groups, level_counts
from mipflow.central.rounds import run_analysis as _run_analysis
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.survival_data import STROKE, complete, cox_design, make_stroke, request, round_up
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, pin_each_other, recording_clients, served_clients
from tests.nodes import standard_home

run_analysis = functools.partial(_run_analysis, researcher=RESEARCHER, project=PROJECT)

pytestmark = pytest.mark.xdist_group("cox_level_events")

TARGET, PEER = "hospital_a", "hospital_b"
X = ("sex", "age")
COLUMNS = ["followup_days", "death_90d", *X]


def frames(women_deaths: int) -> dict[str, pd.DataFrame]:
    """Two hospitals' rows; at the target, exactly ``women_deaths`` of its women died (many men did)."""
    data = make_stroke(2026, 900)
    out = {h: complete(data[data["dataset"] == h], COLUMNS) for h in (TARGET, PEER)}
    target = out[TARGET]
    women = target.index[target["sex"] == "F"]
    target.loc[women, "death_90d"] = "no"
    target.loc[women[:women_deaths], "death_90d"] = "yes"
    return out


@pytest.fixture
def federation(tmp_path: Path, request) -> Iterator[tuple[dict, dict[str, pd.DataFrame]]]:
    rows = frames(request.param)
    roots = {}
    for hospital, frame in rows.items():
        roots[hospital] = tmp_path / hospital
        standard_home(roots[hospital], hospital)
        assert load_frame(roots[hospital], STROKE, frame) == len(frame)
        grant_all(roots[hospital])
    pin_each_other(roots)
    with served_clients(roots) as served:
        yield served, rows


def checked_before(frame: pd.DataFrame) -> list[int]:
    """The level counts and joint cells a Cox node checked at round 0 before this change (its bins merge to
    ``min_row_count``): the target's women and men, never their deaths."""
    counts = level_counts(frame, X, STROKE)
    return [*(c for code in X for c in counts.get(code, [])),
            *declared_cell_counts(frame, dummy_level_groups(X, STROKE), STROKE)]


def cox(**parameters) -> dict:
    """The Cox request over the two hospitals' datasets."""
    doc = request("cox_regression", x=X, **parameters).to_dict()
    doc["inputdata"]["datasets"] = [TARGET, PEER]
    return doc


def pooled_fit(rows: pd.DataFrame, result: dict):
    times = round_up(rows["followup_days"].to_numpy(), result["binning"]["timeline"])
    status = (rows["death_90d"] == "yes").to_numpy(dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PHReg(times, cox_design(rows, result["indep_vars"]), status=status, ties="breslow").fit(
            method="newton", tol=1e-8)


@pytest.mark.parametrize("federation", [3], indirect=True)
def test_the_score_share_carries_a_node_s_events_within_a_level_exactly(federation) -> None:
    served, rows = federation
    tab = 3
    assert int(((rows[TARGET]["sex"] == "F") & (rows[TARGET]["death_90d"] == "yes")).sum()) == tab
    # the node with two deaths among its women passed every count checked before: it answered then
    assert not [n for n in checked_before(frames(2)[TARGET]) if 0 < n < tab]
    with recording_clients(list(served.values())) as (clients, seen):
        outcome = run_analysis("cox_regression", cox(), clients)
    assert not outcome.excluded
    result = outcome.result
    # honest: the federation equals the pooled fit (rows rounded up to the bins)
    everyone = pd.concat(rows.values(), ignore_index=True)
    fit = pooled_fit(everyone, result)
    for key, expected in (("coefficients", fit.params), ("stderr", fit.bse), ("ll", fit.llf)):
        assert_rel_close(result[key], expected, rel=1e-9, what=key)
    # the attack: the target's first score share (coefficients at zero) and its events per common bin
    share = next(reply["aggregates"] for node, _, reply in seen
                 if node == TARGET and "score" in reply["aggregates"])
    timeline = np.asarray(result["binning"]["timeline"], dtype=float)
    events = np.asarray(share["group_counts"][:len(timeline)], dtype=float)
    # what the peer opens: the pooled risk sets' means per bin (S1 / S0 at zero)
    times = round_up(everyone["followup_days"].to_numpy(), timeline)
    column = result["indep_vars"].index("sex[M]")
    men = (everyone["sex"] == "M").to_numpy(dtype=float)
    means = np.array([men[times >= t].mean() if np.any(times >= t) else 0.0 for t in timeline])
    target_times = round_up(rows[TARGET]["followup_days"].to_numpy(), timeline)
    died = (rows[TARGET]["death_90d"] == "yes").to_numpy()
    assert np.array_equal(events, [np.sum(died & (target_times == t)) for t in timeline])  # as released
    men_deaths = float(share["score"][column]) + float(events @ means)
    women_deaths = float(events.sum()) - men_deaths
    assert abs(women_deaths - tab) < 1e-6, women_deaths


@pytest.mark.parametrize("federation", [2], indirect=True)
def test_a_node_with_two_deaths_among_its_women_is_refused_at_round_0(federation) -> None:
    served, rows = federation
    outcome = run_analysis("cox_regression", cox(), list(served.values()))
    assert set(outcome.excluded) == {TARGET}
    reason = outcome.excluded[TARGET]
    assert "(nfilter_tab)" in reason and set(re.findall(r"\d+", reason.split(":", 1)[-1])) <= {"3"}, reason
    # honest: the peer answers, equal to the pooled fit of its own rows
    assert outcome.contributed == {PEER: len(rows[PEER])}
    fit = pooled_fit(rows[PEER], outcome.result)
    for key, expected in (("coefficients", fit.params), ("stderr", fit.bse), ("ll", fit.llf)):
        assert_rel_close(outcome.result[key], expected, rel=1e-9, what=key)
