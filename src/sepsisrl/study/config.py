"""Typed configuration of ``sepsisrl run`` (defaults and profiles: ``configs/study.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from sepsisrl.config import (
    ConfigError,
    StrictModel,
    deep_merge,
    merge_user_file,
    packaged_config_path,
    validate_config,
)


class SynthSection(StrictModel):
    stays: int = Field(gt=0)
    seed: int
    density: float = Field(ge=0)


class SweepSection(StrictModel):
    algo: str
    rewards: list[str] = Field(min_length=1)
    lr_regimes: dict[str, dict[str, float]] = Field(min_length=1)
    iql_settings: dict[str, dict[str, float]] = Field(min_length=1)
    stage1_seed: int
    stage2_seeds: list[int]

    @model_validator(mode="after")
    def _keys(self) -> SweepSection:
        for name, regime in self.lr_regimes.items():
            if set(regime) != {"actor_lr", "critic_lr", "value_lr"}:
                raise ValueError(f"lr regime {name!r} needs exactly actor_lr, critic_lr, value_lr")
        for name, setting in self.iql_settings.items():
            if set(setting) != {"expectile", "temperature"}:
                raise ValueError(f"IQL setting {name!r} needs exactly expectile, temperature")
        if self.stage1_seed in self.stage2_seeds:
            raise ValueError("stage2_seeds must differ from stage1_seed")
        return self


class SelectionSection(StrictModel):
    finalists: int = Field(ge=1)
    estimator: Literal["wdr", "fqe", "wis"]
    low_support_max: float = Field(ge=0, le=1)
    # a number (absolute), or "clinicians": at most the clinicians' own flags on the same states
    severe_flags_max: float | Literal["clinicians"]

    @model_validator(mode="after")
    def _flags(self) -> SelectionSection:
        if not isinstance(self.severe_flags_max, str) and self.severe_flags_max < 0:
            raise ValueError("severe_flags_max must be >= 0 or 'clinicians'")
        return self


class BaselineSection(StrictModel):
    named: list[str]
    trained: dict[str, dict[str, Any]]

    @model_validator(mode="after")
    def _grids(self) -> BaselineSection:
        for name, spec in self.trained.items():
            if "algo" not in spec:
                raise ValueError(f"baselines.trained.{name} needs an algo")
            grid = spec.get("grid", {})
            if not isinstance(grid, dict) or any(
                not isinstance(v, list) or not v for v in grid.values()
            ):
                raise ValueError(
                    f"baselines.trained.{name}.grid must map dotted train settings to non-empty "
                    f"lists of values, got {grid!r}"
                )
        return self


class EvaluationSection(StrictModel):
    bootstrap_resamples: int = Field(ge=100)
    bootstrap_seed: int
    gates: dict[str, float]
    fqe: dict[str, Any]

    @model_validator(mode="after")
    def _known(self) -> EvaluationSection:
        import dataclasses

        from sepsisrl.ope.evaluate import GateConfig
        from sepsisrl.ope.fqe import FQEConfig

        for section, cls in (("gates", GateConfig), ("fqe", FQEConfig)):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(getattr(self, section)) - known)
            if unknown:
                raise ValueError(
                    f"evaluation.{section}: unknown setting(s) {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(known))}"
                )
        return self


class TruthSection(StrictModel):
    enabled: bool
    patients: int = Field(gt=0)
    seed: int


class StudyConfig(StrictModel):
    profile: str
    synth: SynthSection
    build: dict[str, Any]
    workers: int = Field(ge=0)
    threads_per_worker: int = Field(ge=1)
    train: dict[str, Any]
    sweep: SweepSection
    selection: SelectionSection
    baselines: BaselineSection
    evaluation: EvaluationSection
    truth: TruthSection


def available_profiles() -> list[str]:
    return sorted(yaml.safe_load(packaged_config_path("study").read_text())["profiles"])


def load_study_config(
    profile: str = "quick",
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> StudyConfig:
    """Defaults, then the profile, then a user file, then dotted overrides."""
    data = yaml.safe_load(packaged_config_path("study").read_text())
    profiles = data.pop("profiles")
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; available: {', '.join(sorted(profiles))}")
    data = deep_merge(data, profiles[profile])
    data["profile"] = profile
    sources = [f"configs/study.yaml (profile {profile})"]
    data = merge_user_file(data, path, sources)
    return validate_config(StudyConfig, data, overrides, sources, "study configuration")
