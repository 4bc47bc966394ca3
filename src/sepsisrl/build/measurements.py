"""Measurements stage: every observation in the units of the clinical spec, invalid values dropped.

Output (``measurements/``):
  measurements.parquet  stay_id, charttime, concept, arterial, value (chart, labs, GCS totals)
  infusions.parquet     vasopressor / dobutamine rates (agent mcg/kg/min, NE-equivalent) and
                        IV-fluid volumes, one row per inputevents row
  urine.parquet         signed urine volumes per charted row
  ventilation.parquet   times documented as mechanically ventilated
  weights.parquet       first charted weight per stay (kg), else the first weight recorded
                        with an infusion; each candidate with the time it was recorded
  audit.json            kept / dropped counts per concept, unit problems
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from sepsisrl.build.config import BuildConfig
from sepsisrl.build.ingest import connect
from sepsisrl.build.sqlfiles import Raw, render
from sepsisrl.build.tables import PLAIN, ZSTD, TableSink, as_sink


class UnitError(ValueError):
    """Rows carry units the pipeline cannot convert (listed, never silently zero)."""


def _views(con: duckdb.DuckDBPyConnection, source: TableSink, names: list[str]) -> None:
    for name in names:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {source.relation(name)}")


def item_params(cfg: BuildConfig) -> dict[str, Any]:
    return {k: list(v) for k, v in cfg.items.items()}


def valid_ranges(cfg: BuildConfig) -> dict[str, tuple[float, float]]:
    return {f.name: f.valid for f in cfg.features if f.valid is not None}


def run_measurements(
    ingest_dir: Path | TableSink,
    cfg: BuildConfig,
    out: Path | TableSink,
    con: duckdb.DuckDBPyConnection | None = None,
) -> dict[str, Any]:
    """``ingest_dir`` / ``out``: stage folders, or in-memory tables (``build/tables.py``) with
    ``con``, an open connection left open (its temporary tables are replaced)."""
    source, sink = as_sink(ingest_dir), as_sink(out)
    own = con is None
    con = con or connect(cfg, Path(out).parent)
    _views(con, source, ["chart", "labs", "inputs", "outputs", "icustays"])
    p = item_params(cfg)
    text_items = sorted(
        set(p["gcs_eye"] + p["gcs_verbal"] + p["gcs_motor"] + p["o2_device"] + p["ventilator_mode"])
    )
    chart_sql = render("chart_measurements", **p, text_items=text_items)
    verbal = Raw("coalesce(valuenum, 1)") if cfg.gcs.intubated_verbal == "charted" else Raw("5")
    gcs_sql = render(
        "gcs",
        gcs_eye=p["gcs_eye"],
        gcs_verbal=p["gcs_verbal"],
        gcs_motor=p["gcs_motor"],
        gcs_items=sorted(p["gcs_eye"] + p["gcs_verbal"] + p["gcs_motor"]),
        intubated_text=cfg.gcs.intubated_text,
        intubated_verbal=verbal,
    )
    lab_sql = render(
        "lab_measurements",
        **{k: p[k] for k in p},
        hours_before=cfg.sepsis.sofa_hours_before_intime,
        arterial_only=sorted(p["pao2"] + p["paco2"] + p["arterial_ph"] + p["base_excess"]),
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE raw_measurements AS "
        + " UNION ALL ".join(f"SELECT * FROM (\n{q}\n)" for q in (chart_sql, gcs_sql, lab_sql))
    )
    ranges = valid_ranges(cfg)
    values = ", ".join(f"('{k}', {lo}, {hi})" for k, (lo, hi) in ranges.items())
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE ranges AS SELECT * FROM (VALUES {values}) t(concept, lo, hi)"
    )
    counts = (
        []
        if not sink.audited
        else con.execute(
            """SELECT m.concept, count(*) AS n,
                  count(*) FILTER (WHERE r.concept IS NOT NULL AND (m.value < r.lo OR m.value > r.hi)) AS dropped
           FROM raw_measurements m LEFT JOIN ranges r USING (concept)
           GROUP BY m.concept ORDER BY m.concept"""
        ).fetchall()
    )
    sink.write(
        con,
        "measurements",
        """SELECT m.stay_id, m.charttime, m.concept, m.arterial, m.value
           FROM raw_measurements m LEFT JOIN ranges r USING (concept)
           WHERE r.concept IS NULL OR (m.value >= r.lo AND m.value <= r.hi)
           ORDER BY m.stay_id, m.concept, m.charttime, m.arterial, m.value""",
        ZSTD,
    )
    # infusions
    agents = ", ".join(
        f"({v.itemid}, '{name}', {v.factor})" for name, v in cfg.vasopressors.items()
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE infusions AS "
        + render("infusions", agents=Raw(agents), dobutamine=p["dobutamine"])
    )
    unknown = con.execute(
        """SELECT agent, coalesce(rateuom, '<null>'), count(*) FROM infusions
           WHERE unknown_rate_unit GROUP BY 1, 2 ORDER BY 3 DESC"""
    ).fetchall()
    unknown_fluid = con.execute(
        """SELECT coalesce(amountuom, '<null>'), count(*) FROM infusions
           WHERE unknown_fluid_unit GROUP BY 1 ORDER BY 2 DESC"""
    ).fetchall()
    no_weight = con.execute(
        "SELECT count(*) FROM infusions WHERE rateuom IN ('mcg/min', 'mg/min') AND agent_rate IS NULL"
    ).fetchone()[0]
    if unknown and cfg.source.fail_on_unknown_rate_unit:
        listing = "; ".join(f"{a}: {u!r} x{n}" for a, u, n in unknown)
        raise UnitError(
            f"inputevents: vasopressor rows with rate units the pipeline cannot convert: {listing}. "
            "Add a conversion, or set source.fail_on_unknown_rate_unit: false to drop them "
            "(they are then listed in measurements/audit.json)."
        )
    sink.write(
        con,
        "infusions",
        """SELECT stay_id, starttime, endtime, itemid, agent, factor, agent_rate,
                  agent_rate * factor AS ne_rate, fluid_ml
           FROM infusions
           WHERE (agent_rate IS NOT NULL AND agent_rate >= 0) OR fluid_ml IS NOT NULL
           ORDER BY stay_id, starttime, endtime, itemid, agent_rate, fluid_ml""",
        ZSTD,
    )
    urine_spec = next((f for f in cfg.features if f.name == "urine_output_4h"), None)
    max_row = urine_spec.valid[1] if urine_spec and urine_spec.valid else 2000
    urine_sql = render("urine", urine_negative=p["urine_negative"], max_row=float(max_row))
    urine_total = con.execute("SELECT count(*) FROM outputs").fetchone()[0] if sink.audited else 0
    sink.write(con, "urine", urine_sql, ZSTD)
    urine_kept = (
        con.execute(f"SELECT count(*) FROM {sink.relation('urine')}").fetchone()[0]
        if sink.audited
        else 0
    )
    vent_sql = render(
        "ventilation",
        ventilator_mode=p["ventilator_mode"],
        o2_device=p["o2_device"],
        devices=list(cfg.ventilation.devices),
    )
    sink.write(con, "ventilation", f"{vent_sql} ORDER BY stay_id, charttime", PLAIN)
    # first weight per stay: charted weight, else the weight recorded with an infusion. The
    # state uses each candidate only from the time it was recorded (build/state.py).
    lo, hi = ranges.get("weight_kg", (20.0, 400.0))
    sink.write(
        con,
        "weights",
        f"""WITH charted AS (
                  SELECT stay_id, arg_min(value, [epoch(charttime), value]) AS weight_kg,
                         min(charttime) AS weight_time
                  FROM {sink.relation("measurements")}
                  WHERE concept = 'weight_kg' GROUP BY stay_id
              ), infused AS (
                  SELECT stay_id, arg_min(patientweight, [epoch(starttime), patientweight]) AS weight_kg,
                         min(starttime) AS weight_time
                  FROM inputs WHERE patientweight BETWEEN {lo} AND {hi} GROUP BY stay_id
              )
              SELECT i.stay_id, coalesce(c.weight_kg, f.weight_kg) AS weight_kg,
                     CASE WHEN c.weight_kg IS NOT NULL THEN 'chartevents'
                          WHEN f.weight_kg IS NOT NULL THEN 'inputevents' END AS weight_source,
                     c.weight_kg AS charted_kg, c.weight_time AS charted_time,
                     f.weight_kg AS infusion_kg, f.weight_time AS infusion_time
              FROM icustays i LEFT JOIN charted c USING (stay_id) LEFT JOIN infused f USING (stay_id)
              ORDER BY i.stay_id""",
        PLAIN,
    )
    if own:
        con.close()
    return {
        "concepts": {c: {"rows": n, "dropped_out_of_range": d} for c, n, d in counts},
        "unknown_rate_units": [{"agent": a, "rateuom": u, "rows": n} for a, u, n in unknown],
        "unknown_fluid_units": [{"amountuom": u, "rows": n} for u, n in unknown_fluid],
        "rate_per_minute_without_weight": no_weight,
        "urine_rows": {"read": urine_total, "kept": urine_kept},
    }
