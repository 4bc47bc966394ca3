"""Features stage: the 62-dimensional state at every decision time (docs/clinical.md, "State").

(That is the default ``state.variant: card``; ``running_treatment`` replaces
``hours_since_onset`` by the treatment running at tau and a causal ICU clock, see
``dataset/state.py`` and docs/build.md.)

For step k with decision time tau_k, each measured feature aggregates the valid values charted
in [tau_k - 4 h, tau_k) (last / min / max / sum), is clipped, forward-filled from earlier
windows of the same stay (including ICU data before the episode), and finally imputed with
the median of *observed* train values. Cumulative treatments come from the action windows of
earlier steps only. ``<feature>_missing`` flags mark windows without an observation (before
imputation). Normalisation statistics are fit on train steps and applied to every split.

Output (``features/``): state_raw.parquet (imputed, clipped, un-normalised values; flags;
``obs_<feature>`` observation indicators; ``max_source_time`` of the data each state used) and
preprocessing.json (per feature: median, clip, mean, std, transform; fit provenance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sepsisrl.dataset.actions import rows_sha256
from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.ingest import connect
from sepsisrl.dataset.sqlfiles import parquet_view
from sepsisrl.dataset.state import compute_states, state_columns
from sepsisrl.workspace import write_json


def run_features(
    episodes_dir: Path,
    meas_dir: Path,
    actions_dir: Path,
    splits_dir: Path,
    cohort_dir: Path,
    cfg: BuildConfig,
    out: Path,
) -> dict[str, Any]:
    con = connect(cfg, out.parent)
    parquet_view(con, "episodes", episodes_dir / "episodes.parquet")
    for name in ("measurements", "urine", "infusions"):
        parquet_view(con, name, meas_dir / f"{name}.parquet")
    steps = pq.read_table(episodes_dir / "steps.parquet").sort_by(
        [("stay_id", "ascending"), ("step", "ascending")]
    )
    manifest = pq.read_table(splits_dir / "manifest.parquet")
    split_of = dict(
        zip(manifest["stay_id"].to_pylist(), manifest["split"].to_pylist(), strict=True)
    )
    stay = steps["stay_id"].to_numpy()
    split = np.array([split_of[s] for s in stay.tolist()])
    train = split == "train"
    static = {
        "age": pq.read_table(
            cohort_dir / "cohort.parquet", columns=["stay_id", "age", "onset_time", "intime"]
        ),
        "weights": pq.read_table(meas_dir / "weights.parquet"),
    }
    acts = pq.read_table(actions_dir / "step_actions.parquet")
    states = compute_states(con, steps, static, acts, cfg, train=train)
    con.close()
    step = states.step
    prep = states.prep
    prep.fit_info = {
        "fitted_on": {
            "split": "train",
            "steps": int(train.sum()),
            "rows_sha256": rows_sha256(stay[train], step[train]),
        },
        "imputation": {f.name: f.impute for f in cfg.state_features},
        "valid_range": {f.name: list(f.valid) if f.valid else None for f in cfg.state_features},
    }
    write_json(out / "preprocessing.json", prep.to_json())

    cols: dict[str, Any] = {
        "stay_id": stay,
        "subject_id": steps["subject_id"].to_numpy(),
        "step": step.astype(np.int16),
        "tau": steps["tau"],
        "split": split.astype(str),
        **state_columns(states, cfg),
    }
    pq.write_table(pa.table(cols), out / "state_raw.parquet")
    observed = states.observed
    missing_rate = {nm: round(float((~observed[nm]).mean()), 4) for nm in observed}
    return {
        "steps": len(stay),
        "state_variant": cfg.state.variant,
        "state_dim": len(cfg.feature_names),
        "feature_names": cfg.feature_names,
        "window_missing_fraction": missing_rate,
        "train_steps": int(train.sum()),
    }
