"""Rewards and replay stage: one replay dataset per reward variant (docs/contracts.md).

Rewards (docs/clinical.md, "Rewards"), with SOFA(tau) = total SOFA of the last full hour ending
at or before tau (only data charted before the decision time):
  sparse             terminal only: +15 alive / -15 dead 90 days after onset, on the last step
  sofa_shaped        + w_sofa * (SOFA(tau_{k+1}) - SOFA(tau_k)) on every step with a next state
  sofa_state_shaped  the same with the state SOFA: the cardiovascular component scored on the
                     blood pressure alone (1 when MAP < 70, else 0) instead of up to 4 by the
                     vasopressor dose, so starting a vasopressor is not charged as a worse
                     patient (a hypotensive patient whose MAP is restored scores better)
  full_shaped        sofa_shaped + w_lac * (lac_k - lac_{k+1}) / lac_k
                     - w_map * max(0, target - MAP_{k+1})
Every variant also carries ``reward_eval`` (the common terminal utility), so policies trained
with different rewards are evaluated on one scale, and the columns ``sofa`` and ``sofa_state``
(SOFA(tau) and the state SOFA at tau); ``meta.json`` names the one its shaping uses
(``reward.sofa_column``).

Output: ``replay/<variant>/replay_{train,validation,test}.parquet`` and ``meta.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sepsisrl import __version__
from sepsisrl.contracts import ReplayMeta
from sepsisrl.dataset.actions import action_labels
from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.ingest import connect, fetch_arrow
from sepsisrl.dataset.preprocessing import StatePreprocessor
from sepsisrl.dataset.splits import SPLITS
from sepsisrl.dataset.sqlfiles import render
from sepsisrl.dataset.state import model_input, model_input_range
from sepsisrl.workspace import read_json

REPLAY_SCHEMA_VERSION = "1"


#: The SOFA column each shaped variant's shaping term uses.
SOFA_COLUMN = {"sofa_shaped": "sofa", "sofa_state_shaped": "sofa_state", "full_shaped": "sofa"}


def sofa_at_decision_times(
    steps: pa.Table, sofa_path: Path, cfg: BuildConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(total SOFA, state SOFA) of the last SOFA hour ending at or before each step's tau (0
    before the first hour). State SOFA: the total with the cardiovascular component replaced
    by its blood-pressure level (``sofa_cardiovascular_map``, dataset/sql/sofa.sql)."""
    con = connect(cfg)
    con.register("steps", steps.select(["stay_id", "step", "tau"]))
    got = fetch_arrow(con, render("sofa_at_decision_times"), {"sofa_hourly": str(sofa_path)})
    con.close()
    return tuple(  # type: ignore[return-value]
        np.nan_to_num(got[c].to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0)
        for c in ("sofa", "sofa_state")
    )


def compute_rewards(
    variant: str,
    stay: np.ndarray,
    died: np.ndarray,
    sofa: np.ndarray,
    lactate: np.ndarray,
    mean_ap: np.ndarray,
    cfg: BuildConfig,
    sofa_state: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reward, reward_eval, done) for rows sorted by (stay, step). ``sofa_state`` (the state
    SOFA) is needed by ``sofa_state_shaped``."""
    r = cfg.rewards
    n = len(stay)
    done = np.ones(n, dtype=bool)
    done[:-1] = stay[1:] != stay[:-1]
    terminal = np.where(died, r.terminal_died, r.terminal_survived)
    reward_eval = np.where(done, terminal, 0.0)
    reward = reward_eval.copy()
    nxt = np.minimum(np.arange(n) + 1, n - 1)
    if variant in SOFA_COLUMN:
        if SOFA_COLUMN[variant] == "sofa_state":
            if sofa_state is None:
                raise ValueError(f"reward variant {variant} needs the state SOFA (sofa_state)")
            score = sofa_state
        else:
            score = sofa
        reward += np.where(done, 0.0, r.sofa_delta_weight * (score[nxt] - score))
    if variant == "full_shaped":
        lac_term = r.lactate_clearance_weight * (lactate - lactate[nxt]) / np.maximum(lactate, 1e-6)
        map_term = -r.map_deficit_weight * np.maximum(0.0, r.map_target - mean_ap[nxt])
        reward += np.where(done, 0.0, lac_term + map_term)
    return reward.astype(np.float32), reward_eval.astype(np.float32), done


def _hours_since_onset(state: pa.Table, cohort: pa.Table, cfg: BuildConfig) -> np.ndarray:
    """The ``hours_since_onset_raw`` column (not a state feature): the state's value when the
    state has it, else tau minus the cohort's onset with the same clip."""
    if "hours_since_onset" in state.column_names:
        return state["hours_since_onset"].to_numpy().astype(np.float32)
    keys = cohort["stay_id"].to_numpy()
    order = np.argsort(keys)
    pos = order[np.searchsorted(keys, state["stay_id"].to_numpy(), sorter=order)]
    onset = cohort["onset_time"].cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()[pos]
    tau = state["tau"].cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
    lo, hi = next(f.clip for f in cfg.features if f.name == "hours_since_onset")
    return np.clip((tau - onset) / 3.6e9, lo, hi).astype(np.float32)


def _check_within(states: np.ndarray, names: list[str], bounds: dict[str, list[float]]) -> None:
    """Every state value lies in its recorded range (the training side refuses a replay whose
    values leave it; a build must never write one)."""
    if not len(states):
        return
    low = np.array([bounds[n][0] for n in names], dtype=np.float32)
    high = np.array([bounds[n][1] for n in names], dtype=np.float32)
    outside = ~np.isfinite(states) | (states < low) | (states > high)
    if outside.any():
        j = int(np.flatnonzero(outside.any(axis=0))[0])
        i = int(np.flatnonzero(outside[:, j])[0])
        raise RuntimeError(
            f"replay: state column s_{names[j]} row {i} = {states[i, j]} lies outside its "
            f"recorded range [{low[j]}, {high[j]}] (features[].clip through the z-score); "
            "this is a bug in the features stage"
        )


def run_replay(
    features_dir: Path,
    actions_dir: Path,
    cohort_dir: Path,
    sepsis_dir: Path,
    cfg: BuildConfig,
    source_info: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    state = pq.read_table(features_dir / "state_raw.parquet").sort_by(
        [("stay_id", "ascending"), ("step", "ascending")]
    )
    prep = StatePreprocessor.from_json(read_json(features_dir / "preprocessing.json"))
    acts = pq.read_table(actions_dir / "step_actions.parquet").sort_by(
        [("stay_id", "ascending"), ("step", "ascending")]
    )
    cohort = pq.read_table(
        cohort_dir / "cohort.parquet", columns=["stay_id", "died_90d", "onset_time"]
    )
    died_of = dict(zip(cohort["stay_id"].to_pylist(), cohort["died_90d"].to_pylist(), strict=True))
    stay = state["stay_id"].to_numpy()
    if (
        not (acts["stay_id"].to_numpy() == stay).all()
        or not (acts["step"].to_numpy() == state["step"].to_numpy()).all()
    ):
        raise RuntimeError("replay: actions and states are not aligned on (stay_id, step)")
    died = np.array([bool(died_of[s]) for s in stay.tolist()])
    sofa, sofa_state = sofa_at_decision_times(state, sepsis_dir / "sofa_hourly.parquet", cfg)
    base = prep.names
    raw = np.column_stack([state[c].to_numpy() for c in base])
    flags = [n for n in cfg.feature_names if n.endswith("_missing")]
    model_states = model_input(
        prep,
        raw,
        np.column_stack([state[n].to_numpy() for n in flags]) if flags else np.zeros((len(raw), 0)),
    )
    feature_names = cfg.feature_names
    state_bounds = model_input_range(prep, cfg)
    _check_within(model_states, feature_names, state_bounds["features"])
    split = state["split"].to_numpy(zero_copy_only=False)
    hours_since_onset = _hours_since_onset(state, cohort, cfg)
    labels = action_labels(cfg.actions.vaso_bins, cfg.actions.fluid_bins)
    counts: dict[str, dict[str, int]] = {}
    for variant in cfg.rewards.variants:
        reward, reward_eval, done = compute_rewards(
            variant,
            stay,
            died,
            sofa,
            state["lactate"].to_numpy(),
            state["map"].to_numpy(),
            cfg,
            sofa_state=sofa_state,
        )
        cols: dict[str, Any] = {
            "subject_id": state["subject_id"].to_numpy().astype(np.int64),
            "stay_id": stay.astype(np.int64),
            "step": state["step"].to_numpy().astype(np.int16),
            "action": acts["action"].to_numpy().astype(np.int16),
            "reward": reward,
            "done": done,
        }
        for j, name in enumerate(feature_names):
            cols[f"s_{name}"] = model_states[:, j]
        cols["reward_eval"] = reward_eval
        cols["sofa"] = sofa.astype(np.int16)
        cols["sofa_state"] = sofa_state.astype(np.int16)
        cols["hours_since_onset_raw"] = hours_since_onset
        table = pa.table(cols)
        folder = out / variant
        folder.mkdir(parents=True, exist_ok=True)
        counts = {}
        for name in SPLITS:
            part = table.filter(pa.array(split == name))
            pq.write_table(part, folder / f"replay_{name}.parquet")
            counts[name] = {
                "n_episodes": int(np.unique(part["stay_id"].to_numpy()).size),
                "n_transitions": part.num_rows,
            }
        r = cfg.rewards
        meta = {
            "schema_version": REPLAY_SCHEMA_VERSION,
            "state_dim": len(feature_names),
            "n_actions": len(labels),
            "feature_names": feature_names,
            "state_variant": cfg.state.variant,
            "state_bounds": state_bounds,
            "action_labels": labels,
            "reward": {
                "variant": variant,
                "terminal_survived": r.terminal_survived,
                "terminal_died": r.terminal_died,
                "mortality_days": r.mortality_days,
                "sofa_delta_weight": r.sofa_delta_weight if variant != "sparse" else 0.0,
                "sofa_column": SOFA_COLUMN.get(variant, "sofa"),
                "lactate_clearance_weight": r.lactate_clearance_weight
                if variant == "full_shaped"
                else 0.0,
                "map_deficit_weight": r.map_deficit_weight if variant == "full_shaped" else 0.0,
                "map_target": r.map_target,
                "evaluation_column": "reward_eval",
            },
            "gamma": r.gamma,
            "splits": counts,
            "source": source_info,
            "preprocessing": "features/preprocessing.json",
            "action_bins": "actions/bins.json",
            "created_by": f"sepsisrl {__version__}",
        }
        # checked against the replay contract before it is written: a writer that drifts
        # from contracts.ReplayMeta (a renamed, missing or ill-typed key) fails here, loudly
        ReplayMeta.parse(meta, folder / "meta.json").write(folder / "meta.json")
    return {
        "variants": list(cfg.rewards.variants),
        "splits": counts,
        "state_dim": len(feature_names),
    }
