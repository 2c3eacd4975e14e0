"""Fixed point in ``Z/2^256`` on numpy arrays: four little-endian ``uint64`` limbs per element (ADR 0055).

The masked sealed sums of real numbers (:data:`mipflow.algorithms.sealed.REAL_MASKED_SCHEME`) encode a
value ``v`` as ``round(v * 2^128)`` (round half to even, negative values as their residue), add pairwise
masks modulo ``2^256`` and decode the sum of every participant's part as a signed integer times
``2^-128``, rounded once to float64.  The reference is Python's integers (``round``, ``%``, ``float``);
these functions give the same bits with whole-array operations:

* **Encode**: ``rint(ldexp(v, 128))`` is the integer Python's ``round`` gives (scaling by a power of two
  is exact; ``rint`` rounds half to even, as ``round`` does).  Its magnitude, ``M * 2^s`` with a 53-bit
  integer ``M`` (``frexp``), is shifted into the limbs; negative values are negated in two's complement.
* **Add, subtract**: limb by limb with explicit carries (borrows), the top carry dropped (modulo ``2^256``).
* **Decode**: a negative total (top bit set) is negated; the magnitude's top 62 bits are taken into an
  ``int64`` with every lower bit ORed into its last bit (a sticky bit), so that the hardware's
  ``int64 -> float64`` conversion (round half to even) rounds it as ``float(int)`` rounds the whole
  integer; then scaled by a power of two (exact: no result is below ``2^-128`` or near overflow).

Arrays of limbs have shape ``(n, 4)``, limb 0 the least significant, so ``limbs.astype("<u8").tobytes()``
is each element's 32 little-endian bytes, the wire form.
"""
from __future__ import annotations

import numpy as np

#: Limbs per element and bits per limb.
LIMBS = 4
LIMB_BITS = 64
_LOW32 = np.uint64(0xFFFFFFFF)
#: Significant bits kept before the final rounding when decoding (a 62-bit window fits int64 exactly).
_WINDOW = 62


def from_bytes(raw: bytes) -> np.ndarray:
    """Elements of ``Z/2^256`` as limbs, shape (n, 4), from their little-endian bytes (32 per element)."""
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64).reshape(-1, LIMBS)


def to_bytes(limbs: np.ndarray) -> bytes:
    """The little-endian bytes of elements given as limbs (32 per element)."""
    return np.ascontiguousarray(limbs, dtype="<u8").tobytes()


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` modulo ``2^256``, limbwise with carries; shapes (n, 4)."""
    out = np.empty_like(a)
    carry = np.zeros(len(a), dtype=np.uint64)
    for k in range(LIMBS):
        partial = a[:, k] + b[:, k]  # wraps modulo 2^64
        overflow = partial < a[:, k]
        out[:, k] = partial + carry
        carry = (overflow | (out[:, k] < partial)).astype(np.uint64)
    return out


def subtract(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` modulo ``2^256``, limbwise with borrows; shapes (n, 4)."""
    out = np.empty_like(a)
    borrow = np.zeros(len(a), dtype=np.uint64)
    for k in range(LIMBS):
        partial = a[:, k] - b[:, k]
        under = a[:, k] < b[:, k]
        out[:, k] = partial - borrow
        borrow = (under | (partial < borrow)).astype(np.uint64)
    return out


_LANE = np.uint64(32)


def combine(base: np.ndarray | None, plus: "list[bytes | np.ndarray]", minus: "list[bytes | np.ndarray]") -> np.ndarray:
    """``base + sum(plus) - sum(minus)`` modulo ``2^256`` as limbs (n, 4), every term's carries taken once
    at the end: each element held as eight 32-bit lanes in ``uint64`` (each term adds less than ``2^32``
    to a lane, so fewer than ``2^31`` terms never overflow one), a subtracted term added as its lanes'
    complement plus one (``-s = ~s + 1`` modulo ``2^256``); then each lane's high half carried into the
    next, the last one's dropped.  Terms are limbs (n, 4) or their 32 little-endian bytes per element;
    ``base`` (limbs) may be None (zero).  The same bits as :func:`add` and :func:`subtract` term by term."""
    def lanes(term: "bytes | np.ndarray") -> np.ndarray:
        if isinstance(term, np.ndarray):
            return np.ascontiguousarray(term, dtype="<u8").view("<u4").reshape(-1)
        return np.frombuffer(term, dtype="<u4")

    terms = [lanes(t) for t in ([] if base is None else [base]) + list(plus)] + [lanes(t) for t in minus]
    if not terms or len(terms) >= 1 << 31:
        raise ValueError("combine needs 1 to 2^31 - 1 terms")
    size = len(terms[0])
    if size % (2 * LIMBS) or any(len(t) != size for t in terms):
        raise ValueError("terms differ in length or are not whole elements")
    positive = len(terms) - len(minus)
    acc = np.zeros(size, dtype=np.uint64)
    for t in terms[:positive]:
        acc += t
    if minus:
        complement = np.full(size, len(minus) * 0xFFFFFFFF, dtype=np.uint64)
        for t in terms[positive:]:
            complement -= t  # sum of (2^32 - 1 - s) per lane: never below zero
        acc += complement
        acc[0::2 * LIMBS] += np.uint64(len(minus))
    acc = acc.reshape(-1, 2 * LIMBS)
    for k in range(2 * LIMBS - 1):
        acc[:, k + 1] += acc[:, k] >> _LANE
    acc &= _LOW32
    return acc[:, 0::2] | (acc[:, 1::2] << _LANE)


def negate(a: np.ndarray) -> np.ndarray:
    """``-a`` modulo ``2^256`` (two's complement)."""
    return subtract(np.zeros_like(a), a)


def encode(values: np.ndarray, fraction_bits: int) -> np.ndarray:
    """``round(v * 2^fraction_bits)`` modulo ``2^256`` for each finite float ``v``, as limbs (n, 4).

    The caller bounds the magnitude (``|v| * 2^fraction_bits < 2^255``) and refuses non-finite values.
    """
    scaled = np.rint(np.ldexp(np.asarray(values, dtype=np.float64).ravel(), fraction_bits))
    magnitude = np.abs(scaled)
    mantissa, exponent = np.frexp(magnitude)  # magnitude = mantissa * 2^exponent, 0.5 <= mantissa < 1
    integer = np.ldexp(mantissa, 53).astype(np.uint64)  # the 53-bit significand, exact
    shift = exponent.astype(np.int64) - 53  # magnitude = integer * 2^shift
    small = shift < 0  # below 2^53: an integer-valued float, exact in one limb
    limbs = np.zeros((len(scaled), LIMBS + 1), dtype=np.uint64)
    rows = np.arange(len(scaled))
    limbs[small, 0] = magnitude[small].astype(np.uint64)
    large = ~small
    word = shift[large] // LIMB_BITS
    bits = (shift[large] % LIMB_BITS).astype(np.uint64)
    significand = integer[large]
    low = significand << bits  # the bits that stay in limb `word` (modulo 2^64)
    # the bits pushed into the next limb; none when bits == 0 (a shift by 64 is not defined)
    high = np.where(bits == 0, np.uint64(0), significand >> ((np.uint64(LIMB_BITS) - bits) % np.uint64(LIMB_BITS)))
    limbs[rows[large], word] = low
    limbs[rows[large], word + 1] |= high
    out = np.ascontiguousarray(limbs[:, :LIMBS])
    negative = scaled < 0
    if np.any(negative):
        out[negative] = negate(out[negative])
    return out


def _bit_length(words: np.ndarray) -> np.ndarray:
    """The bit length of each ``uint64`` (0 for 0), exactly (halves of 32 bits convert to float exactly)."""
    high = (words >> np.uint64(32)).astype(np.float64)
    low = (words & _LOW32).astype(np.float64)
    return np.where(high > 0, np.frexp(high)[1] + 32, np.frexp(low)[1]).astype(np.int64)


def decode(limbs: np.ndarray, fraction_bits: int) -> np.ndarray:
    """Elements of ``Z/2^256`` read as signed (two's complement) times ``2^-fraction_bits``, each rounded
    once to the nearest float64 (half to even), as Python's ``float(int)`` rounds; shape (n,)."""
    limbs = np.asarray(limbs, dtype=np.uint64).reshape(-1, LIMBS)
    n = len(limbs)
    negative = (limbs[:, LIMBS - 1] >> np.uint64(LIMB_BITS - 1)) == 1
    magnitude = limbs.copy()
    if np.any(negative):
        magnitude[negative] = negate(magnitude[negative])
    nonzero = magnitude != 0
    top = np.where(nonzero.any(axis=1), LIMBS - 1 - np.argmax(nonzero[:, ::-1], axis=1), 0)
    rows = np.arange(n)
    length = top * LIMB_BITS + _bit_length(magnitude[rows, top])  # bits of the magnitude
    cut = np.maximum(length - _WINDOW, 0)  # drop this many low bits (into the sticky bit)
    word, bits = cut // LIMB_BITS, (cut % LIMB_BITS).astype(np.uint64)
    padded = np.concatenate([magnitude, np.zeros((n, 1), dtype=np.uint64)], axis=1)
    low_word, next_word = padded[rows, word], padded[rows, word + 1]
    window = (low_word >> bits) | np.where(bits == 0, np.uint64(0),
                                           next_word << ((np.uint64(LIMB_BITS) - bits) % np.uint64(LIMB_BITS)))
    window &= np.uint64((1 << _WINDOW) - 1)
    # sticky: any dropped bit, in the limbs below `word` or in the low `bits` bits of limb `word`
    below = np.cumsum(nonzero[:, :LIMBS], axis=1) > 0  # below[:, k]: some limb 0..k is nonzero
    lower_limbs = np.where(word > 0, below[rows, np.maximum(word - 1, 0)], False)
    dropped = (low_word & ((np.uint64(1) << bits) - np.uint64(1))) != 0
    window |= (lower_limbs | dropped).astype(np.uint64)
    result = np.ldexp(window.astype(np.int64).astype(np.float64), (cut - fraction_bits).astype(np.int32))
    return np.where(negative, -result, result)
