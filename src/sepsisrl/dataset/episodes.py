"""Episodes stage: the 4-hour decision grid around each cohort stay's Sepsis-3 onset.

Decision times tau_k = onset - 24 h + 4 h * k, k = 0..17 (clinical_spec.md section 4). A step
is kept when tau_k >= intime (a state needs ICU data) and tau_k is before the end of the ICU
stay (discharge or death); the episode ends at the last kept step, or at tau_17.

Output (``episodes/``): episodes.parquet (one row per stay: first tau, number of steps, end
reason), steps.parquet (stay_id, step, grid_k, tau) and audit.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.ingest import connect


def run_episodes(cohort_dir: Path, cfg: BuildConfig, out: Path) -> dict[str, Any]:
    con = connect(cfg, out.parent)
    e = cfg.episodes
    con.execute(
        f"CREATE VIEW cohort AS SELECT * FROM read_parquet('{cohort_dir / 'cohort.parquet'}')"
    )
    con.execute(
        f"""CREATE TABLE grid AS
            SELECT c.subject_id, c.stay_id, c.intime, c.outtime, c.onset_time, c.death_time,
                   least(c.outtime, coalesce(c.death_time, c.outtime)) AS end_time,
                   k AS grid_k,
                   c.onset_time - INTERVAL {e.hours_before_onset} HOUR + to_hours(k * {e.step_hours}) AS tau
            FROM cohort c, range({e.n_steps}) r(k)"""
    )
    con.execute(
        """CREATE TABLE steps AS
           SELECT subject_id, stay_id, grid_k, tau,
                  CAST(row_number() OVER (PARTITION BY stay_id ORDER BY grid_k) - 1 AS SMALLINT) AS step
           FROM grid
           WHERE tau >= intime AND tau < end_time"""
    )
    con.execute(
        f"""CREATE TABLE episodes AS
            WITH agg AS (
                SELECT stay_id, min(tau) AS tau0, max(tau) AS tau_last, count(*) AS n_steps,
                       max(grid_k) AS last_k
                FROM steps GROUP BY stay_id
            )
            SELECT c.subject_id, c.stay_id, c.intime, c.outtime, c.onset_time, c.death_time,
                   a.tau0, a.tau_last, coalesce(a.n_steps, 0) AS n_steps,
                   CASE
                       WHEN a.n_steps IS NULL THEN 'no_decision_time_in_icu'
                       WHEN a.last_k = {e.n_steps - 1} THEN 'horizon'
                       WHEN c.death_time IS NOT NULL AND c.death_time <= c.outtime THEN 'death_in_icu'
                       ELSE 'icu_discharge'
                   END AS end_reason
            FROM cohort c LEFT JOIN agg a USING (stay_id)"""
    )
    con.execute(
        f"COPY (SELECT * FROM episodes WHERE n_steps > 0 ORDER BY stay_id) TO '{out / 'episodes.parquet'}' (FORMAT parquet)"
    )
    con.execute(
        f"COPY (SELECT subject_id, stay_id, step, grid_k, tau FROM steps ORDER BY stay_id, step) "
        f"TO '{out / 'steps.parquet'}' (FORMAT parquet)"
    )
    reasons = dict(con.execute("SELECT end_reason, count(*) FROM episodes GROUP BY 1").fetchall())
    stats = con.execute(
        "SELECT count(*), sum(n_steps), avg(n_steps) FROM episodes WHERE n_steps > 0"
    ).fetchone()
    hist = dict(
        con.execute(
            "SELECT n_steps, count(*) FROM episodes WHERE n_steps > 0 GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )
    con.close()
    return {
        "episodes": stats[0],
        "transitions": int(stats[1] or 0),
        "mean_steps": round(float(stats[2] or 0.0), 3),
        "excluded_no_decision_time_in_icu": reasons.pop("no_decision_time_in_icu", 0),
        "end_reason": reasons,
        "steps_histogram": {str(k): v for k, v in hist.items()},
        "grid": f"tau_k = onset - {e.hours_before_onset} h + {e.step_hours} h * k, k = 0..{e.n_steps - 1}",
    }
