"""Measurements stage: every observation in the units of the clinical spec, invalid values dropped.

Output (``measurements/``):
  measurements.parquet  stay_id, charttime, concept, arterial, value (chart, labs, GCS totals;
                        a lab at its labs.time, charttime or storetime)
  infusions.parquet     vasopressor / dobutamine rates (agent mcg/kg/min, NE-equivalent) and
                        IV-fluid volumes, one row per inputevents row
  urine.parquet         net urine volume per charttime (GU irrigant in counted negative)
  ventilation.parquet   periods (starttime, endtime) of ventilation for SOFA respiration 3-4
  weights.parquet       first charted weight per stay (kg), else the first weight recorded
                        with an infusion; each candidate with the time it was recorded
  audit.json            kept / dropped counts per concept, unit problems
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from sepsisrl.dataset import ingest
from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.coverage import measurement_counts
from sepsisrl.dataset.ingest import connect
from sepsisrl.dataset.sqlfiles import Raw, render
from sepsisrl.dataset.tables import PLAIN, ZSTD, TableSink, as_sink


class UnitError(ValueError):
    """Rows carry units the pipeline cannot convert (listed, never silently zero)."""


class ImplausibleDoseError(UnitError):
    """Doses outside ``[0, integrity.plausible_max]``: charting or unit errors, not doses."""


#: The unit of each ``integrity.plausible_max`` limit, by agent (others: mcg/kg/min).
LIMIT_UNITS = {"vasopressin": "units/min", "iv_fluid": "mL per row"}


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
    ventilation: bool = True,
) -> dict[str, Any]:
    """``ingest_dir`` / ``out``: stage folders, or in-memory tables (``dataset/tables.py``) with
    ``con``, an open connection left open (its temporary tables are replaced).
    ``ventilation=False`` leaves out the ventilation periods (only SOFA reads them; the truth's
    state function writes them when a SOFA is asked for, :func:`write_ventilation`)."""
    source, sink = as_sink(ingest_dir), as_sink(out)
    own = con is None
    con = con or connect(cfg, Path(out).parent)
    _views(con, source, ["chart", "labs", "inputs", "outputs", "icustays"])
    counts = _write_measurements(con, sink, cfg)
    lo, hi = valid_ranges(cfg).get("weight_kg", (20.0, 400.0))
    sink.write(
        con,
        "weights",
        render(
            "weights", measurements=Raw(sink.relation("measurements")), weight_lo=lo, weight_hi=hi
        ),
        PLAIN,
    )
    infusion = _write_infusions(con, sink, cfg, lo, hi)
    urine_rows = _write_urine(con, sink, cfg)
    if ventilation:
        write_ventilation(con, sink, cfg)
    # vasopressor rows without a dose, negative urine hours (tests/test_demo.py)
    checks = (
        measurement_counts(con, sink.relation("infusions"), sink.relation("urine"), cfg)
        if sink.audited
        else {}
    )
    if own:
        con.close()
    return {
        **checks,
        "concepts": {c: {"rows": n, "dropped_out_of_range": d} for c, n, d in counts},
        **infusion,
        "urine_rows": urine_rows,
        "labs": {"attribution": cfg.labs.attribution, "time": cfg.labs.time},
    }


def write_ventilation(con: duckdb.DuckDBPyConnection, sink: TableSink, cfg: BuildConfig) -> None:
    """Write ``ventilation`` from the stage's ingest views (``chart``) on ``con``."""
    sink.write(con, "ventilation", f"{render_ventilation(cfg)} ORDER BY stay_id, starttime", PLAIN)


def _write_measurements(
    con: duckdb.DuckDBPyConnection, sink: TableSink, cfg: BuildConfig
) -> list[tuple[str, int, int]]:
    """Write ``measurements``: chart, GCS and lab values in the spec's units, inside their
    validity ranges. Returns (concept, rows, dropped out of range) when the sink is audited."""
    p = item_params(cfg)
    text_items = sorted(
        {i for c in ingest.CHART_TEXT_CONCEPTS for i in p[c]}  # text, never a number
    )
    chart_sql = render("chart_measurements", **p, text_items=text_items)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE raw_measurements AS "
        + " UNION ALL ".join(
            f"SELECT * FROM (\n{q}\n)" for q in (chart_sql, render_gcs(cfg), render_labs(cfg))
        )
    )
    values = ", ".join(f"('{k}', {lo}, {hi})" for k, (lo, hi) in valid_ranges(cfg).items())
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE ranges AS SELECT * FROM (VALUES {values}) t(concept, lo, hi)"
    )
    counts = con.execute(render("measurement_range_counts")).fetchall() if sink.audited else []
    sink.write(con, "measurements", render("measurements_in_range"), ZSTD)
    return counts


def _write_infusions(
    con: duckdb.DuckDBPyConnection, sink: TableSink, cfg: BuildConfig, lo: float, hi: float
) -> dict[str, Any]:
    """Write ``infusions`` (vasopressor rates and IV-fluid volumes per inputevents row; a
    per-minute rate's weight in [lo, hi] kg). Refuses unknown units and implausible doses as
    ``source`` / ``integrity`` say; returns the audit's unit and integrity counts."""
    agents = ", ".join(
        f"({v.itemid}, '{name}', {v.factor})" for name, v in cfg.vasopressors.items()
    )
    treatment = cfg.actions.treatment
    con.execute(
        "CREATE OR REPLACE TEMP TABLE infusions AS "
        + render(
            "infusions",
            agents=Raw(agents),
            dobutamine=item_params(cfg)["dobutamine"],
            weight_lo=float(lo),
            weight_hi=float(hi),
            use_stay_weight=treatment.missing_weight == "stay_weight",
            stay_weights=Raw(sink.relation("weights")),
            exclude_carriers=treatment.carrier_fluids == "exclude",
            kvo_rate=float(treatment.kvo_max_rate_ml_per_hour),
        )
    )
    unknown = con.execute(render("infusion_unknown_rate_units")).fetchall()
    unknown_fluid = con.execute(render("infusion_unknown_fluid_units")).fetchall()
    no_weight, stay_weight_used, carriers, unrecorded, unrecorded_dosed = con.execute(
        render("infusion_weight_counts")
    ).fetchone()
    _refuse_unknown_units(unknown, unknown_fluid, cfg)
    # rows the infusions SQL leaves out for having no duration (a reversed interval stops the
    # build at ingest, integrity.reversed_intervals)
    no_duration = (
        con.execute(render("infusions_without_duration")).fetchone()[0] if sink.audited else 0
    )
    # doses outside [0, integrity.plausible_max] (a rollout's simulated rows skip the check)
    implausible = implausible_doses(con, cfg) if sink.audited else []
    if implausible and cfg.integrity.implausible_doses == "refuse":
        raise ImplausibleDoseError(
            "inputevents: doses outside the plausible range [0, integrity.plausible_max] "
            "(a charting or unit error, not a dose): "
            + "; ".join(f"{d['agent']} x{d['rows']} (e.g. {d['example']})" for d in implausible)
            + ". Fix the rows, raise integrity.plausible_max.<agent> if the doses are real, or "
            "set integrity.implausible_doses: drop to leave those rows out (counted under "
            "integrity in measurements/audit.json)."
        )
    keep = Raw(f"NOT ({IMPLAUSIBLE})" if implausible else "true")
    sink.write(con, "infusions", render("infusions_dosed", keep=keep), ZSTD)
    return {
        "unknown_rate_units": [{"agent": a, "rateuom": u, "rows": n} for a, u, n in unknown],
        "unknown_fluid_units": [{"amountuom": u, "rows": n} for u, n in unknown_fluid],
        "rate_per_minute_without_weight": no_weight,
        "rate_per_minute_with_stay_weight": stay_weight_used,
        "integrity": {
            "unknown_rate_unit_rows": sum(n for _, _, n in unknown),
            "unknown_fluid_unit_rows": sum(n for _, n in unknown_fluid),
            "implausible_dose_rows_dropped": {d["agent"]: d["rows"] for d in implausible},
            "infusion_rows_without_duration_dropped": no_duration,
            "rate_per_minute_patientweight_0_or_nan": unrecorded,
            "rate_per_minute_patientweight_0_or_nan_with_stay_weight": unrecorded_dosed,
        },
        "carrier_fluid_rows_excluded": carriers,
    }


def _refuse_unknown_units(
    unknown: list[tuple[str, str, int]], unknown_fluid: list[tuple[str, int]], cfg: BuildConfig
) -> None:
    """Raise :class:`UnitError` for unconvertible units unless ``source`` allows dropping them."""
    if unknown and cfg.source.fail_on_unknown_rate_unit:
        listing = "; ".join(f"{a}: {u!r} x{n}" for a, u, n in unknown)
        raise UnitError(
            f"inputevents: vasopressor rows with rate units the pipeline cannot convert: {listing}. "
            "Add a conversion, or set source.fail_on_unknown_rate_unit: false to drop them "
            "(they are then listed in measurements/audit.json)."
        )
    if unknown_fluid and cfg.source.fail_on_unknown_fluid_unit:
        listing = "; ".join(f"{u!r} x{n}" for u, n in unknown_fluid)
        raise UnitError(
            f"inputevents: IV-fluid rows (items.iv_fluids) with amount units the pipeline cannot "
            f"convert to mL (amountuom): {listing}. Add a conversion, or set "
            "source.fail_on_unknown_fluid_unit: false to drop them (they are then listed in "
            "measurements/audit.json)."
        )


def _write_urine(con: duckdb.DuckDBPyConnection, sink: TableSink, cfg: BuildConfig) -> dict:
    """Write ``urine``: net volume per charttime (irrigant in/out netted), the validity range
    applied to the net; returns the urine audit when the sink is audited."""
    negative = item_params(cfg)["urine_negative"]
    urine_spec = next((f for f in cfg.features if f.name == "urine_output_4h"), None)
    max_ml = urine_spec.valid[1] if urine_spec and urine_spec.valid else 2000
    urine_sql = render("urine", urine_negative=negative, max_ml=float(max_ml))
    sink.write(con, "urine", f"{urine_sql} ORDER BY stay_id, charttime", ZSTD)
    return urine_audit(con, sink.relation("urine"), negative) if sink.audited else {}


#: An ``infusions`` row (alias ``i``) whose dose is outside [0, its agent's limit] (``lim``).
IMPLAUSIBLE = """EXISTS (SELECT 1 FROM plausible_max p WHERE p.agent = i.agent AND (
        (i.agent <> 'iv_fluid' AND (i.agent_rate < 0 OR i.agent_rate > p.lim))
        OR (i.agent = 'iv_fluid' AND (i.fluid_ml < 0 OR i.fluid_ml > p.lim))))"""


def implausible_doses(con: duckdb.DuckDBPyConnection, cfg: BuildConfig) -> list[dict[str, Any]]:
    """Per agent, the ``infusions`` rows whose dose is outside [0, integrity.plausible_max],
    with the first such row as an example."""
    limits = ", ".join(
        f"('{name}', {float(v)!r}::DOUBLE)" for name, v in cfg.integrity.plausible_max.items()
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE plausible_max AS SELECT * FROM "
        f"(VALUES {limits}) t(agent, lim)"
    )
    rows = con.execute(render("implausible_doses", implausible=Raw(IMPLAUSIBLE))).fetchall()
    out = []
    for agent, n, lim, (stay, start, dose, rateuom, amountuom) in rows:
        unit = LIMIT_UNITS.get(agent, "mcg/kg/min")
        raw = f"amountuom {amountuom}" if agent == "iv_fluid" else f"rateuom {rateuom}"
        out.append(
            {
                "agent": agent,
                "rows": int(n),
                "example": f"stay_id {stay} starttime {start}: {float(dose):g} {unit} ({raw}) "
                f"outside [0, {lim:g}] (integrity.plausible_max.{agent})",
            }
        )
    return out


#: Under labs.time: storetime, the PaO2 and FiO2 of one blood gas specimen take the later of
#: their storetimes, so that the P/F ratio pairs them (their charttimes are equal).
GAS_TIME = """CASE
            WHEN specimen_id IS NOT NULL AND concept IN ('pao2', 'fio2_bg')
                THEN max(t) OVER (PARTITION BY specimen_id, concept IN ('pao2', 'fio2_bg'))
            ELSE t
        END"""


def render_gcs(cfg: BuildConfig) -> str:
    """``sql/gcs.sql`` with the ``gcs`` conventions of ``cfg``."""
    g, items = cfg.gcs, cfg.items
    ett_verbal = {"charted": "coalesce(valuenum, 1)", "verbal_normal": "5", "gcs_normal": "NULL"}
    normal = g.missing_component == "normal"
    return render(
        "gcs",
        gcs_eye=items["gcs_eye"],
        gcs_verbal=items["gcs_verbal"],
        gcs_motor=items["gcs_motor"],
        gcs_items=sorted(items["gcs_eye"] + items["gcs_verbal"] + items["gcs_motor"]),
        intubated_text=g.intubated_text,
        intubated_verbal=Raw(ett_verbal[g.intubated]),
        ett_normal=g.intubated == "gcs_normal",
        carry_seconds=round(g.carry_forward_hours * 3600),
        default_eye=Raw("4" if normal else "NULL"),
        default_verbal=Raw("5" if normal else "NULL"),
        default_motor=Raw("6" if normal else "NULL"),
    )


def render_labs(cfg: BuildConfig) -> str:
    """``sql/lab_measurements.sql`` with the ``labs`` conventions of ``cfg``."""
    p = item_params(cfg)
    return render(
        "lab_measurements",
        **p,
        hours_before=cfg.sepsis.sofa_hours_before_intime,
        arterial_only=sorted(p["pao2"] + p["paco2"] + p["arterial_ph"] + p["base_excess"]),
        lab_time=Raw(f"l.{cfg.labs.time}"),
        gas_time=Raw(GAS_TIME if cfg.labs.time == "storetime" else "t"),
        by_hadm=cfg.labs.attribution == "hadm_id",
        by_patient=list(cfg.labs.by_patient) or ["<none>"],
    )


def render_ventilation(cfg: BuildConfig) -> str:
    """``sql/ventilation.sql``: the ventilation periods of ``ventilation.definition``."""
    v, items = cfg.ventilation, cfg.items

    def quoted(values: list[str]) -> str:
        return "(" + ", ".join("'" + x.strip().replace("'", "''") + "'" for x in values) + ")"

    whens = []
    for c in v.invasive.classes:
        tests = [
            f"{col} IN {quoted(vals)}"
            for col, vals in (
                ("device", c.devices),
                ("mode", c.modes),
                ("hamilton", c.hamilton_modes),
            )
            if vals
        ]
        if tests:
            name = c.name.replace("'", "''")
            whens.append(f"WHEN {' OR '.join(tests)} THEN '{name}'")
    class_case = "CASE " + " ".join(whens) + " END" if whens else "NULL"
    mode_items = items["ventilator_mode"] + items["ventilator_mode_hamilton"]
    return render(
        "ventilation",
        o2_device=items["o2_device"],
        ventilator_mode=items["ventilator_mode"],
        ventilator_mode_hamilton=items["ventilator_mode_hamilton"],
        all_items=sorted(items["o2_device"] + mode_items),
        class_case=Raw(class_case),
        ventilated_classes=list(v.invasive.ventilated_classes),
        gap_seconds=round(v.invasive.new_episode_gap_hours * 3600),
        any_devices=[d.strip() for d in v.any_device.devices] or ["<none>"],
        window_seconds=round(v.any_device.window_hours * 3600),
        use_invasive=v.definition == "invasive",
    )


def urine_audit(con: duckdb.DuckDBPyConnection, urine: str, negative: list[int]) -> dict[str, int]:
    """Rows read, charttimes kept, and what was dropped: negative charted rows, and charttimes
    whose net volume (irrigant in counted negative) is outside the validity range."""
    read, negative_rows, times = con.execute(render("urine_read_counts")).fetchone()
    kept, irrigant = con.execute(
        render("urine_kept_counts", negative=[int(i) for i in negative], urine=Raw(urine))
    ).fetchone()
    return {
        "read": read,
        "negative_rows_dropped": negative_rows,
        "charttimes": times,
        "charttimes_kept": kept,
        "charttimes_with_irrigant_kept": irrigant,
        "charttimes_dropped_out_of_range": times - kept,
    }
