"""Behaviour cloning: the actor MLP trained by cross-entropy to reproduce the logged action.

L = -E[ log pi(a | s) ]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sepsisrl.rl.networks import MLP, NetworkOptimizer


@dataclass(frozen=True)
class BCConfig:
    lr: float = 1e-4
    grad_clip: float = 10.0
    hidden: tuple[int, ...] = (256, 256)


class BC:
    name = "bc"

    def __init__(
        self,
        state_dim: int,
        n_actions: int,
        gamma: float,
        cfg: BCConfig,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cfg = cfg
        self.actor = MLP(state_dim, n_actions, cfg.hidden).to(device)
        self.optimizer = NetworkOptimizer({"actor": (self.actor, cfg.lr)}, cfg.grad_clip)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.optimizer.adam}

    def policy_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.actor(states)

    def update(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        logits = self.actor(s)
        loss = F.cross_entropy(logits, a)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        accuracy = (logits.detach().argmax(1) == a).float().mean()
        return {"actor_loss": loss.detach(), "accuracy": accuracy}
