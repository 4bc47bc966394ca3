"""A study's workspace: one folder per stage, written atomically, skipped when unchanged.

Every stage is a pure function of (its inputs, its config) -> its folder. Before running, the
stage's *key* is computed: a sha256 over the stage name, the package version, the build's code
(:func:`code_fingerprint`), the relevant config and the keys of the stages it reads (the ingest
stage uses a fingerprint of the raw files). If ``<stage>/stage.json`` holds the same key the
stage is skipped. Otherwise it runs into ``.<stage>.partial-<pid>/``, writes ``stage.json``
last, and the folder is renamed into place - so an interrupted stage never looks complete, and
the next run redoes it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepsisrl import __version__

STAGE_FILE = "stage.json"


#: The cached units and what produces them: entry modules (relative to ``sepsisrl``) and the
#: packaged configs (``configs/<name>.yaml``) they read. A unit's code is every ``sepsisrl``
#: module its entry modules import, directly or not (imports inside functions and the module
#: names of registries included), with the data files (SQL, YAML) of those modules' package
#: folders; :func:`code_fingerprint` hashes exactly that, so an edit there invalidates the
#: unit and an edit elsewhere (report, CLI) does not. The one table of coverage: every cache
#: key of the project takes its code from here.
UNITS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "build": (("dataset.builder",), ("build",)),  # sepsisrl build (every stage)
    "train": (("rl.trainer",), ("train",)),  # a training run
    "evaluate": (("ope.evaluate",), ("evaluate",)),  # an evaluation, the behaviour model
    "truth": (
        ("truth.harness", "truth.policies", "truth.world"),
        ("build", "synth", "evaluate"),
    ),
}

_SKIP_SUFFIXES = (".pyc", ".pyo")


def _module_file(pkg: Path, name: str) -> Path | None:
    path = pkg.joinpath(*name.split(".")) if name else pkg
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imported(pkg: Path, file: Path, name: str) -> set[str]:
    """``sepsisrl`` modules (names relative to it) that ``file`` imports anywhere: import
    statements, and strings naming a module (``"sepsisrl.rl.iql"``: a registry's entries)."""
    import ast

    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = ".".join(["sepsisrl", *parts[: len(parts) - node.level + 1]])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            targets = [node.value]
        else:
            continue
        for target in targets:
            if target == "sepsisrl" or target.startswith("sepsisrl."):
                rel = target.removeprefix("sepsisrl").removeprefix(".")
                if _module_file(pkg, rel) is not None:
                    out.add(rel)
    return out


def unit_files(unit: str) -> list[Path]:
    """The files a unit's code fingerprint covers (see :data:`UNITS`), sorted."""
    from sepsisrl.config import packaged_config_path

    if unit not in UNITS:
        raise KeyError(f"unknown unit {unit!r}; known: {', '.join(UNITS)}")
    configs = [Path(packaged_config_path(c)) for c in UNITS[unit][1]]
    return [*_code_files(unit), *configs]


@functools.cache
def _code_files(unit: str) -> tuple[Path, ...]:
    pkg = Path(__file__).resolve().parent
    seen: set[str] = set()
    todo = [""]
    for entry in UNITS[unit][0]:  # a module and the packages above it (their __init__ runs)
        parts = entry.split(".")
        todo += [".".join(parts[: i + 1]) for i in range(len(parts))]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        file = _module_file(pkg, name)
        if file is not None:
            todo += sorted(_imported(pkg, file, name) - seen)
    files = {f for f in (_module_file(pkg, n) for n in seen) if f is not None}
    for name in seen - {""}:  # the data files (SQL, YAML, ...) of the covered sub-packages
        folder = pkg.joinpath(*name.split("."))
        if not (folder / "__init__.py").is_file():
            continue
        for f in folder.rglob("*"):
            if f.suffix in (".py", *_SKIP_SUFFIXES) or "__pycache__" in f.parts or not f.is_file():
                continue
            if next(p for p in f.parents if (p / "__init__.py").is_file()) == folder:
                files.add(f)
    return tuple(sorted(files, key=lambda f: _rel(pkg, f)))


def _rel(pkg: Path, f: Path) -> str:
    try:
        return str(f.resolve().relative_to(pkg))
    except ValueError:
        return str(f)


def code_fingerprint(unit: str) -> str:
    """sha256 of what produces ``unit``: the package version and the content of
    :func:`unit_files` (names and bytes). Every code key of a cache comes from here."""
    pkg = Path(__file__).resolve().parent
    files = unit_files(unit)
    if not all(f.is_file() for f in files):  # the sources moved since the list was made
        _code_files.cache_clear()
        files = unit_files(unit)
    h = hashlib.sha256(f"sepsisrl {__version__}\n".encode())
    for f in files:
        h.update(_rel(pkg, f).encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024, 1)


def stable_hash(payload: Any) -> str:
    data = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final`` (``.<name>.partial-<pid>``). On success it
    replaces ``final`` in one rename; on any error or interrupt it is removed, so ``final`` is
    never seen half-written."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)  # inside: an interrupt right after the mkdir removes it too
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def partial_owner(path: Path) -> int | None:
    """The pid in a temporary name (``.<name>.partial-<pid>``, ``.<name>.tmp-<pid>``), if any."""
    name = path.name
    if not name.startswith("."):
        return None
    for tag in (".partial-", ".tmp-"):
        head, sep, pid = name.rpartition(tag)
        if sep and head and pid.isdigit():
            return int(pid)
    return None


def remove_partials(folder: Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """Remove the temporary folders and files (``.<name>.partial-<pid>``,
    ``.<name>.tmp-<pid>``) that interrupted or killed processes left in ``folder`` - only those
    whose process has ended: a running command's temporary folder is never touched. ``names``
    limits the clean-up to the temporaries of those names."""
    from sepsisrl.locks import pid_alive

    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.glob(".*")):
        pid = partial_owner(p)
        if pid is None or pid_alive(pid):
            continue
        if names is not None and not any(
            p.name.startswith(f".{n}.partial-") or p.name.startswith(f".{n}.tmp-") for n in names
        ):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        removed.append(p)
    return removed


#: Error text of a write that the disk or a file-size limit stopped (OSError, Arrow, DuckDB,
#: safetensors): the wording of each library, or the errno it quotes.
_NO_SPACE_TEXT = (
    (errno.EFBIG, re.compile(r"file too large|\b(?:errno|os error)\W{0,3}27\b", re.I)),
    (errno.ENOSPC, re.compile(r"no space left|\b(?:errno|os error)\W{0,3}28\b", re.I)),
    (errno.EDQUOT, re.compile(r"quota exceeded|\b(?:errno|os error)\W{0,3}122\b", re.I)),
)
_WRITE_TARGET = re.compile(r'Could not write (?:to )?file \\?"(?P<path>[^"\\]+)\\?"', re.I)
_PARTIAL_PART = re.compile(r"^\.(?P<name>.+)\.(?:partial|tmp)-\d+$")


def no_space_errno(exc: BaseException | str) -> int | None:
    """EFBIG, ENOSPC or EDQUOT when ``exc`` (an exception or its text) reports a write stopped
    by a full disk, a quota or a file-size limit; else None."""
    code = getattr(exc, "errno", None)
    if code in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
        return code
    text = str(exc)
    return next((c for c, pattern in _NO_SPACE_TEXT if pattern.search(text)), None)


def final_path(path: str | Path) -> Path:
    """``path`` with every temporary part (``.<name>.partial-<pid>``, ``.<name>.tmp-<pid>``)
    replaced by the name it will be renamed to: the file as the user will know it."""
    parts = [(m["name"] if (m := _PARTIAL_PART.match(p)) else p) for p in Path(path).parts]
    return Path(*parts) if parts else Path(path)


def no_space_error(exc: BaseException, path: str | Path | None = None) -> OSError | None:
    """An ``OSError`` (errno, strerror, file) for a write that a full disk or a file-size limit
    stopped, naming the file as it will be known (not its temporary name): the file the error
    text names (DuckDB's "Could not write file"), else ``path``. None for any other error."""
    code = no_space_errno(exc)
    if code is None:
        return None
    named = _WRITE_TARGET.search(str(exc))
    target = named["path"] if named else getattr(exc, "filename", None) or path
    return OSError(code, os.strerror(code), str(final_path(target)) if target else None)


@contextlib.contextmanager
def naming_output(path: str | Path, hint: str | None = None) -> Iterator[None]:
    """Re-raise a write that a full disk or a file-size limit stopped as an ``OSError`` that
    names ``path`` (as it will be known, without its temporary part) when the error itself
    names no file, as Arrow's and safetensors' errors do. ``hint``: what to do instead of the
    generic advice (the command line prints it)."""
    try:
        yield
    except Exception as exc:
        full = no_space_error(exc, path)
        if full is None:
            raise
        if hint:
            full.hint = hint  # type: ignore[attr-defined]
        raise full from exc


class JSONFileError(json.JSONDecodeError):
    """A JSON file that does not parse; the message names the file."""

    def __init__(self, path: Path, exc: json.JSONDecodeError) -> None:
        super().__init__(exc.msg, exc.doc, exc.pos)
        self.path = Path(path)

    def __str__(self) -> str:
        return (
            f"{self.path} is not valid JSON ({self.msg} at line {self.lineno}, column "
            f"{self.colno}); the file is damaged or was edited by hand"
        )


def read_json(path: Path) -> Any:
    """Parse a JSON file; a damaged file raises :class:`JSONFileError` naming it."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONFileError(Path(path), exc) from None


@dataclass
class StageResult:
    name: str
    key: str
    skipped: bool
    seconds: float
    path: Path


class Workspace:
    """Folders of one study (docs/contracts.md, "Workspace layout")."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str) -> Path:
        return self.root / stage

    def stage_key(self, stage: str) -> str | None:
        f = self.path(stage) / STAGE_FILE
        if not f.is_file():
            return None
        try:
            return read_json(f).get("key")
        except (OSError, ValueError):
            return None

    def clean_partials(self) -> list[Path]:
        """Remove folders left by interrupted stages."""
        return remove_partials(self.root)

    def run(
        self,
        stage: str,
        key_material: dict[str, Any],
        build: Callable[[Path], dict[str, Any] | None],
        force: bool = False,
    ) -> StageResult:
        """Run ``build(tmp_dir)`` unless ``stage`` is current for ``key_material``."""
        key = stable_hash(
            {
                "stage": stage,
                "version": __version__,
                "code": code_fingerprint("build"),
                **key_material,
            }
        )
        final = self.path(stage)
        if not force and self.stage_key(stage) == key:
            return StageResult(stage, key, True, 0.0, final)
        started = time.perf_counter()
        with atomic_folder(final) as tmp:
            info = build(tmp) or {}
            seconds = time.perf_counter() - started
            write_json(
                tmp / STAGE_FILE,
                {
                    "stage": stage,
                    "key": key,
                    "created_by": f"sepsisrl {__version__}",
                    "seconds": round(seconds, 3),
                    "process_peak_rss_mb": peak_rss_mb(),
                    "inputs": {k: v for k, v in key_material.items() if k.endswith("_key")},
                    **info,
                },
            )
        return StageResult(stage, key, False, seconds, final)
