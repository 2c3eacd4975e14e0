"""The groups a frame forms, kept between rounds (issue 13): the same groups as computed afresh, computed
again for any other frame, request or key, and every round still checked against the memories as they are."""
from __future__ import annotations

import gc
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import mipflow.node.controls.groups as groups_module
from mipflow.algorithms import get_algorithm
from mipflow.algorithms.local import prepare_local_data
from mipflow.exceptions import DisclosureError
from mipflow.node.controls import frame_groups
from mipflow.node.controls.differencing import DifferencingGuard
from mipflow.node.controls.groups import Group, _digest, check_groups, group_release
from mipflow.protocol.request import AnalysisRequest
from tests.mipflow.algorithms.survival_data import STROKE

SECRET = b"node secret of the frame groups tests"
SETTINGS = SimpleNamespace(differencing_check=True, min_row_count=10, nfilter_tab=3)
TYPES = ("ischaemic", "haemorrhagic", "tia")


def registry(n: int = 90, seed: int = 61) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"_pid": [f"p{i:03d}" for i in range(n)], "dataset": "hospital_a", "_visit": "v1",
                         "stroke_type": [TYPES[i % 3] for i in range(n)],
                         "nihss_admission": rng.integers(0, 30, n).astype(float)})


def selection(guard: DifferencingGuard, frame: pd.DataFrame, algorithm: str = "anova_oneway") -> SimpleNamespace:
    """What a round of ``algorithm`` on ``frame`` hands the controls (the node's cached selection)."""
    algo = get_algorithm(algorithm)
    request = AnalysisRequest.from_dict({"inputdata": {"data_model": STROKE.key, "datasets": ["hospital_a"],
                                                       "x": ["stroke_type"], "y": ["nihss_admission"]},
                                         "parameters": {}})
    cohorts = guard.cohorts(STROKE.key, frame, list(algo.variables(request)), algo.complete_case, algo.released_by)
    return SimpleNamespace(algo=algo, request=request, data=prepare_local_data(algo, frame, request), cohorts=cohorts)


def release(guard: DifferencingGuard, sel: SimpleNamespace, key: str | None = None):
    return group_release(sel.algo, sel.data, sel.request, STROKE, sel.cohorts, SETTINGS,
                         guard.key if key is None else key)


@pytest.fixture
def built(monkeypatch):
    """How many times the groups were formed (``level_groups`` called)."""
    frame_groups.clear()
    count = [0]
    original = groups_module.level_groups

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(groups_module, "level_groups", counted)
    yield count
    frame_groups.clear()


def summary(rel) -> tuple:
    return (sorted((g.kind, g.digest, g.rows.tolist(), None if g.patients is None else g.patients.tolist(),
                    g.cell, dict(g.stamps)) for g in rel.groups),
            rel.union.tolist(), rel.union_digest, rel.union_stamps, rel.threshold, rel.setting)


def test_a_round_on_the_same_selection_gets_the_groups_computed_afresh_without_forming_them_again(tmp_path, built):
    guard = DifferencingGuard(tmp_path, SECRET)
    sel = selection(guard, registry())
    first = release(guard, sel)
    assert built[0] == 1 and len(first.groups) == 3 and all(g.stamps for g in first.groups)
    again = release(guard, sel)
    assert built[0] == 1  # kept
    frame_groups.clear()
    afresh = release(guard, sel)
    assert built[0] == 2
    assert summary(again) == summary(first) == summary(afresh)
    # what a caller gets cannot change what the next round gets
    assert not again.union.flags.writeable and not again.groups[0].rows.flags.writeable
    again.groups[0].stamps["nihss_admission"] = 0
    again.union_stamps["nihss_admission"] = 0
    assert summary(release(guard, sel)) == summary(first)


def test_another_frame_request_or_ledger_key_forms_the_groups_again(tmp_path, built):
    guard = DifferencingGuard(tmp_path, SECRET)
    rows = registry()
    sel = selection(guard, rows)
    first = release(guard, sel)
    corrected = rows.copy()
    corrected.loc[2, "nihss_admission"] += 7.0  # a load corrected a value in place: a new frame and cohorts
    changed = release(guard, selection(guard, corrected))
    assert built[0] == 2
    assert [g.digest for g in changed.groups] == [g.digest for g in first.groups]  # the same rows
    assert [g.stamps for g in changed.groups] != [g.stamps for g in first.groups]  # other values
    # another algorithm's groups on the same frame and cohorts (a t-test of two levels)
    other = get_algorithm("ttest_independent")
    request = AnalysisRequest.from_dict({"inputdata": {"data_model": STROKE.key, "datasets": ["hospital_a"],
                                                       "x": ["stroke_type"], "y": ["nihss_admission"]},
                                         "parameters": {"groupA": "tia", "groupB": "ischaemic"}})
    two = group_release(other, sel.data, request, STROKE, sel.cohorts, SETTINGS, guard.key)
    assert built[0] == 3 and len(two.groups) == 2
    assert summary(release(guard, sel, key="another key 16 c"))[0] != summary(first)[0]  # other stamps
    assert built[0] == 4
    # a selection freed and another built (possibly at the same address) is never served the former's groups
    del sel
    gc.collect()
    fresh = release(guard, selection(guard, corrected))
    assert built[0] == 5 and summary(fresh) == summary(changed)


def test_every_round_is_checked_against_the_group_memory_as_it_is_then(tmp_path, built):
    """The groups are kept, the decision never: a group remembered between two rounds (another analysis's,
    two rows from one of this release's groups) refuses the next round on the same selection."""
    guard = DifferencingGuard(tmp_path, SECRET)
    sel = selection(guard, registry())
    context = SimpleNamespace(differencing=guard, store=SimpleNamespace(consent_applied=lambda: ""))

    def round_() -> SimpleNamespace:
        work = SimpleNamespace(explore=None, algo=sel.algo, data=sel.data, model=STROKE, cohorts=sel.cohorts,
                               settings=SETTINGS, study=None, current_rows=None, groups=None)
        check_groups(SimpleNamespace(analysis=sel.request), context, work)
        return work

    work = round_()
    tia = next(g for g in work.groups.groups if "tia" in g.kind)
    round_()
    assert built[0] == 1
    kind = '["other", []]'
    near = tia.rows[2:]  # two rows fewer (threshold 3)
    guard.groups.record([Group(kind, near, _digest(kind, near), STROKE.key)], 3)
    with pytest.raises(DisclosureError) as refused:
        round_()
    assert refused.value.control == "differencing" and built[0] == 1
