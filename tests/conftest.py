"""Shared fixtures: small synthetic worlds generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs in parallel processes (README: `pytest -n 2`): one BLAS/OpenMP thread per
    # process, so that the processes do not oversubscribe the cores (subprocesses inherit it)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

from sepsisrl.synth.config import SynthConfig, load_synth_config
from sepsisrl.synth.world import WorldSummary, generate_world

#: The benchmarks' folder: a benchmark under test is loaded from there (:func:`load_bench`).
BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(script: str):
    """``bench/<script>`` as a module, with bench/ on the path while it loads (the panel's
    benchmarks import each other's helpers from their folder)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(
            f"sepsisrl_{Path(script).stem}", BENCH / script
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


#: Small chunks keep test worlds fast; the determinism and prefix tests use the same setting.
SMALL_CHUNKS = {"output.chunk_subjects": 120}


def small_config(**overrides) -> SynthConfig:
    return load_synth_config(overrides={**SMALL_CHUNKS, **overrides})


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldSummary:
    """A 400-stay world at default charting density (seed 11)."""
    root = tmp_path_factory.mktemp("world")
    return generate_world(root / "mimic", 400, seed=11, cfg=small_config())


@pytest.fixture(scope="session")
def world_dir(world: WorldSummary) -> Path:
    return world.out_dir


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> WorldSummary:
    """A 900-stay world at physiology-only density (fast to build), seed 21."""
    root = tmp_path_factory.mktemp("small_world")
    cfg = small_config(**{"output.chunk_subjects": 300, "charting.density": 0.0})
    return generate_world(root / "raw", 900, seed=21, cfg=cfg)


@pytest.fixture(scope="session")
def built(small_world: WorldSummary, tmp_path_factory: pytest.TempPathFactory):
    """``sepsisrl build`` of ``small_world`` with the default pipeline config.

    Returns (workspace path, BuildConfig, BuildSummary). Tests must not modify it: copy the
    workspace first (``shutil.copytree``) to inject faults.
    """
    from sepsisrl.dataset.builder import build
    from sepsisrl.dataset.config import load_build_config

    cfg = load_build_config()
    ws = tmp_path_factory.mktemp("workspace") / "ws"
    summary = build(small_world.out_dir, ws, cfg)
    return ws, cfg, summary


@pytest.fixture(scope="session")
def own_world(tmp_path_factory: pytest.TempPathFactory):
    """A small world charted hour by hour (the truth harness's layout), built, and its own
    patients as a population: (root, population, TruthContext). Tests must not modify it."""
    from sepsisrl.dataset.builder import build
    from sepsisrl.dataset.config import load_build_config
    from sepsisrl.truth.world import TruthContext, generate_hourly_world
    from sepsisrl.workspace import write_json

    root = tmp_path_factory.mktemp("truth_world")
    # one chunk: a rollout calls the state function once per simulated hour with a decision
    # due in each chunk, so a second chunk nearly doubles every rollout on this world
    pop = generate_hourly_world(
        root / "raw", 150, seed=5, cfg=small_config(**{"output.chunk_subjects": 150})
    )
    build(root / "raw", root / "ws", load_build_config())
    write_json(root / "population.json", {"seed": 5, "note": "the world's own patients"})
    return root, pop, TruthContext.load(root / "ws")
