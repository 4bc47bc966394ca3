"""An approximate, independent reference for ``sepsisrl validate --mimic-derived``.

Usage:  python bench/mimic_derived_reference.py --source MIMIC_DIR --out DIR

Writes ``DIR/<table>.parquet`` in the layout of five of MIT-LCP/mimic-code's MIMIC-IV derived
tables (schema ``mimiciv_derived``): suspicion_of_infection, norepinephrine_equivalent_dose,
urine_output, sofa and sepsis3, computed from a raw MIMIC-IV folder (``hosp/``, ``icu/``;
.csv.gz) with DuckDB queries written for this project from the definitions mimic-code
publishes in ``mimic-iv/concepts/`` (no mimic-code SQL is copied or run). It exists because
the MIMIC-IV demo as shipped here has no chartevents, so mimic-code itself cannot be run on
it, and a user without the derived tables can still try the command.

THIS IS AN APPROXIMATION, NOT mimic-code. Where it departs from mimic-code:

- hourly grid: mimic-code anchors it at the first heart rate (``icustay_times``, chartevents
  item 220045); without a heart rate this uses ``icustays.intime`` / ``outtime`` instead;
- antibiotics: mimic-code's exclusions (drug_type BASE; eye, ear and topical routes; creams,
  gels, ophthalmic ointments, desensitisation) are applied, but the list of antibiotic names
  is the project's (``sepsis.antibiotic_patterns`` in configs/build.yaml), not mimic-code's;
- SOFA respiration: PaO2 / FiO2 of arterial gases (specimen 'ART.') with the gas's own FiO2
  (lab 50816) or else the last charted FiO2 (223835) of the 4 h before; ventilation status
  is not derived (mimic-code's ``ventilation`` concept needs chartevents), so every ratio
  counts as not ventilated and respiration scores at most 2;
- SOFA CNS (GCS) is not computed, and mean arterial pressure only from chartevents items
  220052 / 220181 / 225312 when present (absent in the demo);
- urine output rate: mimic-code's 24-h sum and observed-time rule (22-30 h, rescaled to 24 h)
  with the time since the previous urine row, the first one counted from the first heart
  rate; as in mimic-code, a stay without a heart rate has no rate (so on the demo without
  chartevents the renal score is creatinine only);
- vasopressors: the per-agent rate conversions of mimic-code's medication concepts (raw
  ``rate`` except norepinephrine mg/kg/min x 1000, phenylephrine mcg/min / weight,
  vasopressin units/min x 60 to units/hour); segments as in its ``vasoactive_agent``.

Run time on the demo (100 patients): about a second.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import duckdb

from sepsisrl.dataset.config import load_build_config

URINE_ITEMS = (226559, 226560, 226561, 226584, 226563, 226564, 226565, 226567, 226557, 226558,
               227488, 227489)  # fmt: skip
IRRIGANT_IN = 227488
AGENTS = {  # name: (itemid, rate expression in mimic-code's unit)
    "dobutamine": (221653, "rate"),
    "dopamine": (221662, "rate"),
    "epinephrine": (221289, "rate"),
    "norepinephrine": (221906, "CASE WHEN rateuom = 'mg/kg/min' THEN rate * 1000.0 ELSE rate END"),
    "phenylephrine": (221749, "CASE WHEN rateuom = 'mcg/min' THEN rate / patientweight ELSE rate END"),
    "vasopressin": (222315, "CASE WHEN rateuom = 'units/min' THEN rate * 60.0 ELSE rate END"),
    "milrinone": (221986, "rate"),
}  # fmt: skip


def _read(con: duckdb.DuckDBPyConnection, source: Path, table: str) -> None:
    name = table.split("/")[1]
    path = next(source.glob(f"{table}.csv*"), None)
    if path is None:
        raise SystemExit(f"{source / table}.csv.gz not found")
    if name == "chartevents":  # typed, so that a header-only file still reads
        con.execute(
            f"""CREATE VIEW chartevents AS SELECT CAST(subject_id AS BIGINT) AS subject_id,
                       CAST(stay_id AS BIGINT) AS stay_id, CAST(charttime AS TIMESTAMP) AS charttime,
                       CAST(itemid AS BIGINT) AS itemid, TRY_CAST(valuenum AS DOUBLE) AS valuenum
                FROM read_csv('{path}', header = true, all_varchar = true)"""
        )
        return
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_csv_auto('{path}')")


def build_reference(source: Path, out: Path) -> dict[str, int]:
    con = duckdb.connect()
    for t in ("hosp/prescriptions", "hosp/microbiologyevents", "hosp/labevents",
              "icu/icustays", "icu/inputevents", "icu/outputevents", "icu/chartevents"):  # fmt: skip
        _read(con, source, t)
    patterns = "|".join(load_build_config().sepsis.antibiotic_patterns)

    # --- antibiotic and suspicion_of_infection ------------------------------------------
    con.execute(
        f"""CREATE TABLE antibiotic AS
        SELECT p.subject_id, p.hadm_id, i.stay_id, p.drug AS antibiotic, p.route,
               CAST(p.starttime AS TIMESTAMP) AS starttime, CAST(p.stoptime AS TIMESTAMP) AS stoptime
        FROM prescriptions p
        LEFT JOIN icustays i ON i.hadm_id = p.hadm_id
             AND CAST(p.starttime AS TIMESTAMP) >= i.intime AND CAST(p.starttime AS TIMESTAMP) < i.outtime
        WHERE coalesce(p.drug_type, '') <> 'BASE' AND p.starttime IS NOT NULL
          AND p.route NOT IN ('OU', 'OS', 'OD', 'AU', 'AS', 'AD', 'TP')
          AND lower(p.route) NOT LIKE '%ear%' AND lower(p.route) NOT LIKE '%eye%'
          AND NOT regexp_matches(lower(p.drug), 'cream|desensitization|ophth oint|gel')
          AND regexp_matches(lower(p.drug), '{patterns}')"""
    )
    con.execute(
        """CREATE TABLE suspicion_of_infection AS
        WITH abx AS (
            SELECT *, starttime AS antibiotic_time, CAST(starttime AS DATE) AS antibiotic_date,
                   row_number() OVER (PARTITION BY subject_id ORDER BY starttime, stoptime, antibiotic)
                       AS ab_id
            FROM antibiotic
        ), spec AS (  -- one row per specimen
            SELECT micro_specimen_id, max(subject_id) AS subject_id,
                   CAST(max(chartdate) AS DATE) AS chartdate,
                   CAST(max(charttime) AS TIMESTAMP) AS charttime,
                   max(spec_type_desc) AS specimen,
                   max(CASE WHEN org_name IS NOT NULL AND org_name <> ''
                             AND coalesce(org_itemid, 0) <> 90856 THEN 1 ELSE 0 END) AS positive
            FROM microbiologyevents GROUP BY micro_specimen_id
        ), before_abx AS (  -- culture first: antibiotic within 72 h (date-only: 3 days)
            SELECT a.subject_id, a.ab_id, c.specimen, c.positive,
                   coalesce(c.charttime, CAST(c.chartdate AS TIMESTAMP)) AS culture_time,
                   row_number() OVER (PARTITION BY a.subject_id, a.ab_id
                                      ORDER BY c.chartdate, c.charttime NULLS LAST) AS rn
            FROM abx a JOIN spec c ON c.subject_id = a.subject_id
             AND ((c.charttime IS NOT NULL AND a.antibiotic_time > c.charttime
                   AND a.antibiotic_time <= c.charttime + INTERVAL 72 HOUR)
               OR (c.charttime IS NULL AND a.antibiotic_date >= c.chartdate
                   AND a.antibiotic_date <= c.chartdate + INTERVAL 3 DAY))
        ), after_abx AS (  -- antibiotic first: culture within 24 h (date-only: same or next day)
            SELECT a.subject_id, a.ab_id, c.specimen, c.positive,
                   coalesce(c.charttime, CAST(c.chartdate AS TIMESTAMP)) AS culture_time,
                   row_number() OVER (PARTITION BY a.subject_id, a.ab_id
                                      ORDER BY c.chartdate, c.charttime NULLS LAST) AS rn
            FROM abx a JOIN spec c ON c.subject_id = a.subject_id
             AND ((c.charttime IS NOT NULL AND a.antibiotic_time >= c.charttime - INTERVAL 24 HOUR
                   AND a.antibiotic_time < c.charttime)
               OR (c.charttime IS NULL AND a.antibiotic_date >= c.chartdate - INTERVAL 1 DAY
                   AND a.antibiotic_date <= c.chartdate))
        )
        SELECT a.subject_id, a.stay_id, a.hadm_id, a.ab_id, a.antibiotic, a.antibiotic_time,
               CAST(b.subject_id IS NOT NULL OR f.subject_id IS NOT NULL AS INTEGER)
                   AS suspected_infection,
               CASE WHEN b.subject_id IS NOT NULL OR f.subject_id IS NOT NULL
                    THEN coalesce(b.culture_time, a.antibiotic_time) END AS suspected_infection_time,
               coalesce(b.culture_time, f.culture_time) AS culture_time,
               coalesce(b.specimen, f.specimen) AS specimen,
               coalesce(b.positive, f.positive) AS positive_culture
        FROM abx a
        LEFT JOIN before_abx b ON b.subject_id = a.subject_id AND b.ab_id = a.ab_id AND b.rn = 1
        LEFT JOIN after_abx f ON f.subject_id = a.subject_id AND f.ab_id = a.ab_id AND f.rn = 1"""
    )

    # --- vasoactive agents and norepinephrine_equivalent_dose ---------------------------
    for name, (itemid, rate) in AGENTS.items():
        con.execute(
            f"""CREATE TABLE {name} AS SELECT stay_id, {rate} AS vaso_rate,
                       CAST(starttime AS TIMESTAMP) AS starttime, CAST(endtime AS TIMESTAMP) AS endtime
                FROM inputevents WHERE itemid = {itemid}"""
        )
    bounds = " UNION ".join(
        f"SELECT stay_id, starttime AS t FROM {n} UNION SELECT stay_id, endtime FROM {n}"
        for n in AGENTS
    )
    joins = "\n".join(
        f"LEFT JOIN {n} ON {n}.stay_id = s.stay_id AND s.starttime >= {n}.starttime "
        f"AND s.endtime <= {n}.endtime"
        for n in AGENTS
    )
    con.execute(
        f"""CREATE TABLE vasoactive_agent AS
        WITH seg AS (
            SELECT * FROM (SELECT stay_id, t AS starttime,
                                  lead(t) OVER (PARTITION BY stay_id ORDER BY t) AS endtime
                           FROM ({bounds})) WHERE endtime IS NOT NULL
        )
        SELECT s.stay_id, s.starttime, s.endtime,
               {", ".join(f"{n}.vaso_rate AS {n}" for n in AGENTS)}
        FROM seg s {joins}"""
    )
    con.execute(
        """CREATE TABLE norepinephrine_equivalent_dose AS
        SELECT stay_id, starttime, endtime,
               round(coalesce(norepinephrine, 0) + coalesce(epinephrine, 0)
                     + coalesce(phenylephrine / 10, 0) + coalesce(dopamine / 100, 0)
                     + coalesce(vasopressin * 2.5 / 60, 0), 4) AS norepinephrine_equivalent_dose
        FROM vasoactive_agent
        WHERE norepinephrine IS NOT NULL OR epinephrine IS NOT NULL OR phenylephrine IS NOT NULL
           OR dopamine IS NOT NULL OR vasopressin IS NOT NULL"""
    )

    # --- urine_output --------------------------------------------------------------------
    con.execute(
        f"""CREATE TABLE urine_output AS
        SELECT stay_id, CAST(charttime AS TIMESTAMP) AS charttime,
               sum(CASE WHEN itemid = {IRRIGANT_IN} AND value > 0 THEN -value ELSE value END)
                   AS urineoutput
        FROM outputevents WHERE itemid IN {URINE_ITEMS} GROUP BY 1, 2"""
    )

    # --- hourly sofa -------------------------------------------------------------------------
    con.execute(
        """CREATE TABLE anchor AS  -- first / last heart rate, else the ICU admission
        SELECT i.stay_id, i.hadm_id, i.subject_id,
               coalesce(h.first_hr, i.intime) AS intime_hr, coalesce(h.last_hr, i.outtime) AS outtime_hr
        FROM icustays i LEFT JOIN (
            SELECT stay_id, min(CAST(charttime AS TIMESTAMP)) AS first_hr,
                   max(CAST(charttime AS TIMESTAMP)) AS last_hr
            FROM chartevents WHERE itemid = 220045 GROUP BY 1) h USING (stay_id)"""
    )
    con.execute(
        """CREATE TABLE hours AS
        SELECT stay_id, hadm_id, subject_id, hr, end0 + to_hours(hr) AS endtime,
               end0 + to_hours(hr - 1) AS starttime
        FROM (
            SELECT *, unnest(range(-24, CAST(ceil(epoch(outtime_hr - intime_hr) / 3600.0) AS BIGINT) + 1)) AS hr,
                   CASE WHEN date_trunc('hour', intime_hr) = intime_hr THEN intime_hr
                        ELSE date_trunc('hour', intime_hr) + INTERVAL 1 HOUR END AS end0
            FROM anchor)"""
    )
    con.execute(
        """CREATE TABLE gas AS  -- arterial PaO2 / FiO2 per specimen (FiO2 in %)
        WITH g AS (
            SELECT specimen_id, max(subject_id) AS subject_id, CAST(max(charttime) AS TIMESTAMP) AS charttime,
                   max(CASE WHEN itemid = 52033 THEN value END) AS specimen,
                   max(CASE WHEN itemid = 50821 THEN valuenum END) AS po2,
                   max(CASE WHEN itemid = 50816 THEN CASE
                       WHEN valuenum > 20 AND valuenum <= 100 THEN valuenum
                       WHEN valuenum > 0.2 AND valuenum <= 1 THEN valuenum * 100 END END) AS fio2
            FROM labevents WHERE itemid IN (52033, 50821, 50816) GROUP BY specimen_id
        ), charted AS (
            SELECT subject_id, CAST(charttime AS TIMESTAMP) AS charttime,
                   max(CASE WHEN valuenum > 0.2 AND valuenum <= 1 THEN valuenum * 100
                            WHEN valuenum >= 20 AND valuenum <= 100 THEN valuenum END) AS fio2
            FROM chartevents WHERE itemid = 223835 AND valuenum > 0 AND valuenum <= 100
            GROUP BY 1, 2
        ), last_charted AS (
            SELECT g.specimen_id, arg_max(c.fio2, c.charttime) AS fio2
            FROM g JOIN charted c ON c.subject_id = g.subject_id AND c.fio2 > 0
             AND c.charttime >= g.charttime - INTERVAL 4 HOUR AND c.charttime <= g.charttime
            GROUP BY 1
        )
        SELECT g.subject_id, g.charttime,
               100 * g.po2 / coalesce(g.fio2, l.fio2) AS pao2fio2ratio
        FROM g LEFT JOIN last_charted l USING (specimen_id)
        WHERE g.po2 IS NOT NULL AND g.specimen = 'ART.'"""
    )
    con.execute(
        """CREATE TABLE uo_rate AS  -- 24-h urine and the hours it covers, per urine row
        WITH u AS (
            SELECT u.stay_id, u.charttime, u.urineoutput,
                   epoch(u.charttime - coalesce(lag(u.charttime) OVER w, a.first_hr)) / 60.0 AS minutes
            FROM urine_output u JOIN (  -- as mimic-code: only stays with a heart rate
                SELECT c.stay_id, min(c.charttime) AS first_hr
                FROM chartevents c JOIN icustays i USING (stay_id)
                WHERE c.itemid = 220045 AND c.charttime > i.intime - INTERVAL 1 MONTH
                  AND c.charttime < i.outtime + INTERVAL 1 MONTH
                GROUP BY 1) a USING (stay_id)
            WINDOW w AS (PARTITION BY u.stay_id ORDER BY u.charttime)
        )
        SELECT a.stay_id, a.charttime, sum(b.urineoutput) AS uo_24h, sum(b.minutes) / 60.0 AS tm_24h
        FROM u a JOIN u b ON b.stay_id = a.stay_id AND b.charttime <= a.charttime
         AND a.charttime <= b.charttime + INTERVAL 23 HOUR
        GROUP BY 1, 2"""
    )
    con.execute(
        """CREATE TABLE labs AS
        SELECT hadm_id, CAST(charttime AS TIMESTAMP) AS charttime, itemid, valuenum
        FROM labevents WHERE itemid IN (50885, 50912, 51265) AND valuenum IS NOT NULL"""
    )
    con.execute(
        """CREATE TABLE sofa_components AS
        SELECT h.stay_id, h.hr, h.starttime, h.endtime,
            (SELECT min(g.pao2fio2ratio) FROM gas g WHERE g.subject_id = h.subject_id
               AND g.charttime > h.starttime AND g.charttime <= h.endtime) AS pao2fio2ratio_novent,
            CAST(NULL AS DOUBLE) AS pao2fio2ratio_vent,
            (SELECT max(e.vaso_rate) FROM epinephrine e WHERE e.stay_id = h.stay_id
               AND h.endtime > e.starttime AND h.endtime <= e.endtime) AS rate_epinephrine,
            (SELECT max(e.vaso_rate) FROM norepinephrine e WHERE e.stay_id = h.stay_id
               AND h.endtime > e.starttime AND h.endtime <= e.endtime) AS rate_norepinephrine,
            (SELECT max(e.vaso_rate) FROM dopamine e WHERE e.stay_id = h.stay_id
               AND h.endtime > e.starttime AND h.endtime <= e.endtime) AS rate_dopamine,
            (SELECT max(e.vaso_rate) FROM dobutamine e WHERE e.stay_id = h.stay_id
               AND h.endtime > e.starttime AND h.endtime <= e.endtime) AS rate_dobutamine,
            (SELECT min(c.valuenum) FROM chartevents c WHERE c.stay_id = h.stay_id
               AND c.itemid IN (220052, 220181, 225312) AND c.valuenum > 0 AND c.valuenum < 300
               AND CAST(c.charttime AS TIMESTAMP) > h.starttime
               AND CAST(c.charttime AS TIMESTAMP) <= h.endtime) AS meanbp_min,
            CAST(NULL AS DOUBLE) AS gcs_min,
            (SELECT max(CASE WHEN r.tm_24h BETWEEN 22 AND 30 THEN r.uo_24h / r.tm_24h * 24 END)
               FROM uo_rate r WHERE r.stay_id = h.stay_id
               AND r.charttime > h.starttime AND r.charttime <= h.endtime) AS uo_24hr,
            (SELECT max(l.valuenum) FROM labs l WHERE l.hadm_id = h.hadm_id AND l.itemid = 50885
               AND l.charttime > h.starttime AND l.charttime <= h.endtime) AS bilirubin_max,
            (SELECT max(l.valuenum) FROM labs l WHERE l.hadm_id = h.hadm_id AND l.itemid = 50912
               AND l.charttime > h.starttime AND l.charttime <= h.endtime) AS creatinine_max,
            (SELECT min(l.valuenum) FROM labs l WHERE l.hadm_id = h.hadm_id AND l.itemid = 51265
               AND l.charttime > h.starttime AND l.charttime <= h.endtime) AS platelet_min
        FROM hours h"""
    )
    con.execute(
        """CREATE TABLE sofa_scored AS
        SELECT *,
            CASE WHEN pao2fio2ratio_vent < 100 THEN 4 WHEN pao2fio2ratio_vent < 200 THEN 3
                 WHEN least(pao2fio2ratio_vent, pao2fio2ratio_novent) < 300 THEN 2
                 WHEN least(pao2fio2ratio_vent, pao2fio2ratio_novent) < 400 THEN 1
                 WHEN coalesce(pao2fio2ratio_vent, pao2fio2ratio_novent) IS NOT NULL THEN 0
            END AS respiration,
            CASE WHEN platelet_min < 20 THEN 4 WHEN platelet_min < 50 THEN 3
                 WHEN platelet_min < 100 THEN 2 WHEN platelet_min < 150 THEN 1
                 WHEN platelet_min IS NOT NULL THEN 0 END AS coagulation,
            CASE WHEN bilirubin_max >= 12 THEN 4 WHEN bilirubin_max >= 6 THEN 3
                 WHEN bilirubin_max >= 2 THEN 2 WHEN bilirubin_max >= 1.2 THEN 1
                 WHEN bilirubin_max IS NOT NULL THEN 0 END AS liver,
            -- any running epinephrine / norepinephrine (even at 0) scores at least 3
            CASE WHEN rate_dopamine > 15 OR rate_epinephrine > 0.1 OR rate_norepinephrine > 0.1 THEN 4
                 WHEN rate_dopamine > 5 OR rate_epinephrine IS NOT NULL
                      OR rate_norepinephrine IS NOT NULL THEN 3
                 WHEN rate_dopamine > 0 OR rate_dobutamine > 0 THEN 2
                 WHEN meanbp_min < 70 THEN 1
                 WHEN coalesce(meanbp_min, rate_dopamine, rate_dobutamine, rate_epinephrine,
                               rate_norepinephrine) IS NOT NULL THEN 0 END AS cardiovascular,
            CASE WHEN gcs_min < 6 THEN 4 WHEN gcs_min < 10 THEN 3 WHEN gcs_min < 13 THEN 2
                 WHEN gcs_min < 15 THEN 1 WHEN gcs_min IS NOT NULL THEN 0 END AS cns,
            CASE WHEN creatinine_max >= 5 OR uo_24hr < 200 THEN 4
                 WHEN creatinine_max >= 3.5 OR uo_24hr < 500 THEN 3
                 WHEN creatinine_max >= 2 THEN 2 WHEN creatinine_max >= 1.2 THEN 1
                 WHEN coalesce(uo_24hr, creatinine_max) IS NOT NULL THEN 0 END AS renal
        FROM sofa_components"""
    )
    parts = ("respiration", "coagulation", "liver", "cardiovascular", "cns", "renal")
    windowed = ", ".join(f"coalesce(max({p}) OVER w, 0) AS {p}_24hours" for p in parts)
    total = " + ".join(f"coalesce(max({p}) OVER w, 0)" for p in parts)
    con.execute(
        f"""CREATE TABLE sofa AS SELECT * FROM (
            SELECT *, {windowed}, {total} AS sofa_24hours FROM sofa_scored
            WINDOW w AS (PARTITION BY stay_id ORDER BY hr ROWS BETWEEN 23 PRECEDING AND CURRENT ROW)
        ) WHERE hr >= 0"""
    )

    # --- sepsis3 --------------------------------------------------------------------------
    con.execute(
        f"""CREATE TABLE sepsis3 AS
        WITH cand AS (
            SELECT s.subject_id, s.stay_id, s.antibiotic_time, s.culture_time,
                   s.suspected_infection_time, f.endtime AS sofa_time, f.sofa_24hours AS sofa_score,
                   {", ".join(f"f.{p}_24hours AS {p}" for p in parts)},
                   row_number() OVER (PARTITION BY s.stay_id ORDER BY s.suspected_infection_time,
                                      s.antibiotic_time, s.culture_time, f.endtime) AS rn
            FROM suspicion_of_infection s
            JOIN sofa f ON f.stay_id = s.stay_id AND f.sofa_24hours >= 2
             AND f.endtime >= s.suspected_infection_time - INTERVAL 48 HOUR
             AND f.endtime <= s.suspected_infection_time + INTERVAL 24 HOUR
            WHERE s.stay_id IS NOT NULL AND s.suspected_infection = 1
        )
        SELECT * EXCLUDE (rn), true AS sepsis3 FROM cand WHERE rn = 1"""
    )
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for table in ("suspicion_of_infection", "norepinephrine_equivalent_dose", "urine_output",
                  "sofa", "sepsis3"):  # fmt: skip
        con.execute(f"COPY {table} TO '{out / table}.parquet' (FORMAT parquet)")
        counts[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    con.close()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, required=True, help="MIMIC-IV folder (hosp/, icu/)")
    ap.add_argument("--out", type=Path, required=True, help="folder for <table>.parquet")
    args = ap.parse_args()
    started = time.perf_counter()
    counts = build_reference(args.source, args.out)
    for table, n in counts.items():
        print(f"{table:<32} {n:>8} rows")
    print(
        f"written to {args.out} in {time.perf_counter() - started:.1f} s (an approximation: "
        "see this script's docstring)"
    )


if __name__ == "__main__":
    main()
