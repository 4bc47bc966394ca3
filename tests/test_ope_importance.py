"""Importance sampling on hand-computed examples (docs/evaluation.md definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from sepsisrl.ope.importance import (
    EpisodeIndex,
    bootstrap_ratio,
    discounted_returns,
    ess,
    per_decision_wis,
    soften,
    step_ratios,
    trajectory_weights,
    wis,
    wis_with_ci,
)

# Episode A: two steps with ratios 2 and 0.5, rewards 0 then 1.
# Episode B: one step with ratio 3, reward -1.   gamma = 0.5
STAY = np.array([1, 1, 2])
STEP = np.array([0, 1, 0])
RHO = np.array([2.0, 0.5, 3.0])
REWARD = np.array([0.0, 1.0, -1.0])
GAMMA = 0.5


def test_episode_index_positions():
    idx = EpisodeIndex.from_rows(STAY, STEP)
    assert idx.n_episodes == 2
    assert idx.episode.tolist() == [0, 0, 1]
    assert idx.t.tolist() == [0, 1, 0]


def test_trajectory_weights_and_returns_by_hand():
    idx = EpisodeIndex.from_rows(STAY, STEP)
    assert trajectory_weights(RHO, idx) == pytest.approx([1.0, 3.0])  # 2 * 0.5, 3
    assert discounted_returns(REWARD, idx, GAMMA).tolist() == [0.5, -1.0]  # 0 + 0.5 * 1, -1


def test_wis_by_hand():
    # (1 * 0.5 + 3 * -1) / (1 + 3)
    assert wis(np.array([1.0, 3.0]), np.array([0.5, -1.0])) == pytest.approx(-0.625)


def test_ess_by_hand():
    assert ess(np.array([1.0, 3.0])) == pytest.approx(16 / 10)  # (1 + 3)^2 / (1 + 9)
    assert ess(np.ones(7)) == pytest.approx(7.0)  # equal weights: every episode counts
    assert ess(np.array([0.0, 0.0, 5.0])) == pytest.approx(1.0)  # one episode carries it all


def test_per_decision_wis_by_hand():
    idx = EpisodeIndex.from_rows(STAY, STEP)
    # t = 0: weights 2, 3 -> (2*0 + 3*-1) / 5 = -0.6
    # t = 1: weights 1 (= 2 * 0.5), 3 (B ended, keeps its weight) -> (1*1 + 3*0) / 4 = 0.25
    expected = -0.6 + GAMMA * 0.25
    assert per_decision_wis(RHO, REWARD, idx, GAMMA) == pytest.approx(expected)


def test_deterministic_policy_ratios_are_zero_or_inverse_behaviour():
    pi_taken = np.array([1.0, 0.0, 1.0])
    b_taken = np.array([0.25, 0.5, 0.8])
    assert step_ratios(pi_taken, b_taken).tolist() == [4.0, 0.0, 1.25]
    assert step_ratios(pi_taken, b_taken, clip=2.0).tolist() == [2.0, 0.0, 1.25]


def test_a_zero_ratio_anywhere_zeroes_the_trajectory_weight():
    idx = EpisodeIndex.from_rows(np.array([1, 1, 1]), np.array([0, 1, 2]))
    assert trajectory_weights(np.array([4.0, 0.0, 4.0]), idx).tolist() == [0.0]


def test_softening_mixes_with_uniform():
    pi = np.array([[1.0, 0.0, 0.0, 0.0]])
    assert soften(pi, 0.2) == pytest.approx(np.array([[0.85, 0.05, 0.05, 0.05]]))
    assert soften(pi, 0.0) is pi


def test_on_policy_weights_reduce_wis_to_the_mean_return():
    g = np.array([1.0, 2.0, 6.0])
    assert wis(np.ones(3), g) == pytest.approx(3.0)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(3)
    w, g = rng.exponential(1.0, 400), rng.normal(5.0, 3.0, 400)
    a = wis_with_ci(w, g, resamples=500, seed=7)
    b = wis_with_ci(w, g, resamples=500, seed=7)
    assert (a.low, a.high) == (b.low, b.high)
    assert a.low < a.estimate < a.high
    assert a.estimate == pytest.approx(wis(w, g))
    c = wis_with_ci(w, g, resamples=500, seed=8)
    assert (c.low, c.high) != (a.low, a.high)


def test_bootstrap_of_identical_patients_has_no_spread():
    ci = bootstrap_ratio(np.full(50, 2.0), np.full(50, 4.0), resamples=200, seed=0)
    assert ci.low == ci.high == ci.estimate == 0.5


def test_wdr_by_hand():
    """Two episodes (gamma 0.9): ep 1 has ratios (2, 0.5) and TD errors (1, -1), initial value
    3; ep 2 has one step with ratio 0 and TD error 2, initial value 5.
    w = [[2, 1], [0, 0]] -> normalised [[1, 0], [1, 0]]:
    WDR = mean(3, 5) + (1 * 1 + 0 * 2) + 0.9 * (1 * -1 + 0 * 0) = 4.1."""
    from sepsisrl.ope.importance import cumulative_weights, step_matrix, wdr

    idx = EpisodeIndex.from_rows(np.array([1, 1, 2]), np.array([0, 1, 0]))
    w_et = cumulative_weights(np.array([2.0, 0.5, 0.0]), idx)
    np.testing.assert_allclose(w_et, [[2.0, 1.0], [0.0, 0.0]])
    delta = step_matrix(np.array([1.0, -1.0, 2.0]), idx)
    assert wdr(w_et, delta, np.array([3.0, 5.0]), 0.9) == pytest.approx(4.1)


def test_wdr_with_a_zero_control_variate_is_per_decision_wis():
    from sepsisrl.ope.importance import cumulative_weights, step_matrix, wdr

    rng = np.random.default_rng(3)
    stay = np.repeat(np.arange(40), rng.integers(1, 6, 40))
    step = np.concatenate([np.arange((stay == s).sum()) for s in np.unique(stay)])
    idx = EpisodeIndex.from_rows(stay, step)
    rho = rng.uniform(0.2, 2.0, len(stay))
    r = rng.normal(size=len(stay))
    got = wdr(cumulative_weights(rho, idx), step_matrix(r, idx), np.zeros(40), 0.95)
    assert got == pytest.approx(per_decision_wis(rho, r, idx, 0.95))


def test_per_decision_wis_is_undefined_when_every_weight_is_zero():
    idx = EpisodeIndex.from_rows(np.array([1, 1, 2]), np.array([0, 1, 0]))
    assert np.isnan(per_decision_wis(np.array([0.0, 1.0, 0.0]), np.ones(3), idx, 0.9))


def test_ensemble_ci_carries_the_members_spread():
    from sepsisrl.ope.importance import ensemble_mean_ci

    same = np.tile(np.linspace(0, 1, 50), (5, 1))
    spread = same + np.arange(5)[:, None]  # members disagree by up to 4 units
    narrow, wide = ensemble_mean_ci(same, 500, 0), ensemble_mean_ci(spread, 500, 0)
    assert narrow.estimate == pytest.approx(0.5) and wide.estimate == pytest.approx(2.5)
    assert (wide.high - wide.low) > 3 * (narrow.high - narrow.low)
    assert wide.low < 1.0 and wide.high > 4.0
