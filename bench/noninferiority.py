"""Is a study's exported policy non-inferior to the clinicians in truth? (issue 12)

Usage:  python bench/noninferiority.py --workspace WS [--chunks 4] [--patients 5000]
                                       [--margin 0.01] [--interface held] [--reference]
                                       [--workers 1] [--out FILE]

A study's own truth phase (``study/truth.json``) rolls every policy out over one population
of fresh patients (1,000 in the quick profile: about 360 episodes), so the paired 95 % CI of
a mortality difference there is about +-3 percentage points wide: too wide to tell a policy
that is no worse than the clinicians from one that is 2 points worse. This benchmark measures
the exported policy (the model repository of ``study/final.json`` ``release``, as published) on
``--chunks`` further populations of ``--patients`` fresh patients each, seeds 1, 2, ... (the
study's truth used seed 0, so these patients never took part in training, selection or the
study's truth), paired patient by patient with the clinicians' own outcomes (common random
numbers), and pools the paired per-episode differences of every chunk into one mean and 95 %
CI. A process simulates one chunk at a time, so its memory stays that of one chunk (about
3 GB for 5,000 patients); ``--workers N`` measures N chunks at once in N processes, with the
same figures as one process (each chunk is seeded on its own and pooled in seed order).

With ``--reference`` the same patients are also rolled out (in lockstep) under
``clinicians_held_4h``, the study's interface reference: the clinicians' own actions, drawn
from the behaviour-cloning baseline's probabilities at each 4-hour decision and held. It
measures what the action interface alone costs, the handicap every 4-hourly policy starts with.

The criterion (issue 12): the upper end of the paired 95 % CI of the 90-day mortality
difference (policy - clinicians) at most ``--margin`` (+1 percentage point).

Every chunk is written to ``<workspace>/truth/noninferiority/<policy>/s<seed>-n<patients>[-<interface>]``
(``truth.json``, ``episodes.parquet``); a chunk whose ``truth.json`` already exists for the
same build fingerprint is reused, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sepsisrl.truth.harness import NONINFERIORITY_MARGIN


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workspace", type=Path, required=True, help="a finished study's workspace")
    ap.add_argument("--run", type=Path, default=None, help="a run folder instead of the release")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--patients", type=int, default=5000, help="fresh patients per chunk")
    ap.add_argument(
        "--margin",
        type=float,
        default=NONINFERIORITY_MARGIN,
        help="non-inferiority margin (default: the card's, release/bundle.py)",
    )
    ap.add_argument("--interface", default="held", help="held (the study's default) | titrated")
    ap.add_argument(
        "--reference",
        action="store_true",
        help="also measure clinicians_held_4h (what the action interface alone costs)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="chunks measured in parallel processes (about 3 GB each at 5,000 patients)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from sepsisrl.truth.harness import mean_ci

    ws = args.workspace
    source = args.run or exported_bundle(ws)
    if args.reference:
        behaviour_cloning_run(ws)  # fails early, naming final.json, when there is none
    seeds = list(range(1, args.chunks + 1))
    task = (ws, args.run, args.patients, args.interface, args.reference)
    started = time.perf_counter()
    diffs: dict[str, tuple[list, list]] = {}
    per_chunk: dict[str, list] = {}
    names: dict[str, str] = {}
    build = ""
    if args.workers > 1:  # chunks in parallel processes, pooled in seed order below
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // args.workers)  # the cores shared out
        with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
            answers = list(pool.map(pinned_chunk, [(threads, (*task, seed)) for seed in seeds]))
    else:
        answers = (measure_chunk((*task, seed)) for seed in seeds)
    for answer in answers:
        build = answer["build"]
        for k, (died, value, chunk) in answer["policies"].items():
            names[k] = answer["names"][k]
            diffs.setdefault(k, ([], []))
            diffs[k][0].append(died)
            diffs[k][1].append(value)
            per_chunk.setdefault(k, []).append(chunk)
            d = chunk["mortality_difference"]
            print(
                f"{k}, chunk seed {chunk['seed']}: {chunk['episodes']} episodes, mortality "
                f"difference {100 * d['mean']:+.2f} pts [{100 * d['ci95'][0]:+.2f}, "
                f"{100 * d['ci95'][1]:+.2f}] ({chunk['seconds']} s)",
                flush=True,
            )
    result = {
        "workspace": str(ws),
        "policy_source": str(source),
        "interface": args.interface,
        "patients": args.patients * args.chunks,
        "seeds": seeds,
        "workers": args.workers,
        "margin": args.margin,
        "build_fingerprint": build,
        "policies": {},
    }
    for k in diffs:
        m = mean_ci(np.concatenate(diffs[k][0]))
        v = mean_ci(np.concatenate(diffs[k][1]))
        upper = m["ci95"][1]
        result["policies"][k] = {
            "policy": names[k],
            "episodes": int(sum(c["episodes"] for c in per_chunk[k])),
            "mortality_policy": _pooled(per_chunk[k], "mortality_policy"),
            "mortality_clinicians": _pooled(per_chunk[k], "mortality_clinicians"),
            "mortality_difference": m,
            "value_difference": v,
            "non_inferior": bool(upper <= args.margin),
            "chunks": per_chunk[k],
        }
        print(
            f"{k} ({names[k]}), pooled over {result['policies'][k]['episodes']} "
            f"episodes ({result['patients']} patients): mortality difference "
            f"{100 * m['mean']:+.2f} pts [{100 * m['ci95'][0]:+.2f}, {100 * upper:+.2f}]; "
            f"value difference {v['mean']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]; "
            f"non-inferior at +{100 * args.margin:.1f} pts: "
            f"{'yes' if result['policies'][k]['non_inferior'] else 'NO'}"
        )
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def pinned_chunk(job: tuple[int, tuple]) -> dict:
    """``measure_chunk`` in a worker process, with its share of the cores as torch and BLAS
    threads (as a study's workers run; the chunk's numbers do not depend on it)."""
    from sepsisrl.threads import limited_threads

    threads, task = job
    with limited_threads(threads):
        return measure_chunk(task)


def measure_chunk(task: tuple) -> dict:
    """One chunk (population seed): the truths it lacks, computed in lockstep, and each
    policy's paired per-episode differences from the clinicians' own outcomes."""
    from sepsisrl.truth.harness import (
        clinician_reference,
        compute_truths,
        mean_ci,
        population_for,
    )
    from sepsisrl.truth.policies import held_sample, world_policy
    from sepsisrl.truth.world import TruthContext

    ws, run, patients, interface, reference, seed = task
    t0 = time.perf_counter()
    bundle = None if run else exported_bundle(ws)
    ctx = TruthContext.load(ws)
    source = run or bundle
    policies = {
        "exported": world_policy(
            None, run, bundle, ctx.feature_names, ctx.n_actions, 0, workspace=ws
        )
    }
    roots = {"exported": ws / "truth" / "noninferiority" / source.name}
    if reference:  # the clinicians' own (behaviour-cloned) actions, held for 4 hours, seeded
        # per chunk as the study seeds it with its truth seed
        roots["clinicians_held_4h"] = ws / "truth" / "noninferiority" / "clinicians_held_4h"
        policies["clinicians_held_4h"] = held_sample(
            behaviour_cloning_run(ws), ctx.feature_names, seed, ws
        )
    build = ctx.build_fingerprint()
    suffix = "" if interface == "held" else f"-{interface}"
    outs = {k: root / f"s{seed}-n{patients}{suffix}" for k, root in roots.items()}
    missing = [k for k, out in outs.items() if not _reusable(out, build, interface)]
    if missing:  # in lockstep (truth/lockstep.py): each outcome the one it has alone
        jobs = [(policies[k], outs[k]) for k in missing]
        compute_truths(ws, jobs, patients, seed, ctx=ctx, interface=interface)
    pop = population_for(ctx, patients, seed)
    ref = clinician_reference(pop, ctx)
    ref_died = ref["died_90d"].to_numpy(zero_copy_only=False).astype(float)
    answer: dict = {"build": build, "names": {}, "policies": {}}
    for k, out in outs.items():
        ep = pq.read_table(out / "episodes.parquet").sort_by("stay_id")
        if ep["stay_id"].to_pylist() != ref["stay_id"].to_pylist():
            raise SystemExit(f"{out}: its episodes are not population seed {seed}'s")
        died = ep["died_90d"].to_numpy(zero_copy_only=False).astype(float) - ref_died
        value = ep["return_eval"].to_numpy() - ref["return_eval"].to_numpy()
        chunk = {
            "seed": seed,
            "episodes": len(died),
            "mortality_policy": float((died + ref_died).mean()),
            "mortality_clinicians": float(ref_died.mean()),
            "mortality_difference": mean_ci(died),
            "value_difference": mean_ci(value),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        answer["names"][k] = policies[k].name
        answer["policies"][k] = (died, value, chunk)
    return answer


def _pooled(chunks: list[dict], key: str) -> float:
    """The episode-weighted mean of ``key`` over the chunks."""
    n = np.array([c["episodes"] for c in chunks], dtype=float)
    return float((n * np.array([c[key] for c in chunks])).sum() / n.sum())


def behaviour_cloning_run(ws: Path) -> Path:
    """The study's behaviour-cloning baseline run (``study/final.json`` ``baselines``)."""
    final = json.loads((ws / "study" / "final.json").read_text())
    bc = next(
        (b for b in final["baselines"] if b["name"] == "behaviour_cloning" and b["kind"] == "run"),
        None,
    )
    if bc is None:
        raise SystemExit(f"{ws}/study/final.json: no behaviour_cloning run among the baselines")
    return ws / bc["run"]


def exported_bundle(ws: Path) -> Path:
    """The model repository the study exported (``study/final.json`` ``release``)."""
    final = ws / "study" / "final.json"
    if not final.is_file():
        raise SystemExit(f"{final}: not found; run the study first (sepsisrl run)")
    release = json.loads(final.read_text()).get("release")
    if not release:
        raise SystemExit(f"{final}: no release (did the study export a policy?)")
    return ws / release if not Path(release).is_absolute() else Path(release)


def _reusable(out: Path, build: str, interface: str) -> dict | None:
    path = out / "truth.json"
    if not path.is_file() or not (out / "episodes.parquet").is_file():
        return None
    doc = json.loads(path.read_text())
    same = doc.get("fingerprints", {}).get("build") == build and doc.get("interface") == interface
    return doc if same else None


if __name__ == "__main__":
    main()
