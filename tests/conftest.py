"""Shared fixtures: small synthetic worlds generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sepsisrl.synth.config import SynthConfig, load_synth_config
from sepsisrl.synth.world import WorldSummary, generate_world

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
