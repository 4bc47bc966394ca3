"""The algorithms ``sepsisrl train`` knows, looked up by name.

Each algorithm is one module (``rl/iql.py``, ``rl/cql.py``, ...) that defines ``ALGORITHM``, an
:class:`AlgorithmSpec` holding everything the rest of the package needs to know about it:

- ``config``          its section of ``configs/train.yaml`` (a pydantic model; ``TrainConfig``
                      gets one field per registered algorithm, named after it);
- ``implementation``  the class that trains: built as ``implementation(common, section)``, it
                      offers ``modules()``, ``optimizers()``, ``update(s, a, r, s_next, done)``
                      and ``policy_logits(states)`` (the trainer's only contract);
- ``policy_module``   the network that acts, exported as ``final/policy.safetensors``;
- ``exports``         other networks the greedy policy needs, each exported as
                      ``final/<name>.safetensors`` (BCQ's behaviour model);
- ``logits``          how a trained run acts greedily from those exported networks (default: the
                      policy network's output; the argmax is the action);
- ``exportable``      whether ``sepsisrl export`` can publish it (a softmax actor network, the
                      model repository's ``IQLPolicy``);
- ``compile``         whether ``compile: true`` applies (a ``compile_step()`` method);
- ``stackable``       whether several runs of it train together as one stack
                      (``rl.trainer.train_stack``): ``implementation.stack(models)``,
                      ``member(i)``, inputs (K, batch, ...), statistics (K,);
- ``step_cost``       the time of one gradient step relative to BC's on the same network
                      (only used to start a study phase's longest units first; a wrong
                      figure costs time, never changes an outcome).

Adding an algorithm: write its module (config, implementation, ``ALGORITHM = AlgorithmSpec(...)``)
and add its module path to :data:`REGISTERED` - one line (docs/train.md).

    spec = algorithm("iql")              # AlgorithmSpec (an unknown name: error naming the known)
    algo = spec.create(common, cfg.iql)  # the implementation, networks built on common.device
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from pydantic import BaseModel

#: Every algorithm, one line each: the module that defines its ``ALGORITHM``. The order is the
#: order of the sections in ``TrainConfig`` (and in every run's ``config.json``).
REGISTERED = (
    "sepsisrl.rl.iql",
    "sepsisrl.rl.cql",
    "sepsisrl.rl.bcq",
    "sepsisrl.rl.bc",
)


@dataclass(frozen=True)
class Common:
    """What every algorithm gets besides its own section: the replay's shape and the shared
    training settings of ``configs/train.yaml``."""

    state_dim: int
    n_actions: int
    gamma: float
    hidden: tuple[int, ...]
    grad_clip: float
    device: str | torch.device = "cpu"


class Algorithm(Protocol):
    """What the trainer needs from an algorithm's implementation."""

    def modules(self) -> dict[str, torch.nn.Module]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def update(self, s, a, r, s_next, done) -> dict[str, torch.Tensor]: ...

    def policy_logits(self, states: torch.Tensor) -> torch.Tensor: ...


#: Greedy logits of a trained run from its exported networks: (networks by name, the
#: algorithm's config section, states) -> (batch, n_actions); the action is the argmax.
Logits = Callable[[Mapping[str, torch.nn.Module], Any, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    config: type[BaseModel]
    implementation: Callable[[Common, Any], Algorithm]
    policy_module: str
    exports: tuple[str, ...] = ()
    logits: Logits | None = None
    exportable: bool = False
    compile: bool = False
    stackable: bool = False
    step_cost: float = 1.0

    def create(self, common: Common, section: BaseModel) -> Algorithm:
        """The implementation with its networks built (initialised from torch's global RNG)."""
        return self.implementation(common, section)

    def greedy_logits(
        self, networks: Mapping[str, torch.nn.Module], section: Any, states: torch.Tensor
    ) -> torch.Tensor:
        if self.logits is None:
            return networks[self.policy_module](states)
        return self.logits(networks, section, states)


_LOADED: dict[str, AlgorithmSpec] = {}


def algorithms() -> dict[str, AlgorithmSpec]:
    """Every registered algorithm by name, in :data:`REGISTERED` order."""
    if not _LOADED:
        for module in REGISTERED:
            spec = importlib.import_module(module).ALGORITHM
            if spec.name in _LOADED:
                raise ValueError(f"{module}: algorithm {spec.name!r} is registered twice")
            _LOADED[spec.name] = spec
    return dict(_LOADED)


def algorithm(name: str) -> AlgorithmSpec:
    """The algorithm registered as ``name``; an unknown name is an error naming the known."""
    known = algorithms()
    if name not in known:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(known)}")
    return known[name]


def exportable_algorithms() -> tuple[str, ...]:
    """The algorithms ``sepsisrl export`` can publish (an actor network)."""
    return tuple(name for name, spec in algorithms().items() if spec.exportable)
