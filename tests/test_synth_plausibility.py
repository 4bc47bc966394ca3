"""The world resembles a MIMIC-IV ICU population (targets from the issue and the brief)."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sepsisrl.synth.world import generate_world

from .conftest import small_config
from .test_synth_schema import read


@pytest.fixture(scope="module")
def big_world(tmp_path_factory: pytest.TempPathFactory):
    """2,000 stays at physiology-only density: enough for population rates."""
    root = tmp_path_factory.mktemp("big")
    cfg = small_config(**{"output.chunk_subjects": 400, "charting.density": 0.0})
    return generate_world(root / "mimic", 2000, seed=2024, cfg=cfg)


def test_sepsis3_share_of_stays_is_30_to_45_percent(big_world):
    truth = pq.read_table(big_world.truth_dir / "stays.parquet")
    share = np.mean(truth["sepsis3_in_icu_window"].to_numpy())
    assert 0.30 <= share <= 0.45, share


def test_90_day_mortality_among_septic_stays_is_20_to_35_percent(big_world):
    truth = pq.read_table(big_world.truth_dir / "stays.parquet")
    septic = truth["sepsis3_in_icu_window"].to_numpy()
    died = truth["died_90d_after_onset"].to_numpy()
    mortality = died[septic].mean()
    assert 0.20 <= mortality <= 0.35, mortality
    # and septic patients die more often than the rest of the ICU population
    other = truth["died_90d_after_intime"].to_numpy()[~septic].mean()
    assert mortality > other


@pytest.mark.parametrize(
    "itemid, low, high",
    [
        (220045, 25, 220),  # heart rate
        (220052, 30, 160),  # arterial MAP
        (220181, 30, 160),  # non-invasive MAP
        (220210, 4, 60),  # respiratory rate
        (220277, 60, 100),  # SpO2
        (223762, 33, 42),  # temperature C
        (223761, 91, 108),  # temperature F
    ],
)
def test_vitals_are_in_physiological_ranges_apart_from_artifacts(big_world, itemid, low, high):
    ce = read(big_world.out_dir, "chartevents")
    v = ce.filter(pc.equal(ce["itemid"], itemid))["valuenum"].to_numpy(zero_copy_only=False)
    v = v[~np.isnan(v)]
    inside = (v >= low) & (v <= high)
    assert len(v) > 500
    assert inside.mean() > 0.99, (itemid, inside.mean())
    # the few outside are the intended artifacts, not a drifting physiology
    assert (~inside).mean() < 0.01


@pytest.mark.parametrize(
    "itemid, low, high",
    [(50813, 0.3, 25), (50912, 0.2, 15), (51265, 5, 800), (50885, 0.1, 40), (50820, 6.8, 7.7)],
)
def test_labs_are_in_physiological_ranges_apart_from_artifacts(big_world, itemid, low, high):
    lab = read(big_world.out_dir, "labevents")
    v = lab.filter(pc.equal(lab["itemid"], itemid))["valuenum"].to_numpy(zero_copy_only=False)
    v = v[~np.isnan(v)]
    assert len(v) > 200
    assert ((v >= low) & (v <= high)).mean() > 0.985


def test_icu_length_of_stay_resembles_mimic(big_world):
    icu = read(big_world.out_dir, "icustays")
    los = icu["los"].to_numpy()
    assert 1.2 < np.median(los) < 3.5  # MIMIC-IV median ICU LOS is about 2 days
    assert (los >= 0).all()
