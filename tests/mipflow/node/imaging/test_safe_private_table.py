"""Retain Safe Private Option (PS3.15 E.3.10): only the private attributes of
Table E.3.10-1 survive, and only under the Private Creator, group and VR the
table gives.  Inputs are pydicom's CT_small (which carries GE private blocks)
with safe and unsafe private elements added here."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mipflow.node.imaging.deidentify import Deidentifier, deidentify_file
from mipflow.node.imaging.options import DeidOptions
from mipflow.node.imaging.safe_private_table import safe_private_keys, safe_private_rows

from .conftest import KEY, read

PHI_UNSAFE = "PHIUNSAFE^MARY"
PHI_WRONG_CREATOR = "4711"
PHI_IN_SEQUENCE = "PHISEQNAME^OLGA"
ANALYZED_UID = "1.2.999.4711.55"


def _with_private_blocks() -> Dataset:
    """CT_small plus safe and unsafe private elements (explicit VRs)."""
    ds = read("CT_small.dcm")
    # SIEMENS MR HEADER in block 0x11 of group 0019 (GE's GEMS_ACQU_01 holds block 0x10)
    ds.add_new(0x00190011, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0019110C, "IS", "1000")                  # B value: listed
    ds.add_new(0x0019110D, "CS", "DIRECTIONAL")           # listed
    ds.add_new(0x00191108, "LO", PHI_UNSAFE)              # same block, not listed
    # the right element byte under a creator that is not the listed one
    ds.add_new(0x00190012, "LO", "SIEMENS MR HEADER 2")
    ds.add_new(0x0019120C, "IS", PHI_WRONG_CREATOR)
    # the listed creator and byte in a group the table does not list it in
    ds.add_new(0x00210011, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0021110C, "IS", "4712")
    # a listed element whose VR disagrees with the table (SH listed, LO here)
    ds.add_new(0x00450010, "LO", "GEMS_HELIOS_01")
    ds.add_new(0x00451001, "LO", "PHIVRMISMATCH")         # listed as SS
    # a listed UID and a listed text element
    ds.add_new(0x00990010, "LO", "NQHeader")
    ds.add_new(0x00991002, "UI", ANALYZED_UID)
    ds.add_new(0x00991020, "SH", "ml")
    # a listed private sequence whose items hold a name and an unlisted private element
    item = Dataset()
    item.PatientName = PHI_IN_SEQUENCE
    item.Rows = 4
    item.add_new(0x00330010, "LO", "PHIPRIVCREATOR")
    item.add_new(0x00331001, "LO", PHI_UNSAFE)
    ds.add_new(0x7E010010, "LO", "HOLOGIC, Inc.")
    ds.add_new(0x7E011010, "SQ", Sequence([item]))
    # a block with nothing listed: creator and element go
    ds.add_new(0x00550010, "LO", "PHICREATOR")
    ds.add_new(0x00551001, "LO", PHI_UNSAFE)
    return ds


def _listed(ds: Dataset) -> set[int]:
    """Tags of ``ds`` (top level) whose (group, creator, byte) the table lists with the same VR."""
    vr_of = {row.key: row.vr for row in safe_private_rows()}
    out = set()
    for elem in ds:
        if elem.tag.is_private and not elem.tag.is_private_creator:
            key = (elem.tag.group, elem.private_creator, elem.tag.element & 0xFF)
            if key in vr_of and vr_of[key] in (None, elem.VR):
                out.add(int(elem.tag))
    return out


def _text(value: object) -> str:
    """A value as text (an implicit-VR re-read leaves unknown private values as bytes)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip(" \0")


def _private(ds: Dataset) -> dict[int, object]:
    return {int(e.tag): e.value for e in ds if e.tag.is_private}


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                         ids=["explicit", "implicit"])
def test_safe_private_option_on_and_off(syntax, tmp_path):
    src = tmp_path / "in.dcm"
    ds = _with_private_blocks()
    expected = _listed(ds)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(src, enforce_file_format=True)
    raw = src.read_bytes()
    assert PHI_UNSAFE.encode() in raw and PHI_WRONG_CREATOR.encode() in raw

    off = tmp_path / "off.dcm"
    assert deidentify_file(src, off, key=KEY).ok
    out = pydicom.dcmread(off)
    assert _private(out) == {}
    for value in (PHI_UNSAFE, PHI_WRONG_CREATOR, "4712", "PHIVRMISMATCH", ANALYZED_UID,
                  PHI_IN_SEQUENCE, "HOLOGIC", "NQHeader"):
        assert value.encode() not in off.read_bytes(), value

    on = tmp_path / "on.dcm"
    engine = Deidentifier(KEY, DeidOptions(retain_safe_private=True))
    outcome = engine.file(src, on)
    assert outcome.ok, (outcome.reason, outcome.detail)
    data = on.read_bytes()
    out = pydicom.dcmread(on)
    kept = _private(out)
    creators = {t for t in kept if 0x10 <= t & 0xFFFF <= 0xFF}
    # exactly the listed elements (the GE ones CT_small carries and those added), with
    # the creators of their blocks
    assert set(kept) - creators == expected
    assert {0x00191023, 0x00191024, 0x00191027, 0x00251007, 0x00431027, 0x0019110C,
            0x0019110D, 0x00991002, 0x00991020, 0x7E011010} <= expected
    assert {(t >> 16, t & 0xFF) for t in creators} == {
        (t >> 16, (t & 0xFF00) >> 8) for t in expected}
    assert _text(out[0x0019110C].value) == "1000"
    assert _text(out[0x0019110D].value) == "DIRECTIONAL"
    assert _text(out[0x00431027].value) == "/1.0:1"
    # the UID is replaced like any other instance UID
    assert _text(out[0x00991002].value) == engine.new_uid(ANALYZED_UID) != ANALYZED_UID
    # inside the kept sequence the profile applies: the name is emptied, private removed
    inner = out[0x7E011010].value[0]
    assert inner.Rows == 4 and not str(inner.get("PatientName", ""))
    assert not any(e.tag.is_private for e in inner)
    for value in (PHI_UNSAFE, PHI_WRONG_CREATOR, "4712", "PHIVRMISMATCH", ANALYZED_UID,
                  PHI_IN_SEQUENCE, "PHICREATOR", "SIEMENS MR HEADER 2", "GEMS_IDEN_01", "CT01"):
        assert value.encode() not in data, value
    assert "113111" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_unknown_vr_is_decoded_with_the_listed_vr():
    ds = read("CT_small.dcm")
    ds.add_new(0x00990010, "LO", "NQHeader")
    ds.add_new(0x00991010, "UN", b"\x00\x00\xc0\x3f")          # FL 1.5, as read without a dictionary
    ds.add_new(0x00991005, "UN", b"see PHIDOE^JOHN ")          # LT: a text value, scrubbed
    ds.PatientName = "PHIDOE^JOHN"
    out = Deidentifier(KEY, DeidOptions(retain_safe_private=True, clean_descriptors=True)).dataset(ds)
    assert out.ok
    elem = out.dataset[0x00991010]
    assert elem.VR == "FL" and elem.value == pytest.approx(1.5)
    assert out.dataset[0x00991005].VR == "LT" and out.dataset[0x00991005].value == "see"


def test_an_empty_allow_list_keeps_no_private_element():
    out = Deidentifier(KEY, DeidOptions(retain_safe_private=True, safe_private=frozenset())) \
        .dataset(_with_private_blocks())
    assert out.ok and _private(out.dataset) == {}


def test_the_table_is_well_formed():
    rows = safe_private_rows()
    assert len(rows) == len(safe_private_keys())                # no duplicate (group, creator, byte)
    assert all(r.group & 1 and 0 <= r.element <= 0xFF and r.creator for r in rows)
    creators = {r.creator for r in rows}
    assert {"GEMS_ACQU_01", "SIEMENS MR HEADER", "Philips PET Private Group", "ELSCINT1"} <= creators
    # the same creator may reserve blocks in several groups: the group is part of the key
    assert {r.group for r in rows if r.creator == "ELSCINT1"} == {0x00E1, 0x01E1, 0x01F1}
