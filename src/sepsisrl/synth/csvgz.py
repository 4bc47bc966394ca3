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
import struct
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
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


#: the gzip member header: deflate, no name, mtime 0 (equal inputs, equal bytes), Unix
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
#: an empty final deflate block (fixed Huffman codes): the end of the compressed data
_FINAL_BLOCK = b"\x03\x00"


@dataclass(frozen=True)
class Segment:
    """One table's rows compressed on their own (raw deflate ending on a byte boundary, not
    final), with the CRC-32 and length of the text they hold: segments concatenate into one
    gzip member (as pigz writes its blocks), so they can be made in any process."""

    deflated: bytes
    crc: int
    length: int
    rows: int


class SegmentDeflater:
    """Compresses one segment's text as it comes (:meth:`feed`), then :meth:`finish` es it."""

    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, -15)
        self.crc, self.length = 0, 0

    def feed(self, data: bytes) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        return self._z.compress(data)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)


def deflate_segment(chunks: Iterable[bytes], level: int, rows: int = 0) -> Segment:
    """``chunks`` (text, in order) as one :class:`Segment`."""
    d = SegmentDeflater(level)
    parts = [d.feed(data) for data in chunks]
    parts.append(d.finish())
    return Segment(b"".join(parts), d.crc, d.length, rows)


def table_segment(table: pa.Table, level: int, slice_rows: int = SLICE_ROWS) -> Segment:
    """The CSV rows of ``table`` as one compressed :class:`Segment`."""
    return deflate_segment(csv_slices(table, slice_rows), level, table.num_rows)


def _gf2_times(a: int, b: int) -> int:
    """a(x) b(x) modulo the CRC-32 polynomial (reflected bit order, as zlib's multmodp)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ 0xEDB88320 if b & 1 else b >> 1


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A + B from crc(A), crc(B) and len(B) (zlib's ``crc32_combine``, which
    Python's zlib does not expose): crc(A) times x^(8 len2), plus crc(B)."""
    x, power, n = 1 << 30, 1 << 31, 8 * len2  # x^1 (reflected), x^0
    # x^n mod P by squaring: power accumulates x^(sum of the bits of n seen so far)
    while n:
        if n & 1:
            power = _gf2_times(x, power)
        x = _gf2_times(x, x)
        n >>= 1
    return _gf2_times(power, crc1) ^ crc2


class GzipCsvFile:
    """One ``.csv.gz`` file built from :class:`Segment` s: the header line, then one segment
    per table written (:meth:`write`, or :meth:`append` for a segment made elsewhere); one
    gzip member, so any gzip reader reads it. The bytes depend only on the tables and their
    order, not on where each segment was compressed."""

    def __init__(self, path: Path, columns: list[str], level: int) -> None:
        self.path, self.level = path, level
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.rows, self._crc, self._length = 0, 0, 0
        with naming_output(path):  # a full disk names the file (a write error names none)
            self._fh.write(_GZIP_HEADER)
        self.append(deflate_segment([(",".join(columns) + "\n").encode()], level))

    def write(self, table: pa.Table, slice_rows: int = SLICE_ROWS) -> None:
        self.append(table_segment(table, self.level, slice_rows))

    def append(self, seg: Segment) -> None:
        """Append a segment (its rows after those already written)."""
        with naming_output(self.path):
            self._fh.write(seg.deflated)
        self._count(seg.crc, seg.length, seg.rows)

    def begin(self) -> SegmentDeflater:
        """Start a segment compressed here as its text comes: :meth:`feed` it, then :meth:`end`
        it (the bytes of :meth:`append` of the same text)."""
        return SegmentDeflater(self.level)

    def feed(self, d: SegmentDeflater, data: bytes) -> None:
        with naming_output(self.path):
            self._fh.write(d.feed(data))

    def end(self, d: SegmentDeflater, rows: int) -> None:
        with naming_output(self.path):
            self._fh.write(d.finish())
        self._count(d.crc, d.length, rows)

    def _count(self, crc: int, length: int, rows: int) -> None:
        self._crc = crc32_combine(self._crc, crc, length)
        self._length += length
        self.rows += rows

    def close(self) -> None:
        with naming_output(self.path):
            self._fh.write(_FINAL_BLOCK)
            self._fh.write(struct.pack("<II", self._crc, self._length & 0xFFFFFFFF))
            self._fh.close()


class BackgroundWriter:
    """Writes (file key, table) items in submission order on two threads: one formats the rows
    (Arrow's CSV writer), the other compresses and writes them (zlib), one segment per table.
    Both release the GIL, so formatting, compression and the caller's simulation overlap; each
    file still receives its rows in order, so the bytes are those of writing every table in
    turn. :meth:`submit_segment` queues a table compressed elsewhere, in the same order.

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
                if isinstance(table, Segment):
                    self._formatted.put((key, table, 0))
                    continue
                try:
                    self._formatted.put((key, None, 0))  # a new segment
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
        open_segments: dict[str, SegmentDeflater] = {}
        while True:
            item = self._formatted.get()
            if item is None:
                return
            if self._error is not None:
                continue
            key, data, rows = item
            f = self.files[key]
            try:
                if isinstance(data, Segment):
                    f.append(data)
                elif data is None:
                    open_segments[key] = f.begin()
                elif data:
                    f.feed(open_segments[key], data)
                else:
                    f.end(open_segments.pop(key), rows)
            except BaseException as exc:  # re-raised in the submitting thread
                self._error = self._error or exc

    def submit(self, key: str, table: pa.Table) -> None:
        self._raise_if_failed()
        self._q.put((key, table))

    def submit_segment(self, key: str, segment: Segment) -> None:
        """Queue the rows of a table already compressed (:func:`table_segment`)."""
        self._raise_if_failed()
        self._q.put((key, segment))

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
