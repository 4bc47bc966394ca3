"""The relative cost of one gradient step of every registered algorithm (``AlgorithmSpec.step_cost``).

Usage:  python bench/step_cost.py [--rounds 5] [--block 100] [--out FILE]

Setting: the model card's network (62-dim state, 25 actions, ``configs/train.yaml``'s hidden
sizes and batch size), one torch thread, eager fp32, resident tensors. The algorithms take turns
in blocks of ``--block`` steps, ``--rounds`` times; the figure is the median steps/s, and the
cost of an algorithm is BC's steps/s over its own. A study uses ``step_cost`` only to start a
phase's longest units first (``study.runner.longest_first``); the bench prints the registry's
figure beside the measured one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.registry import Common, algorithms

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_train_config()
    d, n, b = 62, 25, cfg.batch_size
    common = Common(d, n, 0.99, tuple(cfg.hidden_sizes), cfg.grad_clip, "cpu")
    specs = algorithms()
    algos = {name: spec.create(common, getattr(cfg, name)) for name, spec in specs.items()}
    batch = (torch.randn(b, d), torch.randint(0, n, (b,)), torch.randn(b), torch.randn(b, d),
             torch.zeros(b))  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in algos}
    for _ in range(args.rounds):
        for name, algo in algos.items():
            started = time.perf_counter()
            for _ in range(args.block):
                algo.update(*batch)
            rates[name].append(args.block / (time.perf_counter() - started))
    median = {name: statistics.median(r) for name, r in rates.items()}
    rows = {
        name: {"steps_per_second": round(median[name], 1),
               "measured_cost": round(median["bc"] / median[name], 2),
               "registry_cost": specs[name].step_cost}
        for name in algos
    }  # fmt: skip
    print(f"{'algorithm':<10}{'steps/s':>10}{'cost (BC = 1)':>15}{'registry':>10}")
    for name, row in rows.items():
        print(f"{name:<10}{row['steps_per_second']:>10}{row['measured_cost']:>15}"
              f"{row['registry_cost']:>10}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"batch_size": b, "algorithms": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
