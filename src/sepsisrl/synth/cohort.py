"""Simulate a chunk of subjects end to end: stays, hospital timeline, outcomes and truth.

A chunk is a fixed block of subjects whose randomness comes only from ``(seed, chunk index)``,
so chunks can be generated in any order and a world of N stays is a prefix of a world of
M > N stays with the same seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from sepsisrl.synth.config import SynthConfig
from sepsisrl.synth.population import (
    SECONDS_PER_DAY,
    SECONDS_PER_HOUR,
    Attendings,
    Stays,
    Subjects,
    lognormal,
    sample_stays,
    sample_subjects,
)
from sepsisrl.synth.simulator import SimulationResult, Simulator
from sepsisrl.synth.truth import hourly_sofa, sepsis_onset, suspected_infection_times


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Timeline:
    """Hospital timeline and outcome per stay (epoch seconds; -1 = missing)."""

    admittime: np.ndarray
    intime: np.ndarray
    outtime: np.ndarray
    dischtime: np.ndarray
    deathtime: np.ndarray  # in-hospital death (-1: none)
    death_time: np.ndarray  # any death within the follow-up (-1: none known)
    died_in_icu: np.ndarray
    prophylaxis_h: np.ndarray  # simulation hour of peri-procedural antibiotic (nan: none)
    screen_h: np.ndarray  # simulation hour of an admission MRSA screen (nan: none)
    # simulation hour at which the antibiotic course running at ICU admission is ordered
    # again in the ICU (a whole minute + 30 s; nan: none; ``antibiotic_reorder``)
    antibiotic_reorder_h: np.ndarray


@dataclass
class Truth:
    """Ground truth per stay (simulation hours relative to hospital admission)."""

    infected: np.ndarray
    infection_h: np.ndarray
    suspected_infection_h: np.ndarray
    sofa_hour: np.ndarray
    onset_h: np.ndarray
    sepsis3: np.ndarray
    sepsis3_in_icu_window: np.ndarray  # onset in [intime - 6 h, outtime] (cohort rule 4)
    max_sofa: np.ndarray
    died_90d_after_onset: np.ndarray
    died_90d_after_intime: np.ndarray
    # Sepsis-3 by the consensus definition on every simulated hour (Singer et al. 2016: any
    # antibiotic of the admission, SOFA of every hour, pre-ICU labs included, an hour at its
    # start) - the definition the world's population targets refer to; the columns above
    # follow mimic-code's, which the build applies by default
    consensus_onset_h: np.ndarray
    sepsis3_consensus_in_icu_window: np.ndarray
    died_90d_after_consensus_onset: np.ndarray


@dataclass
class ChunkResult:
    subjects: Subjects
    stays: Stays
    sim: SimulationResult
    timeline: Timeline
    truth: Truth
    sofa: dict[str, np.ndarray]  # hourly true SOFA aligned with sim.hourly


def subset_chunk(chunk: ChunkResult, keep: np.ndarray) -> ChunkResult:
    """Keep only the stays where ``keep`` is true (used to stop at exactly N stays)."""
    idx = np.flatnonzero(keep)
    remap = np.full(chunk.stays.n, -1, dtype=np.int64)
    remap[idx] = np.arange(len(idx))
    rows = keep[chunk.sim.hourly["stay"]]
    hourly = {k: v[rows] for k, v in chunk.sim.hourly.items()}
    hourly["stay"] = remap[hourly["stay"]].astype(np.int32)
    per_stay = {
        f.name: getattr(chunk.sim, f.name)[idx]
        for f in fields(SimulationResult)
        if f.name != "hourly"
    }
    sim = SimulationResult(hourly=hourly, **per_stay)
    take = lambda obj, cls: cls(**{f.name: getattr(obj, f.name)[idx] for f in fields(cls)})  # noqa: E731
    return ChunkResult(
        subjects=chunk.subjects,
        stays=chunk.stays.take(idx),
        sim=sim,
        timeline=take(chunk.timeline, Timeline),
        truth=take(chunk.truth, Truth),
        sofa={k: v[rows] for k, v in chunk.sofa.items()},
    )


def _concat_dataclass(items: list, cls: type):
    return cls(**{f.name: np.concatenate([getattr(x, f.name) for x in items]) for f in fields(cls)})


def _concat_results(results: list[SimulationResult], sizes: list[int]) -> SimulationResult:
    offset = 0
    hourly_parts = []
    for res, size in zip(results, sizes, strict=True):
        part = dict(res.hourly)
        part["stay"] = part["stay"] + offset
        hourly_parts.append(part)
        offset += size
    keys = hourly_parts[0].keys()
    hourly = {k: np.concatenate([p[k] for p in hourly_parts]) for k in keys}
    merged = {
        f.name: np.concatenate([getattr(r, f.name) for r in results])
        for f in fields(SimulationResult)
        if f.name != "hourly"
    }
    return SimulationResult(hourly=hourly, **merged)


def _minutes(t: np.ndarray) -> np.ndarray:
    return (np.asarray(t, dtype=np.int64) // 60) * 60


#: ``run(ordinal, simulator) -> SimulationResult``: how one ordinal's stays are simulated
#: (default: ``Simulator.run``; the truth harness steps it hour by hour to chart causally).
StayRunner = Callable[[int, Simulator], SimulationResult]


def chunk_entropy(seed: int | tuple[int, ...], chunk_index: int) -> list[int]:
    """Entropy of one chunk's random streams: ``[seed, chunk]`` (a world) or ``[*seed, chunk]``."""
    return [*seed, chunk_index] if isinstance(seed, tuple) else [seed, chunk_index]


def simulate_chunk(
    cfg: SynthConfig,
    seed: int | tuple[int, ...],
    chunk_index: int,
    attendings: Attendings,
    first_subject_index: int,
    n_subjects: int,
    run: StayRunner | None = None,
    plan: list[Stays] | None = None,
    run_many: Callable[[list[tuple[int, Simulator]]], list[SimulationResult]] | None = None,
) -> ChunkResult:
    """Simulate every ICU stay of ``n_subjects`` subjects (1-3 stays each).

    ``seed`` is a world's integer seed, or a tuple of integers for a stream disjoint from
    every world (the truth harness's fresh patients). ``plan`` re-simulates the stays of an
    earlier call (one ``Stays`` per ordinal) with the same random numbers instead of drawing
    readmissions anew; a planned stay counts only if its patient is still alive at its
    admission in this run. ``run_many`` (with a ``plan`` only): runs the planned stays of every
    ordinal at once, side by side (``synth/hourly.py``, ``run_charted_together``), instead of
    ``run`` ordinal after ordinal; each ordinal's simulation is its own either way (its own
    random stream, and its stays fixed by the plan).
    """
    root = np.random.SeedSequence(chunk_entropy(seed, chunk_index))
    # (a fifth child leaves the first four, and every earlier world, unchanged)
    pop_seed, stays_seed, sim_seed, outcome_seed, reorder_seed = root.spawn(5)
    rng_pop = np.random.default_rng(pop_seed)
    subjects = sample_subjects(cfg, rng_pop, first_subject_index, n_subjects)
    rng_stays = np.random.default_rng(stays_seed)
    rng_out = np.random.default_rng(outcome_seed)
    rng_reorder = np.random.default_rng(reorder_seed)
    sim_seeds = sim_seed.spawn(3)
    run = run or (lambda ordinal, sim: sim.run())

    next_admit = subjects.first_admit_time.copy()
    death_known = np.full(n_subjects, -1, dtype=np.int64)  # epoch s of death, -1 unknown
    stays_parts: list[Stays] = []
    sim_parts: list[SimulationResult] = []
    time_parts: list[Timeline] = []
    ran: list[SimulationResult] | None = None
    if plan is not None and run_many is not None:
        ran = run_many(
            [(o, Simulator(cfg, plan[o], attendings, sim_seeds[o])) for o in range(len(plan))]
        )
    for ordinal in range(3 if plan is None else len(plan)):
        if plan is None:
            eligible = (subjects.n_planned_stays > ordinal) & (
                (death_known < 0) | (death_known > next_admit)
            )
            pos = np.flatnonzero(eligible)
            if len(pos) == 0:
                break
            stays = sample_stays(
                cfg, rng_stays, subjects, pos, ordinal, next_admit[pos], len(attendings.fluid_bias)
            )
        else:
            stays = plan[ordinal]
            pos = stays.subject_pos
        if ran is not None:
            sim = ran[ordinal]
        else:
            sim = run(ordinal, Simulator(cfg, stays, attendings, sim_seeds[ordinal]))
        timeline = _timeline(cfg, rng_out, stays, sim, rng_reorder)
        stays_parts.append(stays)
        sim_parts.append(sim)
        time_parts.append(timeline)
        died = timeline.death_time >= 0
        if plan is not None:  # a planned readmission after this run's death does not happen
            died &= (death_known[pos] < 0) | (death_known[pos] > stays.admit_time)
        death_known[pos] = np.where(died, timeline.death_time, death_known[pos])
        gap = np.maximum(lognormal(rng_out, cfg.population.readmission_gap_days, len(pos)), 2.0)
        next_admit[pos] = _minutes(timeline.dischtime + gap * SECONDS_PER_DAY)

    stays = _concat_dataclass(stays_parts, Stays)
    sim = _concat_results(sim_parts, [s.n for s in stays_parts])
    timeline = _concat_dataclass(time_parts, Timeline)
    # a subject's death is known for all of their stays (dod is per patient)
    subj_death = death_known[stays.subject_pos]
    timeline.death_time = np.where(subj_death >= 0, subj_death, timeline.death_time)
    sofa = hourly_sofa(sim.hourly, stays.first_line)
    truth = _truth(stays, sim, timeline, sofa)
    return ChunkResult(subjects, stays, sim, timeline, truth, sofa)


def antibiotic_reorder(
    cfg: SynthConfig, rng: np.random.Generator, stays: Stays, sim: SimulationResult
) -> np.ndarray:
    """Per stay, the hour of the ICU re-order of the antibiotic course running at admission.

    A course started before ICU admission and still running then is ordered again in the ICU
    (MIMIC-IV's prescriptions: the receiving team re-writes the orders) with probability
    ``charting.antibiotic_reorder_probability``, ``charting.antibiotic_reorder_delay_h`` after
    intime, if the course and the ICU stay both last that long. The hour is placed 30 s into
    its minute, so the charted starttime (floored to the minute) and the truth agree on
    ``intime <= starttime < outtime``. Two draws per stay whatever its course, so a stay's
    draws do not depend on the others. nan: no re-order.
    """
    ch = cfg.charting
    u = rng.random(stays.n)
    z = rng.standard_normal(stays.n)
    intime_h = stays.pre_icu_h.astype(np.float64)
    abx, stop = sim.antibiotic_h, sim.antibiotic_stop_h
    # courses never overlap (a work-up waits for the last course to end), so at most one runs
    running = (abx < intime_h[:, None]) & (stop > intime_h[:, None])
    course_stop = np.where(running, stop, -np.inf).max(axis=1)
    delay = ch.antibiotic_reorder_delay_h.median * np.exp(ch.antibiotic_reorder_delay_h.sigma * z)
    minute = np.floor((intime_h + delay) * 60.0)
    at = (minute + 0.5) / 60.0
    end_minute = np.floor(np.where(np.isnan(sim.icu_end_h), np.inf, sim.icu_end_h) * 60.0)
    keep = (u < ch.antibiotic_reorder_probability) & (at < course_stop) & (minute < end_minute)
    return np.where(keep, at, np.nan)


def _timeline(
    cfg: SynthConfig,
    rng: np.random.Generator,
    stays: Stays,
    sim: SimulationResult,
    reorder_rng: np.random.Generator | None = None,
) -> Timeline:
    """``reorder_rng``: the stream of ``antibiotic_reorder`` (None: no re-orders, for a
    rollout's outcomes, which chart no prescriptions)."""
    p = cfg.physiology
    n = stays.n
    hour = SECONDS_PER_HOUR
    admit = stays.admit_time
    intime = admit + stays.pre_icu_h * hour
    outtime = _minutes(admit + sim.icu_end_h * hour)
    died_icu = sim.died_in_icu
    u = rng.random((n, 4))
    # death after the ICU within 90 days, from residual organ dysfunction, age and comorbidity
    logit = (
        p.post_icu_intercept
        + p.post_icu_organ * sim.residual_organ
        + p.post_icu_age_per_year * (stays.age - 65.0)
        + p.post_icu_comorbidity * stays.comorbidity
        + p.post_icu_infection * np.minimum(sim.residual_infection, 1.0)
    )
    dies_90 = ~died_icu & (u[:, 0] < _sigmoid(logit))
    days = np.minimum(lognormal(rng, p.post_icu_death_days, n), 89.0)
    late = ~died_icu & ~dies_90 & (u[:, 1] < p.late_death_1y_probability)
    days = np.where(late, 90.0 + 275.0 * u[:, 2], days)
    post_death = _minutes(outtime + days * SECONDS_PER_DAY)
    hosp_days = lognormal(rng, cfg.population.hospital_stay_after_icu_days, n)
    dischtime = _minutes(outtime + np.maximum(hosp_days, 0.1) * SECONDS_PER_DAY)
    post_dies = dies_90 | late
    in_hosp_post = post_dies & (post_death < dischtime)
    dischtime = np.where(in_hosp_post, post_death, dischtime)
    dischtime = np.where(died_icu, outtime, dischtime)
    deathtime = np.where(died_icu, outtime, np.where(in_hosp_post, post_death, -1))
    death_time = np.where(died_icu, outtime, np.where(post_dies, post_death, -1))
    prophylaxis = stays.prophylaxis & (stays.infection_kind == 0)
    proph_h = np.where(prophylaxis, stays.pre_icu_h + 2.0 * u[:, 3], np.nan)
    screen = rng.random(n) < 0.2
    screen_h = np.where(screen, stays.pre_icu_h + 3.0 * rng.random(n), np.nan)
    return Timeline(
        admittime=admit,
        intime=intime,
        outtime=outtime,
        dischtime=dischtime,
        deathtime=deathtime.astype(np.int64),
        death_time=death_time.astype(np.int64),
        died_in_icu=died_icu,
        prophylaxis_h=proph_h,
        screen_h=screen_h,
        antibiotic_reorder_h=(
            np.full(n, np.nan)
            if reorder_rng is None
            else antibiotic_reorder(cfg, reorder_rng, stays, sim)
        ),
    )


def _truth(stays: Stays, sim: SimulationResult, tl: Timeline, sofa: dict[str, np.ndarray]) -> Truth:
    hourly = sim.hourly
    k = sim.culture_h.shape[1]
    cultures = (
        [sim.culture_h[:, j] for j in range(k)]
        + [sim.culture2_h[:, j] for j in range(k)]
        + [tl.screen_h]
    )
    antibiotics = (
        [sim.antibiotic_h[:, j] for j in range(k)]
        + [sim.escalation_h[:, j] for j in range(k)]
        + [tl.prophylaxis_h]
        # the ICU re-order of a course running at admission: what the build sees as an
        # antibiotic started during the stay
        + [tl.antibiotic_reorder_h]
    )
    # mimic-code's Sepsis-3 (the build's default): antibiotics of the ICU stay, onset from
    # ICU hours, a SOFA hour at its end
    si_all = suspected_infection_times(
        cultures,
        antibiotics,
        antibiotic_window=(stays.pre_icu_h.astype(np.float64), sim.icu_end_h),
    )
    onset, sofa_hour, si_used = sepsis_onset(
        hourly["stay"],
        hourly["h"],
        sofa["sofa"],
        si_all,
        first_hour=stays.pre_icu_h.astype(np.int64),
        hour_end=True,
    )
    # the consensus definition: every antibiotic of the admission, every hour, at its start
    si_any = suspected_infection_times(cultures, antibiotics)
    consensus, _, _ = sepsis_onset(hourly["stay"], hourly["h"], sofa["sofa"], si_any)
    first_si = np.nanmin(np.where(np.isnan(si_all), np.inf, si_all), axis=1)
    si = np.where(np.isnan(si_used), np.where(np.isinf(first_si), np.nan, first_si), si_used)
    sepsis3 = ~np.isnan(onset)
    intime_h = stays.pre_icu_h.astype(np.float64)
    icu_end_h = sim.icu_end_h
    in_window = sepsis3 & (onset >= intime_h - 6.0) & (onset <= icu_end_h)
    max_sofa = np.zeros(stays.n, dtype=np.int64)
    np.maximum.at(max_sofa, hourly["stay"], sofa["sofa"].astype(np.int64))
    death_h = np.where(
        tl.death_time >= 0, (tl.death_time - tl.admittime) / SECONDS_PER_HOUR, np.inf
    )
    died_90_onset = sepsis3 & (death_h <= onset + 90 * 24)
    died_90_in = death_h <= intime_h + 90 * 24
    consensus3 = ~np.isnan(consensus)
    consensus_in_window = consensus3 & (consensus >= intime_h - 6.0) & (consensus <= icu_end_h)
    return Truth(
        infected=(stays.infection_kind > 0) & (stays.infection_h < icu_end_h),
        infection_h=np.where(
            stays.infection_kind > 0, stays.infection_h.astype(np.float64), np.nan
        ),
        suspected_infection_h=si,
        sofa_hour=sofa_hour,
        onset_h=onset,
        sepsis3=sepsis3,
        sepsis3_in_icu_window=in_window,
        max_sofa=max_sofa,
        died_90d_after_onset=died_90_onset,
        died_90d_after_intime=died_90_in,
        consensus_onset_h=consensus,
        sepsis3_consensus_in_icu_window=consensus_in_window,
        died_90d_after_consensus_onset=consensus3 & (death_h <= consensus + 90 * 24),
    )
