"""Networks and optimisation helpers.

- ``MLP``: Linear-ReLU-...-Linear. ``MLP.net`` is an ``nn.Sequential``; with two hidden layers
  its parameters are ``net.0.*``, ``net.2.*`` and ``net.4.*`` - the layout of the released actor.
- ``Ensemble``: K independent MLPs of the same shape evaluated with batched matrix products
  (the twin critics): one call instead of K, identical maths.
- ``NetworkOptimizer``: one fused Adam over several networks (each its own learning rate) with
  per-network global-norm gradient clipping, computed with multi-tensor kernels.

Both network kinds also offer an explicit backward pass for the training hot loop:
``forward_cached(x)`` returns the output and the activations the backward pass needs, and
``backward_cached(acts, grad_out)`` back-propagates ``grad_out`` (dLoss/dOutput) and *writes*
each parameter's gradient into its ``.grad`` buffer (``torch.mm(..., out=p.grad)``): the
linear-layer rules dW = x^T g, db = sum_batch g, dx = g W^T and the ReLU rule
g_prev = dx * 1(h > 0). Nothing is recorded by autograd and parameter gradients need no
new buffers, which is what makes a discrete IQL or FQE step cheap on a CPU (``rl.iql``,
``ope.fqe``). The results equal autograd's (``tests/test_rl_gradients.py`` compares them on
every parameter).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn


def _relu_backward_(grad: torch.Tensor, relu_out: torch.Tensor) -> torch.Tensor:
    """grad * 1(relu_out > 0), in place (one pass, no new buffer)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, relu_out, 0, grad_input=grad)


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

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def forward_cached(
        self, x: torch.Tensor, keep: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and the input of every linear layer (for ``backward_cached``); no autograd."""
        linears = self.linears()
        acts, h = [x], x
        for i, lin in enumerate(linears):
            h = torch.addmm(lin.bias, h, lin.weight.t())
            if i < len(linears) - 1:
                h = h.relu_()
                if keep:
                    acts.append(h)
        return h, acts

    def backward_cached(self, acts: list[torch.Tensor], grad_out: torch.Tensor) -> None:
        """Write dLoss/dParameter into every ``.grad`` given dLoss/dOutput (batch, out)."""
        g, linears = grad_out, self.linears()
        for i in range(len(acts) - 1, -1, -1):
            lin = linears[i]
            torch.mm(g.t(), acts[i], out=lin.weight.grad)
            torch.sum(g, 0, out=lin.bias.grad)
            if i > 0:  # through Linear then ReLU: dx = g W, zero where the ReLU was inactive
                g = _relu_backward_(torch.mm(g, lin.weight), acts[i])


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
        return self.forward_cached(x, keep=False)[0]

    def forward_cached(
        self, x: torch.Tensor, keep: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output (K, batch, out) and every layer's input (for ``backward_cached``)."""
        h = x.unsqueeze(0).expand(self.k, -1, -1)
        acts, last = [h], len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.bmm(h, w).add_(b)  # not baddbmm: its broadcast bias copy is slow on CPU
            if i < last:
                h = h.relu_()
                if keep:
                    acts.append(h)
        return h, acts

    def backward_cached(self, acts: list[torch.Tensor], grad_out: torch.Tensor) -> None:
        """Write dLoss/dParameter into every ``.grad`` given dLoss/dOutput (K, batch, out)."""
        g = grad_out
        for i in range(len(acts) - 1, -1, -1):
            w, b = self.weights[i], self.biases[i]
            torch.bmm(acts[i].transpose(1, 2), g, out=w.grad)
            torch.sum(g, 1, keepdim=True, out=b.grad)
            if i > 0:
                g = _relu_backward_(torch.bmm(g, w.transpose(1, 2)), acts[i])

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
    of that network's parameters) and applies one fused Adam kernel per network buffer.

    ``adam`` is a regular ``torch.optim.Adam`` (checkpoints save and restore its state). Its
    update is applied by calling the fused Adam kernel directly on that state - the same kernel
    and arguments ``Adam.step()`` uses, so the same numbers - which skips ``Adam.step()``'s
    per-call Python bookkeeping (about 0.1 ms per network, 5 % of an IQL step on 2 cores).
    Where the kernel is unavailable (other torch builds, devices), ``Adam.step()`` is used.
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
            self._direct = hasattr(torch, "_fused_adam_") and all(
                f.device.type == "cpu" for f in self.flat.values()
            )
        except (RuntimeError, TypeError):  # pragma: no cover - torch without fused CPU Adam
            self.adam = torch.optim.Adam(groups, foreach=True)
            self._direct = False

    def zero_grad(self) -> None:
        for flat in self.flat.values():
            flat.grad.zero_()

    def step(self) -> None:
        """Clip each network's gradient to a global norm of ``max_norm``, then apply Adam."""
        for flat in self.flat.values():
            norm = torch.linalg.vector_norm(flat.grad)
            if not self._direct:  # accelerators: no host synchronisation
                flat.grad.mul_((self.max_norm / (norm + 1e-6)).clamp(max=1.0))
            elif (scale := self.max_norm / (float(norm) + 1e-6)) < 1.0:  # CPU: skip a no-op pass
                flat.grad.mul_(scale)
        if not self._direct:
            self.adam.step()
            return
        for index in range(len(self.names)):
            self._fused_step(index)

    def _fused_step(self, index: int) -> None:
        group = self.adam.param_groups[index]
        (flat,) = group["params"]
        state = self.adam.state[flat]
        if not state:  # first step: the state Adam.step() would create
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(flat)
            state["exp_avg_sq"] = torch.zeros_like(flat)
        beta1, beta2 = group["betas"]
        state["step"].add_(1)
        torch._fused_adam_(
            [flat], [flat.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [],
            [state["step"]], lr=group["lr"], beta1=beta1, beta2=beta2,
            weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
            maximize=False,
        )  # fmt: skip
