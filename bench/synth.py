"""Benchmark of `sepsisrl synth`: stays/s, rows/s and peak RSS at default charting density.

Usage:  python bench/synth.py [--sizes 1000 10000] [--seed 0] [--workdir DIR]

Each size runs in a fresh Python process so that its peak resident memory is its own.
Targets (issue 2): 10k stays in <= 5 minutes on a 2-core machine; peak RSS <= 2 GB and flat
in N (the world is written in chunks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(n_stays: int, seed: int, workdir: Path) -> dict:
    from sepsisrl.synth.world import generate_world

    out = workdir / f"world_{n_stays}"
    t0 = time.perf_counter()
    summary = generate_world(out, n_stays, seed=seed, overwrite=True)
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = sum(v for k, v in summary.rows.items() if not k.startswith("d_"))
    size_mb = sum(p.stat().st_size for p in out.rglob("*.csv.gz")) / 1e6
    shutil.rmtree(out)
    shutil.rmtree(summary.truth_dir)
    return {
        "stays": n_stays,
        "seconds": round(wall, 1),
        "stays_per_second": round(n_stays / wall, 1),
        "rows": rows,
        "rows_per_second": round(rows / wall),
        "chartevents_rows": summary.rows["chartevents"],
        "chartevents_rows_per_stay": round(summary.rows["chartevents"] / n_stays),
        "csv_gz_mb": round(size_mb, 1),
        "peak_rss_mb": round(rss_mb),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sepsisrl-bench-synth-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_one(args.one, args.seed, workdir)))
        return
    results = []
    for n in args.sizes:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--seed",
                str(args.seed),
                "--workdir",
                str(workdir),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{r['stays']:>6} stays  {r['seconds']:>7.1f} s  "
            f"{r['stays_per_second']:>7.1f} stays/s  {r['rows_per_second']:>10,} rows/s  "
            f"{r['chartevents_rows_per_stay']:>5} chartevents rows/stay  "
            f"peak RSS {r['peak_rss_mb']:>5} MB  ({r['rows']:,} rows, {r['csv_gz_mb']} MB csv.gz)",
            flush=True,
        )
    meta = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "synth.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"results written to {out / 'synth.json'}")


if __name__ == "__main__":
    main()
