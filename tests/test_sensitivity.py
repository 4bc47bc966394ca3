"""Sensitivity of the WDR to unobserved confounding (ope/sensitivity.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sepsisrl.config import ConfigError
from sepsisrl.ope.importance import EpisodeIndex, cumulative_weights, step_matrix, wdr
from sepsisrl.ope.sensitivity import (
    SensitivityConfig,
    inverse_propensity_box,
    lambda_to_cover,
    self_normalised_bounds,
    survives_up_to,
    wdr_bounds,
    wdr_sensitivity,
    weight_boxes,
)


def _brute(y, lo, hi):
    """min and max of the self-normalised ratio over every vertex of the box (a linear-fractional
    function attains its extremes at vertices)."""
    vals = []
    for corner in itertools.product((0, 1), repeat=len(y)):
        w = np.where(np.array(corner) == 1, hi, lo)
        if w.sum() > 0:
            vals.append(float(w @ y / w.sum()))
    return min(vals), max(vals)


def test_box_bounds_match_brute_force_over_the_vertices():
    rng = np.random.default_rng(3)
    for _ in range(200):
        e = int(rng.integers(1, 8))
        y = rng.normal(size=e).round(1)  # ties included
        lo = rng.uniform(0, 2, size=e) * (rng.random(e) < 0.8)
        hi = lo + rng.uniform(0, 3, size=e) * (rng.random(e) < 0.8)
        if hi.sum() == 0:
            continue
        low, high = self_normalised_bounds(y, lo, hi)
        b_low, b_high = _brute(y, lo, hi)
        assert low[0] == pytest.approx(b_low, abs=1e-12)
        assert high[0] == pytest.approx(b_high, abs=1e-12)


def test_a_column_without_weight_adds_nothing():
    y = np.array([[1.0, 5.0], [2.0, 7.0]])
    lo = np.array([[0.5, 0.0], [1.0, 0.0]])
    low, high = self_normalised_bounds(y, lo, lo.copy())
    assert low[1] == high[1] == 0.0
    assert low[0] == high[0] == pytest.approx((0.5 + 2.0) / 1.5)


def test_inverse_propensity_box_is_attained_at_the_odds_ratio():
    b, lam = np.array([0.3]), 2.0
    lo, hi = inverse_propensity_box(b, lam)
    odds = 0.3 / 0.7
    for factor, bound in ((lam, lo), (1 / lam, hi)):
        e = factor * odds / (1 + factor * odds)
        assert 1 / e == pytest.approx(bound[0])
    assert inverse_propensity_box(np.array([1.0]), 5.0) == (1.0, 1.0)
    with pytest.raises(ValueError, match="Lambda must be >= 1"):
        inverse_propensity_box(b, 0.5)


def _episodes(rng, n_ep=40, max_len=6):
    lengths = rng.integers(1, max_len + 1, size=n_ep)
    stay = np.repeat(np.arange(n_ep), lengths)
    step = np.concatenate([np.arange(n) for n in lengths])
    return EpisodeIndex.from_rows(stay, step), len(stay)


def test_bounds_at_lambda_one_are_the_wdr_and_widen_with_lambda():
    rng = np.random.default_rng(0)
    idx, n = _episodes(rng)
    b = rng.uniform(0.05, 0.9, size=n)
    pi = (rng.random(n) < 0.7).astype(float)  # a deterministic policy: 1 where it agrees
    delta = step_matrix(rng.normal(size=n), idx)
    v0 = rng.normal(size=idx.n_episodes)
    exact = wdr(cumulative_weights(pi / b, idx), delta, v0, 0.9)
    for model in ("per_decision", "trajectory"):
        last = (exact, exact)
        for lam in (1.0, 1.1, 1.5, 3.0):
            low, high = wdr_bounds(*weight_boxes(pi, b, idx, lam, model), delta, v0, 0.9)
            if lam == 1.0:
                assert low == pytest.approx(exact) and high == pytest.approx(exact)
            assert low <= last[0] + 1e-12 and high >= last[1] - 1e-12
            last = (low, high)
        assert last[1] - last[0] > 0


def test_the_estimate_with_the_true_propensities_lies_within_the_bounds():
    """Clinicians whose true probabilities depend on something unrecorded, within odds ratio
    Lambda of the modelled ones: the WDR computed with the true propensities (which the estimator
    cannot know) lies within the per-decision bounds at that Lambda, and usually not at 1."""
    rng = np.random.default_rng(1)
    outside_at_one = 0
    for _ in range(50):
        idx, n = _episodes(rng, n_ep=30)
        b = rng.uniform(0.05, 0.95, size=n)
        lam = float(rng.uniform(1.05, 2.5))
        factor = np.exp(rng.uniform(-np.log(lam), np.log(lam), size=n))
        odds = factor * b / (1 - b)
        e = odds / (1 + odds)
        pi = rng.random(n)
        delta = step_matrix(rng.normal(size=n), idx)
        v0 = rng.normal(size=idx.n_episodes)
        true = wdr(cumulative_weights(pi / e, idx), delta, v0, 0.95)
        low, high = wdr_bounds(*weight_boxes(pi, b, idx, lam, "per_decision"), delta, v0, 0.95)
        assert low - 1e-9 <= true <= high + 1e-9
        naive = wdr(cumulative_weights(pi / b, idx), delta, v0, 0.95)
        outside_at_one += abs(true - naive) > 1e-6
    assert outside_at_one == 50


def test_sensitivity_document_and_its_readings():
    rng = np.random.default_rng(2)
    idx, n = _episodes(rng)
    b = rng.uniform(0.1, 0.9, size=n)
    pi = (rng.random(n) < 0.8).astype(float)
    delta = step_matrix(rng.normal(size=n), idx)
    v0 = rng.normal(loc=2.0, size=idx.n_episodes)
    cfg = SensitivityConfig()
    doc = wdr_sensitivity(pi, b, idx, delta, v0, 0.9, cfg, (-15.0, 15.0))
    lams = [r["lambda"] for r in doc["bounds"]]
    assert lams == list(cfg.lambdas) and doc["model"] == cfg.model
    first = doc["bounds"][0]
    assert first["low"] == pytest.approx(first["high"])
    # the verdict "better than a reference" holds until the lower bound reaches it
    ref = (first["low"] + doc["bounds"][-1]["low"]) / 2
    s = survives_up_to(doc["bounds"], ref)
    assert s["holds_up_to"] is not None and s["fails_at"] is not None
    assert s["holds_up_to"] < s["fails_at"]
    held = next(r for r in doc["bounds"] if r["lambda"] == s["holds_up_to"])
    failed = next(r for r in doc["bounds"] if r["lambda"] == s["fails_at"])
    assert held["low"] > ref >= failed["low"]
    assert survives_up_to(doc["bounds"], first["low"] + 1.0)["holds_up_to"] is None
    assert lambda_to_cover(doc["bounds"], first["low"]) == 1.0
    assert lambda_to_cover(doc["bounds"], 1e6) is None
    outside = (doc["bounds"][2]["high"] + doc["bounds"][3]["high"]) / 2
    assert lambda_to_cover(doc["bounds"], outside) == cfg.lambdas[3]


def test_a_lambda_grid_that_does_not_start_at_one_fails_at_load():
    with pytest.raises(ValueError, match=r"must start at 1\.0 and increase"):
        SensitivityConfig(model="per_decision", lambdas=(1.5, 2.0))
    with pytest.raises(ValueError, match=r"must start at 1\.0 and increase"):
        SensitivityConfig(model="per_decision", lambdas=(1.0, 2.0, 2.0))
    with pytest.raises((ValueError, ConfigError)):
        weight_boxes(np.ones(1), np.ones(1), EpisodeIndex.from_rows(np.zeros(1), np.zeros(1)),
                     1.0, "episode")  # fmt: skip


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_fqe_bounds_contain_the_truth_of_a_confounded_decision():
    """One decision, clinicians who treat more when an unrecorded sign says the patient will do
    well (u), outcome +-15. The FQE of "always treat" over-values it (the treated had better
    unrecorded prognosis); its bounds at the confounding's true odds ratio contain the exact
    value, at Lambda = 1 they are the FQE itself."""
    import torch

    from sepsisrl.ope.fqe import FQE, FQEConfig

    rng = np.random.default_rng(0)
    n, log_l0 = 20000, np.log(1.6)
    s = rng.normal(size=n)
    u = rng.random(n) < 0.5
    e1 = _sigmoid(0.5 * s + np.where(u, log_l0, -log_l0))
    a = (rng.random(n) < e1).astype(np.int64)
    p_live = _sigmoid(0.3 + 0.5 * s + 0.4 * a + np.where(u, 0.8, -0.8))
    y = np.where(rng.random(n) < p_live, 15.0, -15.0)
    # exact value of always treating: over u given s (independent), averaged over the states
    truth = float(np.mean(0.5 * (30 * _sigmoid(1.5 + 0.5 * s) - 15)
                          + 0.5 * (30 * _sigmoid(-0.1 + 0.5 * s) - 15)))  # fmt: skip
    b1 = 0.5 * _sigmoid(0.5 * s + log_l0) + 0.5 * _sigmoid(0.5 * s - log_l0)
    odds = lambda p: p / (1 - p)  # noqa: E731
    lam_true = float(np.max(np.maximum(odds(e1) / odds(b1), odds(b1) / odds(e1))))
    assert 1.5 < lam_true <= 1.6**2
    b = np.stack([1 - b1, b1], axis=1)
    pi = np.tile([0.0, 1.0], (n, 1))
    x = torch.from_numpy(s[:, None].astype(np.float32))
    train = {"s": x, "a": torch.from_numpy(a), "r": torch.from_numpy(y.astype(np.float32)),
             "s_next": x, "done": torch.ones(n),
             "pi_next": torch.from_numpy(pi.astype(np.float32))}  # fmt: skip
    fqe = FQE(1, 2, 0.99, FQEConfig(), bounds=(-15.0, 15.0))
    fqe.fit(train, np.arange(n), 1)
    point = float(np.mean(fqe.full_q_values(x) @ np.array([0.0, 1.0])))
    assert point - truth > 1.0  # confounding: the treated did better than treating would make them

    def bounds(lam):
        return [float(np.mean(fqe.robust_values(b, s[:, None], pi, b, lam, side)))
                for side in ("low", "high")]  # fmt: skip

    low1, high1 = bounds(1.0)
    assert low1 == pytest.approx(point, abs=1e-9) and high1 == pytest.approx(point, abs=1e-9)
    low, high = bounds(lam_true)
    assert low <= truth <= high
    low_half, _ = bounds(1.0 + (lam_true - 1.0) / 4)
    assert low_half > truth  # a quarter of the confounding's Lambda does not explain it


def test_the_card_shows_the_bounds_and_where_they_reach_the_truth():
    from sepsisrl.contracts import Sensitivity
    from sepsisrl.release.bundle import _sensitivity_summary, sensitivity_lines

    def doc(shift):
        rows = [{"lambda": lam, "low": 3.0 - w + shift, "high": 3.0 + w + shift,
                 "raw_low": 3.0 - w + shift, "raw_high": 3.0 + w + shift}
                for lam, w in ((1.0, 0.0), (1.1, 1.0), (1.2, 2.0))]  # fmt: skip
        sens = {"model": "per_decision", "estimator": "fqe", "bounds": rows, "note": ""}
        # the contract keeps the key "lambda" both ways (an alias: a Python keyword)
        assert Sensitivity.model_validate(sens).model_dump(by_alias=True) == sens
        return {"fqe": {"sensitivity": sens}, "wdr": {"sensitivity": None}}

    # the second evaluation failed the model gate: left out of the mean
    summary = _sensitivity_summary([doc(0.0), doc(0.2), doc(50.0)], [[], [], ["not converged"]])
    assert list(summary) == ["fqe"]
    assert [b["low"] for b in summary["fqe"]] == pytest.approx([3.1, 2.1, 1.1])
    lines = sensitivity_lines({"sensitivity": summary}, {"value": {"mean": 4.5}})
    text = "\n".join(lines)
    assert "| 1.1 | [2.10, 4.10] |" in text
    assert "The FQE bounds contain the true value 4.50 from Lambda = 1.2." in text
    assert sensitivity_lines({"sensitivity": {}}, None) == []
