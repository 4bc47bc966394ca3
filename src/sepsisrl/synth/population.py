"""Who the simulated patients are: subjects, their ICU stays and patient-specific parameters.

Subjects carry what persists across stays (sex, birth cohort, weight, chronic disease);
each stay draws its own reason for admission, infection, treatment responsiveness and
charting habits. All attributes are NumPy arrays, one element per subject or per stay.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from sepsisrl.synth.config import LogNormal, SynthConfig

SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400

#: Vasopressor agents a stay's attending may use first line, in a fixed order.
FIRST_LINE_AGENTS: tuple[str, ...] = ("norepinephrine", "phenylephrine", "dopamine", "epinephrine")
#: Dose of each agent that equals 1 mcg/kg/min of norepinephrine (docs/clinical.md, "Actions").
AGENT_NE_FACTOR: dict[str, float] = {
    "norepinephrine": 1.0,
    "phenylephrine": 0.1,
    "dopamine": 0.01,
    "epinephrine": 1.0,
}
#: Vasopressin: NE-equivalent per unit/min.
VASOPRESSIN_NE_FACTOR = 2.5

NO_INFECTION, INFECTION_AT_ADMISSION, INFECTION_ACQUIRED = 0, 1, 2


def lognormal(rng: np.random.Generator, spec: LogNormal, size: int) -> np.ndarray:
    return spec.median * np.exp(spec.sigma * rng.standard_normal(size))


@dataclass
class Subjects:
    """Patient-level attributes (one element per subject)."""

    index: np.ndarray  # global subject index (0-based, unique in the world)
    subject_id: np.ndarray
    female: np.ndarray
    gender_missing: np.ndarray
    anchor_age: np.ndarray
    anchor_year: np.ndarray
    n_planned_stays: np.ndarray
    weight_kg: np.ndarray
    comorbidity: np.ndarray
    ckd: np.ndarray
    cirrhosis: np.ndarray
    lung_disease: np.ndarray
    heart_failure: np.ndarray
    first_admit_time: np.ndarray  # int64 epoch seconds

    @property
    def n(self) -> int:
        return len(self.index)


@dataclass
class Stays:
    """Stay-level attributes (one element per ICU stay) used by the simulator and charting."""

    subject_pos: np.ndarray  # position of the subject in the chunk's Subjects
    ordinal: np.ndarray  # 0 for the subject's first stay
    subject_id: np.ndarray
    hadm_id: np.ndarray
    stay_id: np.ndarray
    admit_time: np.ndarray  # hospital admission, int64 epoch seconds (simulation hour 0)
    age: np.ndarray
    weight_kg: np.ndarray
    comorbidity: np.ndarray
    ckd: np.ndarray
    cirrhosis: np.ndarray
    lung_disease: np.ndarray
    heart_failure: np.ndarray
    from_ed: np.ndarray
    pre_icu_h: np.ndarray  # whole hours between hospital and ICU admission
    planned_los_h: np.ndarray
    ventilated_at_admission: np.ndarray
    infection_kind: np.ndarray
    infection_h: np.ndarray  # simulation hour the infection starts (-1: never)
    infection_severity: np.ndarray
    infection_growth: np.ndarray
    antibiotic_kill: np.ndarray
    resistant: np.ndarray
    fever_sign: np.ndarray  # +1 febrile response, -1 hypothermic response
    leukocyte_sign: np.ndarray  # +1 leukocytosis, -1 leukopenia
    fluid_response: np.ndarray
    fluid_tolerance_l: np.ndarray
    vaso_sensitivity: np.ndarray
    cardiac_reserve: np.ndarray
    map_base: np.ndarray
    hr_base: np.ndarray
    creatinine_base: np.ndarray
    bilirubin_base: np.ndarray
    platelets_base: np.ndarray
    bun_base: np.ndarray
    wbc_base: np.ndarray
    haemoglobin_base: np.ndarray
    albumin_base: np.ndarray
    sodium_base: np.ndarray
    lung_damage_base: np.ndarray
    sedation_depth: np.ndarray
    attending: np.ndarray
    first_line: np.ndarray  # index into FIRST_LINE_AGENTS
    prophylaxis: np.ndarray

    @property
    def n(self) -> int:
        return len(self.stay_id)

    def take(self, idx: np.ndarray) -> Stays:
        return Stays(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass
class Attendings:
    """Practice style of each attending physician (the behaviour policy varies by attending)."""

    fluid_bias: np.ndarray
    balance_tolerance_l: np.ndarray
    vaso_start_map: np.ndarray
    fluid_before_vaso_l: np.ndarray
    antibiotic_speed: np.ndarray
    over_fluid: np.ndarray
    late_vasopressor: np.ndarray
    provider_id: list[str]


def sample_attendings(cfg: SynthConfig, seed: int) -> Attendings:
    """The hospital's attendings (same for every chunk of a world with this seed)."""
    c = cfg.clinicians
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA77E]))
    n = c.n_attendings
    over = rng.random(n) < c.over_fluid_fraction
    late = rng.random(n) < c.late_vasopressor_fraction
    fluid_bias = rng.normal(0.0, c.fluid_bias_sd, n) + 0.9 * over
    balance_tol = rng.uniform(2.0, 4.0, n) + 4.0 * over
    start_map = rng.uniform(c.vaso_start_map.low, c.vaso_start_map.high, n) - 5.0 * late
    fluid_before = rng.uniform(c.fluid_before_vaso_l.low, c.fluid_before_vaso_l.high, n)
    fluid_before = fluid_before + 1.5 * late
    speed = np.exp(rng.normal(0.0, 0.35, n))
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    provider_id = [
        f"P{rng.integers(0, 1000):03d}{letters[rng.integers(0, 24)]}{letters[rng.integers(0, 24)]}"
        for _ in range(n)
    ]
    return Attendings(
        fluid_bias, balance_tol, start_map, fluid_before, speed, over, late, provider_id
    )


def sample_subjects(
    cfg: SynthConfig, rng: np.random.Generator, first_index: int, n: int
) -> Subjects:
    p = cfg.population
    o = cfg.output
    index = np.arange(first_index, first_index + n, dtype=np.int64)
    probs = np.asarray(p.stays_per_subject_probs)
    n_planned = 1 + rng.choice(len(probs), size=n, p=probs)
    female = rng.random(n) < p.female_fraction
    gender_missing = rng.random(n) < p.missing_gender_fraction
    age = np.clip(rng.normal(p.age_mean, p.age_sd, n), 18, 95)
    underage = rng.random(n) < p.underage_fraction
    age = np.where(underage, rng.integers(15, 18, n), age)
    anchor_age = np.minimum(np.floor(age), p.age_max).astype(np.int64)
    anchor_age = np.where(anchor_age > 89, p.age_max, anchor_age)
    anchor_year = rng.integers(int(o.anchor_year.low), int(o.anchor_year.high) + 1, n)
    weight = np.clip(lognormal(rng, p.weight_kg, n) * np.where(female, 0.88, 1.0), 38, 250)
    a, b = p.comorbidity_beta
    comorb = rng.beta(a, b, n)
    ckd = rng.random(n) < p.ckd_fraction * (0.5 + comorb * 1.5)
    cirrhosis = rng.random(n) < p.cirrhosis_fraction
    lung = rng.random(n) < p.lung_disease_fraction
    hf = rng.random(n) < p.heart_failure_fraction * (0.5 + comorb * 1.5)
    # first admission within three years of the anchor year
    year_start = _year_start_epoch(anchor_year)
    first_admit = year_start + rng.integers(0, 3 * 365 * SECONDS_PER_DAY, n)
    first_admit = first_admit - first_admit % 60  # whole minutes
    return Subjects(
        index=index,
        subject_id=o.first_subject_id + index,
        female=female,
        gender_missing=gender_missing,
        anchor_age=anchor_age,
        anchor_year=anchor_year,
        n_planned_stays=n_planned,
        weight_kg=weight,
        comorbidity=comorb,
        ckd=ckd,
        cirrhosis=cirrhosis,
        lung_disease=lung,
        heart_failure=hf,
        first_admit_time=first_admit.astype(np.int64),
    )


def _year_start_epoch(year: np.ndarray) -> np.ndarray:
    days = (np.asarray(year, dtype="int64") - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    return days.astype(np.int64) * SECONDS_PER_DAY


def sample_stays(
    cfg: SynthConfig,
    rng: np.random.Generator,
    subjects: Subjects,
    subject_pos: np.ndarray,
    ordinal: int | np.ndarray,
    admit_time: np.ndarray,
    n_attendings: int,
    force_infection_at_admission: bool = False,
) -> Stays:
    """Draw stay-level attributes for the given subjects (one stay each)."""
    p = cfg.population
    ph = cfg.physiology
    c = cfg.clinicians
    n = len(subject_pos)
    ordinal = np.broadcast_to(np.asarray(ordinal, dtype=np.int64), (n,)).copy()
    s = subjects
    sidx = s.index[subject_pos]
    years = (admit_time - _year_start_epoch(s.anchor_year[subject_pos])) / (
        365.25 * SECONDS_PER_DAY
    )
    age = s.anchor_age[subject_pos] + np.maximum(years, 0.0)
    comorb = s.comorbidity[subject_pos]
    ckd = s.ckd[subject_pos]
    cirr = s.cirrhosis[subject_pos]
    lung = s.lung_disease[subject_pos]
    hf = s.heart_failure[subject_pos]

    from_ed = rng.random(n) < p.ed_admission_fraction
    pre_icu = np.where(
        from_ed,
        rng.uniform(p.ed_hours.low, p.ed_hours.high, n),
        rng.uniform(p.ward_hours.low, p.ward_hours.high, n),
    )
    pre_icu_h = np.maximum(np.round(pre_icu), 1).astype(np.int64)
    planned_los = np.clip(lognormal(rng, p.planned_icu_los_h, n), 6, p.max_icu_los_h)

    u = rng.random(n)
    kind = np.where(
        u < p.infection_at_admission_fraction,
        INFECTION_AT_ADMISSION,
        np.where(
            u < p.infection_at_admission_fraction + p.infection_acquired_fraction,
            INFECTION_ACQUIRED,
            NO_INFECTION,
        ),
    )
    if force_infection_at_admission:
        kind[:] = INFECTION_AT_ADMISSION
    acquired_h = pre_icu_h + rng.uniform(18.0, 24.0 + planned_los * 1.3, n)
    # community infections start around hospital admission (ED arrivals) or declare themselves
    # on the ward in the hours before the ICU transfer they cause
    at_admission_h = np.where(
        from_ed,
        rng.integers(0, 3, n),
        np.maximum(pre_icu_h - rng.uniform(4.0, 20.0, n), 0.0).round(),
    )
    infection_h = np.select(
        [kind == INFECTION_AT_ADMISSION, kind == INFECTION_ACQUIRED],
        [at_admission_h, np.round(acquired_h)],
        -1,
    ).astype(np.int64)
    severity = rng.uniform(p.infection_severity.low, p.infection_severity.high, n)
    severity *= 1.0 + 0.4 * comorb
    growth = rng.uniform(p.infection_growth_per_h.low, p.infection_growth_per_h.high, n)
    kill = rng.uniform(p.antibiotic_kill_per_h.low, p.antibiotic_kill_per_h.high, n)
    resistant = rng.random(n) < p.resistant_fraction

    cardiac = rng.uniform(ph.cardiac_reserve.low, ph.cardiac_reserve.high, n) - 0.25 * hf
    fluid_tol = lognormal(rng, ph.fluid_tolerance_l, n) * np.where(hf, 0.6, 1.0)
    first_line_p = np.array([c.first_line_probs.get(a, 0.0) for a in FIRST_LINE_AGENTS])
    attending = rng.integers(0, n_attendings, n)
    female = s.female[subject_pos]
    return Stays(
        subject_pos=subject_pos.astype(np.int64),
        ordinal=ordinal,
        subject_id=s.subject_id[subject_pos],
        hadm_id=cfg.output.first_hadm_id + sidx * 4 + ordinal,
        stay_id=cfg.output.first_stay_id + sidx * 4 + ordinal,
        admit_time=admit_time.astype(np.int64),
        age=age,
        weight_kg=s.weight_kg[subject_pos] * np.exp(rng.normal(0, 0.03, n)),
        comorbidity=comorb,
        ckd=ckd,
        cirrhosis=cirr,
        lung_disease=lung,
        heart_failure=hf,
        from_ed=from_ed,
        pre_icu_h=pre_icu_h,
        planned_los_h=planned_los,
        ventilated_at_admission=rng.random(n) < p.ventilated_at_admission,
        infection_kind=kind.astype(np.int64),
        infection_h=infection_h,
        infection_severity=severity,
        infection_growth=growth,
        antibiotic_kill=kill,
        resistant=resistant,
        fever_sign=np.where(rng.random(n) < 0.8, 1.0, -0.6),
        leukocyte_sign=np.where(rng.random(n) < 0.85, 1.0, -0.5),
        fluid_response=lognormal(rng, ph.fluid_response, n),
        fluid_tolerance_l=fluid_tol,
        vaso_sensitivity=lognormal(rng, ph.vaso_sensitivity, n),
        cardiac_reserve=np.clip(cardiac, 0.3, 1.3),
        map_base=lognormal(rng, ph.map_base, n) + 0.08 * (age - 60),
        hr_base=rng.normal(78, 9, n),
        creatinine_base=np.where(
            ckd, rng.uniform(1.4, 3.2, n), rng.uniform(0.6, 1.05, n) * np.where(female, 0.85, 1.0)
        ),
        bilirubin_base=np.where(cirr, rng.uniform(1.5, 4.5, n), rng.uniform(0.3, 0.9, n)),
        platelets_base=np.where(cirr, rng.uniform(60, 140, n), rng.uniform(160, 360, n)),
        bun_base=np.where(ckd, rng.uniform(30, 60, n), rng.uniform(9, 22, n)),
        wbc_base=rng.uniform(5.0, 10.0, n),
        haemoglobin_base=rng.normal(11.5, 1.5, n) + np.where(female, -0.8, 0.0),
        albumin_base=np.where(cirr, rng.uniform(2.2, 3.0, n), rng.uniform(3.0, 4.3, n)),
        sodium_base=rng.normal(139.0, 2.5, n),
        lung_damage_base=np.where(lung, rng.uniform(0.15, 0.4, n), rng.uniform(0.0, 0.08, n)),
        sedation_depth=rng.uniform(0.2, 1.0, n),
        attending=attending,
        first_line=rng.choice(len(FIRST_LINE_AGENTS), size=n, p=first_line_p),
        prophylaxis=rng.random(n) < c.prophylaxis_fraction,
    )
