"""The three demo hospitals' local export formats: column names, codes, date formats, identifier
schemes and the free-text templates of their notes (:mod:`mipflow.demo.synth` fills them).

Their source profiles (``include/schemas/profiles/<hospital>.json``) map these formats onto the
``stroke:0.1`` data model; everything here is invented.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

HOSPITALS: tuple[str, ...] = ("hospital_a", "hospital_b", "hospital_c")

#: Internal field names, in export order.  Each layout names the local column
#: of the fields it exports (a field a hospital does not export is left out).
FIELDS = (
    "mrn", "visit", "first_name", "last_name", "street", "city", "postcode", "phone",
    "email", "national_id", "birth_date", "admission_date", "sex", "stroke_type", "nihss",
    "onset", "sbp", "glucose", "af", "diabetes", "hypertension", "thrombolysis",
    "thrombectomy", "dtn", "mrs", "death", "last_contact", "ward", "notes",
)


@dataclass(frozen=True)
class Layout:
    locale: str
    date_format: str
    mrn_prefix: str
    mrn_digits: int
    mrn_base: int
    visit_prefix: str
    national_id: str  # "nhs", "kvnr" or "ssn"
    columns: Mapping[str, str]
    sex: Mapping[str, str]  # "M"/"F" -> local code
    stroke_type: Mapping[str, str]  # CDE code -> local code
    yes_no: Mapping[str, str]  # "yes"/"no" -> local code
    unknown_sex: str
    wards: tuple[str, ...]
    #: Hospital-level differences in case mix and care (log-odds / years).
    age_shift: float = 0.0
    diabetes_rate: float = 0.25
    thrombectomy_shift: float = 0.0
    dtn_median: float = 45.0
    email_missing: float = 0.35
    notes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


LAYOUTS: dict[str, Layout] = {
    # English column names, CDE-like codes, ISO dates, NHS number.
    "hospital_a": Layout(
        locale="en_GB",
        date_format="%Y-%m-%d",
        mrn_prefix="A",
        mrn_digits=7,
        mrn_base=0,
        visit_prefix="ENC",
        national_id="nhs",
        columns={
            "mrn": "mrn", "visit": "encounter_id", "first_name": "first_name",
            "last_name": "last_name", "street": "address_line1", "city": "town",
            "postcode": "postcode", "phone": "phone", "email": "email",
            "national_id": "nhs_number", "birth_date": "date_of_birth",
            "admission_date": "admission_date", "sex": "sex", "stroke_type": "stroke_type",
            "nihss": "nihss_on_admission", "onset": "onset_to_arrival_min",
            "sbp": "sbp_admission", "glucose": "glucose_admission_mmol",
            "af": "atrial_fibrillation", "diabetes": "diabetes",
            "hypertension": "hypertension", "thrombolysis": "iv_thrombolysis",
            "thrombectomy": "mechanical_thrombectomy", "dtn": "door_to_needle_min",
            "mrs": "mrs_day90", "death": "died_within_90d",
            "last_contact": "last_contact_date", "ward": "ward", "notes": "clinical_notes",
        },
        sex={"M": "M", "F": "F"},
        stroke_type={"ischaemic": "Ischaemic", "haemorrhagic": "Haemorrhagic", "tia": "TIA"},
        yes_no={"yes": "yes", "no": "no"},
        unknown_sex="U",
        wards=("Hyperacute Stroke Unit", "Stroke Rehab", "Acute Medical Unit", "Neuro ITU"),
        notes={
            "intro": ("Pt ", "", "Patient ", "Seen: "),
            "verb": (" admitted with ", " presented with ", " brought in by ambulance with ",
                     ", referred by GP with "),
            "symptom": ("left-sided weakness", "right arm weakness and dysphasia",
                        "facial droop, slurred speech", "sudden severe headache",
                        "visual field loss", "unsteadiness and vertigo", "confusion"),
            "contact": ("NOK: wife ", "Daughter ", "Son ", "Husband ", "Contact: partner "),
            "contact_sex": ("F", "F", "M", "M", ""),
            "informed": (" informed.",),
            "tail": ("", " CT head done.", ' Family say "was fine at breakfast".',
                     " For SALT assessment, then OT.", " Discussed with Dr "),
        },
    ),
    # German column names, m/w and ja/nein codes, dd.mm.yyyy dates, KVNR.
    "hospital_b": Layout(
        locale="de_DE",
        date_format="%d.%m.%Y",
        mrn_prefix="",
        mrn_digits=8,
        mrn_base=40_000_000,
        visit_prefix="F",
        national_id="kvnr",
        columns={
            "mrn": "pat_nr", "visit": "fall_nr", "first_name": "vorname",
            "last_name": "nachname", "street": "strasse", "city": "ort", "postcode": "plz",
            "phone": "telefon", "national_id": "versichertennummer",
            "birth_date": "geburtsdatum", "admission_date": "aufnahmedatum",
            "sex": "geschlecht", "stroke_type": "diagnose_typ", "nihss": "NIHSS_Aufnahme",
            "onset": "symptombeginn_bis_aufnahme_min", "sbp": "RR_systolisch",
            "glucose": "blutzucker_mmol_l", "af": "vorhofflimmern", "diabetes": "diabetes",
            "hypertension": "hypertonie", "thrombolysis": "lyse",
            "thrombectomy": "thrombektomie", "dtn": "tuer_nadel_zeit_min",
            "mrs": "mRS_Tag90", "death": "verstorben_90d",
            "last_contact": "letzter_kontakt", "ward": "station", "notes": "arztbrief_freitext",
        },
        sex={"M": "m", "F": "w"},
        stroke_type={"ischaemic": "Hirninfarkt", "haemorrhagic": "Hirnblutung", "tia": "TIA"},
        yes_no={"yes": "ja", "no": "nein"},
        unknown_sex="d",
        wards=("Stroke Unit", "Neurologie 2", "Intensivstation", "Neurologie 3"),
        thrombectomy_shift=0.8,
        dtn_median=35.0,
        notes={
            "intro": ("Pat. ", "", "Patient/in ", "Aufnahme von "),
            "verb": (" mit ", ", eingeliefert mit ", " (Notarzt) mit ", ", zugewiesen mit "),
            "symptom": ("Hemiparese links", "Hemiparese rechts und Aphasie",
                        "Dysarthrie, Fazialisparese", "akutem Kopfschmerz",
                        "Sehstörung", "Schwindel und Gangunsicherheit", "Verwirrtheit"),
            "contact": ("Ehefrau ", "Tochter ", "Sohn ", "Ehemann ", "Angehörige/r: "),
            "contact_sex": ("F", "F", "M", "M", ""),
            "informed": (" informiert.",),
            "tail": ("", " CCT durchgeführt.", ' Laut Familie "heute früh noch unauffällig".',
                     " Logopädie, Physiotherapie angemeldet.", " Rücksprache mit Dr. "),
        },
    ),
    # Upper-case column names, numeric codes, US dates, SSN.
    "hospital_c": Layout(
        locale="en_US",
        date_format="%m/%d/%Y",
        mrn_prefix="",
        mrn_digits=9,
        mrn_base=100_000_000,
        visit_prefix="V",
        national_id="ssn",
        columns={
            "mrn": "MRN", "visit": "VISIT_NO", "first_name": "PT_FIRST_NAME",
            "last_name": "PT_LAST_NAME", "street": "ADDRESS", "city": "CITY",
            "postcode": "ZIP", "phone": "PHONE", "email": "EMAIL", "national_id": "SSN",
            "birth_date": "DOB", "admission_date": "ADMIT_DT", "sex": "SEX",
            "stroke_type": "STROKE_TYPE", "nihss": "NIHSS_ADM", "onset": "ONSET_ARRIVAL_MIN",
            "sbp": "SBP", "glucose": "GLUCOSE_MMOL", "af": "HX_AFIB", "diabetes": "HX_DM",
            "hypertension": "HX_HTN", "thrombolysis": "IV_TPA", "thrombectomy": "EVT",
            "dtn": "DTN_MIN", "mrs": "MRS_90", "death": "DEATH_90",
            "last_contact": "LAST_FU_DT", "ward": "PAYER", "notes": "NOTE_TEXT",
        },
        sex={"M": "1", "F": "2"},
        stroke_type={"ischaemic": "1", "haemorrhagic": "2", "tia": "3"},
        yes_no={"yes": "1", "no": "0"},
        unknown_sex="9",
        wards=("Medicare", "Medicaid", "Commercial", "Self-pay"),
        age_shift=3.0,
        diabetes_rate=0.33,
        email_missing=0.45,
        notes={
            "intro": ("Pt ", "", "Patient ", "ED note: "),
            "verb": (" presented with ", " arrived by EMS with ", " c/o ", ", transferred with "),
            "symptom": ("L-sided weakness", "R arm weakness and aphasia",
                        "facial droop, slurred speech", "thunderclap headache",
                        "vision loss", "dizziness and ataxia", "AMS"),
            "contact": ("Wife ", "Daughter ", "Son ", "Husband ", "Emergency contact: "),
            "contact_sex": ("F", "F", "M", "M", ""),
            "informed": (" notified.",),
            "tail": ("", " CTA ordered.", ' Per family "was fine at dinner", LKW unclear.',
                     " PT/OT consult.", " Discussed with Dr "),
        },
    ),
}


def layout_of(hospital: str) -> Layout:
    try:
        return LAYOUTS[hospital]
    except KeyError:
        raise ValueError(f"unknown hospital {hospital!r}; expected one of {HOSPITALS}") from None


def patient_id_column(hospital: str) -> str:
    """Local column that holds the medical record number in ``hospital``'s export."""
    return layout_of(hospital).columns["mrn"]


def export_columns(hospital: str) -> list[str]:
    """Local columns of ``hospital``'s export, in order."""
    cols = layout_of(hospital).columns
    return [cols[f] for f in FIELDS if f in cols]
