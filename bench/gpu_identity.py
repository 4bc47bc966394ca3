"""Which operation makes a stacked run differ from the same run alone on a device? (issue 16)

Usage:  python bench/gpu_identity.py [--device cuda] [--ks 1,2,3,6,18] [--batch 256]
                                     [--out FILE]

A stack of K runs (``rl.stacking``) computes each layer of all K runs as one batched product,
each run's batch sums and norms over its own slice. On a CPU every run of a stack is
bit-identical to the run trained alone (``tests/test_rl_stack.py``); on the one GPU
measured it was not (``tests/test_cuda.py``, docs/run.md names two likely causes). This
benchmark takes the operations of an IQL step at the card's shapes (batch 256, 62 -> 256 ->
256 -> 25, the value head's single column), gives run 0 the same inputs alone (K = 1) and at
position 0 and K - 1 of stacks of every K in ``--ks``, and prints, per operation, whether run 0's
result is bit-identical across all of them. Beside the forms the training step uses now, it
tries the forms that would make a run's result independent of K:

- ``bmm``: ``torch.bmm`` over the K runs (the step's form; ``_bmm`` for the value head);
- ``mm per run``: one ``torch.mm`` per run on contiguous operands (K launches);
- ``bmm, K >= 2``: ``torch.bmm`` with a lone run padded to two (a copy of itself), so a run
  is never a batch of one;
- ``sum``: ``torch.sum`` over the batch dimension of (K, n, out) (the bias gradient);
- ``sum per run``, ``ones-bmm per run``: the same sum per run, and as a product with a row of
  ones per run;
- ``norm``, ``adam``: the per-run gradient norm and fused Adam step over a run's slice of a
  (K, P) buffer (``MemberAdam``), ``log_softmax``: over the 25 actions of (K, n, 25).

Seconds on a GPU; on a CPU it shows what the tests assert (the step's forms identical). With
``--out``, the table as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

BATCH, STATE, HIDDEN, ACTIONS = 256, 62, 256, 25


def _stack(x: torch.Tensor, k: int, at: int, seed: int) -> torch.Tensor:
    """(K, ...) with ``x`` at row ``at`` and other runs' random data elsewhere."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    others = torch.randn((k, *x.shape), generator=g).to(x.device, x.dtype)
    others[at] = x
    return others.contiguous()


def _mm_per_run(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.mm(a[i].contiguous(), b[i].contiguous()) for i in range(a.shape[0])])


def _bmm_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape[0] > 1:
        return torch.bmm(a, b)
    return torch.bmm(a.expand(2, -1, -1).contiguous(), b.expand(2, -1, -1).contiguous())[:1]


def _value_head(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from sepsisrl.rl.networks import _bmm

    return _bmm(a, b)


def _critic_pair(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The twin critics' first layer as ``IQL._pairs`` feeds it: a run alone multiplies a
    stride-0 view of its batch, a stack a copy of each run's batch per critic."""
    k, n, d = x.shape
    if k == 1:
        return torch.bmm(x[0].expand(2, n, d), w[0]).unsqueeze(0)
    return torch.bmm(x.repeat_interleave(2, 0), w.reshape(2 * k, d, -1)).view(k, 2, n, -1)


def _ones_bmm_per_run(g: torch.Tensor) -> torch.Tensor:
    ones = torch.ones(1, g.shape[1], dtype=g.dtype, device=g.device)
    return torch.stack([torch.mm(ones, g[i].contiguous()) for i in range(g.shape[0])])


def _norm_rows(flat: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.linalg.vector_norm(flat[i].view(-1)) for i in range(flat.shape[0])])


def _adam_rows(flat: torch.Tensor) -> torch.Tensor:
    p, grad = flat.clone(), flat.mul(0.5)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for i in range(p.shape[0]):
        step = torch.ones((), device=p.device)
        args = ([p[i].view(-1)], [grad[i].view(-1)], [m[i].view(-1)], [v[i].view(-1)], [],
                [step])  # fmt: skip
        torch._fused_adam_(*args, lr=3e-4, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                           amsgrad=False, maximize=False)  # fmt: skip
    return p


def cases(device: torch.device) -> dict[str, tuple[Callable, list[tuple[int, ...]]]]:
    """name -> (function of the stacked operands, shapes of one run's operands)."""
    return {
        "forward layer 1, bmm": (torch.bmm, [(BATCH, STATE), (STATE, HIDDEN)]),
        "forward layer 2, bmm": (torch.bmm, [(BATCH, HIDDEN), (HIDDEN, HIDDEN)]),
        "forward layer 3, bmm": (torch.bmm, [(BATCH, HIDDEN), (HIDDEN, ACTIONS)]),
        "value head (_bmm)": (_value_head, [(BATCH, HIDDEN), (HIDDEN, 1)]),
        "critic pair, layer 1 (_pairs)": (_critic_pair, [(BATCH, STATE), (2, STATE, HIDDEN)]),
        "weight grad, bmm": (
            lambda a, g: torch.bmm(a.transpose(1, 2), g),
            [(BATCH, HIDDEN), (BATCH, HIDDEN)],
        ),
        "input grad, bmm": (
            lambda g, w: torch.bmm(g, w.transpose(1, 2)),
            [(BATCH, ACTIONS), (HIDDEN, ACTIONS)],
        ),
        "forward layer 2, mm per run": (_mm_per_run, [(BATCH, HIDDEN), (HIDDEN, HIDDEN)]),
        "weight grad, mm per run": (
            lambda a, g: _mm_per_run(a.transpose(1, 2), g),
            [(BATCH, HIDDEN), (BATCH, HIDDEN)],
        ),
        "forward layer 2, bmm, K >= 2": (_bmm_padded, [(BATCH, HIDDEN), (HIDDEN, HIDDEN)]),
        "value head, bmm, K >= 2": (_bmm_padded, [(BATCH, HIDDEN), (HIDDEN, 1)]),
        "bias grad, sum": (lambda g: torch.sum(g, 1, keepdim=True), [(BATCH, HIDDEN)]),
        "bias grad, sum per run": (
            lambda g: torch.stack([torch.sum(g[i], 0, keepdim=True) for i in range(len(g))]),
            [(BATCH, HIDDEN)],
        ),
        "bias grad, ones-bmm per run": (_ones_bmm_per_run, [(BATCH, HIDDEN)]),
        "log_softmax": (lambda z: torch.log_softmax(z, dim=2), [(BATCH, ACTIONS)]),
        "gradient norm per run": (_norm_rows, [(8 * 4096,)]),
        "fused Adam per run": (_adam_rows, [(8 * 4096,)]),
    }


def check(fn: Callable, shapes: list[tuple[int, ...]], ks: list[int], device) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    mine = [torch.randn(s, generator=g).to(device) for s in shapes]
    alone = fn(*[x.unsqueeze(0).contiguous() for x in mine])[0]
    differ = []
    for k in ks:
        for at in sorted({0, k - 1}):
            got = fn(*[_stack(x, k, at, 10 * k + at + j) for j, x in enumerate(mine)])[at]
            if not torch.equal(got, alone):
                differ.append({"k": k, "at": at, "max_abs": float((got - alone).abs().max())})
    return {"identical": not differ, "differs": differ}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ks", default="1,2,3,6,18")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    ks = [int(k) for k in args.ks.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}; stacks of K = {ks}")
    rows = {}
    for label, (fn, shapes) in cases(device).items():
        doc = check(fn, shapes, ks, device)
        rows[label] = doc
        where = ", ".join(f"K={d['k']}@{d['at']} ({d['max_abs']:.1e})" for d in doc["differs"])
        print(f"  {label:32s} {'identical' if doc['identical'] else 'DIFFERS: ' + where}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "ks": ks,
                                        "operations": rows}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
