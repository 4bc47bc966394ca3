"""Networks: plain MLPs (Linear-ReLU-...-Linear) as in the published policy.

``MLP.net`` is an ``nn.Sequential``; with two hidden layers its parameters are ``net.0.*``,
``net.2.*`` and ``net.4.*`` - the layout of the released actor (``model.safetensors``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, in place."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


def clip_grad_norm(module: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm of ``module``; returns the norm before clipping."""
    return torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm, foreach=True)


def adam(module: nn.Module, lr: float) -> torch.optim.Adam:
    # fused kernels where available (CPU and CUDA in torch >= 2.4), else the foreach path
    try:
        return torch.optim.Adam(module.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch
        return torch.optim.Adam(module.parameters(), lr=lr, foreach=True)
