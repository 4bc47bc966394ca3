"""Discrete Implicit Q-Learning (Kostrikov, Nair & Levine, "Offline Reinforcement Learning with
Implicit Q-Learning", ICLR 2022), for a finite action set.

Networks: twin critics Q1, Q2 with Polyak-averaged targets, a state value V, and an actor
pi(a|s) (softmax over logits). Each gradient step, on a batch (s, a, r, s', d):

  value     L_V  = E[ L2_tau( min_i Qt_i(s, a) - V(s) ) ],   L2_tau(u) = |tau - 1(u < 0)| u^2
  critics   L_Q  = sum_i E[ (r + gamma (1 - d) V(s') - Q_i(s, a))^2 ]
  actor     L_pi = -E[ min(exp(beta (min_i Qt_i(s, a) - V(s))), 100) log pi(a | s) ]
  targets   Qt_i <- (1 - polyak) Qt_i + polyak Q_i

V is fitted by expectile regression on the *target* critics at the logged action only, so
the learned values never query actions outside the data (in-sample learning). beta is the
inverse temperature ("temperature" in the model card); advantage weights are capped at 100.
Each network has its own Adam learning rate and global-norm gradient clipping. The three
losses touch disjoint parameters, so one backward pass of their sum gives each network its
own gradient. Forward passes per step: target critics on s, V on s', and critics, V and actor
on s - nothing is computed twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sepsisrl.rl.networks import MLP, Ensemble, NetworkOptimizer, flatten_parameters, polyak_update


@dataclass(frozen=True)
class IQLConfig:
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    expectile: float = 0.7  # tau
    temperature: float = 3.0  # beta (inverse temperature of the advantage weights)
    weight_cap: float = 100.0
    polyak: float = 0.005
    grad_clip: float = 10.0
    hidden: tuple[int, ...] = (256, 256)


def expectile_loss(u: torch.Tensor, tau: float) -> torch.Tensor:
    """Asymmetric squared loss: weight tau for u >= 0 and 1 - tau for u < 0."""
    weight = torch.where(u < 0, 1.0 - tau, tau)
    return (weight * u.square()).mean()


class IQL:
    name = "iql"

    def __init__(
        self,
        state_dim: int,
        n_actions: int,
        gamma: float,
        cfg: IQLConfig,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cfg, self.gamma = cfg, gamma
        self.critic = Ensemble(2, state_dim, n_actions, cfg.hidden).to(device)  # Q1, Q2
        self.critic_target = Ensemble(2, state_dim, n_actions, cfg.hidden).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.value = MLP(state_dim, 1, cfg.hidden).to(device)
        self.actor = MLP(state_dim, n_actions, cfg.hidden).to(device)
        self.optimizer = NetworkOptimizer(
            {
                "critic": (self.critic, cfg.critic_lr),
                "value": (self.value, cfg.value_lr),
                "actor": (self.actor, cfg.actor_lr),
            },
            max_norm=cfg.grad_clip,
        )
        self._target_flat = flatten_parameters(self.critic_target)

    # -- what a checkpoint holds
    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "critic": self.critic,
            "critic_target": self.critic_target,
            "value": self.value,
            "actor": self.actor,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.optimizer.adam}

    def policy_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.actor(states)

    def update(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        at_a = a.view(1, -1, 1).expand(2, -1, 1)  # index of the logged action, per critic
        with torch.no_grad():
            q_target = self.critic_target(s).gather(2, at_a).squeeze(2).min(0).values
            td_target = r + self.gamma * (1.0 - done) * self.value(s_next).squeeze(1)

        v = self.value(s).squeeze(1)
        value_loss = expectile_loss(q_target - v, cfg.expectile)

        q = self.critic(s).gather(2, at_a).squeeze(2)  # (2, batch): Q1(s, a), Q2(s, a)
        critic_loss = (q - td_target).square().mean(dim=1).sum()

        advantage = q_target - v.detach()
        weight = torch.exp(cfg.temperature * advantage).clamp(max=cfg.weight_cap)
        log_prob = F.log_softmax(self.actor(s), dim=1).gather(1, a.unsqueeze(1)).squeeze(1)
        actor_loss = -(weight * log_prob).mean()

        self.optimizer.zero_grad()
        (value_loss + critic_loss + actor_loss).backward()
        self.optimizer.step()
        polyak_update(self._target_flat, self.optimizer.flat["critic"], cfg.polyak)
        return {
            "value_loss": value_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "q_mean": q.detach().mean(),
            "v_mean": v.detach().mean(),
            "advantage_mean": advantage.mean(),
            "advantage_std": advantage.std(),
            "capped_weight_fraction": (weight >= cfg.weight_cap).float().mean(),
        }
