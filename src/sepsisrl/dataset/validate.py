"""Compare a built workspace with a synthetic world's ground truth (never used by the build).

Sepsis-3 is compared per ICU stay: the pipeline's onset inside [intime - 6 h, outtime] versus
the truth's ``sepsis3_in_icu_window``; onset error is measured on stays both call septic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from sepsisrl.dataset.sqlfiles import execute


def validate_sepsis(
    workspace: str | Path, truth_dir: str | Path, window_hours: float = 6.0
) -> dict[str, Any]:
    ws, truth = Path(workspace), Path(truth_dir)
    con = duckdb.connect()
    row = execute(
        con,
        "validate_sepsis",
        bind={
            "truth_stays": truth / "stays.parquet",
            "icustays": ws / "ingest" / "icustays.parquet",
            "onset": ws / "sepsis" / "onset.parquet",
        },
        window_hours=window_hours,
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
