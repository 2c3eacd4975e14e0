"""The group memory and the groups a release lets anyone form (ADR 0051)."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import get_algorithm
from mipflow.algorithms.contract import ReleasedGroups
from mipflow.exceptions import DisclosureError
from mipflow.node.controls.groups import (
    GROUPS_FILE, Group, GroupMemory, _digest, check_complement, few_apart, kind_of, level_groups, nested_small,
)
from mipflow.node.controls.keycodec import encode_keys
from mipflow.protocol.request import AnalysisRequest
from tests.mipflow.algorithms.survival_data import STROKE

MODEL = STROKE.key


def keys(values) -> np.ndarray:
    return np.array(sorted(values), dtype=np.uint64)


def group(kind: str, rows, model: str = MODEL, patients=None) -> Group:
    rows = keys(rows)
    return Group(kind, rows, _digest(kind, rows), model, None if patients is None else keys(patients))


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


def test_a_response_class_and_the_rest_are_cells_alone_and_per_level() -> None:
    """A binary response's classes (ADR 0051, fifteenth review): the positive level, and every other level as one
    cell (the rest); per level of a covariate, the joint cells with the class and the level as margins."""
    data, keys = frame()
    data["death_90d"] = ["yes", "no", "no", "yes", "no", "no"]
    groups, union = level_groups(data, keys, [ReleasedGroups(("stroke_type",), (("tia",),), rest=True)],
                                 STROKE, MODEL)
    by_kind = {g.kind: set(g.rows.tolist()) for g in groups}
    rest = kind_of(MODEL, [("stroke_type", "\u2260tia")])
    assert by_kind == {kind_of(MODEL, [("stroke_type", "tia")]): {100, 103}, rest: {101, 102, 104}}
    assert set(union.tolist()) == {100, 101, 102, 103, 104}  # every row with a stroke type: no complement
    groups, union = level_groups(data, keys, [ReleasedGroups(("death_90d", "sex"), (("yes",), None), rest=True)],
                                 STROKE, MODEL)
    by_kind = {g.kind: (set(g.rows.tolist()), g.cell) for g in groups}
    assert by_kind[kind_of(MODEL, [("death_90d", "yes")])] == ({100, 103}, False)       # the class: a margin
    assert by_kind[kind_of(MODEL, [("death_90d", "yes"), ("sex", "F")])] == ({100}, True)  # a joint cell
    assert by_kind[kind_of(MODEL, [("death_90d", "\u2260yes"), ("sex", "M")])] == ({102, 105}, True)
    assert len(union) == 6


def test_bins_of_a_numerical_column_are_numpy_s_histogram_bins() -> None:
    """Histogram bins as cells: half-open, the last closed, a value outside or missing in none; each bin's rows
    are as many as ``numpy.histogram`` counts."""
    ages = np.array([18.0, 25.2, 25.19, 90.0, 54.0, 91.0, np.nan, 36.0, 72.0, 89.99])
    data = pd.DataFrame({"age": ages, "sex": ["F", "M"] * 5})
    edges = tuple(np.histogram_bin_edges(np.zeros(0), bins=10, range=(18.0, 90.0)).tolist())
    keys = np.arange(200, 210, dtype=np.uint64)
    groups, union = level_groups(data, keys, [ReleasedGroups(("age",), bins=(edges,))], STROKE, MODEL)
    counts = np.histogram(ages[~np.isnan(ages)], bins=10, range=(18.0, 90.0))[0]
    sizes = {json.loads(g.kind)[1][0][1]: len(g.rows) for g in groups}
    from mipflow.algorithms.design import bin_labels

    assert [sizes.get(label, 0) for label in bin_labels(edges)] == counts.tolist()
    assert sizes[bin_labels(edges)[-1]] == 2 and bin_labels(edges)[-1].endswith("90.0]")  # 90 in the last
    assert set(union.tolist()) == set(keys.tolist()) - {205, 206}  # 91 (outside) and the missing age


def test_a_histogram_s_hidden_cells_are_no_groups_and_their_margins_neither() -> None:
    """Suppressed cells (ADR 0031) are not released: after the release check the groups are the shown cells and
    the margins over shown cells only (:func:`check_released_groups`); nothing else is remembered."""
    from types import SimpleNamespace

    from mipflow.node.controls.groups import GroupRelease
    from mipflow.node.controls.released_groups import check_released_groups

    data, keys = frame()
    data = data.dropna().reset_index(drop=True)
    keys = keys[:len(data)]
    algo = get_algorithm("multiple_histograms")
    request = AnalysisRequest(data_model=MODEL, datasets=("hospital_a",), x=("sex",), y=("stroke_type",),
                              parameters={})
    groupings = algo.released_groups(request, STROKE)
    groups, union = level_groups(data, keys, groupings, STROKE, MODEL)
    codes = STROKE.variable("stroke_type").enumeration_codes
    aggregates = algo.local_step(0, data, request, STROKE, None)
    hide = ("tia", "sex", "M")  # hide TIA among men (and, say, TIA overall)
    for record in aggregates["histograms"]:
        if record["grouping_enum"] in (None, hide[2]):
            record["counts"][codes.index(hide[0])] = None
    release = GroupRelease(tuple(groups), union, "digest", 3, "nfilter_tab", suppressed=True)
    work = SimpleNamespace(explore=None, groups=release, algo=algo, aggregates=aggregates, model=STROKE,
                           settings=SimpleNamespace(differencing_check=0), study=None)
    check_released_groups(SimpleNamespace(analysis=request), None, work)
    kept = {g.kind for g in work.groups.groups}
    assert kind_of(MODEL, [("stroke_type", "tia")]) not in kept
    assert kind_of(MODEL, [("sex", "M"), ("stroke_type", "tia")]) not in kept
    assert kind_of(MODEL, [("sex", "M")]) not in kept            # a margin over a hidden cell
    assert kind_of(MODEL, [("sex", "F")]) in kept                # a margin over shown cells
    assert kind_of(MODEL, [("sex", "F"), ("stroke_type", "tia")]) in kept
    assert kept == {g.kind for g in groups} - {kind_of(MODEL, [("stroke_type", "tia")]),
                                               kind_of(MODEL, [("sex", "M"), ("stroke_type", "tia")]),
                                               kind_of(MODEL, [("sex", "M")])}


def test_a_group_near_one_of_its_kind_is_refused_and_the_same_group_is_not() -> None:
    memory = GroupMemory()
    tia, other = kind_of(MODEL, [("stroke_type", "tia")]), kind_of(MODEL, [("stroke_type", "ischaemic")])
    memory.record([group(tia, range(13))], 10)
    memory.check([group(tia, range(13))], 10, "min_row_count")        # the same group: 0 rows apart
    memory.check([group(other, range(3, 23))], 10, "min_row_count")   # another kind: 13 rows apart
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
    # each class within each level of every covariate (issue 14)
    ("naive_bayes_categorical_cv", ["sex", "death_90d", "sex"], ["stroke_type"], {},
     (ReleasedGroups(("stroke_type", "sex")), ReleasedGroups(("stroke_type", "death_90d")))),
    ("linear_regression", ["stroke_type", "age", "sex"], ["nihss_admission"], {},
     (ReleasedGroups(("stroke_type", "sex")),)),  # the joint cells; the levels are their margins (round 16)
    ("linear_regression", ["sex"], ["nihss_admission"], {}, (ReleasedGroups(("sex",)),)),
    ("linear_regression", ["stroke_type", "sex", "death_90d"], ["nihss_admission"], {},
     (ReleasedGroups(("stroke_type", "sex")), ReleasedGroups(("stroke_type", "death_90d")),
      ReleasedGroups(("sex", "death_90d")))),
    # every algorithm that dummy-encodes its covariates: each nominal covariate's levels (issue 14 item 5);
    # a binary response's classes (the positive one and the rest) alone and per level (fifteenth review)
    ("logistic_regression", ["stroke_type", "age"], ["sex"], {"positive_class": "F"},
     (ReleasedGroups(("sex", "stroke_type"), (("F",), None), rest=True), ReleasedGroups(("stroke_type",)))),
    ("logistic_regression_cv", ["stroke_type", "age"], ["sex"], {"positive_class": "F"},
     (ReleasedGroups(("sex", "stroke_type"), (("F",), None), rest=True), ReleasedGroups(("stroke_type",)))),
    ("gee", ["stroke_type", "age"], ["nihss_admission"], {}, (ReleasedGroups(("stroke_type",)),)),
    ("gee", ["age"], ["death_90d"], {"family": "binomial", "positive_class": "yes"},
     (ReleasedGroups(("death_90d",), (("yes",),), rest=True),)),
    ("gee", ["stroke_type"], ["nihss_admission"], {"family": "binomial"},
     (ReleasedGroups(("nihss_admission", "stroke_type"), bins=((0.0, 0.5, 1.0), None)),
      ReleasedGroups(("stroke_type",)))),
    ("linear_mixed_model", ["sex", "age"], ["nihss_admission"], {}, (ReleasedGroups(("sex",)),)),
    ("cox_regression", ["stroke_type", "age"], ["followup_days", "death_90d"], {"event_level": "yes"},
     (ReleasedGroups(("death_90d", "stroke_type"), (("yes",), None), rest=True), ReleasedGroups(("stroke_type",)))),
    ("cox_regression", ["age"], ["followup_days", "death_90d"], {"event_level": "yes"},
     (ReleasedGroups(("death_90d",), (("yes",),), rest=True),)),
    ("logistic_regression", ["age"], ["sex"], {"positive_class": "F"},
     (ReleasedGroups(("sex",), (("F",),), rest=True),)),
    # histogram bins, on the public grid: 4 asked, 5 used (ADR 0051, fifteenth review)
    ("multiple_histograms", ["sex"], ["age"], {"bins": 4},
     (ReleasedGroups(("age",), bins=((18.0, 32.4, 46.8, 61.2, 75.6, 90.0),), suppressed=True),
      ReleasedGroups(("age", "sex"), bins=((18.0, 32.4, 46.8, 61.2, 75.6, 90.0), None), suppressed=True))),
    ("multiple_histograms", [], ["stroke_type"], {}, (ReleasedGroups(("stroke_type",), suppressed=True),)),
    ("contingency_table", ["stroke_type"], ["sex"], {}, (ReleasedGroups(("stroke_type", "sex")),)),
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
    memory.check_cohorts(MODEL, [np.arange(3, 23, dtype=np.uint64)])  # 13 rows apart, not nested
    swapped = np.array([*range(12), 500], dtype=np.uint64)               # one row swapped for another
    for cohort in (np.arange(10, dtype=np.uint64), np.arange(15, dtype=np.uint64), swapped):
        for model in (MODEL, "other:1.0"):  # the same rows under another data model too
            with pytest.raises(DisclosureError) as refused:
                memory.check_cohorts(model, [cohort])
            assert refused.value.control == "differencing" and not re.findall(r"\d+", str(refused.value))
    fresh = GroupMemory()
    with pytest.raises(DisclosureError):
        fresh.check([group(tia, range(13))], 10, "min_row_count", cohorts=[np.arange(10, dtype=np.uint64)])
    fresh.check([group(tia, range(13))], 10, "min_row_count", cohorts=[np.arange(300, dtype=np.uint64)])


# ---------------------------------------------------------------- by rows, whatever the kind (twelfth review)


def test_groups_of_any_kind_a_few_rows_apart_are_refused_by_the_size_of_their_difference() -> None:
    """Round 12, hole 2's class: a two-way cell (TIA, women) and a one-way TIA group of women aged 25 or more."""
    cell, tia = kind_of(MODEL, [("sex", "F"), ("stroke_type", "tia")]), kind_of(MODEL, [("stroke_type", "tia")])
    assert few_apart(keys(range(40)), keys(range(1, 40)), 10)
    assert few_apart(keys(range(40)), keys([*range(1, 40), 99]), 10)          # one row swapped
    assert not few_apart(keys(range(40)), keys(range(40)), 10)                # the same rows
    assert not few_apart(keys(range(40)), keys(range(5, 45)), 10)             # 10 apart: at the threshold
    assert few_apart(keys(range(40)), keys(range(4, 45)), 10)                 # 9 apart
    assert not few_apart(keys(range(40)), keys(range(30, 120)), 10)           # sizes 50 apart
    memory = GroupMemory()
    memory.record([group(cell, range(40))], 10)
    for near in (range(1, 40), range(41), [*range(39), 1000]):
        with pytest.raises(DisclosureError) as refused:
            memory.check([group(tia, near)], 10, "min_row_count")
        assert refused.value.control == "differencing" and "min_row_count (10)" in str(refused.value)
        assert set(re.findall(r"\d+", str(refused.value))) == {"10"}
    memory.check([group(tia, range(40))], 10, "min_row_count")          # the same rows under another kind
    memory.check([group(tia, range(10, 50))], 10, "min_row_count")      # 20 rows apart
    memory.check([group(tia, range(3, 43))], 3, "nfilter_tab")          # 6 apart: at a dummy's threshold
    with pytest.raises(DisclosureError):
        memory.check([group(tia, range(1, 41))], 3, "nfilter_tab")      # 2 apart


def test_groups_under_another_data_model_are_compared_by_their_patients() -> None:
    """Round 12, hole 3's class: the same patients under the next data-model version carry other row keys."""
    tia_v1, tia_v2 = kind_of(MODEL, [("stroke_type", "tia")]), kind_of("stroke:0.2", [("stroke_type", "tia")])
    memory = GroupMemory()
    memory.record([group(tia_v1, range(80), patients=range(1000, 1080))], 10)
    with pytest.raises(DisclosureError):  # other rows, the same patients but one
        memory.check([group(tia_v2, range(500, 579), "stroke:0.2", range(1001, 1080))], 10, "min_row_count")
    memory.check([group(tia_v2, range(500, 580), "stroke:0.2", range(1000, 1080))], 10, "min_row_count")
    memory.check([group(tia_v2, range(500, 570), "stroke:0.2", range(1010, 1080))], 10, "min_row_count")
    # under one data model the rows decide: a patient's visits are other rows of other values
    memory.check([group(tia_v1, range(500, 579), patients=range(1001, 1080))], 10, "min_row_count")
    with pytest.raises(DisclosureError):  # a cohort of the next version, the group's patients but one
        memory.check_cohorts("stroke:0.2", [keys(range(700, 779))], [keys(range(1001, 1080))])
    memory.check_cohorts("stroke:0.2", [keys(range(700, 779))], [keys(range(1001, 1070))])
    ledger = [("stroke:0.2", keys(range(700, 779)), keys(range(1001, 1080)))]
    with pytest.raises(DisclosureError):  # a group against a cohort of the ledger under another data model
        GroupMemory().check([group(tia_v1, range(80), patients=range(1000, 1080))], 10, "min_row_count",
                            cohorts=ledger)


def test_a_release_s_own_groups_are_compared_with_each_other() -> None:
    """Two nominal covariates of one regression whose levels are the same rows but for a few."""
    memory = GroupMemory()
    a, b = kind_of(MODEL, [("sex", "F")]), kind_of(MODEL, [("pregnant", "no")])
    with pytest.raises(DisclosureError):
        memory.check([group(a, range(50)), group(b, range(48))], 3, "nfilter_tab")
    memory.check([group(a, range(50)), group(b, range(50))], 3, "nfilter_tab")
    data, row_keys = frame()
    groups, _ = level_groups(data, row_keys, [ReleasedGroups(("stroke_type", "sex"))], STROKE, MODEL,
                             patients=row_keys + np.uint64(1000))
    assert all(set(g.patients.tolist()) == {k + 1000 for k in g.rows.tolist()} for g in groups)
    GroupMemory().check(groups, 1, "min_row_count")  # cells and margins of one release: every pair far apart


def test_a_memory_from_before_gains_patients_and_keeps_comparing_its_groups_by_rows(tmp_path) -> None:
    import sqlite3

    tia = kind_of(MODEL, [("stroke_type", "tia")])
    with sqlite3.connect(tmp_path / GROUPS_FILE) as conn:  # ADR 0051 before the twelfth review
        conn.execute("CREATE TABLE groups (data_model TEXT NOT NULL, kind TEXT NOT NULL, digest TEXT NOT NULL, "
                     "n_rows INTEGER NOT NULL, threshold INTEGER NOT NULL, keys BLOB NOT NULL, "
                     "first_at TEXT NOT NULL, PRIMARY KEY (kind, digest))")
        old = keys(range(40))
        conn.execute("INSERT INTO groups VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (MODEL, tia, _digest(tia, old), 40, 10, encode_keys(old), "2026-12-01T00:00:00+00:00"))
    memory = GroupMemory(tmp_path)
    assert memory.remembered() == 1
    with pytest.raises(DisclosureError):
        memory.check([group(kind_of(MODEL, [("sex", "F")]), range(39), patients=range(39))], 10, "min_row_count")
    memory.record([group(kind_of(MODEL, [("sex", "F")]), range(100, 300), patients=range(100, 300))], 10)
    stats = GroupMemory(tmp_path).stats()
    assert stats["groups"] == 2 and stats["rows"] == 240
    assert stats["bytes"] <= 8 * 40 + 2 * 8 * 200 + 3 * 64  # about 7 bytes a key, rows and patients


@pytest.mark.parametrize("seed", range(4))
def test_few_apart_is_the_size_of_the_symmetric_difference_whatever_keys_differ(seed) -> None:
    """The quick look-up of a set's first keys in the other (``PROBE``) only ever rejects pairs that are far apart."""
    rng = np.random.default_rng(seed)
    for _ in range(300):
        a = np.unique(rng.integers(0, 2 ** 63, int(rng.integers(1, 400)), dtype=np.uint64))
        out = rng.choice(len(a), int(rng.integers(0, min(len(a), 14) + 1)), replace=False)
        b = np.unique(np.concatenate([np.delete(a, out), rng.integers(0, 2 ** 63, int(rng.integers(0, 14)),
                                                                      dtype=np.uint64)]))
        threshold = int(rng.integers(2, 20))
        apart = len(np.setxor1d(a, b))
        assert few_apart(a, b, threshold) == few_apart(b, a, threshold) == (0 < apart < threshold)
