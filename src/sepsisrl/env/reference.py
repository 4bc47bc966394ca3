"""How good could a policy be? An online agent trained in the synthetic world (RESEARCH ONLY).

The offline policies learn from the clinicians' decisions alone. This agent instead acts in
the world itself, with as many fresh patients as its rounds ask for, so its true value bounds
what a policy on this state and action grid can reach - the headroom over the clinicians that
the study report shows beside the offline policies'.

Each round simulates ``patients_per_round`` fresh patients (a stream of their own, never the
study's or a truth population's) with the agent deciding: epsilon-greedy on its Q-network, at
the replay's decision times, through the truth harness's batched rollout (the engine of the
Gymnasium environment, ``env/world.py``: the same states, actions and rewards, one batch of
patients at a time instead of one patient), with its actions reaching the patients through
``interface`` (``held`` or ``titrated``, as in ``sepsisrl truth --interface``) in training and
in its truth alike. Every decision becomes a transition with the
replay's reward (``compute_rewards``); then ``steps_per_round`` double-DQN steps learn from
all transitions so far (and, with ``warm_start``, the replay's train split). Finally the
greedy agent's truth is measured with ``sepsisrl truth`` on the population the study's truth
phase uses, so it is paired with the clinicians' and the offline policies' truth.

Writes ``<workspace>/reference/online_dqn/``: ``model.safetensors`` (the Q-network),
``config.json``, ``rounds.jsonl`` (per round: exploration, episodes, the true 90-day mortality
and mean evaluation return of the round's own exploring episodes, loss, seconds),
``truth/truth.json`` and ``summary.json``.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save_file

from sepsisrl import __version__
from sepsisrl.config import yaml_defaults
from sepsisrl.dataset.replay import compute_rewards
from sepsisrl.ope.behaviour import BehaviourModel
from sepsisrl.rl.data import load_split
from sepsisrl.rl.networks import MLP
from sepsisrl.threads import limited_threads
from sepsisrl.truth.harness import compute_truth, population_for
from sepsisrl.truth.policies import WorldPolicy
from sepsisrl.truth.rollout import RolloutOutcome, rollout_population
from sepsisrl.truth.world import (
    TRUTH_STREAM,
    TruthContext,
    TruthError,
    population_key,
    simulate_population,
)
from sepsisrl.workspace import atomic_folder, read_json, write_json

#: Mixed into the seed of the agent's training patients (disjoint from every other stream).
REFERENCE_STREAM = 0xDE0A


@dataclass
@yaml_defaults("reference")
class ReferenceConfig:
    """configs/reference.yaml: the online reference agent's settings."""

    reward: str
    rounds: int
    patients_per_round: int
    warm_start: bool
    epsilon_start: float
    epsilon_end: float
    steps_per_round: int
    batch_size: int
    learning_rate: float
    hidden_sizes: tuple[int, ...]
    target_update_every: int
    huber_delta: float
    seed: int
    interface: Literal["held", "titrated"]
    exploration: Literal["uniform", "clinicians"]
    support_threshold: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.support_threshold < 1.0:
            raise ValueError(
                f"reference: support_threshold must be in [0, 1), got {self.support_threshold} "
                "(0 = every action; t = only actions whose clinicians' probability is at least "
                "t times the most likely action's)"
            )


class GreedyQ(WorldPolicy):
    """The greedy action of a Q-network, recording every decision with its SOFA, lactate and
    MAP for the replay's rewards.

    ``epsilon`` > 0: an exploring decision with that probability, a uniform random action
    (``explore="uniform"``) or one drawn from the clinicians' behaviour model b(a|s)
    (``explore="clinicians"``). ``support_threshold`` t > 0: the greedy action is taken among
    the actions with b(a|s) >= t * max_a b(a|s) only (the clinicians' support at s)."""

    needs_state = True
    wants_context = True

    def __init__(
        self,
        q: MLP,
        epsilon: float = 0.0,
        seed: int = 0,
        name: str = "online_dqn",
        behaviour: BehaviourModel | None = None,
        explore: str = "uniform",
        support_threshold: float = 0.0,
    ) -> None:
        if (explore == "clinicians" or support_threshold > 0) and behaviour is None:
            raise ValueError("GreedyQ: clinicians' exploration or support needs a behaviour model")
        self.q = q
        self.epsilon = float(epsilon)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE951]))
        self.name = name
        self.behaviour = behaviour
        self.explore = explore
        self.support_threshold = float(support_threshold)
        self.rows: list[tuple[np.ndarray, ...]] = []

    def greedy(self, states: np.ndarray) -> np.ndarray:
        """The (support-restricted) greedy action of every state."""
        with torch.inference_mode():
            q = self.q(torch.as_tensor(states, dtype=torch.float32)).numpy()
        if self.support_threshold > 0:
            assert self.behaviour is not None
            b = self.behaviour.raw_probabilities(states)
            q = np.where(b >= self.support_threshold * b.max(1, keepdims=True), q, -np.inf)
        return q.argmax(1)

    def decide(self, states: np.ndarray, raw: dict[str, np.ndarray]) -> np.ndarray:
        greedy = self.greedy(states)
        n = len(states)
        explore = self.rng.random(n) < self.epsilon
        if self.explore == "clinicians":
            assert self.behaviour is not None
            cdf = np.cumsum(self.behaviour.probabilities(states), axis=1)
            u = self.rng.random(n)[:, None] * cdf[:, -1:]
            other = np.minimum((u > cdf).sum(1), cdf.shape[1] - 1)
        else:
            other = self.rng.integers(0, self.q_out, n)
        actions = np.where(explore, other, greedy).astype(np.int64)
        c = self.context
        if c is not None:
            self.rows.append((c.stay_id, c.step, np.asarray(states, np.float32), actions,
                              c.sofa, c.sofa_state, raw["lactate"], raw["map"]))  # fmt: skip
        return actions

    @property
    def q_out(self) -> int:
        return int(self.q.linears()[-1].out_features)


@dataclass
class Batch:
    """Transitions (s, a, r, s', done) as arrays."""

    s: np.ndarray
    a: np.ndarray
    r: np.ndarray
    s2: np.ndarray
    d: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    @staticmethod
    def cat(parts: list[Batch]) -> Batch:
        names = ("s", "a", "r", "s2", "d")
        return Batch(*(np.concatenate([getattr(p, f) for p in parts]) for f in names))


def transitions(policy: GreedyQ, outcome: RolloutOutcome, variant: str, ctx: TruthContext) -> Batch:
    """The rollout's decisions as transitions with the replay's reward ``variant``."""
    cols = [np.concatenate([r[i] for r in policy.rows]) for i in range(8)]
    stay, step, states, actions, sofa, sofa_state, lactate, mean_ap = cols
    order = np.lexsort((step, stay))
    stay, states, actions = stay[order], states[order], actions[order]
    ep = outcome.episodes.sort_by("stay_id")
    ep_stay = ep["stay_id"].to_numpy()
    pos = np.searchsorted(ep_stay, stay)
    if (pos >= len(ep_stay)).any() or (ep_stay[np.minimum(pos, len(ep_stay) - 1)] != stay).any():
        raise RuntimeError("reference: a decision of a stay that is not a cohort episode")
    died = ep["died_90d"].to_numpy(zero_copy_only=False).astype(bool)[pos]
    reward, _, done = compute_rewards(
        variant, stay, died, sofa[order], lactate[order], mean_ap[order], ctx.build_cfg,
        sofa_state=sofa_state[order],
    )  # fmt: skip
    nxt = np.where(done, np.arange(len(stay)), np.arange(len(stay)) + 1)
    return Batch(states, actions, reward, states[nxt], done.astype(np.float32))


def _fit_behaviour(ws: Path, variant: str, n_actions: int) -> BehaviourModel:
    """The clinicians' b(a|s), fitted as the evaluation fits it: train split, validation for
    early stopping and the choice between logistic regression and the MLP."""
    t = load_split(ws / "replay" / variant, "train")
    v = load_split(ws / "replay" / variant, "validation")
    return BehaviourModel.fit(
        t.states.numpy(), t.actions.numpy(), v.states.numpy(), v.actions.numpy(), n_actions
    )


def _replay_batch(ws: Path, variant: str) -> Batch:
    t = load_split(ws / "replay" / variant, "train")
    return Batch(
        t.states.numpy(), t.actions.numpy(), t.rewards.numpy(),
        t.states[t.next_index].numpy(), t.dones.numpy(),
    )  # fmt: skip


class _Learner:
    """Double DQN with a hard-copied target network and the Huber loss."""

    def __init__(self, dim: int, n_actions: int, cfg: ReferenceConfig, gamma: float) -> None:
        torch.manual_seed(cfg.seed)
        self.q = MLP(dim, n_actions, cfg.hidden_sizes)
        self.target = copy.deepcopy(self.q)
        self.opt = torch.optim.Adam(self.q.parameters(), lr=cfg.learning_rate)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.cfg, self.gamma, self.steps = cfg, gamma, 0

    def train(self, data: Batch, steps: int) -> float:
        s, a, r = (torch.as_tensor(x) for x in (data.s, data.a, data.r))
        s2, d = torch.as_tensor(data.s2), torch.as_tensor(data.d)
        losses = []
        for _ in range(steps):
            idx = torch.randint(len(data), (self.cfg.batch_size,), generator=self.gen)
            with torch.no_grad():
                a2 = self.q(s2[idx]).argmax(1, keepdim=True)
                boot = self.target(s2[idx]).gather(1, a2).squeeze(1)
                y = r[idx] + self.gamma * (1.0 - d[idx]) * boot
            got = self.q(s[idx]).gather(1, a[idx].unsqueeze(1)).squeeze(1)
            loss = torch.nn.functional.smooth_l1_loss(got, y, beta=self.cfg.huber_delta)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.steps += 1
            if self.steps % self.cfg.target_update_every == 0:
                self.target.load_state_dict(self.q.state_dict())
            losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else math.nan


def study_truth_population(workspace: str | Path) -> tuple[int, int, str]:
    """The truth population (patients, seed) a reference pairs with by default, and where it
    comes from: the study's own (``study/truth.json``) when the workspace holds one, else the
    study's defaults (configs/study.yaml ``truth``)."""
    from sepsisrl.config import read_packaged

    path = Path(workspace) / "study" / "truth.json"
    if path.is_file():
        pop = read_json(path)["population"]
        return int(pop["patients"]), int(pop["seed"]), f"the study's truth population ({path})"
    truth = read_packaged("study")["truth"]  # before any profile: the card's population
    return int(truth["patients"]), int(truth["seed"]), "configs/study.yaml truth (no study here)"


def train_reference(
    workspace: str | Path,
    cfg: ReferenceConfig | None = None,
    out: str | Path | None = None,
    truth_patients: int | None = None,
    truth_seed: int | None = None,
    progress: Callable[[str], None] | None = None,
    cache: str | Path | None = None,
) -> dict[str, Any]:
    """Train the online reference agent in ``workspace``'s world and measure its truth.
    ``truth_patients`` / ``truth_seed``: the truth population; each left ``None`` is the
    study's (:func:`study_truth_population`), so the report can pair the two.
    ``cache``: where the simulated populations are kept (default
    ``<workspace>/truth/populations``, shared with ``sepsisrl truth``)."""
    cfg = cfg or ReferenceConfig()
    say = progress or (lambda _m: None)
    ctx = TruthContext.load(workspace)
    study_patients, study_seed, origin = study_truth_population(ctx.workspace)
    if truth_patients is None and truth_seed is None:
        population_origin = origin
    else:
        population_origin = "set by the caller (--truth-patients / --truth-seed)"
    truth_patients = study_patients if truth_patients is None else truth_patients
    truth_seed = study_seed if truth_seed is None else truth_seed
    if cfg.reward not in ctx.build_cfg.rewards.variants:
        raise TruthError(
            f"reference: reward {cfg.reward!r} is not a replay variant of {ctx.workspace} "
            f"(build.yaml rewards.variants: {list(ctx.build_cfg.rewards.variants)})"
        )
    out = Path(out) if out else ctx.workspace / "reference" / "online_dqn"
    started = time.perf_counter()
    with limited_threads(1), atomic_folder(out) as tmp:
        learner = _Learner(len(ctx.feature_names), ctx.n_actions, cfg, ctx.gamma)
        behaviour = None
        if cfg.exploration == "clinicians" or cfg.support_threshold > 0:
            behaviour = _fit_behaviour(ctx.workspace, cfg.reward, ctx.n_actions)
            behaviour.save(tmp / "behaviour")
            say(f"clinicians' behaviour model b(a|s): {behaviour.info['kind']}, validation "
                f"accuracy {behaviour.info['validation_accuracy']:.3f}")  # fmt: skip
        policy_args = {"behaviour": behaviour, "explore": cfg.exploration,
                       "support_threshold": cfg.support_threshold}  # fmt: skip
        parts = [_replay_batch(ctx.workspace, cfg.reward)] if cfg.warm_start else []
        if parts:
            loss = learner.train(Batch.cat(parts), cfg.steps_per_round)
            say(f"warm start on {len(parts[0])} replay transitions, loss {loss:.4f}")
        cache = Path(cache) if cache else ctx.workspace / "truth" / "populations"
        log = []
        for rnd in range(cfg.rounds):
            t0 = time.perf_counter()
            frac = rnd / max(cfg.rounds - 1, 1)
            eps = cfg.epsilon_start + (cfg.epsilon_end - cfg.epsilon_start) * frac
            entropy = (ctx.world_seed, TRUTH_STREAM, REFERENCE_STREAM, cfg.seed, rnd)
            pop = simulate_population(
                ctx, entropy, cfg.patients_per_round,
                cache / population_key(ctx, entropy, cfg.patients_per_round),
            )  # fmt: skip
            explorer = GreedyQ(learner.q, eps, seed=cfg.seed * 1000 + rnd, **policy_args)
            outcome = rollout_population(ctx, pop, explorer, tmp / ".work", interface=cfg.interface)
            shutil.rmtree(tmp / ".work", ignore_errors=True)
            new = transitions(explorer, outcome, cfg.reward, ctx) if explorer.rows else None
            if new is not None:
                parts.append(new)
            loss = learner.train(Batch.cat(parts), cfg.steps_per_round) if parts else math.nan
            ep = outcome.episodes
            died = ep["died_90d"].to_numpy(zero_copy_only=False).astype(bool)
            row = {
                "round": rnd,
                "epsilon": round(eps, 4),
                "patients": cfg.patients_per_round,
                "episodes": ep.num_rows,
                "decisions": len(new) if new is not None else 0,
                "transitions": int(sum(len(p) for p in parts)),
                # the round's own episodes under the exploring agent: true outcomes
                "exploring_mortality_90d": float(died.mean()) if len(died) else math.nan,
                "exploring_mean_return_eval": float(ep["return_eval"].to_numpy().mean())
                if ep.num_rows
                else math.nan,
                "loss": loss,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            log.append(row)
            say(
                f"round {rnd + 1}/{cfg.rounds}: epsilon {eps:.2f}, {ep.num_rows} episodes, "
                f"true mortality of the exploring agent {row['exploring_mortality_90d']:.3f}"
            )
        save_file(
            {k: v.contiguous() for k, v in learner.q.state_dict().items()},
            str(tmp / "model.safetensors"),
        )
        say(f"measuring the truth on {truth_patients} patients (seed {truth_seed})")
        pop = population_for(ctx, truth_patients, truth_seed, cache=cache)
        doc = compute_truth(
            ctx.workspace, GreedyQ(learner.q, **policy_args), tmp / "truth", truth_patients,
            truth_seed,
            ctx=ctx, population=pop, interface=cfg.interface,
        )  # fmt: skip
        (tmp / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        config = {
            "created_by": f"sepsisrl {__version__}",
            "settings": asdict(cfg),
            "state_dim": len(ctx.feature_names),
            "n_actions": ctx.n_actions,
            "feature_names": ctx.feature_names,
            "gamma": ctx.gamma,
            "gradient_steps": learner.steps,
            "fingerprints": {**ctx.fingerprints, "build": ctx.build_fingerprint()},
            "research_only": "a simulator's agent, never clinical decision support",
        }
        write_json(tmp / "config.json", config)
        summary = {
            "policy": "online_dqn",
            "true_value": doc["value"],
            "true_mortality_90d": doc["mortality_90d"],
            "clinicians": doc["clinicians"],
            "difference_from_clinicians": doc["difference_from_clinicians"],
            "truth_population": {
                "patients": truth_patients,
                "seed": truth_seed,
                "chosen": population_origin,
                "episodes": doc["episodes"],
                "interface": doc["interface"],  # how its actions reached the patients
            },
            "training": {
                "rounds": cfg.rounds,
                "patients_simulated": cfg.rounds * cfg.patients_per_round,
                "episodes": int(sum(r["episodes"] for r in log)),
                "transitions": int(sum(len(p) for p in parts)),
                "warm_start_replay": cfg.warm_start,
                "reward": cfg.reward,
                "exploration": cfg.exploration,
                "support_threshold": cfg.support_threshold,
            },
            "seconds": round(time.perf_counter() - started, 1),
        }
        write_json(tmp / "summary.json", summary)
    return summary
