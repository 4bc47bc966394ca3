"""Streaming writer of MIMIC-style ``*.csv.gz`` files from Arrow tables.

MIMIC-IV's files have an unquoted header, values quoted only when necessary, timestamps as
``YYYY-MM-DD HH:MM:SS`` and empty fields for nulls. Arrow's C++ CSV writer formats the rows
and zlib compresses them; both release the GIL, so a background thread overlaps writing with
simulation. The gzip header carries no timestamp, so equal inputs give equal bytes.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from sepsisrl.workspace import naming_output

# Placeholders for characters that must be quoted; Arrow's "none" quoting style refuses them,
# and its "needed" style quotes every string. The placeholders never occur in generated text.
_QUOTE, _COMMA = "\x1e", "\x1f"


def _mark_quoted(table: pa.Table) -> tuple[pa.Table, bool]:
    """Wrap string values containing a comma or a quote in placeholder quotes."""
    changed = False
    columns = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            needs = pc.match_substring_regex(col, '[",]')
            if pc.any(needs).as_py():
                inner = pc.replace_substring(
                    pc.replace_substring(col, '"', _QUOTE * 2), ",", _COMMA
                )
                quoted = pc.binary_join_element_wise(_QUOTE, inner, _QUOTE, "")
                col = pc.if_else(needs, quoted, col)
                changed = True
        columns.append(col)
    return pa.Table.from_arrays(columns, names=table.column_names), changed


def table_to_csv_bytes(table: pa.Table) -> bytes:
    """CSV rows (no header) for ``table``, quoting only the values that need it (like MIMIC)."""
    table, changed = _mark_quoted(table)
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    data = buf.getvalue()
    if changed:
        data = data.replace(_QUOTE.encode(), b'"').replace(_COMMA.encode(), b",")
    return data


class GzipCsvFile:
    """One ``.csv.gz`` file written incrementally (header first, then row blocks)."""

    def __init__(self, path: Path, columns: list[str], level: int) -> None:
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container, mtime 0
        self.rows = 0
        with naming_output(path):  # a full disk names the file (a write error names none)
            self._fh.write(self._z.compress((",".join(columns) + "\n").encode()))

    def write(self, table: pa.Table, slice_rows: int = 200_000) -> None:
        # format and compress in slices: memory stays bounded whatever the table size
        with naming_output(self.path):
            for start in range(0, table.num_rows, slice_rows):
                part = table.slice(start, slice_rows)
                self._fh.write(self._z.compress(table_to_csv_bytes(part)))
        self.rows += table.num_rows

    def close(self) -> None:
        with naming_output(self.path):
            self._fh.write(self._z.flush())
            self._fh.close()


class BackgroundWriter:
    """Writes (file key, table) items on a worker thread, in submission order.

    ``max_pending`` bounds how many tables wait in memory, so peak memory stays flat however
    many chunks are written. Errors raised on the worker are re-raised on the next call.
    """

    def __init__(self, files: dict[str, GzipCsvFile], max_pending: int = 9) -> None:
        self.files = files
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="csvgz-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is not None:
                continue
            key, table = item
            try:
                self.files[key].write(table)
            except BaseException as exc:  # re-raised in the submitting thread
                self._error = exc

    def submit(self, key: str, table: pa.Table) -> None:
        self._raise_if_failed()
        self._q.put((key, table))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        for f in self.files.values():
            f.close()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop the worker without finishing the files (used on error or interruption)."""
        self._error = self._error or RuntimeError("aborted")
        # never block on a full queue: the worker skips queued tables once _error is set, and it
        # is a daemon thread, so an interrupt is not held up by the chunk being compressed
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        self._thread.join(timeout=2)
        for f in self.files.values():
            with contextlib.suppress(OSError):
                f._fh.close()

    def _raise_if_failed(self) -> None:
        if isinstance(self._error, OSError):  # a full disk, a read-only folder: as it is
            raise self._error
        if self._error is not None:
            raise RuntimeError(f"writing the MIMIC tables failed: {self._error}") from self._error
