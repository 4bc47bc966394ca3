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

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field

from sepsisrl.config import StrictModel
from sepsisrl.rl.networks import MLP, NetworkOptimizer, flatten_parameters, polyak_update
from sepsisrl.rl.registry import AlgorithmSpec, Common


class BCQConfig(StrictModel):
    """The ``bcq`` section of ``configs/train.yaml`` (defaults there)."""

    lr: float = Field(gt=0)
    threshold: float = Field(ge=0, le=1)
    polyak: float = Field(gt=0, le=1)


def constrained_logits(
    q_values: torch.Tensor, behaviour_logits: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Q with the actions outside allowed(s) at -inf: the policy's logits (argmax = action)."""
    prob = F.softmax(behaviour_logits, dim=1)
    allowed = prob / prob.max(dim=1, keepdim=True).values > threshold
    return q_values.masked_fill(~allowed, float("-inf"))


class BCQ:
    name = "bcq"

    def __init__(self, common: Common, cfg: BCQConfig) -> None:
        self.cfg, self.gamma = cfg, common.gamma
        d, n, hidden, device = common.state_dim, common.n_actions, common.hidden, common.device
        self.q = MLP(d, n, hidden).to(device)
        self.behaviour = MLP(d, n, hidden).to(device)
        self.q_target = MLP(d, n, hidden).to(device)
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.optimizer = NetworkOptimizer(
            {"q": (self.q, cfg.lr), "behaviour": (self.behaviour, cfg.lr)}, common.grad_clip
        )
        self._target_flat = flatten_parameters(self.q_target)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"q": self.q, "behaviour": self.behaviour, "q_target": self.q_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.optimizer.adam}

    def policy_logits(self, states: torch.Tensor) -> torch.Tensor:
        return _logits(self.modules(), self.cfg, states)

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


def _logits(networks: Mapping[str, torch.nn.Module], cfg: BCQConfig, states: torch.Tensor):
    """Greedy logits from the Q network and the behaviour model (training and a trained run)."""
    return constrained_logits(networks["q"](states), networks["behaviour"](states), cfg.threshold)


ALGORITHM = AlgorithmSpec(
    name="bcq", config=BCQConfig, implementation=BCQ, policy_module="q",
    exports=("behaviour",),  # the behaviour model gates BCQ's greedy action
    logits=_logits, step_cost=3.2,  # bench/step_cost.py
)  # fmt: skip
