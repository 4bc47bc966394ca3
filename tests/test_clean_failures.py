"""No traceback for a user error, interrupts honoured in the background, nothing half-written.

Errors that escape a command (DuckDB, the file system, a damaged JSON file) end in one line
naming the file and the fix (exit 2); ``--debug`` / SEPSISRL_DEBUG=1 adds the traceback; an
unexpected error is a bug: traceback and a request to report it (exit 1). SIGINT (even when
inherited as ignored, as by a shell's background job) and SIGTERM exit 130 with what to do.
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sepsisrl import cli as cli_module
from sepsisrl.workspace import read_json

from .rl_fixtures import FAST_CLI, fast_config, write_replay


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "sepsisrl.cli", *map(str, args)]


def words(text: str) -> str:
    """rich wraps long messages at the console width: compare words, not line breaks."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("failures") / "ws" / "replay" / "sofa_shaped"
    write_replay(folder, 60, 7, 3, seed=8)
    return folder


# ---------------------------------------------------------------- main(): errors escaping commands
def run_main(monkeypatch, capsys, exc: BaseException, debug: bool = False) -> tuple[int, str]:
    def app() -> None:
        raise exc

    monkeypatch.setattr(cli_module, "app", app)
    monkeypatch.setattr(cli_module, "install_interrupt_handlers", lambda: None)
    monkeypatch.setattr(sys, "argv", ["sepsisrl"])
    if debug:
        monkeypatch.setenv("SEPSISRL_DEBUG", "1")
    else:
        monkeypatch.delenv("SEPSISRL_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stopped:
        cli_module.main()
    return stopped.value.code, words(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, "/data/ws/replay/x.parquet: no space left on the device; free disk space"),
        (errno.EROFS, "/data/ws/replay/x.parquet: read-only file system; choose a folder on a "),
        (errno.EACCES, "/data/ws/replay/x.parquet: permission denied; make it writable for you"),
    ],
)
def test_os_errors_are_one_line_naming_the_file_and_the_fix(monkeypatch, capsys, code, expected):
    exc = OSError(code, "whatever", "/data/ws/replay/x.parquet")
    status, err = run_main(monkeypatch, capsys, exc)
    assert status == 2 and err.startswith("error: ") and expected in err
    assert "Traceback" not in err


def test_duckdb_errors_are_one_line_with_the_fix(monkeypatch, capsys):
    import duckdb

    exc = duckdb.IOException('IO Error: Could not write file "/ws/.duckdb_tmp/t.tmp": No space')
    status, err = run_main(monkeypatch, capsys, exc)
    assert status == 2 and "Traceback" not in err
    assert 'DuckDB IOException: IO Error: Could not write file "/ws/.duckdb_tmp/t.tmp"' in err
    assert "its disk has space" in err
    exc = duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate 1 GiB")
    status, err = run_main(monkeypatch, capsys, exc)
    assert status == 2 and "--set engine.threads=2" in err


def test_a_damaged_json_file_is_named(monkeypatch, capsys, tmp_path: Path):
    meta = tmp_path / "meta.json"
    meta.write_text('{"state_dim": 3,')
    with pytest.raises(json.JSONDecodeError) as damaged:
        read_json(meta)
    status, err = run_main(monkeypatch, capsys, damaged.value)
    assert status == 2 and "Traceback" not in err
    assert f"error: {meta} is not valid JSON (Expecting property name" in err
    # a plain json.loads of a file's text: the file is found from the failing frame
    config = tmp_path / "config.json"
    config.write_text("{oops")
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        status, err = run_main(monkeypatch, capsys, exc)
    assert status == 2 and f"error: {config} is not valid JSON" in err


def test_an_internal_error_prints_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    status, err = run_main(monkeypatch, capsys, KeyError("sofa_24h"))
    assert status == 1
    assert "Traceback" in err and "KeyError: 'sofa_24h'" in err
    assert "internal error: this is a bug in sepsisrl" in err and "please report it" in err


def test_debug_adds_the_traceback_to_a_user_error(monkeypatch, capsys):
    exc = cli_module.UserError("--set expects KEY=VALUE")
    status, err = run_main(monkeypatch, capsys, exc)
    assert status == 2 and "Traceback" not in err
    status, err = run_main(monkeypatch, capsys, exc, debug=True)
    assert status == 2 and "Traceback" in err and err.endswith("error: --set expects KEY=VALUE")


# ---------------------------------------------------------------- real commands
def test_a_file_where_the_workspace_should_be_is_one_clear_line(tmp_path: Path):
    taken = tmp_path / "taken"
    taken.write_text("")
    proc = subprocess.run(
        cli("build", "--source", tmp_path, "--workspace", taken / "ws", "-q"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert words(proc.stderr).startswith(f"error: {taken}: is a file where a folder is needed")
    assert "Traceback" not in proc.stderr
    debug = subprocess.run(
        cli("--debug", "build", "--source", tmp_path, "--workspace", taken / "ws", "-q"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_a_refused_resume_names_the_setting_that_differs(replay: Path, tmp_path: Path):
    from sepsisrl.rl.trainer import train

    run = tmp_path / "run"
    train(replay, fast_config(algo="iql", steps=100), run, stop_after=45)
    proc = subprocess.run(
        cli("train", "--replay", replay, "--algo", "iql", "--steps", "100", *FAST_CLI,
            "--set", "log_every=20", "--set", "checkpoint_every=40",
            "--set", "iql.expectile=0.9", "--out", run, "--resume", "-q"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    err = words(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "refusing to resume (iql.expectile: checkpoint 0.7, now 0.9;" in err
    # a damaged checkpoint state is named, not a traceback
    state = run / "checkpoints" / "step_00000040" / "state.json"
    state.write_text(state.read_text()[:20])
    proc = subprocess.run(
        cli("train", "--replay", replay, "--algo", "iql", "--steps", "100", *FAST_CLI,
            "--set", "log_every=20", "--set", "checkpoint_every=40", "--out", run,
            "--resume", "-q"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: {state} is not valid JSON" in words(proc.stderr)


def test_a_failed_evaluation_leaves_no_folder(replay: Path, tmp_path: Path):
    """The policy is rejected after the behaviour model is fitted: no behaviour/ is left."""
    out = tmp_path / "eval"
    proc = subprocess.run(
        cli("evaluate", "--replay", replay, "--policy", "constant:99", "--resamples", "100",
            "--out", out),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "constant:99" in proc.stderr, proc.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def ignore_sigint() -> None:
    """What a shell does to a background job: SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_background_training_is_interrupted_with_the_resume_hint(replay, tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        cli("train", "--replay", replay, "--algo", "bc", "--steps", "100000", *FAST_CLI,
            "--set", "log_every=10", "--out", run, "-q"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        metrics = run / "metrics.jsonl"
        while not (metrics.is_file() and metrics.stat().st_size):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted; the run folder keeps its last checkpoint; run the same command again " \
        "with --resume" in words(err)  # fmt: skip
    assert "Traceback" not in err
    assert not (run / "final").exists()
    assert not list(tmp_path.glob(".run.lock"))


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sepsisrl.synth.world import generate_world

    from .conftest import small_config

    out = tmp_path_factory.mktemp("tiny") / "raw"
    generate_world(out, 150, seed=0, cfg=small_config(**{"charting.density": 0.0}))
    return out


def test_background_build_is_interrupted_and_leaves_no_partial(tiny_world: Path, tmp_path: Path):
    """A build started with SIGINT ignored honours ``kill -INT`` (it used to finish, exit 0)."""
    ws = tmp_path / "ws"
    proc = subprocess.Popen(
        cli("build", "--source", tiny_world, "--workspace", ws, "-q"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(ws.glob(".*.partial-*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)  # hold it inside the stage while the signal is sent
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert (
        "interrupted; finished stages are kept and the unfinished one was discarded; run the same "
        "command again to resume" in words(err)
    )
    assert "Traceback" not in err
    assert not list(ws.glob(".*.partial-*"))
    assert not (ws / "build_summary.json").exists()
