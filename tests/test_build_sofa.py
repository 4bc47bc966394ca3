"""Hourly SOFA (clinical_spec.md section 3) on hand-computed cases, through the real SQL.

Every case is one ICU stay admitted at T0 (on the hour) whose only data is the value under test,
charted in hour 2 (``[T0 + 2 h, T0 + 3 h)``); the other five components have no data, so they
score 0, are flagged missing, and the total equals the component under test. All stays are built
once per module (ingest tables -> run_measurements -> run_sepsis).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sepsisrl.build.sepsis import SOFA_COMPONENTS

from .build_fixtures import (
    BILIRUBIN,
    CREATININE,
    DOBUTAMINE,
    DOPAMINE,
    EPINEPHRINE,
    FIO2,
    GU_IRRIGANT_IN,
    MAP_ARTERIAL,
    NOREPINEPHRINE,
    O2_DEVICE,
    PAO2,
    PHENYLEPHRINE,
    PLATELETS,
    URINE_FOLEY,
    VASOPRESSIN,
    VENTILATOR_MODE,
    IngestTables,
    Stay,
    at,
    build_sepsis,
)

HOUR = 2  # the SOFA hour every boundary case is read at
WHEN = HOUR + 0.5  # the charttime (hours after intime) of the value under test

AddRows = Callable[[IngestTables, Stay], None]


# --- what one case charts -------------------------------------------------------------------


def gas(
    pao2: float,
    *,
    fio2_charts: tuple[tuple[float, float], ...] = ((-1.0, 50.0),),
    vent_hours_before: float | None = None,
    device: str | None = None,
) -> AddRows:
    """An arterial PaO2 at WHEN; FiO2 charted in percent at (hours relative to the gas, %)."""

    def add(t: IngestTables, s: Stay) -> None:
        t.lab(s, WHEN, PAO2, pao2, specimen_type="ART.")
        for offset, percent in fio2_charts:
            t.chart(s, WHEN + offset, FIO2, percent)
        if vent_hours_before is not None:
            t.chart(s, WHEN - vent_hours_before, VENTILATOR_MODE, value="CMV/ASSIST")
        if device is not None:
            t.chart(s, WHEN - 1, O2_DEVICE, value=device)

    return add


def lab(itemid: int, value: float) -> AddRows:
    return lambda t, s: t.lab(s, WHEN, itemid, value)


def mean_arterial_pressure(value: float) -> AddRows:
    return lambda t, s: t.chart(s, WHEN, MAP_ARTERIAL, value)


def infusion(itemid: int, rate: float, rateuom: str = "mcg/kg/min") -> AddRows:
    """An infusion running exactly through hour HOUR."""
    return lambda t, s: t.infusion(s, HOUR, HOUR + 1, itemid, rate=rate, rateuom=rateuom)


def gcs(eye: int, verbal: int, motor: int) -> AddRows:
    return lambda t, s: t.gcs(s, WHEN, eye, verbal, motor)


def both(first: AddRows, second: AddRows) -> AddRows:
    def add(t: IngestTables, s: Stay) -> None:
        first(t, s)
        second(t, s)

    return add


@dataclass(frozen=True)
class Case:
    name: str
    component: str
    add: AddRows
    expected: int


VENT = 1.0  # a ventilator mode charted 1 h before the gas

# FiO2 is 50 % (0.5) unless a case says otherwise, so PaO2 x 2 is the P/F ratio.
RESPIRATION = [
    Case("pf_400_scores_0", "respiration", gas(200.0), 0),
    Case("pf_399_scores_1", "respiration", gas(199.5), 1),
    Case("pf_300_scores_1", "respiration", gas(150.0), 1),
    Case("pf_299_scores_2", "respiration", gas(149.5), 2),
    Case("pf_200_ventilated_scores_2", "respiration", gas(100.0, vent_hours_before=VENT), 2),
    Case("pf_199_ventilated_scores_3", "respiration", gas(99.5, vent_hours_before=VENT), 3),
    Case("pf_100_ventilated_scores_3", "respiration", gas(50.0, vent_hours_before=VENT), 3),
    Case("pf_99_ventilated_scores_4", "respiration", gas(49.5, vent_hours_before=VENT), 4),
    Case("pf_199_not_ventilated_capped_at_2", "respiration", gas(99.5), 2),
    Case("pf_99_not_ventilated_capped_at_2", "respiration", gas(49.5), 2),
    Case(
        "pf_99_airway_device_counts_as_ventilated",
        "respiration",
        gas(49.5, device="Endotracheal tube"),
        4,
    ),
    Case(
        "pf_99_ventilation_charted_8h_before_counts",
        "respiration",
        gas(49.5, vent_hours_before=8.0),
        4,
    ),
    Case(
        "pf_99_ventilation_charted_8h_1min_before_does_not_count",
        "respiration",
        gas(49.5, vent_hours_before=8 + 1 / 60),
        2,
    ),
    # FiO2 = the last chart in the 4 h before the gas: 150 / 0.5 = 300 -> 1; 150 / 1.0 -> 2
    Case(
        "fio2_last_chart_before_gas_is_used",
        "respiration",
        gas(150.0, fio2_charts=((-3.0, 100.0), (-1.0, 50.0))),
        1,
    ),
    Case(
        "fio2_charted_after_gas_is_not_used",
        "respiration",
        gas(150.0, fio2_charts=((-1.0, 50.0), (0.25, 100.0))),
        1,
    ),
    Case(
        "fio2_charted_exactly_4h_before_gas_is_used",
        "respiration",
        gas(150.0, fio2_charts=((-4.0, 50.0),)),
        1,
    ),
]

COAGULATION = [
    Case(f"platelets_{v:g}_scores_{e}", "coagulation", lab(PLATELETS, v), e)
    for v, e in [(150, 0), (149, 1), (100, 1), (99, 2), (50, 2), (49, 3), (20, 3), (19, 4)]
]

LIVER = [
    Case(f"bilirubin_{v:g}_scores_{e}", "liver", lab(BILIRUBIN, v), e)
    for v, e in [
        (1.19, 0),
        (1.2, 1),
        (1.99, 1),
        (2.0, 2),
        (5.99, 2),
        (6.0, 3),
        (11.99, 3),
        (12.0, 4),
    ]
]

CARDIOVASCULAR = [
    Case("map_70_scores_0", "cardiovascular", mean_arterial_pressure(70), 0),
    Case("map_69_scores_1", "cardiovascular", mean_arterial_pressure(69), 1),
    Case("dopamine_5_scores_2", "cardiovascular", infusion(DOPAMINE, 5.0), 2),
    Case("dopamine_5.5_scores_3", "cardiovascular", infusion(DOPAMINE, 5.5), 3),
    Case("dopamine_15_scores_3", "cardiovascular", infusion(DOPAMINE, 15.0), 3),
    Case("dopamine_15.5_scores_4", "cardiovascular", infusion(DOPAMINE, 15.5), 4),
    Case("dobutamine_low_dose_scores_2", "cardiovascular", infusion(DOBUTAMINE, 2.5), 2),
    Case("dobutamine_high_dose_scores_2", "cardiovascular", infusion(DOBUTAMINE, 20.0), 2),
    Case("epinephrine_0.02_scores_3", "cardiovascular", infusion(EPINEPHRINE, 0.02), 3),
    Case("epinephrine_0.1_scores_3", "cardiovascular", infusion(EPINEPHRINE, 0.1), 3),
    Case("epinephrine_0.11_scores_4", "cardiovascular", infusion(EPINEPHRINE, 0.11), 4),
    Case("norepinephrine_0.1_scores_3", "cardiovascular", infusion(NOREPINEPHRINE, 0.1), 3),
    Case("norepinephrine_0.11_scores_4", "cardiovascular", infusion(NOREPINEPHRINE, 0.11), 4),
    # norepinephrine 0.00005 mg/kg/min = 0.05 mcg/kg/min: the converted dose is scored
    Case(
        "norepinephrine_in_mg_per_kg_min_is_converted_before_scoring",
        "cardiovascular",
        infusion(NOREPINEPHRINE, 0.00005, "mg/kg/min"),
        3,
    ),
    # SOFA names dopamine, dobutamine, epinephrine and norepinephrine only: with MAP 75 under
    # phenylephrine or vasopressin the component stays 0
    Case(
        "phenylephrine_is_not_a_sofa_agent",
        "cardiovascular",
        both(mean_arterial_pressure(75), infusion(PHENYLEPHRINE, 2.0)),
        0,
    ),
    Case(
        "vasopressin_is_not_a_sofa_agent",
        "cardiovascular",
        both(mean_arterial_pressure(75), infusion(VASOPRESSIN, 2.4, "units/hour")),
        0,
    ),
    # a MAP below 70 under dopamine scores the dose, not the MAP
    Case(
        "dopamine_outranks_low_map",
        "cardiovascular",
        both(mean_arterial_pressure(60), infusion(DOPAMINE, 4.0)),
        2,
    ),
]

CNS = [
    Case(f"gcs_{e + v + m}_scores_{expected}", "cns", gcs(e, v, m), expected)
    for (e, v, m), expected in [
        ((4, 5, 6), 0),  # 15
        ((4, 4, 6), 1),  # 14
        ((3, 4, 6), 1),  # 13
        ((3, 3, 6), 2),  # 12
        ((2, 3, 5), 2),  # 10
        ((2, 2, 5), 3),  # 9
        ((1, 1, 4), 3),  # 6
        ((1, 1, 3), 4),  # 5
        ((1, 1, 1), 4),  # 3
    ]
]

RENAL_CREATININE = [
    Case(f"creatinine_{v:g}_scores_{e}", "renal", lab(CREATININE, v), e)
    for v, e in [
        (1.19, 0),
        (1.2, 1),
        (1.99, 1),
        (2.0, 2),
        (3.49, 2),
        (3.5, 3),
        (4.99, 3),
        (5.0, 4),
    ]
]

BOUNDARY_CASES = RESPIRATION + COAGULATION + LIVER + CARDIOVASCULAR + CNS + RENAL_CREATININE

# 24 h urine: charted in ICU hours 0..23 (two rows each), scored from hour 23 on
URINE_TOTALS = {500: 0, 499: 3, 200: 3, 199: 4}


def urine_day(total: float) -> AddRows:
    def add(t: IngestTables, s: Stay) -> None:
        t.output(s, 4.5, URINE_FOLEY, total - 100)
        t.output(s, 20.5, URINE_FOLEY, 100)

    return add


def urine_with_irrigant(t: IngestTables, s: Stay) -> None:
    # 600 mL charted, 450 of them irrigant instilled: 150 mL of urine in 24 h -> 4
    t.output(s, 4.5, URINE_FOLEY, 600)
    t.output(s, 4.5, GU_IRRIGANT_IN, 450)


def persistence(t: IngestTables, s: Stay) -> None:
    # platelets 40 (3) in hour 2, 120 (1) in hour 3, 200 (0) in hour 5
    t.lab(s, 2.5, PLATELETS, 40)
    t.lab(s, 3.5, PLATELETS, 120)
    t.lab(s, 5.5, PLATELETS, 200)


def every_component(t: IngestTables, s: Stay) -> None:
    gas(99.5)(t, s)  # P/F 199, not ventilated -> 2
    lab(PLATELETS, 120)(t, s)  # 1
    lab(BILIRUBIN, 2.5)(t, s)  # 2
    infusion(DOPAMINE, 10.0)(t, s)  # 3
    gcs(2, 2, 5)(t, s)  # 9 -> 3
    lab(CREATININE, 3.6)(t, s)  # 3


def only_map(t: IngestTables, s: Stay) -> None:
    t.chart(s, WHEN, MAP_ARTERIAL, 80)


def gas_without_recent_fio2(t: IngestTables, s: Stay) -> None:
    gas(49.5, fio2_charts=((-4 - 1 / 60, 50.0),), vent_hours_before=VENT)(t, s)


OTHER_STAYS: dict[str, AddRows] = {
    **{f"urine_{total}": urine_day(total) for total in URINE_TOTALS},
    "urine_with_irrigant": urine_with_irrigant,
    "persistence": persistence,
    "every_component": every_component,
    "only_map": only_map,
    "gas_without_recent_fio2": gas_without_recent_fio2,
}


@pytest.fixture(scope="module")
def sofa(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, dict]]:
    """{case name: {hr: sofa_hourly row}} for every case of this module."""
    tables = IngestTables()
    stays: dict[str, Stay] = {}
    for case in BOUNDARY_CASES:
        stays[case.name] = s = tables.stay()
        case.add(tables, s)
    for name, add in OTHER_STAYS.items():
        stays[name] = s = tables.stay()
        add(tables, s)
    assert len(stays) == len(BOUNDARY_CASES) + len(OTHER_STAYS), "case names must be unique"
    built = build_sepsis(tables, Path(tmp_path_factory.mktemp("sofa")))
    by_stay: dict[int, dict[int, dict]] = {}
    for row in built.rows("sepsis", "sofa_hourly"):
        by_stay.setdefault(row["stay_id"], {})[row["hr"]] = row
    return {name: by_stay[s.stay_id] for name, s in stays.items()}


@pytest.mark.parametrize("case", BOUNDARY_CASES, ids=lambda c: c.name)
def test_component_scores_on_both_sides_of_each_threshold(sofa, case: Case):
    row = sofa[case.name][HOUR]
    assert row[f"sofa_{case.component}"] == case.expected
    assert row[f"{case.component}_missing"] is False
    for other in SOFA_COMPONENTS:
        if other != case.component:
            assert row[f"sofa_{other}"] == 0
            assert row[f"{other}_missing"] is True
    assert row["sofa"] == case.expected


def test_trailing_window_does_not_look_ahead(sofa):
    # the hour before the value under test has no data for its component (FiO2 and
    # ventilation charted earlier score nothing without a gas)
    for case in BOUNDARY_CASES:
        row = sofa[case.name][HOUR - 1]
        assert row[f"sofa_{case.component}"] == 0, case.name
        assert row[f"{case.component}_missing"] is True, case.name


def test_fio2_charted_more_than_4h_before_the_gas_is_not_used(sofa):
    # P/F would be 99 (ventilated -> 4), but the only FiO2 is 4 h 1 min old: no ratio
    row = sofa["gas_without_recent_fio2"][HOUR]
    assert row["sofa_respiration"] == 0
    assert row["respiration_missing"] is True


@pytest.mark.parametrize(("total", "expected"), URINE_TOTALS.items())
def test_urine_over_24h_of_icu_time_scores_renal(sofa, total, expected):
    hours = sofa[f"urine_{total}"]
    assert hours[23]["urine_24h"] == pytest.approx(total)
    assert hours[23]["sofa_renal"] == expected
    assert hours[23]["renal_missing"] is False
    # no creatinine and not yet 24 h of ICU time: the urine collected so far is not scored
    assert hours[22]["sofa_renal"] == 0
    assert hours[22]["urine_24h"] is None
    assert hours[22]["renal_missing"] is True


def test_urine_scoring_uses_the_trailing_24h_only(sofa):
    # 199 mL = 99 mL in hour 4 + 100 mL in hour 20; hour 28 looks back over hours 5..28
    hours = sofa["urine_199"]
    assert hours[27]["urine_24h"] == pytest.approx(199)
    assert hours[28]["urine_24h"] == pytest.approx(100)
    assert hours[28]["sofa_renal"] == 4
    # hour 44 looks back over 21..44: no urine charted, not scored as anuria
    assert hours[44]["urine_24h"] is None
    assert hours[44]["sofa_renal"] == 0
    assert hours[44]["renal_missing"] is True


def test_gu_irrigant_instilled_is_subtracted_from_urine(sofa):
    row = sofa["urine_with_irrigant"][23]
    assert row["urine_24h"] == pytest.approx(150)
    assert row["sofa_renal"] == 4


def test_worst_value_of_the_trailing_24h_is_kept_for_24h_then_drops(sofa):
    hours = sofa["persistence"]
    assert hours[1]["sofa_coagulation"] == 0
    assert hours[1]["coagulation_missing"] is True
    # platelets 40 in hour 2 -> 3; the better values of hours 3 and 5 do not lower it
    for hr in range(2, 26):
        assert hours[hr]["sofa_coagulation"] == 3, hr
        assert hours[hr]["coagulation_missing"] is False
    # hour 26 looks back over hours 3..26: worst is 120 from hour 3 -> 1
    assert hours[26]["sofa_coagulation"] == 1
    # hours 27..28 look back over 4..28: only 200 from hour 5 -> 0, not missing
    assert hours[27]["sofa_coagulation"] == 0
    assert hours[27]["coagulation_missing"] is False
    assert hours[28]["coagulation_missing"] is False
    # hour 29 looks back over 6..29: no platelets at all
    assert hours[29]["sofa_coagulation"] == 0
    assert hours[29]["coagulation_missing"] is True


def test_components_without_data_score_0_and_are_flagged_missing(sofa):
    row = sofa["only_map"][HOUR]
    assert row["sofa_cardiovascular"] == 0
    assert row["cardiovascular_missing"] is False
    for c in SOFA_COMPONENTS:
        if c != "cardiovascular":
            assert row[f"sofa_{c}"] == 0
            assert row[f"{c}_missing"] is True
    assert row["sofa"] == 0


def test_total_sofa_is_the_sum_of_the_six_components(sofa):
    row = sofa["every_component"][HOUR]
    expected = {
        "respiration": 2,
        "coagulation": 1,
        "liver": 2,
        "cardiovascular": 3,
        "cns": 3,
        "renal": 3,
    }
    assert {c: row[f"sofa_{c}"] for c in SOFA_COMPONENTS} == expected
    assert not any(row[f"{c}_missing"] for c in SOFA_COMPONENTS)
    assert row["sofa"] == 14
    for hours in sofa.values():
        for r in hours.values():
            assert r["sofa"] == sum(r[f"sofa_{c}"] for c in SOFA_COMPONENTS)


def test_hour_grid_starts_24h_before_intime_and_ends_at_outtime(sofa):
    hours = sofa["only_map"]  # a 48 h stay admitted on the hour
    assert min(hours) == -24
    assert max(hours) == 47
    assert hours[0]["starttime"] == at(0)
    assert hours[HOUR]["starttime"] == at(HOUR)
    assert hours[HOUR]["endtime"] == at(HOUR + 1)


# --- Sepsis-3 onset -------------------------------------------------------------------------


@dataclass(frozen=True)
class OnsetCase:
    name: str
    sofa_hour: float  # platelets 40 (SOFA 3, held for 24 h) charted at this hour
    si_hour: float  # culture at si_hour, antibiotic 1 h later: SI = the culture time
    onset: float | None  # expected onset (hours after intime); None: no Sepsis-3 onset
    sofa_time: float | None = None


ONSET_CASES = [
    # SOFA >= 2 from hour 10; SI at 20: onset = min(20, 10)
    OnsetCase("sofa_before_si", sofa_hour=10.5, si_hour=20, onset=10, sofa_time=10),
    # SI at 5; SOFA >= 2 from hour 20 (within SI + 24 h): onset = min(5, 20)
    OnsetCase("sofa_after_si", sofa_hour=20.5, si_hour=5, onset=5, sofa_time=20),
    # SOFA hour starting exactly at SI + 24 h is inside the window; SI + 25 h is not
    OnsetCase("sofa_at_si_plus_24h", sofa_hour=29.5, si_hour=5, onset=5, sofa_time=29),
    OnsetCase("sofa_at_si_plus_25h", sofa_hour=30.5, si_hour=5, onset=None),
    # SOFA 3 from hour 9 lasts through hour 32 = SI - 48 h: onset there
    OnsetCase("sofa_held_until_si_minus_48h", sofa_hour=9.5, si_hour=80, onset=32, sofa_time=32),
    # SOFA 3 from hour 8 lasts through hour 31 only, before SI - 48 h: no onset
    OnsetCase("sofa_over_before_si_minus_48h", sofa_hour=8.5, si_hour=80, onset=None),
]


@pytest.fixture(scope="module")
def onsets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict | None]:
    tables = IngestTables()
    stays = {}
    for case in ONSET_CASES:
        stays[case.name] = s = tables.stay(los_hours=96)
        tables.lab(s, case.sofa_hour, PLATELETS, 40)
        tables.culture(s, case.si_hour)
        tables.antibiotic(s, case.si_hour + 1)
    built = build_sepsis(tables, Path(tmp_path_factory.mktemp("onset")))
    rows = {r["stay_id"]: r for r in built.rows("sepsis", "onset")}
    return {name: rows.get(s.stay_id) for name, s in stays.items()}


@pytest.mark.parametrize("case", ONSET_CASES, ids=lambda c: c.name)
def test_onset_is_min_of_si_and_first_sofa_2_hour_within_si_minus_48h_to_si_plus_24h(
    onsets, case: OnsetCase
):
    row = onsets[case.name]
    if case.onset is None:
        assert row is None
        return
    assert row is not None
    assert row["si_time"] == at(case.si_hour)
    assert row["sofa_time"] == at(case.sofa_time)
    assert row["onset_time"] == at(case.onset)
