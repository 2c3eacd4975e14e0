"""An honest researcher's session in study mode, over three real node processes (ADR 0028).

Three node services on loopback (``mipflow node serve``) hold stroke rows of one hospital each,
with the **default** disclosure settings: ``min_row_count`` 10, ``nfilter_tab`` 3 and the
differencing control on.  Each node's admin approved the same study protocol for the project.
The researcher then does what issue 14 found refused outside study mode: regressions of
different variable sets (complete cases differ), subgroups (age >= 65, women, men), Kaplan-Meier
with and without a grouping variable, and the same analysis again after a node loaded a new
export.  Nothing is refused; every result equals the pooled computation on the snapshot
populations to 1e-9 relative, and says it was answered in study mode, on which snapshot.
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from mipflow.central.rounds import run_analysis as _run_analysis
from mipflow.node.controls import study_approval
from mipflow.node.home import NodeHome
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.algorithms.test_survival import check_km
from tests.mipflow.node.controls.study_helpers import (
    ELDERLY, MEN, PROJECT, VARIABLES, WOMEN, population, protocol, stroke_rows,
)
from tests.nodes import grant_all, load_frame, pin_each_other, served_clients
from tests.nodes import standard_home

pytestmark = pytest.mark.xdist_group("federation")

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
RESEARCHER = "honest"
run_analysis = functools.partial(_run_analysis, researcher=RESEARCHER, project=PROJECT, min_nodes=3)


#: the study's variables but the stroke type: with three nominal variables, cells of ~400 rows per
#: node cross into groups of one or two that the level-cell rule refuses at approval (ADR 0028)
PROTOCOL = protocol(variables=[v for v in VARIABLES if v != "stroke_type"])


@pytest.fixture(scope="module")
def study_federation(tmp_path_factory) -> Iterator[tuple[list, dict[str, pd.DataFrame], dict[str, NodeHome]]]:
    base = tmp_path_factory.mktemp("study-federation")
    frames, roots = {}, {}
    for i, hospital in enumerate(HOSPITALS):
        roots[hospital] = base / hospital
        standard_home(roots[hospital], hospital)  # default settings: differencing on
        frames[hospital] = stroke_rows(100 + i, 400 + 40 * i, hospital, f"{hospital}-p")
        load_frame(roots[hospital], STROKE, frames[hospital])
        grant_all(roots[hospital], researcher=RESEARCHER, project=PROJECT)
        summary = study_approval.approve(NodeHome(roots[hospital]), PROJECT, PROTOCOL)
        assert summary["status"] == "approved"
    pin_each_other(roots)
    with served_clients(roots) as clients:
        yield list(clients.values()), frames, {h: NodeHome(r) for h, r in roots.items()}


def pooled(frames: dict[str, pd.DataFrame], subgroup=None) -> pd.DataFrame:
    return pd.concat([population(f, subgroup) for f in frames.values()], ignore_index=True)


def request(y, x=(), filters=None, **parameters) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": list(HOSPITALS), "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def check_ols(result: dict, rows: pd.DataFrame, formula: str) -> None:
    data = rows.copy()
    fit = smf.ols(formula, data).fit()
    assert result["n_obs"] == int(fit.nobs) == len(rows)
    assert_rel_close(result["coefficients"], fit.params.to_numpy(), rel=1e-9, what="coefficients")
    assert_rel_close(result["std_err"], fit.bse.to_numpy(), rel=1e-9, what="std_err")
    assert_rel_close(result["r_squared"], fit.rsquared, rel=1e-9, what="r_squared")


def answered_in_study_mode(outcome, snapshots: dict[str, str] | None = None) -> dict[str, str]:
    assert not outcome.excluded, outcome.excluded
    assert set(outcome.contributed) == set(HOSPITALS)
    assert {m["study"] for m in outcome.mode.values()} == {"stroke-outcomes"} and set(outcome.mode) == set(HOSPITALS)
    found = {node: m["snapshot"] for node, m in outcome.mode.items()}
    if snapshots is not None:
        assert found == snapshots
    return found


def test_an_honest_session_is_answered_exactly_on_the_study_population(study_federation) -> None:
    clients, frames, homes = study_federation
    # 1. a regression on two variables, then on others: complete cases would differ, the population does not
    first = run_analysis("linear_regression", request(["nihss_admission"], ["age"]), clients)
    snapshots = answered_in_study_mode(first)
    everyone = pooled(frames)
    assert sum(first.contributed.values()) == len(everyone)  # complete over ALL study variables
    check_ols(first.result, everyone, "nihss_admission ~ age")
    second = run_analysis("linear_regression", request(["followup_days"], ["age", "sex"]), clients)
    answered_in_study_mode(second, snapshots)
    check_ols(second.result, everyone.assign(sex=pd.Categorical(everyone["sex"], ["F", "M"])),
              "followup_days ~ sex + age")
    # 2. subgroups: age >= 65, women, men (each the pooled subgroup of the snapshot populations)
    for subgroup in (ELDERLY, WOMEN, MEN):
        outcome = run_analysis("linear_regression", request(["nihss_admission"], ["age"], subgroup), clients)
        answered_in_study_mode(outcome, snapshots)
        check_ols(outcome.result, pooled(frames, subgroup), "nihss_admission ~ age")
    # 3. Kaplan-Meier, without and with a grouping variable, on the whole population and a subgroup
    for x, subgroup in (((), None), (("sex",), None), ((), ELDERLY)):
        km = run_analysis("kaplan_meier", request(["followup_days", "death_90d"], x, subgroup,
                                                  event_level="yes", bin_width=7.0), clients)
        answered_in_study_mode(km, snapshots)
        check_km(km.result, pooled(frames, subgroup), grouped=bool(x))
    # 4. a node loads a new export: the same analysis gives the same answer, on the same snapshot
    load_frame(homes["hospital_b"].root, STROKE, stroke_rows(999, 400, "hospital_b", "export2"))
    again = run_analysis("linear_regression", request(["nihss_admission"], ["age"]), clients)
    answered_in_study_mode(again, snapshots)
    assert again.contributed == first.contributed
    assert_rel_close(again.result["coefficients"], first.result["coefficients"], rel=1e-12, what="re-run")
    # 5. the admin refreshes the study: the new patients enter, every later answer says the new date
    done = study_approval.refresh(homes["hospital_b"], PROJECT)
    assert done["status"] == "refreshed" and done["added"] == len(population(stroke_rows(999, 400, "hospital_b", "x")))
    after = run_analysis("linear_regression", request(["nihss_admission"], ["age"]), clients)
    moved = answered_in_study_mode(after)
    assert moved["hospital_b"] == done["snapshot"] != snapshots["hospital_b"]
    assert {k: v for k, v in moved.items() if k != "hospital_b"} == {k: v for k, v in snapshots.items()
                                                                       if k != "hospital_b"}
    grown = {**frames, "hospital_b": pd.concat([frames["hospital_b"],
                                                 stroke_rows(999, 400, "hospital_b", "export2")], ignore_index=True)}
    check_ols(after.result, pooled(grown), "nihss_admission ~ age")
    assert np.isfinite(after.result["coefficients"]).all() and VARIABLES
