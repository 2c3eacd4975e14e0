"""The pieces of verifiable rounds: tags, the chain, the state comparison, a node's checks."""
from __future__ import annotations

import copy

import pytest

from mipflow.exceptions import DisclosureError, RequestError
from mipflow.secagg.crypto import KeyPair
from mipflow.secagg.transcript import (
    TRANSCRIPT_SCHEME, Transcript, advance, genesis, message, parse, recompute_state, same_state, tag_key,
    tags_for, verify_previous,
)
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

KEYS = {name: KeyPair.generate() for name in ("a", "b", "c")}
PUBLIC = {name: pair.public_bytes for name, pair in KEYS.items()}
HEX = {name: key.hex() for name, key in PUBLIC.items()}
DOC = request(x=("x1",), y=("y",)).to_dict()


def _msg(node: str, aggregates, *, chain="c0", round_no=0, state=None, analysis_id="an-1", doc=DOC):
    return message(chain=chain, analysis_id=analysis_id, algorithm="linear_regression", round_no=round_no,
                   request=doc, state=state, participants=HEX, node=node, aggregates=aggregates)


def test_pair_keys_agree_between_the_two_nodes_and_differ_between_pairs() -> None:
    assert tag_key(KEYS["a"], PUBLIC["b"]) == tag_key(KEYS["b"], PUBLIC["a"])
    assert tag_key(KEYS["a"], PUBLIC["b"]) != tag_key(KEYS["a"], PUBLIC["c"])
    # a node's key for itself is its own: no other node derives it
    own = tag_key(KEYS["a"], PUBLIC["a"])
    assert own not in {tag_key(KEYS[x], PUBLIC[y]) for x in KEYS for y in KEYS if (x, y) != ("a", "a")}


def test_a_tag_binds_every_field_of_the_message() -> None:
    base = tags_for(KEYS["a"], PUBLIC, _msg("a", {"n": 3}))
    for changed in (_msg("a", {"n": 4}), _msg("b", {"n": 3}), _msg("a", {"n": 3}, chain="c1"),
                    _msg("a", {"n": 3}, round_no=1), _msg("a", {"n": 3}, state={"beta": [0.0]}),
                    _msg("a", {"n": 3}, analysis_id="an-2"), _msg("a", {"n": 3}, doc={**DOC, "parameters": {"k": 1}})):
        other = tags_for(KEYS["a"], PUBLIC, changed)
        assert all(other[n] != base[n] for n in PUBLIC)


def test_the_chain_moves_with_every_round_and_every_contribution() -> None:
    c0 = genesis(analysis_id="an-1", algorithm="kmeans", request=DOC, participants=HEX)
    assert c0 != genesis(analysis_id="an-1", algorithm="kmeans", request=DOC, participants={"a": HEX["a"]})
    contributions = [{"node": "a", "aggregates": {"n": 1}, "tags": {}}]
    c1 = advance(c0, 0, None, contributions)
    assert c1 != c0 and c1 != advance(c0, 0, None, [{"node": "a", "aggregates": {"n": 2}, "tags": {}}])
    assert c1 != advance(c0, 1, None, contributions) and c1 != advance(c0, 0, {"x": 1}, contributions)


def _transcript(contributions, chain="c0", state=None) -> Transcript:
    return Transcript(participants=dict(PUBLIC), previous={"chain": chain, "state": state,
                                                           "contributions": contributions})


def _contributions(chain="c0"):
    out = []
    for name, pair in KEYS.items():
        aggregates = {"n": len(name)}
        out.append({"node": name, "aggregates": aggregates, "tags": tags_for(pair, PUBLIC, _msg(name, aggregates,
                                                                                                  chain=chain))})
    return out


def test_every_node_verifies_the_true_contributions_and_gets_the_same_chain() -> None:
    contributions = _contributions()
    chains = {verify_previous(_transcript(contributions), own=KEYS[n], own_name=n, analysis_id="an-1",
                              algorithm="linear_regression", round_no=1, request=DOC)[1] for n in KEYS}
    assert chains == {advance("c0", 0, None, contributions)}


@pytest.mark.parametrize("tamper, says", [
    (lambda cs: cs[1]["aggregates"].update(n=99), "does not carry a valid tag"),
    (lambda cs: cs.pop(), "exactly one per participant"),
    (lambda cs: cs.append(copy.deepcopy(cs[0])), "exactly one per participant"),
    (lambda cs: cs[0]["tags"].pop("c"), "does not carry a valid tag"),
    (lambda cs: cs[2].update(node="a"), "exactly one per participant"),
])
def test_a_changed_missing_or_doubled_contribution_is_refused(tamper, says) -> None:
    contributions = _contributions()
    tamper(contributions)
    with pytest.raises(DisclosureError) as err:
        verify_previous(_transcript(contributions), own=KEYS["c"], own_name="c", analysis_id="an-1",
                        algorithm="linear_regression", round_no=1, request=DOC)
    assert err.value.control == "round_verification" and says in str(err.value)


def test_a_chain_other_than_the_one_tagged_is_refused() -> None:
    with pytest.raises(DisclosureError, match="valid tag"):
        verify_previous(_transcript(_contributions(), chain="forged"), own=KEYS["a"], own_name="a",
                        analysis_id="an-1", algorithm="linear_regression", round_no=1, request=DOC)


def test_same_state_compares_structure_exactly_and_numbers_to_the_tolerance() -> None:
    state = {"columns": ["a", "b"], "coefficients": [1.0, -2.5e-3], "iteration": 3, "final": False, "x": None}
    assert same_state(copy.deepcopy(state), state)
    assert same_state({**state, "coefficients": [1.0 + 1e-13, -2.5e-3]}, state)
    assert same_state({**state, "coefficients": [1.0, 1e-14 - 2.5e-3]}, state)
    for other in ({**state, "coefficients": [1.0 + 1e-6, -2.5e-3]}, {**state, "columns": ["a", "c"]},
                  {**state, "iteration": 4}, {**state, "final": True}, {**state, "final": 0},
                  {**state, "extra": 1}, {k: v for k, v in state.items() if k != "x"},
                  {**state, "coefficients": [1.0]}, {**state, "x": 0.0}):
        assert not same_state(other, state), other


def test_the_recomputed_state_is_the_global_steps_and_a_finished_analysis_has_no_next_round() -> None:
    from mipflow.algorithms import get_algorithm
    from mipflow.algorithms.local import prepare_local_data

    algorithm = get_algorithm("logistic_regression")
    case = request(x=("x1",), y=("outcome",), positive_class="yes")
    data = make_data(5, 90)
    parts = [prepare_local_data(algorithm, data.iloc[i::3], case) for i in range(3)]
    contributions = [{"node": str(i), "aggregates": algorithm.local_step(0, part, case, MODEL, None)}
                     for i, part in enumerate(parts)]
    state = recompute_state(algorithm, 1, contributions, case, MODEL, None, masked=False)
    assert state == algorithm.global_step(0, [c["aggregates"] for c in contributions], case, MODEL, None).state
    linear = get_algorithm("linear_regression")
    plain = request(x=("x1",), y=("y",))
    done = [{"node": str(i), "aggregates": linear.local_step(0, prepare_local_data(linear, data.iloc[i::3], plain),
                                                             plain, MODEL, None)} for i in range(3)]
    with pytest.raises(DisclosureError, match="there is no round 1"):
        recompute_state(linear, 1, done, plain, MODEL, None, masked=False)


@pytest.mark.parametrize("doc", [
    None, {"scheme": "other", "participants": []}, {"scheme": TRANSCRIPT_SCHEME, "participants": []},
    {"scheme": TRANSCRIPT_SCHEME, "participants": [{"node": "a", "public_key": "zz"}]},
    {"scheme": TRANSCRIPT_SCHEME, "participants": [{"node": "a", "public_key": HEX["a"]},
                                                   {"node": "a", "public_key": HEX["b"]}]},
    {"scheme": TRANSCRIPT_SCHEME, "participants": [{"node": "a", "public_key": HEX["a"]},
                                                   {"node": "b", "public_key": HEX["a"]}]},
    {"scheme": TRANSCRIPT_SCHEME, "participants": [{"node": "a", "public_key": HEX["a"]}], "previous": {"chain": 1}},
])
def test_a_malformed_transcript_is_a_bad_request(doc) -> None:
    with pytest.raises(RequestError):
        parse(doc, max_participants=64)
