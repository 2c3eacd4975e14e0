"""Value stamps of released groups (ADR 0061 "Value stamps", the group memory; fifteenth review, hole 1): a group
and a group or cohort of the same rows under one consent epoch, in either order, may not hold other values in a
column both read; honest repeats and corrections of unread columns are answered.

Each step runs the node's controls in the order of ``mipflow.node.api.step``: the cohort ledger's check (with the
cohorts' stamps), :func:`check_groups`, then the records (:meth:`DifferencingGuard.after_step`,
:func:`remember_groups`), on a real guard over the node home's files.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.local import prepare_local_data
from mipflow.exceptions import DisclosureError
from mipflow.node.controls.differencing import DifferencingGuard
from mipflow.node.controls.group_stamps import GroupStamps
from mipflow.node.controls.groups import Group, _digest, check_groups, kind_of, remember_groups
from mipflow.node.controls.ledger import cohort_digest
from mipflow.protocol.request import AnalysisRequest
from tests.mipflow.algorithms.survival_data import STROKE

SECRET = b"node secret of the group stamp tests"
SETTINGS = SimpleNamespace(differencing_check=True, min_row_count=10, nfilter_tab=3)
TYPES = ("ischaemic", "haemorrhagic", "tia")


def registry(n: int = 90) -> pd.DataFrame:
    rng = np.random.default_rng(61)
    return pd.DataFrame({"_pid": [f"p{i:03d}" for i in range(n)], "dataset": "hospital_a", "_visit": "v1",
                         "stroke_type": [TYPES[i % 3] for i in range(n)],
                         "nihss_admission": rng.integers(0, 30, n).astype(float),
                         "age": np.round(rng.uniform(30, 85, n), 1)})


class Node:
    """A node's differencing controls over ``root`` (its memories on disk), under consent ``epoch``."""

    def __init__(self, root: Path, epoch: str = "") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.guard, self.epoch = DifferencingGuard(root, SECRET), epoch

    def step(self, algorithm: str, frame: pd.DataFrame, y, x=(), **parameters) -> str:
        algo = get_algorithm(algorithm)
        request = AnalysisRequest.from_dict({"inputdata": {"data_model": STROKE.key, "datasets": ["hospital_a"],
                                                           "x": list(x), "y": list(y)}, "parameters": parameters})
        variables = list(algo.variables(request))
        cohorts = self.guard.cohorts(STROKE.key, frame, variables, algo.complete_case, algo.released_by)
        work = SimpleNamespace(explore=None, algo=algo, data=prepare_local_data(algo, frame, request), model=STROKE,
                               cohorts=cohorts, settings=SETTINGS, study=None, current_rows=None, groups=None)
        context = SimpleNamespace(differencing=self.guard, store=SimpleNamespace(consent_applied=lambda: self.epoch))
        try:
            self.guard.before_step(cohorts, SETTINGS.min_row_count, self.epoch)
            check_groups(SimpleNamespace(analysis=request), context, work)
        except DisclosureError as refused:
            assert refused.control == "differencing"
            words = str(refused)
            assert not any(ch.isdigit() for ch in words.replace("min_row_count (10)", "")), words  # no value
            return "stamps" if words.startswith("a load has corrected") else "refused"
        self.guard.after_step(cohorts, request, None, self.epoch)
        remember_groups(context, work)
        return "answered"

    def anova(self, frame: pd.DataFrame, y: str = "nihss_admission") -> str:
        return self.step("anova_oneway", frame, [y], ["stroke_type"])

    def describe(self, frame: pd.DataFrame, *variables: str) -> str:
        return self.step("descriptive_stats", frame, list(variables or ["nihss_admission"]))


def corrected(frame: pd.DataFrame, level: str = "tia", column: str = "nihss_admission", k: int = 4) -> pd.DataFrame:
    """``frame`` after a load corrected the ``k``-th row of ``level`` in place (the same row identity)."""
    fixed = frame.copy()
    at = fixed.index[fixed["stroke_type"] == level][k]
    fixed.loc[at, column] = fixed.loc[at, column] + 7.0
    return fixed


def only(frame: pd.DataFrame, *levels: str) -> pd.DataFrame:
    """The rows a filter on the levels selects."""
    return frame[frame["stroke_type"].isin(levels)]


def test_a_group_then_its_rows_as_a_cohort_after_a_correction_are_refused_and_the_honest_ones_answered(tmp_path):
    """The review's attack (hole 1): the ANOVA's TIA group, a correction of a TIA patient's NIHSS, descriptive
    statistics of the TIA rows (a new cohort, 0 rows from the group).  Without the correction, or after one of a
    column neither reads, the same cohort is answered."""
    rows = registry()
    attacked = Node(tmp_path / "attacked")
    assert attacked.anova(rows) == "answered"
    assert attacked.describe(only(corrected(rows), "tia")) == "stamps"
    assert attacked.describe(only(corrected(rows), "ischaemic")) == "answered"  # another group, unchanged
    # the node restarted: the groups' stamps are on disk
    assert Node(tmp_path / "attacked").describe(only(corrected(rows), "tia")) == "stamps"
    honest = Node(tmp_path / "honest")
    assert honest.anova(rows) == "answered"
    assert honest.anova(rows) == "answered"                      # an exact repeat
    assert honest.describe(only(rows, "tia")) == "answered"      # the same rows, the same values
    assert honest.describe(only(rows, "tia")) == "answered"
    unread = Node(tmp_path / "unread")
    assert unread.anova(rows) == "answered"
    assert unread.describe(only(corrected(rows, column="age"), "tia")) == "answered"  # age: read by neither
    assert unread.describe(only(corrected(rows, column="age"), "tia"), "age") == "answered"  # read by one only


def test_a_cohort_then_its_rows_as_a_group_after_a_correction_are_refused(tmp_path):
    """The other direction: descriptive statistics of the TIA rows, a correction, the ANOVA (its TIA group is the
    remembered cohort's rows); a cohort of age only leaves the ANOVA of NIHSS answered."""
    rows = registry()
    node = Node(tmp_path / "nihss")
    assert node.describe(only(rows, "tia")) == "answered"
    assert node.anova(corrected(rows)) == "stamps"
    assert node.anova(corrected(rows, "ischaemic")) == "answered"  # the TIA rows hold what they held
    other = Node(tmp_path / "age")
    assert other.describe(only(rows, "tia"), "age") == "answered"
    assert other.anova(corrected(rows)) == "answered"  # NIHSS: the cohort read none


def test_a_group_then_the_same_group_of_another_algorithm_and_the_union_as_a_cohort(tmp_path):
    """A group against a remembered group (the t-test's TIA group after the ANOVA's), and the union of a release's
    cells against a later cohort of its rows (the ledger holds it with its stamps)."""
    rows = registry()

    def ttest(node: Node, frame: pd.DataFrame) -> str:
        return node.step("ttest_independent", frame, ["nihss_admission"], ["stroke_type"], groupA="tia",
                         groupB="ischaemic")

    for name, fixed in (("groups", corrected(rows)), ("honest-groups", rows)):
        node = Node(tmp_path / name)
        assert node.anova(rows) == "answered"
        # its cohort (TIA and ischaemic rows) is new to the ledger: only its TIA group is the ANOVA's rows
        assert ttest(node, only(fixed, "tia", "ischaemic")) == ("stamps" if name == "groups" else "answered")
    for name, fixed in (("union", corrected(rows)), ("honest-union", rows)):
        node = Node(tmp_path / name)
        assert ttest(node, rows) == "answered"  # its cohort is every row, its union the TIA and ischaemic ones
        assert node.describe(only(fixed, "tia", "ischaemic")) == ("stamps" if name == "union" else "answered")


def test_the_stamp_memory_keeps_the_first_stamp_per_rows_column_and_epoch(tmp_path):
    for memory in (GroupStamps(None), GroupStamps(tmp_path / "groups.sqlite")):
        rows = np.arange(20, dtype=np.uint64)
        kind = kind_of(STROKE.key, [("stroke_type", "tia")])
        first = Group(kind, rows, _digest(kind, rows), STROKE.key, stamps={"nihss_admission": 5})
        memory.record([first], "e1")
        memory.record([Group(kind, rows, _digest(kind, rows), STROKE.key,
                             stamps={"nihss_admission": 6, "age": 7})], "e1")  # a column read first is added
        digest = cohort_digest(STROKE.key, rows)
        assert memory.of(STROKE.key, digest, "e1") == {"nihss_admission": 5, "age": 7}
        assert memory.of(STROKE.key, digest, "e2") == {}  # another epoch: no repeat to compare (ADR 0061)
        assert memory.changed(STROKE.key, digest, {"nihss_admission": 6}, "e1")
        assert not memory.changed(STROKE.key, digest, {"nihss_admission": 5, "glucose": 1}, "e1")
        assert not memory.changed(STROKE.key, digest, {"nihss_admission": 6}, "e2")
        assert not memory.changed(STROKE.key, cohort_digest(STROKE.key, rows[1:]), {"nihss_admission": 6}, "e1")


@pytest.mark.parametrize("epoch", ["", "e1"])
def test_stamps_are_compared_under_the_epoch_the_group_was_released_under(tmp_path, epoch):
    """Under the same epoch a changed group is the stamp refusal; a later epoch refuses the same rows whatever
    they hold (the epochs' rule, ADR 0061), in its own words."""
    rows = registry()
    node = Node(tmp_path, epoch)
    assert node.anova(rows) == "answered"
    assert node.describe(only(corrected(rows), "tia")) == "stamps"
    node.epoch = epoch + "-next"
    assert node.describe(only(rows, "tia")) == "refused"


def test_the_frame_s_group_stamps_are_the_stamps_of_each_group_s_rows(tmp_path):
    """:func:`frame_group_stamps` (one sort, running sums) against :func:`frame_stamps` of each set's rows as a
    mask, rows in any order, a key held by two rows, a missing value, sets of one row and of none."""
    from mipflow.node.controls.group_stamps import frame_group_stamps
    from mipflow.node.query.stamps import frame_stamps

    rng = np.random.default_rng(7)
    n, key = 500, "k" * 16
    data = pd.DataFrame({"y": rng.normal(0, 1, n), "grp": rng.choice(["a", "b"], n).astype(object)})
    data.loc[3, "y"] = np.nan
    order = rng.permutation(10 * n)[:n].astype(np.uint64)
    order[9] = order[8]  # two rows of one key
    sets = [np.unique(order[rng.random(n) < p]) for p in (0.1, 0.5, 0.9)] + [order[[4]], order[:0]]
    groups = [Group("k", rows, _digest("k", rows), STROKE.key) for rows in sets]
    union = np.unique(order[rng.random(n) < 0.7])
    got, got_union = frame_group_stamps(data, order, groups, union, ["y", "grp", "absent"], key)
    want = frame_stamps(data, order, [np.isin(order, rows) for rows in [*sets, union]], ["y", "grp"], key)
    assert [g.stamps for g in got] + [got_union] == list(want)
    assert len({g.stamps["y"] for g in got}) == len(got)  # not vacuous: other rows, other stamps
