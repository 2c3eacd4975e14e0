"""PS3.15 Annex E, Table E.3.10-1 "Safe Private Attributes", kept as data.

Under the Retain Safe Private Option (PS3.15 E.3.10) a de-identifier keeps the
private attributes it knows to be safe from identity leakage, with the
Private Creator elements that define them, and removes every other private
attribute.  This module holds the standard's sample list of such attributes,
one a line, as read from a rendering of the standard's Table E.3.10-1 (the
edition of that rendering is not stated in it; later editions may add rows).
Meanings are shortened.

Columns of :data:`_TABLE`:

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
unsafe.  :mod:`mipflow.node.imaging.deidentify` therefore keeps a listed element only
when its creator and group match, its VR agrees with the table and its
values fit the listed multiplicity (numeric strings must be numbers), replaces
UIDs in kept elements with their keyed replacements, and applies the profile
inside kept sequences.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["SafePrivateRow", "safe_private_rows", "safe_private_keys"]


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


# TAG | CREATOR | VR | VM | MEANING
_TABLE = """
(7053,xx00) | Philips PET Private Group | DS | 1 | SUV factor
(7053,xx09) | Philips PET Private Group | DS | 1 | Activity concentration factor
(00E1,xx21) | ELSCINT1 | DS | 1 | DLP
(00E1,xx50) | ELSCINT1 | DS | 1 | Acquisition duration
(01E1,xx26) | ELSCINT1 | CS | 1 | Phantom type
(01F1,xx01) | ELSCINT1 | CS | 1 | Acquisition type
(01F1,xx07) | ELSCINT1 | DS | 1 | Table velocity
(01F1,xx26) | ELSCINT1 | DS | 1 | Pitch
(01F1,xx27) | ELSCINT1 | DS | 1 | Rotation time
(0019,xx23) | GEMS_ACQU_01 | DS | 1 | Table speed [mm/rotation]
(0019,xx24) | GEMS_ACQU_01 | DS | 1 | Mid scan time [sec]
(0019,xx27) | GEMS_ACQU_01 | DS | 1 | Rotation speed (gantry period)
(0019,xx9E) | GEMS_ACQU_01 | LO | 1 | Internal pulse sequence name
(0043,xx27) | GEMS_PARM_01 | SH | 1 | Scan pitch ratio "n.nnn:1"
(0045,xx01) | GEMS_HELIOS_01 | SS | 1 | Number of macro rows in detector
(0045,xx02) | GEMS_HELIOS_01 | FL | 1 | Macro width at ISO center
(0903,xx10) | GEIIS PACS | US | 1 | Reject image flag
(0903,xx11) | GEIIS PACS | US | 1 | Significant flag
(0903,xx12) | GEIIS PACS | US | 1 | Confidential flag
(2001,xx03) | Philips Imaging DD 001 | FL | 1 | Diffusion B-factor
(2001,xx04) | Philips Imaging DD 001 | CS | 1 | Diffusion direction
(0019,xx0C) | SIEMENS MR HEADER | IS | 1 | B value
(0019,xx0D) | SIEMENS MR HEADER | CS | 1 | Diffusion directionality
(0019,xx0E) | SIEMENS MR HEADER | FD | 3 | Diffusion gradient direction
(0019,xx27) | SIEMENS MR HEADER | FD | 6 | B matrix
(0043,xx39) | GEMS_PARM_01 | IS | 4 | 1st value is B value
(0043,xx6F) | GEMS_PARM_01 | DS | 3-4 | Scanner table entry + gradient coil selected
(0025,xx07) | GEMS_SERS_01 | SL | 1 | Images in series
(7E01,xx01) | HOLOGIC, Inc. | LO | 1 | Codec version
(7E01,xx02) | HOLOGIC, Inc. | SH | 1 | Codec content type
(7E01,xx10) | HOLOGIC, Inc. | SQ | 1 | High resolution data sequence
(7E01,xx11) | HOLOGIC, Inc. | SQ | 1 | Low resolution data sequence
(7E01,xx12) | HOLOGIC, Inc. | OB | 1 | Codec content
(0099,xx01) | NQHeader | UI | 1 | Version
(0099,xx02) | NQHeader | UI | 1 | Analyzed series UID
(0099,xx04) | NQHeader | SS | 1 | Return code
(0099,xx05) | NQHeader | LT | 1 | Return message
(0099,xx10) | NQHeader | FL | 1 | MI
(0099,xx20) | NQHeader | SH | 1 | Units
(0099,xx21) | NQHeader | FL | 1 | ICV
(0199,xx01) | NQLeft | FL | 1 | Left cortical white matter
(0199,xx02) | NQLeft | FL | 1 | Left cortical gray matter
(0199,xx03) | NQLeft | FL | 1 | Left 3rd ventricle
(0199,xx04) | NQLeft | FL | 1 | Left 4th ventricle
(0199,xx05) | NQLeft | FL | 1 | Left 5th ventricle
(0199,xx06) | NQLeft | FL | 1 | Left lateral ventricle
(0199,xx07) | NQLeft | FL | 1 | Left inferior lateral ventricle
(0199,xx08) | NQLeft | FL | 1 | Left inferior CSF
(0199,xx09) | NQLeft | FL | 1 | Left cerebellar white matter
(0199,xx0A) | NQLeft | FL | 1 | Left cerebellar gray matter
(0199,xx0B) | NQLeft | FL | 1 | Left hippocampus
(0199,xx0C) | NQLeft | FL | 1 | Left amygdala
(0199,xx0D) | NQLeft | FL | 1 | Left thalamus
(0199,xx0E) | NQLeft | FL | 1 | Left caudate
(0199,xx0F) | NQLeft | FL | 1 | Left putamen
(0199,xx10) | NQLeft | FL | 1 | Left pallidum
(0199,xx11) | NQLeft | FL | 1 | Left ventral diencephalon
(0199,xx12) | NQLeft | FL | 1 | Left nucleus accumbens
(0199,xx13) | NQLeft | FL | 1 | Left brain stem
(0199,xx14) | NQLeft | FL | 1 | Left exterior CSF
(0199,xx15) | NQLeft | FL | 1 | Left WM hypo
(0199,xx16) | NQLeft | FL | 1 | Left other
(0299,xx01) | NQRight | FL | 1 | Right cortical white matter
(0299,xx02) | NQRight | FL | 1 | Right cortical gray matter
(0299,xx03) | NQRight | FL | 1 | Right 3rd ventricle
(0299,xx04) | NQRight | FL | 1 | Right 4th ventricle
(0299,xx05) | NQRight | FL | 1 | Right 5th ventricle
(0299,xx06) | NQRight | FL | 1 | Right lateral ventricle
(0299,xx07) | NQRight | FL | 1 | Right inferior lateral ventricle
(0299,xx08) | NQRight | FL | 1 | Right inferior CSF
(0299,xx09) | NQRight | FL | 1 | Right cerebellar white matter
(0299,xx0A) | NQRight | FL | 1 | Right cerebellar gray matter
(0299,xx0B) | NQRight | FL | 1 | Right hippocampus
(0299,xx0C) | NQRight | FL | 1 | Right amygdala
(0299,xx0D) | NQRight | FL | 1 | Right thalamus
(0299,xx0E) | NQRight | FL | 1 | Right caudate
(0299,xx0F) | NQRight | FL | 1 | Right putamen
(0299,xx10) | NQRight | FL | 1 | Right pallidum
(0299,xx11) | NQRight | FL | 1 | Right ventral diencephalon
(0299,xx12) | NQRight | FL | 1 | Right nucleus accumbens
(0299,xx13) | NQRight | FL | 1 | Right brain stem
(0299,xx14) | NQRight | FL | 1 | Right exterior CSF
(0299,xx15) | NQRight | FL | 1 | Right WM hypo
(0299,xx16) | NQRight | FL | 1 | Right other
(2005,xx0D) | Philips MR Imaging DD 001 | FL | 1 | Scale intercept
(2005,xx0E) | Philips MR Imaging DD 001 | FL | 1 | Scale slope
(0119,xx00) | SIEMENS Ultrasound SC2000 | LO | 1 | Acoustic meta information version
(0119,xx01) | SIEMENS Ultrasound SC2000 | OB | 1 | Common acoustic meta information
(0119,xx02) | SIEMENS Ultrasound SC2000 | SQ | 1 | Multi stream sequence
(0119,xx03) | SIEMENS Ultrasound SC2000 | SQ | 1 | Acoustic data sequence
(0119,xx04) | SIEMENS Ultrasound SC2000 | OB | 1 | Per transaction acoustic control information
(0119,xx05) | SIEMENS Ultrasound SC2000 | UL | 1 | Acoustic data offset
(0119,xx06) | SIEMENS Ultrasound SC2000 | UL | 1 | Acoustic data length
(0119,xx07) | SIEMENS Ultrasound SC2000 | UL | 1 | Footer offset
(0119,xx08) | SIEMENS Ultrasound SC2000 | UL | 1 | Footer length
(0119,xx09) | SIEMENS Ultrasound SC2000 | SS | 1 | Acoustic stream number
(0119,xx10) | SIEMENS Ultrasound SC2000 | SH | 1 | Acoustic stream type
(0119,xx11) | SIEMENS Ultrasound SC2000 | - | 1 | Stage timer time
(0119,xx12) | SIEMENS Ultrasound SC2000 | - | 1 | Stop watch time
(0119,xx13) | SIEMENS Ultrasound SC2000 | IS | 1 | Volume rate
(0119,xx21) | SIEMENS Ultrasound SC2000 | SH | 1 | (no meaning given)
(0129,xx00) | SIEMENS Ultrasound SC2000 | SQ | 1 | MPR view sequence
(0129,xx02) | SIEMENS Ultrasound SC2000 | UI | 1 | Bookmark UID
(0129,xx03) | SIEMENS Ultrasound SC2000 | - | 1 | Plane origin vector
(0129,xx04) | SIEMENS Ultrasound SC2000 | - | 1 | Row vector
(0129,xx05) | SIEMENS Ultrasound SC2000 | - | 1 | Column vector
(0129,xx06) | SIEMENS Ultrasound SC2000 | SQ | 1 | Visualization sequence
(0129,xx07) | SIEMENS Ultrasound SC2000 | UI | 1 | Bookmark UID
(0129,xx08) | SIEMENS Ultrasound SC2000 | OB | 1 | Visualization information
(0129,xx09) | SIEMENS Ultrasound SC2000 | SQ | 1 | Application state sequence
(0129,xx10) | SIEMENS Ultrasound SC2000 | OB | 1 | Application state information
(0129,xx11) | SIEMENS Ultrasound SC2000 | SQ | 1 | Referenced bookmark sequence
(0129,xx12) | SIEMENS Ultrasound SC2000 | UI | 1 | Referenced bookmark UID
(0129,xx20) | SIEMENS Ultrasound SC2000 | SQ | 1 | Cine parameters sequence
(0129,xx21) | SIEMENS Ultrasound SC2000 | OB | 1 | Cine parameters schema
(0129,xx22) | SIEMENS Ultrasound SC2000 | OB | 1 | Values of cine parameters
(0129,xx29) | SIEMENS Ultrasound SC2000 | OB | 1 | (no meaning given)
(0129,xx30) | SIEMENS Ultrasound SC2000 | CS | 1 | Raw data object type
(0139,xx01) | SIEMENS Ultrasound SC2000 | SL | 1 | Physio capture ROI
(0149,xx01) | SIEMENS Ultrasound SC2000 | FD | 1-n | Vector of BROI points
(0149,xx02) | SIEMENS Ultrasound SC2000 | FD | 1-n | Start/end timestamps of strip stream
(0149,xx03) | SIEMENS Ultrasound SC2000 | FD | 1-n | Timestamps of visible R-waves
(7FD1,xx01) | SIEMENS Ultrasound SC2000 | OB | 1 | Acoustic image and footer data
(7FD1,xx09) | SIEMENS Ultrasound SC2000 | UI | 1 | Volume version ID
(7FD1,xx10) | SIEMENS Ultrasound SC2000 | OB | 1 | Volume payload
(7FD1,xx11) | SIEMENS Ultrasound SC2000 | OB | 1 | After payload
(7FD1,xx01) | SIEMENS SYNGO ULTRA-SOUND TOYON DATA STREAMING | OB | 1 | Padding
(7FD1,xx09) | SIEMENS SYNGO ULTRA-SOUND TOYON DATA STREAMING | UI | 1 | Version ID
(7FD1,xx10) | SIEMENS SYNGO ULTRA-SOUND TOYON DATA STREAMING | OB | 1 | Volume payload
(7FD1,xx11) | SIEMENS SYNGO ULTRA-SOUND TOYON DATA STREAMING | OB | 1 | After payload
"""


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
    return tuple(_parse(line) for line in _TABLE.strip().splitlines())


@lru_cache(maxsize=1)
def safe_private_keys() -> frozenset[tuple[int, str, int]]:
    """``(group, creator, element byte)`` of every row (the default allow-list)."""
    return frozenset(row.key for row in safe_private_rows())
