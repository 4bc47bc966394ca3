"""Causal charting: the MIMIC rows of a simulation, charted hour by hour as it runs.

``sepsisrl synth`` charts a whole chunk at once, after its simulation (an infusion that runs
for ten hours is one ``inputevents`` row). A policy acting inside the world needs the rows
charted *so far*, and those rows must not change once the future is simulated. Here every
simulated hour is charted right after it is simulated, from that hour's record alone, with a
random stream keyed by (world entropy, chunk, stay ordinal, hour): the rows of hour ``h``
depend on hours ``<= h`` only, and two runs that simulate the same hours chart the same rows.

Differences from the chunk layout, all within what the build reads: infusions are one row
per hour (a 10-hour infusion is ten 1-hour rows, prorated identically by the build); the
filler items of ``charting.density`` are left out (the build never reads them); a stay's
ICU discharge time is known to the charting from the hour it happens, not before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from sepsisrl.mimic.schema import TABLES
from sepsisrl.synth import charting
from sepsisrl.synth.cohort import ChunkResult, chunk_entropy
from sepsisrl.synth.config import SynthConfig
from sepsisrl.synth.population import SECONDS_PER_HOUR, Attendings
from sepsisrl.synth.simulator import SimulationResult, Simulator
from sepsisrl.synth.world import chunk_context, stay_tables

CHARTED_TABLES = ("chartevents", "labevents", "inputevents", "outputevents")
#: row-id namespace: chunk, ordinal and hour each get their own block of ids
_CHUNK_IDS = 10**13
_ORDINAL_IDS = 10**11
_HOUR_IDS = 10**6
_NEVER = np.iinfo(np.int64).max
#: called before each simulated hour: ``hook(ordinal, simulator, charter)``
HourHook = Callable[[int, Simulator, "HourlyCharter"], None]
#: called with each charted hour's non-empty rows: ``sink(ordinal, table_name, rows)``
RowSink = Callable[[int, str, pa.Table], None]


def icu_end_time(admit: np.ndarray, icu_end_h: np.ndarray) -> np.ndarray:
    """ICU discharge (or death) time in epoch seconds, as the timeline computes ``outtime``
    (0 where the stay has not ended)."""
    t = admit + np.nan_to_num(icu_end_h) * SECONDS_PER_HOUR
    return (np.asarray(t, dtype=np.int64) // 60) * 60


def hourly_config(cfg: SynthConfig) -> SynthConfig:
    """The world's configuration without filler chart items (the build never reads them)."""
    return cfg.model_copy(update={"charting": cfg.charting.model_copy(update={"density": 0.0})})


class HourlyCharter:
    """Charts one ordinal batch of a chunk, one simulated hour at a time."""

    def __init__(
        self,
        cfg: SynthConfig,
        entropy: list[int],
        ordinal: int,
        sim: Simulator,
        attendings: Attendings,
        sink: RowSink | None = None,
        keep: bool = True,
    ) -> None:
        """``sink``: given every hour's rows as they are charted; ``keep=False``: the charter
        keeps none of them (:meth:`tables` is then empty), for a caller whose sink keeps
        what it reads."""
        self.entropy = entropy
        self.sink = sink
        self.keep = keep
        self.ordinal = ordinal
        self.sim = sim
        stays = sim.stays
        admit = stays.admit_time
        self.ctx = charting.ChartContext(
            cfg=cfg,
            stays=stays,
            hourly={},
            admittime=admit,
            intime=admit + stays.pre_icu_h.astype(np.int64) * SECONDS_PER_HOUR,
            outtime=np.full(stays.n, _NEVER),
            attending_provider=attendings.provider_id,
            rng=np.random.default_rng(0),
            id_base=entropy[-1] * _CHUNK_IDS + ordinal * _ORDINAL_IDS + 1,
            urine_carry=np.zeros(stays.n),
        )
        self.parts: dict[str, list[pa.Table]] = {name: [] for name in CHARTED_TABLES}

    def chart_last_hour(self) -> dict[str, pa.Table]:
        """Chart the hour the simulator has just simulated; returns (and keeps) its rows."""
        sim, ctx = self.sim, self.ctx
        record = sim._records[-1]
        h = int(sim.h) - 1
        ended = ~np.isnan(sim.icu_end_h)
        ctx.outtime = np.where(ended, icu_end_time(ctx.admittime, sim.icu_end_h), _NEVER)
        ctx.hourly = record
        ctx.rng = np.random.default_rng(
            np.random.SeedSequence([*self.entropy, self.ordinal, h, 0xC4A8])
        )
        ctx.id_offset = h * _HOUR_IDS
        rows = {
            "chartevents": charting.chartevents(ctx),
            "labevents": charting.labevents(ctx),
            "inputevents": charting.inputevents(ctx),
            "outputevents": charting.outputevents(ctx),
        }
        for name, tab in rows.items():
            if tab.num_rows:
                if self.keep:
                    self.parts[name].append(tab)
                if self.sink is not None:
                    self.sink(self.ordinal, name, tab)
        return rows

    def tables(self) -> dict[str, pa.Table]:
        """Every row charted so far."""
        return {name: _concat(name, parts) for name, parts in self.parts.items()}


def _concat(name: str, parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return TABLES[name].arrow_schema().empty_table()
    return pa.concat_tables(parts)


def run_charted(
    cfg: SynthConfig,
    entropy: list[int],
    attendings: Attendings,
    charters: dict[int, HourlyCharter],
    hook: HourHook | None = None,
    chart_through: Callable[[int, Simulator], int | None] | None = None,
    sink: RowSink | None = None,
    keep: bool = True,
) -> Callable[[int, Simulator], SimulationResult]:
    """A ``simulate_chunk`` runner that charts every hour as it is simulated.

    ``chart_through(ordinal, sim)``, asked once per run before its first hour: the last hour
    to chart (None: every hour; -1: none). The simulation goes on to its end either way. Each
    hour's rows are drawn from that hour's own random stream and describe that hour only, so
    the rows charted are those of a full run, hour for hour; a caller that reads nothing after
    some hour (the truth's rollouts, whose outcome is the simulator's) skips the rest.
    ``sink`` and ``keep``: as :class:`HourlyCharter`'s."""

    def run(ordinal: int, sim: Simulator) -> SimulationResult:
        charter = HourlyCharter(cfg, entropy, ordinal, sim, attendings, sink, keep)
        charters[ordinal] = charter
        limit = int(sim.intime_h.max()) + cfg.population.max_icu_los_h + 2
        last = chart_through(ordinal, sim) if chart_through is not None else None
        while sim.active.any() and sim.h < limit:
            if hook is not None:
                hook(ordinal, sim, charter)
            sim.step()
            if last is None or sim.h - 1 <= last:
                charter.chart_last_hour()
        if hook is not None:  # decisions due in the last simulated hour
            hook(ordinal, sim, charter)
        return sim.result()

    return run


#: ``run_charted_together``'s hook: called once per hour round with the (ordinal, simulation,
#: charter) of every simulation still running, in ordinal order, before any of them steps.
HoursHook = Callable[[list[tuple[int, Simulator, "HourlyCharter"]]], None]


def run_charted_together(
    cfg: SynthConfig,
    entropy: list[int],
    attendings: Attendings,
    charters: dict[int, HourlyCharter],
    hook: HoursHook,
    chart_through: Callable[[int, Simulator], int | None] | None = None,
    sink: RowSink | None = None,
    keep: bool = True,
) -> Callable[[list[tuple[int, Simulator]]], list[SimulationResult]]:
    """A ``simulate_chunk`` runner of several simulations at once (its ``run_many``): each
    simulation goes hour by hour exactly as :func:`run_charted` runs it alone (the hook at each
    hour and once after its last, each hour charted from its own random stream), but the
    simulations advance side by side, and ``hook`` gets the hour of every one still running
    in one call. The simulations share nothing, so each one's hours, rows and result are those
    it has run alone; a caller whose hook merges the simulations' work of an hour (the
    truth's state calls, ``truth/rollout.py``) pays that work's fixed cost once."""

    def run_many(items: list[tuple[int, Simulator]]) -> list[SimulationResult]:
        runs = []
        for ordinal, sim in items:
            charter = HourlyCharter(cfg, entropy, ordinal, sim, attendings, sink, keep)
            charters[ordinal] = charter
            limit = int(sim.intime_h.max()) + cfg.population.max_icu_los_h + 2
            last = chart_through(ordinal, sim) if chart_through is not None else None
            runs.append((ordinal, sim, charter, limit, last))
        live = runs
        while live:
            # the hook runs before a simulation steps, and once more after its last hour
            hook([(o, sim, charter) for o, sim, charter, _, _ in live])
            going = []
            for run in live:
                _, sim, charter, limit, last = run
                if sim.active.any() and sim.h < limit:
                    sim.step()
                    if last is None or sim.h - 1 <= last:
                        charter.chart_last_hour()
                    going.append(run)
            live = going
        return [sim.result() for _, sim, _, _, _ in runs]

    return run_many


def chunk_tables(
    cfg: SynthConfig,
    seed: int | tuple[int, ...],
    chunk_index: int,
    chunk: ChunkResult,
    charters: dict[int, HourlyCharter],
    attendings: Attendings,
) -> dict[str, pa.Table]:
    """Every MIMIC table of a chunk charted hour by hour, plus its static and order rows."""

    rng = np.random.default_rng(np.random.SeedSequence([*chunk_entropy(seed, chunk_index), 0xC4A7]))
    ctx = chunk_context(
        cfg, chunk, attendings, rng, chunk_index * _CHUNK_IDS + 3 * _ORDINAL_IDS + 1
    )
    out = stay_tables(ctx, chunk, attendings)
    charted = [charters[o].tables() for o in sorted(charters)]
    for name in CHARTED_TABLES:
        out[name] = _concat(name, [tabs[name] for tabs in charted])
    return out


__all__ = [
    "CHARTED_TABLES",
    "HourlyCharter",
    "RowSink",
    "chunk_tables",
    "hourly_config",
    "icu_end_time",
    "run_charted",
    "run_charted_together",
]
