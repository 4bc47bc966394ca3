"""The whole study (``sepsisrl run``) end to end: per-phase wall time, peak memory, throughput.

Usage:  python bench/study.py [--profile card] [--stays 20000] [--workspace /tmp/study_bench]
                              [--set KEY=VALUE ...] [--out bench/results/study.json]
                              [--reuse-data]

Runs ``sepsisrl run --profile PROFILE`` on a new synthetic world of ``--stays`` ICU stays (the
card profile on a world of about MIMIC-IV's sepsis cohort: 20,000 stays) in ``--workspace``
(resumable: rerunning continues an interrupted benchmark, and cached phases then show their
cached time). Reported from the study's own record (``study/run.json``) and measured here:

  phases                wall seconds of every phase (data = world + build, behaviour, stage 1,
                        stage 2, clinicians, baseline tuning, final test, truth, export/report)
  training              candidate-steps per second of each training phase: the steps of the
                        runs it trained over its wall time (which includes their evaluations)
  utilisation           how busy the workers were: per phase that ran units, the seconds spent
                        inside them against its wall time x workers (``busy_fraction``); summed,
                        the idle worker-seconds (a worker waiting for a phase's last units or
                        starting), which bound what running phases side by side could save
  evaluations           how many evaluations the workspace holds, their mean seconds and the
                        sum of each part (FQE + WDR, importance sampling, figures, ...)
  peak_rss_gib          the peak resident memory of the study process and all its workers
                        together (sampled every 0.5 s from /proc); peak_rss_gib_by_phase: the
                        same, per phase of the progress events (where the memory goes)

``--reuse-data`` takes the workspace's data phase as already built and times everything after
it: for measuring on another machine (a GPU one) a workspace built here and copied without its
raw tables (``raw/``; keep ``raw_truth/world.json``, ``build_*.json``, ``replay``, ``features``,
``actions``, ``splits``, ``cohort``, ``episodes``, ``sepsis``). The data phase then reads 0 s
and ``"reused": true``; quote its time from the run that built it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and every descendant process (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as fh:
                rss[int(entry)] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def result_workers(ws: Path) -> int:
    """The worker processes the study ran (``study/run.json``)."""
    return int(json.loads((ws / "study" / "run.json").read_text())["workers"])


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def training_rates(ws: Path, phases: dict, stage1_seed: int) -> dict:
    """Candidate-steps per second of each training phase: the steps of its runs (a finalist's
    stage-1 seed is a stage-1 run, its other seeds stage 2) over the phase's wall time (stage
    1's rungs included, with successive halving; evaluations included)."""
    plan = json.loads((ws / "study" / "selection.json").read_text())
    steps: dict[str, int] = {}
    for c in plan["candidates"]:
        for row in c["seeds"]:
            doc = json.loads((ws / row["run"] / "config.json").read_text())
            key = "stage 1" if row["seed"] == stage1_seed else "stage 2"
            steps[key] = steps.get(key, 0) + doc.get("snapshot_of", {}).get(
                "step", doc["total_steps"]
            )  # fmt: skip
    out = {}
    for phase, n in steps.items():
        # with successive halving, stage 1's steps are trained over its rungs too
        parts = [info for name, info in phases.items()
                 if name == phase or name.startswith(f"{phase} rung")]  # fmt: skip
        if any(info.get("trained") for info in parts):
            seconds = sum(info["seconds"] for info in parts)
            out[phase] = {"candidate_steps": n, "seconds": seconds,
                          "candidate_steps_per_second": n / max(seconds, 1e-9),
                          "runs_trained": sum(info.get("trained", 0) for info in parts)}  # fmt: skip
    return out


def utilisation(phases: dict, workers: int) -> dict:
    """The workers' busy and idle time over the phases that ran units on them
    (``study/run.json``'s ``unit_seconds`` and ``busy_fraction``, written by
    ``sepsisrl.study.runner.utilisation``); idle worker-seconds per phase and in all."""
    idle, busy, slots = {}, 0.0, 0.0
    for name, info in phases.items():
        if "busy_fraction" not in info:
            continue  # cached, in the study process, or on Ray
        capacity = info["seconds"] * workers
        used = capacity * info["busy_fraction"]  # not unit_seconds: both are rounded apart
        busy += used
        slots += capacity
        idle[name] = round(capacity - used, 1)
    total = round(sum(idle.values()), 1)
    return {"workers": workers, "worker_seconds": round(slots, 1),
            "busy_worker_seconds": round(busy, 1),
            "busy_fraction": round(busy / slots, 3) if slots else None,
            "idle_worker_seconds": total, "idle_worker_seconds_by_phase": idle,
            "idle_wall_seconds_bound": round(total / workers, 1) if workers else None}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="card")
    ap.add_argument("--stays", type=int, default=20000)
    ap.add_argument("--workspace", type=Path, default=Path("/tmp/study_bench"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path("bench/results/study.json"))
    ap.add_argument("--reuse-data", action="store_true",
                    help="take the workspace's data phase as built (see above)")  # fmt: skip
    args = ap.parse_args()

    import yaml

    from sepsisrl.interrupts import InterruptLatch
    from sepsisrl.study.config import load_study_config
    from sepsisrl.study.runner import Study, run_study

    if args.reuse_data:
        if not (args.workspace / "build_summary.json").is_file():
            raise SystemExit(f"--reuse-data: {args.workspace} holds no built workspace")

        def reused(self, source):
            self.emit("build", 1, 1, f"{self.ws} reused as built (--reuse-data)")
            self.phases["data"] = {"seconds": 0.0, "reused": True}
            return self.ws / "raw"

        Study.data = reused

    overrides = {"synth.stays": args.stays}
    for item in args.sets:
        key, raw = item.split("=", 1)
        overrides[key] = yaml.safe_load(raw)
    cfg = load_study_config(args.profile, overrides=overrides)
    peak, stop = [0], threading.Event()
    by_phase: dict[str, int] = {}
    last = [""]

    def sample() -> None:
        while not stop.is_set():
            rss = tree_rss(os.getpid())
            peak[0] = max(peak[0], rss)
            phase = last[0] or "start"
            by_phase[phase] = max(by_phase.get(phase, 0), rss)
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def on_event(phase: str, done: int, total: int, message: str) -> None:
        line = f"{phase}: {done}/{total} {message}"
        if done == total or phase != last[0]:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
        last[0] = phase

    started = time.perf_counter()
    try:
        # SIGINT or SIGTERM stops the study's workers at once, as in `sepsisrl run`; rerunning
        # with the same --workspace resumes (a background job ignores SIGINT otherwise)
        with InterruptLatch((signal.SIGINT, signal.SIGTERM)):
            result = run_study(args.workspace, cfg, on_event=on_event)
    except KeyboardInterrupt:
        print("interrupted: finished units are kept; rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None
    finally:
        stop.set()
        sampler.join()
    seconds = time.perf_counter() - started
    ws = result.workspace
    training = training_rates(ws, result.phases, cfg.sweep.stage1_seed)
    # where an evaluation's time goes (each evaluation's own timings_seconds, all phases)
    parts: dict[str, float] = {}
    evals = sorted((ws / "eval").glob("*/metrics.json"))
    for path in evals:
        for part, sec in json.loads(path.read_text()).get("timings_seconds", {}).items():
            parts[part] = parts.get(part, 0.0) + sec
    evaluations = {"count": len(evals), "seconds_by_part": {k: round(v, 1) for k, v in parts.items()},
                   "mean_seconds": round(sum(parts.values()) / max(len(evals), 1), 2)}  # fmt: skip
    doc = {
        "meta": {
            "profile": args.profile,
            "stays": args.stays,
            "overrides": overrides,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "workers": cfg.workers,
            "stack": cfg.stack,
            "reuse_data": args.reuse_data,
            "gpu": _gpu_name(),
        },
        "seconds": round(seconds, 1),
        "phases": result.phases,
        "training": training,
        "utilisation": utilisation(result.phases, result_workers(ws)),
        "evaluations": evaluations,
        "peak_rss_gib": peak[0] / 2**30,
        "peak_rss_gib_by_phase": {k: round(v / 2**30, 2) for k, v in by_phase.items()},
        "selected": result.selected["name"],
    }
    print(f"total {seconds / 60:.1f} min, peak memory {doc['peak_rss_gib']:.2f} GiB")
    print("  peak memory by phase (GiB): " + ", ".join(
        f"{k} {v:.2f}" for k, v in doc["peak_rss_gib_by_phase"].items()))  # fmt: skip
    for phase, info in result.phases.items():
        if "seconds" in info:
            busy = info.get("busy_fraction")
            note = f"  workers busy {100 * busy:.0f} %" if busy is not None else ""
            print(f"  {phase:<24} {info['seconds']:>9.1f} s{note}")
    use = doc["utilisation"]
    if use["busy_fraction"] is not None:
        print(f"  workers busy {100 * use['busy_fraction']:.1f} % of "
              f"{use['worker_seconds']:.0f} worker-seconds in the phases that ran units; idle "
              f"{use['idle_worker_seconds']:.0f} (at most {use['idle_wall_seconds_bound']:.0f} s "
              "of wall time for running phases side by side)")  # fmt: skip
    for phase, info in training.items():
        print(f"  {phase}: {info['candidate_steps_per_second']:.1f} candidate-steps/s "
              "(evaluations included)")  # fmt: skip
    print(f"  {evaluations['count']} evaluations, {evaluations['mean_seconds']:.1f} s each on "
          f"average: {evaluations['seconds_by_part']}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
