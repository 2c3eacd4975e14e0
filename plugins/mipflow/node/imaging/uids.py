"""Keyed replacement of UIDs (action ``U`` of PS3.15 Table E.1-1).

Each UID is replaced by a keyed, deterministic UID: the same original UID gives the same new UID
for one node key and UID root, so references inside sequences and across the files of a study
stay consistent, and nobody without the key can link a new UID to the original.  New UIDs are
``2.25.<integer>`` (the UUID-derived root of PS3.5 B.2) or ``<node root>.<digits>``.  Registered
DICOM UIDs (SOP classes, transfer syntaxes, well-known frames of reference) are kept.

Instance, frame-of-reference and event UIDs that the table does not list
(:data:`EXTRA_UID_KEYWORDS`) are replaced the same way.
"""
from __future__ import annotations

import hmac
import re
from typing import Any

from pydicom.datadict import DicomDictionary
from pydicom.uid import UID_dictionary

__all__ = ["EXTRA_UID_KEYWORDS", "EXTRA_UID_TAGS", "UidMap", "check_uid_root"]

#: UID attributes not listed in Table E.1-1 that still hold instance, frame
#: of reference or event identities: replaced like action ``U``.
EXTRA_UID_KEYWORDS: frozenset[str] = frozenset({
    "RTVCommunicationSOPInstanceUID", "PrivateRecordUID", "MultiFrameSourceSOPInstanceUID",
    "RadiopharmaceuticalAdministrationEventUID", "TargetFrameOfReferenceUID",
    "SOPInstanceUIDOfConcatenationSource", "VolumeFrameOfReferenceUID",
    "TableFrameOfReferenceUID", "ReferencedColorPaletteInstanceUID", "FindingsGroupUIDTrial",
    "ReferencedFindingsGroupUIDTrial", "RetrieveLocationUID", "RepositoryUniqueID",
    "HomeCommunityID", "AssertionUID", "ReferencedAssertionUID", "ReferencedFiducialUID",
    "VolumetricPresentationInputSetUID", "EquipmentFrameOfReferenceUID", "SelectorUIValue",
})

#: The tags of :data:`EXTRA_UID_KEYWORDS`.
EXTRA_UID_TAGS: frozenset[int] = frozenset(
    tag for tag, entry in DicomDictionary.items() if entry[4] in EXTRA_UID_KEYWORDS
)

_UID_CONTEXT = b"dicom-uid:"
_MAX_UID = 64
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def check_uid_root(uid_root: str) -> str:
    """``uid_root`` without a trailing dot, or :class:`ValueError` if it cannot prefix new UIDs.

    A root is a dotted numeric UID prefix without leading zeros, short enough to leave at least
    11 digits for the keyed number within the 64 characters of a UID.
    """
    root = uid_root.rstrip(".")
    if not _UID_ROOT_RE.match(root) or len(root) > _MAX_UID - 12:
        raise ValueError(
            "uid_root must be a dotted numeric UID prefix without leading zeros, "
            f"at most {_MAX_UID - 12} characters"
        )
    return root


class UidMap:
    """Original UID -> keyed replacement, for one node key and UID root.

    Parameters
    ----------
    key : bytes
        The node secret (checked by the caller).
    uid_root : str, optional
        The node's UID root (:func:`check_uid_root`); ``2.25.`` by default.

    Notes
    -----
    Keeps a cache of replacements, which is a pure function of the key and
    the root.  Not picklable: it holds the key.
    """

    __slots__ = ("_key", "_prefix", "_digits", "_cache")

    def __init__(self, key: bytes, uid_root: str | None = None) -> None:
        self._key = bytes(key)
        if uid_root is None:
            self._prefix, self._digits = "2.25.", 39   # 128-bit integer
        else:
            self._prefix = uid_root + "."
            self._digits = _MAX_UID - len(self._prefix)
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"UidMap(key=<hidden>, prefix={self._prefix!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a UidMap holds the node secret and cannot be pickled")

    def new_uid(self, uid: str) -> str:
        """The replacement of ``uid`` (deterministic for the key and root).

        Registered DICOM UIDs (transfer syntaxes, SOP classes, ...) are
        returned unchanged.
        """
        uid = str(uid).strip().rstrip("\0")
        hit = self._cache.get(uid)
        if hit is not None:
            return hit
        if uid in UID_dictionary:
            new = uid
        else:
            digest = hmac.digest(self._key, _UID_CONTEXT + uid.encode("ascii", "replace"),
                                 "sha256")
            number = int.from_bytes(digest[:16], "big")
            if self._digits < 39:
                number %= 10 ** self._digits
            new = f"{self._prefix}{number}"
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[uid] = new
        return new
