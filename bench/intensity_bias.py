"""Do a study's offline estimates follow the policies' treatment intensity? (issue 12)

Usage:  python bench/intensity_bias.py --workspace WS [--workspace WS2 ...] [--split validation]
                                       [--estimator fqe] [--out FILE]

Reads a finished synthetic-world study (`sepsisrl run`): each policy's true value and
estimates (`study/truth.json`) and the actions it chose on the evaluated split's states (the
evaluation's `cases.csv`). Prints, per policy, its true value, the estimate, the estimate's
error and its treatment intensity (mean vasopressor bin, mean IV-fluid bin, share of
decisions with neither), then the Spearman correlation of the error, of the truth and of the
estimate with each intensity measure (`truth.compare.error_by_intensity`, which studies
record in `study/truth.json` since it was added; this recomputes it for older workspaces
without rerunning anything). An error that follows intensity is the signature of unobserved
confounding in the clinicians' logs (docs/evaluate.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workspace", type=Path, action="append", required=True)
    ap.add_argument("--split", choices=["validation", "test"], default="validation")
    ap.add_argument("--estimator", default="fqe")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = ap.parse_args()

    import pyarrow.csv as pacsv

    from sepsisrl.truth.compare import compare, intensity_of
    from sepsisrl.truth.world import TruthContext

    results = {}
    for ws in args.workspace:
        path = ws / "study" / "truth.json"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (a synthetic-world study with its truth phase)")
        doc = json.loads(path.read_text())
        n_fluid = TruthContext.load(ws).stats.n_fluid_bins
        rows, table = [], []
        for p in doc["policies"]:
            rel, est = p.get(f"{args.split}_eval"), p.get(f"{args.split}_estimates")
            if not rel or not est:
                continue
            cases = ws / rel / "cases.csv"
            intensity = intensity_of(cases, n_fluid)
            if intensity is None:
                raise SystemExit(f"{cases}: missing or empty (the evaluation's per-decision table)")
            action = pacsv.read_csv(cases)["policy_action"].to_numpy()
            rows.append({"policy": p["name"], "truth": p["true_value"], "estimates": est,
                         "intensity": intensity})  # fmt: skip
            value = est.get(args.estimator, [None])[0]
            table.append(
                (p["name"], p["true_value"], value, intensity, float(np.mean(action == 0)))
            )
        entry = compare(rows, estimators=[args.estimator])[args.estimator]
        clin = table[0][3] if table else None
        print(f"\n{ws} ({args.split}, {args.estimator}; {len(table)} policies)")
        if clin:
            print(f"clinicians' logged actions on these states: vasopressor bin "
                  f"{clin['clinician_vaso_bin']:.2f}, fluid bin {clin['clinician_fluid_bin']:.2f}")  # fmt: skip
        print(f"{'policy':52s} {'truth':>6s} {'est.':>6s} {'error':>6s} {'vaso':>5s} "
              f"{'fluid':>5s} {'none':>5s}")  # fmt: skip
        for name, truth, value, inten, none in sorted(table, key=lambda r: -r[1]):
            v = "" if value is None else f"{value:6.2f}"
            e = "" if value is None else f"{value - truth:+6.2f}"
            print(f"{name:52s} {truth:6.2f} {v:>6s} {e:>6s} {inten['vaso_bin']:5.2f} "
                  f"{inten['fluid_bin']:5.2f} {none:5.2f}")  # fmt: skip
        print(f"Spearman with the truth {entry['spearman']}")
        for key, corr in (entry.get("error_by_intensity") or {}).items():
            print(f"  {key}: error {_f(corr['error'])}, truth {_f(corr['truth'])}, "
                  f"estimate {_f(corr['estimate'])}")  # fmt: skip
        results[str(ws)] = {"split": args.split, "estimator": args.estimator,
                            "comparison": entry, "policies": rows}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


if __name__ == "__main__":
    main()
