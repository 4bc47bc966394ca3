"""One writer per workspace and folder: a second command is refused (or waits with --wait), a
lock left by a killed command is taken over, and only ended processes' temporaries are removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sepsisrl import locks
from sepsisrl.locks import FolderLockedError, folder_lock, lock_path, pid_alive
from sepsisrl.workspace import remove_partials

from .rl_fixtures import FAST_CLI, write_replay

HOLDER = """
import sys
from sepsisrl import locks
locks.COMMAND = "sepsisrl build"
with locks.folder_lock(sys.argv[1], "workspace"):
    print("held", flush=True)
    sys.stdin.readline()
"""


#: ``sepsisrl`` itself, telling on stdout (once) that it found its folder busy and waits: the
#: test then knows the wait has begun instead of sleeping "long enough" for it to begin.
WAITER = """
import fcntl
import sys

from sepsisrl import cli, locks


class Flock:
    told = False

    def __getattr__(self, name):
        return getattr(fcntl, name)

    def flock(self, fd, op):
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            if not self.told:
                self.told = True
                print("waiting", flush=True)
            raise


locks.fcntl = Flock()
sys.argv = ["sepsisrl", *sys.argv[1:]]
cli.main()
"""


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "sepsisrl.cli", *map(str, args)]


def first_line(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """The first line ``proc`` prints ("" if it ends first); fails after ``timeout`` seconds."""
    assert proc.stdout is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line:
        proc.kill()
        pytest.fail(f"no line from {proc.args} within {timeout} s")
    return line[0].strip()


def hold(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert first_line(proc) == "held"
    return proc


def release(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


def test_a_second_writer_is_refused_naming_the_holder_and_may_wait(tmp_path: Path):
    ws = tmp_path / "ws"
    holder = hold(ws)
    try:
        info = json.loads(lock_path(ws).read_text())
        assert info["pid"] == holder.pid and info["command"] == "sepsisrl build"
        assert {"host", "started"} <= info.keys()
        with pytest.raises(FolderLockedError) as refused, folder_lock(ws, "workspace", wait=False):
            pass
        message = str(refused.value)
        expected = f"workspace {ws} is in use by `sepsisrl build` (pid {holder.pid}, started "
        assert expected in message
        assert "--wait" in message
    finally:
        release(holder)
    # the holder released it and removed the lock file; now it is free
    assert not lock_path(ws).exists()
    with folder_lock(ws, "workspace", wait=False) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with folder_lock(ws, "workspace", wait=False):  # re-entrant in one process
            pass
        assert path.exists()
    assert not path.exists()
    # folders created only to hold the lock file go with it
    with folder_lock(tmp_path / "a" / "b" / "ws", "workspace", wait=False):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()


def test_wait_starts_when_the_holder_ends(tmp_path: Path):
    import threading

    ws = tmp_path / "ws"
    holder = hold(ws)
    started = time.monotonic()
    timer = threading.Timer(0.5, release, (holder,))
    timer.start()
    try:
        with folder_lock(ws, "workspace", wait=True) as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        timer.join()
    assert time.monotonic() - started >= 0.4


def test_a_stale_lock_of_a_killed_process_is_taken_over_with_a_note(tmp_path: Path, monkeypatch):
    ws = tmp_path / "ws"
    holder = hold(ws)
    holder.send_signal(signal.SIGKILL)  # no chance to remove its lock file
    holder.wait()
    assert lock_path(ws).is_file()
    notes: list[str] = []
    monkeypatch.setattr(locks, "NOTE", notes.append)
    with folder_lock(ws, "workspace", wait=False):
        pass
    assert len(notes) == 1
    assert f"took over the stale lock of `sepsisrl build` (pid {holder.pid}" in notes[0]


def test_without_flock_a_dead_pid_on_this_host_is_stale(tmp_path: Path, monkeypatch):
    """The O_EXCL fallback (file systems without flock): a live holder refuses, a dead one is
    taken over."""
    ws = tmp_path / "ws"
    monkeypatch.setattr(locks, "fcntl", None)
    notes: list[str] = []
    monkeypatch.setattr(locks, "NOTE", notes.append)
    import socket

    path = lock_path(ws)
    live = {"pid": os.getppid(), "host": socket.gethostname(), "command": "sepsisrl run",
            "started": "T"}  # fmt: skip
    path.write_text(json.dumps(live))
    busy = r"in use by `sepsisrl run` \(pid \d+, started T"
    with pytest.raises(FolderLockedError, match=busy), folder_lock(ws, "workspace", wait=False):
        pass
    path.write_text(json.dumps({**live, "pid": dead_pid()}))
    with folder_lock(ws, "workspace", wait=False):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert notes and "stale lock" in notes[0]
    assert not path.exists()


def test_only_temporaries_of_ended_processes_are_removed(tmp_path: Path):
    gone = dead_pid()
    live = tmp_path / f".stage.partial-{os.getpid()}"
    dead = tmp_path / f".stage.partial-{gone}"
    dead_file = tmp_path / f".stage.json.tmp-{gone}"
    other = tmp_path / f".other.partial-{gone}"
    keep = [tmp_path / ".hidden", tmp_path / "stage.partial-1", tmp_path / ".x.partial-abc"]
    for d in (live, dead, other, *keep):
        d.mkdir()
    dead_file.write_text("{}")
    removed = remove_partials(tmp_path, ("stage", "stage.json"))
    assert sorted(removed) == sorted([dead, dead_file])
    assert live.is_dir() and other.is_dir() and all(k.is_dir() for k in keep)
    assert remove_partials(tmp_path) == [other]


def test_synth_removes_the_temporaries_of_a_killed_synth(tmp_path: Path):
    from sepsisrl.synth.world import generate_world

    from .conftest import small_config

    gone = dead_pid()
    debris = [tmp_path / f".w.partial-{gone}", tmp_path / f".w_truth.partial-{gone}"]
    for d in debris:
        (d / "hosp").mkdir(parents=True)
    generate_world(tmp_path / "w", 30, seed=1, cfg=small_config(**{"charting.density": 0.0}))
    assert not any(d.exists() for d in debris)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w", "w_truth"]


def test_build_into_a_workspace_in_use_is_refused_then_waits_with_wait(tmp_path: Path):
    ws = tmp_path / "ws"
    holder = hold(ws)
    try:
        proc = subprocess.run(
            cli("build", "--source", tmp_path / "nowhere", "--workspace", ws, "-q"),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 2, proc.stderr
        assert f"workspace {ws} is in use by `sepsisrl build` (pid {holder.pid}" in err
        assert "Traceback" not in proc.stderr
        waiting = subprocess.Popen(
            [sys.executable, "-c", WAITER, "--wait", "export", "--run", str(tmp_path / "norun"),
             "--out", str(ws)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # returns once the waiter has met the held lock (or ended: then the line is missing)
        assert first_line(waiting) == "waiting", waiting.communicate()
        assert waiting.poll() is None, waiting.communicate()
    finally:
        release(holder)
    _, err = waiting.communicate(timeout=120)
    # it got the folder and went on to its own (expected) error about the missing run
    assert waiting.returncode == 2 and "in use" not in err and "norun" in err, err
    assert not ws.exists()


def test_run_refuses_a_workspace_another_command_is_building(tmp_path: Path):
    """`sepsisrl run` takes the workspace before starting anything (no worker is started)."""
    ws = tmp_path / "ws"
    holder = hold(ws)
    try:
        proc = subprocess.run(
            cli("run", "--workspace", ws, "--source", tmp_path, "-q"),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        release(holder)
    assert proc.returncode == 2, proc.stderr
    assert "is in use by `sepsisrl build`" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("locks") / "ws" / "replay" / "sofa_shaped"
    write_replay(folder, 60, 7, 3, seed=8)
    return folder


@pytest.mark.slow
def test_two_trainings_into_one_run_folder_never_both_succeed_on_mixed_output(
    replay: Path, tmp_path: Path
):
    """The fault-injection case: two `train --overwrite` into one run folder at once used to
    both exit 0 with interleaved metrics. The second is refused while the first trains (held
    still with SIGSTOP so the overlap is certain); the folder holds exactly one run."""
    run = tmp_path / "run"
    args = ["--replay", replay, "--algo", "bc", "--steps", "3000", *FAST_CLI,
            "--set", "log_every=10", "--out", run, "--overwrite", "-q"]  # fmt: skip
    first = subprocess.Popen(cli("train", *args), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        metrics = run / "metrics.jsonl"
        while not (metrics.is_file() and metrics.stat().st_size):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)
        assert lock_path(run).is_file(), "the first training ended before it was held still"
        second = subprocess.run(cli("train", *args), capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    message = " ".join(second.stderr.split())
    assert f"run folder {run} is in use by `sepsisrl train` (pid {first.pid}" in message
    assert "Traceback" not in second.stderr
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(10, 3001, 10))
    assert (run / "final" / "policy.safetensors").is_file()
    assert not lock_path(run).exists()


def test_a_resume_removes_the_checkpoint_temporaries_of_a_killed_training(tmp_path: Path):
    from sepsisrl.rl.checkpoint import latest_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    dead = ckpts / f".step_00000200.partial-{dead_pid()}"
    live = ckpts / f".step_00000300.partial-{os.getppid()}"  # a running process's: kept
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path / "run") is None
    assert not dead.exists() and live.is_dir()


def test_a_second_truth_command_waits_for_the_population_and_reuses_it(tmp_path, monkeypatch):
    """The shared population cache: while another process writes a population, a second
    command waits for its lock, then finds it finished and simulates nothing."""
    import threading
    from types import SimpleNamespace

    from sepsisrl.synth.config import load_synth_config
    from sepsisrl.truth import world

    simulated: list[int] = []
    monkeypatch.setattr(world, "_simulate_into", lambda *args: simulated.append(1))
    folder = tmp_path / "truth" / "populations" / "abc"
    holder = hold(folder)

    def finish() -> None:  # the first command completes its population, then ends
        folder.mkdir(parents=True)
        (folder / "population.json").write_text("{}\n")
        release(holder)

    ctx = SimpleNamespace(synth_cfg=load_synth_config(), world_seed=0)
    timer = threading.Timer(0.5, finish)
    started = time.monotonic()
    timer.start()
    try:
        pop = world.simulate_population(ctx, 1, 10, folder)
    finally:
        timer.join()
    assert time.monotonic() - started >= 0.4
    assert pop.folder == folder and simulated == []
    # with nobody holding it, a missing population is simulated (under its lock)
    other = folder.with_name("def")
    world.simulate_population(ctx, 1, 10, other)
    assert simulated == [1] and not lock_path(other).exists()
