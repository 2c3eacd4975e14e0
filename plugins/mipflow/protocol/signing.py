"""Signed requests between the central site and a node.

Each client of a node (e.g. the central site) holds a secret issued by the node
(``mipflow node add-client``).  Every request carries::

    X-Mipflow-Client     client id
    X-Mipflow-Timestamp  unix seconds
    X-Mipflow-Nonce      random, never reused
    X-Mipflow-Signature  hex HMAC-SHA256(secret, METHOD \\n PATH \\n TIMESTAMP \\n NONCE \\n SHA256(BODY))

PATH includes the query string when there is one (the node API signs
``/v1/metadata?researcher=R&project=P``), so identities are covered too.

The node rejects a missing or unknown client, a wrong signature (forged or
altered body), a timestamp outside ``max_skew_seconds`` (expired), and a
nonce seen before within that window (replayed).  See docs/adr/0003.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from mipflow.exceptions import ConfigError, MipflowError

HEADER_CLIENT = "X-Mipflow-Client"
HEADER_TIMESTAMP = "X-Mipflow-Timestamp"
HEADER_NONCE = "X-Mipflow-Nonce"
HEADER_SIGNATURE = "X-Mipflow-Signature"
CLIENTS_FILE = "clients.json"


class AuthError(MipflowError):
    """A request failed authentication; the message says why (never the secret)."""


def signature(secret: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    message = "\n".join([method.upper(), path, timestamp, nonce, hashlib.sha256(body).hexdigest()])
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def signed_headers(client_id: str, secret: bytes, method: str, path: str, body: bytes,
                   *, now: float | None = None) -> dict[str, str]:
    """Headers that authenticate one request."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    return {HEADER_CLIENT: client_id, HEADER_TIMESTAMP: timestamp, HEADER_NONCE: nonce,
            HEADER_SIGNATURE: signature(secret, method, path, timestamp, nonce, body)}


class Verifier:
    """Checks signed requests for one node; remembers nonces to refuse replays."""

    def __init__(self, clients: Mapping[str, bytes], *, max_skew_seconds: int = 300) -> None:
        self._clients = dict(clients)
        self.max_skew_seconds = max_skew_seconds
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def update_clients(self, clients: Mapping[str, bytes]) -> None:
        """Replace the known clients (a credential issued or revoked while serving)."""
        self._clients = dict(clients)

    def verify(self, headers: Mapping[str, str], method: str, path: str, body: bytes,
               *, now: float | None = None) -> str:
        """Return the client id, or raise :class:`AuthError` with the reason."""
        now = time.time() if now is None else now
        lower = {k.lower(): v for k, v in headers.items()}
        client = lower.get(HEADER_CLIENT.lower())
        stamp = lower.get(HEADER_TIMESTAMP.lower())
        nonce = lower.get(HEADER_NONCE.lower())
        sig = lower.get(HEADER_SIGNATURE.lower())
        if not (client and stamp and nonce and sig):
            raise AuthError("missing authentication headers")
        secret = self._clients.get(client)
        if secret is None:
            raise AuthError("unknown client")
        expected = signature(secret, method, path, stamp, nonce, body)
        if not hmac.compare_digest(expected, sig):
            raise AuthError("bad signature")
        try:
            sent = int(stamp)
        except ValueError:
            raise AuthError("bad timestamp") from None
        if abs(now - sent) > self.max_skew_seconds:
            raise AuthError("expired request (timestamp outside the allowed window)")
        with self._lock:
            cutoff = now - 2 * self.max_skew_seconds
            while self._nonces and next(iter(self._nonces.values())) < cutoff:
                self._nonces.popitem(last=False)
            key = f"{client}:{nonce}"
            if key in self._nonces:
                raise AuthError("replayed request (nonce already used)")
            self._nonces[key] = now
        return client


@dataclass(frozen=True)
class Credential:
    client_id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"Credential(client_id={self.client_id!r}, secret=<hidden>)"


def _clients_path(root: Path) -> Path:
    return Path(root) / CLIENTS_FILE


def load_clients(root: Path) -> dict[str, bytes]:
    """Client secrets of a node home (empty when none issued)."""
    path = _clients_path(root)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {cid: bytes.fromhex(entry["secret"]) for cid, entry in doc.items()}
    except (json.JSONDecodeError, KeyError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a valid clients file: {exc}") from None


def issue_client(root: Path, client_id: str) -> Credential:
    """Create (or return the existing) credential of ``client_id`` at a node home."""
    if not client_id or not client_id.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"client id {client_id!r} must be letters, digits, '_' or '-'")
    path = _clients_path(root)
    doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if client_id not in doc:
        doc[client_id] = {"secret": secrets.token_hex(32),
                          "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=2)
        tmp.replace(path)
    return Credential(client_id, bytes.fromhex(doc[client_id]["secret"]))
