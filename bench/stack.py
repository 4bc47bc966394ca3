"""Benchmark of stacked candidates: a sweep stage's IQL runs trained as stacks vs one run per worker.

Usage:  python bench/stack.py [--runs 18] [--workers 2] [--rounds 3] [--seconds 15]
                              [--algo iql] [--device cpu] [--compile] [--out bench/results/stack.json]

Setting: the model card's stage 1 - ``--runs`` IQL candidates (the card's grid: 3 learning-rate
regimes x 3 IQL settings, over both rewards), 62-dim state, 25 actions, 140,000 train
transitions, batch 256, [256, 256] MLPs; every candidate its own seed, batch order and
hyper-parameters, as ``sepsisrl run`` trains them. Measured, interleaved round by round so
that every figure sees the same machine load:

  pool          what ``sepsisrl run`` did before stacks: ``--workers`` single-thread processes,
                each training one run at a time (``rl.trainer.train``)
  stacked       ``--workers`` single-thread processes, each training ``runs / workers``
                candidates as one stack (``rl.trainer.train_stack``, fp32): the default now
  stacked_bf16  the same with ``precision: bf16`` (matrix products in bfloat16; opt-in)

``--compile`` (IQL) adds the same pool and bf16 stacks with the gradient step through
``torch.compile`` (``compile: true``, what the card profile sets): ``pool_compiled`` and
``stacked_bf16_compiled``; the one-off compile time is reported apart, not in the rates.

Reported per round and as medians: candidate-steps per second of the whole stage (the sum over
the concurrent processes), the paired ratio to the pool in the same round, the resulting
stage time for the card's 200 epochs (109,200 steps per candidate), and the peak memory of
one process. ``--device cuda`` runs the stacked variants on the GPU instead (one process).

``--algo cql`` or ``--algo bc`` measures a baseline's tuning grid the same way (the card's grids:
CQL alpha 0.1 / 1 / 5, BC learning rate 1e-4 / 1e-3, cycled over ``--runs`` runs; the card's
baseline tuning trains 3 CQL and 2 BC runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

N, D, A, B, H = 140_000, 62, 25, 256, 256
CARD_STEPS = 200 * (N // B)
LR = [(5e-5, 1e-4, 1e-4), (1e-4, 3e-4, 3e-4), (1e-4, 3e-4, 1e-3)]
IQL_SETTINGS = [(0.6, 2.0), (0.7, 3.0), (0.8, 5.0)]


#: per algorithm: a rough single-thread fp32 step rate (sizes each timed block) and its grid
RATE = {"iql": 95.0, "cql": 260.0, "bc": 520.0}
GRID = {"cql": [{"cql.alpha": a} for a in (0.1, 1.0, 5.0)],
        "bc": [{"bc.lr": lr} for lr in (1e-4, 1e-3)]}  # fmt: skip


def candidate_configs(first: int, count: int, algo: str = "iql"):
    from sepsisrl.rl.config import load_train_config

    if algo != "iql":
        grid = GRID[algo]
        return [getattr(load_train_config(overrides={"algo": algo, "seed": 42 + i,
                                                     **grid[i % len(grid)]}), algo)
                for i in range(first, first + count)]  # fmt: skip
    out = []
    for i in range(first, first + count):
        (actor, critic, value), (tau, beta) = LR[(i // 3) % 3], IQL_SETTINGS[i % 3]
        out.append(load_train_config(overrides={
            "iql.actor_lr": actor, "iql.critic_lr": critic, "iql.value_lr": value,
            "iql.expectile": tau, "iql.temperature": beta, "seed": 42 + i,
        }).iql)  # fmt: skip
    return out


def worker(first: int, count: int, steps: int, precision: str, device: str, algo: str) -> None:
    """Train ``count`` candidates as one stack for ``steps`` steps (after a warm-up); print
    candidate-steps per second and the peak memory as one JSON line. ``precision`` may end in
    ``+compile``: the step through ``torch.compile`` first (its time reported apart)."""
    from sepsisrl.rl.registry import Common, algorithm

    precision, _, compiled = precision.partition("+")

    spec = algorithm(algo)

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    states = torch.randn(N, D, generator=g).to(device)
    actions = torch.randint(0, A, (N,), generator=g).to(device)
    rewards = torch.randn(N, generator=g).to(device)
    nxt = torch.clamp(torch.arange(N) + 1, max=N - 1).to(device)
    done = (torch.rand(N, generator=g) < 0.07).float().to(device)
    common = Common(D, A, 0.99, (H, H), 10.0, device)
    models = []
    for i, cfg in enumerate(candidate_configs(first, count, algo)):
        torch.manual_seed(first + i)
        models.append(spec.create(common, cfg))
    model = models[0] if count == 1 else spec.implementation.stack(models)
    if precision == "bf16":
        model.set_matmul_dtype(torch.bfloat16)
    orders = [torch.Generator().manual_seed(first + i) for i in range(count)]
    perms = [torch.randperm(N, generator=o) for o in orders]
    pos = [0] * count

    def batch():
        parts = []
        for i in range(count):
            if pos[i] + B > N:
                perms[i], pos[i] = torch.randperm(N, generator=orders[i]), 0
            idx = perms[i][pos[i] : pos[i] + B].to(device)
            pos[i] += B
            parts.append((states[idx], actions[idx], rewards[idx], states[nxt[idx]], done[idx]))
        return tuple(torch.stack(x) for x in zip(*parts, strict=True))

    compile_seconds = None
    if compiled:
        t0 = time.perf_counter()
        model.compile_step()
        model.compute_gradients(*batch())  # compiles; only gradients, no weight changes
        compile_seconds = time.perf_counter() - t0
    for _ in range(5):
        model.update(*batch())
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        model.update(*batch())
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    print(json.dumps({"candidate_steps_per_second": count * steps / seconds,
                      "seconds": seconds, "peak_mib": peak,
                      "compile_seconds": compile_seconds}))  # fmt: skip


def concurrent(jobs: list[list[str]]) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", *j], stdout=subprocess.PIPE,
                              text=True) for j in jobs]  # fmt: skip
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit("a benchmark process failed")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=18)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0, help="per variant and round")
    ap.add_argument("--algo", default="iql", choices=["iql", "cql", "bc"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="bench/results/stack.json")
    ap.add_argument("--compile", action="store_true", help="add the compiled variants (IQL)")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        first, count, steps, precision, device, algo = args.worker
        worker(int(first), int(count), int(steps), precision, device, algo)
        return
    w, runs = args.workers, args.runs
    per = [len(range(i, runs, w)) for i in range(w)]  # candidates per stack
    firsts = [sum(per[:i]) for i in range(w)]
    # steps per variant from a quick estimate of one candidate's speed (RATE, fp32)
    rate, a = RATE[args.algo], args.algo
    variants = {
        "pool": [[str(f), "1", str(int(args.seconds * rate)), "fp32", "cpu", a] for f in firsts],
        "stacked": [[str(f), str(k), str(max(5, int(args.seconds * rate / k))), "fp32", "cpu", a]
                    for f, k in zip(firsts, per, strict=True)],
        "stacked_bf16": [[str(f), str(k), str(max(5, int(args.seconds * rate * 1.6 / k))),
                          "bf16", "cpu", a] for f, k in zip(firsts, per, strict=True)],
    }  # fmt: skip
    if args.compile:
        if a != "iql":
            raise SystemExit("--compile: torch.compile of the step is for IQL only")
        variants["pool_compiled"] = [[*j[:3], "fp32+compile", *j[4:]] for j in variants["pool"]]
        variants["stacked_bf16_compiled"] = [[*j[:3], "bf16+compile", *j[4:]]
                                             for j in variants["stacked_bf16"]]  # fmt: skip
    if args.device != "cpu":
        variants["stacked_gpu"] = [["0", str(runs), "300", "fp32", args.device, a]]
        variants["stacked_gpu_bf16"] = [["0", str(runs), "300", "bf16", args.device, a]]
    rounds: list[dict[str, dict]] = []
    for r in range(args.rounds):
        row = {}
        for name, jobs in variants.items():
            res = concurrent(jobs)
            row[name] = {"candidate_steps_per_second": sum(x["candidate_steps_per_second"]
                                                           for x in res),
                         "peak_mib": max(x["peak_mib"] for x in res),
                         "compile_seconds": max((x["compile_seconds"] or 0.0) for x in res)}  # fmt: skip
        rounds.append(row)
        print(f"round {r + 1}: " + ", ".join(
            f"{k} {v['candidate_steps_per_second']:.1f}" for k, v in row.items()
        ) + " candidate-steps/s", flush=True)  # fmt: skip
    names = list(variants)
    median = {n: statistics.median(r[n]["candidate_steps_per_second"] for r in rounds)
              for n in names}  # fmt: skip
    ratio = {n: statistics.median(r[n]["candidate_steps_per_second"]
                                  / r["pool"]["candidate_steps_per_second"] for r in rounds)
             for n in names if n != "pool"}  # fmt: skip
    stage_steps = runs * CARD_STEPS
    doc = {
        "meta": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "algo": args.algo,
            "runs": runs,
            "workers": w,
            "runs_per_stack": per,
            "rounds": args.rounds,
            "device": args.device,
        },
        "median_candidate_steps_per_second": median,
        "paired_ratio_to_pool": ratio,
        "card_stage_minutes": {n: stage_steps / v / 60 for n, v in median.items()},
        "peak_mib_per_process": {n: max(r[n]["peak_mib"] for r in rounds) for n in names},
        "rounds": rounds,
    }
    print(f"stage of {runs} candidates on {w} workers, median candidate-steps/s: "
          + ", ".join(f"{n} {v:.1f}" for n, v in median.items()))  # fmt: skip
    print("paired ratio to the pool: " + ", ".join(f"{n} {v:.2f}x" for n, v in ratio.items()))
    print("card stage (200 epochs): " + ", ".join(
        f"{n} {m:.0f} min" for n, m in doc["card_stage_minutes"].items()))  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
