"""A study worker: reads one JSON job per line on stdin, answers one JSON line on stdout.

Started by :class:`sepsisrl.study.runner.WorkerPool`; not meant to be run by hand.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # anything printed by the work goes to the log, not the protocol
    from sepsisrl.study.runner import execute_unit

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = {"ok": True, **execute_unit(json.loads(line))}
        except Exception as exc:
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
