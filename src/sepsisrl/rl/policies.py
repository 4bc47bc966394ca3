"""Policy objects: one interface for every policy the evaluation compares.

A policy maps normalised states (N, state_dim) to action probabilities (N, n_actions);
``act`` is its greedy action. Deterministic policies put probability 1 on one action.

- ``TrainedPolicy``     a run folder's final networks, acting as its algorithm says
                        (``rl.registry``: IQL/BC actor, CQL Q, BCQ constrained Q)
- ``NoTreatmentPolicy`` always action 0 (no vasopressor, no fluid)
- ``RandomPolicy``      uniform over actions
- ``ClinicianPolicy``   the clinicians' behaviour, from a behaviour model's probabilities
                        (fit on train; see the evaluation stage)
- ``SupportEdgePolicy`` the least or the most intense action the clinicians plausibly take
                        in a state (an in-support under- or over-treating policy, used by
                        the OPE panel to test whether an estimator tells them apart)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from sepsisrl.rl.checkpoint import check_tensors, first_nonfinite, read_tensors
from sepsisrl.rl.networks import MLP
from sepsisrl.rl.registry import algorithm


class Policy(Protocol):
    name: str
    n_actions: int

    def action_probabilities(self, states: np.ndarray) -> np.ndarray: ...

    def act(self, states: np.ndarray) -> np.ndarray: ...


class _Deterministic:
    name = "policy"
    n_actions = 0

    def act(self, states: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def action_probabilities(self, states: np.ndarray) -> np.ndarray:
        a = self.act(states)
        out = np.zeros((len(a), self.n_actions))
        out[np.arange(len(a)), a] = 1.0
        return out


class NoTreatmentPolicy(_Deterministic):
    name = "no_treatment"

    def __init__(self, n_actions: int) -> None:
        self.n_actions = n_actions

    def act(self, states: np.ndarray) -> np.ndarray:
        return np.zeros(len(states), dtype=np.int64)


class RandomPolicy:
    name = "random"

    def __init__(self, n_actions: int, seed: int = 0) -> None:
        self.n_actions = n_actions
        self.rng = np.random.default_rng(seed)

    def action_probabilities(self, states: np.ndarray) -> np.ndarray:
        return np.full((len(states), self.n_actions), 1.0 / self.n_actions)

    def act(self, states: np.ndarray) -> np.ndarray:
        return self.rng.integers(0, self.n_actions, len(states))


class ClinicianPolicy:
    """The clinicians as a stochastic policy: the behaviour model's b(a|s)."""

    name = "clinician"

    def __init__(self, probabilities: Callable[[np.ndarray], np.ndarray], n_actions: int) -> None:
        self._prob = probabilities
        self.n_actions = n_actions

    def action_probabilities(self, states: np.ndarray) -> np.ndarray:
        return self._prob(states)

    def act(self, states: np.ndarray) -> np.ndarray:
        return self._prob(states).argmax(1)


class NonFiniteWeightsError(ValueError):
    """A weights file holds NaN or inf: nothing may be evaluated or exported from it."""


def finite_tensors(
    path: Path, owner: str | Path | None = None, advice: str = "retrain the run"
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, refusing one that is truncated or damaged
    (``TensorFileError``) or holds NaN or inf (``NonFiniteWeightsError``)."""
    tensors = read_tensors(path, advice)
    bad = first_nonfinite(tensors)
    if bad is not None:
        what = f"run {owner}" if owner is not None else str(path)
        raise NonFiniteWeightsError(
            f"{what}: tensor {bad!r} of {path} holds NaN or inf values (the training diverged); "
            "refusing to use it - retrain the run"
        )
    return tensors


def _fitting(
    module: torch.nn.Module, path: Path, owner: str | Path, network: str
) -> dict[str, torch.Tensor]:
    """The finite tensors of ``path``, checked to fit ``module`` (names and shapes)."""
    tensors = finite_tensors(path, owner)
    check_tensors(module, tensors, path, network)
    return tensors


class TrainedPolicy(_Deterministic):
    """Greedy policy of a trained run (``RUN/final``)."""

    def __init__(self, run_dir: str | Path, device: str = "cpu") -> None:
        run = Path(run_dir)
        cfg = json.loads((run / "config.json").read_text())
        final = run / "final"
        if not (final / "policy.safetensors").is_file():
            raise FileNotFoundError(f"{final}/policy.safetensors not found: is the run complete?")
        self.algo = cfg["algo"]
        self.name = f"{self.algo}:{run.name}"
        dims = cfg["replay"]
        self.state_dim, self.n_actions = int(dims["state_dim"]), int(dims["n_actions"])
        hidden = tuple(cfg["config"]["hidden_sizes"])
        network = (
            f"the network of {run / 'config.json'} (state_dim {self.state_dim}, hidden_sizes "
            f"{list(hidden)}, n_actions {self.n_actions})"
        )
        # the networks the algorithm acts with (rl.registry): the policy network, then the
        # other exported ones (BCQ's behaviour model), each an MLP of the run's shape
        self.spec = algorithm(self.algo)
        self.section = self.spec.config.model_validate(cfg["config"][self.algo])
        files = {self.spec.policy_module: "policy", **{n: n for n in self.spec.exports}}
        self.networks: dict[str, torch.nn.Module] = {}
        for module, file in files.items():
            net = MLP(self.state_dim, self.n_actions, hidden).to(device)
            net.load_state_dict(_fitting(net, final / f"{file}.safetensors", run, network))
            self.networks[module] = net.eval()
        self.net = self.networks[self.spec.policy_module]
        self.device = device

    def logits(self, states: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(states, dtype=np.float32), device=self.device)
            return self.spec.greedy_logits(self.networks, self.section, x).cpu().numpy()

    def act(self, states: np.ndarray) -> np.ndarray:
        return self.logits(states).argmax(1)


class SupportEdgePolicy(_Deterministic):
    """The least (``edge="least"``) or most (``"most"``) intense action among those a
    behaviour estimate gives probability at least ``threshold`` in each state.

    Intensity is the action id's order, ``5 * vaso_bin + fluid_bin``: vasopressor first, then
    fluid. ``probabilities`` is any ``states -> (N, n_actions)`` estimate of the clinicians'
    behaviour (a behaviour-cloning run's softmax, a fitted behaviour model). The clinicians'
    most likely action is always allowed, so the policy never leaves the mode's support.
    """

    def __init__(
        self,
        probabilities: Callable[[np.ndarray], np.ndarray],
        n_actions: int,
        edge: str,
        threshold: float = 0.05,
        name: str | None = None,
    ) -> None:
        if edge not in ("least", "most"):
            raise ValueError(f"edge must be 'least' or 'most', got {edge!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self._prob = probabilities
        self.n_actions = n_actions
        self.edge = edge
        self.threshold = float(threshold)
        self.name = name or f"support_{edge}@{threshold:g}"

    def act(self, states: np.ndarray) -> np.ndarray:
        p = np.asarray(self._prob(states), dtype=np.float64)
        allowed = p >= self.threshold
        allowed[np.arange(len(p)), p.argmax(1)] = True
        ids = np.arange(self.n_actions)
        if self.edge == "least":
            return np.where(allowed, ids, self.n_actions).min(1).astype(np.int64)
        return np.where(allowed, ids, -1).max(1).astype(np.int64)


def softmax_of(policy: TrainedPolicy) -> Callable[[np.ndarray], np.ndarray]:
    """A trained run's softmax over its logits (for a behaviour-cloning run: its estimate of
    the clinicians' action probabilities)."""

    def prob(states: np.ndarray) -> np.ndarray:
        z = policy.logits(states)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    return prob
