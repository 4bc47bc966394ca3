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

``losses()`` states the three losses for autograd; the training step (``compute_gradients``)
writes their gradients out explicitly, next to the same equations, and back-propagates them
through the networks without autograd (``networks.MLP.backward_cached``). A test checks that
both give the same gradient for every parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from sepsisrl.config import StrictModel
from sepsisrl.rl.networks import MLP, Ensemble, NetworkOptimizer, flatten_parameters, polyak_update
from sepsisrl.rl.registry import AlgorithmSpec, Common


class IQLConfig(StrictModel):
    """The ``iql`` section of ``configs/train.yaml`` (defaults there)."""

    actor_lr: float = Field(gt=0)
    critic_lr: float = Field(gt=0)
    value_lr: float = Field(gt=0)
    expectile: float = Field(gt=0, lt=1)  # tau
    temperature: float = Field(ge=0)  # beta (inverse temperature of the advantage weights)
    weight_cap: float = Field(gt=0)
    polyak: float = Field(gt=0, le=1)


def expectile_loss(u: torch.Tensor, tau: float) -> torch.Tensor:
    """Asymmetric squared loss: weight tau for u >= 0 and 1 - tau for u < 0."""
    weight = torch.where(u < 0, 1.0 - tau, tau)
    return (weight * u.square()).mean()


class IQL:
    name = "iql"

    def __init__(self, common: Common, cfg: IQLConfig) -> None:
        self.cfg, self.gamma = cfg, common.gamma
        d, n, hidden, device = common.state_dim, common.n_actions, common.hidden, common.device
        self.critic = Ensemble(2, d, n, hidden).to(device)  # Q1, Q2
        self.critic_target = Ensemble(2, d, n, hidden).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.value = MLP(d, 1, hidden).to(device)
        self.actor = MLP(d, n, hidden).to(device)
        self.optimizer = NetworkOptimizer(
            {
                "critic": (self.critic, cfg.critic_lr),
                "value": (self.value, cfg.value_lr),
                "actor": (self.actor, cfg.actor_lr),
            },
            max_norm=common.grad_clip,
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

    def losses(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """The three losses exactly as in the module docstring, differentiable by autograd.

        This is the reference definition: ``compute_gradients`` (the training path) must give
        the gradients autograd gives for ``value_loss + critic_loss + actor_loss`` here.
        """
        cfg = self.cfg
        at_a = a.view(1, -1, 1).expand(2, -1, 1)  # index of the logged action, per critic
        with torch.no_grad():
            q_target = self.critic_target(s).gather(2, at_a).squeeze(2).min(0).values
            td_target = r + self.gamma * (1.0 - done) * self.value(s_next).squeeze(1)
        v = self.value(s).squeeze(1)
        q = self.critic(s).gather(2, at_a).squeeze(2)  # (2, batch): Q1(s, a), Q2(s, a)
        advantage = q_target - v.detach()
        weight = torch.exp(cfg.temperature * advantage).clamp(max=cfg.weight_cap)
        log_prob = F.log_softmax(self.actor(s), dim=1).gather(1, a.unsqueeze(1)).squeeze(1)
        return {
            "value_loss": expectile_loss(q_target - v, cfg.expectile),
            "critic_loss": (q - td_target).square().mean(dim=1).sum(),
            "actor_loss": -(weight * log_prob).mean(),
        }

    def compile_step(self) -> None:
        """Run ``compute_gradients`` through ``torch.compile`` (the trainer's ``compile``).

        Shapes are static (the trainer only draws full batches). The compiled step fuses the
        element-wise work between the matrix products; its gradients equal the eager ones to
        float rounding (tested), and a compiled run is as reproducible as an eager one.
        """
        self.compute_gradients = torch.compile(self.compute_gradients, dynamic=False)

    def update(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """One gradient step on every network, then the Polyak update of the target critics."""
        stats = self.compute_gradients(s, a, r, s_next, done)
        self.optimizer.step()
        polyak_update(self._target_flat, self.optimizer.flat["critic"], self.cfg.polyak)
        return stats

    @torch.no_grad()
    def compute_gradients(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """The losses of ``losses()`` and their gradients, written into every ``.grad``.

        The gradient of each loss with respect to its network's output is written out below
        and back-propagated by ``backward_cached`` (plain linear/ReLU rules). Autograd would
        compute the same numbers; doing it explicitly avoids recording a graph and
        accumulating into fresh buffers, which is a large share of a CPU step at these sizes.
        """
        cfg, n = self.cfg, s.shape[0]
        at_a = a.view(1, -1, 1).expand(2, -1, 1)  # index of the logged action, per critic

        q_target, _ = self.critic_target.forward_cached(s, keep=False)
        q_target = q_target.gather(2, at_a).squeeze(2).min(0).values
        v_next, _ = self.value.forward_cached(s_next, keep=False)
        td_target = r + self.gamma * (1.0 - done) * v_next.squeeze(1)

        # value: L_V = mean(w u^2), u = Qt - V(s), w = |tau - 1(u < 0)|
        #        dL_V/dV(s) = -2 w u / n
        v_out, v_acts = self.value.forward_cached(s)
        v = v_out.squeeze(1)
        u = q_target - v
        w_tau = torch.where(u < 0, 1.0 - cfg.expectile, cfg.expectile)
        value_loss = (w_tau * u.square()).mean()
        self.value.backward_cached(v_acts, (w_tau * u).mul_(-2.0 / n).unsqueeze(1))

        # critics: L_Q = sum_i mean((Q_i(s, a) - y)^2), y = r + gamma (1 - d) V(s')
        #          dL_Q/dQ_i(s, a') = 2 (Q_i(s, a) - y) / n if a' = a, else 0
        q_all, q_acts = self.critic.forward_cached(s)
        q = q_all.gather(2, at_a).squeeze(2)
        residual = q - td_target
        critic_loss = residual.square().mean(dim=1).sum()
        grad_q = torch.zeros_like(q_all).scatter_(2, at_a, residual.mul(2.0 / n).unsqueeze(2))
        self.critic.backward_cached(q_acts, grad_q)

        # actor: L_pi = -mean(c log softmax(z)_a), c = min(exp(beta u), cap), a constant
        #        dL_pi/dz = (c / n) (softmax(z) - onehot(a))
        advantage = u
        weight = torch.exp(cfg.temperature * advantage).clamp_(max=cfg.weight_cap)
        logits, pi_acts = self.actor.forward_cached(s)
        log_softmax = F.log_softmax(logits, dim=1)
        actor_loss = -(weight * log_softmax.gather(1, a.unsqueeze(1)).squeeze(1)).mean()
        c = (weight / n).unsqueeze(1)
        grad_logits = log_softmax.exp().mul_(c).scatter_add_(1, a.unsqueeze(1), -c)
        self.actor.backward_cached(pi_acts, grad_logits)

        return {
            "value_loss": value_loss,
            "critic_loss": critic_loss,
            "actor_loss": actor_loss,
            "q_mean": q.mean(),
            "v_mean": v.mean(),
            "advantage_mean": advantage.mean(),
            "advantage_std": advantage.std(),
            "capped_weight_fraction": (weight >= cfg.weight_cap).float().mean(),
        }


ALGORITHM = AlgorithmSpec(
    name="iql", config=IQLConfig, implementation=IQL, policy_module="actor", exportable=True,
    compile=True,
)  # fmt: skip
