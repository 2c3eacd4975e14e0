"""PS3.15 Annex E, Table E.3.10-1 "Safe Private Attributes", kept as data.

Under the Retain Safe Private Option (PS3.15 E.3.10) a de-identifier keeps the
private attributes it knows to be safe from identity leakage, with the
Private Creator elements that define them, and removes every other private
attribute.  The package data file ``data/annex_e_table_e3_10_1.txt`` holds the standard's sample list
of such attributes, one a line, as read from a rendering of the standard's Table E.3.10-1 (the
edition of that rendering is not stated in it; later editions may add rows).
Meanings are shortened.

Columns of the data file (separated by ``|``; lines starting with ``#`` are comments):

``TAG``
    ``(gggg,xxee)``: the odd group, and the element byte ``ee`` inside the
    block the Private Creator reserves (``xx`` is the block number, whatever
    the creator was given in an instance).
``CREATOR``
    The Private Creator value that must reserve the block, compared exactly
    (trailing spaces of the stored value ignored).
``VR``
    The value representation the table gives (``-`` where the table gives
    none).
``VM``
    The value multiplicity the table gives (``1``, ``3``, ``3-4``, ``1-n``).
``MEANING``
    The table's meaning.

The standard itself warns (note 2 of E.3.10) that vendors do not guarantee
these attributes to be safe, and that bulk ``OB`` data is particularly
unsafe.  :mod:`mipflow.node.imaging.actions` therefore keeps a listed element only
when its creator and group match, its VR agrees with the table and its
values fit the listed multiplicity (numeric strings must be numbers), replaces
UIDs in kept elements with their keyed replacements, and applies the profile
inside kept sequences.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

__all__ = ["SafePrivateRow", "safe_private_rows", "safe_private_keys"]

#: The package data file (under ``data/``) that holds the table.
TABLE_FILE = "annex_e_table_e3_10_1.txt"


@dataclass(frozen=True)
class SafePrivateRow:
    """One row of Table E.3.10-1.

    Attributes
    ----------
    group : int
        The odd group number.
    element : int
        The element byte within the private block (``0x00``-``0xFF``).
    creator : str
        The Private Creator that reserves the block.
    vr : str or None
        The VR the table gives, or ``None`` where it gives none.
    vm : str
        The value multiplicity the table gives.
    meaning : str
        What the attribute holds.
    """

    group: int
    element: int
    creator: str
    vr: str | None
    vm: str
    meaning: str

    @property
    def key(self) -> tuple[int, str, int]:
        """``(group, creator, element byte)``, the form of :attr:`DeidOptions.safe_private`."""
        return (self.group, self.creator, self.element)




def _parse(line: str) -> SafePrivateRow:
    tag, creator, vr, vm, meaning = (part.strip() for part in line.split("|"))
    if not (len(tag) == 11 and tag[0] == "(" and tag[5] == "," and tag[6:8] == "xx"
            and tag[-1] == ")"):
        raise ValueError(f"bad tag in Table E.3.10-1 data: {tag!r}")
    group, element = int(tag[1:5], 16), int(tag[8:10], 16)
    if not group & 1:
        raise ValueError(f"{tag}: a private group is odd")
    return SafePrivateRow(group=group, element=element, creator=creator,
                          vr=None if vr == "-" else vr, vm=vm, meaning=meaning)


@lru_cache(maxsize=1)
def safe_private_rows() -> tuple[SafePrivateRow, ...]:
    """Every row of Table E.3.10-1, in the standard's order."""
    text = (files(__package__) / "data" / TABLE_FILE).read_text(encoding="utf-8")
    return tuple(_parse(line) for line in text.splitlines() if line.strip() and not line.startswith("#"))


@lru_cache(maxsize=1)
def safe_private_keys() -> frozenset[tuple[int, str, int]]:
    """``(group, creator, element byte)`` of every row (the default allow-list)."""
    return frozenset(row.key for row in safe_private_rows())
