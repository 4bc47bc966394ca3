"""Unit conversions of the measurements stage (docs/clinical.md, "State" and "Actions"), run through
the real SQL on hand-made ingest tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from sepsisrl.dataset.config import load_build_config
from sepsisrl.dataset.measurements import UnitError

from .build_fixtures import (
    DOBUTAMINE,
    DOPAMINE,
    EPINEPHRINE,
    FIO2,
    GCS_EYE,
    GCS_MOTOR,
    GCS_VERBAL,
    GU_IRRIGANT_IN,
    GU_IRRIGANT_OUT,
    HEART_RATE,
    NACL_09,
    NOREPINEPHRINE,
    PHENYLEPHRINE,
    PLATELETS,
    SPO2,
    TEMPERATURE_C,
    TEMPERATURE_F,
    URINE_FOLEY,
    VASOPRESSIN,
    WEIGHT_KG,
    WEIGHT_LB,
    Built,
    IngestTables,
    Stay,
    at,
    build_measurements,
)

LB = 0.45359237  # kg per pound


def measured(built: Built, s: Stay, concept: str) -> list[float]:
    """The kept values of ``concept`` for stay ``s``, in charttime order."""
    return [
        r["value"]
        for r in built.rows("measurements", "measurements")
        if r["stay_id"] == s.stay_id and r["concept"] == concept
    ]


def infusions(built: Built, s: Stay) -> list[dict]:
    return [r for r in built.rows("measurements", "infusions") if r["stay_id"] == s.stay_id]


def test_temperature_in_fahrenheit_is_converted_to_celsius(tmp_path: Path):
    t = IngestTables()
    s = t.stay()
    t.chart(s, 1, TEMPERATURE_F, 98.6)
    t.chart(s, 2, TEMPERATURE_F, 102.2)
    t.chart(s, 3, TEMPERATURE_C, 37.5)  # already Celsius: kept as is
    built = build_measurements(t, tmp_path)
    assert measured(built, s, "temperature") == pytest.approx([37.0, 39.0, 37.5])


def test_fio2_charted_in_percent_becomes_a_fraction(tmp_path: Path):
    t = IngestTables()
    s = t.stay()
    t.chart(s, 1, FIO2, 40)  # percent -> 0.4
    t.chart(s, 2, FIO2, 100)  # percent -> 1.0
    t.chart(s, 3, FIO2, 0.5)  # already a fraction: kept
    t.chart(s, 4, FIO2, 1)  # not > 1: taken as a fraction
    built = build_measurements(t, tmp_path)
    assert measured(built, s, "fio2_vent") == pytest.approx([0.4, 1.0, 0.5, 1.0])


def test_admission_weight_in_pounds_is_converted_to_kg(tmp_path: Path):
    t = IngestTables()
    in_lb = t.stay()
    t.chart(in_lb, 1, WEIGHT_LB, 220)
    t.chart(in_lb, 30, WEIGHT_KG, 95)  # later weight: not the admission weight
    from_infusion = t.stay()  # no charted weight: the weight recorded with an infusion
    t.infusion(from_infusion, 1, 2, NACL_09, amount=500, amountuom="mL", weight=72.5)
    built = build_measurements(t, tmp_path)
    assert measured(built, in_lb, "weight_kg") == pytest.approx([220 * LB, 95])
    weights = {r["stay_id"]: r for r in built.rows("measurements", "weights")}
    assert weights[in_lb.stay_id]["weight_kg"] == pytest.approx(99.790321)
    assert weights[in_lb.stay_id]["weight_source"] == "chartevents"
    assert weights[from_infusion.stay_id]["weight_kg"] == pytest.approx(72.5)
    assert weights[from_infusion.stay_id]["weight_source"] == "inputevents"


# (agent item id, rate, rateuom, patient weight kg) -> (agent rate, NE-equivalent rate)
RATE_CASES = {
    "phenylephrine_mcg_per_min_divided_by_weight_x0.1": (
        (PHENYLEPHRINE, 100.0, "mcg/min", 80.0),
        (1.25, 0.125),
    ),
    "vasopressin_units_per_hour_to_units_per_min_x2.5": (
        (VASOPRESSIN, 2.4, "units/hour", 80.0),
        (0.04, 0.1),
    ),
    "vasopressin_units_per_min_x2.5": ((VASOPRESSIN, 0.04, "units/min", 80.0), (0.04, 0.1)),
    "dopamine_mcg_per_kg_min_x0.01": ((DOPAMINE, 10.0, "mcg/kg/min", 80.0), (10.0, 0.1)),
    "epinephrine_mcg_per_kg_min_x1": ((EPINEPHRINE, 0.05, "mcg/kg/min", 80.0), (0.05, 0.05)),
    "norepinephrine_mcg_per_kg_min_x1": ((NOREPINEPHRINE, 0.2, "mcg/kg/min", 80.0), (0.2, 0.2)),
    "norepinephrine_mg_per_kg_min_x1000": (
        (NOREPINEPHRINE, 0.0002, "mg/kg/min", 80.0),
        (0.2, 0.2),
    ),
    "norepinephrine_mcg_per_min_divided_by_weight": (
        (NOREPINEPHRINE, 16.0, "mcg/min", 80.0),
        (0.2, 0.2),
    ),
    "norepinephrine_mg_per_min_x1000_divided_by_weight": (
        (NOREPINEPHRINE, 0.016, "mg/min", 80.0),
        (0.2, 0.2),
    ),
    "norepinephrine_mcg_per_kg_hour_divided_by_60": (
        (NOREPINEPHRINE, 12.0, "mcg/kg/hour", 80.0),
        (0.2, 0.2),
    ),
    "rate_unit_case_and_spaces_ignored": (
        (NOREPINEPHRINE, 0.2, " MCG/KG/MIN ", 80.0),
        (0.2, 0.2),
    ),
    "dobutamine_kept_with_no_ne_equivalent": ((DOBUTAMINE, 5.0, "mcg/kg/min", 80.0), (5.0, 0.0)),
}


@pytest.fixture(scope="module")
def rates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """{case: infusions rows} with one stay (one infusion row) per RATE_CASES entry."""
    t = IngestTables()
    stays = {}
    for name, ((itemid, rate, uom, weight), _) in RATE_CASES.items():
        stays[name] = s = t.stay()
        t.infusion(s, 1, 3, itemid, rate=rate, rateuom=uom, weight=weight)
    built = build_measurements(t, Path(tmp_path_factory.mktemp("rates")))
    return {name: infusions(built, s) for name, s in stays.items()}


@pytest.mark.parametrize("name", RATE_CASES)
def test_vasopressor_rate_is_converted_to_agent_and_ne_equivalent_rate(rates, name):
    (itemid, _, _, _), (agent_rate, ne_rate) = RATE_CASES[name]
    [row] = rates[name]
    assert row["itemid"] == itemid
    assert row["starttime"] == at(1)
    assert row["endtime"] == at(3)
    assert row["agent_rate"] == pytest.approx(agent_rate)
    assert row["ne_rate"] == pytest.approx(ne_rate)
    assert row["fluid_ml"] is None


def test_rate_per_minute_without_a_weight_is_dropped_and_counted(tmp_path: Path):
    t = IngestTables()
    s = t.stay()
    t.infusion(s, 1, 2, PHENYLEPHRINE, rate=100.0, rateuom="mcg/min", weight=None)
    t.infusion(s, 2, 3, NOREPINEPHRINE, rate=0.1, rateuom="mcg/kg/min", weight=None)
    built = build_measurements(t, tmp_path)
    assert [r["agent"] for r in infusions(built, s)] == ["norepinephrine"]
    assert built.measurements_audit["rate_per_minute_without_weight"] == 1


def test_gu_irrigant_instilled_counts_negative_in_urine(tmp_path: Path):
    t = IngestTables()
    s = t.stay()
    t.output(s, 1, URINE_FOLEY, 120)
    t.output(s, 2, GU_IRRIGANT_IN, 300)  # irrigant in: -300 ...
    t.output(s, 2, GU_IRRIGANT_OUT, 450)  # ... irrigant + urine out: +450 -> 150 mL urine
    t.output(s, 3, GU_IRRIGANT_IN, 3000)  # several litres of irrigant in and out (over the
    t.output(s, 3, GU_IRRIGANT_OUT, 3200)  # 2,000 mL urine range each): 200 mL of urine
    t.output(s, 4, URINE_FOLEY, 2500)  # over 2000 mL at one charttime: dropped
    t.output(s, 5, URINE_FOLEY, -10)  # negative charted volume: dropped
    t.output(s, 6, GU_IRRIGANT_IN, 500)  # irrigant in without its out row: net -500, dropped
    built = build_measurements(t, tmp_path)
    urine = [(r["charttime"], r["value"]) for r in built.rows("measurements", "urine")]
    assert urine == [(at(1), 120), (at(2), 150), (at(3), 200)]
    assert built.measurements_audit["urine_rows"] == {
        "read": 8,
        "negative_rows_dropped": 1,
        "charttimes": 5,
        "charttimes_kept": 3,
        "charttimes_with_irrigant_kept": 2,
        "charttimes_dropped_out_of_range": 2,
    }


def test_iv_fluid_in_litres_becomes_millilitres(tmp_path: Path):
    t = IngestTables()
    s = t.stay()
    t.infusion(s, 1, 2, NACL_09, amount=1.0, amountuom="L")
    t.infusion(s, 2, 3, NACL_09, amount=250.0, amountuom="mL")
    t.infusion(s, 3, 4, NACL_09, amount=8.0, amountuom="oz")  # unknown: refused by default
    with pytest.raises(UnitError, match=r"'oz' x1"):
        build_measurements(t, tmp_path / "strict")
    cfg = load_build_config(overrides={"source.fail_on_unknown_fluid_unit": False})
    built = build_measurements(t, tmp_path, cfg)  # allowed: listed, not kept
    rows = infusions(built, s)
    assert [r["fluid_ml"] for r in rows] == pytest.approx([1000.0, 250.0])
    assert {r["agent"] for r in rows} == {"iv_fluid"}
    assert all(r["agent_rate"] is None for r in rows)
    assert built.measurements_audit["unknown_fluid_units"] == [{"amountuom": "oz", "rows": 1}]


def test_unknown_vasopressor_rate_unit_raises_unit_error_naming_the_unit(tmp_path: Path):
    t = IngestTables()
    s = t.stay()
    t.infusion(s, 1, 2, NOREPINEPHRINE, rate=0.1, rateuom="mcg/kg/min")
    t.infusion(s, 2, 3, NOREPINEPHRINE, rate=5.0, rateuom="mcg/hour")
    with pytest.raises(UnitError, match=r"norepinephrine: 'mcg/hour' x1"):
        build_measurements(t, tmp_path)


def test_unknown_rate_unit_is_listed_and_dropped_when_allowed(tmp_path: Path):
    cfg = load_build_config(overrides={"source.fail_on_unknown_rate_unit": False})
    t = IngestTables()
    s = t.stay()
    t.infusion(s, 1, 2, NOREPINEPHRINE, rate=0.1, rateuom="mcg/kg/min")
    t.infusion(s, 2, 3, NOREPINEPHRINE, rate=5.0, rateuom="mcg/hour")
    built = build_measurements(t, tmp_path, cfg)
    assert built.measurements_audit["unknown_rate_units"] == [
        {"agent": "norepinephrine", "rateuom": "mcg/hour", "rows": 1}
    ]
    assert [r["starttime"] for r in infusions(built, s)] == [at(1)]


def test_vasopressor_rate_without_a_unit_is_an_error(tmp_path: Path):
    t = IngestTables()
    s = t.stay()
    t.infusion(s, 1, 2, NOREPINEPHRINE, rate=0.1, rateuom=None)
    with pytest.raises(UnitError, match="norepinephrine"):
        build_measurements(t, tmp_path)


def test_out_of_range_values_are_dropped_and_counted(tmp_path: Path):
    t = IngestTables()
    s = t.stay()
    t.chart(s, 1, HEART_RATE, 80)
    t.chart(s, 2, HEART_RATE, 350)  # upper bound of 0-350: kept
    t.chart(s, 3, HEART_RATE, 351)  # dropped
    t.chart(s, 4, TEMPERATURE_F, 200)  # 93.3 C, outside 25-45 C after conversion: dropped
    t.chart(s, 5, SPO2, 49)  # outside 50-100: dropped
    t.chart(s, 6, SPO2, 50)  # kept
    t.lab(s, 1, PLATELETS, 3001)  # outside 0-3000: dropped
    built = build_measurements(t, tmp_path)
    assert measured(built, s, "heart_rate") == [80, 350]
    assert measured(built, s, "temperature") == []
    assert measured(built, s, "spo2") == [50]
    assert measured(built, s, "platelets") == []
    concepts = built.measurements_audit["concepts"]
    assert concepts["heart_rate"] == {"rows": 3, "dropped_out_of_range": 1}
    assert concepts["temperature"] == {"rows": 1, "dropped_out_of_range": 1}
    assert concepts["spo2"] == {"rows": 2, "dropped_out_of_range": 1}
    assert concepts["platelets"] == {"rows": 1, "dropped_out_of_range": 1}


@pytest.mark.parametrize(
    ("setting", "verbal_valuenum", "expected"),
    [
        ("charted", 1.0, 3 + 1 + 5),  # the charted value, 1
        ("charted", None, 3 + 1 + 5),  # no number charted: 1
        ("verbal_normal", 1.0, 3 + 5 + 5),  # verbal assumed normal, 5
        ("gcs_normal", 1.0, 15),  # the GCS before sedation assumed normal (mimic-code)
    ],
)
def test_intubated_verbal_response_follows_gcs_intubated(
    tmp_path: Path, setting, verbal_valuenum, expected
):
    cfg = load_build_config(overrides={"gcs.intubated": setting})
    t = IngestTables()
    s = t.stay()
    t.gcs(s, 1, eye=3, verbal=verbal_valuenum, motor=5, verbal_text="No Response-ETT")
    t.gcs(s, 2, eye=3, verbal=4, motor=5)  # not intubated: the charted value in both settings
    built = build_measurements(t, tmp_path, cfg)
    assert measured(built, s, "gcs_total") == [expected, 12]


def test_legacy_gcs_total_needs_all_three_components_at_one_charttime(tmp_path: Path):
    cfg = load_build_config(
        overrides={"gcs.carry_forward_hours": 0, "gcs.missing_component": "drop"}
    )
    t = IngestTables()
    s = t.stay()
    t.chart(s, 1, GCS_EYE, 4)
    t.chart(s, 1, GCS_MOTOR, 6)  # no verbal at this time
    t.chart(s, 1 + 1 / 60, GCS_VERBAL, 5)  # verbal a minute later
    built = build_measurements(t, tmp_path, cfg)
    assert measured(built, s, "gcs_total") == []
