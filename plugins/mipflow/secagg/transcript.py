"""Verifiable rounds: each node tags its contribution for every participant, and checks a round's state.

A node answers round ``k > 0`` of an analysis only for the state that the
algorithm's pure global step gives on the contributions of round ``k - 1`` of
the same participants (issue 13.1, ADR 0029).  The protocol, on top of the
participants' long-term X25519 keys (:mod:`mipflow.secagg.crypto`) and the
pinned roster (:mod:`mipflow.secagg.trust`):

* every step call carries a *transcript*: the participant list and, from round 1
  on, the previous round's state and every participant's reply (its aggregates,
  masked or not, and its tag for the node called);
* a node's reply carries one *tag* per participant: an HMAC-SHA256 (128 bits)
  keyed by the pair's static key ``HKDF(X25519(i, j))`` (for the node itself, a key
  derived from its private key) over the round's *message*: analysis, algorithm,
  round, the request, the state, the participants, the hash chain so far, the
  node's name and its aggregates (through their digest, :func:`aggregates_digest`, computed
  once per contribution and round).  Only the two nodes of a pair hold that key, so
  the central site can forward a tag but cannot make one;
* at round ``k`` a node checks the tag addressed to it on every contribution of
  round ``k - 1`` (its own included: that is its memory of the state it accepted
  then), pins every peer, sums the contributions itself (under secure aggregation
  the masks cancel) and recomputes the global step; the state it was sent must
  equal the recomputed one (:func:`same_state`), and the node computes on its
  own recomputation;
* the *chain* ``c_0 = H(analysis, algorithm, request, participants)``,
  ``c_k = H(c_{k-1}, k - 1, state_{k-1}, contributions_{k-1})`` (each contribution as its node
  and the digest of its aggregates) binds every round to
  the ones before it; each node's audit record holds it and the central result
  carries its head, so an auditor can match a result to the nodes' records.

Round 0 takes no state: its parameters come only from the researcher's request.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

from mipflow.algorithms.sealed import SEALED
from mipflow.exceptions import DisclosureError, RequestError

#: The transcript scheme; a node refuses any other.  (v2: a contribution's aggregates enter its tags
#: and the chain through one digest, :func:`aggregates_digest`; a v1 node's tags do not verify here.)
TRANSCRIPT_SCHEME = "mipflow-rounds-v2"
#: Bytes of a tag (HMAC-SHA256 truncated to 128 bits).
TAG_BYTES = 16
#: A recomputed state equals the sent one when every number agrees to this relative tolerance
#: (or :data:`STATE_ATOL` absolute); the node then computes on its own recomputation.
STATE_RTOL = 1e-9
STATE_ATOL = 1e-12
#: The control named in every refusal of this module.
CONTROL = "round_verification"


#: One encoder for :func:`canonical` (``json.dumps`` would build one per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)


def canonical(doc: Any) -> bytes:
    """The canonical JSON bytes of a wire document (sorted keys, compact, strict numbers)."""
    try:
        return _CANONICAL.encode(doc).encode("ascii")
    except (TypeError, ValueError):
        raise RequestError("a round's transcript must be plain JSON without NaN or infinity") from None


_CONTRIBUTION = f"{TRANSCRIPT_SCHEME}|contribution|".encode()


def _digest(*parts: Any) -> str:
    return hashlib.sha256(canonical(list(parts))).hexdigest()


def genesis(*, analysis_id: str, algorithm: str, request: Mapping[str, Any], participants: Mapping[str, str]) -> str:
    """The chain before round 0: the analysis, its request and its participants (name -> key hex)."""
    return _digest(TRANSCRIPT_SCHEME, "genesis", analysis_id, algorithm, request, dict(sorted(participants.items())))


#: The aggregates' key of sealed sums (:data:`mipflow.algorithms.sealed.SEALED`, ADR 0046), there recipient ->
#: ciphertext.  Each ciphertext is bound by its SHA-256 (:func:`bound_form`), so the central site
#: forwards a node only the ciphertexts addressed to it and the others' digests (:func:`addressed_to`).
SEALED_KEY = SEALED
#: How a ciphertext's digest is written in its place.
SEALED_DIGEST = "sha256:"


def _box_digest(box: Any) -> Any:
    if isinstance(box, str) and not box.startswith(SEALED_DIGEST):
        return SEALED_DIGEST + hashlib.sha256(box.encode("utf-8")).hexdigest()
    return box


def bound_form(aggregates: Any) -> Any:
    """The aggregates as tags and chain bind them: each sealed ciphertext by its digest (a digest
    already in a ciphertext's place stays as it is), everything else as it is."""
    if isinstance(aggregates, Mapping) and isinstance(aggregates.get(SEALED_KEY), Mapping):
        return {**aggregates, SEALED_KEY: {name: _box_digest(box) for name, box in aggregates[SEALED_KEY].items()}}
    return aggregates


def aggregates_digest(aggregates: Any) -> bytes:
    """SHA-256 of a contribution's aggregates in canonical form (sealed ciphertexts by their digest,
    :func:`bound_form`): computed once per contribution and round, bound into its tags
    (:func:`contribution_message`) and the chain (:func:`advance`)."""
    return hashlib.sha256(canonical([TRANSCRIPT_SCHEME, "aggregates", bound_form(aggregates)])).digest()


def advance(chain: str, round_no: int, state: Any, contributions: Sequence[Mapping[str, Any]],
            digests: Sequence[bytes] | None = None) -> str:
    """The chain after round ``round_no``: the chain before it, its state and every contribution
    (its node and the :func:`aggregates_digest` of its aggregates); ``digests``, when given, are
    those digests already computed, in the contributions' order.

    The tags are not part of it: they are functions of what the chain binds (and of keys), and each
    node receives only the tags addressed to it (:func:`addressed_to`)."""
    if digests is None:
        digests = [aggregates_digest(c.get("aggregates")) for c in contributions]
    return _digest(TRANSCRIPT_SCHEME, "round", chain, int(round_no), state,
                   [[c.get("node"), d.hex()] for c, d in zip(contributions, digests, strict=True)])


def addressed_to(previous: Mapping[str, Any] | None, node: str,
                 bound: Sequence[Any] | None = None) -> Mapping[str, Any] | None:
    """The transcript's ``previous`` as the central site sends it to ``node``: every contribution
    with only its tag for ``node`` (the one that node checks), so a request carries ``n`` tags, not
    ``n^2``; and of its sealed sums only the ciphertext for ``node``, the others by their digests
    (:func:`bound_form`: the tags verify the same), so it carries ``n`` ciphertexts, not ``n^2``.
    ``bound``, when given, is each contribution's :func:`bound_form` (in order), its digests computed
    once per round for every node called rather than once per node."""
    if previous is None:
        return None
    contributions = []
    for i, c in enumerate(previous["contributions"]):
        tags = c.get("tags")
        mine = {node: tags[node]} if isinstance(tags, Mapping) and node in tags else {}
        aggregates = c.get("aggregates")
        if isinstance(aggregates, Mapping) and isinstance(aggregates.get(SEALED_KEY), Mapping):
            boxes = aggregates[SEALED_KEY]
            digests = bound[i][SEALED_KEY] if bound is not None else {name: _box_digest(box)
                                                                      for name, box in boxes.items()}
            aggregates = {**aggregates, SEALED_KEY: {name: box if name == node else digests[name]
                                                      for name, box in boxes.items()}}
        contributions.append({"node": c.get("node"), "aggregates": aggregates, "tags": mine})
    return {**previous, "contributions": contributions}


def round_digest(*, chain: str, analysis_id: str, algorithm: str, round_no: int, request: Mapping[str, Any],
                 state: Any, participants: Mapping[str, str]) -> bytes:
    """What every contribution of one round shares: the chain, analysis, algorithm, round, request,
    state and participants (hashed once per round, not once per contribution)."""
    return hashlib.sha256(canonical([TRANSCRIPT_SCHEME, "round", chain, analysis_id, algorithm, int(round_no),
                                     request, state, dict(sorted(participants.items()))])).digest()


def contribution_message(shared: bytes, node: str, digest: bytes) -> bytes:
    """What a node's tags authenticate: the round (:func:`round_digest`), its aggregates (their
    :func:`aggregates_digest`) and its name (both digests are 32 bytes and the name comes last, so
    the concatenation is unambiguous)."""
    return hashlib.sha256(_CONTRIBUTION + shared + digest + node.encode("utf-8")).digest()


def message(*, chain: str, analysis_id: str, algorithm: str, round_no: int, request: Mapping[str, Any],
            state: Any, participants: Mapping[str, str], node: str, aggregates: Any) -> bytes:
    """What a node's tags authenticate for one round: everything the round depends on, and its reply."""
    shared = round_digest(chain=chain, analysis_id=analysis_id, algorithm=algorithm, round_no=round_no,
                          request=request, state=state, participants=participants)
    return contribution_message(shared, node, aggregates_digest(aggregates))


# --------------------------------------------------------------------------- pairwise tag keys

#: Pair keys by (own public key, peer public key, purpose): one X25519 and HKDF per pair, purpose and
#: process, not per round; at most :data:`_KEYS_MAX`, the oldest derived dropped first.
_KEYS: "OrderedDict[tuple[bytes, bytes, str], bytes]" = OrderedDict()
_KEYS_LOCK = threading.Lock()
_KEYS_MAX = 4096


def pair_key(own: Any, peer_public: bytes, purpose: str) -> bytes:
    """The 32-byte static key node ``own`` (a :class:`~mipflow.secagg.crypto.KeyPair`) shares with
    the holder of ``peer_public`` for ``purpose`` (``"tag"``: the round tags; ``"seal"``: sealed
    sums, :mod:`mipflow.secagg.sealing`): ``HKDF(X25519(own, peer), salt=scheme,
    info="pair-<purpose>|" + both public keys sorted)``; with its own public key, a key only it holds
    (from its private key, info ``"self-<purpose>|" + its public key``)."""
    mine = own.public_bytes
    cache_key = (mine, peer_public, purpose)
    known = _KEYS.get(cache_key)  # (one dict read needs no lock)
    if known is not None:
        return known
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if peer_public == mine:
        secret = own.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption())
        info = f"self-{purpose}|".encode() + mine
    else:
        secret = own.exchange(peer_public)
        info = f"pair-{purpose}|".encode() + b"".join(sorted((mine, peer_public)))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=TRANSCRIPT_SCHEME.encode(), info=info).derive(secret)
    with _KEYS_LOCK:
        _KEYS[cache_key] = key
        while len(_KEYS) > _KEYS_MAX:
            _KEYS.popitem(last=False)
    return key


def tag_key(own: Any, peer_public: bytes) -> bytes:
    """The 32-byte static key node ``own`` shares with the holder of ``peer_public`` for tags; with
    its own public key, a key only it holds (:func:`pair_key`)."""
    return pair_key(own, peer_public, "tag")


def tag(key: bytes, msg: bytes) -> str:
    """HMAC-SHA256 of ``msg`` under ``key``, truncated to :data:`TAG_BYTES`, hex (one-shot C HMAC)."""
    return hmac.digest(key, msg, "sha256")[:TAG_BYTES].hex()


def tags_for(own: Any, participants: Mapping[str, bytes], msg: bytes) -> dict[str, str]:
    """Node ``own``'s tags of ``msg``, one per participant (name -> tag hex), itself included."""
    return {name: tag(tag_key(own, key), msg) for name, key in sorted(participants.items())}


# --------------------------------------------------------------------------- the transcript of a step


@dataclass(frozen=True)
class Transcript:
    """The transcript a step call carries, parsed.

    ``participants`` maps each node's own name to its public key; ``previous`` is
    ``None`` at round 0, else the previous round's ``chain`` (before it), ``state``
    and ``contributions`` (``[{node, aggregates, tags}]``, in the central's order).
    """

    participants: dict[str, bytes]
    previous: Mapping[str, Any] | None

    @functools.cached_property
    def participants_hex(self) -> dict[str, str]:
        """Each participant's key in hex (computed once per step; read, not changed)."""
        return {name: key.hex() for name, key in self.participants.items()}


def parse(doc: Any, *, max_participants: int) -> Transcript:
    """A step's ``transcript`` field, checked for its structure.

    Raises
    ------
    RequestError
        If it is malformed (not the scheme, participants not 1 to ``max_participants``
        distinct names and keys, ``previous`` not a chain, a state and a list of contributions).
    """
    from mipflow.secagg.node_side import participant_keys

    if not isinstance(doc, Mapping) or doc.get("scheme") != TRANSCRIPT_SCHEME:
        raise RequestError(f"transcript must name the scheme {TRANSCRIPT_SCHEME!r}")
    participants = participant_keys(doc.get("participants"), minimum=1, maximum=max_participants,
                                    count_error=f"a transcript lists 1 to {max_participants} participants",
                                    noun="transcript", subject="the transcript")
    previous = doc.get("previous")
    if previous is not None:
        if (not isinstance(previous, Mapping) or not isinstance(previous.get("chain"), str)
                or not isinstance(previous.get("contributions"), list)
                or not (previous.get("state") is None or isinstance(previous.get("state"), Mapping))):
            raise RequestError("transcript 'previous' needs the chain, the state and the contributions "
                               "of the previous round")
    return Transcript(participants=participants, previous=previous)


def refuse(reason: str) -> DisclosureError:
    return DisclosureError(f"round verification: {reason}", control=CONTROL)


def verify_previous(transcript: Transcript, *, own: Any, own_name: str, analysis_id: str, algorithm: str,
                    round_no: int, request: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], str]:
    """Check the tags addressed to ``own_name`` on every contribution of round ``round_no - 1``.

    Returns the contributions (in the transcript's order) and the chain after that round.

    Raises
    ------
    DisclosureError
        (control ``round_verification``) if a participant's contribution is missing, doubled,
        or its tag for this node does not verify (a contribution the central site changed
        or made up, or one of another analysis, round, request, state or participant set).
    """
    previous = transcript.previous
    if previous is None:
        raise refuse(f"round {round_no} needs the tagged contributions of round {round_no - 1} "
                     "(the transcript's 'previous')")
    contributions = previous["contributions"]
    names = [c.get("node") if isinstance(c, Mapping) else None for c in contributions]
    if sorted(n for n in names if isinstance(n, str)) != sorted(transcript.participants) or len(names) != len(
            transcript.participants):
        raise refuse(f"the contributions of round {round_no - 1} must be exactly one per participant")
    shared = round_digest(chain=previous["chain"], analysis_id=analysis_id, algorithm=algorithm,
                          round_no=round_no - 1, request=request, state=previous.get("state"),
                          participants=transcript.participants_hex)
    digests = []
    for contribution in contributions:
        name = contribution["node"]
        digests.append(aggregates_digest(contribution.get("aggregates")))
        msg = contribution_message(shared, name, digests[-1])
        tags = contribution.get("tags")
        given = tags.get(own_name) if isinstance(tags, Mapping) else None
        expected = tag(tag_key(own, transcript.participants[name]), msg)
        if not isinstance(given, str) or not hmac.compare_digest(given, expected):
            raise refuse(f"the contribution of {name!r} to round {round_no - 1} does not carry a valid tag "
                         "for this node: it was changed, made up or taken from another round or analysis")
    return contributions, advance(previous["chain"], round_no - 1, previous.get("state"), contributions, digests)


def same_state(sent: Any, expected: Any, *, rtol: float = STATE_RTOL, atol: float = STATE_ATOL) -> bool:
    """Whether ``sent`` is ``expected`` (same structure, texts and integers equal, numbers within
    ``rtol`` relative or ``atol`` absolute)."""
    if isinstance(expected, bool) or isinstance(sent, bool) or expected is None or sent is None:
        return sent is expected or (type(sent) is type(expected) and sent == expected)
    if isinstance(expected, (int, float)) and isinstance(sent, (int, float)):
        if isinstance(expected, int) and isinstance(sent, int):
            return sent == expected
        a, b = float(sent), float(expected)
        if a != a or b != b:  # NaN
            return a != a and b != b
        return abs(a - b) <= max(atol, rtol * max(abs(a), abs(b)))
    if isinstance(expected, str) or isinstance(sent, str):
        return sent == expected
    if isinstance(expected, Mapping):
        return (isinstance(sent, Mapping) and set(sent) == set(expected)
                and all(same_state(sent[k], expected[k], rtol=rtol, atol=atol) for k in expected))
    if isinstance(expected, (list, tuple)):
        return (isinstance(sent, (list, tuple)) and len(sent) == len(expected)
                and all(same_state(s, e, rtol=rtol, atol=atol) for s, e in zip(sent, expected)))
    return False


def recompute_state(algorithm: Any, round_no: int, contributions: Sequence[Mapping[str, Any]], request: Any,
                    model: Any, previous_state: Any, *, masked: bool) -> dict:
    """The state of round ``round_no`` as the global step gives it on round ``round_no - 1``'s
    contributions (summed here under secure aggregation: the masks cancel), as JSON.

    Raises
    ------
    DisclosureError
        (control ``round_verification``) if the global step finishes there (there is no round
        ``round_no``) or cannot combine the contributions.
    """
    from mipflow.exceptions import MipflowError

    aggregates = [c.get("aggregates") for c in contributions]
    try:
        if masked:
            from mipflow.secagg.central_side import unmask_sum

            aggregates = [unmask_sum(aggregates)]
        # (a copy: a global step may update the state it is given in place)
        step = algorithm.global_step(round_no - 1, aggregates, request, model, copy.deepcopy(previous_state))
    except MipflowError:
        raise refuse(f"the contributions of round {round_no - 1} do not combine into a next round") from None
    except (KeyError, IndexError, TypeError, ValueError, ArithmeticError) as exc:
        raise refuse(f"the contributions of round {round_no - 1} do not combine into a next round "
                     f"({type(exc).__name__})") from None
    if step.done or step.state is None:
        raise refuse(f"the analysis ends at round {round_no - 1}: there is no round {round_no}")
    return json.loads(json.dumps(step.state, allow_nan=False))


# --------------------------------------------------------------------------- a node's side

def verify_step(doc: Any, *, root: Any, own_name: str, analysis_id: str | None, algorithm: Any,
                algorithm_name: str, round_no: int, request: Any, model: Any, state: Any,
                secure_aggregation: Any = None) -> tuple[Transcript, str, Any]:
    """A node's check of one step call's transcript (ADR 0029).

    Returns the parsed transcript, the chain before this round (what this round's tags bind)
    and the state the local step computes on (``None`` at round 0, else the node's own
    recomputation, which the sent ``state`` must equal).

    Raises
    ------
    RequestError
        If the transcript is malformed, the call names no analysis, or the secure-aggregation
        participants differ from the transcript's.
    DisclosureError
        (control ``round_verification``) if this node is not a participant under its own key,
        round 0 carries a state or a previous round, a contribution of the previous round is
        missing or its tag does not verify, or the state is not the global step's;
        (control ``secure_aggregation``) if a peer is not pinned at this node (from round 1 on).
    """
    from mipflow.secagg.crypto import cached_keypair
    from mipflow.secagg.node_side import MAX_PARTICIPANTS, parse_participants
    from mipflow.secagg.policy import masked_round
    from mipflow.secagg.trust import TrustStore

    transcript = parse(doc, max_participants=MAX_PARTICIPANTS)
    if not analysis_id:
        raise RequestError("a round with a transcript needs the analysis_id (its tags are bound to it)")
    own = cached_keypair(root)
    if transcript.participants.get(own_name) != own.public_bytes:
        raise refuse(f"node {own_name!r} is not among the transcript's participants under its own public key")
    if secure_aggregation is not None and parse_participants(secure_aggregation) != transcript.participants:
        raise RequestError("the secure-aggregation participants must be the transcript's participants")
    document = request.to_dict()
    participants_hex = transcript.participants_hex
    if round_no == 0:
        if state is not None or transcript.previous is not None:
            raise refuse("round 0 takes no state and no previous round: its parameters come only from the "
                         "researcher's request")
        chain = genesis(analysis_id=analysis_id, algorithm=algorithm_name, request=document,
                        participants=participants_hex)
        return transcript, chain, None
    # an unpinned or substituted peer could contribute made-up aggregates that steer the state
    TrustStore(root).check({k: v for k, v in transcript.participants.items() if k != own_name})
    contributions, chain = verify_previous(transcript, own=own, own_name=own_name, analysis_id=analysis_id,
                                           algorithm=algorithm_name, round_no=round_no, request=document)
    previous_state = transcript.previous.get("state") if transcript.previous else None
    masked = secure_aggregation is not None and masked_round(algorithm, round_no - 1, previous_state)
    expected = recompute_state(algorithm, round_no, contributions, request, model, previous_state, masked=masked)
    if not same_state(state, expected):
        raise refuse(f"the state of round {round_no} is not the one the algorithm's global step gives on the "
                     f"contributions of round {round_no - 1}")
    return transcript, chain, expected


def wire(doc: Any) -> Any:
    """``doc`` as it travels (numpy values as Python numbers and lists; JSON round trip).  Sealed
    ciphertexts (texts already) are not sent through the round trip, which gives them back as they
    are: they are most of a sums round's bytes."""
    def plain(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    boxes = doc.get(SEALED_KEY) if isinstance(doc, Mapping) else None
    plain_boxes = (isinstance(boxes, Mapping) and all(isinstance(k, str) for k in doc)
                   and all(isinstance(k, str) and isinstance(v, str) for k, v in boxes.items()))
    try:
        if plain_boxes:
            out = json.loads(json.dumps({k: None if k == SEALED_KEY else v for k, v in doc.items()},
                                        allow_nan=False, default=plain))
            out[SEALED_KEY] = dict(boxes)
            return out
        return json.loads(json.dumps(doc, allow_nan=False, default=plain))
    except ValueError:
        raise RequestError("a released aggregate is NaN or infinite") from None


def tag_reply(transcript: Transcript, *, root: Any, own_name: str, chain: str | None, analysis_id: str | None,
              algorithm: str, round_no: int, request: Any, state: Any, aggregates: Any) -> tuple[Any, dict[str, str]]:
    """A node's reply in wire form and its tag for every participant (ADR 0029)."""
    from mipflow.secagg.crypto import cached_keypair

    released = wire(aggregates)
    msg = message(chain=str(chain), analysis_id=str(analysis_id), algorithm=algorithm, round_no=round_no,
                  request=request.to_dict(), state=state, participants=transcript.participants_hex,
                  node=own_name, aggregates=released)
    return released, tags_for(cached_keypair(root), transcript.participants, msg)
