"""Locate and describe a MIMIC-IV source folder (real or synthetic) for DuckDB.

Each table may be ``<module>/<table>.csv.gz``, ``.csv`` or ``.parquet`` (users often convert
MIMIC-IV to Parquet). Problems are collected and reported together - a user fixing a download
should see every missing file and column in one message, with the expected layout.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

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


@dataclass
class SourceTable:
    name: str
    path: Path
    fmt: str  # "csv" | "parquet"
    columns: list[str]

    def relation(self) -> str:
        """A DuckDB table expression reading this file with stable column types."""
        path = str(self.path).replace("'", "''")
        if self.fmt == "parquet":
            return f"read_parquet('{path}')"
        logical = dict(TABLES[self.name].columns)
        cols = ", ".join(
            f"'{c}': '{_DUCK_TYPES.get(logical.get(c, 'str'), 'VARCHAR')}'" for c in self.columns
        )
        return (
            f"read_csv('{path}', header=true, delim=',', quote='\"', escape='\"', "
            f"columns={{{cols}}}, nullstr='', auto_detect=false)"
        )

    def has_rows(self) -> bool:
        """Whether the file holds at least one data row (reads the header and one more line
        of a CSV, the footer of a Parquet file): cheap on a 40 GB table."""
        if self.fmt == "parquet":
            return pq.ParquetFile(self.path).metadata.num_rows > 0
        opener = gzip.open if self.path.suffix == ".gz" else open
        with opener(self.path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
            fh.readline()  # the header
            return any(line.strip() for line in fh)


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
        """sha256 over each file's name, size and first and last MiB (cheap on 40 GB)."""
        h = hashlib.sha256()
        for name in sorted(self.tables):
            t = self.tables[name]
            size = t.path.stat().st_size
            h.update(f"{name}:{t.path.name}:{size}".encode())
            with open(t.path, "rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(size - (1 << 20))
                    h.update(fh.read(1 << 20))
        return h.hexdigest()


def _csv_header(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
        line = fh.readline().strip()
    return [c.strip().strip('"').lower() for c in line.split(",")] if line else []


def _parquet_columns(path: Path) -> list[str]:
    con = duckdb.connect()
    rows = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
    return [r[0].lower() for r in rows]


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
        except (OSError, duckdb.Error) as exc:
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
