"""Complements inside one result (issue 14.3, ADR 0031), through a real node API.

The attacker holds one released reply and subtracts: an overall histogram bin minus the released
group bins, the row count minus the released bins, group means against the overall mean, the
co-moments of two dummy covariates.  Each attack must fail: suppressed consistently (histograms),
or refused by ``nfilter_tab`` with a message that carries no data (ANOVA groups, regression cells).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.linalg import null_space

from mipflow.node.api.app import create_app
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.nodes import grant_all, load_frame
from tests.privacy.conftest import TARGET, TARGET_AGE, Node, make_rows, start_node
from tests.nodes import standard_home

TAB = 3  # the node's default nfilter_tab
MIN_ROWS = 10  # the node's default min_row_count: groups released with their mean and spread hold it (ADR 0050)


def attacker_recovers(reply: dict) -> dict[tuple[int, int], float]:
    """Every hidden cell the attacker can solve for from one histogram reply: per grouping variable and
    bin, the levels' bins sum to the overall bin; the overall bins sum to the released row count.
    Returns ``{(record, bin): value}`` of the hidden cells the released numbers fix."""
    records = reply["aggregates"]["histograms"]
    n_bins = len(records[0]["counts"])
    cells = [(r, j) for r in range(len(records)) for j in range(n_bins)]
    value = {c: records[c[0]]["counts"][c[1]] for c in cells}
    hidden = [c for c in cells if value[c] is None]
    rows, rhs = [], []

    def equation(terms: dict[tuple[int, int], float], constant: float) -> None:
        known = sum(coef * value[c] for c, coef in terms.items() if value[c] is not None)
        rows.append([terms.get(c, 0.0) for c in hidden])
        rhs.append(constant - known)

    equation({(0, j): 1.0 for j in range(n_bins)}, float(reply["rows"]))
    for var in dict.fromkeys(r["grouping_var"] for r in records[1:]):
        members = [i for i, r in enumerate(records) if r["grouping_var"] == var]
        for j in range(n_bins):
            equation({**{(i, j): 1.0 for i in members}, (0, j): -1.0}, 0.0)
    if not hidden:
        return {}
    a, b = np.array(rows), np.array(rhs)
    solution = np.linalg.lstsq(a, b, rcond=None)[0]
    free = null_space(a)
    return {c: float(solution[k]) for k, c in enumerate(hidden)
            if free.shape[1] == 0 or np.all(np.abs(free[k]) < 1e-9)}


def target_cell(node: Node, reply: dict, level: str) -> tuple[int, int]:
    records = reply["aggregates"]["histograms"]
    index = next(i for i, r in enumerate(records) if r["grouping_enum"] == level)
    return index, 0


# --------------------------------------------------------------------------- (a) grouped histograms


def test_the_overall_bin_minus_the_other_groups_bins_does_not_give_the_targets_group_bin(node):
    # 72 one-year bins over the declared age range: bin 0 holds the target alone (F, 18.5 years)
    reply = node.allowed("multiple_histograms", y=["age"], x=["sex"], parameters={"bins": 72})
    records = reply["aggregates"]["histograms"]
    f, m = (next(r["counts"] for r in records if r["grouping_enum"] == s) for s in ("F", "M"))
    overall = records[0]["counts"]
    assert f[0] is None and overall[0] is None
    # the subtraction the attacker tries first
    assert overall[0] is None or m[0] is None
    # and no linear combination of the released cells and the row count fixes a small cell
    recovered = attacker_recovers(reply)
    assert all(not (0 < v < TAB) for v in recovered.values()), recovered
    assert target_cell(node, reply, "F") not in recovered and (0, 0) not in recovered


def test_a_one_bin_histogram_by_a_one_patient_level_does_not_give_the_level_count(node):
    # one bin: the overall bin is the row count, the groups' bins are the levels' counts
    reply = node.allowed("multiple_histograms", y=["age"], x=["thrombolysis"], parameters={"bins": 1})
    records = reply["aggregates"]["histograms"]
    yes = next(r["counts"] for r in records if r["grouping_enum"] == "yes")
    no = next(r["counts"] for r in records if r["grouping_enum"] == "no")
    assert yes == [None] and no == [None]  # 'no' hidden too: rows - no = yes otherwise
    assert attacker_recovers(reply) == {}


def test_a_small_overall_bin_is_not_recovered_from_the_groups_or_the_row_count(node):
    # nominal y with a grouping variable: thrombolysis 'yes' is the target alone, overall and in F
    reply = node.allowed("multiple_histograms", y=["thrombolysis"], x=["sex", "death_90d"])
    recovered = attacker_recovers(reply)
    assert all(not (0 < v < TAB) for v in recovered.values()), recovered
    records = reply["aggregates"]["histograms"]
    assert all(c is None or c == 0 or c >= TAB for r in records for c in r["counts"])


@pytest.fixture
def alone(tmp_path) -> Iterator[Node]:
    """A node of its own (the module's node has answered the attacks above)."""
    yield from start_node(tmp_path / "alone")


def test_an_honest_grouped_histogram_keeps_its_large_cells(alone):
    """Alone on its node (8 bins asked: 10 on the public grid, ADR 0051), its large cells are shown."""
    node = alone
    reply = node.allowed("multiple_histograms", y=["age"], x=["sex"], parameters={"bins": 8})
    records = reply["aggregates"]["histograms"]
    rows = node.rows
    edges = np.histogram_bin_edges([], bins=10, range=(18.0, 90.0))
    truth = {None: np.histogram(rows["age"], edges)[0]}
    for s in ("F", "M"):
        truth[s] = np.histogram(rows.loc[rows["sex"] == s, "age"], edges)[0]
    released = [(c, truth[r["grouping_enum"]][j]) for r in records for j, c in enumerate(r["counts"])]
    assert all(c == t for c, t in released if c is not None)
    large = [(c, t) for c, t in released if t >= 10]
    kept = [c for c, t in large if c is not None]
    assert large and len(kept) >= len(large) - 2  # at most a complement pair among the large cells


def test_an_honest_grouped_histogram_after_finer_ones_shows_exact_counts_and_no_bin_less_them_is_small(node):
    """(a) of ADR 0051's withdrawal: after the 72-bin (80 on the grid) histogram by sex above, 8 bins by sex (10):
    answered, every shown count exact, and no shown 10-bin cell less the shown 80-bin cells inside it leaves
    1 .. nfilter_tab - 1 rows (the earlier release's hidden cells: hidden now too)."""
    fine = node.allowed("multiple_histograms", y=["age"], x=["sex"], parameters={"bins": 72})["aggregates"]
    coarse = node.allowed("multiple_histograms", y=["age"], x=["sex"], parameters={"bins": 8})["aggregates"]
    rows = node.rows
    edges = np.histogram_bin_edges([], bins=10, range=(18.0, 90.0))
    shown = 0
    for f, c in zip(fine["histograms"], coarse["histograms"]):
        assert (f["grouping_var"], f["grouping_enum"]) == (c["grouping_var"], c["grouping_enum"])
        chosen = rows if c["grouping_enum"] is None else rows[rows["sex"] == c["grouping_enum"]]
        truth = np.histogram(chosen["age"], edges)[0]
        assert len(f["counts"]) == 80 and len(c["counts"]) == 10
        for j, count in enumerate(c["counts"]):
            if count is None:
                continue
            shown += 1
            assert count == truth[j]
            inside = [v for v in f["counts"][8 * j:8 * j + 8] if v is not None]
            assert not 0 < count - sum(inside) < TAB
    assert shown >= 10


# --------------------------------------------------------------------------- (b) ANOVA / Tukey
# --------------------------------------------------------------------------- (b) ANOVA / Tukey


def test_tukey_against_the_overall_mean_has_no_small_group_to_recover(node):
    # a group of one (the only thrombolysed patient) refuses the step: no group mean to subtract; since
    # ADR 0050 a group released with its mean and spread holds min_row_count rows (not only nfilter_tab)
    doc = node.refused("min_row_count", "anova_oneway", y=["age"], x=["thrombolysis"])
    assert str(TARGET_AGE) not in json.dumps(doc)
    assert not any(ch.isdigit() for ch in doc["refused"].replace(f"({MIN_ROWS})", ""))
    # groups that are released are at least min_row_count each: overall = their combination, no complement
    reply = node.allowed("anova_oneway", y=["age"], x=["sex"])
    sizes = [n for n in reply["aggregates"]["group_n"] if n]
    assert all(n >= MIN_ROWS for n in sizes) and sum(reply["aggregates"]["group_n"]) == reply["rows"]


def test_an_anova_by_sex_after_histograms_by_sex_is_answered(node):
    """(b) of ADR 0051's withdrawal: the histograms by sex above hid cells of each sex whose total (a level's
    count, given by an ANOVA's group) less the shown cells would count 1 .. nfilter_tab - 1 rows; the hidden
    cells of a record hold none or at least nfilter_tab rows together, so the ANOVA of age by sex is answered, and
    its women less the last histogram's shown women's bins is no small count."""
    histogram = node.allowed("multiple_histograms", y=["age"], x=["sex"], parameters={"bins": 72})["aggregates"]
    anova = node.allowed("anova_oneway", y=["age"], x=["sex"])["aggregates"]
    rows = node.rows
    for record in histogram["histograms"][1:]:
        level = record["grouping_enum"]
        group = int((rows["sex"] == level).sum())
        assert group in anova["group_n"]
        assert not 0 < group - sum(c for c in record["counts"] if c is not None) < TAB


# --------------------------------------------------------------------------- (c) regression co-moments


def cell_of_one_rows():
    """Rows where every level of sex and stroke_type is large, but the target is the only
    haemorrhagic woman: the (F, haemorrhagic) cell of the covariates' cross-tabulation is 1."""
    rows = make_rows()
    rows.loc[(rows["stroke_type"] == "haemorrhagic") & (rows["subjectcode"] != TARGET), "sex"] = "M"
    rows.loc[rows["subjectcode"] == TARGET, ["stroke_type", "sex"]] = ["haemorrhagic", "F"]
    return rows


@pytest.fixture(scope="module")
def cell_node(tmp_path_factory) -> Iterator[Node]:
    root = Path(tmp_path_factory.mktemp("cell-node"))
    standard_home(root, "hospital_a")
    home = NodeHome(root)
    rows = cell_of_one_rows()
    assert load_frame(root, STROKE, rows) == len(rows)
    grant_all(root)
    credential = issue_client(root, "central")
    with TestClient(create_app(home)) as http:
        yield Node(home, http, credential, rows)


def test_the_rows_hold_a_joint_cell_of_one_that_the_co_moments_would_give_back(cell_node):
    # the attack the control closes, computed on the node's rows by the algorithm itself
    from mipflow.algorithms import get_algorithm
    from mipflow.algorithms.design import design_columns
    from mipflow.protocol.request import AnalysisRequest

    request = AnalysisRequest(data_model=STROKE.key, datasets=("hospital_a",), y=("nihss_admission",),
                              x=("sex", "stroke_type"))
    data = cell_node.rows
    aggregates = get_algorithm("linear_regression").local_step(0, data, request, STROKE, None)
    names = design_columns(request.x, STROKE, intercept=False)
    a, b = names.index("sex[F]"), names.index("stroke_type[haemorrhagic]")
    mom = aggregates["moments"]
    n, mean, m2 = mom["n"], np.asarray(mom["mean"]), np.asarray(mom["m2"])
    assert round(m2[a][b] + n * mean[a] * mean[b]) == 1  # n_ab from the co-moment
    assert min(aggregates["group_n"]) >= TAB  # every level is large: the old controls allowed it


@pytest.mark.parametrize("algorithm,y", [("linear_regression", "nihss_admission"),
                                         ("logistic_regression", "death_90d")])
def test_a_regression_whose_co_moments_hold_a_cell_of_one_is_refused_without_data(cell_node, algorithm, y):
    parameters = {"positive_class": "yes"} if algorithm == "logistic_regression" else {}
    doc = cell_node.refused("nfilter_tab", algorithm, y=[y], x=["sex", "stroke_type"], parameters=parameters)
    # the same words whatever the cell: the threshold (a setting) only
    assert f"nfilter_tab ({TAB})" in doc["refused"]
    assert not any(ch.isdigit() for ch in doc["refused"].replace(f"({TAB})", ""))


def test_an_honest_regression_on_two_categorical_covariates_goes_through_and_sends_no_cells(node):
    reply = node.allowed("linear_regression", y=["nihss_admission"], x=["sex", "stroke_type", "age"])
    assert "cell_n" not in json.dumps(reply["aggregates"])
    assert reply["aggregates"]["moments"]["n"] == reply["rows"]
