"""Simulate new patients under any policy and measure its true outcome.

A policy is any callable ``policy(batch: DecisionBatch) -> actions``. Every ``step_hours``
(4 h) from ICU admission, for ``horizon_steps`` decisions, it receives the MIMIC-shaped rows
charted so far for the patients due a decision and returns one action id per patient:
``action = 5 * vaso_bin + fluid_bin`` (0..24), or -1 to leave that patient's fluids and
vasopressors to the simulated clinicians. The chosen bins are given as representative doses
(``RolloutDoses``) held constant over the next 4 h: the vasopressor as norepinephrine, the fluid
as a crystalloid infusion. Antibiotics, ventilation and care outside the horizon stay with the
clinicians.

Patients are paired across policies: the same ``seed`` gives the same patients and the same
noise (common random numbers), so the difference between two policies' outcomes is their
effect, not chance. Monte Carlo over many patients gives a policy's true 90-day mortality and
its true value under the evaluation reward (+15 alive / -15 dead at 90 days, discounted to
the episode's last step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sepsisrl.mimic.schema import TABLES
from sepsisrl.synth import charting
from sepsisrl.synth.cohort import Timeline, _timeline
from sepsisrl.synth.config import SynthConfig, load_synth_config
from sepsisrl.synth.population import (
    SECONDS_PER_DAY,
    SECONDS_PER_HOUR,
    sample_attendings,
    sample_stays,
    sample_subjects,
)
from sepsisrl.synth.simulator import Simulator

N_VASO_BINS = 5
N_FLUID_BINS = 5
DEFER_TO_CLINICIANS = -1
CHARTED_TABLES = ("chartevents", "labevents", "inputevents", "outputevents")


@dataclass(frozen=True)
class RolloutDoses:
    """Representative dose of each action bin (e.g. the median dose inside the bin)."""

    vaso_ne_mcg_kg_min: tuple[float, ...] = (0.0, 0.04, 0.1, 0.2, 0.45)
    fluid_ml_per_4h: tuple[float, ...] = (0.0, 150.0, 400.0, 900.0, 2000.0)

    def __post_init__(self) -> None:
        if len(self.vaso_ne_mcg_kg_min) != N_VASO_BINS or len(self.fluid_ml_per_4h) != N_FLUID_BINS:
            raise ValueError("RolloutDoses needs 5 vasopressor and 5 fluid doses")
        if self.vaso_ne_mcg_kg_min[0] != 0 or self.fluid_ml_per_4h[0] != 0:
            raise ValueError("bin 0 of each treatment must be a zero dose")


@dataclass
class DecisionBatch:
    """What a policy sees at one decision time, for the patients due a decision."""

    stay_id: np.ndarray  # (n,)
    decision_time: np.ndarray  # (n,) datetime64[s]
    step: np.ndarray  # (n,) decision index: 0 at ICU admission, then every step_hours
    tables: dict[str, pa.Table]  # MIMIC rows charted before decision_time, these stays only
    static: dict[str, pa.Table]  # patients, admissions, icustays rows of these stays
    doses: RolloutDoses

    def __len__(self) -> int:
        return len(self.stay_id)


Policy = Callable[[DecisionBatch], np.ndarray]


class SimulatedClinicians:
    """The world's own clinicians (the behaviour policy of the generated data)."""

    def __call__(self, batch: DecisionBatch) -> np.ndarray:
        return np.full(len(batch), DEFER_TO_CLINICIANS, dtype=np.int64)


class NoTreatment:
    """Never any vasopressor or IV fluid (action 0)."""

    def __call__(self, batch: DecisionBatch) -> np.ndarray:
        return np.zeros(len(batch), dtype=np.int64)


class ConstantAction:
    """Always the same action id."""

    def __init__(self, action: int) -> None:
        if not 0 <= action < N_VASO_BINS * N_FLUID_BINS:
            raise ValueError(f"action must be in 0..24, got {action}")
        self.action = action

    def __call__(self, batch: DecisionBatch) -> np.ndarray:
        return np.full(len(batch), self.action, dtype=np.int64)


def latest_value(
    table: pa.Table, stay_id: np.ndarray, itemids: list[int], valid: tuple[float, float]
) -> np.ndarray:
    """Last valid ``valuenum`` of the given items per stay (nan if none)."""
    if table.num_rows == 0:
        return np.full(len(stay_id), np.nan)
    mask = pc.is_in(table["itemid"], pa.array(itemids, pa.int64()))
    sub = table.filter(mask)
    v = sub["valuenum"].to_numpy(zero_copy_only=False).astype(np.float64)
    ok = (v >= valid[0]) & (v <= valid[1])
    sid = sub["stay_id"].to_numpy()[ok] if "stay_id" in sub.column_names else None
    if sid is None:
        sid = sub["hadm_id"].to_numpy()[ok]
    t = sub["charttime"].cast(pa.int64()).to_numpy()[ok]
    v = v[ok]
    order = np.lexsort((t, sid))
    sid, v = sid[order], v[order]
    last = np.ones(len(sid), dtype=bool)
    last[:-1] = sid[1:] != sid[:-1]
    lookup = dict(zip(sid[last].tolist(), v[last].tolist(), strict=True))
    return np.array([lookup.get(int(s), np.nan) for s in stay_id])


class MapLactateRule:
    """A sensible hand-written protocol on charted data (surviving-sepsis-campaign flavour).

    - Vasopressor by the latest MAP: < 55 -> bin 3, < 60 -> bin 2, < 65 -> bin 1; a running
      vasopressor is kept at bin 1 while MAP < 75; otherwise none.
    - Fluid: resuscitation (bin 3) while MAP < 65 or lactate > 2 and less than 3 L of IV fluid
      has been given since ICU admission; then maintenance (bin 1).
    """

    def __call__(self, batch: DecisionBatch) -> np.ndarray:
        ce = batch.tables["chartevents"]
        map_ = latest_value(ce, batch.stay_id, [220052, 225312, 220181], (20, 200))
        hadm = _hadm_of(batch)
        lab = batch.tables["labevents"]
        lactate_by_hadm = latest_value(lab, hadm, [50813], (0.2, 30))
        ie = batch.tables["inputevents"]
        fluid_ids = [
            225158,
            225828,
            220949,
            225159,
            225823,
            225825,
            225827,
            225941,
            220862,
            220864,
            225174,
        ]
        given = _sum_by_stay(ie, batch.stay_id, fluid_ids, "amount")
        vaso_on = (
            _sum_by_stay(
                ie, batch.stay_id, [221906, 221289, 221749, 221662, 222315], "rate", recent=batch
            )
            > 0
        )
        vaso = np.select([map_ < 55, map_ < 60, map_ < 65, vaso_on & (map_ < 75)], [3, 2, 1, 1], 0)
        shock = (map_ < 65) | (lactate_by_hadm > 2)
        fluid = np.where(shock & (given < 3000), 3, 1)
        return (N_FLUID_BINS * vaso + fluid).astype(np.int64)


def _hadm_of(batch: DecisionBatch) -> np.ndarray:
    icu = batch.static["icustays"]
    lookup = dict(zip(icu["stay_id"].to_pylist(), icu["hadm_id"].to_pylist(), strict=True))
    return np.array([lookup[int(s)] for s in batch.stay_id])


def _sum_by_stay(
    table: pa.Table,
    stay_id: np.ndarray,
    itemids: list[int],
    column: str,
    recent: DecisionBatch | None = None,
) -> np.ndarray:
    if table.num_rows == 0:
        return np.zeros(len(stay_id))
    sub = table.filter(pc.is_in(table["itemid"], pa.array(itemids, pa.int64())))
    sid = sub["stay_id"].to_numpy()
    val = np.nan_to_num(sub[column].to_numpy(zero_copy_only=False).astype(np.float64))
    if recent is not None:  # only rows still running at the decision time
        end = sub["endtime"].cast(pa.int64()).to_numpy()
        t_dec = dict(
            zip(
                recent.stay_id.tolist(), recent.decision_time.astype(np.int64).tolist(), strict=True
            )
        )
        keep = np.array(
            [end_i >= t_dec.get(int(s), 0) for s, end_i in zip(sid, end, strict=True)], dtype=bool
        )
        sid, val = sid[keep], val[keep]
    totals: dict[int, float] = {}
    for s, v in zip(sid.tolist(), val.tolist(), strict=True):
        totals[s] = totals.get(s, 0.0) + v
    return np.array([totals.get(int(s), 0.0) for s in stay_id])


@dataclass
class RolloutResult:
    """Per-patient outcomes of a rollout (one row per simulated ICU stay)."""

    outcomes: pa.Table
    gamma: float

    @property
    def mortality_90d(self) -> float:
        return float(np.mean(self.outcomes["died_90d"].to_numpy(zero_copy_only=False)))

    @property
    def value(self) -> float:
        """Mean discounted evaluation return (terminal +-15 at the episode's last step)."""
        return float(np.mean(self.outcomes["return_eval"].to_numpy()))

    def column(self, name: str) -> np.ndarray:
        return self.outcomes[name].to_numpy(zero_copy_only=False)


def rollout(
    policy: Policy,
    n_patients: int,
    seed: int = 0,
    cfg: SynthConfig | None = None,
    doses: RolloutDoses | None = None,
    horizon_steps: int = 18,
    step_hours: int = 4,
    septic_at_admission: bool = True,
    gamma: float = 0.99,
) -> RolloutResult:
    """Simulate ``n_patients`` new ICU patients with ``policy`` controlling fluids and vasopressors.

    ``septic_at_admission`` draws patients with an infection present on hospital admission
    (the population of a sepsis treatment study); otherwise the general ICU population.
    Charting density is set to 0 (physiology items only) to keep rollouts fast.
    """
    cfg = cfg or load_synth_config()
    cfg = cfg.model_copy(update={"charting": cfg.charting.model_copy(update={"density": 0.0})})
    doses = doses or RolloutDoses()
    if n_patients < 1:
        raise ValueError("n_patients must be positive")
    root = np.random.SeedSequence([seed, 0x5011])
    pop_seed, stay_seed, sim_seed, chart_seed, out_seed = root.spawn(5)
    attendings = sample_attendings(cfg, seed)
    subjects = sample_subjects(cfg, np.random.default_rng(pop_seed), 0, n_patients)
    stays = sample_stays(
        cfg,
        np.random.default_rng(stay_seed),
        subjects,
        np.arange(n_patients),
        0,
        subjects.first_admit_time,
        len(attendings.fluid_bias),
        force_infection_at_admission=septic_at_admission,
    )
    sim = Simulator(cfg, stays, attendings, sim_seed)
    intime_h = stays.pre_icu_h.astype(np.int64)
    admit = stays.admit_time
    vaso_doses = np.asarray(doses.vaso_ne_mcg_kg_min)
    fluid_doses = np.asarray(doses.fluid_ml_per_4h)
    horizon_end_h = intime_h + horizon_steps * step_hours
    ctx = charting.ChartContext(
        cfg=cfg,
        stays=stays,
        hourly={},
        admittime=admit,
        intime=admit + intime_h * SECONDS_PER_HOUR,
        outtime=np.full(stays.n, np.iinfo(np.int64).max),
        attending_provider=attendings.provider_id,
        rng=np.random.default_rng(chart_seed),
        id_base=1,
        urine_carry=np.zeros(stays.n),
    )
    charted: dict[str, list[pa.Table]] = {k: [] for k in CHARTED_TABLES}
    static_stub = _static_tables(stays, admit, intime_h)
    n_decisions = np.zeros(stays.n, dtype=np.int64)
    limit = int(horizon_end_h.max()) + cfg.population.max_icu_los_h + 2
    while sim.active.any() and sim.h < limit:
        h = sim.h
        if h > 0 and sim._records:
            _chart_last_hour(ctx, sim._records[-1], horizon_end_h, charted)
        since = h - intime_h
        due = sim.active & (since >= 0) & (since % step_hours == 0) & (h < horizon_end_h)
        sim.override &= h < horizon_end_h
        if due.any():
            idx = np.flatnonzero(due)
            batch = _decision_batch(
                idx, stays, admit, h, since[idx] // step_hours, charted, static_stub, doses
            )
            actions = np.asarray(policy(batch), dtype=np.int64).reshape(-1)
            if actions.shape != (len(idx),):
                raise ValueError(f"policy returned {actions.shape} actions for {len(idx)} patients")
            bad = (actions < DEFER_TO_CLINICIANS) | (actions >= N_VASO_BINS * N_FLUID_BINS)
            if bad.any():
                raise ValueError(
                    f"policy returned invalid action ids {np.unique(actions[bad])}; expected -1..24"
                )
            ext = actions >= 0
            sim.override[idx] = ext
            a = np.where(ext, actions, 0)
            sim.override_vaso_eq[idx] = vaso_doses[a // N_FLUID_BINS]
            sim.override_fluid_ml_h[idx] = fluid_doses[a % N_FLUID_BINS] / step_hours
            n_decisions[idx] += 1
        sim.step()
    result = sim.result()
    timeline = _timeline(cfg, np.random.default_rng(out_seed), stays, result)
    return _outcomes(cfg, stays, result, timeline, n_decisions, gamma, horizon_steps)


def _chart_last_hour(
    ctx: charting.ChartContext,
    record: dict[str, np.ndarray],
    horizon_end_h: np.ndarray,
    charted: dict[str, list[pa.Table]],
) -> None:
    keep = record["h"] < horizon_end_h[record["stay"]]
    if not keep.any():
        return
    ctx.hourly = {k: v[keep] for k, v in record.items()}
    charted["chartevents"].append(charting.chartevents(ctx))
    charted["labevents"].append(charting.labevents(ctx))
    charted["inputevents"].append(charting.inputevents(ctx))
    charted["outputevents"].append(charting.outputevents(ctx))


def _decision_batch(
    idx: np.ndarray,
    stays,
    admit: np.ndarray,
    h: int,
    step: np.ndarray,
    charted: dict[str, list[pa.Table]],
    static: dict[str, pa.Table],
    doses: RolloutDoses,
) -> DecisionBatch:
    stay_ids = stays.stay_id[idx]
    hadm_ids = stays.hadm_id[idx]
    decision_time = admit[idx] + h * SECONDS_PER_HOUR
    out = {}
    for name, parts in charted.items():
        parts = [p for p in parts if p.num_rows]
        if not parts:
            out[name] = TABLES[name].arrow_schema().empty_table()
            continue
        tab = pa.concat_tables(parts)
        key = "stay_id" if "stay_id" in tab.column_names else "hadm_id"
        ids = stay_ids if key == "stay_id" else hadm_ids
        tab = tab.filter(pc.is_in(tab[key], pa.array(ids, pa.int64())))
        out[name] = tab
    stat = {}
    for name, tab in static.items():
        key = (
            "stay_id"
            if "stay_id" in tab.column_names
            else ("hadm_id" if "hadm_id" in tab.column_names else "subject_id")
        )
        ids = {"stay_id": stay_ids, "hadm_id": hadm_ids, "subject_id": stays.subject_id[idx]}[key]
        stat[name] = tab.filter(pc.is_in(tab[key], pa.array(ids, pa.int64())))
    return DecisionBatch(
        stay_id=stay_ids,
        decision_time=decision_time.astype("datetime64[s]"),
        step=step.astype(np.int64),
        tables=out,
        static=stat,
        doses=doses,
    )


def _static_tables(stays, admit: np.ndarray, intime_h: np.ndarray) -> dict[str, pa.Table]:
    """Admission-time facts a policy may use (age, sex, ICU admission time)."""
    intime = admit + intime_h * SECONDS_PER_HOUR
    return {
        "icustays": pa.table(
            {
                "subject_id": stays.subject_id,
                "hadm_id": stays.hadm_id,
                "stay_id": stays.stay_id,
                "intime": pa.array(intime, pa.timestamp("s")),
            }
        ),
        "patients": pa.table(
            {"subject_id": stays.subject_id, "anchor_age": np.floor(stays.age).astype(np.int64)}
        ),
        "admissions": pa.table(
            {
                "subject_id": stays.subject_id,
                "hadm_id": stays.hadm_id,
                "admittime": pa.array(admit, pa.timestamp("s")),
            }
        ),
    }


def _outcomes(
    cfg,
    stays,
    result,
    timeline: Timeline,
    n_decisions: np.ndarray,
    gamma: float,
    horizon_steps: int,
) -> RolloutResult:
    intime = timeline.intime
    death = timeline.death_time
    died_90 = (death >= 0) & (death <= intime + 90 * SECONDS_PER_DAY)
    steps = np.maximum(n_decisions, 1)
    terminal = np.where(died_90, -15.0, 15.0)
    ret = gamma ** (steps - 1) * terminal
    H = result.hourly
    icu = H["in_icu"].astype(bool)
    # MAP in the last hour before ICU admission: before any policy acted, so the same patient
    # has the same value under every policy (defines subgroups without outcome leakage)
    pre = H["h"] == (stays.pre_icu_h[H["stay"]] - 1)
    map_before_icu = np.full(stays.n, np.nan)
    map_before_icu[H["stay"][pre]] = H["map"][pre]
    fluid = np.bincount(H["stay"][icu], (H["bolus_ml"] + H["maint_rate"])[icu], minlength=stays.n)
    vaso_hours = np.bincount(
        H["stay"][icu], (H["total_vaso_eq"][icu] > 0).astype(float), minlength=stays.n
    )
    outcomes = pa.table(
        {
            "stay_id": stays.stay_id,
            "died_in_icu": timeline.died_in_icu,
            "died_90d": died_90,
            "death_time": pa.array(
                np.where(death >= 0, death, 0), pa.timestamp("s"), mask=death < 0
            ),
            "icu_los_hours": (timeline.outtime - intime) / SECONDS_PER_HOUR,
            "decisions": n_decisions,
            "return_eval": ret,
            "map_before_icu": map_before_icu,
            "iv_fluid_ml_icu": fluid,
            "vasopressor_hours_icu": vaso_hours,
            "fluid_response": stays.fluid_response,
            "vaso_sensitivity": stays.vaso_sensitivity,
        }
    )
    return RolloutResult(outcomes=outcomes, gamma=gamma)


__all__ = [
    "DEFER_TO_CLINICIANS",
    "ConstantAction",
    "DecisionBatch",
    "MapLactateRule",
    "NoTreatment",
    "RolloutDoses",
    "RolloutResult",
    "SimulatedClinicians",
    "rollout",
]
