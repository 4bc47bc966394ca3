"""Treatments act causally; clinicians respond to the state; simple policies differ in truth."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from sepsisrl.synth.rollout import (
    MapLactateRule,
    NoTreatment,
    RolloutResult,
    SimulatedClinicians,
    rollout,
)

N = 700


def paired_difference_ci(a: np.ndarray, b: np.ndarray, seed: int = 0, n_boot: int = 2000):
    """Bootstrap 95 % CI of mean(a - b) over paired patients."""
    d = a.astype(float) - b.astype(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), (n_boot, len(d)))
    boots = d[idx].mean(axis=1)
    return d.mean(), np.percentile(boots, 2.5), np.percentile(boots, 97.5)


@pytest.fixture(scope="module")
def rollouts() -> dict[str, RolloutResult]:
    return {
        "clinicians": rollout(SimulatedClinicians(), N, seed=99),
        "none": rollout(NoTreatment(), N, seed=99),
        "rule": rollout(MapLactateRule(), N, seed=99),
    }


def test_rollouts_are_paired_on_the_same_patients(rollouts):
    ids = [r.column("stay_id") for r in rollouts.values()]
    assert all((i == ids[0]).all() for i in ids)
    maps = [r.column("map_before_icu") for r in rollouts.values()]
    assert np.allclose(maps[0], maps[1], equal_nan=True)


def test_policies_have_clearly_different_true_mortality(rollouts):
    died = {k: r.column("died_90d") for k, r in rollouts.items()}
    diff, lo, hi = paired_difference_ci(died["none"], died["clinicians"])
    assert lo > 0, f"no treatment vs clinicians: {diff:.3f} [{lo:.3f}, {hi:.3f}]"
    diff, lo, hi = paired_difference_ci(died["none"], died["rule"])
    assert lo > 0, f"no treatment vs rule: {diff:.3f} [{lo:.3f}, {hi:.3f}]"
    # the rule is not the clinicians: it treats differently, with different outcomes
    assert not np.array_equal(died["rule"], died["clinicians"])
    fluid_rule = rollouts["rule"].column("iv_fluid_ml_icu").mean()
    fluid_clin = rollouts["clinicians"].column("iv_fluid_ml_icu").mean()
    assert abs(fluid_rule - fluid_clin) > 200


def test_withholding_treatment_raises_mortality_among_hypotensive_septic_patients(rollouts):
    hypotensive = rollouts["clinicians"].column("map_before_icu") < 65
    assert hypotensive.sum() > 100
    none = rollouts["none"].column("died_90d")[hypotensive]
    treated = rollouts["clinicians"].column("died_90d")[hypotensive]
    diff, lo, _ = paired_difference_ci(none, treated)
    assert diff > 0.04 and lo > 0


def test_true_value_orders_like_mortality(rollouts):
    v = {k: r.value for k, r in rollouts.items()}
    m = {k: r.mortality_90d for k, r in rollouts.items()}
    assert (v["none"] < v["clinicians"]) == (m["none"] > m["clinicians"])
    assert all(-15 <= x <= 15 for x in v.values())


def test_policy_receives_only_data_charted_before_the_decision():
    seen = []

    class Spy:
        def __call__(self, batch):
            icu = batch.static["icustays"]
            hadm_to_stay = dict(
                zip(icu["hadm_id"].to_pylist(), icu["stay_id"].to_pylist(), strict=True)
            )
            dec = dict(
                zip(
                    batch.stay_id.tolist(),
                    batch.decision_time.astype("int64").tolist(),
                    strict=True,
                )
            )
            for name, table in batch.tables.items():
                col = "starttime" if name == "inputevents" else "charttime"
                if table.num_rows:
                    t = table[col].cast("int64").to_numpy()
                    if "stay_id" in table.column_names:
                        sid = table["stay_id"].to_pylist()
                    else:
                        sid = [hadm_to_stay[x] for x in table["hadm_id"].to_pylist()]
                    assert set(sid) <= set(dec)
                    seen.append(all(ti < dec[s] for ti, s in zip(t.tolist(), sid, strict=True)))
            return np.zeros(len(batch), dtype=np.int64)

    rollout(Spy(), 30, seed=1, horizon_steps=4)
    assert seen and all(seen)


def test_invalid_actions_are_rejected():
    with pytest.raises(ValueError, match="invalid action"):
        rollout(lambda b: np.full(len(b), 25), 5, seed=1, horizon_steps=1)
    with pytest.raises(ValueError, match="actions for"):
        rollout(lambda b: np.zeros(len(b) + 1, dtype=int), 5, seed=1, horizon_steps=1)


def test_clinicians_doses_respond_to_map_and_lactate(world):
    h = pq.read_table(world.truth_dir / "hourly.parquet")
    icu = h["in_icu"].to_numpy(zero_copy_only=False)
    map_ = h["map"].to_numpy()[icu]
    lactate = h["lactate"].to_numpy()[icu]
    vaso = h["total_vaso_eq"].to_numpy()[icu]
    bolus = h["bolus_ml"].to_numpy()[icu] > 0
    on = vaso > 0
    assert on[map_ < 60].mean() > 2 * on[map_ > 75].mean()
    assert bolus[lactate > 4].mean() > 2 * bolus[lactate < 1.5].mean()
    # among patients on vasopressors, the dose is higher when MAP is lower
    assert np.median(vaso[on & (map_ < 62)]) >= np.median(vaso[on & (map_ > 72)])
