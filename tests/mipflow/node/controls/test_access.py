"""Access grants: who may run which algorithm on which datasets, until when (:mod:`mipflow.node.controls.access`)."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from mipflow.exceptions import ConfigError
from mipflow.node.controls.access import AccessDenied, AccessRegistry

TODAY = date(2026, 6, 15)


@pytest.fixture
def registry(tmp_path) -> AccessRegistry:
    return AccessRegistry(tmp_path)


def check(registry, researcher="alice", project="p1", datasets=("edsd0",), algorithm="linear_regression",
          data_model="dementia:0.1", today=TODAY):
    return registry.check(researcher=researcher, project=project, data_model=data_model, datasets=list(datasets),
                          algorithm=algorithm, today=today)


@pytest.mark.parametrize("grant, request_, allowed", [
    pytest.param(dict(researcher="alice"), {}, True, id="researcher-any-project"),
    pytest.param(dict(researcher="alice"), dict(researcher="bob"), False, id="other-researcher"),
    pytest.param(dict(project="p1"), dict(researcher="bob"), True, id="project-anyone-in-it"),
    pytest.param(dict(project="p1"), dict(project="p2"), False, id="other-project"),
    pytest.param(dict(researcher="alice", project="p2"), {}, False, id="researcher-in-other-project"),
    pytest.param(dict(researcher="*", project="*"), dict(researcher="zoe", project="q"), True, id="explicit-anyone"),
    pytest.param(dict(researcher="alice", datasets="edsd0,edsd1"), dict(datasets=("edsd0", "edsd1")), True,
                 id="listed-datasets"),
    pytest.param(dict(researcher="alice", datasets="edsd0"), dict(datasets=("edsd0", "edsd1")), False,
                 id="one-dataset-not-granted"),
    pytest.param(dict(researcher="alice", datasets="*"), dict(datasets=("edsd0", "x9")), True, id="all-datasets"),
    pytest.param(dict(researcher="alice", algorithms="ttest_onesample"), {}, False, id="algorithm-not-granted"),
    pytest.param(dict(researcher="alice", data_model="stroke:0.1"), {}, False, id="other-data-model"),
    pytest.param(dict(researcher="alice", data_model="*"), {}, True, id="any-data-model"),
    pytest.param(dict(researcher="alice", expires=TODAY.isoformat()), {}, True, id="last-day"),
    pytest.param(dict(researcher="alice", expires=(TODAY - timedelta(days=1)).isoformat()), {}, False,
                 id="expired"),
])
def test_grants_decide(registry, grant, request_, allowed):
    args = dict(data_model="dementia:0.1", datasets="*", algorithms="*", expires="never") | grant
    made = registry.grant(**args)
    if allowed:
        assert check(registry, **request_) == [made.id]
    else:
        with pytest.raises(AccessDenied) as info:
            check(registry, **request_)
        assert info.value.control == "access"


def test_datasets_may_come_from_several_grants(registry):
    registry.grant(researcher="alice", data_model="dementia:0.1", datasets="edsd0", algorithms="*", expires="never")
    with pytest.raises(AccessDenied, match=r"not approved for dataset\(s\) \['edsd1'\]"):
        check(registry, datasets=("edsd0", "edsd1"))
    registry.grant(researcher="alice", data_model="dementia:0.1", datasets="edsd1", algorithms="*", expires="never")
    assert len(check(registry, datasets=("edsd0", "edsd1"))) == 2


def test_expired_and_revoked_grants_say_so(registry):
    old = registry.grant(researcher="alice", data_model="*", datasets="*", algorithms="*", expires="2026-01-31")
    with pytest.raises(AccessDenied, match=f"grant {old.id} expired on 2026-01-31"):
        check(registry)
    new = registry.grant(researcher="alice", data_model="*", datasets="*", algorithms="*", expires="2027-01-01")
    assert check(registry) == [new.id]
    assert [g.id for g in registry.revoke(new.id)] == [new.id]
    with pytest.raises(AccessDenied, match=f"grant {new.id} revoked"):
        check(registry)
    with pytest.raises(ConfigError, match="no unrevoked grant"):
        registry.revoke(new.id)  # a second revoke of the same grant matches nothing


def test_revoke_everything_of_a_researcher(registry):
    for dataset in ("edsd0", "edsd1"):
        registry.grant(researcher="alice", data_model="*", datasets=dataset, algorithms="*", expires="never")
    keep = registry.grant(researcher="bob", data_model="*", datasets="*", algorithms="*", expires="never")
    assert len(registry.revoke(researcher="alice")) == 2
    with pytest.raises(AccessDenied):
        check(registry)
    assert check(registry, researcher="bob") == [keep.id]


@pytest.mark.parametrize("args, message", [
    pytest.param(dict(), "names a researcher, a project, or both", id="no-subject"),
    pytest.param(dict(researcher="alice", datasets="*,edsd0"), "do not combine", id="wildcard-with-names"),
    pytest.param(dict(researcher="alice", datasets=""), "at least one dataset", id="no-datasets"),
    pytest.param(dict(researcher="alice", expires="next week"), "must be a date", id="bad-expiry"),
    pytest.param(dict(researcher="al ice"), "not a valid identity", id="bad-identity"),
    pytest.param(dict(researcher="alice", data_model="dementia"), "CODE:VERSION", id="bad-data-model"),
])
def test_bad_grants_are_refused(registry, args, message):
    base = dict(data_model="dementia:0.1", datasets="*", algorithms="*", expires="never")
    with pytest.raises(ConfigError, match=message):
        registry.grant(**(base | args))


@pytest.mark.parametrize("researcher, project, message", [
    pytest.param(None, "p1", "names no researcher", id="no-researcher"),
    pytest.param("alice", "", "names no project", id="no-project"),
    pytest.param("alice'; --", "p1", "not a valid identity", id="injection"),
])
def test_requests_without_a_valid_identity_are_refused(registry, researcher, project, message):
    registry.grant(researcher="*", project="*", data_model="*", datasets="*", algorithms="*", expires="never")
    with pytest.raises(AccessDenied, match=message):
        check(registry, researcher=researcher, project=project)


def test_a_request_across_nodes_is_answered_on_the_datasets_the_grants_cover(registry):
    """A request names every node's datasets; a grant for this node's own one is enough, and what is
    covered depends on the grants only (not on what the node holds)."""
    own = registry.grant(researcher="alice", data_model="dementia:0.1", datasets="edsd0", algorithms="*",
                         expires="never")
    args = dict(researcher="alice", project="p1", data_model="dementia:0.1", algorithm="linear_regression",
                today=TODAY)
    assert registry.covered(datasets=["edsd0", "ppmi", "adni"], **args) == (["edsd0"], [own.id])
    with pytest.raises(AccessDenied, match=r"not approved for dataset\(s\) \['ppmi', 'adni'\]"):
        registry.covered(datasets=["ppmi", "adni"], **args)
    with pytest.raises(AccessDenied, match="has no grant for algorithm 'kmeans'"):
        registry.covered(datasets=["edsd0"], **{**args, "algorithm": "kmeans", "researcher": "bob"})
    wide = registry.grant(researcher="alice", data_model="dementia:0.1", datasets="*", algorithms="*",
                          expires="never")
    assert registry.covered(datasets=["edsd0", "ppmi"], **args) == (["edsd0", "ppmi"], [own.id, wide.id])
