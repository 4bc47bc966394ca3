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
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import duckdb

from sepsisrl.build.config import BuildConfig
from sepsisrl.build.tables import ZSTD, TableSink, as_sink
from sepsisrl.mimic.source import MimicSource, SourceError

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


def ids(cfg: BuildConfig, *concepts: str) -> list[int]:
    out: list[int] = []
    for c in concepts:
        out.extend(cfg.items[c])
    return sorted(set(out))


def sql_list(values: list[int]) -> str:
    return "(" + ", ".join(str(int(v)) for v in values) + ")"


def sql_str_list(values: list[str]) -> str:
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


def ts(col: str) -> str:
    """Parse a MIMIC time column (timestamp or date text) to TIMESTAMP."""
    return f"TRY_CAST({col} AS TIMESTAMP)"


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


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str):
    """Run ``sql`` and return a pyarrow Table."""
    return con.sql(sql).to_arrow_table()


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


def run_ingest(
    src: MimicSource,
    cfg: BuildConfig,
    out: Path | TableSink,
    check_dictionaries: bool = True,
    con: duckdb.DuckDBPyConnection | None = None,
) -> dict[str, Any]:
    """``out``: the stage folder, or in-memory tables (``build/tables.py``) with ``con``, an
    open connection left open. ``check_dictionaries=False`` is for a rollout's rows, whose
    world the build checked."""
    sink = as_sink(out)
    own = con is None
    con = con or connect(cfg, Path(out).parent)
    info: dict[str, Any] = {
        "source": {"root": str(src.root), "kind": src.kind, "version": src.version}
    }
    if check_dictionaries:
        info["dictionaries"] = check_item_ids(con, src, cfg)
    if sink.audited:  # allowed by source.allow_missing (build/coverage.py), else refused
        info["empty_source_tables"] = src.empty_tables()
    rows: dict[str, int] = {}
    seconds: dict[str, float] = {}

    def copy(name: str, query: str) -> None:
        started = time.perf_counter()
        sink.write(con, name, query, ZSTD)
        seconds[name] = round(time.perf_counter() - started, 3)
        if sink.audited:  # row counts are the build's audit; a rollout's tables skip them
            rows[name] = con.execute(f"SELECT count(*) FROM {sink.relation(name)}").fetchone()[0]

    copy(
        "icustays",
        f"SELECT subject_id, hadm_id, stay_id, {ts('intime')} AS intime, {ts('outtime')} AS outtime "
        f"FROM {src.relation('icustays')} ORDER BY stay_id",
    )
    copy(
        "patients",
        f"SELECT subject_id, gender, anchor_age, CAST(anchor_year AS BIGINT) AS anchor_year, "
        f"CAST({ts('dod')} AS DATE) AS dod "
        f"FROM {src.relation('patients')} ORDER BY subject_id",
    )
    copy(
        "admissions",
        f"SELECT subject_id, hadm_id, {ts('admittime')} AS admittime, {ts('dischtime')} AS dischtime, "
        f"{ts('deathtime')} AS deathtime FROM {src.relation('admissions')} ORDER BY hadm_id",
    )
    chart_ids = ids(cfg, *CHART_CONCEPTS)
    text_ids = ids(cfg, *CHART_TEXT_CONCEPTS)
    copy(
        "chart",
        f"SELECT stay_id, {ts('charttime')} AS charttime, CAST(itemid AS INTEGER) AS itemid, "
        f"CAST(valuenum AS DOUBLE) AS valuenum, "
        f"CASE WHEN itemid IN {sql_list(text_ids)} THEN value END AS value "
        f"FROM {src.relation('chartevents')} "
        f"WHERE itemid IN {sql_list(chart_ids)} AND stay_id IS NOT NULL "
        f"ORDER BY stay_id, charttime, itemid, valuenum, value",
    )
    lab_ids = ids(cfg, *LAB_CONCEPTS)
    spec_ids = cfg.items["specimen_type"]
    copy(
        "labs",
        f"SELECT subject_id, hadm_id, specimen_id, {ts('charttime')} AS charttime, "
        f"{ts('storetime')} AS storetime, CAST(itemid AS INTEGER) AS itemid, "
        f"CAST(valuenum AS DOUBLE) AS valuenum, "
        f"CASE WHEN itemid IN {sql_list(spec_ids)} THEN value END AS value "
        f"FROM {src.relation('labevents')} WHERE itemid IN {sql_list(lab_ids)} "
        f"ORDER BY subject_id, charttime, itemid, specimen_id, valuenum, value",
    )
    vaso_ids = sorted(v.itemid for v in cfg.vasopressors.values())
    input_ids = sorted(set(vaso_ids) | set(ids(cfg, "iv_fluids", "dobutamine")))
    copy(
        "inputs",
        f"SELECT stay_id, {ts('starttime')} AS starttime, {ts('endtime')} AS endtime, "
        f"CAST(itemid AS INTEGER) AS itemid, CAST(amount AS DOUBLE) AS amount, amountuom, "
        f"CAST(rate AS DOUBLE) AS rate, rateuom, CAST(patientweight AS DOUBLE) AS patientweight, "
        f"ordercomponenttypedescription "
        f"FROM {src.relation('inputevents')} "
        f"WHERE itemid IN {sql_list(input_ids)} AND stay_id IS NOT NULL "
        f"ORDER BY stay_id, starttime, endtime, itemid, rate, amount, rateuom, amountuom, patientweight, "
        f"ordercomponenttypedescription",
    )
    copy(
        "outputs",
        f"SELECT stay_id, {ts('charttime')} AS charttime, CAST(itemid AS INTEGER) AS itemid, "
        f"CAST(value AS DOUBLE) AS value FROM {src.relation('outputevents')} "
        f"WHERE itemid IN {sql_list(ids(cfg, *OUTPUT_CONCEPTS))} AND stay_id IS NOT NULL "
        f"ORDER BY stay_id, charttime, itemid, value",
    )
    copy(
        "antibiotics",
        f"SELECT subject_id, hadm_id, {ts('starttime')} AS starttime, drug, route "
        f"FROM {src.relation('prescriptions')} "
        f"WHERE {antibiotic_filter(cfg)} AND {ts('starttime')} IS NOT NULL "
        f"ORDER BY subject_id, starttime, hadm_id, drug, route",
    )
    copy(
        "cultures",
        f"SELECT subject_id, min(hadm_id) AS hadm_id, micro_specimen_id, "
        f"min({ts('charttime')}) AS charttime, CAST(min({ts('chartdate')}) AS DATE) AS chartdate "
        f"FROM {src.relation('microbiologyevents')} GROUP BY subject_id, micro_specimen_id "
        f"ORDER BY subject_id, micro_specimen_id",
    )
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
        }
    info["seconds_per_table"] = seconds
    if own:
        con.close()
    return info
