"""Networks and optimisation helpers.

- ``MLP``: Linear-ReLU-...-Linear. ``MLP.net`` is an ``nn.Sequential``; with two hidden layers
  its parameters are ``net.0.*``, ``net.2.*`` and ``net.4.*`` - the layout of the released actor.
- ``Ensemble``: K independent MLPs of the same shape evaluated with batched matrix products
  (the twin critics): one call instead of K, identical maths.
- ``NetworkOptimizer``: one fused Adam over several networks (each its own learning rate) with
  per-network global-norm gradient clipping, computed with multi-tensor kernels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Ensemble(nn.Module):
    """K MLPs sharing a shape; ``forward(x)`` returns (K, batch, out_dim).

    Parameters are stacked: ``weight_i`` has shape (K, in, out), ``bias_i`` (K, 1, out);
    each member is initialised like ``nn.Linear`` (uniform +-1/sqrt(fan_in)).
    """

    def __init__(
        self, k: int, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256)
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.k = k
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in itertools.pairwise(dims):
            bound = 1.0 / math.sqrt(d_in)
            self.weights.append(nn.Parameter(torch.empty(k, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(k, 1, d_out).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(self.k, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = h.relu_()
        return h

    def member(self, i: int) -> MLP:
        """Member ``i`` as a plain MLP (for export and inspection)."""
        hidden = [w.shape[2] for w in self.weights][:-1]
        mlp = MLP(self.weights[0].shape[1], self.weights[-1].shape[2], hidden)
        linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[i].t())
                lin.bias.copy_(b[i, 0])
        return mlp


def flatten_parameters(module: nn.Module) -> torch.Tensor:
    """Re-home ``module``'s parameters as views of one contiguous buffer, which is returned.

    The maths is unchanged; whole-network operations (gradient norm, clipping, Adam, Polyak
    averaging) then run as a few large kernels instead of one small kernel per tensor.
    """
    params = list(module.parameters())
    flat = torch.empty(
        sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device
    )
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            flat[offset : offset + n].copy_(p.reshape(-1))
            p.data = flat[offset : offset + n].view_as(p)
            offset += n
    return flat


def polyak_update(target: torch.Tensor, online: torch.Tensor, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, in place (flat parameter buffers)."""
    with torch.no_grad():
        target.lerp_(online, tau)


class NetworkOptimizer:
    """Adam over several networks with per-network learning rates and gradient clipping.

    Each network's parameters and gradients live in one flat buffer (``flatten_parameters``):
    ``step()`` clips each network's gradient to a global norm of ``max_norm`` (the norm over all
    of that network's parameters) and applies one fused Adam update per network buffer.
    """

    def __init__(self, networks: dict[str, tuple[nn.Module, float]], max_norm: float) -> None:
        self.names = list(networks)
        self.max_norm = max_norm
        self.flat: dict[str, torch.Tensor] = {}
        for name, (module, _lr) in networks.items():
            flat = flatten_parameters(module)
            grad = torch.zeros_like(flat)
            offset = 0
            for p in module.parameters():  # autograd accumulates into these views in place
                p.grad = grad[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            flat.grad = grad
            self.flat[name] = flat
        groups = [{"params": [self.flat[n]], "lr": lr} for n, (_, lr) in networks.items()]
        try:
            self.adam = torch.optim.Adam(groups, fused=True)
        except (RuntimeError, TypeError):  # pragma: no cover - torch without fused CPU Adam
            self.adam = torch.optim.Adam(groups, foreach=True)

    def zero_grad(self) -> None:
        for flat in self.flat.values():
            flat.grad.zero_()

    def step(self) -> None:
        for flat in self.flat.values():
            norm = torch.linalg.vector_norm(flat.grad)
            flat.grad.mul_((self.max_norm / (norm + 1e-6)).clamp(max=1.0))
        self.adam.step()
