"""Typed artifact contracts: the JSON files one stage writes and another reads.

Each model below is one file of ``docs/contracts.md``:

================================  ===========================  ==================================
model                             file                         written by
================================  ===========================  ==================================
:class:`ReplayMeta`               ``replay/<variant>/meta.json``  ``dataset/replay.py``
:class:`EvaluationMetrics`        ``eval/<name>/metrics.json``    ``ope/evaluate.py``
:class:`Selection`                ``study/selection.json``        ``study/runner.py`` (select)
:class:`FinalRecord`              ``study/final.json``            ``study/runner.py`` (final)
:class:`ModelConfig`              ``release/<name>/config.json``  ``release/bundle.py``
================================  ===========================  ==================================

Every model is strict: a key the contract does not name is an error (a misspelt key is never
ignored), a required key has no default (a missing one is an error, never a silent fallback),
and values are not coerced (``"1"`` is not a number, ``1`` is not ``true``). Numbers keep the
JSON type they were written with, so that ``load`` followed by ``write`` gives the same bytes.
Keys that a writer adds only in some cases (the build-only keys of a replay meta, the safety
counts when raw features are at hand, the tuning record of a trained baseline) have a default
of ``None`` and are left out again on writing when they were absent.

``Model.load(path)`` reads and checks a file and raises :class:`ContractError` naming the file
and the dotted key; ``model.write(path)`` writes it atomically (temporary file + rename), in
the exact format of the writer the model stands for (``model.to_json()`` gives the text).
Sections whose content belongs to another layer (the resolved evaluation and training
configurations, the training hyper-parameters, the truth record) are JSON objects here.

A model repository that ``sepsisrl export`` did not write (the earlier published checkpoint)
has a ``config.json`` of its own layout: :func:`load_model_config` reads it as a
:class:`CheckpointConfig` (only what running the policy needs) and every other one as a
:class:`ModelConfig`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a number")
    return value


#: A JSON number, kept as written (an int stays an int, a float a float, so that a file writes
#: back to the same bytes; NaN allowed where the writers emit it). Booleans are not numbers.
Real = Annotated[Any, PlainValidator(_number, json_schema_input_type=float)]


def _flag_limit(value: Any) -> Any:
    if value == "clinicians":
        return value
    try:
        return _number(value)
    except ValueError:
        raise ValueError('expected a number or "clinicians"') from None


#: ``selection.severe_flags_max``: a count, or ``"clinicians"`` (their own count on the states)
FlagLimit = Annotated[Any, PlainValidator(_flag_limit, json_schema_input_type=float | str)]
#: A JSON object whose content another layer defines.
JsonObject = dict[str, Any]

M = TypeVar("M", bound="Artifact")


def _unexpected(key: str, why: str) -> PydanticCustomError:
    """An unknown key refused by a section that accepts some extra keys (named in messages as
    ``section.key``)."""
    return PydanticCustomError(
        "unexpected_key", "unexpected key {key}: {why}", {"key": key, "why": why}
    )


class ContractError(ValueError):
    """An artifact does not follow its contract (the message names the file and the key)."""


class Strict(BaseModel):
    """A section of an artifact: no unknown keys, no coercion."""

    model_config = ConfigDict(strict=True, extra="forbid", protected_namespaces=())


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "missing":
        return f"missing required key {key!r}"
    if kind == "extra_forbidden":
        return f"unexpected key {key!r} (not part of the contract; misspelt?)"
    if kind == "unexpected_key":  # an unknown key that a section's own validator refused
        inner = ".".join(p for p in (key if err["loc"] else "", err["ctx"]["key"]) if p)
        return f"unexpected key {inner!r} ({err['ctx']['why']})"
    found = err.get("input")
    shown = repr(found)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    msg = err["msg"].removeprefix("Value error, ")
    return f"key {key!r}: {msg} (found {type(found).__name__} {shown})"


def _read_document(path: Path, expected: str) -> Any:
    """The parsed JSON of ``path``; a ContractError naming it when it is absent or not JSON."""
    if not path.is_file():
        raise ContractError(f"{path}: no such file (expected {expected})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ContractError(f"{path}: not valid JSON ({exc})") from None


class Artifact(Strict):
    """A whole JSON file: ``load`` / ``write`` / ``to_json``."""

    #: the file name the artifact is written under (for messages)
    FILE: ClassVar[str] = ""
    #: ``json.dumps(ensure_ascii=...)`` of the writer this model stands for
    ENSURE_ASCII: ClassVar[bool] = True

    @classmethod
    def parse(cls: type[M], doc: Any, source: str | Path) -> M:
        """Check an already parsed JSON document; ``source`` names it in errors."""
        if not isinstance(doc, dict):
            raise ContractError(f"{source}: expected a JSON object, found {type(doc).__name__}")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            problems = [_describe(e) for e in exc.errors()]
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise ContractError(
                f"{source}: does not follow the {cls.__name__} contract of {cls.FILE} "
                f"(docs/contracts.md): " + "; ".join(problems[:5]) + more
            ) from None

    @classmethod
    def load(cls: type[M], path: str | Path) -> M:
        return cls.parse(_read_document(Path(path), cls.FILE), path)

    def to_dict(self) -> dict[str, Any]:
        """The document as the writer builds it (keys in contract order; absent optional keys
        stay absent)."""
        return self.model_dump(mode="python", exclude_unset=True, by_alias=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=self.ENSURE_ASCII) + "\n"

    def write(self, path: str | Path) -> None:
        """Write atomically: a temporary sibling (``.<name>.tmp-<pid>``), then one rename."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)


# --------------------------------------------------------------------------- replay meta.json
class SplitCounts(Strict):
    n_episodes: StrictInt
    n_transitions: StrictInt


class ReplaySplits(Strict):
    train: SplitCounts
    validation: SplitCounts
    test: SplitCounts


class RewardSpec(Strict):
    """The reward the replay's ``reward`` column holds. ``variant`` is required; the rest is
    what ``sepsisrl build`` records (an external dataset may give only some of it, and then
    gets no reward-range check)."""

    variant: StrictStr
    terminal_survived: Real | None = None
    terminal_died: Real | None = None
    mortality_days: Real | None = None
    sofa_delta_weight: Real | None = None
    sofa_column: StrictStr | None = None
    lactate_clearance_weight: Real | None = None
    map_deficit_weight: Real | None = None
    map_target: Real | None = None
    evaluation_column: StrictStr | None = None


class ReplaySource(Strict):
    kind: StrictStr
    version: StrictStr
    root: StrictStr | None = None
    fingerprint: StrictStr
    fingerprint_method: StrictStr | None = None


class StateBounds(Strict):
    """The range of every normalised state column (``dataset/state.py`` ``model_input_range``)."""

    rule: StrictStr | None = None
    features: dict[str, list[Real]]


class ReplayMeta(Artifact):
    """``replay/<variant>/meta.json``: what any replay dataset must say about itself.

    Required of every dataset (built here or elsewhere): ``schema_version``, ``state_dim``,
    ``n_actions``, ``feature_names``, ``gamma`` and ``reward.variant``. The other keys are
    written by ``sepsisrl build`` and optional for an external dataset.
    """

    FILE: ClassVar[str] = "replay/<variant>/meta.json"

    schema_version: StrictStr
    state_dim: StrictInt
    n_actions: StrictInt
    feature_names: list[StrictStr]
    state_variant: StrictStr | None = None
    state_bounds: StateBounds | None = None
    action_labels: list[StrictStr] | None = None
    reward: RewardSpec
    gamma: Real
    splits: ReplaySplits | None = None
    source: ReplaySource | None = None
    preprocessing: StrictStr | None = None
    action_bins: StrictStr | None = None
    created_by: StrictStr | None = None


# ------------------------------------------------------------------- evaluation metrics.json
class PolicyRef(Strict):
    spec: StrictStr
    kind: StrictStr
    name: StrictStr


class HeadlineMetrics(Strict):
    """``metrics``: the flat table every consumer reads (``None``: not evaluable)."""

    fqe_mean: Real | None
    fqe_ci_low: Real | None
    fqe_ci_high: Real | None
    wdr_mean: Real | None
    wdr_ci_low: Real | None
    wdr_ci_high: Real | None
    wis_mean: Real | None
    wis_ci_low: Real | None
    wis_ci_high: Real | None
    wis_per_decision: Real | None
    headline_mean: Real | None
    headline_ci_low: Real | None
    headline_ci_high: Real | None
    ess: Real
    nonzero_weight_share: Real
    clinician_agreement: Real
    adjacent_agreement: Real
    support_mass: Real
    low_support_action_rate: Real
    severe_safety_flags: StrictInt | None
    clinician_safety_flags: StrictInt | None
    observed_return_mean: Real

    # an estimator added through the registry (ope/estimators.py) reports its own
    # ``<name>_mean``, ``<name>_ci_low`` and ``<name>_ci_high``; no other key is accepted
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _estimator_entries(self) -> HeadlineMetrics:
        extra = self.model_extra or {}
        for key, value in extra.items():
            match = ESTIMATOR_KEY.fullmatch(key)
            if match is None:
                raise _unexpected(key, "not part of the contract, nor an estimator's <name>_mean, "
                                  "_ci_low and _ci_high; misspelt?")  # fmt: skip
            if value is not None:
                _number(value)
            name = match[1]
            missing = [f"{name}_{s}" for s in ESTIMATOR_SUFFIXES if f"{name}_{s}" not in extra]
            if missing:
                raise _unexpected(key, f"estimator {name!r} reports it but not {missing}")
        return self

    def estimators(self) -> list[str]:
        """The estimators the table reports beyond the built-in ones (in writing order)."""
        return [k.removesuffix("_mean") for k in self.model_extra or {} if k.endswith("_mean")]


#: ``<estimator>_<statistic>`` of the headline table
ESTIMATOR_SUFFIXES = ("mean", "ci_low", "ci_high")
ESTIMATOR_KEY = re.compile(r"([a-z][a-z0-9_]*)_(mean|ci_low|ci_high)")


class BehaviourSummary(Strict):
    kind: StrictStr
    validation_accuracy: Real
    validation_log_loss: Real
    validation_ece: Real
    candidates: dict[str, JsonObject]
    validation_no_treatment_auc: Real | None


class Evaluable(Strict):
    model: StrictBool
    importance_sampling: StrictBool
    model_reasons: list[StrictStr]
    importance_sampling_reasons: list[StrictStr]


class Overlap(Strict):
    ess: Real
    nonzero_weight_share: Real
    ess_per_decision: list[Real]
    support_mass: Real


class UngatedEstimate(Strict):
    estimate: Real | None
    ci_low: Real | None
    ci_high: Real | None
    evaluable: StrictBool


class Bootstrap(Strict):
    """A percentile bootstrap over patients (``ope/importance.py`` ``BootstrapCI``); NaN when
    the estimate is undefined."""

    estimate: Real
    ci_low: Real
    ci_high: Real
    resamples: StrictInt
    seed: StrictInt


class SensitivityBound(Strict):
    # Lambda of the marginal sensitivity model and an estimator's bounds there (ope/sensitivity.py)
    model_config = ConfigDict(
        strict=True, extra="forbid", protected_namespaces=(), populate_by_name=True
    )
    lam: Real = Field(alias="lambda")
    low: Real
    high: Real
    raw_low: Real
    raw_high: Real


class Sensitivity(Strict):
    model: Literal["per_decision", "trajectory"]
    estimator: StrictStr
    bounds: list[SensitivityBound]
    note: StrictStr


class FqeReport(Strict):
    method: StrictStr
    model: StrictStr
    horizon: StrictInt
    longest_episode: StrictInt
    members: StrictInt
    steps: StrictInt
    capped_iterations: StrictInt
    converged: StrictBool
    iterations: list[JsonObject]
    attainable_range: list[Real]
    raw_out_of_range_share: Real
    raw_out_of_range_measured_on: StrictStr
    raw_estimates: list[Real]
    member_values: list[Real]
    basis: StrictStr | None
    point_estimate: StrictStr
    bootstrap: Bootstrap
    fit_on: StrictStr
    # absent in evaluations written before the sensitivity analysis existed; None: no full fit
    sensitivity: Sensitivity | None = None
    # absent before fqe.pessimism existed (then 0: no pessimism)
    pessimism: Real = 0.0


class WdrReport(Strict):
    bootstrap: Bootstrap
    raw: Bootstrap
    clipped_to_attainable_range: StrictBool
    weighted_share: Real
    control_variate: StrictStr
    # absent in evaluations written before the sensitivity analysis existed
    sensitivity: Sensitivity | None = None
    # absent before corrections were limited to supported positions (wdr_step_ess_min)
    positions: StrictInt | None = None
    corrected_positions: StrictInt | None = None
    step_ess_min: Real | None = None


class SoftenedWis(Strict):
    wis: Real | None
    ci_low: Real | None
    ci_high: Real | None
    ess: Real


class ImportanceSamplingReport(Strict):
    evaluable: StrictBool
    softening_eps: Real
    ratio_clip: Real | None
    bootstrap: Bootstrap
    weights_max: Real
    zero_weight_episodes: StrictInt
    note: StrictStr | None
    wis_softened: dict[str, SoftenedWis]


class RuleCount(Strict):
    policy: StrictInt
    clinicians: StrictInt


class SafetyReport(Strict):
    """``available`` is false for a replay without raw features (an external dataset): then
    no rule can be applied and the counts are absent."""

    available: StrictBool
    rules: dict[str, RuleCount] | None = None
    policy_total: StrictInt | None = None
    clinicians_total: StrictInt | None = None


class Subgroup(Strict):
    decisions: StrictInt
    clinician_agreement: Real
    low_support_action_rate: Real
    policy_safety_flags: StrictInt
    clinician_safety_flags: StrictInt
    policy_mean_vaso_bin: Real
    clinician_mean_vaso_bin: Real
    policy_mean_fluid_bin: Real
    clinician_mean_fluid_bin: Real


class ReplayRef(Strict):
    path: StrictStr
    variant: StrictStr
    source: JsonObject | None


class EvaluationMetrics(Artifact):
    """``eval/<name>/metrics.json`` (``sepsisrl evaluate``; docs/evaluation.md)."""

    FILE: ClassVar[str] = "eval/<name>/metrics.json"

    schema_version: StrictStr
    policy: PolicyRef
    split: StrictStr
    final: StrictBool
    episodes: StrictInt
    decisions: StrictInt
    metrics: HeadlineMetrics
    behaviour_model: BehaviourSummary
    headline_estimator: StrictStr
    evaluable: Evaluable
    overlap: Overlap
    estimates_ungated: dict[str, UngatedEstimate]
    fqe: FqeReport
    wdr: WdrReport
    importance_sampling: ImportanceSamplingReport
    safety: SafetyReport
    subgroups: dict[str, Subgroup]
    figures: dict[str, StrictStr]
    timings_seconds: dict[str, Real]
    gamma: Real
    reward: StrictStr
    config: JsonObject
    replay: ReplayRef
    created_by: StrictStr
    created_at: StrictStr

    # a registered estimator may add a section of its own, named as it (``<name>``), beside
    # its entries of ``metrics``; any other unknown key is an error
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _estimator_sections(self) -> EvaluationMetrics:
        added = set(self.metrics.estimators())
        for key, value in (self.model_extra or {}).items():
            if key not in added:
                raise _unexpected(key, "not part of the contract; misspelt?")
            if not isinstance(value, dict):
                raise _unexpected(key, "an estimator's section must be a JSON object")
        return self


# ---------------------------------------------------------------------- study selection.json
class Gates(Strict):
    evaluable: StrictBool
    low_support: StrictBool
    severe_flags: StrictBool


class SeedResult(Strict):
    """One (candidate, seed): its run, its validation evaluation and the selection inputs
    read from that evaluation (``study/selection.py`` ``selection_metrics``)."""

    seed: StrictInt
    run: StrictStr
    eval: StrictStr
    estimate: Real | None
    ci_low: Real | None
    ci_high: Real | None
    fqe_mean: Real | None
    ess: Real | None
    support_mass: Real | None
    low_support_action_rate: Real | None
    severe_safety_flags: Real | None
    clinician_safety_flags: Real | None
    score: Real | None


class Candidate(Strict):
    """One configuration of the sweep: its seeds and their means (``None``: undefined in a
    seed), its gates and its rank (stage 2 finalists first)."""

    name: StrictStr
    reward: StrictStr
    lr_regime: StrictStr
    iql_setting: StrictStr
    hyperparameters: JsonObject
    seeds: list[SeedResult]
    stage: StrictInt
    estimate: Real | None
    ci_low: Real | None
    ci_high: Real | None
    fqe_mean: Real | None
    ess: Real | None
    support_mass: Real | None
    low_support_action_rate: Real | None
    severe_safety_flags: Real | None
    clinician_safety_flags: Real | None
    score: Real | None
    gates: Gates
    passed: StrictBool
    rank: StrictInt
    stage1_rank: StrictInt
    # successive halving (sweep.halving): the training step at which the candidate was left
    # behind (its seed rows are that step's snapshot and evaluation); None: trained in full
    stopped_at_step: StrictInt | None = None


class RuleGates(Strict):
    evaluable: StrictBool
    low_support_max: Real
    severe_flags_max: FlagLimit


class SelectionRule(Strict):
    description: StrictStr
    estimator: StrictStr
    score: StrictStr
    gates: RuleGates
    finalists: StrictInt
    fallback: StrictStr
    versus_clinicians: StrictStr


class Confounding(Strict):
    model: StrictStr
    run: StrictStr
    reference: Real | None
    estimate: Real | None
    holds_up_to: Real | None
    fails_at: Real | None
    required: Real
    survives: StrictBool
    statement: StrictStr


class VersusClinicians(Strict):
    estimator: StrictStr
    split: StrictStr
    selected_score: Real | None
    selected_estimate: Real | None
    clinician_estimate: Real | None
    clinician_ci: list[Real | None]
    clinician_observed_return: Real | None
    credibly_better: StrictBool | None
    verdict: StrictStr
    evaluation: StrictStr
    # how much unobserved confounding the verdict survives (None: not WDR, or not recorded)
    confounding: Confounding | None = None


class Selected(Strict):
    name: StrictStr
    seed: StrictInt
    run: StrictStr
    fallback: StrictBool
    failed_gates: list[StrictStr]
    reason: StrictStr
    versus_clinicians: VersusClinicians


class HalvingRung(Strict):
    """One rung of successive halving (``sweep.halving``; ``study/selection.py``
    ``rung_record``): who was scored, kept and stopped at ``step``, the score of the last
    candidate kept on evidence (``cut``, ``last_kept``; None when the rung stopped nobody),
    each stopped candidate's paired difference from it (``differences``: [estimate, 95 % CI
    low, high], None where not computable) and the candidates past the cut that the
    validation data do not show worse (``within_noise``, by ``noise_test``): stopped with
    ``stop: rank``, kept on (``spared``) with ``stop: credible``."""

    rung: StrictInt
    rungs: StrictInt
    step: StrictInt
    candidates: StrictInt
    passed: StrictInt
    keep: StrictInt
    cut: Real | None
    last_kept: StrictStr | None
    kept: list[StrictStr]
    stop: Literal["rank", "credible"]
    stopped: list[StrictStr]
    within_noise: list[StrictStr]
    spared: list[StrictStr]
    noise_test: Literal["paired", "intervals", "mixed"]
    differences: dict[str, list[Real] | None]


class Selection(Artifact):
    """``study/selection.json``: the validation-only selection (``study/selection.py``)."""

    FILE: ClassVar[str] = "study/selection.json"

    schema_version: StrictStr
    profile: StrictStr
    split: StrictStr
    rule: SelectionRule
    candidates: list[Candidate]
    finalists: list[StrictStr]
    finalists_passing_stage1: StrictInt
    selected: Selected
    # successive halving's rungs, in order (empty: stage 1 trained every candidate in full)
    halving: list[HalvingRung] = []


# -------------------------------------------------------------------------- study final.json
class FinalSelected(Strict):
    name: StrictStr
    seeds: list[StrictInt]
    runs: list[StrictStr]
    evals: list[StrictStr]
    exported_seed: StrictInt


class GridPoint(Strict):
    name: StrictStr
    hyperparameters: JsonObject
    score: Real | None
    estimate: Real | None
    gates: Gates
    rank: StrictInt
    # successive halving of the grid (sweep.halving.baselines): the step at which this point
    # was stopped (its score is its snapshot's there), None when trained in full
    stopped_at_step: StrictInt | None = None


class BaselineTuning(Strict):
    """How a trained baseline's grid point was chosen (on validation, by the selection rule;
    with successive halving, among the points trained in full)."""

    run: StrictStr
    chosen: StrictStr
    hyperparameters: JsonObject
    fallback: StrictBool
    reason: StrictStr
    grid: list[GridPoint]
    # successive halving's rungs over this grid, in order (absent: every point trained in full)
    halving: list[HalvingRung] | None = None


class Baseline(Strict):
    """A named policy (``kind`` ``named``: ``name`` and ``eval``) or a trained one (``kind``
    ``run``: also ``run`` and ``tuning``)."""

    name: StrictStr
    kind: StrictStr
    run: StrictStr | None = None
    eval: StrictStr
    tuning: BaselineTuning | None = None


class FinalRecord(Artifact):
    """``study/final.json``: the one test-split evaluation of the selection and the baselines."""

    FILE: ClassVar[str] = "study/final.json"

    schema_version: StrictStr
    split: StrictStr
    selection_sha256: StrictStr
    selected: FinalSelected
    baselines: list[Baseline]
    release: StrictStr


# ------------------------------------------------------------- model repository config.json
class FeatureNormalization(Strict):
    median: Real
    clip_low: Real
    clip_high: Real
    mean: Real
    std: Real
    transform: StrictStr


class ActionBins(Strict):
    vasopressor: JsonObject
    iv_fluid: JsonObject


class TrainingRecord(Strict):
    run_name: StrictStr
    algo: StrictStr
    preset: StrictStr | None
    seed: StrictInt
    steps: StrictInt
    config: JsonObject
    torch: StrictStr | None


class DatasetRecord(Strict):
    name: StrictStr
    variant: StrictStr | None
    gamma: Real | None
    train_transitions: StrictInt | None
    train_episodes: StrictInt | None
    train_fingerprint: StrictStr | None
    source_kind: StrictStr | None
    source_version: StrictStr | None
    source_fingerprint: StrictStr | None
    build_warnings: list[StrictStr]


class PackageRecord(Strict):
    name: StrictStr
    version: StrictStr


class SummaryRow(Strict):
    """One metric over the evaluations of the exported run (``ope/summary.py``)."""

    mean: Real | None
    std: Real | None
    n: StrictInt
    undefined: StrictInt


class CardMetrics(Strict):
    """``split``, the number of ``evaluations``, then one :class:`SummaryRow` per metric key of
    ``metrics.json`` (``metrics``)."""

    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())
    __pydantic_extra__: dict[str, SummaryRow]

    split: StrictStr
    evaluations: StrictInt


class StudySelection(Strict):
    """How a study chose the exported configuration (``config.json`` -> ``selection``): its
    profile, its rule's score, how many configurations competed, the finalists, and
    successive halving's rungs (:class:`HalvingRung`; empty without halving)."""

    profile: StrictStr
    score: StrictStr
    candidates: StrictInt
    finalists: list[StrictStr]
    halving: list[HalvingRung]


class ModelConfig(Artifact):
    """``release/<name>/config.json`` of a model repository (``sepsisrl export``)."""

    FILE: ClassVar[str] = "release/<name>/config.json"
    ENSURE_ASCII: ClassVar[bool] = False

    model_type: StrictStr
    architecture: StrictStr
    state_dim: StrictInt
    n_actions: StrictInt
    hidden_sizes: list[StrictInt]
    activation: StrictStr
    feature_names: list[StrictStr]
    normalization: dict[str, FeatureNormalization] | None
    action_space: StrictStr
    action_labels: list[StrictStr] | None
    action_bins: ActionBins | None
    training: TrainingRecord
    selected_config: StrictStr | None
    dataset: DatasetRecord
    package: PackageRecord
    metrics: CardMetrics | None
    truth: JsonObject | None
    #: the policy's treatment intensity on its evaluation's states against the clinicians'
    #: logged actions there (``truth.compare.intensity_of`` and the split); None when no
    #: evaluation of this run was given. Absent in repositories written before it existed.
    treatment_intensity: JsonObject | None = None
    #: how far the logged episodes of the run's own evaluation follow it
    #: (``ope.importance.decisions_followed``); None when no evaluation of this run was given.
    #: Absent in repositories written before it existed.
    decisions_followed: JsonObject | None = None
    #: how the study selected this configuration (``sepsisrl run``); None for a run exported
    #: on its own. Absent in repositories written before it existed.
    selection: StudySelection | None = None
    research_only: StrictBool


class CheckpointConfig(Artifact):
    """The ``config.json`` of a model repository that ``sepsisrl export`` did not write: the
    earlier published checkpoint (``state_dim``, ``n_actions``, ``hidden_sizes`` and training
    metadata of its own, no ``feature_names``, no ``action_labels``) or a hand-made minimal one.

    Only what running the policy needs is read; other keys are ignored (their layout is not
    ours). The defaults are the published checkpoint's: an IQL actor with hidden sizes
    [256, 256]; no ``feature_names`` means inputs in alphabetical feature order (the order that
    checkpoint was trained with, ``modeling_iql.PUBLISHED_FEATURE_NAMES``).
    """

    FILE: ClassVar[str] = "release/<name>/config.json (not written by sepsisrl export)"

    model_config = ConfigDict(strict=True, extra="ignore", protected_namespaces=())

    model_type: StrictStr = "iql"
    state_dim: StrictInt
    n_actions: StrictInt
    hidden_sizes: list[StrictInt] = [256, 256]
    feature_names: list[StrictStr] | None = None


def load_model_config(path: str | Path) -> ModelConfig | CheckpointConfig:
    """A model repository's ``config.json``: one written by ``sepsisrl export`` (it names the
    ``package``) must follow :class:`ModelConfig` in full (a missing or misspelt key is an
    error); any other is read as a :class:`CheckpointConfig` (the earlier published checkpoint,
    whose layout predates the contract)."""
    doc = _read_document(Path(path), ModelConfig.FILE)
    if isinstance(doc, dict) and "package" not in doc:
        return CheckpointConfig.parse(doc, path)
    return ModelConfig.parse(doc, path)
