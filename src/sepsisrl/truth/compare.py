"""Offline estimates against the truth: rank agreement, error, CI coverage, selection regret.

Given, per policy, its true value (``sepsisrl truth``) and the estimates of every estimator
the evaluation reports (``metrics.json``), this module says how far each estimator can be
trusted on a panel of policies:

- ``spearman`` / ``kendall``: rank correlation of estimate and truth (Kendall's tau-b);
- ``mae``: mean absolute error in return units;
- ``coverage``: share of policies whose 95 % CI contains the true value (estimators with CIs);
- ``top1_regret``: best true value in the panel minus the true value of the policy the
  estimator ranks first;
- ``mae_vs_clinician`` (when the clinicians are among the evaluable policies): the mean
  absolute error of the estimated difference from the clinicians, (V_pi - V_clin) estimated
  against true, over the other policies - the comparison a study's verdict rests on. An error
  that every policy shares (a logged population that fared worse than the truth's, say)
  cancels in it; one that depends on the policy (confounding) does not.
- ``error_by_intensity`` (when every compared row carries its ``intensity``, from
  :func:`intensity_of`): the Spearman correlation of the estimate's error (estimate minus
  truth), of the truth and of the estimate with each policy's treatment intensity (its mean
  vasopressor bin and mean IV-fluid bin on the evaluated split's states). An error that
  follows intensity is the signature of unobserved confounding in the clinicians' logs: they
  escalate for reasons the state does not record, so an estimate learned from those logs
  credits less treatment with outcomes that were not its doing (docs/evaluate.md).

A policy without an estimate (an evaluation gate failed: for WIS too little overlap, for FQE
and WDR an unconverged fit or unsupported actions; see ``ope.evaluate``) is left out of that
estimator's figures and listed in ``not_evaluable``: flagged, not ranked.

The truth is itself a Monte Carlo mean over a finite population of simulated patients. When
the per-episode returns of the policies are given (paired: the same episodes, in the same
order), ``compare`` also says how far the truth's own ranking can be trusted
(``truth_noise``): resampling the episodes, the Spearman correlation of the truth with its
resampled self estimates the rank agreement that an estimator knowing every policy's exact
expected value would reach against this truth (the ``ceiling``), and the estimator's Spearman
against the resampled truths shows how much of its own figure is the truth's noise. Given the
number of episodes the estimates come from, it also says what an on-policy oracle with that
many episodes would reach (``oracle``): the rank agreement the evaluated split's size allows an
estimate whose error is its Monte Carlo error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sepsisrl.contracts import EvaluationMetrics

#: estimator -> (metric, CI low, CI high) keys of metrics.json (None: no CI)
ESTIMATORS: dict[str, tuple[str, str | None, str | None]] = {
    "fqe": ("fqe_mean", "fqe_ci_low", "fqe_ci_high"),
    "wdr": ("wdr_mean", "wdr_ci_low", "wdr_ci_high"),
    "wis": ("wis_mean", "wis_ci_low", "wis_ci_high"),
    "wis_per_decision": ("wis_per_decision", None, None),
    "wis_softened_0.1": ("wis_softened_0.1", "wis_softened_0.1_low", "wis_softened_0.1_high"),
}


#: The treatment-intensity measures of :func:`intensity_of`, in ``error_by_intensity``.
INTENSITY = ("vaso_bin", "fluid_bin")

#: |Spearman| with a treatment-intensity measure from which the report says that an
#: estimator's errors (against the truth) or a selection's scores (without it) follow it.
INTENSITY_NOTE = 0.5

#: The policy every other is compared with in ``mae_vs_clinician``.
CLINICIAN = "clinician"

#: Agreement an estimator must reach with the truth to be trusted (issue 12's acceptance);
#: the study's report judges every estimator by it, and ``truth_noise``'s oracle says how often
#: an on-policy oracle of the evaluated split's size reaches its Spearman.
TRUST = {"spearman": 0.8, "mae": 1.5, "coverage": 0.8}


def estimates_of(
    evaluation: EvaluationMetrics | dict[str, Any],
) -> dict[str, tuple[float | None, ...]]:
    """(estimate, CI low, CI high) of every estimator in an evaluation's ``metrics.json`` (a
    loaded :class:`~sepsisrl.contracts.EvaluationMetrics`, or the document ``evaluate``
    returned, checked against that contract)."""
    if not isinstance(evaluation, EvaluationMetrics):
        evaluation = EvaluationMetrics.parse(evaluation, "evaluation document (metrics.json)")
    m: dict[str, Any] = evaluation.metrics.model_dump()
    # the softening is a setting: an evaluation run with other eps has no 0.1 entry
    soft = evaluation.importance_sampling.wis_softened.get("0.1")
    if soft is not None:
        m["wis_softened_0.1"] = soft.wis
        m["wis_softened_0.1_low"] = soft.ci_low
        m["wis_softened_0.1_high"] = soft.ci_high
    out = {}
    for name, (key, lo, hi) in ESTIMATORS.items():
        if key not in m:  # only the optional softened entry can be absent
            out[name] = (None, None, None)
            continue
        out[name] = (
            _num(m[key]),
            _num(m[lo]) if lo else None,
            _num(m[hi]) if hi else None,
        )
    return out


def intensity_of(cases_csv: Any, n_fluid_bins: int) -> dict[str, float] | None:
    """A policy's treatment intensity on the states it was evaluated on: the mean vasopressor
    bin and the mean IV-fluid bin of the actions it chose there (``policy_action`` of the
    evaluation's ``cases.csv``; an action is ``n_fluid_bins * vaso_bin + fluid_bin``), and the
    same for the clinicians' logged actions on those states (``clinician_*``). None when the
    evaluation has no cases table or no decisions."""
    from pathlib import Path

    import pyarrow.csv as pacsv

    path = Path(cases_csv)
    if not path.is_file():
        return None
    cols = ["policy_action", "clinician_action"]
    tab = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=cols))
    if not tab.num_rows:
        return None
    policy = tab["policy_action"].to_numpy().astype(np.int64)
    logged = tab["clinician_action"].to_numpy().astype(np.int64)
    return {
        "decisions": int(tab.num_rows),
        "vaso_bin": float(np.mean(policy // n_fluid_bins)),
        "fluid_bin": float(np.mean(policy % n_fluid_bins)),
        "clinician_vaso_bin": float(np.mean(logged // n_fluid_bins)),
        "clinician_fluid_bin": float(np.mean(logged % n_fluid_bins)),
    }


def error_by_intensity(
    truth: np.ndarray, estimate: np.ndarray, intensity: list[dict[str, float]]
) -> dict[str, dict[str, float | None]]:
    """Per intensity measure (:data:`INTENSITY`), the Spearman correlation with it of the
    estimate's error (estimate minus truth), of the truth and of the estimate."""
    t, e = np.asarray(truth, float), np.asarray(estimate, float)
    out = {}
    for key in INTENSITY:
        x = np.array([i[key] for i in intensity], dtype=float)
        out[key] = {"error": spearman(e - t, x), "truth": spearman(t, x),
                    "estimate": spearman(e, x)}  # fmt: skip
    return out


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def kendall(x: np.ndarray, y: np.ndarray) -> float | None:
    """Kendall's tau-b."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 3:
        return None
    i, j = np.triu_indices(n, 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float((dx * dy).sum())
    n0 = len(i)
    tx, ty = float((dx == 0).sum()), float((dy == 0).sum())
    den = math.sqrt((n0 - tx) * (n0 - ty))
    return concordant_minus_discordant / den if den > 0 else None


#: the estimators whose evaluation carries bounds under unobserved confounding
SENSITIVITY_ESTIMATORS = ("fqe", "wdr")


def sensitivities_of(evaluation: EvaluationMetrics | dict[str, Any]) -> dict[str, Any]:
    """The FQE's and the WDR's bounds under unobserved confounding in an evaluation
    (``ope/sensitivity.py``; None for an evaluation written before they existed)."""
    if not isinstance(evaluation, EvaluationMetrics):
        evaluation = EvaluationMetrics.parse(evaluation, "evaluation document (metrics.json)")
    out = {}
    for est in SENSITIVITY_ESTIMATORS:
        sens = getattr(evaluation, est).sensitivity
        out[est] = None if sens is None else sens.model_dump(by_alias=True)
    return out


def sensitivity_coverage(
    names: list[str], truth: np.ndarray, sensitivities: list[dict[str, Any] | None]
) -> dict[str, Any] | None:
    """How much confounding it takes for an estimator's bounds to contain the truth: per policy the
    smallest Lambda of the grid whose bounds contain its true value (None: none does), and per
    Lambda the share of policies whose bounds contain it."""
    from sepsisrl.ope.sensitivity import lambda_to_cover

    have = [(names[k], float(truth[k]), s["bounds"]) for k, s in enumerate(sensitivities) if s]
    if not have:
        return None
    model = next(s for s in sensitivities if s)["model"]
    lams = [b["lambda"] for b in have[0][2]]
    need = {name: lambda_to_cover(bounds, value) for name, value, bounds in have}
    cover = {
        f"{lam:g}": float(np.mean([b[j]["low"] <= v <= b[j]["high"] for _, v, b in have]))
        for j, lam in enumerate(lams)
    }
    return {"model": model, "policies": len(have), "lambda_to_cover": need,
            "coverage_by_lambda": cover}  # fmt: skip


def compare(
    rows: list[dict[str, Any]],
    returns: dict[str, np.ndarray] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    estimators: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per estimator, its agreement with the truth over ``rows``.

    Each row: ``{"policy": name, "truth": true value, "estimates": estimates_of(...)}``.
    ``returns`` (optional): each policy's per-episode true returns, paired across policies
    (same episodes, same order); with them each estimator's entry gains ``truth_noise``
    (:func:`truth_noise`). A row may carry ``episodes``, the number of episodes its estimate
    was computed from; when the compared rows agree on it, ``truth_noise`` also gives the
    rank agreement of an on-policy oracle with that many episodes (``oracle``). A row may
    carry ``intensity`` (:func:`intensity_of`); when every compared row does, the entry gains
    ``error_by_intensity`` (:func:`error_by_intensity`).
    ``estimators``: the names to compare (default: those of ``metrics.json``,
    :data:`ESTIMATORS`); a benchmark's own estimator is compared by name.
    """
    out: dict[str, dict[str, Any]] = {}
    for est in estimators or ESTIMATORS:
        names, truth, value, lo, hi = [], [], [], [], []
        skipped, sens, sizes, intensity = [], [], set(), []
        for r in rows:
            v, low, high = r["estimates"].get(est, (None, None, None))
            if v is None:
                skipped.append(r["policy"])
                continue
            sens.append((r.get("sensitivity") or {}).get(est))
            sizes.add(r.get("episodes"))
            intensity.append(r.get("intensity"))
            names.append(r["policy"])
            truth.append(float(r["truth"]))
            value.append(v)
            lo.append(low)
            hi.append(high)
        t, e = np.array(truth), np.array(value)
        doc: dict[str, Any] = {
            "policies": len(names),
            "not_evaluable": skipped,
            "spearman": spearman(e, t),
            "kendall": kendall(e, t),
            "mae": float(np.mean(np.abs(e - t))) if len(t) else None,
            "coverage": None,
            "top1_regret": None,
            "ranked_first": None,
        }
        with_ci = [k for k in range(len(names)) if lo[k] is not None and hi[k] is not None]
        if with_ci:
            doc["coverage"] = float(np.mean([lo[k] <= t[k] <= hi[k] for k in with_ci]))
        if len(t):
            first = int(np.argmax(e))
            doc["ranked_first"] = names[first]
            doc["top1_regret"] = float(t.max() - t[first])
        if CLINICIAN in names and len(names) > 1:
            c = names.index(CLINICIAN)
            others = [k for k in range(len(names)) if k != c]
            err = (e[others] - e[c]) - (t[others] - t[c])
            doc["mae_vs_clinician"] = float(np.mean(np.abs(err)))
        if len(names) >= 3 and all(intensity):
            doc["error_by_intensity"] = error_by_intensity(t, e, intensity)
        coverage = sensitivity_coverage(names, t, sens)
        if coverage is not None:
            doc["sensitivity"] = coverage
        if returns is not None and len(names) >= 3 and all(n in returns for n in names):
            size = next(iter(sizes)) if len(sizes) == 1 else None
            paired = np.stack([np.asarray(returns[n], float) for n in names])
            doc["truth_noise"] = truth_noise(paired, e, resamples, seed, sample_episodes=size)
        out[est] = doc
    return out


def truth_noise(
    returns: np.ndarray,
    estimates: np.ndarray | None = None,
    resamples: int = 1000,
    seed: int = 0,
    sample_episodes: int | None = None,
) -> dict[str, Any]:
    """How far the truth's own ranking of the policies can be trusted.

    ``returns``: (policies, episodes), each policy's true return on the same episodes (the
    truth population is shared, so the resampling is paired). The truth is the row means. The
    episodes are resampled with replacement ``resamples`` times (seeded):

    - ``ceiling``: the median Spearman correlation of the truth with a resampled truth: about
      the rank agreement an estimator that knew every policy's exact expected value would
      reach against this finite-population truth (``ceiling_p05``: its 5th percentile);
    - ``spearman_p05`` / ``spearman_p95`` (with ``estimates``): the estimator's Spearman
      against the resampled truths;
    - ``paired_se_median``: the median over policy pairs of the standard error of a
      difference of two true values (return units);
    - ``oracle`` (with ``sample_episodes`` m, the number of episodes the estimates were
      computed from): the Spearman correlation with the truth of an on-policy oracle that
      rolled every policy out on the same m patients (m truth episodes drawn with replacement,
      paired across policies, ``resamples`` times; median, 5th and 95th percentile, and the
      share of draws that reach :data:`TRUST`'s Spearman as ``reaches_target``). Like the
      estimator's, the trial's Spearman is against this finite truth; the ceiling says how far
      that truth ranks the expected values (with m above the truth's episodes the draws reuse
      them, and the trial agrees with the truth more than a fresh trial would). An
      estimator whose error is at least the Monte Carlo error of m on-policy episodes cannot
      rank better than that; a model that pools information across policies can.
    """
    r = np.asarray(returns, float)
    p, n = r.shape
    truth = r.mean(1)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])
    boot = counts @ r.T / n  # (resamples, policies)
    ceiling = _row_spearman(boot, truth)
    doc: dict[str, Any] = {
        "episodes": int(n),
        "resamples": int(resamples),
        "ceiling": float(np.nanmedian(ceiling)),
        "ceiling_p05": float(np.nanpercentile(ceiling, 5)),
    }
    if estimates is not None:
        agree = _row_spearman(boot, np.asarray(estimates, float))
        doc["spearman_p05"] = float(np.nanpercentile(agree, 5))
        doc["spearman_p95"] = float(np.nanpercentile(agree, 95))
    if sample_episodes is not None and sample_episodes > 0:
        m = int(sample_episodes)
        draws = np.stack([np.bincount(rng.integers(0, n, m), minlength=n)
                          for _ in range(resamples)])  # fmt: skip
        oracle = _row_spearman(draws @ r.T / m, truth)
        doc["oracle"] = {
            "episodes": m,
            "median": float(np.nanmedian(oracle)),
            "p05": float(np.nanpercentile(oracle, 5)),
            "p95": float(np.nanpercentile(oracle, 95)),
            "reaches_target": float(np.mean(oracle >= TRUST["spearman"])),
        }
    i, j = np.triu_indices(p, 1)
    diffs = r[i] - r[j]
    se = diffs.std(1, ddof=1) / math.sqrt(n) if n > 1 else None
    doc["paired_se_median"] = None if se is None else float(np.median(se))
    return doc


def _row_spearman(rows: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Spearman correlation of every row of ``rows`` with ``ref`` (average ranks)."""
    ranks = np.apply_along_axis(_ranks, 1, rows)
    ref_ranks = _ranks(ref)
    a = ranks - ranks.mean(1, keepdims=True)
    b = ref_ranks - ref_ranks.mean()
    den = np.sqrt((a * a).sum(1) * (b * b).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a @ b) / den
    return np.where(den > 0, out, np.nan)


def selection_regret(truth_by_policy: dict[str, float], selected: str) -> float | None:
    """Best true value among the candidates minus the selected candidate's."""
    if selected not in truth_by_policy or not truth_by_policy:
        return None
    return float(max(truth_by_policy.values()) - truth_by_policy[selected])


def episode_returns(truth_dirs: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """Each policy's per-episode true returns from its ``sepsisrl truth`` folder
    (``episodes.parquet``), in stay order; None unless every policy has them on the same
    episodes (the pairing :func:`truth_noise` needs)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    out: dict[str, np.ndarray] = {}
    stays = None
    for name, folder in truth_dirs.items():
        path = Path(folder) / "episodes.parquet"
        if not path.is_file():
            return None
        t = pq.read_table(path, columns=["stay_id", "return_eval"])
        order = np.argsort(t["stay_id"].to_numpy(), kind="stable")
        sid = t["stay_id"].to_numpy()[order]
        if stays is None:
            stays = sid
        elif len(sid) != len(stays) or not np.array_equal(sid, stays):
            return None
        out[name] = t["return_eval"].to_numpy()[order].astype(float)
    return out
