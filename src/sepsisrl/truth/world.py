"""The world behind a synthetic workspace, and fresh patients drawn from it.

``TruthContext.load(WS)`` reads what a rollout must share with the build of ``WS``: the
world's configuration and seed (``<raw>_truth/world.json``), the build's resolved
configuration (``build_config.json``), its train-fitted statistics (imputation medians,
z-scores, dose bins) and the replay's reward and gamma. Nothing is refit.

``simulate_population`` draws new patients from the same world (same configuration, same
attending clinicians) with a random stream disjoint from the world's, simulates them under
the world's clinicians, charts every hour as it is simulated (``synth/hourly.py``), writes
the MIMIC tables and runs the build up to the episodes stage with the workspace's
configuration: that gives the cohort, each stay's Sepsis-3 onset and its decision grid,
exactly as the replay defines them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sepsisrl.contracts import ContractError, ReplayMeta
from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.conventions import complete_resolved_config
from sepsisrl.dataset.state import FrozenStatistics
from sepsisrl.locks import clean_temporaries, folder_lock
from sepsisrl.mimic.schema import TABLES
from sepsisrl.synth import catalog
from sepsisrl.synth.cohort import ChunkResult, simulate_chunk
from sepsisrl.synth.config import SynthConfig
from sepsisrl.synth.hourly import HourlyCharter, chunk_tables, hourly_config, run_charted
from sepsisrl.synth.population import Attendings, Stays, sample_attendings
from sepsisrl.workspace import atomic_folder, code_fingerprint, read_json, stable_hash, write_json

#: Subjects per simulation chunk of a fresh population.
POPULATION_CHUNK = 5000
#: Mixed into the seed of fresh patients so that their stream never meets a world's.
TRUTH_STREAM = 0x7E57


class TruthError(ValueError):
    """The truth cannot be computed as asked (not a synthetic workspace, mismatched model...)."""


def fresh_entropy(world_seed: int, seed: int) -> tuple[int, ...]:
    """Seed of fresh patients: disjoint from every world seed (worlds use ``[seed, chunk]``)."""
    return (int(world_seed), TRUTH_STREAM, int(seed))


@dataclass
class TruthContext:
    """Everything a rollout shares with the build of a synthetic workspace."""

    workspace: Path
    build_cfg: BuildConfig
    synth_cfg: SynthConfig
    world_seed: int
    world: dict[str, Any]
    stats: FrozenStatistics
    feature_names: list[str]
    n_actions: int  # the replay's action grid (meta.json), which policies act on
    gamma: float
    terminal_survived: float
    terminal_died: float
    fingerprints: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, workspace: str | Path) -> TruthContext:
        ws = Path(workspace)
        summary_path = ws / "build_summary.json"
        if not summary_path.is_file():
            raise TruthError(
                f"{ws} is not a built workspace (no build_summary.json): run `sepsisrl build` "
                "or `sepsisrl run` first"
            )
        summary = read_json(summary_path)
        source = summary.get("source", {})
        if source.get("kind") != "synthetic":
            raise TruthError(
                f"{ws} was built from {source.get('kind', 'an unknown source')!r} tables "
                f"({source.get('root')}): the true outcome of a policy exists only in a "
                "synthetic world (build a workspace from `sepsisrl synth` output)"
            )
        root = Path(source["root"])
        world_path = root.parent / f"{root.name}_truth" / "world.json"
        if not world_path.is_file():
            raise TruthError(
                f"{ws}: its synthetic source {root} has no ground-truth sidecar {world_path}"
            )
        cfg_path = ws / "build_config.json"
        if not cfg_path.is_file():
            raise TruthError(
                f"{ws} has no build_config.json (built by an older sepsisrl): rerun "
                f"`sepsisrl build --source {root} --workspace {ws}`"
            )
        world = read_json(world_path)
        build_cfg = BuildConfig.model_validate(complete_resolved_config(read_json(cfg_path)))
        synth_cfg = SynthConfig.model_validate(world["config"])
        metas = sorted((ws / "replay").glob("*/meta.json"))
        if not metas:
            raise TruthError(f"{ws} has no replay dataset (replay/*/meta.json)")
        try:
            meta = ReplayMeta.load(metas[0])
        except ContractError as exc:
            raise TruthError(str(exc)) from None
        terminal = (meta.reward.terminal_survived, meta.reward.terminal_died)
        if None in terminal:  # optional in the replay contract, always written by a build
            raise TruthError(
                f"{metas[0]}: its reward section has no terminal_survived/terminal_died "
                "(not written by sepsisrl build?)"
            )
        stats = FrozenStatistics.load(ws, build_cfg)
        prep_sha = _sha256(ws / "features" / "preprocessing.json")
        bins_sha = _sha256(ws / "actions" / "bins.json")
        return cls(
            workspace=ws,
            build_cfg=build_cfg,
            synth_cfg=synth_cfg,
            world_seed=int(world["seed"]),
            world=world,
            stats=stats,
            feature_names=list(meta.feature_names),
            n_actions=meta.n_actions,
            gamma=float(meta.gamma),
            terminal_survived=float(terminal[0]),
            terminal_died=float(terminal[1]),
            fingerprints={
                "world_config_sha256": world["config_sha256"],
                "world_seed": str(world["seed"]),
                "source_fingerprint": source.get("fingerprint", ""),
                "build_config_sha256": stable_hash(build_cfg.model_dump(mode="json")),
                "preprocessing_sha256": prep_sha,
                "bins_sha256": bins_sha,
            },
        )

    def build_fingerprint(self) -> str:
        """One hash of what the state function depends on (config, statistics)."""
        keys = ("build_config_sha256", "preprocessing_sha256", "bins_sha256")
        return stable_hash({k: self.fingerprints[k] for k in keys})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Population:
    """Fresh patients simulated under the clinicians, charted, and built to episodes."""

    folder: Path  # raw/ (MIMIC tables, parquet) and ws/ (build up to episodes)
    seed: int | tuple[int, ...]
    n_patients: int
    chunk_subjects: int
    cfg: SynthConfig
    attendings: Attendings
    plans: dict[int, list[Stays]] = field(default_factory=dict)

    @property
    def raw(self) -> Path:
        return self.folder / "raw"

    @property
    def ws(self) -> Path:
        return self.folder / "ws"

    def chunks(self) -> list[tuple[int, int, int]]:
        """(chunk index, first subject, number of subjects) of every chunk."""
        out, start, c = [], 0, 0
        while start < self.n_patients:
            n = min(self.chunk_subjects, self.n_patients - start)
            out.append((c, start, n))
            start += n
            c += 1
        return out

    def plan(self, chunk_index: int) -> list[Stays]:
        """The stays of a chunk per ordinal (read from ``plans/``, else re-simulated)."""
        if chunk_index not in self.plans:
            saved = sorted((self.folder / "plans").glob(f"chunk{chunk_index}_ordinal*.parquet"))
            if saved:
                self.plans[chunk_index] = [_read_stays(p) for p in saved]
            else:
                _, first, n = self.chunks()[chunk_index]
                chunk = simulate_chunk(self.cfg, self.seed, chunk_index, self.attendings, first, n)
                self.plans[chunk_index] = _plan_of(chunk)
        return self.plans[chunk_index]

    def save_plans(self, folder: Path) -> None:
        (folder / "plans").mkdir(parents=True, exist_ok=True)
        for c, plan in self.plans.items():
            for o, stays in enumerate(plan):
                table = pa.table({f.name: getattr(stays, f.name) for f in fields(Stays)})
                pq.write_table(table, folder / "plans" / f"chunk{c}_ordinal{o}.parquet")

    def cohort(self) -> pa.Table:
        return pq.read_table(self.ws / "cohort" / "cohort.parquet")

    def episodes(self) -> pa.Table:
        return pq.read_table(self.ws / "episodes" / "episodes.parquet")

    def steps(self) -> pa.Table:
        return pq.read_table(self.ws / "episodes" / "steps.parquet")


def _read_stays(path: Path) -> Stays:
    table = pq.read_table(path)
    return Stays(**{f.name: table[f.name].to_numpy() for f in fields(Stays)})


def _plan_of(chunk: ChunkResult) -> list[Stays]:
    st = chunk.stays
    n_ord = int(st.ordinal.max()) + 1 if st.n else 0
    return [st.take(np.flatnonzero(st.ordinal == o)) for o in range(n_ord)]


def write_tables(folder: Path, tables: dict[str, list[pa.Table]]) -> None:
    """MIMIC-IV layout (``hosp/``, ``icu/``) as Parquet, dictionaries included."""
    (folder / "hosp").mkdir(parents=True, exist_ok=True)
    (folder / "icu").mkdir(parents=True, exist_ok=True)
    parts = dict(tables)
    parts.setdefault("d_items", [catalog.d_items_table()])
    parts.setdefault("d_labitems", [catalog.d_labitems_table()])
    for name, schema in TABLES.items():
        chunks = [t for t in parts.get(name, []) if t.num_rows]
        tab = (
            pa.concat_tables([t.cast(schema.arrow_schema()) for t in chunks])
            if chunks
            else schema.arrow_schema().empty_table()
        )
        pq.write_table(tab, folder / f"{schema.relpath}.parquet")


def population_key(ctx: TruthContext, seed: int | tuple[int, ...], n_patients: int) -> str:
    return stable_hash(
        {
            "world": ctx.fingerprints["world_config_sha256"],
            "world_seed": ctx.world_seed,
            "seed": list(seed) if isinstance(seed, tuple) else seed,
            "patients": n_patients,
            "build": ctx.fingerprints["build_config_sha256"],
            "code": code_fingerprint("build"),  # the build's code
            "simulator": code_fingerprint("truth"),  # the world's and the harness's code
        }
    )[:16]


def simulate_population(
    ctx: TruthContext,
    seed: int | tuple[int, ...],
    n_patients: int,
    folder: Path,
    progress=None,
) -> Population:
    """Simulate, chart and build (to episodes) ``n_patients`` patients; cached in ``folder``."""
    cfg = hourly_config(ctx.synth_cfg)
    attendings = sample_attendings(ctx.synth_cfg, ctx.world_seed)
    pop = Population(
        folder=Path(folder),
        seed=seed,
        n_patients=int(n_patients),
        # one simulation batch per stay ordinal for up to POPULATION_CHUNK patients: a rollout
        # computes states once per simulated hour with decisions due, per batch
        chunk_subjects=POPULATION_CHUNK,
        cfg=cfg,
        attendings=attendings,
    )
    done = pop.folder / "population.json"
    if done.is_file():
        return pop
    if n_patients < 1:
        raise TruthError(f"--patients must be at least 1, got {n_patients}")
    # a shared cache: a second command simulating the same population waits, then reuses it
    with folder_lock(pop.folder, "truth population", wait=True):
        if done.is_file():
            return pop
        clean_temporaries(pop.folder)
        _simulate_into(ctx, pop, seed, n_patients, progress)
    return pop


def _simulate_into(ctx: TruthContext, pop: Population, seed, n_patients: int, progress) -> None:
    """Write the population folder (``simulate_population`` holds its lock)."""
    from sepsisrl.dataset.builder import build

    with atomic_folder(pop.folder) as tmp:
        tables = simulate_tables(pop, progress)
        write_tables(tmp / "raw", tables)
        pop.save_plans(tmp)
        # the build's truth sidecar check: a world.json next to the tables marks them synthetic
        sidecar = tmp / "raw_truth"
        sidecar.mkdir()
        (sidecar / "world.json").write_text(
            json.dumps({"kind": "synthetic", "truth_population": True}) + "\n"
        )
        build(tmp / "raw", tmp / "ws", ctx.build_cfg, stop_after="episodes")
        write_json(
            tmp / "population.json",
            {
                "seed": list(seed) if isinstance(seed, tuple) else seed,
                "patients": n_patients,
                "fingerprints": ctx.fingerprints,
            },
        )
    # the build recorded the temporary folder as its source root; nothing reads it afterwards
    shutil.rmtree(pop.folder / "ws" / ".duckdb_tmp", ignore_errors=True)


def simulate_tables(
    pop: Population, progress: Callable[[int, int], None] | None = None
) -> dict[str, list[pa.Table]]:
    """Simulate ``pop``'s patients under the clinicians, charting every hour (plans kept)."""
    tables: dict[str, list[pa.Table]] = {}
    cfg, attendings = pop.cfg, pop.attendings
    for c, first, n in pop.chunks():
        charters: dict[int, HourlyCharter] = {}
        run = run_charted(cfg, _entropy(pop.seed, c), attendings, charters)
        chunk = simulate_chunk(cfg, pop.seed, c, attendings, first, n, run=run)
        pop.plans[c] = _plan_of(chunk)
        for name, tab in chunk_tables(cfg, pop.seed, c, chunk, charters, attendings).items():
            tables.setdefault(name, []).append(tab)
        if progress is not None:
            progress(first + n, pop.n_patients)
    return tables


def generate_hourly_world(
    out: str | Path, n_patients: int, seed: int, cfg: SynthConfig
) -> Population:
    """A synthetic world charted hour by hour (the truth harness's layout), written like
    ``sepsisrl synth``: ``out/`` (MIMIC tables, Parquet) and ``out_truth/world.json``.

    Building it and rolling its own patients out with a policy that defers to the clinicians
    must reproduce the build's states and actions row for row (the harness's parity check).
    """
    from sepsisrl.config import config_hash

    out = Path(out)
    hcfg = hourly_config(cfg)
    pop = Population(
        folder=out.parent,
        seed=int(seed),
        n_patients=int(n_patients),
        chunk_subjects=int(hcfg.output.chunk_subjects),
        cfg=hcfg,
        attendings=sample_attendings(cfg, int(seed)),
    )
    write_tables(out, simulate_tables(pop))
    sidecar = out.parent / f"{out.name}_truth"
    sidecar.mkdir(parents=True, exist_ok=True)
    write_json(
        sidecar / "world.json",
        {
            "schema_version": "1",
            "kind": "synthetic",
            "layout": "MIMIC-IV v3.1, charted hour by hour (sepsisrl truth)",
            "seed": int(seed),
            "n_subjects": int(n_patients),
            "config_sha256": config_hash(cfg),
            "config": cfg.model_dump(mode="json"),
        },
    )
    return pop


def _entropy(seed: int | tuple[int, ...], chunk_index: int) -> list[int]:
    from sepsisrl.synth.cohort import chunk_entropy

    return chunk_entropy(seed, chunk_index)
