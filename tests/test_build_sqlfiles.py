"""The SQL loader (``dataset/sqlfiles.py``): paths are bound or quoted in one place, never
pasted into SQL text by hand."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sepsisrl.dataset.sqlfiles import (
    Raw,
    copy_to,
    execute,
    identifier,
    parquet_view,
    quote_path,
    render,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "sepsisrl"


def test_a_path_with_a_quote_and_a_space_round_trips(tmp_path: Path):
    folder = tmp_path / "it's a folder"
    folder.mkdir()
    pq.write_table(pa.table({"stay_id": [3, 1, 2]}), folder / "in.parquet")
    con = duckdb.connect()
    parquet_view(con, "stays", folder / "in.parquet")
    copy_to(con, "SELECT * FROM stays ORDER BY stay_id", folder / "out.parquet")
    assert pq.read_table(folder / "out.parquet")["stay_id"].to_pylist() == [1, 2, 3]
    got = con.execute(
        "SELECT count(*) FROM read_parquet($p)", {"p": str(folder / "out.parquet")}
    ).fetchone()
    assert got == (3,)


def test_quote_path_doubles_quotes_and_refuses_control_characters():
    assert quote_path("/data/o'brien/x.parquet") == "'/data/o''brien/x.parquet'"
    with pytest.raises(ValueError, match="not a usable file path"):
        quote_path("/data/x.parquet'); DROP TABLE t; --\n")
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        identifier("stays; DROP TABLE t")


def test_a_multi_line_value_in_a_comment_stays_in_the_comment():
    text = render("weights", measurements=Raw("m\nJUNK"), weight_lo=20.0, weight_hi=400.0)
    header = text[: text.index("WITH charted")]
    assert all(line.startswith("--") for line in header.splitlines())
    assert "FROM m\nJUNK" in text  # outside comments the value is pasted as given


def test_a_missing_hole_names_the_file_and_the_hole():
    with pytest.raises(KeyError, match=r"validate_sepsis\.sql needs parameters \['window_hours'\]"):
        execute(duckdb.connect(), "validate_sepsis", bind={})


def test_no_python_source_pastes_a_path_into_sql():
    """File paths reach SQL as bound parameters or through ``quote_path``, never by hand."""
    pasted = re.compile(r"""(read_parquet|read_csv|ATTACH|TO)\s*\(?\s*'\{""")
    hits = [
        f"{p.relative_to(SRC)}:{i}"
        for p in SRC.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pasted.search(line)
    ]
    assert not hits, hits
