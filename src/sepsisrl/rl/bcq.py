"""Discrete Batch-Constrained Q-learning (Fujimoto, Conti, Ghavamzadeh & Pineau, "Benchmarking
Batch Deep Reinforcement Learning Algorithms", 2019).

A behaviour model G(a|s) is fitted by cross-entropy; the policy may only choose actions whose
relative probability G(a|s) / max_b G(b|s) exceeds ``threshold``:

  allowed(s)   = { a : G(a|s) / max_b G(b|s) > threshold }
  TD           y = r + gamma (1 - d) Qt(s', argmax_{a' in allowed(s')} Q(s', a'))
  loss         L = E[ huber(Q(s, a) - y) ] + E[ -log G(a | s) ]
  policy       pi(s) = argmax_{a in allowed(s)} Q(s, a)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sepsisrl.rl.networks import MLP, NetworkOptimizer, flatten_parameters, polyak_update


@dataclass(frozen=True)
class BCQConfig:
    lr: float = 3e-4
    threshold: float = 0.3
    polyak: float = 0.005
    grad_clip: float = 10.0
    hidden: tuple[int, ...] = (256, 256)


class BCQ:
    name = "bcq"

    def __init__(
        self,
        state_dim: int,
        n_actions: int,
        gamma: float,
        cfg: BCQConfig,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cfg, self.gamma = cfg, gamma
        self.q = MLP(state_dim, n_actions, cfg.hidden).to(device)
        self.behaviour = MLP(state_dim, n_actions, cfg.hidden).to(device)
        self.q_target = MLP(state_dim, n_actions, cfg.hidden).to(device)
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.optimizer = NetworkOptimizer(
            {"q": (self.q, cfg.lr), "behaviour": (self.behaviour, cfg.lr)}, cfg.grad_clip
        )
        self._target_flat = flatten_parameters(self.q_target)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"q": self.q, "behaviour": self.behaviour, "q_target": self.q_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.optimizer.adam}

    def allowed(self, states: torch.Tensor) -> torch.Tensor:
        prob = F.softmax(self.behaviour(states), dim=1)
        return prob / prob.max(dim=1, keepdim=True).values > self.cfg.threshold

    def policy_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.q(states).masked_fill(~self.allowed(states), float("-inf"))

    def update(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            next_a = self.policy_logits(s_next).argmax(1, keepdim=True)
            y = r + self.gamma * (1.0 - done) * self.q_target(s_next).gather(1, next_a).squeeze(1)
        q = self.q(s).gather(1, a.unsqueeze(1)).squeeze(1)
        td_loss = F.smooth_l1_loss(q, y)
        bc_loss = F.cross_entropy(self.behaviour(s), a)
        self.optimizer.zero_grad()
        (td_loss + bc_loss).backward()
        self.optimizer.step()
        polyak_update(self._target_flat, self.optimizer.flat["q"], self.cfg.polyak)
        return {
            "critic_loss": td_loss.detach(),
            "bc_loss": bc_loss.detach(),
            "q_mean": q.detach().mean(),
        }
