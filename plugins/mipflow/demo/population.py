"""The demo's invented patients: pools of names, addresses and phone numbers drawn once per hospital
and seed with Faker, and the small generative model of their stroke care and outcomes
(:mod:`mipflow.demo.synth` turns them into each hospital's export)."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Iterable

import numpy as np

from mipflow.demo.formats import HOSPITALS, Layout, layout_of

#: Fixed "today" of the exports, so that output does not depend on the clock.
EXTRACTION_DATE = date(2025, 6, 30)
FIRST_ADMISSION = date(2018, 1, 1)
LAST_ADMISSION = date(2024, 12, 31)
EPOCH = date(1970, 1, 1)
POOL_SIZE = 2000

# ---------------------------------------------------------------------------
# Faker pools
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Pools:
    male: np.ndarray
    female: np.ndarray
    last: np.ndarray
    male_ascii: np.ndarray
    female_ascii: np.ndarray
    last_ascii: np.ndarray
    street: np.ndarray
    city: np.ndarray
    postcode: np.ndarray
    phone: np.ndarray
    domains: np.ndarray


def _ascii_handle(name: str) -> str:
    folded = name.replace("ß", "ss").replace("ä", "ae").replace("ö", "oe").replace("ü", "ue")
    folded = folded.replace("Ä", "Ae").replace("Ö", "Oe").replace("Ü", "Ue")
    folded = unicodedata.normalize("NFKD", folded).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in folded.lower() if ch.isalnum())


def _objects(values: Iterable[str]) -> np.ndarray:
    arr = np.array(list(values), dtype=object)
    arr.setflags(write=False)
    return arr


@lru_cache(maxsize=16)
def hospital_pools(hospital: str, seed: int) -> Pools:
    from faker import Faker

    layout = layout_of(hospital)
    fake = Faker(layout.locale)
    fake.seed_instance(int(np.random.SeedSequence([seed, HOSPITALS.index(hospital), 99]).generate_state(1)[0]))
    male = [fake.first_name_male() for _ in range(POOL_SIZE // 2)]
    female = [fake.first_name_female() for _ in range(POOL_SIZE // 2)]
    last = [fake.last_name() for _ in range(POOL_SIZE)]
    street = [" ".join(fake.street_address().split()) for _ in range(POOL_SIZE)]
    city = [fake.city() for _ in range(POOL_SIZE // 2)]
    postcode = [fake.postcode() for _ in range(POOL_SIZE // 2)]
    phone = [fake.phone_number() for _ in range(POOL_SIZE)]
    domains = [fake.free_email_domain() for _ in range(20)]
    return Pools(
        male=_objects(male), female=_objects(female), last=_objects(last),
        male_ascii=_objects(map(_ascii_handle, male)),
        female_ascii=_objects(map(_ascii_handle, female)),
        last_ascii=_objects(map(_ascii_handle, last)),
        street=_objects(street), city=_objects(city), postcode=_objects(postcode),
        phone=_objects(phone), domains=_objects(domains),
    )


# ---------------------------------------------------------------------------
# Clinical model
# ---------------------------------------------------------------------------

def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# Proportional-odds cut points of the 90-day mRS latent score (calibrated so
# that mRS 0..6 occur at roughly 13/19/14/14/13/10/17 %).
_MRS_CUTS = np.array([-1.35, 0.05, 0.85, 1.65, 2.45, 3.3])


def simulate(rng: np.random.Generator, n: int, layout: Layout) -> dict[str, np.ndarray]:
    """Draw ``n`` patients' true clinical values (no missingness, no formatting)."""
    female = rng.random(n) < 0.47
    age = rng.normal(70.0 + layout.age_shift + 3.0 * female, 13.5)
    age = np.clip(age, 18.2, 101.5)

    span = (LAST_ADMISSION - FIRST_ADMISSION).days
    admission = (FIRST_ADMISSION - EPOCH).days + rng.integers(0, span + 1, n)
    birth = admission - np.floor(age * 365.2425).astype(np.int64)

    af = rng.random(n) < _logistic(-5.9 + 0.066 * age)
    diabetes = rng.random(n) < layout.diabetes_rate
    hypertension = rng.random(n) < _logistic(-2.2 + 0.042 * age)

    # 0 ischaemic, 1 haemorrhagic, 2 TIA
    stroke_type = rng.choice(3, size=n, p=[0.80, 0.12, 0.08])
    isch = stroke_type == 0
    haem = stroke_type == 1
    tia = stroke_type == 2

    mu = np.where(isch, 5.5 + 3.0 * af + 0.03 * (age - 70), np.where(haem, 11.0, 0.8))
    mu = np.maximum(mu, 0.3)
    r = 1.4
    nihss = rng.negative_binomial(r, r / (r + mu))
    nihss = np.where(tia, rng.poisson(0.8, n), nihss)
    nihss = np.clip(nihss, 0, 42)

    onset = np.exp(rng.normal(np.log(170.0) - 0.02 * nihss, 1.0))
    onset = np.clip(np.rint(onset), 10, 1440).astype(np.int64)
    onset_known = rng.random(n) > 0.17  # unknown onset (wake-up strokes etc.)

    sbp = rng.normal(152.0 + 12.0 * hypertension + 16.0 * haem + 0.25 * (age - 70), 23.0)
    sbp = np.clip(np.rint(sbp), 80, 260).astype(np.int64)
    glucose = np.exp(rng.normal(np.log(6.3) + 0.38 * diabetes, 0.22))
    glucose_tenths = np.clip(np.rint(glucose * 10), 25, 350).astype(np.int64)

    # Thrombolysis: ischaemic, arriving in time, not a trivial deficit.
    eligible = isch & onset_known & (onset <= 210) & (nihss >= 1) & (nihss <= 30) & (sbp <= 220)
    p_lysis = np.where(eligible, np.where(nihss >= 4, 0.62, 0.30), 0.0)
    p_lysis = np.where(isch & ~onset_known & (nihss >= 4), 0.06, p_lysis)
    thrombolysis = rng.random(n) < p_lysis
    dtn = np.exp(rng.normal(np.log(layout.dtn_median), 0.45, n))
    dtn = np.clip(np.rint(dtn), 8, 600).astype(np.int64)

    p_evt = _logistic(-2.6 + layout.thrombectomy_shift + 0.16 * (nihss - 6))
    p_evt = np.where(isch & (nihss >= 6), p_evt, 0.0)
    p_evt = np.where(onset_known & (onset > 720), p_evt * 0.5, p_evt)
    thrombectomy = rng.random(n) < p_evt

    latent = (
        0.045 * (age - 70)
        + 0.17 * nihss
        + 0.8 * haem
        - 1.5 * tia
        - 0.95 * thrombolysis
        - 1.1 * thrombectomy
        + 0.3 * diabetes
        + 0.2 * af
        + 0.06 * (glucose_tenths / 10.0 - 6.0)
        + 0.1 * female
        + rng.logistic(0.0, 1.0, n)
    )
    mrs = np.searchsorted(_MRS_CUTS, latent).astype(np.int64)
    dead = mrs == 6

    # Follow-up: death date for those who died, otherwise a later contact.
    death_day = np.minimum(np.floor(rng.exponential(18.0, n)), 89).astype(np.int64)
    lost = (~dead) & (rng.random(n) < 0.07)
    horizon = (EXTRACTION_DATE - EPOCH).days - admission
    later = 90 + np.floor(rng.exponential(420.0, n)).astype(np.int64)
    followup = np.where(dead, death_day, np.where(lost, rng.integers(2, 60, n), later))
    followup = np.minimum(followup, np.minimum(horizon, 3650))
    last_contact = admission + followup

    return {
        "female": female, "age": age, "admission": admission, "birth": birth,
        "af": af, "diabetes": diabetes, "hypertension": hypertension,
        "stroke_type": stroke_type, "nihss": nihss, "onset": onset, "onset_known": onset_known,
        "sbp": sbp, "glucose_tenths": glucose_tenths, "thrombolysis": thrombolysis,
        "dtn": dtn, "thrombectomy": thrombectomy, "mrs": mrs, "dead": dead,
        "lost": lost, "last_contact": last_contact, "latent": latent,
    }
