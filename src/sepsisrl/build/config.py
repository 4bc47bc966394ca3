"""Typed configuration of ``sepsisrl build`` (defaults: ``configs/pipeline.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sepsisrl.config import StrictModel, load_config

N_BASE_FEATURES = 37

#: The features a ``running_treatment`` state adds (computed in ``build/state.py``).
RUNNING_TREATMENT_FEATURES = (
    "vaso_rate_nor_equiv_at_tau",
    "iv_fluid_4h_before_tau",
    "prev_vaso_bin",
    "prev_fluid_bin",
    "hours_since_icu_admission",
)


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


class RunningTreatmentConfig(StrictModel):
    replaces: list[str]
    features: list[FeatureSpec]
    log1p: list[str]

    @model_validator(mode="after")
    def _names(self) -> RunningTreatmentConfig:
        names = [f.name for f in self.features]
        if sorted(names) != sorted(RUNNING_TREATMENT_FEATURES):
            raise ValueError(
                f"features must be exactly {list(RUNNING_TREATMENT_FEATURES)} (each computed by "
                f"build/state.py), got {names}"
            )
        for f in self.features:
            if f.agg != "derived" or f.impute != "none" or f.flag or f.valid is not None:
                raise ValueError(
                    f"features: {f.name} is never missing: it needs agg: derived, impute: none, "
                    "valid: null, flag: false"
                )
        unknown = sorted(set(self.log1p) - set(names))
        if unknown:
            raise ValueError(f"log1p: {unknown} are not features of this variant")
        return self


class StateConfig(StrictModel):
    variant: Literal["card", "running_treatment"]
    running_treatment: RunningTreatmentConfig


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
    state: StateConfig
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
        rt = self.state.running_treatment
        specs = {f.name: f for f in self.features}
        for name in rt.replaces:
            # only features no other feature is computed from, and with no train median
            if name not in specs or specs[name].impute not in ("none", "zero"):
                raise ValueError(
                    f"state.running_treatment.replaces: {name!r} cannot be replaced (only base "
                    "features imputed with none or zero: "
                    f"{[f.name for f in self.features if f.impute in ('none', 'zero')]})"
                )
        clash = sorted({f.name for f in rt.features} & set(specs))
        if clash:
            raise ValueError(f"state.running_treatment.features: {clash} are base features")
        for name, n_bins in (
            ("prev_vaso_bin", self.actions.vaso_bins),
            ("prev_fluid_bin", self.actions.fluid_bins),
        ):
            lo, hi = next(f.clip for f in rt.features if f.name == name)
            if lo > 0 or hi < n_bins - 1:
                raise ValueError(
                    f"state.running_treatment.features: the clip of {name} must cover the "
                    f"bins 0..{n_bins - 1}, got [{lo}, {hi}]"
                )
        return self

    @property
    def state_features(self) -> list[FeatureSpec]:
        """The features of the configured state variant, in state order (flags excluded)."""
        if self.state.variant == "card":
            return list(self.features)
        rt = self.state.running_treatment
        return [f for f in self.features if f.name not in rt.replaces] + list(rt.features)

    @property
    def state_log1p(self) -> set[str]:
        """The state features z-scored after log1p (none unless ``normalisation.use_log1p``)."""
        if not self.normalisation.use_log1p:
            return set()
        names = set(self.normalisation.log1p)
        if self.state.variant == "running_treatment":
            names |= set(self.state.running_treatment.log1p)
        return names

    @property
    def feature_names(self) -> list[str]:
        """The state's column order: base features, then missingness flags."""
        feats = self.state_features
        base = [f.name for f in feats]
        flags = [f"{f.name}_missing" for f in feats if f.flag]
        return base + flags


def with_card_state(doc: dict[str, Any]) -> dict[str, Any]:
    """A resolved configuration (``build_config.json``) written before state variants existed
    has no ``state`` section: its state is the card layout (packaged ``state`` section, variant
    ``card``)."""
    if "state" in doc:
        return doc
    packaged = load_build_config().state.model_dump(mode="json")
    return {**doc, "state": {**packaged, "variant": "card"}}


def load_build_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> BuildConfig:
    return load_config(BuildConfig, "pipeline", path, overrides)
