"""Typed training configuration (defaults and presets: ``configs/train.yaml``)."""

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


class IQLSection(StrictModel):
    actor_lr: float = Field(gt=0)
    critic_lr: float = Field(gt=0)
    value_lr: float = Field(gt=0)
    expectile: float = Field(gt=0, lt=1)
    temperature: float = Field(ge=0)
    weight_cap: float = Field(gt=0)
    polyak: float = Field(gt=0, le=1)


class CQLSection(StrictModel):
    lr: float = Field(gt=0)
    alpha: float = Field(ge=0)
    polyak: float = Field(gt=0, le=1)


class BCQSection(StrictModel):
    lr: float = Field(gt=0)
    threshold: float = Field(ge=0, le=1)
    polyak: float = Field(gt=0, le=1)


class BCSection(StrictModel):
    lr: float = Field(gt=0)


class TrainConfig(StrictModel):
    algo: Literal["iql", "cql", "bcq", "bc"]
    seed: int
    epochs: int = Field(gt=0)
    steps: int | None = Field(default=None, gt=0)
    batch_size: int = Field(gt=0)
    hidden_sizes: tuple[int, ...] = Field(min_length=1)
    grad_clip: float = Field(gt=0)
    reward_column: str
    device: str
    threads: int = Field(ge=0)
    compile: bool
    log_every: int = Field(gt=0)
    checkpoint_every: int = Field(gt=0)
    keep_checkpoints: int = Field(ge=1)
    iql: IQLSection
    cql: CQLSection
    bcq: BCQSection
    bc: BCSection
    preset: str | None = None

    @model_validator(mode="after")
    def _multiples(self) -> TrainConfig:
        if self.compile and self.algo != "iql":
            raise ValueError(f"compile is available for iql only, not {self.algo}")
        if self.checkpoint_every % self.log_every:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"log_every ({self.log_every})"
            )
        return self


def load_train_config(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults, then the preset, then a user file, then dotted overrides."""
    base = yaml.safe_load(packaged_config_path("train").read_text())
    presets = base.pop("presets", {})
    data = base
    sources = ["configs/train.yaml"]
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(sorted(presets))}")
        data = deep_merge(data, presets[preset])
        data["preset"] = preset
        sources.append(f"preset {preset}")
    data = merge_user_file(data, path, sources)
    return validate_config(TrainConfig, data, overrides, sources, "training configuration")


def available_presets() -> list[str]:
    return sorted(yaml.safe_load(packaged_config_path("train").read_text()).get("presets", {}))
