"""Benchmark of `sepsisrl truth`: the true outcome of one trained policy on fresh patients.

Usage:  python bench/truth.py [--patients 2000] [--workspace WS] [--world-stays 2000]

Without ``--workspace`` a synthetic world of ``--world-stays`` stays (seed 0, the quick
study's default) is generated and built in a temporary folder. An IQL policy is trained
briefly on its ``sofa_shaped`` replay. Then, on ``--patients`` fresh patients:

- population: simulated under the clinicians, charted hour by hour, built to episodes (once
  per workspace, seed and size; cached and shared by every policy's truth);
- plain rollout: the same patients re-simulated with every decision left to the clinicians and
  no state computed (the cost of the simulation and charting alone);
- truth of the trained policy: the same patients with the policy deciding from the build's
  state function at every decision time.

- lockstep: the truths of ``--lockstep`` trained policies (the first one and short runs with
  other seeds) in lockstep, sharing the state function's calls as the study's truth phase does
  (``truth.lockstep``); the first policy's truth must be the one it has alone.

Target (issue 11): the truth of one trained policy on 2,000 patients in at most 3 minutes on
2 cores (population included, as a first call pays it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--world-stays", type=int, default=2000)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lockstep", type=int, default=3, help="policies in lockstep (0: skip)")
    args = ap.parse_args()

    import torch

    from sepsisrl.dataset.builder import build
    from sepsisrl.dataset.config import load_build_config
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.trainer import train
    from sepsisrl.synth.world import generate_world
    from sepsisrl.truth.harness import compute_truth, compute_truths, population_for
    from sepsisrl.truth.policies import Clinicians, world_policy
    from sepsisrl.truth.rollout import rollout_population
    from sepsisrl.truth.world import TruthContext

    torch.set_num_threads(2)
    calls = _count_state_calls()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = args.workspace
        if ws is None:
            t = time.perf_counter()
            generate_world(root / "raw", args.world_stays, seed=0)
            build(root / "raw", root / "ws", load_build_config())
            ws = root / "ws"
            print(
                f"setup: world of {args.world_stays} stays built in {time.perf_counter() - t:.1f} s"
            )
        cfg = load_train_config(overrides={"algo": "iql", "steps": args.train_steps, "seed": 0})
        run = train(ws / "replay" / "sofa_shaped", cfg, root / "run").run_dir
        ctx = TruthContext.load(ws)
        cache = root / "populations"

        t = time.perf_counter()
        pop = population_for(ctx, args.patients, args.seed, cache=cache)
        t_pop = time.perf_counter() - t
        episodes = pop.episodes().num_rows

        t = time.perf_counter()
        rollout_population(ctx, pop, Clinicians(), root / "plain")
        t_plain = time.perf_counter() - t

        policy = world_policy(None, run, None, ctx.feature_names, 25, 0, workspace=ws)
        t = time.perf_counter()
        calls.update(calls=0, seconds=0.0)
        doc = compute_truth(ws, policy, root / "truth", args.patients, args.seed, ctx=ctx,
                            population=pop)  # fmt: skip
        t_truth = time.perf_counter() - t
        calls_truth = dict(calls)

        t_lock, same, calls_lock = None, None, None
        if args.lockstep > 1:
            policies = [world_policy(None, run, None, ctx.feature_names, 25, 0, workspace=ws)]
            for k in range(1, args.lockstep):
                other = load_train_config(
                    overrides={"algo": "iql", "steps": args.train_steps, "seed": k}
                )
                r = train(ws / "replay" / "sofa_shaped", other, root / f"run{k}").run_dir
                policies.append(world_policy(None, r, None, ctx.feature_names, 25, 0, workspace=ws))
            t = time.perf_counter()
            calls.update(calls=0, seconds=0.0)
            docs = compute_truths(
                ws, [(p, root / f"lock{i}") for i, p in enumerate(policies)], args.patients,
                args.seed, ctx=ctx, population=pop,
            )  # fmt: skip
            t_lock = time.perf_counter() - t
            calls_lock = dict(calls)

            def strip(d):
                return json.dumps({k: v for k, v in d.items() if k != "seconds"}, sort_keys=True)

            same = strip(docs[0]) == strip(doc)

    n = args.patients
    rows = [
        ("population (clinicians, charted, built to episodes)", t_pop),
        ("plain rollout of the same patients (no states)", t_plain),
        ("truth of the trained IQL policy (states at every decision)", t_truth),
        ("first truth call in all (population + policy)", t_pop + t_truth),
    ]
    print(f"\n{n} fresh patients, {episodes} cohort episodes, {doc['decisions']} decisions")
    print(f"{'phase':62s} {'seconds':>8s} {'patients/s':>11s}")
    for name, sec in rows:
        print(f"{name:62s} {sec:8.1f} {n / sec:11.1f}")
    print(f"  state function: {calls_truth['calls']} calls, {calls_truth['seconds']:.1f} s")
    if t_lock is not None:
        per = t_lock / args.lockstep
        print(f"{f'truth of {args.lockstep} trained policies in lockstep':62s} {t_lock:8.1f}")
        print(f"  per policy {per:.1f} s against {t_truth:.1f} s alone: {t_truth / per:.2f}x; "
              f"the first policy's truth identical to its truth alone: {same}")  # fmt: skip
        print(f"  state function: {calls_lock['calls']} shared calls, "
              f"{calls_lock['seconds']:.1f} s")  # fmt: skip
    print(
        f"\ntrue 90-day mortality: policy {doc['mortality_90d']['mean']:.3f} "
        f"{doc['mortality_90d']['ci95']}, clinicians {doc['clinicians']['mortality_90d']['mean']:.3f}"
    )
    print(json.dumps({
        "patients": n, "episodes": episodes, "decisions": doc["decisions"],
        "population_s": round(t_pop, 2), "plain_rollout_s": round(t_plain, 2),
        "truth_s": round(t_truth, 2), "first_call_s": round(t_pop + t_truth, 2),
        "target_s": 180, "meets_target": t_pop + t_truth <= 180,
        "lockstep": args.lockstep, "lockstep_s": round(t_lock, 2) if t_lock else None,
        "lockstep_identical": same,
        "state_calls": calls_truth, "state_calls_lockstep": calls_lock,
    }))  # fmt: skip


def _count_state_calls() -> dict:
    """Counts the state function's calls and the seconds spent in them (the last call of each
    rollout, over all its decisions, included): the fixed cost per call is what merging the
    simulation batches' and the lockstep policies' requests saves (docs/truth.md)."""
    from sepsisrl.truth.online import OnlineStateFunction

    counts = {"calls": 0, "seconds": 0.0}
    inner = OnlineStateFunction.__call__

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(self, *args, **kwargs)
        finally:
            counts["calls"] += 1
            counts["seconds"] = round(counts["seconds"] + time.perf_counter() - started, 2)

    OnlineStateFunction.__call__ = timed
    return counts


if __name__ == "__main__":
    main()
