"""Rows a filter pins are no padding (ADR 0064): attacks of the class of the twenty-third review's hole 3, through real
node processes with the shipped thresholds (``min_row_count`` 10, differencing on, standard mode), and the honest
work beside them.

The class: a filter rule on a variable the step releases tells the requester that variable's values on the rows the
rule leaves out (or keeps): ``nihss_admission > 0`` leaves out zeros.  A cohort difference of a target and a dozen
such rows, or a cohort of a target and a hundred such rows, hides nothing.  The node checks and records, beside the
request's cohorts, those of the same request with the rules on each read variable set to true and to false.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import statsmodels.api as sm

from tests.privacy.conftest import TARGET_NIHSS, make_rows
from tests.privacy.test_explore_attacks import Served, served_standard
from tests.privacy.test_redteam_round23 import (A, AUDIT, O, PADDED, moments, padded, request, rule,
                                                typed, where)

pytestmark = pytest.mark.xdist_group("pinned_padding")


def zeros_above() -> object:
    """:func:`make_rows` with nine ``hospital_a`` patients aged 60 or more at NIHSS 0, and none other at 0."""
    frame = make_rows()
    frame.loc[frame["nihss_admission"] == 0, "nihss_admission"] = 1.0
    above = frame.index[(frame["dataset"] == A) & (frame["age"] >= 60)][:9]
    frame.loc[above, "nihss_admission"] = 0.0
    return frame


PLAN = {"reverse": padded, "single": padded, "asymmetric": zeros_above, "honest": make_rows,
        "honest_regression": make_rows}

#: The target (the youngest, 18.5) or the rows at NIHSS 0 under 60: one cohort of the target and twelve zeros.
ALONE = where(rule("age", "less", 18.6), where(rule("nihss_admission", "equal", 0), rule("age", "less", 60)),
              condition="OR")
#: 18.6 <= age < 60, or NIHSS 0 (the nine zeros, all 60 or more): ``O`` less the target plus nine zeros.
WITH_ZEROS = where(where(rule("age", "greater_or_equal", 18.6), rule("age", "less", 60)),
                   rule("nihss_admission", "equal", 0), condition="OR")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[dict[str, Served]]:
    with served_standard(Path(tmp_path_factory.mktemp("pinned")), PLAN, A, AUDIT) as served:
        yield served


def nihss(node: Served, filters):
    return node.call("descriptive_stats", request(["nihss_admission"], (), filters), project=AUDIT)


def test_the_padded_pair_is_refused_in_either_order(nodes) -> None:
    """Hole 3 the other way round: the cohort with the zeros left out first, then the whole; the first is answered
    (nothing to subtract it from), the second refused, so the difference never leaves the node."""
    node = nodes["reverse"]
    first = nihss(node, PADDED)
    assert first.status_code == 200, first.text
    assert typed(nihss(node, O)) == (403, "differencing")


def test_one_cohort_of_the_target_and_pinned_zeros_is_refused(nodes) -> None:
    """No difference needed: ``age < 18.6 OR (nihss = 0 AND age < 60)`` holds the target and twelve rows whose NIHSS
    the filter says is 0, so its sum is her NIHSS.  The narrowed filter (the NIHSS rule false) is the target alone."""
    node = nodes["single"]
    rows = node.rows
    chosen = rows[(rows["dataset"] == A) & ((rows["age"] < 18.6) | ((rows["nihss_admission"] == 0)
                                                                   & (rows["age"] < 60)))]
    assert len(chosen) == 13 and chosen["nihss_admission"].sum() == TARGET_NIHSS  # the attack, were it answered
    reply = nihss(node, ALONE)
    assert typed(reply) == (403, "differencing")
    assert str(int(TARGET_NIHSS)) not in reply.json().get("refused", "").replace("min_row_count (10)", "")


def test_zeros_on_the_other_side_of_a_pair_are_no_padding_either(nodes) -> None:
    """The asymmetric form the twenty-third review judged: ``O`` and ``WITH_ZEROS`` are the target apart one way and
    nine zeros the other, so no combination of the two cohorts' indicators isolates her (the chain rule passes);
    their sums subtract to her NIHSS.  The narrowed filter is ``O`` less the target: refused."""
    node = nodes["asymmetric"]
    rows = node.rows
    first = nihss(node, O)
    assert first.status_code == 200, first.text
    other = rows[(rows["dataset"] == A) & (((rows["age"] >= 18.6) & (rows["age"] < 60))
                                          | (rows["nihss_admission"] == 0))]
    assert moments(first)[1] - other["nihss_admission"].sum() == TARGET_NIHSS  # the attack, were it answered
    assert typed(nihss(node, WITH_ZEROS)) == (403, "differencing")


def test_honest_filters_on_the_variables_analysed_are_answered(nodes) -> None:
    """An honest researcher's subgroups on the variable she describes (the elderly's ages, then every NIHSS, then NIHSS
    of 10 or more): answered, each equal to the pooled rows'.  (NIHSS of 20 or more next is refused with or without
    ADR 0064, by the chain rule over these four cohorts.)"""
    node = nodes["honest"]
    rows = node.rows[node.rows["dataset"] == A]
    elderly = node.call("descriptive_stats", request(["age"], (), where(rule("age", "greater_or_equal", 65))),
                        project=AUDIT)
    assert elderly.status_code == 200, elderly.text
    n, total, _ = moments(elderly, "age")
    assert n == int((rows["age"] >= 65).sum()) and abs(total - rows.loc[rows["age"] >= 65, "age"].sum()) <= 1e-9 * total
    for low in (None, 10):
        filters = None if low is None else where(rule("nihss_admission", "greater_or_equal", low))
        reply = nihss(node, filters)
        assert reply.status_code == 200, reply.text
        chosen = rows if low is None else rows[rows["nihss_admission"] >= low]
        n, total, squares = moments(reply)
        assert n == len(chosen) and abs(total - chosen["nihss_admission"].sum()) <= 1e-9 * abs(total)
        assert abs(squares - (chosen["nihss_admission"] ** 2).sum()) <= 1e-9 * squares


def test_an_honest_regression_of_a_subgroup_on_the_variable_filtered_equals_the_pooled_fit(nodes) -> None:
    """The same regression over every row and over those aged 50 or more (age is the covariate and the filter's
    variable: its widened cohort is the first regression's rows): both answered; the second's slope, from the node's
    co-moments, equals statsmodels' on its rows."""
    from tests.privacy.test_redteam_round23 import regression

    node = nodes["honest_regression"]
    rows = node.rows[node.rows["dataset"] == A]
    assert regression(node, None, [A]).status_code == 200
    reply = regression(node, where(rule("age", "greater_or_equal", 50)), [A])
    assert reply.status_code == 200, reply.text
    chosen = rows[rows["age"] >= 50]
    moments_doc = reply.json()["aggregates"]["moments"]
    m2 = np.asarray(moments_doc["m2"], dtype=float)
    fit = sm.OLS(chosen["nihss_admission"].to_numpy(), sm.add_constant(chosen["age"].to_numpy())).fit()
    assert moments_doc["n"] == len(chosen)
    assert abs(m2[0, 1] / m2[0, 0] - fit.params[1]) <= 1e-9 * abs(fit.params[1])
