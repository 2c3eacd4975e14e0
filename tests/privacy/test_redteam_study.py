"""An outside review of study mode (ADR 0028, 0035, 0038) by a hostile researcher with a valid grant.

Written from the documents only (docs/privacy.md, the ADRs, the README): the reviewer did not read
the node's controls nor the algorithms.  One node process (``mipflow node serve``) per scenario, with
the **shipped** settings (``NodeHome.init``: explore by default, ``min_row_count`` 10, ``nfilter_tab``
3), holding stroke rows; its admin approves a plausible protocol with the CLI
(``mipflow study approve HOME --project P protocol.json``): variables age, sex, stroke_type,
nihss_admission, followup_days, death_90d; subgroups elderly (age >= 65), women, men; algorithms
linear_regression, logistic_regression, kaplan_meier, ttest_independent, anova_oneway,
multiple_histograms (10 bins).  The researcher sends only requests the study admits, through the
central site's ``run_analysis``, and reads only the results.

The data are realistic for a stroke registry: death within 90 days is common among the elderly and
rare below 65; here exactly one patient under 65 died (the target: a woman aged 52, NIHSS 23,
followed for 41 days).  Every cohort of the family is large (approval passes: population, each
subgroup and its complement >= min_row_count, atom rule), and every group inside every result is
>= nfilter_tab.  But an algorithm's internal groups (levels of a nominal study variable) are not
in the atom rule nor in the suppression pattern (documented as "not yet"), so

* ``test_hole_*`` PASS WHEN THE ATTACK SUCCEEDS (the node leaks);
* ``test_defence_*`` assert a defence that held.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.rounds import run_analysis
from mipflow.exceptions import FederationError
from mipflow.node.home import NodeHome
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import ELDERLY, MEN, WOMEN, rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, served_clients

PROJECT = "stroke-outcomes-2027"
NODE = "hospital_a"
TARGET = {"age": 52.0, "sex": "F", "nihss_admission": 23.0, "followup_days": 41.0, "death_90d": "yes"}
PROTOCOL = {"name": "stroke-outcomes", "data_model": STROKE.key, "datasets": [NODE],
            "variables": ["age", "sex", "stroke_type", "nihss_admission", "followup_days", "death_90d"],
            "population": {"filter": None},
            "subgroups": [{"name": "elderly", "filter": ELDERLY}, {"name": "women", "filter": WOMEN},
                          {"name": "men", "filter": MEN}],
            "algorithms": ["linear_regression", "logistic_regression", "kaplan_meier", "ttest_independent",
                           "anova_oneway", "multiple_histograms"],
            "histogram_bins": 10, "note": "ethics approval 2027/01"}


def registry(seed: int, n: int, prefix: str, *, target: bool) -> pd.DataFrame:
    """Stroke rows: deaths within 90 days among the elderly (about 30 %), none below 65 but the target."""
    frame = stroke_rows(seed, n, NODE, prefix)
    frame["nihss_admission"] = frame["nihss_admission"].fillna(10.0)
    rng = np.random.default_rng(seed + 1000)
    frame["death_90d"] = np.where((frame["age"] >= 65) & (rng.random(n) < 0.3), "yes", "no")
    if target:
        for key, value in TARGET.items():
            frame.loc[0, key] = value
    return frame


def cli(*argv: str) -> dict:
    """``mipflow study ...`` as the node admin runs it; its JSON output."""
    from mipflow.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["study", *argv]) == 0
    return json.loads(out.getvalue())


def approved_node(root: Path, frame: pd.DataFrame) -> Path:
    NodeHome.init(root, NODE)  # the shipped settings
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project=PROJECT)
    (root / "protocol.json").write_text(json.dumps(PROTOCOL))
    approved = cli("approve", str(root), str(root / "protocol.json"), "--project", PROJECT)
    assert approved["status"] == "approved"
    return root


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Any]:
    frame = registry(7, 160, "a", target=True)
    root = approved_node(Path(tmp_path_factory.mktemp("redstudy")), frame)
    with served_clients({NODE: root}) as clients:
        yield clients[NODE]


def request(y, x=(), filters=None, **parameters) -> dict[str, Any]:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def result(client, algorithm: str, req: dict, researcher: str = "mallory") -> dict:
    outcome = run_analysis(algorithm, req, [client], researcher=researcher, project=PROJECT)
    return outcome.result


def level_counts(client, variable: str, filters, by: str | None = None) -> dict:
    """Level counts of a nominal study variable (a histogram of a nominal y; ADR 0035 leaves these
    to per-result suppression); with ``by``, per level of the grouping variable too."""
    out = result(client, "multiple_histograms", request((variable,), (by,) if by else (), filters, bins=10))
    return {(h["grouping_enum"]): dict(zip(h["bins"], h["counts"])) for h in out["histogram"]}


# --- Hole A: nominal level counts across the family's results --------------------------------------------

def test_hole_a_nominal_level_counts_of_population_minus_elderly_give_a_cell_of_one(node) -> None:
    """Class: complements across results (nominal level counts, ADR 0035 "not yet").
    Two admitted histograms of death_90d (population, elderly), each cell >= nfilter_tab, subtract to
    the non-elderly deaths: exactly 1.  Grouped by sex (admitted too), the same subtraction says the
    one young death is a woman: membership of the target in a cell of one."""
    population, elderly = level_counts(node, "death_90d", None), level_counts(node, "death_90d", ELDERLY)
    assert min(v for v in population[None].values()) >= 3 and min(v for v in elderly[None].values()) >= 3
    assert population[None]["yes"] - elderly[None]["yes"] == 1  # one death below 65
    population, elderly = level_counts(node, "death_90d", None, "sex"), level_counts(node, "death_90d", ELDERLY, "sex")
    young_deaths = {sex: population[sex]["yes"] - elderly[sex]["yes"] for sex in ("F", "M")}
    assert young_deaths == {"F": 1, "M": 0}


# --- Hole B: an algorithm's internal groups (a rare level) across the family's subgroups ------------------

def test_hole_b_anova_group_means_across_subgroups_give_the_young_patients_values(node) -> None:
    """Class: algorithm-internal groups across subgroups (ADR 0028: not in the atom rule).
    One-way ANOVA of y by death_90d, on the population and on `elderly`: each group is large (the
    step passes group_n), and the result carries each group's mean; with the level counts (Hole A)
    the sum of y over deaths in each cohort follows, and population minus elderly is the one young
    death: her exact NIHSS, age and follow-up."""
    n_pop = level_counts(node, "death_90d", None)[None]["yes"]
    n_eld = level_counts(node, "death_90d", ELDERLY)[None]["yes"]
    assert n_pop - n_eld == 1
    recovered = {}
    for y in ("nihss_admission", "age", "followup_days"):
        means = []
        for filters in (None, ELDERLY):
            tukey = result(node, "anova_oneway", request((y,), ("death_90d",), filters))["tuckey_test"][0]
            means.append(tukey["meanB"] if tukey["groupB"] == "yes" else tukey["meanA"])
        recovered[y] = means[0] * n_pop - means[1] * n_eld
    assert {k: round(v, 6) for k, v in recovered.items()} == \
        {k: TARGET[k] for k in ("nihss_admission", "age", "followup_days")}


def test_hole_c_linear_regression_results_alone_give_the_young_patients_value(node) -> None:
    """Class: algorithm-internal groups (regression indicator) across subgroups, from the final
    results only (the honest-session protocol's own algorithm).  y ~ death_90d on the population and
    on `elderly`: the intercept is the mean of y among survivors, intercept + slope among deaths, and
    the slope's standard error gives the deaths' count: se^2 / rse^2 = 1/n_yes + 1/n_no.  The sums
    over deaths subtract to the one young death's value."""
    sums = []
    for filters in (None, ELDERLY):
        fit = result(node, "linear_regression", request(("nihss_admission",), ("death_90d",), filters))
        assert fit["indep_vars"] == ["Intercept", "death_90d[yes]"]
        n, k = fit["n_obs"], (fit["std_err"][1] / fit["rse"]) ** 2  # 1/a + 1/(n-a) = k
        a = (n - math.sqrt(n * n - 4 * n / k)) / 2  # the smaller root: deaths are the rarer level
        n_yes = round(a) if fit["coefficients"][1] else None
        assert abs(a - round(a)) < 1e-6
        sums.append(n_yes * (fit["coefficients"][0] + fit["coefficients"][1]))
    assert round(sums[0] - sums[1], 6) == TARGET["nihss_admission"]


def test_hole_d_logistic_regression_on_the_rare_outcome_is_answered_in_both_cohorts(node) -> None:
    """Class: a rare outcome class across subgroups.  Logistic regression of death_90d on sex is
    answered on the population and on `elderly` (each class and covariate-by-class cell >=
    nfilter_tab); its intercept is logit P(death | woman), which times the women's count (a level
    count, Hole A) is the deaths among women in each cohort: the difference is one, the cell of one
    (young, woman, dead) that no single result's check saw."""
    counts = []
    for filters in (None, ELDERLY):
        fit = result(node, "logistic_regression", request(("death_90d",), ("sex",), filters, positive_class="yes"))
        n = fit["n_obs"]
        coef = dict(zip(fit["indep_vars"], fit["coefficients"]))
        p_f = 1 / (1 + math.exp(-coef["Intercept"]))  # women are the reference level: P(death | F)
        counts.append((n, p_f))
    hist_pop = level_counts(node, "sex", None)[None]
    hist_eld = level_counts(node, "sex", ELDERLY)[None]
    deaths_f = [p * hist["F"] for (n, p), hist in zip(counts, (hist_pop, hist_eld))]
    assert round(deaths_f[0] - deaths_f[1], 6) == 1  # the one young death is a woman


def test_hole_f_kaplan_meier_groups_across_subgroups_give_the_young_womans_death(node) -> None:
    """Class: algorithm-internal groups (Kaplan-Meier by sex) across subgroups, with the honest-session
    protocol's own algorithm.  Curves by sex on the population and on `elderly` are both answered
    (every group and merged bin passes nfilter_tab); the events per group subtract to one death
    among women under 65 and none among men, and the first merged bins (bin_width 1, a free
    parameter) put her death at day 41 or before: sex, outcome and a follow-up bound of one patient."""
    curves = []
    for filters in (None, ELDERLY):
        out = result(node, "kaplan_meier", request(("followup_days", "death_90d"), ("sex",), filters,
                                                    event_level="yes", bin_width=1.0))
        curves.append({c["group"]: c for c in out["curves"]})
    assert {g: curves[0][g]["n_events"] - curves[1][g]["n_events"] for g in ("F", "M")} == {"F": 1, "M": 0}
    pop = dict(zip(curves[0]["F"]["timeline"], np.cumsum(curves[0]["F"]["events"])))
    eld = dict(zip(curves[1]["F"]["timeline"], np.cumsum(curves[1]["F"]["events"])))
    by = min(t for t in set(pop) & set(eld) if pop[t] - eld[t] == 1)
    assert TARGET["followup_days"] <= by <= 41.0


# --- Hole E: a refresh with at least min_row_count new rows, differenced through a rare level -------------

def test_hole_e_a_refresh_of_forty_new_rows_gives_the_one_new_deaths_values(tmp_path) -> None:
    """Class: snapshot differencing across a refresh.  The documented rule (rows added none or at
    least min_row_count per cohort) holds for 40 new admissions; but one of them died, and the
    deaths' group (an internal group) changes by one: the ANOVA of NIHSS by death before and after
    the refresh gives her exact NIHSS."""
    old = registry(8, 160, "b", target=False)
    root = approved_node(tmp_path / "node", old)
    new = registry(9, 40, "b-new", target=False)
    new["death_90d"] = "no"
    newcomer = {"age": 71.0, "sex": "M", "nihss_admission": 17.0, "followup_days": 12.0, "death_90d": "yes"}
    for key, value in newcomer.items():
        new.loc[5, key] = value
    with served_clients({NODE: root}) as clients:
        client = clients[NODE]

        def deaths_sum() -> float:
            n = level_counts(client, "death_90d", None)[None]["yes"]
            tukey = result(client, "anova_oneway", request(("nihss_admission",), ("death_90d",)))["tuckey_test"][0]
            return n, n * (tukey["meanB"] if tukey["groupB"] == "yes" else tukey["meanA"])

        n0, before = deaths_sum()
        load_frame(root, STROKE, new)  # the hospital's next export
        refreshed = cli("refresh", str(root), "--project", PROJECT)
        assert refreshed.get("status") in ("refreshed", "approved"), refreshed
        n1, after = deaths_sum()
    assert n1 - n0 == 1 and round(after - before, 6) == newcomer["nihss_admission"]


# --- Defences that held ----------------------------------------------------------------------------------

def test_defence_the_young_deaths_cohort_itself_is_refused_by_the_request(node) -> None:
    """The direct route (a filter for the young deaths, the elderly complement, an intersection)
    is refused by the study from the request alone, naming the subgroups."""
    for filters in (where(rule("age", "less", 65)), where(rule("death_90d", "equal", "yes")),
                    where(rule("age", "greater_or_equal", 65), rule("sex", "equal", "F"))):
        with pytest.raises(FederationError, match=r"refused \(study\)"):
            result(node, "anova_oneway", request(("nihss_admission",), ("death_90d",), filters))


def test_defence_numeric_histograms_by_death_do_not_give_the_targets_bin(node) -> None:
    """ADR 0035's pattern holds for a numerical variable grouped by a nominal one: the histograms
    of NIHSS by death_90d on population, elderly, women and men never release the deaths' bin that
    holds the target in both the population and `elderly` (nor in women and the population minus men)."""
    bins = np.linspace(*_range("nihss_admission"), 11)
    j = int(np.clip(np.searchsorted(bins, TARGET["nihss_admission"], side="right") - 1, 0, 9))
    got = {}
    for name, filters in (("population", None), ("elderly", ELDERLY), ("women", WOMEN), ("men", MEN)):
        out = result(node, "multiple_histograms", request(("nihss_admission",), ("death_90d",), filters, bins=10))
        got[name] = {h["grouping_enum"]: h["counts"] for h in out["histogram"]}
    pop, eld = got["population"]["yes"], got["elderly"]["yes"]
    assert pop[j] is None or eld[j] is None
    assert got["women"]["yes"][j] is None or eld[j] is None or got["men"]["yes"][j] is None


def _range(code: str) -> tuple[float, float]:
    for var in STROKE:
        if var.code == code:
            return float(var.min_value), float(var.max_value)
    raise KeyError(code)
