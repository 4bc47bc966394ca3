"""The Sepsis-3, cohort, treatment and reward conventions (dataset/conventions.py): each switch at
mimic-code's value (the packaged default) and at the legacy value, through the real stages on
hand-made ingest tables (tests/build_fixtures.py).

Every fixture stay is admitted at T0 = 2150-03-01 08:00; times are hours after T0, and SOFA
hour h covers [T0 + h, T0 + h + 1).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from sepsisrl.config import ConfigError
from sepsisrl.dataset.cohort import run_cohort
from sepsisrl.dataset.config import BuildConfig, load_build_config
from sepsisrl.dataset.conventions import REGISTRY, profile_overrides
from sepsisrl.dataset.replay import compute_rewards, sofa_at_decision_times

from .build_fixtures import (
    MAP_ARTERIAL,
    NACL_09,
    NOREPINEPHRINE,
    PHENYLEPHRINE,
    PLATELETS,
    T0,
    WEIGHT_KG,
    IngestTables,
    Stay,
    at,
    build_measurements,
    build_sepsis,
    read_rows,
)

DAY_1 = T0.date()  # 2150-03-01; T0 is 08:00 on it
MIDNIGHT_1 = datetime(2150, 3, 1)


def config(**overrides: Any) -> BuildConfig:
    return load_build_config(overrides=overrides)


def onsets(built) -> dict[int, dict[str, Any]]:
    return {r["stay_id"]: r for r in built.rows("sepsis", "onset")}


def septic_stay(t: IngestTables, culture: float, antibiotic: float, **kw: Any) -> Stay:
    s = t.stay(**kw)
    t.culture(s, culture)
    t.antibiotic(s, antibiotic)
    return s


# --- the switches are registered with mimic-code's value as the packaged default ------------

MY_SWITCHES = {
    "sepsis.onset_sofa_hours_before_intime": (0, 24),
    "sepsis.si_attribution": ("icu_stay", "admission"),
    "sepsis.sofa_time": ("end", "start"),
    "sepsis.date_only_culture": ("midnight", "day_overlap"),
    "cohort.age": ("admission_year", "anchor_age"),
    "actions.treatment.carrier_fluids": ("exclude", "include"),
}


@pytest.mark.parametrize("key", sorted(MY_SWITCHES))
def test_switch_is_registered_and_defaults_to_mimic_code(key):
    [entry] = [c for c in REGISTRY if c.key == key]
    assert (entry.mimic_code, entry.legacy) == MY_SWITCHES[key]
    packaged = load_build_config().model_dump(mode="json")
    node: Any = packaged
    for part in key.split("."):
        node = node[part]
    assert node == entry.mimic_code
    assert profile_overrides("legacy")[key] == entry.legacy


def test_missing_weight_is_an_option_not_a_convention_difference():
    # mimic-code divides a per-minute rate by the row's patientweight (no weight, no dose), as
    # sepsisrl always did: the packaged default; stay_weight is an alternative, not a profile
    assert load_build_config().actions.treatment.missing_weight == "drop"
    assert "actions.treatment.missing_weight" not in {c.key for c in REGISTRY}


def test_onset_hours_before_intime_cannot_exceed_the_sofa_grid():
    with pytest.raises(ConfigError, match="onset_sofa_hours_before_intime"):
        config(
            **{"sepsis.sofa_hours_before_intime": 12, "sepsis.onset_sofa_hours_before_intime": 24}
        )


# --- 1. pre-ICU SOFA hours ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pre_icu_hours", "sofa_time", "onset_time"),
    [
        # ICU hours only: the platelets of hour -10 keep SOFA 3 through hour 13 (24-h window);
        # the first ICU hour (0) ends at T0 + 1
        (0, at(1), at(1)),
        # legacy: hour -10 itself defines onset, before the SI
        (24, at(-9), at(-9)),
    ],
)
def test_pre_icu_sofa_hours_define_onset_only_when_configured(
    tmp_path: Path, pre_icu_hours, sofa_time, onset_time
):
    t = IngestTables()
    s = septic_stay(t, culture=2, antibiotic=3)
    t.lab(s, -9.5, PLATELETS, 40)  # drawn in the ED: SOFA coagulation 3 from hour -10
    cfg = config(**{"sepsis.onset_sofa_hours_before_intime": pre_icu_hours})
    built = build_sepsis(t, tmp_path, cfg)
    row = onsets(built)[s.stay_id]
    assert row["si_time"] == at(2)
    assert row["sofa_time"] == sofa_time
    assert row["onset_time"] == onset_time
    # the pre-ICU lab still enters the first ICU hours' SOFA in both cases
    hours = {r["hr"]: r for r in built.rows("sepsis", "sofa_hourly") if r["stay_id"] == s.stay_id}
    assert hours[0]["sofa_coagulation"] == 3
    assert hours[13]["sofa_coagulation"] == 3
    assert hours[14]["sofa_coagulation"] == 0


# --- 2. suspicion attribution ---------------------------------------------------------------


def _two_stays_one_admission(t: IngestTables) -> tuple[Stay, Stay]:
    """Stay A (hours 0-18) and stay B (hours 20-68) of one hospital admission."""
    a = t.stay(los_hours=18)
    b = Stay(stay_id=a.stay_id + 500, subject_id=a.subject_id, hadm_id=a.hadm_id, intime=at(20))
    t.rows["icustays"].append(
        {
            "subject_id": b.subject_id,
            "hadm_id": b.hadm_id,
            "stay_id": b.stay_id,
            "intime": b.intime,
            "outtime": at(68),
        }
    )
    return a, b


@pytest.mark.parametrize("attribution", ["icu_stay", "admission"])
def test_suspicion_belongs_to_the_icu_stay_in_which_the_antibiotic_started(
    tmp_path: Path, attribution
):
    t = IngestTables()
    a, b = _two_stays_one_admission(t)
    t.culture(a, 2)
    t.antibiotic(a, 3)  # during stay A; SI at hour 2
    t.lab(b, 1.5, PLATELETS, 40)  # stay B hour 1 (T0 + 21), inside [SI - 48 h, SI + 24 h]
    # an antibiotic given before ICU admission (in the ED) belongs to no ICU stay
    ed = t.stay()
    t.culture(ed, -6)
    t.antibiotic(ed, -5)
    t.lab(ed, 2.5, PLATELETS, 40)
    cfg = config(**{"sepsis.si_attribution": attribution})
    built = build_sepsis(t, tmp_path, cfg)
    stay_of = {r["subject_id"]: r["stay_id"] for r in built.rows("sepsis", "suspicion")}
    assert stay_of == {a.subject_id: a.stay_id, ed.subject_id: None}
    got = onsets(built)
    if attribution == "icu_stay":
        assert set(got) == set()
        assert built.sepsis_audit["stays_with_suspicion"] == 1
    else:
        assert set(got) == {b.stay_id, ed.stay_id}
        assert got[b.stay_id]["si_time"] == at(2)
        assert got[ed.stay_id]["onset_time"] == at(-6)
        assert built.sepsis_audit["stays_with_suspicion"] == 3


# --- 3. onset at the SOFA hour's end --------------------------------------------------------


@pytest.mark.parametrize(("sofa_time", "expected"), [("end", at(6)), ("start", at(5))])
def test_onset_is_the_end_of_the_first_sofa_hour(tmp_path: Path, sofa_time, expected):
    t = IngestTables()
    s = septic_stay(t, culture=10, antibiotic=11)
    t.lab(s, 5.5, PLATELETS, 40)  # SOFA 3 from hour 5 = [T0 + 5, T0 + 6)
    built = build_sepsis(t, tmp_path, config(**{"sepsis.sofa_time": sofa_time}))
    row = onsets(built)[s.stay_id]
    assert (row["sofa_time"], row["onset_time"]) == (expected, expected)


@pytest.mark.parametrize(("sofa_time", "septic"), [("end", False), ("start", True)])
def test_sofa_window_after_si_is_applied_to_the_hours_time(tmp_path: Path, sofa_time, septic):
    t = IngestTables()
    s = septic_stay(t, culture=2, antibiotic=3, los_hours=72)
    # hour 26 starts at SI + 24 h (inside) and ends at SI + 25 h (outside)
    t.lab(s, 26.5, PLATELETS, 40)
    built = build_sepsis(t, tmp_path, config(**{"sepsis.sofa_time": sofa_time}))
    assert (s.stay_id in onsets(built)) is septic


# --- 4. date-only cultures ------------------------------------------------------------------


DATE_ONLY_CASES = [
    # (name, antibiotic hours, SI under midnight, SI under day_overlap)
    # antibiotic at 14:00 on the culture's day: culture first, at midnight / at the antibiotic
    ("same_day", 6, MIDNIGHT_1, at(6)),
    # antibiotic on the third day after (03-04 20:00): midnight / noon of the culture's day
    ("third_day_after", 84, MIDNIGHT_1, datetime(2150, 3, 1, 12)),
    # 03-05 01:00: more than 72 h worth of days after the culture's day in both conventions
    ("fourth_day_after", 89, None, None),
    # antibiotic the day before (02-28 20:00): antibiotic first, SI at the antibiotic
    ("day_before", -12, at(-12), at(-12)),
]


@pytest.mark.parametrize("convention", ["midnight", "day_overlap"])
def test_date_only_culture_is_placed_at_midnight_and_paired_by_day(tmp_path: Path, convention):
    t = IngestTables()
    stays = {}
    for name, abx, _, _ in DATE_ONLY_CASES:
        stays[name] = s = t.stay(los_hours=120)
        t.antibiotic(s, abx)
        t.culture(s, None, DAY_1)
    built = build_sepsis(t, tmp_path, config(**{"sepsis.date_only_culture": convention}))
    rows = built.rows("sepsis", "suspicion")
    for name, abx, si_midnight, si_overlap in DATE_ONLY_CASES:
        got = [r for r in rows if r["subject_id"] == stays[name].subject_id]
        expected = si_midnight if convention == "midnight" else si_overlap
        if expected is None:
            assert got == [], name
            continue
        [row] = got
        assert row["si_time"] == expected, name
        assert row["abx_time"] == at(abx), name
        assert row["date_only_culture"] is True, name
        assert row["culture_first"] is (abx >= 0), name
        if convention == "midnight":
            assert row["culture_time"] == MIDNIGHT_1, name


@pytest.mark.parametrize(("convention", "si"), [("midnight", at(7)), ("day_overlap", at(4))])
def test_a_timed_culture_is_preferred_to_a_date_only_one_of_the_same_day(
    tmp_path: Path, convention, si
):
    t = IngestTables()
    s = t.stay(los_hours=72)
    t.culture(s, 7)  # 03-01 15:00
    t.culture(s, None, DAY_1)  # date-only, same day (legacy: noon = hour 4)
    t.antibiotic(s, 26)  # 03-02 10:00
    built = build_sepsis(t, tmp_path, config(**{"sepsis.date_only_culture": convention}))
    [row] = built.rows("sepsis", "suspicion")
    assert row["si_time"] == si
    assert row["date_only_culture"] is (convention == "day_overlap")


# --- 5. age -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("age_rule", "age", "excluded"), [
    ("admission_year", 19, None),  # 17 in anchor year 2148, admitted in 2150
    ("anchor_age", 17, "1_not_adult"),
])  # fmt: skip
def test_age_is_the_anchor_age_shifted_to_the_admission_year(
    tmp_path: Path, age_rule, age, excluded
):
    t = IngestTables()
    s = septic_stay(t, culture=2, antibiotic=3)
    t.lab(s, 4.5, PLATELETS, 40)
    t.rows["patients"][-1].update(anchor_age=17, anchor_year=2148)
    cfg = config(**{"cohort.age": age_rule})
    built = build_sepsis(t, tmp_path, cfg)
    out = tmp_path / "cohort"
    out.mkdir()
    run_cohort(built.ingest, built.sepsis, cfg, out)
    cohort = read_rows(out / "cohort.parquet")
    dropped = {r["stay_id"]: r["failed_rule"] for r in read_rows(out / "excluded.parquet")}
    if excluded is None:
        [row] = cohort
        assert (row["stay_id"], row["age"]) == (s.stay_id, age)
    else:
        assert cohort == []
        assert dropped == {s.stay_id: excluded}


# --- 6. carrier and keep-vein-open fluids ---------------------------------------------------


def _fluids(t: IngestTables, s: Stay) -> None:
    # a bolus, a drip's diluent, a maintenance run, a keep-vein-open run
    t.infusion(s, 1, 1.5, NACL_09, amount=500, amountuom="mL")
    t.infusion(s, 2, 6, NACL_09, amount=68, amountuom="mL", rate=17, rateuom="mL/hour",
               component="Mixed solution")  # fmt: skip
    t.infusion(s, 2, 6, NACL_09, amount=400, amountuom="mL", rate=100, rateuom="mL/hour")
    t.infusion(s, 6, 16, NACL_09, amount=100, amountuom="mL", rate=10, rateuom="mL/hour")
    t.infusion(s, 16, 26, NACL_09, amount=110, amountuom="mL", rate=11, rateuom="mL/hour")


@pytest.mark.parametrize(
    ("carriers", "volumes", "excluded"),
    [("exclude", [110, 400, 500], 2), ("include", [68, 100, 110, 400, 500], 0)],
)
def test_carrier_and_keep_vein_open_fluid_is_not_resuscitation_fluid(
    tmp_path: Path, carriers, volumes, excluded
):
    t = IngestTables()
    s = t.stay()
    _fluids(t, s)
    built = build_measurements(
        t, tmp_path, config(**{"actions.treatment.carrier_fluids": carriers})
    )
    got = sorted(r["fluid_ml"] for r in built.rows("measurements", "infusions"))
    assert got == pytest.approx(volumes)
    assert built.measurements_audit["carrier_fluid_rows_excluded"] == excluded


# --- 7. vasopressor rate per minute without a weight on the row -----------------------------


@pytest.mark.parametrize("missing_weight", ["drop", "stay_weight"])
def test_rate_per_minute_without_a_row_weight_uses_the_stay_weight_known_by_then(
    tmp_path: Path, missing_weight
):
    t = IngestTables()
    charted = t.stay()
    t.chart(charted, 0.5, WEIGHT_KG, 50.0)
    t.infusion(charted, 1, 2, PHENYLEPHRINE, rate=100.0, rateuom="mcg/min", weight=None)
    infused = t.stay()  # a weight recorded with an earlier infusion
    t.infusion(infused, 0, 1, NOREPINEPHRINE, rate=0.05, rateuom="mcg/kg/min", weight=80.0)
    t.infusion(infused, 1, 2, PHENYLEPHRINE, rate=100.0, rateuom="mcg/min", weight=None)
    late = t.stay()  # the only weight is charted after the row: never used
    t.infusion(late, 1, 2, PHENYLEPHRINE, rate=100.0, rateuom="mcg/min", weight=None)
    t.chart(late, 3, WEIGHT_KG, 70.0)
    cfg = config(**{"actions.treatment.missing_weight": missing_weight})
    built = build_measurements(t, tmp_path, cfg)
    phenyl = {
        r["stay_id"]: r["agent_rate"]
        for r in built.rows("measurements", "infusions")
        if r["agent"] == "phenylephrine"
    }
    audit = built.measurements_audit
    if missing_weight == "drop":
        assert phenyl == {}
        assert audit["rate_per_minute_without_weight"] == 3
        assert audit["rate_per_minute_with_stay_weight"] == 0
    else:
        assert phenyl == pytest.approx({charted.stay_id: 2.0, infused.stay_id: 1.25})
        assert audit["rate_per_minute_without_weight"] == 1
        assert audit["rate_per_minute_with_stay_weight"] == 2


# --- 8. the state-SOFA reward ---------------------------------------------------------------


def test_sofa_state_scores_the_blood_pressure_not_the_vasopressor_dose(tmp_path: Path):
    t = IngestTables()
    treated = t.stay()  # hypotensive at hours 1-2, norepinephrine from hour 2, MAP restored
    t.chart(treated, 0.5, MAP_ARTERIAL, 75)
    t.chart(treated, 1.5, MAP_ARTERIAL, 60)
    t.infusion(treated, 2, 40, NOREPINEPHRINE, rate=0.2, rateuom="mcg/kg/min")
    t.chart(treated, 2.5, MAP_ARTERIAL, 60)
    t.chart(treated, 30.5, MAP_ARTERIAL, 75)
    built = build_sepsis(t, tmp_path)
    hours = {
        r["hr"]: r for r in built.rows("sepsis", "sofa_hourly") if r["stay_id"] == treated.stay_id
    }
    assert [hours[h]["sofa_cardiovascular"] for h in (0, 1, 2, 30)] == [0, 1, 4, 4]
    # the blood-pressure level: 1 while a MAP < 70 (hours 1-2) lies in the trailing 24 h
    assert [hours[h]["sofa_cardiovascular_map"] for h in (0, 1, 2, 25, 26, 30)] == [
        0, 1, 1, 1, 0, 0
    ]  # fmt: skip
    steps = pa.table(
        {
            "stay_id": pa.array([treated.stay_id] * 3, pa.int64()),
            "step": pa.array([0, 1, 2], pa.int16()),
            "tau": pa.array([at(1), at(3), at(31)], pa.timestamp("us")),
        }
    )
    sofa, state = sofa_at_decision_times(
        steps, built.sepsis / "sofa_hourly.parquet", load_build_config()
    )
    assert sofa.tolist() == [0, 4, 4]  # hours 0, 2, 30
    assert state.tolist() == [0, 1, 0]
    cfg = load_build_config()
    stay = np.full(3, treated.stay_id)
    args = (stay, np.zeros(3, bool), sofa, np.ones(3), np.full(3, 70.0), cfg)
    w = cfg.rewards.sofa_delta_weight
    shaped, _, _ = compute_rewards("sofa_shaped", *args)
    state_shaped, _, done = compute_rewards("sofa_state_shaped", *args, sofa_state=state)
    assert done.tolist() == [False, False, True]
    # starting norepinephrine costs 4 SOFA points in sofa_shaped, 1 (the hypotension) in
    # sofa_state_shaped, and restoring the MAP earns that point back
    assert shaped[:2] == pytest.approx([w * 4, 0.0])
    assert state_shaped[:2] == pytest.approx([w * 1, -w * 1])
    assert shaped[2] == state_shaped[2] == pytest.approx(cfg.rewards.terminal_survived)
    with pytest.raises(ValueError, match="sofa_state"):
        compute_rewards("sofa_state_shaped", *args)


def test_existing_reward_variants_are_unchanged_by_the_state_sofa():
    cfg = load_build_config()
    stay = np.array([1, 1, 1, 2, 2])
    sofa = np.array([2.0, 5.0, 3.0, 1.0, 4.0])
    state = np.array([2.0, 2.0, 2.0, 1.0, 1.0])
    args = (stay, np.array([False] * 3 + [True] * 2), sofa, np.ones(5), np.full(5, 70.0), cfg)
    for variant in ("sparse", "sofa_shaped", "full_shaped"):
        a, _, _ = compute_rewards(variant, *args)
        b, _, _ = compute_rewards(variant, *args, sofa_state=state)
        assert np.array_equal(a, b), variant
    assert "sofa_state_shaped" in cfg.rewards.variants


# --- the synthetic world's ground truth follows the same Sepsis-3 conventions ---------------


def test_synthetic_truth_counts_icu_antibiotics_and_icu_sofa_hours_at_their_end():
    from sepsisrl.synth.truth import sepsis_onset, suspected_infection_times

    # culture at 10, antibiotics at 11 (before ICU admission at 12) and at 30 (in the ICU)
    culture = [np.array([10.0, 10.0])]
    antibiotics = [np.array([11.0, 30.0])]
    window = (np.array([12.0, 12.0]), np.array([100.0, np.nan]))  # nan: still in the ICU
    si = suspected_infection_times(culture, antibiotics, antibiotic_window=window)[:, 0]
    assert np.isnan(si[0]) and si[1] == 10.0
    assert suspected_infection_times(culture, antibiotics)[:, 0].tolist() == [10.0, 10.0]
    # SOFA >= 2 from hour 5 (before ICU admission at hour 12) through hour 40
    stay = np.zeros(60, dtype=np.int64)
    hours = np.arange(60)
    sofa = np.where((hours >= 5) & (hours <= 40), 2, 0)
    legacy, _, _ = sepsis_onset(stay, hours, sofa, np.array([[20.0]]))
    assert legacy[0] == 5.0  # every hour, at its start
    onset, sofa_time, _ = sepsis_onset(
        stay, hours, sofa, np.array([[20.0]]), first_hour=np.array([12]), hour_end=True
    )
    assert (onset[0], sofa_time[0]) == (13.0, 13.0)  # ICU hour 12, at its end
