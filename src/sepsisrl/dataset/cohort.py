"""Cohort stage: rules 1-5 of docs/clinical.md, "Cohort", with counts per rule.

Output (``cohort/``): cohort.parquet (one qualifying ICU stay per patient, with onset and
90-day outcome), excluded.parquet (stay_id, first failed rule) and audit.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.ingest import connect
from sepsisrl.dataset.sqlfiles import Raw, copy_to, parquet_view, render

RULES = (
    "1_not_adult",
    "2_missing_demographics",
    "3_icu_stay_under_min_hours",
    "4_no_sepsis3",
    "4_sepsis3_onset_outside_icu_window",
    "5_not_first_qualifying_stay",
    "5_not_first_icu_stay",
)


#: Age at the stay (cohort.age), over patients ``p`` and admissions ``a``. MIMIC-IV shifts
#: dates per patient: ``anchor_age`` is the age in the shifted ``anchor_year``, so the age at an
#: admission adds the years between them (mimic-code's ``age`` concept).
AGE = {
    "admission_year": "p.anchor_age + (year(a.admittime) - p.anchor_year)",
    "anchor_age": "p.anchor_age",
}


def cohort_sql(cfg: BuildConfig) -> str:
    """The cohort rules and the 90-day outcome over views icustays, patients, admissions and
    onset (also used by the truth harness for the outcome of re-simulated patients)."""
    c = cfg.cohort
    return render(
        "cohort",
        min_age=c.min_age,
        max_age_clause=Raw(f"age > {c.max_age}" if c.max_age is not None else "false"),
        age_expr=Raw(AGE[c.age]),
        min_los=c.min_icu_los_hours,
        before_intime=c.onset_window_before_intime_hours,
        mortality_days=cfg.rewards.mortality_days,
        first_overall=c.first_stay == "first_overall",
    )


def run_cohort(ingest_dir: Path, sepsis_dir: Path, cfg: BuildConfig, out: Path) -> dict[str, Any]:
    con = connect(cfg, out.parent)
    for name in ("icustays", "patients", "admissions"):
        parquet_view(con, name, ingest_dir / f"{name}.parquet")
    parquet_view(con, "onset", sepsis_dir / "onset.parquet")
    c = cfg.cohort
    con.execute(f"CREATE TABLE ruled AS {cohort_sql(cfg)}")
    copy_to(
        con,
        "SELECT * EXCLUDE (failed_rule, stay_rank) FROM ruled WHERE failed_rule IS NULL "
        "ORDER BY stay_id",
        out / "cohort.parquet",
    )
    copy_to(
        con,
        "SELECT stay_id, subject_id, failed_rule FROM ruled WHERE failed_rule IS NOT NULL "
        "ORDER BY stay_id",
        out / "excluded.parquet",
    )
    counts = dict(
        con.execute(
            "SELECT failed_rule, count(*) FROM ruled WHERE failed_rule IS NOT NULL GROUP BY 1"
        ).fetchall()
    )
    n_total = con.execute("SELECT count(*) FROM ruled").fetchone()[0]
    n_cohort = con.execute("SELECT count(*) FROM ruled WHERE failed_rule IS NULL").fetchone()[0]
    earlier = con.execute(
        "SELECT count(*) FROM ruled WHERE failed_rule IS NULL AND stay_rank > 1"
    ).fetchone()[0]
    mortality = con.execute(
        "SELECT avg(CAST(died_90d AS DOUBLE)) FROM ruled WHERE failed_rule IS NULL"
    ).fetchone()[0]
    septic = con.execute(
        "SELECT count(*) FROM ruled WHERE failed_rule IS NULL OR failed_rule LIKE '5_%'"
    ).fetchone()[0]
    con.close()
    rule5 = (
        "5_not_first_icu_stay" if c.first_stay == "first_overall" else "5_not_first_qualifying_stay"
    )
    flow: list[dict[str, Any]] = [{"step": "ICU stays", "remaining": n_total}]
    remaining = n_total
    for rule in (*RULES[:5], rule5):
        remaining -= counts.get(rule, 0)
        flow.append({"rule": rule, "excluded": counts.get(rule, 0), "remaining": remaining})
    return {
        "icu_stays": n_total,
        "cohort_stays": n_cohort,
        "sepsis3_stays_in_icu_window": septic,
        "excluded_by_rule": {r: counts.get(r, 0) for r in RULES if r in counts},
        "flow": flow,
        "patients_with_earlier_non_qualifying_stay": earlier,
        "first_stay_rule": c.first_stay,
        "mortality_90d": round(float(mortality or 0.0), 4),
    }
