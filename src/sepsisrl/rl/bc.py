"""Behaviour cloning: the actor MLP trained by cross-entropy to reproduce the logged action.

L = -E[ log pi(a | s) ]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from sepsisrl.config import StrictModel
from sepsisrl.rl.networks import MLP, NetworkOptimizer
from sepsisrl.rl.registry import AlgorithmSpec, Common


class BCConfig(StrictModel):
    """The ``bc`` section of ``configs/train.yaml`` (defaults there)."""

    lr: float = Field(gt=0)


class BC:
    name = "bc"

    def __init__(self, common: Common, cfg: BCConfig) -> None:
        self.cfg = cfg
        self.actor = MLP(common.state_dim, common.n_actions, common.hidden).to(common.device)
        self.optimizer = NetworkOptimizer({"actor": (self.actor, cfg.lr)}, common.grad_clip)

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


ALGORITHM = AlgorithmSpec(
    name="bc", config=BCConfig, implementation=BC, policy_module="actor", exportable=True
)
