"""Re-simulate a population's patients with a policy in control from the first decision time.

The population's stays were simulated once under the clinicians and built to episodes
(``truth/world.py``); that fixed each cohort stay's Sepsis-3 onset and its decision grid
tau_k = onset - 24 h + 4 h * k (the replay's grid, pre-onset steps included). Here the same
stays are simulated again with the same random numbers. Up to the first decision time nothing
differs. At each decision time the build's state function runs over the rows charted so far
(``truth/online.py``) and the policy chooses an action; its two bins become doses taken from
the build's train data (the median logged dose inside each bin, ``actions/bins.json``): the
vasopressor as the stay's first-line agent at that norepinephrine-equivalent rate, the fluid as
a crystalloid infusion of the bin's 4-hour volume. The world's clock is hourly, so a decision
at tau acts from the first full hour at or after tau until the next decision; antibiotics,
ventilation and everything outside the grid stay with the clinicians.

A step exists while the patient is in the ICU at tau (as in the replay); the episode's return
under the evaluation reward is gamma^(T-1) * (+15 alive / -15 dead 90 days after onset), the
90-day outcome computed by the build's cohort SQL from the re-simulated patients and admissions
tables, anchored at the grid's onset.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sepsisrl.dataset.cohort import cohort_sql
from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.ingest import CHARTED_COLUMNS, charted_item_ids, run_ingest
from sepsisrl.dataset.sqlfiles import Raw, parquet_view, render
from sepsisrl.dataset.state import States, flag_matrix, model_input
from sepsisrl.mimic.schema import TABLES
from sepsisrl.mimic.source import open_source
from sepsisrl.synth import tables
from sepsisrl.synth.cohort import chunk_entropy, simulate_chunk
from sepsisrl.synth.hourly import (
    CHARTED_TABLES,
    HourlyCharter,
    chunk_tables,
    icu_end_time,
    run_charted,
    run_charted_together,
)
from sepsisrl.synth.population import SECONDS_PER_HOUR
from sepsisrl.synth.simulator import Simulator
from sepsisrl.truth.lockstep import _concat, _Request, _shift_request, _slice_states
from sepsisrl.truth.online import OnlineStateFunction
from sepsisrl.truth.policies import DEFER, DecisionContext, WorldPolicy
from sepsisrl.truth.world import Population, TruthContext, write_tables

US = 1_000_000
#: How a policy's action reaches the patient in a rollout. ``held``: the bins' representative
#: doses, constant for the 4-hour window (the policy replaces the team's fluid and vasopressor
#: decisions). ``titrated``: the team keeps titrating every hour on what it sees at the
#: bedside, inside the policy's bins (:func:`bin_ranges`) - the treatment a logged 4-hour
#: action records, and so the estimand the offline estimates of the replay identify.
INTERFACES = ("held", "titrated")
#: The simulator's hidden dynamic state that ``record_latent`` may record at each decision time
#: (``synth/simulator.py``): what no table holds, for diagnostics only (bench/mixture_latent.py).
LATENT_STATE = (
    "infection", "tone_loss", "volume", "balance_l", "lactate",
    "kidney", "lung", "liver", "coag", "brain",
)  # fmt: skip
#: the stay tables the final state call reads beside the charted rows
_STATIC_TABLES = ("patients", "admissions", "icustays")
#: Added (times the ordinal) to every identifier of a simulation batch's rows in a merged state
#: call (``merge_batches``): a patient's stays of two ordinals share the patient's
#: ``subject_id``, and each batch's states must read only the rows it reads alone. Below
#: ``truth/lockstep.py``'s ``ID_OFFSET`` (10^11), added on top in a lockstep group.
BATCH_ID_OFFSET = 10**10


@dataclass
class Decisions:
    """Every decision of a rollout (one row per stay and step)."""

    stay_id: list[np.ndarray] = field(default_factory=list)
    step: list[np.ndarray] = field(default_factory=list)
    tau: list[np.ndarray] = field(default_factory=list)
    action: list[np.ndarray] = field(default_factory=list)  # chosen (-1: clinicians)
    raw: list[np.ndarray] = field(default_factory=list)  # (n, state_dim) raw, if recorded
    normalised: list[np.ndarray] = field(default_factory=list)
    latent: list[np.ndarray] = field(default_factory=list)  # (n, len(record_latent))

    def table(self, names: list[str] | None = None, latent: tuple[str, ...] = ()) -> pa.Table:
        cols = {
            "stay_id": _cat(self.stay_id, np.int64),
            "step": _cat(self.step, np.int64),
            "tau": pa.array(_cat(self.tau, np.int64), pa.timestamp("us")),
            "action": _cat(self.action, np.int64),
        }
        tab = pa.table(cols)
        if names and self.raw:
            raw = np.concatenate(self.raw)
            norm = np.concatenate(self.normalised)
            for j, n in enumerate(names):
                tab = tab.append_column(n, pa.array(raw[:, j]))
            for j, n in enumerate(names):
                tab = tab.append_column(f"norm_{n}", pa.array(norm[:, j]))
        if latent:
            lat = np.concatenate(self.latent) if self.latent else np.zeros((0, len(latent)))
            for j, n in enumerate(latent):
                tab = tab.append_column(f"latent_{n}", pa.array(lat[:, j]))
        order = np.lexsort((tab["step"].to_numpy(), tab["stay_id"].to_numpy()))
        return tab.take(pa.array(order))


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


@dataclass
class _Due:
    """The stays of one simulation batch with a decision due in the current hour."""

    ordinal: int
    sim: Simulator
    batch: dict
    pos: np.ndarray  # their positions in the batch's cohort stays
    stays: np.ndarray
    k: np.ndarray  # their steps
    tau_us: np.ndarray
    grid: pa.Table | None = None  # what the state function reads (a policy that needs states)
    charted: dict[str, pa.Table] | None = None
    static: dict[str, pa.Table] | None = None


def _merged_states(
    online: Callable, due: list[_Due], cohort: pa.Table, wants_sofa: bool
) -> list[tuple[States, tuple[np.ndarray, np.ndarray] | None]]:
    """The states (and SOFA at tau) of several batches' due stays from one state call: each
    batch's due rows with their identifiers moved into a range of their own
    (``BATCH_ID_OFFSET``), as ``truth/lockstep.py`` merges policies; a stay's state reads its
    own rows only, so each batch gets the states it gets alone (tests/test_truth_lockstep.py)."""
    parts = []
    for d in due:  # each batch's rows are already its due stays' (_CohortRows.due)
        charted, static = d.charted, d.static
        mine = cohort.filter(pc.is_in(cohort["stay_id"], pa.array(d.stays, pa.int64())))
        request = _Request(charted, static, d.grid, mine, wants_sofa)
        parts.append(_shift_request(request, d.ordinal * BATCH_ID_OFFSET))
    charted = {name: _concat([p.charted[name] for p in parts]) for name in parts[0].charted}
    static = {name: _concat([p.static[name] for p in parts]) for name in parts[0].static}
    grid = _concat([p.grid for p in parts])
    states, _ = online(charted, static, grid, _concat([p.cohort for p in parts]), due=True)
    sofa = online.sofa(grid) if wants_sofa else None
    out, lo = [], 0
    for d in due:
        hi = lo + d.grid.num_rows
        st = _slice_states(states, lo, hi, d.ordinal * BATCH_ID_OFFSET)
        if not np.array_equal(st.stay_id, d.grid["stay_id"].to_numpy()):
            raise RuntimeError("merged state call: the rows are not in the grids' order")
        out.append((st, (sofa[0][lo:hi], sofa[1][lo:hi]) if sofa is not None else None))
        lo = hi
    return out


@dataclass
class RolloutOutcome:
    """Per cohort episode: the policy's true outcome (and the rollout's decisions)."""

    episodes: pa.Table  # stay_id, died_90d, steps, return_eval
    decisions: pa.Table
    physiology: pa.Table | None = None  # hourly true MAP, HR, lactate of the cohort stays
    tables_dir: Path | None = None


class _Grid:
    """Decision grid of the cohort stays of one ordinal batch."""

    def __init__(self, pop_steps: pa.Table, cohort: pa.Table, ctx: TruthContext) -> None:
        e = ctx.build_cfg.episodes
        stay = cohort["stay_id"].to_numpy()
        onset = cohort["onset_time"].cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
        first_k = {}
        for s, k in zip(
            pop_steps["stay_id"].to_numpy().tolist(),
            pop_steps["grid_k"].to_numpy().tolist(),
            strict=True,
        ):
            first_k[s] = min(first_k.get(s, k), k)
        self.taus: dict[int, np.ndarray] = {}
        for s, o in zip(stay.tolist(), onset.tolist(), strict=True):
            if s not in first_k:
                continue
            ks = np.arange(first_k[s], e.n_steps, dtype=np.int64)
            self.taus[s] = o - e.hours_before_onset * 3600 * US + ks * e.step_hours * 3600 * US
        self.subject = dict(
            zip(stay.tolist(), cohort["subject_id"].to_numpy().tolist(), strict=True)
        )
        self.step_hours = e.step_hours


def rollout_population(
    ctx: TruthContext,
    pop: Population,
    policy: WorldPolicy,
    workdir: Path,
    record_states: bool = False,
    keep_tables: bool = False,
    progress: Callable[[int, int], None] | None = None,
    interface: str = "held",
    state_function: Callable | None = None,
    record_latent: tuple[str, ...] = (),
    merge_batches: bool | None = None,
) -> RolloutOutcome:
    """The policy's true outcome on every cohort episode of ``pop`` (``interface``: how an
    action reaches the patient, :data:`INTERFACES`). ``state_function``: the build's state
    function to call (default: one of its own; ``truth/lockstep.py`` shares one between
    rollouts); it is closed at the end. ``record_latent``: names of :data:`LATENT_STATE`
    whose values at each decision time the decisions table gets as ``latent_<name>`` columns
    (the simulator's hidden state; nothing else changes).

    ``merge_batches`` (default: the policy's ``order_free``): a chunk's simulation batches (the
    stays of each admission ordinal) run side by side, and each hour's due stays of all of them
    go through the state function in one call instead of one call per batch, about a third
    fewer calls (docs/truth.md). Every batch's states are the ones it gets alone, so the
    outcome is the same; only the order in which the policy is asked changes, which is why a
    policy with a random stream or a memory (not ``order_free``) is asked batch after batch."""
    if interface not in INTERFACES:
        raise ValueError(
            f"unknown truth interface {interface!r}; expected one of {list(INTERFACES)}"
        )
    unknown = [n for n in record_latent if n not in LATENT_STATE]
    if unknown:
        raise ValueError(f"record_latent: {unknown} are not in LATENT_STATE {list(LATENT_STATE)}")
    workdir = Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cohort = pop.cohort()
    episodes = pop.episodes()
    cohort = cohort.filter(
        pa.compute.is_in(cohort["stay_id"], episodes["stay_id"].combine_chunks())
    ).sort_by("stay_id")
    grid = _Grid(pop.steps(), cohort, ctx)
    age_tab = cohort.select(["stay_id", "age", "onset_time", "intime"])
    online = state_function or OnlineStateFunction(ctx.build_cfg, ctx.stats, workdir / "online")
    decisions = Decisions()
    names = ctx.feature_names
    vaso_dose = np.asarray(ctx.stats.vaso_bins.representative, dtype=np.float64)
    fluid_dose = np.asarray(ctx.stats.fluid_bins.representative, dtype=np.float64)
    n_fluid = ctx.stats.n_fluid_bins
    vaso_range = bin_ranges(ctx.stats.vaso_bins.edges, vaso_dose)
    fluid_range = bin_ranges(ctx.stats.fluid_bins.edges, fluid_dose)
    titrate = interface == "titrated"
    merged = bool(policy.order_free if merge_batches is None else merge_batches)
    all_tables: dict[str, list[pa.Table]] = {}
    # the charted rows anything reads (those of the cohort stays and their patients' labs),
    # kept as they are charted; the charters keep every row only for a caller that keeps the
    # tables
    stored = _CohortRows(grid, ctx.build_cfg)
    charted_parts: dict[str, list[pa.Table]] = {name: [] for name in CHARTED_TABLES}
    physiology: list[pa.Table] = []
    chunks = pop.chunks()
    for c, first, n in chunks:
        plan = pop.plan(c)
        entropy = chunk_entropy(pop.seed, c)
        charters: dict[int, HourlyCharter] = {}
        state: dict[int, dict] = {}
        stores: dict[int, dict[str, _KeyedRows]] = {}

        def sink(ordinal: int, name: str, rows: pa.Table, stores=stores) -> None:
            stored.add(stores.setdefault(ordinal, {}), name, rows)

        def due_now(ordinal: int, sim: Simulator, state=state, stores=stores) -> _Due | None:
            """The stays of batch ``ordinal`` with a decision due in this hour (None: none)."""
            if ordinal not in state:
                state[ordinal] = _batch_state(sim, grid)
            b = state[ordinal]
            if not len(b["idx"]):
                return None
            h = int(sim.h)
            sim.override &= ~b["control_over"](h)
            pending = b["next"] < b["n_taus"]
            if not pending.any():
                return None
            tau_us = np.full(len(b["idx"]), np.iinfo(np.int64).max)
            tau_us[pending] = [
                grid.taus[s][k]
                for s, k in zip(
                    b["stay"][pending].tolist(), b["next"][pending].tolist(), strict=True
                )
            ]
            hour_end_us = (b["admit"] + h * SECONDS_PER_HOUR) * US
            due = pending & (tau_us <= hour_end_us)
            if not due.any():
                return None
            icu_end = sim.icu_end_h[b["idx"]]
            out_us = np.where(
                np.isnan(icu_end),
                np.iinfo(np.int64).max,
                icu_end_time(b["admit"], icu_end) * US,
            )
            ended = due & (tau_us >= out_us)  # the stay left the ICU before this step
            b["next"][ended] = b["n_taus"][ended]
            due &= ~ended
            if not due.any():
                return None
            pos = np.flatnonzero(due)
            stays_due = b["stay"][pos]
            k = b["next"][pos].copy()
            d = _Due(ordinal, sim, b, pos, stays_due, k, tau_us[pos])
            if policy.needs_state or record_states:
                d.grid = _grid_table(grid, stays_due, k)
                # the rows due_rows would select from every row kept (the grid's stays' and
                # their patients' labs), so every state call below passes due=True
                d.charted = stored.due(stores.get(ordinal, {}), stays_due, b["subject"][pos])
                d.static = {
                    "icustays": _icustays(sim, b["idx"][pos]),
                    "patients": TABLES["patients"].arrow_schema().empty_table(),
                    "admissions": TABLES["admissions"].arrow_schema().empty_table(),
                }
            return d

        def decide(d: _Due, st: States | None, sofa: tuple | None) -> None:
            """The policy's actions for the due stays ``d`` from their states ``st`` (and SOFA
            at tau), applied to the batch's simulation from this hour."""
            sim, b, pos = d.sim, d.batch, d.pos
            if st is not None:
                last = np.ones(len(st.stay_id), dtype=bool)
                last[:-1] = st.stay_id[1:] != st.stay_id[:-1]
                flags = flag_matrix(st, ctx.build_cfg)[last]
                base = st.matrix()[last]
                norm = model_input(st.prep, base, flags)
                raw = np.concatenate([base, flags], axis=1)
                raw_d = {nm: raw[:, j] for j, nm in enumerate(names)}
                if policy.wants_context:  # the environment's rewards read SOFA at tau
                    policy.context = DecisionContext(
                        stay_id=st.stay_id[last], step=np.asarray(st.step)[last],
                        sofa=sofa[0][last], sofa_state=sofa[1][last],
                    )  # fmt: skip
                if record_states:
                    decisions.raw.append(raw)
                    decisions.normalised.append(norm)
            else:
                norm = np.zeros((len(pos), len(names)), dtype=np.float32)
                raw_d = {}
            actions = np.asarray(policy.decide(norm, raw_d), dtype=np.int64).reshape(-1)
            if actions.shape != (len(pos),):
                raise ValueError(f"policy {policy.name} returned {actions.shape} for {len(pos)}")
            bad = (actions < DEFER) | (actions >= len(vaso_dose) * n_fluid)
            if bad.any():
                raise ValueError(f"policy {policy.name} returned invalid actions {actions[bad]}")
            decisions.stay_id.append(d.stays)
            decisions.step.append(d.k)
            decisions.tau.append(d.tau_us)
            decisions.action.append(actions)
            sim_idx = b["idx"][pos]
            if record_latent:  # the hidden state as the decision is made
                decisions.latent.append(
                    np.column_stack([getattr(sim, n)[sim_idx] for n in record_latent])
                )
            active = sim.active[sim_idx]
            ext = (actions >= 0) & active
            a = np.where(actions >= 0, actions, 0)
            sim.override[sim_idx] = ext
            sim.override_vaso_eq[sim_idx] = vaso_dose[a // n_fluid]
            sim.override_fluid_ml_h[sim_idx] = fluid_dose[a % n_fluid] / grid.step_hours
            if titrate:
                sim.override_titrate[sim_idx] = ext
                v, f = a // n_fluid, a % n_fluid
                sim.titrate_vaso_floor[sim_idx] = vaso_range[v, 0]
                sim.titrate_vaso_ceil[sim_idx] = vaso_range[v, 1]
                sim.titrate_fluid_floor[sim_idx] = fluid_range[f, 0] / grid.step_hours
                sim.titrate_fluid_ceil[sim_idx] = fluid_range[f, 1] / grid.step_hours
            b["next"][pos] += 1

        def states_of(due: list[_Due]) -> list[tuple[States | None, tuple | None]]:
            """Each due batch's states (and SOFA at tau): one state call for all of them."""
            if not (policy.needs_state or record_states):
                return [(None, None)] * len(due)
            if len(due) == 1:  # the batch's own rows, as a rollout batch by batch asks
                d = due[0]
                st, _ = online(d.charted, d.static, d.grid, age_tab, due=True)
                return [(st, online.sofa(d.grid) if policy.wants_context else None)]
            return _merged_states(online, due, age_tab, policy.wants_context)

        def hook(ordinal: int, sim: Simulator, charter: HourlyCharter) -> None:
            d = due_now(ordinal, sim)
            if d is not None:
                decide(d, *states_of([d])[0])

        def hook_many(batches: list[tuple[int, Simulator, HourlyCharter]]) -> None:
            due = [d for o, sim, _ in batches if (d := due_now(o, sim)) is not None]
            if due:
                for d, (st, sofa) in zip(due, states_of(due), strict=True):
                    decide(d, st, sofa)

        def chart_through(ordinal: int, sim: Simulator, state=state) -> int | None:
            """The last hour anything reads: the end of the last action window of the batch's
            cohort stays, plus one (the logged treatment of that window). Every hour when the
            caller keeps the tables or the states recomputed from them."""
            if record_states or keep_tables:
                return None
            if ordinal not in state:
                state[ordinal] = _batch_state(sim, grid)
            return state[ordinal]["chart_through"]

        if merged:  # every batch's due stays of an hour in one state call
            run_many = run_charted_together(
                pop.cfg, entropy, pop.attendings, charters, hook_many, chart_through, sink,
                keep_tables,
            )  # fmt: skip
            chunk = simulate_chunk(pop.cfg, pop.seed, c, pop.attendings, first, n, plan=plan,
                                   run_many=run_many)  # fmt: skip
        else:
            run = run_charted(
                pop.cfg, entropy, pop.attendings, charters, hook, chart_through, sink, keep_tables
            )
            chunk = simulate_chunk(
                pop.cfg, pop.seed, c, pop.attendings, first, n, run=run, plan=plan
            )
        for name, tab in chunk_tables(
            pop.cfg, pop.seed, c, chunk, charters, pop.attendings
        ).items():
            all_tables.setdefault(name, []).append(tab)
        for ordinal in sorted(stores):
            for name, rows in _cohort_rows(stores[ordinal]).items():
                charted_parts[name].append(rows)
        del charters, stores
        physiology.append(_physiology(chunk, grid))
        if progress is not None:
            progress(first + n, pop.n_patients)
    dec = decisions.table(names if record_states else None, tuple(record_latent))
    # what the charted tables say was given in each action window (the logged action), and,
    # with record_states, the states recomputed from the complete tables afterwards
    final_grid = dec.select(["stay_id", "step", "tau"])
    final_grid = final_grid.append_column(
        "subject_id",
        pa.array([grid.subject[s] for s in dec["stay_id"].to_pylist()], pa.int64()),
    ).select(["stay_id", "subject_id", "step", "tau"])
    final_grid = final_grid.set_column(2, "step", final_grid["step"].cast(pa.int16()))
    static = {k: pa.concat_tables(all_tables[k]) for k in _STATIC_TABLES}
    charted = {k: _concat_or_empty(k, v) for k, v in charted_parts.items()}
    del charted_parts
    after, treatment = online(charted, static, final_grid, age_tab, whole=True)
    del charted, static
    online.close()
    logged = ctx.stats.action(
        treatment["vaso_ne_rate"].to_numpy(), treatment["fluid_ml"].to_numpy()
    )
    dec = dec.append_column("logged_action", pa.array(logged))
    dec = dec.append_column("logged_vaso_ne_rate", treatment["vaso_ne_rate"])
    dec = dec.append_column("logged_fluid_ml", treatment["fluid_ml"])
    if record_states:
        flags = flag_matrix(after, ctx.build_cfg)
        base = after.matrix()
        for j, nm in enumerate(names):
            col = base[:, j] if j < base.shape[1] else flags[:, j - base.shape[1]]
            dec = dec.append_column(f"after_{nm}", pa.array(col))

    raw_dir = workdir / "raw"
    # the outcome reads the stays, patients and admissions; the other tables only for a caller
    # that keeps them (the rest are written empty)
    write_tables(raw_dir, all_tables if keep_tables else {k: all_tables[k] for k in _OUTCOME})
    del all_tables
    outcome = _outcomes(ctx, pop, cohort, raw_dir, workdir / "outcome")
    steps = _steps_taken(dec, outcome)
    ep = outcome.append_column("steps", pa.array(steps))
    terminal = np.where(
        ep["died_90d"].to_numpy(zero_copy_only=False), ctx.terminal_died, ctx.terminal_survived
    )
    ret = ctx.gamma ** (np.maximum(steps, 1) - 1) * terminal
    ep = ep.append_column("return_eval", pa.array(ret))
    result = RolloutOutcome(
        episodes=ep,
        decisions=dec,
        physiology=pa.concat_tables(physiology),
        tables_dir=raw_dir if keep_tables else None,
    )
    if not keep_tables:
        shutil.rmtree(raw_dir, ignore_errors=True)
    return result


def bin_ranges(edges, representative) -> np.ndarray:
    """(n_bins, 2) floor and ceiling of the dose the ``titrated`` interface allows in each bin:
    the midpoints between the bin's median logged dose and its edges (bin 0: exactly zero; the
    top bin: no ceiling), so that a dose kept inside lands in the bin whatever the window's
    alignment with the hourly clock (a fluid volume is allowed per hour as 1/4 of it)."""
    rep = np.asarray(representative, dtype=np.float64)
    lo = np.concatenate([[0.0, 0.0], np.asarray(edges, dtype=np.float64)])
    hi = np.concatenate([[0.0], np.asarray(edges, dtype=np.float64), [np.inf]])
    out = np.stack([(lo + rep) / 2.0, (rep + hi) / 2.0], axis=1)
    out[0] = 0.0
    return out


def _physiology(chunk, grid: _Grid) -> pa.Table:
    """True hourly MAP, heart rate and lactate of the chunk's cohort stays, with whether the
    hour ended before the episode's first decision (identical under every policy)."""
    H = chunk.sim.hourly
    stay_id = chunk.stays.stay_id[H["stay"]]
    keep = np.array([s in grid.taus for s in stay_id.tolist()], dtype=bool)
    stay_id = stay_id[keep]
    h = H["h"][keep].astype(np.int64)
    hour_end_us = (chunk.stays.admit_time[H["stay"][keep]] + (h + 1) * SECONDS_PER_HOUR) * US
    first = np.array([grid.taus[s][0] for s in stay_id.tolist()], dtype=np.int64)
    return pa.table(
        {
            "stay_id": stay_id,
            "h": h,
            "map": H["map"][keep],
            "hr": H["hr"][keep],
            "lactate": H["lactate"][keep],
            "before_first_decision": hour_end_us <= first,
        }
    )


class _CohortRows:
    """Keeps, as each hour is charted, the rows a state can read: those of the cohort's stays
    and their patients' labs (``dataset/sql/lab_measurements.sql`` attributes a lab by patient
    or admission), of the items the ingest reads and only its columns (``dataset/ingest.py``
    ``charted_item_ids``, ``CHARTED_COLUMNS``: the rest never reaches a state). It selects a
    few stays' rows for a decision time (:meth:`due`): the rows the state function's own
    ``due_rows`` would select from every row kept so far, in the same order."""

    def __init__(self, grid: _Grid, cfg: BuildConfig) -> None:
        stays = sorted(grid.taus)
        self.keys = {
            "stay_id": pa.array(stays, pa.int64()),
            "subject_id": pa.array(sorted({grid.subject[s] for s in stays}), pa.int64()),
        }
        self.items = {k: pa.array(v, pa.int64()) for k, v in charted_item_ids(cfg).items()}

    def add(self, store: dict[str, _KeyedRows], name: str, rows: pa.Table) -> None:
        key = _ROW_KEY[name]
        read = pc.and_(
            pc.is_in(rows[key], self.keys[key]), pc.is_in(rows["itemid"], self.items[name])
        )
        rows = rows.filter(read).select(list(CHARTED_COLUMNS[name]))
        if rows.num_rows:
            store.setdefault(name, _KeyedRows(key)).add(rows)

    @staticmethod
    def due(
        store: dict[str, _KeyedRows], stays: np.ndarray, subjects: np.ndarray
    ) -> dict[str, pa.Table]:
        """The kept rows of ``stays`` (labs: of ``subjects``) of one ordinal batch."""
        wanted = {"stay_id": np.unique(stays), "subject_id": np.unique(subjects)}
        out = {}
        for name in CHARTED_TABLES:
            kept = store.get(name)
            got = kept.select(wanted[kept.key]) if kept is not None else []
            out[name] = _concat_or_empty(name, got)
        return out


#: The column that attributes a charted row to a cohort stay (labs: to its patient).
_ROW_KEY = {name: "subject_id" if name == "labevents" else "stay_id" for name in CHARTED_TABLES}


@dataclass
class _Segment:
    table: pa.Table
    order: np.ndarray  # a stable argsort of the table's keys
    keys: np.ndarray  # the keys in that order
    level: int


class _KeyedRows:
    """One table's kept rows of one ordinal batch in charting order, in segments indexed by
    key: each hour's rows become a segment, and two segments of the same level merge into one
    of the next (as a binary counter), so there are about log2(hours) of them. Selecting a few
    keys' rows reads their index ranges, not every row charted so far."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.segments: list[_Segment] = []

    def add(self, rows: pa.Table) -> None:
        self.segments.append(self._segment(rows, 0))
        segs = self.segments
        while len(segs) > 1 and segs[-2].level == segs[-1].level:
            b, a = segs.pop(), segs.pop()
            segs.append(self._segment(pa.concat_tables([a.table, b.table]), a.level + 1))

    def _segment(self, table: pa.Table, level: int) -> _Segment:
        table = table.combine_chunks()
        keys = table[self.key].to_numpy().astype(np.int64, copy=False)
        order = np.argsort(keys, kind="stable")
        return _Segment(table, order, keys[order], level)

    def select(self, wanted: np.ndarray) -> list[pa.Table]:
        """The rows whose key is in ``wanted`` (sorted, unique), in charting order."""
        out = []
        for seg in self.segments:
            lo = np.searchsorted(seg.keys, wanted, side="left")
            n = np.searchsorted(seg.keys, wanted, side="right") - lo
            total = int(n.sum())
            if not total:
                continue
            first = lo - (np.cumsum(n) - n)  # each run's start, less the rows before it
            rows = np.sort(seg.order[np.repeat(first, n) + np.arange(total)])
            out.append(seg.table.take(pa.array(rows)))
        return out

    def all(self) -> list[pa.Table]:
        return [seg.table for seg in self.segments]


def _cohort_rows(store: dict[str, _KeyedRows]) -> dict[str, pa.Table]:
    """Every row kept of one ordinal batch (:class:`_CohortRows`), in charting order."""
    return {
        name: _concat_or_empty(name, store[name].all() if name in store else [])
        for name in CHARTED_TABLES
    }


def _concat_or_empty(name: str, parts: list[pa.Table]) -> pa.Table:
    """The kept rows of table ``name`` (:class:`_CohortRows`), or none with its kept columns."""
    if parts:
        return pa.concat_tables(parts)
    schema = TABLES[name].arrow_schema()
    return pa.schema([schema.field(c) for c in CHARTED_COLUMNS[name]]).empty_table()


def _batch_state(sim: Simulator, grid: _Grid) -> dict:
    st = sim.stays
    in_cohort = np.array([s in grid.taus for s in st.stay_id.tolist()], dtype=bool)
    idx = np.flatnonzero(in_cohort)
    stay = st.stay_id[idx]
    admit = st.admit_time[idx].astype(np.int64)
    n_taus = np.array([len(grid.taus[s]) for s in stay.tolist()], dtype=np.int64)
    # control ends with the last action window: tau_last + step_hours
    end_us = np.array(
        [grid.taus[s][-1] + grid.step_hours * 3600 * US for s in stay.tolist()], dtype=np.int64
    )
    end_h = np.ceil((end_us / US - admit) / SECONDS_PER_HOUR).astype(np.int64)
    mask = np.zeros(sim.n, dtype=bool)

    def control_over(h: int) -> np.ndarray:
        mask[:] = False
        mask[idx] = h >= end_h
        return mask

    return {
        "idx": idx,
        "chart_through": int(end_h.max()) + 1 if len(idx) else -1,
        "stay": stay,
        "subject": st.subject_id[idx],
        "admit": admit,
        "n_taus": n_taus,
        "next": np.zeros(len(idx), dtype=np.int64),
        "control_over": control_over,
    }


def _grid_table(grid: _Grid, stays: np.ndarray, k: np.ndarray) -> pa.Table:
    order = np.argsort(stays, kind="stable")
    stays, k = stays[order], k[order]
    rep = k + 1
    stay_col = np.repeat(stays, rep)
    step_col = np.concatenate([np.arange(r) for r in rep.tolist()])
    tau = np.concatenate(
        [grid.taus[s][:r] for s, r in zip(stays.tolist(), rep.tolist(), strict=True)]
    )
    subj = np.array([grid.subject[s] for s in stay_col.tolist()], dtype=np.int64)
    return pa.table(
        {
            "stay_id": stay_col.astype(np.int64),
            "subject_id": subj,
            "step": step_col.astype(np.int16),
            "tau": pa.array(tau, pa.timestamp("us")),
        }
    )


def _icustays(sim: Simulator, idx: np.ndarray) -> pa.Table:
    st = sim.stays
    admit = st.admit_time[idx].astype(np.int64)
    intime = admit + st.pre_icu_h[idx].astype(np.int64) * SECONDS_PER_HOUR
    end = sim.icu_end_h[idx]
    out = icu_end_time(admit, end)
    schema = TABLES["icustays"].arrow_schema()
    cols = {}
    for f in schema:
        if f.name == "subject_id":
            cols[f.name] = pa.array(st.subject_id[idx], f.type)
        elif f.name == "hadm_id":
            cols[f.name] = pa.array(st.hadm_id[idx], f.type)
        elif f.name == "stay_id":
            cols[f.name] = pa.array(st.stay_id[idx], f.type)
        elif f.name == "intime":
            cols[f.name] = pa.array(intime, pa.timestamp("s")).cast(f.type)
        elif f.name == "outtime":
            cols[f.name] = pa.array(out, pa.timestamp("s"), mask=np.isnan(end)).cast(f.type)
        else:
            cols[f.name] = pa.nulls(len(idx), f.type)
    return pa.table(cols, schema=schema)


#: The tables the outcome reads (the build's cohort SQL over them).
_OUTCOME = ("icustays", "patients", "admissions")


def _outcomes(
    ctx: TruthContext, pop: Population, cohort: pa.Table, raw_dir: Path, work: Path
) -> pa.Table:
    """died_90d of every cohort stay: the build's cohort SQL over the re-simulated tables,
    with the population's Sepsis-3 onset."""
    work.mkdir(parents=True, exist_ok=True)
    ingest = work / "ingest"
    ingest.mkdir()
    src = open_source(raw_dir, kind="synthetic", version="3.1")
    run_ingest(src, ctx.build_cfg, ingest, check_dictionaries=False, only=_OUTCOME)
    con = duckdb.connect()
    for name in ("icustays", "patients", "admissions"):
        parquet_view(con, name, ingest / f"{name}.parquet")
    parquet_view(con, "onset", pop.ws / "sepsis" / "onset.parquet")
    sql = cohort_sql(ctx.build_cfg)
    con.register("wanted", cohort.select(["stay_id"]))
    got = con.sql(render("cohort_outcomes", cohort=Raw(sql))).to_arrow_table()
    con.close()
    if got.num_rows != cohort.num_rows:
        raise RuntimeError(
            f"truth: {cohort.num_rows - got.num_rows} cohort stays are missing from the rollout"
        )
    return got


def _steps_taken(dec: pa.Table, outcome: pa.Table) -> np.ndarray:
    """Decisions per episode (a step exists while the patient is in the ICU at tau)."""
    stays = outcome["stay_id"].to_numpy()
    counts = dict(zip(*np.unique(dec["stay_id"].to_numpy(), return_counts=True), strict=True))
    return np.array([int(counts.get(s, 0)) for s in stays.tolist()], dtype=np.int64)


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (centre - half, centre + half)


__all__ = [
    "INTERFACES",
    "Decisions",
    "RolloutOutcome",
    "bin_ranges",
    "pq",
    "rollout_population",
    "tables",
    "wilson",
]
