"""Secure aggregation: nodes mask their aggregates so the central site sees only the sum.

Each node holds a long-term X25519 key pair in its home (``secagg.key``, mode
0600).  For one step of an analysis, the central site sends every participant
the list of participants (node name and public key).  Each pair of nodes
``(i, j)`` derives a shared seed::

    shared   = X25519(private_i, public_j)
    context  = SHA-256(scheme, analysis_id, algorithm, round, request, state, participants)
    seed_ij  = HKDF-SHA256(shared, salt=scheme, info=context || sorted(public_i, public_j))

and expands it with ChaCha20 into a vector of integers mod ``2**RING_BITS``.
Node ``i`` releases ``encode(aggregate_i) + sum_j sign_ij * PRG(seed_ij)``
(``sign_ij = +1`` when ``public_i < public_j``, else ``-1``), so the masks
cancel in the sum over all participants and the central site learns the sum
of the aggregates and nothing else.  A node's masked vector on its own is
uniform in the ring.

Only additive quantities can be summed.  An algorithm takes part when its
aggregates are built from counts, sums and moments (:data:`SUPPORTED`): a
node rewrites every moments object ``{n, mean, m2}`` as its raw sums
``(n, n * mean, m2 + n * mean mean^T)`` in exact rational arithmetic, every
number is encoded in fixed point with :data:`FRACTION_BITS` fractional bits,
and the central site turns the summed raw sums back into pooled centred
moments exactly (Python integers and fractions, no cancellation), then runs
the algorithm's own global step on that one pooled aggregate.

Two optional hooks on an algorithm class adapt it (no base-class change):

* ``secure_aggregation_refusal(request) -> str | None``: why this request
  cannot be summed (e.g. k-means with Exareme2's initialisation releases
  per-node minima and maxima), checked centrally before any node is called
  and again by the node;
* ``secure_aggregates(aggregates, request, model) -> dict``: run by the node
  after its disclosure controls, before masking: rewrites the released
  aggregates into the form that is summed (descriptive statistics: the
  node's records pooled over its datasets, see :data:`EXPLICIT_ONLY`).

Precision and range (``RING_BITS = 192``, ``FRACTION_BITS = 64``): each
number a node releases is rounded to a multiple of ``2**-64`` (5.4e-20
absolute); a node refuses numbers of magnitude ``2**MAX_MAGNITUDE_BITS``
(``2**110``, about 1.3e33) or more, so the sum of up to ``2**16`` nodes stays
below ``2**190`` in the ring and decodes without wrapping.

Dropout: the masks of a participant set cancel only when every participant
answered.  A node that drops out after masking makes the round useless; the
central site re-runs the analysis without it.  The participant set is part
of the seed context, so the re-run uses fresh, independent masks and no seed
is ever revealed (see ``docs/adr/0014-secure-aggregation.md``).

Key authenticity: a node checks the peers' public keys against its trust
store (``secagg_peers.json``): keys pinned by its admin (policy ``pinned``:
unknown or different keys are refused, which stops a malicious central site
from substituting keys or inventing peers), or, by default, trust on first
use (``tofu``: a peer's key may not change once seen).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mipflow.exceptions import DisclosureError, FederationError, RequestError

#: Name and version of the masking scheme (bound into every seed).
SCHEME = "mipflow-secagg-v1:x25519-hkdf-sha256-chacha20:z2^192:f64"
#: Masked values live in the ring of integers mod 2**RING_BITS.
RING_BITS = 192
RING = 1 << RING_BITS
#: Fixed-point scale: a released number ``v`` is encoded as ``round(v * 2**FRACTION_BITS)``.
FRACTION_BITS = 64
SCALE = 1 << FRACTION_BITS
#: A node refuses to encode a number of magnitude >= 2**MAX_MAGNITUDE_BITS.
MAX_MAGNITUDE_BITS = 110
#: Sums of up to 2**MAX_NODE_BITS nodes decode without wrapping.
MAX_NODE_BITS = 16
#: Largest participant list a node accepts.
MAX_PARTICIPANTS = 64
#: Bytes of keystream per ring element.
ELEMENT_BYTES = RING_BITS // 8

#: Algorithms whose aggregates are additive (counts, sums, moments), so they can be masked.
SUPPORTED = frozenset({"anova_oneway", "descriptive_stats", "kmeans", "linear_regression",
                       "logistic_regression", "pearson_correlation", "ttest_independent",
                       "ttest_onesample", "ttest_paired"})
#: Supported algorithms whose secure result is narrower than the plain one, so automatic
#: mode leaves them off: descriptive statistics under secure aggregation give only the
#: rows pooled over all datasets (a dataset's own rows are one node's aggregates).
EXPLICIT_ONLY = frozenset({"descriptive_stats"})

KEY_FILE = "secagg.key"
PEERS_FILE = "secagg_peers.json"
POLICIES = ("tofu", "pinned")

_MOMENT_KEYS = frozenset({"n", "mean", "m2"})
#: Keys whose values are one patient's value or an order statistic: never summed (a sum of
#: per-node minima is not the pooled minimum), so an aggregate holding one is refused.
NOT_SUMS = frozenset({"min", "max", "minimum", "maximum", "q1", "q2", "q3", "median", "quantiles"})
#: Marks a moments object in a layout (no aggregate key starts with "__").
MOMENTS_MARK = "__moments__"


# --------------------------------------------------------------------------- fixed point


def encode(value: Fraction | int | float) -> int:
    """``value`` in fixed point, as an element of the ring.

    Rounds ``value * 2**FRACTION_BITS`` to the nearest integer (ties away
    from zero are not needed: any rounding is within half a unit).

    Raises
    ------
    RequestError
        If the value is not finite or its magnitude is ``2**MAX_MAGNITUDE_BITS`` or more.
    """
    if isinstance(value, bool):
        raise RequestError("secure aggregation cannot encode a boolean")
    try:
        exact = Fraction(value)
    except (ValueError, OverflowError):
        raise RequestError(f"secure aggregation cannot encode {value!r} (not a finite number)") from None
    if abs(exact) >= (1 << MAX_MAGNITUDE_BITS):
        raise RequestError(f"a released number has magnitude >= 2**{MAX_MAGNITUDE_BITS}: too large for the "
                           "secure-aggregation ring")
    scaled = exact * SCALE
    return round(scaled) % RING


def decode(element: int) -> Fraction:
    """The signed fixed-point number an element of the ring stands for (exact)."""
    element %= RING
    if element >= RING // 2:
        element -= RING
    return Fraction(element, SCALE)


# --------------------------------------------------------------------------- additive form


def _is_moments(doc: Any) -> bool:
    return isinstance(doc, Mapping) and set(doc) == _MOMENT_KEYS


def additive_form(aggregates: Any) -> tuple[Any, list[Fraction]]:
    """Rewrite aggregates as a layout and a flat vector of additive quantities.

    Parameters
    ----------
    aggregates : JSON-like
        What a node's local step released (after the disclosure controls).

    Returns
    -------
    layout : JSON-like
        The structure without values: ``"i"`` (integer), ``"f"`` (number),
        ``{"__moments__": [k, is_matrix]}``, lists and objects of those.  It
        depends only on the request and state, so every node sends the same.
    vector : list of Fraction
        The quantities, in layout order; a moments object contributes
        ``n``, ``n * mean`` (k) and ``m2 + n * mean mean^T`` (k x k, or k).

    Raises
    ------
    RequestError
        If a value cannot be summed (a suppressed cell, a string, NaN, an
        extreme or quantile under one of the :data:`NOT_SUMS` keys).
    """
    vector: list[Fraction] = []

    def walk(doc: Any, where: str) -> Any:
        if _is_moments(doc):
            n = int(doc["n"])
            mean = [Fraction(float(v)) for v in doc["mean"]]
            m2 = doc["m2"]
            matrix = bool(m2) and isinstance(m2[0], list)
            vector.append(Fraction(n))
            vector.extend(n * m for m in mean)
            if matrix:
                for i, row in enumerate(m2):
                    vector.extend(Fraction(float(v)) + n * mean[i] * mean[j] for j, v in enumerate(row))
            else:
                vector.extend(Fraction(float(v)) + n * mean[i] * mean[i] for i, v in enumerate(m2))
            return {MOMENTS_MARK: [len(mean), matrix]}
        if isinstance(doc, Mapping):
            if MOMENTS_MARK in doc:
                raise RequestError(f"secure aggregation cannot sum {where}: it holds the key {MOMENTS_MARK!r}")
            extremes = sorted(str(k) for k in doc if str(k).lower() in NOT_SUMS)
            if extremes:
                raise RequestError(f"secure aggregation cannot sum {where}.{extremes[0]}: extremes and "
                                   "quantiles are not sums")
            return {str(k): walk(v, f"{where}.{k}") for k, v in sorted(doc.items())}
        if isinstance(doc, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(doc)]
        if isinstance(doc, bool) or doc is None or isinstance(doc, str):
            raise RequestError(f"secure aggregation cannot sum {where} (a suppressed cell or a non-number)")
        if isinstance(doc, int):
            vector.append(Fraction(doc))
            return "i"
        if isinstance(doc, float):
            try:
                vector.append(Fraction(doc))
            except (ValueError, OverflowError):
                raise RequestError(f"secure aggregation cannot sum {where}: not a finite number") from None
            return "f"
        raise RequestError(f"secure aggregation cannot sum {where} of type {type(doc).__name__}")

    layout = walk(aggregates, "aggregates")
    return layout, vector


def from_additive(layout: Any, values: Sequence[Fraction]) -> Any:
    """Inverse of :func:`additive_form` applied to a sum: the pooled aggregates.

    Moments come back centred (``mean = S / n``, ``m2 = SS - S S^T / n``),
    computed exactly and rounded once to float; integers must be integral.
    """
    position = 0

    def take(count: int) -> list[Fraction]:
        nonlocal position
        if position + count > len(values):
            raise FederationError("secure aggregation: the summed vector is shorter than its layout")
        out = list(values[position:position + count])
        position += count
        return out

    def build(node: Any) -> Any:
        if isinstance(node, Mapping) and set(node) == {MOMENTS_MARK}:
            k, matrix = int(node[MOMENTS_MARK][0]), bool(node[MOMENTS_MARK][1])
            (n,) = take(1)
            sums = take(k)
            if n.denominator != 1 or n < 0:
                raise FederationError("secure aggregation: a summed row count is not a count")
            n_rows = int(n)
            mean = [s / n_rows for s in sums] if n_rows else [Fraction(0)] * k
            if matrix:
                raw = take(k * k)
                m2 = [[float(raw[i * k + j] - (sums[i] * sums[j] / n_rows if n_rows else 0))
                       for j in range(k)] for i in range(k)]
            else:
                raw = take(k)
                m2 = [float(raw[i] - (sums[i] * sums[i] / n_rows if n_rows else 0)) for i in range(k)]
            return {"n": n_rows, "mean": [float(m) for m in mean], "m2": m2}
        if isinstance(node, Mapping):
            return {k: build(v) for k, v in node.items()}
        if isinstance(node, list):
            return [build(v) for v in node]
        (value,) = take(1)
        if node == "i":
            if value.denominator != 1:
                raise FederationError("secure aggregation: a summed count is not an integer")
            return int(value)
        return float(value)

    out = build(layout)
    if position != len(values):
        raise FederationError("secure aggregation: the summed vector is longer than its layout")
    return out


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyPair:
    """A node's long-term X25519 key pair (the private part never leaves the node home)."""

    private: Any = field(repr=False)

    @property
    def public_bytes(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw)

    @property
    def public_hex(self) -> str:
        return self.public_bytes.hex()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "KeyPair":
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return cls(X25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def generate(cls) -> "KeyPair":
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return cls(X25519PrivateKey.generate())

    def exchange(self, peer_public: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        try:
            return self.private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:  # a low-order point gives an all-zero secret
            raise DisclosureError("a peer's secure-aggregation key is invalid (low-order point)",
                                  control="secure_aggregation") from None


def fingerprint(public_key: bytes) -> str:
    """Short SHA-256 fingerprint of a public key, for admins to compare out of band."""
    digest = hashlib.sha256(b"mipflow-secagg-key|" + public_key).hexdigest()
    return ":".join(digest[i:i + 4] for i in range(0, 32, 4))


def load_keypair(root: str | Path, *, create: bool = True) -> KeyPair:
    """The node's key pair from ``HOME/secagg.key`` (hex, mode 0600); created when missing."""
    path = Path(root) / KEY_FILE
    try:
        raw = bytes.fromhex(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        if not create:
            raise
        pair = KeyPair.generate()
        from cryptography.hazmat.primitives import serialization

        secret = pair.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                            serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            return load_keypair(root, create=False)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret.hex() + "\n")
        return pair
    if len(raw) != 32:
        raise RequestError(f"{path} does not hold a 32-byte X25519 key")
    return KeyPair.from_bytes(raw)


# --------------------------------------------------------------------------- trust store


class TrustStore:
    """The peers' public keys a node accepts (``HOME/secagg_peers.json``, mode 0600).

    ``{"policy": "tofu" | "pinned", "peers": {name: {"public_key": hex, "source": "pinned" | "tofu", "at": ...}}}``
    """

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / PEERS_FILE

    def load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"policy": "tofu", "peers": {}}
        doc.setdefault("policy", "tofu")
        doc.setdefault("peers", {})
        return doc

    def _save(self, doc: Mapping[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=2, sort_keys=True)
        tmp.replace(self.path)

    def set_policy(self, policy: str) -> None:
        if policy not in POLICIES:
            raise RequestError(f"secure-aggregation trust policy must be one of {', '.join(POLICIES)}")
        doc = self.load()
        doc["policy"] = policy
        self._save(doc)

    def pin(self, name: str, public_key_hex: str) -> str:
        """Pin ``name``'s public key (as its admin told ours out of band); returns its fingerprint."""
        key = _public_key(public_key_hex, name)
        doc = self.load()
        doc["peers"][name] = {"public_key": key.hex(), "source": "pinned", "at": _now()}
        self._save(doc)
        return fingerprint(key)

    def check(self, peers: Mapping[str, bytes]) -> None:
        """Accept the peers' keys or refuse the step.

        Raises
        ------
        DisclosureError
            (control ``secure_aggregation``) if a peer's key differs from the
            one pinned or first seen, or, under policy ``pinned``, if a peer is
            not pinned at all.
        """
        doc = self.load()
        known = doc["peers"]
        new: dict[str, bytes] = {}
        for name, key in peers.items():
            entry = known.get(name)
            if entry is None:
                if doc["policy"] == "pinned":
                    raise DisclosureError(f"peer {name!r} has no pinned secure-aggregation key at this node",
                                          control="secure_aggregation")
                new[name] = key
            elif entry["public_key"] != key.hex():
                raise DisclosureError(f"peer {name!r} presented a secure-aggregation key other than the one "
                                      f"{'pinned' if entry.get('source') == 'pinned' else 'first seen'} at this "
                                      "node (key substitution?)", control="secure_aggregation")
        if new:
            for name, key in new.items():
                known[name] = {"public_key": key.hex(), "source": "tofu", "at": _now()}
            self._save(doc)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _public_key(value: Any, name: str) -> bytes:
    try:
        key = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise RequestError(f"the secure-aggregation public key of {name!r} is not 32 bytes of hex")
    return key


# --------------------------------------------------------------------------- masks


def context_digest(*, analysis_id: str, algorithm: str, round_no: int, request: Mapping[str, Any],
                   state: Any, participants: Iterable[bytes]) -> bytes:
    """What every seed of one step is bound to: a different request, state,
    round or participant set gives independent masks."""
    doc = {"scheme": SCHEME, "analysis_id": analysis_id, "algorithm": algorithm, "round": int(round_no),
           "request": request, "state": state, "participants": sorted(p.hex() for p in participants)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"),
                                     allow_nan=False).encode()).digest()


def pair_seed(own: KeyPair, peer_public: bytes, context: bytes) -> bytes:
    """The 32-byte seed node ``own`` shares with the holder of ``peer_public`` for ``context``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    shared = own.exchange(peer_public)
    pair = b"".join(sorted((own.public_bytes, peer_public)))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=SCHEME.encode(),
                info=context + pair).derive(shared)


def keystream(seed: bytes, length: int) -> list[int]:
    """``length`` uniform elements of the ring from a ChaCha20 keystream keyed by ``seed``."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    encryptor = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    stream = encryptor.update(b"\x00" * (ELEMENT_BYTES * length))
    return [int.from_bytes(stream[i:i + ELEMENT_BYTES], "little") for i in range(0, len(stream), ELEMENT_BYTES)]


def mask(own: KeyPair, peers: Iterable[bytes], context: bytes, length: int) -> list[int]:
    """Node ``own``'s total mask: ``sum_j sign_j * PRG(seed_j)`` over its peers (mod the ring)."""
    total = [0] * length
    me = own.public_bytes
    for peer in peers:
        if peer == me:
            continue
        stream = keystream(pair_seed(own, peer, context), length)
        sign = 1 if me < peer else -1
        total = [(t + sign * s) % RING for t, s in zip(total, stream)]
    return total


# --------------------------------------------------------------------------- node side


def parse_participants(spec: Any) -> dict[str, bytes]:
    """``{"participants": [{"node": name, "public_key": hex}, ...]}`` -> name -> key.

    Raises
    ------
    RequestError
        If the list is malformed, too long, or names a node or key twice.
    """
    if not isinstance(spec, Mapping) or spec.get("scheme") != SCHEME:
        raise RequestError(f"secure_aggregation must name the scheme {SCHEME!r} and list its participants")
    items = spec.get("participants")
    if not isinstance(items, list) or not 2 <= len(items) <= MAX_PARTICIPANTS:
        raise RequestError(f"secure aggregation needs 2 to {MAX_PARTICIPANTS} participants")
    out: dict[str, bytes] = {}
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("node"), str) or not item["node"]:
            raise RequestError("each secure-aggregation participant needs a node name and a public key")
        name = item["node"][:128]
        if name in out:
            raise RequestError(f"secure aggregation lists node {name!r} twice")
        out[name] = _public_key(item.get("public_key"), name)
    if len(set(out.values())) != len(out):
        raise RequestError("secure aggregation lists one public key for two nodes")
    return out


def secure_form(algorithm: str, aggregates: Mapping[str, Any], request: Any, model: Any) -> Any:
    """What a node sums for ``algorithm``: its released aggregates, or the
    algorithm's ``secure_aggregates`` rewrite of them (run after the controls)."""
    from mipflow.algorithms import get_algorithm
    from mipflow.protocol.request import AnalysisRequest

    hook = getattr(get_algorithm(algorithm), "secure_aggregates", None)
    if hook is None:
        return aggregates
    if model is None:
        raise RequestError(f"secure aggregation of {algorithm} needs the data model at the node")
    parsed = request if isinstance(request, AnalysisRequest) else AnalysisRequest.from_dict(request)
    return hook(aggregates, parsed, model)


def mask_release(root: str | Path, node_name: str, algorithm: str, request: Any,
                 round_no: int, state: Any, analysis_id: str | None, spec: Any,
                 aggregates: Mapping[str, Any], *, model: Any = None) -> dict[str, Any]:
    """What a node releases under secure aggregation, in place of ``aggregates``.

    Runs after the node's disclosure controls (``aggregates`` is what they
    released; ``model`` is the data model, for :func:`secure_form`).  ``request`` is
    the node's parsed :class:`~mipflow.protocol.request.AnalysisRequest` (passed on as
    it is; its JSON form only goes into the seed context) or that JSON form.  Returns
    ``{"secure_aggregation": {"scheme", "layout", "masked": [hex, ...]}}``.

    Raises
    ------
    RequestError
        If the algorithm (or this request of it) does not support secure
        aggregation or the call is malformed.
    DisclosureError
        (control ``secure_aggregation``) if the node is not among the
        participants under its own key, or a peer's key is not trusted.
    """
    reason = refusal(algorithm, request)
    if reason is not None:
        raise RequestError(reason)
    if not analysis_id:
        raise RequestError("secure aggregation needs the analysis_id (it is bound into the masks)")
    participants = parse_participants(spec)
    own = load_keypair(root)
    if participants.get(node_name) != own.public_bytes:
        raise DisclosureError(f"node {node_name!r} is not among the secure-aggregation participants under its "
                              "own public key", control="secure_aggregation")
    TrustStore(root).check({k: v for k, v in participants.items() if k != node_name})
    document = request.to_dict() if hasattr(request, "to_dict") else request
    context = context_digest(analysis_id=analysis_id, algorithm=algorithm, round_no=round_no,
                             request=document, state=state, participants=participants.values())
    return masked_release(own, participants.values(), context, secure_form(algorithm, aggregates, request, model))


def masked_release(own: KeyPair, participants: Iterable[bytes], context: bytes,
                   aggregates: Mapping[str, Any]) -> dict[str, Any]:
    """``aggregates`` in additive form, fixed point, plus node ``own``'s pairwise masks.

    Returns ``{"secure_aggregation": {"scheme", "layout", "masked": [hex, ...]}}``.
    """
    try:
        plain = json.loads(json.dumps(aggregates, allow_nan=False))
    except ValueError:
        raise RequestError("secure aggregation cannot sum NaN or infinite aggregates") from None
    layout, vector = additive_form(plain)
    encoded = [encode(v) for v in vector]
    masks = mask(own, participants, context, len(encoded))
    masked = [(e + m) % RING for e, m in zip(encoded, masks)]
    return {"secure_aggregation": {"scheme": SCHEME, "layout": layout,
                                   "masked": [format(v, "x") for v in masked]}}


def unsupported_message(algorithm: str) -> str:
    return (f"secure aggregation is not available for {algorithm}: its aggregates are not all sums. "
            f"Algorithms that support it: {', '.join(sorted(SUPPORTED))}")


def refusal(algorithm: str, request: Any = None) -> str | None:
    """Why secure aggregation cannot run ``algorithm`` on ``request`` (``None``: it can).

    ``request`` (an :class:`~mipflow.algorithms.contract.AnalysisRequest` or its
    JSON form) is checked by the algorithm's ``secure_aggregation_refusal``
    hook when it has one; without a request only the algorithm is checked.
    """
    if algorithm not in SUPPORTED:
        return unsupported_message(algorithm)
    if request is None:
        return None
    from mipflow.algorithms import get_algorithm
    from mipflow.protocol.request import AnalysisRequest

    hook = getattr(get_algorithm(algorithm), "secure_aggregation_refusal", None)
    if hook is None:
        return None
    parsed = request if isinstance(request, AnalysisRequest) else AnalysisRequest.from_dict(request)
    reason = hook(parsed)
    return None if reason is None else f"secure aggregation is not available for this {algorithm} request: {reason}"


def automatic_refusal(algorithm: str, request: Any = None) -> str | None:
    """Why automatic mode leaves secure aggregation off for this analysis (``None``: it switches on,
    given enough nodes): :func:`refusal`, or the algorithm is in :data:`EXPLICIT_ONLY`."""
    if algorithm not in SUPPORTED:
        return f"{algorithm} does not support secure aggregation"
    reason = refusal(algorithm, request)
    if reason is not None:
        return reason
    if algorithm in EXPLICIT_ONLY:
        return (f"automatic: {algorithm} under secure aggregation releases only the rows pooled over all "
                "datasets (each dataset's own rows are one node's aggregates); request it explicitly")
    return None


# --------------------------------------------------------------------------- central side


def unmask_sum(replies: Sequence[Mapping[str, Any]]) -> Any:
    """The pooled aggregates from every participant's masked release.

    Raises
    ------
    FederationError
        If the replies differ in scheme, layout or length (the masks could not cancel).
    """
    if not replies:
        raise FederationError("secure aggregation: no replies to sum")
    parts = []
    for reply in replies:
        part = reply.get("secure_aggregation") if isinstance(reply, Mapping) else None
        if not isinstance(part, Mapping) or part.get("scheme") != SCHEME:
            raise FederationError("secure aggregation: a node answered without a masked release")
        parts.append(part)
    layout = parts[0]["layout"]
    length = len(parts[0]["masked"])
    if any(p["layout"] != layout or len(p["masked"]) != length for p in parts):
        raise FederationError("secure aggregation: the nodes' releases do not have the same layout")
    total = [0] * length
    for part in parts:
        total = [(t + int(v, 16)) % RING for t, v in zip(total, part["masked"])]
    return from_additive(layout, [decode(v) for v in total])


@dataclass(frozen=True)
class SecureSession:
    """One participant set of a secure analysis (central side)."""

    participants: dict[str, str]  # node name (as the node names itself) -> public key hex
    node_names: dict[str, str]    # federation's name for the node -> the node's own name

    def body(self) -> dict[str, Any]:
        """What every step call carries."""
        return {"scheme": SCHEME, "participants": [{"node": n, "public_key": k}
                                                   for n, k in sorted(self.participants.items())]}

    def combine(self, replies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The one pooled aggregate the algorithm's global step gets."""
        missing = set(self.node_names) - set(replies)
        if missing:
            raise FederationError(f"secure aggregation: no reply from {', '.join(sorted(missing))}")
        return unmask_sum([replies[name]["aggregates"] for name in self.node_names])

    def provenance(self) -> dict[str, Any]:
        return {"enabled": True, "scheme": SCHEME, "ring_bits": RING_BITS, "fraction_bits": FRACTION_BITS,
                "participants": {n: fingerprint(bytes.fromhex(k)) for n, k in sorted(self.participants.items())}}


def resolve(requested: bool | None, algorithm: str, request: Any = None) -> str:
    """The mode of an analysis, checked before any node is called.

    Returns ``"on"`` / ``"off"`` for an explicit choice and ``"auto"`` for
    ``None`` (on when at least :data:`AUTO_MIN_NODES` nodes take part, the
    algorithm supports it for this ``request`` and is not in :data:`EXPLICIT_ONLY`).

    Raises
    ------
    RequestError
        If secure aggregation is requested for an algorithm (or a request of
        it, see :func:`refusal`) that does not support it.
    """
    if requested is None:
        return "auto"
    if not isinstance(requested, bool):
        raise RequestError("secure_aggregation must be true, false or null (automatic)")
    if requested:
        reason = refusal(algorithm, request)
        if reason is not None:
            raise RequestError(reason)
    return "on" if requested else "off"


#: Automatic mode switches secure aggregation on from this many nodes.
AUTO_MIN_NODES = 3


def open_session(clients: Sequence[Any], excluded: dict[str, str], pool: Any) -> SecureSession:
    """Fetch every node's public key (in parallel); nodes that do not answer are excluded."""
    futures = {c.name: pool.submit(c.secagg_key) for c in clients}
    participants: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, future in futures.items():
        try:
            doc = future.result()
            key = _public_key(doc.get("public_key"), name).hex()
            own_name = str(doc.get("node") or name)
        except (RequestError, AttributeError) as exc:
            excluded[name] = f"secure aggregation: no valid public key ({exc})"
            continue
        except Exception as exc:  # noqa: BLE001 - a node that cannot give its key is left out with the reason
            excluded[name] = f"secure aggregation: public key unavailable ({exc})"
            continue
        if own_name in participants:
            excluded[name] = f"secure aggregation: node name {own_name!r} is used by another node"
            continue
        participants[own_name] = key
        names[name] = own_name
    return SecureSession(participants=participants, node_names=names)
