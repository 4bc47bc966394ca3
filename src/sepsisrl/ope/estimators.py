"""Off-policy estimators as objects that ``evaluate`` composes (docs/evaluate.md).

Every estimator follows one small protocol, in the manner of scikit-learn's estimators: it is
built without arguments, ``fit(data, fitted)`` computes it on an :class:`EvalData` (everything
about the evaluated split and the policy, shared by all estimators) and returns it, and its
results are read from attributes and methods afterwards:

- ``name``       the key prefix in ``metrics.json`` (``<name>_mean``, ``<name>_ci_low``,
                 ``<name>_ci_high``) and a value of ``EvalConfig.headline``;
- ``gate``       the overlap gate that decides whether it is defined (``GATES``): ``model``
                 (the FQE fit and the support of the policy's actions) or
                 ``importance_sampling`` (effective sample size, episodes with weight);
- ``ci``         after ``fit``: the estimate and its 95 % CI (``importance.BootstrapCI``);
- ``reasons()``  why its own figure cannot be trusted (added to its gate's reasons);
- ``metrics(ok)``  its entries of ``metrics.json`` ``metrics`` (null where ``ok`` is false);
- ``details(ok)``  its section of ``metrics.json`` (under ``section``), or None.

``fitted`` holds the estimators fitted before it, by name: the WDR uses the FQE as its control
variate. :data:`REGISTERED` lists them in fitting and reporting order, one line each;
``estimators()`` builds fresh instances. Adding an estimator: a new module with its class and
one line in :data:`REGISTERED` (docs/evaluate.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from sepsisrl.ope.fqe import FQE, return_bounds
from sepsisrl.ope.importance import (
    BootstrapCI,
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
from sepsisrl.ope.sensitivity import fqe_sensitivity, wdr_sensitivity
from sepsisrl.rl.data import ReplayMeta, Transitions

if TYPE_CHECKING:
    from sepsisrl.ope.evaluate import EvalConfig, GateConfig

#: Every estimator ``evaluate`` computes, one line each (``module:Class``), in the order they
#: are fitted and reported (an estimator may use those before it).
REGISTERED = (
    "sepsisrl.ope.estimators:FittedQEvaluation",
    "sepsisrl.ope.estimators:WeightedDoublyRobust",
    "sepsisrl.ope.estimators:WeightedImportanceSampling",
)


@dataclass
class EvalData:
    """The evaluated split, the policy's and the clinicians' action probabilities on it, and
    the quantities several estimators share (computed once, on first use)."""

    meta: ReplayMeta
    cfg: EvalConfig
    train: Transitions
    data: Transitions  # the evaluated split (validation, or test with final)
    policy: Any  # rl.policies.Policy
    b_all: np.ndarray  # (N, A) behaviour model b(a|s) on the evaluated split
    pi_all: np.ndarray  # (N, A) the policy's pi(a|s), exactly as evaluated
    # b(.|s) of any states (the behaviour model): the FQE's sensitivity bounds need it at the
    # train next states; None: no sensitivity bounds for the FQE
    behaviour: Callable[[np.ndarray], np.ndarray] | None = None

    @cached_property
    def states(self) -> np.ndarray:
        return self.data.states.numpy()

    @cached_property
    def actions(self) -> np.ndarray:
        return self.data.actions.numpy()

    @cached_property
    def rewards(self) -> np.ndarray:
        return self.data.rewards.numpy()

    @cached_property
    def rows(self) -> np.ndarray:
        return np.arange(len(self.actions))

    @cached_property
    def idx(self) -> EpisodeIndex:
        return EpisodeIndex.from_rows(self.data.stay_id, self.data.step)

    @cached_property
    def rho(self) -> np.ndarray:
        """Per-step ratios pi/b at the logged action (softened and clipped as configured)."""
        pi_eval = soften(self.pi_all, self.cfg.softening_eps)
        rows, a = self.rows, self.actions
        return step_ratios(pi_eval[rows, a], self.b_all[rows, a], self.cfg.ratio_clip)

    @cached_property
    def w(self) -> np.ndarray:
        """Trajectory importance weights, one per episode."""
        return trajectory_weights(self.rho, self.idx)

    @cached_property
    def w_et(self) -> np.ndarray:
        """Cumulative weights, (episode, position)."""
        return cumulative_weights(self.rho, self.idx)

    @cached_property
    def returns(self) -> np.ndarray:
        """Discounted return of each logged episode."""
        return discounted_returns(self.rewards, self.idx, self.meta.gamma)

    @cached_property
    def supported(self) -> np.ndarray:
        """(N, A): actions the clinicians take with probability >= support_eps."""
        return self.b_all >= self.cfg.support_eps

    @cached_property
    def support_mass(self) -> np.ndarray:
        """Per decision: the policy's probability on supported actions."""
        return (self.pi_all * self.supported).sum(1)

    @cached_property
    def overlap(self) -> dict[str, Any]:
        w = self.w
        return {
            "ess": ess(w),
            "nonzero_weight_share": float((w > 0).mean()) if len(w) else 0.0,
            "ess_per_decision": [round(float(x), 3) for x in per_decision_ess(self.w_et)],
            "support_mass": float(self.support_mass.mean()),
        }


class Estimator:
    """Base class: the protocol of the module docstring, with its common defaults."""

    name: ClassVar[str]
    gate: ClassVar[str]
    section: ClassVar[str | None] = None  # its key in metrics.json (None: no section)
    timing: ClassVar[str]  # the timings_seconds entry its fit counts towards
    ci: BootstrapCI

    def fit(self, data: EvalData, fitted: Mapping[str, Estimator]) -> Estimator:
        raise NotImplementedError

    def reasons(self) -> list[str]:
        return []

    def metrics(self, ok: bool) -> dict[str, float | None]:
        ci = self.ci
        return {
            f"{self.name}_mean": gated(ci.estimate, ok),
            f"{self.name}_ci_low": gated(ci.low, ok),
            f"{self.name}_ci_high": gated(ci.high, ok),
        }

    def details(self, ok: bool) -> dict[str, Any] | None:
        return None


# ---------------------------------------------------------------------------- FQE
def fqe_data(data: Transitions, rows: np.ndarray, pi_all: np.ndarray) -> dict[str, torch.Tensor]:
    """The FQE's training tensors: transitions of ``rows``, pi at every next state, and pi's
    probability of each row's logged action (``fqe.penalty_rows: policy``)."""
    idx = torch.from_numpy(np.flatnonzero(rows))
    nxt = data.next_index[idx]
    a = data.actions[idx]
    return {
        "s": data.states[idx],
        "a": a,
        "r": data.rewards[idx],
        "s_next": data.states[nxt],
        "done": data.dones[idx],
        "pi_next": torch.from_numpy(pi_all[nxt.numpy()].astype(np.float32)),
        "pi_logged": torch.from_numpy(pi_all[idx.numpy(), a.numpy()].astype(np.float32)),
    }


class FittedQEvaluation(Estimator):
    """FQE: a bootstrap ensemble fit on train patients only (out-of-bag patients stop each
    fit); the linear model's point estimate is a fit on every train patient."""

    name = "fqe"
    gate = "model"
    section = "fqe"
    timing = "fqe_wdr"

    def fit(self, data: EvalData, fitted: Mapping[str, Estimator]) -> FittedQEvaluation:
        cfg, meta, train = data.cfg, data.meta, data.train
        train_idx = EpisodeIndex.from_rows(train.stay_id, train.step)
        self.longest = longest = int(train_idx.t.max()) + 1 if len(train) else 1
        lo, hi = return_bounds(train.rewards.numpy(), train.dones.numpy(), meta.gamma, longest)
        self.lo, self.hi = lo, hi
        pi_train = data.policy.action_probabilities(train.states.numpy())
        device = None if cfg.device == "cpu" else cfg.device  # NumPy on the CPU
        fqe = FQE(meta.state_dim, meta.n_actions, meta.gamma, cfg.fqe, (lo, hi), device)
        self.fit_result = fqe.fit(
            fqe_data(train, np.ones(len(train), dtype=bool), pi_train), train.subject_id, longest
        )
        states, pi_all = data.data.states, data.pi_all
        self.q_all = fqe.q_values(states)  # (K, N, A), clipped to [lo, hi]
        self.v_all = np.einsum("kna,na->kn", self.q_all, pi_all)
        self.init = init = data.data.initial_mask()
        self.v0 = self.v_all[:, init]
        # the range gate looks at the raw (unclipped) values of every fit at EVERY state of
        # the split, not only the initial ones: a run-away FQE leaves the range almost
        # everywhere, while a single unusual initial state among ~100 is extrapolation
        raw_v = np.einsum("kna,na->kn", fqe.q_values(states, raw=True), pi_all)
        # the fit on every train patient (linear FQE): the point estimate; members: its spread
        self.q_full = fqe.full_q_values(states)
        self.v_full = None
        if self.q_full is not None:
            self.v_full = np.einsum("na,na->n", self.q_full, pi_all)
            raw_full = np.einsum("na,na->n", fqe.full_q_values(states, raw=True), pi_all)
            raw_v = np.vstack([raw_v, raw_full[None]])
        margin = cfg.gates.fqe_range_margin * (hi - lo)
        # NaN or inf (a diverged fit) counts as out of range: a comparison with NaN is never true
        self.out_of_range = float(
            np.mean(~np.isfinite(raw_v) | (raw_v < lo - margin) | (raw_v > hi + margin))
        )
        self.raw_estimates = raw = raw_v[:, init].mean(1)  # every fit's unclipped estimate
        self.estimate_out = bool(
            np.any(~np.isfinite(raw) | (raw < lo - margin) | (raw > hi + margin))
        )
        self.ci = ensemble_mean_ci(
            self.v0, cfg.bootstrap_resamples, cfg.bootstrap_seed,
            point=None if self.q_full is None else self.v_full[init],
        )  # fmt: skip
        self.terminal_range = terminal_range(meta, lo, hi)
        self.out_of_range_max = cfg.gates.fqe_out_of_range_max
        self.sensitivity = None
        if data.behaviour is not None and self.q_full is not None:
            b_next = data.behaviour(train.states.numpy()[train.next_index.numpy()])
            self.sensitivity = fqe_sensitivity(
                fqe, b_next, states.numpy()[init], pi_all[init], data.b_all[init],
                cfg.sensitivity, (lo, hi),
            )  # fmt: skip
        self.basis = cfg.fqe.basis if cfg.fqe.model == "linear" else None
        self.pessimism = cfg.fqe.pessimism
        return self

    def reasons(self) -> list[str]:
        fit, lo, hi = self.fit_result, self.lo, self.hi
        out = []
        if not fit.converged:
            out.append(
                f"FQE did not converge ({fit.capped_iterations} of {fit.horizon} "
                f"iterations reached max_steps; horizon {fit.horizon}, longest episode "
                f"{self.longest})"
            )
        if self.out_of_range > self.out_of_range_max:
            out.append(
                f"{self.out_of_range:.1%} of raw FQE state values leave the attainable range "
                f"[{lo:g}, {hi:g}]"
            )
        if self.estimate_out:
            out.append(
                f"an unclipped FQE estimate leaves the attainable range [{lo:g}, {hi:g}]: "
                f"{', '.join(f'{x:.2f}' for x in self.raw_estimates)}"
            )
        # not a configurable gate: an FQE figure that is not finite or leaves the range of the
        # terminal rewards is never a number that could be printed or win a comparison
        t_lo, t_hi = self.terminal_range
        ci = self.ci
        numbers = {"estimate": ci.estimate, "CI low": ci.low, "CI high": ci.high}
        bad = [
            f"{k} {v:g}" for k, v in numbers.items() if not np.isfinite(v) or not t_lo <= v <= t_hi
        ]
        if bad:
            out.append(
                f"FQE diverged: {', '.join(bad)} is not finite or outside the attainable "
                f"return range [{t_lo:g}, {t_hi:g}]"
            )
        return out

    def details(self, ok: bool) -> dict[str, Any]:
        full = self.q_full is not None
        return {
            **self.fit_result.to_json(),
            "attainable_range": [self.lo, self.hi],
            "raw_out_of_range_share": self.out_of_range,
            "raw_out_of_range_measured_on": "every state of the split, every fit",
            "raw_estimates": [float(x) for x in self.raw_estimates],
            "member_values": [float(x) for x in self.v0.mean(1)],
            "basis": self.basis,
            # standard errors of each fitted Q(s, a) subtracted (0: none); the raw values and
            # the sensitivity bounds are those of the fit without it
            "pessimism": self.pessimism,
            "sensitivity": self.sensitivity,
            "point_estimate": "fit on every train patient" if full else "ensemble mean",
            "bootstrap": self.ci.to_json(),
            "fit_on": "train (bootstrap resamples of train patients; out-of-bag patients choose "
            "each iteration's penalty"
            + (
                "; the point estimate refits every train patient with the members' median penalty)"
                if full
                else ")"
            ),
        }


# ---------------------------------------------------------------------------- WDR
class WeightedDoublyRobust(Estimator):
    """Per-decision weighted doubly robust, the FQE as control variate; projected onto the
    attainable return range (``raw`` keeps the unprojected values)."""

    name = "wdr"
    gate = "model"
    section = "wdr"
    timing = "fqe_wdr"

    def fit(self, data: EvalData, fitted: Mapping[str, Estimator]) -> WeightedDoublyRobust:
        fqe = fitted["fqe"]
        assert isinstance(fqe, FittedQEvaluation)
        cfg, gamma, rows, actions = data.cfg, data.meta.gamma, data.rows, data.actions
        # TD errors of every member along the logged episodes, weights of the policy as evaluated
        next_rows = data.data.next_index.numpy()
        dones = data.data.dones.numpy()
        q_taken = fqe.q_all[:, rows, actions]
        delta = data.rewards + gamma * (1.0 - dones) * fqe.v_all[:, next_rows] - q_taken  # (K, N)
        delta_et = np.stack([step_matrix(d, data.idx) for d in delta])
        point = None
        if fqe.q_full is not None:
            d_full = (
                data.rewards + gamma * (1.0 - dones) * fqe.v_full[next_rows]
                - fqe.q_full[rows, actions]
            )  # fmt: skip
            point = (step_matrix(d_full, data.idx), fqe.v_full[fqe.init])
        # corrections only where enough episodes keep weight: at a position whose per-decision
        # ESS is below wdr_step_ess_min, one or two episodes would carry the whole
        # self-normalised correction (a single terminal residual can move the estimate by the
        # width of the return range); there the FQE stands alone, as where no episode keeps weight
        self.keep = keep = per_decision_ess(data.w_et) >= cfg.wdr_step_ess_min
        w_et = data.w_et * keep
        self.raw = raw = wdr_with_ci(w_et, delta_et, fqe.v0, gamma, cfg.bootstrap_resamples,
                                     cfg.bootstrap_seed, point=point)  # fmt: skip
        # The true value lies in the attainable range, so projecting the estimate and its CI
        # onto it never moves them away from the truth (the importance-weighted corrections of
        # WDR are not a convex combination of returns and can leave it); the raw values are kept.
        lo, hi = self.lo, self.hi = fqe.lo, fqe.hi
        self.ci = replace(
            raw,
            estimate=float(np.clip(raw.estimate, lo, hi)),
            low=float(np.clip(raw.low, lo, hi)),
            high=float(np.clip(raw.high, lo, hi)),
        )
        self.weighted_share = weighted_share(w_et)
        self.step_ess_min = float(cfg.wdr_step_ess_min)
        # how far unobserved confounding could move it (ope/sensitivity.py), on the point fit
        pi_eval = soften(data.pi_all, cfg.softening_eps)
        d_point, v_point = point if point is not None else (delta_et.mean(0), fqe.v0.mean(0))
        self.sensitivity = wdr_sensitivity(
            pi_eval[rows, actions], data.b_all[rows, actions], data.idx, d_point * keep, v_point,
            gamma, cfg.sensitivity, (lo, hi), cfg.ratio_clip,
        )  # fmt: skip
        return self

    def details(self, ok: bool) -> dict[str, Any]:
        raw, lo, hi = self.raw, self.lo, self.hi
        return {
            "bootstrap": self.ci.to_json(),
            "raw": raw.to_json(),
            "clipped_to_attainable_range": bool(
                not lo <= raw.estimate <= hi or not lo <= raw.low <= hi or not lo <= raw.high <= hi
            ),
            "weighted_share": self.weighted_share,
            "positions": int(self.keep.size),
            "corrected_positions": int(self.keep.sum()),
            "step_ess_min": self.step_ess_min,
            "sensitivity": self.sensitivity,
            "control_variate": "FQE fit on every train patient (the estimate); the ensemble "
            "(each bootstrap resample draws one member) for the CI",
        }


# ---------------------------------------------------------------------------- WIS
#: Softening levels of the secondary WIS estimates (the headline uses EvalConfig.softening_eps).
SOFTENED_EPS = (0.05, 0.1, 0.2)


class WeightedImportanceSampling(Estimator):
    """Trajectory-wise WIS (with a patient bootstrap CI) and per-decision WIS of the policy
    exactly as evaluated, plus softened WIS variants as secondary figures."""

    name = "wis"
    gate = "importance_sampling"
    section = "importance_sampling"
    timing = "importance_sampling"

    def fit(self, data: EvalData, fitted: Mapping[str, Estimator]) -> WeightedImportanceSampling:
        cfg = data.cfg
        self.ci = wis_with_ci(data.w, data.returns, cfg.bootstrap_resamples, cfg.bootstrap_seed)
        self.per_decision = per_decision_wis(data.rho, data.rewards, data.idx, data.meta.gamma)
        self.softened = {}
        rows, actions = data.rows, data.actions
        for eps in SOFTENED_EPS:
            rho_e = step_ratios(
                soften(data.pi_all, eps)[rows, actions], data.b_all[rows, actions], cfg.ratio_clip
            )
            w_e = trajectory_weights(rho_e, data.idx)
            ci_e = wis_with_ci(w_e, data.returns, cfg.bootstrap_resamples, cfg.bootstrap_seed)
            self.softened[str(eps)] = {"wis": finite(ci_e.estimate), "ci_low": finite(ci_e.low),
                                       "ci_high": finite(ci_e.high), "ess": ess(w_e)}  # fmt: skip
        self.softening_eps, self.ratio_clip = cfg.softening_eps, cfg.ratio_clip
        self.w = data.w
        return self

    def metrics(self, ok: bool) -> dict[str, float | None]:
        return {**super().metrics(ok), "wis_per_decision": gated(self.per_decision, ok)}

    def details(self, ok: bool) -> dict[str, Any]:
        w = self.w
        return {
            "evaluable": ok,
            "softening_eps": self.softening_eps,
            "ratio_clip": self.ratio_clip,
            "bootstrap": self.ci.to_json(),
            "weights_max": float(w.max()),
            "zero_weight_episodes": int((w == 0).sum()),
            "note": None
            if w.sum() > 0
            else "every episode has zero weight: the policy disagrees with "
            "the logged action somewhere in each episode; trajectory-wise WIS is undefined "
            "without softening (see wis_softened)",
            "wis_softened": self.softened,
        }


# ---------------------------------------------------------------------------- gates
def _model_gate(overlap: dict[str, Any], cfg: EvalConfig) -> list[str]:
    if overlap["support_mass"] < cfg.gates.support_min:
        return [
            f"support mass {overlap['support_mass']:.3f} < {cfg.gates.support_min} (the policy "
            f"chooses actions the clinicians take with probability < {cfg.support_eps})"
        ]
    return []


def _importance_sampling_gate(overlap: dict[str, Any], cfg: EvalConfig) -> list[str]:
    gates: GateConfig = cfg.gates
    out = []
    if overlap["ess"] < gates.is_ess_min:
        out.append(f"trajectory ESS {overlap['ess']:.2f} < {gates.is_ess_min}")
    if overlap["nonzero_weight_share"] < gates.is_nonzero_min:
        out.append(
            f"{overlap['nonzero_weight_share']:.1%} of episodes have non-zero weight "
            f"(< {gates.is_nonzero_min:.0%})"
        )
    return out


#: The overlap gates: name -> the reasons (from the overlap statistics) that fail it, added
#: after the reasons of the estimators that belong to it.
GATES: dict[str, Callable[[dict[str, Any], EvalConfig], list[str]]] = {
    "model": _model_gate,
    "importance_sampling": _importance_sampling_gate,
}


def gate_reasons(data: EvalData, fitted: Mapping[str, Estimator]) -> dict[str, list[str]]:
    """Why each gate fails: its estimators' own reasons, then the overlap's (empty: passes)."""
    reasons: dict[str, list[str]] = {gate: [] for gate in GATES}
    for est in fitted.values():
        reasons[est.gate] += est.reasons()
    for gate, check in GATES.items():
        reasons[gate] += check(data.overlap, data.cfg)
    return reasons


# ---------------------------------------------------------------------------- registry
def estimator_classes() -> dict[str, type[Estimator]]:
    """The registered estimator classes by name, in :data:`REGISTERED` order."""
    out: dict[str, type[Estimator]] = {}
    for entry in REGISTERED:
        module, _, cls_name = entry.partition(":")
        cls = getattr(importlib.import_module(module), cls_name)
        if cls.gate not in GATES:
            raise ValueError(f"{entry}: gate {cls.gate!r} is not one of {', '.join(GATES)}")
        out[cls.name] = cls
    return out


def fit_estimators(
    data: EvalData, lap: Callable[[str], None] | None = None
) -> dict[str, Estimator]:
    """Every registered estimator fitted on ``data``, by name (``lap(timing)`` after each)."""
    fitted: dict[str, Estimator] = {}
    for name, cls in estimator_classes().items():
        fitted[name] = cls().fit(data, fitted)
        if lap is not None:
            lap(cls.timing)
    return fitted


# ---------------------------------------------------------------------------- helpers
def terminal_range(meta: ReplayMeta, lo: float, hi: float) -> tuple[float, float]:
    """[-T, +T] with T the largest terminal reward of the replay meta (the evaluation reward is
    terminal only, so no return leaves it); the attainable range when the meta has none (an
    external dataset's reward spec may name only its variant)."""
    reward = meta.doc.reward
    terms = [reward.terminal_survived, reward.terminal_died]
    terms = [abs(float(t)) for t in terms if t is not None and np.isfinite(t)]
    if not terms:
        return lo, hi
    return -max(terms), max(terms)


def weighted_share(w_et: np.ndarray) -> float:
    """Share of (episode, position) cells whose cumulative weight is non-zero: how much of
    the WDR is importance-weighted correction rather than the FQE alone."""
    return float((w_et > 0).mean()) if w_et.size else 0.0


def finite(x: float) -> float | None:
    """JSON has no NaN: undefined estimates are written as null."""
    return float(x) if np.isfinite(x) else None


def gated(x: float, ok: bool) -> float | None:
    """``x`` where its gate passes (null where it is undefined), else null."""
    return finite(x) if ok else None
