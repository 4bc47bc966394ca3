"""Typed configuration of ``sepsisrl build`` (defaults: ``configs/pipeline.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sepsisrl.config import StrictModel, load_config

N_BASE_FEATURES = 37


class EngineConfig(StrictModel):
    threads: int = Field(ge=0)
    memory_limit: str


class SourceConfig(StrictModel):
    kind: Literal["auto", "mimic-iv", "synthetic"]
    version: Literal["auto", "2.2", "3.1"]
    fail_on_unknown_rate_unit: bool


class VasopressorConfig(StrictModel):
    itemid: int
    factor: float = Field(gt=0)


class VentilationConfig(StrictModel):
    devices: list[str]
    window_hours: float = Field(gt=0)


class GcsConfig(StrictModel):
    intubated_verbal: Literal["charted", "normal"]
    intubated_text: str


class CohortConfig(StrictModel):
    min_age: float
    max_age: float | None
    min_icu_los_hours: float = Field(ge=0)
    onset_window_before_intime_hours: float = Field(ge=0)
    first_stay: Literal["first_qualifying", "first_overall"]


class SepsisConfig(StrictModel):
    antibiotic_patterns: list[str] = Field(min_length=1)
    exclude_drug_patterns: list[str]
    exclude_routes: list[str]
    culture_before_antibiotic_hours: float = Field(gt=0)
    antibiotic_before_culture_hours: float = Field(gt=0)
    sofa_before_si_hours: float = Field(ge=0)
    sofa_after_si_hours: float = Field(ge=0)
    sofa_threshold: int = Field(ge=1)
    onset: Literal["min", "si"]
    sofa_hours_before_intime: int = Field(ge=0)


class EpisodeConfig(StrictModel):
    step_hours: int = Field(gt=0)
    hours_before_onset: int = Field(ge=0)
    n_steps: int = Field(gt=0)


class SplitConfig(StrictModel):
    fractions: dict[Literal["train", "validation", "test"], float]
    seed: int
    stratify_by_mortality: bool

    @model_validator(mode="after")
    def _sum(self) -> SplitConfig:
        if set(self.fractions) != {"train", "validation", "test"}:
            raise ValueError("split.fractions needs train, validation and test")
        if abs(sum(self.fractions.values()) - 1.0) > 1e-9:
            raise ValueError(f"split.fractions must sum to 1, got {sum(self.fractions.values())}")
        return self


class FeatureSpec(StrictModel):
    name: str
    agg: Literal["last", "min", "max", "sum", "cum", "static", "derived"]
    impute: Literal["ff", "med", "zero", "none"]
    valid: tuple[float, float] | None
    clip: tuple[float, float]
    flag: bool


class NormalisationConfig(StrictModel):
    log1p: list[str]
    use_log1p: bool


class ActionConfig(StrictModel):
    vaso_bins: int = Field(ge=2)
    fluid_bins: int = Field(ge=2)


class RewardConfig(StrictModel):
    terminal_survived: float
    terminal_died: float
    mortality_days: float = Field(gt=0)
    sofa_delta_weight: float
    lactate_clearance_weight: float
    map_deficit_weight: float
    map_target: float
    variants: list[Literal["sparse", "sofa_shaped", "full_shaped"]] = Field(min_length=1)
    gamma: float = Field(gt=0, le=1)


class BuildConfig(StrictModel):
    engine: EngineConfig
    source: SourceConfig
    items: dict[str, list[int]]
    vasopressors: dict[str, VasopressorConfig]
    ventilation: VentilationConfig
    gcs: GcsConfig
    cohort: CohortConfig
    sepsis: SepsisConfig
    episodes: EpisodeConfig
    split: SplitConfig
    features: list[FeatureSpec]
    normal_values: dict[str, float]
    normalisation: NormalisationConfig
    actions: ActionConfig
    rewards: RewardConfig
    expected_counts: dict[str, dict[str, tuple[int, int]]]

    @model_validator(mode="after")
    def _features(self) -> BuildConfig:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("features: duplicate feature names")
        for f in self.features:
            if f.impute in ("ff", "med") and f.name not in self.normal_values:
                raise ValueError(
                    f"features: {f.name} needs a normal_values entry (last-resort impute)"
                )
        required = {
            "heart_rate", "map_arterial", "map_noninvasive", "sbp_arterial", "sbp_noninvasive",
            "dbp_arterial", "dbp_noninvasive", "resp_rate", "temperature_c", "temperature_f",
            "spo2", "gcs_eye", "gcs_verbal", "gcs_motor", "fio2", "peep", "weight_kg",
            "weight_lb", "o2_device", "ventilator_mode", "pao2", "paco2", "arterial_ph",
            "bicarbonate", "base_excess", "lactate", "creatinine", "bun", "bilirubin_total",
            "albumin", "sodium", "potassium", "glucose", "inr", "ptt", "wbc", "haemoglobin",
            "haematocrit", "platelets", "specimen_type", "urine", "urine_negative", "iv_fluids",
            "dobutamine",
        }  # fmt: skip
        missing = required - set(self.items)
        if missing:
            raise ValueError(f"items: missing concepts {sorted(missing)}")
        return self

    @property
    def feature_names(self) -> list[str]:
        """The state's column order: base features, then missingness flags."""
        base = [f.name for f in self.features]
        flags = [f"{f.name}_missing" for f in self.features if f.flag]
        return base + flags


def load_build_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> BuildConfig:
    return load_config(BuildConfig, "pipeline", path, overrides)
