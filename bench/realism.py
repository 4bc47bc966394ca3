"""Realism of the synthetic world's charting against real MIMIC-IV tables (the open demo).

Usage:  python bench/realism.py [--demo /work/shared/data/mimic-iv-demo-2.2] [--stays 300]
                                [--seed 0] [--world DIR] [--out JSON]

Generates a synthetic world of ``--stays`` ICU stays (or reads an existing one with ``--world``)
and computes, with DuckDB reading the ``csv.gz`` files directly, the same statistics on it and
on the real tables: rows per ICU stay and per ICU-day of every table, the ``inputevents``
status, rate-unit and amount-unit mix, vasopressor rate quantiles per drug in its unit, IV
fluid volume per row and per stay-day, lab draws per ICU-day, lab result delay (storetime -
charttime), date-only cultures, antibiotic routes, urine per row and item-id coverage of the
build's configured items. Prints ``metric | demo | synthetic | ratio`` (ratio = synthetic /
demo) and writes the figures as JSON with ``--out``.

The demo has no ``chartevents``: its row count (668,862 rows, from the demo's NOTE.md) is the
only real figure; every other chartevents figure is printed for the synthetic world only.
Hospital tables (labs, prescriptions, cultures) are counted inside ICU stays (by subject and
time, ``[intime, outtime]``) so that the synthetic world, which simulates no hospital days
after the ICU, is compared on the same footing.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

DEMO = Path("/work/shared/data/mimic-iv-demo-2.2")
#: chartevents rows of the demo release (its NOTE.md: the file itself is absent here)
DEMO_CHARTEVENTS_ROWS = 668_862
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
#: labs whose draw frequency and result delay are compared (concept, item id)
MAIN_LABS = {
    "creatinine": 50912,
    "bun": 51006,
    "sodium": 50983,
    "potassium": 50971,
    "glucose": 50931,
    "wbc": 51301,
    "haemoglobin": 51222,
    "platelets": 51265,
    "inr": 51237,
    "bilirubin_total": 50885,
    "albumin": 50862,
    "lactate": 50813,
    "pao2": 50821,
}
DELAY_LABS = ("creatinine", "platelets", "inr", "bilirubin_total", "lactate", "pao2")
#: chart items whose charting frequency is reported for the synthetic world
CHART_ITEMS = {
    "heart_rate": 220045,
    "map_arterial": 220052,
    "map_noninvasive": 220181,
    "spo2": 220277,
    "temperature_c": 223762,
    "gcs_eye": 220739,
    "fio2": 223835,
}
TABLE_FILES = {
    "icustays": "icu/icustays",
    "inputevents": "icu/inputevents",
    "outputevents": "icu/outputevents",
    "chartevents": "icu/chartevents",
    "labevents": "hosp/labevents",
    "prescriptions": "hosp/prescriptions",
    "microbiologyevents": "hosp/microbiologyevents",
}


# ----------------------------------------------------------------------------- loading
def _open(root: Path) -> tuple[duckdb.DuckDBPyConnection, bool]:
    """Views over the csv.gz tables of ``root``; returns (connection, has chartevents rows)."""
    con = duckdb.connect()
    con.execute("SET threads = 2")
    for name, rel in TABLE_FILES.items():
        path = root / f"{rel}.csv.gz"
        if not path.is_file():
            if name == "chartevents":
                continue
            raise SystemExit(f"{path}: missing; expected a MIMIC-IV tree with {rel}.csv.gz")
        con.execute(
            f"CREATE TABLE {name} AS SELECT * FROM read_csv('{path}', header = true, "
            "sample_size = -1)"
        )
    has_chart = False
    if (root / "icu/chartevents.csv.gz").is_file():
        has_chart = con.execute("SELECT count(*) FROM chartevents").fetchone()[0] > 0
    # ICU windows with their length in days; hospital rows are matched by subject and time
    con.execute(
        """CREATE TABLE stays AS SELECT stay_id, subject_id, hadm_id,
               CAST(intime AS TIMESTAMP) AS intime, CAST(outtime AS TIMESTAMP) AS outtime,
               epoch(CAST(outtime AS TIMESTAMP) - CAST(intime AS TIMESTAMP)) / 86400.0 AS days
           FROM icustays WHERE outtime > intime"""
    )
    return con, has_chart


def _q(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> float | None:
    v = con.execute(sql).fetchone()[0]
    return None if v is None else float(v)


def _quantiles(con: duckdb.DuckDBPyConnection, expr: str, source: str) -> list[float | None]:
    qs = ", ".join(str(q) for q in QUANTILES)
    v = con.execute(f"SELECT quantile_cont({expr}, [{qs}]) FROM {source}").fetchone()[0]
    return [None] * len(QUANTILES) if v is None else [float(x) for x in v]


def _qname(q: float) -> str:
    return f"p{round(q * 100):02d}"


def _shares(con: duckdb.DuckDBPyConnection, expr: str, source: str) -> dict[str, float]:
    rows = _q(
        con,
        f"SELECT coalesce(CAST({expr} AS VARCHAR), '(null)') AS k, count(*) AS n "
        f"FROM {source} GROUP BY 1 ORDER BY 2 DESC",
    )
    total = sum(n for _, n in rows) or 1
    return {str(k): n / total for k, n in rows}


# ----------------------------------------------------------------------------- statistics
def collect(root: Path) -> dict[str, float | None]:
    """Every statistic of the MIMIC tree at ``root``, as a flat ``{metric: value}`` mapping."""
    from sepsisrl.dataset.config import load_build_config

    cfg = load_build_config()
    con, has_chart = _open(root)
    m: dict[str, float | None] = {}
    n_stays = _one(con, "SELECT count(*) FROM stays")
    icu_days = _one(con, "SELECT sum(days) FROM stays")
    m["cohort.icu_stays"] = n_stays
    m["cohort.icu_days"] = icu_days
    m["cohort.icu_los_days_p50"] = _one(con, "SELECT median(days) FROM stays")

    # ---- rows per ICU stay and per ICU-day
    in_icu = {
        "inputevents": "SELECT * FROM inputevents",
        "outputevents": "SELECT * FROM outputevents",
        "labevents": "SELECT l.* FROM labevents l JOIN stays s ON l.subject_id = s.subject_id "
        "AND CAST(l.charttime AS TIMESTAMP) BETWEEN s.intime AND s.outtime",
        "prescriptions": "SELECT p.* FROM prescriptions p JOIN stays s "
        "ON p.subject_id = s.subject_id "
        "AND CAST(p.starttime AS TIMESTAMP) BETWEEN s.intime AND s.outtime",
        "microbiologyevents": "SELECT c.* FROM microbiologyevents c JOIN stays s "
        "ON c.subject_id = s.subject_id AND CAST(coalesce(c.charttime, c.chartdate) AS TIMESTAMP)"
        " BETWEEN date_trunc('day', s.intime) AND s.outtime",
    }
    for name, sql in in_icu.items():
        n = _one(con, f"SELECT count(*) FROM ({sql})")
        m[f"rows.{name}.per_stay"] = n / n_stays
        m[f"rows.{name}.per_icu_day"] = n / icu_days
    if has_chart:
        n = _one(con, "SELECT count(*) FROM chartevents")
    else:
        n = float(DEMO_CHARTEVENTS_ROWS) if root.resolve() == DEMO.resolve() else None
    m["rows.chartevents.per_stay"] = None if n is None else n / n_stays
    m["rows.chartevents.per_icu_day"] = None if n is None else n / icu_days

    # ---- inputevents: status, units, order categories, row duration
    for k, v in _shares(con, "statusdescription", "inputevents").items():
        m[f"inputevents.status.{k}"] = v
    for k, v in _shares(con, "rateuom", "inputevents").items():
        m[f"inputevents.rateuom.{k}"] = v
    for k, v in _shares(con, "amountuom", "inputevents").items():
        m[f"inputevents.amountuom.{k}"] = v
    for k, v in _shares(con, "ordercategorydescription", "inputevents").items():
        m[f"inputevents.ordercategorydescription.{k}"] = v
    m["inputevents.distinct_itemids"] = _one(con, "SELECT count(DISTINCT itemid) FROM inputevents")

    # ---- vasopressors: rate quantiles per drug and unit, row duration, rows per hour on drug
    vaso = {name: v.itemid for name, v in cfg.vasopressors.items()}
    vaso_ids = ", ".join(str(i) for i in vaso.values())
    vrows = f"(SELECT * FROM inputevents WHERE itemid IN ({vaso_ids}))"
    n_vaso = _one(con, f"SELECT count(*) FROM {vrows}") or 0.0
    m["vasopressor.rows_per_stay"] = n_vaso / n_stays
    hours_on = _one(
        con,
        f"SELECT sum(epoch(CAST(endtime AS TIMESTAMP) - CAST(starttime AS TIMESTAMP))) "
        f"/ 3600 FROM {vrows}",
    )
    m["vasopressor.rows_per_infusion_hour"] = n_vaso / hours_on if hours_on else None
    for q, v in zip(
        QUANTILES,
        _quantiles(
            con,
            "epoch(CAST(endtime AS TIMESTAMP) - CAST(starttime AS TIMESTAMP)) / 3600",
            vrows,
        ),
        strict=True,
    ):
        m[f"vasopressor.row_hours_{_qname(q)}"] = v
    m["vasopressor.rate_null_share"] = (
        _one(con, f"SELECT avg(CAST(rate IS NULL AS DOUBLE)) FROM {vrows}") if n_vaso else None
    )
    m["vasopressor.weight_null_share"] = (
        _one(con, f"SELECT avg(CAST(patientweight IS NULL AS DOUBLE)) FROM {vrows}")
        if n_vaso
        else None
    )
    for name, itemid in vaso.items():
        units = _q(
            con,
            f"SELECT coalesce(rateuom, '(null)'), count(*) FROM inputevents "
            f"WHERE itemid = {itemid} GROUP BY 1 ORDER BY 2 DESC",
        )
        for unit, n in units:
            key = f"vasopressor.{name}[{unit}]"
            m[f"{key}.share_of_vaso_rows"] = n / n_vaso
            src = (
                f"(SELECT rate FROM inputevents WHERE itemid = {itemid} "
                f"AND coalesce(rateuom, '(null)') = '{unit}')"
            )
            for q, v in zip(QUANTILES, _quantiles(con, "rate", src), strict=True):
                m[f"{key}.rate_{_qname(q)}"] = v

    # ---- IV fluids (the build's fluid items): volume per row and per stay-day
    fluid_ids = ", ".join(str(i) for i in cfg.items["iv_fluids"])
    frows = (
        f"(SELECT *, CASE WHEN lower(amountuom) = 'l' THEN amount * 1000 ELSE amount END AS ml "
        f"FROM inputevents WHERE itemid IN ({fluid_ids}))"
    )
    n_fluid = _one(con, f"SELECT count(*) FROM {frows}") or 0.0
    m["fluid.rows_per_icu_day"] = n_fluid / icu_days
    for q, v in zip(QUANTILES, _quantiles(con, "ml", frows), strict=True):
        m[f"fluid.ml_per_row_{_qname(q)}"] = v
    m["fluid.rate_null_share"] = _one(con, f"SELECT avg(CAST(rate IS NULL AS DOUBLE)) FROM {frows}")
    m["fluid.rows_under_50ml_share"] = _one(
        con, f"SELECT avg(CAST(ml < 50 AS DOUBLE)) FROM {frows}"
    )
    per_day = (
        f"(SELECT coalesce(sum(f.ml), 0) / s.days AS ml_day FROM stays s "
        f"LEFT JOIN {frows} f USING (stay_id) GROUP BY s.stay_id, s.days)"
    )
    for q, v in zip(QUANTILES, _quantiles(con, "ml_day", per_day), strict=True):
        m[f"fluid.ml_per_stay_day_{_qname(q)}"] = v
    for k, v in _shares(con, "ordercategoryname", frows).items():
        m[f"fluid.ordercategoryname.{k}"] = v

    # ---- labs: draws per ICU-day, result delay, labs without an admission
    lab_ids = ", ".join(str(i) for i in MAIN_LABS.values())
    draws = _q(
        con,
        f"""SELECT l.itemid, count(DISTINCT (l.subject_id, l.charttime))
            FROM labevents l JOIN stays s ON l.subject_id = s.subject_id
             AND CAST(l.charttime AS TIMESTAMP) BETWEEN s.intime AND s.outtime
            WHERE l.itemid IN ({lab_ids}) GROUP BY 1""",
    )
    got = dict(draws)
    for name, itemid in MAIN_LABS.items():
        m[f"lab.{name}.draws_per_icu_day"] = got.get(itemid, 0) / icu_days
    for name in DELAY_LABS:
        src = (
            f"(SELECT epoch(CAST(storetime AS TIMESTAMP) - CAST(charttime AS TIMESTAMP)) / 60 "
            f"AS d FROM labevents WHERE itemid = {MAIN_LABS[name]})"
        )
        for q, v in zip(QUANTILES, _quantiles(con, "d", src), strict=True):
            if q in (0.1, 0.5, 0.9):
                m[f"lab.{name}.result_delay_min_{_qname(q)}"] = v
    m["lab.rows_without_hadm_id_share"] = _one(
        con, "SELECT avg(CAST(hadm_id IS NULL AS DOUBLE)) FROM labevents"
    )
    m["lab.distinct_itemids"] = _one(con, "SELECT count(DISTINCT itemid) FROM labevents")

    # ---- cultures
    m["culture.date_only_row_share"] = _one(
        con, "SELECT avg(CAST(charttime IS NULL AS DOUBLE)) FROM microbiologyevents"
    )
    m["culture.date_only_specimen_share"] = _one(
        con,
        """SELECT avg(CAST(d AS DOUBLE)) FROM (SELECT micro_specimen_id, bool_and(charttime IS NULL)
           AS d FROM microbiologyevents GROUP BY 1)""",
    )
    m["culture.rows_per_specimen"] = _one(
        con, "SELECT count(*) / count(DISTINCT micro_specimen_id) FROM microbiologyevents"
    )
    m["culture.specimens_per_admission"] = _one(
        con,
        """SELECT count(DISTINCT micro_specimen_id) / (SELECT count(DISTINCT hadm_id) FROM stays)
           FROM microbiologyevents WHERE hadm_id IN (SELECT hadm_id FROM stays)""",
    )
    m["culture.blood_specimen_share"] = _one(
        con,
        """SELECT avg(CAST(spec_type_desc = 'BLOOD CULTURE' AS DOUBLE)) FROM
           (SELECT DISTINCT micro_specimen_id, spec_type_desc FROM microbiologyevents)""",
    )

    # ---- antibiotics: the build's name patterns, then the route mix
    pats = " OR ".join(f"lower(drug) LIKE '%{p.lower()}%'" for p in cfg.sepsis.antibiotic_patterns)
    abx = f"(SELECT * FROM prescriptions WHERE {pats})"
    n_abx = _one(con, f"SELECT count(*) FROM {abx}") or 0.0
    m["antibiotic.rows_per_icu_admission"] = n_abx / (
        _one(con, "SELECT count(DISTINCT hadm_id) FROM stays") or 1
    )
    m["antibiotic.share_of_prescriptions"] = n_abx / (
        _one(con, "SELECT count(*) FROM prescriptions") or 1
    )
    for k, v in _shares(con, "route", abx).items():
        m[f"antibiotic.route.{k}"] = v
    m["prescriptions.distinct_routes"] = _one(
        con, "SELECT count(DISTINCT route) FROM prescriptions"
    )
    m["prescriptions.distinct_drugs"] = _one(con, "SELECT count(DISTINCT drug) FROM prescriptions")

    # ---- outputevents: urine per row, item mix, volume per day
    urine_ids = ", ".join(str(i) for i in cfg.items["urine"])
    neg_ids = ", ".join(str(i) for i in cfg.items["urine_negative"])
    urows = f"(SELECT * FROM outputevents WHERE itemid IN ({urine_ids}))"
    n_urine = _one(con, f"SELECT count(*) FROM {urows}") or 0.0
    m["urine.rows_per_icu_day"] = n_urine / icu_days
    m["urine.share_of_outputevents"] = n_urine / (
        _one(con, "SELECT count(*) FROM outputevents") or 1
    )
    for label, itemid in (("foley", 226559), ("void", 226560)):
        src = f"(SELECT value FROM outputevents WHERE itemid = {itemid})"
        for q, v in zip(QUANTILES, _quantiles(con, "value", src), strict=True):
            m[f"urine.{label}_ml_per_row_{_qname(q)}"] = v
        m[f"urine.{label}_share_of_urine_rows"] = (
            _one(con, f"SELECT count(*) FROM {src}") / n_urine if n_urine else None
        )
    m["urine.zero_value_share"] = _one(con, f"SELECT avg(CAST(value = 0 AS DOUBLE)) FROM {urows}")
    m["urine.gu_irrigant_rows_per_icu_day"] = (
        _one(con, f"SELECT count(*) FROM outputevents WHERE itemid IN ({neg_ids})") / icu_days
    )
    uday = (
        f"(SELECT coalesce(sum(u.value), 0) / s.days AS ml_day FROM stays s "
        f"LEFT JOIN {urows} u USING (stay_id) WHERE s.days >= 1 GROUP BY s.stay_id, s.days)"
    )
    for q, v in zip(QUANTILES, _quantiles(con, "ml_day", uday), strict=True):
        m[f"urine.ml_per_stay_day_{_qname(q)}"] = v
    m["outputevents.distinct_itemids"] = _one(
        con, "SELECT count(DISTINCT itemid) FROM outputevents"
    )

    # ---- item-id coverage: configured ids present in the table they are read from
    tables = {"lab": "labevents", "input": "inputevents", "output": "outputevents"}
    lab_concepts = [
        "pao2", "paco2", "arterial_ph", "bicarbonate", "base_excess", "lactate", "creatinine",
        "bun", "bilirubin_total", "albumin", "sodium", "potassium", "glucose", "inr", "ptt",
        "wbc", "haemoglobin", "haematocrit", "platelets", "specimen_type",
    ]  # fmt: skip
    groups = {
        "lab": sorted({i for c in lab_concepts for i in cfg.items[c]}),
        "input": sorted(
            set(cfg.items["iv_fluids"]) | set(cfg.items["dobutamine"]) | set(vaso.values())
        ),
        "output": sorted(set(cfg.items["urine"]) | set(cfg.items["urine_negative"])),
    }
    if has_chart:
        tables["chart"] = "chartevents"
        chart_concepts = [
            "heart_rate", "map_arterial", "map_noninvasive", "sbp_arterial", "sbp_noninvasive",
            "dbp_arterial", "dbp_noninvasive", "resp_rate", "temperature_c", "temperature_f",
            "spo2", "gcs_eye", "gcs_verbal", "gcs_motor", "fio2", "peep", "weight_kg",
            "weight_lb", "o2_device", "ventilator_mode",
        ]  # fmt: skip
        groups["chart"] = sorted({i for c in chart_concepts for i in cfg.items[c]})
    for g, ids in groups.items():
        id_list = ", ".join(str(i) for i in ids)
        present = _one(
            con, f"SELECT count(DISTINCT itemid) FROM {tables[g]} WHERE itemid IN ({id_list})"
        )
        m[f"coverage.{g}.configured_ids_present_share"] = present / len(ids)
        m[f"coverage.{g}.rows_read_by_build_share"] = _one(
            con, f"SELECT avg(CAST(itemid IN ({id_list}) AS DOUBLE)) FROM {tables[g]}"
        )

    # ---- chartevents (the demo has none)
    if has_chart:
        m["chart.distinct_itemids"] = _one(con, "SELECT count(DISTINCT itemid) FROM chartevents")
        for name, itemid in CHART_ITEMS.items():
            m[f"chart.{name}.rows_per_icu_day"] = (
                _one(con, f"SELECT count(*) FROM chartevents WHERE itemid = {itemid}") / icu_days
            )
        src = (
            "(SELECT epoch(CAST(storetime AS TIMESTAMP) - CAST(charttime AS TIMESTAMP)) / 60 "
            "AS d FROM chartevents)"
        )
        for q, v in zip(QUANTILES, _quantiles(con, "d", src), strict=True):
            if q in (0.1, 0.5, 0.9):
                m[f"chart.store_delay_min_{_qname(q)}"] = v
    con.close()
    return m


# ----------------------------------------------------------------------------- report
def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2e}"


def _ratio(k: str, d: float | None, s: float | None, demo: dict, synth: dict) -> str:
    if d not in (None, 0) and s is not None:
        return f"{s / d:.2f}"
    if d in (None, 0) and s not in (None, 0) and k in demo:
        return "new"
    if s in (None, 0) and d not in (None, 0) and k in demo:
        return "absent" if k not in synth else "0"
    return "-"


def table(
    demo: dict[str, float | None],
    synth: dict[str, float | None],
    before: dict[str, float | None] | None = None,
) -> str:
    """Side-by-side text table, metrics in the order first seen (demo, then synthetic);
    with ``before`` (an earlier synthetic run) its column and ratio come first."""
    runs = [("synthetic", synth)] if before is None else [("before", before), ("after", synth)]
    keys = list(dict.fromkeys([*demo, *(k for _, r in runs for k in r)]))
    width = max(len(k) for k in keys) + 2
    head = f"{'metric':<{width}}{'demo':>12}"
    for name, _ in runs:
        head += f"{name:>12}{'ratio':>9}"
    lines = [head, "-" * len(head)]
    section = None
    for k in keys:
        sec = k.split(".")[0]
        if sec != section and section is not None:
            lines.append("")
        section = sec
        d = demo.get(k)
        line = f"{k:<{width}}{_fmt(d):>12}"
        for _, run in runs:
            line += f"{_fmt(run.get(k)):>12}{_ratio(k, d, run.get(k), demo, run):>9}"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--demo", type=Path, default=DEMO, help="real MIMIC-IV tree (the demo)")
    ap.add_argument("--stays", type=int, default=300, help="synthetic ICU stays to generate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", type=Path, help="use this synthetic MIMIC tree, generate none")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument(
        "--before", type=Path, help="JSON of an earlier run (--out): print its column too"
    )
    args = ap.parse_args()

    t0 = time.perf_counter()
    demo = collect(args.demo)
    tmp = None
    world = args.world
    if world is None:
        from sepsisrl.synth.world import generate_world

        tmp = Path(tempfile.mkdtemp(prefix="sepsisrl-realism-"))
        world = generate_world(
            tmp / "mimic", args.stays, seed=args.seed, hourly_truth=False
        ).out_dir
    try:
        synth = collect(world)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    before = None
    if args.before:
        before = json.loads(args.before.read_text())["synthetic_stats"]
    text = table(demo, synth, before)
    print(text)
    print(
        f"\n({time.perf_counter() - t0:.1f} s; demo {args.demo}; synthetic: "
        f"{'--world ' + str(args.world) if args.world else f'{args.stays} stays, seed {args.seed}'})"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "demo_dir": str(args.demo),
            "synthetic": {
                "world": str(args.world) if args.world else None,
                "stays": None if args.world else args.stays,
                "seed": args.seed,
            },
            "demo": demo,
            "synthetic_stats": synth,
            "table": text.splitlines(),
        }
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
