"""Property test: random identifying values in random attributes never survive.

Hypothesis picks text attributes that Table E.1-1 removes, empties or
replaces, puts random distinctive values into them (at the top level, inside
a sequence the profile keeps, and in private elements), and checks that none
of the values is found in the bytes of the de-identified file.
"""
from __future__ import annotations

import copy
import io

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mipflow.node.imaging.deidentify import Deidentifier
from mipflow.node.imaging.options import DeidOptions
from mipflow.node.imaging.plan import resolve_action
from mipflow.node.imaging.profile_table import exact_rows

from .conftest import KEY, read

# VR -> longest value it holds.
TEXT_VRS = {"LO": 64, "SH": 16, "PN": 64, "LT": 200, "ST": 200, "UT": 200, "UC": 200}

OPTIONS = [
    DeidOptions(),
    DeidOptions(retain_longitudinal_modified_dates=True),
    DeidOptions(retain_longitudinal_modified_dates=True, clean_descriptors=True),
]


def _candidate_tags(options: DeidOptions) -> list[tuple[int, str]]:
    """Listed text attributes the profile does not keep under ``options``.

    Attributes that are cleaned (``C``, e.g. descriptions under Clean
    Descriptors) are left out: cleaning removes the identifying values the
    instance holds elsewhere, not arbitrary text (see the second test).
    """
    out = []
    for tag, row in exact_rows().items():
        entry = DicomDictionary.get(tag)
        if entry is None or tag in (0x00100020,):
            continue
        vr = entry[0]
        if vr not in TEXT_VRS:
            continue
        action, _ = resolve_action(row, options.columns)
        if action in ("K", "C"):
            continue
        out.append((tag, vr))
    return out


CANDIDATES = [_candidate_tags(o) for o in OPTIONS]

# Distinctive values: a fixed marker no DICOM file or dummy contains, then
# random letters and digits (no spaces: cleaning splits on them).
phi_value = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=6, max_size=10).map(
    lambda s: "QX" + s
)


@st.composite
def injections(draw):
    which = draw(st.integers(0, len(OPTIONS) - 1))
    tags = draw(st.lists(st.sampled_from(CANDIDATES[which]), min_size=1, max_size=12,
                         unique_by=lambda t: t[0]))
    values = draw(st.lists(phi_value, min_size=len(tags), max_size=len(tags), unique=True))
    nested = draw(st.booleans())
    private = draw(phi_value)
    return which, list(zip(tags, values)), nested, private


@pytest.fixture(scope="module")
def template() -> Dataset:
    return read("CT_small.dcm")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=injections())
def test_random_phi_never_survives(case, template):
    which, injected, nested, private = case
    ds = copy.deepcopy(template)
    target = ds
    if nested:
        item = Dataset()
        item.CodeMeaning = "kept item"
        ds.ProcedureCodeSequence = Sequence([item])   # unlisted: kept and cleaned inside
        target = item
    for (tag, vr), value in injected:
        target.add_new(tag, vr, value[: TEXT_VRS[vr]])
    ds.add_new(0x00290010, "LO", "QXCREATOR")
    ds.add_new(0x00291010, "LO", private)

    outcome = Deidentifier(KEY, OPTIONS[which]).dataset(ds)
    assert outcome.ok, (outcome.reason, outcome.detail)
    buf = io.BytesIO()
    outcome.dataset.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    for (_, vr), value in injected:
        assert value[: TEXT_VRS[vr]].encode() not in data, (vr, value)
    assert private.encode() not in data
    assert b"QXCREATOR" not in data
    pydicom.dcmread(io.BytesIO(data))   # and it is still DICOM


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(family=phi_value, given_name=phi_value, mrn=phi_value,
       words=st.lists(st.sampled_from(["head", "T1", "axial", "contrast", "3D", "thin"]),
                      min_size=1, max_size=2),
       where=st.sampled_from(["SeriesDescription", "StudyDescription", "ImageComments",
                              "AcquisitionDeviceProcessingDescription"]))
def test_cleaned_descriptors_lose_the_instance_identifiers(family, given_name, mrn, words, where,
                                                           template):
    ds = copy.deepcopy(template)
    ds.PatientName = f"{family}^{given_name}"
    ds.OtherPatientIDs = mrn
    text = " ".join([*words[:1], family.lower(), mrn, given_name.title(), *words[1:]])
    setattr(ds, where, text)
    outcome = Deidentifier(KEY, DeidOptions(clean_descriptors=True)).dataset(ds)
    assert outcome.ok
    kept = str(outcome.dataset.get(where, ""))
    for value in (family, given_name, mrn):
        assert value.lower() not in kept.lower()
    assert kept.split() == words          # the rest of the description is kept
