"""Ctrl-C that cannot be lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives.
Raised inside a finaliser or a callback invoked from C, it is printed as "Exception ignored"
and the work goes on; and a process started with SIGINT ignored never sees it at all. Long,
atomic jobs (``synth``) therefore latch the signal: the handler records it (and raises as
usual), and the job calls :meth:`InterruptLatch.check` at safe points, so an interrupt is
honoured at the latest at the next one.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class InterruptLatch:
    def __init__(self) -> None:
        self.hit = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> InterruptLatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.hit = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if SIGINT arrived since entering (even if swallowed)."""
        if self.hit:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
