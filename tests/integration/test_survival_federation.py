"""Survival analyses over the real federation: three node services on loopback, default
disclosure settings (min_row_count 10, nfilter_tab 3), signed HTTP.

Kaplan-Meier with a log-rank test and Cox regression (Breslow's and Efron's
ties) must equal statsmodels (and lifelines, for the curves, the log-rank test
and Efron's Cox) on the pooled rows of the contributing nodes with times
rounded up to the result's bin ends; a node whose counts cannot be binned
safely is left out with its reason.
"""
from __future__ import annotations

import contextlib
import functools

import warnings
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from statsmodels.duration.hazard_regression import PHReg

from mipflow.central.client import NodeClient
from mipflow.central.rounds import run_analysis as _run_analysis
from tests.mipflow.algorithms import lifelines_reference
from tests.mipflow.algorithms.helpers import assert_rel_close
from tests.mipflow.algorithms.survival_data import (
    HOSPITALS, STROKE, complete, cox_design, make_stroke, request, round_up,
)
from tests.mipflow.algorithms.test_survival import COX_COLUMNS, COX_X, KM_COLUMNS, check_km, check_km_lifelines
from tests.nodes import PROJECT, RESEARCHER, grant_all, load_frame, pin_each_other, served_clients
from tests.nodes import standard_home

#: every analysis here runs as the identity the nodes' grants approve
run_analysis = functools.partial(_run_analysis, researcher=RESEARCHER, project=PROJECT)

pytestmark = pytest.mark.xdist_group("federation")


@contextlib.contextmanager
def _federation(base, **settings) -> Iterator[tuple[list[NodeClient], dict[str, pd.DataFrame]]]:
    data = make_stroke(2026, 900)
    frames = {h: data[data["dataset"] == h].reset_index(drop=True) for h in HOSPITALS}
    # hospital_c: two deaths among its women, too few to bin at nfilter_tab 3
    c = frames["hospital_c"]
    c.loc[c["sex"] == "F", "death_90d"] = "no"
    c.loc[c.index[c["sex"] == "F"][:2], "death_90d"] = "yes"
    roots = {}
    for hospital, frame in frames.items():
        roots[hospital] = base / hospital
        home = standard_home(roots[hospital], hospital)
        # the analyses here use overlapping cohorts on purpose (complete cases of different
        # variables); the differencing control has its own tests (tests/mipflow/node/controls/test_differencing.py)
        home.set_setting("differencing_check", 0)
        for key, value in settings.items():
            home.set_setting(key, value)
        assert load_frame(roots[hospital], STROKE, frame) == len(frame)
        grant_all(roots[hospital])
    pin_each_other(roots)  # the admins pinned each other's keys (ADR 0014)
    with served_clients(roots) as served:
        yield list(served.values()), frames


@pytest.fixture(scope="module")
def survival_federation(tmp_path_factory) -> Iterator[tuple[list[NodeClient], dict[str, pd.DataFrame]]]:
    """The federation of the per-node analyses (Kaplan-Meier on per-node bins, Cox regression)."""
    with _federation(tmp_path_factory.mktemp("survival-federation")) as federation:
        yield federation


@pytest.fixture(scope="module")
def pooled_federation(tmp_path_factory) -> Iterator[tuple[list[NodeClient], dict[str, pd.DataFrame]]]:
    """The same hospitals, other homes: rows analysed on pooled bins are answered on those bins only
    (ADR 0059), so the per-node analyses above need homes of their own."""
    with _federation(tmp_path_factory.mktemp("pooled-federation")) as federation:
        yield federation


def test_kaplan_meier_via_http(survival_federation) -> None:
    clients, frames = survival_federation
    # per-node bins: every node's own counts must reach nfilter_tab
    doc = request("kaplan_meier", x=("sex",), bin_width=7.0, survival_bins="per_node").to_dict()
    outcome = run_analysis("kaplan_meier", doc, clients)
    assert outcome.result["binning"]["partition"] == "per_node"
    assert set(outcome.excluded) == {"hospital_c"}
    assert "(nfilter_tab)" in outcome.excluded["hospital_c"]
    used = ["hospital_a", "hospital_b"]
    assert outcome.contributed == {h: len(complete(frames[h], KM_COLUMNS)) for h in used}
    pooled = complete(pd.concat([frames[h] for h in used], ignore_index=True), KM_COLUMNS)
    check_km(outcome.result, pooled, grouped=True)
    check_km_lifelines(outcome.result, pooled, grouped=True)
    assert outcome.result["binning"]["method"] == "binned"
    # the same rows are not answered on pooled bins after that (ADR 0059: pooled {a, b, c} less per-node
    # {a, b} would be hospital_c's own counts): the central site falls back to per-node bins
    again = run_analysis("kaplan_meier", request("kaplan_meier", x=("sex",), bin_width=7.0).to_dict(), clients)
    assert again.result["binning"]["partition"] == "per_node" and set(again.excluded) == {"hospital_c"}


def test_kaplan_meier_on_pooled_bins_via_http(pooled_federation) -> None:
    clients, frames = pooled_federation
    # pooled bins (automatic among the three pinned nodes, ADR 0052): only the pooled counts must reach
    # nfilter_tab, and each node's are masked, so hospital_c's two deaths among its women take part
    pooled_bins = run_analysis("kaplan_meier", request("kaplan_meier", x=("sex",), bin_width=7.0).to_dict(), clients)
    assert pooled_bins.result["binning"]["partition"] == "pooled" and not pooled_bins.excluded
    everyone = complete(pd.concat(frames.values(), ignore_index=True), KM_COLUMNS)
    check_km(pooled_bins.result, everyone, grouped=True)
    check_km_lifelines(pooled_bins.result, everyone, grouped=True)
    # without grouping: the same rows, the same pool, so the same pooled bins answer
    whole = run_analysis("kaplan_meier", request("kaplan_meier").to_dict(), clients)
    assert not whole.excluded and whole.result["binning"]["partition"] == "pooled"
    check_km(whole.result, everyone, grouped=False)
    check_km_lifelines(whole.result, everyone, grouped=False)
    # ADR 0059: these rows' survival releases on any other bins are refused by every node, naming the rule
    for algorithm, parameters in (("kaplan_meier", {"survival_bins": "per_node"}), ("cox_regression", {})):
        with pytest.raises(Exception, match="pooled_bins") as refused:
            run_analysis(algorithm, request(algorithm, x=("sex",), bin_width=7.0, **parameters).to_dict(), clients)
        assert "all the original datasets" in str(refused.value)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_regression_via_http(survival_federation, ties) -> None:
    """With the nodes' bins merged to nfilter_tab 3 every event bin holds tied events: Breslow and
    Efron differ, and each equals its pooled reference.  hospital_c's two deaths among its women are a cell
    of its score's ``event_x`` (issue 14): it refuses at round 0 (``nfilter_tab``) and is left out; the two
    others answer, equal to the pooled fit of their rows."""
    clients, frames = survival_federation
    doc = request("cox_regression", x=COX_X, ties=ties).to_dict()
    outcome = run_analysis("cox_regression", doc, clients)
    assert set(outcome.excluded) == {"hospital_c"} and "(nfilter_tab)" in outcome.excluded["hospital_c"]
    assert outcome.rounds >= 3
    used = {h: f for h, f in frames.items() if h != "hospital_c"}
    pooled = complete(pd.concat(used.values(), ignore_index=True), COX_COLUMNS)
    assert outcome.contributed == {h: len(complete(f, COX_COLUMNS)) for h, f in used.items()}
    result = outcome.result
    times = round_up(pooled["followup_days"].to_numpy(), result["binning"]["timeline"])
    design = cox_design(pooled, result["indep_vars"])
    status = (pooled["death_90d"] == "yes").to_numpy(dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = PHReg(times, design, status=status, ties=ties).fit(method="newton", tol=1e-8)
    assert result["indep_vars"] == ["sex[M]", "stroke_type[ischaemic]", "stroke_type[tia]", "age",
                                    "nihss_admission"]
    assert result["ties"] == ties and result["binning"]["merged_for_disclosure"]
    for key, expected in (("coefficients", fit.params), ("stderr", fit.bse), ("z_scores", fit.tvalues),
                          ("pvalues", fit.pvalues), ("ll", fit.llf)):
        assert_rel_close(result[key], expected, rel=1e-9, what=key)
    assert result["n_events"] == int(status.sum())
    if ties == "efron":
        reference = lifelines_reference.cox(times, status, design, result["indep_vars"])
        for key in ("coefficients", "stderr", "ll"):
            assert_rel_close(result[key], reference[key], rel=1e-9, what=f"{key} (lifelines)")
        # the ties matter here: Breslow's fit on the same rows is measurably different
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            breslow = PHReg(times, design, status=status, ties="breslow").fit(method="newton", tol=1e-8)
        assert np.max(np.abs(breslow.params / fit.params - 1)) > 1e-6


def test_cox_regression_of_rows_on_disk_via_http_is_the_frames(tmp_path_factory) -> None:
    """ADR 0062, amendment 16: the same hospitals serving Cox regression from rows left on disk (the default,
    ``columnar_snapshot`` 1: each node's selection a bit a snapshot row, every round read a chunk at a time) and
    from the SQL read's frame (``columnar_snapshot`` 0) give the same result, byte for byte, for both ties: every
    round's counts, sealed sums and score shares were the same."""
    import json

    results, snapshots = {}, {}
    for case, settings in (("disk", {}), ("frame", {"columnar_snapshot": 0})):
        base = tmp_path_factory.mktemp(f"cox-{case}")
        with _federation(base, **settings) as (clients, _):
            for ties in ("breslow", "efron"):
                outcome = run_analysis("cox_regression", request("cox_regression", x=COX_X, ties=ties).to_dict(),
                                       clients)
                assert set(outcome.excluded) == {"hospital_c"} and outcome.rounds >= 3
                results[case, ties] = json.dumps(outcome.result, sort_keys=True)
        snapshots[case] = sorted(p.name for p in base.rglob("*.npy"))
    assert snapshots["disk"] and not snapshots["frame"]  # the columnar snapshot read on one side only
    for ties in ("breslow", "efron"):
        assert results["disk", ties] == results["frame", ties]
    assert results["disk", "breslow"] != results["disk", "efron"]
