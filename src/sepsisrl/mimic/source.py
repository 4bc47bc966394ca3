"""Locate and describe a MIMIC-IV source folder (real or synthetic) for DuckDB.

Each table may be ``<module>/<table>.csv.gz``, ``.csv`` or ``.parquet`` (users often convert
MIMIC-IV to Parquet). Problems are collected and reported together - a user fixing a download
should see every missing file and column in one message, with the expected layout.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from sepsisrl.dataset.sqlfiles import quote_path
from sepsisrl.mimic.schema import TABLES

#: Columns the pipeline reads, per table (other columns may be absent or extra).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": ("subject_id", "gender", "anchor_age", "anchor_year", "dod"),
    "admissions": ("subject_id", "hadm_id", "admittime", "dischtime", "deathtime"),
    "icustays": ("subject_id", "hadm_id", "stay_id", "intime", "outtime"),
    "chartevents": ("stay_id", "charttime", "itemid", "value", "valuenum"),
    "labevents": ("subject_id", "hadm_id", "specimen_id", "itemid", "charttime", "value", "valuenum"),
    "inputevents": (
        "stay_id", "starttime", "endtime", "itemid", "amount", "amountuom", "rate", "rateuom",
        "patientweight", "ordercomponenttypedescription",
    ),
    "outputevents": ("stay_id", "charttime", "itemid", "value"),
    "prescriptions": ("subject_id", "hadm_id", "starttime", "drug", "route"),
    "microbiologyevents": ("subject_id", "hadm_id", "micro_specimen_id", "chartdate", "charttime"),
    "d_items": ("itemid", "label"),
    "d_labitems": ("itemid", "label"),
}  # fmt: skip

#: Tables a build may proceed without (``source.allow_missing``) when they hold no data rows:
#: the event tables. Without a patient, admission, ICU stay or dictionary table nothing can be
#: built, so those are never optional.
OPTIONAL_TABLES: tuple[str, ...] = (
    "chartevents", "labevents", "inputevents", "outputevents", "prescriptions",
    "microbiologyevents",
)  # fmt: skip

_DUCK_TYPES = {
    "int": "BIGINT",
    "float": "DOUBLE",
    "str": "VARCHAR",
    "timestamp": "VARCHAR",  # parsed with TRY_CAST in SQL: accepts dates and timestamps
    "date": "VARCHAR",
}


class SourceError(ValueError):
    """The source folder does not look like MIMIC-IV."""


class SourceFormatError(SourceError):
    """A raw table's bytes cannot be read: damaged gzip, text that is not UTF-8, a value that is
    not of its column's type (one line naming the file, line, column and value, and the fix)."""


@dataclass
class SourceTable:
    name: str
    path: Path
    fmt: str  # "csv" | "parquet"
    columns: list[str]

    def relation(self) -> str:
        """A DuckDB table expression reading this file with stable column types."""
        path = quote_path(self.path)
        if self.fmt == "parquet":
            return f"read_parquet({path})"
        logical = dict(TABLES[self.name].columns)
        cols = ", ".join(
            f"'{c}': '{_DUCK_TYPES.get(logical.get(c, 'str'), 'VARCHAR')}'" for c in self.columns
        )
        return (
            f"read_csv({path}, header=true, delim=',', quote='\"', escape='\"', "
            f"columns={{{cols}}}, nullstr='', auto_detect=false)"
        )

    def has_rows(self) -> bool:
        """Whether the file holds at least one data row (reads the header and one more line
        of a CSV, the footer of a Parquet file): cheap on a 40 GB table."""
        try:
            if self.fmt == "parquet":
                return pq.ParquetFile(self.path).metadata.num_rows > 0
            opener = gzip.open if self.path.suffix == ".gz" else open
            with opener(self.path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
                fh.readline()  # the header
                return any(line.strip() for line in fh)
        except (OSError, EOFError, zlib.error, pa.ArrowException) as exc:
            raise SourceFormatError(
                f"{self.path}: cannot be read as {self.kind()} ({exc}). Fix: download or export "
                "the file again" + (f" (check it with: gzip -t {self.path})" if self.gz else "")
            ) from exc

    @property
    def gz(self) -> bool:
        return self.path.name.endswith(".gz")

    def kind(self) -> str:
        return "Parquet" if self.fmt == "parquet" else "gzip-compressed CSV" if self.gz else "CSV"


@dataclass
class MimicSource:
    root: Path
    tables: dict[str, SourceTable] = field(default_factory=dict)
    version: str = "unknown"
    kind: str = "mimic-iv"

    def relation(self, name: str) -> str:
        return self.tables[name].relation()

    def empty_tables(self) -> list[str]:
        """The tables with a header but no data row, in ``TABLES`` order."""
        return [name for name, t in self.tables.items() if not t.has_rows()]

    def has_column(self, table: str, column: str) -> bool:
        return column in self.tables[table].columns

    def fingerprint(self) -> str:
        """sha256 over each table's name, file name, size and full content (see
        :data:`FINGERPRINT_METHOD`): any edited byte changes it, whatever the file's size."""
        names = sorted(self.tables)
        paths = [self.tables[n].path for n in names]
        with ThreadPoolExecutor(max_workers=min(4, len(paths) or 1)) as pool:
            digests = list(pool.map(file_sha256, paths))
        h = hashlib.sha256()
        for name, path, digest in zip(names, paths, digests, strict=True):
            h.update(f"{name}:{path.name}:{path.stat().st_size}:{digest}\n".encode())
        return h.hexdigest()


#: How :meth:`MimicSource.fingerprint` is computed (recorded in the build summary and meta).
FINGERPRINT_METHOD = "sha256 of each table's file name, size and full content"

#: Read size of the content hash (8 MiB: large reads keep hashlib at memory speed).
HASH_BLOCK = 8 << 20


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, streamed in :data:`HASH_BLOCK` blocks (hashlib releases the
    GIL, so files hash in parallel threads). About 1.4 GB/s per core with SHA extensions."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")
_CONVERT = re.compile(
    r'Error when converting column "(?P<col>[^"]+)"\. Could not convert string "(?P<val>.*?)" '
    r"to '(?P<type>\w+)'"
)
#: A cast of a typed (Parquet) column: the value, the type, and the column when DuckDB names
#: it, else the column of the query text it quotes (``CAST(valuenum AS DOUBLE)``).
_CAST = re.compile(
    r"Could not convert string '(?P<val>.*?)' to (?P<type>\w+)"
    r"(?: when casting from source column (?P<col>\w+))?"
)
_CAST_IN_QUERY = re.compile(r"LINE \d+:.*?CAST\((?P<col>\w+) AS", re.S)
_TYPE_WORDS = {
    "BIGINT": "an integer", "INTEGER": "an integer", "DOUBLE": "a number",
    "TIMESTAMP": "a time YYYY-MM-DD HH:MM:SS", "DATE": "a date YYYY-MM-DD",
}  # fmt: skip


def read_error(
    exc: duckdb.Error, src: MimicSource, table: str | None = None
) -> SourceFormatError | OSError:
    """One line for a DuckDB error raised while reading a raw table: the file (relative to the
    source folder), and the line, column and value when DuckDB gives them, and the fix.

    ``table``: the table being read, used when the message names no file of the source. A
    write of the output that a full disk or a file-size limit stopped is no reading error: it
    comes back as an ``OSError`` naming the output file."""
    from sepsisrl.workspace import no_space_error

    full = no_space_error(exc)
    if full is not None:
        return full
    msg = str(exc)
    t = next((t for t in src.tables.values() if str(t.path) in msg), None)
    if t is None and table in src.tables:
        t = src.tables[table]
    where = _relative(t.path, src.root) if t is not None else str(src.root)
    gz = t is not None and t.gz
    line = _CSV_LINE.search(msg)
    at = f" line {line.group(1)}" if line else ""
    check = f"gzip -t {t.path}" if t is not None else "gzip -t FILE"
    damaged = f"; if the values look right, the file may be damaged (check: {check})"
    words = msg.lower()  # what DuckDB says, without the file names (which may hold any word)
    for name in src.tables.values():
        words = words.replace(str(name.path).lower(), "")
    conv = _CONVERT.search(msg)
    cast = _CAST.search(msg)
    if conv is None and cast is not None:
        in_query = _CAST_IN_QUERY.search(msg)
        col = cast["col"] or (in_query["col"] if in_query else "?")
        conv = {"col": col, "val": cast["val"], "type": cast["type"]}
    if conv:
        what = _TYPE_WORDS.get(conv["type"], f"of type {conv['type']}")
        text = (
            f"{where}{at}, column {conv['col']}: {conv['val']!r} is not {what}. Fix: correct or "
            f"remove the value (an empty field is a missing value){damaged if gz else ''}"
        )
    elif "invalid unicode" in words or "not utf-8" in words:
        text = (
            f"{where}{at}: the text is not UTF-8. Fix: convert the file to UTF-8 (e.g. iconv -f "
            "latin1 -t utf-8) or download it again"
            + (f" (a damaged gzip file reads as such text too; check: {check})" if gz else "")
        )
    elif "gzip" in words or "zlib" in words or "decompress" in words:
        text = (
            f"{where}: the gzip data is truncated or corrupt ({_first_line(msg)}). Fix: download "
            f"the file again (check: {check})"
        )
    else:
        kind = t.kind() if t is not None else "a MIMIC-IV table"
        text = (
            f"{where}{at}: cannot be read as {kind} ({_first_line(msg)}). Fix: export or download "
            "the file again in the MIMIC-IV layout (header row, comma-separated, UTF-8)"
        )
    return SourceFormatError(text)


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0] if msg.strip() else "no detail"


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _csv_header(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
        line = fh.readline().strip()
    return [c.strip().strip('"').lower() for c in line.split(",")] if line else []


def _parquet_columns(path: Path) -> list[str]:
    """The column names in the file's footer (no DuckDB connection: opening one per table was
    a fifth of building a one-patient truth population)."""
    return [name.lower() for name in pq.read_schema(path).names]


def detect_version(src: MimicSource) -> str:
    """MIMIC-IV v3.x extended the data to 2022 (anchor_year_group '2020 - 2022'); v2.2 ends in
    2019. Returns "3.1", "2.2", or "unknown" when patients has no anchor_year_group."""
    if not src.has_column("patients", "anchor_year_group"):
        return "unknown"
    con = duckdb.connect()
    try:
        n = con.execute(
            f"SELECT count(*) FROM {src.relation('patients')} WHERE anchor_year_group = '2020 - 2022'"
        ).fetchone()[0]
    except duckdb.Error as exc:
        raise read_error(exc, src, "patients") from exc
    finally:
        con.close()
    return "3.1" if n > 0 else "2.2"


def open_source(root: str | Path, kind: str = "auto", version: str = "auto") -> MimicSource:
    """Find every required table under ``root`` and check its columns."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise SourceError(f"source folder not found: {root}")
    problems: list[str] = []
    src = MimicSource(root)
    for name, schema in TABLES.items():
        candidates = [
            root / f"{schema.relpath}.csv.gz",
            root / f"{schema.relpath}.csv",
            root / f"{schema.relpath}.parquet",
        ]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            problems.append(
                f"missing table {schema.relpath}: expected one of "
                + ", ".join(str(p.relative_to(root)) for p in candidates)
            )
            continue
        fmt = "parquet" if found.suffix == ".parquet" else "csv"
        try:
            columns = _parquet_columns(found) if fmt == "parquet" else _csv_header(found)
        except (OSError, duckdb.Error, pa.ArrowException) as exc:
            problems.append(f"{found}: cannot be read ({exc})")
            continue
        missing = [c for c in REQUIRED_COLUMNS[name] if c not in columns]
        if missing:
            problems.append(
                f"{found.relative_to(root)}: missing column(s) {', '.join(missing)} "
                f"(found: {', '.join(columns) or 'no header'})"
            )
            continue
        src.tables[name] = SourceTable(name, found, fmt, columns)
    if problems:
        raise SourceError(
            f"{root} is not a usable MIMIC-IV folder (hosp/ and icu/ tables, csv.gz/csv/parquet):\n  - "
            + "\n  - ".join(problems)
        )
    src.version = detect_version(src) if version == "auto" else version
    if kind == "auto":
        truth = root.parent / f"{root.name}_truth" / "world.json"
        src.kind = "synthetic" if truth.is_file() else "mimic-iv"
    else:
        src.kind = kind
    return src
