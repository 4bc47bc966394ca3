"""Fitted Q Evaluation (Le, Voloshin & Yue, ICML 2019): a Q function of the evaluated policy.

  Q_{j+1}(s, a) <- r + gamma (1 - d) E_{a' ~ pi(.|s')} Qt_j(s', a')

fitted by regression on train transitions with the evaluation reward (Polyak-averaged target
Qt), then  V^pi = mean over held-out episodes of E_{a ~ pi(.|s_0)} Qt(s_0, a): the averaged
network is reported because it carries less stochastic-gradient noise than the last iterate.

Stopping never looks at the split being evaluated: every ``eval_every`` steps the value of the
``holdout`` initial states (a held-out part of train, or validation when the test split is
evaluated) is computed, and training stops once it has stayed within ``tolerance`` (relative)
over the last ``patience`` checks, or after ``max_steps``. (The held-out Bellman
error is not used to choose: with stochastic transitions it is not minimised by the true Q.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from sepsisrl.rl.networks import MLP, NetworkOptimizer, flatten_parameters, polyak_update


@dataclass(frozen=True)
class FQEConfig:
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    batch_size: int = 256
    max_steps: int = 20000
    min_steps: int = 2000
    polyak: float = 0.01
    eval_every: int = 500
    patience: int = 4
    tolerance: float = 0.01
    grad_clip: float = 10.0
    seed: int = 0


@dataclass
class FQEResult:
    steps: int
    converged: bool
    holdout_value: list[tuple[int, float]] = field(default_factory=list)


class FQE:
    def __init__(
        self, state_dim: int, n_actions: int, gamma: float, cfg: FQEConfig = FQEConfig()
    ) -> None:
        self.cfg, self.gamma = cfg, gamma
        torch.manual_seed(cfg.seed)
        self.q = MLP(state_dim, n_actions, cfg.hidden)
        self.q_target = copy.deepcopy(self.q)
        self.q_target.requires_grad_(False)
        self.optimizer = NetworkOptimizer({"q": (self.q, cfg.lr)}, cfg.grad_clip)
        self._target_flat = flatten_parameters(self.q_target)

    def _targets(self, r, done, pi_next, s_next) -> torch.Tensor:
        with torch.no_grad():
            v_next = (self.q_target(s_next) * pi_next).sum(1)
            return r + self.gamma * (1.0 - done) * v_next

    @torch.no_grad()
    def _write_gradient(self, s: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> None:
        """Gradient of L = mean((Q(s, a) - y)^2) into the Q network's ``.grad`` buffers.

        dL/dQ(s, a') = 2 (Q(s, a) - y) / n for the logged action a' = a and 0 otherwise,
        back-propagated by ``MLP.backward_cached`` (the same numbers as autograd, no graph).
        """
        q_all, acts = self.q.forward_cached(s)
        at_a = a.unsqueeze(1)
        residual = q_all.gather(1, at_a).sub_(y.unsqueeze(1)).mul_(2.0 / len(a))
        self.q.backward_cached(acts, torch.zeros_like(q_all).scatter_(1, at_a, residual))

    def fit(
        self, train: dict[str, torch.Tensor], holdout_s0: torch.Tensor, holdout_pi0: torch.Tensor
    ) -> FQEResult:
        """``train``: s, a, r, s_next, done, pi_next (the target policy's probabilities at s').

        ``holdout_s0``/``holdout_pi0``: initial states (and policy probabilities) of held-out
        episodes, used only to decide when the value estimate has converged.
        """
        cfg = self.cfg
        n = len(train["a"])
        gen = torch.Generator().manual_seed(cfg.seed)
        result = FQEResult(0, False)
        step = 0
        for step in range(1, cfg.max_steps + 1):
            idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
            y = self._targets(
                train["r"][idx], train["done"][idx], train["pi_next"][idx], train["s_next"][idx]
            )
            self._write_gradient(train["s"][idx], train["a"][idx], y)
            self.optimizer.step()
            polyak_update(self._target_flat, self.optimizer.flat["q"], cfg.polyak)
            if step % cfg.eval_every == 0:
                value = float(self.state_values(holdout_s0, holdout_pi0).mean())
                result.holdout_value.append((step, value))
                history = [v for _, v in result.holdout_value]
                # converged: the value stayed within `tolerance` over the last `patience` checks
                # (a slow drift does not pass, however small each single change is)
                if step >= cfg.min_steps and len(history) > cfg.patience:
                    window = history[-cfg.patience - 1 :]
                    if max(window) - min(window) <= cfg.tolerance * max(1.0, abs(value)):
                        result.converged = True
                        break
        result.steps = step
        return result

    def state_values(self, states: torch.Tensor, pi: torch.Tensor) -> np.ndarray:
        """V^pi(s) = sum_a pi(a|s) Q(s, a), with the Polyak-averaged network (less SGD noise)."""
        with torch.no_grad():
            return (self.q_target(states) * pi).sum(1).cpu().numpy()
