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
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            partials = list(ws.glob(".*.partial-*"))
            if partials:
                proc.send_signal(signal.SIGSTOP)  # hold it inside the stage while signalled
                if partials[0].is_dir():
                    break
                proc.send_signal(signal.SIGCONT)  # that stage finished meanwhile: the next one
            time.sleep(0.002)
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


# ------------------------------------------------- damaged checkpoints, full disks, study records
def test_resume_falls_back_past_a_truncated_checkpoint_with_a_note(replay, tmp_path, monkeypatch):
    from sepsisrl import locks
    from sepsisrl.rl.checkpoint import CheckpointError, latest_checkpoint
    from sepsisrl.rl.trainer import train

    run = tmp_path / "run"
    train(replay, fast_config(algo="bc", steps=100, checkpoint_every=20), run, stop_after=45)
    ckpts = run / "checkpoints"
    newest = ckpts / "step_00000040" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    notes: list[str] = []
    monkeypatch.setattr(locks, "NOTE", notes.append)
    assert latest_checkpoint(run) == ckpts / "step_00000020"
    assert len(notes) == 1 and f"{newest} is truncated or damaged" in notes[0]
    assert "resuming from the previous intact checkpoint step_00000020" in notes[0]
    # none intact: refused, naming the newest checkpoint's damaged file
    (ckpts / "step_00000020" / "optim.safetensors").write_bytes(b"\x00\x01")
    with pytest.raises(CheckpointError) as refused:
        latest_checkpoint(run)
    assert str(refused.value).startswith(f"{newest} is truncated or damaged")
    assert "older one(s) are damaged too" in str(refused.value)
    assert "--overwrite" in str(refused.value)


def test_resume_goes_on_from_the_intact_checkpoint(replay: Path, tmp_path: Path):
    """The command line: exit 0, the note on stderr, resumed from the step before."""
    from sepsisrl.rl.trainer import train

    run = tmp_path / "run"
    train(replay, fast_config(algo="bc", steps=60, checkpoint_every=20), run, stop_after=45)
    newest = run / "checkpoints" / "step_00000040" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    proc = subprocess.run(
        cli("train", "--replay", replay, "--algo", "bc", "--steps", "60", *FAST_CLI,
            "--set", "log_every=20", "--set", "checkpoint_every=20", "--out", run,
            "--resume", "-q"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"note: checkpoint {newest.parent} cannot be resumed from" in words(proc.stderr)
    assert json.loads(proc.stdout)["resumed_from"] == 20
    assert (run / "final" / "policy.safetensors").is_file()


def test_a_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path: Path, monkeypatch):
    import torch
    from safetensors import SafetensorError

    from sepsisrl.rl import checkpoint

    def full(tensors, path, *args, **kwargs) -> None:
        Path(path).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    folder = tmp_path / "run" / "checkpoints" / "step_00000100"
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    with pytest.raises(OSError) as stopped:
        checkpoint.save_checkpoint(folder, {"q": net}, {"q": opt}, {}, {"step": 100})
    assert stopped.value.errno == errno.EFBIG
    assert stopped.value.filename == str(folder / "model.safetensors")
    assert not list(folder.parent.iterdir())  # no temporary folder, no half checkpoint
    message = cli_module._os_error_message(stopped.value)
    assert message.startswith(f"{folder / 'model.safetensors'}: file too large")
    assert "run the same train command with --resume" in message


def test_a_full_disk_in_the_build_names_the_output_not_an_input(tiny_world: Path):
    import duckdb

    from sepsisrl.mimic.source import open_source, read_error

    out = "/data/ws/.ingest.partial-123/chart.parquet"
    exc = duckdb.IOException(
        'IO Error: Async write failed for range [offset=264115, size=285]: {"exception_type":'
        f'"IO","exception_message":"Could not write file \\"{out}\\": File too large",'
        '"errno":"27"}'
    )
    full = read_error(exc, open_source(tiny_world), "chartevents")
    assert isinstance(full, OSError) and full.errno == errno.EFBIG
    message = cli_module._os_error_message(full)
    assert message.startswith("/data/ws/ingest/chart.parquet: file too large")
    assert "cannot be read" not in message and "chartevents" not in message
    assert cli_module._duckdb_message(exc) == message
    no_space = duckdb.IOException(f'Could not write file "{out}": No space left on device')
    assert cli_module._duckdb_message(no_space).startswith(
        "/data/ws/ingest/chart.parquet: no space left on the device"
    )


def test_a_failed_csv_write_names_the_file_as_it_will_be_known(tmp_path: Path):
    import pyarrow as pa

    from sepsisrl.synth.csvgz import BackgroundWriter, GzipCsvFile

    class FullDisk:
        def write(self, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    (tmp_path / ".raw.partial-123" / "icu").mkdir(parents=True)
    f = GzipCsvFile(tmp_path / ".raw.partial-123" / "icu" / "chartevents.csv.gz", ["a"], 1)
    f._fh.close()
    f._fh = FullDisk()
    writer = BackgroundWriter({"chartevents": f})
    writer.submit("chartevents", pa.table({"a": [1, 2]}))
    with pytest.raises(OSError) as stopped:
        writer.close()
    assert stopped.value.errno == errno.ENOSPC
    assert stopped.value.filename == str(tmp_path / "raw" / "icu" / "chartevents.csv.gz")


def test_synth_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path: Path):
    out = tmp_path / "full_out"
    shell = 'ulimit -f 40; trap "" XFSZ; exec "$@"'
    proc = subprocess.run(
        ["bash", "-c", shell, "_", *cli("synth", "--out", out, "--stays", "60", "-q")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    err = words(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert f"error: {tmp_path}/full_out" in err and "file too large" in err, err
    assert ".partial-" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_study_records_the_final_evaluation_folder_not_its_temporary(tmp_path, monkeypatch):
    from sepsisrl.ope import behaviour, evaluate
    from sepsisrl.study import runner

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "policy.safetensors").write_bytes(b"weights")
    (run / "final_evaluation.json").write_text(json.dumps([{"at": "t0", "out": "/earlier"}]))

    def fake_evaluate(policy, replay_dir, out_dir, kind, final, cfg, behaviour):
        """What evaluate does with a final evaluation of a run: metrics and the run's record."""
        (Path(out_dir) / "metrics.json").write_text("{}\n")
        record = Path(policy) / "final_evaluation.json"
        history = json.loads(record.read_text())
        history.append({"at": "t1", "out": str(Path(out_dir).absolute())})
        record.write_text(json.dumps(history, indent=2) + "\n")

    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(behaviour.BehaviourModel, "load", staticmethod(lambda path: None))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "behaviour.safetensors").write_bytes(b"behaviour weights")  # part of the key
    out = tmp_path / "eval" / "iql-test"
    spec = {"spec": str(run), "kind": "run", "replay": str(tmp_path / "replay"), "out": str(out),
            "final": True, "key": "k", "behaviour": str(tmp_path / "b"),
            "cfg": {"fqe": {}, "gates": {}}}  # fmt: skip
    assert runner._ensure_eval(spec) is True
    history = read_json(run / "final_evaluation.json")
    assert [e["out"] for e in history] == ["/earlier", str(out.absolute())]
    assert (out / "metrics.json").is_file() and not list(out.parent.glob(".*partial*"))
