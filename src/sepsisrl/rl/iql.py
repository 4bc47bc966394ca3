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

import functools
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from sepsisrl.config import StrictModel
from sepsisrl.rl.networks import Ensemble, MemberAdam, flatten_rows
from sepsisrl.rl.registry import AlgorithmSpec, Common
from sepsisrl.rl.stacking import StackedModel


class IQLConfig(StrictModel):
    """The ``iql`` section of ``configs/train.yaml`` (defaults there)."""

    actor_lr: float = Field(gt=0)
    critic_lr: float = Field(gt=0)
    value_lr: float = Field(gt=0)
    expectile: float = Field(gt=0, lt=1)  # tau
    temperature: float = Field(ge=0)  # beta (inverse temperature of the advantage weights)
    weight_cap: float = Field(gt=0)
    polyak: float = Field(gt=0, le=1)


class IQL(StackedModel):
    """Discrete IQL; one model, or a stack of K models trained together.

    A stack (:meth:`stack`, ``rl.stacking``) holds K models that share an architecture, each
    with its own hyper-parameters (``iql`` section), initial weights and batches: every network
    is an :class:`Ensemble` whose rows are the models' networks (two critic rows per model), so
    each layer of all K models is one batched matrix product. Nothing mixes models: model k of
    a stack computes exactly what it computes alone (a test compares the bytes), only in one
    pass with the others. Inputs are (K, batch, ...) (a single model also takes (batch, ...));
    losses and statistics are (K,) (scalars for a single model given unstacked inputs).
    """

    name = "iql"
    ROWS: ClassVar[dict[str, int]] = {"critic": 2, "critic_target": 2, "value": 1, "actor": 1}
    FROZEN = ("critic_target",)
    POLICY = "actor"

    critic: Ensemble
    critic_target: Ensemble
    value: Ensemble
    actor: Ensemble

    def __init__(self, common: Common, cfg: IQLConfig) -> None:
        d, n, hidden, device = common.state_dim, common.n_actions, common.hidden, common.device
        critic = Ensemble(2, d, n, hidden).to(device)  # Q1, Q2
        critic_target = Ensemble(2, d, n, hidden, init=False).to(device)
        critic_target.load_state_dict(critic.state_dict())
        value = Ensemble(1, d, 1, hidden).to(device)
        actor = Ensemble(1, d, n, hidden).to(device)
        self._assemble(common, [cfg], {"critic": critic, "critic_target": critic_target,
                                       "value": value, "actor": actor})  # fmt: skip

    def _setup(self) -> None:
        cfgs = self.cfgs
        self._tau, self._beta, self._cap = (
            self._column("expectile"),
            self._column("temperature"),
            self._column("weight_cap"),
        )
        # Polyak rate of each critic row (two rows per model), broadcast over its parameters
        self._polyak = self._column("polyak").repeat_interleave(2, 0)
        self._target_flat = flatten_rows(self.critic_target)
        self.optimizer = MemberAdam(
            {
                "critic": (self.critic, 2, [c.critic_lr for c in cfgs]),
                "value": (self.value, 1, [c.value_lr for c in cfgs]),
                "actor": (self.actor, 1, [c.actor_lr for c in cfgs]),
            },
            max_norm=self.common.grad_clip,
        )

    def _pairs(self, s: torch.Tensor) -> torch.Tensor:
        """Each model's batch twice: the input of its two critic rows, (2K, batch, ...) (a
        single model's: a view, which halves the memory traffic of its critic products)."""
        return s.expand(2, *s.shape[1:]) if self.k == 1 else s.repeat_interleave(2, 0)

    def losses(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """The three losses exactly as in the module docstring, differentiable by autograd.

        This is the reference definition: ``compute_gradients`` (the training path) must give
        the gradients autograd gives for ``value_loss + critic_loss + actor_loss`` here
        (summed over the models of a stack: they share no parameter).
        """
        single, s, a, r, s_next, done = self._inputs(s, a, r, s_next, done)
        k = self.k
        at_a = self._pairs(a).unsqueeze(2)  # index of the logged action, per critic row
        with torch.no_grad():
            q_target = self.critic_target(self._pairs(s)).gather(2, at_a).squeeze(2)
            q_target = q_target.view(k, 2, -1).min(1).values
            td_target = r + self.gamma * (1.0 - done) * self.value(s_next).squeeze(2)
        v = self.value(s).squeeze(2)
        q = self.critic(self._pairs(s)).gather(2, at_a).squeeze(2).view(k, 2, -1)
        weight = torch.exp(self._beta * (q_target - v.detach())).clamp(max=self._cap)
        log_prob = F.log_softmax(self.actor(s), dim=2).gather(2, a.unsqueeze(2)).squeeze(2)
        u = q_target - v
        out = {
            "value_loss": (torch.where(u < 0, 1.0 - self._tau, self._tau) * u.square()).mean(1),
            "critic_loss": (q - td_target.unsqueeze(1)).square().mean(dim=2).sum(1),
            "actor_loss": -(weight * log_prob).mean(1),
        }
        return self._per_model(out, single)

    def compile_step(self) -> None:
        """Run ``compute_gradients`` through ``torch.compile`` (the trainer's ``compile``).

        Shapes are static (the trainer only draws full batches). The compiled step fuses the
        element-wise work between the matrix products; its gradients equal the eager ones to
        float rounding (tested), and a compiled run is as reproducible as an eager one.
        """
        graph = torch.compile(functools.partial(self._gradients, deferred=True), dynamic=False)
        nets = (self.value, self.critic, self.actor)  # the order _gradients back-propagates

        def compiled(s, a, r, s_next, done) -> dict[str, torch.Tensor]:
            stats, grads = graph(s, a, r, s_next, done)
            with torch.no_grad():
                torch._foreach_copy_([t for n in nets for t in n.grad_targets()], grads)
            return stats

        self.compute_gradients = compiled

    def update(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """One gradient step on every network, then the Polyak update of the target critics."""
        stats = self.compute_gradients(s, a, r, s_next, done)
        self.optimizer.step()
        with torch.no_grad():
            self._target_flat.lerp_(self.optimizer.flat["critic"], self._polyak)
        return stats

    def compute_gradients(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]:
        """The losses of ``losses()`` and their gradients, written into every ``.grad``
        (``_gradients``; ``compile_step`` replaces this with the compiled graph)."""
        return self._gradients(s, a, r, s_next, done)

    @torch.no_grad()
    def _gradients(self, s, a, r, s_next, done, deferred: bool = False) -> Any:
        """The losses of ``losses()`` and their gradients, written into every ``.grad``, or
        with ``deferred`` returned beside the statistics, in the order of the value's, the
        critics' and the actor's ``grad_targets()`` (the compiled step: one graph).

        The gradient of each loss with respect to its network's output is written out below
        and back-propagated by ``backward_cached`` (plain linear/ReLU rules). Autograd would
        compute the same numbers; doing it explicitly avoids recording a graph and
        accumulating into fresh buffers, which is a large share of a CPU step at these sizes.
        Shapes: K models, n transitions each; critic rows 2K.
        """
        single, s, a, r, s_next, done = self._inputs(s, a, r, s_next, done)
        k, n = self.k, s.shape[1]
        at_a = self._pairs(a).unsqueeze(2)  # index of the logged action, per critic row
        s2 = self._pairs(s)

        q_target, _ = self.critic_target.forward_cached(s2, keep=False)
        q_target = q_target.gather(2, at_a).squeeze(2).view(k, 2, n).min(1).values
        v_next, _ = self.value.forward_cached(s_next, keep=False)
        td_target = r + self.gamma * (1.0 - done) * v_next.squeeze(2)

        # value: L_V = mean(w u^2), u = Qt - V(s), w = |tau - 1(u < 0)|
        #        dL_V/dV(s) = -2 w u / n
        v_out, v_acts = self.value.forward_cached(s)
        v = v_out.squeeze(2)
        u = q_target - v
        w_tau = torch.where(u < 0, 1.0 - self._tau, self._tau)
        value_loss = (w_tau * u.square()).mean(1)
        sink: list[torch.Tensor] | None = [] if deferred else None
        self.value.backward_cached(v_acts, (w_tau * u).mul_(-2.0 / n).unsqueeze(2), sink)

        # critics: L_Q = sum_i mean((Q_i(s, a) - y)^2), y = r + gamma (1 - d) V(s')
        #          dL_Q/dQ_i(s, a') = 2 (Q_i(s, a) - y) / n if a' = a, else 0
        q_all, q_acts = self.critic.forward_cached(s2)
        q = q_all.gather(2, at_a).squeeze(2)  # (2K, n)
        residual = q.view(k, 2, n) - td_target.unsqueeze(1)
        critic_loss = residual.square().mean(dim=2).sum(1)
        grad_q = torch.zeros_like(q_all).scatter_(
            2, at_a, residual.view(2 * k, n).mul(2.0 / n).unsqueeze(2)
        )
        self.critic.backward_cached(q_acts, grad_q, sink)

        # actor: L_pi = -mean(c log softmax(z)_a), c = min(exp(beta u), cap), a constant
        #        dL_pi/dz = (c / n) (softmax(z) - onehot(a))
        advantage = u
        weight = torch.minimum(torch.exp(self._beta * advantage), self._cap)
        logits, pi_acts = self.actor.forward_cached(s)
        log_softmax = F.log_softmax(logits, dim=2)
        at = a.unsqueeze(2)
        actor_loss = -(weight * log_softmax.gather(2, at).squeeze(2)).mean(1)
        c = (weight / n).unsqueeze(2)
        grad_logits = log_softmax.exp().mul_(c).scatter_add_(2, at, -c)
        self.actor.backward_cached(pi_acts, grad_logits, sink)

        stats = {
            "value_loss": value_loss,
            "critic_loss": critic_loss,
            "actor_loss": actor_loss,
            "q_mean": q.view(k, 2 * n).mean(1),
            "v_mean": v.mean(1),
            "advantage_mean": advantage.mean(1),
            "advantage_std": advantage.std(1),
            "capped_weight_fraction": (weight >= self._cap).float().mean(1),
        }
        stats = self._per_model(stats, single)
        return (stats, sink) if deferred else stats


ALGORITHM = AlgorithmSpec(
    name="iql", config=IQLConfig, implementation=IQL, policy_module="actor", exportable=True,
    compile=True, stackable=True, step_cost=5.1,  # bench/step_cost.py
)  # fmt: skip
