"""Where the study's units run: a local pool of worker processes, or a Ray cluster.

A unit is a JSON document (a training, evaluation or truth job) executed by
:func:`sepsisrl.study.runner.execute_unit`. Every executor has the same small interface:

* ``submit(job) -> concurrent.futures.Future``: the future's result is ``execute_unit``'s answer;
  a failed unit raises :class:`~sepsisrl.study.runner.StudyError` naming the unit;
* ``close(abort)``: stop, after the running units or at once (``abort``: interrupt, failure).

Units are keyed by their content (config, inputs, code), never by where they ran: a unit
finished by one executor is cached for the other, and the results are the same bytes.

A worker process that dies mid-unit (killed, out of memory, a lost node) is a system failure:
the unit is run again on a fresh worker (once on the local pool, ``RAY_MAX_RETRIES`` times on
Ray). A unit whose code raised failed for a reason and is not retried.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: how often Ray runs a unit again whose worker process or node died
RAY_MAX_RETRIES = 2


def _study_error(message: str) -> Exception:
    from sepsisrl.study.runner import StudyError  # runner imports this module

    return StudyError(message)


# ---------------------------------------------------------------- local worker processes
def resident_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` (``VmRSS``); a very large number where it cannot
    be read (no ``/proc``: then it always counts as above any limit)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return sys.maxsize


class LocalPool:
    """Persistent worker processes (``python -m sepsisrl.study.worker``) fed JSON lines.

    No pickling and no re-import of the caller's ``__main__``: a job is a JSON document, the
    answer one JSON line. Worker stderr goes to ``log``. A unit whose worker process died is run
    once more on a freshly started worker; a unit that raised is reported, not retried.
    """

    def __init__(self, n: int, log: Path) -> None:
        self.log = open(log, "a")  # noqa: SIM115 - closed in close()
        self.lock = threading.Lock()
        self.closing = False
        self.procs = [self._start() for _ in range(n)]
        self.idle: queue.Queue[subprocess.Popen] = queue.Queue()
        for p in self.procs:
            self.idle.put(p)
        self.threads = ThreadPoolExecutor(n)

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "sepsisrl.study.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def _replace(self, dead: subprocess.Popen) -> subprocess.Popen | None:
        """A fresh worker in place of ``dead`` (None while closing)."""
        with self.lock:
            if self.closing:
                return None
            fresh = self._start()
            self.procs[self.procs.index(dead)] = fresh
            return fresh

    def _exchange(self, proc: subprocess.Popen, job: dict[str, Any]) -> str:
        """Send ``job``, read the answer line ("" when the worker process died)."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            return proc.stdout.readline()
        except (OSError, ValueError):  # a broken pipe, or closed while waiting
            return ""

    def _call(self, job: dict[str, Any]) -> dict[str, Any]:
        label = job.get("label", "?")
        proc = self.idle.get()
        line = self._exchange(proc, job)
        retried = False
        while not line:  # the worker process died mid-unit
            try:
                status = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # its pipe broke but it still runs
                proc.kill()
                status = proc.wait()
            fresh = self._replace(proc)
            if fresh is None or retried:
                self.idle.put(fresh or proc)
                if fresh is None:
                    raise _study_error(f"unit {label}: stopped with the workers")
                raise _study_error(
                    f"unit {label} failed: its worker process died twice (last status "
                    f"{status}); see {self.log.name}"
                )
            self.log.write(
                f"sepsisrl: worker process exited (status {status}) during unit {label}; "
                "running it again on a fresh worker\n"
            )
            self.log.flush()
            proc, retried = fresh, True
            line = self._exchange(proc, job)
        self.idle.put(proc)
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise _study_error(
                f"unit {label} failed: {answer['error']} (traceback in {self.log.name})"
            )
        return answer

    def submit(self, job: dict[str, Any]) -> Future:
        return self.threads.submit(self._call, job)

    def recycle(self, above_bytes: int = 0) -> None:
        """Replace every worker holding more than ``above_bytes`` of resident memory by a fresh
        process (``0``: every worker); only between phases (no unit running).

        A worker's memory grows with what it ran - allocator arenas kept after training
        stacks and evaluations - and carried it into the truth phase, whose rollouts need about
        1.5 GB each: the card study peaked at 10.1 GiB that way (docs/run.md). A phase that
        starts on fresh workers needs only what its own units use. A fresh worker costs an
        interpreter start and its imports (about 3 s of CPU), so a lean one is kept: with the
        study's ``recycle_workers_above_gib`` no phase inherits more than that per worker.
        Where the resident size cannot be read (no ``/proc``), every worker is replaced."""
        with self.lock:
            if self.closing:
                return
            idle = [self.idle.get_nowait() for _ in range(self.idle.qsize())]
            if len(idle) != len(self.procs):
                for p in idle:
                    self.idle.put(p)
                raise RuntimeError("LocalPool.recycle: units are still running")
            old = [p for p in idle if above_bytes <= 0 or resident_bytes(p.pid) > above_bytes]
            for p in old:
                if p.stdin is not None and not p.stdin.closed:
                    with contextlib.suppress(OSError, ValueError):
                        p.stdin.close()  # an idle worker ends when its stdin closes
            fresh = {p.pid: self._start() for p in old}
            self.procs = [fresh.get(p.pid, p) for p in self.procs]
            for p in self.procs:
                self.idle.put(p)
        for p in old:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self, abort: bool = False) -> None:
        """Stop the workers: after their current job, or at once when ``abort`` (interrupt,
        failure) - every unit is atomic or resumable, so nothing finished is lost."""
        with self.lock:
            self.closing = True
            procs = list(self.procs)
        self.threads.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if abort and p.poll() is None:
                p.terminate()
            if p.stdin is not None and not p.stdin.closed:
                with contextlib.suppress(OSError, ValueError):
                    p.stdin.close()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()


# ---------------------------------------------------------------- Ray
def _identity() -> dict[str, str]:
    """What a worker must share with the driver: the package version and the training code."""
    import sepsisrl
    from sepsisrl.workspace import code_fingerprint

    return {"version": sepsisrl.__version__, "code": code_fingerprint("train")}


def _ray_unit(job: dict[str, Any], driver: dict[str, str]) -> dict[str, Any]:
    """A unit in a Ray worker, after checking that it runs the driver's sepsisrl."""
    from sepsisrl.study import worker
    from sepsisrl.study.runner import StudyError, execute_unit

    here = _identity()
    if here != driver:
        import socket

        raise StudyError(
            f"the Ray worker on {socket.gethostname()} runs sepsisrl {here['version']} (code "
            f"{here['code'][:12]}) but the study runs sepsisrl {driver['version']} (code "
            f"{driver['code'][:12]}): install the same sepsisrl on every node of the cluster "
            "(docs/run.md, 'Running on a Ray cluster')"
        )
    worker.exit_once_for_tests()
    return execute_unit(job)


def unit_resources(job: dict[str, Any], gpu_share: float = 1.0) -> dict[str, float]:
    """What a unit declares to Ray: its torch threads as CPUs, ``gpu_share`` of a GPU if it
    trains or evaluates on cuda (``ray_gpus_per_unit``)."""
    specs = [job.get("train"), *(job.get("stack") or [])]
    cuda = any(
        str(((s or {}).get("config") or {}).get("device", "")).startswith("cuda") for s in specs
    ) or str(((job.get("eval") or {}).get("cfg") or {}).get("device", "")).startswith("cuda")
    return {"num_cpus": float(job.get("threads") or 1), "num_gpus": gpu_share if cuda else 0.0}


class RayExecutor:
    """Units as Ray tasks, on a local Ray instance (``address`` None) or a running cluster.

    Every node needs the same sepsisrl (and torch) installed and the workspace at the same path
    (a shared filesystem): units read and write the workspace by path. Each task checks that its
    worker runs the driver's sepsisrl version and code. Remote tracebacks go to ``log``.
    """

    def __init__(self, address: str | None, log: Path, gpu_share: float = 1.0) -> None:
        import logging

        import ray

        self.ray = ray
        self.log = log
        self.gpu_share = gpu_share
        self.started = not ray.is_initialized()
        if self.started:
            options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
            if not address:
                options["include_dashboard"] = False
            ray.init(address=address or None, **options)
        self.driver = _identity()
        self.remote = ray.remote(_ray_unit)
        self.lock = threading.Lock()
        self.running: set[Any] = set()  # the refs of unfinished units (cancelled on abort)

    def submit(self, job: dict[str, Any]) -> Future:
        task = self.remote.options(
            **unit_resources(job, self.gpu_share),
            max_retries=RAY_MAX_RETRIES,
            retry_exceptions=False,
        )
        ref = task.remote(job, self.driver)
        with self.lock:
            self.running.add(ref)
        out: Future = Future()
        label = job.get("label", "?")

        def settle(done: Future) -> None:
            with self.lock:
                self.running.discard(ref)
            try:
                out.set_result(done.result())
            except BaseException as exc:
                out.set_exception(self._failure(label, exc))

        ref.future().add_done_callback(settle)
        return out

    def _failure(self, label: str, exc: BaseException) -> Exception:
        """A StudyError naming the unit and the original error; the full text goes to the log."""
        cause = getattr(exc, "cause", None) or exc
        details = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours the remote traceback
        with open(self.log, "a") as f:
            f.write(f"sepsisrl: unit {label} failed on Ray, remote traceback:\n{details}\n")
        if isinstance(exc, self.ray.exceptions.TaskCancelledError):
            return _study_error(f"unit {label}: cancelled")
        if isinstance(exc, self.ray.exceptions.RayTaskError):
            message = f"{type(cause).__name__}: {cause}"
        else:  # the worker or its node died more than RAY_MAX_RETRIES times, ...
            message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        return _study_error(f"unit {label} failed: {message} (details in {self.log})")

    def recycle(self, above_bytes: int = 0) -> None:
        """Nothing to do: Ray starts, reuses and stops its own worker processes."""

    def close(self, abort: bool = False) -> None:
        """Cancel the unfinished units when ``abort`` (their workers are killed; every unit is
        atomic or resumable), and stop Ray if this executor started it."""
        with self.lock:
            running, self.running = list(self.running), set()
        if abort:
            for ref in running:
                with contextlib.suppress(Exception):  # finished meanwhile
                    self.ray.cancel(ref, force=True)
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def check_executor(kind: str) -> None:
    """Fail at once, before any work, when executor ``kind`` cannot run here."""
    if kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise _study_error("--executor ray needs Ray: pip install 'sepsisrl[ray]'") from None
    elif kind != "local":
        raise _study_error(f"unknown executor {kind!r}: local or ray")


def make_executor(
    kind: str, workers: int, log: Path, address: str | None = None, gpu_share: float = 1.0
):
    """The executor of ``sepsisrl run``: ``local`` (``workers`` processes on this machine) or
    ``ray`` (a local Ray instance, or the cluster at ``address``; ``workers`` does not apply:
    Ray runs as many units at once as the cluster's CPUs and GPUs allow, a unit on cuda
    taking ``gpu_share`` of a GPU)."""
    check_executor(kind)
    if kind == "local":
        return LocalPool(workers, log)
    return RayExecutor(address, log, gpu_share)


__all__ = ["LocalPool", "RayExecutor", "check_executor", "make_executor"]
