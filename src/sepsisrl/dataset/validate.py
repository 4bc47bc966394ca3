"""Compare a built workspace with a synthetic world's ground truth (never used by the build).

Sepsis-3 is compared per ICU stay: the pipeline's onset inside [intime - 6 h, outtime] versus
the truth's ``sepsis3_in_icu_window``; onset error is measured on stays both call septic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb


def validate_sepsis(
    workspace: str | Path, truth_dir: str | Path, window_hours: float = 6.0
) -> dict[str, Any]:
    ws, truth = Path(workspace), Path(truth_dir)
    con = duckdb.connect()
    row = con.execute(
        f"""
        WITH t AS (
            SELECT stay_id, sepsis3_in_icu_window AS truth, sepsis_onset_time AS truth_onset
            FROM read_parquet('{truth / "stays.parquet"}')
        ), p AS (
            SELECT i.stay_id, o.onset_time,
                   coalesce(o.onset_time >= i.intime - INTERVAL {window_hours} HOUR
                            AND o.onset_time <= i.outtime, false) AS predicted
            FROM read_parquet('{ws / "ingest" / "icustays.parquet"}') i
            LEFT JOIN read_parquet('{ws / "sepsis" / "onset.parquet"}') o USING (stay_id)
        )
        SELECT
            count(*) FILTER (WHERE truth AND predicted),
            count(*) FILTER (WHERE truth AND NOT predicted),
            count(*) FILTER (WHERE NOT truth AND predicted),
            count(*) FILTER (WHERE NOT truth AND NOT predicted),
            median(abs(epoch(onset_time - truth_onset)) / 3600.0) FILTER (WHERE truth AND predicted),
            quantile_cont(abs(epoch(onset_time - truth_onset)) / 3600.0, 0.9) FILTER (WHERE truth AND predicted)
        FROM t JOIN p USING (stay_id)
        """
    ).fetchone()
    con.close()
    tp, fn, fp, tn, median_err, p90_err = row
    return {
        "stays": tp + fn + fp + tn,
        "true_positive": tp,
        "false_negative": fn,
        "false_positive": fp,
        "true_negative": tn,
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "median_onset_error_hours": float(median_err) if median_err is not None else float("nan"),
        "p90_onset_error_hours": float(p90_err) if p90_err is not None else float("nan"),
    }
