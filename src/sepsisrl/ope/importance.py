"""Importance-sampling estimators (evaluation.md): WIS, per-decision WIS, ESS, bootstrap CIs.

Notation: episode i has steps t = 0..T_i-1 (t is the position in the episode), evaluation
rewards r_t, behaviour probabilities b(a_t|s_t) and target probabilities pi(a_t|s_t).

  rho_t   = pi(a_t | s_t) / b(a_t | s_t)                    (per-step ratio)
  w_i     = prod_t rho_t                                    (trajectory weight)
  G_i     = sum_t gamma^t r_t                               (discounted return)
  WIS     = sum_i w_i G_i / sum_i w_i
  PDWIS   = sum_t gamma^t sum_i w_{i,t} r_{i,t} / sum_i w_{i,t},  w_{i,t} = prod_{k<=t} rho_k
            (episodes that ended before t carry their final weight, so each step's
            normalisation uses all episodes)
  ESS     = (sum_i w_i)^2 / sum_i w_i^2

Optional softening pi_eps = (1 - eps) pi + eps / |A| and ratio clipping are recorded in the
output; both are off by default. The confidence interval is a percentile bootstrap over
patients (one episode per patient in this pipeline; resampling groups by ``groups``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpisodeIndex:
    """Row -> episode bookkeeping for step-level arrays sorted by (episode, t)."""

    episode: np.ndarray  # (N,) episode index 0..E-1 of each row
    t: np.ndarray  # (N,) position within the episode
    n_episodes: int

    @classmethod
    def from_rows(cls, stay_id: np.ndarray, step: np.ndarray) -> EpisodeIndex:
        order_ok = np.all(np.diff(stay_id) >= 0)
        if not order_ok:
            raise ValueError("rows must be sorted by episode")
        starts = np.r_[True, stay_id[1:] != stay_id[:-1]]
        episode = np.cumsum(starts) - 1
        first = np.flatnonzero(starts)
        t = np.arange(len(stay_id)) - first[episode]
        return cls(episode.astype(np.int64), t.astype(np.int64), int(starts.sum()))


def soften(pi: np.ndarray, eps: float) -> np.ndarray:
    """(1 - eps) pi + eps / |A|."""
    return pi if eps == 0 else (1.0 - eps) * pi + eps / pi.shape[1]


def step_ratios(pi_taken: np.ndarray, b_taken: np.ndarray, clip: float | None = None) -> np.ndarray:
    rho = pi_taken / b_taken
    return np.minimum(rho, clip) if clip is not None else rho


def trajectory_weights(rho: np.ndarray, idx: EpisodeIndex) -> np.ndarray:
    """w_i = prod_t rho_t (computed in log space; zero ratios give zero weight)."""
    with np.errstate(divide="ignore"):
        logs = np.log(rho)
    total = np.zeros(idx.n_episodes)
    np.add.at(total, idx.episode, logs)
    return np.exp(total)


def discounted_returns(rewards: np.ndarray, idx: EpisodeIndex, gamma: float) -> np.ndarray:
    g = np.zeros(idx.n_episodes)
    np.add.at(g, idx.episode, rewards * gamma ** idx.t.astype(np.float64))
    return g


def wis(w: np.ndarray, g: np.ndarray) -> float:
    s = w.sum()
    return float((w * g).sum() / s) if s > 0 else float("nan")


def ess(w: np.ndarray) -> float:
    s2 = (w**2).sum()
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0


def per_decision_wis(
    rho: np.ndarray, rewards: np.ndarray, idx: EpisodeIndex, gamma: float
) -> float:
    horizon = int(idx.t.max()) + 1 if len(idx.t) else 0
    with np.errstate(divide="ignore"):
        log_rho = np.log(rho)
    log_w = np.zeros((idx.n_episodes, horizon))  # steps after an episode ended add log(1) = 0
    log_w[idx.episode, idx.t] = log_rho
    w_et = np.exp(np.cumsum(log_w, axis=1))  # w_{i,t}; an ended episode keeps its final weight
    r_et = np.zeros((idx.n_episodes, horizon))
    r_et[idx.episode, idx.t] = rewards
    num = (w_et * r_et).sum(axis=0)
    den = w_et.sum(axis=0)
    per_t = np.divide(num, den, out=np.zeros(horizon), where=den > 0)
    return float((per_t * gamma ** np.arange(horizon)).sum())


@dataclass
class BootstrapCI:
    estimate: float
    low: float
    high: float
    resamples: int
    seed: int

    def to_json(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "ci_low": self.low, "ci_high": self.high,
                "resamples": self.resamples, "seed": self.seed}  # fmt: skip


def bootstrap_counts(n_groups: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_groups) multinomial counts of a patient bootstrap."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=resamples).astype(
        np.float64
    )


def bootstrap_ratio(
    numer: np.ndarray, denom: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> BootstrapCI:
    """Percentile CI of sum(numer) / sum(denom) resampling groups (patients) with replacement."""
    counts = bootstrap_counts(len(numer), resamples, seed)
    num, den = counts @ numer, counts @ denom
    stats = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    alpha = (1.0 - level) / 2.0
    if np.isnan(stats).all():  # no resample with any weight: the estimate is undefined
        return BootstrapCI(float("nan"), float("nan"), float("nan"), resamples, seed)
    lo, hi = np.nanpercentile(stats, [100 * alpha, 100 * (1 - alpha)])
    estimate = float(numer.sum() / denom.sum()) if denom.sum() > 0 else float("nan")
    return BootstrapCI(estimate, float(lo), float(hi), resamples, seed)


def wis_with_ci(w: np.ndarray, g: np.ndarray, resamples: int = 2000, seed: int = 0) -> BootstrapCI:
    return bootstrap_ratio(w * g, w, resamples, seed)
