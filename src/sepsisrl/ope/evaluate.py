"""Evaluate any policy on a replay dataset (docs/evaluation.md): the same code for every policy.

Policies: a training run folder, an exported model repository (``--bundle``), a saved d3rlpy
model (``--d3rlpy``, ``interop/d3rlpy.py``), or a named policy (``clinician``, ``no_treatment``,
``random``, ``constant:K``, ``rule:NAME``). The evaluated split is validation, or test with
``final=True`` (recorded in the run folder). Nothing is fitted on the evaluated split:

  behaviour model   fit on train, chosen by validation log-loss (docs/evaluation.md)
  FQE               finite-horizon, clipped, a bootstrap ensemble fit on train patient
                    resamples; each member stops on its out-of-bag train patients (ope.fqe)

Estimates (every one with the evaluation reward ``reward_eval``: terminal +-15 only, and the
gamma of the replay meta): FQE, WDR (per-decision weighted doubly robust with the FQE as control
variate), trajectory-wise WIS and per-decision WIS of the policy exactly as evaluated (no
softening unless configured). Overlap gates (``GateConfig``) decide which estimates are
defined: an estimate that fails them is written as null with the reason, never as a number
that could win a comparison:

  model gate (FQE, WDR)  the FQE converged, its raw outputs stay in the attainable range, and
                         the policy's actions are supported: support mass >= support_min
  IS gate (WIS, PDWIS)   trajectory ESS >= is_ess_min and a share >= is_nonzero_min of
                         episodes with non-zero weight
WDR needs only the model gate: where no episode keeps weight its corrections vanish and it
equals the FQE there (``wdr.weighted_share`` says how much of it is importance-weighted).
Its estimate and CI are projected onto the attainable return range, like the FQE's targets
(``wdr.raw`` keeps the unprojected values, ``wdr.clipped_to_attainable_range`` says if they
differed).

The estimators are objects registered in ``ope.estimators`` (fitted in order, each with its
gate); ``evaluate`` composes them. Action bins (agreement, safety rules, heatmaps) follow the
replay's action grid (``ReplayMeta.action_grid``, from its ``action_labels``).

Output folder: metrics.json, behaviour/ (the fitted behaviour model), figures/*.png (action
heatmaps, vasopressor x fluid bins), cases.csv (per-decision review table),
fqe_values.safetensors (the FQE at the initial states, for paired comparisons: ope/paired.py).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepsisrl import __version__
from sepsisrl.config import yaml_defaults
from sepsisrl.dataset.preprocessing import StatePreprocessor
from sepsisrl.ope.behaviour import BehaviourConfig, BehaviourModel
from sepsisrl.ope.estimators import (
    Estimator,
    EvalData,
    estimator_classes,
    finite,
    fit_estimators,
    gate_reasons,
    gated,
)
from sepsisrl.ope.fqe import FQEConfig
from sepsisrl.ope.safety import REQUIRED_FEATURES, safety_flags, subgroups
from sepsisrl.ope.sensitivity import SensitivityConfig
from sepsisrl.rl.actions import ActionGrid
from sepsisrl.rl.data import ReplayMeta, load_meta, load_split
from sepsisrl.rl.policies import (
    ClinicianPolicy,
    NoTreatmentPolicy,
    RandomPolicy,
    TrainedPolicy,
    _Deterministic,
)

EVAL_REWARD = "reward_eval"


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (e.g. test split without --final)."""


@dataclass(frozen=True)
@yaml_defaults("evaluate", "gates")
class GateConfig:
    """Overlap and fit gates: an estimate that fails them is not evaluable (written as null).
    Defaults and their meaning: ``configs/evaluate.yaml`` (``gates``)."""

    support_min: float
    fqe_out_of_range_max: float
    fqe_range_margin: float
    is_ess_min: float
    is_nonzero_min: float


#: The estimators that may be the headline (``EvalConfig.headline``): every registered one.
HEADLINE_ESTIMATORS = tuple(estimator_classes())


@dataclass(frozen=True)
@yaml_defaults("evaluate")
class EvalConfig:
    """Evaluation settings; defaults and their meaning: ``configs/evaluate.yaml``."""

    bootstrap_resamples: int
    bootstrap_seed: int
    support_eps: float
    softening_eps: float
    ratio_clip: float | None
    wdr_step_ess_min: float
    seed: int
    device: str
    headline: str
    gates: GateConfig
    behaviour: BehaviourConfig
    fqe: FQEConfig
    sensitivity: SensitivityConfig

    def __post_init__(self) -> None:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"evaluation device must be cpu, cuda or cuda:N, got {self.device!r}")
        if not self.wdr_step_ess_min >= 0:
            raise ValueError(f"wdr_step_ess_min must be >= 0, got {self.wdr_step_ess_min}")
        if self.headline not in HEADLINE_ESTIMATORS:
            raise ValueError(
                f"evaluation headline estimator {self.headline!r} is not one of "
                f"{', '.join(HEADLINE_ESTIMATORS)}"
            )


# ---------------------------------------------------------------------------- policies
class BundlePolicy(TrainedPolicy):
    """An exported model repository: model.safetensors (actor) + config.json.

    The config is read through the contract (``contracts.load_model_config``): one written by
    ``sepsisrl export`` must follow ``ModelConfig`` in full; the earlier published checkpoint's
    is a ``CheckpointConfig`` (IQL, hidden sizes [256, 256] unless it says otherwise)."""

    def __init__(self, bundle: str | Path, feature_names: list[str]) -> None:
        from sepsisrl.contracts import ContractError, load_model_config
        from sepsisrl.rl.checkpoint import check_tensors
        from sepsisrl.rl.networks import MLP
        from sepsisrl.rl.policies import finite_tensors

        folder = Path(bundle)
        try:
            cfg = load_model_config(folder / "config.json")
        except ContractError as exc:
            raise EvaluationError(str(exc)) from None
        self.name = f"bundle:{folder.name}"
        self.algo = cfg.model_type
        self.state_dim, self.n_actions = cfg.state_dim, cfg.n_actions
        names = cfg.feature_names
        if names is None:  # the earlier published checkpoint: inputs in alphabetical order
            names = sorted(feature_names)
        missing = [n for n in names if n not in feature_names]
        if missing or len(names) != self.state_dim:
            raise EvaluationError(
                f"{folder}: the model's features do not match the replay's (missing {missing[:5]})"
            )
        self.order = np.array([feature_names.index(n) for n in names])
        hidden = tuple(cfg.hidden_sizes)
        self.net = MLP(self.state_dim, self.n_actions, hidden)
        weights = folder / "model.safetensors"
        tensors = finite_tensors(
            weights, f"bundle {folder}", "re-export or re-download the model repository"
        )
        check_tensors(
            self.net,
            tensors,
            weights,
            f"the network of {folder / 'config.json'} (state_dim {self.state_dim}, "
            f"hidden_sizes {list(hidden)}, n_actions {self.n_actions})",
        )
        self.net.load_state_dict(tensors)
        self.net.eval()
        self.device = "cpu"

    def logits(self, states: np.ndarray) -> np.ndarray:
        x = np.asarray(np.asarray(states)[:, self.order], dtype=np.float32)
        with torch.no_grad():
            return self.net(torch.as_tensor(x, device=self.device)).cpu().numpy()


class ConstantPolicy(_Deterministic):
    """Always the same action id (``constant:K``)."""

    def __init__(self, n_actions: int, action: int) -> None:
        self.n_actions = n_actions
        self.action = int(action)
        self.name = f"constant:{action}"

    def act(self, states: np.ndarray) -> np.ndarray:
        return np.full(len(states), self.action, dtype=np.int64)


class StateRulePolicy(_Deterministic):
    """A hand-written rule on the state's raw values (``rule:NAME``), un-normalised with the
    build's statistics."""

    def __init__(self, name: str, meta: ReplayMeta) -> None:
        from sepsisrl.truth.policies import map_lactate_actions

        path = meta.preprocessing
        if path is None or not path.is_file():
            raise EvaluationError(
                f"rule:{name} needs the build's preprocessing statistics next to {meta.path} "
                f"({meta.doc.preprocessing or 'features/preprocessing.json'} not found)"
            )
        self.prep = StatePreprocessor.from_json(json.loads(path.read_text()))
        self.names = meta.feature_names
        self.n_actions = meta.n_actions
        self.rule = map_lactate_actions
        self.name = f"rule:{name}"

    def act(self, states: np.ndarray) -> np.ndarray:
        from sepsisrl.truth.policies import raw_from_normalised

        return self.rule(raw_from_normalised(self.prep, self.names, np.asarray(states)))


def make_policy(spec: str | Path, kind: str, meta: ReplayMeta, behaviour: BehaviourModel):
    if kind == "named":
        from sepsisrl.truth.policies import PolicySpecError, parse_spec

        try:
            name, arg = parse_spec(str(spec), meta.n_actions)
        except PolicySpecError as exc:
            raise EvaluationError(str(exc)) from exc
        if name == "clinician":
            return ClinicianPolicy(behaviour.probabilities, meta.n_actions)
        if name == "no_treatment":
            return NoTreatmentPolicy(meta.n_actions)
        if name == "random":
            return RandomPolicy(meta.n_actions)
        if name == "constant":
            return ConstantPolicy(meta.n_actions, int(arg))
        return StateRulePolicy(str(arg), meta)
    if kind == "bundle":
        return BundlePolicy(spec, meta.feature_names)
    if kind == "d3rlpy":  # a saved d3rlpy discrete-action model (sepsisrl[d3rlpy], docs/d3rlpy.md)
        from sepsisrl.interop.d3rlpy import D3rlpyModelError, D3rlpyPolicy

        where = f"{meta.path} (meta.json state_dim {meta.state_dim}, n_actions {meta.n_actions})"
        try:
            return D3rlpyPolicy(spec, meta.state_dim, meta.n_actions, where)
        except D3rlpyModelError as exc:
            raise EvaluationError(str(exc)) from None
    if kind == "object":  # a Python policy object (rl.policies.Policy protocol)
        missing = [m for m in ("act", "action_probabilities", "name") if not hasattr(spec, m)]
        if missing:
            raise EvaluationError(
                f"kind='object' needs a policy with act(states), action_probabilities(states) "
                f"and name; {type(spec).__name__} lacks {', '.join(missing)}"
            )
        if getattr(spec, "n_actions", meta.n_actions) != meta.n_actions:
            raise EvaluationError(
                f"policy {spec.name!r} has {spec.n_actions} actions; {meta.path} has "
                f"{meta.n_actions}"
            )
        return spec
    if kind != "run":
        raise EvaluationError(
            f"unknown policy kind {kind!r}; expected named|run|bundle|d3rlpy|object"
        )
    policy = TrainedPolicy(spec)
    run_cfg = json.loads((Path(spec) / "config.json").read_text())
    trained = list(run_cfg["replay"]["feature_names"])
    if trained != meta.feature_names:
        raise EvaluationError(
            f"{spec}: trained on other features than {meta.path / 'meta.json'} provides: "
            f"{_feature_difference(trained, meta.feature_names)}"
        )
    return policy


# ---------------------------------------------------------------------------- helpers
def _feature_difference(trained: list[str], given: list[str]) -> str:
    """What differs between the features a policy was trained on and a replay's, in words."""
    missing = [n for n in trained if n not in given]
    extra = [n for n in given if n not in trained]
    parts = []
    if missing:
        parts.append(f"missing from the replay {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"not known to the policy {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    if not parts:
        j = next((i for i, (a, b) in enumerate(zip(trained, given, strict=False)) if a != b), None)
        parts.append(
            f"{len(trained)} trained features vs {len(given)} in the replay"
            if j is None
            else f"same names in another order (position {j}: trained {trained[j]!r}, "
            f"replay {given[j]!r})"
        )
    return "; ".join(parts)


def raw_states(meta: ReplayMeta, states: np.ndarray) -> dict[str, np.ndarray] | None:
    """Un-normalised feature values (for safety rules and subgroups), if the build's
    preprocessing statistics are available next to the replay."""
    path = meta.preprocessing
    if path is None or not path.is_file():
        return None
    prep = StatePreprocessor.from_json(json.loads(path.read_text()))
    out = {}
    for j, name in enumerate(meta.feature_names):
        if name in prep.mean:
            x = states[:, j].astype(np.float64) * prep.std[name] + prep.mean[name]
            out[name] = np.expm1(x) if name in prep.log1p else x
    return out if all(k in out for k in REQUIRED_FEATURES) else None


def _heatmaps(clin: np.ndarray, pol: np.ndarray, grid: ActionGrid, folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    grids = {"clinician": grid.shares(clin), "policy": grid.shares(pol)}
    grids["difference"] = grids["policy"] - grids["clinician"]
    files = {}
    for name, g in grids.items():
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        lim = np.abs(g).max() or 1.0
        im = ax.imshow(g, cmap="RdBu_r" if name == "difference" else "viridis",
                       vmin=-lim if name == "difference" else 0, vmax=lim)  # fmt: skip
        for (i, j), v in np.ndenumerate(g):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="w" if name != "difference" else "k",
            )
        ax.set_xlabel("IV fluid bin")
        ax.set_ylabel("vasopressor bin")
        ax.set_title(
            f"{name} action distribution" if name != "difference" else "policy - clinician"
        )
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        path = folder / f"actions_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[name] = str(path.name)
    return files


# ---------------------------------------------------------------------------- evaluation
class _Clock:
    """Seconds per phase of an evaluation (``timings_seconds``); a repeated name adds up."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self._last, 3)
        self._last = now


def evaluate(
    policy: str | Path,
    replay_dir: str | Path,
    out_dir: str | Path,
    kind: str = "run",
    final: bool = False,
    cfg: EvalConfig | None = None,
    behaviour: BehaviourModel | None = None,
) -> dict[str, Any]:
    """Evaluate one policy; writes ``out_dir`` and returns the metrics document.

    ``kind`` says what ``policy`` is: ``"run"`` a training run folder, ``"bundle"`` an exported
    model repository, ``"named"`` a SPEC of the shared grammar (``clinician``, ``constant:K``,
    ...), ``"d3rlpy"`` a saved d3rlpy discrete-action model (a ``.d3`` file; docs/d3rlpy.md),
    ``"object"`` a Python object with ``name``, ``act(states)`` and
    ``action_probabilities(states)`` (the ``rl.policies.Policy`` protocol).

    The phases: load the splits and the policy; fit (or reuse) the behaviour model on train;
    fit every registered estimator (``ope.estimators``) and apply the overlap gates; compare
    the policy's greedy actions with the clinicians' (agreement, support, safety, subgroups);
    write figures, ``cases.csv`` and ``metrics.json``.
    """
    cfg = cfg or EvalConfig()
    clock = _Clock()
    replay_dir, out = Path(replay_dir), Path(out_dir)
    meta = load_meta(replay_dir)
    split = "test" if final else "validation"
    train = load_split(replay_dir, "train", EVAL_REWARD, meta)
    val = load_split(replay_dir, "validation", EVAL_REWARD, meta)
    split_data = load_split(replay_dir, "test", EVAL_REWARD, meta) if final else val
    for name, data in (("train", train), ("validation", val), (split, split_data)):
        if len(data) == 0:  # the behaviour model, FQE and every bootstrap need patients
            raise EvaluationError(
                f"{replay_dir / f'replay_{name}.parquet'}: the {name} split has no rows; the "
                "evaluation fits on train, chooses on validation and evaluates the "
                f"{split} split, so each needs episodes (rebuild the replay with more stays)"
            )
    # a run, bundle or d3rlpy model is loaded (weights checked for NaN/inf) before any writing
    loaded = ("run", "bundle", "d3rlpy", "object")
    pol = make_policy(policy, kind, meta, None) if kind in loaded else None
    out.mkdir(parents=True, exist_ok=True)
    clock.lap("load")

    # behaviour policy: fit on train, chosen on validation (or reused if already fitted)
    if (
        behaviour is None
        or behaviour.info.get("fitted_on", {}).get("fingerprint") != train.fingerprint
    ):
        behaviour = BehaviourModel.fit(
            train.states.numpy(), train.actions.numpy(), val.states.numpy(), val.actions.numpy(),
            meta.n_actions, cfg.behaviour, train.fingerprint, device=cfg.device,
        )  # fmt: skip
    behaviour.save(out / "behaviour")
    clock.lap("behaviour_model")
    if pol is None:
        pol = make_policy(policy, kind, meta, behaviour)

    states = split_data.states.numpy()
    data = EvalData(meta, cfg, train, split_data, pol, behaviour.probabilities(states),
                    pol.action_probabilities(states), behaviour.probabilities)  # fmt: skip
    clinician = kind == "named" and policy == "clinician"
    greedy = data.actions.copy() if clinician else pol.act(states)
    fitted = fit_estimators(data, clock.lap)
    reasons = gate_reasons(data, fitted)
    ok = {gate: not r for gate, r in reasons.items()}
    evaluable = {
        "model": ok["model"],
        "importance_sampling": ok["importance_sampling"],
        "model_reasons": reasons["model"],
        "importance_sampling_reasons": reasons["importance_sampling"],
    }
    if "fqe" in fitted:  # its values at the initial states, for paired comparisons
        from sepsisrl.ope.paired import write_fqe_values

        fqe = fitted["fqe"]
        init_stays = data.data.stay_id[fqe.init]
        point = None if fqe.v_full is None else fqe.v_full[fqe.init]
        write_fqe_values(out, fqe.v0, point, init_stays)
    clock.lap("fqe_wdr")

    grid = meta.action_grid or ActionGrid(1, meta.n_actions)  # no grid: one axis of actions
    decisions = _decisions(data, greedy, grid, _extra_column(replay_dir, split, "sofa"))
    clock.lap("agreement_support_safety_subgroups")
    figures = _heatmaps(data.actions, greedy, grid, out / "figures")
    _write_cases(out / "cases.csv", data, greedy, decisions.low_support)
    clock.lap("figures_and_cases")

    doc = {
        "schema_version": "1",
        "policy": {
            "spec": pol.name if kind == "object" else str(policy),
            "kind": kind,
            "name": pol.name,
        },
        "split": split,
        "final": final,
        "episodes": data.idx.n_episodes,
        "decisions": len(data.actions),
        "metrics": _metrics(data, fitted, ok, decisions),
        "behaviour_model": _behaviour_summary(behaviour),
        "headline_estimator": cfg.headline,
        "evaluable": evaluable,
        "overlap": data.overlap,
        "estimates_ungated": {
            name: {
                "estimate": finite(est.ci.estimate),
                "ci_low": finite(est.ci.low),
                "ci_high": finite(est.ci.high),
                "evaluable": ok[est.gate],
            }
            for name, est in fitted.items()
        },
        **{e.section: e.details(ok[e.gate]) for e in fitted.values() if e.section is not None},
        "safety": decisions.safety,
        "subgroups": decisions.subgroups,
        "figures": figures,
        "timings_seconds": clock.timings,
        "gamma": meta.gamma,
        "reward": "evaluation reward: terminal +-15 only (reward_eval)",
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "replay": {
            "path": str(replay_dir.absolute()),
            "variant": meta.variant,
            "source": meta.source(),
        },
        "created_by": f"sepsisrl {__version__}",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    from sepsisrl.contracts import EvaluationMetrics  # the contract of metrics.json

    # checked against the contract before it is written: a drifted writer fails here, loudly
    EvaluationMetrics.parse(doc, out / "metrics.json").write(out / "metrics.json")
    if final and kind == "run":
        _record_final(Path(policy), replay_dir, out, doc["created_at"])
    return doc


@dataclass
class _Decisions:
    """The policy's greedy actions against the clinicians' logged ones on the split."""

    agreement: float  # same action
    adjacent: float  # within one bin on both axes
    low_support: np.ndarray  # per decision: the clinicians take the action with prob < eps
    safety: dict[str, Any]
    subgroups: dict[str, Any]


def _decisions(
    data: EvalData, greedy: np.ndarray, grid: ActionGrid, sofa: np.ndarray | None
) -> _Decisions:
    """Agreement, support, severe safety flags and decision-time subgroups (ope.safety)."""
    actions = data.actions
    exact = greedy == actions
    gv, gf = grid.bins(greedy)
    cv, cf = grid.bins(actions)
    adjacent = (np.abs(gv - cv) <= 1) & (np.abs(gf - cf) <= 1)
    low_support = ~data.supported[data.rows, greedy]
    raw = raw_states(data.meta, data.states)
    safety: dict[str, Any] = {"available": raw is not None}
    groups: dict[str, Any] = {}
    if raw is not None:
        pol_flags = safety_flags(raw, greedy, grid)
        clin_flags = safety_flags(raw, actions, grid)
        safety.update({
            "rules": {n: {"policy": int(pol_flags[n].sum()), "clinicians": int(clin_flags[n].sum())} for n in pol_flags},
            "policy_total": int(sum(v.sum() for v in pol_flags.values())),
            "clinicians_total": int(sum(v.sum() for v in clin_flags.values())),
        })  # fmt: skip
        any_pol = np.any(np.column_stack(list(pol_flags.values())), axis=1)
        any_clin = np.any(np.column_stack(list(clin_flags.values())), axis=1)
        for name, m in subgroups(raw, sofa).items():
            if not m.any():
                continue
            groups[name] = {
                "decisions": int(m.sum()),
                "clinician_agreement": float(exact[m].mean()),
                "low_support_action_rate": float(low_support[m].mean()),
                "policy_safety_flags": int(any_pol[m].sum()),
                "clinician_safety_flags": int(any_clin[m].sum()),
                "policy_mean_vaso_bin": float(gv[m].mean()),
                "clinician_mean_vaso_bin": float(cv[m].mean()),
                "policy_mean_fluid_bin": float(gf[m].mean()),
                "clinician_mean_fluid_bin": float(cf[m].mean()),
            }
    return _Decisions(float(exact.mean()), float(adjacent.mean()), low_support, safety, groups)


def _metrics(
    data: EvalData, fitted: dict[str, Estimator], ok: dict[str, bool], decisions: _Decisions
) -> dict[str, Any]:
    """``metrics.json`` ``metrics``: every estimator's entries (gated), the headline, then the
    overlap, agreement and safety figures."""
    head = fitted[data.cfg.headline]
    head_ok = ok[head.gate]
    metrics: dict[str, Any] = {}
    for est in fitted.values():
        metrics.update(est.metrics(ok[est.gate]))
    return {
        **metrics,
        "headline_mean": gated(head.ci.estimate, head_ok),
        "headline_ci_low": gated(head.ci.low, head_ok),
        "headline_ci_high": gated(head.ci.high, head_ok),
        "ess": data.overlap["ess"],
        "nonzero_weight_share": data.overlap["nonzero_weight_share"],
        "clinician_agreement": decisions.agreement,
        "adjacent_agreement": decisions.adjacent,
        "support_mass": float(data.support_mass.mean()),
        "low_support_action_rate": float(decisions.low_support.mean()),
        "severe_safety_flags": decisions.safety.get("policy_total"),
        "clinician_safety_flags": decisions.safety.get("clinicians_total"),
        "observed_return_mean": float(data.returns.mean()),
    }


def _behaviour_summary(behaviour: BehaviourModel) -> dict[str, Any]:
    keys = ("kind", "validation_accuracy", "validation_log_loss", "validation_ece", "candidates")
    return {k: behaviour.info[k] for k in keys} | {
        "validation_no_treatment_auc": behaviour.info.get("validation_no_treatment_auc")
    }


def _write_cases(path: Path, data: EvalData, greedy: np.ndarray, low_support: np.ndarray) -> None:
    """The per-decision review table."""
    actions, b_all = data.actions, data.b_all
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["stay_id", "step", "clinician_action", "policy_action",
                         "behaviour_prob_of_policy_action", "low_support"])  # fmt: skip
        for r in data.rows:
            writer.writerow([int(data.data.stay_id[r]), int(data.data.step[r]), int(actions[r]),
                             int(greedy[r]), f"{b_all[r, greedy[r]]:.5f}",
                             int(low_support[r])])  # fmt: skip


def _record_final(run: Path, replay_dir: Path, out: Path, at: str) -> None:
    """A final (test-split) evaluation of a run is recorded in its ``final_evaluation.json``."""
    record = run / "final_evaluation.json"
    history = json.loads(record.read_text()) if record.is_file() else []
    history.append({"at": at, "replay": str(replay_dir.absolute()), "out": str(out.absolute())})
    record.write_text(json.dumps(history, indent=2) + "\n")


def _extra_column(replay_dir: Path, split: str, column: str) -> np.ndarray | None:
    import pyarrow.parquet as pq

    path = replay_dir / f"replay_{split}.parquet"
    if column not in pq.read_schema(path).names:
        return None
    return pq.read_table(path, columns=[column])[column].to_numpy()


def record_final_folder(run: Path, tmp: Path, out: Path) -> None:
    """The run's ``final_evaluation.json`` names the folder the evaluation was written to; a
    caller that evaluates into a temporary folder (``atomic_folder``) renamed to ``out``
    (``sepsisrl evaluate --final``, the study) records ``out`` instead."""
    from sepsisrl.workspace import write_json

    record = run / "final_evaluation.json"
    if not record.is_file():
        return
    history = json.loads(record.read_text())
    written, final = str(tmp.absolute()), str(out.absolute())
    if any(e.get("out") == written for e in history):
        write_json(record, [{**e, "out": final} if e.get("out") == written else e for e in history])
