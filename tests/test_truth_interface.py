"""The ``titrated`` truth interface: the simulated team titrates hourly inside the policy's
bins (the treatment a logged 4-hour action records), beside the ``held`` interface."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sepsisrl.synth.population import VASOPRESSIN_NE_FACTOR
from sepsisrl.synth.simulator import MAINTENANCE_FLUIDS, Simulator
from sepsisrl.truth.harness import compute_truth
from sepsisrl.truth.policies import Constant, world_policy
from sepsisrl.truth.rollout import bin_ranges, rollout_population


def _stub(n, vaso, fluid):
    z = np.zeros(n)
    return SimpleNamespace(
        titrate_vaso_floor=z + vaso[0], titrate_vaso_ceil=z + vaso[1],
        titrate_fluid_floor=z + fluid[0], titrate_fluid_ceil=z + fluid[1],
    )  # fmt: skip


def _decision(rng, n):
    return {
        "vaso_eq": rng.choice([0.0, 0.05, 0.2, 0.6], n),
        "vasopressin": rng.choice([0.0, 0.04], n),
        "epi_add": rng.choice([0.0, 0.05], n),
        "dobutamine": rng.choice([0.0, 5.0], n),
        "bolus_ml": rng.choice([0.0, 250.0, 500.0, 1000.0], n),
        "bolus_type": np.zeros(n, dtype=np.int64),
        "maint_rate": rng.choice([0.0, 75.0, 125.0], n),
        "maint_type": np.full(n, 1, dtype=np.int64),
    }


def _total(d):
    return d["vaso_eq"] + d["epi_add"] + VASOPRESSIN_NE_FACTOR * d["vasopressin"]


@pytest.mark.parametrize(
    ("vaso", "fluid"), [((0.0, 0.0), (0.0, 0.0)), ((0.05, 0.12), (40.0, 100.0)),
                        ((0.3, np.inf), (260.0, np.inf))],
)  # fmt: skip
def test_every_hour_stays_inside_the_bins_whatever_the_team_wants(vaso, fluid):
    rng = np.random.default_rng(0)
    n = 400
    sim = _stub(n, vaso, fluid)
    m = np.ones(n, dtype=bool)
    m[:50] = False  # not under the policy: untouched
    for _ in range(4):
        want = _decision(rng, n)
        got = {k: v.copy() for k, v in want.items()}
        Simulator._titrate_within(sim, got, m)
        tot = _total(got)
        vol = got["bolus_ml"] + got["maint_rate"]
        assert np.all((tot[m] >= vaso[0] - 1e-12) & (tot[m] <= vaso[1] + 1e-12))
        assert np.all((vol[m] >= fluid[0] - 1e-9) & (vol[m] <= fluid[1] + 1e-9))
        for k in want:
            np.testing.assert_array_equal(got[k][~m], want[k][~m])
        np.testing.assert_array_equal(got["dobutamine"], want["dobutamine"])  # not an action
        # every agent scaled alike when the team runs any: the mix is the team's
        on = m & (_total(want) > 0) & (tot > 0)
        ratio = tot[on] / _total(want)[on]
        np.testing.assert_allclose(got["vasopressin"][on], want["vasopressin"][on] * ratio)
        # the team's own choice is kept where it lies inside the bins
        want_vol = want["bolus_ml"] + want["maint_rate"]
        inside = m & (_total(want) >= vaso[0]) & (_total(want) <= vaso[1]) & (_total(want) > 0)
        np.testing.assert_allclose(tot[inside], _total(want)[inside])
        inside = m & (want_vol >= fluid[0]) & (want_vol <= fluid[1])
        np.testing.assert_allclose(vol[inside], want_vol[inside])


def test_a_team_that_gives_nothing_runs_the_floors():
    n = 3
    sim = _stub(n, (0.08, 0.15), (100.0, 200.0))
    m = np.ones(n, dtype=bool)
    d = {k: np.zeros(n) for k in _decision(np.random.default_rng(1), n)}
    d["maint_type"] = np.zeros(n, dtype=np.int64)
    Simulator._titrate_within(sim, d, m)
    np.testing.assert_allclose(d["vaso_eq"], 0.08)  # its first-line agent at the floor
    assert np.all(d["vasopressin"] == 0) and np.all(d["epi_add"] == 0)
    assert np.all(d["maint_type"] == MAINTENANCE_FLUIDS.index("nacl_09"))
    np.testing.assert_allclose(d["maint_rate"], 100.0)
    assert np.all(d["bolus_ml"] == 0)


def test_bin_ranges_lie_strictly_inside_each_bin():
    edges = np.array([0.05, 0.1, 0.2])
    rep = np.array([0.0, 0.03, 0.08, 0.15, 0.35])
    r = bin_ranges(edges, rep)
    assert r.shape == (5, 2) and np.all(r[0] == 0)
    lo = np.array([0.0, 0.05, 0.1, 0.2])
    hi = np.array([0.05, 0.1, 0.2, np.inf])
    assert np.all(r[1:, 0] > lo) and np.all(r[1:4, 1] < hi[:3]) and np.all(r[1:, 0] <= rep[1:])
    assert r[4, 1] == np.inf
    np.testing.assert_allclose(r[2], [0.065, 0.09])


def test_titrated_rollouts_deliver_the_chosen_bins_and_differ_from_held(own_world, tmp_path):
    _, pop, ctx = own_world
    held = rollout_population(ctx, pop, Constant(18, "c18"), tmp_path / "h")
    tit = rollout_population(ctx, pop, Constant(18, "c18"), tmp_path / "t", interface="titrated")
    assert tit.episodes["stay_id"].to_pylist() == held.episodes["stay_id"].to_pylist()
    # read back as the build reads a window, the titrated windows record the chosen action
    # about as often as the held doses do (the first window's part-hour before control aside)
    fid_t = np.mean(tit.decisions["logged_action"].to_numpy() == 18)
    fid_h = np.mean(held.decisions["logged_action"].to_numpy() == 18)
    assert fid_t > 0.9 and fid_t > fid_h - 0.05, (fid_t, fid_h)
    assert not tit.physiology.equals(held.physiology)  # the team's titration changed the course
    with pytest.raises(ValueError, match="unknown truth interface"):
        rollout_population(ctx, pop, Constant(0), tmp_path / "x", interface="hourly")


def test_deferring_to_the_clinicians_is_the_same_under_both_interfaces(own_world, tmp_path):
    _, pop, ctx = own_world
    pol = world_policy("clinician", None, None, ctx.feature_names, ctx.n_actions, 0)
    a = compute_truth(ctx.workspace, pol, tmp_path / "a", ctx=ctx, population=pop)
    b = compute_truth(ctx.workspace, pol, tmp_path / "b", ctx=ctx, population=pop,
                      interface="titrated")  # fmt: skip
    assert a["interface"] == "held" and b["interface"] == "titrated"
    assert a["value"] == b["value"] and a["mortality_90d"] == b["mortality_90d"]
    assert any("titrates every hour" in x for x in b["limits"])
    assert b["difference_from_clinicians"]["value"]["mean"] == 0.0


def test_cli_refuses_an_unknown_interface(own_world):
    root, _, _ = own_world
    res = subprocess.run(
        [sys.executable, "-m", "sepsisrl.cli", "truth", "--workspace", str(root / "ws"),
         "--policy", "clinician", "--interface", "hourly"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 2
    assert "--interface" in res.stderr and "'titrated'" in res.stderr and "hourly" in res.stderr
    assert not (root / "ws" / "truth" / "clinician-s0-n2000-hourly").exists()


def test_the_card_says_which_interface_its_truth_used():
    from sepsisrl.release.bundle import truth_lines

    ci = {"mean": 0.3, "ci95": [0.2, 0.4]}
    truth = {"patients_simulated": 10, "episodes": 4, "mortality_90d": ci, "value": ci,
             "clinicians": {"mortality_90d": ci, "value": ci},
             "difference_from_clinicians": {"mortality_90d": ci, "value": ci}}  # fmt: skip
    held = "\n".join(truth_lines(truth, None))  # a truth written before the interface existed
    assert "interface `held`: each action held for its 4-hour window" in held
    titrated = "\n".join(truth_lines({**truth, "interface": "titrated"}, None))
    assert "interface `titrated`" in titrated and "titrated every hour" in titrated


def test_the_card_says_plainly_whether_the_policy_is_truly_better_or_worse():
    from sepsisrl.release.bundle import truth_verdict

    def diff(value, mortality):
        return {"value": {"mean": sum(value) / 2, "ci95": value},
                "mortality_90d": {"mean": sum(mortality) / 2, "ci95": mortality}}  # fmt: skip

    # the quick study's exported policy (figures of the closing note of issue 12)
    text = truth_verdict(diff([-1.13, 0.51], [-0.020, 0.042]))
    assert "**not distinguishable from the clinicians**" in text
    assert "+1.1 points (95 % CI -2.0 to +4.2)" in text and "-0.31 return units" in text
    # not distinguishable is not equivalent: the CI's upper end is said, against the margin
    assert "cannot rule out a 90-day mortality up to 4.2 points above" in text
    assert "non-inferiority within 1 point is not shown" in text
    narrow = truth_verdict(diff([-0.3, 0.2], [-0.012, 0.008]))
    assert "**not distinguishable from the clinicians**" in narrow
    assert "rule out" not in narrow  # within the margin: nothing to warn about
    better = truth_verdict(diff([0.28, 1.46], [-0.056, -0.011]))
    assert "**better than the clinicians** (in value and 90-day mortality)" in better
    worse = truth_verdict(diff([-2, -0.1], [-0.01, 0.05]))
    assert "**worse than the clinicians** (in value)" in worse
    mixed = truth_verdict(diff([0.1, 1.0], [0.01, 0.05]))
    assert "better than the clinicians in value but worse in 90-day mortality" in mixed
