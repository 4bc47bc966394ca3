"""Evaluate any policy on a replay dataset (evaluation.md): the same code for every policy.

Policies: a training run folder, an exported model repository (``--bundle``), or a named
policy (``clinician``, ``no_treatment``, ``random``, ``constant:K``, ``rule:NAME``). The evaluated
split is validation, or test with ``final=True`` (recorded in the run folder). Nothing is fitted
on the evaluated split:

  behaviour model   fit on train, chosen by validation log-loss (evaluation.md)
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

Output folder: metrics.json, behaviour/ (the fitted behaviour model), figures/*.png (5x5 action
heatmaps), cases.csv (per-decision review table).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepsisrl import __version__
from sepsisrl.dataset.preprocessing import StatePreprocessor
from sepsisrl.ope.behaviour import BehaviourConfig, BehaviourModel
from sepsisrl.ope.fqe import FQE, FQEConfig, return_bounds
from sepsisrl.ope.importance import (
    EpisodeIndex,
    cumulative_weights,
    discounted_returns,
    ensemble_mean_ci,
    ess,
    per_decision_ess,
    per_decision_wis,
    soften,
    step_matrix,
    step_ratios,
    trajectory_weights,
    wdr_with_ci,
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
class GateConfig:
    """Overlap and fit gates: an estimate that fails them is not evaluable (written as null)."""

    support_min: float = 0.95  # model gate: support mass of the evaluated policy
    fqe_out_of_range_max: float = 0.05  # model gate: share of raw FQE state values (every
    #   state of the split, every fit) out of range; and no fit's unclipped estimate may be
    fqe_range_margin: float = 0.05  # ... by more than this share of the range's width
    is_ess_min: float = 10.0  # IS gate: trajectory ESS (unsoftened unless configured)
    is_nonzero_min: float = 0.05  # IS gate: share of episodes with non-zero weight


HEADLINE_ESTIMATORS = ("fqe", "wdr", "wis")


@dataclass(frozen=True)
class EvalConfig:
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    support_eps: float = 0.01
    softening_eps: float = 0.0
    ratio_clip: float | None = None
    seed: int = 0
    headline: str = "fqe"  # the estimator the OPE panel validates best (bench/ope_panel.py)
    gates: GateConfig = field(default_factory=GateConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    fqe: FQEConfig = field(default_factory=FQEConfig)

    def __post_init__(self) -> None:
        if self.headline not in HEADLINE_ESTIMATORS:
            raise ValueError(
                f"evaluation headline estimator {self.headline!r} is not one of "
                f"{', '.join(HEADLINE_ESTIMATORS)}"
            )


# ---------------------------------------------------------------------------- policies
class BundlePolicy(TrainedPolicy):
    """An exported model repository: model.safetensors (actor) + config.json."""

    def __init__(self, bundle: str | Path, feature_names: list[str]) -> None:
        from sepsisrl.rl.checkpoint import check_tensors
        from sepsisrl.rl.networks import MLP
        from sepsisrl.rl.policies import finite_tensors

        folder = Path(bundle)
        cfg = json.loads((folder / "config.json").read_text())
        if not isinstance(cfg, dict):
            raise EvaluationError(f"{folder / 'config.json'}: expected a JSON object")
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
        hidden = tuple(cfg.get("hidden_sizes", [256, 256]))
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
        raise EvaluationError(f"unknown policy kind {kind!r}; expected named|run|bundle|object")
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
    """Evaluate one policy; writes ``out_dir`` and returns the metrics document.

    ``kind`` says what ``policy`` is: ``"run"`` a training run folder, ``"bundle"`` an exported
    model repository, ``"named"`` a SPEC of the shared grammar (``clinician``, ``constant:K``,
    ...), ``"object"`` a Python object with ``name``, ``act(states)`` and
    ``action_probabilities(states)`` (the ``rl.policies.Policy`` protocol).
    """
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
    # a run or bundle is loaded (and its weights checked for NaN/inf) before anything is written
    pol = make_policy(policy, kind, meta, None) if kind in ("run", "bundle", "object") else None
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
    if pol is None:
        pol = make_policy(policy, kind, meta, behaviour)

    states = data.states.numpy()
    actions = data.actions.numpy()
    rewards = data.rewards.numpy()
    b_all = behaviour.probabilities(states)
    pi_all = pol.action_probabilities(states)
    greedy = pol.act(states) if kind != "named" or policy != "clinician" else actions.copy()
    idx = EpisodeIndex.from_rows(data.stay_id, data.step)
    rows = np.arange(len(actions))
    pi_eval = soften(pi_all, cfg.softening_eps)
    rho = step_ratios(pi_eval[rows, actions], b_all[rows, actions], cfg.ratio_clip)
    w = trajectory_weights(rho, idx)
    w_et = cumulative_weights(rho, idx)
    g = discounted_returns(rewards, idx, meta.gamma)
    wis_ci = wis_with_ci(w, g, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    pdwis = per_decision_wis(rho, rewards, idx, meta.gamma)
    softened = {}
    for eps in (0.05, 0.1, 0.2):  # secondary estimates; the headline uses cfg.softening_eps
        rho_e = step_ratios(
            soften(pi_all, eps)[rows, actions], b_all[rows, actions], cfg.ratio_clip
        )
        w_e = trajectory_weights(rho_e, idx)
        ci_e = wis_with_ci(w_e, g, cfg.bootstrap_resamples, cfg.bootstrap_seed)
        softened[str(eps)] = {"wis": _finite(ci_e.estimate), "ci_low": _finite(ci_e.low),
                              "ci_high": _finite(ci_e.high), "ess": ess(w_e)}  # fmt: skip
    supported = b_all >= cfg.support_eps
    support_mass = (pi_all * supported).sum(1)
    overlap = {
        "ess": ess(w),
        "nonzero_weight_share": float((w > 0).mean()) if len(w) else 0.0,
        "ess_per_decision": [round(float(x), 3) for x in per_decision_ess(w_et)],
        "support_mass": float(support_mass.mean()),
    }
    is_reasons = []
    if overlap["ess"] < cfg.gates.is_ess_min:
        is_reasons.append(f"trajectory ESS {overlap['ess']:.2f} < {cfg.gates.is_ess_min}")
    if overlap["nonzero_weight_share"] < cfg.gates.is_nonzero_min:
        is_reasons.append(
            f"{overlap['nonzero_weight_share']:.1%} of episodes have non-zero weight "
            f"(< {cfg.gates.is_nonzero_min:.0%})"
        )
    lap("importance_sampling")

    # FQE: a bootstrap ensemble fit on train patients only (out-of-bag patients stop each fit)
    train_idx = EpisodeIndex.from_rows(train.stay_id, train.step)
    longest = int(train_idx.t.max()) + 1 if len(train) else 1
    lo, hi = return_bounds(train.rewards.numpy(), train.dones.numpy(), meta.gamma, longest)
    pi_train = pol.action_probabilities(train.states.numpy())
    fqe = FQE(meta.state_dim, meta.n_actions, meta.gamma, cfg.fqe, bounds=(lo, hi))
    fqe_fit = fqe.fit(
        _fqe_data(train, np.ones(len(train), dtype=bool), pi_train), train.subject_id, longest
    )
    q_all = fqe.q_values(data.states)  # (K, N, A), clipped to [lo, hi]
    v_all = np.einsum("kna,na->kn", q_all, pi_all)
    init = data.initial_mask()
    v0 = v_all[:, init]
    # the range gate looks at the raw (unclipped) values of every fit at EVERY state of the
    # split, not only the initial ones: a run-away FQE leaves the range almost everywhere,
    # while a single unusual initial state among ~100 is extrapolation, not divergence
    raw_v = np.einsum("kna,na->kn", fqe.q_values(data.states, raw=True), pi_all)
    # the fit on every train patient (linear FQE): the point estimate; the members: its spread
    q_full = fqe.full_q_values(data.states)
    if q_full is not None:
        v_full = np.einsum("na,na->n", q_full, pi_all)
        raw_full = np.einsum("na,na->n", fqe.full_q_values(data.states, raw=True), pi_all)
        raw_v = np.vstack([raw_v, raw_full[None]])
    margin = cfg.gates.fqe_range_margin * (hi - lo)
    # NaN or inf (a diverged fit) counts as out of range: a comparison with NaN is never true
    out_of_range = float(
        np.mean(~np.isfinite(raw_v) | (raw_v < lo - margin) | (raw_v > hi + margin))
    )
    raw_estimates = raw_v[:, init].mean(1)  # every fit's unclipped estimate
    estimate_out = bool(
        np.any(
            ~np.isfinite(raw_estimates)
            | (raw_estimates < lo - margin)
            | (raw_estimates > hi + margin)
        )
    )
    fqe_ci = ensemble_mean_ci(v0, cfg.bootstrap_resamples, cfg.bootstrap_seed,
                              point=None if q_full is None else v_full[init])  # fmt: skip
    # WDR: TD errors of every member along the logged episodes, weights of the policy as evaluated
    next_rows = data.next_index.numpy()
    dones = data.dones.numpy()
    q_taken = q_all[:, rows, actions]
    delta = rewards + meta.gamma * (1.0 - dones) * v_all[:, next_rows] - q_taken  # (K, N)
    delta_et = np.stack([step_matrix(d, idx) for d in delta])
    point = None
    if q_full is not None:
        d_full = rewards + meta.gamma * (1.0 - dones) * v_full[next_rows] - q_full[rows, actions]
        point = (step_matrix(d_full, idx), v_full[init])
    wdr_raw = wdr_with_ci(w_et, delta_et, v0, meta.gamma, cfg.bootstrap_resamples,
                          cfg.bootstrap_seed, point=point)  # fmt: skip
    # The true value lies in the attainable range, so projecting the estimate and its CI
    # onto it never moves them away from the truth (the importance-weighted corrections of
    # WDR are not a convex combination of returns and can leave it); the raw values are kept.
    wdr_ci = replace(
        wdr_raw,
        estimate=float(np.clip(wdr_raw.estimate, lo, hi)),
        low=float(np.clip(wdr_raw.low, lo, hi)),
        high=float(np.clip(wdr_raw.high, lo, hi)),
    )
    model_reasons = []
    if not fqe_fit.converged:
        model_reasons.append(
            f"FQE did not converge ({fqe_fit.capped_iterations} of {fqe_fit.horizon} "
            f"iterations reached max_steps; horizon {fqe_fit.horizon}, longest episode {longest})"
        )
    if out_of_range > cfg.gates.fqe_out_of_range_max:
        model_reasons.append(
            f"{out_of_range:.1%} of raw FQE state values leave the attainable range "
            f"[{lo:g}, {hi:g}]"
        )
    if estimate_out:
        model_reasons.append(
            f"an unclipped FQE estimate leaves the attainable range [{lo:g}, {hi:g}]: "
            f"{', '.join(f'{x:.2f}' for x in raw_estimates)}"
        )
    # not a configurable gate: an FQE figure that is not finite or leaves the range of the
    # terminal rewards is never a number that could be printed or win a comparison
    t_lo, t_hi = _terminal_range(meta, lo, hi)
    fqe_numbers = {"estimate": fqe_ci.estimate, "CI low": fqe_ci.low, "CI high": fqe_ci.high}
    bad_fqe = [
        f"{k} {v:g}" for k, v in fqe_numbers.items() if not np.isfinite(v) or not t_lo <= v <= t_hi
    ]
    if bad_fqe:
        model_reasons.append(
            f"FQE diverged: {', '.join(bad_fqe)} is not finite or outside the attainable return "
            f"range [{t_lo:g}, {t_hi:g}]"
        )
    if overlap["support_mass"] < cfg.gates.support_min:
        model_reasons.append(
            f"support mass {overlap['support_mass']:.3f} < {cfg.gates.support_min} (the policy "
            f"chooses actions the clinicians take with probability < {cfg.support_eps})"
        )
    evaluable = {
        "model": not model_reasons,
        "importance_sampling": not is_reasons,
        "model_reasons": model_reasons,
        "importance_sampling_reasons": is_reasons,
    }
    lap("fqe_wdr")

    # agreement, support, safety, subgroups
    exact = greedy == actions
    gv, gf = bins(greedy)
    cv, cf = bins(actions)
    adjacent = (np.abs(gv - cv) <= 1) & (np.abs(gf - cf) <= 1)
    low_support = ~supported[rows, greedy]
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

    model_ok, is_ok = evaluable["model"], evaluable["importance_sampling"]

    def gated(x: float, ok: bool) -> float | None:
        return _finite(x) if ok else None

    estimates = {
        "fqe": (fqe_ci.estimate, fqe_ci.low, fqe_ci.high, model_ok),
        "wdr": (wdr_ci.estimate, wdr_ci.low, wdr_ci.high, model_ok),
        "wis": (wis_ci.estimate, wis_ci.low, wis_ci.high, is_ok),
    }
    head = estimates[cfg.headline]
    metrics = {
        "fqe_mean": gated(fqe_ci.estimate, model_ok),
        "fqe_ci_low": gated(fqe_ci.low, model_ok),
        "fqe_ci_high": gated(fqe_ci.high, model_ok),
        "wdr_mean": gated(wdr_ci.estimate, model_ok),
        "wdr_ci_low": gated(wdr_ci.low, model_ok),
        "wdr_ci_high": gated(wdr_ci.high, model_ok),
        "wis_mean": gated(wis_ci.estimate, is_ok),
        "wis_ci_low": gated(wis_ci.low, is_ok),
        "wis_ci_high": gated(wis_ci.high, is_ok),
        "wis_per_decision": gated(pdwis, is_ok),
        "headline_mean": gated(head[0], head[3]),
        "headline_ci_low": gated(head[1], head[3]),
        "headline_ci_high": gated(head[2], head[3]),
        "ess": overlap["ess"],
        "nonzero_weight_share": overlap["nonzero_weight_share"],
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
        "policy": {
            "spec": pol.name if kind == "object" else str(policy),
            "kind": kind,
            "name": pol.name,
        },
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
        }
        | {"validation_no_treatment_auc": behaviour.info.get("validation_no_treatment_auc")},
        "headline_estimator": cfg.headline,
        "evaluable": evaluable,
        "overlap": overlap,
        "estimates_ungated": {
            name: {
                "estimate": _finite(e[0]),
                "ci_low": _finite(e[1]),
                "ci_high": _finite(e[2]),
                "evaluable": e[3],
            }
            for name, e in estimates.items()
        },
        "fqe": {
            **fqe_fit.to_json(),
            "attainable_range": [lo, hi],
            "raw_out_of_range_share": out_of_range,
            "raw_out_of_range_measured_on": "every state of the split, every fit",
            "raw_estimates": [float(x) for x in raw_estimates],
            "member_values": [float(x) for x in v0.mean(1)],
            "basis": cfg.fqe.basis if cfg.fqe.model == "linear" else None,
            "point_estimate": "fit on every train patient"
            if q_full is not None
            else "ensemble mean",
            "bootstrap": fqe_ci.to_json(),
            "fit_on": "train (bootstrap resamples of train patients; out-of-bag patients choose "
            "each iteration's penalty"
            + (
                "; the point estimate refits every train patient with the members' median penalty)"
                if q_full is not None
                else ")"
            ),
        },
        "wdr": {
            "bootstrap": wdr_ci.to_json(),
            "raw": wdr_raw.to_json(),
            "clipped_to_attainable_range": bool(
                not lo <= wdr_raw.estimate <= hi
                or not lo <= wdr_raw.low <= hi
                or not lo <= wdr_raw.high <= hi
            ),
            "weighted_share": _weighted_share(w_et),
            "control_variate": "FQE fit on every train patient (the estimate); the ensemble "
            "(each bootstrap resample draws one member) for the CI",
        },
        "importance_sampling": {
            "evaluable": is_ok,
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


def _terminal_range(meta: ReplayMeta, lo: float, hi: float) -> tuple[float, float]:
    """[-T, +T] with T the largest terminal reward of the replay meta (the evaluation reward is
    terminal only, so no return leaves it); the attainable range when the meta has none."""
    reward = meta.raw.get("reward") or {}
    terms = [reward.get("terminal_survived"), reward.get("terminal_died")]
    terms = [abs(float(t)) for t in terms if isinstance(t, (int, float)) and np.isfinite(t)]
    if not terms:
        return lo, hi
    return -max(terms), max(terms)


def _weighted_share(w_et: np.ndarray) -> float:
    """Share of (episode, position) cells whose cumulative weight is non-zero: how much of
    the WDR is importance-weighted correction rather than the FQE alone."""
    return float((w_et > 0).mean()) if w_et.size else 0.0


def _finite(x: float) -> float | None:
    """JSON has no NaN: undefined estimates are written as null."""
    return float(x) if np.isfinite(x) else None


def _extra_column(replay_dir: Path, split: str, column: str) -> np.ndarray | None:
    import pyarrow.parquet as pq

    path = replay_dir / f"replay_{split}.parquet"
    if column not in pq.read_schema(path).names:
        return None
    return pq.read_table(path, columns=[column])[column].to_numpy()
