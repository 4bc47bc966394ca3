"""How far unobserved confounding could move the FQE and WDR estimates (docs/evaluate.md).

Every off-policy estimate here assumes that the behaviour model b(a|s) is the clinicians' true
probability of each logged decision. It is not when the clinicians act on what the state does
not record (a bedside impression, a trend seen at the bedside): the true probability is
e(a|s,u), with u unrecorded. The marginal sensitivity model (Tan 2006) bounds that gap by one
number, Lambda >= 1: the odds of each logged decision under e may differ from its odds under b
by at most a factor Lambda either way,

    1/Lambda <= [e/(1-e)] / [b/(1-b)] <= Lambda,

so that 1/e lies in [1 + (1/b - 1)/Lambda, 1 + (1/b - 1) Lambda] (``inverse_propensity_box``).
Lambda = 1 is the no-confounding assumption of the estimators themselves.

FQE (``fqe_sensitivity``, ``FQE.robust_values_many``): under the model the logged outcomes of an
(s, a) may be reweighted relative to acting on s alone; the fit on every train patient is redone
with the worst- and the best-case Bellman targets (per decision; the residual spread of each
action stands in for the outcome's spread given (s, a)).

WDR (``wdr_sensitivity``): two models of how the gap accumulates over an episode
(``SensitivityConfig.model``):

- ``per_decision``: each decision's odds may be off by Lambda, independently; the cumulative
  weight w_{i,t} = prod_{k<=t} pi_k / e_k then lies in a box [W-_{i,t}, W+_{i,t}] whose width
  compounds with t (the standard model; strict, and quickly wide for long episodes);
- ``trajectory``: the likelihood ratio of the clinicians' whole sequence of decisions up to t
  may be off by Lambda: w_{i,t} in [w_{i,t} / Lambda, w_{i,t} Lambda] (an aggregate budget).

The WDR estimate is mean_i V(s_i0) + sum_t gamma^t sum_i wbar_{i,t} delta_{i,t}; its term at
each t is a self-normalised weighted mean of the TD errors delta_{.,t}. Over weights confined
to a box, the extremes of such a ratio are attained by giving the upper bound of the box to the
largest (smallest) values and the lower bound to the rest, with the switch at one of the sorted
positions (``self_normalised_bounds``, exact, O(E log E)). Bounding every t separately and
summing gives an outer bound of the WDR that the true propensities would give: sharp per term,
not necessarily jointly. The control variate (the FQE) is held fixed, so the bounds describe the
bias confounding could cause in the importance-weighted corrections; the sampling error of the
bootstrap CI comes on top.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sepsisrl.config import yaml_defaults
from sepsisrl.ope.importance import EpisodeIndex, step_matrix

MODELS = ("per_decision", "trajectory")


@dataclass(frozen=True)
@yaml_defaults("evaluate", "sensitivity")
class SensitivityConfig:
    """Sensitivity to unobserved confounding; defaults and their meaning:
    ``configs/evaluate.yaml`` (``sensitivity``)."""

    model: Literal["per_decision", "trajectory"]
    lambdas: tuple[float, ...]

    def __post_init__(self) -> None:
        lams = list(self.lambdas)
        if not lams or lams[0] != 1.0 or any(b <= a for a, b in itertools.pairwise(lams)):
            raise ValueError(
                f"evaluate sensitivity.lambdas must start at 1.0 and increase; found {lams}"
            )


def inverse_propensity_box(b_taken: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on 1/e for logged decisions whose modelled probability is ``b_taken``, when the
    true odds may differ from the modelled odds by a factor ``lam`` (>= 1) either way."""
    if lam < 1.0:
        raise ValueError(f"Lambda must be >= 1, got {lam}")
    excess = 1.0 / np.asarray(b_taken, dtype=np.float64) - 1.0
    return 1.0 + excess / lam, 1.0 + excess * lam


def self_normalised_bounds(
    y: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise min and max of sum_i w_i y_i / sum_i w_i over lo_i <= w_i <= hi_i.

    ``y``, ``lo``, ``hi``: (E, H) with 0 <= lo <= hi. A column whose weights are all zero has no
    defined ratio; it gets (0, 0), the convention of the WDR (the correction there is absent).
    """
    y, lo, hi = (np.asarray(x, dtype=np.float64) for x in (y, lo, hi))
    if y.ndim == 1:
        y, lo, hi = y[:, None], lo[:, None], hi[:, None]
    if np.any(lo < 0) or np.any(hi < lo):
        raise ValueError("weight bounds must satisfy 0 <= lo <= hi")
    return -_upper(-y, lo, hi), _upper(y, lo, hi)


def _upper(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Column-wise max of the self-normalised ratio: the k largest values take ``hi``, the rest
    ``lo``, best k."""
    order = np.argsort(-y, axis=0, kind="stable")
    ys, ls, hs = (np.take_along_axis(x, order, axis=0) for x in (y, lo, hi))
    zero = np.zeros((1, y.shape[1]))
    # k = 0..E values take hi: prefix sums of hi-weighted, suffix sums of lo-weighted terms
    num_hi = np.vstack([zero, np.cumsum(hs * ys, axis=0)])
    den_hi = np.vstack([zero, np.cumsum(hs, axis=0)])
    num_lo = (ls * ys).sum(0) - np.vstack([zero, np.cumsum(ls * ys, axis=0)])
    den_lo = ls.sum(0) - np.vstack([zero, np.cumsum(ls, axis=0)])
    num, den = num_hi + num_lo, den_hi + den_lo
    ratio = np.divide(num, den, out=np.full_like(num, -np.inf), where=den > 0)
    best = ratio.max(axis=0)
    return np.where(np.isfinite(best), best, 0.0)


def weight_boxes(
    pi_taken: np.ndarray,
    b_taken: np.ndarray,
    idx: EpisodeIndex,
    lam: float,
    model: str,
    clip: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(E, H) bounds on the cumulative weights w_{i,t} under the sensitivity ``model``."""
    if model not in MODELS:
        raise ValueError(f"sensitivity model {model!r} is not one of {', '.join(MODELS)}")
    pi_taken = np.asarray(pi_taken, dtype=np.float64)
    if model == "per_decision":
        inv_lo, inv_hi = inverse_propensity_box(b_taken, lam)
        rho_lo, rho_hi = pi_taken * inv_lo, pi_taken * inv_hi
        if clip is not None:
            rho_lo, rho_hi = np.minimum(rho_lo, clip), np.minimum(rho_hi, clip)
        return _cumulative(rho_lo, idx), _cumulative(rho_hi, idx)
    rho = pi_taken / np.asarray(b_taken, dtype=np.float64)
    if clip is not None:
        rho = np.minimum(rho, clip)
    w = _cumulative(rho, idx)
    return w / lam, w * lam


def _cumulative(rho: np.ndarray, idx: EpisodeIndex) -> np.ndarray:
    with np.errstate(divide="ignore"):
        log_rho = np.log(rho)
    return np.exp(np.cumsum(step_matrix(log_rho, idx), axis=1))


def wdr_bounds(
    w_lo: np.ndarray, w_hi: np.ndarray, delta_et: np.ndarray, v0: np.ndarray, gamma: float
) -> tuple[float, float]:
    """Outer bounds of the WDR over cumulative weights in [w_lo, w_hi] (each t bounded apart)."""
    low_t, high_t = self_normalised_bounds(delta_et, w_lo, w_hi)
    disc = gamma ** np.arange(delta_et.shape[1])
    base = float(np.mean(v0))
    return base + float(low_t @ disc), base + float(high_t @ disc)


def wdr_sensitivity(
    pi_taken: np.ndarray,
    b_taken: np.ndarray,
    idx: EpisodeIndex,
    delta_et: np.ndarray,
    v0: np.ndarray,
    gamma: float,
    cfg: SensitivityConfig,
    value_range: tuple[float, float],
    clip: float | None = None,
) -> dict[str, Any]:
    """The WDR's bounds at every Lambda of ``cfg`` (projected onto the attainable range, as the
    estimate is; ``raw_low``/``raw_high`` unprojected)."""
    lo_v, hi_v = value_range
    rows = []
    for lam in cfg.lambdas:
        w_lo, w_hi = weight_boxes(pi_taken, b_taken, idx, lam, cfg.model, clip)
        low, high = wdr_bounds(w_lo, w_hi, delta_et, v0, gamma)
        rows.append({"lambda": float(lam), "low": float(np.clip(low, lo_v, hi_v)),
                     "high": float(np.clip(high, lo_v, hi_v)), "raw_low": low,
                     "raw_high": high})  # fmt: skip
    return {
        "model": cfg.model,
        "estimator": "wdr",
        "bounds": rows,
        "note": (
            "bias bounds under the marginal sensitivity model: the odds of "
            + ("each logged decision" if cfg.model == "per_decision" else
               "the logged decisions up to each step, together,")
            + " may differ from the behaviour model's by a factor Lambda; the FQE control "
            "variate held fixed; sampling error (the bootstrap CI) comes on top"
        ),
    }  # fmt: skip


def survives_up_to(bounds: list[dict[str, Any]], reference: float) -> dict[str, Any]:
    """The largest Lambda of the grid at which the lower bound still exceeds ``reference``, and
    the first at which it does not (None when it never fails on the grid, or already at 1)."""
    held, broke = None, None
    for row in bounds:
        if row["low"] > reference:
            held = row["lambda"]
        else:
            broke = row["lambda"]
            break
    return {"holds_up_to": held, "fails_at": broke, "reference": reference}


def lambda_to_cover(bounds: list[dict[str, Any]], value: float) -> float | None:
    """The smallest Lambda of the grid whose bounds contain ``value`` (None: none of them)."""
    for row in bounds:
        if row["low"] <= value <= row["high"]:
            return float(row["lambda"])
    return None


def fqe_sensitivity(
    fqe: Any,
    b_next: np.ndarray,
    init_states: np.ndarray,
    pi_init: np.ndarray,
    b_init: np.ndarray,
    cfg: SensitivityConfig,
    value_range: tuple[float, float],
) -> dict[str, Any] | None:
    """The FQE's bounds at every Lambda of ``cfg`` (``FQE.robust_values_many``: the full fit
    redone with the worst- and best-case Bellman targets of the per-decision marginal
    sensitivity model, every case iterated together; None for a model without a full linear
    fit)."""
    cases = [(float(lam), side) for lam in cfg.lambdas for side in ("low", "high")]
    values = fqe.robust_values_many(b_next, init_states, pi_init, b_init, cases)
    if values is None:
        return None
    rows = []
    for i, lam in enumerate(cfg.lambdas):
        ends = [float(np.mean(values[2 * i])), float(np.mean(values[2 * i + 1]))]
        rows.append({"lambda": float(lam), "low": float(np.clip(ends[0], *value_range)),
                     "high": float(np.clip(ends[1], *value_range)), "raw_low": ends[0],
                     "raw_high": ends[1]})  # fmt: skip
    return {
        "model": "per_decision",
        "estimator": "fqe",
        "bounds": rows,
        "note": (
            "bias bounds under the marginal sensitivity model: the odds of each logged decision "
            "may differ from the behaviour model's by a factor Lambda, so the logged outcomes "
            "of an action may be better or worse than acting on the recorded state alone would "
            "give; the worst and best case of every Bellman target, with the outcome's spread "
            "given (s, a) approximated by the pooled residuals of its action (an "
            "approximation, not a guarantee); sampling error (the bootstrap CI) comes on top"
        ),
    }
