"""The command line: help, research-only warning, errors with a non-zero exit."""

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sepsisrl.cli", *args], capture_output=True, text=True
    )


def test_help_carries_the_research_only_warning():
    proc = run("--help")
    assert proc.returncode == 0
    assert "RESEARCH ONLY" in proc.stdout
    assert "synth" in proc.stdout


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("sepsisrl ")


def test_synth_writes_a_world_and_reports_counts(tmp_path: Path):
    proc = run(
        "synth",
        "--out",
        str(tmp_path / "raw"),
        "--stays",
        "20",
        "--density",
        "0",
        "--set",
        "output.chunk_subjects=30",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["n_stays"] == 20
    assert (tmp_path / "raw" / "icu" / "chartevents.csv.gz").is_file()
    assert (tmp_path / "raw_truth" / "world.json").is_file()


def test_bad_config_value_is_a_clear_error_with_exit_2(tmp_path: Path):
    proc = run(
        "synth", "--out", str(tmp_path / "raw"), "--stays", "5", "--set", "population.age_sd=-3"
    )
    assert proc.returncode == 2
    assert "population.age_sd" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "raw").exists()


def test_malformed_set_option_is_rejected(tmp_path: Path):
    proc = run("synth", "--out", str(tmp_path / "raw"), "--stays", "5", "--set", "nonsense")
    assert proc.returncode == 2
    assert "KEY=VALUE" in proc.stderr


def test_missing_config_file_is_reported(tmp_path: Path):
    proc = run("synth", "--out", str(tmp_path / "raw"), "--config", str(tmp_path / "none.yaml"))
    assert proc.returncode == 2
    assert "not found" in proc.stderr


def test_run_warns_when_halving_stopped_candidates_within_the_noise():
    from sepsisrl.cli import halving_warning

    rung = "stage 1 rung 1/3 (4467 steps)"
    phases = {rung: {"stopped": 8, "stopped_within_noise": 8},
              "stage 1 rung 2/3 (13400 steps)": {"stopped": 5, "stopped_within_noise": 0},
              "stage 1": {"trained": 5}}  # fmt: skip
    line = halving_warning(phases)
    assert line is not None and line.startswith("warning: successive halving stopped")
    assert f"({rung}: 8 of 8)" in line and "13400" not in line
    assert "another configuration" in line and "baseline" not in line
    # sweep.halving.baselines: a baseline grid's rung is named, and what it may change
    base = {
        **phases,
        "baseline tuning rung 1/3 (4467 steps)": {"stopped": 1, "stopped_within_noise": 1},
    }
    both = halving_warning(base)
    assert "baseline tuning rung 1/3 (4467 steps): 1 of 1" in both
    assert "another configuration; the full tuning may choose another baseline" in both
    phases[rung]["stopped_within_noise"] = 0
    assert halving_warning(phases) is None  # every stop credible, or no halving at all
    assert halving_warning({"stage 1": {"trained": 18}}) is None
