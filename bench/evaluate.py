"""Benchmark of `sepsisrl evaluate`: one policy, full evaluation, a 2,600-episode test split.

Usage:  python bench/evaluate.py [--test-episodes 2600] [--train-transitions 140000]
                                 [--device cpu [--device cuda ...]]

With several ``--device``s the same run is evaluated on each (``evaluate.device``: where the
behaviour model trains and the linear FQE solves), the later ones with the first one's
behaviour model; the largest difference of the FQE estimate and CI from the first device's
is printed (rounding: the GPU path is not bit-identical).

A replay folder of the model card's shape is generated (62 named features, 25 actions,
12-step episodes, 140k train transitions; clinicians' actions drawn from a state-dependent
softmax so the behaviour model has something to learn), an IQL policy is trained briefly, and
the whole evaluation is timed with the default settings: behaviour model (two candidates),
FQE, WIS with 2,000 patient-bootstrap resamples, per-decision WIS, ESS, agreement, support,
safety flags, subgroups, heatmaps and the case table. Target (issue 5): <= 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STEPS = 12


def write_split(
    folder: Path,
    split: str,
    n_episodes: int,
    rng: np.random.Generator,
    W: np.ndarray,
    names,
    n_base: int,
):
    n = n_episodes * STEPS
    states = rng.standard_normal((n, len(names))).astype(np.float32)
    # the missingness flags after the base features are 0 or 1, as the build writes them
    states[:, n_base:] = rng.random((n, len(names) - n_base)) < 0.2
    logits = states @ W
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    actions = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    stay = np.repeat(
        np.arange(n_episodes) + {"train": 0, "validation": 10**6, "test": 2 * 10**6}[split], STEPS
    )
    step = np.tile(np.arange(STEPS), n_episodes).astype(np.int16)
    done = step == STEPS - 1
    survived = rng.random(n_episodes) < 1 / (1 + np.exp(-states[done][:, 0]))
    reward_eval = np.zeros(n, np.float32)
    reward_eval[done] = np.where(survived, 15.0, -15.0)
    cols = {"subject_id": stay, "stay_id": stay, "step": step, "action": actions.astype(np.int16),
            "reward": reward_eval, "done": done}  # fmt: skip
    cols.update({f"s_{nm}": states[:, j] for j, nm in enumerate(names)})
    cols["reward_eval"] = reward_eval
    cols["sofa"] = rng.integers(0, 15, n).astype(np.int16)
    pq.write_table(pa.table(cols), folder / f"replay_{split}.parquet")
    return n


def make_workspace(root: Path, train_transitions: int, test_episodes: int) -> Path:
    from sepsisrl.dataset.config import load_build_config

    cfg = load_build_config()
    names = cfg.feature_names
    rng = np.random.default_rng(0)
    W = rng.standard_normal((len(names), 25)).astype(np.float32) * 0.3
    replay = root / "replay" / "bench"
    replay.mkdir(parents=True)
    counts = {}
    for split, episodes in (
        ("train", train_transitions // STEPS),
        ("validation", test_episodes),
        ("test", test_episodes),
    ):
        counts[split] = {
            "n_episodes": episodes,
            "n_transitions": write_split(replay, split, episodes, rng, W, names, len(cfg.features)),
        }
    meta = {"schema_version": "1", "state_dim": len(names), "n_actions": 25, "feature_names": names,
            "action_labels": [f"a{i}" for i in range(25)], "reward": {"variant": "bench"}, "gamma": 0.99,
            "splits": counts, "preprocessing": "features/preprocessing.json"}  # fmt: skip
    (replay / "meta.json").write_text(json.dumps(meta))
    base = [f.name for f in cfg.features]
    (root / "features").mkdir()
    prep = {"schema_version": "1", "order": base, "features": {
        n: {"median": 0.0, "clip_low": -10.0, "clip_high": 10.0, "mean": 0.0, "std": 1.0, "transform": "identity"}
        for n in base}}  # fmt: skip
    (root / "features" / "preprocessing.json").write_text(json.dumps(prep))
    return replay


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--test-episodes", type=int, default=2600)
    ap.add_argument("--train-transitions", type=int, default=140_000)
    ap.add_argument("--device", action="append", default=None,
                    help="cpu (default) or cuda[:N]; repeat to compare devices")  # fmt: skip
    args = ap.parse_args()
    devices = args.device or ["cpu"]
    import dataclasses

    from sepsisrl.ope.behaviour import BehaviourModel
    from sepsisrl.ope.evaluate import EvalConfig, evaluate
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        replay = make_workspace(root, args.train_transitions, args.test_episodes)
        cfg = load_train_config(overrides={"steps": 200, "log_every": 100, "checkpoint_every": 100})
        run = train(replay, cfg, root / "runs" / "iql").run_dir
        docs, walls, behaviour = [], [], None
        for device in devices:
            t0 = time.perf_counter()
            cfg = dataclasses.replace(EvalConfig(), device=device)
            out_dir = root / "eval" / f"iql-{device.replace(':', '')}"
            docs.append(evaluate(run, replay, out_dir, kind="run", final=True, cfg=cfg,
                                 behaviour=behaviour))  # fmt: skip
            walls.append(time.perf_counter() - t0)
            behaviour = behaviour or BehaviourModel.load(out_dir / "behaviour")
        doc, wall = docs[0], walls[0]
    print(f"test split: {doc['episodes']:,} episodes, {doc['decisions']:,} decisions; "
          f"train {args.train_transitions:,} transitions")  # fmt: skip
    print(f"full evaluation of one policy: {wall:.1f} s "
          f"(FQE {doc['fqe']['model']} ({doc['fqe'].get('basis')} basis, "
          f"{doc['fqe'].get('point_estimate')}), {doc['fqe']['members']} members x {doc['fqe']['horizon']} "
          f"iterations, converged={doc['fqe']['converged']}, "
          f"{doc['importance_sampling']['bootstrap']['resamples']} bootstrap resamples)")  # fmt: skip
    print(f"  {'phase (device ' + ', '.join(devices) + ')':38s} "
          + " ".join(f"{d:>8s}" for d in devices))  # fmt: skip
    for part in doc["timings_seconds"]:
        print(f"  {part:38s} " + " ".join(f"{d['timings_seconds'].get(part, 0.0):6.1f} s"
                                          for d in docs))  # fmt: skip
    for device, other in zip(devices[1:], docs[1:], strict=True):
        fqe = {k: (doc["estimates_ungated"]["fqe"][k], other["estimates_ungated"]["fqe"][k])
               for k in ("estimate", "ci_low", "ci_high")}  # fmt: skip
        worst = max(abs(a - b) for a, b in fqe.values() if a is not None and b is not None)
        print(
            f"  {device} vs {devices[0]}: FQE estimate {fqe['estimate'][1]:.6f} vs "
            f"{fqe['estimate'][0]:.6f}, largest difference of estimate/CI {worst:.2e}"
        )
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    record = {"seconds": wall, "timings": doc["timings_seconds"], "episodes": doc["episodes"],
              "devices": {dv: {"seconds": w, "timings": d["timings_seconds"],
                               "fqe": d["estimates_ungated"]["fqe"]}
                          for dv, w, d in zip(devices, walls, docs, strict=True)}}  # fmt: skip
    (out / "evaluate.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
