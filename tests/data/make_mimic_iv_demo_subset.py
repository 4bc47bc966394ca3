"""Write ``tests/data/mimic-iv-demo/``: a small, deterministic subset of the MIMIC-IV Clinical
Database Demo v2.2 (ODbL) for ``tests/test_demo.py``.

    python tests/data/make_mimic_iv_demo_subset.py SOURCE_DIR [--out tests/data/mimic-iv-demo]

SOURCE_DIR is the demo release (``hosp/``, ``icu/``, ``LICENSE.txt``, ``README.txt``). The
subset (see ``NOTICE.md`` in the output, which this script writes):

* patients: the ``N_PATIENTS`` patients with the most ICU event rows (inputevents plus
  outputevents; ties by subject_id);
* ``patients``, ``admissions``, ``icustays``, ``inputevents``, ``outputevents`` and
  ``chartevents``: every row of those patients;
* ``labevents``, ``prescriptions``, ``microbiologyevents``: the rows of those patients timed
  from ``MARGIN_BEFORE_DAYS`` before the admission of one of their ICU stays to
  ``MARGIN_AFTER_DAYS`` after its discharge (labs without ``hadm_id`` in that window are kept);
* ``d_items``, ``d_labitems``: whole.

Every column of the release is kept, rows keep their release order, values are the release's
text (read and written as text by DuckDB, which may change CSV quoting only). A table the
source lacks is written header-only (the demo's ``icu/chartevents`` could not be obtained for
this project: see NOTICE.md). The gzip files carry no timestamp, so the same source gives the
same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import duckdb

from sepsisrl.mimic.schema import TABLES

N_PATIENTS = 20
MARGIN_BEFORE_DAYS = 2
MARGIN_AFTER_DAYS = 1
#: Hospital tables restricted to the ICU admissions' time window, with their time column.
WINDOWED = {
    "labevents": "charttime",
    "prescriptions": "starttime",
    "microbiologyevents": "coalesce(charttime, chartdate)",
}
WHOLE = ("d_items", "d_labitems")
DEFAULT_OUT = Path(__file__).resolve().parent / "mimic-iv-demo"


def _find(root: Path, name: str) -> Path | None:
    base = root / TABLES[name].relpath
    for suffix in (".csv.gz", ".csv"):
        p = base.with_name(base.name + suffix)
        if p.is_file():
            return p
    return None


def _read(path: Path) -> str:
    p = str(path).replace("'", "''")
    return f"read_csv('{p}', header=true, all_varchar=true, auto_detect=true)"


def _gzip_to(csv_path: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = csv_path.read_bytes()
    with open(out, "wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as gz:
        gz.write(data)


def configured_item_ids() -> list[int]:
    """Every item id of the packaged build configuration (items and vasopressors)."""
    from sepsisrl.dataset.config import load_build_config

    cfg = load_build_config()
    ids = {i for v in cfg.items.values() for i in v} | {v.itemid for v in cfg.vasopressors.values()}
    return sorted(ids)


def make_subset(source: Path, out: Path) -> dict[str, int]:
    con = duckdb.connect()
    con.execute("SET threads = 1")  # keeps the release's row order
    con.execute("SET preserve_insertion_order = true")
    paths = {name: _find(source, name) for name in TABLES}
    for name in ("patients", "admissions", "icustays", "inputevents", "outputevents"):
        if paths[name] is None:
            raise SystemExit(f"{source}: no {TABLES[name].relpath}.csv[.gz]")
    con.execute(
        f"""CREATE TABLE ranked AS
            WITH n AS (
                SELECT subject_id, count(*) AS n FROM (
                    SELECT subject_id FROM {_read(paths["inputevents"])}
                    UNION ALL SELECT subject_id FROM {_read(paths["outputevents"])})
                GROUP BY subject_id)
            SELECT p.subject_id,
                   row_number() OVER (ORDER BY coalesce(n.n, 0) DESC,
                                      CAST(p.subject_id AS BIGINT)) AS rank
            FROM {_read(paths["patients"])} p LEFT JOIN n USING (subject_id)"""
    )
    con.execute(
        f"""CREATE TABLE icu_admissions AS
            SELECT DISTINCT a.subject_id,
                   CAST(a.admittime AS TIMESTAMP) - INTERVAL {MARGIN_BEFORE_DAYS} DAY AS t0,
                   CAST(a.dischtime AS TIMESTAMP) + INTERVAL {MARGIN_AFTER_DAYS} DAY AS t1
            FROM {_read(paths["admissions"])} a
            JOIN {_read(paths["icustays"])} i USING (hadm_id)"""
    )
    for name, src in paths.items():
        if src is None:
            continue
        where = "true"
        if name in WINDOWED:
            where = (
                "EXISTS (SELECT 1 FROM icu_admissions w WHERE w.subject_id = x.subject_id "
                f"AND CAST({WINDOWED[name]} AS TIMESTAMP) BETWEEN w.t0 AND w.t1)"
            )
        con.execute(f"CREATE VIEW all_{name} AS SELECT * FROM {_read(src)} x WHERE {where}")
    # the top N_PATIENTS, plus for each configured item id found in the source (within the
    # kept time windows) but not in their rows, the best-ranked patient who has it
    events = [n for n in ("chartevents", "labevents", "inputevents", "outputevents") if paths[n]]
    items = ", ".join(str(i) for i in configured_item_ids())
    has_item = " UNION ALL ".join(
        f"SELECT DISTINCT subject_id, CAST(itemid AS BIGINT) AS itemid FROM all_{n}" for n in events
    )
    con.execute(
        f"""CREATE TABLE pick AS
            WITH has AS (SELECT h.*, r.rank FROM ({has_item}) h JOIN ranked r USING (subject_id)
                         WHERE h.itemid IN ({items}))
            SELECT subject_id FROM ranked WHERE rank <= {N_PATIENTS}
            UNION
            SELECT arg_min(subject_id, rank) FROM has GROUP BY itemid
            HAVING min(rank) > {N_PATIENTS}"""
    )
    counts: dict[str, int] = {
        "patients_picked": con.execute("SELECT count(*) FROM pick").fetchone()[0]
    }
    tmp = Path(tempfile.mkdtemp())
    try:
        for name, schema in TABLES.items():
            target = out / f"{schema.relpath}.csv.gz"
            csv = tmp / f"{name}.csv"
            if paths[name] is None:
                csv.write_text(",".join(schema.column_names) + "\n")
                counts[name] = 0
                _gzip_to(csv, target)
                continue
            where = "true" if name in WHOLE else "subject_id IN (SELECT subject_id FROM pick)"
            query = f"SELECT * FROM all_{name} WHERE {where}"
            con.execute(f"COPY ({query}) TO '{csv}' (HEADER, DELIMITER ',')")
            counts[name] = con.execute(f"SELECT count(*) FROM ({query})").fetchone()[0]
            _gzip_to(csv, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    con.close()
    for doc in ("LICENSE.txt", "README.txt"):
        shutil.copyfile(source / doc, out / doc)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    counts = make_subset(args.source, args.out)
    print(f"patients: {counts['patients_picked']}")
    total = 0
    for name, schema in TABLES.items():
        f = args.out / f"{schema.relpath}.csv.gz"
        size = f.stat().st_size
        total += size
        digest = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        print(f"{schema.relpath:<26} {counts[name]:>7} rows {size:>9,} bytes  sha256 {digest}")
    rows = sum(counts[n] for n in TABLES)
    print(f"{'total':<26} {rows:>7} rows {total:>9,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
