"""Discrete Conservative Q-Learning (Kumar, Zhou, Tucker & Levine, NeurIPS 2020), CQL(H) on a
double-DQN backbone.

  TD        y    = r + gamma (1 - d) Qt(s', argmax_a' Q(s', a'))
  loss      L    = E[ huber(Q(s, a) - y) ] + alpha E[ logsumexp_a Q(s, a) - Q(s, a_data) ]
  target    Qt  <- (1 - polyak) Qt + polyak Q

The conservative term pushes down the values of actions the clinicians did not take. The
policy is greedy in Q.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from sepsisrl.config import StrictModel
from sepsisrl.rl.networks import MLP, NetworkOptimizer, flatten_parameters, polyak_update
from sepsisrl.rl.registry import AlgorithmSpec, Common


class CQLConfig(StrictModel):
    """The ``cql`` section of ``configs/train.yaml`` (defaults there)."""

    lr: float = Field(gt=0)
    alpha: float = Field(ge=0)
    polyak: float = Field(gt=0, le=1)


class CQL:
    name = "cql"

    def __init__(self, common: Common, cfg: CQLConfig) -> None:
        self.cfg, self.gamma = cfg, common.gamma
        d, n, hidden, device = common.state_dim, common.n_actions, common.hidden, common.device
        self.q = MLP(d, n, hidden).to(device)
        self.q_target = MLP(d, n, hidden).to(device)
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.optimizer = NetworkOptimizer({"q": (self.q, cfg.lr)}, common.grad_clip)
        self._target_flat = flatten_parameters(self.q_target)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"q": self.q, "q_target": self.q_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.optimizer.adam}

    def policy_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.q(states)

    def update(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            next_a = self.q(s_next).argmax(1, keepdim=True)
            y = r + self.gamma * (1.0 - done) * self.q_target(s_next).gather(1, next_a).squeeze(1)
        q_all = self.q(s)
        q = q_all.gather(1, a.unsqueeze(1)).squeeze(1)
        td_loss = F.smooth_l1_loss(q, y)
        conservative = (torch.logsumexp(q_all, dim=1) - q).mean()
        loss = td_loss + self.cfg.alpha * conservative
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        polyak_update(self._target_flat, self.optimizer.flat["q"], self.cfg.polyak)
        return {
            "critic_loss": td_loss.detach(),
            "cql_loss": conservative.detach(),
            "q_mean": q.detach().mean(),
        }


ALGORITHM = AlgorithmSpec(name="cql", config=CQLConfig, implementation=CQL, policy_module="q")
