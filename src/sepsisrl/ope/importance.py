"""Importance-sampling estimators (docs/evaluation.md): WIS, per-decision WIS, ESS, bootstrap CIs.

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
  WDR     = mean_i V(s_i0) + sum_t gamma^t sum_i wbar_{i,t} delta_{i,t}      (weighted doubly
            robust, Thomas & Brunskill 2016, per decision), wbar_{i,t} = w_{i,t} / sum_j w_{j,t},
            delta_{i,t} = r_{i,t} + gamma (1 - d_{i,t}) V(s_{i,t+1}) - Q(s_{i,t}, a_{i,t}),
            with Q, V = sum_a pi Q the FQE control variate; steps after an episode ended add
            nothing (an absorbing state of value 0), and a step at which every weight is zero
            adds no correction (the estimate falls back to the FQE's there)

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
    if np.any(den <= 0):  # every episode has zero weight at some step: undefined there
        return float("nan")
    return float((num / den * gamma ** np.arange(horizon)).sum())


def step_matrix(values: np.ndarray, idx: EpisodeIndex, fill: float = 0.0) -> np.ndarray:
    """(E, H) episode x position matrix of per-step ``values`` (``fill`` after an episode ends)."""
    horizon = int(idx.t.max()) + 1 if len(idx.t) else 0
    out = np.full((idx.n_episodes, horizon), fill, dtype=np.float64)
    out[idx.episode, idx.t] = values
    return out


def cumulative_weights(rho: np.ndarray, idx: EpisodeIndex) -> np.ndarray:
    """(E, H) w_{i,t} = prod_{k<=t} rho_{i,k}; an ended episode keeps its final weight."""
    with np.errstate(divide="ignore"):
        log_rho = np.log(rho)
    return np.exp(np.cumsum(step_matrix(log_rho, idx), axis=1))


def per_decision_ess(w_et: np.ndarray) -> np.ndarray:
    """ESS of the cumulative weights at every position t: (sum_i w_it)^2 / sum_i w_it^2."""
    s1, s2 = w_et.sum(0), np.square(w_et).sum(0)
    return np.divide(s1**2, s2, out=np.zeros_like(s1), where=s2 > 0)


def decisions_followed(ess_per_decision, ess_min: float) -> int:
    """For how many of its first decisions the logged episodes follow a policy: the leading
    positions whose per-decision ESS (:func:`per_decision_ess`) is at least ``ess_min``."""
    return next((i for i, x in enumerate(ess_per_decision) if x < ess_min), len(ess_per_decision))


def wdr_terms(
    w_et: np.ndarray, delta_et: np.ndarray, gamma: float, counts: np.ndarray | None = None
) -> np.ndarray:
    """sum_t gamma^t sum_i wbar_{i,t} delta_{i,t} for each row of ``counts`` (bootstrap
    multiplicities, (R, E)); one value (shape (1,)) without counts."""
    c = np.ones((1, w_et.shape[0])) if counts is None else counts
    num = c @ (w_et * delta_et)
    den = c @ w_et
    frac = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return frac @ (gamma ** np.arange(w_et.shape[1]))


def wdr(w_et: np.ndarray, delta_et: np.ndarray, v0: np.ndarray, gamma: float) -> float:
    """Weighted doubly robust estimate (see the module docstring) for one control variate."""
    return float(np.mean(v0) + wdr_terms(w_et, delta_et, gamma)[0])


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


def _percentile_ci(
    estimate: float, stats: np.ndarray, resamples: int, seed: int, level: float = 0.95
) -> BootstrapCI:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return BootstrapCI(float(estimate), float(lo), float(hi), resamples, seed)


def ensemble_mean_ci(
    v0: np.ndarray, resamples: int = 2000, seed: int = 0, point: np.ndarray | None = None
) -> BootstrapCI:
    """Mean initial-state value with a CI over patients AND the model's own uncertainty.

    ``v0``: (K, E) values of K bootstrap-ensemble members at E evaluated initial states.
    Resample b draws patients with replacement and uses member b mod K. The estimate is the
    ensemble mean, or, with ``point`` (E,) the values of a fit on every train patient, that
    fit's mean; the members then give the spread only (their distribution is shifted to be
    centred on the point estimate).
    """
    estimate, stats = ensemble_mean_stats(v0, resamples, seed, point)
    return _percentile_ci(estimate, stats, resamples, seed)


def ensemble_mean_stats(
    v0: np.ndarray, resamples: int = 2000, seed: int = 0, point: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """:func:`ensemble_mean_ci`'s estimate and its ``resamples`` bootstrap statistics. Two
    policies' values on the same initial states with the same ``seed`` get the same patient
    draws and members: their statistics are paired (:func:`paired_difference_ci`)."""
    k, e = v0.shape
    counts = bootstrap_counts(e, resamples, seed)
    member = np.arange(resamples) % k
    stats = np.einsum("re,re->r", counts, v0[member]) / e
    estimate = float(v0.mean())
    if point is not None:
        full = float(np.mean(point))
        stats = stats + (full - estimate)
        estimate = full
    return estimate, stats


def paired_difference_ci(
    a: tuple[np.ndarray, np.ndarray | None],
    b: tuple[np.ndarray, np.ndarray | None],
    resamples: int = 2000,
    seed: int = 0,
) -> BootstrapCI:
    """The CI of V(a) - V(b), two policies' FQE values ``(v0 (K, E), point (E,) or None)`` at
    the same E initial states: each resample draws the same patients and member for both, so
    what the two estimates share (the same patients, the same fitted ensemble's errors)
    cancels. The mean is linear, so this is ``ensemble_mean_ci`` of the differences."""
    (va, pa), (vb, pb) = a, b
    if va.shape != vb.shape or (pa is None) != (pb is None):
        raise ValueError(f"paired FQE values differ in shape: {va.shape} and {vb.shape}")
    point = None if pa is None or pb is None else pa - pb
    return ensemble_mean_ci(va - vb, resamples, seed, point)


def wdr_with_ci(
    w_et: np.ndarray,
    delta: np.ndarray,
    v0: np.ndarray,
    gamma: float,
    resamples: int = 2000,
    seed: int = 0,
    point: tuple[np.ndarray, np.ndarray] | None = None,
) -> BootstrapCI:
    """WDR with a patient-bootstrap CI that also draws the control variate from the ensemble.

    ``delta``: (K, E, H) TD errors of each member, ``v0``: (K, E) its initial-state values; the
    estimate is the mean of the members' WDR (WDR is linear in Q: the WDR of the mean Q), or,
    with ``point`` = (delta (E, H), v0 (E,)) of a fit on every train patient, that fit's WDR,
    the members' distribution shifted to be centred on it.
    """
    k, e = v0.shape
    estimate = float(np.mean([wdr(w_et, delta[m], v0[m], gamma) for m in range(k)]))
    counts = bootstrap_counts(e, resamples, seed)
    stats = np.empty(resamples)
    for m in range(k):
        rows = np.arange(m, resamples, k)
        c = counts[rows]
        stats[rows] = c @ v0[m] / e + wdr_terms(w_et, delta[m], gamma, c)
    if point is not None:
        full = float(wdr(w_et, point[0], point[1], gamma))
        stats = stats + (full - estimate)
        estimate = full
    return _percentile_ci(estimate, stats, resamples, seed)


def wis_with_ci(w: np.ndarray, g: np.ndarray, resamples: int = 2000, seed: int = 0) -> BootstrapCI:
    return bootstrap_ratio(w * g, w, resamples, seed)
