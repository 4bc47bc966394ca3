"""Hospital-level tables of a chunk: patients, admissions, icustays; and the truth sidecar rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sepsisrl.synth.charting.common import (
    MISSING_TIME,
    arrow_table,
    float_array,
    int_array,
    time_array,
)
from sepsisrl.synth.cohort import ChunkResult
from sepsisrl.synth.population import FIRST_LINE_AGENTS, SECONDS_PER_DAY, SECONDS_PER_HOUR

_YEAR_GROUPS = ["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022"]
_CAREUNITS = [
    "Medical Intensive Care Unit (MICU)",
    "Medical/Surgical Intensive Care Unit (MICU/SICU)",
    "Surgical Intensive Care Unit (SICU)",
    "Cardiac Vascular Intensive Care Unit (CVICU)",
    "Trauma SICU (TSICU)",
    "Coronary Care Unit (CCU)",
    "Neuro Surgical Intensive Care Unit (Neuro SICU)",
]
_CAREUNIT_P = [0.25, 0.2, 0.15, 0.15, 0.12, 0.08, 0.05]


def patients(chunk: ChunkResult, rng: np.random.Generator) -> pa.Table:
    subj = chunk.subjects
    st = chunk.stays
    present = np.zeros(subj.n, dtype=bool)
    present[st.subject_pos] = True
    pos = np.flatnonzero(present)
    death = np.full(subj.n, -1, dtype=np.int64)
    tl = chunk.timeline
    has_death = tl.death_time >= 0
    np.maximum.at(death, st.subject_pos[has_death], tl.death_time[has_death])
    d = death[pos]
    dod_days = np.where(d >= 0, d // SECONDS_PER_DAY, 0).astype(np.int32)
    dod = pa.array(dod_days, pa.date32(), mask=d < 0)
    gender = np.where(subj.female[pos], "F", "M").astype(object)
    gender[subj.gender_missing[pos]] = None
    return arrow_table(
        "patients",
        {
            "subject_id": int_array(subj.subject_id[pos]),
            "gender": pa.array(gender.tolist(), pa.string()),
            "anchor_age": int_array(subj.anchor_age[pos]),
            "anchor_year": int_array(subj.anchor_year[pos]),
            "anchor_year_group": pa.array([_YEAR_GROUPS[i] for i in rng.integers(0, 5, len(pos))]),
            "dod": dod,
        },
    )


def admissions(chunk: ChunkResult, rng: np.random.Generator, providers: list[str]) -> pa.Table:
    st, tl = chunk.stays, chunk.timeline
    n = st.n
    order = np.lexsort((st.ordinal, st.subject_id))
    died = tl.deathtime >= 0
    ed = st.from_ed
    adm_type = np.where(
        ed,
        np.where(rng.random(n) < 0.85, "EW EMER.", "URGENT"),
        np.where(rng.random(n) < 0.5, "OBSERVATION ADMIT", "SURGICAL SAME DAY ADMISSION"),
    )
    adm_loc = np.where(
        ed,
        "EMERGENCY ROOM",
        np.where(rng.random(n) < 0.6, "TRANSFER FROM HOSPITAL", "PHYSICIAN REFERRAL"),
    )
    disch_choices = np.array(
        [
            "HOME",
            "HOME HEALTH CARE",
            "SKILLED NURSING FACILITY",
            "REHAB",
            "CHRONIC/LONG TERM ACUTE CARE",
            "HOSPICE",
        ]
    )
    disch = disch_choices[
        rng.choice(len(disch_choices), n, p=[0.3, 0.3, 0.2, 0.1, 0.05, 0.05])
    ].astype(object)
    disch[died] = "DIED"
    edreg = np.where(ed, st.admit_time - rng.integers(60, 300, n) * 60, MISSING_TIME)
    edout = np.where(ed, tl.intime, MISSING_TIME)
    insurance = np.array(["Medicare", "Medicaid", "Private", "Other"])[
        rng.choice(4, n, p=[0.45, 0.15, 0.3, 0.1])
    ]
    marital = np.array(["MARRIED", "SINGLE", "WIDOWED", "DIVORCED"], dtype=object)[
        rng.choice(4, n, p=[0.45, 0.3, 0.15, 0.1])
    ]
    marital[rng.random(n) < 0.05] = None
    race = np.array(
        [
            "WHITE",
            "BLACK/AFRICAN AMERICAN",
            "HISPANIC/LATINO - PUERTO RICAN",
            "ASIAN",
            "OTHER",
            "UNKNOWN",
        ]
    )[rng.choice(6, n, p=[0.65, 0.12, 0.05, 0.04, 0.07, 0.07])]
    tab = arrow_table(
        "admissions",
        {
            "subject_id": int_array(st.subject_id),
            "hadm_id": int_array(st.hadm_id),
            "admittime": time_array(st.admit_time),
            "dischtime": time_array(tl.dischtime),
            "deathtime": time_array(np.where(died, tl.deathtime, MISSING_TIME)),
            "admission_type": pa.array(adm_type.tolist()),
            "admit_provider_id": pa.array([providers[a] for a in st.attending.tolist()]),
            "admission_location": pa.array(adm_loc.tolist()),
            "discharge_location": pa.array(disch.tolist(), pa.string()),
            "insurance": pa.array(insurance.tolist()),
            "language": pa.array(["English"] * n),
            "marital_status": pa.array(marital.tolist(), pa.string()),
            "race": pa.array(race.tolist()),
            "edregtime": time_array(edreg),
            "edouttime": time_array(edout),
            "hospital_expire_flag": int_array(died.astype(np.int64)),
        },
    )
    return tab.take(pa.array(order))


def icustays(chunk: ChunkResult, rng: np.random.Generator) -> pa.Table:
    st, tl = chunk.stays, chunk.timeline
    n = st.n
    order = np.lexsort((st.ordinal, st.subject_id))
    unit = np.array(_CAREUNITS)[rng.choice(len(_CAREUNITS), n, p=_CAREUNIT_P)]
    last = np.where(
        rng.random(n) < 0.9,
        unit,
        np.array(_CAREUNITS)[rng.choice(len(_CAREUNITS), n, p=_CAREUNIT_P)],
    )
    los = np.round((tl.outtime - tl.intime) / SECONDS_PER_DAY, 4)
    tab = arrow_table(
        "icustays",
        {
            "subject_id": int_array(st.subject_id),
            "hadm_id": int_array(st.hadm_id),
            "stay_id": int_array(st.stay_id),
            "first_careunit": pa.array(unit.tolist()),
            "last_careunit": pa.array(last.tolist()),
            "intime": time_array(tl.intime),
            "outtime": time_array(tl.outtime),
            "los": float_array(los),
        },
    )
    return tab.take(pa.array(order))


def _hours_to_time(admit: np.ndarray, hours: np.ndarray) -> pa.Array:
    h = np.asarray(hours, dtype=np.float64)
    t = np.where(np.isnan(h), 0, admit + np.nan_to_num(h) * SECONDS_PER_HOUR).astype(np.int64)
    return pa.array(t // 60 * 60, pa.timestamp("s"), mask=np.isnan(h))


def _first(times: np.ndarray) -> np.ndarray:
    """Row-wise earliest time of a (n, k) array with nan for absent events (nan if none)."""
    t = np.where(np.isnan(times), np.inf, times).min(axis=1)
    return np.where(np.isinf(t), np.nan, t)


def truth_stays(chunk: ChunkResult) -> pa.Table:
    """One row per ICU stay: true infection, suspicion, Sepsis-3 onset, outcome, parameters."""
    st, tl, T, sim = chunk.stays, chunk.timeline, chunk.truth, chunk.sim
    adm = st.admit_time
    death = tl.death_time
    return pa.table(
        {
            "subject_id": st.subject_id,
            "hadm_id": st.hadm_id,
            "stay_id": st.stay_id,
            "stay_ordinal": st.ordinal,
            "admittime": pa.array(adm, pa.timestamp("s")),
            "intime": pa.array(tl.intime, pa.timestamp("s")),
            "outtime": pa.array(tl.outtime, pa.timestamp("s")),
            "infected": T.infected,
            "infection_kind": pa.array(
                np.array(["none", "at_admission", "acquired"])[st.infection_kind]
            ),
            "infection_time": _hours_to_time(adm, T.infection_h),
            "suspected_infection_time": _hours_to_time(adm, T.suspected_infection_h),
            "sofa_qualifying_time": _hours_to_time(adm, T.sofa_hour),
            "sepsis_onset_time": _hours_to_time(adm, T.onset_h),
            "sepsis3": T.sepsis3,
            "sepsis3_in_icu_window": T.sepsis3_in_icu_window,
            "max_sofa": T.max_sofa,
            "died_in_icu": tl.died_in_icu,
            "death_time": pa.array(
                np.where(death >= 0, death, 0), pa.timestamp("s"), mask=death < 0
            ),
            "died_90d_after_onset": T.died_90d_after_onset,
            "died_90d_after_intime": T.died_90d_after_intime,
            "consensus_onset_time": _hours_to_time(adm, T.consensus_onset_h),
            "sepsis3_consensus_in_icu_window": T.sepsis3_consensus_in_icu_window,
            "died_90d_after_consensus_onset": T.died_90d_after_consensus_onset,
            "age": st.age,
            "weight_kg": st.weight_kg,
            "attending": st.attending,
            "first_line_vasopressor": pa.array(np.array(FIRST_LINE_AGENTS)[st.first_line]),
            "fluid_response": st.fluid_response,
            "fluid_tolerance_l": st.fluid_tolerance_l,
            "vaso_sensitivity": st.vaso_sensitivity,
            "cardiac_reserve": st.cardiac_reserve,
            "infection_severity": st.infection_severity,
            "resistant_infection": st.resistant,
            "antibiotic_first_time": _hours_to_time(adm, _first(sim.antibiotic_h)),
        }
    )


#: Hourly truth columns written to the sidecar (latent state, true values, treatment, SOFA).
TRUTH_HOURLY_COLUMNS = (
    "in_icu",
    "ventilated",
    "infection",
    "volume",
    "tone_loss",
    "balance_l",
    "kidney",
    "lung",
    "liver",
    "coag",
    "brain",
    "perfusion",
    "organ_score",
    "hazard",
    "map",
    "hr",
    "lactate",
    "pf",
    "fio2",
    "creatinine",
    "bilirubin",
    "platelets",
    "gcs_eye",
    "gcs_verbal",
    "gcs_motor",
    "urine_ml",
    "total_vaso_eq",
    "vaso_eq",
    "vasopressin",
    "epi_add",
    "dobutamine",
    "bolus_ml",
    "maint_rate",
)


def truth_hourly(chunk: ChunkResult) -> pa.Table:
    H = chunk.sim.hourly
    st = chunk.stays
    cols: dict[str, pa.Array | np.ndarray] = {
        "stay_id": st.stay_id[H["stay"]],
        "hour_start": pa.array(
            st.admit_time[H["stay"]] + H["h"].astype(np.int64) * SECONDS_PER_HOUR, pa.timestamp("s")
        ),
    }
    for k in TRUTH_HOURLY_COLUMNS:
        v = H[k]
        cols[k] = v.astype(bool) if k in ("in_icu", "ventilated") else v.astype(np.float32)
    for k, v in chunk.sofa.items():
        cols[k] = v
    return pa.table(cols)
