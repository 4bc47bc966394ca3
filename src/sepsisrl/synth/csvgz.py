"""Streaming writer of MIMIC-style ``*.csv.gz`` files from Arrow tables.

MIMIC-IV's files have an unquoted header, values quoted only when necessary, timestamps as
``YYYY-MM-DD HH:MM:SS`` and empty fields for nulls. Arrow's C++ CSV writer formats the rows
and zlib compresses them; both release the GIL, so two background threads (one formats, one
compresses) overlap writing with simulation. The gzip header carries no timestamp, so equal
inputs give equal bytes.
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


def _has_quoted_chars(chunk: pa.Array) -> bool:
    """Whether a string chunk's character data holds a comma or a quote: a plain byte search
    of its data buffer (which may span more than a sliced chunk's values, so a hit only says
    "perhaps"; a miss is certain)."""
    data = chunk.buffers()[2]
    if data is None:
        return False
    raw = data.to_pybytes()
    return b"," in raw or b'"' in raw


def _quote_chunk(chunk: pa.Array) -> tuple[pa.Array, bool]:
    """The chunk with its values that contain a comma or a quote wrapped in placeholder
    quotes (inner quotes doubled); only those values are rewritten."""
    needs = pc.match_substring_regex(chunk, '[",]')
    if not pc.any(needs).as_py():
        return chunk, False
    inner = pc.replace_substring(
        pc.replace_substring(pc.filter(chunk, needs), '"', _QUOTE * 2), ",", _COMMA
    )
    mark, empty = pa.scalar(_QUOTE, chunk.type), pa.scalar("", chunk.type)
    quoted = pc.binary_join_element_wise(mark, inner, mark, empty)
    return pc.replace_with_mask(chunk, needs, quoted), True


def _mark_quoted(table: pa.Table) -> tuple[pa.Table, bool]:
    """Wrap string values containing a comma or a quote in placeholder quotes."""
    changed = False
    columns = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            chunks = []
            for chunk in col.chunks:
                if _has_quoted_chars(chunk):
                    chunk, quoted = _quote_chunk(chunk)
                    changed |= quoted
                chunks.append(chunk)
            col = pa.chunked_array(chunks, type=col.type)
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


#: rows formatted at a time: memory stays bounded whatever a table's size
SLICE_ROWS = 200_000


def csv_slices(table: pa.Table, slice_rows: int = SLICE_ROWS):
    """The CSV rows of ``table`` (``table_to_csv_bytes``), ``slice_rows`` rows at a time."""
    for start in range(0, table.num_rows, slice_rows):
        yield table_to_csv_bytes(table.slice(start, slice_rows))


class GzipCsvFile:
    """One ``.csv.gz`` file written incrementally (header first, then row blocks)."""

    def __init__(self, path: Path, columns: list[str], level: int) -> None:
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container, mtime 0
        self.rows = 0
        with naming_output(path):  # a full disk names the file (a write error names none)
            self._fh.write(self._z.compress((",".join(columns) + "\n").encode()))

    def write(self, table: pa.Table, slice_rows: int = SLICE_ROWS) -> None:
        for data in csv_slices(table, slice_rows):
            self.write_csv(data)
        self.rows += table.num_rows

    def write_csv(self, data: bytes) -> None:
        """Compress and append CSV rows formatted by ``table_to_csv_bytes``."""
        with naming_output(self.path):
            self._fh.write(self._z.compress(data))

    def close(self) -> None:
        with naming_output(self.path):
            self._fh.write(self._z.flush())
            self._fh.close()


class BackgroundWriter:
    """Writes (file key, table) items in submission order on two threads: one formats the rows
    (Arrow's CSV writer), the other compresses and writes them (zlib). Both release the GIL, so
    formatting, compression and the caller's simulation overlap; each file still receives its
    rows in order, so the bytes are those of writing every table in turn.

    ``max_pending`` bounds how many tables (and formatted slices) wait in memory, so peak memory
    stays flat however many chunks are written. Errors raised on either thread are re-raised
    on the next call.
    """

    def __init__(self, files: dict[str, GzipCsvFile], max_pending: int = 9) -> None:
        self.files = files
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._formatted: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._format, name="csvgz-format", daemon=True),
            threading.Thread(target=self._compress, name="csvgz-compress", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _format(self) -> None:
        try:
            while True:
                item = self._q.get()
                if item is None:
                    return
                if self._error is not None:
                    continue
                key, table = item
                try:
                    for data in csv_slices(table):
                        if self._error is not None:  # aborted or failed: stop formatting
                            break
                        self._formatted.put((key, data, 0))
                    self._formatted.put((key, b"", table.num_rows))
                except BaseException as exc:  # re-raised in the submitting thread
                    self._error = self._error or exc
        finally:
            self._formatted.put(None)

    def _compress(self) -> None:
        while True:
            item = self._formatted.get()
            if item is None:
                return
            if self._error is not None:
                continue
            key, data, rows = item
            try:
                if data:
                    self.files[key].write_csv(data)
                self.files[key].rows += rows
            except BaseException as exc:  # re-raised in the submitting thread
                self._error = self._error or exc

    def submit(self, key: str, table: pa.Table) -> None:
        self._raise_if_failed()
        self._q.put((key, table))

    def close(self) -> None:
        self._q.put(None)
        for thread in self._threads:
            thread.join()
        for f in self.files.values():
            f.close()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop the threads without finishing the files (used on error or interruption)."""
        self._error = self._error or RuntimeError("aborted")
        # never block on a full queue: the threads skip queued items once _error is set, and
        # they are daemon threads, so an interrupt is not held up by the slice being compressed
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout=2)
        for f in self.files.values():
            with contextlib.suppress(OSError):
                f._fh.close()

    def _raise_if_failed(self) -> None:
        if isinstance(self._error, OSError):  # a full disk, a read-only folder: as it is
            raise self._error
        if self._error is not None:
            raise RuntimeError(f"writing the MIMIC tables failed: {self._error}") from self._error
