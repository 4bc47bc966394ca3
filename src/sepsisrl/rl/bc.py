"""Behaviour cloning: the actor MLP trained by cross-entropy to reproduce the logged action.

L = -E[ log pi(a | s) ]

The training step writes the gradient with respect to the logits, (softmax(z) - onehot(a)) / n,
and back-propagates it without autograd (``losses()`` is the autograd reference; a test
compares them). Runs stack (``rl.stacking``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from sepsisrl.config import StrictModel
from sepsisrl.rl.networks import Ensemble, MemberAdam
from sepsisrl.rl.registry import AlgorithmSpec, Common
from sepsisrl.rl.stacking import StackedModel


class BCConfig(StrictModel):
    """The ``bc`` section of ``configs/train.yaml`` (defaults there)."""

    lr: float = Field(gt=0)


class BC(StackedModel):
    name = "bc"
    ROWS: ClassVar[dict[str, int]] = {"actor": 1}
    POLICY = "actor"

    actor: Ensemble

    def __init__(self, common: Common, cfg: BCConfig) -> None:
        d, n, hidden = common.state_dim, common.n_actions, common.hidden
        actor = Ensemble(1, d, n, hidden).to(common.device)
        self._assemble(common, [cfg], {"actor": actor})

    def _setup(self) -> None:
        self.optimizer = MemberAdam(
            {"actor": (self.actor, 1, [c.lr for c in self.cfgs])}, max_norm=self.common.grad_clip
        )

    def losses(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """The cross-entropy, differentiable by autograd (the reference definition)."""
        single, s, a, *_ = self._inputs(s, a, r, s_next, done)
        log_prob = F.log_softmax(self.actor(s), dim=2).gather(2, a.unsqueeze(2)).squeeze(2)
        return self._per_model({"actor_loss": -log_prob.mean(1)}, single)

    def update(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        stats = self.compute_gradients(s, a, r, s_next, done)
        self.optimizer.step()
        return stats

    @torch.no_grad()
    def compute_gradients(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """The cross-entropy and its gradient dL/dz = (softmax(z) - onehot(a)) / n, written
        into every ``.grad``."""
        single, s, a, *_ = self._inputs(s, a, r, s_next, done)
        n = s.shape[1]
        logits, acts = self.actor.forward_cached(s)
        log_softmax = F.log_softmax(logits, dim=2)
        at = a.unsqueeze(2)
        loss = -log_softmax.gather(2, at).squeeze(2).mean(1)
        grad = log_softmax.exp().div_(n)
        grad.scatter_add_(2, at, torch.full(at.shape, -1.0 / n, device=grad.device))
        self.actor.backward_cached(acts, grad)
        accuracy = (logits.argmax(2) == a).float().mean(1)
        return self._per_model({"actor_loss": loss, "accuracy": accuracy}, single)


ALGORITHM = AlgorithmSpec(
    name="bc", config=BCConfig, implementation=BC, policy_module="actor", exportable=True,
    stackable=True,
)  # fmt: skip
