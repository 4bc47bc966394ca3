"""Typed configuration of ``sepsisrl run`` (defaults and profiles: ``configs/study.yaml``).

Three sections are overrides of another configuration: ``train`` (of ``configs/train.yaml``,
applied to every sweep and baseline run), ``build`` (of ``configs/build.yaml``) and
``evaluation.gates`` / ``evaluation.fqe`` (of ``configs/evaluate.yaml``). They are kept as the
overrides the user wrote (``plan.json`` records them so), and validated at load against the
model they override: each is merged onto the packaged defaults and validated, as are the
training configurations of every sweep candidate and baseline grid point, so a misspelt or
ill-typed setting fails here, naming its dotted key, never later inside a worker.
:meth:`StudyConfig.train_config`, :meth:`StudyConfig.build_config` and
:meth:`StudyConfig.eval_config` give the resolved, typed configurations the study runs with.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, model_validator

from sepsisrl.config import (
    ConfigError,
    StrictModel,
    deep_merge,
    error_lines,
    flatten_dotted,
    merge_user_file,
    read_packaged,
    set_dotted,
    validate_config,
    validate_dataclass,
)

if TYPE_CHECKING:
    from sepsisrl.dataset.config import BuildConfig
    from sepsisrl.ope.evaluate import EvalConfig
    from sepsisrl.rl.config import TrainConfig

#: The sweep's settings are IQL hyperparameters (``iql.<name>`` of configs/train.yaml).
SWEEP_ALGO = "iql"

#: Training settings the study sets for every run (a ``train.<key>`` would be ignored).
RUN_SETTINGS = {
    "algo": "sweep.algo and baselines.trained.<name>.algo",
    "seed": "sweep.stage1_seed and sweep.stage2_seeds",
    "threads": "threads_per_worker",
    "preset": "the run's name",
}


class SynthSection(StrictModel):
    stays: int = Field(gt=0)
    seed: int
    density: float = Field(ge=0)


class HalvingSection(StrictModel):
    enabled: bool
    eta: int = Field(ge=2)
    rungs: int = Field(ge=1)
    stop: Literal["rank", "credible"]
    baselines: bool


class SweepSection(StrictModel):
    algo: str
    rewards: list[str] = Field(min_length=1)
    lr_regimes: dict[str, dict[str, float]] = Field(min_length=1)
    iql_settings: dict[str, dict[str, float]] = Field(min_length=1)
    stage1_seed: int
    stage2_seeds: list[int]
    halving: HalvingSection

    @model_validator(mode="after")
    def _keys(self) -> SweepSection:
        if self.algo != SWEEP_ALGO:
            raise ValueError(
                f"sweep.algo={self.algo!r}: the sweep's lr_regimes (actor_lr, critic_lr, "
                f"value_lr) and iql_settings (expectile, temperature) are IQL hyperparameters, "
                f"which {self.algo!r} would ignore; the sweep tunes {SWEEP_ALGO} only (other "
                "algorithms are tuned as baselines.trained)"
            )
        for name, regime in self.lr_regimes.items():
            if set(regime) != {"actor_lr", "critic_lr", "value_lr"}:
                raise ValueError(
                    f"sweep.lr_regimes.{name}: needs exactly actor_lr, critic_lr, value_lr "
                    f"(found {', '.join(sorted(regime)) or 'none'})"
                )
        for name, setting in self.iql_settings.items():
            if set(setting) != {"expectile", "temperature"}:
                raise ValueError(
                    f"sweep.iql_settings.{name}: needs exactly expectile, temperature "
                    f"(found {', '.join(sorted(setting)) or 'none'})"
                )
        if self.stage1_seed in self.stage2_seeds:
            raise ValueError("sweep.stage2_seeds must differ from stage1_seed")
        return self


class SelectionSection(StrictModel):
    finalists: int = Field(ge=1)
    estimator: Literal["wdr", "fqe", "wis"]
    low_support_max: float = Field(ge=0, le=1)
    # a number (absolute), or "clinicians": at most the clinicians' own flags on the same states
    severe_flags_max: float | Literal["clinicians"]
    confounding_lambda: float = Field(ge=1.0)

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
    # configs/evaluate.yaml's unless set: where the behaviour model and the FQE run
    device: str = Field(pattern=r"^(cpu|cuda(:\d+)?)$")
    gates: dict[str, Any]  # overrides of configs/evaluate.yaml ``gates`` (GateConfig)
    fqe: dict[str, Any]  # overrides of configs/evaluate.yaml ``fqe`` (FQEConfig)

    @model_validator(mode="after")
    def _known(self) -> EvaluationSection:
        from sepsisrl.ope.evaluate import GateConfig
        from sepsisrl.ope.fqe import FQEConfig

        try:
            validate_dataclass(GateConfig, self.gates, "evaluation.gates")
            validate_dataclass(FQEConfig, self.fqe, "evaluation.fqe")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class TruthSection(StrictModel):
    enabled: bool
    patients: int = Field(gt=0)
    seed: int
    interface: Literal["held", "titrated"]  # how an action reaches the patient (docs/truth.md)
    # rollouts of at most this many policies in one unit, in lockstep (truth/lockstep.py)
    lockstep: int = Field(ge=1)


class StudyConfig(StrictModel):
    profile: str
    synth: SynthSection
    build: dict[str, Any]  # dotted overrides of configs/build.yaml (BuildConfig)
    workers: int = Field(ge=0)
    threads_per_worker: int = Field(ge=1)
    # between phases, a local worker holding more memory than this is replaced by a fresh one
    # (0: every phase starts on fresh workers); never part of a cache key
    recycle_workers_above_gib: float = Field(ge=0)
    # a stage's runs (the IQL candidates, the baselines' grids) as stacks, one per worker (same
    # weights as alone); auto: when they pay (bf16 or cuda; in fp32 on a CPU a run's step is
    # already bound by its matrix products)
    stack: bool | Literal["auto"]
    # where the units run; never part of a cache key (results do not depend on it)
    executor: Literal["local", "ray"]
    ray_address: str | None  # the Ray cluster (executor ray); None: a local Ray instance
    # executor ray: the share of a GPU a unit on cuda declares (never part of a cache key)
    ray_gpus_per_unit: float = Field(gt=0, le=1)
    train: dict[str, Any]  # overrides of configs/train.yaml (TrainConfig) for every run
    sweep: SweepSection
    selection: SelectionSection
    baselines: BaselineSection
    evaluation: EvaluationSection
    truth: TruthSection

    @model_validator(mode="after")
    def _resolves(self) -> StudyConfig:
        """Every configuration the study will run with validates now (errors name the key)."""
        from sepsisrl.study.selection import candidates

        self.build_config()
        train = flatten_dotted(self.train)
        self.train_config(train, "train")
        hyper = {f"iql.{k}" for v in (*self.sweep.lr_regimes.values(),
                                      *self.sweep.iql_settings.values()) for k in v}  # fmt: skip
        for key in sorted(train):
            owner = RUN_SETTINGS.get(key) or ("sweep.lr_regimes / sweep.iql_settings"
                                              if key in hyper else None)  # fmt: skip
            if owner:
                raise ValueError(
                    f"train.{key}: every run of the study sets it ({owner}), so this value "
                    "would be ignored; set it there"
                )
        for c in candidates(self):
            overrides = self.run_overrides(c["name"], self.sweep.stage1_seed,
                                           self.sweep_overrides(c))  # fmt: skip
            self.train_config(overrides, f"sweep candidate {c['name']}: train")
        for name, spec in self.baselines.trained.items():
            for point in baseline_grid(spec):
                overrides = self.run_overrides(name, self.sweep.stage1_seed,
                                               {**baseline_fixed(spec), **point,
                                                "preset": name})  # fmt: skip
                self.train_config(overrides, f"baselines.trained.{name}: train")
        return self

    # -- the resolved configurations the study runs with
    def sweep_overrides(self, candidate: dict[str, Any]) -> dict[str, Any]:
        """A sweep candidate's training settings (``iql.<hyperparameter>``)."""
        iql = {f"iql.{k}": v for k, v in candidate["hyperparameters"].items()}
        return {"algo": self.sweep.algo, **iql}

    def run_overrides(self, name: str, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
        """The dotted overrides of configs/train.yaml of one run: the study's ``train``, then
        the run's own ``overrides``, its seed and thread count (``preset``: its name)."""
        from sepsisrl.rl.registry import algorithms

        full = {**flatten_dotted(self.train), **overrides, "seed": seed,
                "threads": self.threads_per_worker}  # fmt: skip
        full.setdefault("preset", name)
        # the study's reduced precision / compilation are for the algorithms that have them
        # (precision: the stackable IQL, CQL and BC; compile: IQL); the others (BCQ) keep
        # fp32 / eager (docs/run.md). An unknown algorithm is left to the validation, which
        # names the key
        spec = algorithms().get(full.get("algo") or self.train_config({}).algo)
        if spec is not None and not spec.stackable and "precision" not in overrides:
            full.pop("precision", None)
        if spec is not None and not spec.compile and "compile" not in overrides:
            full.pop("compile", None)
        return full

    def train_config(self, overrides: dict[str, Any], what: str = "train") -> TrainConfig:
        """configs/train.yaml (no preset) with the dotted ``overrides``; errors name
        ``<what>.<key>``."""
        from sepsisrl.rl.config import TrainConfig

        return _resolve(TrainConfig, "train", flatten_dotted(overrides), what)

    def build_config(self) -> BuildConfig:
        """configs/build.yaml with the study's ``build`` overrides."""
        from sepsisrl.dataset.config import BuildConfig

        return _resolve(BuildConfig, "build", flatten_dotted(self.build), "build")

    def eval_config(self) -> EvalConfig:
        """configs/evaluate.yaml with the study's ``evaluation`` settings; the headline is the
        selection's estimator."""
        from sepsisrl.ope.evaluate import EvalConfig

        ev = self.evaluation
        return validate_dataclass(EvalConfig, {
            "bootstrap_resamples": ev.bootstrap_resamples, "bootstrap_seed": ev.bootstrap_seed,
            "seed": ev.bootstrap_seed, "headline": self.selection.estimator, "device": ev.device,
            "gates": dict(ev.gates), "fqe": dict(ev.fqe),
        }, "evaluation")  # fmt: skip


def baseline_fixed(spec: dict[str, Any]) -> dict[str, Any]:
    """A trained baseline's fixed training settings (everything but its ``grid``)."""
    return {k: v for k, v in spec.items() if k != "grid"}


def baseline_grid(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A trained baseline's grid points (dotted train settings -> value), in a fixed order."""
    import itertools

    grid = spec.get("grid") or {}
    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(grid[k] for k in keys))]  # fmt: skip


def _resolve(model: Any, name: str, overrides: dict[str, Any], what: str) -> Any:
    """Packaged ``configs/<name>.yaml`` (without presets) with dotted ``overrides``, validated;
    a ``ValueError`` naming ``<what>.<key>`` otherwise (pydantic reports it at load)."""
    data = read_packaged(name)
    data.pop("presets", None)
    try:
        for key, value in overrides.items():
            set_dotted(data, key, value)
        return model.model_validate(data)
    except ConfigError as exc:
        raise ValueError(f"{what}: {exc}") from None
    except ValidationError as exc:
        lines = error_lines(exc, what)
        raise ValueError(
            f"{'; '.join(lines)} (configs/{name}.yaml with the study's overrides)"
        ) from None


def load_study_config(
    profile: str = "quick",
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> StudyConfig:
    """Defaults, then the profile, then a user file, then dotted overrides. The evaluation's
    bootstrap settings and device default to configs/evaluate.yaml's (their only home)."""
    data = read_packaged("study")
    evaluate = read_packaged("evaluate")
    data.setdefault("evaluation", {})
    for key in ("bootstrap_resamples", "bootstrap_seed", "device"):
        data["evaluation"].setdefault(key, evaluate[key])
    profiles = data.pop("profiles")
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; available: {', '.join(sorted(profiles))}")
    data = deep_merge(data, profiles[profile])
    data["profile"] = profile
    sources = [f"configs/study.yaml (profile {profile})"]
    data = merge_user_file(data, path, sources)
    return validate_config(StudyConfig, data, overrides, sources, "study configuration")
