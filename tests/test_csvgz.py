"""The MIMIC-style CSV writer (``synth/csvgz.py``): quoting like MIMIC-IV, and the two-thread
writer gives the bytes of writing every table in turn."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pyarrow as pa

from sepsisrl.synth.csvgz import BackgroundWriter, GzipCsvFile, table_to_csv_bytes

VALUES = ["a", "b,c", None, 'say "hi"', "", 'x,"y"', None, "plain"] * 3


def expected_rows(table: pa.Table) -> list[list[str]]:
    return [
        [str(n), "" if v is None else v, "" if v is None else v, "mg"]
        for n, v in zip(table["n"].to_pylist(), table["s"].to_pylist(), strict=True)
    ]


def test_only_values_with_a_comma_or_a_quote_are_quoted_in_any_chunking():
    n = len(VALUES)
    large = pa.array(VALUES, pa.large_string())
    table = pa.table({"n": list(range(n)), "s": VALUES, "l": large, "u": ["mg"] * n})
    chunked = pa.concat_tables([table.slice(0, 5), table.slice(5, 7), table.slice(12)])
    for t in (table, chunked, table.slice(3, 9), table.slice(0, 1)):
        text = table_to_csv_bytes(t).decode()
        assert list(csv.reader(io.StringIO(text))) == expected_rows(t)
    text = table_to_csv_bytes(table.slice(0, 4)).decode()
    assert text.splitlines() == ["0,a,a,mg", '1,"b,c","b,c",mg', "2,,,mg",
                                 '3,"say ""hi""","say ""hi""",mg']  # fmt: skip
    # no value needs quoting: the text is Arrow's unquoted CSV as it is
    plain = pa.table({"s": ["a", "b"], "x": [1.5, None]})
    assert table_to_csv_bytes(plain) == b"a,1.5\nb,\n"


def test_the_background_writer_gives_the_bytes_of_writing_each_table_in_turn(tmp_path: Path):
    tables = [pa.table({"n": list(range(i, i + 7)), "s": VALUES[i : i + 7]}) for i in range(10)]
    direct = {k: GzipCsvFile(tmp_path / f"direct_{k}.csv.gz", ["n", "s"], 1) for k in "ab"}
    for i, t in enumerate(tables):
        direct["ab"[i % 2]].write(t)
    for f in direct.values():
        f.close()
    threaded = {k: GzipCsvFile(tmp_path / f"threaded_{k}.csv.gz", ["n", "s"], 1) for k in "ab"}
    writer = BackgroundWriter(threaded, max_pending=2)
    for i, t in enumerate(tables):
        writer.submit("ab"[i % 2], t)
    writer.close()
    for k in "ab":
        assert threaded[k].rows == direct[k].rows == 35
        one, two = tmp_path / f"direct_{k}.csv.gz", tmp_path / f"threaded_{k}.csv.gz"
        assert two.read_bytes() == one.read_bytes()
        rows = list(csv.reader(io.StringIO(gzip.decompress(two.read_bytes()).decode())))
        assert rows[0] == ["n", "s"] and len(rows) == 36
