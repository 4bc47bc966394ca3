"""Worlds simulated by worker processes (``synth/parallel.py``): the same bytes as one process,
and a worker's failure stops the world cleanly."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import pytest

from sepsisrl.synth.csvgz import GzipCsvFile, crc32_combine, deflate_segment
from sepsisrl.synth.parallel import FAIL_CHUNK, ChunkWorkers, synth_workers
from sepsisrl.synth.population import sample_attendings
from sepsisrl.synth.world import generate_world

from .conftest import small_config


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_workers_write_the_bytes_of_one_process(tmp_path: Path):
    # 30-subject chunks: about eight, the last one trimmed to the stays still missing
    cfg = small_config(**{"output.chunk_subjects": 30, "charting.density": 0.2})
    one = generate_world(tmp_path / "one" / "mimic", 290, seed=7, cfg=cfg, workers=1)
    two = generate_world(tmp_path / "two" / "mimic", 290, seed=7, cfg=cfg, workers=2)
    assert one.n_stays == two.n_stays == 290
    assert one.n_subjects == two.n_subjects
    assert one.rows == two.rows
    files = digest_tree(one.out_dir)
    assert len(files) == 11
    assert digest_tree(two.out_dir) == files
    assert digest_tree(two.truth_dir) == digest_tree(one.truth_dir)
    # the segments make one gzip member that any reader takes, header line first
    text = gzip.decompress((two.out_dir / "icu" / "chartevents.csv.gz").read_bytes())
    lines = text.decode().splitlines()
    assert lines[0].startswith("subject_id,hadm_id,stay_id")
    assert len(lines) == 1 + two.rows["chartevents"]


def test_the_chunks_come_in_order_and_the_last_is_trimmed(tmp_path: Path):
    cfg = small_config(**{"output.chunk_subjects": 25, "charting.density": 0.0})
    attendings = sample_attendings(cfg, 3)
    with ChunkWorkers(cfg, 3, False, 2) as pool:
        parts = list(pool.chunks(attendings, 100))
    assert [p.index for p in parts] == list(range(len(parts)))
    assert sum(p.stays for p in parts) == 100
    assert all(set(p.truth) == {"stays.parquet"} for p in parts)  # no hourly truth asked for
    assert len(parts) >= 3


def test_a_failed_worker_stops_the_world_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_CHUNK, "2")
    cfg = small_config(**{"output.chunk_subjects": 20, "charting.density": 0.0})
    out = tmp_path / "mimic"
    with pytest.raises(RuntimeError, match=rf"worker \d failed \(RuntimeError: {FAIL_CHUNK}"):
        generate_world(out, 200, seed=1, cfg=cfg, workers=2)
    assert list(tmp_path.iterdir()) == []  # neither the trees nor their temporaries


def test_segments_concatenate_into_one_gzip_member(tmp_path: Path):
    pieces = [b"a,b\n", b"", b"1,2\n" * 5000, b"x,\n"]
    f = GzipCsvFile(tmp_path / "t.csv.gz", ["h1", "h2"], 1)
    f.append(deflate_segment(pieces[:2], 1, rows=1))
    f.append(deflate_segment(pieces[2:], 6, rows=5001))
    f.close()
    assert f.rows == 5002
    assert gzip.decompress((tmp_path / "t.csv.gz").read_bytes()) == b"h1,h2\n" + b"".join(pieces)
    for a, b in [(b"", b""), (b"abc", b""), (b"", b"xyz"), (b"left" * 999, b"right" * 777)]:
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_worker_count():
    assert 1 <= synth_workers(0) <= 4
    assert synth_workers(3) == 3
    with pytest.raises(ValueError, match="workers must be 0"):
        synth_workers(-1)
