"""Same seed -> same bytes (data) ; different seed -> different data; nothing half-written."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sepsisrl.synth.world import WorldExistsError, generate_world

from .conftest import small_config


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes(tmp_path: Path):
    cfg = small_config(**{"output.chunk_subjects": 40, "charting.density": 0.2})
    a = generate_world(tmp_path / "a" / "mimic", 120, seed=5, cfg=cfg)
    b = generate_world(tmp_path / "b" / "mimic", 120, seed=5, cfg=cfg)
    da, db = digest_tree(a.out_dir), digest_tree(b.out_dir)
    assert len(da) == 11
    assert da == db
    ta, tb = digest_tree(a.truth_dir), digest_tree(b.truth_dir)
    wa = json.loads((a.truth_dir / "world.json").read_text())
    assert wa["files"] == {k: v for k, v in da.items()}
    assert ta == tb


def test_different_seed_gives_different_data(tmp_path: Path):
    cfg = small_config(**{"output.chunk_subjects": 40, "charting.density": 0.0})
    a = generate_world(tmp_path / "a" / "mimic", 60, seed=1, cfg=cfg)
    b = generate_world(tmp_path / "b" / "mimic", 60, seed=2, cfg=cfg)
    da, db = digest_tree(a.out_dir), digest_tree(b.out_dir)
    assert da["icu/chartevents.csv.gz"] != db["icu/chartevents.csv.gz"]
    assert da["icu/d_items.csv.gz"] == db["icu/d_items.csv.gz"]  # dictionaries are fixed


def test_exactly_n_stays_are_written(tmp_path: Path):
    cfg = small_config(**{"output.chunk_subjects": 50, "charting.density": 0.0})
    s = generate_world(tmp_path / "m", 77, seed=3, cfg=cfg)
    assert s.n_stays == 77
    assert s.rows["icustays"] == 77
    assert s.rows["admissions"] == 77
    assert s.rows["patients"] == s.n_subjects <= 77


def test_existing_output_is_not_overwritten_without_permission(tmp_path: Path):
    cfg = small_config(**{"output.chunk_subjects": 20, "charting.density": 0.0})
    generate_world(tmp_path / "m", 10, seed=3, cfg=cfg)
    with pytest.raises(WorldExistsError, match="--overwrite"):
        generate_world(tmp_path / "m", 10, seed=3, cfg=cfg)
    generate_world(tmp_path / "m", 12, seed=3, cfg=cfg, overwrite=True)


def test_truth_inside_the_tree_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="next to, not inside"):
        generate_world(tmp_path / "m", 10, seed=3, truth_dir=tmp_path / "m" / "truth")


def test_interrupted_generation_leaves_no_partial_output(tmp_path: Path):
    """Kill the CLI mid-run: neither the tree nor the sidecar nor temporary folders remain."""
    out = tmp_path / "world"
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sepsisrl.cli", "synth", "--out", str(out), "--stays", "3000", "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # the truth sidecar's stays file is opened once the first of several chunks is simulated: the
    # generation is then past its set-up and well before its end
    first_chunk = ".world_truth.partial-*/stays.parquet"
    deadline = time.monotonic() + 180
    while not any(tmp_path.glob(first_chunk)):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "no chunk was generated within 180 s"
        time.sleep(0.05)
    assert any(tmp_path.glob(".world.partial-*"))
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=180)  # generous: a loaded 2-core machine finishes the current chunk first
    assert proc.returncode != 0, proc.stderr.read().decode() if proc.stderr else ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_interrupt_swallowed_mid_chunk_is_honoured_at_the_next_safe_point():
    """SIGINT raised where Python swallows it (a finaliser, a C callback) is not lost."""
    from sepsisrl.interrupts import InterruptLatch

    before = signal.getsignal(signal.SIGINT)
    with InterruptLatch() as latch:
        latch.check()  # nothing pending
        try:
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until the handler runs (and raises)
                time.sleep(0.01)
        except KeyboardInterrupt:
            pass  # swallowed, as "Exception ignored in ..." would
        assert latch.hit, "SIGINT was not delivered within 60 s"
        with pytest.raises(KeyboardInterrupt):
            latch.check()
    assert signal.getsignal(signal.SIGINT) is before
