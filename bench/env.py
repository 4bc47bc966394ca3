"""Benchmark of the Gymnasium environment (``sepsisrl/SepsisWorld-v0``, docs/gymnasium.md).

Usage:  python bench/env.py --workspace WS [--episodes 8] [--seed 0] [--threads 1]
                            [--prefetch N] [--out FILE]

``WS`` is a built synthetic workspace (``sepsisrl run`` or ``sepsisrl build`` on a synthetic
world). The environment draws one patient at a time and simulates, charts and builds each
draw as a one-patient truth population; only the draws that enter the cohort make an episode.
Two passes over the same ``--episodes`` episodes (stream ``--seed``, the map/lactate rule
deciding):

- **cold**: a new, empty population cache, so every draw is simulated. Reported: seconds per
  episode, draws per episode (how many patients it takes to find one in the cohort), seconds
  per draw (one one-patient population: simulation, charting, build to the episodes stage)
  and the share of the time spent drawing; decisions per second of ``step``.
- **warm**: the same stream again with the cache the cold pass filled, so no patient is
  simulated again; what is left is the rollout of the decisions themselves.

With ``--prefetch N`` a third pass, **cold, prefetching**, draws the stream again into another
empty cache with the environment's ``prefetch=N`` (the next N patients drawn in a background
process while the agent acts); its seconds per draw are the time the environment waited.

The two passes must give the same episodes (same patients, decisions and returns): the
benchmark stops with an error if they do not.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def run_pass(workspace: Path, cache: Path, episodes: int, seed: int, prefetch: int = 0) -> dict:
    import numpy as np

    from sepsisrl.env import SepsisWorldEnv
    from sepsisrl.truth.policies import MapLactate

    env = SepsisWorldEnv(workspace, cache=cache, prefetch=prefetch)
    drawing = 0.0
    draw = env.population

    def timed_population(stream: int, index: int):  # the time spent drawing patients
        nonlocal drawing
        t0 = time.perf_counter()
        try:
            return draw(stream, index)
        finally:
            drawing += time.perf_counter() - t0

    env.population = timed_population
    rule = MapLactate()
    started = time.perf_counter()
    decisions, record = 0, []
    stepping = 0.0
    for e in range(episodes):
        _, info = env.reset(seed=seed) if e == 0 else env.reset()
        rewards = []
        while True:
            raw = {k: np.array([v]) for k, v in info["state_raw"].items()}
            t0 = time.perf_counter()
            _, reward, terminated, truncated, info = env.step(int(rule.decide(None, raw)[0]))
            stepping += time.perf_counter() - t0
            decisions += 1
            rewards.append(reward)
            if terminated or truncated:
                break
        record.append((info["patient"], info["steps"], round(float(sum(rewards)), 9)))
    wall = time.perf_counter() - started
    draws = env._draw  # patients drawn from the stream, in the cohort or not
    env.close()
    return {
        "episodes": episodes,
        "seconds": round(wall, 2),
        "seconds_per_episode": round(wall / episodes, 3),
        "draws": draws,
        "draws_per_episode": round(draws / episodes, 2),
        "seconds_per_draw": round(drawing / draws, 3),
        "drawing_share": round(drawing / wall, 3),
        "decisions": decisions,
        "decisions_per_second_of_step": round(decisions / stepping, 1),
        "episodes_record": record,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prefetch", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    result = {"workspace": str(args.workspace), "seed": args.seed, "threads": args.threads}
    passes = [("cold", "populations", 0), ("warm", "populations", 0)]
    if args.prefetch:
        passes.append(("cold, prefetching", "prefetched", args.prefetch))
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder, prefetch in passes:
            doc = run_pass(args.workspace, Path(tmp) / folder, args.episodes, args.seed, prefetch)
            result[name] = doc
            print(f"{name}: {doc['seconds_per_episode']:.2f} s per episode over "
                  f"{doc['episodes']} episodes ({doc['seconds']:.1f} s); "
                  f"{doc['draws_per_episode']:.2f} patients drawn per episode at "
                  f"{doc['seconds_per_draw']:.3f} s each ({doc['drawing_share']:.0%} of the "
                  f"time); {doc['decisions']} decisions, "
                  f"{doc['decisions_per_second_of_step']:.1f} per second of step()",
                  flush=True)  # fmt: skip
    for name, _, _ in passes[1:]:
        if result[name]["episodes_record"] != result["cold"]["episodes_record"]:
            raise SystemExit(f"the {name} pass did not give the cold pass's episodes")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
