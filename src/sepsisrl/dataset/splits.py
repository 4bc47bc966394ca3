"""Splits stage: patient-level train / validation / test assignment.

Patients (subject_id) are shuffled with NumPy's seeded generator, optionally within strata of
90-day mortality, and cut by the configured fractions (default 70/15/15, seed 42). Every
later fitted quantity uses the train split only; the test split is read once, at the end.

Output (``splits/``): manifest.parquet (subject_id, stay_id, split), summary.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.workspace import write_json

SPLITS = ("train", "validation", "test")


def assign_splits(
    subjects: np.ndarray, strata: np.ndarray, fractions: dict[str, float], seed: int
) -> np.ndarray:
    """Split label per subject; deterministic for a given seed and set of subjects."""
    order = np.argsort(subjects, kind="stable")
    subjects, strata = subjects[order], strata[order]
    out = np.empty(len(subjects), dtype=object)
    rng = np.random.default_rng(seed)
    for stratum in np.unique(strata):
        idx = np.flatnonzero(strata == stratum)
        idx = idx[rng.permutation(len(idx))]
        n_train = round(fractions["train"] * len(idx))
        n_val = round(fractions["validation"] * len(idx))
        out[idx[:n_train]] = "train"
        out[idx[n_train : n_train + n_val]] = "validation"
        out[idx[n_train + n_val :]] = "test"
    result = np.empty(len(subjects), dtype=object)
    result[order] = out
    return result


def run_splits(cohort_dir: Path, episodes_dir: Path, cfg: BuildConfig, out: Path) -> dict[str, Any]:
    episodes = pq.read_table(episodes_dir / "episodes.parquet", columns=["subject_id", "stay_id"])
    cohort = pq.read_table(cohort_dir / "cohort.parquet", columns=["stay_id", "died_90d"])
    died = dict(zip(cohort["stay_id"].to_pylist(), cohort["died_90d"].to_pylist(), strict=True))
    subjects = episodes["subject_id"].to_numpy()
    stays = episodes["stay_id"].to_numpy()
    if len(np.unique(subjects)) != len(subjects):
        raise ValueError("splits: a patient has more than one episode (cohort rule 5 violated)")
    outcome = np.array([bool(died[s]) for s in stays.tolist()])
    strata = (
        outcome.astype(int) if cfg.split.stratify_by_mortality else np.zeros(len(stays), dtype=int)
    )
    split = assign_splits(subjects, strata, dict(cfg.split.fractions), cfg.split.seed)
    table = pa.table({"subject_id": subjects, "stay_id": stays, "split": split.astype(str)})
    table = table.sort_by("stay_id")
    pq.write_table(table, out / "manifest.parquet")
    summary = {
        name: {
            "patients": int((split == name).sum()),
            "mortality_90d": round(float(outcome[split == name].mean()), 4)
            if (split == name).any()
            else None,
        }
        for name in SPLITS
    }
    summary_doc = {
        "seed": cfg.split.seed,
        "fractions": dict(cfg.split.fractions),
        "stratified_by_mortality": cfg.split.stratify_by_mortality,
        "splits": summary,
    }
    write_json(out / "summary.json", summary_doc)
    return summary_doc
