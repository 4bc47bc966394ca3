"""A study worker: reads one JSON job per line on stdin, answers one JSON line on stdout.

Started by :class:`sepsisrl.study.executors.LocalPool`; not meant to be run by hand.

Test hook: with ``SEPSISRL_TEST_WORKER_EXIT_ONCE=<marker file>`` set, the first unit to start
(in a local worker or a Ray task) creates the marker and kills its own process, as a worker
lost mid-unit would die; later units run normally. The tests of the executors' retries use it.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from sepsisrl.interrupts import exit_with_parent

#: the test hook's environment variable (see the module's documentation)
EXIT_ONCE = "SEPSISRL_TEST_WORKER_EXIT_ONCE"


def exit_once_for_tests() -> None:
    """Die abruptly the first time, when the test hook is set (and never otherwise)."""
    marker = os.environ.get(EXIT_ONCE)
    if not marker:
        return
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return
    os._exit(17)


def main() -> None:
    exit_with_parent()
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # anything printed by the work goes to the log, not the protocol
    from sepsisrl.study.runner import execute_unit

    for line in sys.stdin:
        if not line.strip():
            continue
        exit_once_for_tests()
        try:
            answer = {"ok": True, **execute_unit(json.loads(line))}
        except Exception as exc:
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
