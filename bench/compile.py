"""Do IQL's hand-written gradients pay? Steps/s of the ways to compute the same step (CPU).

Usage:  python bench/compile.py [--rounds 15] [--block 20] [--threads 1] [--batch-sizes 256]

Setting: the model card's (and the quick profile's) network: 62-dim state, 25 actions,
[256, 256] MLPs, batch 256 (``configs/train.yaml``; both study profiles keep that batch size).
Every variant runs the trainer's IQL step - the same networks, the same fused Adam with
per-network clipping and the same Polyak update - and differs only in how the gradients of
the three losses are computed:

  handwritten        ``IQL.compute_gradients``: the gradients written out next to the losses and
                     back-propagated without autograd (the training path today)
  autograd           ``IQL.losses`` (the readable definition) summed and ``.backward()``
  autograd_compiled  the same with ``IQL.losses`` run through ``torch.compile`` (forward and
                     backward graphs compiled; the one-off compilation is timed separately)
  handwritten_compiled  ``compute_gradients`` through ``torch.compile`` (train's compile=true:
                     ``IQL.compile_step``, one graph that returns the gradients)
  handwritten_compiled_split  the same function compiled as it is, writing into ``.grad``
                     inside the graph: three graphs (the compiled step before 2026-12-06);
                     printed as the paired ratio "one graph vs three"

The machine is shared, so the variants take turns in short blocks (``--block`` steps each,
``--rounds`` times) and every figure is the median over the rounds; the paired ratio (per
round, then the median) compares two variants under the same load. The rule of issue 15: keep
the simpler path (autograd) unless the faster one wins by more than 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

D, A, H, N = 62, 25, 256, 20_000


def make_iql(hidden: tuple[int, ...]):
    """The trainer's IQL with the default settings of configs/train.yaml."""
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.registry import Common, algorithm

    cfg = load_train_config(overrides={"hidden_sizes": list(hidden)})
    common = Common(D, A, 0.99, tuple(cfg.hidden_sizes), cfg.grad_clip, "cpu")
    return algorithm("iql").create(common, cfg.iql)


def autograd_step(algo, losses):
    """One IQL step with the gradients from autograd on ``losses`` (``algo.losses`` or its
    compiled form)."""
    from sepsisrl.rl.networks import polyak_update

    def update(s, a, r, s_next, done):
        algo.optimizer.zero_grad()
        out = losses(s, a, r, s_next, done)
        (out["value_loss"] + out["critic_loss"] + out["actor_loss"]).backward()
        algo.optimizer.step()
        polyak_update(algo._target_flat, algo.optimizer.flat["critic"], algo.cfg.polyak)

    return update


def batches(batch: int):
    g = torch.Generator().manual_seed(0)
    S = torch.randn(N, D, generator=g)
    act = torch.randint(0, A, (N,), generator=g)
    rew = torch.randn(N, generator=g)
    done = (torch.rand(N, generator=g) < 0.08).float()
    nxt = torch.clamp(torch.arange(N) + 1, max=N - 1)
    perm = torch.randperm(N, generator=g)

    def get(i: int):
        k = N // batch
        idx = perm[(i % k) * batch : (i % k + 1) * batch]
        return S[idx], act[idx], rew[idx], S[nxt[idx]], done[idx]

    return get


def measure(batch: int, rounds: int, block: int, compiled: bool) -> dict:
    get = batches(batch)
    torch.manual_seed(0)
    variants = {
        "handwritten": make_iql((H, H)).update,
        "autograd": autograd_step(algo := make_iql((H, H)), algo.losses),
    }
    compile_seconds = {}
    if compiled:
        algo = make_iql((H, H))
        fn = autograd_step(algo, torch.compile(algo.losses, dynamic=False))
        t0 = time.perf_counter()
        fn(*get(0))
        compile_seconds["autograd_compiled"] = time.perf_counter() - t0
        variants["autograd_compiled"] = fn
        hand = make_iql((H, H))
        hand.compile_step()
        t0 = time.perf_counter()
        hand.update(*get(0))
        compile_seconds["handwritten_compiled"] = time.perf_counter() - t0
        variants["handwritten_compiled"] = hand.update
        # the compiled step before 2026-12-06: the same function compiled as it is, writing
        # into .grad inside the graph, which splits it into three graphs (a guard check and
        # a Python round trip each); compile_step now returns the gradients from one graph
        split = make_iql((H, H))
        split.compute_gradients = torch.compile(split.compute_gradients, dynamic=False)
        t0 = time.perf_counter()
        split.update(*get(0))
        compile_seconds["handwritten_compiled_split"] = time.perf_counter() - t0
        variants["handwritten_compiled_split"] = split.update
    step = 1
    for update in variants.values():  # warm-up
        for _ in range(10):
            update(*get(step))
            step += 1
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, update in variants.items():
            t0 = time.perf_counter()
            for _ in range(block):
                update(*get(step))
                step += 1
            rates[name].append(block / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    paired = {
        f"{k}/autograd": statistics.median(
            x / y for x, y in zip(rates[k], rates["autograd"], strict=True)
        )
        for k in rates
        if k != "autograd"
    }
    if "handwritten_compiled_split" in rates:
        paired["handwritten_compiled/handwritten_compiled_split"] = statistics.median(
            x / y
            for x, y in zip(
                rates["handwritten_compiled"], rates["handwritten_compiled_split"], strict=True
            )
        )
    return {"median_steps_per_second": med, "paired_ratio_to_autograd": paired,
            "compile_seconds": compile_seconds, "all": rates}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--block", type=int, default=20, help="steps per variant per round")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: all cores)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    doc = {
        "meta": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "block": args.block,
        },
        "batch_sizes": {},
    }
    for batch in args.batch_sizes:
        res = measure(batch, args.rounds, args.block, args.compile)
        doc["batch_sizes"][str(batch)] = res
        print(f"batch {batch}, {torch.get_num_threads()} thread(s), {args.rounds} rounds x "
              f"{args.block} steps; median steps/s (inter-quartile range), paired ratio to "
              "autograd:")  # fmt: skip
        for name, v in res["all"].items():
            q1, _, q3 = statistics.quantiles(v, n=4)
            ratio = res["paired_ratio_to_autograd"].get(f"{name}/autograd", 1.0)
            print(f"  {name:22s} {res['median_steps_per_second'][name]:7.1f} ({q1:.0f}-{q3:.0f})"
                  f"  x{ratio:.2f}")  # fmt: skip
        for name, s in res["compile_seconds"].items():
            print(f"  compiling {name}: {s:.1f} s, once per process")
        one = res["paired_ratio_to_autograd"].pop(
            "handwritten_compiled/handwritten_compiled_split", None
        )
        if one is not None:
            print(f"  one graph vs three (handwritten_compiled / _split): x{one:.2f}")
            res["paired_ratio_one_graph_to_three"] = one
        best = max(res["paired_ratio_to_autograd"].items(), key=lambda kv: kv[1])
        verdict = "keep it" if best[1] > 1.10 else "keep plain autograd (the simpler path)"
        print(f"  fastest vs autograd: {best[0]} x{best[1]:.2f} -> {verdict}")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "compile.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results written to {out / 'compile.json'}")


if __name__ == "__main__":
    main()
