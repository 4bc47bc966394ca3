"""Sepsis stage: suspected infection, hourly SOFA and Sepsis-3 onset for every ICU stay.

Output (``sepsis/``): suspicion.parquet, sofa_hourly.parquet, onset.parquet, unusable.parquet
and audit.json (counts per rule, component missingness).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.ingest import connect
from sepsisrl.dataset.sofa import render_sofa
from sepsisrl.dataset.sqlfiles import Raw, copy_to, parquet_view, render

SOFA_COMPONENTS = ("respiration", "coagulation", "liver", "cardiovascular", "cns", "renal")

#: The suspected infections of an ICU stay ``i`` (``s``: suspicion), per sepsis.si_attribution.
SI_JOIN = {
    "icu_stay": "s.stay_id = i.stay_id",
    "admission": "s.hadm_id = i.hadm_id",
}

#: The order in which the cultures paired with one antibiotic are ranked (the first is kept),
#: per sepsis.date_only_culture.
CULTURE_ORDER = {
    "midnight": "[epoch(date_trunc('day', culture_time)), CAST(date_only AS INTEGER), "
    "epoch(culture_time)]",
    "day_overlap": "[epoch(culture_time), CAST(date_only AS INTEGER)]",
}


def run_sepsis(ingest_dir: Path, meas_dir: Path, cfg: BuildConfig, out: Path) -> dict[str, Any]:
    con = connect(cfg, out.parent)
    for name, folder in (
        ("icustays", ingest_dir),
        ("antibiotics", ingest_dir),
        ("cultures", ingest_dir),
        ("measurements", meas_dir),
        ("infusions", meas_dir),
        ("urine", meas_dir),
        ("ventilation", meas_dir),
    ):
        parquet_view(con, name, folder / f"{name}.parquet")
    s = cfg.sepsis
    si_sql = render(
        "suspicion_of_infection",
        culture_first=s.culture_before_antibiotic_hours,
        abx_first=s.antibiotic_before_culture_hours,
        midnight=s.date_only_culture == "midnight",
        order_key=Raw(CULTURE_ORDER[s.date_only_culture]),
    )
    con.execute(f"CREATE TABLE suspicion AS {si_sql}")
    copy_to(
        con,
        "SELECT * FROM suspicion ORDER BY subject_id, si_time, abx_time, hadm_id, culture_time",
        out / "suspicion.parquet",
    )
    sofa_sql = render_sofa(cfg)  # conventions: cfg.sofa (dataset/sofa.py)
    total = " + ".join(f"sofa_{c}" for c in SOFA_COMPONENTS)
    con.execute(f"CREATE TABLE sofa_hourly AS SELECT *, {total} AS sofa FROM (\n{sofa_sql}\n)")
    copy_to(
        con,
        "SELECT * FROM sofa_hourly ORDER BY stay_id, hr",
        out / "sofa_hourly.parquet",
        "FORMAT parquet, COMPRESSION zstd",
    )
    onset_expr = Raw("least(si_time, sofa_time)" if s.onset == "min" else "si_time")
    onset_sql = render(
        "sepsis_onset",
        threshold=s.sofa_threshold,
        before=s.sofa_before_si_hours,
        after=s.sofa_after_si_hours,
        onset_expr=onset_expr,
        si_join=Raw(SI_JOIN[s.si_attribution]),
        sofa_time=Raw(f"{s.sofa_time}time"),
        pre_icu_hours=s.onset_sofa_hours_before_intime,
    )
    con.execute(f"CREATE TABLE onset AS {onset_sql}")
    copy_to(con, "SELECT * FROM onset ORDER BY stay_id", out / "onset.parquet")
    # stays the definition could not be evaluated on, with the reason
    copy_to(con, render("unusable_stays"), out / "unusable.parquet")
    n_stays = con.execute("SELECT count(*) FROM icustays").fetchone()[0]
    missing = con.execute(
        "SELECT "
        + ", ".join(f"avg(CAST({c}_missing AS DOUBLE))" for c in SOFA_COMPONENTS)
        + " FROM sofa_hourly WHERE hr >= 0"
    ).fetchone()
    si_stays = con.execute(
        f"SELECT count(DISTINCT i.stay_id) FROM icustays i JOIN suspicion s ON {SI_JOIN[s.si_attribution]}"
    ).fetchone()[0]
    info = {
        "icu_stays": n_stays,
        "antibiotic_orders": con.execute("SELECT count(*) FROM antibiotics").fetchone()[0],
        "culture_specimens": con.execute("SELECT count(*) FROM cultures").fetchone()[0],
        "date_only_cultures": con.execute(
            "SELECT count(*) FROM cultures WHERE charttime IS NULL"
        ).fetchone()[0],
        "suspicion_events": con.execute("SELECT count(*) FROM suspicion").fetchone()[0],
        "stays_with_suspicion": si_stays,
        "stays_sepsis3_any_time": con.execute("SELECT count(*) FROM onset").fetchone()[0],
        "sofa_hours": con.execute("SELECT count(*) FROM sofa_hourly").fetchone()[0],
        "sofa_component_missing_fraction_icu_hours": {
            c: round(float(v or 0.0), 4) for c, v in zip(SOFA_COMPONENTS, missing, strict=True)
        },
        "unusable_stays": con.execute(
            "SELECT count(*) FROM read_parquet($path)", {"path": str(out / "unusable.parquet")}
        ).fetchone()[0],
        "definition": {
            "suspicion": f"culture then antibiotic within {s.culture_before_antibiotic_hours} h, or "
            f"antibiotic then culture within {s.antibiotic_before_culture_hours} h",
            "date_only_culture": s.date_only_culture,
            "si_attribution": "SIs whose antibiotic started during the ICU stay"
            if s.si_attribution == "icu_stay"
            else "every SI of the stay's hospital admission",
            "onset": f"first SOFA hour ({s.sofa_time} time) with SOFA >= {s.sofa_threshold} in "
            f"[SI - {s.sofa_before_si_hours} h, SI + {s.sofa_after_si_hours} h], from "
            f"{s.onset_sofa_hours_before_intime} h before ICU admission; onset = "
            f"{'min(SI, that hour)' if s.onset == 'min' else 'SI'}",
        },
    }
    con.close()
    return info
