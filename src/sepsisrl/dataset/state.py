"""The state and action of a decision: one implementation for the build and for rollouts.

``sepsisrl build`` calls these functions once over a whole source, fitting the train-split
statistics (imputation medians, z-scores, dose bins); a rollout in the synthetic world
(``sepsisrl truth``) calls the same functions at every decision time over the rows charted
so far, with the statistics loaded from the build (``FrozenStatistics``), never refit. Both
read the same SQL files (``feature_windows.sql``, ``urine_windows.sql``,
``step_treatment.sql``) through DuckDB views named ``episodes``, ``measurements``, ``urine``
and ``infusions``.

A state at decision time tau_k reads only data charted before tau_k:
- measured features: the window [tau_k - 4 h, tau_k) (last / min / max), forward-filled from
  earlier windows of the stay (ICU data before the episode included), clipped, then imputed
  with the train median of observed values;
- urine output: the window's sum (no forward fill, imputed 0);
- cumulative IV fluid and vasopressor dose: the action windows of earlier steps;
- age: known at admission; weight: the stay's first charted weight from the time it was
  charted, before that the first weight recorded with an infusion (once recorded), else
  imputed;
- ``hours_since_onset``: tau_k minus the Sepsis-3 onset of the episode grid.

The ``running_treatment`` variant (``state.variant``) drops ``hours_since_onset`` and adds
(``running_treatment.sql``, docs/build.md):
- ``vaso_rate_nor_equiv_at_tau``: the NE-equivalent rate of the vasopressor infusions that
  started before tau_k and still run at tau_k;
- ``iv_fluid_4h_before_tau``: IV fluid given in [tau_k - 4 h, tau_k), prorated;
- ``prev_vaso_bin``, ``prev_fluid_bin``: the action bins of step k - 1 (0 at step 0);
- ``hours_since_icu_admission``: tau_k minus the ICU intime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from sepsisrl.dataset.actions import DoseBins, cumulative_before, step_treatment
from sepsisrl.dataset.config import BuildConfig, FeatureSpec
from sepsisrl.dataset.ingest import fetch_arrow
from sepsisrl.dataset.preprocessing import StatePreprocessor
from sepsisrl.dataset.sqlfiles import render

__all__ = [
    "FrozenStatistics",
    "States",
    "compute_states",
    "cumulative_before",
    "flag_matrix",
    "forward_fill",
    "model_input",
    "model_input_range",
    "state_columns",
    "step_treatment",
]
from sepsisrl.workspace import read_json

NAT = np.iinfo(np.int64).min


@dataclass
class FrozenStatistics:
    """The train-fitted quantities of a build, loaded from its workspace."""

    prep: StatePreprocessor
    vaso_bins: DoseBins
    fluid_bins: DoseBins
    n_fluid_bins: int

    @classmethod
    def load(cls, workspace: Path, cfg: BuildConfig) -> FrozenStatistics:
        prep = StatePreprocessor.from_json(read_json(workspace / "features" / "preprocessing.json"))
        expected = [f.name for f in cfg.state_features]
        if prep.names != expected:
            raise ValueError(
                f"{workspace}: features/preprocessing.json lists the features {prep.names}, but "
                f"the build configuration (state.variant={cfg.state.variant!r}) expects "
                f"{expected}: the statistics belong to another build"
            )
        bins = read_json(workspace / "actions" / "bins.json")
        return cls(
            prep=prep,
            vaso_bins=DoseBins.from_json(bins["vasopressor"]),
            fluid_bins=DoseBins.from_json(bins["iv_fluid"]),
            n_fluid_bins=cfg.actions.fluid_bins,
        )

    def action(self, vaso: np.ndarray, fluid: np.ndarray) -> np.ndarray:
        vb = self.vaso_bins.transform(vaso).astype(np.int64)
        fb = self.fluid_bins.transform(fluid).astype(np.int64)
        return self.n_fluid_bins * vb + fb


@dataclass
class States:
    """States of the rows of ``steps`` (sorted by stay, step)."""

    stay_id: np.ndarray
    step: np.ndarray
    values: dict[str, np.ndarray]  # raw (clipped, imputed) value per feature
    observed: dict[str, np.ndarray]  # feature observed in its window (before imputation)
    source_time: np.ndarray  # latest charttime each state used (us since epoch; NAT: none)
    prep: StatePreprocessor
    names: list[str] = field(default_factory=list)

    def matrix(self) -> np.ndarray:
        return np.column_stack([self.values[n] for n in self.names])

    def normalised(self) -> np.ndarray:
        return self.prep.normalise(self.matrix())


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


# ------------------------------------------------------------------------------- states
def compute_states(
    con: duckdb.DuckDBPyConnection,
    steps: pa.Table,
    static: dict[str, pa.Table],
    cumulative: pa.Table,
    cfg: BuildConfig,
    frozen: StatePreprocessor | None = None,
    train: np.ndarray | None = None,
) -> States:
    """The state of every row of ``steps`` (stay_id, step, tau; sorted by stay and step).

    ``con`` has the views ``episodes`` (stay_id, tau0, tau_last, n_steps), ``measurements``
    and ``urine`` (and, for the ``running_treatment`` variant, ``infusions``). ``static``:
    ``age`` (stay_id, age, onset_time; ``intime`` for ``running_treatment``) and ``weights``
    (stay_id, weight_kg, weight_time). ``cumulative``: (stay_id, step,
    cum_iv_fluid_ml_before, cum_vaso_dose_before; ``vaso_bin``, ``fluid_bin`` of the step's
    own action window for ``running_treatment``). With ``frozen`` the build's statistics are
    applied; otherwise they are fitted on the rows where ``train`` is true.

    Steps, in order: measured window features, urine, cumulative treatment, age and weight,
    P/F ratio, the variant's features, imputation (fit or frozen), shock index, z-scores.
    """
    if frozen is None and train is None:
        raise ValueError("compute_states needs either frozen statistics or a train mask")
    hours = cfg.episodes.step_hours
    windows = fetch_arrow(con, render("feature_windows", step=hours))
    urine = fetch_arrow(con, render("urine_windows", step=hours))

    stay = steps["stay_id"].to_numpy()
    step = steps["step"].to_numpy().astype(np.int64)
    tau = steps["tau"].cast(pa.int64()).to_numpy()  # microseconds
    rows = _Rows(stay)
    n, first = rows.n, rows.first
    state_specs = cfg.state_features
    names = [f.name for f in state_specs]
    specs: dict[str, FeatureSpec] = {
        f.name: f for f in [*cfg.features, *cfg.state.running_treatment.features]
    }
    values: dict[str, np.ndarray] = {}
    observed: dict[str, np.ndarray] = {}
    source_time = np.full(n, NAT, dtype=np.int64)

    def clip(name: str, x: np.ndarray) -> np.ndarray:
        lo, hi = specs[name].clip
        return np.clip(x, lo, hi)

    win = _Windows(windows, rows)
    for v, o, t in (
        _measured_features(win, cfg, clip, first),
        _urine_feature(urine, rows, clip),
    ):
        values.update(v)
        observed.update(o)
        source_time = np.maximum(source_time, t)
    values.update(_cumulative_features(cumulative, rows, clip))
    onset = _lookup(static["age"], "stay_id", "onset_time", stay, as_int=True)
    v, o, t = _age_and_weight(static, stay, tau, specs, clip)
    values.update(v)
    observed.update(o)
    source_time = np.maximum(source_time, t)
    values["pf_ratio"], observed["pf_ratio"] = _pf_ratio(win, specs, clip, first)
    if "hours_since_onset" in names:
        values["hours_since_onset"] = clip("hours_since_onset", (tau - onset) / 3.6e9)
    if cfg.state.variant == "running_treatment":
        running, running_t = _running_treatment(con, steps, static, cumulative, cfg, rows)
        for name, v in running.items():
            values[name] = clip(name, v)
        source_time = np.maximum(source_time, running_t)

    prep = frozen if frozen is not None else _fit_medians(stay, values, observed, train, cfg)
    _impute(values, prep, state_specs)
    # shock index from the completed heart rate and systolic pressure
    si = values["heart_rate"] / np.maximum(values["sbp"], 1e-6)
    lo, hi = specs["shock_index"].valid
    si = np.where((si >= lo) & (si <= hi), si, np.nan)
    observed["shock_index"] = ~np.isnan(si)
    si = clip("shock_index", si)
    if frozen is None:
        prep.fit_median("shock_index", si[train & observed["shock_index"]], cfg.normal_values)
    values["shock_index"] = np.where(np.isnan(si), prep.median["shock_index"], si)

    if n and any(np.isnan(values[nm]).any() for nm in names):
        bad = [nm for nm in names if np.isnan(values[nm]).any()]
        raise RuntimeError(f"features: unimputed values remain in {bad}")
    if frozen is None:
        prep.fit_scaler(np.column_stack([values[nm] for nm in names])[train])
    return States(stay, step, values, observed, source_time, prep, names)


class _Rows:
    """Positions of (stay, step) pairs among the rows of ``steps`` (sorted by stay and step)."""

    def __init__(self, stay: np.ndarray) -> None:
        self.n = len(stay)
        self.stays, self.first_row = np.unique(stay, return_index=True)
        self.first = np.zeros(self.n, dtype=bool)  # each episode's first row
        self.first[self.first_row] = True

    def __call__(self, stay_ids: np.ndarray, step_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, ok): the row of each pair, and whether that stay and step exist."""
        stays, first_row, n = self.stays, self.first_row, self.n
        if len(stays) == 0:
            return np.zeros(len(stay_ids), dtype=np.int64), np.zeros(len(stay_ids), dtype=bool)
        pos = np.searchsorted(stays, stay_ids)
        ok = (pos < len(stays)) & (stays[np.minimum(pos, len(stays) - 1)] == stay_ids)
        row = first_row[np.minimum(pos, len(stays) - 1)] + step_ids
        n_steps = np.diff(np.append(first_row, n))[np.minimum(pos, len(stays) - 1)]
        ok &= (step_ids >= 0) & (step_ids < n_steps)
        return row, ok


class _Windows:
    """The per-window aggregates of ``feature_windows.sql`` (one row per stay, step and
    concept; step < 0: the last value before the episode's first window)."""

    def __init__(self, windows: pa.Table, rows: _Rows) -> None:
        self.rows = rows
        self.stay = windows["stay_id"].to_numpy()
        self.concept = windows["concept"].to_numpy(zero_copy_only=False)
        self.step = windows["step"].to_numpy().astype(np.int64)
        self.time = windows["last_time"].cast(pa.int64()).to_numpy()
        self.agg = {
            "last": windows["last_value"].to_numpy(zero_copy_only=False).astype(np.float64),
            "min": windows["min_value"].to_numpy(zero_copy_only=False).astype(np.float64),
            "max": windows["max_value"].to_numpy(zero_copy_only=False).astype(np.float64),
        }

    def value(
        self, concept: str, agg: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the window's ``agg`` of ``concept`` and its time, and the carry-in (the
        last value before the episode) and its time; NaN / NAT where none."""
        n, rows = self.rows.n, self.rows
        sel = self.concept == concept
        win = np.full(n, np.nan)
        win_t = np.full(n, NAT, dtype=np.int64)
        carry = np.full(n, np.nan)
        carry_t = np.full(n, NAT, dtype=np.int64)
        in_window = sel & (self.step >= 0)
        row, ok = rows(self.stay[in_window], self.step[in_window])
        win[row[ok]] = self.agg[agg][in_window][ok]
        win_t[row[ok]] = self.time[in_window][ok]
        pre = sel & (self.step < 0)
        row, ok = rows(self.stay[pre], np.zeros(int(pre.sum()), dtype=np.int64))
        carry[row[ok]] = self.agg["last"][pre][ok]
        carry_t[row[ok]] = self.time[pre][ok]
        return win, win_t, carry, carry_t


_Part = tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]


def _measured_features(win: _Windows, cfg: BuildConfig, clip: Any, first: np.ndarray) -> _Part:
    """Features aggregated over the window (last / min / max): clipped, forward-filled from
    earlier windows of the stay, else the carry-in; (values, observed, latest source time)."""
    values: dict[str, np.ndarray] = {}
    observed: dict[str, np.ndarray] = {}
    source_time = np.full(win.rows.n, NAT, dtype=np.int64)
    for f in (f for f in cfg.features if f.agg in ("last", "min", "max")):
        w, w_t, carry, carry_t = win.value(f.name, f.agg)
        observed[f.name] = ~np.isnan(w)
        filled, filled_t = forward_fill(clip(f.name, w), w_t, first, clip(f.name, carry), carry_t)
        values[f.name] = filled
        source_time = np.maximum(source_time, filled_t)
    return values, observed, source_time


def _urine_feature(urine: pa.Table, rows: _Rows, clip: Any) -> _Part:
    """Urine output: the window's sum (no forward fill: a 4 h total; imputed 0 later)."""
    n = rows.n
    u_row, u_ok = rows(urine["stay_id"].to_numpy(), urine["step"].to_numpy().astype(np.int64))
    u_val = np.full(n, np.nan)
    u_val[u_row[u_ok]] = urine["total"].to_numpy()[u_ok]
    u_t = np.full(n, NAT, dtype=np.int64)
    u_t[u_row[u_ok]] = urine["last_time"].cast(pa.int64()).to_numpy()[u_ok]
    name = "urine_output_4h"
    return {name: clip(name, u_val)}, {name: ~np.isnan(u_val)}, u_t


def _cumulative_features(cumulative: pa.Table, rows: _Rows, clip: Any) -> dict[str, np.ndarray]:
    """Cumulative IV fluid and vasopressor dose before tau (action windows of earlier steps)."""
    a_row, a_ok = rows(
        cumulative["stay_id"].to_numpy(), cumulative["step"].to_numpy().astype(np.int64)
    )
    values = {}
    for name, col in (
        ("cum_iv_fluid_ml", "cum_iv_fluid_ml_before"),
        ("cum_vasopressor_dose_nor_equiv", "cum_vaso_dose_before"),
    ):
        v = np.zeros(rows.n)
        v[a_row[a_ok]] = cumulative[col].to_numpy()[a_ok]
        values[name] = clip(name, v)
    return values


def _age_and_weight(
    static: dict[str, pa.Table],
    stay: np.ndarray,
    tau: np.ndarray,
    specs: dict[str, FeatureSpec],
    clip: Any,
) -> _Part:
    """Age (known at admission) and weight: the charted weight from the time it was charted,
    before that the weight recorded with an infusion (once recorded); outside the valid
    range a value is missing."""
    age_tab, weight_tab = static["age"], static["weights"]
    age = _lookup(age_tab, "stay_id", "age", stay)
    charted = _lookup(weight_tab, "stay_id", "charted_kg", stay)
    charted_t = _lookup(weight_tab, "stay_id", "charted_time", stay, as_int=True)
    infused = _lookup(weight_tab, "stay_id", "infusion_kg", stay)
    infused_t = _lookup(weight_tab, "stay_id", "infusion_time", stay, as_int=True)
    use_charted = ~np.isnan(charted) & (charted_t != NAT) & (charted_t < tau)
    use_infused = ~use_charted & ~np.isnan(infused) & (infused_t != NAT) & (infused_t < tau)
    weight = np.where(use_charted, charted, np.where(use_infused, infused, np.nan))
    weight_t = np.where(use_charted, charted_t, np.where(use_infused, infused_t, NAT))
    values: dict[str, np.ndarray] = {}
    observed: dict[str, np.ndarray] = {}
    for name, v in (("age_years", age), ("weight_kg", weight)):
        lo, hi = specs[name].valid or (-np.inf, np.inf)
        v = np.where((v >= lo) & (v <= hi), v, np.nan)
        observed[name] = ~np.isnan(v)
        values[name] = clip(name, v)
    return values, observed, weight_t


def _pf_ratio(
    win: _Windows, specs: dict[str, FeatureSpec], clip: Any, first: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(value, observed) of the P/F ratio: the window's last PaO2 over its last ventilator
    FiO2, inside the valid range, forward-filled within the episode (no carry-in)."""
    n = win.rows.n
    pao2_w, _, _, _ = win.value("pao2", "last")
    fio2_w, _, _, _ = win.value("fio2_vent", "last")
    pf = pao2_w / fio2_w
    lo, hi = specs["pf_ratio"].valid
    pf = np.where((pf >= lo) & (pf <= hi), pf, np.nan)
    observed = ~np.isnan(pf)
    pf, _ = forward_fill(
        clip("pf_ratio", pf),
        np.zeros(n, dtype=np.int64),
        first,
        np.full(n, np.nan),
        np.zeros(n, dtype=np.int64),
    )
    return pf, observed


def _fit_medians(
    stay: np.ndarray,
    values: dict[str, np.ndarray],
    observed: dict[str, np.ndarray],
    train: np.ndarray | None,
    cfg: BuildConfig,
) -> StatePreprocessor:
    """A preprocessor with the imputation medians of the observed train values (a static
    feature: one value per train stay, when first known)."""
    state_specs = cfg.state_features
    prep = StatePreprocessor(
        [f.name for f in state_specs], {f.name: f.clip for f in state_specs}, cfg.state_log1p
    )
    # at observed rows the (forward-filled) value is the window's own observation
    train_observed: dict[str, np.ndarray] = {}
    for f in state_specs:
        if f.impute in ("ff", "med") and f.name in observed:
            rows = train & observed[f.name]
            if f.impute == "med":  # static: one value per train stay, when first known
                rows = rows & _first_true_per_stay(stay, observed[f.name])
            train_observed[f.name] = values[f.name][rows]
    prep.fit_medians(train_observed, cfg.normal_values)
    return prep


def _impute(
    values: dict[str, np.ndarray], prep: StatePreprocessor, state_specs: list[FeatureSpec]
) -> None:
    """Fill missing values in place: the median (``ff``, ``med``) or zero (``zero``)."""
    for f in state_specs:
        if f.impute in ("ff", "med"):
            v = values.get(f.name)
            if v is not None:
                values[f.name] = np.where(np.isnan(v), prep.median[f.name], v)
        elif f.impute == "zero" and f.name in values:
            values[f.name] = np.nan_to_num(values[f.name], nan=0.0)


def _running_treatment(
    con: duckdb.DuckDBPyConnection,
    steps: pa.Table,
    static: dict[str, pa.Table],
    cumulative: pa.Table,
    cfg: BuildConfig,
    rows_of: Any,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The raw (unclipped) features of the ``running_treatment`` variant at every row of
    ``steps``, and the latest infusion start each state read (NAT: none)."""
    n = steps.num_rows
    missing = [c for c in ("vaso_bin", "fluid_bin") if c not in cumulative.column_names]
    if missing or "intime" not in static["age"].column_names:
        raise ValueError(
            "state variant running_treatment needs the action bins of earlier steps "
            "(cumulative: vaso_bin, fluid_bin) and the ICU intime (static['age']: intime)"
        )
    con.register("decision_steps", steps.select(["stay_id", "step", "tau"]))
    try:
        got = fetch_arrow(
            con,
            render(
                "running_treatment",
                step=cfg.episodes.step_hours,
                vasopressors=sorted(cfg.vasopressors),
            ),
        )
    finally:
        con.unregister("decision_steps")
    row, ok = rows_of(got["stay_id"].to_numpy(), got["step"].to_numpy().astype(np.int64))
    vaso = np.zeros(n)
    fluid = np.zeros(n)
    last_start = np.full(n, NAT, dtype=np.int64)
    vaso[row[ok]] = got["vaso_rate_at_tau"].to_numpy()[ok]
    fluid[row[ok]] = got["fluid_ml_before"].to_numpy()[ok]
    starts = got["last_start"].cast(pa.timestamp("us")).cast(pa.int64()).fill_null(NAT)
    last_start[row[ok]] = starts.to_numpy()[ok]
    # the action bins of step k - 1 sit at row k (0 at each episode's first step)
    prev_row, prev_ok = rows_of(
        cumulative["stay_id"].to_numpy(), cumulative["step"].to_numpy().astype(np.int64) + 1
    )
    prev_vaso = np.zeros(n)
    prev_fluid = np.zeros(n)
    prev_vaso[prev_row[prev_ok]] = cumulative["vaso_bin"].to_numpy()[prev_ok]
    prev_fluid[prev_row[prev_ok]] = cumulative["fluid_bin"].to_numpy()[prev_ok]
    intime = _lookup(static["age"], "stay_id", "intime", steps["stay_id"].to_numpy(), as_int=True)
    tau = steps["tau"].cast(pa.int64()).to_numpy()
    icu_hours = np.where(intime == NAT, np.nan, (tau - intime) / 3.6e9)
    return {
        "vaso_rate_nor_equiv_at_tau": vaso,
        "iv_fluid_4h_before_tau": fluid,
        "prev_vaso_bin": prev_vaso,
        "prev_fluid_bin": prev_fluid,
        "hours_since_icu_admission": icu_hours,
    }, last_start


def _first_true_per_stay(stay: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row: true at the first row of its stay where ``mask`` is true (rows sorted)."""
    idx = np.flatnonzero(mask)
    out = np.zeros(len(stay), dtype=bool)
    if len(idx):
        s = stay[idx]
        keep = np.ones(len(idx), dtype=bool)
        keep[1:] = s[1:] != s[:-1]
        out[idx[keep]] = True
    return out


def _lookup(
    table: pa.Table, key: str, column: str, ids: np.ndarray, as_int: bool = False
) -> np.ndarray:
    """``table[column]`` at each of ``ids`` (nan / NAT where absent or null)."""
    keys = table[key].to_numpy()
    col = table[column]
    if as_int:
        col = (
            col.cast(pa.timestamp("us")).cast(pa.int64())
            if pa.types.is_timestamp(col.type)
            else col.cast(pa.int64())
        )
        vals = col.fill_null(NAT).to_numpy()
        missing = NAT
    else:
        vals = col.cast(pa.float64()).fill_null(np.nan).to_numpy()
        missing = np.nan
    order = np.argsort(keys, kind="stable")
    keys, vals = keys[order], vals[order]
    pos = np.searchsorted(keys, ids)
    pos_c = np.minimum(pos, max(len(keys) - 1, 0))
    found = (pos < len(keys)) & (keys[pos_c] == ids) if len(keys) else np.zeros(len(ids), bool)
    out = np.full(len(ids), missing, dtype=vals.dtype if len(vals) else np.float64)
    out[found] = vals[pos_c[found]]
    return out


def model_input(prep: StatePreprocessor, base_raw: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """The replay's state vector: z-scored base features, then the 0/1 missingness flags
    (``BuildConfig.feature_names`` order)."""
    return np.concatenate(
        [prep.normalise(base_raw), np.asarray(flags, dtype=np.float32).reshape(len(base_raw), -1)],
        axis=1,
    ).astype(np.float32)


def model_input_range(prep: StatePreprocessor, cfg: BuildConfig) -> dict[str, Any]:
    """The range of every column of ``model_input`` (``meta.json`` ``state_bounds``): the
    normalised clip range of each base feature (``StatePreprocessor.normalised_range``; a
    feature imputed with zero includes 0), 0..1 for each missingness flag."""
    feature_names = cfg.feature_names
    rng = prep.normalised_range({f.name: 0.0 for f in cfg.state_features if f.impute == "zero"})
    return {
        "rule": "features[].clip (and the imputation median) through the train-fitted "
        "transform and z-score; missingness flags 0..1",
        "features": {n: list(rng[n]) if n in rng else [0.0, 1.0] for n in feature_names},
    }


def flag_matrix(states: States, cfg: BuildConfig) -> np.ndarray:
    """The missingness flags of ``states`` (1 = not observed in the window)."""
    cols = [(~states.observed[f.name]).astype(np.float32) for f in cfg.state_features if f.flag]
    return np.column_stack(cols) if cols else np.zeros((len(states.stay_id), 0), np.float32)


def state_columns(states: States, cfg: BuildConfig) -> dict[str, Any]:
    """The feature, flag and observation columns of ``state_raw.parquet``."""
    cols: dict[str, Any] = {}
    for nm in states.names:
        cols[nm] = states.values[nm].astype(np.float64)
    flags = flag_matrix(states, cfg)
    for j, f in enumerate(f for f in cfg.state_features if f.flag):
        cols[f"{f.name}_missing"] = flags[:, j]
    for nm, obs in states.observed.items():
        cols[f"obs_{nm}"] = obs
    st = states.source_time
    cols["max_source_time"] = pa.array(
        np.where(st == NAT, 0, st), pa.timestamp("us"), mask=st == NAT
    )
    return cols
