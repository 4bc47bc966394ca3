"""Where one gradient step's time goes: the matrix products' share, their FLOPs and FLOP rate.

Usage:  python bench/step_profile.py [--algo iql] [--steps 300] [--eager] [--out FILE]

Setting: as ``bench/step_cost.py`` (the model card's network, one torch thread, fp32, resident
tensors), with IQL's step compiled as the ``card`` profile compiles it (``--eager``: not).
After 50 warm-up steps, ``--steps`` steps run under ``torch.profiler`` with FLOP counting.
Printed: the steps/s under the profiler, the share of the step's CPU time spent in matrix
products (``aten::bmm``, ``mm``, ``addmm``, ``baddbmm``), the FLOPs they do per step (the
profiler's count: 2 per multiply-add) and the rate they run at. A share near 1 at a rate near
the core's fp32 FMA throughput means the step is bound by the arithmetic of its products:
nothing but fewer FLOPs, lower precision or more hardware makes it faster.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

PRODUCTS = ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", default="iql")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eager", action="store_true", help="do not compile IQL's step")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from torch.profiler import ProfilerActivity, profile

    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.registry import Common, algorithm

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_train_config()
    d, n, b = 62, 25, cfg.batch_size
    common = Common(d, n, 0.99, tuple(cfg.hidden_sizes), cfg.grad_clip, "cpu")
    spec = algorithm(args.algo)
    algo = spec.create(common, getattr(cfg, args.algo))
    compiled = spec.compile and not args.eager
    if compiled:
        algo.compile_step()
    batch = (torch.randn(b, d), torch.randint(0, n, (b,)), torch.randn(b), torch.randn(b, d),
             torch.zeros(b))  # fmt: skip
    for _ in range(50):
        algo.update(*batch)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        started = time.perf_counter()
        for _ in range(args.steps):
            algo.update(*batch)
        seconds = time.perf_counter() - started
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    products = [e for e in events if e.key in PRODUCTS]
    product_us = sum(e.self_cpu_time_total for e in products)
    flops = sum(e.flops for e in products)
    row = {
        "algo": args.algo,
        "compiled": compiled,
        "batch_size": b,
        "hidden_sizes": list(cfg.hidden_sizes),
        "steps_per_second": round(args.steps / seconds, 1),
        "product_share_of_cpu_time": round(product_us / total_us, 3),
        "product_calls_per_step": round(sum(e.count for e in products) / args.steps, 1),
        "product_mflop_per_step": round(flops / args.steps / 1e6, 1),
        "product_gflop_per_second": round(flops / (product_us * 1e-6) / 1e9, 1),
    }
    for key, value in row.items():
        print(f"{key:<28}{value}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
