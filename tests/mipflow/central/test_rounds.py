"""mipflow.central.rounds: the round loop logs each round with the nodes that answered and those
left out, and no patient data (docs/adr/0017-operability.md)."""
from __future__ import annotations

import logging
import re

import pytest

from mipflow.central.rounds import run_analysis
from mipflow.exceptions import RequestError
from tests.nodes import LINREG, PROJECT, RESEARCHER, in_process_node, pin_each_other


def test_run_analysis_needs_a_researcher_and_project():
    for who in (dict(project="p1"), dict(researcher="alice"), dict(researcher="a b", project="p1")):
        with pytest.raises(RequestError, match="researcher|project"):
            run_analysis("linear_regression", LINREG, [], **who)


@pytest.fixture
def in_process_nodes(tmp_path):
    """Three nodes on the synthetic model, reached in-process through their real signed API."""
    nodes = [in_process_node(tmp_path / f"node{i}", f"node{i}", seed=40 + i, rows=120, patients=f"p{i}")
             for i in range(3)]
    homes = [home for _, home in nodes]
    pin_each_other(homes)  # the admins pinned each other's keys (ADR 0014)
    yield [client for client, _ in nodes], homes
    for client, _ in nodes:
        client.close()


def test_analysis_logs_each_round_with_nodes_answered_and_left_out(in_process_nodes, caplog):
    from mipflow.algorithms.contract import MAX_ROUNDS
    from mipflow.central.rounds import run_analysis

    clients, homes = in_process_nodes
    homes[2].set_setting("disabled_algorithms", "logistic_regression")
    request = {"inputdata": {"data_model": "synth:1", "datasets": ["d0", "d1", "d2"], "x": ["x1", "age"],
                             "y": ["sex"], "filters": None}, "parameters": {"positive_class": "F"}}
    caplog.set_level(logging.INFO, logger="mipflow.central.rounds")
    # plain aggregation; a round-0 refusal restarts an iterative analysis on the nodes that answered
    # (verifiable rounds bind every round to round 0's participants, ADR 0029), so round 1 is logged twice
    outcome = run_analysis("logistic_regression", request, clients, researcher=RESEARCHER, project=PROJECT,
                           secure_aggregation=False)
    assert outcome.rounds > 2 and set(outcome.excluded) == {"node2"}
    rounds = [re.search(r"round (\d+) of at most (\d+): (\d+) node\(s\) answered, (\d+) left out",
                        r.getMessage()) for r in caplog.records]
    rounds = [tuple(int(g) for g in m.groups()) for m in rounds if m]
    assert [r[0] for r in rounds] == [1] + list(range(1, outcome.rounds + 1))
    assert {r[1] for r in rounds} == {MAX_ROUNDS}
    assert rounds[0][2:] == (2, 1)  # the disabled node refused round 1 and was left out
    assert all(r[2:] == (2, 0) for r in rounds[1:])
    assert any("restarting on the 2 node(s) that answered round 1" in r.getMessage() for r in caplog.records)
    assert any(f"finished after {outcome.rounds} round(s) with 2 node(s)" in r.getMessage() for r in caplog.records)
    assert any("disabled_algorithm" in r.getMessage() for r in caplog.records)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not re.search(r"p[0-2]_\d{4}", text)  # no patient identifier in the round logs


def test_nodes_left_out_for_the_same_reason_are_named_together_and_the_reason_said_once():
    from mipflow.central.rounds import left_out_text

    refusal = "refused (study): the filter is not one of the study's subgroups; send ..."
    text = left_out_text({"a": refusal, "b": "unavailable: timed out", "c": refusal})
    assert text == f"a, c: {refusal}; b: unavailable: timed out"
    assert text.count(refusal) == 1 and left_out_text({}) == ""
