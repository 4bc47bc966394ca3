"""Benchmark of `sepsisrl train` (IQL) in the model card's setting, with same-machine baselines.

Usage:  python bench/train.py [--rounds 40] [--block 25] [--threads 0] [--e2e-steps 2000]
                              [--concurrent N_CPUS] [--reference-plain 110]

Setting: 62-dim state, 25 actions, 140,000 train transitions, batch 256, [256, 256] MLPs.
Measured, interleaved so that every figure sees the same machine load:
  sepsisrl    the trainer's IQL update on resident tensors (``sepsisrl.rl.iql``)
  sepsisrl_compiled   the same with ``compile=true`` (``torch.compile`` of the gradient
              step; the one-off compilation is timed separately; ``--no-compile`` skips it)
  plain       a straightforward eager implementation: six nn.Sequential networks, three
              torch Adam optimisers, clip_grad_norm_ and three backward passes per step
  matmul      the matrix products one IQL step needs and nothing else - the fp32 floor
The candidates take turns in short blocks (``--block`` steps each, ``--rounds`` times), so
that all of them see the same machine load; on a shared VM the speed of every candidate
drifts by +-30 % within a minute. Reported: median steps/second over the blocks, the
resulting time for the card's 110,000 steps, and the paired speed ratios (median over rounds
of sepsisrl's rate divided by the other candidate's rate in the same round), which are stable
where the absolute rates are not; the ratio times the plain loop's speed on the reference
machine (``--reference-plain``, issue 4's 110 steps/s) is printed as well. The end-to-end
``train()`` (the real trainer with batch sampling, metrics logging and checkpoints) is timed
too, and so are ``--concurrent`` single-thread training processes running at once - how
``sepsisrl run`` trains several seeds (one per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

N, D, A, B, H = 140_000, 62, 25, 256, 256
CARD_STEPS = 110_000


class PlainIQL:
    """A plain eager IQL, as one would write it first (the reference point)."""

    def __init__(self) -> None:
        def mlp(out: int) -> torch.nn.Sequential:
            return torch.nn.Sequential(
                torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, H), torch.nn.ReLU(),
                torch.nn.Linear(H, out),
            )  # fmt: skip

        self.q1, self.q2, self.v, self.pi, self.t1, self.t2 = (
            mlp(A),
            mlp(A),
            mlp(1),
            mlp(A),
            mlp(A),
            mlp(A),
        )
        self.t1.load_state_dict(self.q1.state_dict())
        self.t2.load_state_dict(self.q2.state_dict())
        self.oq = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], 3e-4)
        self.ov = torch.optim.Adam(self.v.parameters(), 3e-4)
        self.op = torch.optim.Adam(self.pi.parameters(), 1e-4)

    def update(self, s, a, r, sn, d) -> None:
        with torch.no_grad():
            tq = torch.min(self.t1(s), self.t2(s)).gather(1, a[:, None]).squeeze(1)
            y = r + 0.99 * (1 - d) * self.v(sn).squeeze(1)
        v = self.v(s).squeeze(1)
        u = tq - v
        vl = (torch.abs(0.7 - (u < 0).float()) * u**2).mean()
        self.ov.zero_grad()
        vl.backward()
        torch.nn.utils.clip_grad_norm_(self.v.parameters(), 10)
        self.ov.step()
        ql = F.mse_loss(self.q1(s).gather(1, a[:, None]).squeeze(1), y) + F.mse_loss(
            self.q2(s).gather(1, a[:, None]).squeeze(1), y
        )
        self.oq.zero_grad()
        ql.backward()
        torch.nn.utils.clip_grad_norm_([*self.q1.parameters(), *self.q2.parameters()], 10)
        self.oq.step()
        w = torch.exp(3 * (tq - v.detach())).clamp(max=100)
        al = -(w * F.log_softmax(self.pi(s), 1).gather(1, a[:, None]).squeeze(1)).mean()
        self.op.zero_grad()
        al.backward()
        torch.nn.utils.clip_grad_norm_(self.pi.parameters(), 10)
        self.op.step()
        with torch.no_grad():
            for t, o in ((self.t1, self.q1), (self.t2, self.q2)):
                for pt, po in zip(t.parameters(), o.parameters(), strict=True):
                    pt.mul_(0.995).add_(po, alpha=0.005)


class MatmulFloor:
    """Only the matrix products of one IQL step (forward no-grad, forward, backward)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        self.s, self.h, self.g_h, self.g_o = r(B, D), r(B, H), r(B, H), r(B, A)
        self.w1, self.w2, self.w3, self.w3v = r(H, D), r(H, H), r(A, H), r(1, H)

    def update(self, *_args) -> None:
        s, h, gh, go = self.s, self.h, self.g_h, self.g_o
        for w3 in (self.w3, self.w3, self.w3v):  # no grad: target Q1, Q2 on s; V on s'
            F.linear(F.linear(F.linear(s, self.w1), self.w2), w3)
        for w3 in (self.w3, self.w3, self.w3v, self.w3):  # with grad: Q1, Q2, V, actor on s
            F.linear(F.linear(F.linear(s, self.w1), self.w2), w3)
            g3 = go if w3 is self.w3 else go[:, :1]
            g3.t() @ h  # dW3
            g3 @ w3  # dh2
            gh.t() @ h  # dW2
            gh @ self.w2  # dh1
            gh.t() @ s  # dW1


def write_card_replay(folder: Path, states, actions, rewards, done) -> None:
    """A contract-following replay folder holding these arrays as its train split."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = done.astype(bool).copy()
    done[-1] = True
    stay = np.concatenate([[0], np.cumsum(done[:-1])]).astype(np.int64)
    start = np.maximum.accumulate(
        np.where(np.r_[True, stay[1:] != stay[:-1]], np.arange(len(stay)), 0)
    )
    step = (np.arange(len(stay)) - start).astype(np.int16)
    names = [f"f{i}" for i in range(states.shape[1])]
    cols = {"subject_id": stay, "stay_id": stay, "step": step, "action": actions.astype(np.int16),
            "reward": rewards.astype(np.float32), "done": done}  # fmt: skip
    cols.update({f"s_{n}": states[:, j].astype(np.float32) for j, n in enumerate(names)})
    folder.mkdir(parents=True)
    pq.write_table(pa.table(cols), folder / "replay_train.parquet")
    meta = {
        "schema_version": "1", "state_dim": states.shape[1], "n_actions": A,
        "feature_names": names, "reward": {"variant": "bench"}, "gamma": 0.99,
    }  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))


def card_batches():
    """The card-shaped synthetic training data and a batch function over it."""
    torch.manual_seed(0)
    S = torch.randn(N, D)
    act = torch.randint(0, A, (N,))
    rew = torch.randn(N)
    done = (torch.rand(N) < 0.08).float()
    nxt = torch.clamp(torch.arange(N) + 1, max=N - 1)
    perm = torch.randperm(N)

    def batches(i: int):
        idx = perm[(i % (N // B)) * B : (i % (N // B) + 1) * B]
        return S[idx], act[idx], rew[idx], S[nxt[idx]], done[idx]

    return (S, act, rew, done), batches


def card_iql():
    """The trainer's IQL (``rl.registry``) with configs/train.yaml's settings, card-shaped."""
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.trainer import make_algorithm

    return make_algorithm(load_train_config(overrides={"hidden_sizes": [H, H]}), D, A, 0.99)


def solo(steps: int) -> None:
    """One process, one thread, ``steps`` IQL updates: prints its rate as a JSON line."""
    torch.set_num_threads(1)
    _, batches = card_batches()
    algo = card_iql()
    for i in range(20):
        algo.update(*batches(i))
    t0 = time.perf_counter()
    for i in range(steps):
        algo.update(*batches(i))
    print(json.dumps({"steps_per_second": steps / (time.perf_counter() - t0)}))


def concurrent_seeds(n: int, steps: int) -> list[float]:
    """``n`` single-thread processes training at once, as ``sepsisrl run``'s workers do."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--solo", str(steps)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a concurrent training process failed")
    return [json.loads(o.strip().splitlines()[-1])["steps_per_second"] for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--block", type=int, default=25, help="steps per candidate per round")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--e2e-steps", type=int, default=2000)
    ap.add_argument(
        "--concurrent", type=int, default=os.cpu_count() or 1,
        help="single-thread training processes run at once (0: skip that measurement)",
    )  # fmt: skip
    ap.add_argument("--solo", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument(
        "--no-compile", dest="compile", action="store_false",
        help="skip the torch.compile'd IQL step (train's compile=true)",
    )  # fmt: skip
    ap.add_argument(
        "--reference-plain",
        type=float,
        default=110.0,
        help="steps/s of a plain eager loop on the reference 2-core machine (issue 4's figure)",
    )
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (the spread needs two blocks)")
    if args.solo:
        solo(args.solo)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    (S, act, rew, done), batches = card_batches()

    candidates = {"sepsisrl": card_iql().update}
    compile_seconds = None
    if args.compile:
        compiled = card_iql()
        compiled.compile_step()
        t0 = time.perf_counter()
        compiled.compute_gradients(*batches(0))
        compile_seconds = time.perf_counter() - t0
        print(f"compiling the IQL step (compile=true): {compile_seconds:.1f} s, once per process")
        candidates["sepsisrl_compiled"] = compiled.update
    candidates.update({"plain": PlainIQL().update, "matmul_floor": MatmulFloor().update})
    rates: dict[str, list[float]] = {k: [] for k in candidates}
    step = 0
    for update in candidates.values():  # warm-up
        for _ in range(20):
            update(*batches(step))
            step += 1
    for _ in range(args.rounds):
        for name, update in candidates.items():
            t0 = time.perf_counter()
            for _ in range(args.block):
                update(*batches(step))
                step += 1
            rates[name].append(args.block / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    mine = [k for k in rates if k.startswith("sepsisrl")]
    ratio = {  # paired: per round, then the median over rounds
        f"{k}/{o}": statistics.median(x / y for x, y in zip(rates[k], rates[o], strict=True))
        for k in mine
        for o in ("plain", "matmul_floor")
    }
    print(f"{args.rounds} rounds x {args.block} steps per candidate, {torch.get_num_threads()} "
          "threads; median steps/s over the rounds (inter-quartile range):")  # fmt: skip
    for name, v in rates.items():
        q1, _, q3 = statistics.quantiles(v, n=4)
        print(f"  {name:18s} {med[name]:7.1f} steps/s ({q1:.0f}-{q3:.0f})  "
              f"-> {CARD_STEPS / med[name] / 60:5.1f} min for {CARD_STEPS:,} steps")  # fmt: skip
    at_reference = {}
    for k in mine:
        at_reference[k] = ratio[f"{k}/plain"] * args.reference_plain
        print(
            f"paired ratios: {k} / plain eager loop {ratio[f'{k}/plain']:.2f}x, "
            f"/ fp32 matmul floor {ratio[f'{k}/matmul_floor']:.0%}; at the reference machine "
            f"speed (plain loop {args.reference_plain:.0f} steps/s; here {med['plain']:.0f}): "
            f"{at_reference[k]:.0f} steps/s"
        )

    # end to end: the trainer with logging and checkpoints, on a replay folder of this shape
    with tempfile.TemporaryDirectory() as tmp:
        replay = Path(tmp) / "replay" / "bench"
        write_card_replay(replay, S.numpy(), act.numpy(), rew.numpy(), done.numpy())
        from sepsisrl.rl.config import load_train_config
        from sepsisrl.rl.trainer import train

        n = args.e2e_steps
        end_to_end = {}
        for compiled in (False, True) if args.compile else (False,):
            cfg = load_train_config(overrides={
                "steps": n, "log_every": n // 4, "checkpoint_every": n // 2,
                "threads": args.threads, "compile": compiled,
            })  # fmt: skip
            res = train(replay, cfg, Path(tmp) / f"run_compile_{compiled}")
            end_to_end["compile" if compiled else "eager"] = res.steps_per_second
            extra = f" (+ {res.compile_seconds:.2f} s compiling)" if compiled else ""
            print(
                f"train() end to end, compile={str(compiled).lower()}, {n:,} steps incl. batch "
                f"sampling, logging and 1 checkpoint: {res.steps_per_second:.1f} steps/s{extra}"
            )
    concurrent: list[float] = []
    if args.concurrent:
        concurrent = concurrent_seeds(args.concurrent, 1500)
        print(
            f"{args.concurrent} single-thread processes at once (sepsisrl run's workers): "
            f"{' + '.join(f'{r:.1f}' for r in concurrent)} = {sum(concurrent):.1f} steps/s"
        )
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}  # fmt: skip
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    doc = {
        "meta": meta,
        "rounds": args.rounds,
        "block": args.block,
        "steps_per_second": med,
        "paired_ratios": ratio,
        "reference_plain_steps_per_second": args.reference_plain,
        "at_reference_speed": at_reference,
        "compile_seconds": compile_seconds,
        "all": rates,
        "train_end_to_end": end_to_end,
        "concurrent_single_thread_processes": concurrent,
    }
    (out / "train.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results written to {out / 'train.json'}")


if __name__ == "__main__":
    main()
