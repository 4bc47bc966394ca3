"""Hourly SOFA (docs/clinical.md, "Sepsis-3") on hand-computed cases, through the real SQL.

Every case is one ICU stay admitted at T0 (on the hour) whose only data is the value under test,
charted in hour 2 (``[T0 + 2 h, T0 + 3 h)``); the other five components have no data, so they
score 0, are flagged missing, and the total equals the component under test. All stays are built
once per module (ingest tables -> run_measurements -> run_sepsis), with the packaged
conventions (mimic-code's) and, for the cases that tell them apart, with the legacy values of
the measurement and SOFA switches (``LEGACY``; tests/test_build_conventions_measurements.py
has the switches' own tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sepsisrl.dataset.config import load_build_config
from sepsisrl.dataset.conventions import REGISTRY
from sepsisrl.dataset.sepsis import SOFA_COMPONENTS

from .build_fixtures import (
    BILIRUBIN,
    CREATININE,
    DOBUTAMINE,
    DOPAMINE,
    EPINEPHRINE,
    FIO2,
    FIO2_BLOOD_GAS,
    GU_IRRIGANT_IN,
    GU_IRRIGANT_OUT,
    HEART_RATE,
    MAP_ARTERIAL,
    NOREPINEPHRINE,
    O2_DEVICE,
    PAO2,
    PHENYLEPHRINE,
    PLATELETS,
    URINE_FOLEY,
    VASOPRESSIN,
    VENTILATOR_MODE,
    VENTILATOR_MODE_HAMILTON,
    IngestTables,
    Stay,
    at,
    build_sepsis,
)

HOUR = 2  # the SOFA hour every boundary case is read at
WHEN = HOUR + 0.5  # the charttime (hours after intime) of the value under test

AddRows = Callable[[IngestTables, Stay], None]

#: the legacy values of the measurement and SOFA conventions (dataset/conventions.py)
LEGACY = {
    c.key: c.legacy
    for c in REGISTRY
    if c.key.split(".")[0] in ("gcs", "ventilation", "sofa", "labs")
}


# --- what one case charts -------------------------------------------------------------------


def gas(
    pao2: float,
    *,
    fio2_charts: tuple[tuple[float, float], ...] = ((-1.0, 50.0),),
    vent_hours_before: float | None = None,
    charts: tuple[tuple[float, int, str], ...] = (),
    specimen_type: str | None = "ART.",
    fio2_with_gas: float | None = None,
) -> AddRows:
    """A PaO2 at WHEN (arterial unless ``specimen_type`` says otherwise; with the blood gas's
    own FiO2 in percent when ``fio2_with_gas``); FiO2 charted in percent at (hours relative to
    the gas, %); a ventilator mode charted ``vent_hours_before`` the gas; ``charts``: text
    items charted at (hours relative to the gas, itemid, value)."""

    def add(t: IngestTables, s: Stay) -> None:
        also = ((FIO2_BLOOD_GAS, fio2_with_gas),) if fio2_with_gas is not None else ()
        t.lab(s, WHEN, PAO2, pao2, specimen_type=specimen_type, also=also)
        for offset, percent in fio2_charts:
            t.chart(s, WHEN + offset, FIO2, percent)
        if vent_hours_before is not None:
            t.chart(s, WHEN - vent_hours_before, VENTILATOR_MODE, value="CMV/ASSIST")
        for offset, itemid, value in charts:
            t.chart(s, WHEN + offset, itemid, value=value)

    return add


def charted_around_gas(itemid: int, value: str) -> tuple[tuple[float, int, str], ...]:
    """``value`` charted 1 h before and 1 h after the gas: an episode of two times around it."""
    return ((-1.0, itemid, value), (1.0, itemid, value))


def lab(itemid: int, value: float) -> AddRows:
    return lambda t, s: t.lab(s, WHEN, itemid, value)


def mean_arterial_pressure(value: float) -> AddRows:
    return lambda t, s: t.chart(s, WHEN, MAP_ARTERIAL, value)


def infusion(
    itemid: int,
    rate: float,
    rateuom: str = "mcg/kg/min",
    start: float = HOUR,
    end: float = HOUR + 1,
) -> AddRows:
    """An infusion running from ``start`` to ``end`` (default: exactly through hour HOUR)."""
    return lambda t, s: t.infusion(s, start, end, itemid, rate=rate, rateuom=rateuom)


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


# an invasive ventilator mode charted 1 h before and 1 h after the gas: ventilated at the gas
VENT = charted_around_gas(VENTILATOR_MODE, "CMV/ASSIST")

# FiO2 is 50 % (0.5) unless a case says otherwise, so PaO2 x 2 is the P/F ratio.
RESPIRATION = [
    Case("pf_400_scores_0", "respiration", gas(200.0), 0),
    Case("pf_399_scores_1", "respiration", gas(199.5), 1),
    Case("pf_300_scores_1", "respiration", gas(150.0), 1),
    Case("pf_299_scores_2", "respiration", gas(149.5), 2),
    Case("pf_200_ventilated_scores_2", "respiration", gas(100.0, charts=VENT), 2),
    Case("pf_199_ventilated_scores_3", "respiration", gas(99.5, charts=VENT), 3),
    Case("pf_100_ventilated_scores_3", "respiration", gas(50.0, charts=VENT), 3),
    Case("pf_99_ventilated_scores_4", "respiration", gas(49.5, charts=VENT), 4),
    Case("pf_199_not_ventilated_capped_at_2", "respiration", gas(99.5), 2),
    Case("pf_99_not_ventilated_capped_at_2", "respiration", gas(49.5), 2),
    # ventilation.definition: invasive (mimic-code's InvasiveVent episodes)
    Case(
        "pf_99_endotracheal_tube_counts_as_ventilated",
        "respiration",
        gas(49.5, charts=charted_around_gas(O2_DEVICE, "Endotracheal tube")),
        4,
    ),
    Case(
        "pf_99_hamilton_invasive_mode_counts_as_ventilated",
        "respiration",
        gas(49.5, charts=charted_around_gas(VENTILATOR_MODE_HAMILTON, "ASV")),
        4,
    ),
    Case(
        "pf_99_one_ventilator_chart_is_no_episode",
        "respiration",
        gas(49.5, vent_hours_before=1.0),
        2,
    ),
    Case(
        # a tracheostomy is its own class, before invasive ventilation (as in mimic-code)
        "pf_99_tracheostomy_on_a_ventilator_is_not_invasive_ventilation",
        "respiration",
        gas(
            49.5,
            charts=charted_around_gas(O2_DEVICE, "Tracheostomy tube")
            + charted_around_gas(VENTILATOR_MODE, "CMV/ASSIST"),
        ),
        2,
    ),
    Case(
        "pf_99_noninvasive_mask_is_not_ventilation",
        "respiration",
        gas(49.5, charts=charted_around_gas(O2_DEVICE, "Bipap mask ")),
        2,
    ),
    Case(
        # ventilated at -3 h and -2 h, nasal cannula at -1 h: the episode ended before the gas
        "pf_99_episode_ends_at_the_next_other_class_chart",
        "respiration",
        gas(
            49.5,
            charts=(
                (-3.0, VENTILATOR_MODE, "SIMV/PSV"),
                (-2.0, VENTILATOR_MODE, "SIMV/PSV"),
                (-1.0, O2_DEVICE, "Nasal cannula"),
            ),
        ),
        2,
    ),
    Case(
        # ... and lasts until that chart: nasal cannula 30 min after the gas
        "pf_99_episode_lasts_until_the_next_other_class_chart",
        "respiration",
        gas(
            49.5,
            charts=(
                (-3.0, VENTILATOR_MODE, "SIMV/PSV"),
                (-2.0, VENTILATOR_MODE, "SIMV/PSV"),
                (0.5, O2_DEVICE, "Nasal cannula"),
            ),
        ),
        4,
    ),
    Case(
        # two charts 14 h apart are two single-chart episodes, neither counts
        "pf_99_charts_14h_apart_are_no_episode",
        "respiration",
        gas(
            49.5,
            charts=((-14.5, VENTILATOR_MODE, "CMV/ASSIST"), (-0.5, VENTILATOR_MODE, "CMV/ASSIST")),
        ),
        2,
    ),
    # sofa.fio2: blood_gas_first - 150 / 1.0 (the gas's own FiO2, 100 %) -> 2, not 150 / 0.5
    Case(
        "fio2_of_the_blood_gas_comes_before_the_charted_fio2",
        "respiration",
        gas(150.0, fio2_with_gas=100.0),
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
    # sofa.vasopressor_rate: hour_end - the rate running at the hour's end
    Case(
        "norepinephrine_stopped_before_the_hours_end_is_not_scored",
        "cardiovascular",
        both(
            mean_arterial_pressure(75),
            infusion(NOREPINEPHRINE, 0.2, start=HOUR + 0.1, end=HOUR + 0.6),
        ),
        0,
    ),
    Case(
        "rate_at_the_hours_end_not_the_hours_highest",
        "cardiovascular",
        both(
            infusion(NOREPINEPHRINE, 0.2, start=HOUR, end=HOUR + 0.5),
            infusion(NOREPINEPHRINE, 0.05, start=HOUR + 0.5, end=HOUR + 2),
        ),
        3,
    ),
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

# 24 h urine, sofa.urine: icu_day (legacy) - charted in ICU hours 0..23 (two rows), scored
# from hour 23 on
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


# sofa.urine: documented_time (mimic-code) - each urine chart documents the time since the
# previous one (the first: since the first heart rate, charted at intime here)
def urine_charts(*charts: tuple[float, float], heart_rate: bool = True) -> AddRows:
    """Urine (hours after intime, mL), with a heart rate at intime unless ``heart_rate`` is
    false."""

    def add(t: IngestTables, s: Stay) -> None:
        if heart_rate:
            t.chart(s, 0, HEART_RATE, 80)
        for hours, ml in charts:
            t.output(s, hours, URINE_FOLEY, ml)

    return add


def urine_irrigant_pair(t: IngestTables, s: Stay) -> None:
    # 50 mL at 6, 12 and 18 h; at 24 h 3,000 mL of irrigant in and 3,200 mL out: 200 mL of
    # urine. Over the 24 documented hours: 350 mL -> 3 (with each irrigant row capped at
    # 2,000 mL, both were dropped: 150 mL -> 4)
    urine_charts((6, 50), (12, 50), (18, 50))(t, s)
    t.output(s, 24, GU_IRRIGANT_IN, 3000)
    t.output(s, 24, GU_IRRIGANT_OUT, 3200)


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
    gas(49.5, fio2_charts=((-4 - 1 / 60, 50.0),), charts=VENT)(t, s)


OTHER_STAYS: dict[str, AddRows] = {
    "urine_100_every_6h": urine_charts((6, 100), (12, 100), (18, 100), (24, 100)),
    "urine_scaled_from_27h": urine_charts((1, 100), (28, 300)),
    "urine_over_32h": urine_charts((1, 100), (33, 100)),
    "urine_without_heart_rate": urine_charts(
        (6, 100), (12, 100), (18, 100), (24, 100), heart_rate=False
    ),
    "urine_irrigant_pair": urine_irrigant_pair,
    "persistence": persistence,
    "every_component": every_component,
    "only_map": only_map,
    "gas_without_recent_fio2": gas_without_recent_fio2,
}

# The cases whose legacy convention differs, built with LEGACY.
LEGACY_STAYS: dict[str, AddRows] = {
    **{f"urine_{total}": urine_day(total) for total in URINE_TOTALS},
    "urine_with_irrigant": urine_with_irrigant,
    "urine_irrigant_pair": urine_irrigant_pair,
    "vent_8h_before": gas(49.5, vent_hours_before=8.0),
    "vent_8h_1min_before": gas(49.5, vent_hours_before=8 + 1 / 60),
    "trach_mask": gas(49.5, charts=((-1.0, O2_DEVICE, "Trach mask"),)),
    "fio2_with_gas": gas(150.0, fio2_with_gas=100.0),
    "untyped_pao2": gas(149.5, specimen_type=None),
    "norepinephrine_stopped_in_hour": infusion(
        NOREPINEPHRINE, 0.2, start=HOUR + 0.1, end=HOUR + 0.6
    ),
}


def build_cases(
    cases: dict[str, AddRows], root: Path, overrides: dict | None = None
) -> dict[str, dict[int, dict]]:
    """{case name: {hr: sofa_hourly row}}, one stay per case."""
    tables = IngestTables()
    stays: dict[str, Stay] = {}
    for name, add in cases.items():
        stays[name] = s = tables.stay()
        add(tables, s)
    built = build_sepsis(tables, root, load_build_config(overrides=overrides))
    by_stay: dict[int, dict[int, dict]] = {}
    for row in built.rows("sepsis", "sofa_hourly"):
        by_stay.setdefault(row["stay_id"], {})[row["hr"]] = row
    return {name: by_stay[s.stay_id] for name, s in stays.items()}


@pytest.fixture(scope="module")
def sofa(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, dict]]:
    """The packaged conventions: {case name: {hr: sofa_hourly row}}."""
    cases = {c.name: c.add for c in BOUNDARY_CASES} | OTHER_STAYS
    assert len(cases) == len(BOUNDARY_CASES) + len(OTHER_STAYS), "case names must be unique"
    return build_cases(cases, Path(tmp_path_factory.mktemp("sofa")))


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, dict]]:
    """The legacy measurement and SOFA conventions: {case name: {hr: sofa_hourly row}}."""
    return build_cases(LEGACY_STAYS, Path(tmp_path_factory.mktemp("legacy")), LEGACY)


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


def test_urine_over_24_documented_hours_scores_renal(sofa):
    hours = sofa["urine_100_every_6h"]
    # at 18 h only 18 h are documented: not scored, whatever the volume
    for hr in range(0, 24):
        assert hours[hr]["urine_24h"] is None, hr
        assert hours[hr]["renal_missing"] is True, hr
    # at 24 h: 400 mL over 24 documented hours -> 3, held for the trailing 24 h
    assert hours[24]["urine_24h"] == pytest.approx(400)
    for hr in range(24, 48):
        assert hours[hr]["sofa_renal"] == 3, hr
        assert hours[hr]["renal_missing"] is False


def test_urine_is_scaled_to_24h_over_22_to_30_documented_hours(sofa):
    # 300 mL charted at 28 h documents the 27 h since the chart at 1 h: 300 / 27 * 24 mL
    hours = sofa["urine_scaled_from_27h"]
    assert hours[28]["urine_24h"] == pytest.approx(300 / 27 * 24)
    assert hours[28]["sofa_renal"] == 3
    # 100 mL at 33 h documents 32 h: more than 30, not scored
    hours = sofa["urine_over_32h"]
    assert all(r["urine_24h"] is None and r["renal_missing"] for r in hours.values())


def test_urine_without_a_heart_rate_is_not_scored(sofa):
    # the first chart's documented time starts at the stay's first heart rate (mimic-code)
    hours = sofa["urine_without_heart_rate"]
    assert all(r["sofa_renal"] == 0 and r["renal_missing"] for r in hours.values())


def test_irrigant_in_and_out_of_several_litres_net_to_the_urine(sofa, legacy):
    for built in (sofa, legacy):  # a fix in every profile
        assert built["urine_irrigant_pair"][24]["sofa_renal"] == 3
    assert sofa["urine_irrigant_pair"][24]["urine_24h"] == pytest.approx(350)
    # legacy: the calendar day of hours 1..24
    assert legacy["urine_irrigant_pair"][24]["urine_24h"] == pytest.approx(350)


@pytest.mark.parametrize(("total", "expected"), URINE_TOTALS.items())
def test_legacy_urine_over_24h_of_icu_time_scores_renal(legacy, total, expected):
    hours = legacy[f"urine_{total}"]
    assert hours[23]["urine_24h"] == pytest.approx(total)
    assert hours[23]["sofa_renal"] == expected
    assert hours[23]["renal_missing"] is False
    # no creatinine and not yet 24 h of ICU time: the urine collected so far is not scored
    assert hours[22]["sofa_renal"] == 0
    assert hours[22]["urine_24h"] is None
    assert hours[22]["renal_missing"] is True


def test_legacy_urine_scoring_uses_the_trailing_24h_only(legacy):
    # 199 mL = 99 mL in hour 4 + 100 mL in hour 20; hour 28 looks back over hours 5..28
    hours = legacy["urine_199"]
    assert hours[27]["urine_24h"] == pytest.approx(199)
    assert hours[28]["urine_24h"] == pytest.approx(100)
    assert hours[28]["sofa_renal"] == 4
    # hour 44 looks back over 21..44: no urine charted, not scored as anuria
    assert hours[44]["urine_24h"] is None
    assert hours[44]["sofa_renal"] == 0
    assert hours[44]["renal_missing"] is True


def test_legacy_gu_irrigant_instilled_is_subtracted_from_urine(legacy):
    row = legacy["urine_with_irrigant"][23]
    assert row["urine_24h"] == pytest.approx(150)
    assert row["sofa_renal"] == 4


@pytest.mark.parametrize(
    ("name", "component", "default", "legacy_value"),
    [
        # ventilation.definition: any_device ventilates for 8 h after one chart
        ("vent_8h_before", "respiration", 2, 4),
        ("vent_8h_1min_before", "respiration", 2, 2),
        ("trach_mask", "respiration", 2, 4),
        # sofa.fio2: chart - 150 / 0.5 = 300 -> 1; blood_gas_first: 150 / 1.0 -> 2
        ("fio2_with_gas", "respiration", 2, 1),
        # sofa.pao2_specimen: a gas without specimen type scores under legacy only
        ("untyped_pao2", "respiration", None, 2),
        # sofa.vasopressor_rate: max_in_hour scores an infusion stopped within the hour
        ("norepinephrine_stopped_in_hour", "cardiovascular", None, 4),
    ],
)
def test_legacy_conventions_score_these_cases_differently(
    tmp_path_factory, legacy, name, component, default, legacy_value
):
    row = legacy[name][HOUR]
    assert row[f"sofa_{component}"] == legacy_value
    built = build_cases({name: LEGACY_STAYS[name]}, Path(tmp_path_factory.mktemp(name)))
    row = built[name][HOUR]
    assert row[f"sofa_{component}"] == (default or 0)
    assert row[f"{component}_missing"] is (default is None)


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


# A SOFA hour's time is its end (sepsis.sofa_time: end, mimic-code's sofa endtime): hour h
# counts at T0 + h + 1, for the window and the onset.
ONSET_CASES = [
    # SOFA >= 2 from hour 10 (ends at 11); SI at 20: onset = min(20, 11)
    OnsetCase("sofa_before_si", sofa_hour=10.5, si_hour=20, onset=11, sofa_time=11),
    # SI at 5; SOFA >= 2 from hour 20 (ends 21, within SI + 24 h): onset = min(5, 21)
    OnsetCase("sofa_after_si", sofa_hour=20.5, si_hour=5, onset=5, sofa_time=21),
    # SOFA hour ending exactly at SI + 24 h is inside the window; ending at SI + 25 h is not
    OnsetCase("sofa_at_si_plus_24h", sofa_hour=28.5, si_hour=5, onset=5, sofa_time=29),
    OnsetCase("sofa_at_si_plus_25h", sofa_hour=29.5, si_hour=5, onset=None),
    # SOFA 3 from hour 9 lasts through hour 32; hour 31 ends at SI - 48 h: onset there
    OnsetCase("sofa_held_until_si_minus_48h", sofa_hour=9.5, si_hour=80, onset=32, sofa_time=32),
    # SOFA 3 from hour 7 lasts through hour 30 only (ends 31), before SI - 48 h: no onset
    OnsetCase("sofa_over_before_si_minus_48h", sofa_hour=7.5, si_hour=80, onset=None),
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
