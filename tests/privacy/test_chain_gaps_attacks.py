"""Issue 14 item 5, "one ledger per node across everything that selects rows": the dummy levels of logistic
regression, GEE, the linear mixed model and Cox regression enter the group memory and the chain rule (ADR 0051,
amended), through real node processes in standard mode (shipped thresholds: min_row_count 10, nfilter_tab 3).

Each of these algorithms dummy-encodes a nominal covariate and releases sums over each level's rows (logistic
regression: round 0's dummy means are the level counts, round 1's Hessian at zero ``X' X / 4`` each level's sums
of the numerical covariates).  Until now none declared those groups, so the thirteenth review's hole 4 answered
with any of them in the ANOVA's place: the TIA level on everyone (80 rows), descriptive statistics of
``age >= 25`` (230) and of ``age >= 25 AND stroke_type != tia`` (151) are pairwise far apart, yet
``TIA - (adults - adult non-TIA)`` is the one TIA patient under 25 (NIHSS 41).
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import rule, where
from tests.nodes import running_nodes
from tests.privacy.test_explore_attacks import Served
from tests.privacy.test_redteam_round10 import no_data_number, severity_node
from tests.privacy.test_redteam_round13 import level_rows

pytestmark = pytest.mark.xdist_group("chain_gaps")

NODE = "hospital_a"
ADULTS = where(rule("age", "greater_or_equal", 25))
ADULT_OTHERS = where(rule("age", "greater_or_equal", 25), rule("stroke_type", "not_equal", "tia"))
ELDERLY = where(rule("age", "greater_or_equal", 60))

#: each newly declaring algorithm with a nominal covariate (stroke type) and its own y and parameters
MODELS = {
    "logistic_regression": (["sex"], ["stroke_type", "nihss_admission"], {"positive_class": "F"}),
    "gee": (["nihss_admission"], ["stroke_type", "age"], {}),
    "linear_mixed_model": (["nihss_admission"], ["stroke_type", "age"], {}),
    "cox_regression": (["followup_days", "death_90d"], ["stroke_type", "nihss_admission"], {"event_level": "yes"}),
}


def request(y, x=(), filters=None, **parameters) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def stats(filters) -> dict:
    return request(["nihss_admission"], filters=filters)


def young_tia(frame) -> int:
    """Rows the chain isolates: the TIA level on everyone less (adults less adult non-TIA)."""
    return int(((frame["age"] < 25) & (frame["stroke_type"] == "tia")).sum())


@pytest.mark.parametrize("algorithm", list(MODELS))
def test_defence_a_dummy_level_and_two_cohorts_that_isolate_one_patient_are_refused(tmp_path, algorithm) -> None:
    """The algorithm on everyone (its TIA dummy level: a released group at nfilter_tab), then descriptive
    statistics of adults and of adult non-TIA patients.  The third release would isolate the one young TIA
    patient: refused, control ``differencing``, the message naming min_row_count only.  Honest work on the same
    node still answers: the same analysis again, and a far subgroup (the elderly) by the same algorithm and by
    descriptive statistics."""
    frame = level_rows()
    assert young_tia(frame) == 1  # the combination would single out one patient
    y, x, parameters = MODELS[algorithm]
    root = tmp_path / "node"
    credential = severity_node(root, frame)
    with running_nodes([root]) as (url,):
        served = Served(url, credential, root, frame)
        call = lambda a, r: served.call(a, r, project="severity")  # noqa: E731
        first = call(algorithm, request(y, x, **parameters))
        again = call(algorithm, request(y, x, **parameters))
        adults = call("descriptive_stats", stats(ADULTS))
        others = call("descriptive_stats", stats(ADULT_OTHERS))
        far = call(algorithm, request(y, x, ELDERLY, **parameters))
        far_stats = call("descriptive_stats", stats(ELDERLY))
    for honest in (first, again, adults, far, far_stats):
        assert honest.status_code == 200, honest.text
    assert again.json()["aggregates"] == first.json()["aggregates"]
    assert others.status_code == 403, others.text
    assert others.json()["control"] == "differencing"
    assert "min_row_count (10)" in others.text and no_data_number(others.text)


def test_defence_logistic_regression_after_the_two_cohorts_is_refused(tmp_path) -> None:
    """The other order: descriptive statistics of adults and adult non-TIA patients first (the young TIA patient
    is inside an atom of 10 rows), then logistic regression on everyone, whose TIA dummy level (its round 0
    count, round 1's sums) with the two cohorts isolates her: refused at the group check's chain (control
    ``differencing``).  The same logistic regression on the elderly answers."""
    frame = level_rows()
    y, x, parameters = MODELS["logistic_regression"]
    root = tmp_path / "node"
    credential = severity_node(root, frame)
    with running_nodes([root]) as (url,):
        served = Served(url, credential, root, frame)
        call = lambda a, r: served.call(a, r, project="severity")  # noqa: E731
        adults = call("descriptive_stats", stats(ADULTS))
        others = call("descriptive_stats", stats(ADULT_OTHERS))
        near = call("logistic_regression", request(y, x, **parameters))
        far = call("logistic_regression", request(y, x, ELDERLY, **parameters))
    assert (adults.status_code, others.status_code, far.status_code) == (200, 200, 200), far.text
    assert near.status_code == 403, near.text
    assert near.json()["control"] == "differencing" and no_data_number(near.text)


def test_logistic_regression_releases_its_dummy_level_s_sums() -> None:
    """Why the declaration (the algorithm's own steps, in process): round 1's Hessian at zero coefficients
    (``p (1 - p) = 1/4``, covariates centred on round 0's pooled means ``c``) with round 0's count ``n`` gives
    the TIA level's sum of NIHSS exactly, ``4 H[tia, nihss] + n c_tia c_nihss``: a sum over the level's rows
    whose differences with cohorts' sums are exact, the class ADR 0051 holds to nfilter_tab."""
    from mipflow.algorithms import get_algorithm
    from mipflow.protocol.request import AnalysisRequest

    frame = level_rows()
    y, x, parameters = MODELS["logistic_regression"]
    algo = get_algorithm("logistic_regression")
    analysis = AnalysisRequest(data_model=STROKE.key, datasets=(NODE,), x=tuple(x), y=tuple(y), parameters=parameters)
    start = algo.local_step(0, frame, analysis, STROKE, None)
    state = algo.global_step(0, [start], analysis, STROKE, None).state
    hessian = np.asarray(algo.local_step(1, frame, analysis, STROKE, state)["hessian"])
    columns, center = state["columns"], dict(zip(state["columns"][1:], state["center"]))
    tia, nihss = columns.index("stroke_type[tia]"), columns.index("nihss_admission")
    recovered = 4 * hessian[tia, nihss] + len(frame) * center["stroke_type[tia]"] * center["nihss_admission"]
    truth = frame.loc[frame["stroke_type"] == "tia", "nihss_admission"].sum()
    assert recovered == pytest.approx(truth, rel=1e-9)
    assert start["level_counts"]["stroke_type"][2] == (frame["stroke_type"] == "tia").sum()


def test_defence_contingency_cells_and_two_cohorts_that_isolate_one_patient_are_refused(tmp_path) -> None:
    """A contingency table of stroke type by sex on everyone releases its cells' counts (the TIA women and TIA
    men: their sum is the TIA level); with the counts of adults and adult non-TIA patients the combination
    would count the one TIA patient under 25 (a cell of one, which no single table may release).  Its cells are
    now held in the chain at nfilter_tab: the third release is refused (control ``differencing``).  The same
    table again and a table of the elderly answer."""
    frame = level_rows()
    table = request(["sex"], ["stroke_type"])
    root = tmp_path / "node"
    credential = severity_node(root, frame)
    with running_nodes([root]) as (url,):
        served = Served(url, credential, root, frame)
        call = lambda a, r: served.call(a, r, project="severity")  # noqa: E731
        first = call("contingency_table", table)
        again = call("contingency_table", table)
        adults = call("descriptive_stats", stats(ADULTS))
        others = call("descriptive_stats", stats(ADULT_OTHERS))
        far = call("contingency_table", request(["sex"], ["stroke_type"], ELDERLY))
    for honest in (first, again, adults, far):
        assert honest.status_code == 200, honest.text
    assert others.status_code == 403, others.text
    assert others.json()["control"] == "differencing" and no_data_number(others.text)


# ---------------------------------------------------------------- the fifteenth review: classes, event sets, bins

ADULT_DEATHS = where(rule("death_90d", "equal", "yes"), rule("age", "greater_or_equal", 25))
DEATHS = where(rule("death_90d", "equal", "yes"))
ELDERLY_DEATHS = where(rule("death_90d", "equal", "yes"), rule("age", "greater_or_equal", 60))

#: each algorithm whose score releases a binary response's class or the event set: death within 90 days
CLASSES = {
    "logistic_regression": (["death_90d"], ["nihss_admission"], {"positive_class": "yes"}),
    "gee": (["death_90d"], ["nihss_admission"], {"family": "binomial", "positive_class": "yes"}),
    "cox_regression": (["followup_days", "death_90d"], ["nihss_admission"], {"event_level": "yes"}),
}


def death_rows():
    """Round 15's registry: half the adults died, of the ten young patients only the target."""
    from tests.privacy.test_redteam_round15 import registry

    return registry("chain")


@pytest.mark.parametrize("algorithm", list(CLASSES))
def test_defence_a_response_class_or_event_set_less_adult_deaths_is_refused(tmp_path, algorithm) -> None:
    """Round 15 hole 4's class for each algorithm (ADR 0051 amended for the fifteenth review): the model of death on
    everyone releases the deaths' first sums (logistic regression's gradient at zero, a binomial GEE's first
    ``X' W z``, Cox's ``event_x``); descriptive statistics of adult deaths would leave the one young death: refused,
    control ``differencing``.  The same model again and descriptive statistics of the deaths (the class's own rows)
    and of the elderly deaths (far) answer."""
    frame = death_rows()
    assert int(((frame["death_90d"] == "yes") & (frame["age"] < 25)).sum()) == 1
    y, x, parameters = CLASSES[algorithm]
    root = tmp_path / "node"
    credential = severity_node(root, frame)
    with running_nodes([root]) as (url,):
        served = Served(url, credential, root, frame)
        call = lambda a, r: served.call(a, r, project="severity")  # noqa: E731
        first = call(algorithm, request(y, x, **parameters))
        again = call(algorithm, request(y, x, **parameters))
        elderly = call("descriptive_stats", stats(ELDERLY_DEATHS))
        adults = call("descriptive_stats", stats(ADULT_DEATHS))
        deaths = call("descriptive_stats", stats(DEATHS))  # (before adults', the ledger alone would refuse those)
    for honest in (first, again, elderly):
        assert honest.status_code == 200, honest.text
    assert adults.status_code == 403 and adults.json()["control"] == "differencing", adults.text
    assert no_data_number(adults.text)
    assert deaths.status_code == 200, deaths.text


def test_honest_histograms_by_sex_then_subgroups_and_a_model_of_death_then_the_deaths(tmp_path) -> None:
    """The cost on honest work (ADR 0051 amended for the fifteenth review): histograms of age and of NIHSS by sex,
    then descriptive statistics of women, of elderly men and of ischaemic patients; logistic regression of death on
    NIHSS and stroke type, then descriptive statistics of the deaths, of the elderly deaths and of the survivors;
    Cox regression of the same deaths: every set is its own or far from the others, and all answer."""
    frame = death_rows()
    root = tmp_path / "node"
    credential = severity_node(root, frame)
    asks = [("multiple_histograms", request(["age"], ["sex"], bins=10)),
            ("multiple_histograms", request(["nihss_admission"], ["sex"], bins=7)),
            ("descriptive_stats", stats(where(rule("sex", "equal", "F")))),
            ("descriptive_stats", stats(where(rule("sex", "equal", "M"), rule("age", "greater_or_equal", 60)))),
            ("descriptive_stats", stats(where(rule("stroke_type", "equal", "ischaemic")))),
            ("logistic_regression", request(["death_90d"], ["nihss_admission", "stroke_type"], positive_class="yes")),
            ("descriptive_stats", stats(DEATHS)),
            ("descriptive_stats", stats(ELDERLY_DEATHS)),
            ("descriptive_stats", stats(where(rule("death_90d", "equal", "no")))),
            ("cox_regression", request(["followup_days", "death_90d"], ["nihss_admission"], event_level="yes"))]
    with running_nodes([root]) as (url,):
        served = Served(url, credential, root, frame)
        replies = [served.call(algorithm, doc, project="severity") for algorithm, doc in asks]
    assert [r.status_code for r in replies] == [200] * len(asks), [r.text for r in replies if r.status_code != 200]
    # not vacuous: the histograms released bins and bin x sex cells
    assert all(len(h["counts"]) == 10 for h in replies[0].json()["aggregates"]["histograms"])
