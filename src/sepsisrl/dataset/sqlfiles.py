"""Load the pipeline's SQL files (one per clinical concept or query) and run them.

The build's queries live in ``dataset/sql/<name>.sql``; what stays in Python is one-line
counts over a stage's own tables and SQL composed from names (the integrity checks per table
and column in ``ingest.py``, the figures of ``mimic_derived.py``). Two kinds of holes:

- ``$name``: a value DuckDB binds at execution (file paths, mostly): pass it in ``bind``.
- ``{{name}}``: text filled in before execution, for what DuckDB cannot bind (numbers inside
  ``INTERVAL``, ``IN`` lists, expressions chosen by a convention switch). Values are rendered
  as SQL literals: int/float as numbers, bool as ``true``/``false``, a list of ints as
  ``(1, 2, 3)``, a list of strings as ``('a', 'b')``, a path as one quoted string literal
  (:func:`quote_path`), a str escaped for use between quotes, ``Raw`` values verbatim.

DuckDB cannot prepare ``CREATE VIEW``; :func:`parquet_view` therefore writes the path as one
validated, quoted literal (never free text) and is the only place that does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePath
from typing import Any

import duckdb

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Raw:
    sql: str


def quote_path(path: str | PurePath) -> str:
    """A file path as one SQL string literal (quotes doubled); refuses control characters."""
    text = str(path)
    if not text or any(ord(c) < 32 for c in text):
        raise ValueError(f"not a usable file path for SQL: {text!r}")
    return "'" + text.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """``name`` when it is a plain SQL identifier (letters, digits, underscore), else an error."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def _literal(value: Any) -> str:
    if isinstance(value, Raw):
        return value.sql
    if isinstance(value, PurePath):
        return quote_path(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, str):
        return value.replace("'", "''")
    if isinstance(value, list | tuple):
        if not value:
            return "(NULL)"
        if all(isinstance(v, int) for v in value):
            return "(" + ", ".join(str(int(v)) for v in value) + ")"
        return "(" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in value) + ")"
    raise TypeError(f"cannot render {type(value).__name__} into SQL")


def render(name: str, **params: Any) -> str:
    """The text of ``sql/<name>.sql`` with its ``{{...}}`` holes filled from ``params``.

    A hole inside a ``--`` comment (which documents the rendered values) gets its value on
    one line, so that a multi-line value never spills out of the comment."""
    text = (resources.files("sepsisrl.dataset") / "sql" / f"{name}.sql").read_text()
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(params))
    if missing:
        raise KeyError(f"{name}.sql needs parameters {missing}")

    def fill(m: re.Match[str]) -> str:
        value = _literal(params[m.group(1)])
        line = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        return " ".join(value.split("\n")) if "--" in line else value

    return _PLACEHOLDER.sub(fill, text)


def _bindable(bind: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if bind is None else {k: _bound(v) for k, v in bind.items()}


def _bound(value: Any) -> Any:
    return str(value) if isinstance(value, PurePath) else value


def execute(
    con: duckdb.DuckDBPyConnection,
    name: str,
    bind: dict[str, Any] | None = None,
    **params: Any,
) -> duckdb.DuckDBPyConnection:
    """Run ``sql/<name>.sql`` (holes ``{{...}}`` from ``params``, ``$...`` bound from ``bind``;
    paths are bound as strings); returns the connection for ``fetchone`` / ``fetchall``."""
    return con.execute(render(name, **params), _bindable(bind))


def parquet_view(con: duckdb.DuckDBPyConnection, name: str, path: str | PurePath) -> None:
    """``CREATE VIEW <name>`` over one Parquet file."""
    con.execute(f"CREATE VIEW {identifier(name)} AS SELECT * FROM read_parquet({quote_path(path)})")


def copy_to(
    con: duckdb.DuckDBPyConnection,
    query: str,
    path: str | PurePath,
    options: str = "FORMAT parquet",
    bind: dict[str, Any] | None = None,
) -> None:
    """``COPY (query) TO path (options)``, the path bound as ``$copy_path``."""
    params = {**(_bindable(bind) or {}), "copy_path": str(path)}
    con.execute(f"COPY ({query}) TO $copy_path ({options})", params)
