"""The group memory and the groups a release lets anyone form (ADR 0051)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.contract import ReleasedGroups
from mipflow.exceptions import DisclosureError
from mipflow.node.controls.groups import (
    Group, GroupMemory, _digest, check_complement, kind_of, level_groups, nested_small,
)
from mipflow.protocol.request import AnalysisRequest
from tests.mipflow.algorithms.survival_data import STROKE

MODEL = STROKE.key


def group(kind: str, rows) -> Group:
    rows = np.array(sorted(rows), dtype=np.uint64)
    return Group(kind, rows, _digest(kind, rows), MODEL)


def frame() -> tuple[pd.DataFrame, np.ndarray]:
    data = pd.DataFrame({"stroke_type": ["tia", "ischaemic", "haemorrhagic", "tia", "ischaemic", None],
                         "sex": ["F", "F", "M", "M", "F", "M"]})
    return data, np.arange(100, 106, dtype=np.uint64)


def test_cells_margins_and_union_of_two_columns() -> None:
    data, keys = frame()
    groups, union = level_groups(data, keys, [ReleasedGroups(("stroke_type", "sex"))], STROKE, MODEL)
    by_kind = {g.kind: set(g.rows.tolist()) for g in groups}
    assert by_kind[kind_of(MODEL, [("stroke_type", "tia")])] == {100, 103}          # a margin
    assert by_kind[kind_of(MODEL, [("sex", "F")])] == {100, 101, 104}                # the other margin
    assert by_kind[kind_of(MODEL, [("sex", "F"), ("stroke_type", "ischaemic")])] == {101, 104}  # a cell
    assert set(union.tolist()) == {100, 101, 102, 103, 104}  # the row without a stroke type is in no cell
    assert kind_of(MODEL, [("a", "1"), ("b", "2")]) == kind_of(MODEL, [("b", "2"), ("a", "1")])


def test_only_the_released_levels_are_groups_and_the_rest_is_the_complement() -> None:
    data, keys = frame()
    groups, union = level_groups(data, keys, [ReleasedGroups(("stroke_type",), (("tia", "ischaemic"),))],
                                 STROKE, MODEL)
    assert {g.kind for g in groups} == {kind_of(MODEL, [("stroke_type", "tia")]),
                                        kind_of(MODEL, [("stroke_type", "ischaemic")])}
    assert set(union.tolist()) == {100, 101, 103, 104}
    cohort = np.arange(100, 106, dtype=np.uint64)
    with pytest.raises(DisclosureError) as refused:
        check_complement(cohort, union, 3, "nfilter_tab")  # 2 rows outside
    assert refused.value.control == "differencing"
    assert set(re.findall(r"\d+", str(refused.value))) == {"3"}
    check_complement(cohort, union, 2, "nfilter_tab")          # 2 rows: at the threshold
    check_complement(union, union, 10, "min_row_count")         # none outside


def test_a_group_near_one_of_its_kind_is_refused_and_the_same_group_is_not() -> None:
    memory = GroupMemory()
    tia, other = kind_of(MODEL, [("stroke_type", "tia")]), kind_of(MODEL, [("stroke_type", "ischaemic")])
    memory.record([group(tia, range(13))], 10)
    memory.check([group(tia, range(13))], 10, "min_row_count")        # the same group: 0 rows apart
    memory.check([group(other, range(3, 13))], 10, "min_row_count")   # another kind: not compared
    memory.check([group(tia, range(100, 120))], 10, "min_row_count")  # disjoint, large
    for near in (range(3, 13), range(16), range(3, 23)):               # 3 fewer, 3 more, an overlap of 10
        with pytest.raises(DisclosureError) as refused:
            memory.check([group(tia, near)], 10, "min_row_count")
        assert refused.value.control == "differencing" and "min_row_count (10)" in str(refused.value)
        assert set(re.findall(r"\d+", str(refused.value))) == {"10"}
    memory.check([group(tia, range(23))], 10, "min_row_count")          # 10 rows more
    with pytest.raises(DisclosureError):
        memory.check([group(tia, range(5, 23))], 10, "min_row_count")  # 5 fewer
    # a pair holds to the smaller threshold: their difference carries only the moments both release
    memory.check([group(tia, range(8, 13 + 10))], 3, "nfilter_tab")
    with pytest.raises(DisclosureError):
        memory.check([group(tia, range(11))], 3, "nfilter_tab")         # 2 rows apart


def test_the_memory_is_on_disk_and_shared(tmp_path) -> None:
    tia = kind_of(MODEL, [("stroke_type", "tia")])
    GroupMemory(tmp_path).record([group(tia, range(13))], 10)
    again = GroupMemory(tmp_path)
    assert again.remembered(tia) == 1
    with pytest.raises(DisclosureError):
        again.check([group(tia, range(10))], 10, "min_row_count")


@pytest.mark.parametrize("name, x, y, parameters, expected", [
    ("ttest_independent", ["stroke_type"], ["nihss_admission"], {"groupA": "tia", "groupB": "ischaemic"},
     (ReleasedGroups(("stroke_type",), (("tia", "ischaemic"),)),)),
    ("anova_oneway", ["stroke_type"], ["nihss_admission"], {}, (ReleasedGroups(("stroke_type",)),)),
    ("anova", ["stroke_type", "sex"], ["nihss_admission"], {}, (ReleasedGroups(("stroke_type", "sex")),)),
    ("naive_bayes_gaussian_cv", ["age"], ["stroke_type"], {}, (ReleasedGroups(("stroke_type",)),)),
    ("linear_regression", ["stroke_type", "age", "sex"], ["nihss_admission"], {},
     (ReleasedGroups(("stroke_type",)), ReleasedGroups(("sex",)))),
    ("ttest_onesample", [], ["nihss_admission"], {}, ()),
    ("pearson_correlation", [], ["nihss_admission", "age"], {}, ()),
])
def test_algorithms_declare_the_groups_they_release(name, x, y, parameters, expected) -> None:
    request = AnalysisRequest(data_model=MODEL, datasets=("hospital_a",), x=tuple(x), y=tuple(y),
                              parameters=parameters)
    assert get_algorithm(name).released_groups(request, STROKE) == expected


def test_a_group_and_a_cohort_holding_each_other_but_for_a_few_rows_are_refused_from_either_side() -> None:
    """A filter pinning a level (a cohort of the ledger) against that level's group: nested, a few rows apart."""
    tia = kind_of(MODEL, [("stroke_type", "tia")])
    assert nested_small(np.arange(10, dtype=np.uint64), np.arange(13, dtype=np.uint64), 10)
    assert not nested_small(np.arange(3, dtype=np.uint64), np.arange(13, dtype=np.uint64), 10)  # 10 apart
    assert not nested_small(np.arange(13, dtype=np.uint64), np.arange(13, dtype=np.uint64), 10)  # the same rows
    assert not nested_small(np.arange(12, dtype=np.uint64), np.arange(1, 13, dtype=np.uint64), 10)  # not nested
    memory = GroupMemory()
    memory.record([group(tia, range(13))], 10)
    memory.check_cohorts(MODEL, [np.arange(13, dtype=np.uint64), np.arange(100, 400, dtype=np.uint64)])
    memory.check_cohorts("other:1.0", [np.arange(10, dtype=np.uint64)])  # another data model's groups: none
    for cohort in (np.arange(10, dtype=np.uint64), np.arange(15, dtype=np.uint64)):
        with pytest.raises(DisclosureError) as refused:
            memory.check_cohorts(MODEL, [cohort])
        assert refused.value.control == "differencing" and not re.findall(r"\d+", str(refused.value))
    fresh = GroupMemory()
    with pytest.raises(DisclosureError):
        fresh.check([group(tia, range(13))], 10, "min_row_count", cohorts=[np.arange(10, dtype=np.uint64)])
    fresh.check([group(tia, range(13))], 10, "min_row_count", cohorts=[np.arange(300, dtype=np.uint64)])
