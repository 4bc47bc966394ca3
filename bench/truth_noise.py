"""How far a study's truth can rank its own policies: the truth's noise for `study/truth.json`.

Usage:  python bench/truth_noise.py --workspace WS [--resamples 1000] [--out FILE]

Reads a finished synthetic-world study (`sepsisrl run`): every policy's per-episode true
returns (`truth/study/<policy>/episodes.parquet`, the same truth patients for every policy)
and the estimates recorded in `study/truth.json`. Prints, per split and estimator, the
Spearman correlation with the truth beside the truth's own rank reliability
(`truth.compare.truth_noise`): the Spearman the truth reaches against its resampled self (the
ceiling of any estimator's Spearman), the estimator's Spearman against the resampled truths
(5th-95th percentile), the median paired standard error of a difference of two true values
and the Spearman an on-policy oracle would reach with as many episodes as the evaluated split
(each policy rolled out on the same m truth patients).
Studies run since this was added record the same figures in `study/truth.json` themselves;
this recomputes them for older workspaces without rerunning anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None, help="write the comparisons as JSON")
    args = ap.parse_args()

    from sepsisrl.truth.compare import compare, episode_returns

    path = args.workspace / "study" / "truth.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (a synthetic-world study with its truth phase)")
    doc = json.loads(path.read_text())
    policies = doc["policies"]
    returns = episode_returns({p["name"]: args.workspace / p["truth"] for p in policies})
    if returns is None:
        raise SystemExit(f"{args.workspace}: the policies' episodes.parquet are missing or "
                         "not on the same episodes")  # fmt: skip
    print(f"{doc['population']['patients']} truth patients, "
          f"{len(next(iter(returns.values())))} episodes, {len(policies)} policies")  # fmt: skip
    print(f"{'split':11s} {'estimator':18s} {'n':>3s} {'Spearman':>8s} {'ceiling':>8s} "
          f"{'ceil p05':>8s} {'vs resampled truth':>20s} {'paired SE':>9s} "
          f"{'oracle at the split size (p05-p95)':>36s}")  # fmt: skip
    out = {}
    for split, key in (("validation", "validation_estimates"), ("test", "test_estimates")):
        # validation: the candidate runs; test: every policy evaluated on test
        rows = [{"policy": p["name"], "truth": p["true_value"], "estimates": p[key],
                 "episodes": p.get(f"{split}_episodes") or _episodes(args.workspace, p, split)}
                for p in policies
                if p.get(key) and (split == "test" or p["role"] == "candidate")]  # fmt: skip
        result = compare(rows, returns, args.resamples)
        out[split] = result
        for est, d in result.items():
            noise = d.get("truth_noise")
            if not noise or d["spearman"] is None:
                continue
            print(f"{split:11s} {est:18s} {d['policies']:3d} {d['spearman']:8.2f} "
                  f"{noise['ceiling']:8.2f} {noise['ceiling_p05']:8.2f} "
                  f"{noise['spearman_p05']:9.2f} to {noise['spearman_p95']:5.2f} "
                  f"{noise['paired_se_median']:9.2f} {_oracle(noise.get('oracle')):>36s}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


def _episodes(workspace: Path, policy: dict, split: str) -> int | None:
    """The evaluated split's episodes, from the policy's evaluation (older truth.json files
    do not record them)."""
    rel = policy.get(f"{split}_eval")
    path = workspace / rel / "metrics.json" if rel else None
    return json.loads(path.read_text())["episodes"] if path and path.is_file() else None


def _oracle(oracle: dict | None) -> str:
    if not oracle:
        return "-"
    return f"{oracle['median']:.2f} at {oracle['episodes']} ({oracle['p05']:.2f} to {oracle['p95']:.2f})"


if __name__ == "__main__":
    main()
