"""Benchmark of the whole study: `sepsisrl run` from nothing to the report, then a browser check.

Usage:  python bench/run.py [--profile quick] [--workspace WS] [--keep]

Runs `sepsisrl run --profile P --workspace WS` as a new user would (a fresh workspace: the
synthetic world is simulated first), prints the wall time, the peak resident memory of the
largest process, the seconds of every phase (from WS/study/run.json), the selection, and then a
second, fully cached run's wall time. Finally the report is rendered in headless Chromium
(bench/report.py). Target for the quick profile on a 2-core machine: <= 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(profile: str, ws: Path) -> float:
    cli = Path(sys.executable).with_name("sepsisrl")
    cmd = [str(cli) if cli.exists() else "sepsisrl", "run", "--profile", profile,
           "--workspace", str(ws), "--quiet"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"sepsisrl run failed with status {proc.returncode}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--workspace", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = ap.parse_args(argv)
    tmp = None
    ws = args.workspace
    if ws is None:
        tmp = Path(tempfile.mkdtemp(prefix="sepsisrl-bench-run-"))
        ws = tmp / "workspace"
    if ws.exists() and any(ws.iterdir()):
        raise SystemExit(f"{ws} is not empty: the benchmark starts from a fresh workspace")
    print(f"sepsisrl run --profile {args.profile} (fresh workspace {ws}), {os.cpu_count()} CPUs")
    first = _run(args.profile, ws)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    doc = json.loads((ws / "study" / "run.json").read_text())
    print(f"total: {first:.1f} s ({first / 60:.2f} min), peak RSS of one process {rss:,.0f} MB, "
          f"{doc['workers']} workers")  # fmt: skip
    for phase, info in doc["phases"].items():
        units = f", {info['units']} units" if "units" in info else ""
        print(f"  {phase:<14} {info['seconds']:7.1f} s{units}")
    sel = doc["selected"]
    print(f"selected: {sel['name']} seed {sel['seed']} (fallback: {sel['fallback']})")
    second = _run(args.profile, ws)
    print(f"rerun (everything cached): {second:.1f} s")
    sys.path.insert(0, str(HERE))
    from report import main as report_main  # bench/report.py

    status = report_main(["--workspace", str(ws)])
    if tmp is not None and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
