"""A build killed in the middle of a stage resumes to the same outputs as an uninterrupted one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sepsisrl.dataset.builder import STAGES
from sepsisrl.workspace import Workspace, read_json

#: run reports, not stage outputs: they hold timings and which stages were skipped
RUN_REPORTS = ("stage.json", "build_summary.json")


def build_command(source: Path, workspace: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sepsisrl.cli",
        "build",
        "--source",
        str(source),
        "--workspace",
        str(workspace),
        "-q",
    ]


def wait_for_partial(ws: Path, proc: subprocess.Popen, timeout: float = 120.0) -> Path:
    """The first ``.<stage>.partial-<pid>`` folder of a stage after ``ingest``, returned with
    ``proc`` stopped (SIGSTOP) while that folder is still there: the stage cannot finish
    between the sighting and whatever signal the caller sends next."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        partials = [p for p in ws.glob(".*.partial-*") if not p.name.startswith(".ingest.")]
        if partials:
            proc.send_signal(signal.SIGSTOP)
            if partials[0].is_dir():
                return partials[0]
            proc.send_signal(signal.SIGCONT)  # that stage finished meanwhile: catch the next
        if proc.poll() is not None:
            pytest.fail(f"the build ended before a stage after ingest was seen running: {proc}")
        time.sleep(0.002)
    proc.kill()
    pytest.fail("no stage after ingest started within the timeout")


def without_timings(doc):
    if isinstance(doc, dict):
        return {k: without_timings(v) for k, v in doc.items() if not k.startswith("seconds")}
    if isinstance(doc, list):
        return [without_timings(v) for v in doc]
    return doc


def outputs(ws: Path) -> dict[str, Path]:
    """The build's outputs: its stage folders and top-level files (other tests may have added
    caches of their own to the shared workspace, e.g. `sepsisrl truth`'s populations)."""
    found = {}
    for p in sorted(ws.rglob("*")):
        rel = p.relative_to(ws)
        if (
            p.is_file()
            and p.suffix in (".parquet", ".json")
            and p.name not in RUN_REPORTS
            and (len(rel.parts) == 1 or rel.parts[0] in STAGES)
            and not any(part.startswith(".") for part in rel.parts)
        ):
            found[rel.as_posix()] = p
    return found


def test_killed_build_leaves_no_complete_looking_stage_and_resumes_identically(
    small_world, built, tmp_path
):
    ws = tmp_path / "ws"
    cmd = build_command(small_world.out_dir, ws)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        partial = wait_for_partial(ws, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    # the interrupted stage is only a hidden partial folder, never a stage folder
    stage = partial.name.split(".")[1]
    assert partial.name == f".{stage}.partial-{proc.pid}"
    assert partial.is_dir()
    assert stage in STAGES and stage != "ingest"
    assert not (ws / stage).exists()
    assert Workspace(ws).stage_key(stage) is None
    done_before = list(STAGES[: STAGES.index(stage)])
    assert "ingest" in done_before
    for name in done_before:
        assert (ws / name / "stage.json").is_file(), name
    for name in STAGES[STAGES.index(stage) :]:
        assert Workspace(ws).stage_key(name) is None, name
    assert not (ws / "build_summary.json").exists()

    # the rerun removes the partial folder, reuses finished stages and redoes the rest
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["leakage_audit"] == "passed"
    assert not list(ws.glob(".*.partial-*"))
    skipped = {k: v["skipped"] for k, v in read_json(ws / "build_summary.json")["stages"].items()}
    assert skipped == {name: name in done_before for name in STAGES}

    # ... and its outputs equal those of an uninterrupted build into another workspace
    clean_ws = built[0]
    resumed, clean = outputs(ws), outputs(clean_ws)
    assert sorted(resumed) == sorted(clean)
    differ = []
    for rel, path in resumed.items():
        a, b = path.read_bytes(), clean[rel].read_bytes()
        if a == b:
            continue
        if path.suffix == ".json" and (
            without_timings(json.loads(a)) == without_timings(json.loads(b))
        ):
            continue  # only timing fields ("seconds...") differ
        differ.append(rel)
    assert not differ, f"resumed build differs from an uninterrupted build in {differ}"
