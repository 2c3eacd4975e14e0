"""The study approval family's messages (issue 14): one form for every failure, what to change, no count a check
does not give the node admin on purpose.

Every failure of ``mipflow study approve`` starts with "study 'NAME' not approved: " (a protocol without a valid name:
"study not approved: "), every failed refresh with "study 'NAME' not refreshed: " and ends saying the study stays on
its snapshot, whichever check raised it; before, the ledger's, the atom rule's and the union rule's failures at
approval, a missing data model, a project in explore mode or with a study already, and a malformed protocol came
without it.  Each names what to change.  The atom rule's failure gave the size of the group it isolates (data the
union rule's failure already withholds); it gives none now.
"""
from __future__ import annotations

import re

import pytest

from mipflow.exceptions import ConfigError
from mipflow.node.controls import study_approval
from mipflow.node.controls.differencing import CohortLedger
from mipflow.node.controls.modes import set_mode
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import PROJECT, node_home, population, protocol, rule, stroke_rows, where
from tests.mipflow.node.controls.test_study_approval import _population_keys
from tests.nodes import load_frame

PREFIX = "study 'stroke-outcomes' not approved: "
#: words of the part of each message that says what to change
REMEDIES = ("choose", "widen", "leave", "name a data model", "refresh it", "disable it", "remove", "must be", "use ")


def failure(home, doc=None, project: str = PROJECT) -> str:
    with pytest.raises(ConfigError) as caught:
        study_approval.approve(home, project, protocol() if doc is None else doc)
    return str(caught.value)


def says_what_to_change(message: str) -> bool:
    return any(word in message.lower() for word in REMEDIES)


def _no_nominal(subgroups) -> dict:
    """Numerical study variables only, no survival grid: the family's rules (ledger, atoms) decide."""
    doc = protocol(datasets=["hospital_a"], variables=["age", "nihss_admission"], subgroups=subgroups,
                   algorithms=["descriptive_stats", "linear_regression"])
    doc.pop("survival")
    return doc


def test_every_approval_failure_starts_with_the_study_s_name_and_says_what_to_change(tmp_path) -> None:
    messages = {}
    home, frame = node_home(tmp_path / "a")
    messages["no data model"] = failure(home, protocol(data_model="stroke:0.2"))
    keys, _ = _population_keys(home)
    ledger = CohortLedger(home.root)
    ledger.record(STROKE.key, [keys[3:]])  # an answered cohort three rows from the population
    ledger.close()
    messages["ledger"] = failure(home)
    other, frame = node_home(tmp_path / "b", n=400)
    whole = population(frame)
    assert 0 < int((whole["age"] == 50).sum()) < 10  # 'age >= 50' less 'age > 50': a few patients
    messages["atom rule"] = failure(other, _no_nominal([
        {"name": "a", "filter": where(rule("age", "greater_or_equal", 50))},
        {"name": "b", "filter": where(rule("age", "greater", 50))}]))
    oldest = float(whole["age"].max())
    messages["size"] = failure(other, protocol(subgroups=[
        {"name": "oldest", "filter": where(rule("age", "greater_or_equal", oldest))}]))
    set_mode(other.root, "exploring", "explore")
    messages["explore mode"] = failure(other, project="exploring")
    third, _ = node_home(tmp_path / "c")
    study_approval.approve(third, PROJECT, protocol())
    messages["approved already"] = failure(third)
    for what, message in messages.items():
        assert message.startswith(PREFIX) and not message[len(PREFIX):].startswith("study "), (what, message)
        assert says_what_to_change(message), (what, message)
    assert "would isolate a group of fewer than min_row_count (10) patients" in messages["atom rule"]
    assert set(re.findall(r"\d+", messages["atom rule"])) == {"10"}, messages["atom rule"]  # no size
    assert "subgroup 'oldest' holds" in messages["size"]  # the counts ADR 0028 gives the admin, kept
    # a protocol without a valid name: the same form, without the name
    nameless = failure(home, protocol(name="no spaces allowed"))
    assert nameless.startswith("study not approved: study protocol: 'name' must be"), nameless


def test_every_refresh_failure_starts_with_the_study_s_name_and_ends_on_its_snapshot(tmp_path) -> None:
    home, _ = node_home(tmp_path)
    first = study_approval.approve(home, PROJECT, protocol())
    load_frame(home.root, STROKE, stroke_rows(12, 3, "hospital_a", "late"))  # three new patients
    with pytest.raises(ConfigError) as caught:
        study_approval.refresh(home, PROJECT)
    message = str(caught.value)
    assert message.startswith("study 'stroke-outcomes' not refreshed: ") and "row(s) added" in message
    assert message.endswith(f"; the study stays on its snapshot of {first['snapshot']}") and says_what_to_change(message)
    assert message.count("stays on its snapshot") == 1
