"""Typed training configuration (defaults and presets: ``configs/train.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, create_model, model_validator

from sepsisrl.config import (
    ConfigError,
    StrictModel,
    deep_merge,
    merge_user_file,
    packaged_config_path,
    validate_config,
)
from sepsisrl.rl.registry import algorithm, algorithms


class TrainSettings(StrictModel):
    """The settings every algorithm shares; ``TrainConfig`` adds one section per algorithm."""

    algo: str
    seed: int
    epochs: int = Field(gt=0)
    steps: int | None = Field(default=None, gt=0)
    batch_size: int = Field(gt=0)
    hidden_sizes: tuple[int, ...] = Field(min_length=1)
    grad_clip: float = Field(gt=0)
    reward_column: str
    device: str = Field(pattern=r"^(cpu|cuda(:\d+)?)$")  # where runs train
    threads: int = Field(ge=0)
    compile: bool
    precision: Literal["fp32", "bf16"]
    log_every: int = Field(gt=0)
    checkpoint_every: int = Field(gt=0)
    keep_checkpoints: int = Field(ge=1)

    @model_validator(mode="after")
    def _multiples(self) -> TrainSettings:
        if self.compile and not algorithm(self.algo).compile:
            able = [name for name, spec in algorithms().items() if spec.compile]
            raise ValueError(f"compile is available for {', '.join(able)} only, not {self.algo}")
        if self.precision != "fp32" and not algorithm(self.algo).stackable:
            able = [name for name, spec in algorithms().items() if spec.stackable]
            raise ValueError(
                f"precision {self.precision} is available for {', '.join(able)} only, not "
                f"{self.algo}"
            )
        if self.checkpoint_every % self.log_every:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"log_every ({self.log_every})"
            )
        return self


def _train_config() -> type[TrainSettings]:
    """``TrainConfig``: the shared settings, one section per registered algorithm (named after
    it, typed by its ``config``; ``configs/train.yaml`` holds the defaults, and a section that
    file lacks takes its class's defaults), then ``preset``."""
    specs = algorithms()
    sections: dict[str, Any] = {
        name: (spec.config, Field(default_factory=spec.config)) for name, spec in specs.items()
    }
    return create_model(
        "TrainConfig",
        __base__=TrainSettings,
        __module__=__name__,
        algo=(Literal[tuple(specs)], ...),
        **sections,
        preset=(str | None, None),
    )


#: The resolved training configuration (``load_train_config``): ``TrainSettings`` fields, a
#: section per algorithm (``iql``, ``cql``, ``bcq``, ``bc``), ``preset``.
TrainConfig = _train_config()


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
