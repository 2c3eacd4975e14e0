"""How the cohort ledger stores a sorted set of 64-bit row or patient keys (ADR 0049, amended).

Format 2 (written since): the keys' deltas (the first key's from 0), split into their 8 byte planes
(byte ``j`` of every delta together). The ``r`` low planes, which hold keyed hashes' random bits,
are stored as they are; the high planes, mostly zeros, are zlib-compressed (level 1). ``r`` is the
bytes of the deltas' mean (``max key / n``), rounded up: 6 for a million uniform keys. About 6.0
bytes a key at 1M keys, 10-20 times faster to write than format 1 (zlib of all 8 bytes of every
delta, about 6.9 bytes a key), which spent its time failing to compress the random bytes::

    b"MKP\\x02" | n (uint64 LE) | r (1 byte) | raw planes (r * n bytes) | zlib(high planes)

Format 1 (ledgers from before): ``zlib.compress(deltas as <u8)``. A zlib stream starts with a byte
whose low 4 bits are 8 (deflate); the format 2 tag starts with ``M`` (0x4D), so the two never
mix up, and :func:`decode_keys` reads both: old ledgers stay readable without a migration, and
each cohort keeps the format it was written in.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

#: The first bytes of a format-2 blob (no zlib stream starts with ``M``: its method nibble is not 8).
TAG = b"MKP\x02"
_HEADER = struct.Struct("<QB")


def encode_keys(keys: np.ndarray) -> bytes:
    """Sorted unique uint64 keys -> a format-2 blob (see the module)."""
    keys = np.asarray(keys, dtype=np.uint64)
    n = len(keys)
    deltas = np.diff(keys, prepend=np.uint64(0)) if n else keys
    # the bytes of a typical delta (their mean: the deltas sum to the last key), stored as they are;
    # the planes above (zeros but for the few largest deltas) and always the top one through zlib
    raw = min(((int(keys[-1]) // n).bit_length() + 7) // 8, 7) if n else 0
    # byte j of every delta, plane by plane, written into the blob itself (10M keys: no 80 MB transposed
    # copy of the deltas, no list of plane bytes beside the blob)
    delta_bytes = deltas.astype("<u8", copy=False).view(np.uint8).reshape(n, 8)
    high = zlib.compress(np.ascontiguousarray(delta_bytes[:, raw:].T).tobytes(), 1)
    head = TAG + _HEADER.pack(n, raw)
    blob = bytearray(len(head) + raw * n + len(high))
    blob[:len(head)] = head
    planes = np.frombuffer(blob, dtype=np.uint8, count=raw * n, offset=len(head)).reshape(raw, n)
    for j in range(raw):
        planes[j] = delta_bytes[:, j]
    del planes
    blob[len(head) + raw * n:] = high
    return bytes(blob)


def decode_keys(blob: bytes) -> np.ndarray:
    """The sorted uint64 keys of a blob of either format (:func:`encode_keys`, or a ledger's from before)."""
    if not blob.startswith(TAG):  # format 1
        deltas = np.frombuffer(zlib.decompress(blob), dtype="<u8").astype(np.uint64)
        return np.cumsum(deltas, dtype=np.uint64)
    n, raw = _HEADER.unpack_from(blob, len(TAG))
    start = len(TAG) + _HEADER.size
    if raw > 7 or len(blob) < start + raw * n:
        raise ValueError("a damaged ledger entry")
    high = zlib.decompress(blob[start + raw * n:])
    if len(high) != (8 - raw) * n:
        raise ValueError("a damaged ledger entry")
    planes = np.empty((8, n), dtype=np.uint8)
    planes[:raw] = np.frombuffer(blob, dtype=np.uint8, count=raw * n, offset=start).reshape(raw, n)
    planes[raw:] = np.frombuffer(high, dtype=np.uint8).reshape(8 - raw, n)
    deltas = np.ascontiguousarray(planes.T).view("<u8").reshape(n).astype(np.uint64, copy=False)
    return np.cumsum(deltas, dtype=np.uint64)


def encode_keys_v1(keys: np.ndarray) -> bytes:
    """Format 1, as ledgers before format 2 wrote it (kept for the tests that read such ledgers)."""
    keys = np.asarray(keys, dtype=np.uint64)
    deltas = np.diff(keys, prepend=np.uint64(0)) if len(keys) else keys
    return zlib.compress(deltas.astype("<u8").tobytes(), 1)
