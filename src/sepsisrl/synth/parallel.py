"""Chunks of a synthetic world simulated side by side, in worker processes.

A world is simulated in chunks of ``output.chunk_subjects`` subjects, each from its own random
stream (``seed``, chunk index), so chunk ``i``'s rows do not depend on which process makes
them or when. :class:`ChunkWorkers` runs ``python -m sepsisrl.synth.parallel`` processes that
each simulate and chart whole chunks and answer with their tables as Arrow IPC streams; the
writing process receives the chunks in order and writes them as it would have written its
own, so the files are the same bytes with any number of workers (tests/test_synth_parallel.py).

Only the world's last chunk depends on the others (it keeps the first stays that still fit in
the requested count, and how many fit is known once the earlier chunks are in): a worker
simulates every chunk whole, and a last chunk with too many stays is simulated again, trimmed,
in the writing process. Workers get requests ahead of need (two each), and no more than the
stays still missing call for at the mean stays per chunk so far, so little is thrown away.

Test hook: with ``SEPSISRL_TEST_SYNTH_FAIL_CHUNK=<i>`` set, a worker fails on chunk ``i`` (the
tests of a failed world's clean-up use it).

Protocol (no pickling): a first line on stdin carries the world (configuration, seed, whether
the hourly truth is written); then one line per chunk, ``{"chunk": i}``. Each answer on
stdout is a JSON header line - ``{"ok": true, "chunk": i, "stays": n, "tables": [[group,
name, bytes], ...]}`` or ``{"ok": false, "error": ...}`` - followed by the tables' bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa

from sepsisrl.synth.config import SynthConfig
from sepsisrl.synth.csvgz import Segment, table_segment
from sepsisrl.synth.population import Attendings

#: requests a worker holds at a time: one it simulates, one it starts on next
DEPTH = 2
#: the test hook's environment variable (see the module's documentation)
FAIL_CHUNK = "SEPSISRL_TEST_SYNTH_FAIL_CHUNK"


def synth_workers(requested: int = 0) -> int:
    """Worker processes for a world: ``requested``, or (0) one per usable CPU core, at most 4
    (beyond that the writing process's formatting and compression is the bottleneck)."""
    if requested < 0:
        raise ValueError(f"workers must be 0 (one per CPU core) or more, got {requested}")
    if requested:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


@dataclass
class ChunkTables:
    """What one chunk adds to a world: the MIMIC rows by table (``rows``: Arrow tables, or
    from a worker their CSV text compressed as gzip segments), the truth sidecar's rows by file
    (``truth``), and its numbers of ICU stays and subjects."""

    index: int
    rows: dict[str, pa.Table | Segment]
    truth: dict[str, pa.Table]
    stays: int
    subjects: int


def chunk_tables(
    cfg: SynthConfig,
    seed: int,
    index: int,
    attendings: Attendings,
    hourly_truth: bool,
    room: int | None = None,
) -> ChunkTables:
    """Simulate and chart chunk ``index``; ``room``: keep only its first ``room`` stays (by
    subject, then stay) when it has more."""
    from sepsisrl.synth import tables
    from sepsisrl.synth.cohort import simulate_chunk
    from sepsisrl.synth.world import chart_chunk, first_stays

    n = cfg.output.chunk_subjects
    chunk = simulate_chunk(cfg, seed, index, attendings, index * n, n)
    if room is not None:
        chunk = first_stays(chunk, room)
    rows = chart_chunk(cfg, chunk, seed, index, attendings)
    truth = {"stays.parquet": tables.truth_stays(chunk)}
    if hourly_truth:
        truth["hourly.parquet"] = tables.truth_hourly(chunk)
    return ChunkTables(index, rows, truth, int(chunk.stays.n), rows["patients"].num_rows)


def serial_chunks(
    cfg: SynthConfig, seed: int, attendings: Attendings, hourly_truth: bool, n_stays: int
) -> Iterator[ChunkTables]:
    """The chunks of an ``n_stays`` world, made one after the other in this process."""
    done, index = 0, 0
    while done < n_stays:
        part = chunk_tables(cfg, seed, index, attendings, hourly_truth, room=n_stays - done)
        done += part.stays
        index += 1
        yield part


# ---------------------------------------------------------------- the workers' side
def _ipc_bytes(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _answer(out: IO[bytes], part: ChunkTables, level: int) -> None:
    """The chunk's MIMIC rows as compressed CSV segments, its truth as Arrow IPC streams."""
    segments = {k: table_segment(t, level) for k, t in part.rows.items()}
    truth = {k: _ipc_bytes(t) for k, t in part.truth.items()}
    header = {
        "ok": True, "chunk": part.index, "stays": part.stays, "subjects": part.subjects,
        "segments": [[k, len(g.deflated), g.crc, g.length, g.rows] for k, g in segments.items()],
        "truth": [[k, b.size] for k, b in truth.items()],
    }  # fmt: skip
    out.write((json.dumps(header) + "\n").encode())
    for g in segments.values():
        out.write(g.deflated)
    for b in truth.values():
        out.write(b)
    out.flush()


def main() -> None:
    from sepsisrl.interrupts import exit_with_parent
    from sepsisrl.synth.population import sample_attendings

    exit_with_parent()
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # anything printed goes to stderr, not the protocol
    try:
        world = json.loads(sys.stdin.readline())
        cfg = SynthConfig.model_validate(world["config"])
        seed, hourly = int(world["seed"]), bool(world["hourly_truth"])
        attendings = sample_attendings(cfg, seed)
        for line in sys.stdin:
            if not line.strip():
                continue
            index = int(json.loads(line)["chunk"])
            try:
                if os.environ.get(FAIL_CHUNK) == str(index):
                    raise RuntimeError(f"{FAIL_CHUNK} is set to chunk {index}")
                part = chunk_tables(cfg, seed, index, attendings, hourly)
            except Exception as exc:
                traceback.print_exc()
                error = {"ok": False, "chunk": index, "error": f"{type(exc).__name__}: {exc}"}
                out.write((json.dumps(error) + "\n").encode())
                out.flush()
                return
            _answer(out, part, cfg.output.gzip_level)
    except (KeyboardInterrupt, BrokenPipeError):  # the writing process stopped the world
        return


# ---------------------------------------------------------------- the writing process's side
class ChunkWorkers:
    """``n`` worker processes simulating the chunks of one world; :meth:`chunks` yields them in
    order. Use as a context manager: leaving it stops the workers (at once on an error)."""

    def __init__(self, cfg: SynthConfig, seed: int, hourly_truth: bool, n: int) -> None:
        self.cfg, self.seed, self.hourly = cfg, seed, hourly_truth
        self.answers: queue.Queue[tuple[int, Any]] = queue.Queue()
        first = json.dumps({"config": cfg.model_dump(mode="json"), "seed": seed,
                            "hourly_truth": hourly_truth}) + "\n"  # fmt: skip
        self.procs: list[subprocess.Popen] = []
        self.readers: list[threading.Thread] = []
        try:
            for w in range(n):
                proc = subprocess.Popen(
                    [sys.executable, "-m", "sepsisrl.synth.parallel"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                self.procs.append(proc)
                self._send(proc, first)
                reader = threading.Thread(
                    target=self._read, args=(w, proc), name=f"synth-chunks-{w}", daemon=True
                )
                reader.start()
                self.readers.append(reader)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _send(proc: subprocess.Popen, line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line.encode())
        proc.stdin.flush()

    def _read(self, w: int, proc: subprocess.Popen) -> None:
        """Reader thread of worker ``w``: each answer, decoded, into :attr:`answers`."""
        assert proc.stdout is not None
        stream = proc.stdout
        try:
            while True:
                line = stream.readline()
                if not line:
                    self.answers.put((w, None))  # the worker exited
                    return
                header = json.loads(line)
                if not header["ok"]:
                    self.answers.put((w, header))
                    return
                rows: dict[str, pa.Table | Segment] = {}
                truth: dict[str, pa.Table] = {}
                for name, size, crc, length, n_rows in header["segments"]:
                    rows[name] = Segment(self._bytes(stream, size), crc, length, n_rows)
                for name, size in header["truth"]:
                    data = pa.py_buffer(self._bytes(stream, size))
                    truth[name] = pa.ipc.open_stream(data).read_all()
                part = ChunkTables(
                    header["chunk"], rows, truth, header["stays"], header["subjects"]
                )
                self.answers.put((w, part))
        except EOFError:
            self.answers.put((w, None))  # the worker exited mid-answer
        except Exception as exc:  # a garbled answer: reported by chunks()
            self.answers.put((w, {"ok": False, "error": f"{type(exc).__name__}: {exc}"}))

    @staticmethod
    def _bytes(stream: IO[bytes], size: int) -> bytes:
        data = stream.read(size)
        if len(data) != size:
            raise EOFError
        return data

    def chunks(self, attendings: Attendings, n_stays: int) -> Iterator[ChunkTables]:
        """The chunks of an ``n_stays`` world in order (the last one trimmed here)."""
        n = len(self.procs)
        ready: dict[int, ChunkTables] = {}
        pending: deque[int] = deque()  # requested, in order
        done, asked, seen = 0, 0, 0
        while done < n_stays:
            mean = done / seen if seen else None
            while len(pending) < DEPTH * n and (
                mean is None or done + len(pending) * mean < n_stays
            ):
                self._send(self.procs[asked % n], json.dumps({"chunk": asked}) + "\n")
                pending.append(asked)
                asked += 1
            index = pending.popleft()
            while index not in ready:
                w, got = self.answers.get()
                if not isinstance(got, ChunkTables):
                    code = self.procs[w].poll()
                    why = got["error"] if isinstance(got, dict) else f"exit status {code}"
                    raise RuntimeError(f"simulating the world's chunks: worker {w} failed ({why})")
                ready[got.index] = got
            part = ready.pop(index)
            room = n_stays - done
            if part.stays > room:  # the last chunk: its first `room` stays, made here
                part = chunk_tables(self.cfg, self.seed, index, attendings, self.hourly, room)
            seen += 1
            done += part.stays
            yield part

    def stop(self, wait: bool = True) -> None:
        """End the workers: let them finish (``wait``) or kill them."""
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                if proc.stdin is not None:
                    proc.stdin.close()
            if not wait:
                with contextlib.suppress(OSError):
                    proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(OSError, ValueError):
                if proc.stdout is not None:
                    proc.stdout.close()

    def __enter__(self) -> ChunkWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        # workers still simulating chunks past the world's end are not waited for
        self.stop(wait=False)


if __name__ == "__main__":
    main()
