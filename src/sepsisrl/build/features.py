"""Features stage: the 62-dimensional state at every decision time (clinical_spec.md section 5).

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

from sepsisrl.build.actions import rows_sha256
from sepsisrl.build.config import BuildConfig, FeatureSpec
from sepsisrl.build.ingest import connect, fetch_arrow
from sepsisrl.build.preprocessing import StatePreprocessor
from sepsisrl.build.sqlfiles import render
from sepsisrl.workspace import write_json

NAT = np.iinfo(np.int64).min
#: Static patient attributes are treated as known at ICU admission (exempt from the time check).
STATIC = ("age_years", "weight_kg")


def forward_fill(
    values: np.ndarray,
    times: np.ndarray,
    first: np.ndarray,
    carry_value: np.ndarray,
    carry_time: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN rows from the previous non-NaN row of the same episode, else the carry-in.

    ``first`` marks each episode's first row; ``carry_*`` (per row, used at episode starts)
    hold the last value observed before the episode's first window.
    """
    n = len(values)
    idx = np.arange(n)
    valid = ~np.isnan(values)
    last = np.maximum.accumulate(np.where(valid, idx, -1))
    start = np.maximum.accumulate(np.where(first, idx, 0))
    from_row = (last >= start) & (last >= 0)
    take = np.where(from_row, last, 0)
    out = np.where(from_row, values[take], carry_value[start])
    out_time = np.where(from_row, times[take], carry_time[start])
    return out, out_time


def run_features(
    episodes_dir: Path,
    meas_dir: Path,
    actions_dir: Path,
    splits_dir: Path,
    cohort_dir: Path,
    cfg: BuildConfig,
    out: Path,
) -> dict[str, Any]:
    hours = cfg.episodes.step_hours
    con = connect(cfg, out.parent)
    con.execute(
        f"CREATE VIEW episodes AS SELECT * FROM read_parquet('{episodes_dir / 'episodes.parquet'}')"
    )
    con.execute(
        f"CREATE VIEW measurements AS SELECT * FROM read_parquet('{meas_dir / 'measurements.parquet'}')"
    )
    con.execute(f"CREATE VIEW urine AS SELECT * FROM read_parquet('{meas_dir / 'urine.parquet'}')")
    windows = fetch_arrow(con, render("feature_windows", step=hours))
    urine = fetch_arrow(con, render("urine_windows", step=hours))
    con.close()

    steps = pq.read_table(episodes_dir / "steps.parquet").sort_by(
        [("stay_id", "ascending"), ("step", "ascending")]
    )
    stay = steps["stay_id"].to_numpy()
    step = steps["step"].to_numpy().astype(np.int64)
    tau = steps["tau"].cast(pa.int64()).to_numpy()  # microseconds
    n = len(stay)
    stays, first_row = np.unique(stay, return_index=True)
    first = np.zeros(n, dtype=bool)
    first[first_row] = True

    def rows_of(stay_ids: np.ndarray, step_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(stays, stay_ids)
        ok = (pos < len(stays)) & (stays[np.minimum(pos, len(stays) - 1)] == stay_ids)
        row = first_row[np.minimum(pos, len(stays) - 1)] + step_ids
        n_steps = np.diff(np.append(first_row, n))[np.minimum(pos, len(stays) - 1)]
        ok &= (step_ids >= 0) & (step_ids < n_steps)
        return row, ok

    w_stay = windows["stay_id"].to_numpy()
    w_concept = windows["concept"].to_numpy(zero_copy_only=False)
    w_step = windows["step"].to_numpy().astype(np.int64)
    w_time = windows["last_time"].cast(pa.int64()).to_numpy()
    agg_cols = {
        "last": windows["last_value"].to_numpy(zero_copy_only=False).astype(np.float64),
        "min": windows["min_value"].to_numpy(zero_copy_only=False).astype(np.float64),
        "max": windows["max_value"].to_numpy(zero_copy_only=False).astype(np.float64),
    }
    specs: dict[str, FeatureSpec] = {f.name: f for f in cfg.features}
    values: dict[str, np.ndarray] = {}
    observed: dict[str, np.ndarray] = {}
    source_time = np.full(n, NAT, dtype=np.int64)

    def clip(name: str, x: np.ndarray) -> np.ndarray:
        lo, hi = specs[name].clip
        return np.clip(x, lo, hi)

    def window_value(
        concept: str, agg: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        sel = w_concept == concept
        win = np.full(n, np.nan)
        win_t = np.full(n, NAT, dtype=np.int64)
        carry = np.full(n, np.nan)
        carry_t = np.full(n, NAT, dtype=np.int64)
        in_window = sel & (w_step >= 0)
        row, ok = rows_of(w_stay[in_window], w_step[in_window])
        win[row[ok]] = agg_cols[agg][in_window][ok]
        win_t[row[ok]] = w_time[in_window][ok]
        pre = sel & (w_step < 0)
        row, ok = rows_of(w_stay[pre], np.zeros(int(pre.sum()), dtype=np.int64))
        carry[row[ok]] = agg_cols["last"][pre][ok]
        carry_t[row[ok]] = w_time[pre][ok]
        return win, win_t, carry, carry_t

    measured = [f for f in cfg.features if f.agg in ("last", "min", "max")]
    for f in measured:
        win, win_t, carry, carry_t = window_value(f.name, f.agg)
        observed[f.name] = ~np.isnan(win)
        win = clip(f.name, win)
        carry = clip(f.name, carry)
        filled, filled_t = forward_fill(win, win_t, first, carry, carry_t)
        values[f.name] = filled
        source_time = np.maximum(source_time, filled_t)

    # urine output: sum over the window; no forward fill (a 4 h total), imputed 0
    u_row, u_ok = rows_of(urine["stay_id"].to_numpy(), urine["step"].to_numpy().astype(np.int64))
    u_val = np.full(n, np.nan)
    u_val[u_row[u_ok]] = urine["total"].to_numpy()[u_ok]
    u_t = np.full(n, NAT, dtype=np.int64)
    u_t[u_row[u_ok]] = urine["last_time"].cast(pa.int64()).to_numpy()[u_ok]
    source_time = np.maximum(source_time, u_t)
    observed["urine_output_4h"] = ~np.isnan(u_val)
    values["urine_output_4h"] = clip("urine_output_4h", u_val)

    # cumulative treatment before tau (from the action windows of earlier steps)
    acts = pq.read_table(actions_dir / "step_actions.parquet")
    a_row, a_ok = rows_of(acts["stay_id"].to_numpy(), acts["step"].to_numpy().astype(np.int64))
    for name, col in (
        ("cum_iv_fluid_ml", "cum_iv_fluid_ml_before"),
        ("cum_vasopressor_dose_nor_equiv", "cum_vaso_dose_before"),
    ):
        v = np.zeros(n)
        v[a_row[a_ok]] = acts[col].to_numpy()[a_ok]
        values[name] = clip(name, v)

    # static attributes
    cohort = pq.read_table(cohort_dir / "cohort.parquet", columns=["stay_id", "age", "onset_time"])
    weights = pq.read_table(meas_dir / "weights.parquet")
    age_of = dict(zip(cohort["stay_id"].to_pylist(), cohort["age"].to_pylist(), strict=True))
    onset_of = dict(
        zip(
            cohort["stay_id"].to_pylist(),
            cohort["onset_time"].cast(pa.int64()).to_pylist(),
            strict=True,
        )
    )
    weight_of = dict(
        zip(weights["stay_id"].to_pylist(), weights["weight_kg"].to_pylist(), strict=True)
    )
    for name, lookup in (("age_years", age_of), ("weight_kg", weight_of)):
        v = np.array([lookup.get(s) for s in stay.tolist()], dtype=np.float64)
        lo, hi = specs[name].valid or (-np.inf, np.inf)
        v = np.where((v >= lo) & (v <= hi), v, np.nan)
        observed[name] = ~np.isnan(v)
        values[name] = clip(name, v)

    # derived
    pao2_w, _, _, _ = window_value("pao2", "last")
    fio2_w, _, _, _ = window_value("fio2_vent", "last")
    pf = pao2_w / fio2_w
    lo, hi = specs["pf_ratio"].valid
    pf = np.where((pf >= lo) & (pf <= hi), pf, np.nan)
    observed["pf_ratio"] = ~np.isnan(pf)
    pf, _ = forward_fill(
        clip("pf_ratio", pf),
        np.zeros(n, dtype=np.int64),
        first,
        np.full(n, np.nan),
        np.zeros(n, dtype=np.int64),
    )
    values["pf_ratio"] = pf
    onset = np.array([onset_of[s] for s in stay.tolist()], dtype=np.int64)
    values["hours_since_onset"] = clip("hours_since_onset", (tau - onset) / 3.6e9)

    # imputation: train medians of observed values
    manifest = pq.read_table(splits_dir / "manifest.parquet")
    split_of = dict(
        zip(manifest["stay_id"].to_pylist(), manifest["split"].to_pylist(), strict=True)
    )
    split = np.array([split_of[s] for s in stay.tolist()])
    train = split == "train"
    names = [f.name for f in cfg.features]
    log1p = set(cfg.normalisation.log1p) if cfg.normalisation.use_log1p else set()
    prep = StatePreprocessor(names, {f.name: f.clip for f in cfg.features}, log1p)
    # at observed rows the (forward-filled) value is the window's own observation
    train_observed: dict[str, np.ndarray] = {}
    for f in cfg.features:
        if f.impute in ("ff", "med") and f.name in observed:
            rows = train & observed[f.name]
            if f.impute == "med":  # static: one value per train stay
                rows = rows & first
            train_observed[f.name] = values[f.name][rows]
    prep.fit_medians(train_observed, cfg.normal_values)
    for f in cfg.features:
        if f.impute in ("ff", "med"):
            v = values.get(f.name)
            if v is not None:
                values[f.name] = np.where(np.isnan(v), prep.median[f.name], v)
        elif f.impute == "zero" and f.name in values:
            values[f.name] = np.nan_to_num(values[f.name], nan=0.0)
    # shock index from the completed heart rate and systolic pressure
    si = values["heart_rate"] / np.maximum(values["sbp"], 1e-6)
    lo, hi = specs["shock_index"].valid
    si = np.where((si >= lo) & (si <= hi), si, np.nan)
    observed["shock_index"] = ~np.isnan(si)
    si = clip("shock_index", si)
    prep.fit_median("shock_index", si[train & observed["shock_index"]], cfg.normal_values)
    values["shock_index"] = np.where(np.isnan(si), prep.median["shock_index"], si)

    matrix = np.column_stack([values[nm] for nm in names])
    if np.isnan(matrix).any():
        bad = [nm for nm in names if np.isnan(values[nm]).any()]
        raise RuntimeError(f"features: unimputed values remain in {bad}")
    prep.fit_scaler(matrix[train])
    prep.fit_info = {
        "fitted_on": {
            "split": "train",
            "steps": int(train.sum()),
            "rows_sha256": rows_sha256(stay[train], step[train]),
        },
        "imputation": {f.name: f.impute for f in cfg.features},
        "valid_range": {f.name: list(f.valid) if f.valid else None for f in cfg.features},
    }
    write_json(out / "preprocessing.json", prep.to_json())

    cols: dict[str, Any] = {
        "stay_id": stay,
        "subject_id": steps["subject_id"].to_numpy(),
        "step": step.astype(np.int16),
        "tau": steps["tau"],
        "split": split.astype(str),
    }
    for nm in names:
        cols[nm] = values[nm].astype(np.float64)
    for f in cfg.features:
        if f.flag:
            cols[f"{f.name}_missing"] = (~observed[f.name]).astype(np.float32)
    for nm, obs in observed.items():
        cols[f"obs_{nm}"] = obs
    cols["max_source_time"] = pa.array(
        np.where(source_time == NAT, 0, source_time), pa.timestamp("us"), mask=source_time == NAT
    )
    pq.write_table(pa.table(cols), out / "state_raw.parquet")
    missing_rate = {nm: round(float((~observed[nm]).mean()), 4) for nm in observed}
    return {
        "steps": n,
        "state_dim": len(cfg.feature_names),
        "feature_names": cfg.feature_names,
        "window_missing_fraction": missing_rate,
        "train_steps": int(train.sum()),
    }
