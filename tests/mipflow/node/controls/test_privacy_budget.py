"""The node's privacy ledger (:mod:`mipflow.node.controls.privacy_budget`, ADR 0015): what it charges,
refuses and keeps on disk. The charges made through the DP control (noise, per-researcher budget
across restarts, zCDP composition of Gaussian steps) are tested in ``test_dp.py``."""
from __future__ import annotations

import json
import math

import pytest

from mipflow.exceptions import ConfigError, DisclosureError
from mipflow.node.controls.privacy_budget import (
    LEDGER_FILE, PrivacyCost, PrivacyLedger, Spent, compose, pure_to_rho, rho_for_epsilon, rho_to_epsilon,
)


def test_pure_releases_add_up_by_basic_composition():
    spent = compose([PrivacyCost("laplace", 0.1)] * 3 + [PrivacyCost("laplace", 0.25)], 1e-6)
    assert spent == Spent(epsilon=pytest.approx(0.55, rel=1e-15), delta=0.0, accountant="basic", releases=4)
    assert compose([], 1e-6) == Spent(0.0, 0.0, "basic", 0)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 3.0])
def test_conversions_match_the_closed_forms(epsilon):
    assert pure_to_rho(epsilon) == pytest.approx(epsilon ** 2 / 2, rel=1e-12)
    # rho-zCDP => (rho + 2 sqrt(rho log(1/delta)), delta)-DP is an upper bound (Bun & Steinke, prop. 1.3)
    rho, delta = epsilon ** 2 / 2, 1e-6
    assert 0 < rho_to_epsilon(rho, delta) <= rho + 2 * math.sqrt(rho * math.log(1 / delta)) * (1 + 1e-9)


@pytest.mark.parametrize("epsilon, delta", [(0.5, 1e-6), (2.0, 1e-5)])
def test_rho_for_epsilon_is_the_largest_rho_within_epsilon(epsilon, delta):
    rho = rho_for_epsilon(epsilon, delta)
    assert rho_to_epsilon(rho, delta) <= epsilon * (1 + 1e-9)
    assert rho_to_epsilon(rho * 1.001, delta) > epsilon  # not much more rho would fit


def test_zero_costs_and_a_zcdp_total_without_delta():
    assert pure_to_rho(0.0) == 0.0 and rho_to_epsilon(0.0, 0.0) == 0.0
    with pytest.raises(ConfigError, match="0 < delta < 1"):
        rho_to_epsilon(0.1, 0.0)


def test_charges_are_written_before_they_count_and_refusals_write_nothing(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    after = ledger.charge("alice", PrivacyCost("laplace", 0.6), epsilon_budget=1.0, delta_budget=0.0,
                          details={"algorithm": "descriptive_stats", "node": "n1"})
    assert after == Spent(0.6, 0.0, "basic", 1)
    path = tmp_path / LEDGER_FILE
    (entry,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert entry["researcher"] == "alice" and entry["epsilon"] == 0.6 and entry["algorithm"] == "descriptive_stats"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(DisclosureError, match=r"spent epsilon 0\.6 .* would cost epsilon 0\.5 more") as info:
        ledger.charge("alice", PrivacyCost("laplace", 0.5), epsilon_budget=1.0, delta_budget=0.0)
    assert info.value.control == "dp_budget"
    assert len(path.read_text().splitlines()) == 1 and len(ledger.costs("alice")) == 1
    # exactly the budget is allowed (OpenDP may round a cost up by an ulp)
    assert ledger.charge("alice", PrivacyCost("laplace", 0.4), epsilon_budget=1.0, delta_budget=0.0).epsilon == \
        pytest.approx(1.0)


def test_a_gaussian_release_needs_a_delta_budget(tmp_path):
    """A zCDP total cannot be stated at delta 0: a node configured so charges nothing."""
    ledger = PrivacyLedger(tmp_path)
    gaussian = PrivacyCost("gaussian", 0.3, delta=1e-6, rho=0.002)
    with pytest.raises(ConfigError, match="0 < delta < 1"):
        ledger.charge("bob", gaussian, epsilon_budget=10.0, delta_budget=0.0)
    assert ledger.costs("bob") == [] and not (tmp_path / LEDGER_FILE).exists()


def test_researchers_are_charged_apart_and_the_ledger_is_read_back(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    ledger.charge("alice", PrivacyCost("laplace", 0.2), epsilon_budget=1.0, delta_budget=1e-6)
    ledger.charge("bob", PrivacyCost("gaussian", 0.3, delta=1e-6, rho=0.002), epsilon_budget=1.0,
                  delta_budget=1e-6)
    with open(tmp_path / LEDGER_FILE, "a") as handle:
        handle.write("\n")  # a blank line is no entry
    again = PrivacyLedger(tmp_path)
    assert again.costs("alice") == [PrivacyCost("laplace", 0.2)]
    assert again.costs("bob") == [PrivacyCost("gaussian", 0.3, delta=1e-6, rho=0.002)]
    assert again.spent("bob", 1e-6).accountant == "zCDP" and again.spent("carol", 1e-6).releases == 0


@pytest.mark.parametrize("line", ['{"researcher": "a", "epsilon": 0.1}', '{"researcher": "a", "mechanism": '
                                  '"laplace", "epsilon": "lots"}', "[1, 2]"], ids=["no-mechanism", "bad-epsilon",
                                                                               "not-an-object"])
def test_any_unreadable_entry_stops_the_node(tmp_path, line):
    (tmp_path / LEDGER_FILE).write_text(line + "\n")
    with pytest.raises(ConfigError, match="line 1 is not a ledger entry"):
        PrivacyLedger(tmp_path)


def test_a_project_is_charged_across_its_researchers_and_refused_when_spent(tmp_path):
    """New researcher ids under one project share the project's budget; the message names it."""
    ledger = PrivacyLedger(tmp_path)
    for who in ("r1", "r2"):
        ledger.charge(who, PrivacyCost("laplace", 0.5), epsilon_budget=1.0, delta_budget=1e-6, project="p",
                      project_epsilon_budget=1.0)
    assert ledger.project_spent("p", 1e-6).epsilon == pytest.approx(1.0)
    with pytest.raises(DisclosureError) as info:
        ledger.charge("r3", PrivacyCost("laplace", 0.5), epsilon_budget=1.0, delta_budget=1e-6, project="p",
                      project_epsilon_budget=1.0)
    assert info.value.control == "dp_budget"
    assert str(info.value).startswith("project 'p' has spent epsilon 1 of the privacy budget (epsilon 1, delta "
                                      "1e-06, dp_project_budget_epsilon) at this node, all its researchers together")
    assert "does not renew" in str(info.value) and "researcher 'r3'" not in str(info.value)
    assert ledger.costs("r3") == [] and len((tmp_path / LEDGER_FILE).read_text().splitlines()) == 2
    # another project has room; the researcher's own budget still binds
    ledger.charge("r1", PrivacyCost("laplace", 0.5), epsilon_budget=1.0, delta_budget=1e-6, project="q")
    with pytest.raises(DisclosureError, match="^researcher 'r1' has spent epsilon 1 ") as info:
        ledger.charge("r1", PrivacyCost("laplace", 0.5), epsilon_budget=1.0, delta_budget=1e-6, project="q2")
    assert "project" not in str(info.value).split(";")[0]
    again = PrivacyLedger(tmp_path)  # read back: nothing reset
    assert again.project_spent("p", 1e-6).epsilon == pytest.approx(1.0) and len(again.project_costs("q")) == 1


def test_a_ledger_from_before_projects_keeps_working(tmp_path):
    """Old lines have no project: they count for their researcher, and a project starts from them at 0."""
    (tmp_path / LEDGER_FILE).write_text('{"researcher": "alice", "mechanism": "laplace", "epsilon": 0.75}\n')
    ledger = PrivacyLedger(tmp_path)
    assert ledger.spent("alice", 1e-6).epsilon == 0.75 and ledger.project_costs("p") == []
    with pytest.raises(DisclosureError, match="researcher 'alice' has spent epsilon 0.75"):
        ledger.charge("alice", PrivacyCost("laplace", 0.5), epsilon_budget=1.0, delta_budget=1e-6, project="p")
    ledger.charge("bob", PrivacyCost("laplace", 0.5), epsilon_budget=1.0, delta_budget=1e-6, project="p")
    assert PrivacyLedger(tmp_path).project_spent("p", 1e-6).epsilon == 0.5
