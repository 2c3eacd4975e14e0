"""Synthetic EHR exports for the ``stroke:0.1`` demo federation.

Three fictitious hospitals export their stroke-unit data in three different
local formats (column names, codings, date formats), all carrying the direct
identifiers a real extract would hold: names, address, phone, e-mail or a
national number, and free-text notes that mention names.  Their source
profiles live in ``include/schemas/profiles/<hospital>.json`` and turn each
export into the common data model.

Everything here is invented.  Names, addresses and phone numbers come from
Faker; the clinical values come from a small generative model in which
outcomes depend on covariates, so that the demo's regressions find something:

* NIHSS at admission depends on stroke type and atrial fibrillation;
* thrombolysis is given to ischaemic strokes arriving early, thrombectomy
  mostly to severe ischaemic strokes (more often at hospital B, the
  comprehensive stroke centre); door-to-needle time exists only when
  thrombolysis was given;
* the modified Rankin Scale at 90 days follows a proportional-odds model that
  rises with age, NIHSS, glucose, diabetes and haemorrhage and falls with
  thrombolysis and thrombectomy; mRS 6 is death, so ``death_90d`` agrees with it;
* the last-contact date is the date of death for those who died, otherwise a
  later follow-up (or an early date for patients lost to follow-up).

Generation is vectorised with numpy: one million rows take a few seconds.
Faker is only used to build, once per hospital and seed, pools of a few
thousand names, streets, towns, postcodes and phone numbers that rows draw from.

Every cell of a generated export is a ``str``; a missing value is ``""``.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from mipflow.demo.formats import FIELDS, HOSPITALS, Layout, layout_of, patient_id_column
from mipflow.demo.population import EPOCH, EXTRACTION_DATE, FIRST_ADMISSION, hospital_pools, simulate

__all__ = ["BAD_ROW_KINDS", "generate_export", "write_export", "generate_consent", "write_demo_exports"]


#: The kinds of deliberately bad rows, in the order they are appended.
BAD_ROW_KINDS: tuple[str, ...] = (
    "nihss_out_of_range",
    "systolic_bp_not_numeric",
    "unknown_sex_code",
    "missing_patient_id",
    "unparseable_birth_date",
    "birth_after_admission",
    "duplicate_row",
)


# ---------------------------------------------------------------------------
# Formatting helpers (vectorised through lookup tables)
# ---------------------------------------------------------------------------

def _int_strings(values: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
    values = np.asarray(values, dtype=np.int64)
    if values.size and 0 <= values.min() and values.max() < 100_000:
        # Small non-negative numbers: index a table instead of converting each.
        table = np.array([str(i) for i in range(int(values.max()) + 1)], dtype=object)
        out = table[values]
    else:
        out = values.astype(str).astype(object)
    if missing is not None:
        out[missing] = ""
    return out


def _padded(values: np.ndarray, width: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return np.array([], dtype=object)
    return np.char.zfill(values.astype(str), width).astype(object)


def _dates(days: np.ndarray, fmt: str, missing: np.ndarray | None = None) -> np.ndarray:
    """Format day numbers (days since 1970-01-01) with ``fmt``."""
    days = np.asarray(days, dtype=np.int64)
    if days.size == 0:
        return np.array([], dtype=object)
    uniq, inverse = np.unique(days, return_inverse=True)
    table = np.array([(EPOCH + timedelta(days=int(d))).strftime(fmt) for d in uniq], dtype=object)
    out = table[inverse]
    if missing is not None:
        out[missing] = ""
    return out


def _coded(flags: np.ndarray, yes: str, no: str, missing: np.ndarray) -> np.ndarray:
    out = np.where(flags, yes, no).astype(object)
    out[missing] = ""
    return out


def _nhs_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Ten-digit NHS numbers with a valid modulus-11 check digit, spaced 3-3-4."""
    digits = rng.integers(0, 10, (n, 9))
    digits[:, 0] = rng.integers(4, 8, n)  # a plausible leading digit
    weights = np.arange(10, 1, -1)
    for _ in range(20):
        check = (11 - (digits @ weights) % 11) % 11
        bad = check == 10
        if not bad.any():
            break
        digits[bad, 8] = (digits[bad, 8] + 1) % 10
    check = (11 - (digits @ weights) % 11) % 11
    number = digits @ (10 ** np.arange(9, 0, -1)) + check
    three, four = _PAD3, _PAD4
    return (three[number // 10**7] + " " + three[(number // 10**4) % 1000] + " "
            + four[number % 10**4])


_PAD2 = np.array([f"{i:02d}" for i in range(100)], dtype=object)
_PAD3 = np.array([f"{i:03d}" for i in range(1000)], dtype=object)
_PAD4 = np.array([f"{i:04d}" for i in range(10000)], dtype=object)


def _national_ids(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "nhs":
        return _nhs_numbers(rng, n)
    if kind == "kvnr":
        letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), dtype=object)
        return letters[rng.integers(0, 26, n)] + _padded(rng.integers(0, 10**9, n), 9)
    # US SSN: area 001-899 except 666, group 01-99, serial 0001-9999.
    area = rng.integers(1, 899, n)
    area = np.where(area >= 666, area + 1, area)
    return (_PAD3[area] + "-" + _PAD2[rng.integers(1, 100, n)] + "-"
            + _PAD4[rng.integers(1, 10000, n)])


def _pick(pool: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return pool[rng.integers(0, len(pool), n)]


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def generate_export(hospital: str, n_patients: int, *, seed: int, bad_rows: int = 0,
                    start_mrn: int = 1) -> pd.DataFrame:
    """A raw stroke-unit EHR export of ``hospital`` in its local format.

    One row per patient (index admission), ``n_patients`` rows, followed by
    ``bad_rows`` deliberately broken rows cycling through :data:`BAD_ROW_KINDS`
    (so the frame has ``n_patients + bad_rows`` rows).  Medical record numbers
    are ``start_mrn, start_mrn + 1, ...`` in the hospital's MRN format, so
    successive batches can be made disjoint.  Every cell is a ``str``; missing
    values are ``""``.  The same arguments always give the same frame.
    """
    layout = layout_of(hospital)
    if n_patients < 0 or bad_rows < 0:
        raise ValueError("n_patients and bad_rows must not be negative")
    if bad_rows > 0 and n_patients < 1:
        raise ValueError("bad rows need at least one good row (one of them duplicates it)")
    if start_mrn < 0:
        raise ValueError("start_mrn must not be negative")
    rng = np.random.default_rng(np.random.SeedSequence([seed, HOSPITALS.index(hospital)]))
    pools = hospital_pools(hospital, seed)
    total = n_patients + bad_rows
    sim = simulate(rng, total, layout)
    cols: dict[str, np.ndarray] = {}

    def miss(rate: float) -> np.ndarray:
        return rng.random(total) < rate

    # Identifiers ---------------------------------------------------------
    number = start_mrn + np.arange(total, dtype=np.int64)
    cols["mrn"] = layout.mrn_prefix + _padded(layout.mrn_base + number, layout.mrn_digits)
    visit_no = (number * 7_654_321 + 123_457) % 1_000_000_000
    cols["visit"] = layout.visit_prefix + _padded(visit_no, 9)

    female = sim["female"]
    male_i = rng.integers(0, len(pools.male), total)
    female_i = rng.integers(0, len(pools.female), total)
    last_i = rng.integers(0, len(pools.last), total)
    first = np.where(female, pools.female[female_i], pools.male[male_i])
    last = pools.last[last_i]
    cols["first_name"] = first
    cols["last_name"] = last
    cols["street"] = _pick(pools.street, rng, total)
    cols["city"] = _pick(pools.city, rng, total)
    postcode = _pick(pools.postcode, rng, total).copy()
    postcode[miss(0.01)] = ""
    cols["postcode"] = postcode
    phone = _pick(pools.phone, rng, total).copy()
    phone[miss(0.08)] = ""
    cols["phone"] = phone
    if "email" in layout.columns:
        handle_first = np.where(female, pools.female_ascii[female_i], pools.male_ascii[male_i])
        sep = np.array([".", "_", ""], dtype=object)[rng.integers(0, 3, total)]
        suffix = _int_strings(rng.integers(1, 99, total), rng.random(total) < 0.6)
        email = (handle_first + sep + pools.last_ascii[last_i] + suffix + "@"
                 + _pick(pools.domains, rng, total))
        email[miss(layout.email_missing)] = ""
        cols["email"] = email
    national = _national_ids(layout.national_id, rng, total)
    national[miss(0.03)] = ""
    cols["national_id"] = national

    # Dates ---------------------------------------------------------------
    fmt = layout.date_format
    cols["birth_date"] = _dates(sim["birth"], fmt)
    cols["admission_date"] = _dates(sim["admission"], fmt)
    cols["last_contact"] = _dates(sim["last_contact"], fmt, miss(0.02))

    # Clinical values -----------------------------------------------------
    cols["sex"] = np.where(female, layout.sex["F"], layout.sex["M"]).astype(object)
    st_codes = np.array([layout.stroke_type[c] for c in ("ischaemic", "haemorrhagic", "tia")],
                        dtype=object)
    stroke_type = st_codes[sim["stroke_type"]]
    stroke_type[miss(0.005)] = ""
    cols["stroke_type"] = stroke_type
    cols["nihss"] = _int_strings(sim["nihss"], miss(0.03))
    cols["onset"] = _int_strings(sim["onset"], ~sim["onset_known"])
    cols["sbp"] = _int_strings(sim["sbp"], miss(0.02))
    tenths_table = np.array([f"{i // 10}.{i % 10}" for i in range(0, 401)], dtype=object)
    glucose = tenths_table[sim["glucose_tenths"]]
    glucose[miss(0.05)] = ""
    cols["glucose"] = glucose
    yes, no = layout.yes_no["yes"], layout.yes_no["no"]
    cols["af"] = _coded(sim["af"], yes, no, miss(0.03))
    cols["diabetes"] = _coded(sim["diabetes"], yes, no, miss(0.02))
    cols["hypertension"] = _coded(sim["hypertension"], yes, no, miss(0.02))
    lysis_missing = miss(0.01)
    cols["thrombolysis"] = _coded(sim["thrombolysis"], yes, no, lysis_missing)
    cols["thrombectomy"] = _coded(sim["thrombectomy"], yes, no, miss(0.01))
    cols["dtn"] = _int_strings(sim["dtn"], ~sim["thrombolysis"] | lysis_missing | miss(0.08))

    # Outcomes: lost-to-follow-up patients have no 90-day assessment; registry
    # linkage still tells some of them are alive.
    lost = sim["lost"]
    cols["mrs"] = _int_strings(sim["mrs"], lost | miss(0.03))
    cols["death"] = _coded(sim["dead"], yes, no, (lost & (rng.random(total) < 0.7)) | miss(0.01))
    cols["ward"] = _pick(np.array(layout.wards, dtype=object), rng, total)

    # Free text mentioning the patient, a relative and a doctor by name ----
    parts = layout.notes
    contact_i = rng.integers(0, len(parts["contact"]), total)
    contact_sex = np.array(parts["contact_sex"])[contact_i]
    relative_female = np.where(contact_sex == "", rng.random(total) < 0.5, contact_sex == "F")
    relative_first = np.where(relative_female, _pick(pools.female, rng, total),
                              _pick(pools.male, rng, total))
    tail_i = rng.integers(0, len(parts["tail"]), total)
    tail = np.array(parts["tail"], dtype=object)[tail_i]
    doctor = np.where(tail_i == len(parts["tail"]) - 1, _pick(pools.last, rng, total) + ".", "")
    notes = (
        _pick(np.array(parts["intro"], dtype=object), rng, total) + first + " " + last
        + _pick(np.array(parts["verb"], dtype=object), rng, total)
        + _pick(np.array(parts["symptom"], dtype=object), rng, total) + ". "
        + np.array(parts["contact"], dtype=object)[contact_i] + relative_first + " "
        + last + parts["informed"][0] + tail + doctor
    )
    notes[miss(0.15)] = ""
    cols["notes"] = notes

    if bad_rows:
        _corrupt(cols, layout, sim, n_patients, bad_rows, rng)

    frame = pd.DataFrame({layout.columns[f]: cols[f] for f in FIELDS if f in layout.columns})
    return frame


def _corrupt(cols: dict[str, np.ndarray], layout: Layout, sim: Mapping[str, np.ndarray],
             n_good: int, bad_rows: int, rng: np.random.Generator) -> None:
    """Break rows ``n_good ..`` in place, one kind of error per row."""
    fmt = layout.date_format
    for j in range(bad_rows):
        row = n_good + j
        kind = BAD_ROW_KINDS[j % len(BAD_ROW_KINDS)]
        if kind == "nihss_out_of_range":
            cols["nihss"][row] = "57"
        elif kind == "systolic_bp_not_numeric":
            cols["sbp"][row] = "165/95"
        elif kind == "unknown_sex_code":
            cols["sex"][row] = layout.unknown_sex
        elif kind == "missing_patient_id":
            cols["mrn"][row] = ""
        elif kind == "unparseable_birth_date":
            year = (EPOCH + timedelta(days=int(sim["birth"][row]))).year
            # 31 February written in the hospital's own date format.
            cols["birth_date"][row] = (fmt.replace("%Y", str(year)).replace("%m", "02")
                                       .replace("%d", "31"))
        elif kind == "birth_after_admission":
            later = int(sim["admission"][row]) + 400 + int(rng.integers(0, 3000))
            cols["birth_date"][row] = (EPOCH + timedelta(days=later)).strftime(fmt)
        elif kind == "duplicate_row":
            source = int(rng.integers(0, n_good))
            for values in cols.values():
                values[row] = values[source]


def write_export(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write an export as UTF-8 CSV (header row, no index); return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, encoding="utf-8", lineterminator="\n")
    return path


def _consent_ids(frame_or_mrns: pd.DataFrame | Iterable[str]) -> list[str]:
    if isinstance(frame_or_mrns, pd.DataFrame):
        candidates = [c for c in (patient_id_column(h) for h in HOSPITALS)
                      if c in frame_or_mrns.columns]
        if "patient_id" in frame_or_mrns.columns:
            candidates.append("patient_id")
        if not candidates:
            raise ValueError("the frame has no patient id column "
                             f"(looked for {[patient_id_column(h) for h in HOSPITALS]})")
        values: Iterable = frame_or_mrns[candidates[0]].tolist()
    elif isinstance(frame_or_mrns, (str, bytes)):
        raise TypeError("pass a frame or an iterable of MRNs, not a single string")
    else:
        values = frame_or_mrns
    seen: dict[str, None] = {}
    for value in values:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        text = str(value).strip()
        if text:
            seen.setdefault(text, None)
    return list(seen)


def generate_consent(frame_or_mrns: pd.DataFrame | Iterable[str], *, seed: int,
                     refusal_rate: float = 0.05) -> pd.DataFrame:
    """A consent registry for the patients of an export (or a list of MRNs).

    One row per distinct, non-empty MRN: ``patient_id``, ``consent`` and
    ``updated_at`` (ISO 8601, seconds).  A share ``refusal_rate`` of patients
    ``refused``; a further ``refusal_rate / 3`` consented and later
    ``withdrawn``; everyone else ``granted``.
    """
    if not 0.0 <= refusal_rate <= 0.75:
        raise ValueError("refusal_rate must be between 0 and 0.75")
    ids = _consent_ids(frame_or_mrns)
    n = len(ids)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4242]))
    u = rng.random(n)
    status = np.where(u < refusal_rate, "refused",
                      np.where(u < refusal_rate * 4 / 3, "withdrawn", "granted")).astype(object)
    start = (FIRST_ADMISSION - EPOCH).days
    end = (EXTRACTION_DATE - EPOCH).days
    day = rng.integers(start, end - 30, n)
    # A withdrawal is recorded some time after the original consent.
    day = np.where(status == "withdrawn", np.minimum(day + rng.integers(30, 720, n), end), day)
    two = np.array([f"{i:02d}" for i in range(60)], dtype=object)
    stamp = (_dates(day, "%Y-%m-%d") + "T" + two[rng.integers(7, 19, n)] + ":"
             + two[rng.integers(0, 60, n)] + ":" + two[rng.integers(0, 60, n)])
    return pd.DataFrame({"patient_id": np.array(ids, dtype=object), "consent": status,
                         "updated_at": stamp})


def write_demo_exports(out_dir: str | Path, *, n_patients: int = 300, seed: int = 7,
                       bad_rows: int = 0) -> dict[str, dict[str, Path]]:
    """Write each demo hospital's export and consent registry under ``out_dir/<hospital>/``.

    Returns ``{hospital: {"export": path, "consent": path}}``.  Files are
    ``<hospital>_stroke_export.csv`` and ``consent.csv``.
    """
    out_dir = Path(out_dir)
    written: dict[str, dict[str, Path]] = {}
    for index, hospital in enumerate(HOSPITALS):
        sub_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        frame = generate_export(hospital, n_patients, seed=sub_seed, bad_rows=bad_rows)
        folder = out_dir / hospital
        export = write_export(folder / f"{hospital}_stroke_export.csv", frame)
        consent = write_export(folder / "consent.csv", generate_consent(frame, seed=sub_seed))
        written[hospital] = {"export": export, "consent": consent}
    return written
