"""The stroke demo data model, the hospitals' source profiles and the export generator."""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mipflow.demo import formats, synth
from mipflow.protocol.datamodel import DataModel, load_data_model

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = REPO_ROOT / "include" / "schemas"
MODEL_PATH = SCHEMAS / "stroke_v_0_1" / "CDEsMetadata.json"
PROFILES = SCHEMAS / "profiles"

YES_NO = ("yes", "no")
#: code -> (sql_type, categorical, enumeration codes, min, max)
EXPECTED = {
    "dataset": ("text", True, formats.HOSPITALS, None, None),
    "subjectcode": ("text", False, (), None, None),
    "visitid": ("text", False, (), None, None),
    "age": ("real", False, (), 18, 90),
    "sex": ("text", True, ("M", "F"), None, None),
    "zip3": ("text", False, (), None, None),
    "stroke_type": ("text", True, ("ischaemic", "haemorrhagic", "tia"), None, None),
    "nihss_admission": ("int", False, (), 0, 42),
    "onset_to_door_min": ("int", False, (), 0, 1440),
    "systolic_bp": ("int", False, (), 60, 300),
    "glucose_mmol": ("real", False, (), 1, 40),
    "atrial_fibrillation": ("text", True, YES_NO, None, None),
    "diabetes": ("text", True, YES_NO, None, None),
    "hypertension": ("text", True, YES_NO, None, None),
    "thrombolysis": ("text", True, YES_NO, None, None),
    "thrombectomy": ("text", True, YES_NO, None, None),
    "door_to_needle_min": ("int", False, (), 0, 600),
    "mrs_90d": ("int", False, (), 0, 6),
    "death_90d": ("text", True, YES_NO, None, None),
    "followup_days": ("int", False, (), 0, 3650),
}


@pytest.fixture(scope="module")
def model() -> DataModel:
    return load_data_model(MODEL_PATH)


def _profile(hospital: str) -> dict:
    return json.loads((PROFILES / f"{hospital}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def exports() -> dict[str, pd.DataFrame]:
    """A clean and a dirty export per hospital, shared by several tests."""
    return {h: synth.generate_export(h, 2000, seed=11, bad_rows=14) for h in formats.HOSPITALS}


# ---------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------

def test_stroke_model_loads_with_expected_variables(model):
    assert model.key == "stroke:0.1"
    assert set(model.variables) == set(EXPECTED)
    assert model.dataset_codes == formats.HOSPITALS
    for code, (sql_type, categorical, enums, lo, hi) in EXPECTED.items():
        var = model.variable(code)
        assert var.sql_type == sql_type, code
        assert var.is_categorical is categorical, code
        assert set(var.enumeration_codes) == set(enums), code
        assert var.min_value == lo and var.max_value == hi, code


def test_stroke_model_variables_are_documented(model):
    def walk(group):
        yield from group.get("variables", [])
        for sub in group.get("groups", []):
            assert sub["code"] and sub["label"]
            yield from walk(sub)

    raw = list(walk(json.loads(MODEL_PATH.read_text(encoding="utf-8"))))
    assert len(raw) == len(EXPECTED)
    type_of = {"int": "integer", "real": "real", "text": "text"}
    for var in raw:
        assert var["methodology"] == "mipflow-demo"
        assert var["label"] and var["description"], var["code"]
        assert "units" in var
        expected_type = "nominal" if var["isCategorical"] else type_of[var["sql_type"]]
        assert var["type"] == expected_type, var["code"]
        for item in var.get("enumerations", []):
            assert item["label"]
    assert model.variable("age").units == "years"
    assert model.variable("systolic_bp").units == "mmHg"


# ---------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("hospital", formats.HOSPITALS)
def test_profile_has_the_documented_shape(hospital):
    profile = _profile(hospital)
    assert set(profile) <= {"source", "data_model", "dataset", "visit", "deid", "harmonise"}
    assert profile["source"] == hospital
    assert profile["data_model"] == "stroke:0.1"
    dataset = profile["dataset"]
    assert len(dataset) == 1 and set(dataset) <= {"value", "column"}
    assert dataset.get("value", hospital) == hospital
    if "visit" in profile:
        assert set(profile["visit"]) == {"column"}

    deid = profile["deid"]
    assert set(deid) == {"patient_id", "direct_identifiers", "free_text", "date_format",
                         "dates", "quasi_identifiers"}
    assert deid["patient_id"] == formats.patient_id_column(hospital)
    assert all(isinstance(c, str) for c in deid["direct_identifiers"] + deid["free_text"])
    datetime.strptime(datetime(2020, 1, 31).strftime(deid["date_format"]), deid["date_format"])
    actions = {}
    for spec in deid["dates"]:
        actions[spec["action"]] = spec
        if spec["action"] in ("age", "days_since"):
            assert {"column", "reference", "output"} <= set(spec)
        else:
            assert spec["action"] == "drop"
    assert actions["age"]["output"] == "age" and actions["age"]["top_code"] == 90
    assert actions["days_since"]["output"] == "followup_days"
    # The reference date itself does not leave the hospital.
    assert actions["drop"]["column"] == actions["age"]["reference"]
    (quasi,) = deid["quasi_identifiers"]
    assert quasi == {"column": quasi["column"], "action": "truncate", "keep": 3, "output": "zip3"}

    harmonise = profile["harmonise"]
    assert set(harmonise) == {"columns", "values", "drop"}
    assert isinstance(harmonise["drop"], list)


@pytest.mark.parametrize("hospital", formats.HOSPITALS)
def test_profile_targets_are_in_the_stroke_model(model, hospital):
    harmonise = _profile(hospital)["harmonise"]
    targets = list(harmonise["columns"].values())
    assert len(targets) == len(set(targets)), "two local columns map to one variable"
    for target in targets:
        assert target in model, target
    for code, mapping in harmonise["values"].items():
        var = model.variable(code)
        assert var.is_categorical, code
        assert code in targets, f"values for {code} but no column maps to it"
        for local, cde in mapping.items():
            assert isinstance(local, str)
            assert cde in var.enumeration_codes, (code, local, cde)
    # Together with deid outputs, dataset and visit, the profile fills the whole model.
    derived = {"age", "followup_days", "zip3", "subjectcode", "dataset", "visitid"}
    assert set(targets) | derived == set(model.variables)


@pytest.mark.parametrize("hospital", formats.HOSPITALS)
def test_every_export_column_is_handled_exactly_once(exports, hospital):
    profile = _profile(hospital)
    deid, harmonise = profile["deid"], profile["harmonise"]
    handled = (
        [deid["patient_id"]]
        + deid["direct_identifiers"]
        + deid["free_text"]
        + [spec["column"] for spec in deid["dates"]]
        + [spec["column"] for spec in deid["quasi_identifiers"]]
        + list(harmonise["columns"])
        + harmonise["drop"]
        + [profile[k]["column"] for k in ("dataset", "visit") if "column" in profile.get(k, {})]
    )
    assert len(handled) == len(set(handled)), "a column is handled twice"
    columns = list(exports[hospital].columns)
    assert set(columns) == set(handled)
    assert columns == formats.export_columns(hospital)


def _harmonised(frame: pd.DataFrame, profile: dict) -> pd.DataFrame:
    """A minimal stand-in for the deid + harmonise stages, enough to check codings."""
    deid, harmonise = profile["deid"], profile["harmonise"]
    fmt = deid["date_format"]
    out = pd.DataFrame(index=frame.index)

    def parse(col):
        return pd.to_datetime(frame[col].replace("", None), format=fmt)

    for spec in deid["dates"]:
        if spec["action"] == "age":
            born, ref = parse(spec["column"]), parse(spec["reference"])
            before = (ref.dt.month < born.dt.month) | (
                (ref.dt.month == born.dt.month) & (ref.dt.day < born.dt.day))
            age = ref.dt.year - born.dt.year - before.astype(int)
            out["age"] = age.clip(upper=spec["top_code"])
        elif spec["action"] == "days_since":
            out[spec["output"]] = (parse(spec["column"]) - parse(spec["reference"])).dt.days
    for spec in deid["quasi_identifiers"]:
        out[spec["output"]] = frame[spec["column"]].str.slice(0, spec["keep"])
    for local, code in harmonise["columns"].items():
        mapping = harmonise["values"].get(code, {})
        out[code] = frame[local].map(lambda v, m=mapping: m.get(v, v))
    return out


@pytest.mark.parametrize("hospital", formats.HOSPITALS)
def test_good_rows_conform_to_the_model_after_harmonisation(model, exports, hospital):
    frame = exports[hospital].iloc[:2000]
    out = _harmonised(frame, _profile(hospital))
    for code in out.columns:
        var = model.variable(code)
        values = out[code]
        present = values[values.notna() & (values.astype(str) != "")]
        # Door-to-needle exists only for the ~20% who were thrombolysed.
        floor = 0.1 if code == "door_to_needle_min" else 0.7
        assert len(present) > floor * len(frame), f"{code} is mostly missing"
        if var.is_categorical:
            assert set(present) <= set(var.enumeration_codes), code
        elif var.sql_type in ("int", "real"):
            numbers = pd.to_numeric(present, errors="raise")
            if var.sql_type == "int":
                assert (numbers == numbers.round()).all(), code
            assert numbers.min() >= var.min_value and numbers.max() <= var.max_value, code
    # Top coding has something to do: some patients are older than 90.
    assert (out["age"] == 90).any()
    assert out["zip3"].str.len().max() == 3


# ---------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("hospital", formats.HOSPITALS)
def test_export_is_deterministic_and_all_strings(hospital):
    a = synth.generate_export(hospital, 300, seed=5, bad_rows=7)
    b = synth.generate_export(hospital, 300, seed=5, bad_rows=7)
    pd.testing.assert_frame_equal(a, b)
    c = synth.generate_export(hospital, 300, seed=6, bad_rows=7)
    assert not a.equals(c)
    assert all(isinstance(v, str) for col in a.columns for v in a[col])


def test_mrns_follow_start_mrn_and_are_unique():
    first = synth.generate_export("hospital_b", 500, seed=1)
    second = synth.generate_export("hospital_b", 500, seed=2, start_mrn=501)
    col = formats.patient_id_column("hospital_b")
    assert first[col].is_unique and second[col].is_unique
    assert not set(first[col]) & set(second[col])
    visits = formats.export_columns("hospital_b")[1]
    assert not set(first[visits]) & set(second[visits])


def test_unknown_hospital_is_rejected():
    with pytest.raises(ValueError, match="unknown hospital"):
        synth.generate_export("hospital_z", 10, seed=1)


@pytest.mark.parametrize("hospital", formats.HOSPITALS)
def test_bad_rows_are_appended_and_each_is_broken(model, exports, hospital):
    frame = exports[hospital]
    profile = _profile(hospital)
    n_good, n_bad = 2000, 14
    assert len(frame) == n_good + n_bad
    good, bad = frame.iloc[:n_good], frame.iloc[n_good:]
    pid = profile["deid"]["patient_id"]
    assert (good[pid] != "").all() and good[pid].is_unique
    assert not good.duplicated().any()

    cols = profile["harmonise"]["columns"]
    local = {code: col for col, code in cols.items()}
    deid = profile["deid"]
    fmt = deid["date_format"]
    birth_col = next(s["column"] for s in deid["dates"] if s["action"] == "age")
    admit_col = next(s["reference"] for s in deid["dates"] if s["action"] == "age")
    sex_codes = set(profile["harmonise"]["values"].get("sex", {})) | {"M", "F"}

    def parse(value):
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            return None

    for i, (_, row) in enumerate(bad.iterrows()):
        kind = synth.BAD_ROW_KINDS[i % len(synth.BAD_ROW_KINDS)]
        if kind == "nihss_out_of_range":
            assert int(row[local["nihss_admission"]]) > 42
        elif kind == "systolic_bp_not_numeric":
            assert not re.fullmatch(r"\d+", row[local["systolic_bp"]])
        elif kind == "unknown_sex_code":
            assert row[local["sex"]] not in sex_codes
        elif kind == "missing_patient_id":
            assert row[pid] == ""
        elif kind == "unparseable_birth_date":
            assert row[birth_col] and parse(row[birth_col]) is None
        elif kind == "birth_after_admission":
            assert parse(row[birth_col]) > parse(row[admit_col])
        elif kind == "duplicate_row":
            assert (good == row).all(axis=1).sum() == 1
    assert frame.duplicated().sum() == 2  # two cycles, one duplicate each


def test_bad_rows_need_a_good_row():
    with pytest.raises(ValueError):
        synth.generate_export("hospital_a", 0, seed=1, bad_rows=3)
    assert len(synth.generate_export("hospital_a", 0, seed=1)) == 0


def _cde_frame(hospital: str, n: int, seed: int) -> pd.DataFrame:
    frame = synth.generate_export(hospital, n, seed=seed)
    out = _harmonised(frame, _profile(hospital))
    for code in ("nihss_admission", "mrs_90d", "door_to_needle_min", "onset_to_door_min",
                 "age", "followup_days"):
        out[code] = pd.to_numeric(out[code].replace("", None))
    return out


def test_clinical_relationships_are_present():
    df = _cde_frame("hospital_a", 30_000, seed=3)
    lysed = df["thrombolysis"] == "yes"
    not_lysed = df["thrombolysis"] == "no"
    # The demo's headline effect: thrombolysed patients do better at 90 days.
    assert df.loc[lysed, "mrs_90d"].mean() < df.loc[not_lysed, "mrs_90d"].mean() - 0.2
    # ... and it survives adjustment for age and stroke severity.
    sub = df.dropna(subset=["mrs_90d", "nihss_admission", "age"])
    sub = sub[sub["thrombolysis"].isin(YES_NO)]
    x = np.column_stack([np.ones(len(sub)), sub["age"], sub["nihss_admission"],
                         (sub["thrombolysis"] == "yes").astype(float)])
    beta = np.linalg.lstsq(x, sub["mrs_90d"].to_numpy(float), rcond=None)[0]
    assert beta[1] > 0 and beta[2] > 0 and beta[3] < -0.2
    # Door-to-needle only exists for thrombolysed patients.
    assert df.loc[~lysed, "door_to_needle_min"].isna().all()
    assert df.loc[lysed, "door_to_needle_min"].notna().mean() > 0.8
    # Thrombolysis only for ischaemic strokes; thrombectomy mostly for severe ones.
    assert set(df.loc[lysed, "stroke_type"]) <= {"ischaemic", ""}
    evt = df["thrombectomy"] == "yes"
    assert df.loc[evt, "nihss_admission"].mean() > df.loc[~evt, "nihss_admission"].mean() + 5
    # Death agrees with mRS 6, and happens more with severe strokes.
    dead = df["death_90d"] == "yes"
    assert set(df.loc[dead, "mrs_90d"].dropna()) == {6}
    assert set(df.loc[df["death_90d"] == "no", "mrs_90d"].dropna()) <= set(range(6))
    assert df.loc[dead, "nihss_admission"].mean() > df.loc[~dead, "nihss_admission"].mean() + 4
    assert 0.08 < dead.mean() < 0.3
    # Those who died have their last contact within 90 days.
    assert df.loc[dead, "followup_days"].dropna().max() < 90
    # Realistic missingness: some, not much.
    assert 0.1 < df["onset_to_door_min"].isna().mean() < 0.3
    assert 0.0 < df["nihss_admission"].isna().mean() < 0.1


def test_hospitals_differ_in_case_mix():
    a = _cde_frame("hospital_a", 20_000, seed=4)
    b = _cde_frame("hospital_b", 20_000, seed=4)
    c = _cde_frame("hospital_c", 20_000, seed=4)
    assert (b["thrombectomy"] == "yes").mean() > (a["thrombectomy"] == "yes").mean() + 0.02
    assert c["age"].mean() > a["age"].mean() + 1.5


# ---------------------------------------------------------------------------
# Consent registry and files
# ---------------------------------------------------------------------------

def test_consent_registry():
    frame = synth.generate_export("hospital_c", 4000, seed=8, bad_rows=7)
    consent = synth.generate_consent(frame, seed=8, refusal_rate=0.1)
    assert list(consent.columns) == ["patient_id", "consent", "updated_at"]
    ids = frame["MRN"][frame["MRN"] != ""].unique()
    assert consent["patient_id"].is_unique and set(consent["patient_id"]) == set(ids)
    assert set(consent["consent"]) == {"granted", "withdrawn", "refused"}
    refused = (consent["consent"] == "refused").mean()
    assert 0.07 < refused < 0.13
    assert 0.01 < (consent["consent"] == "withdrawn").mean() < 0.06
    for stamp in consent["updated_at"]:
        datetime.fromisoformat(stamp)
    again = synth.generate_consent(list(ids), seed=8, refusal_rate=0.1)
    pd.testing.assert_frame_equal(consent, again)
    none_refused = synth.generate_consent(ids[:100], seed=1, refusal_rate=0.0)
    assert set(none_refused["consent"]) == {"granted"}
    with pytest.raises(ValueError):
        synth.generate_consent(ids, seed=1, refusal_rate=1.5)


def test_write_demo_exports(tmp_path):
    written = synth.write_demo_exports(tmp_path / "demo", n_patients=120, seed=7)
    assert set(written) == set(formats.HOSPITALS)
    for hospital, paths in written.items():
        assert set(paths) == {"export", "consent"}
        assert paths["export"].parent == tmp_path / "demo" / hospital
        export = pd.read_csv(paths["export"], dtype=str, keep_default_na=False, encoding="utf-8")
        assert list(export.columns) == formats.export_columns(hospital)
        assert len(export) == 120
        consent = pd.read_csv(paths["consent"], dtype=str, keep_default_na=False)
        assert set(consent["patient_id"]) == set(export[formats.patient_id_column(hospital)])
    # The files round-trip exactly and are deterministic.
    frame = pd.read_csv(written["hospital_b"]["export"], dtype=str, keep_default_na=False)
    again = synth.write_demo_exports(tmp_path / "again", n_patients=120, seed=7)
    assert again["hospital_b"]["export"].read_bytes() == written["hospital_b"]["export"].read_bytes()
    assert frame["geschlecht"].isin(["m", "w"]).all()
    # Non-ASCII names survive the UTF-8 round trip.
    assert frame["nachname"].str.contains(r"[^\x00-\x7f]").any() or frame["ort"].str.contains(
        r"[^\x00-\x7f]").any()


def test_write_export_returns_path(tmp_path):
    frame = synth.generate_export("hospital_a", 20, seed=1)
    path = synth.write_export(tmp_path / "sub" / "x.csv", frame)
    assert path == tmp_path / "sub" / "x.csv" and path.read_text(encoding="utf-8").startswith("mrn,")


def test_large_exports_have_every_row():
    """Size only: speed is measured by bench/ingest.py, not by a wall-clock bound in a unit test."""
    frame = synth.generate_export("hospital_c", 50_000, seed=1, bad_rows=7)
    assert len(frame) == 50_007
