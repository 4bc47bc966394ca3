"""Generate a synthetic MIMIC-IV world on disk (``sepsisrl synth``).

Layout written (identical to a MIMIC-IV v3.1 download for the tables the pipeline reads)::

    OUT/hosp/{patients,admissions,prescriptions,microbiologyevents,labevents,d_labitems}.csv.gz
    OUT/icu/{icustays,chartevents,inputevents,outputevents,d_items}.csv.gz

and, next to it (never inside), the ground-truth sidecar::

    OUT_truth/world.json      seed, config, counts, conventions, file checksums
    OUT_truth/stays.parquet   per stay: true infection, suspicion, Sepsis-3 onset, outcome
    OUT_truth/hourly.parquet  per stay-hour: latent state, true values, treatment, true SOFA

Both trees are built in temporary folders and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sepsisrl import __version__
from sepsisrl.config import config_hash
from sepsisrl.interrupts import InterruptLatch
from sepsisrl.mimic.schema import TABLES
from sepsisrl.synth import catalog, charting, tables
from sepsisrl.synth.cohort import ChunkResult, subset_chunk
from sepsisrl.synth.config import SynthConfig, load_synth_config
from sepsisrl.synth.csvgz import BackgroundWriter, GzipCsvFile, Segment
from sepsisrl.synth.parallel import ChunkWorkers, serial_chunks, synth_workers
from sepsisrl.synth.population import Attendings, sample_attendings
from sepsisrl.workspace import naming_output, remove_partials

#: Rows of one chunk's ids are offset by this much so ids are unique across chunks.
CHUNK_ID_STRIDE = 50_000_000
#: By default (``workers=0``) worker processes make a world of at least this many stays, and
#: a smaller one is made in this process: a pool's fixed costs (worker starts, the last chunk
#: made again trimmed, chunks made past the end) outweighed its gain on 2 cores at 5,000 stays
#: (35.9 s against 34.3) and not at 10,000 (56.5 against 63.3; bench/synth.py)
POOL_MIN_STAYS = 8000


class WorldExistsError(FileExistsError):
    """The output folder exists and is not empty (use ``overwrite=True``)."""


@dataclass
class WorldSummary:
    out_dir: Path
    truth_dir: Path
    seed: int
    n_stays: int
    n_subjects: int
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "truth_dir": str(self.truth_dir),
            "seed": self.seed,
            "n_stays": self.n_stays,
            "n_subjects": self.n_subjects,
            "rows": self.rows,
            "seconds": round(self.seconds, 2),
        }


def default_truth_dir(out_dir: Path) -> Path:
    """The sidecar sits next to the MIMIC tree: ``<out>_truth``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}_truth"


def chart_chunk(
    cfg: SynthConfig, chunk: ChunkResult, seed: int, chunk_index: int, attendings: Attendings
) -> dict[str, pa.Table]:
    """All MIMIC rows of one simulated chunk."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, chunk_index, 0xC4A7]))
    ctx = chunk_context(cfg, chunk, attendings, rng, chunk_index * CHUNK_ID_STRIDE + 1)
    return {
        **stay_tables(ctx, chunk, attendings),
        "labevents": charting.labevents(ctx),
        "chartevents": charting.chartevents(ctx),
        "inputevents": charting.inputevents(ctx),
        "outputevents": charting.outputevents(ctx),
    }


def chunk_context(
    cfg: SynthConfig,
    chunk: ChunkResult,
    attendings: Attendings,
    rng: np.random.Generator,
    id_base: int,
) -> charting.ChartContext:
    """The charting context of a whole simulated chunk."""
    return charting.ChartContext(
        cfg=cfg,
        stays=chunk.stays,
        hourly=chunk.sim.hourly,
        admittime=chunk.timeline.admittime,
        intime=chunk.timeline.intime,
        outtime=chunk.timeline.outtime,
        attending_provider=attendings.provider_id,
        rng=rng,
        id_base=id_base,
    )


def stay_tables(
    ctx: charting.ChartContext, chunk: ChunkResult, attendings: Attendings
) -> dict[str, pa.Table]:
    """patients, admissions, icustays, prescriptions and microbiologyevents of a chunk (in that
    order, from ``ctx.rng``)."""
    sim, rng = chunk.sim, ctx.rng
    workups = {
        "culture_h": sim.culture_h,
        "culture2_h": sim.culture2_h,
        "antibiotic_h": sim.antibiotic_h,
        "antibiotic_stop_h": sim.antibiotic_stop_h,
        "escalation_h": sim.escalation_h,
        "antibiotic_reorder_h": chunk.timeline.antibiotic_reorder_h,
    }
    return {
        "patients": tables.patients(chunk, rng),
        "admissions": tables.admissions(chunk, rng, attendings.provider_id),
        "icustays": tables.icustays(chunk, rng),
        "prescriptions": charting.prescriptions(ctx, workups, chunk.timeline.prophylaxis_h),
        "microbiologyevents": charting.microbiologyevents(
            ctx, workups, chunk.timeline.screen_h, chunk.truth.infected
        ),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_destination(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise WorldExistsError(
            f"{what} {path} already exists and is not empty; choose another folder or pass "
            "--overwrite to replace it"
        )


#: How the sidecar's truth is defined (written into ``world.json``).
_CONVENTIONS = {
    "times": "sidecar times are the world's de-identified clock, like the MIMIC tables",
    "sofa": "true SOFA per hour: lab components every hour, bedside components in the "
    "ICU only; each component worst in the trailing 24 h; while ventilated, the GCS of "
    "neurological function without sedation",
    "suspected_infection": "culture then antibiotic within 72 h, or antibiotic then "
    "culture within 24 h, the antibiotic started during the ICU stay (the ICU "
    "re-order of a course running at admission included); time = earlier event "
    "of the pair",
    "sepsis_onset": "first ICU hour with SOFA >= 2 whose end lies in [SI - 48 h, "
    "SI + 24 h]; onset = min(SI, that hour's end); earliest over all qualifying SIs",
    "sepsis3_in_icu_window": "onset inside [intime - 6 h, outtime]",
    "died_90d_after_onset": "death (in hospital or after discharge) within 90 days "
    "of the Sepsis-3 onset",
}


def generate_world(
    out_dir: str | Path,
    n_stays: int,
    seed: int = 0,
    cfg: SynthConfig | None = None,
    truth_dir: str | Path | None = None,
    overwrite: bool = False,
    hourly_truth: bool = True,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 0,
) -> WorldSummary:
    """Simulate ``n_stays`` ICU stays and write the MIMIC-IV tree plus the truth sidecar.

    ``workers``: processes simulating chunks side by side (``synth/parallel.py``); 1: all in
    this process; 0 (default): one per CPU core, at most 4, for a world of ``POOL_MIN_STAYS``
    stays or more. The files are the same bytes either way."""
    if n_stays < 1:
        raise ValueError(f"n_stays must be at least 1, got {n_stays}")
    cfg = cfg or load_synth_config()
    n_workers = synth_workers(workers)
    out = Path(out_dir).absolute()
    truth = Path(truth_dir).absolute() if truth_dir else default_truth_dir(out)
    tmp_out, tmp_truth = _temporary_folders(out, truth, overwrite)
    started = time.perf_counter()
    files = {
        name: GzipCsvFile(
            tmp_out / f"{schema.relpath}.csv.gz", schema.column_names, cfg.output.gzip_level
        )
        for name, schema in TABLES.items()
    }
    writer = BackgroundWriter(files)
    sidecar = _TruthWriters(tmp_truth)
    summary = WorldSummary(out, truth, seed, 0, 0)
    latch = InterruptLatch().__enter__()
    pool = None
    try:
        writer.submit("d_items", catalog.d_items_table())
        writer.submit("d_labitems", catalog.d_labitems_table())
        attendings = sample_attendings(cfg, seed)
        if n_workers > 1 and (workers or n_stays >= POOL_MIN_STAYS):
            pool = ChunkWorkers(cfg, seed, hourly_truth, n_workers)
            parts = pool.chunks(attendings, n_stays)
        else:
            parts = serial_chunks(cfg, seed, attendings, hourly_truth, n_stays)
        for part in parts:
            latch.check()
            for name, rows in part.rows.items():
                if isinstance(rows, Segment):  # compressed by a worker
                    writer.submit_segment(name, rows)
                else:
                    writer.submit(name, rows)
            sidecar.write(part.truth)
            summary.n_stays += part.stays
            summary.n_subjects += part.subjects
            if progress is not None:
                progress(summary.n_stays, n_stays)
        latch.check()
        if pool is not None:
            pool.stop(wait=False)  # only chunks past the world's end are still being made
            pool = None
        writer.close()
        sidecar.close()
        summary.rows = {name: f.rows for name, f in files.items()}
        summary.seconds = time.perf_counter() - started
        world = _world_document(cfg, summary, tmp_out)
        with naming_output(tmp_truth / "world.json"):
            (tmp_truth / "world.json").write_text(json.dumps(world, indent=2) + "\n")
        latch.check()
        for tmp, final in ((tmp_truth, truth), (tmp_out, out)):
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except BaseException:
        if pool is not None:
            pool.stop(wait=False)
        writer.abort()
        sidecar.abort()
        for d in (tmp_out, tmp_truth):
            shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        latch.__exit__(None, None, None)
    return summary


def _temporary_folders(out: Path, truth: Path, overwrite: bool) -> tuple[Path, Path]:
    """Check the destinations and create empty temporary folders next to them (the trees are
    built there and renamed into place when complete)."""
    if truth == out or out in truth.parents or truth in out.parents:
        raise ValueError(
            f"the truth sidecar ({truth}) must be next to, not inside, the MIMIC tree ({out})"
        )
    _check_destination(out, overwrite, "output folder")
    _check_destination(truth, overwrite, "truth folder")
    # temporaries of killed earlier runs (their process has ended) go first
    remove_partials(out.parent, (out.name,))
    remove_partials(truth.parent, (truth.name,))
    tag = f"partial-{os.getpid()}"
    tmp_out = out.parent / f".{out.name}.{tag}"
    tmp_truth = truth.parent / f".{truth.name}.{tag}"
    for d in (tmp_out, tmp_truth):
        if d.exists():
            shutil.rmtree(d)
    (tmp_out / "hosp").mkdir(parents=True)
    (tmp_out / "icu").mkdir(parents=True)
    tmp_truth.mkdir(parents=True)
    return tmp_out, tmp_truth


def first_stays(chunk: ChunkResult, room: int) -> ChunkResult:
    """The chunk, or its first ``room`` stays (by subject, then stay) when it has more."""
    if chunk.stays.n <= room:
        return chunk
    order = np.lexsort((chunk.stays.ordinal, chunk.stays.subject_pos))
    keep = np.zeros(chunk.stays.n, dtype=bool)
    keep[order[:room]] = True
    return subset_chunk(chunk, keep)


class _TruthWriters:
    """The sidecar's Parquet files, written chunk by chunk: ``stays`` and (optional)
    ``hourly`` (zstd-compressed)."""

    OPTIONS: ClassVar[dict[str, dict[str, str]]] = {
        "stays.parquet": {},
        "hourly.parquet": {"compression": "zstd"},
    }

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writers: dict[str, pq.ParquetWriter] = {}

    def write(self, parts: dict[str, pa.Table]) -> None:
        for name, table in parts.items():
            self._write(name, table, self.OPTIONS[name])

    def _write(self, name: str, table: pa.Table, options: dict) -> None:
        path = self.folder / name
        with naming_output(path):
            if name not in self._writers:
                self._writers[name] = pq.ParquetWriter(path, table.schema, **options)
            self._writers[name].write_table(table)

    def close(self) -> None:
        for name, w in self._writers.items():
            with naming_output(self.folder / name):
                w.close()

    def abort(self) -> None:
        for w in self._writers.values():
            with contextlib.suppress(Exception):
                w.close()


def _world_document(cfg: SynthConfig, summary: WorldSummary, tmp_out: Path) -> dict:
    """``world.json``: seed, configuration, counts, file checksums and conventions."""
    return {
        "schema_version": "1",
        "created_by": f"sepsisrl {__version__}",
        "kind": "synthetic",
        "layout": "MIMIC-IV v3.1",
        "seed": summary.seed,
        "n_stays": summary.n_stays,
        "n_subjects": summary.n_subjects,
        "config_sha256": config_hash(cfg),
        "config": cfg.model_dump(mode="json"),
        "rows": summary.rows,
        "files": {
            f"{schema.relpath}.csv.gz": _sha256(tmp_out / f"{schema.relpath}.csv.gz")
            for schema in TABLES.values()
        },
        "conventions": _CONVENTIONS,
    }
