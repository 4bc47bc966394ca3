"""One writer per folder: a lock file next to the folder a command writes.

``folder_lock(path, "workspace")`` takes ``<parent>/.<name>.lock`` (or, when the parent is not
writable, ``<folder>/.sepsisrl.lock``) with ``fcntl.flock`` and writes into it who holds it:
pid, host, command and start time. A second command that wants the same folder stops at once
with a message naming the holder (or, with ``sepsisrl --wait``, waits for it). The kernel drops
the lock when its process ends, however it ends, so a lock file left by a killed process is
stale: the next command takes it over and says so. On a file system without ``flock`` the
lock file is created with ``O_CREAT | O_EXCL`` and a holder whose pid is no longer running on
this host counts as stale.

Locks are re-entrant within a process (the study takes its workspace once and runs the build
in it) and are never inherited by worker processes (the file descriptor is close-on-exec).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".sepsisrl.lock"

#: ``sepsisrl --wait``: wait for a busy folder instead of stopping (set by the command line).
WAIT = False
#: How the holder is named in a busy message (the command line sets ``sepsisrl <command>``).
COMMAND: str | None = None


#: Where notes (a stale lock taken over) go; the command line prints them on stderr.
def _print_note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


NOTE: Callable[[str], None] = _print_note

_held: dict[str, tuple[int | None, int]] = {}  # lock path -> (fd, depth)
_guard = threading.Lock()
_POLL_SECONDS = 0.2


class FolderLockedError(RuntimeError):
    """Another process is writing the folder."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie counts as ended)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # killed, not yet reaped by its parent
            return False
    return True


def lock_path(folder: str | Path) -> Path:
    """The lock file of ``folder``: a hidden sibling, or inside when the parent is read-only."""
    folder = Path(folder).absolute()
    sibling = folder.parent / f".{folder.name}.lock"
    parent = folder.parent
    if sibling.exists() or not parent.exists() or os.access(parent, os.W_OK):
        return sibling
    return folder / LOCK_NAME


def _command() -> str:
    if COMMAND:
        return COMMAND
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "another sepsisrl command (it is just starting)"
    where = f"pid {info.get('pid')}"
    if info.get("host") and info.get("host") != socket.gethostname():
        where += f" on {info['host']}"
    return f"`{info.get('command', 'sepsisrl')}` ({where}, started {info.get('started', '?')})"


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _stale(info: dict[str, Any]) -> bool:
    """A holder recorded in a lock file that no process holds any more (flock-less mode)."""
    if not info.get("pid"):
        return True
    return info.get("host") == socket.gethostname() and not pid_alive(int(info["pid"]))


def _busy(what: str, folder: Path, info: dict[str, Any]) -> FolderLockedError:
    return FolderLockedError(
        f"{what} {folder} is in use by {_describe(info)}; wait for it to finish, or put --wait "
        "before the command (sepsisrl --wait ...) to start as soon as it does"
    )


def _write_info(fd: int, info: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(info) + "\n").encode())


def _acquire_flock(path: Path, what: str, folder: Path, wait: bool) -> tuple[int, dict]:
    """Open and flock ``path``; returns (fd, the stale holder's info or {})."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise _busy(what, folder, _read(path)) from None
                os.close(fd)
                time.sleep(_POLL_SECONDS)
                continue
            # the holder may have removed the file between our open and our flock
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            return fd, _read(path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _acquire_exclusive(path: Path, what: str, folder: Path, wait: bool) -> tuple[None, dict]:
    """``O_CREAT | O_EXCL`` locking for file systems without flock."""
    previous: dict[str, Any] = {}
    while True:
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644))
            return None, previous
        except FileExistsError:
            info = _read(path)
        with contextlib.suppress(OSError):
            if not info and time.time() - path.stat().st_mtime > 10:
                info = {"pid": 0, "command": "an unknown command"}  # never finished writing
        if info and _stale(info):
            previous = info
            if _read(path) == info:  # nobody took it over meanwhile
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            continue
        if not wait:
            raise _busy(what, folder, info)
        time.sleep(_POLL_SECONDS)


@contextlib.contextmanager
def folder_lock(
    folder: str | Path, what: str = "folder", wait: bool | None = None
) -> Iterator[Path]:
    """Hold the one-writer lock of ``folder`` (``what`` names it in messages: "workspace",
    "run folder", ...). Raises :class:`FolderLockedError` when another process holds it, unless
    ``wait`` (default: :data:`WAIT`). Yields the lock file's path."""
    folder = Path(folder).absolute()
    wait = WAIT if wait is None else wait
    path = lock_path(folder)
    key = str(path)
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield path
        finally:
            with _guard:
                fd, depth = _held[key]
                _held[key] = (fd, depth - 1)
        return
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if fcntl is None:
            raise OSError(errno.ENOLCK, "no flock")
        fd, previous = _acquire_flock(path, what, folder, wait)
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            _remove_empty(created)
            raise
        try:
            fd, previous = _acquire_exclusive(path, what, folder, wait)
        except BaseException:
            _remove_empty(created)
            raise
    except BaseException:
        _remove_empty(created)
        raise
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": _command(),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        if fd is None:
            path.write_text(json.dumps(info) + "\n")
        else:
            _write_info(fd, info)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            NOTE(
                f"{what} {folder}: took over the stale lock of {_describe(previous)}, which "
                "ended without releasing it"
            )
        with _guard:
            _held[key] = (fd, 1)
        yield path
    finally:
        with _guard:
            _held.pop(key, None)
        with contextlib.suppress(OSError):
            path.unlink()  # still holding the flock: nobody else can own this file yet
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders the lock created for itself if the command left them empty."""
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def folder_locks(*items: tuple[str | Path, str]) -> Iterator[None]:
    """Several folder locks, taken in a fixed (path) order so two commands never deadlock."""
    with contextlib.ExitStack() as stack:
        for folder, what in sorted(items, key=lambda x: str(lock_path(x[0]))):
            stack.enter_context(folder_lock(folder, what))
        yield


def clean_temporaries(folder: str | Path) -> None:
    """Remove the temporaries of ended processes next to and inside ``folder``."""
    from sepsisrl.workspace import remove_partials

    folder = Path(folder).absolute()
    remove_partials(folder.parent, (folder.name,))
    remove_partials(folder)


def holds_lock(param: str, what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function that writes the folder given as its argument ``param``: it runs
    holding that folder's lock, after the temporaries of ended processes there are removed."""
    import functools
    import inspect

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            folder = Path(sig.bind(*args, **kwargs).arguments[param]).absolute()
            with folder_lock(folder, what):
                clean_temporaries(folder)
                return fn(*args, **kwargs)

        return wrapper

    return decorate


__all__ = [
    "FolderLockedError",
    "clean_temporaries",
    "folder_lock",
    "folder_locks",
    "holds_lock",
    "lock_path",
    "pid_alive",
]
