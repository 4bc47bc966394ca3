"""Typed configuration of ``sepsisrl build`` (defaults: ``configs/build.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sepsisrl.config import StrictModel, load_config

#: The features a ``running_treatment`` state adds (computed in ``dataset/state.py``).
RUNNING_TREATMENT_FEATURES = (
    "vaso_rate_nor_equiv_at_tau",
    "iv_fluid_4h_before_tau",
    "prev_vaso_bin",
    "prev_fluid_bin",
    "hours_since_icu_admission",
)


#: The concepts ``sql/lab_measurements.sql`` writes to the measurements table.
LAB_MEASUREMENT_CONCEPTS = frozenset(
    {
        "pao2", "paco2", "arterial_ph", "bicarbonate", "base_excess", "lactate", "creatinine",
        "bun", "bilirubin_total", "albumin", "sodium", "potassium", "glucose", "inr", "ptt",
        "wbc", "haemoglobin", "haematocrit", "platelets", "fio2_bg",
    }
)  # fmt: skip


class EngineConfig(StrictModel):
    threads: int = Field(ge=0)
    memory_limit: str


class CoreFeaturesConfig(StrictModel):
    """State features a build refuses to go without (``dataset/coverage.py``)."""

    max_unavailable_share: float = Field(gt=0, le=1)
    tables: dict[str, list[str]]


class SourceConfig(StrictModel):
    kind: Literal["auto", "mimic-iv", "synthetic"]
    version: Literal["auto", "2.2", "3.1"]
    fail_on_unknown_rate_unit: bool
    fail_on_unknown_fluid_unit: bool
    allow_missing: list[str]
    core_features: CoreFeaturesConfig

    @model_validator(mode="after")
    def _tables(self) -> SourceConfig:
        from sepsisrl.mimic.schema import TABLES
        from sepsisrl.mimic.source import OPTIONAL_TABLES

        for name in self.allow_missing:
            if name not in TABLES:
                raise ValueError(
                    f"source.allow_missing: {name!r} is not a MIMIC-IV table the build reads "
                    f"(tables: {', '.join(TABLES)})"
                )
            if name not in OPTIONAL_TABLES:
                raise ValueError(
                    f"source.allow_missing: the build cannot proceed without {name!r}; only "
                    f"these tables may be missing: {', '.join(OPTIONAL_TABLES)}"
                )
        unknown = sorted(set(self.core_features.tables) - set(TABLES))
        if unknown:
            raise ValueError(
                f"source.core_features.tables: {unknown} are not MIMIC-IV tables the build reads "
                f"(tables: {', '.join(TABLES)})"
            )
        return self


#: What a raw-table integrity check does with the rows it finds (``integrity:``).
Refuse = Literal["refuse", "drop"]

#: ``integrity.plausible_max`` keys besides the vasopressors, and the unit of each limit.
PLAUSIBLE_OTHER = {"dobutamine": "mcg/kg/min", "iv_fluid": "mL per inputevents row"}


class IntegrityConfig(StrictModel):
    """Checks of the raw tables before any clinical logic (``dataset/ingest.py``,
    ``dataset/measurements.py``); each finding is counted in the stage's ``audit.json``."""

    exact_duplicates: Literal["drop", "refuse"]
    duplicate_keys: Refuse
    orphans: Refuse
    unparseable_times: Refuse
    implausible_doses: Refuse
    reversed_intervals: Refuse
    unit_mismatches: Refuse
    expected_units: dict[str, str]
    plausible_max: dict[str, float]

    @model_validator(mode="after")
    def _limits(self) -> IntegrityConfig:
        bad = {k: v for k, v in self.plausible_max.items() if not v > 0}
        if bad:
            raise ValueError(f"integrity.plausible_max: limits must be > 0, got {bad}")
        return self


class VasopressorConfig(StrictModel):
    itemid: int
    factor: float = Field(gt=0)


class VentilationClass(StrictModel):
    name: str
    devices: list[str]
    modes: list[str]
    hamilton_modes: list[str]


class InvasiveVentilationConfig(StrictModel):
    classes: list[VentilationClass] = Field(min_length=1)
    ventilated_classes: list[str] = Field(min_length=1)
    new_episode_gap_hours: float = Field(gt=0)

    @model_validator(mode="after")
    def _classes(self) -> InvasiveVentilationConfig:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"classes: duplicate class names in {names}")
        unknown = sorted(set(self.ventilated_classes) - set(names))
        if unknown:
            raise ValueError(f"ventilated_classes: {unknown} are not classes (classes: {names})")
        return self


class AnyDeviceVentilationConfig(StrictModel):
    devices: list[str]
    window_hours: float = Field(gt=0)


class VentilationConfig(StrictModel):
    definition: Literal["invasive", "any_device"]
    invasive: InvasiveVentilationConfig
    any_device: AnyDeviceVentilationConfig


class GcsConfig(StrictModel):
    intubated: Literal["gcs_normal", "verbal_normal", "charted"]
    intubated_text: str
    carry_forward_hours: float = Field(ge=0)
    missing_component: Literal["normal", "drop"]


class LabsConfig(StrictModel):
    attribution: Literal["hadm_id", "patient_time"]
    by_patient: list[str]
    time: Literal["charttime", "storetime"]


class SofaConfig(StrictModel):
    fio2: Literal["blood_gas_first", "chart"]
    pao2_specimen: Literal["arterial", "arterial_or_unknown"]
    urine: Literal["documented_time", "icu_day"]
    vasopressor_rate: Literal["hour_end", "max_in_hour"]


class CohortConfig(StrictModel):
    min_age: float
    max_age: float | None
    min_icu_los_hours: float = Field(ge=0)
    onset_window_before_intime_hours: float = Field(ge=0)
    first_stay: Literal["first_qualifying", "first_overall"]
    age: Literal["admission_year", "anchor_age"]


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
    onset_sofa_hours_before_intime: int = Field(ge=0)
    si_attribution: Literal["icu_stay", "admission"]
    sofa_time: Literal["end", "start"]
    date_only_culture: Literal["midnight", "day_overlap"]

    @model_validator(mode="after")
    def _onset_hours(self) -> SepsisConfig:
        if self.onset_sofa_hours_before_intime > self.sofa_hours_before_intime:
            raise ValueError(
                "sepsis.onset_sofa_hours_before_intime "
                f"({self.onset_sofa_hours_before_intime}) exceeds sofa_hours_before_intime "
                f"({self.sofa_hours_before_intime}): the SOFA grid has no earlier hours"
            )
        return self


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
                f"dataset/state.py), got {names}"
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


class TreatmentConfig(StrictModel):
    carrier_fluids: Literal["exclude", "include"]
    kvo_max_rate_ml_per_hour: float = Field(ge=0)
    missing_weight: Literal["drop", "stay_weight"]


class ActionConfig(StrictModel):
    vaso_bins: int = Field(ge=2)
    fluid_bins: int = Field(ge=2)
    treatment: TreatmentConfig


#: The reward variants ``dataset/replay.py`` writes.
RewardVariant = Literal["sparse", "sofa_shaped", "sofa_state_shaped", "full_shaped"]


class RewardConfig(StrictModel):
    terminal_survived: float
    terminal_died: float
    mortality_days: float = Field(gt=0)
    sofa_delta_weight: float
    lactate_clearance_weight: float
    map_deficit_weight: float
    map_target: float
    variants: list[RewardVariant] = Field(min_length=1)
    gamma: float = Field(gt=0, le=1)


class BuildConfig(StrictModel):
    engine: EngineConfig
    source: SourceConfig
    integrity: IntegrityConfig
    items: dict[str, list[int]]
    vasopressors: dict[str, VasopressorConfig]
    ventilation: VentilationConfig
    gcs: GcsConfig
    labs: LabsConfig
    sofa: SofaConfig
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
            "weight_lb", "o2_device", "ventilator_mode", "ventilator_mode_hamilton", "pao2",
            "paco2", "arterial_ph", "fio2_bg",
            "bicarbonate", "base_excess", "lactate", "creatinine", "bun", "bilirubin_total",
            "albumin", "sodium", "potassium", "glucose", "inr", "ptt", "wbc", "haemoglobin",
            "haematocrit", "platelets", "specimen_type", "urine", "urine_negative", "iv_fluids",
            "dobutamine",
        }  # fmt: skip
        missing = required - set(self.items)
        if missing:
            raise ValueError(f"items: missing concepts {sorted(missing)}")
        limits = set(self.integrity.plausible_max)
        wanted = set(self.vasopressors) | set(PLAUSIBLE_OTHER)
        if limits != wanted:
            raise ValueError(
                "integrity.plausible_max needs one limit per vasopressor, dobutamine and "
                f"iv_fluid: missing {sorted(wanted - limits)}, unknown {sorted(limits - wanted)}"
            )
        unknown = sorted(set(self.integrity.expected_units) - set(self.items))
        if unknown:
            raise ValueError(
                f"integrity.expected_units: {unknown} are not concepts of items: (each key names "
                "the items: concept whose chartevents / labevents valueuom it states)"
            )
        unknown = sorted(set(self.labs.by_patient) - LAB_MEASUREMENT_CONCEPTS)
        if unknown:
            raise ValueError(
                f"labs.by_patient: {unknown} are not lab concepts (those are: "
                f"{', '.join(sorted(LAB_MEASUREMENT_CONCEPTS))})"
            )
        windowed = [f.name for f in self.features if f.agg in ("last", "min", "max", "sum")]
        for table, names in self.source.core_features.tables.items():
            bad = [n for n in names if n not in windowed]
            if bad:
                raise ValueError(
                    f"source.core_features.tables.{table}: {bad} are not features observed in "
                    f"decision windows (those are: {', '.join(windowed)})"
                )
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


def load_build_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> BuildConfig:
    return load_config(BuildConfig, "build", path, overrides)
