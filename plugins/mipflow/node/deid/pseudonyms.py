"""Keyed pseudonyms and per-patient date shifts (HMAC-SHA256 under the node secret).

Also the helpers that apply a per-identifier function once per distinct value
(:func:`factorize_stripped`, :func:`spread`), which :mod:`mipflow.node.deid.tabular` shares.
"""
from __future__ import annotations

import hmac
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from mipflow.exceptions import ProfileError

#: Shortest accepted node secret, in bytes (the HMAC-SHA256 block of security).
MIN_KEY_BYTES = 32

_PSEUDONYM_CONTEXT = b"pid:"
_VISIT_CONTEXT = b"visit:"
_SHIFT_CONTEXT = b"dateshift:"


def _normalise_id(patient_id: str) -> str:
    if not isinstance(patient_id, str):
        raise TypeError(
            f"patient identifiers must be strings, not {type(patient_id).__name__}; "
            "read the export with dtype=str"
        )
    normalised = patient_id.strip()
    if not normalised:
        raise ValueError("the patient identifier is empty")
    return normalised


def _id_bytes(normalised: str) -> bytes:
    # surrogatepass: identifiers read with errors="surrogateescape" still hash
    # deterministically instead of failing.
    return normalised.encode("utf-8", "surrogatepass")


def _check_max_days(max_days: int) -> None:
    if isinstance(max_days, bool) or not isinstance(max_days, int) or max_days < 1:
        raise ValueError(f"max_days must be a whole number of days >= 1, got {max_days!r}")


class Pseudonymiser:
    """Keyed, deterministic pseudonyms and date shifts for patient identifiers.

    Parameters
    ----------
    key : bytes
        The node secret, at least :data:`MIN_KEY_BYTES` bytes.  The same key
        gives the same pseudonyms across runs; another key gives unrelated
        ones.  The key is never shown by :func:`repr` or :class:`str`.

    Raises
    ------
    ProfileError
        If the key is not bytes or is too short.

    Notes
    -----
    Identifiers are normalised by stripping surrounding whitespace only (case
    and inner spaces are significant).  Pseudonyms are the lowercase hex
    HMAC-SHA256 of ``b"pid:" + id``; date shifts derive from the HMAC of
    ``b"dateshift:" + id``, so a pseudonym reveals nothing about the shift.
    Nothing is cached beyond a single call.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if isinstance(key, str) or not isinstance(key, (bytes, bytearray, memoryview)):
            raise ProfileError(
                f"the pseudonymisation key must be bytes, not {type(key).__name__} "
                "(decode a hex or base64 secret before passing it)"
            )
        key = bytes(key)
        if len(key) < MIN_KEY_BYTES:
            raise ProfileError(
                f"the pseudonymisation key is {len(key)} bytes long; "
                f"it must be at least {MIN_KEY_BYTES} bytes (e.g. secrets.token_bytes(32))"
            )
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonymiser(key=<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Keep the secret out of pickles (task payloads, caches, XComs).
        raise TypeError("a Pseudonymiser holds the node secret and cannot be pickled")

    # -- single identifiers -------------------------------------------------

    def pseudonym(self, patient_id: str) -> str:
        """Return the pseudonym of one patient identifier.

        Parameters
        ----------
        patient_id : str
            The identifier; surrounding whitespace is ignored.

        Returns
        -------
        str
            64 lowercase hex characters.

        Raises
        ------
        TypeError
            If ``patient_id`` is not a string.
        ValueError
            If ``patient_id`` is empty or blank.
        """
        return self._pseudonym(_normalise_id(patient_id))

    def date_shift_days(self, patient_id: str, max_days: int = 365) -> int:
        """Return the patient's date shift, in days.

        The shift is deterministic per identifier and key, never 0, and lies
        in ``[-max_days, max_days]``.

        Parameters
        ----------
        patient_id : str
            The identifier; surrounding whitespace is ignored.
        max_days : int, default 365
            The largest shift in either direction (>= 1).

        Raises
        ------
        TypeError
            If ``patient_id`` is not a string.
        ValueError
            If ``patient_id`` is blank or ``max_days`` < 1.
        """
        _check_max_days(max_days)
        return self._shift(_normalise_id(patient_id), max_days)

    # -- series -------------------------------------------------------------

    def pseudonyms(self, ids: pd.Series) -> pd.Series:
        """Return the pseudonyms of a series of identifiers.

        Parameters
        ----------
        ids : pandas.Series
            Identifiers as strings; NaN, empty and blank cells give NaN.

        Returns
        -------
        pandas.Series
            String series with the same index and name as ``ids``.

        Raises
        ------
        TypeError
            If a non-missing cell is not a string.
        """
        values = self._map_unique(ids, self._pseudonym)
        return pd.Series(values, index=ids.index, name=ids.name, dtype="str")

    def visit_pseudonyms(self, ids: pd.Series) -> pd.Series:
        """Pseudonyms of visit/episode identifiers (32 hex characters).

        Keyed in their own context (``b"visit:"``), so a visit number equal to
        some patient identifier does not get a linkable pseudonym.
        """
        values = self._map_unique(
            ids, lambda v: hmac.digest(self._key, _VISIT_CONTEXT + _id_bytes(v), "sha256").hex()[:32])
        return pd.Series(values, index=ids.index, name=ids.name, dtype="str")

    def date_shifts(self, ids: pd.Series, max_days: int = 365) -> pd.Series:
        """Return each identifier's :meth:`date_shift_days` (float, NaN where missing).

        Parameters
        ----------
        ids : pandas.Series
            Identifiers as strings; NaN, empty and blank cells give NaN.
        max_days : int, default 365
            The largest shift in either direction (>= 1).
        """
        _check_max_days(max_days)
        values = self._map_unique(ids, lambda pid: self._shift(pid, max_days))
        return pd.Series(values, index=ids.index, name=ids.name, dtype="float64")

    # -- internals ----------------------------------------------------------

    def _pseudonym(self, normalised: str) -> str:
        return hmac.digest(self._key, _PSEUDONYM_CONTEXT + _id_bytes(normalised), "sha256").hex()

    def _shift(self, normalised: str, max_days: int) -> int:
        digest = hmac.digest(self._key, _SHIFT_CONTEXT + _id_bytes(normalised), "sha256")
        # 64 bits reduced modulo 2*max_days: the bias is below 2**-40.
        slot = int.from_bytes(digest[:8], "big") % (2 * max_days)
        # slots [0, max_days) -> [-max_days, -1]; [max_days, 2*max_days) -> [1, max_days]
        return slot - max_days if slot < max_days else slot - max_days + 1

    @staticmethod
    def _map_unique(ids: pd.Series, func: Callable[[str], Any]) -> np.ndarray:
        """Apply ``func`` once per distinct normalised identifier; NaN for missing ones."""
        codes, uniques = factorize_stripped(ids, "patient identifiers")
        return spread([func(u) for u in uniques], codes)


def _require_strings(values: pd.Series, what: str) -> None:
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind not in ("string", "empty"):
        raise TypeError(
            f"{what} must hold strings (found {kind} values); read the export with dtype=str"
        )


def factorize_stripped(values: pd.Series, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Factorize string cells after stripping surrounding whitespace.

    Returns ``(codes, uniques)``: ``uniques`` holds the distinct stripped,
    non-empty strings (object array) and ``codes`` the position of each cell
    in it, -1 for missing or blank cells.  Stripping runs on distinct raw
    values only, which is much faster than a per-cell ``str.strip`` when
    values repeat.
    """
    _require_strings(values, what)
    raw_codes, raw_uniques = pd.factorize(values, use_na_sentinel=True)
    raw = np.asarray(raw_uniques, dtype=object)
    stripped = pd.Series(raw, dtype=object).str.strip().to_numpy(dtype=object, copy=True)
    blank = stripped == ""
    if (stripped != raw).any():
        # Some values differ only by surrounding whitespace: merge them.
        stripped[blank] = np.nan
        codes, uniques = pd.factorize(stripped, use_na_sentinel=True)
        remap = codes
        uniques = np.asarray(uniques, dtype=object)
    else:
        # Common case: nothing to strip; only empty strings become missing.
        remap = np.cumsum(~blank) - 1
        remap[blank] = -1
        uniques = raw[~blank]
    # raw code -1 (missing) picks the trailing -1
    return np.append(remap, -1).astype(np.intp)[raw_codes], uniques


def spread(per_unique: Sequence[Any] | np.ndarray, codes: np.ndarray, fill: Any = np.nan,
          dtype: Any = object) -> np.ndarray:
    """Spread one value per distinct cell back to all rows (``fill`` where code is -1)."""
    arr = np.asarray(per_unique, dtype=dtype)
    return np.append(arr, np.asarray([fill], dtype=dtype))[codes]

