"""Fault-injection battery: feed sepsisrl bad input, kill it, race it, and judge what it does.

Usage:  python bench/faults.py [--fast] [--family F[,G]] [--only PATTERN] [--jobs N]
                               [--out results.json] [--root DIR] [--keep] [--list]

Every case makes one faulty input (a raw table, a replay, a run, a bundle, a folder, a signal)
from a small clean world shared by the whole battery - ``sepsisrl synth`` (150 stays), its
``build``, a 400-step ``train``, an ``evaluate`` and an ``export``, made once per battery run -
then runs the real command line in subprocesses (or a Python snippet for the exported
``modeling_iql.py``) and compares what happened with what must happen:

  refused     non-zero exit, no Python traceback, a message naming the file, table, column or
              setting at fault (the case's expected words)
  recovered   exit 0 and output correct (usually byte-identical to the clean build or run)
  identical   after a kill -9 or an interrupt, the rerun ends with bytes identical to the clean
              reference

Each case ends in one outcome: ``pass``; ``silent wrong`` (exit 0 but the output is wrong,
stale or changed); ``traceback`` (a Python traceback for a user error); ``unclear refusal``
(refused, but the message lacks the expected name, or the exit status is wrong);
``wrong refusal`` (refused where recovery was expected); ``debris`` (hidden or partial
files left behind: ``.*.partial-*``, ``*.tmp-*``, ...); ``hang`` (ran past its timeout); and
``error`` (the battery itself could not set the case up). The table and the counts per outcome
are printed; ``--out`` writes them as JSON. Exit status 0 when every selected case passes.

``--fast`` selects the quick subset (bundle, API and replay-meta cases, about a minute) that
``tests/test_faults.py`` runs. See docs/faults.md.
"""

from __future__ import annotations

import argparse
import calendar
import csv
import datetime as dt
import fnmatch
import gzip
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PY = sys.executable
TRACEBACK = "Traceback (most recent call last)"
OUTCOMES = (
    "pass", "silent wrong", "traceback", "unclear refusal", "wrong refusal", "debris", "hang",
    "error",
)  # fmt: skip
EXPECTED = ("refused", "recovered", "identical")
FAMILIES = ("raw", "config", "replay", "bundle", "kill", "concurrent", "os", "control")

#: The shared world and the training settings of the reference run (tiny, deterministic).
WORLD_ARGS = ["--stays", "150", "--seed", "0", "--density", "0", "-q"]
TRAIN_SETTINGS = [
    "--steps", "400", "--set", "batch_size=64", "--set", "hidden_sizes=[64,64]",
    "--set", "log_every=50", "--set", "checkpoint_every=100", "--set", "keep_checkpoints=10",
    "--set", "threads=1", "-q",
]  # fmt: skip
SHORT_TRAIN = [
    "--steps", "20", "--set", "batch_size=64", "--set", "hidden_sizes=[64,64]",
    "--set", "threads=1", "-q",
]  # fmt: skip
EVAL_SETTINGS = ["--resamples", "100"]
STAGES = (
    "ingest", "measurements", "sepsis", "cohort", "episodes", "splits", "actions", "features",
    "replay", "audit",
)  # fmt: skip
VASOPRESSORS = ("221906", "221289", "221749", "221662", "222315")
NOREPINEPHRINE, SALINE, HEART_RATE, LACTATE = "221906", "225158", "220045", "50813"
#: Names that are debris when found after a case (a lock file is not: a stale lock is harmless).
DEBRIS = re.compile(r"\.partial|\.tmp-|\.tmp$|\.incomplete|\.inprogress")
INTERRUPT_WORDS = ("again|--resume",)


# ------------------------------------------------------------------------------ processes
@dataclass
class Proc:
    """One finished subprocess."""

    label: str
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def text(self) -> str:
        return self.stdout + "\n" + self.stderr

    def brief(self) -> str:
        lines = [ln.strip() for ln in self.stderr.strip().splitlines() if ln.strip()]
        return (lines[-1] if lines else self.stdout.strip()[-200:])[:200]


class Bg:
    """A subprocess in its own session, output to files under ``<case>/_logs``."""

    def __init__(
        self,
        ctx: Ctx,
        argv: list[str],
        d: Path,
        label: str,
        *,
        env: dict[str, str] | None = None,
        ignore_sigint: bool = False,
        cwd: Path | None = None,
    ) -> None:
        logs = d / "_logs"
        logs.mkdir(parents=True, exist_ok=True)
        n = len(list(logs.glob("*.cmd")))
        self.label = label or f"p{n}"
        base = logs / f"{n:02d}-{re.sub(r'[^A-Za-z0-9_-]', '_', self.label)[:40]}"
        base.with_suffix(".cmd").write_text(" ".join(argv) + "\n")
        self.out_path, self.err_path = base.with_suffix(".out"), base.with_suffix(".err")
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
        self.t0 = time.perf_counter()
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.p = subprocess.Popen(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env or ctx.env,
                cwd=cwd, start_new_session=True, preexec_fn=preexec,
            )  # fmt: skip

    def running(self) -> bool:
        return self.p.poll() is None

    def send(self, sig: int) -> None:
        if self.running():
            os.kill(self.p.pid, sig)

    def wait(self, timeout: float) -> Proc:
        timed_out = False
        try:
            self.p.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            with _suppress():
                os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        seconds = time.perf_counter() - self.t0
        read = lambda p: p.read_text(errors="replace")  # noqa: E731
        rc = None if timed_out else self.p.returncode
        return Proc(self.label, rc, read(self.out_path), read(self.err_path), seconds, timed_out)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


def wait_until(pred: Callable[[], bool], bg: Bg | None, timeout: float) -> bool:
    """Poll ``pred`` every few milliseconds until it holds, ``bg`` ends, or ``timeout``."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if pred():
            return True
        if bg is not None and not bg.running():
            return pred()
        time.sleep(0.003)
    return False


# ------------------------------------------------------------------------------ the context
class SetupError(Exception):
    """The battery could not prepare a case (not a finding about sepsisrl)."""


class Ctx:
    """The battery's temporary root and the clean shared artifacts (made once, read-only)."""

    def __init__(self, root: Path, timeout_scale: float = 1.0) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # the read-only cases run as an unprivileged user
        self.base = root / "base"
        self.world = self.base / "raw"
        self.truth = self.base / "raw_truth"
        self.ws = self.base / "ws"
        self.replay = self.ws / "replay" / "sofa_shaped"
        self.run = self.base / "run"
        self.eval = self.base / "eval"
        self.bundle = self.base / "bundle"
        self.scale = timeout_scale
        mpl = root / "home"
        mpl.mkdir(exist_ok=True)
        os.chmod(mpl, 0o777)
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "250",
            "NO_COLOR": "1", "TERM": "dumb", "MPLCONFIGDIR": str(mpl),
        }  # fmt: skip
        self.env.pop("FORCE_COLOR", None)
        self.ready: dict[str, float] = {}
        self.failed: dict[str, str] = {}

    # commands --------------------------------------------------------------------------
    def cli_argv(self, *args: object) -> list[str]:
        return [PY, "-m", "sepsisrl.cli", *map(str, args)]

    def cli(self, d: Path, *args: object, timeout: float = 120, label: str = "") -> Proc:
        return Bg(self, self.cli_argv(*args), d, label or str(args[0])).wait(timeout * self.scale)

    def bg(self, d: Path, *args: object, label: str = "", **kw) -> Bg:
        return Bg(self, self.cli_argv(*args), d, label or str(args[0]), **kw)

    def py(self, d: Path, code: str, *args: object, timeout: float = 60, label: str = "py") -> Proc:
        argv = [PY, "-c", code, *map(str, args)]
        return Bg(self, argv, d, label).wait(timeout * self.scale)

    # shared artifacts --------------------------------------------------------------------
    def prepare(self, needs: set[str]) -> None:
        order = ["world", "build", "run", "bundle", "eval"]
        deps = {"world": [], "build": ["world"], "run": ["build"], "bundle": ["run"],
                "eval": ["run"]}  # fmt: skip
        want: set[str] = set()

        def add(n: str) -> None:
            want.add(n)
            for dep in deps[n]:
                add(dep)

        for n in needs:
            if n in deps:
                add(n)
        for name in order:
            if name in want and name not in self.ready and name not in self.failed:
                if any(dep in self.failed for dep in deps[name]):
                    self.failed[name] = f"needs {deps[name]}, which failed"
                    continue
                done = self.base / f"{name}.done"  # a kept --root reuses its fixtures
                if done.is_file():
                    self.ready[name] = 0.0
                    continue
                t0 = time.perf_counter()
                proc = getattr(self, f"_make_{name}")()
                if proc.rc != 0:
                    self.failed[name] = f"{name} fixture failed (exit {proc.rc}): {proc.brief()}"
                else:
                    self.ready[name] = round(time.perf_counter() - t0, 1)
                    done.write_text(f"{self.ready[name]}\n")

    def _make_world(self) -> Proc:
        return self.cli(self.base, "synth", "--out", self.world, *WORLD_ARGS, timeout=300)

    def _make_build(self) -> Proc:
        return self.cli(self.base, "build", "--source", self.world, "--workspace", self.ws, "-q")

    def _make_run(self) -> Proc:
        return self.cli(self.base, "train", "--replay", self.replay, "--out", self.run,
                        *TRAIN_SETTINGS, timeout=300)  # fmt: skip

    def _make_eval(self) -> Proc:
        return self.cli(self.base, "evaluate", "--replay", self.replay, "--run", self.run,
                        "--out", self.eval, *EVAL_SETTINGS, timeout=300)  # fmt: skip

    def _make_bundle(self) -> Proc:
        return self.cli(self.base, "export", "--run", self.run, "--out", self.bundle)


# ------------------------------------------------------------------------------ cases
Act = Callable[[Ctx, Path], list[Proc]]
Check = Callable[[Ctx, Path, list[Proc]], str | None]
Judge = Callable[[Ctx, Path, list[Proc]], tuple[str, str] | None]


@dataclass
class Case:
    id: str
    family: str
    description: str
    expected: str  # refused | recovered | identical
    act: Act
    #: refused: every entry must appear in the message (case-insensitive; "a|b" = either)
    words: tuple[str, ...] = ()
    #: refused: none of these may appear (e.g. advice to unpickle with weights_only=False)
    forbid: tuple[str, ...] = ()
    #: recovered / identical: the output is right (None) or what is wrong with it; refused:
    #: a side condition (no marker file, no half-written output)
    check: Check | None = None
    #: other outcomes that also count as a pass (e.g. refused OR deduplicated)
    also: tuple[str, ...] = ()
    #: refused: the allowed exit statuses (default any status above 0)
    rc: tuple[int, ...] = ()
    #: shared artifacts needed: world, build, run, eval, bundle
    needs: tuple[str, ...] = ("build",)
    fast: bool = False
    timeout: float = 240
    #: replaces the default judgement (concurrent cases): (outcome, note) or None for pass
    judge: Judge | None = None


@dataclass
class Result:
    id: str
    family: str
    expected: str
    outcome: str
    seconds: float
    note: str = ""
    exit_codes: list[int | None] = field(default_factory=list)


def _has(text: str, word: str) -> bool:
    flat = " ".join(text.split()).lower()
    joined = "".join(text.split()).lower()
    return any(w.lower() in flat or "".join(w.split()).lower() in joined for w in word.split("|"))


def find_debris(d: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(d):
        rel = Path(dirpath).relative_to(d)
        if rel.parts and rel.parts[0] == "_logs":
            continue
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            if DEBRIS.search(name) or (
                name == ".duckdb_tmp" and full.is_dir() and any(full.iterdir())
            ):
                found.append(str(rel / name))
        dirnames[:] = [n for n in dirnames if not (Path(dirpath) / n).is_symlink()]
    return sorted(found)


def _refusal(case: Case, p: Proc) -> tuple[str, str]:
    """Judge a process that should have refused."""
    if p.rc == 0:
        return "silent wrong", "exit 0: the faulty input was accepted"
    if p.rc is not None and p.rc < 0:
        return "unclear refusal", f"died of signal {-p.rc} without a clean exit"
    if case.rc and p.rc not in case.rc:
        return (
            "unclear refusal",
            f"exit {p.rc}, expected {'/'.join(map(str, case.rc))}: {p.brief()}",
        )
    missing = [w for w in case.words if not _has(p.stderr + p.stdout, w)]
    if missing:
        return "unclear refusal", f"message lacks {' and '.join(missing)}: {p.brief()}"
    bad = [w for w in case.forbid if _has(p.stderr + p.stdout, w)]
    if bad:
        return "unclear refusal", f"message contains {', '.join(bad)}: {p.brief()}"
    return "pass", ""


def judge(ctx: Ctx, case: Case, d: Path, procs: list[Proc]) -> tuple[str, str]:
    if any(p.timed_out for p in procs):
        p = next(p for p in procs if p.timed_out)
        return "hang", f"{p.label} still running after {p.seconds:.0f} s"
    for p in procs:
        if TRACEBACK in p.stderr or TRACEBACK in p.stdout:
            lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
            return "traceback", f"{p.label}: {(lines[-1] if lines else '?')[:180]}"
    if case.judge is not None:
        verdict = case.judge(ctx, d, procs)
        if verdict is not None:
            return verdict
        outcome, note = "pass", ""
    else:
        main = procs[-1]
        outcome, note = "pass", ""
        if case.expected == "refused":
            outcome, note = _refusal(case, main)
            if outcome == "silent wrong" and "recovered" in case.also and case.check:
                problem = case.check(ctx, d, procs)
                outcome, note = ("pass", "") if problem is None else ("silent wrong", problem)
            elif outcome == "pass" and case.check and "recovered" not in case.also:
                problem = case.check(ctx, d, procs)
                if problem:
                    outcome, note = "silent wrong", problem
        else:
            if main.rc != 0:
                if "refused" in case.also and main.rc is not None and main.rc > 0:
                    outcome, note = _refusal(case, main)
                else:
                    outcome, note = "wrong refusal", f"exit {main.rc}: {main.brief()}"
            elif case.check:
                problem = case.check(ctx, d, procs)
                if problem:
                    outcome, note = "silent wrong", problem
    if outcome in ("pass", "unclear refusal", "wrong refusal"):
        debris = find_debris(d)
        if debris:
            return "debris", f"left behind: {', '.join(debris[:4])}"
    return outcome, note


def run_case(ctx: Ctx, case: Case, workdir: Path, n: int) -> Result:
    # a neutral folder name: a message must not "name the table" through the case's own path
    d = workdir / f"c{n:03d}"
    if d.exists():
        _rmtree(d)
    (d / "_logs").mkdir(parents=True)
    (d / "_logs" / "case.txt").write_text(f"{case.id}\n{case.description}\n")
    t0 = time.perf_counter()
    missing = [n for n in case.needs if n in ctx.failed]
    if missing:
        return Result(case.id, case.family, case.expected, "error", 0.0, ctx.failed[missing[0]])
    try:
        procs = case.act(ctx, d)
        outcome, note = judge(ctx, case, d, procs)
    except SetupError as exc:
        procs, outcome, note = [], "error", f"setup: {exc}"
    except Exception as exc:  # a bug in the battery: report the case, run the others
        procs, outcome, note = [], "error", f"battery: {type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    return Result(
        case.id, case.family, case.expected, outcome, round(seconds, 1), note,
        [p.rc for p in procs],
    )  # fmt: skip


def _rmtree(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        for n in dirnames:
            with _suppress():
                os.chmod(Path(dirpath) / n, 0o755)
    with _suppress():
        os.chmod(path, 0o755)
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------ raw tables
class Csv:
    """A MIMIC csv(.gz) table as lines; edited lines are re-serialised, the rest kept verbatim."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        lines = data.decode("utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.path = path
        self.header, self.lines = lines[0], lines[1:]
        self.cols = next(csv.reader([self.header]))
        self._rows: list[list[str]] | None = None

    def col(self, name: str) -> int:
        return self.cols.index(name)

    @property
    def rows(self) -> list[list[str]]:
        if self._rows is None:
            self._rows = list(csv.reader(self.lines))
        return self._rows

    def where(self, column: str, *values: str, limit: int | None = None) -> list[int]:
        c = self.col(column)
        hits = [i for i, r in enumerate(self.rows) if r[c] in values]
        return hits[:limit] if limit is not None else hits

    @staticmethod
    def join(row: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(row)
        return buf.getvalue()

    def set(self, i: int, **values: str) -> None:
        row = list(self.rows[i])
        for k, v in values.items():
            row[self.col(k)] = v
        self.rows[i] = row
        self.lines[i] = self.join(row)

    def copy_rows(self, idx: list[int], **values: str) -> list[str]:
        out = []
        for i in idx:
            row = list(self.rows[i])
            for k, v in values.items():
                row[self.col(k)] = v
            out.append(self.join(row))
        return out

    def append(self, lines: list[str]) -> None:
        self.lines.extend(lines)
        self._rows = None

    def drop_column(self, name: str) -> None:
        c = self.col(name)
        rows = [r[:c] + r[c + 1 :] for r in self.rows]
        self.cols = self.cols[:c] + self.cols[c + 1 :]
        self.header = self.join(self.cols)
        self.lines = [self.join(r) for r in rows]
        self._rows = rows

    def text(self, eol: str = "\n") -> str:
        return eol.join([self.header, *self.lines]) + eol

    def save(self, path: Path | None = None, data: bytes | None = None) -> None:
        path = path or self.path
        data = data if data is not None else self.text().encode("utf-8", "surrogateescape")
        replace_file(
            path, gzip.compress(data, compresslevel=1) if path.name.endswith(".gz") else data
        )


def replace_file(path: Path, data: bytes) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def mirror(ctx: Ctx, d: Path, name: str = "raw") -> Path:
    """Symlink the clean world into ``d/name`` (a truth sidecar next to it, as synth makes)."""
    raw = d / name
    for f in sorted(ctx.world.rglob("*")):
        if f.is_file():
            t = raw / f.relative_to(ctx.world)
            t.parent.mkdir(parents=True, exist_ok=True)
            t.symlink_to(f)
    (d / f"{name}_truth").symlink_to(ctx.truth)
    return raw


def table(raw: Path, rel: str) -> Csv:
    return Csv(raw / f"{rel}.csv.gz")


def build(ctx: Ctx, d: Path, source: Path, *extra: object, ws: str = "ws") -> Proc:
    return ctx.cli(d, "build", "--source", source, "--workspace", d / ws, "-q", *extra)


def parquet_diff(got: Path, ref: Path, parts: tuple[str, ...] | None = None) -> str | None:
    """None when every parquet file of ``ref`` (under ``parts``) is byte-identical in ``got``."""
    diffs = []
    for f in sorted(ref.rglob("*.parquet")):
        rel = f.relative_to(ref)
        if parts is not None and rel.parts[0] not in parts:
            continue
        g = got / rel
        if not g.is_file():
            diffs.append(f"{rel} missing")
        elif g.read_bytes() != f.read_bytes():
            diffs.append(f"{rel} differs")
    if not diffs:
        return None
    return f"{len(diffs)} file(s) unlike the clean build: {', '.join(diffs[:3])}"


DATA_PARTS = ("cohort", "episodes", "actions", "features", "replay")


def same_replay(ctx: Ctx, d: Path, _procs: list[Proc], ws: str = "ws") -> str | None:
    return parquet_diff(d / ws, ctx.ws, DATA_PARTS)


def same_everything(ctx: Ctx, d: Path, _procs: list[Proc], ws: str = "ws") -> str | None:
    return parquet_diff(d / ws, ctx.ws)


def _leaves(ws: Path) -> dict[str, object]:
    """Every leaf of the build's summary and stage audits, by its key path."""
    out: dict[str, object] = {}

    def walk(o: object, path: str) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{path}/{k}")
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")
        else:
            out[path] = o

    for f in [ws / "build_summary.json", *sorted(ws.glob("*/audit.json"))]:
        with _suppress():
            walk(json.loads(f.read_text()), f.parent.name if f.name == "audit.json" else "")
    return out


def reported(ctx: Ctx, d: Path, procs: list[Proc], pattern: str, ws: str = "ws") -> bool:
    """Whether the build made a fault visible: a warning line on stderr matching ``pattern``,
    or a positive count under a key matching it in the summary or a stage audit that the clean
    build does not have."""
    rx = re.compile(pattern, re.I)
    for p in procs:
        if any("warning" in ln.lower() and rx.search(ln) for ln in p.stderr.splitlines()):
            return True
    clean = _leaves(ctx.ws)
    for key, value in _leaves(d / ws).items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if rx.search(key) and number and value > 0 and value != clean.get(key):  # type: ignore[operator]
            return True
    return False


def infusions(d: Path, ws: str = "ws"):
    import pyarrow.parquet as pq

    return pq.read_table(d / ws / "measurements" / "infusions.parquet").to_pylist()


def _iso(v: str) -> dt.datetime:
    return dt.datetime.strptime(v, "%Y-%m-%d %H:%M:%S")


def _epoch(v: str) -> str:
    return str(calendar.timegm(_iso(v).timetuple())) if v else v


def _dmy(v: str) -> str:
    return _iso(v).strftime("%d/%m/%Y %H:%M") if v else v


def raw_case(
    id: str,
    desc: str,
    mutate: Callable[[Path], None],
    expected: str = "refused",
    words: tuple[str, ...] = (),
    check: Check | None = None,
    also: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
    forbid: tuple[str, ...] = (),
) -> Case:
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        raw = mirror(ctx, d)
        mutate(raw)
        return [build(ctx, d, raw, *extra)]

    return Case(id, "raw", desc, expected, act, words, forbid, check, also, needs=("build",))


def _m_set(rel: str, where: tuple[str, tuple[str, ...]] | None, limit: int | None, **values):
    def mutate(raw: Path) -> None:
        t = table(raw, rel)
        idx = t.where(where[0], *where[1], limit=limit) if where else list(range(len(t.lines)))
        idx = idx[:limit] if limit is not None else idx
        if not idx:
            raise SetupError(f"{rel}: no row with {where}")
        for i in idx:
            t.set(
                i, **{k: (v(t.rows[i][t.col(k)]) if callable(v) else v) for k, v in values.items()}
            )
        t.save()

    return mutate


def _m_every(rel: str, step: int, **values):
    def mutate(raw: Path) -> None:
        t = table(raw, rel)
        for i in range(0, len(t.lines), step):
            t.set(
                i, **{k: (v(t.rows[i][t.col(k)]) if callable(v) else v) for k, v in values.items()}
            )
        t.save()

    return mutate


def _m_bytes(rel: str, fn: Callable[[bytes], bytes], name: str | None = None):
    def mutate(raw: Path) -> None:
        path = raw / f"{rel}.csv.gz"
        data = fn(path.read_bytes())
        if name:
            path.unlink()
            path = raw / name
        replace_file(path, data)

    return mutate


def _m_header_only(rel: str):
    def mutate(raw: Path) -> None:
        t = table(raw, rel)
        t.lines = []
        t._rows = []
        t.save()

    return mutate


def _m_duplicate(rel: str):
    def mutate(raw: Path) -> None:
        t = table(raw, rel)
        t.append(list(t.lines))
        t.save()

    return mutate


def _m_append(rel: str, column: str, values: tuple[str, ...], n: int, **changes: str):
    def mutate(raw: Path) -> None:
        t = table(raw, rel)
        idx = t.where(column, *values, limit=n) if values else list(range(n))
        t.append(t.copy_rows(idx, **changes))
        t.save()

    return mutate


def _m_drop_column(rel: str, column: str):
    def mutate(raw: Path) -> None:
        t = table(raw, rel)
        t.drop_column(column)
        t.save()

    return mutate


def _m_to_per_minute(weight: str):
    """Norepinephrine rates in mcg/min (rate x weight), with ``patientweight`` set to ``weight``:
    the dose then depends on the charted weight."""

    def mutate(raw: Path) -> None:
        t = table(raw, "icu/inputevents")
        rate, w = t.col("rate"), t.col("patientweight")
        for i in t.where("itemid", NOREPINEPHRINE):
            row = t.rows[i]
            if row[rate] and row[w]:
                per_min = f"{float(row[rate]) * float(row[w]):.4f}"
                t.set(i, rate=per_min, rateuom="mcg/min", patientweight=weight)
        t.save()

    return mutate


def _remove_admissions(raw: Path) -> None:
    stays = table(raw, "icu/icustays")
    hadm = {stays.rows[i][stays.col("hadm_id")] for i in range(20)}
    adm = table(raw, "hosp/admissions")
    c = adm.col("hadm_id")
    adm.lines = [ln for ln, r in zip(adm.lines, adm.rows, strict=True) if r[c] not in hadm]
    adm._rows = None
    adm.save()


def _remove_patients(raw: Path) -> None:
    stays = table(raw, "icu/icustays")
    subjects = {stays.rows[i][stays.col("subject_id")] for i in range(15)}
    pat = table(raw, "hosp/patients")
    c = pat.col("subject_id")
    pat.lines = [ln for ln, r in zip(pat.lines, pat.rows, strict=True) if r[c] not in subjects]
    pat._rows = None
    pat.save()


def _short_stays(raw: Path) -> None:
    t = table(raw, "icu/icustays")
    for i in range(len(t.lines)):
        intime = _iso(t.rows[i][t.col("intime")])
        t.set(i, outtime=str(intime + dt.timedelta(hours=1)), los="0.0417")
    t.save()


def _swap_times(rel: str, a: str, b: str, column: str, values: tuple[str, ...], n: int):
    def mutate(raw: Path) -> None:
        t = table(raw, rel)
        for i in t.where(column, *values, limit=n):
            row = t.rows[i]
            t.set(i, **{a: row[t.col(b)], b: row[t.col(a)]})
        t.save()

    return mutate


def _reorder_columns(raw: Path) -> None:
    t = table(raw, "icu/icustays")
    order = list(reversed(range(len(t.cols))))
    t.header = Csv.join([t.cols[i] for i in order])
    t.lines = [Csv.join([r[i] for i in order]) for r in t.rows]
    t.save()


def _extra_column(raw: Path) -> None:
    t = table(raw, "icu/icustays")
    t.header += ",comment_free_text"
    t.lines = [ln + ",note" for ln in t.lines]
    t.save()


def _upper_header(raw: Path) -> None:
    t = table(raw, "hosp/admissions")
    t.header = t.header.upper()
    t.save()


def _crlf(raw: Path) -> None:
    t = table(raw, "icu/icustays")
    t.save(data=t.text("\r\n").encode())


def _bom(raw: Path) -> None:
    t = table(raw, "hosp/patients")
    t.save(data=b"\xef\xbb\xbf" + t.text().encode())


def _header_in_middle(raw: Path) -> None:
    t = table(raw, "icu/icustays")
    t.lines.insert(len(t.lines) // 2, t.header)
    t._rows = None
    t.save()


def _all_plain_csv(raw: Path) -> None:
    for f in sorted(raw.rglob("*.csv.gz")):
        data = gzip.decompress(f.read_bytes())
        f.unlink()
        f.with_name(f.name[: -len(".gz")]).write_bytes(data)


def _to_parquet(raw: Path, name: str, all_strings: bool = False) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from sepsisrl.mimic.schema import TABLES

    schema = TABLES[name]
    path = raw / f"{schema.relpath}.csv.gz"
    types = {c: (pa.string() if all_strings else t) for c, t in zip(
        schema.column_names, schema.arrow_schema().types, strict=True)}  # fmt: skip
    tbl = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=types))
    out = raw / f"{schema.relpath}.parquet"
    path.unlink()
    pq.write_table(tbl, out)
    return out


def _parquet_tables(raw: Path) -> None:
    _to_parquet(raw, "icustays")
    _to_parquet(raw, "admissions")


def _parquet_text_valuenum(raw: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = _to_parquet(raw, "chartevents", all_strings=True)
    tbl = pq.read_table(out)
    values = tbl["valuenum"].to_pylist()
    for i in range(0, len(values), 50):
        values[i] = "abc"
    tbl = tbl.set_column(tbl.column_names.index("valuenum"), "valuenum", pa.array(values))
    pq.write_table(tbl, out)


def _truncated_parquet(raw: Path) -> None:
    out = _to_parquet(raw, "icustays")
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])


def _non_utf8(rel: str, column: str, where: tuple[str, tuple[str, ...]] | None, n: int):
    def mutate(raw: Path) -> None:
        t = table(raw, rel)
        idx = t.where(where[0], *where[1], limit=n) if where else list(range(0, n * 40, 40))
        for i in idx:
            t.set(i, **{column: t.rows[i][t.col(column)] + "\udcff\udcfe"})
        t.save()

    return mutate


def _corrupt_middle(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + 64]) + data[mid + 64 :]


def raw_cases() -> list[Case]:
    ne = ("itemid", (NOREPINEPHRINE,))
    saline = ("itemid", (SALINE,))
    hr = ("itemid", (HEART_RATE,))
    cases = [
        # text and garbage where numbers belong
        raw_case(
            "raw-text-chartevents-valuenum",
            "text 'abc' in chartevents.valuenum",
            _m_set("icu/chartevents", hr, 5, valuenum="abc"),
            words=("chartevents", "valuenum"),
        ),
        raw_case(
            "raw-text-labevents-valuenum",
            "text in labevents.valuenum",
            _m_set("hosp/labevents", ("itemid", (LACTATE,)), 5, valuenum="high"),
            words=("labevents", "valuenum"),
        ),
        raw_case(
            "raw-text-inputevents-rate",
            "text 'fast' in inputevents.rate",
            _m_set("icu/inputevents", ne, 3, rate="fast"),
            words=("inputevents", "rate"),
        ),
        raw_case(
            "raw-text-inputevents-amount",
            "a decimal comma in inputevents.amount",
            _m_set("icu/inputevents", saline, 3, amount="1,5"),
            words=("inputevents", "amount"),
        ),
        raw_case(
            "raw-text-outputevents-value",
            "text in outputevents.value",
            _m_every("icu/outputevents", 500, value="lots"),
            words=("outputevents", "value"),
        ),
        raw_case(
            "raw-text-icustays-stay_id",
            "a non-integer icustays.stay_id",
            _m_set("icu/icustays", None, 2, stay_id=lambda v: f"S{v}"),
            words=("icustays", "stay_id"),
        ),
        raw_case(
            "raw-text-patients-anchor_age",
            "text in patients.anchor_age",
            _m_set("hosp/patients", None, 3, anchor_age="old"),
            words=("patients", "anchor_age"),
        ),
        raw_case(
            "raw-header-in-middle",
            "icustays holds a second header line (two files concatenated)",
            _header_in_middle,
            words=("icustays",),
        ),
        # encodings and compression
        raw_case(
            "raw-non-utf8-prescriptions",
            "non-UTF-8 bytes in prescriptions.route",
            _non_utf8("hosp/prescriptions", "route", None, 5),
            words=("prescriptions", "utf"),
        ),
        raw_case(
            "raw-non-utf8-chartevents",
            "non-UTF-8 bytes in chartevents.valueuom",
            _non_utf8("icu/chartevents", "valueuom", hr, 5),
            words=("chartevents", "utf"),
        ),
        raw_case(
            "raw-truncated-gzip-inputevents",
            "inputevents.csv.gz cut at 60 %",
            _m_bytes("icu/inputevents", lambda b: b[: len(b) * 6 // 10]),
            words=("inputevents",),
        ),
        raw_case(
            "raw-truncated-gzip-chartevents",
            "chartevents.csv.gz cut at 70 %",
            _m_bytes("icu/chartevents", lambda b: b[: len(b) * 7 // 10]),
            words=("chartevents",),
        ),
        raw_case(
            "raw-corrupt-gzip-labevents",
            "64 flipped bytes inside labevents.csv.gz",
            _m_bytes("hosp/labevents", _corrupt_middle),
            words=("labevents",),
        ),
        raw_case(
            "raw-not-gzip-icustays",
            "icustays.csv.gz is not gzip at all",
            _m_bytes("icu/icustays", lambda b: b"this is not a gzip file\n" * 20),
            words=("icustays",),
        ),
        raw_case(
            "raw-empty-file-icustays",
            "icustays.csv.gz has zero bytes",
            _m_bytes("icu/icustays", lambda b: b""),
            words=("icustays",),
        ),
        raw_case(
            "raw-empty-plain-csv-admissions",
            "admissions.csv (plain) has zero bytes",
            _m_bytes("hosp/admissions", lambda b: b"", name="hosp/admissions.csv"),
            words=("admissions",),
        ),
        # times
        raw_case(
            "raw-bad-time-chartevents",
            "every 10th chartevents.charttime as DD/MM/YYYY",
            _m_every("icu/chartevents", 10, charttime=_dmy),
            words=("chartevents", "charttime"),
        ),
        raw_case(
            "raw-bad-time-icustays",
            "icustays.intime as DD/MM/YYYY HH:MM",
            _m_set("icu/icustays", None, None, intime=_dmy),
            words=("icustays", "intime"),
        ),
        raw_case(
            "raw-epoch-times-icustays",
            "icustays.intime/outtime as epoch integers",
            _m_set("icu/icustays", None, None, intime=_epoch, outtime=_epoch),
            words=("icustays", "intime|outtime"),
        ),
        raw_case(
            "raw-epoch-times-inputevents",
            "inputevents.starttime as epoch integers",
            _m_set("icu/inputevents", None, None, starttime=_epoch),
            words=("inputevents", "starttime"),
        ),
        # units and doses
        raw_case(
            "raw-unknown-fluid-unit-gal",
            "IV fluid rows with amountuom 'gal'",
            _m_set(
                "icu/inputevents",
                saline,
                10,
                amountuom="gal",
                amount=lambda v: f"{float(v) / 3785.41:.4f}" if v else v,
            ),
            words=("inputevents", "gal"),
        ),
        raw_case(
            "raw-unknown-vaso-unit",
            "norepinephrine rows with rateuom 'mcg/hr'",
            _m_set("icu/inputevents", ne, 10, rateuom="mcg/hr"),
            words=("inputevents", "mcg/hr"),
        ),
        raw_case(
            "raw-null-vaso-unit",
            "norepinephrine rows with a rate and no rateuom",
            _m_set("icu/inputevents", ne, 5, rateuom=""),
            words=("inputevents", "norepinephrine"),
        ),
        raw_case(
            "raw-norepinephrine-5000",
            "one norepinephrine row at 5,000 mcg/kg/min",
            _m_set("icu/inputevents", ne, 1, rate="5000"),
            words=("inputevents", "norepinephrine|5000|rate"),
            also=("recovered",),
            check=_check_no_implausible_dose,
        ),
        raw_case(
            "raw-patientweight-zero",
            "norepinephrine in mcg/min with patientweight 0 "
            "and a charted weight: the rows must keep their dose",
            _m_to_per_minute("0"),
            expected="recovered",
            check=_check_vaso_kept,
            also=("refused",),
            words=("patientweight",),
        ),
        raw_case(
            "raw-patientweight-nan",
            "norepinephrine in mcg/min with patientweight NaN",
            _m_to_per_minute("NaN"),
            expected="recovered",
            check=_check_vaso_kept,
            also=("refused",),
            words=("patientweight",),
        ),
        raw_case(
            "raw-negative-fluid",
            "IV fluid rows with negative amounts",
            _m_set("icu/inputevents", saline, 10, amount="-500"),
            words=("inputevents", "amount|negative"),
            also=("recovered",),
            check=_check_no_negative,
        ),
        raw_case(
            "raw-negative-vaso-rate",
            "norepinephrine rows with negative rates",
            _m_set("icu/inputevents", ne, 5, rate="-0.1"),
            words=("inputevents", "rate|negative"),
            also=("recovered",),
            check=_check_no_negative,
        ),
        raw_case(
            "raw-end-before-start",
            "IV fluid rows whose endtime precedes starttime",
            _swap_times("icu/inputevents", "starttime", "endtime", "itemid", (SALINE,), 10),
            words=("inputevents", "endtime|starttime"),
            also=("recovered",),
            check=_check_end_before_start,
        ),
        raw_case(
            "raw-outtime-before-intime",
            "icustays rows whose outtime precedes intime",
            _m_set("icu/icustays", None, 3, outtime=lambda v: str(_iso(v) - dt.timedelta(days=60))),
            words=("icustays", "outtime|intime"),
            also=("recovered",),
            check=_check_bad_stays_excluded,
        ),
        # duplicates
        raw_case(
            "raw-dup-inputevents",
            "every inputevents row twice: counted once, reported",
            _m_duplicate("icu/inputevents"),
            expected="recovered",
            check=_check_dedup("inputevents"),
            also=("refused",),
            words=("inputevents", "duplicat"),
        ),
        raw_case(
            "raw-dup-icustays",
            "every icustays row twice: refused or 150 stays",
            _m_duplicate("icu/icustays"),
            expected="recovered",
            check=_check_dedup("icustays", report=False),
            also=("refused",),
            words=("icustays", "duplicat|stay_id"),
        ),
        raw_case(
            "raw-dup-admissions",
            "every admissions row twice",
            _m_duplicate("hosp/admissions"),
            expected="recovered",
            check=_check_dedup("admissions", report=False),
            also=("refused",),
            words=("admissions", "duplicat|hadm_id"),
        ),
        raw_case(
            "raw-dup-patients",
            "every patients row twice",
            _m_duplicate("hosp/patients"),
            expected="recovered",
            check=_check_dedup("patients", report=False),
            also=("refused",),
            words=("patients", "duplicat|subject_id"),
        ),
        raw_case(
            "raw-constant-feature",
            "every heart rate is 80: the feature's standard deviation is 0; the replay stays "
            "finite (or the build refuses naming heart_rate)",
            _m_set("icu/chartevents", hr, None, value="80", valuenum="80"),
            expected="recovered",
            check=_finite_replay,
            also=("refused",),
            words=("heart_rate|heart rate",),
        ),
        raw_case(
            "raw-dup-chartevents",
            "every chartevents row twice (same values)",
            _m_duplicate("icu/chartevents"),
            expected="recovered",
            check=same_replay,
        ),
        raw_case(
            "raw-dup-prescriptions",
            "every prescriptions row twice",
            _m_duplicate("hosp/prescriptions"),
            expected="recovered",
            check=same_replay,
        ),
        # missing rows, empty tables, empty cohort
        raw_case(
            "raw-missing-admissions-rows",
            "20 stays whose admission row is missing",
            _remove_admissions,
            words=("admissions",),
        ),
        raw_case(
            "raw-missing-patients-rows",
            "15 stays whose patient row is missing",
            _remove_patients,
            words=("patients",),
        ),
        raw_case(
            "raw-header-only-admissions",
            "admissions with a header and no rows",
            _m_header_only("hosp/admissions"),
            words=("admissions",),
        ),
        raw_case(
            "raw-header-only-patients",
            "patients with a header and no rows",
            _m_header_only("hosp/patients"),
            words=("patients",),
        ),
        raw_case(
            "raw-header-only-icustays",
            "icustays with a header and no rows",
            _m_header_only("icu/icustays"),
            words=("icustays",),
        ),
        raw_case(
            "raw-header-only-d_items",
            "d_items with a header and no rows",
            _m_header_only("icu/d_items"),
            words=("d_items",),
        ),
        raw_case(
            "raw-empty-prescriptions",
            "prescriptions empty (--allow-missing): the cohort is empty and the message says so",
            _m_header_only("hosp/prescriptions"),
            words=("cohort|sepsis",),
            forbid=("dose bins",),
            extra=("--allow-missing", "prescriptions"),
        ),
        raw_case(
            "raw-empty-cultures",
            "microbiologyevents empty (--allow-missing): empty cohort",
            _m_header_only("hosp/microbiologyevents"),
            words=("cohort|sepsis",),
            forbid=("dose bins",),
            extra=("--allow-missing", "microbiologyevents"),
        ),
        raw_case(
            "raw-empty-cohort-short-stays",
            "every ICU stay lasts one hour: empty cohort",
            _short_stays,
            words=("cohort|stay",),
            forbid=("dose bins",),
        ),
        raw_case(
            "raw-missing-table-outputevents",
            "icu/outputevents.csv.gz absent",
            lambda raw: (raw / "icu/outputevents.csv.gz").unlink(),
            words=("outputevents",),
        ),
        raw_case(
            "raw-missing-table-patients",
            "hosp/patients.csv.gz absent",
            lambda raw: (raw / "hosp/patients.csv.gz").unlink(),
            words=("patients",),
        ),
        raw_case(
            "raw-missing-column-amountuom",
            "inputevents without amountuom",
            _m_drop_column("icu/inputevents", "amountuom"),
            words=("inputevents", "amountuom"),
        ),
        raw_case(
            "raw-missing-column-valuenum",
            "chartevents without valuenum",
            _m_drop_column("icu/chartevents", "valuenum"),
            words=("chartevents", "valuenum"),
        ),
        raw_case(
            "raw-missing-column-outtime",
            "icustays without outtime",
            _m_drop_column("icu/icustays", "outtime"),
            words=("icustays", "outtime"),
        ),
        raw_case(
            "raw-table-is-folder",
            "icu/chartevents.csv.gz is a folder",
            _table_is_folder,
            words=("chartevents",),
        ),
        raw_case(
            "raw-parquet-text-valuenum",
            "chartevents.parquet with valuenum stored as text, some 'abc'",
            _parquet_text_valuenum,
            words=("chartevents", "valuenum"),
        ),
        raw_case(
            "raw-truncated-parquet",
            "icustays.parquet cut in half",
            _truncated_parquet,
            words=("icustays",),
        ),
        # junk rows the build must drop without changing the data set
        raw_case(
            "raw-orphan-inputevents",
            "30 inputevents rows of a stay that does not exist",
            _m_append(
                "icu/inputevents",
                "itemid",
                (SALINE,),
                30,
                stay_id="39999999",
                hadm_id="29999999",
                subject_id="19999999",
            ),
            expected="recovered",
            check=same_replay,
        ),
        raw_case(
            "raw-orphan-chartevents",
            "30 chartevents rows of a stay that does not exist",
            _m_append(
                "icu/chartevents",
                "itemid",
                (HEART_RATE,),
                30,
                stay_id="39999999",
                hadm_id="29999999",
                subject_id="19999999",
            ),
            expected="recovered",
            check=same_replay,
        ),
        raw_case(
            "raw-unknown-itemid",
            "30 chartevents rows of an unknown itemid",
            _m_append("icu/chartevents", "itemid", (HEART_RATE,), 30, itemid="999999"),
            expected="recovered",
            check=same_replay,
        ),
        raw_case(
            "raw-out-of-range-hr",
            "30 extra heart rates of 1,000,000 at charted times",
            _m_append(
                "icu/chartevents", "itemid", (HEART_RATE,), 30, value="1000000", valuenum="1000000"
            ),
            expected="recovered",
            check=same_replay,
        ),
        raw_case(
            "raw-null-stay-chartevents",
            "30 chartevents rows without stay_id",
            _m_append("icu/chartevents", "itemid", (HEART_RATE,), 30, stay_id=""),
            expected="recovered",
            check=same_replay,
        ),
        raw_case(
            "raw-inf-valuenum",
            "30 extra heart rates of 'inf'",
            _m_append("icu/chartevents", "itemid", (HEART_RATE,), 30, value="inf", valuenum="inf"),
            expected="recovered",
            check=same_replay,
            also=("refused",),
            words=("chartevents", "valuenum"),
        ),
        raw_case(
            "raw-nan-valuenum",
            "30 extra heart rates of 'NaN'",
            _m_append("icu/chartevents", "itemid", (HEART_RATE,), 30, value="NaN", valuenum="NaN"),
            expected="recovered",
            check=same_replay,
            also=("refused",),
            words=("chartevents", "valuenum"),
        ),
        # harmless layout differences: the same data set
        raw_case(
            "raw-extra-column",
            "icustays with an extra column",
            _extra_column,
            expected="recovered",
            check=same_replay,
        ),
        raw_case(
            "raw-reordered-columns",
            "icustays with its columns in reverse order",
            _reorder_columns,
            expected="recovered",
            check=same_replay,
        ),
        raw_case(
            "raw-uppercase-header",
            "admissions header in upper case",
            _upper_header,
            expected="recovered",
            check=same_replay,
            also=("refused",),
            words=("admissions",),
        ),
        raw_case(
            "raw-crlf",
            "icustays with CRLF line ends",
            _crlf,
            expected="recovered",
            check=same_replay,
        ),
        raw_case(
            "raw-utf8-bom",
            "patients starts with a UTF-8 byte-order mark",
            _bom,
            expected="recovered",
            check=same_replay,
            also=("refused",),
            words=("patients",),
        ),
        raw_case(
            "raw-plain-csv",
            "every table as plain .csv",
            _all_plain_csv,
            expected="recovered",
            check=same_replay,
        ),
        raw_case(
            "raw-parquet-tables",
            "icustays and admissions as typed .parquet",
            _parquet_tables,
            expected="recovered",
            check=same_replay,
        ),
    ]
    cases += [
        Case(
            "raw-middle-edit-chartevents",
            "raw",
            "heart rates edited in the middle of a "
            "chartevents.csv (>2 MiB), same size, mtime kept: the rebuild must not skip",
            "recovered",
            _middle_edit("icu/chartevents", HEART_RATE, keep_mtime=True),
            check=_check_rebuilt,
        ),
        Case(
            "raw-middle-edit-labevents",
            "raw",
            "lactates edited in the middle of labevents.csv, same size: the rebuild must not skip",
            "recovered",
            _middle_edit("hosp/labevents", LACTATE, keep_mtime=False),
            check=_check_rebuilt,
        ),
        Case(
            "raw-source-missing",
            "raw",
            "--source names no folder",
            "refused",
            lambda ctx, d: [build(ctx, d, d / "nowhere")],
            words=("nowhere",),
            needs=(),
        ),
        Case(
            "raw-source-is-file",
            "raw",
            "--source is a file",
            "refused",
            _source_is_file,
            words=("afile",),
            needs=(),
        ),
    ]
    return cases


def _table_is_folder(raw: Path) -> None:
    (raw / "icu/chartevents.csv.gz").unlink()
    (raw / "icu/chartevents.csv.gz").mkdir()


def _source_is_file(ctx: Ctx, d: Path) -> list[Proc]:
    (d / "afile").write_text("not a folder\n")
    return [build(ctx, d, d / "afile")]


def _finite_replay(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((d / "ws" / "replay").rglob("replay_*.parquet"))
    if not files:
        return "no replay files written"
    for f in files:
        tbl = pq.read_table(f)
        for name in tbl.column_names:
            col = tbl[name]
            if pa.types.is_floating(col.type):
                values = col.to_numpy(zero_copy_only=False).astype(np.float64)
                if not np.isfinite(values).all():
                    return f"{f.parent.name}/{f.name}: column {name} holds NaN/inf after exit 0"
    return None


def _check_no_implausible_dose(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    rows = infusions(d)
    top = max((r["agent_rate"] or 0.0) for r in rows if r["agent"] == "norepinephrine")
    if top >= 100:
        return f"norepinephrine at {top:g} mcg/kg/min kept in measurements/infusions.parquet"
    if not reported(ctx, d, procs, r"plausib|out_of_range|norepinephrine"):
        return "the implausible dose was dropped without being reported"
    return None


def _check_vaso_kept(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    ref = sum(1 for r in infusions(ctx.base, "ws") if r["agent"] == "norepinephrine"
              and r["agent_rate"] is not None)  # fmt: skip
    rows = [r for r in infusions(d) if r["agent"] == "norepinephrine"]
    kept = sum(
        1 for r in rows if r["agent_rate"] is not None and r["agent_rate"] == r["agent_rate"]
    )
    nan = sum(1 for r in rows if r["agent_rate"] is not None and r["agent_rate"] != r["agent_rate"])
    if nan:
        return f"{nan} norepinephrine rows with a NaN dose"
    if kept < ref:
        return f"{ref - kept} of {ref} norepinephrine rows lost their dose"
    return None


def _check_no_negative(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    rows = infusions(d)
    neg = sum(1 for r in rows if (r["fluid_ml"] or 0) < 0 or (r["agent_rate"] or 0) < 0)
    if neg:
        return f"{neg} negative doses kept in measurements/infusions.parquet"
    if not reported(ctx, d, procs, r"negative"):
        return "negative doses dropped without being reported"
    return None


def _check_end_before_start(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    if not reported(ctx, d, procs, r"end\w*_before|before_start|reversed|inverted|duration"):
        return "rows ending before they start were dropped without being reported"
    return None


def _check_bad_stays_excluded(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    if not reported(ctx, d, procs, r"out\w*_before|before_in|reversed|inverted|duration"):
        return "stays ending before they start were dropped without being reported"
    return None


def _check_dedup(name: str, report: bool = True) -> Check:
    def check(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
        problem = same_replay(ctx, d, procs)
        if problem:
            return f"duplicated {name} rows changed the data set: {problem}"
        if report and not reported(ctx, d, procs, r"dup"):
            return f"duplicated {name} rows dropped without being counted in the build's output"
        return None

    return check


def _middle_edit(rel: str, itemid: str, keep_mtime: bool) -> Act:
    """Build from a plain-csv copy of ``rel``, then change values in its middle (same size,
    optionally the same mtime) and build again."""

    def act(ctx: Ctx, d: Path) -> list[Proc]:
        raw = mirror(ctx, d)
        t = table(raw, rel)
        plain = raw / f"{rel}.csv"
        (raw / f"{rel}.csv.gz").unlink()
        t.save(plain)
        first = build(ctx, d, raw)
        if first.rc != 0:
            raise SetupError(f"the clean build failed: {first.brief()}")
        (d / "key_before").write_text(_stage_key(d / "ws", "ingest"))
        data = plain.read_bytes()
        size, stat = len(data), plain.stat()
        lo, hi = (1 << 20) + 4096, len(data) - (1 << 20) - 4096
        if hi <= lo:
            raise SetupError(f"{plain} is too small ({size} bytes) for a middle edit")
        t = Csv(plain)
        offsets, pos = [], len(t.header) + 1
        for ln in t.lines:
            offsets.append(pos)
            pos += len(ln) + 1
        c_item, c_num, c_val = t.col("itemid"), t.col("valuenum"), t.col("value")
        edited = 0
        for i, off in enumerate(offsets):
            if lo < off < hi and t.rows[i][c_item] == itemid:
                num = t.rows[i][c_num]
                if num and num[0].isdigit() and num[0] != "9":
                    new = "9" + num[1:]
                    val = new if t.rows[i][c_val] == num else t.rows[i][c_val]
                    t.set(i, valuenum=new, value=val)
                    edited += 1
        new_data = t.text().encode()
        if len(new_data) != size or not edited:
            raise SetupError(f"middle edit changed the size or edited nothing ({edited} rows)")
        plain.write_bytes(new_data)
        if keep_mtime:
            os.utime(plain, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        return [first, build(ctx, d, raw)]

    return act


def _stage_key(ws: Path, stage: str) -> str:
    with _suppress():
        return str(json.loads((ws / stage / "stage.json").read_text()).get("key"))
    return ""


def _check_rebuilt(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    before = (d / "key_before").read_text()
    if _stage_key(d / "ws", "ingest") == before:
        return "the edited table was not re-read: ingest kept its cached result (stale data)"
    return None


# ------------------------------------------------------------------------------ config
def config_cases() -> list[Case]:
    def c(id, desc, words, *args, needs=("build",), fast=False):
        def act(ctx: Ctx, d: Path) -> list[Proc]:
            fmt = {"world": ctx.world, "replay": ctx.replay, "run": ctx.run, "d": d}
            argv = [str(a).format(**fmt) for a in args]
            return [ctx.cli(d, *argv)]

        return Case(id, "config", desc, "refused", act, words, needs=needs, fast=fast)

    def with_file(id, desc, words, content, *args, needs=("build",)):
        def act(ctx: Ctx, d: Path) -> list[Proc]:
            (d / "bad.yaml").write_text(content)
            fmt = {"world": ctx.world, "replay": ctx.replay, "run": ctx.run, "d": d}
            return [ctx.cli(d, *[str(a).format(**fmt) for a in args])]

        return Case(id, "config", desc, "refused", act, words, needs=needs)

    ws = "{d}/ws"
    return [
        c(
            "cfg-build-unknown-key",
            "build --set foo.bar=1",
            ("foo.bar|foo",),
            "build",
            "--source",
            "{world}",
            "--workspace",
            ws,
            "--set",
            "foo.bar=1",
        ),
        c(
            "cfg-build-bad-type",
            "build --set split.seed=abc",
            ("split.seed|seed",),
            "build",
            "--source",
            "{world}",
            "--workspace",
            ws,
            "--set",
            "split.seed=abc",
        ),
        c(
            "cfg-build-config-missing",
            "build --config names no file",
            ("nope.yaml",),
            "build",
            "--source",
            "{world}",
            "--workspace",
            ws,
            "--config",
            "{d}/nope.yaml",
        ),
        with_file(
            "cfg-build-config-bad-yaml",
            "build --config with broken YAML",
            ("bad.yaml",),
            "split: {seed: [1, 2\n",
            "build",
            "--source",
            "{world}",
            "--workspace",
            ws,
            "--config",
            "{d}/bad.yaml",
        ),
        with_file(
            "cfg-build-config-list",
            "build --config holding a list, not a mapping",
            ("bad.yaml",),
            "- 1\n- 2\n",
            "build",
            "--source",
            "{world}",
            "--workspace",
            ws,
            "--config",
            "{d}/bad.yaml",
        ),
        c(
            "cfg-build-conventions",
            "build --conventions bogus",
            ("bogus",),
            "build",
            "--source",
            "{world}",
            "--workspace",
            ws,
            "--conventions",
            "bogus",
        ),
        c(
            "cfg-train-expectile",
            "train --set iql.expectile=1.5",
            ("expectile",),
            "train",
            "--replay",
            "{replay}",
            "--out",
            "{d}/run",
            "--set",
            "iql.expectile=1.5",
            fast=True,
        ),
        c(
            "cfg-train-algo",
            "train --algo foo",
            ("foo|algo",),
            "train",
            "--replay",
            "{replay}",
            "--out",
            "{d}/run",
            "--algo",
            "foo",
        ),
        c(
            "cfg-train-preset",
            "train --preset nope",
            ("nope",),
            "train",
            "--replay",
            "{replay}",
            "--out",
            "{d}/run",
            "--preset",
            "nope",
        ),
        c(
            "cfg-train-batch-zero",
            "train --set batch_size=0",
            ("batch_size",),
            "train",
            "--replay",
            "{replay}",
            "--out",
            "{d}/run",
            "--set",
            "batch_size=0",
        ),
        c(
            "cfg-train-reward-column",
            "train --set reward_column=nope",
            ("nope",),
            "train",
            "--replay",
            "{replay}",
            "--out",
            "{d}/run",
            "--set",
            "reward_column=nope",
            *SHORT_TRAIN,
        ),
        c(
            "cfg-train-cuda",
            "train --device cuda on a machine without CUDA",
            ("cuda",),
            "train",
            "--replay",
            "{replay}",
            "--out",
            "{d}/run",
            "--device",
            "cuda",
            *SHORT_TRAIN,
        ),
        c(
            "cfg-synth-unknown-key",
            "synth --set foo=1",
            ("foo",),
            "synth",
            "--out",
            "{d}/raw",
            "--stays",
            "5",
            "--set",
            "foo=1",
            needs=(),
        ),
        c(
            "cfg-evaluate-two-policies",
            "evaluate --run and --policy together",
            ("--run|--policy",),
            "evaluate",
            "--replay",
            "{replay}",
            "--run",
            "{run}",
            "--policy",
            "clinician",
            needs=("run",),
        ),
    ]


# ------------------------------------------------------------------------------ replays
def replay_copy(ctx: Ctx, d: Path) -> Path:
    """``d/ws`` with the clean workspace's folders linked and one replay copied (editable)."""
    ws = d / "ws"
    ws.mkdir()
    for p in ctx.ws.iterdir():
        if p.name != "replay":
            (ws / p.name).symlink_to(p)
    (ws / "replay").mkdir()
    shutil.copytree(ctx.replay, ws / "replay" / "sofa_shaped")
    return ws / "replay" / "sofa_shaped"


def _edit_parquet(path: Path, fn: Callable) -> None:
    import pyarrow.parquet as pq

    tbl = pq.read_table(path)
    pq.write_table(fn(tbl), path)


def _set_col(tbl, name: str, values):
    import pyarrow as pa

    arr = values if isinstance(values, pa.Array) else pa.array(values)
    return tbl.set_column(tbl.column_names.index(name), name, arr)


def _every7(name: str, value: float):
    def fn(tbl):
        import numpy as np

        col = tbl[name].to_numpy().astype(np.float32 if value != 1e30 else np.float64).copy()
        col[::7] = value
        return _set_col(tbl, name, col)

    return fn


def _one_value(name: str, value: float, row: int = 5):
    def fn(tbl):
        import numpy as np

        col = tbl[name].to_numpy().astype(np.float64).copy()
        col[row] = value
        return _set_col(tbl, name, col)

    return fn


def _step_gap(tbl):
    import numpy as np

    stay, step = tbl["stay_id"].to_numpy(), tbl["step"].to_numpy()
    last = np.r_[stay[1:] != stay[:-1], True]
    mid = np.flatnonzero((step >= 1) & ~last)
    return tbl.take(np.delete(np.arange(len(stay)), mid[0]))


def _dup_step(tbl):
    import numpy as np

    step = tbl["step"].to_numpy().copy()
    i = int(np.flatnonzero(step >= 2)[0])
    step[i] = step[i - 1]
    return _set_col(tbl, "step", step)


def _unsorted(tbl):
    import numpy as np

    idx = np.arange(tbl.num_rows)
    idx[[0, 1]] = idx[[1, 0]]
    return tbl.take(idx)


def _done_wrong(tbl):
    import numpy as np

    done = tbl["done"].to_numpy(zero_copy_only=False).copy()
    i = int(np.flatnonzero(done)[0])
    done[i] = False
    return _set_col(tbl, "done", done)


def _action_float(tbl):
    import numpy as np

    a = tbl["action"].to_numpy().astype(np.float64) + 0.5
    return _set_col(tbl, "action", a)


def _action_string(tbl):
    return _set_col(tbl, "action", [f"a{v}" for v in tbl["action"].to_pylist()])


def _constant(name: str):
    def fn(tbl):
        import numpy as np

        return _set_col(tbl, name, np.full(tbl.num_rows, 0.25, dtype=np.float32))

    return fn


def _edit_meta(fn: Callable[[dict], dict | str]):
    def mutate(rep: Path) -> None:
        meta = json.loads((rep / "meta.json").read_text())
        out = fn(meta)
        (rep / "meta.json").write_text(out if isinstance(out, str) else json.dumps(out))

    return mutate


def _in_split(split: str, fn: Callable):
    def mutate(rep: Path) -> None:
        _edit_parquet(rep / f"replay_{split}.parquet", fn)

    return mutate


def _empty_split(split: str):
    return _in_split(split, lambda tbl: tbl.slice(0, 0))


def replay_case(
    id: str,
    desc: str,
    mutate: Callable[[Path], None],
    words: tuple[str, ...],
    command: str = "train",
    expected: str = "refused",
    check: Check | None = None,
    fast: bool = False,
) -> Case:
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        rep = replay_copy(ctx, d)
        mutate(rep)
        if command == "train":
            return [ctx.cli(d, "train", "--replay", rep, "--out", d / "run", *SHORT_TRAIN)]
        if command == "eval-run":
            return [ctx.cli(d, "evaluate", "--replay", rep, "--run", ctx.run, "--out",
                            d / "eval", *EVAL_SETTINGS)]  # fmt: skip
        return [ctx.cli(d, "evaluate", "--replay", rep, "--policy", "clinician", "--out",
                        d / "eval", *EVAL_SETTINGS)]  # fmt: skip

    needs = ("run",) if command == "eval-run" else ("build",)
    return Case(id, "replay", desc, expected, act, words, check=check, needs=needs, fast=fast)


def _finite_run(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    import numpy as np
    from safetensors.numpy import load_file

    for f in sorted((d / "run" / "final").glob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            if not np.isfinite(v).all():
                return f"{f.name}: {k} holds NaN/inf after exit 0"
    return None


def _finite_metrics(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    text = (d / "eval" / "metrics.json").read_text()
    if "NaN" in text or "Infinity" in text:
        return "metrics.json holds NaN/Infinity after exit 0"
    return None


def replay_cases() -> list[Case]:
    tr = "replay_train"
    return [
        replay_case(
            "replay-1e30-in-state",
            "1e30 in s_heart_rate on 1/7 of the train rows "
            "(train must refuse, not learn NaN weights)",
            _in_split("train", _every7("s_heart_rate", 1e30)),
            (tr, "heart_rate"),
        ),
        replay_case(
            "replay-1e6-in-state",
            "1e6 (far outside the normalised range) in s_lactate on 1/7 of the train rows",
            _in_split("train", _every7("s_lactate", 1e6)),
            (tr, "lactate"),
        ),
        replay_case(
            "replay-nan-state",
            "NaN in one state value",
            _in_split("train", _one_value("s_map", float("nan"))),
            (tr, "map"),
        ),
        replay_case(
            "replay-inf-state",
            "inf in one state value",
            _in_split("train", _one_value("s_map", float("inf"))),
            (tr, "map"),
        ),
        replay_case(
            "replay-nan-reward",
            "NaN in one reward",
            _in_split("train", _one_value("reward", float("nan"))),
            (tr, "reward"),
        ),
        replay_case(
            "replay-1e30-reward",
            "a reward of 1e30",
            _in_split("train", _one_value("reward", 1e30)),
            (tr, "reward"),
        ),
        replay_case(
            "replay-gamma-1.5",
            "meta.json gamma 1.5",
            _edit_meta(lambda m: {**m, "gamma": 1.5}),
            ("gamma",),
            fast=True,
        ),
        replay_case(
            "replay-gamma-text",
            "meta.json gamma 'high'",
            _edit_meta(lambda m: {**m, "gamma": "high"}),
            ("gamma",),
        ),
        replay_case(
            "replay-step-gap",
            "an episode with a gap in its step sequence",
            _in_split("train", _step_gap),
            (tr, "step"),
        ),
        replay_case(
            "replay-duplicate-step",
            "an episode with a repeated step",
            _in_split("train", _dup_step),
            (tr, "step"),
        ),
        replay_case(
            "replay-unsorted",
            "two rows out of order",
            _in_split("train", _unsorted),
            (tr, "sorted|order"),
        ),
        replay_case(
            "replay-done-wrong",
            "an episode's last row without done",
            _in_split("train", _done_wrong),
            (tr, "done"),
        ),
        replay_case(
            "replay-missing-column",
            "replay_train without s_map",
            _in_split("train", lambda t: t.drop(["s_map"])),
            (tr, "s_map"),
        ),
        replay_case(
            "replay-missing-action",
            "replay_train without action",
            _in_split("train", lambda t: t.drop(["action"])),
            (tr, "action"),
        ),
        replay_case(
            "replay-action-float",
            "action stored as 0.5-fractional floats",
            _in_split("train", _action_float),
            (tr, "action"),
        ),
        replay_case(
            "replay-action-text",
            "action stored as text",
            _in_split("train", _action_string),
            (tr, "action"),
        ),
        replay_case(
            "replay-action-range",
            "an action id of 25 (of 25 actions)",
            _in_split("train", _one_value("action", 25)),
            (tr, "action"),
        ),
        replay_case(
            "replay-empty-train",
            "replay_train with no rows",
            _empty_split("train"),
            (f"{tr}|train split",),
        ),
        replay_case(
            "replay-empty-validation",
            "replay_validation with no rows (evaluate)",
            _empty_split("validation"),
            ("validation",),
            command="eval-policy",
        ),
        replay_case(
            "replay-std0-feature",
            "s_lactate constant over the train split: training still gives finite weights",
            _in_split("train", _constant("s_lactate")),
            (),
            expected="recovered",
            check=_finite_run,
        ),
        replay_case(
            "replay-std0-feature-eval",
            "s_lactate constant: evaluate gives finite metrics",
            _in_split("train", _constant("s_lactate")),
            (),
            command="eval-policy",
            expected="recovered",
            check=_finite_metrics,
        ),
        replay_case(
            "replay-corrupt-meta",
            "meta.json is not JSON",
            _edit_meta(lambda m: '{"schema_version": "1", "state_dim": 6'),
            ("meta.json",),
            fast=True,
        ),
        replay_case(
            "replay-meta-no-features",
            "meta.json without feature_names",
            _edit_meta(lambda m: {k: v for k, v in m.items() if k != "feature_names"}),
            ("feature_names",),
            fast=True,
        ),
        replay_case(
            "replay-meta-state-dim",
            "meta.json state_dim 61 for 62 features",
            _edit_meta(lambda m: {**m, "state_dim": 61}),
            ("state_dim",),
        ),
        replay_case(
            "replay-meta-zero-actions",
            "meta.json n_actions 0",
            _edit_meta(lambda m: {**m, "n_actions": 0}),
            ("n_actions",),
        ),
        replay_case(
            "replay-schema-version",
            "meta.json schema_version 2",
            _edit_meta(lambda m: {**m, "schema_version": "2"}),
            ("schema_version",),
        ),
        replay_case(
            "replay-truncated-parquet",
            "replay_train.parquet cut in half",
            lambda rep: (rep / f"{tr}.parquet").write_bytes(
                (rep / f"{tr}.parquet").read_bytes()[:9000]
            ),
            (tr,),
        ),
        replay_case(
            "replay-missing-file",
            "no replay_train.parquet",
            lambda rep: (rep / f"{tr}.parquet").unlink(),
            (tr,),
        ),
        replay_case(
            "replay-renamed-feature",
            "evaluate a run on a replay whose features differ (s_map renamed)",
            _rename_feature,
            ("map",),
            command="eval-run",
        ),
    ]


def _rename_feature(rep: Path) -> None:
    meta = json.loads((rep / "meta.json").read_text())
    meta["feature_names"] = [("mean_arterial_pressure" if n == "map" else n)
                             for n in meta["feature_names"]]  # fmt: skip
    (rep / "meta.json").write_text(json.dumps(meta))
    for split in ("train", "validation", "test"):
        _edit_parquet(rep / f"replay_{split}.parquet",
                      lambda t: t.rename_columns([("s_mean_arterial_pressure" if c == "s_map"
                                                   else c) for c in t.column_names]))  # fmt: skip


# ------------------------------------------------------------------------------ bundles, runs
API = textwrap.dedent(
    """
    import sys
    B = sys.argv[1]
    sys.path.insert(0, B)
    try:
        import numpy as np
        import torch
        import modeling_iql as m
    {body}
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"refused: {{type(exc).__name__}}: {{exc}}\\n")
        sys.exit(3)
    """
)


def api_code(body: str) -> str:
    return API.format(body=textwrap.indent(textwrap.dedent(body).strip(), "    "))


def bundle_copy(ctx: Ctx, d: Path) -> Path:
    dest = d / "bundle"
    shutil.copytree(ctx.bundle, dest)
    return dest


def _st_edit(path: Path, fn: Callable) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    save_file(fn(tensors), str(path))


def _nan_first(tensors: dict, value: float = float("nan")) -> dict:
    """``value`` in the first weight: ``net.0.weight`` of a released or policy file, the first
    ``<network>.weights.<layer>`` of a run's stacked ``model.safetensors``."""
    key = sorted(k for k in tensors if k.endswith("weight") or ".weights." in k)[0]
    t = tensors[key].copy()
    t.flat[0] = value
    return {**tensors, key: t}


def _evil_pickle(marker: Path) -> bytes:
    class _Evil:
        def __reduce__(self):  # runs code on unpickling - which must never happen
            return (exec, (f"open({str(marker)!r}, 'w').write('code ran')",))

    return pickle.dumps({"net.0.weight": _Evil()}, protocol=2)


EVIL_ZIP = textwrap.dedent(
    """
    import sys, torch
    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('code ran')" % sys.argv[2],))
    torch.save({"net.0.weight": Evil()}, sys.argv[1])
    """
)


def _no_marker(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    if (d / "PWNED").exists():
        return "the pickle's code RAN while loading (marker file created)"
    return None


def _malicious(d: Path, ctx: Ctx, zip_format: bool) -> Path:
    b = bundle_copy(ctx, d)
    (b / "model.safetensors").unlink()
    target = b / "pytorch_model.bin"
    if zip_format:
        p = ctx.py(d, EVIL_ZIP, target, d / "PWNED", label="make-evil-zip")
        if p.rc != 0 or (d / "PWNED").exists():
            raise SetupError(f"could not write the torch.save pickle: {p.brief()}")
    else:
        target.write_bytes(_evil_pickle(d / "PWNED"))
    return b


def bundle_api_case(
    id: str,
    desc: str,
    body: str,
    words: tuple[str, ...] = (),
    tamper: Callable[[Path], None] | None = None,
    fast: bool = False,
    expected: str = "refused",
    check: Check | None = None,
    forbid: tuple[str, ...] = (),
) -> Case:
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        b = bundle_copy(ctx, d)
        if tamper:
            tamper(b)
        return [ctx.py(d, api_code(body), b, label="api")]

    rc = (3,) if expected == "refused" else ()
    return Case(id, "bundle", desc, expected, act, words, forbid, check, rc=rc,
                needs=("bundle",), fast=fast)  # fmt: skip


def _bundle_eval(ctx: Ctx, d: Path, b: Path) -> Proc:
    return ctx.cli(d, "evaluate", "--replay", ctx.replay, "--bundle", b, "--out", d / "eval",
                   *EVAL_SETTINGS)  # fmt: skip


def bundle_eval_case(id: str, desc: str, tamper: Callable[[Path], None], words: tuple[str, ...]):
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        b = bundle_copy(ctx, d)
        tamper(b)
        return [_bundle_eval(ctx, d, b)]

    return Case(id, "bundle", desc, "refused", act, words, needs=("bundle",))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_json(path: Path, fn: Callable[[dict], dict | str]) -> None:
    out = fn(json.loads(path.read_text()))
    path.write_text(out if isinstance(out, str) else json.dumps(out, indent=2))


def _std0(cfg: dict) -> dict:
    cfg["normalization"]["heart_rate"]["std"] = 0.0
    return cfg


LOAD = "p = m.load_policy(B)"


def bundle_cases() -> list[Case]:
    cases = [
        Case(
            "bundle-malicious-pickle",
            "bundle",
            "pytorch_model.bin is a pickle that runs "
            "code; load_policy must refuse without running it or advising weights_only=False",
            "refused",
            _malicious_api(False),
            ("pytorch_model.bin",),
            ("weights_only=False",),
            _no_marker,
            rc=(3,),
            needs=("bundle",),
            fast=True,
        ),
        Case(
            "bundle-malicious-torch-zip",
            "bundle",
            "pytorch_model.bin written by torch.save holding a code-running object",
            "refused",
            _malicious_api(True),
            ("pytorch_model.bin",),
            ("weights_only=False",),
            _no_marker,
            rc=(3,),
            needs=("bundle",),
        ),
        Case(
            "bundle-malicious-evaluate",
            "bundle",
            "evaluate --bundle with the malicious pytorch_model.bin",
            "refused",
            _malicious_eval,
            ("bundle|model",),
            ("weights_only=False",),
            _no_marker,
            needs=("bundle",),
        ),
        bundle_api_case(
            "bundle-truncated-safetensors",
            "model.safetensors cut in half",
            LOAD,
            ("model.safetensors",),
            lambda b: _truncate(b / "model.safetensors"),
        ),
        bundle_eval_case(
            "bundle-truncated-safetensors-eval",
            "evaluate --bundle with a truncated model.safetensors",
            lambda b: _truncate(b / "model.safetensors"),
            ("model.safetensors",),
        ),
        bundle_api_case(
            "bundle-corrupt-config",
            "config.json is not JSON",
            LOAD,
            ("config.json",),
            lambda b: (b / "config.json").write_text('{"state_dim": 62,'),
            fast=True,
        ),
        bundle_eval_case(
            "bundle-corrupt-config-eval",
            "evaluate --bundle, config.json not JSON",
            lambda b: (b / "config.json").write_text("{oops"),
            ("config.json",),
        ),
        bundle_api_case(
            "bundle-wrong-state-dim",
            "config.json state_dim 61 for 62-wide weights",
            LOAD,
            ("state_dim|shape|inputs",),
            lambda b: _edit_json(b / "config.json", lambda c: {**c, "state_dim": 61}),
            fast=True,
        ),
        bundle_api_case(
            "bundle-wrong-hidden",
            "config.json hidden_sizes [32, 32] for 64-wide weights",
            LOAD,
            ("hidden|shape",),
            lambda b: _edit_json(b / "config.json", lambda c: {**c, "hidden_sizes": [32, 32]}),
        ),
        bundle_api_case(
            "bundle-extra-tensor",
            "model.safetensors with an unexpected tensor",
            LOAD,
            ("model.safetensors|unexpected|net.9",),
            lambda b: _st_edit(
                b / "model.safetensors", lambda t: {**t, "net.9.weight": t["net.0.weight"]}
            ),
        ),
        bundle_api_case(
            "bundle-nan-weights",
            "a NaN in model.safetensors",
            LOAD,
            ("nan|finite",),
            lambda b: _st_edit(b / "model.safetensors", _nan_first),
            fast=True,
        ),
        bundle_eval_case(
            "bundle-nan-weights-eval",
            "evaluate --bundle with a NaN weight",
            lambda b: _st_edit(b / "model.safetensors", _nan_first),
            ("nan|finite",),
        ),
        bundle_eval_case(
            "bundle-feature-mismatch-eval",
            "bundle naming a feature the replay lacks (map renamed mean_bp; a mere reordering "
            "is legitimate and followed by name)",
            _rename_bundle_feature,
            ("mean_bp",),
        ),
        bundle_api_case(
            "bundle-std0-normalize",
            "config.json normalization std 0 for heart_rate, then normalize()",
            LOAD + "\np.normalize({'heart_rate': 80.0})",
            ("heart_rate|std",),
            lambda b: _edit_json(b / "config.json", _std0),
        ),
        # the inference API on a clean bundle
        bundle_api_case(
            "api-select-2x31",
            "select_action on a 2x31 array (62 values, wrong shape)",
            LOAD + "\np.select_action(np.zeros((2, 31), np.float32))",
            ("62|shape",),
            fast=True,
        ),
        bundle_api_case(
            "api-select-tensor-2x31",
            "select_action on a 2x31 tensor",
            LOAD + "\np.select_action(torch.zeros(2, 31))",
            ("62|shape",),
        ),
        bundle_api_case(
            "api-probs-2x31",
            "action_probabilities on a 2x31 array",
            LOAD + "\np.action_probabilities(np.zeros((2, 31)))",
            ("62|shape",),
        ),
        bundle_api_case(
            "api-select-bool",
            "select_action on a boolean array",
            LOAD + "\np.select_action(np.ones(62, dtype=bool))",
            ("bool",),
            fast=True,
        ),
        bundle_api_case(
            "api-select-wrong-length",
            "select_action on 61 values",
            LOAD + "\np.select_action([0.0] * 61)",
            ("62|61",),
        ),
        bundle_api_case(
            "api-select-nan",
            "select_action with a NaN",
            LOAD + "\ns = [0.0] * 62\ns[3] = float('nan')\np.select_action(s)",
            ("nan",),
            fast=True,
        ),
        bundle_api_case(
            "api-select-inf-array",
            "select_action on a float64 array with inf",
            LOAD + "\ns = np.zeros(62)\ns[5] = np.inf\np.select_action(s)",
            ("inf|nan|finite",),
        ),
        bundle_api_case(
            "api-select-text",
            "select_action on 62 strings",
            LOAD + "\np.select_action(['a'] * 62)",
            ("number|numeric|str",),
        ),
        bundle_api_case(
            "api-forward-1d",
            "policy(tensor of shape (62,)) instead of (1, 62)",
            LOAD + "\np(torch.zeros(62))",
            ("shape|batch",),
        ),
        bundle_api_case(
            "api-normalize-nan-flag",
            "normalize with NaN for a missingness flag",
            LOAD + "\np.normalize({'map_missing': float('nan')})",
            ("map_missing",),
            fast=True,
        ),
        bundle_api_case(
            "api-normalize-flag-2",
            "normalize with 2 for a 0/1 flag",
            LOAD + "\np.normalize({'map_missing': 2})",
            ("map_missing",),
        ),
        bundle_api_case(
            "api-normalize-text",
            "normalize with text for heart_rate",
            LOAD + "\np.normalize({'heart_rate': 'fast'})",
            ("heart_rate",),
        ),
        bundle_api_case(
            "api-decode-25",
            "decode_action(25) of 25 actions",
            "m.decode_action(25)",
            ("25",),
            fast=True,
        ),
        bundle_api_case(
            "api-control",
            "a clean bundle: select_action on zeros gives an action",
            LOAD + "\na = p.select_action([0.0] * 62)\nassert 0 <= a < 25\nprint(a)",
            expected="recovered",
            check=_printed_action,
            fast=True,
        ),
    ]
    return cases


def _printed_action(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
    out = procs[-1].stdout.strip()
    return None if out.isdigit() and 0 <= int(out) < 25 else f"printed {out!r}"


def _malicious_api(zip_format: bool) -> Act:
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        b = _malicious(d, ctx, zip_format)
        return [ctx.py(d, api_code(LOAD), b, label="api")]

    return act


def _malicious_eval(ctx: Ctx, d: Path) -> list[Proc]:
    b = _malicious(d, ctx, False)
    return [_bundle_eval(ctx, d, b)]


def _rename_bundle_feature(b: Path) -> None:
    def fn(cfg: dict) -> dict:
        cfg["feature_names"] = ["mean_bp" if n == "map" else n for n in cfg["feature_names"]]
        return cfg

    _edit_json(b / "config.json", fn)


def run_copy(ctx: Ctx, d: Path) -> Path:
    dest = d / "run"
    shutil.copytree(ctx.run, dest)
    return dest


def _train_resume(ctx: Ctx, d: Path, run: Path, *extra: object, replay: Path | None = None):
    return ctx.cli(d, "train", "--replay", replay or ctx.replay, "--out", run, *TRAIN_SETTINGS,
                   "--resume", *extra)  # fmt: skip


def same_final(ctx: Ctx, d: Path, _procs: list[Proc], run: str = "run") -> str | None:
    ref, got = ctx.run / "final", d / run / "final"
    for f in sorted(ref.glob("*.safetensors")):
        g = got / f.name
        if not g.is_file():
            return f"{run}/final/{f.name} missing"
        if g.read_bytes() != f.read_bytes():
            return f"{run}/final/{f.name} differs from the uninterrupted run's"
    return None


def runfolder_case(id: str, desc: str, tamper: Callable[[Path], None], command: str,
             words: tuple[str, ...], expected: str = "refused", check: Check | None = None,
             also: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> Case:  # fmt: skip
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        run = run_copy(ctx, d)
        tamper(run)
        if command == "evaluate":
            return [ctx.cli(d, "evaluate", "--replay", ctx.replay, "--run", run, "--out",
                            d / "eval", *EVAL_SETTINGS)]  # fmt: skip
        if command == "export":
            return [ctx.cli(d, "export", "--run", run, "--out", d / "bundle")]
        replay = None
        if command == "resume-other-data":
            replay = replay_copy(ctx, d)
            _in_split("train", _one_value("reward", 0.123))(replay)
        return [_train_resume(ctx, d, run, *extra, replay=replay)]

    return Case(id, "bundle", desc, expected, act, words, check=check, also=also,
                needs=("run",))  # fmt: skip


def _no_final(run: Path) -> None:
    shutil.rmtree(run / "final")


def _nan_run(value: float):
    def tamper(run: Path) -> None:
        for name in ("policy.safetensors", "model.safetensors"):
            _st_edit(run / "final" / name, lambda t: _nan_first(t, value))

    return tamper


def _truncated_checkpoint(run: Path) -> None:
    _no_final(run)
    last = sorted((run / "checkpoints").glob("step_*"))[-1]
    _truncate(last / "model.safetensors")


def run_cases() -> list[Case]:
    return [
        runfolder_case(
            "run-nan-weights-evaluate",
            "a run whose final weights hold NaN: evaluate",
            _nan_run(float("nan")),
            "evaluate",
            ("nan|finite", "safetensors|final"),
        ),
        runfolder_case(
            "run-nan-weights-export",
            "a run whose final weights hold NaN: export",
            _nan_run(float("nan")),
            "export",
            ("nan|finite", "safetensors|final"),
        ),
        runfolder_case(
            "run-inf-weights-export",
            "a run whose final weights hold inf: export",
            _nan_run(float("inf")),
            "export",
            ("inf|finite|nan", "safetensors|final"),
        ),
        runfolder_case(
            "run-missing-final-evaluate",
            "a run without final/: evaluate",
            _no_final,
            "evaluate",
            ("final",),
        ),
        runfolder_case(
            "run-corrupt-config-evaluate",
            "a run whose config.json is not JSON",
            lambda r: (r / "config.json").write_text("{"),
            "evaluate",
            ("config.json",),
        ),
        runfolder_case(
            "run-truncated-policy-export",
            "final/policy.safetensors cut in half: export",
            lambda r: _truncate(r / "final" / "policy.safetensors"),
            "export",
            ("policy.safetensors",),
        ),
        runfolder_case(
            "run-truncated-checkpoint-resume",
            "the latest checkpoint truncated: resume "
            "refuses naming it, or resumes from the previous one to identical weights",
            _truncated_checkpoint,
            "resume",
            ("model.safetensors|checkpoint",),
            expected="identical",
            also=("refused",),
            check=same_final,
        ),
        runfolder_case(
            "run-resume-other-setting",
            "resume with iql.expectile changed: the refusal names the setting",
            _no_final,
            "resume",
            ("expectile",),
            extra=("--set", "iql.expectile=0.8"),
        ),
        runfolder_case(
            "run-resume-other-data",
            "resume on a replay with one reward changed",
            _no_final,
            "resume-other-data",
            ("replay|dataset|data",),
        ),
        runfolder_case(
            "run-resume-control",
            "resume after final/ was removed: identical weights",
            _no_final,
            "resume",
            (),
            expected="identical",
            check=same_final,
        ),
    ]


# ------------------------------------------------------------------------------ kills
PATCH_STAGE = """
import sepsisrl.workspace as _ws
_orig = _ws.Workspace.run
def _run(self, stage, *args, **kwargs):
    if stage == {stage!r}:
        args = list(args)
        fn = args[1] if len(args) > 1 else kwargs["build"]
        def _hooked(*a, **k):
            {action}
        if len(args) > 1:
            args[1] = _hooked
        else:
            kwargs["build"] = _hooked
    return _orig(self, stage, *args, **kwargs)
_ws.Workspace.run = _run
"""
KILL_AFTER = "out = fn(*a, **k); os.kill(os.getpid(), signal.SIGKILL)"
PAUSE_BEFORE = "open(os.environ['FAULTS_MARKER'], 'w').close(); time.sleep(8); return fn(*a, **k)"
PATCH_TRAIN = """
import sepsisrl.rl.trainer as _tr
_orig = _tr.train
_hit = []
def _train(*a, **k):
    user = k.get("on_log")
    def _on_log(step, total, metrics):
        if user:
            user(step, total, metrics)
        if step >= {at} and not _hit:
            _hit.append(step)
            {action}
    k["on_log"] = _on_log
    return _orig(*a, **k)
_tr.train = _train
"""
PAUSE = "open(os.environ['FAULTS_MARKER'], 'w').close(); time.sleep(8)"
KILL = "os.kill(os.getpid(), signal.SIGKILL)"
PATCH_SAVE = """
import {module} as _mod
_orig_save = _mod.save_file
def _save(tensors, path, *a, **k):
    _orig_save(tensors, path, *a, **k)
    if {needle!r} in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
_mod.save_file = _save
"""


def wrapped(patch: str, args: list[object]) -> list[str]:
    code = "\n".join([
        "import os, signal, sys, time", textwrap.dedent(patch),
        "from sepsisrl.cli import main", f"sys.argv = ['sepsisrl', *{[str(a) for a in args]!r}]",
        "main()",
    ])  # fmt: skip
    return [PY, "-c", code]


def _killed(p: Proc, what: str) -> None:
    if p.rc != -signal.SIGKILL:
        raise SetupError(f"the kill during {what} did not happen (exit {p.rc}: {p.brief()})")


def kill_build_stage(stage: str) -> Case:
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        args = ["build", "--source", ctx.world, "--workspace", d / "ws", "-q"]
        patch = PATCH_STAGE.format(stage=stage, action=KILL_AFTER)
        first = Bg(ctx, wrapped(patch, args), d, f"kill-{stage}").wait(120)
        _killed(first, f"stage {stage}")
        return [first, build(ctx, d, ctx.world)]

    return Case(f"kill9-build-{stage}", "kill", f"kill -9 at the end of build stage {stage} "
                "(before it commits); the rerun gives identical bytes", "identical", act,
                check=same_everything)  # fmt: skip


def _kill_build_real(ctx: Ctx, d: Path) -> list[Proc]:
    ws = d / "ws"
    bg = ctx.bg(d, "build", "--source", ctx.world, "--workspace", ws, "-q", label="build")
    hit = wait_until(lambda: ws.is_dir() and any(".partial" in p.name for p in ws.iterdir()),
                     bg, 60)  # fmt: skip
    if hit:
        time.sleep(0.05)
        bg.send(signal.SIGKILL)
    first = bg.wait(60)
    _killed(first, "the build (it finished before a stage folder appeared)")
    return [first, build(ctx, d, ctx.world)]


def kill_train(id: str, desc: str, patch: str) -> Case:
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        args = ["train", "--replay", ctx.replay, "--out", d / "run", *TRAIN_SETTINGS]
        first = Bg(ctx, wrapped(patch, args), d, "train-killed").wait(120)
        _killed(first, "training")
        return [first, _train_resume(ctx, d, d / "run")]

    return Case(id, "kill", desc, "identical", act, check=same_final, needs=("run",))


def _same_world(ctx: Ctx, d: Path, _procs: list[Proc]) -> str | None:
    diffs = []
    for f in sorted(ctx.world.rglob("*.csv.gz")):
        g = d / "raw" / f.relative_to(ctx.world)
        if not g.is_file() or g.read_bytes() != f.read_bytes():
            diffs.append(str(f.relative_to(ctx.world)))
    return f"tables unlike the clean world: {', '.join(diffs[:3])}" if diffs else None


def _kill_synth(ctx: Ctx, d: Path) -> list[Proc]:
    args = ["synth", "--out", d / "raw", *WORLD_ARGS]
    bg = ctx.bg(d, *args, label="synth")
    hit = wait_until(lambda: any(".partial" in p.name for p in d.iterdir()), bg, 60)
    if hit:
        time.sleep(0.7)
        bg.send(signal.SIGKILL)
    first = bg.wait(60)
    _killed(first, "synth")
    return [first, ctx.cli(d, *args, timeout=300)]


def _metrics(path: Path) -> object:
    def strip(o: object) -> object:
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items()
                    if not re.search(r"second|time|created|path|out|dir|version", k)}  # fmt: skip
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o

    return strip(json.loads(path.read_text()))


def _same_eval(ctx: Ctx, d: Path, _procs: list[Proc], out: str = "eval") -> str | None:
    got = d / out / "metrics.json"
    if not got.is_file():
        return f"{out}/metrics.json missing"
    if _metrics(got) != _metrics(ctx.eval / "metrics.json"):
        return f"{out}/metrics.json differs from the clean evaluation"
    return None


def _eval_argv(ctx: Ctx, out: Path) -> list[object]:
    return ["evaluate", "--replay", ctx.replay, "--run", ctx.run, "--out", out, *EVAL_SETTINGS]


def _kill_evaluate(ctx: Ctx, d: Path) -> list[Proc]:
    bg = ctx.bg(d, *_eval_argv(ctx, d / "eval"), label="evaluate")
    wait_until(lambda: False, bg, 4.5)
    bg.send(signal.SIGKILL)
    first = bg.wait(60)
    _killed(first, "evaluate (it ended within 4.5 s)")
    return [first, ctx.cli(d, *_eval_argv(ctx, d / "eval"), timeout=300)]


def _same_bundle(ctx: Ctx, d: Path, _procs: list[Proc], out: str = "bundle") -> str | None:
    got = d / out
    if not (got / "model.safetensors").is_file():
        return f"{out}/model.safetensors missing"
    if (got / "model.safetensors").read_bytes() != (ctx.bundle / "model.safetensors").read_bytes():
        return f"{out}/model.safetensors differs from the clean export"
    return None


def _kill_export(ctx: Ctx, d: Path) -> list[Proc]:
    args = ["export", "--run", ctx.run, "--out", d / "bundle"]
    patch = PATCH_SAVE.format(module="sepsisrl.release.bundle", needle="model.safetensors")
    first = Bg(ctx, wrapped(patch, args), d, "export-killed").wait(120)
    _killed(first, "export")
    return [first, ctx.cli(d, *args)]


def interrupt(id: str, desc: str, command: str, sig: int, background: bool) -> Case:
    """Send ``sig`` while the command is busy; expect exit 130 (143 for SIGTERM too) with a
    message saying how to resume, no debris, and a rerun that completes identically."""

    def act(ctx: Ctx, d: Path) -> list[Proc]:
        marker = d / "_logs" / "reached"
        env = {**ctx.env, "FAULTS_MARKER": str(marker)}
        if command == "build":
            args = ["build", "--source", ctx.world, "--workspace", d / "ws", "-q"]
            argv = wrapped(PATCH_STAGE.format(stage="sepsis", action=PAUSE_BEFORE), args)
            ready = marker.exists
        elif command == "train":
            args = ["train", "--replay", ctx.replay, "--out", d / "run", *TRAIN_SETTINGS]
            argv = wrapped(PATCH_TRAIN.format(at=200, action=PAUSE), args)
            ready = marker.exists
        elif command == "synth":
            argv = ctx.cli_argv("synth", "--out", d / "raw", *WORLD_ARGS)
            ready = lambda: any(".partial" in p.name for p in d.iterdir())  # noqa: E731
        else:
            argv = ctx.cli_argv(*_eval_argv(ctx, d / "eval"))
            t0 = time.perf_counter()
            ready = lambda: time.perf_counter() - t0 > 4.5  # noqa: E731
        bg = Bg(ctx, argv, d, f"{command}-signalled", env=env, ignore_sigint=background)
        if not wait_until(ready, bg, 90):
            bg.send(signal.SIGKILL)
            bg.wait(10)
            raise SetupError(f"{command} ended before it could be interrupted")
        time.sleep(0.2 if command == "synth" else 0.05)
        bg.send(sig)
        return [bg.wait(60)]

    def check(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
        if command == "evaluate":
            return "a half-written eval folder was left" if (d / "eval").exists() else None
        if command == "synth":
            return "a half-written world was left" if (d / "raw").exists() else None
        if command == "build":
            again = build(ctx, d, ctx.world)
            problem = same_everything(ctx, d, [])
        else:
            again = _train_resume(ctx, d, d / "run")
            problem = same_final(ctx, d, [])
        procs.append(again)  # judged for tracebacks too
        if again.rc != 0:
            return f"the rerun failed (exit {again.rc}): {again.brief()}"
        return problem

    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    rc = (130,) if sig == signal.SIGINT else (130, 143)
    needs = ("run",) if command in ("train", "evaluate") else ("build",)
    return Case(id, "kill", f"{name} to {'a background ' if background else ''}{command} "
                f"{desc}", "refused", act, INTERRUPT_WORDS, check=check, rc=rc, needs=needs)  # fmt: skip


def kill_cases() -> list[Case]:
    cases = [kill_build_stage(s) for s in STAGES]
    cases += [
        Case(
            "kill9-build-real",
            "kill",
            "a real kill -9 of build once a stage folder appears",
            "identical",
            _kill_build_real,
            check=same_everything,
        ),
        kill_train(
            "kill9-train-step",
            "kill -9 at training step 250; --resume gives the uninterrupted run's weights",
            PATCH_TRAIN.format(at=250, action=KILL),
        ),
        kill_train(
            "kill9-train-early",
            "kill -9 at step 50 (before any checkpoint); --resume",
            PATCH_TRAIN.format(at=50, action=KILL),
        ),
        kill_train(
            "kill9-train-in-checkpoint",
            "kill -9 while the step-200 checkpoint is being written",
            PATCH_SAVE.format(module="sepsisrl.rl.checkpoint", needle="step_00000200"),
        ),
        kill_train(
            "kill9-train-in-final",
            "kill -9 while final/ is being written",
            PATCH_SAVE.format(module="sepsisrl.rl.trainer", needle="final"),
        ),
        Case(
            "kill9-synth",
            "kill",
            "kill -9 of synth while it writes; the next synth leaves "
            "no .raw.partial-PID debris and the same bytes",
            "identical",
            _kill_synth,
            check=_same_world,
            needs=("world",),
        ),
        Case(
            "kill9-evaluate",
            "kill",
            "kill -9 of evaluate after 4.5 s; the rerun gives the clean metrics",
            "identical",
            _kill_evaluate,
            check=_same_eval,
            needs=("eval",),
        ),
        Case(
            "kill9-export",
            "kill",
            "kill -9 of export while it writes model.safetensors; the rerun gives the clean bundle",
            "identical",
            _kill_export,
            check=_same_bundle,
            needs=("bundle",),
        ),
        interrupt(
            "sigint-build-bg",
            "(SIGINT ignored, as in `sepsisrl build &`)",
            "build",
            signal.SIGINT,
            True,
        ),
        interrupt("sigint-build", "in the foreground", "build", signal.SIGINT, False),
        interrupt("sigterm-build", "", "build", signal.SIGTERM, False),
        interrupt("sigint-train-bg", "(SIGINT ignored)", "train", signal.SIGINT, True),
        interrupt("sigterm-train", "", "train", signal.SIGTERM, False),
        interrupt("sigint-synth-bg", "(SIGINT ignored)", "synth", signal.SIGINT, True),
        interrupt("sigterm-synth", "", "synth", signal.SIGTERM, False),
        interrupt("sigint-evaluate", "after 4.5 s", "evaluate", signal.SIGINT, False),
    ]
    return cases


# ------------------------------------------------------------------------------ concurrency
def concurrent(id: str, desc: str, argv: Callable[[Ctx, Path], list[object]], name: str,
               same: Check, needs: tuple[str, ...], delay: float = 0.4) -> Case:  # fmt: skip
    """Two identical commands writing one folder ``name``: never both exit 0 with a corrupt
    result; a refusal names the folder; the folder ends complete and correct."""

    def act(ctx: Ctx, d: Path) -> list[Proc]:
        a = ctx.bg(d, *argv(ctx, d), label="first")
        time.sleep(delay)
        b = ctx.bg(d, *argv(ctx, d), label="second")
        return [a.wait(300), b.wait(300)]

    def verdict(ctx: Ctx, d: Path, procs: list[Proc]) -> tuple[str, str] | None:
        done = [p for p in procs if p.rc == 0]
        if not done:
            return "wrong refusal", "neither command finished: " + procs[-1].brief()
        for p in procs:
            if p.rc != 0 and not _has(p.text, name):
                return (
                    "unclear refusal",
                    f"{p.label} (exit {p.rc}) does not name {name}: {p.brief()}",
                )
        problem = same(ctx, d, procs)
        return ("silent wrong", problem) if problem else None

    return Case(id, "concurrent", desc, "recovered", act, (name,), needs=needs, judge=verdict,
                timeout=600)  # fmt: skip


def _conc_eval_during_train(ctx: Ctx, d: Path) -> list[Proc]:
    run = run_copy(ctx, d)
    args = ["train", "--replay", ctx.replay, "--out", run, *TRAIN_SETTINGS[:-1], "--overwrite",
            "--seed", "7", "--steps", "3000", "-q"]  # fmt: skip
    a = ctx.bg(d, *args, label="train")

    def restarted() -> bool:
        with _suppress():
            return json.loads((run / "config.json").read_text()).get("seed") == 7
        return False

    wait_until(restarted, a, 60)
    b = ctx.bg(d, *["evaluate", "--replay", ctx.replay, "--run", run, "--out", d / "eval",
                    *EVAL_SETTINGS], label="evaluate")  # fmt: skip
    return [a.wait(300), b.wait(300)]


def _eval_during_train_verdict(ctx: Ctx, d: Path, procs: list[Proc]) -> tuple[str, str] | None:
    train, ev = procs
    if train.rc != 0:
        return "wrong refusal", f"train (exit {train.rc}): {train.brief()}"
    if ev.rc != 0:
        if not _has(ev.text, "run|final"):
            return "unclear refusal", f"evaluate refused without naming the run: {ev.brief()}"
        return None
    # evaluate said it worked: its metrics must be those of one complete run
    again = ctx.cli(d, "evaluate", "--replay", ctx.replay, "--run", d / "run", "--out",
                    d / "eval_after", *EVAL_SETTINGS, timeout=300)  # fmt: skip
    procs.append(again)
    if again.rc == 0 and _metrics(d / "eval" / "metrics.json") == _metrics(
        d / "eval_after" / "metrics.json"
    ):
        return None
    if _same_eval(ctx, d, procs) is None:
        return None
    return "silent wrong", "evaluate exited 0 with metrics of neither complete run"


def concurrent_cases() -> list[Case]:
    train = lambda ctx, d: ["train", "--replay", ctx.replay, "--out", d / "shared_run",  # noqa: E731
                            *TRAIN_SETTINGS, "--overwrite"]  # fmt: skip
    build_argv = lambda ctx, d: ["build", "--source", ctx.world, "--workspace",  # noqa: E731
                                 d / "shared_ws", "-q"]  # fmt: skip
    synth = lambda ctx, d: ["synth", "--out", d / "raw", *WORLD_ARGS]  # noqa: E731
    export = lambda ctx, d: ["export", "--run", ctx.run, "--out", d / "shared_bundle",  # noqa: E731
                             "--overwrite"]  # fmt: skip
    evaluate = lambda ctx, d: _eval_argv(ctx, d / "shared_eval")  # noqa: E731
    return [
        concurrent(
            "conc-train-overwrite",
            "two `train --overwrite` into one run folder",
            train,
            "shared_run",
            lambda ctx, d, p: same_final(ctx, d, p, run="shared_run"),
            ("run",),
        ),
        concurrent(
            "conc-build",
            "two builds into one workspace",
            build_argv,
            "shared_ws",
            lambda ctx, d, p: same_everything(ctx, d, p, ws="shared_ws"),
            ("build",),
            delay=0.2,
        ),
        concurrent("conc-synth", "two synth into one --out", synth, "raw", _same_world, ("world",)),
        concurrent(
            "conc-export",
            "two `export --overwrite` into one folder",
            export,
            "shared_bundle",
            lambda ctx, d, p: _same_bundle(ctx, d, p, "shared_bundle"),
            ("bundle",),
            delay=0.2,
        ),
        concurrent(
            "conc-evaluate",
            "two evaluate into one --out",
            evaluate,
            "shared_eval",
            lambda ctx, d, p: _same_eval(ctx, d, p, "shared_eval"),
            ("eval",),
            delay=1.0,
        ),
        Case(
            "conc-evaluate-during-train",
            "concurrent",
            "evaluate a run while `train --overwrite` rewrites it",
            "recovered",
            _conc_eval_during_train,
            ("run",),
            needs=("eval",),
            judge=_eval_during_train_verdict,
            timeout=600,
        ),
    ]


# ------------------------------------------------------------------------------ OS errors
def _as_unprivileged(argv: list[str]) -> list[str]:
    """Run as nobody when we are root (root ignores permission bits)."""
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    return argv


def readonly_case(id: str, desc: str, argv: Callable[[Ctx, Path], list[object]],
                  words: tuple[str, ...], needs: tuple[str, ...], expected: str = "refused",
                  check: Check | None = None, readonly: str = "ro_parent") -> Case:  # fmt: skip
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        os.chmod(d, 0o777)
        ro = d / readonly
        if readonly == "raw":
            ro = mirror(ctx, d)
        ro.mkdir(exist_ok=True)
        for p in [ro, *ro.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o555)
        full = _as_unprivileged(ctx.cli_argv(*argv(ctx, d)))
        env = {**ctx.env, "HOME": str(ctx.root / "home")}
        return [Bg(ctx, full, d, "readonly", env=env).wait(240)]

    return Case(id, "os", desc, expected, act, words, check=check, needs=needs)


def _inside_file(id: str, desc: str, argv: Callable[[Ctx, Path], list[object]],
                 needs: tuple[str, ...]) -> Case:  # fmt: skip
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        (d / "afile").write_text("not a folder\n")
        return [ctx.cli(d, *argv(ctx, d))]

    return Case(id, "os", desc, "refused", act, ("afile",), needs=needs)


def _disk_full(id: str, desc: str, argv: Callable[[Ctx, Path], list[object]], kib: int,
               needs: tuple[str, ...]) -> Case:  # fmt: skip
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        shell = f'ulimit -f {kib}; trap "" XFSZ; exec "$@"'
        full = ["bash", "-c", shell, "_", *ctx.cli_argv(*argv(ctx, d))]
        return [Bg(ctx, full, d, "disk-full").wait(240)]

    # the message names the output being written and the cause, and blames no input file
    return Case(id, "os", desc, "refused", act, ("full_out", "too large|space|disk"),
                ("cannot be read",), needs=needs)  # fmt: skip


def _existing(id: str, desc: str, argv: Callable[[Ctx, Path], list[object]], name: str,
              words: tuple[str, ...], needs: tuple[str, ...]) -> Case:  # fmt: skip
    def act(ctx: Ctx, d: Path) -> list[Proc]:
        (d / name).mkdir()
        (d / name / "keep.txt").write_text("user data\n")
        return [ctx.cli(d, *argv(ctx, d))]

    def check(ctx: Ctx, d: Path, procs: list[Proc]) -> str | None:
        return None if (d / name / "keep.txt").is_file() else f"{name}/keep.txt was deleted"

    return Case(id, "os", desc, "refused", act, words, check=check, needs=needs)


def os_cases() -> list[Case]:
    def train_to(out):
        return lambda ctx, d: ["train", "--replay", ctx.replay, "--out", out(d), *SHORT_TRAIN]

    return [
        readonly_case(
            "os-readonly-workspace",
            "build into a read-only workspace folder",
            lambda ctx, d: ["build", "--source", ctx.world, "--workspace", d / "ro_ws", "-q"],
            ("ro_ws", "permission|read-only|writable"),
            ("build",),
            readonly="ro_ws",
        ),
        readonly_case(
            "os-readonly-run-parent",
            "train --out inside a read-only folder",
            train_to(lambda d: d / "ro_parent" / "run"),
            ("ro_parent", "permission|read-only|writable"),
            ("build",),
        ),
        readonly_case(
            "os-readonly-synth-parent",
            "synth --out inside a read-only folder",
            lambda ctx, d: ["synth", "--out", d / "ro_parent" / "raw", "--stays", "5", "-q"],
            ("ro_parent", "permission|read-only|writable"),
            (),
        ),
        readonly_case(
            "os-readonly-eval-parent",
            "evaluate --out inside a read-only folder",
            lambda ctx, d: _eval_argv(ctx, d / "ro_parent" / "eval"),
            ("ro_parent", "permission|read-only|writable"),
            ("run",),
        ),
        readonly_case(
            "os-readonly-source",
            "build from a read-only source folder (must not write into it)",
            lambda ctx, d: ["build", "--source", d / "raw", "--workspace", d / "ws", "-q"],
            (),
            ("build",),
            expected="recovered",
            check=same_replay,
            readonly="raw",
        ),
        _inside_file(
            "os-workspace-is-file",
            "build --workspace is a file",
            lambda ctx, d: ["build", "--source", ctx.world, "--workspace", d / "afile", "-q"],
            ("world",),
        ),
        _inside_file(
            "os-train-out-inside-file",
            "train --out below a file",
            train_to(lambda d: d / "afile" / "run"),
            ("build",),
        ),
        _inside_file(
            "os-synth-out-inside-file",
            "synth --out below a file",
            lambda ctx, d: ["synth", "--out", d / "afile" / "raw", "--stays", "5", "-q"],
            (),
        ),
        _inside_file(
            "os-export-out-inside-file",
            "export --out below a file",
            lambda ctx, d: ["export", "--run", ctx.run, "--out", d / "afile" / "b"],
            ("run",),
        ),
        _inside_file(
            "os-evaluate-out-inside-file",
            "evaluate --out below a file",
            lambda ctx, d: _eval_argv(ctx, d / "afile" / "eval"),
            ("run",),
        ),
        _disk_full(
            "os-disk-full-build",
            "build when files cannot grow past 200 KiB (ulimit -f: EFBIG, as on a full disk)",
            lambda ctx, d: ["build", "--source", ctx.world, "--workspace", d / "full_out", "-q"],
            200,
            ("world",),
        ),
        _disk_full(
            "os-disk-full-train",
            "train when files cannot grow past 100 KiB",
            lambda ctx, d: [
                "train",
                "--replay",
                ctx.replay,
                "--out",
                d / "full_out",
                *TRAIN_SETTINGS,
            ],
            100,
            ("build",),
        ),
        _disk_full(
            "os-disk-full-synth",
            "synth when files cannot grow past 300 KiB",
            lambda ctx, d: ["synth", "--out", d / "full_out", *WORLD_ARGS],
            300,
            (),
        ),
        _existing(
            "os-synth-out-exists",
            "synth --out an existing, non-empty folder",
            lambda ctx, d: ["synth", "--out", d / "taken", "--stays", "5", "-q"],
            "taken",
            ("taken", "--overwrite"),
            (),
        ),
        _existing(
            "os-train-out-exists",
            "train --out an existing, non-empty folder",
            train_to(lambda d: d / "taken"),
            "taken",
            ("taken", "--resume|--overwrite"),
            ("build",),
        ),
        _existing(
            "os-export-out-exists",
            "export --out an existing, non-empty folder",
            lambda ctx, d: ["export", "--run", ctx.run, "--out", d / "taken"],
            "taken",
            ("taken", "--overwrite"),
            ("run",),
        ),
    ]


# ------------------------------------------------------------------------------ controls
def control_cases() -> list[Case]:
    def mirror_build(ctx: Ctx, d: Path) -> list[Proc]:
        return [build(ctx, d, mirror(ctx, d))]

    def retrain(ctx: Ctx, d: Path) -> list[Proc]:
        return [ctx.cli(d, "train", "--replay", ctx.replay, "--out", d / "run", *TRAIN_SETTINGS)]

    def reevaluate(ctx: Ctx, d: Path) -> list[Proc]:
        return [ctx.cli(d, *_eval_argv(ctx, d / "eval"), timeout=300)]

    return [
        Case(
            "control-mirror-build",
            "control",
            "an unmodified mirror of the world builds the "
            "same bytes (the comparisons of the raw cases are sound)",
            "recovered",
            mirror_build,
            check=same_everything,
        ),
        Case(
            "control-retrain",
            "control",
            "the reference training again: identical weights",
            "recovered",
            retrain,
            check=same_final,
            needs=("run",),
        ),
        Case(
            "control-reevaluate",
            "control",
            "the reference evaluation again: same metrics",
            "recovered",
            reevaluate,
            check=_same_eval,
            needs=("eval",),
        ),
    ]


def all_cases() -> list[Case]:
    cases = [
        *control_cases(), *raw_cases(), *config_cases(), *replay_cases(), *bundle_cases(),
        *run_cases(), *kill_cases(), *concurrent_cases(), *os_cases(),
    ]  # fmt: skip
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids: {dup}"
    for c in cases:
        assert c.expected in EXPECTED and c.family in FAMILIES, c.id
    return cases


def select(cases: list[Case], only: str | None, family: str | None, fast: bool) -> list[Case]:
    out = cases
    if fast:
        out = [c for c in out if c.fast]
    if family:
        fams = set(family.split(","))
        out = [c for c in out if c.family in fams]
    if only:
        pats = only.split(",")
        out = [c for c in out if any(fnmatch.fnmatch(c.id, p) or p in c.id for p in pats)]
    return out


# ------------------------------------------------------------------------------ running
def run_battery(
    cases: list[Case],
    root: Path | None = None,
    jobs: int = 1,
    keep: bool = False,
    progress: Callable[[Result], None] | None = None,
) -> dict:
    """Run ``cases``; returns the JSON document (results, counts, fixture seconds)."""
    own = root is None
    root = Path(tempfile.mkdtemp(prefix="sepsisrl-faults-")) if own else root
    ctx = Ctx(root)
    t0 = time.perf_counter()
    needs = {n for c in cases for n in c.needs}
    ctx.prepare(needs)
    workdir = root / "cases"
    results: list[Result] = []
    try:
        if jobs <= 1:
            for n, case in enumerate(cases):
                res = run_case(ctx, case, workdir, n)
                results.append(res)
                if progress:
                    progress(res)
                if not keep and res.outcome == "pass":
                    _rmtree(workdir / f"c{n:03d}")
        else:
            with ThreadPoolExecutor(jobs) as pool:
                for res in pool.map(
                    lambda nc: run_case(ctx, nc[1], workdir, nc[0]), enumerate(cases)
                ):
                    results.append(res)
                    if progress:
                        progress(res)
    finally:
        if own and not keep:
            _rmtree(root)
    counts = {o: sum(1 for r in results if r.outcome == o) for o in OUTCOMES}
    return {
        "root": str(root) if keep or not own else None,
        "python": PY,
        "cpus": os.cpu_count(),
        "fixtures_seconds": ctx.ready,
        "fixtures_failed": ctx.failed,
        "seconds": round(time.perf_counter() - t0, 1),
        "counts": counts,
        "cases": [r.__dict__ for r in results],
    }


def print_row(r: Result) -> None:
    note = f"  {r.note}" if r.outcome != "pass" else ""
    print(f"{r.id:<38} {r.family:<10} {r.expected:<9} {r.outcome:<15} {r.seconds:6.1f}{note}",
          flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="case ids: comma-separated glob patterns or substrings")
    ap.add_argument("--family", help=f"comma-separated families: {', '.join(FAMILIES)}")
    ap.add_argument("--fast", action="store_true", help="the quick subset (tests/test_faults.py)")
    ap.add_argument("--jobs", type=int, default=1, help="cases run in parallel (default 1)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--root", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder and case folders")
    ap.add_argument("--list", action="store_true", help="list the selected cases and exit")
    args = ap.parse_args(argv)
    cases = select(all_cases(), args.only, args.family, args.fast)
    if args.list:
        for c in cases:
            print(f"{c.id:<38} {c.family:<10} {c.expected:<9} {c.description}")
        print(f"{len(cases)} cases")
        return 0
    if not cases:
        print("no case matches", file=sys.stderr)
        return 2
    probe = subprocess.run([PY, "-c", "import sepsisrl"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"{PY} cannot import sepsisrl: run this with the project's virtual environment "
              "(.venv/bin/python bench/faults.py)", file=sys.stderr)  # fmt: skip
        return 2
    print(f"{len(cases)} fault cases, {args.jobs} job(s), {os.cpu_count()} CPUs", flush=True)
    print(f"{'id':<38} {'family':<10} {'expected':<9} {'actual':<15} {'seconds':>6}", flush=True)
    doc = run_battery(cases, args.root, args.jobs, args.keep, progress=print_row)
    if doc["fixtures_failed"]:
        print(f"shared fixtures failed: {doc['fixtures_failed']}")
    print(f"\nfixtures: {doc['fixtures_seconds']} s; total {doc['seconds']:.0f} s")
    print("counts: " + ", ".join(f"{k} {v}" for k, v in doc["counts"].items() if v))
    if doc["root"]:
        print(f"work folder kept: {doc['root']}")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if doc["counts"]["pass"] == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
