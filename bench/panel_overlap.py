"""How far along its episodes the logs follow each panel policy: per-decision overlap.

Usage:  python bench/panel_overlap.py --world-seed S [--stays 2000] [--train-steps 1000]
                                      [--out FILE]

The model gate of ``sepsisrl evaluate`` asks that a policy rarely chooses an action the
clinicians take with probability < 0.01 (support mass >= 0.95), one decision at a time. A
policy can pass it and still lead, over a few decisions, where no logged episode goes: each of
its actions is plausible, their sequence is not (the over-treating ``support_most`` of the OPE
panel is the example: docs/evaluate.md, item 11). This benchmark rebuilds the panel's world and
policies (``bench/ope_panel.py``, deterministic on CPU), evaluates each evaluable panel policy on
the test split and prints, beside its support mass, the effective number of logged episodes
that still follow it at each decision position (``overlap.ess_per_decision`` of
``metrics.json``: the ESS of the cumulative importance weights), the last position at which it
is at least 10 (the WDR's ``wdr_step_ess_min``) and the trajectory ESS.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

# bench/ is the script's folder: the panel's own world, policies and arguments
from ope_panel import panel_world

EVALUABLE = ("clinician", "bc", "cql", "iql_conservative_safe", "iql_baseline",
             "support_least", "support_most")  # fmt: skip


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--world-seed", type=int, required=True)
    ap.add_argument("--stays", type=int, default=2000)
    ap.add_argument("--train-steps", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from sepsisrl.ope.evaluate import EvalConfig, evaluate

    torch.set_num_threads(1)
    threadpool_limits(1)
    started = time.perf_counter()
    step_ess_min = EvalConfig().wdr_step_ess_min
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, replay, _, panel = panel_world(root, args.world_seed, args.stays, args.train_steps)
        print(f"world {args.world_seed}: built and trained at "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        print(f"{'policy':24s} {'support':>8s} {'traj. ESS':>9s} {'followed to':>11s}  "
              "ESS at decision 1, 2, 3, ...")  # fmt: skip
        for name, spec, kind in panel:
            if name not in EVALUABLE:
                continue
            doc = evaluate(spec, replay, root / "eval" / name, kind=kind, final=True)
            ov = doc["overlap"]
            per = [float(x) for x in ov["ess_per_decision"]]
            followed = sum(1 for _ in _leading(per, step_ess_min))
            rows.append({"policy": name, "support_mass": doc["metrics"]["support_mass"],
                         "ess": ov["ess"], "nonzero_weight_share": ov["nonzero_weight_share"],
                         "ess_per_decision": per, "positions_followed": followed})  # fmt: skip
            print(
                f"{name:24s} {rows[-1]['support_mass']:8.3f} {ov['ess']:9.1f} "
                f"{followed:11d}  " + ", ".join(f"{x:.1f}" for x in per[:8]),
                flush=True,
            )
    print(f"({time.perf_counter() - started:.0f} s; 'followed to': the leading decisions whose "
          f"ESS is at least {step_ess_min:g})")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"world_seed": args.world_seed, "stays": args.stays,
                                        "step_ess_min": step_ess_min, "rows": rows},
                                       indent=2) + "\n")  # fmt: skip


def _leading(values: list[float], threshold: float):
    for v in values:
        if v < threshold:
            return
        yield v


if __name__ == "__main__":
    main()
