"""Typed configuration of the synthetic MIMIC-IV world (defaults: ``configs/synth.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from sepsisrl.config import StrictModel, load_config

#: a probability or a fraction of rows, stays or draws
Fraction = Annotated[float, Field(ge=0, le=1)]


class Range(StrictModel):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"range high ({self.high}) < low ({self.low})")
        return self


class LogNormal(StrictModel):
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)


class PopulationConfig(StrictModel):
    stays_per_subject_probs: list[float] = Field(min_length=1, max_length=3)
    age_mean: float
    age_sd: float = Field(gt=0)
    age_max: int
    underage_fraction: float = Field(ge=0, le=1)
    female_fraction: float = Field(ge=0, le=1)
    missing_gender_fraction: float = Field(ge=0, le=1)
    weight_kg: LogNormal
    comorbidity_beta: tuple[float, float]
    ckd_fraction: float = Field(ge=0, le=1)
    cirrhosis_fraction: float = Field(ge=0, le=1)
    lung_disease_fraction: float = Field(ge=0, le=1)
    heart_failure_fraction: float = Field(ge=0, le=1)
    ed_admission_fraction: float = Field(ge=0, le=1)
    ed_hours: Range
    ward_hours: Range
    planned_icu_los_h: LogNormal
    max_icu_los_h: int = Field(gt=4)
    hospital_stay_after_icu_days: LogNormal
    readmission_gap_days: LogNormal
    ventilated_at_admission: float = Field(ge=0, le=1)
    infection_at_admission_fraction: float = Field(ge=0, le=1)
    infection_acquired_fraction: float = Field(ge=0, le=1)
    infection_severity: Range
    infection_growth_per_h: Range
    antibiotic_kill_per_h: Range
    resistant_fraction: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _probs(self) -> PopulationConfig:
        total = sum(self.stays_per_subject_probs)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"stays_per_subject_probs must sum to 1, got {total}")
        return self


class PhysiologyConfig(StrictModel):
    # haemodynamics
    map_base: LogNormal
    tone_loss_per_infection: float
    tone_time_constant_h: float = Field(gt=0)
    capillary_leak_per_h: float
    volume_per_litre: float
    volume_saturation: float
    volume_excretion_per_h: float
    fluid_response: LogNormal
    fluid_tolerance_l: LogNormal
    vaso_emax_mmhg: float
    vaso_ec50: float = Field(gt=0)
    vaso_sensitivity: LogNormal
    cardiac_reserve: Range
    map_noise_sd: float
    # perfusion, lactate and organs
    perfusion_map_mid: float
    perfusion_map_scale: float = Field(gt=0)
    lactate_production: float
    lactate_clearance_per_h: float
    high_vaso_threshold: float
    kidney_injury_per_h: float
    kidney_recovery_per_h: float
    lung_injury_per_h: float
    lung_overload_injury_per_l_h: float
    lung_recovery_per_h: float
    liver_injury_per_h: float
    coag_injury_per_h: float
    brain_injury_per_h: float
    organ_recovery_per_h: float
    # mortality
    hazard_intercept: float
    hazard_organ: float
    hazard_lactate: float
    hazard_high_vaso: float
    hazard_overload: float
    hazard_age_per_year: float
    hazard_comorbidity: float
    post_icu_intercept: float
    post_icu_organ: float
    post_icu_age_per_year: float
    post_icu_comorbidity: float
    post_icu_infection: float
    post_icu_death_days: LogNormal
    late_death_1y_probability: float = Field(ge=0, le=1)


class CliniciansConfig(StrictModel):
    n_attendings: int = Field(gt=0)
    over_fluid_fraction: float = Field(ge=0, le=1)
    late_vasopressor_fraction: float = Field(ge=0, le=1)
    fluid_bias_sd: float = Field(ge=0)
    bolus_intercept: float
    bolus_map_weight: float
    bolus_lactate_weight: float
    bolus_urine_weight: float
    bolus_volume_weight: float
    bolus_balance_weight: float
    volume_perception_sd: float = Field(ge=0)
    maintenance_fraction: float = Field(ge=0, le=1)
    vaso_start_map: Range
    vaso_target_map: float
    fluid_before_vaso_l: Range
    vaso_step: float = Field(gt=0)
    vaso_max: float = Field(gt=0)
    vasopressin_threshold: float
    first_line_probs: dict[str, float]
    map_perception_sd: float = Field(ge=0)
    suspicion_intercept: float
    suspicion_gestalt_weight: float
    false_suspicion_per_h: float = Field(ge=0)
    prophylaxis_fraction: float = Field(ge=0, le=1)
    antibiotic_delay_h: LogNormal
    culture_first_fraction: float = Field(ge=0, le=1)
    culture_missing_fraction: float = Field(ge=0, le=1)
    intubation_per_h: float = Field(ge=0, le=1)
    extubation_per_h: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _first_line(self) -> CliniciansConfig:
        allowed = {"norepinephrine", "phenylephrine", "dopamine", "epinephrine"}
        unknown = set(self.first_line_probs) - allowed
        if unknown:
            raise ValueError(
                f"first_line_probs: unknown agents {sorted(unknown)}; allowed {sorted(allowed)}"
            )
        total = sum(self.first_line_probs.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"first_line_probs must sum to 1, got {total}")
        return self


# ------------------------------------------------------------ charting habits by table
class OnTheHour(StrictModel):
    """Share of chartevents rows charted exactly on the hour (the rest at minute 1-59)."""

    vitals: Fraction
    nibp_beside_arterial_line: Fraction
    gcs: Fraction
    respiratory: Fraction


class ArterialLine(StrictModel):
    """P(arterial line) = ``arterial_line_fraction`` x (base + sick x [shock or ventilated]),
    capped at ``max_probability``."""

    base: float = Field(ge=0)
    sick: float = Field(ge=0)
    max_probability: Fraction


class ChartEventsHabits(StrictModel):
    """How often the items of ``chartevents`` are charted, beyond the calibrated rates."""

    on_the_hour: OnTheHour
    arterial_line: ArterialLine
    rr_per_vitals: Fraction
    rr_total_per_ventilated_hour: Fraction
    spo2_per_vitals: Fraction
    temperature_when_due: Fraction
    temperature_extra_per_hour: Fraction
    temperature_other_unit: Fraction
    gcs_when_due: Fraction
    gcs_verbal_missing: Fraction
    respiratory_when_due: Fraction
    fio2_unventilated_on_oxygen: Fraction
    peep_total_per_peep: Fraction
    nasal_cannula_on_oxygen: Fraction
    daily_weight_when_due: Fraction
    warning_flag: Fraction
    impossible_low_fraction: Fraction


class MorningDraw(StrictModel):
    icu: Fraction
    ward: Fraction


class PanelPerDraw(StrictModel):
    """Panels drawn with the basic metabolic panel of a routine draw."""

    cbc: Fraction
    lft: Fraction
    coag: Fraction
    lytes: Fraction


class LabEventsHabits(StrictModel):
    """When labs are drawn and which results a draw reports."""

    morning_draw: MorningDraw
    extra_draw_per_h_stable: Fraction
    blood_gas_per_h_unstable: Fraction
    blood_gas_at_admission: Fraction
    lactate_only_per_h_unstable: Fraction
    lactate_at_admission_without_gas: Fraction
    panel_per_draw: PanelPerDraw
    venous_when_unventilated: Fraction
    blood_gas_extras_fraction: Fraction
    wbc_alternative_item_fraction: Fraction
    impossible_negative_fraction: Fraction


class InputEventsHabits(StrictModel):
    albumin_25_fraction: Fraction
    propofol_per_ventilated_hour: Fraction
    transfusion_haemoglobin_below: float = Field(gt=0)
    transfusion_per_h_low_haemoglobin: Fraction


class OutputEventsHabits(StrictModel):
    void_without_foley: Fraction
    other_output_per_hour: Fraction


class PrescriptionsHabits(StrictModel):
    first_topical_fraction: Fraction
    other_topical_fraction: list[Fraction] = Field(min_length=3, max_length=3)
    admission_order_fraction: Fraction


class PositiveCulture(StrictModel):
    blood: Fraction
    other: Fraction


class MicrobiologyHabits(StrictModel):
    second_blood_set: Fraction
    urine_not_sputum: Fraction
    positive_culture: PositiveCulture
    susceptible: Fraction


class StreamOffsets(StrictModel):
    """Per-stay habits are drawn from their own random streams, seeded with the chunk's id
    base plus these offsets, so that charting hour by hour draws the same habits in every
    call. Distinct values keep the streams apart."""

    chart_habits: int = Field(ge=0)
    infusion_change_minute: int = Field(ge=0)
    phenylephrine_unit: int = Field(ge=0)
    urine_route: int = Field(ge=0)
    drip_diluent: int = Field(ge=0)

    @model_validator(mode="after")
    def _distinct(self) -> StreamOffsets:
        values = list(self.model_dump().values())
        if len(set(values)) != len(values):
            raise ValueError(f"charting.stream_offsets must be distinct, got {self.model_dump()}")
        return self


class ChartingConfig(StrictModel):
    vitals_per_hour: float = Field(ge=0, le=1)
    arterial_line_fraction: float = Field(ge=0, le=1)
    second_arterial_line_fraction: float = Field(ge=0, le=1)
    nibp_with_art_line_per_hour: float = Field(ge=0, le=1)
    fahrenheit_fraction: float = Field(ge=0, le=1)
    temperature_interval_h: int = Field(gt=0)
    gcs_interval_h: int = Field(gt=0)
    resp_interval_h: int = Field(gt=0)
    fio2_as_fraction_rate: float = Field(ge=0, le=1)
    weight_in_lb_fraction: float = Field(ge=0, le=1)
    weight_missing_fraction: float = Field(ge=0, le=1)
    foley_fraction: float = Field(ge=0, le=1)
    foley_chart_per_hour: float = Field(gt=0, le=1)
    void_chart_per_hour: float = Field(gt=0, le=1)
    gu_irrigant_fraction: float = Field(ge=0, le=1)
    gu_irrigant_chart_per_hour: float = Field(gt=0, le=1)
    gu_irrigant_in_ml: Range
    phenylephrine_mcg_min_fraction: float = Field(ge=0, le=1)
    # inputevents: statuses, bags, boluses, drip carriers, other inputs
    infusion_stopped_fraction: dict[str, float]
    infusion_pause_max_gap_h: int = Field(ge=0)
    fluid_bag_ml: float = Field(gt=0)
    bolus_push_fraction: float = Field(ge=0, le=1)
    drip_carriers: bool
    drip_concentration: dict[str, float]
    drip_diluent_d5w_fraction: dict[str, float]
    input_filler_rows_per_icu_hour: float = Field(ge=0)
    filler_drip_status_mix: dict[str, float]
    # microbiology and prescriptions
    date_only_culture_fraction: dict[str, float]
    antibiotic_enteral_fraction: float = Field(ge=0, le=1)
    routine_orders_per_icu_day: float = Field(ge=0)
    antibiotic_reorder_probability: float = Field(ge=0, le=1)
    antibiotic_reorder_delay_h: LogNormal
    # labs
    venous_gas_fraction: float = Field(ge=0, le=1)
    morning_lab_hour: int = Field(ge=0, le=23)
    extra_lab_per_h_unstable: float = Field(ge=0, le=1)
    blood_gas_per_h_ventilated: float = Field(ge=0, le=1)
    lactate_in_blood_gas_fraction: float = Field(ge=0, le=1)
    albumin_per_liver_panel: float = Field(ge=0, le=1)
    lab_result_delay_min: dict[str, LogNormal]
    # charting density: unrelated item ids so chartevents has MIMIC-like volume
    density: float = Field(ge=0, description="1.0 = MIMIC-like volume; 0 = physiology items only")
    filler_rows_per_icu_hour: float = Field(ge=0)
    # intended artifacts
    impossible_value_rate: float = Field(ge=0, le=1)
    duplicate_row_rate: float = Field(ge=0, le=1)
    null_value_rate: float = Field(ge=0, le=1)
    # charting habits by table (structure rather than calibration), and the habit streams
    chartevents: ChartEventsHabits
    labevents: LabEventsHabits
    inputevents: InputEventsHabits
    outputevents: OutputEventsHabits
    prescriptions: PrescriptionsHabits
    microbiology: MicrobiologyHabits
    stream_offsets: StreamOffsets

    @model_validator(mode="after")
    def _keys(self) -> ChartingConfig:
        drips = {"norepinephrine", "epinephrine", "phenylephrine", "dopamine", "dobutamine",
                 "vasopressin"}  # fmt: skip
        expected = {
            "drip_concentration": drips,
            "drip_diluent_d5w_fraction": drips,
            "date_only_culture_fraction": {"blood", "urine", "sputum", "mrsa"},
            "infusion_stopped_fraction": {"drip", "fluid"},
            "filler_drip_status_mix": {"FinishedRunning", "ChangeDose/Rate", "Stopped", "Paused"},
            "lab_result_delay_min": {"chemistry", "hematology", "coagulation", "blood_gas"},
        }
        for name, keys in expected.items():
            got = set(getattr(self, name))
            if got != keys:
                raise ValueError(
                    f"charting.{name}: expected keys {sorted(keys)}, got {sorted(got)}"
                )
        for name in (
            "drip_diluent_d5w_fraction",
            "date_only_culture_fraction",
            "infusion_stopped_fraction",
        ):
            bad = {k: v for k, v in getattr(self, name).items() if not 0 <= v <= 1}
            if bad:
                raise ValueError(f"charting.{name}: fractions must lie in [0, 1], got {bad}")
        total = sum(self.filler_drip_status_mix.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"charting.filler_drip_status_mix must sum to 1, got {total}")
        bad = {k: v for k, v in self.drip_concentration.items() if v <= 0}
        if bad:
            raise ValueError(f"charting.drip_concentration: must be positive, got {bad}")
        return self


class OutputConfig(StrictModel):
    chunk_subjects: int = Field(gt=0)
    gzip_level: int = Field(ge=1, le=9)
    first_subject_id: int = Field(gt=0)
    first_hadm_id: int = Field(gt=0)
    first_stay_id: int = Field(gt=0)
    anchor_year: Range


class SynthConfig(StrictModel):
    population: PopulationConfig
    physiology: PhysiologyConfig
    clinicians: CliniciansConfig
    charting: ChartingConfig
    output: OutputConfig


def load_synth_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> SynthConfig:
    """Load ``configs/synth.yaml``, merged with an optional user file and dotted overrides."""
    return load_config(SynthConfig, "synth", path, overrides)
