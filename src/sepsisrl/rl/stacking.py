"""What a stackable algorithm shares (``AlgorithmSpec.stackable``: IQL, CQL, BC).

Every network of a stackable algorithm is an :class:`~sepsisrl.rl.networks.Ensemble` whose
rows are the networks of K models (``ROWS``: rows per model of each network, in checkpoint
order - IQL's twin critics take two). One model is a stack of one. The mixin builds a stack
from single models (``stack``), takes a model back out of it (``member``), sets the precision
of the matrix products, exports a network in the released layout and hands the trainer its
modules and optimiser; each algorithm adds its networks' construction, the per-model settings
it needs (``_setup``) and its gradient step.

Nothing mixes models: each row's products, its gradient clipping and its Adam update
(``networks.MemberAdam``) are those it gets alone, so a run trained in a stack is the same
bytes as the run trained alone (``tests/test_rl_stack.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sepsisrl.rl.networks import Ensemble, MemberAdam


class StackedModel:
    #: rows per model of every network, in the order of ``modules()`` (checkpoint order)
    ROWS: ClassVar[dict[str, int]]
    #: networks updated by Polyak averaging, not by gradients (targets)
    FROZEN: ClassVar[tuple[str, ...]] = ()
    #: the network that acts (the registry's ``policy_module``)
    POLICY: ClassVar[str]

    common: Any
    optimizer: MemberAdam

    def _assemble(self, common, cfgs, nets: dict[str, Ensemble]) -> None:
        """Hold ``nets`` (one row block per model of ``cfgs``) and set up the per-model
        settings and the optimiser (``_setup``)."""
        self.common, self.cfgs, self.k = common, list(cfgs), len(cfgs)
        self.cfg, self.gamma = self.cfgs[0], common.gamma
        self.nets = dict(nets)
        for name, net in self.nets.items():
            setattr(self, name, net)
        for name in self.FROZEN:
            self.nets[name].requires_grad_(False)
        self._setup()

    def _setup(self) -> None:  # pragma: no cover - every algorithm defines it
        raise NotImplementedError

    def _column(self, key: str) -> torch.Tensor:
        """The setting ``key`` of every model's config section, (K, 1)."""
        device = next(iter(self.nets.values())).weights[0].device
        return torch.tensor([getattr(c, key) for c in self.cfgs], device=device).view(-1, 1)

    @classmethod
    def stack(cls, models: list[Any]) -> Any:
        """One stacked model of ``models`` (each a single model, e.g. freshly initialised from
        its own seed); their weights and optimiser states are copied."""
        out = cls.__new__(cls)
        nets = {name: Ensemble.concat([m.nets[name] for m in models]) for name in cls.ROWS}
        out._assemble(models[0].common, [m.cfg for m in models], nets)
        for i, m in enumerate(models):
            out.optimizer.load_state_dict(m.optimizer.state_dict(), i)
        return out

    def member(self, i: int) -> Any:
        """Model ``i`` of the stack as a single model (copies: weights, optimiser state)."""
        out = type(self).__new__(type(self))
        nets = {name: self.nets[name].rows(rows * i, rows * (i + 1))
                for name, rows in self.ROWS.items()}  # fmt: skip
        out._assemble(self.common, [self.cfgs[i]], nets)
        out.optimizer.load_state_dict(self.optimizer.state_dict(i))
        out.set_matmul_dtype(next(iter(self.nets.values())).matmul_dtype)
        return out

    def set_matmul_dtype(self, dtype: torch.dtype | None) -> None:
        """Matrix products in ``dtype`` (``torch.bfloat16``: train's ``precision: bf16``)."""
        for net in self.nets.values():
            net.matmul_dtype = dtype

    # -- what a checkpoint holds (a single model)
    def modules(self) -> dict[str, torch.nn.Module]:
        return dict(self.nets)

    def optimizers(self) -> dict[str, MemberAdam]:
        return {"adam": self.optimizer}

    def exported(self, name: str) -> torch.nn.Module:
        """Network ``name`` as released: a single model's network as a plain ``MLP``
        (``net.0/2/4.*``, the model repository's layout)."""
        net = self.nets[name]
        return net.member(0) if net.k == 1 else net

    def policy_logits(self, states: torch.Tensor) -> torch.Tensor:
        out = self.nets[self.POLICY](states)
        return out[0] if self.k == 1 and states.dim() == 2 else out

    @staticmethod
    def _inputs(s, a, r, s_next, done):
        """(K, batch, ...) inputs; ``single``: a single model given (batch, ...) inputs."""
        single = s.dim() == 2
        if single:
            s, a, r, s_next, done = (x.unsqueeze(0) for x in (s, a, r, s_next, done))
        return single, s, a, r, s_next, done

    @staticmethod
    def _per_model(stats: dict[str, torch.Tensor], single: bool) -> dict[str, torch.Tensor]:
        """Statistics of shape (K,), or scalars for a single model given unstacked inputs."""
        return {key: val[0] for key, val in stats.items()} if single else stats
