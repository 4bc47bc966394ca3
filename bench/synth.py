"""Benchmark of `sepsisrl synth`: stays/s, rows/s and peak RSS at default charting density.

Usage:  python bench/synth.py [--sizes 1000 10000] [--workers 1 0] [--seed 0] [--workdir DIR]

Each size runs, once per ``--workers`` value (1: every chunk in the writing process; 0: the
default, one worker process per CPU core up to 4, for worlds of at least
``POOL_MIN_CHUNKS`` chunks), in a fresh Python process so that its peak resident memory is its
own; the worker processes' largest peak and the CPU seconds of all processes are printed too,
and whether every file is the same bytes as with the first ``--workers`` value.
Targets (issue 2): 10k stays in <= 5 minutes on a 2-core machine; peak RSS <= 2 GB and flat
in N (the world is written in chunks).
"""

from __future__ import annotations

import argparse
import hashlib
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


def run_one(n_stays: int, seed: int, workdir: Path, workers: int) -> dict:
    from sepsisrl.synth.parallel import synth_workers
    from sepsisrl.synth.world import generate_world

    out = workdir / f"world_{n_stays}"
    t0 = time.perf_counter()
    summary = generate_world(out, n_stays, seed=seed, overwrite=True, workers=workers)
    wall = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = sum(v for k, v in summary.rows.items() if not k.startswith("d_"))
    size_mb = sum(p.stat().st_size for p in out.rglob("*.csv.gz")) / 1e6
    digest = hashlib.sha256()
    for tree in (out, summary.truth_dir):
        for p in sorted(tree.rglob("*")):
            if p.is_file():
                digest.update(p.name.encode() + p.read_bytes())
    shutil.rmtree(out)
    shutil.rmtree(summary.truth_dir)
    return {
        "stays": n_stays,
        "workers": workers,
        "worker_processes": synth_workers(workers),
        "seconds": round(wall, 1),
        "cpu_seconds": round(sum(r.ru_utime + r.ru_stime for r in (own, children)), 1),
        "sha256": digest.hexdigest(),
        "stays_per_second": round(n_stays / wall, 1),
        "rows": rows,
        "rows_per_second": round(rows / wall),
        "chartevents_rows": summary.rows["chartevents"],
        "chartevents_rows_per_stay": round(summary.rows["chartevents"] / n_stays),
        "csv_gz_mb": round(size_mb, 1),
        "peak_rss_mb": round(own.ru_maxrss / 1024),
        "worker_peak_rss_mb": round(children.ru_maxrss / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--one-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sepsisrl-bench-synth-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_one(args.one, args.seed, workdir, args.one_workers)))
        return
    results = []
    for n in args.sizes:
        first = None
        for workers in args.workers:
            cmd = [sys.executable, __file__, "--one", str(n), "--one-workers", str(workers),
                   "--seed", str(args.seed), "--workdir", str(workdir)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            first = first or r["sha256"]
            r["same_bytes_as_first"] = r["sha256"] == first
            results.append(r)
            print(
                f"{r['stays']:>6} stays  workers {workers} ({r['worker_processes']})  "
                f"{r['seconds']:>7.1f} s  {r['cpu_seconds']:>6.1f} CPU s  "
                f"{r['stays_per_second']:>7.1f} stays/s  {r['rows_per_second']:>10,} rows/s  "
                f"{r['chartevents_rows_per_stay']:>5} chartevents rows/stay  "
                f"peak RSS {r['peak_rss_mb']:>5} MB (workers {r['worker_peak_rss_mb']} MB)  "
                f"({r['rows']:,} rows, {r['csv_gz_mb']} MB csv.gz)  "
                f"same bytes: {r['same_bytes_as_first']}",
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
