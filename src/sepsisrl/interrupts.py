"""Ctrl-C that cannot be lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives.
Raised inside a finaliser or a callback invoked from C, it is printed as "Exception ignored"
and the work goes on; and a process started with SIGINT ignored never sees it at all. Long,
atomic jobs (``synth``) therefore latch the signal: the handler records it (and raises as
usual), and the job calls :meth:`InterruptLatch.check` at safe points, so an interrupt is
honoured at the latest at the next one.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any


class InterruptLatch:
    """Latch ``signals`` (default SIGINT; add SIGTERM for batch schedulers) as KeyboardInterrupt.

    Installing the handler explicitly also overrides an inherited "ignore" disposition (a job
    started in the background of a non-interactive shell ignores SIGINT), so ``kill -INT``
    always stops the work cleanly.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT,)) -> None:
        self.signals = signals
        self.hit = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> InterruptLatch:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.hit = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a signal arrived since entering (even if swallowed)."""
        if self.hit:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            if previous is None:  # set from C: fall back to Python's defaults
                previous = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, previous)
        self._previous = {}


def exit_with_parent(poll_seconds: float = 1.0) -> threading.Thread:
    """Exit as soon as the process that started this worker is gone.

    The study (and a synthetic world's writer) stops its workers itself on an interrupt or a
    failure, and an idle worker ends when its stdin closes; this covers a busy worker whose
    driver could not stop it (SIGKILL, a crash, a benchmark without the study's signal
    handling), so that no worker is left working in the background. Every unit is atomic or
    resumable, so stopping one mid-way loses nothing finished."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:  # re-parented: the driver is gone
                os._exit(143)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread
