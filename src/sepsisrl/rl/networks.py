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
every parameter). ``Ensemble.backward_cached(..., sink)`` returns the gradients in a list
instead (in the order of ``grad_targets()``), for a step compiled as one graph (``rl.iql``).
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


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(a, b)`` whose every member's product does not depend on how many members
    there are. A product with a single column (a value head) goes to a matrix-vector BLAS
    routine whose rounding depends on the batch (one matrix or several), so it is computed
    as a row-wise dot product instead (the same reduction for every row, whatever the
    batch: a stacked run then equals the same run alone)."""
    if b.shape[2] == 1:
        return (a * b.transpose(1, 2)).sum(2, keepdim=True)
    return torch.bmm(a, b)


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
        self,
        k: int,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        init: bool = True,
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.k = k
        #: the dtype of the matrix products and hidden activations (``torch.bfloat16``:
        #: reduced precision, opt-in); parameters, gradients and outputs stay float32
        self.matmul_dtype: torch.dtype | None = None
        self._low_weights: list[torch.Tensor] = []  # matmul_dtype weights, forward -> backward
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in itertools.pairwise(dims):
            w, b = torch.empty(k, d_in, d_out), torch.empty(k, 1, d_out)
            if init:  # like nn.Linear: uniform +-1/sqrt(fan_in), from torch's global RNG
                bound = 1.0 / math.sqrt(d_in)
                w.uniform_(-bound, bound)
                b.uniform_(-bound, bound)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    @classmethod
    def concat(cls, members: Sequence[Ensemble]) -> Ensemble:
        """One ensemble holding ``members``' networks one after the other (copies)."""
        first = members[0]
        hidden = [w.shape[2] for w in first.weights][:-1]
        out = cls(sum(m.k for m in members), first.weights[0].shape[1],
                  first.weights[-1].shape[2], hidden, init=False)  # fmt: skip
        out = out.to(first.weights[0].device)
        with torch.no_grad():
            for i in range(len(first.weights)):
                torch.cat([m.weights[i] for m in members], out=out.weights[i].data)
                torch.cat([m.biases[i] for m in members], out=out.biases[i].data)
        return out

    def rows(self, start: int, stop: int) -> Ensemble:
        """Members ``start:stop`` as a new ensemble (copies)."""
        hidden = [w.shape[2] for w in self.weights][:-1]
        out = Ensemble(stop - start, self.weights[0].shape[1], self.weights[-1].shape[2],
                       hidden, init=False).to(self.weights[0].device)  # fmt: skip
        with torch.no_grad():
            for mine, theirs in zip(self.parameters(), out.parameters(), strict=True):
                theirs.copy_(mine[start:stop])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_cached(x, keep=False)[0]

    def forward_cached(
        self, x: torch.Tensor, keep: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output (K, batch, out) and every layer's input (for ``backward_cached``).

        ``x`` is (batch, in), shared by every member, or (K, batch, in), one batch per member.
        """
        h = x.unsqueeze(0).expand(self.k, -1, -1) if x.dim() == 2 else x
        if self.matmul_dtype is not None:
            return self._forward_low(h, keep)
        acts, last = [h], len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = _bmm(h, w).add_(b)  # not baddbmm: its broadcast bias copy is slow on CPU
            if i < last:
                h = h.relu_()
                if keep:
                    acts.append(h)
        return h, acts

    def _forward_low(self, h: torch.Tensor, keep: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward_cached`` in ``matmul_dtype``: the input and hidden activations are held
        in it (bias and ReLU applied in it too), the output is float32. The low-precision
        weights are kept for ``backward_cached``."""
        dtype = self.matmul_dtype
        h = h.to(dtype)
        low = [w.to(dtype) for w in self.weights]
        acts, last = [h], len(self.weights) - 1
        for i, (w, b) in enumerate(zip(low, self.biases, strict=True)):
            if i < last:
                h = _bmm(h, w).add_(b.to(dtype)).relu_()
                if keep:
                    acts.append(h)
            else:
                h = _bmm(h, w).float().add_(b)
        if keep:
            self._low_weights = low
        return h, acts

    def backward_cached(
        self, acts: list[torch.Tensor], grad_out: torch.Tensor, sink: list | None = None
    ) -> None:
        """Write dLoss/dParameter into every ``.grad`` given dLoss/dOutput (K, batch, out).

        With ``sink``, the gradients are appended to it instead, in the order of
        ``grad_targets()``, and no ``.grad`` is touched: a step compiled as one graph cannot
        write into views of the flat gradient buffer, so it returns them and the caller
        copies them in after the graph (``rl.iql``). The values are the same products.
        """
        if self.matmul_dtype is not None:
            self._backward_low(acts, grad_out, sink)
            return
        g = grad_out
        for i in range(len(acts) - 1, -1, -1):
            w, b = self.weights[i], self.biases[i]
            if sink is None:
                torch.sum(g, 1, keepdim=True, out=b.grad)
                torch.bmm(acts[i].transpose(1, 2), g, out=w.grad)
            else:
                sink.append(g.sum(1, keepdim=True))
                sink.append(torch.bmm(acts[i].transpose(1, 2), g))
            if i > 0:
                g = _relu_backward_(torch.bmm(g, w.transpose(1, 2)), acts[i])

    def grad_targets(self) -> list[torch.Tensor]:
        """Every ``.grad`` in the order ``backward_cached(..., sink)`` appends them."""
        out = []
        for i in range(len(self.weights) - 1, -1, -1):
            out += [self.biases[i].grad, self.weights[i].grad]
        return out

    def _backward_low(
        self, acts: list[torch.Tensor], grad_out: torch.Tensor, sink: list | None = None
    ) -> None:
        """``backward_cached`` after ``_forward_low``: products in ``matmul_dtype``, parameter
        gradients (and the output layer's bias gradient) accumulated into float32."""
        low, dtype = self._low_weights, self.matmul_dtype
        g = grad_out.to(dtype)
        ones = torch.ones(g.shape[0], 1, g.shape[1], dtype=dtype, device=g.device)
        last = len(acts) - 1
        for i in range(last, -1, -1):
            w, b = self.weights[i], self.biases[i]
            # below the output layer, the batch sum as a product: float32 accumulation
            bias = grad_out.sum(1, keepdim=True) if i == last else torch.bmm(ones, g)
            weight = torch.bmm(acts[i].transpose(1, 2), g)
            if sink is None:
                b.grad.copy_(bias)
                w.grad.copy_(weight)
            else:
                sink += [bias, weight]
            if i > 0:
                g = _relu_backward_(_bmm(g, low[i].transpose(1, 2)), acts[i])
        self._low_weights = []

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


def flatten_rows(ens: Ensemble) -> torch.Tensor:
    """Re-home ``ens``'s parameters as views of one (K, P) buffer, returned: row k holds all
    of member k's parameters, contiguous (each layer's (K, in, out) weight is a view with a
    row stride of P). Whole-model operations (gradient norm, clipping, Adam, Polyak
    averaging) then act on one contiguous slice per model, whatever the number of members."""
    params = list(ens.parameters())
    sizes = [p[0].numel() for p in params]
    # rows of a multiple of 16 floats (64 bytes, the allocator's alignment): every row starts
    # aligned, so a reduction over a row (the gradient norm) takes the same path in every row
    width = -(-sum(sizes) // 16) * 16
    flat = torch.zeros(ens.k, width, dtype=params[0].dtype, device=params[0].device)
    offset = 0
    with torch.no_grad():
        for p, n in zip(params, sizes, strict=True):
            flat[:, offset : offset + n].copy_(p.reshape(ens.k, n))
            p.data = flat[:, offset : offset + n].view(p.shape)
            offset += n
    return flat


class MemberAdam:
    """Adam over stacked networks (``Ensemble``) whose members belong to separate models.

    ``networks`` maps a name to (ensemble, rows per model, learning rate per model): IQL's
    twin critics take two rows per model, its value and actor networks one. Each network's
    parameters and gradients live in one (rows, P) buffer (``flatten_rows``), so a model's
    parameters of a network are one contiguous slice: its gradient is clipped to a global
    norm of ``max_norm`` over that slice, and the slice gets its own Adam update (its own
    learning rate; the fused kernel of ``torch.optim.Adam(fused=True)``). A model trained in
    a stack of K therefore takes the same steps it would take alone.
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(
        self, networks: dict[str, tuple[Ensemble, int, Sequence[float]]], max_norm: float
    ) -> None:
        self.max_norm = max_norm
        self.lrs: dict[str, list[float]] = {}
        self.flat: dict[str, torch.Tensor] = {}
        self.state: dict[str, dict[str, torch.Tensor | list[torch.Tensor]]] = {}
        self._views = {}
        for name, (ens, rows, lrs) in networks.items():
            if ens.k != rows * len(lrs):
                raise ValueError(f"{name}: {ens.k} rows are not {len(lrs)} models x {rows}")
            flat = flatten_rows(ens)
            grad = torch.zeros_like(flat)
            offset = 0
            for p in ens.parameters():  # autograd accumulates into these views in place
                n = p[0].numel()
                p.grad = grad[:, offset : offset + n].view(p.shape)
                offset += n
            flat.grad = grad
            self.flat[name] = flat
            self.lrs[name] = [float(lr) for lr in lrs]
            st = {"exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat),
                  "step": [torch.zeros((), device=flat.device) for _ in lrs]}  # fmt: skip
            self.state[name] = st
            for m in range(len(lrs)):  # model m's contiguous slices, made once
                part = slice(m * rows, (m + 1) * rows)
                self._views[name, m] = tuple(
                    x[part].view(-1) for x in (flat, grad, st["exp_avg"], st["exp_avg_sq"])
                )
        self._cpu = all(f.device.type == "cpu" for f in self.flat.values())

    def zero_grad(self) -> None:
        for flat in self.flat.values():
            flat.grad.zero_()

    def step(self) -> None:
        """For each model and network: clip its gradient, then one Adam step of its slice."""
        beta1, beta2 = self.betas
        for name, lrs in self.lrs.items():
            steps = self.state[name]["step"]
            for m, lr in enumerate(lrs):
                param, grad, exp_avg, exp_avg_sq = self._views[name, m]
                norm = torch.linalg.vector_norm(grad)
                if not self._cpu:  # accelerators: no host synchronisation
                    grad.mul_((self.max_norm / (norm + 1e-6)).clamp(max=1.0))
                elif (scale := self.max_norm / (float(norm) + 1e-6)) < 1.0:
                    grad.mul_(scale)
                steps[m].add_(1)
                torch._fused_adam_(
                    [param], [grad], [exp_avg], [exp_avg_sq], [], [steps[m]], lr=lr,
                    beta1=beta1, beta2=beta2, weight_decay=0.0, eps=self.eps, amsgrad=False,
                    maximize=False,
                )  # fmt: skip

    # -- one model's state (checkpoints hold one model each)
    def state_dict(self, model: int = 0) -> dict:
        """Model ``model``'s Adam state in ``torch.optim.Adam.state_dict()``'s layout (one
        parameter group and one flat parameter per network), as checkpoints store it."""
        state, groups = {}, []
        for index, (name, lrs) in enumerate(self.lrs.items()):
            _, _, exp_avg, exp_avg_sq = self._views[name, model]
            state[index] = {
                "step": self.state[name]["step"][model].clone(),
                "exp_avg": exp_avg.clone(),
                "exp_avg_sq": exp_avg_sq.clone(),
            }
            groups.append({"name": name, "lr": lrs[model], "betas": list(self.betas),
                           "eps": self.eps, "weight_decay": 0.0, "params": [index]})  # fmt: skip
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, doc: dict, model: int = 0) -> None:
        """Load one model's state (``state_dict``'s layout) into model ``model``'s slices."""
        for index, name in enumerate(self.lrs):
            _, _, exp_avg, exp_avg_sq = self._views[name, model]
            saved = doc["state"][index]
            exp_avg.copy_(saved["exp_avg"])
            exp_avg_sq.copy_(saved["exp_avg_sq"])
            self.state[name]["step"][model].copy_(saved["step"])
