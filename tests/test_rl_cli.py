"""``sepsisrl train`` as a user runs it: a killed run resumes to the exact weights of an
uninterrupted one, the default run folder lives in the workspace, and errors are one clear line
(exit status 2, no traceback)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sepsisrl.rl.checkpoint import latest_checkpoint

from .rl_fixtures import FAST_CLI, write_replay


def train_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "sepsisrl.cli", "train", *map(str, args)]


def run_all(*commands: list[str], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run CLI commands concurrently (each one pays the torch import) and wait for all."""
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    done = []
    for cmd, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=timeout)
        # rich wraps long messages at the console width: compare words, not line breaks
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, out, " ".join(err.split())))
    return done


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("cli") / "ws"
    write_replay(ws / "replay" / "sofa_shaped", 60, 7, 3, seed=8)
    return ws


def final_tensors(run: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / name))


def metric_lines(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "steps_per_second"} for line in lines]


@pytest.mark.slow
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(workspace: Path, tmp_path):
    replay = workspace / "replay" / "sofa_shaped"
    steps = 300
    args = ["--replay", replay, "--algo", "iql", "--seed", "3", "--steps", str(steps), *FAST_CLI,
            "--set", "log_every=10", "--set", "checkpoint_every=20", "-q"]  # fmt: skip
    full, run = tmp_path / "full", tmp_path / "run"
    reference = subprocess.Popen(
        train_cmd(*args, "--out", full), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    victim = subprocess.Popen(
        train_cmd(*args, "--out", run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 90
        while not any(p.joinpath("state.json").is_file() for p in run.glob("checkpoints/step_*")):
            assert victim.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 90 s"
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not (run / "final").exists(), "killed after the run had finished"
    checkpoint = latest_checkpoint(run)
    assert checkpoint is not None
    killed_at = json.loads((checkpoint / "state.json").read_text())["step"]
    assert 0 < killed_at < steps

    resumed = subprocess.run(
        train_cmd(*args, "--out", run, "--resume"), capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == killed_at and summary["steps"] == steps

    out, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err
    assert json.loads(out)["resumed_from"] is None
    assert json.loads(out)["run_dir"] == str(full)  # --out: outside the workspace
    for name in ("model.safetensors", "policy.safetensors"):
        expected, actual = final_tensors(full, name), final_tensors(run, name)
        assert actual.keys() == expected.keys()
        for key in expected:
            assert torch.equal(actual[key], expected[key]), f"{name}:{key} differs after resume"
    assert metric_lines(run) == metric_lines(full)
    assert [line["step"] for line in metric_lines(run)] == list(range(10, steps + 1, 10))


def test_default_run_folder_is_runs_name_variant_seed_in_the_workspace(
    workspace: Path, tmp_path: Path
):
    replay = workspace / "replay" / "sofa_shaped"
    user_cfg = tmp_path / "small.yaml"
    user_cfg.write_text(
        "batch_size: 32\nhidden_sizes: [32, 32]\nthreads: 1\nlog_every: 1\ncheckpoint_every: 1\n"
    )
    by_algo, by_preset = run_all(
        train_cmd("--replay", replay, "--algo", "cql", "--seed", "7", "--steps", "3",
                  "--config", user_cfg, "-q"),
        train_cmd("--replay", replay, "--preset", "iql_baseline", "--steps", "2",
                  "--config", user_cfg, "-q"),
    )  # fmt: skip
    for proc in (by_algo, by_preset):
        assert proc.returncode == 0, proc.stderr

    run = workspace / "runs" / "cql_sofa_shaped_seed7"  # <algo>_<variant>_seed<seed>
    assert json.loads(by_algo.stdout)["run_dir"] == str(run)
    assert json.loads(by_algo.stdout)["steps"] == 3
    doc = json.loads((run / "config.json").read_text())
    assert doc["algo"] == "cql" and doc["seed"] == 7
    assert doc["total_steps"] == 3 and doc["config"]["epochs"] == 200  # --steps overrides epochs
    assert doc["config"]["batch_size"] == 32 and doc["config"]["hidden_sizes"] == [32, 32]
    assert (run / "final" / "policy.safetensors").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3

    run = workspace / "runs" / "iql_baseline_sofa_shaped_seed42"  # <preset>_<variant>_seed<seed>
    assert json.loads(by_preset.stdout)["run_dir"] == str(run)
    assert json.loads((run / "config.json").read_text())["preset"] == "iql_baseline"
    # runs given --out (the kill/resume test) are not in the workspace
    assert sorted(p.name for p in (workspace / "runs").iterdir()) == [
        "cql_sofa_shaped_seed7",
        "iql_baseline_sofa_shaped_seed42",
    ]


def test_cli_errors_exit_2_with_a_message_and_no_traceback(workspace: Path, tmp_path: Path):
    replay = workspace / "replay" / "sofa_shaped"
    out = tmp_path / "never"
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    bad_algo, no_replay, no_preset, taken, compile_cql = run_all(
        train_cmd("--replay", replay, "--set", "algo=xyz", "--out", out),
        train_cmd("--replay", tmp_path / "no_such_replay", "--out", out),
        train_cmd("--replay", replay, "--preset", "no_such_preset", "--out", out),
        train_cmd("--replay", replay, "--steps", "2", *FAST_CLI, "--out", existing),
        train_cmd("--replay", replay, "--algo", "cql", "--compile", "--out", out),
    )
    for proc in (bad_algo, no_replay, no_preset, taken, compile_cql):
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error:")
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""
    assert "invalid training configuration" in bad_algo.stderr
    assert "algo" in bad_algo.stderr and "'iql', 'cql', 'bcq' or 'bc'" in bad_algo.stderr
    assert "no meta.json" in no_replay.stderr
    assert "unknown preset 'no_such_preset'" in no_preset.stderr
    assert "iql_sofa_shaped_conservative_safe" in no_preset.stderr  # lists what exists
    assert "already holds a run; use --resume" in taken.stderr
    assert "compile is available for iql only, not cql" in compile_cql.stderr
    assert not out.exists()
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]
