"""Episodes stage: the 4-hour decision grid around each cohort stay's Sepsis-3 onset.

Decision times tau_k = onset - 24 h + 4 h * k, k = 0..17 (docs/clinical.md, "Episodes"). A step
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
from sepsisrl.dataset.sqlfiles import copy_to, parquet_view, render


def run_episodes(cohort_dir: Path, cfg: BuildConfig, out: Path) -> dict[str, Any]:
    con = connect(cfg, out.parent)
    e = cfg.episodes
    parquet_view(con, "cohort", cohort_dir / "cohort.parquet")
    con.execute(
        render(
            "episodes",
            hours_before_onset=e.hours_before_onset,
            step_hours=e.step_hours,
            n_steps=e.n_steps,
            last_k=e.n_steps - 1,
        )
    )
    copy_to(
        con, "SELECT * FROM episodes WHERE n_steps > 0 ORDER BY stay_id", out / "episodes.parquet"
    )
    copy_to(
        con,
        "SELECT subject_id, stay_id, step, grid_k, tau FROM steps ORDER BY stay_id, step",
        out / "steps.parquet",
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
