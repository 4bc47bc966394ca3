"""Discrete Conservative Q-Learning (Kumar, Zhou, Tucker & Levine, NeurIPS 2020), CQL(H) on a
double-DQN backbone.

  TD        y    = r + gamma (1 - d) Qt(s', argmax_a' Q(s', a'))
  loss      L    = E[ huber(Q(s, a) - y) ] + alpha E[ logsumexp_a Q(s, a) - Q(s, a_data) ]
  target    Qt  <- (1 - polyak) Qt + polyak Q

The conservative term pushes down the values of actions the clinicians did not take. The
policy is greedy in Q. ``losses()`` states the loss for autograd; the training step
(``compute_gradients``) writes its gradient with respect to Q's outputs explicitly and
back-propagates it without autograd, as IQL does (a test compares them). Runs stack
(``rl.stacking``): K models with their own ``cql`` settings train as one batched model.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from sepsisrl.config import StrictModel
from sepsisrl.rl.networks import Ensemble, MemberAdam, flatten_rows
from sepsisrl.rl.registry import AlgorithmSpec, Common
from sepsisrl.rl.stacking import StackedModel


class CQLConfig(StrictModel):
    """The ``cql`` section of ``configs/train.yaml`` (defaults there)."""

    lr: float = Field(gt=0)
    alpha: float = Field(ge=0)
    polyak: float = Field(gt=0, le=1)


class CQL(StackedModel):
    name = "cql"
    ROWS: ClassVar[dict[str, int]] = {"q": 1, "q_target": 1}
    FROZEN = ("q_target",)
    POLICY = "q"

    q: Ensemble
    q_target: Ensemble

    def __init__(self, common: Common, cfg: CQLConfig) -> None:
        d, n, hidden, device = common.state_dim, common.n_actions, common.hidden, common.device
        q = Ensemble(1, d, n, hidden).to(device)
        q_target = Ensemble(1, d, n, hidden, init=False).to(device)
        q_target.load_state_dict(q.state_dict())
        self._assemble(common, [cfg], {"q": q, "q_target": q_target})

    def _setup(self) -> None:
        self._alpha, self._polyak = self._column("alpha"), self._column("polyak")
        self._target_flat = flatten_rows(self.q_target)
        self.optimizer = MemberAdam(
            {"q": (self.q, 1, [c.lr for c in self.cfgs])}, max_norm=self.common.grad_clip
        )

    def _td_target(self, r, s_next, done) -> torch.Tensor:
        """y = r + gamma (1 - d) Qt(s', argmax_a' Q(s', a')), (K, n); no gradient."""
        with torch.no_grad():
            next_a = self.q.forward_cached(s_next, keep=False)[0].argmax(2, keepdim=True)
            q_next = self.q_target.forward_cached(s_next, keep=False)[0]
            return r + self.gamma * (1.0 - done) * q_next.gather(2, next_a).squeeze(2)

    def losses(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """The loss of the module docstring, differentiable by autograd (the reference
        definition ``compute_gradients`` must match; summed over the models of a stack)."""
        single, s, a, r, s_next, done = self._inputs(s, a, r, s_next, done)
        y = self._td_target(r, s_next, done)
        q_all = self.q(s)
        q = q_all.gather(2, a.unsqueeze(2)).squeeze(2)
        td_loss = F.smooth_l1_loss(q, y, reduction="none").mean(1)
        conservative = (torch.logsumexp(q_all, dim=2) - q).mean(1)
        out = {"critic_loss": td_loss, "cql_loss": conservative,
               "loss": td_loss + self._alpha.squeeze(1) * conservative}  # fmt: skip
        return self._per_model(out, single)

    def update(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """One gradient step on Q, then the Polyak update of the target."""
        stats = self.compute_gradients(s, a, r, s_next, done)
        self.optimizer.step()
        with torch.no_grad():
            self._target_flat.lerp_(self.optimizer.flat["q"], self._polyak)
        return stats

    @torch.no_grad()
    def compute_gradients(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """The loss of ``losses()`` and its gradient, written into every ``.grad``.

        With d = Q(s, a) - y (huber with threshold 1) and c = alpha / n:
          dL/dQ(s, a')  = c softmax(Q(s, .))_a' + 1(a' = a) (clamp(d, -1, 1) / n - c)
        """
        single, s, a, r, s_next, done = self._inputs(s, a, r, s_next, done)
        n = s.shape[1]
        y = self._td_target(r, s_next, done)
        q_all, acts = self.q.forward_cached(s)
        at = a.unsqueeze(2)
        q = q_all.gather(2, at).squeeze(2)
        d = q - y
        td_loss = torch.where(d.abs() < 1.0, 0.5 * d.square(), d.abs() - 0.5).mean(1)
        conservative = (torch.logsumexp(q_all, dim=2) - q).mean(1)
        c = (self._alpha / n).unsqueeze(2)  # (K, 1, 1)
        grad = torch.softmax(q_all, dim=2).mul_(c)
        grad.scatter_add_(2, at, d.clamp(-1.0, 1.0).div_(n).unsqueeze(2) - c)
        self.q.backward_cached(acts, grad)
        stats = {"critic_loss": td_loss, "cql_loss": conservative, "q_mean": q.mean(1)}
        return self._per_model(stats, single)


ALGORITHM = AlgorithmSpec(
    name="cql", config=CQLConfig, implementation=CQL, policy_module="q", stackable=True,
    step_cost=1.7,  # bench/step_cost.py
)  # fmt: skip
