"""Ingest: one pass over each raw table, keeping only the rows and columns the pipeline uses.

Output (``ingest/``), all Parquet:
  icustays, patients, admissions      whole tables (small)
  chart.parquet     chartevents rows of configured items (text kept for GCS, device, mode)
  labs.parquet      labevents rows of configured items (+ specimen type for blood gases),
                    with the time drawn (charttime) and resulted (storetime)
  inputs.parquet    inputevents rows of vasopressors, dobutamine and IV fluids
  outputs.parquet   outputevents rows of urine items
  antibiotics.parquet  systemic antibiotic prescriptions (name list, route exclusions)
  cultures.parquet  one row per microbiology specimen (charttime, or chartdate only)

Before scanning, every configured item id is looked up in ``d_items`` / ``d_labitems``; the
build stops with a list of the absent ids and their concepts. ``audit.json`` counts the rows
kept per table and per item id (``item_rows``) and names the raw tables without data rows that
``source.allow_missing`` let through (``empty_source_tables``).

Integrity (``integrity:``, :class:`RawTables`): each raw table's rows that the build reads are
loaded once into a temporary table, counting exact duplicate rows; then the keys of
``icustays``, ``admissions`` and ``patients`` must be unique, every stay must have its admission
and patient, every time must parse, and no inputevents row, ICU stay or admission may end
before it starts (``integrity.reversed_intervals``). A finding stops the build (:class:`IntegrityError`,
naming the file, column, an example and the setting that relaxes it) or, where the setting says
``drop``, is dropped and counted under ``integrity`` in ``audit.json`` (a dropped reversed
interval also prints a warning on stderr). A DuckDB error while
reading a raw file (damaged gzip, text that is not UTF-8, text in a numeric column) becomes a
one-line :class:`~sepsisrl.mimic.source.SourceFormatError`.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import duckdb

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.sqlfiles import Raw, identifier, render
from sepsisrl.dataset.tables import ZSTD, TableSink, as_sink
from sepsisrl.mimic.source import MimicSource, SourceError, read_error

CHART_CONCEPTS = (
    "heart_rate", "map_arterial", "map_noninvasive", "sbp_arterial", "sbp_noninvasive",
    "dbp_arterial", "dbp_noninvasive", "resp_rate", "temperature_c", "temperature_f", "spo2",
    "gcs_eye", "gcs_verbal", "gcs_motor", "fio2", "peep", "weight_kg", "weight_lb", "o2_device",
    "ventilator_mode", "ventilator_mode_hamilton",
)  # fmt: skip
CHART_TEXT_CONCEPTS = (
    "gcs_eye", "gcs_verbal", "gcs_motor", "o2_device", "ventilator_mode",
    "ventilator_mode_hamilton",
)  # fmt: skip
LAB_CONCEPTS = (
    "pao2", "paco2", "arterial_ph", "bicarbonate", "base_excess", "lactate", "creatinine", "bun",
    "bilirubin_total", "albumin", "sodium", "potassium", "glucose", "inr", "ptt", "wbc",
    "haemoglobin", "haematocrit", "platelets", "fio2_bg", "specimen_type",
)  # fmt: skip
OUTPUT_CONCEPTS = ("urine", "urine_negative")
#: The stage's output tables, in the order it writes them.
OUTPUTS = (
    "icustays", "patients", "admissions", "chart", "labs", "inputs", "outputs", "antibiotics",
    "cultures",
)  # fmt: skip


class IntegrityError(SourceError):
    """A raw table breaks an integrity rule (duplicate key, missing admission, unparseable
    time, ...): the message names the file, column, an example and the setting to relax it."""


#: The key of each table that must be unique (MIMIC-IV's primary keys).
PRIMARY_KEYS = {"patients": "subject_id", "admissions": "hadm_id", "icustays": "stay_id"}

#: The time columns the build parses, per raw table (checked when present).
TIME_COLUMNS: dict[str, tuple[str, ...]] = {
    "icustays": ("intime", "outtime"),
    "patients": ("dod",),
    "admissions": ("admittime", "dischtime", "deathtime"),
    "chartevents": ("charttime",),
    "labevents": ("charttime", "storetime"),
    "inputevents": ("starttime", "endtime"),
    "outputevents": ("charttime",),
    "prescriptions": ("starttime",),
    "microbiologyevents": ("charttime", "chartdate"),
}

#: Columns that identify a row in an example (the first few a table has).
_EXAMPLE_COLUMNS = (
    "subject_id", "hadm_id", "stay_id", "itemid", "micro_specimen_id", "charttime", "starttime",
)  # fmt: skip

_AUDIT = "(counted under integrity in ingest/audit.json)"

#: Start and end of each row that must not end before it starts (``integrity.reversed_intervals``).
INTERVALS = {
    "inputevents": ("starttime", "endtime"),
    "icustays": ("intime", "outtime"),
    "admissions": ("admittime", "dischtime"),
}

#: Columns that identify a row in a reversed-interval example, per table.
_INTERVAL_EXAMPLE = {
    "inputevents": ("stay_id", "itemid"),
    "icustays": ("stay_id", "hadm_id"),
    "admissions": ("hadm_id", "subject_id"),
}


def ids(cfg: BuildConfig, *concepts: str) -> list[int]:
    out: list[int] = []
    for c in concepts:
        out.extend(cfg.items[c])
    return sorted(set(out))


def charted_item_ids(cfg: BuildConfig) -> dict[str, list[int]]:
    """The item ids the ingest reads of each charted source table (its WHERE clause): a row of
    any other item never reaches a build table."""
    vaso_ids = sorted(v.itemid for v in cfg.vasopressors.values())
    return {
        "chartevents": ids(cfg, *CHART_CONCEPTS),
        "labevents": ids(cfg, *LAB_CONCEPTS),
        "inputevents": sorted(set(vaso_ids) | set(ids(cfg, "iv_fluids", "dobutamine"))),
        "outputevents": ids(cfg, *OUTPUT_CONCEPTS),
    }


#: The columns of each charted source table that its ingest query (``sql/ingest_*.sql``) reads,
#: besides none other: the truth's rollouts keep only these of the rows they chart
#: (tests/test_truth.py checks that the states are the build's).
CHARTED_COLUMNS = {
    "chartevents": ("stay_id", "charttime", "itemid", "valuenum", "value"),
    "labevents": ("subject_id", "hadm_id", "specimen_id", "charttime", "storetime", "itemid",
                  "valuenum", "value"),
    "inputevents": ("stay_id", "starttime", "endtime", "itemid", "amount", "amountuom", "rate",
                    "rateuom", "patientweight", "ordercomponenttypedescription"),
    "outputevents": ("stay_id", "charttime", "itemid", "value"),
}  # fmt: skip


def sql_list(values: list[int]) -> str:
    return "(" + ", ".join(str(int(v)) for v in values) + ")"


def sql_str_list(values: list[str]) -> str:
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


def connect(cfg: BuildConfig, workdir: Path | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if cfg.engine.threads:
        con.execute(f"SET threads = {int(cfg.engine.threads)}")
    con.execute(f"SET memory_limit = '{cfg.engine.memory_limit}'")
    if workdir is not None:
        tmp = workdir / ".duckdb_tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = '{tmp}'")
    return con


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None):
    """Run ``sql`` (``$name`` bound from ``params``) and return a pyarrow Table."""
    return con.sql(sql, params=params).to_arrow_table()


def check_item_ids(
    con: duckdb.DuckDBPyConnection, src: MimicSource, cfg: BuildConfig
) -> dict[str, Any]:
    """Every configured item id must exist in the source's dictionaries."""
    d_items = {
        r[0] for r in con.execute(f"SELECT itemid FROM {src.relation('d_items')}").fetchall()
    }
    d_lab = {
        r[0] for r in con.execute(f"SELECT itemid FROM {src.relation('d_labitems')}").fetchall()
    }
    icu_concepts = [*CHART_CONCEPTS, *OUTPUT_CONCEPTS, "iv_fluids", "dobutamine"]
    missing: list[str] = []
    for concept in icu_concepts:
        for i in cfg.items[concept]:
            if i not in d_items:
                missing.append(f"{i} ({concept}) not in icu/d_items")
    for name, v in cfg.vasopressors.items():
        if v.itemid not in d_items:
            missing.append(f"{v.itemid} ({name}) not in icu/d_items")
    for concept in LAB_CONCEPTS:
        for i in cfg.items[concept]:
            if i not in d_lab:
                missing.append(f"{i} ({concept}) not in hosp/d_labitems")
    if missing:
        raise SourceError(
            "expected item ids are absent from the source dictionaries (wrong MIMIC version, or "
            "edit items: in your config):\n  - " + "\n  - ".join(missing)
        )
    return {"d_items": len(d_items), "d_labitems": len(d_lab)}


def antibiotic_filter(cfg: BuildConfig) -> str:
    s = cfg.sepsis
    names = "|".join(re.escape(p.lower()) for p in s.antibiotic_patterns)
    excl = "|".join(re.escape(p.lower()) for p in s.exclude_drug_patterns) or "^$"
    routes = sql_str_list([r.upper() for r in s.exclude_routes])
    return (
        f"regexp_matches(lower(drug), '{names}') "
        f"AND NOT regexp_matches(lower(drug), '{excl}') "
        f"AND upper(trim(coalesce(route, ''))) NOT IN {routes}"
    )


class RawTables:
    """The rows of each raw table that the build reads, loaded once into a temporary table
    (``raw_<table>``) with exact duplicate rows collapsed and counted, then checked.

    ``relation(table)`` is what the ingest queries read instead of the raw file. Each check
    raises :class:`IntegrityError` or, where ``integrity`` says ``drop``, deletes the rows and
    counts them in :attr:`audit`."""

    def __init__(self, con: duckdb.DuckDBPyConnection, src: MimicSource, cfg: BuildConfig) -> None:
        self.con, self.src, self.cfg = con, src, cfg
        self.rules = cfg.integrity
        self.loaded: set[str] = set()
        self.audit: dict[str, Any] = {
            "rows_read": {},
            "exact_duplicate_rows_dropped": {},
            "duplicate_key_rows_dropped": {},
            "orphans_dropped": {},
            "unparseable_times": {},
            "reversed_intervals_dropped": {},
            "unit_mismatch_rows_dropped": {},
            "unit_mismatches": [],
        }

    def file(self, table: str) -> str:
        t = self.src.tables[table]
        root = self.src.root
        return str(t.path.relative_to(root)) if t.path.is_relative_to(root) else str(t.path)

    def relation(self, table: str) -> str:
        # Each column through a CASE the optimizer cannot fold: read straight from a DuckDB
        # table, a column without nulls would be written to Parquet as REQUIRED (from the
        # table's statistics), where the same rows read from the file are OPTIONAL; this keeps
        # the ingest files byte for byte as without the checks.
        cols = ", ".join(
            f'CASE WHEN _copies > 0 THEN "{c}" END AS "{c}"' for c in self.src.tables[table].columns
        )
        return f"(SELECT {cols} FROM raw_{table})"

    def load(self, table: str, where: str = "true") -> None:
        """Rows of ``table`` matching ``where``, one per distinct row, with their count."""
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE raw_{table} AS SELECT *, count(*) AS _copies "
            f"FROM {self.src.relation(table)} WHERE {where} GROUP BY ALL"
        )
        self.loaded.add(table)
        read, rows, dup_rows = self.con.execute(
            f"SELECT coalesce(sum(_copies), 0), count(*), count(*) FILTER (WHERE _copies > 1) "
            f"FROM raw_{table}"
        ).fetchone()
        self.audit["rows_read"][table] = int(read)
        extra = int(read) - int(rows)
        if extra and self.rules.exact_duplicates == "refuse":
            example = self._example(table, "_copies > 1", extra_cols=("_copies",))
            raise IntegrityError(
                f"{self.file(table)}: {extra} row(s) repeat another row exactly ({dup_rows} "
                f"distinct row(s) occur more than once, e.g. {example}): a table appended "
                "twice? Fix the export, or set integrity.exact_duplicates: drop to keep one copy "
                f"of each {_AUDIT}"
            )
        self.audit["exact_duplicate_rows_dropped"][table] = extra
        self.times(table)
        if table == "inputevents":
            self.intervals(["inputevents"])
        if table in ("chartevents", "labevents"):
            self.units(table)

    def drop(self, table: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS raw_{table}")
        self.loaded.discard(table)

    def _example(self, table: str, where: str, extra_cols: tuple[str, ...] = ()) -> str:
        cols = [c for c in _EXAMPLE_COLUMNS if self.src.has_column(table, c)][:3]
        cols += list(extra_cols)
        order = ", ".join(cols)
        row = self.con.execute(
            f"SELECT {order} FROM raw_{table} WHERE {where} ORDER BY {order} LIMIT 1"
        ).fetchone()
        if row is None:
            return "no example"
        names = ["copies" if c == "_copies" else c for c in cols]
        return ", ".join(f"{n}={v}" for n, v in zip(names, row, strict=True))

    def times(self, table: str) -> None:
        """Every non-empty time of the table must parse as a timestamp (or a date)."""
        cols = [c for c in TIME_COLUMNS.get(table, ()) if self.src.has_column(table, c)]
        if not cols:
            return
        bad_sql = {c: f"({c} IS NOT NULL AND TRY_CAST({c} AS TIMESTAMP) IS NULL)" for c in cols}
        row = self.con.execute(
            "SELECT "
            + ", ".join(
                f"coalesce(sum(_copies) FILTER (WHERE {b}), 0), "
                f"coalesce(sum(_copies) FILTER (WHERE {c} IS NOT NULL), 0), "
                f"min({c}::VARCHAR) FILTER (WHERE {b})"
                for c, b in bad_sql.items()
            )
            + f" FROM raw_{table}"
        ).fetchone()
        problems = []
        for i, c in enumerate(cols):
            bad, present, example = int(row[3 * i]), int(row[3 * i + 1]), row[3 * i + 2]
            self.audit["unparseable_times"][f"{table}.{c}"] = bad
            if bad:
                problems.append(f"column {c}: {bad} of {present} values, e.g. {example!r}")
        if problems and self.rules.unparseable_times == "refuse":
            raise IntegrityError(
                f"{self.file(table)}: times that do not parse as YYYY-MM-DD HH:MM:SS (MIMIC-IV's "
                f"format; epoch numbers and other date orders are not read) in "
                + "; ".join(problems)
                + ". Fix: write the times as YYYY-MM-DD HH:MM:SS, or set "
                f"integrity.unparseable_times: drop to take them as missing {_AUDIT}"
            )

    def _reversed(self, table: str) -> tuple[int, str, str] | None:
        """Rows of ``table`` whose end (``INTERVALS``) is before its start: the count, the
        condition and an example; None when the table lacks either column."""
        start, end = INTERVALS[table]
        if not (self.src.has_column(table, start) and self.src.has_column(table, end)):
            return None
        cond = f"TRY_CAST({end} AS TIMESTAMP) < TRY_CAST({start} AS TIMESTAMP)"
        n = self.con.execute(
            f"SELECT coalesce(sum(_copies), 0) FROM raw_{table} WHERE {cond}"
        ).fetchone()[0]
        if not n:
            return 0, cond, ""
        cols = [c for c in _INTERVAL_EXAMPLE[table] if self.src.has_column(table, c)]
        cols += [start, end]
        row = self.con.execute(
            f"SELECT {', '.join(cols)} FROM raw_{table} WHERE {cond} "
            f"ORDER BY {', '.join(cols)} LIMIT 1"
        ).fetchone()
        example = ", ".join(f"{c}={v}" for c, v in zip(cols, row, strict=True))
        return int(n), cond, example

    def intervals(self, tables: list[str]) -> None:
        """Rows that end before they start (``INTERVALS``): refused naming the file, the
        columns and an example, or (``integrity.reversed_intervals: drop``) dropped with a
        warning on stderr and counted; the stays of a dropped admission go with it."""
        found = {t: r for t in tables if (r := self._reversed(t)) is not None}
        problems = [
            f"{self.file(t)}: {n} row(s) with {INTERVALS[t][1]} before {INTERVALS[t][0]} "
            f"(e.g. {example})"
            for t, (n, _, example) in found.items()
            if n
        ]
        if problems and self.rules.reversed_intervals == "refuse":
            what = "treatment" if tables == ["inputevents"] else "an ICU stay or admission"
            raise IntegrityError(
                "; ".join(problems)
                + f": a row that ends before it starts is a charting error or swapped columns, "
                f"not {what}. Fix the rows, or set integrity.reversed_intervals: drop to leave "
                f"them out of the build {_AUDIT}"
            )
        for t, (n, cond, _) in found.items():
            self.audit["reversed_intervals_dropped"][t] = n
            if not n:
                continue
            if t == "admissions" and "icustays" in self.loaded:
                stays = self.con.execute(
                    f"SELECT count(*) FROM raw_icustays WHERE hadm_id IN "
                    f"(SELECT hadm_id FROM raw_admissions WHERE {cond})"
                ).fetchone()[0]
                self.con.execute(
                    f"DELETE FROM raw_icustays WHERE hadm_id IN "
                    f"(SELECT hadm_id FROM raw_admissions WHERE {cond})"
                )
                self.audit["reversed_intervals_dropped"]["stays_of_reversed_admissions"] = int(
                    stays
                )
            self.con.execute(f"DELETE FROM raw_{t} WHERE {cond}")
            start, end = INTERVALS[t]
            print(
                f"warning: {self.file(t)}: dropped {n} row(s) with a reversed interval ({end} "
                f"before {start}; integrity.reversed_intervals: drop) {_AUDIT}",
                file=sys.stderr,
            )

    def units(self, table: str) -> None:
        """Rows of a concept in ``integrity.expected_units`` whose ``valueuom`` is another unit
        (compared ignoring case and spaces; an empty unit is not checked): refused, or dropped
        with a warning and counted per item and unit."""
        expected = [
            (i, concept, unit)
            for concept, unit in sorted(self.rules.expected_units.items())
            for i in self.cfg.items[concept]
        ]
        if not expected or not self.src.has_column(table, "valueuom"):
            return
        values = ", ".join(
            f"({int(i)}, '{c}', '{u.replace(chr(39), chr(39) * 2)}')" for i, c, u in expected
        )
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE expected_units AS SELECT * FROM "
            f"(VALUES {values}) t(itemid, concept, unit)"
        )
        uom = "CAST(r.valueuom AS VARCHAR)"
        cond = (
            f"{uom} IS NOT NULL AND trim({uom}) <> '' AND lower(replace({uom}, ' ', '')) <> "
            "lower(replace(e.unit, ' ', ''))"
        )
        join = f"raw_{table} r JOIN expected_units e ON TRY_CAST(r.itemid AS BIGINT) = e.itemid"
        found = self.con.execute(
            f"SELECT e.concept, e.itemid, {uom}, e.unit, sum(r._copies) AS n FROM {join} "
            f"WHERE {cond} GROUP BY ALL ORDER BY n DESC, 1, 2, 3"
        ).fetchall()
        n = sum(int(r[4]) for r in found)
        self.audit["unit_mismatch_rows_dropped"][table] = n
        self.audit["unit_mismatches"] += [
            {"table": table, "concept": c, "itemid": i, "valueuom": u, "expected": e, "rows": k}
            for c, i, u, e, k in found
        ]
        if not n:
            return
        listing = "; ".join(
            f"{c} (itemid {i}) {u!r} x{k} (expected {e!r})" for c, i, u, e, k in found[:5]
        )
        if len(found) > 5:
            listing += f"; and {len(found) - 5} more"
        if self.rules.unit_mismatches == "refuse":
            raise IntegrityError(
                f"{self.file(table)}: {n} row(s) of configured items carry another unit in "
                f"valueuom than integrity.expected_units states: {listing}. Their values are on "
                "another scale. Convert them, correct integrity.expected_units.<concept> if the "
                "unit is right, or set integrity.unit_mismatches: drop to leave those rows out "
                f"{_AUDIT}"
            )
        self.con.execute(
            f"DELETE FROM raw_{table} WHERE rowid IN (SELECT r.rowid FROM {join} WHERE {cond})"
        )
        print(
            f"warning: {self.file(table)}: dropped {n} row(s) whose valueuom is not the unit of "
            f"integrity.expected_units: {listing} (integrity.unit_mismatches: drop) {_AUDIT}",
            file=sys.stderr,
        )

    def keys(self) -> None:
        """``PRIMARY_KEYS`` unique and present."""
        for table, key in PRIMARY_KEYS.items():
            hole = {"table": Raw(identifier(f"raw_{table}")), "key": Raw(identifier(key))}
            n_keys, n_rows, n_null, example = self.con.execute(
                render("integrity_duplicate_keys", **hole)
            ).fetchone()
            if n_rows and self.rules.duplicate_keys == "refuse":
                parts = []
                if n_keys:
                    parts.append(
                        f"{n_keys} value(s) are on more than one row with different content "
                        f"(e.g. {key}={example})"
                    )
                if n_null:
                    parts.append(f"{n_null} row(s) have no {key}")
                raise IntegrityError(
                    f"{self.file(table)}: column {key} must identify one row, but "
                    + " and ".join(parts)
                    + f". Fix the export, or set integrity.duplicate_keys: drop to leave those "
                    f"rows out of the build {_AUDIT}"
                )
            if n_rows:
                self.con.execute(render("integrity_drop_duplicate_keys", **hole))
            self.audit["duplicate_key_rows_dropped"][table] = int(n_rows)

    def references(self) -> None:
        """Every admission has its patient; every ICU stay its admission (of the same
        patient) and its patient."""
        rules = {
            "admissions_without_patient": (
                "admissions",
                "subject_id IS NULL OR subject_id NOT IN (SELECT subject_id FROM raw_patients "
                "WHERE subject_id IS NOT NULL)",
            ),
            "stays_without_admission": (
                "icustays",
                "hadm_id IS NULL OR hadm_id NOT IN (SELECT hadm_id FROM raw_admissions "
                "WHERE hadm_id IS NOT NULL)",
            ),
            "stays_without_patient": (
                "icustays",
                "subject_id IS NULL OR subject_id NOT IN (SELECT subject_id FROM raw_patients "
                "WHERE subject_id IS NOT NULL)",
            ),
            "stays_whose_admission_is_another_patients": (
                "icustays",
                "EXISTS (SELECT 1 FROM raw_admissions a WHERE a.hadm_id = raw_icustays.hadm_id "
                "AND a.subject_id IS DISTINCT FROM raw_icustays.subject_id)",
            ),
        }
        found: dict[str, tuple[int, str]] = {}
        for name, (table, cond) in rules.items():
            n = self.con.execute(f"SELECT count(*) FROM raw_{table} WHERE {cond}").fetchone()[0]
            if n:
                found[name] = (int(n), self._example(table, cond))
            if n and self.rules.orphans == "drop":
                # admissions first: their stays then have no admission and go too
                self.con.execute(f"DELETE FROM raw_{table} WHERE {cond}")
            self.audit["orphans_dropped"][name] = int(n)
        if found and self.rules.orphans == "refuse":
            what = {
                "admissions_without_patient": "admission(s) whose patient is not in hosp/patients",
                "stays_without_admission": "ICU stay(s) whose admission (hadm_id) is not in "
                "hosp/admissions",
                "stays_without_patient": "ICU stay(s) whose patient is not in hosp/patients",
                "stays_whose_admission_is_another_patients": "ICU stay(s) whose admission "
                "belongs to another patient",
            }
            listing = "; ".join(f"{n} {what[k]} (e.g. {ex})" for k, (n, ex) in found.items())
            raise IntegrityError(
                f"{self.src.root}: the ICU stays, admissions and patients do not match: "
                f"{listing}. Such a stay would silently count as 'no Sepsis-3'. Fix: export "
                "the complete tables, or set integrity.orphans: drop to leave those stays and "
                f"admissions out of the build {_AUDIT}"
            )

    def not_empty(self) -> None:
        for table in PRIMARY_KEYS:
            if not self.con.execute(f"SELECT count(*) FROM raw_{table}").fetchone()[0]:
                raise IntegrityError(
                    f"{self.file(table)}: no row is left after the integrity checks "
                    f"({self.audit['rows_read'][table]} read; see integrity: in your config): "
                    "the build cannot run without it"
                )


def run_ingest(
    src: MimicSource,
    cfg: BuildConfig,
    out: Path | TableSink,
    check_dictionaries: bool = True,
    con: duckdb.DuckDBPyConnection | None = None,
    check_integrity: bool | None = None,
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """``out``: the stage folder, or in-memory tables (``dataset/tables.py``) with ``con``, an
    open connection left open. ``check_dictionaries=False`` is for a rollout's rows, whose
    world the build checked; the integrity checks (``check_integrity``, by default as
    ``check_dictionaries``) are skipped there too: a simulator's rows are not raw data.
    ``only``: the output tables to write (:data:`OUTPUTS`; default all), for a caller that
    reads no others (the truth's state function: no prescriptions, cultures, patients or
    admissions at a decision time)."""
    if only is not None and not set(only) <= set(OUTPUTS):
        raise ValueError(f"run_ingest: unknown outputs {sorted(set(only) - set(OUTPUTS))}")
    sink = as_sink(out)
    own = con is None
    con = con or connect(cfg, Path(out).parent)
    checks = check_dictionaries if check_integrity is None else check_integrity
    reading: list[str | None] = [None]  # the raw table being read, for error messages
    try:
        info = _ingest(src, cfg, sink, con, check_dictionaries, checks, reading, only)
    except duckdb.Error as exc:
        raise read_error(exc, src, reading[0]) from None
    finally:
        if own:
            con.close()
    return info


def _ingest(
    src: MimicSource,
    cfg: BuildConfig,
    sink: TableSink,
    con: duckdb.DuckDBPyConnection,
    check_dictionaries: bool,
    checks: bool,
    reading: list[str | None],
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    def wanted(name: str) -> bool:
        return only is None or name in only

    info: dict[str, Any] = {
        "source": {"root": str(src.root), "kind": src.kind, "version": src.version}
    }
    if check_dictionaries:
        reading[0] = "d_items"
        info["dictionaries"] = check_item_ids(con, src, cfg)
    if sink.audited:  # allowed by source.allow_missing (dataset/coverage.py), else refused
        info["empty_source_tables"] = src.empty_tables()
    rows: dict[str, int] = {}
    seconds: dict[str, float] = {}
    raw = RawTables(con, src, cfg) if checks else None
    loading: dict[str, float] = {}  # when each checked table began loading

    def rel(table: str, where: str = "true") -> str:
        """What the ingest query of ``table`` reads: the checked rows, or the raw file."""
        reading[0] = table
        if raw is None:
            return src.relation(table)
        if table not in raw.loaded:
            loading[table] = time.perf_counter()
            raw.load(table, where)
        return raw.relation(table)

    def copy(name: str, query: str, table: str) -> None:
        started = loading.pop(table, time.perf_counter())  # seconds include the checks
        reading[0] = table
        sink.write(con, name, query, ZSTD)
        seconds[name] = round(time.perf_counter() - started, 3)
        if sink.audited:  # row counts are the build's audit; a rollout's tables skip them
            rows[name] = con.execute(f"SELECT count(*) FROM {sink.relation(name)}").fetchone()[0]
        if raw is not None and table not in PRIMARY_KEYS:
            raw.drop(table)

    if raw is not None:
        for table in PRIMARY_KEYS:
            rel(table)
        reading[0] = None
        raw.keys()
        raw.intervals(["icustays", "admissions"])
        raw.references()
        raw.not_empty()
    if wanted("icustays"):
        copy("icustays", render("ingest_icustays", source=Raw(rel("icustays"))), "icustays")
    if wanted("patients"):
        copy("patients", render("ingest_patients", source=Raw(rel("patients"))), "patients")
    if wanted("admissions"):
        copy("admissions", render("ingest_admissions", source=Raw(rel("admissions"))), "admissions")
    if raw is not None:
        for table in PRIMARY_KEYS:
            raw.drop(table)
    items = charted_item_ids(cfg)
    if wanted("chart"):
        chart_where = f"itemid IN {sql_list(items['chartevents'])} AND stay_id IS NOT NULL"
        chart_sql = render(
            "ingest_chart",
            source=Raw(rel("chartevents", chart_where)),
            where=Raw(chart_where),
            text_items=Raw(sql_list(ids(cfg, *CHART_TEXT_CONCEPTS))),
        )
        copy("chart", chart_sql, "chartevents")
    if wanted("labs"):
        lab_where = f"itemid IN {sql_list(items['labevents'])}"
        lab_sql = render(
            "ingest_labs",
            source=Raw(rel("labevents", lab_where)),
            where=Raw(lab_where),
            specimen_items=Raw(sql_list(cfg.items["specimen_type"])),
        )
        copy("labs", lab_sql, "labevents")
    if wanted("inputs"):
        input_where = f"itemid IN {sql_list(items['inputevents'])} AND stay_id IS NOT NULL"
        input_sql = render(
            "ingest_inputs", source=Raw(rel("inputevents", input_where)), where=Raw(input_where)
        )
        copy("inputs", input_sql, "inputevents")
    if wanted("outputs"):
        output_where = f"itemid IN {sql_list(items['outputevents'])} AND stay_id IS NOT NULL"
        output_sql = render(
            "ingest_outputs", source=Raw(rel("outputevents", output_where)), where=Raw(output_where)
        )
        copy("outputs", output_sql, "outputevents")
    if wanted("antibiotics"):
        abx_where = antibiotic_filter(cfg)
        abx_sql = render(
            "ingest_antibiotics", source=Raw(rel("prescriptions", abx_where)), where=Raw(abx_where)
        )
        copy("antibiotics", abx_sql, "prescriptions")
    if wanted("cultures"):
        cultures_sql = render("ingest_cultures", source=Raw(rel("microbiologyevents")))
        copy("cultures", cultures_sql, "microbiologyevents")
    reading[0] = None
    info["rows_kept"] = rows
    if sink.audited:  # rows per item id: a configured id never found is visible in the audit
        info["item_rows"] = {
            name: {
                str(i): n
                for i, n in con.execute(
                    f"SELECT itemid, count(*) FROM {sink.relation(name)} GROUP BY 1 ORDER BY 1"
                ).fetchall()
            }
            for name in ("chart", "labs", "inputs", "outputs")
            if wanted(name)
        }
    if raw is not None:
        info["integrity"] = {"settings": cfg.integrity.model_dump(mode="json"), **raw.audit}
    info["seconds_per_table"] = seconds
    return info
