"""Typed configuration of the synthetic MIMIC-IV world (defaults: ``configs/synth.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from sepsisrl.config import StrictModel, load_config


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
