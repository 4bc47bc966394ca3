"""Behaviour cloning: the actor MLP trained by cross-entropy to reproduce the logged action.

L = -E[ log pi(a | s) ]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sepsisrl.rl.networks import MLP, adam, clip_grad_norm


@dataclass(frozen=True)
class BCConfig:
    lr: float = 1e-4
    grad_clip: float = 10.0
    hidden: tuple[int, ...] = (256, 256)


class BC:
    name = "bc"

    def __init__(self, state_dim: int, n_actions: int, gamma: float, cfg: BCConfig) -> None:
        self.cfg = cfg
        self.actor = MLP(state_dim, n_actions, cfg.hidden)
        self.opt = adam(self.actor, cfg.lr)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.opt}

    def policy_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.actor(states)

    def update(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        logits = self.actor(s)
        loss = F.cross_entropy(logits, a)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(self.actor, self.cfg.grad_clip)
        self.opt.step()
        accuracy = (logits.detach().argmax(1) == a).float().mean()
        return {"actor_loss": loss.detach(), "accuracy": accuracy}
