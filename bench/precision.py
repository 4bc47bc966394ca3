"""What bf16 matrix products (``precision: bf16``, opt-in) change: speed, the policy, its value.

Usage:  python bench/precision.py [--workspace /tmp/precision_ws] [--stays 2000] [--epochs 30]
                                  [--seeds 42 123] [--truth-patients 1000]
                                  [--out bench/results/precision.json]

On a synthetic world (simulated and built into ``--workspace`` unless already there), the model
card's selected configuration (``iql_sofa_shaped_conservative_safe``: sofa-shaped reward, the
conservative learning rates, expectile 0.6, temperature 2) is trained for ``--epochs`` with
each seed in fp32 and in bf16, each run alone, single-threaded, as a study worker trains it.
Reported per seed:

  steps_per_second    each run's own training speed (not a paired measurement: runs one after
                      another, whatever else the machine does; bench/stack.py measures speed)
  agreement_with_fp32 share of VALIDATION decisions where the bf16 policy's greedy action is
                      the fp32 policy's (same seed); next to it the agreement of the fp32
                      policies of two seeds - the variation precision is to be compared with
  fqe                 the validation FQE estimate and 95% CI (``sepsisrl evaluate``)
  truth               the true value of each policy on ``--truth-patients`` fresh patients of
                      the world (``sepsisrl truth``); ``--truth-patients 0`` skips it

Figures are computed, never typed: ``bench/results/precision.json`` holds every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

PRESET = {"algo": "iql", "iql.actor_lr": 5.0e-5, "iql.critic_lr": 1.0e-4,
          "iql.value_lr": 1.0e-4, "iql.expectile": 0.6, "iql.temperature": 2.0}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=Path("/tmp/precision_ws"))
    ap.add_argument("--stays", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 123])
    ap.add_argument("--truth-patients", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("bench/results/precision.json"))
    args = ap.parse_args()

    from sepsisrl.contracts import EvaluationMetrics
    from sepsisrl.rl.data import load_meta, load_split
    from sepsisrl.rl.policies import TrainedPolicy
    from sepsisrl.study.config import load_study_config
    from sepsisrl.study.runner import Study, _ensure_eval, _ensure_run, _ensure_truth

    torch.set_num_threads(1)
    ws = args.workspace.absolute()
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "study").mkdir(exist_ok=True)
    cfg = load_study_config("quick", overrides={
        "synth.stays": args.stays, "workers": 1, "train.epochs": args.epochs,
        "train.steps": None, "train.log_every": 100, "train.checkpoint_every": 100000,
    })  # fmt: skip
    st = Study(ws, cfg, lambda phase, d, t, m: print(f"  {phase}: {m}", flush=True))
    st.data(None)
    st.behaviour()
    reward = "sofa_shaped"
    meta = load_meta(st.replay_dir(reward))
    states = load_split(st.replay_dir(reward), "validation", "reward", meta).states.numpy()
    runs: dict[tuple[int, str], dict] = {}
    for seed in args.seeds:
        for precision in ("fp32", "bf16"):
            run, tspec = st.train_unit(f"card_{precision}", reward, seed,
                                       {**PRESET, "precision": precision})  # fmt: skip
            started = time.perf_counter()
            _ensure_run(tspec)
            seconds = time.perf_counter() - started
            lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            rate = float(np.median([x["steps_per_second"] for x in lines]))
            out, espec = st.eval_unit(str(run), "run", reward, f"{run.name}-validation", False)
            _ensure_eval(espec)
            doc = EvaluationMetrics.load(out / "metrics.json").model_dump(mode="json")
            fqe = doc["metrics"]
            row = {
                "run": str(run.relative_to(ws)), "steps_per_second": rate,
                "train_seconds": round(seconds, 1),
                "fqe": {"mean": fqe.get("fqe_mean"), "ci95": [fqe.get("fqe_ci_low"),
                                                             fqe.get("fqe_ci_high")]},
                "actions": TrainedPolicy(run).act(states),
            }  # fmt: skip
            if args.truth_patients:
                tout = ws / "truth" / "precision" / run.name
                _ensure_truth({"workspace": str(ws), "kind": "run", "policy": str(run),
                               "out": str(tout), "patients": args.truth_patients, "seed": 0,
                               "key": "precision-bench"})  # fmt: skip
                truth = json.loads((tout / "truth.json").read_text())
                row["truth"] = {"value": truth["value"]["mean"],
                                "ci95": truth["value"]["ci95"],
                                "mortality_90d": truth["mortality_90d"]["mean"]}  # fmt: skip
            runs[seed, precision] = row
            print(f"seed {seed} {precision}: {rate:.0f} steps/s, FQE {row['fqe']['mean']:.3f}"
                  + (f", truth {row['truth']['value']:.3f}" if "truth" in row else ""),
                  flush=True)  # fmt: skip
    per_seed = {}
    for seed in args.seeds:
        a, b = runs[seed, "fp32"], runs[seed, "bf16"]
        per_seed[str(seed)] = {
            "agreement_with_fp32": float(np.mean(a["actions"] == b["actions"])),
            "fp32": {k: v for k, v in a.items() if k != "actions"},
            "bf16": {k: v for k, v in b.items() if k != "actions"},
        }
    seeds = args.seeds
    reference = (
        float(np.mean(runs[seeds[0], "fp32"]["actions"] == runs[seeds[1], "fp32"]["actions"]))
        if len(seeds) > 1 else None
    )  # fmt: skip
    doc = {
        "meta": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "stays": args.stays,
            "epochs": args.epochs,
            "validation_decisions": len(states),
            "threads": 1,
            "configuration": PRESET,
        },
        "per_seed": per_seed,
        "fp32_agreement_between_seeds": reference,
    }
    for seed, row in per_seed.items():
        print(f"seed {seed}: greedy agreement of bf16 with fp32 {row['agreement_with_fp32']:.3f}")
    if reference is not None:
        print(f"fp32 policies of seeds {seeds[0]} and {seeds[1]} agree on {reference:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
