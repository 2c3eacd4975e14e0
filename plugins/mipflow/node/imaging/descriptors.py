"""Cleaning of descriptor text under the Clean Descriptors Option (PS3.15 E.3.5).

Under Clean Descriptors, the attributes whose action is ``C`` (Study, Series
and Acquisition Descriptions, Image Comments, Protocol Name, ...) are kept
after identifying content is taken out of them, instead of being removed
whole.  The same cleaning serves the text inside structured content and
graphic annotations under their cleaning options.

What is taken out
-----------------
:class:`DescriptorCleaner` is built once per instance from the instance's
own identifying attributes (:data:`IDENTIFYING_KEYWORDS`: names, IDs,
addresses, telephone numbers, institution, physicians, dates, ...) and the
node's word lists.  It removes, in this order:

1. a courtesy title (``Mr``, ``Mrs``, ``Dr``, ``Herr``, ``Frau``, ``Mme``
   ..., in title case only: ``MR`` and ``DR`` are modalities) or an identity
   label (``DOB``, ``MRN``, ``Tel``, ``born``, ``geb.``, ``née``, ``e-mail``
   ...), with the word that follows it (the name or value it announces);
2. e-mail addresses and web addresses;
3. dates in any common notation: ``2001-02-03``, ``03.02.2001``,
   ``2/3/01``, ``20010203``, ``3 Feb 2001``, ``February 3, 2001``,
   ``3. Februar 2001``, ``mars 2001`` (English, German and French month
   names, next to a day or a year), bare years 1900-2099, and clock times
   (``10:30``, ``10:30:15``);
4. telephone numbers: a run of digits, spaces, dots, dashes, slashes and
   brackets (optionally after ``+``) holding seven digits or more;
5. every value of the instance's identifying attributes, and each of their
   words of three characters or more, wherever it appears (also inside a
   longer word), ignoring case; a DA value also in its usual renderings;
6. word by word: the parts of the instance's person names (whole words of
   two characters or more), any word with five digits or more (IDs,
   accession numbers) and the words of the deny list.

With an allow-list (:attr:`DeidOptions.descriptor_allow_words`), step 6
keeps only words of the list and plain numbers of at most four digits with
an optional unit (``5mm``, ``2.5``, ``3D``, ``T1``, ``b1000``); every
other word goes.  That is the stricter mode for nodes that know their
vocabulary.

Text left empty after cleaning means the attribute falls back to its
basic action (removed or emptied).

Limits
------
The deny mode cannot find a name or ID that appears nowhere in the instance
and looks like an ordinary word: cleaning reduces what descriptions leak, it
does not make free text safe.  Use the allow-list where that matters.
"""
from __future__ import annotations

import re
from typing import Iterable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

__all__ = [
    "DEFAULT_DENY_WORDS",
    "IDENTIFYING_KEYWORDS",
    "DescriptorCleaner",
    "parse_word_list",
]

#: Attributes whose values, found in descriptor text, are removed from it.
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "PatientBirthDate",
    "IssuerOfPatientID", "MedicalRecordLocator", "AccessionNumber", "StudyID",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician", "StationName",
    "DeviceSerialNumber", "AdmissionID", "PatientInsurancePlanCodeSequence",
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientAge",
    "MilitaryRank", "BranchOfService", "Occupation", "RegionOfResidence",
    "CountryOfResidence", "ResponsiblePerson", "ResponsibleOrganization",
    "PersonName", "ScheduledPerformingPhysicianName", "PerformingPhysicianIdentificationSequence",
)

#: Person-name attributes: their parts are removed as whole words from two characters.
_NAME_KEYWORDS: tuple[str, ...] = (
    "PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician", "ResponsiblePerson",
    "PersonName", "ScheduledPerformingPhysicianName",
)

#: Deny-list words used when the node gives none: labels that announce an identity.
DEFAULT_DENY_WORDS: frozenset[str] = frozenset()

#: Courtesy titles (matched in title case only: ``MR`` and ``DR`` are modalities).
_TITLES: tuple[str, ...] = (
    "Mr", "Mrs", "Miss", "Dr", "Prof", "Herr", "Frau", "Mme", "Mlle", "Sig", "Sra",
)
#: Labels that announce an identifying value (any case).
_LABELS: tuple[str, ...] = (
    "dob", "d\\.o\\.b", "mrn", "tel", "phone", "fax", "born", "geb", "né", "née", "nee",
    "name", "patient-id", "pid", "ssn", "ahv", "nhs", "e-?mail",
)
#: A title or label and the word after it (the name or value it announces).
_TITLE_WORD = re.compile(rf"(?<![\w.])(?:{'|'.join(_TITLES)})\b\.?\s+\S+")
_LABEL_WORD = re.compile(rf"(?<![\w.])(?:{'|'.join(_LABELS)})\b\.?\s*[:#=]?\s*\S+",
                         re.IGNORECASE)

_MONTHS = (
    "jan(?:uary|uar|vier)?|feb(?:ruary|ruar)?|f[ée]v(?:rier)?|mar(?:ch|s)?|m[äa]e?rz|"
    "apr(?:il)?|avr(?:il)?|may|mai|jun[ei]?|juin|jul[iy]?|juil(?:let)?|aug(?:ust)?|ao[uû]t|"
    "sep(?:t(?:ember|embre)?)?|oct(?:ober|obre)?|okt(?:ober)?|nov(?:ember|embre)?|"
    "dec(?:ember)?|dez(?:ember)?|d[ée]c(?:embre)?"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th|er)?\.?"
_YEAR = r"(?:\d{4}|'?\d{2})"
_TEXT_DATE = re.compile(
    rf"\b(?:{_DAY}\s*(?:{_MONTHS})\.?,?(?:\s*{_YEAR})?"
    rf"|(?:{_MONTHS})\.?\s*{_DAY},?(?:\s*{_YEAR})?"
    rf"|(?:{_MONTHS})\.?\s*{_YEAR})(?!\w)",
    re.IGNORECASE,
)
_NUMERIC_DATE = re.compile(r"\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}(?:T[\d:.]+)?\b")
_TIME = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s*[ap]\.?m\.?)?(?!\w)", re.IGNORECASE)
_YEAR_WORD = re.compile(r"^(?:19|20)\d{2}$")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"\b(?:https?://|ftp://|www\.)\S+", re.IGNORECASE)
_PHONE = re.compile(r"(?:\+|\b)\d[\d\s()./-]{5,}\d\b")
_MANY_DIGITS = re.compile(r"\d{5,}")
_SPACES = re.compile(r"\s+")
_TOKEN_SPLIT = re.compile(r"[\s\^,;:/\\()\[\]=]+")
_EDGE = "\"'`.,;:!?()[]{}<>*#"
_ALLOWED_NUMBER = re.compile(r"^[a-z]{0,2}\d{1,4}(?:[.,]\d+)?[a-z%]{0,3}$", re.IGNORECASE)


def parse_word_list(text: str | Iterable[str] | None) -> frozenset[str]:
    """Lower-case words from a comma- or whitespace-separated string (or an iterable)."""
    if not text:
        return frozenset()
    items = re.split(r"[,\s]+", text) if isinstance(text, str) else list(text)
    return frozenset(str(w).strip().lower() for w in items if str(w).strip())


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    return " " if sum(c.isdigit() for c in text) >= 7 else text


class DescriptorCleaner:
    """Removes identifying content from descriptor text of one instance.

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance (before de-identification): its identifying attributes
        give the values to remove.
    deny_words : iterable of str, optional
        Words always removed (compared in lower case, punctuation at the
        edges ignored).
    allow_words : iterable of str, optional
        When given, only these words (and short numbers with a unit) survive.

    Notes
    -----
    See the module docstring for the rules, in order.
    """

    __slots__ = ("_pattern", "_names", "_deny", "_allow")

    def __init__(self, ds: Dataset, *, deny_words: Iterable[str] = DEFAULT_DENY_WORDS,
                 allow_words: Iterable[str] | None = None) -> None:
        needles: set[str] = set()
        names: set[str] = set()
        for keyword in IDENTIFYING_KEYWORDS:
            elem = ds.get(keyword)
            if elem is None or isinstance(elem, Sequence):
                continue
            is_name = keyword in _NAME_KEYWORDS
            for v in _values(elem):
                text = str(v).strip()
                if len(text) >= 2:
                    needles.add(text)
                for token in _TOKEN_SPLIT.split(text):
                    token = token.strip(_EDGE)
                    if len(token) >= 3:
                        needles.add(token)
                    if is_name and len(token) >= 2:
                        names.add(token.lower())
                if len(text) == 8 and text.isdigit():      # a DA: also its usual renderings
                    y, m, d = text[:4], text[4:6], text[6:]
                    needles.update({f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}",
                                    f"{m}/{d}/{y}", f"{y}/{m}/{d}"})
        ordered = sorted(needles, key=len, reverse=True)
        self._pattern = (re.compile("|".join(re.escape(n) for n in ordered), re.IGNORECASE)
                         if ordered else None)
        self._names = frozenset(names)
        self._deny = parse_word_list(deny_words)
        self._allow = None if allow_words is None else parse_word_list(allow_words)

    def __repr__(self) -> str:  # never show the values it looks for
        return f"DescriptorCleaner(<{len(self._names)} name parts>, deny={len(self._deny)})"

    def __call__(self, text: str) -> str:
        """The cleaned text ('' when nothing is left)."""
        text = _TITLE_WORD.sub(" ", text)
        text = _LABEL_WORD.sub(" ", text)
        text = _EMAIL.sub(" ", text)
        text = _URL.sub(" ", text)
        text = _TEXT_DATE.sub(" ", text)
        text = _NUMERIC_DATE.sub(" ", text)
        text = _TIME.sub(" ", text)
        text = _PHONE.sub(_phone, text)
        if self._pattern is not None:
            text = self._pattern.sub(" ", text)
        kept: list[str] = []
        for word in text.split():
            core = word.strip(_EDGE).lower()
            if not core:
                if word.strip() in ("-", "+", "&", "/", "x"):
                    kept.append(word)
                continue
            if (core in self._names or core in self._deny or _MANY_DIGITS.search(core)
                    or _YEAR_WORD.match(core)):
                continue
            if self._allow is not None and core not in self._allow \
                    and not _ALLOWED_NUMBER.match(core):
                continue
            kept.append(word)
        while kept and kept[-1] in ("-", "+", "&", "/", "x"):
            kept.pop()
        while kept and kept[0] in ("-", "+", "&", "/", "x"):
            kept.pop(0)
        return _SPACES.sub(" ", " ".join(kept)).strip()
