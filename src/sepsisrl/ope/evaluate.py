"""Evaluate any policy on a replay dataset (evaluation.md): the same code for every policy.

Policies: a training run folder, an exported model repository (``--bundle``), or one of
``clinician``, ``no_treatment``, ``random``. The evaluated split is validation, or test with
``final=True`` (recorded in the run folder). Nothing is fitted on the evaluated split:

  behaviour model   fit on train, chosen by validation log-loss (evaluation.md)
  FQE               fit on train; convergence judged on a held-out 15 % of train patients
                    (validation initial states when the test split is evaluated)

Every estimate uses the evaluation reward (``reward_eval``: terminal +-15 only) and the gamma
of the replay meta. Output folder: metrics.json, behaviour/ (the fitted behaviour model),
figures/*.png (5x5 action heatmaps), cases.csv (per-decision review table).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepsisrl import __version__
from sepsisrl.build.preprocessing import StatePreprocessor
from sepsisrl.ope.behaviour import BehaviourConfig, BehaviourModel
from sepsisrl.ope.fqe import FQE, FQEConfig
from sepsisrl.ope.importance import (
    EpisodeIndex,
    bootstrap_counts,
    discounted_returns,
    ess,
    per_decision_wis,
    soften,
    step_ratios,
    trajectory_weights,
    wis_with_ci,
)
from sepsisrl.ope.safety import REQUIRED_FEATURES, bins, safety_flags, subgroups
from sepsisrl.rl.data import ReplayMeta, Transitions, load_meta, load_split
from sepsisrl.rl.policies import (
    ClinicianPolicy,
    NoTreatmentPolicy,
    RandomPolicy,
    TrainedPolicy,
    _Deterministic,
)

NAMED_POLICIES = ("clinician", "no_treatment", "random")
EVAL_REWARD = "reward_eval"


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (e.g. test split without --final)."""


@dataclass(frozen=True)
class EvalConfig:
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    support_eps: float = 0.01
    softening_eps: float = 0.0
    ratio_clip: float | None = None
    holdout_fraction: float = 0.15
    seed: int = 0
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    fqe: FQEConfig = field(default_factory=FQEConfig)


# ---------------------------------------------------------------------------- policies
class BundlePolicy(TrainedPolicy):
    """An exported model repository: model.safetensors (actor) + config.json."""

    def __init__(self, bundle: str | Path, feature_names: list[str]) -> None:
        from safetensors.torch import load_file

        from sepsisrl.rl.networks import MLP

        folder = Path(bundle)
        cfg = json.loads((folder / "config.json").read_text())
        self.name = f"bundle:{folder.name}"
        self.algo = cfg.get("model_type", "iql")
        self.state_dim, self.n_actions = int(cfg["state_dim"]), int(cfg["n_actions"])
        names = cfg.get("feature_names") or sorted(feature_names)
        missing = [n for n in names if n not in feature_names]
        if missing or len(names) != self.state_dim:
            raise EvaluationError(
                f"{folder}: the model's features do not match the replay's (missing {missing[:5]})"
            )
        self.order = np.array([feature_names.index(n) for n in names])
        self.net = MLP(self.state_dim, self.n_actions, tuple(cfg.get("hidden_sizes", [256, 256])))
        self.net.load_state_dict(load_file(str(folder / "model.safetensors")))
        self.net.eval()
        self.behaviour = None
        self.device = "cpu"

    def logits(self, states: np.ndarray) -> np.ndarray:
        return super().logits(np.asarray(states)[:, self.order])


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

        ref = meta.raw.get("preprocessing")
        path = (meta.path.parent.parent / ref) if ref else None
        if path is None or not path.is_file():
            raise EvaluationError(
                f"rule:{name} needs the build's preprocessing statistics next to {meta.path} "
                f"({ref or 'features/preprocessing.json'} not found)"
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
    policy = TrainedPolicy(spec)
    run_cfg = json.loads((Path(spec) / "config.json").read_text())
    if run_cfg["replay"]["feature_names"] != meta.feature_names:
        raise EvaluationError(f"{spec}: trained on other features than {meta.path} provides")
    return policy


# ---------------------------------------------------------------------------- helpers
def _holdout_split(subjects: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    uniq = np.unique(subjects)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(uniq, size=max(1, round(fraction * len(uniq))), replace=False).tolist())
    return np.array([s in held for s in subjects.tolist()])


def _fqe_data(data: Transitions, rows: np.ndarray, pi_all: np.ndarray) -> dict[str, torch.Tensor]:
    idx = torch.from_numpy(np.flatnonzero(rows))
    nxt = data.next_index[idx]
    return {
        "s": data.states[idx],
        "a": data.actions[idx],
        "r": data.rewards[idx],
        "s_next": data.states[nxt],
        "done": data.dones[idx],
        "pi_next": torch.from_numpy(pi_all[nxt.numpy()].astype(np.float32)),
    }


def raw_states(meta: ReplayMeta, states: np.ndarray) -> dict[str, np.ndarray] | None:
    """Un-normalised feature values (for safety rules and subgroups), if the build's
    preprocessing statistics are available next to the replay."""
    ref = meta.raw.get("preprocessing")
    path = (meta.path.parent.parent / ref) if ref else None
    if path is None or not path.is_file():
        return None
    prep = StatePreprocessor.from_json(json.loads(path.read_text()))
    out = {}
    for j, name in enumerate(meta.feature_names):
        if name in prep.mean:
            x = states[:, j].astype(np.float64) * prep.std[name] + prep.mean[name]
            out[name] = np.expm1(x) if name in prep.log1p else x
    return out if all(k in out for k in REQUIRED_FEATURES) else None


def _heatmaps(clin: np.ndarray, pol: np.ndarray, folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def grid(actions: np.ndarray) -> np.ndarray:
        return np.bincount(actions, minlength=25).reshape(5, 5) / max(len(actions), 1)

    folder.mkdir(parents=True, exist_ok=True)
    grids = {"clinician": grid(clin), "policy": grid(pol)}
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
def evaluate(
    policy: str | Path,
    replay_dir: str | Path,
    out_dir: str | Path,
    kind: str = "run",
    final: bool = False,
    cfg: EvalConfig | None = None,
    behaviour: BehaviourModel | None = None,
) -> dict[str, Any]:
    """Evaluate one policy; writes ``out_dir`` and returns the metrics document."""
    cfg = cfg or EvalConfig()
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now

    replay_dir, out = Path(replay_dir), Path(out_dir)
    meta = load_meta(replay_dir)
    split = "test" if final else "validation"
    train = load_split(replay_dir, "train", EVAL_REWARD, meta)
    val = load_split(replay_dir, "validation", EVAL_REWARD, meta)
    data = load_split(replay_dir, "test", EVAL_REWARD, meta) if final else val
    out.mkdir(parents=True, exist_ok=True)
    lap("load")

    # behaviour policy: fit on train, chosen on validation (or reused if already fitted)
    if (
        behaviour is None
        or behaviour.info.get("fitted_on", {}).get("fingerprint") != train.fingerprint
    ):
        behaviour = BehaviourModel.fit(
            train.states.numpy(), train.actions.numpy(), val.states.numpy(), val.actions.numpy(),
            meta.n_actions, cfg.behaviour, train.fingerprint,
        )  # fmt: skip
    behaviour.save(out / "behaviour")
    lap("behaviour_model")
    pol = make_policy(policy, kind, meta, behaviour)

    states = data.states.numpy()
    actions = data.actions.numpy()
    b_all = behaviour.probabilities(states)
    pi_all = pol.action_probabilities(states)
    greedy = pol.act(states) if kind != "named" or policy != "clinician" else actions.copy()
    idx = EpisodeIndex.from_rows(data.stay_id, data.step)
    rows = np.arange(len(actions))
    pi_eval = soften(pi_all, cfg.softening_eps)
    rho = step_ratios(pi_eval[rows, actions], b_all[rows, actions], cfg.ratio_clip)
    w = trajectory_weights(rho, idx)
    g = discounted_returns(data.rewards.numpy(), idx, meta.gamma)
    wis_ci = wis_with_ci(w, g, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    pdwis = per_decision_wis(rho, data.rewards.numpy(), idx, meta.gamma)
    softened = {}
    for eps in (0.05, 0.1, 0.2):  # secondary estimates; the headline uses cfg.softening_eps
        rho_e = step_ratios(
            soften(pi_all, eps)[rows, actions], b_all[rows, actions], cfg.ratio_clip
        )
        w_e = trajectory_weights(rho_e, idx)
        ci_e = wis_with_ci(w_e, g, cfg.bootstrap_resamples, cfg.bootstrap_seed)
        softened[str(eps)] = {"wis": _finite(ci_e.estimate), "ci_low": _finite(ci_e.low),
                              "ci_high": _finite(ci_e.high), "ess": ess(w_e)}  # fmt: skip

    lap("importance_sampling")
    # FQE
    pi_train = pol.action_probabilities(train.states.numpy())
    if final:
        fit_rows = np.ones(len(train), dtype=bool)
        h_states, h_pi = (
            val.states[val.initial_mask()],
            pol.action_probabilities(val.states.numpy()[val.initial_mask()]),
        )
    else:
        held = _holdout_split(train.subject_id, cfg.holdout_fraction, cfg.seed)
        fit_rows = ~held
        h_rows = held & train.initial_mask()
        h_states, h_pi = train.states[h_rows], pi_train[h_rows]
    fqe = FQE(meta.state_dim, meta.n_actions, meta.gamma, cfg.fqe)
    fqe_fit = fqe.fit(
        _fqe_data(train, fit_rows, pi_train),
        h_states,
        torch.from_numpy(np.asarray(h_pi, np.float32)),
    )
    init = data.initial_mask()
    v0 = fqe.state_values(
        data.states[torch.from_numpy(init)], torch.from_numpy(pi_all[init].astype(np.float32))
    )
    counts = bootstrap_counts(len(v0), cfg.bootstrap_resamples, cfg.bootstrap_seed)
    boots = counts @ v0 / len(v0)
    fqe_lo, fqe_hi = np.percentile(boots, [2.5, 97.5])
    lap("fqe")

    # agreement, support, safety, subgroups
    exact = greedy == actions
    gv, gf = bins(greedy)
    cv, cf = bins(actions)
    adjacent = (np.abs(gv - cv) <= 1) & (np.abs(gf - cf) <= 1)
    supported = b_all >= cfg.support_eps
    low_support = ~supported[rows, greedy]
    support_mass = (pi_all * supported).sum(1)
    raw = raw_states(meta, states)
    safety: dict[str, Any] = {"available": raw is not None}
    groups_out: dict[str, Any] = {}
    if raw is not None:
        pol_flags = safety_flags(raw, greedy)
        clin_flags = safety_flags(raw, actions)
        safety.update({
            "rules": {n: {"policy": int(pol_flags[n].sum()), "clinicians": int(clin_flags[n].sum())} for n in pol_flags},
            "policy_total": int(sum(v.sum() for v in pol_flags.values())),
            "clinicians_total": int(sum(v.sum() for v in clin_flags.values())),
        })  # fmt: skip
        any_pol = np.any(np.column_stack(list(pol_flags.values())), axis=1)
        any_clin = np.any(np.column_stack(list(clin_flags.values())), axis=1)
        sofa = _extra_column(replay_dir, split, "sofa")
        for name, m in subgroups(raw, sofa).items():
            if not m.any():
                continue
            groups_out[name] = {
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
    lap("agreement_support_safety_subgroups")
    figures = _heatmaps(actions, greedy, out / "figures")
    with open(out / "cases.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "stay_id",
                "step",
                "clinician_action",
                "policy_action",
                "behaviour_prob_of_policy_action",
                "low_support",
            ]
        )
        for r in rows:
            writer.writerow([int(data.stay_id[r]), int(data.step[r]), int(actions[r]), int(greedy[r]),
                             f"{b_all[r, greedy[r]]:.5f}", int(low_support[r])])  # fmt: skip
    lap("figures_and_cases")

    metrics = {
        "fqe_mean": float(v0.mean()),
        "fqe_ci_low": float(fqe_lo),
        "fqe_ci_high": float(fqe_hi),
        "wis_mean": _finite(wis_ci.estimate),
        "wis_ci_low": _finite(wis_ci.low),
        "wis_ci_high": _finite(wis_ci.high),
        "wis_per_decision": _finite(pdwis),
        "ess": ess(w),
        "clinician_agreement": float(exact.mean()),
        "adjacent_agreement": float(adjacent.mean()),
        "support_mass": float(support_mass.mean()),
        "low_support_action_rate": float(low_support.mean()),
        "severe_safety_flags": safety.get("policy_total"),
        "clinician_safety_flags": safety.get("clinicians_total"),
        "observed_return_mean": float(g.mean()),
    }
    doc = {
        "schema_version": "1",
        "policy": {"spec": str(policy), "kind": kind, "name": pol.name},
        "split": split,
        "final": final,
        "episodes": idx.n_episodes,
        "decisions": len(actions),
        "metrics": metrics,
        "behaviour_model": {
            k: behaviour.info[k]
            for k in (
                "kind",
                "validation_accuracy",
                "validation_log_loss",
                "validation_ece",
                "candidates",
            )
        },
        "fqe": {
            "steps": fqe_fit.steps,
            "converged": fqe_fit.converged,
            "holdout_value": fqe_fit.holdout_value,
            "fit_on": "train"
            if final
            else f"train minus a {cfg.holdout_fraction:.0%} patient holdout",
        },
        "importance_sampling": {
            "softening_eps": cfg.softening_eps,
            "ratio_clip": cfg.ratio_clip,
            "bootstrap": wis_ci.to_json(),
            "weights_max": float(w.max()),
            "zero_weight_episodes": int((w == 0).sum()),
            "note": None
            if w.sum() > 0
            else "every episode has zero weight: the policy disagrees with "
            "the logged action somewhere in each episode; trajectory-wise WIS is undefined "
            "without softening (see wis_softened)",
            "wis_softened": softened,
        },
        "safety": safety,
        "subgroups": groups_out,
        "figures": figures,
        "timings_seconds": timings,
        "gamma": meta.gamma,
        "reward": "evaluation reward: terminal +-15 only (reward_eval)",
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "replay": {
            "path": str(replay_dir.absolute()),
            "variant": meta.variant,
            "source": meta.raw.get("source"),
        },
        "created_by": f"sepsisrl {__version__}",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    if final and kind == "run":
        record = Path(policy) / "final_evaluation.json"
        history = json.loads(record.read_text()) if record.is_file() else []
        history.append(
            {
                "at": doc["created_at"],
                "replay": str(replay_dir.absolute()),
                "out": str(out.absolute()),
            }
        )
        record.write_text(json.dumps(history, indent=2) + "\n")
    return doc


def _finite(x: float) -> float | None:
    """JSON has no NaN: undefined estimates are written as null."""
    return float(x) if np.isfinite(x) else None


def _extra_column(replay_dir: Path, split: str, column: str) -> np.ndarray | None:
    import pyarrow.parquet as pq

    path = replay_dir / f"replay_{split}.parquet"
    if column not in pq.read_schema(path).names:
        return None
    return pq.read_table(path, columns=[column])[column].to_numpy()
