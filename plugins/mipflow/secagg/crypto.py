"""Keys and masks: X25519 key pairs, pairwise seeds (HKDF-SHA256) and their ChaCha20 keystreams.

Each node holds a long-term X25519 key pair in its home (``secagg.key``, mode
0600).  For one step, each pair of participants ``(i, j)`` derives a shared seed::

    shared   = X25519(private_i, public_j)
    context  = SHA-256(scheme, analysis_id, algorithm, round, request, state, participants)
    seed_ij  = HKDF-SHA256(shared, salt=scheme, info=context || sorted(public_i, public_j))

and expands it with ChaCha20 into elements of the ring
(:mod:`mipflow.secagg.codec`).  Node ``i``'s mask is
``sum_j sign_ij * PRG(seed_ij)`` (``sign_ij = +1`` when ``public_i < public_j``),
so the masks of all participants cancel in the sum.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from mipflow.exceptions import DisclosureError, RequestError
from mipflow.secagg.codec import RING, RING_BITS, SCHEME

#: Bytes of keystream per ring element.
ELEMENT_BYTES = RING_BITS // 8
#: The node's key pair in its home.
KEY_FILE = "secagg.key"
#: Shared secrets a key pair keeps (one per peer key; more peers than this start the memory afresh).
MAX_SHARED = 4096


@dataclass(frozen=True)
class KeyPair:
    """A node's long-term X25519 key pair (the private part never leaves the node home)."""

    private: Any = field(repr=False)
    #: X25519 shared secrets with peers' public keys, computed once per key pair and peer (the
    #: masks' seeds and the tag keys are derived from them by HKDF each time they are needed)
    _shared: dict[bytes, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    @functools.cached_property
    def public_bytes(self) -> bytes:
        """The raw public key (computed once per key pair)."""
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
        """The X25519 shared secret with ``peer_public`` (kept for the next round with that peer)."""
        known = self._shared.get(peer_public)
        if known is not None:
            return known
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        try:
            secret = self.private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:  # a low-order point gives an all-zero secret
            raise DisclosureError("a peer's secure-aggregation key is invalid (low-order point)",
                                  control="secure_aggregation") from None
        if len(self._shared) >= MAX_SHARED:
            self._shared.clear()
        self._shared[bytes(peer_public)] = secret
        return secret


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


_LOADED: dict[str, tuple[tuple[int, int], KeyPair]] = {}


def cached_keypair(root: str | Path) -> KeyPair:
    """:func:`load_keypair`, read again only when the key file changes (``mipflow secagg rotate``
    replaces it): what a node's step uses, every round (one ``stat``)."""
    path = os.path.join(root, KEY_FILE)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return load_keypair(root)
    stamp = (stat.st_mtime_ns, stat.st_ino)
    cached = _LOADED.get(path)
    if cached is None or cached[0] != stamp:
        cached = (stamp, load_keypair(root))
        _LOADED[path] = cached
    return cached[1]


def rotate_keypair(root: str | Path) -> KeyPair:
    """Replace the node's key pair in ``HOME/secagg.key`` with a new one; the old private key is gone.

    The new file is written beside the old one (mode 0600) and renamed over it, so a
    concurrent reader sees either key, never a partial file.  Peers that pinned the old
    public key refuse rounds with this node until their admins pin the new one.

    Returns
    -------
    KeyPair
        The new key pair (its public part and :func:`fingerprint` go to the peers' admins).
    """
    from cryptography.hazmat.primitives import serialization

    path = Path(root) / KEY_FILE
    pair = KeyPair.generate()
    secret = pair.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
    tmp = path.with_name(KEY_FILE + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex() + "\n")
    tmp.replace(path)
    return pair


def public_key(value: Any, name: str) -> bytes:
    try:
        key = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise RequestError(f"the secure-aggregation public key of {name!r} is not 32 bytes of hex")
    return key


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
        if me < peer:
            total = [t + s for t, s in zip(total, stream)]
        else:
            total = [t - s for t, s in zip(total, stream)]
    return [t % RING for t in total]  # reduced once, at the end
