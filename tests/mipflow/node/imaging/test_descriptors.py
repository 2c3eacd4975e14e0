"""Clean Descriptors Option: identifying content injected into descriptions is
removed, ordinary clinical descriptions survive."""
from __future__ import annotations

import io

import pytest

from mipflow.node.home import NodeSettings
from mipflow.node.imaging.deidentify import Deidentifier
from mipflow.node.imaging.descriptors import DescriptorCleaner
from mipflow.node.imaging.options import DeidOptions, options_from_settings

from .conftest import KEY, inject_phi, read

NAME = "NGUYEN^LI^THI"
MRN = "PHIMRN4471"
BIRTH = "19230417"


def _patient():
    ds = read("CT_small.dcm")
    ds.PatientName = NAME
    ds.PatientID = MRN
    ds.PatientBirthDate = BIRTH
    ds.ReferringPhysicianName = "HAUSER^GREGOR"
    ds.InstitutionName = "Saint Wenceslas Hospital"
    return ds


# (description with identifying content, what must be gone, what is left)
CASES = [
    pytest.param("CT HEAD Li Nguyen", ["Li", "Nguyen"], "CT HEAD", id="name-parts-short"),
    pytest.param("nguyen, thi: brain mri", ["nguyen", "thi"], "brain mri", id="name-lower-case"),
    pytest.param("MRI brain MRN: PHIMRN4471", ["PHIMRN4471"], "MRI brain", id="own-id"),
    pytest.param("Brain 00123456 follow-up", ["00123456"], "Brain follow-up", id="unknown-id"),
    pytest.param("CT 2001-02-03 chest", ["2001-02-03"], "CT chest", id="iso-date"),
    pytest.param("chest 03/02/2001", ["03/02/2001"], "chest", id="slash-date"),
    pytest.param("chest 3.2.01 lat", ["3.2.01"], "chest lat", id="short-dotted-date"),
    pytest.param("Head 3 Feb 2001", ["Feb", "2001"], "Head", id="day-month-year"),
    pytest.param("Head February 3, 2001 axial", ["February", "2001"], "Head axial",
                 id="month-day-year"),
    pytest.param("Kopf 3. Februar 2001", ["Februar", "2001"], "Kopf", id="german-date"),
    pytest.param("tete 12 mars 2001", ["mars", "2001"], "tete", id="french-date"),
    pytest.param("Head 20010203", ["20010203"], "Head", id="compact-date"),
    pytest.param("Brain 1923 T2", ["1923"], "Brain T2", id="bare-year"),
    pytest.param("neck 10:30:15 sag", ["10:30"], "neck sag", id="time"),
    pytest.param("Head 17.04.1923", ["17.04.1923"], "Head", id="birth-date"),
    pytest.param("call +41 22 555 01 99 spine", ["555"], "call spine", id="phone-intl"),
    pytest.param("spine (555) 123-4567", ["123-4567"], "spine", id="phone-us"),
    pytest.param("knee j.doe@example.org", ["doe@"], "knee", id="email"),
    pytest.param("knee see www.hospital.example/x", ["hospital.example"], "knee see", id="url"),
    pytest.param("seen by Dr. Moser", ["Moser"], "seen by", id="title"),
    pytest.param("Herr Zgraggen CT", ["Zgraggen"], "CT", id="german-title"),
    pytest.param("DOB 1923-04-17 head", ["1923"], "head", id="label"),
    pytest.param("Referred by Hauser", ["Hauser"], "Referred by", id="physician"),
    pytest.param("Saint Wenceslas CT head", ["Wenceslas"], "CT head", id="institution"),
]


@pytest.mark.parametrize("text, gone, left", CASES)
def test_injected_identifiers_are_removed(text, gone, left):
    cleaner = DescriptorCleaner(_patient())
    out = cleaner(text)
    for value in gone:
        assert value.lower() not in out.lower(), (value, out)
    assert out == left


CLINICAL = [
    "CT HEAD W/O CONTRAST", "MR BRAIN T1 AX 3D", "DWI b1000 TRACE", "CHEST PA/LAT",
    "DR CHEST 2 VIEWS", "ABD/PELVIS W CONTRAST 5mm", "T2 FLAIR SAG 1.2 mm", "MS PROTOCOL T2",
    "Perfusion CBF 512 x 512", "CTA Circle of Willis", "Stroke protocol NIHSS 12",
]


@pytest.mark.parametrize("text", CLINICAL)
def test_clinical_descriptions_survive(text):
    assert DescriptorCleaner(_patient())(text) == text


def test_deny_and_allow_lists():
    ds = _patient()
    assert DescriptorCleaner(ds, deny_words={"VIP", "ward7"})("VIP head ct Ward7") == "head ct"
    allow = {"ct", "head", "w/o", "contrast", "brain"}
    strict = DescriptorCleaner(ds, allow_words=allow)
    assert strict("CT HEAD W/O CONTRAST Smithers 5mm") == "CT HEAD W/O CONTRAST 5mm"
    assert strict("Gruenspan-Oberholzer") == ""
    assert "nguyen" not in repr(strict).lower()


@pytest.mark.parametrize("deny, allow", [((), None), (("vip",), None),
                                         ((), ("ct", "head", "w/o", "contrast", "axial"))])
def test_engine_keeps_cleaned_descriptions_without_injected_values(deny, allow):
    ds = inject_phi(read("CT_small.dcm"))
    ds.StudyDescription = "CT HEAD W/O CONTRAST PHIDOE 17.04.1923 PHIACC4471"
    ds.SeriesDescription = "Axial JOHNATHAN call 079 555 01 99 VIP"
    ds.ImageComments = "PHIMRN998877 phidoe@example.org 20010203"
    options = DeidOptions(clean_descriptors=True, descriptor_deny_words=frozenset(deny),
                          descriptor_allow_words=None if allow is None else frozenset(allow))
    outcome = Deidentifier(KEY, options).dataset(ds)
    assert outcome.ok
    out = outcome.dataset
    assert out.StudyDescription == "CT HEAD W/O CONTRAST"
    assert out.SeriesDescription == ("Axial call VIP" if not deny and allow is None
                                     else "Axial call" if allow is None else "Axial")
    assert "ImageComments" not in out                      # nothing left: removed
    buf = io.BytesIO()
    out.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    for value in ("PHIDOE", "JOHNATHAN", "1923", "PHIACC4471", "555 01 99", "PHIMRN998877",
                  "example.org"):
        assert value.encode() not in data, value
    assert "113105" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_node_settings_carry_the_word_lists():
    settings = NodeSettings().with_value("dicom_clean_descriptors", "1") \
        .with_value("dicom_descriptor_deny_words", "VIP, Ward7") \
        .with_value("dicom_descriptor_allow_words", "")
    options = options_from_settings(settings)
    assert options.clean_descriptors and options.descriptor_deny_words == {"vip", "ward7"}
    assert options.descriptor_allow_words is None
    strict = options_from_settings(settings.with_value("dicom_descriptor_allow_words", "ct,head"))
    assert strict.descriptor_allow_words == {"ct", "head"}
