"""What the truth harness's action interface alone costs: the clinicians' own decisions, held.

Usage:  python bench/interface_handicap.py --workspace WS --run BC_RUN [--patients 1000]
                                           [--seed 0] [--out bench/results/interface_handicap.json]

In the synthetic world the clinicians decide every hour, on what they see, including a
bedside volume assessment the tables never show. A policy measured by `sepsisrl truth`
decides every 4 hours from the build's state, and its action is held for the window as one
representative dose per bin. This benchmark measures that interface by itself: on the same
fresh patients (paired), it compares the clinicians with a policy that, at each 4-hour
decision, draws an action from the clinicians' own action distribution as estimated by a
behaviour-cloning run (``--run``, e.g. the study's BC baseline) and holds it. Without the
interface the two would be close (up to the error of the behaviour estimate); the paired
difference is the handicap any 4-hourly policy must make up before it can match the
clinicians in truth. The BC run's greedy action is measured too. RESEARCH ONLY.
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
    ap.add_argument("--workspace", type=Path, required=True, help="a synthetic-world workspace")
    ap.add_argument("--run", type=Path, required=True, help="a behaviour-cloning run folder")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="truth population seed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from sepsisrl.truth.harness import compute_truth
    from sepsisrl.truth.policies import held_sample, world_policy
    from sepsisrl.truth.world import TruthContext

    torch.set_num_threads(1)
    ctx = TruthContext.load(args.workspace)
    policies = {  # the study's truth phase measures the first as `clinicians_held_4h`
        "bc_sampled_and_held": held_sample(args.run, ctx.feature_names, args.seed, args.workspace),
        "bc_greedy": world_policy(
            None,
            args.run,
            None,
            ctx.feature_names,
            ctx.n_actions,
            args.seed,
            workspace=args.workspace,
        ),
    }
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pol in policies.items():
            t = time.perf_counter()
            doc = compute_truth(args.workspace, pol, Path(tmp) / name, args.patients, args.seed,
                                ctx=ctx)  # fmt: skip
            d = doc["difference_from_clinicians"]
            rows[name] = {
                "value": doc["value"], "mortality_90d": doc["mortality_90d"],
                "minus_clinicians": {"value": d["value"], "mortality_90d": d["mortality_90d"]},
                "seconds": round(time.perf_counter() - t, 1),
            }  # fmt: skip
            clin = doc["clinicians"]
            v, m = d["value"], d["mortality_90d"]
            print(f"{name:22s} value {doc['value']['mean']:.2f}  mortality "
                  f"{doc['mortality_90d']['mean']:.3f}  minus clinicians: value {v['mean']:+.2f} "
                  f"[{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}], mortality {m['mean']:+.3f} "
                  f"[{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]", flush=True)  # fmt: skip
    print(f"clinicians             value {clin['value']['mean']:.2f}  mortality "
          f"{clin['mortality_90d']['mean']:.3f}  ({doc['episodes']} episodes, paired)")  # fmt: skip
    out = {"workspace": str(args.workspace), "run": str(args.run), "patients": args.patients,
           "seed": args.seed, "episodes": doc["episodes"], "clinicians": clin, "policies": rows}  # fmt: skip
    print(json.dumps(out))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
