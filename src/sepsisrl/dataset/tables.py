"""Where a build stage writes its tables: Parquet files (the build) or tables in memory.

``sepsisrl build`` writes every stage's tables as Parquet files in the stage's folder. The
truth harness runs the same stages at every decision time of a rollout, over a few stays'
rows; there the tables stay in the DuckDB database of the rollout (``MemoryTables``). The SQL
is the same either way: a stage reads ``sink.relation(name)`` and writes ``sink.write``.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from sepsisrl.dataset.sqlfiles import copy_to, identifier, quote_path

ZSTD = "FORMAT parquet, COMPRESSION zstd"
PLAIN = "FORMAT parquet"


class ParquetFolder:
    """Tables as ``<folder>/<name>.parquet`` (with the stage's audit counts)."""

    audited = True

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.parquet"

    def write(self, con: duckdb.DuckDBPyConnection, name: str, query: str, options: str) -> None:
        copy_to(con, query, self.path(name), options)

    def relation(self, name: str) -> str:
        return f"read_parquet({quote_path(self.path(name))})"


class MemoryTables:
    """Tables ``<prefix>_<name>`` of the connection's database (replaced at each write); the
    audit-only counts are skipped (checks that can fail, such as unknown units, still run)."""

    audited = False

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def write(self, con: duckdb.DuckDBPyConnection, name: str, query: str, options: str) -> None:
        con.execute(f"CREATE OR REPLACE TABLE {identifier(self.relation(name))} AS {query}")

    def relation(self, name: str) -> str:
        return f"{self.prefix}_{name}"


TableSink = ParquetFolder | MemoryTables


def as_sink(target: Path | TableSink) -> TableSink:
    return target if isinstance(target, ParquetFolder | MemoryTables) else ParquetFolder(target)
