"""Benchmark of `sepsisrl build` on synthetic worlds, with an extrapolation to full MIMIC-IV.

Usage:  python bench/build.py [--sizes 1000 5000 10000] [--workdir DIR] [--seed 0]

For each size, a world at default charting density (MIMIC-like chartevents volume) is generated
once (kept in --workdir), then built from scratch in a fresh process: wall time, peak RSS and
chartevents rows/second, with the time of every stage and of every table's ingest.

Extrapolation to MIMIC-IV v3.1: each raw table's ingest time is scaled by its real row count
(the ingest is one scan per table, linear in rows; per-row costs are taken from the largest
world), and the downstream stages by the number of ICU stays (94,458). Targets (issue 3):
extrapolated full build <= 20 minutes, peak RSS <= 8 GB, on a 2-core / 24 GB machine.
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

#: MIMIC-IV v3.1 row counts (release documentation); prescriptions and microbiology approximate.
MIMIC_IV_ROWS = {
    "chartevents": 432_997_491,
    "labevents": 158_374_764,
    "inputevents": 10_953_713,
    "outputevents": 5_359_395,
    "prescriptions": 20_292_611,
    "microbiologyevents": 3_988_224,
    "patients": 364_627,
    "admissions": 546_028,
    "icustays": 94_458,
}
INGEST_TABLE = {
    "chart": "chartevents",
    "labs": "labevents",
    "inputs": "inputevents",
    "outputs": "outputevents",
    "antibiotics": "prescriptions",
    "cultures": "microbiologyevents",
    "patients": "patients",
    "admissions": "admissions",
    "icustays": "icustays",
}


def build_one(world: Path, workspace: Path) -> dict:
    from sepsisrl.dataset.builder import build
    from sepsisrl.dataset.config import load_build_config

    if workspace.exists():
        shutil.rmtree(workspace)
    t0 = time.perf_counter()
    summary = build(world, workspace, load_build_config())
    wall = time.perf_counter() - t0
    ingest = json.loads((workspace / "ingest" / "audit.json").read_text())
    return {
        "seconds": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "stages": {s.name: round(s.seconds, 2) for s in summary.stages},
        "ingest_seconds_per_table": ingest["seconds_per_table"],
        "counts": summary.report["counts"],
    }


def ensure_world(n: int, seed: int, workdir: Path) -> tuple[Path, dict]:
    out = workdir / f"world_{n}_seed{seed}" / "raw"
    truth = out.parent / "raw_truth" / "world.json"
    if not truth.is_file():
        subprocess.run(
            [sys.executable, "-m", "sepsisrl.cli", "synth", "--out", str(out), "--stays", str(n),
             "--seed", str(seed), "--no-hourly-truth", "--overwrite", "-q"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return out, json.loads(truth.read_text())["rows"]


def extrapolate(largest: dict, world_rows: dict, n_stays: int) -> dict:
    per_table = {}
    total_ingest = 0.0
    for ingest_name, seconds in largest["ingest_seconds_per_table"].items():
        table = INGEST_TABLE[ingest_name]
        rate = world_rows[table] / max(seconds, 1e-3)
        est = MIMIC_IV_ROWS[table] / rate
        per_table[table] = {"world_rows_per_second": round(rate), "mimic_iv_seconds": round(est, 1)}
        total_ingest += est
    downstream = sum(v for k, v in largest["stages"].items() if k != "ingest")
    scale = MIMIC_IV_ROWS["icustays"] / n_stays
    downstream_est = downstream * scale
    return {
        "ingest_seconds": round(total_ingest, 1),
        "downstream_seconds": round(downstream_est, 1),
        "total_minutes": round((total_ingest + downstream_est) / 60, 2),
        "per_table": per_table,
        "assumption": "ingest linear in each table's rows; downstream stages linear in ICU stays",
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sepsisrl-bench-build"
    )
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(build_one(Path(args.one[0]), Path(args.one[1]))))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.sizes:
        world, rows = ensure_world(n, args.seed, args.workdir)
        ws = args.workdir / f"ws_{n}"
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(world), str(ws)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(stays=n, chartevents_rows=rows["chartevents"], world_rows=rows)
        r["chartevents_rows_per_second"] = round(rows["chartevents"] / r["seconds"])
        results.append(r)
        print(
            f"{n:>6} stays  {rows['chartevents']:>11,} chartevents rows  "
            f"build {r['seconds']:>6.1f} s  "
            f"{r['chartevents_rows_per_second']:>10,} chartevents rows/s  "
            f"peak RSS {r['peak_rss_mb']:>5} MB  (ingest {r['stages']['ingest']:.1f} s)",
            flush=True,
        )
        shutil.rmtree(ws, ignore_errors=True)
    largest = results[-1]
    ext = extrapolate(largest, largest["world_rows"], largest["stays"])
    print("stage seconds at the largest size:", json.dumps(largest["stages"]))
    print(
        f"extrapolated full MIMIC-IV v3.1 build (433 M chartevents rows, 94,458 ICU stays): "
        f"{ext['total_minutes']:.1f} min (ingest {ext['ingest_seconds'] / 60:.1f} min, "
        f"downstream {ext['downstream_seconds'] / 60:.1f} min)"
    )
    for table, v in ext["per_table"].items():
        print(
            f"  {table:<19} {v['world_rows_per_second']:>12,} rows/s"
            f"  -> {v['mimic_iv_seconds']:>7.1f} s"
        )
    meta = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "build.json").write_text(
        json.dumps({"meta": meta, "results": results, "extrapolation": ext}, indent=2) + "\n"
    )
    print(f"results written to {out / 'build.json'}")


if __name__ == "__main__":
    main()
