"""The sweep's candidates and the validation-only selection rule.

Rule (``configs/study.yaml`` -> ``selection``; written into ``study/selection.json``):

1. Per evaluation (one candidate, one seed, VALIDATION split, the greedy policy exactly as it
   is exported - no softened stand-in) take the ``estimator``'s estimate and the lower end of
   its 95 % CI (``wdr`` by default: the estimator bench/ope_panel.py validates best against the
   simulator's truth), support mass, the low-support action rate and severe safety flags. An
   evaluation that fails the evaluation's gates (FQE not converged or out of range, support
   too low; for WIS the overlap gate) has no estimate: it cannot win.
2. score = the lower CI bound (a pessimistic, per-seed bound in evaluation-reward units).
3. A candidate's metrics are the means over its seeds (undefined if any seed's is). Gates:
   evaluable (a defined score), low-support rate <= low_support_max, severe flags <=
   severe_flags_max (a count, or ``clinicians``: no more than the clinicians' own actions raise
   on the same validation states - the reference level of docs/evaluation.md).
4. Ranking: candidates passing every gate first, by score (higher first), ties by support mass.
   Then the others, safety first: those passing the severe-flag gate, else fewer mean severe
   flags; then passing the low-support gate; then evaluable; then score.
5. Stage 1 (one seed) keeps the top ``finalists`` as finalists (filling with the best failing
   candidates when too few pass - recorded). Stage 2 adds seeds to the finalists and ranks them
   again; the selected configuration is rank 1 among the finalists, and its exported seed is the
   one with the best validation score.
6. Fallback, explicit: when no finalist passes every gate, the selected configuration is the
   first finalist in the safety-first order of point 4; ``selected.fallback`` is true and the
   selection record and report say which gates failed.
7. Against the clinicians (a verdict, not a gate): the clinicians' logged policy is evaluated
   on the same validation split by the same estimator; ``selected.versus_clinicians`` records
   whether the selected configuration's score (its lower bound) exceeds the clinicians'
   estimate, and the report says so. A study whose selection is not credibly better than the
   clinicians has not found a better policy, whatever it exports.

Only validation metrics enter; the test split is not read until a selection has been written,
and the simulator's truth (``study/truth.json``) is computed after it and read by nothing here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sepsisrl.contracts import EvaluationMetrics
from sepsisrl.study.config import SelectionSection, StudyConfig

SELECTION_KEYS = (
    "estimate",
    "ci_low",
    "ci_high",
    "fqe_mean",
    "ess",
    "support_mass",
    "low_support_action_rate",
    "severe_safety_flags",
    "clinician_safety_flags",
)


def candidates(cfg: StudyConfig) -> list[dict[str, Any]]:
    """The stage-1 grid: rewards x learning-rate regimes x IQL settings."""
    out = []
    for reward in cfg.sweep.rewards:
        for regime, lrs in cfg.sweep.lr_regimes.items():
            for setting, iql in cfg.sweep.iql_settings.items():
                out.append({
                    "name": f"{cfg.sweep.algo}_{reward}_{regime}_{setting}",
                    "reward": reward, "lr_regime": regime, "iql_setting": setting,
                    "hyperparameters": {**lrs, **iql},
                })  # fmt: skip
    return out


def selection_metrics(doc: EvaluationMetrics | dict[str, Any], estimator: str) -> dict[str, Any]:
    """The selection inputs of one evaluation (``metrics.json``, loaded through its contract;
    a plain document is checked against the contract first)."""
    if not isinstance(doc, EvaluationMetrics):
        doc = EvaluationMetrics.parse(doc, "metrics.json")
    m = doc.metrics.model_dump()
    if f"{estimator}_ci_low" not in m:
        raise ValueError(
            f"selection.estimator={estimator!r} is not reported by the evaluation "
            f"(metrics.json has no {estimator}_ci_low)"
        )
    return {
        "estimate": m[f"{estimator}_mean"],
        "ci_low": m[f"{estimator}_ci_low"],
        "ci_high": m[f"{estimator}_ci_high"],
        "fqe_mean": m["fqe_mean"],
        "ess": m["ess"],
        "support_mass": m["support_mass"],
        "low_support_action_rate": m["low_support_action_rate"],
        "severe_safety_flags": m["severe_safety_flags"],
        "clinician_safety_flags": m["clinician_safety_flags"],
    }


def score(row: dict[str, Any], rule: SelectionSection) -> float | None:
    """The pessimistic bound: the lower end of the estimator's 95 % CI (None: not evaluable)."""
    return row["ci_low"]


def _mean(values: list[Any]) -> float | None:
    """Mean over seeds; undefined if any seed's value is undefined (never silently dropped)."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return float(sum(values) / len(values))


def aggregate(candidate: dict[str, Any], rule: SelectionSection) -> dict[str, Any]:
    """Fill a candidate's seed means, score and gates from its ``seeds`` rows."""
    seeds = candidate["seeds"]
    for row in seeds:
        row["score"] = score(row, rule)
    agg = {k: _mean([r.get(k) for r in seeds]) for k in SELECTION_KEYS}
    agg["score"] = _mean([r["score"] for r in seeds])
    low, flags = agg["low_support_action_rate"], agg["severe_safety_flags"]
    gates = {
        "evaluable": agg["score"] is not None,
        "low_support": low is not None and low <= rule.low_support_max,
        # no raw features (an external dataset): flags cannot be computed -> gate fails
        "severe_flags": flags is not None and flags <= flag_limit(rule, agg),
    }
    candidate.update(agg)
    candidate["gates"] = gates
    candidate["passed"] = all(gates.values())
    return candidate


def _sort_key(c: dict[str, Any]) -> tuple:
    g, s = c["gates"], c["score"]
    if all(g.values()):
        safety: tuple = (0, 0.0, 0, 0)
    else:  # fallback order: safety first (fewest severe flags), then support, then ESS
        flags = c["severe_safety_flags"]
        excess = 0.0 if g["severe_flags"] else (math.inf if flags is None else flags)
        safety = (1, excess, int(not g["low_support"]), int(not g["evaluable"]))
    return (
        *safety,
        s is None,
        -(s or 0.0),
        -(c["support_mass"] or 0.0),
        c["name"],
    )


def rank(cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort by the rule and write each candidate's ``rank`` (1 = best)."""
    ordered = sorted(cands, key=_sort_key)
    for i, c in enumerate(ordered, 1):
        c["rank"] = i
    return ordered


def rung_cut(ranked: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """The candidates a successive-halving rung stops, from its ``rank`` order: only on
    evidence - a candidate that passed every gate while at least ``keep`` others that passed
    scored higher. One that does not pass the gates yet (an early policy's support or safety
    flags) has no score to lose on and goes on training; with ``keep`` or fewer evaluable
    candidates the rung stops nobody (docs/run.md: on the quick world every rung-1 policy
    failed the support gate, and cutting by the safety-first fallback order dropped every
    finalist of the full sweep)."""
    return [c for c in ranked if c["passed"]][keep:]


def rung_record(
    rung: int,
    rungs: int,
    step: int,
    ranked: list[dict[str, Any]],
    keep: int,
    paired: Callable[[dict[str, Any], dict[str, Any]], list[float] | None] | None = None,
    stop: str = "rank",
) -> dict[str, Any]:
    """What a successive-halving rung decided (``selection.json`` -> ``halving``), and how
    firmly. ``cut`` is the score of the last candidate kept on evidence (``last_kept``; None
    when no candidate is past the cut). ``within_noise``: the candidates past the cut that
    the validation data do not show worse than that candidate, so that the full sweep may
    finish them ahead (docs/run.md: at 20,000 stays such a stop dropped the full sweep's
    selection). The test, per candidate past the cut: ``paired(candidate, last_kept)``, the
    95 % CI [estimate, low, high] of the difference of their values on the same episodes
    (``ope/paired.py``), whose upper end reaches 0; where it gives None, the candidate's own
    interval reaching the cut (``noise_test`` says which: ``paired``, ``intervals`` or
    ``mixed``).

    ``stop`` (``sweep.halving.stop``): ``rank`` stops every candidate past the cut
    (:func:`rung_cut`); ``credible`` only those not within the noise, the others going on
    (``spared``)."""
    beyond = rung_cut(ranked, keep)
    passed = [c for c in ranked if c["passed"]]
    last = passed[keep - 1] if beyond else None
    cut = last["score"] if last is not None else None
    differences: dict[str, list[float] | None] = {}
    noise = []
    for c in beyond:
        diff = paired(c, last) if paired is not None else None
        differences[c["name"]] = diff
        if diff is not None:
            unresolved = diff[2] >= 0  # the difference's upper end reaches 0
        else:
            unresolved = c["ci_high"] is not None and c["ci_high"] >= cut
        if unresolved:
            noise.append(c["name"])
    used = {"paired" if d is not None else "intervals" for d in differences.values()}
    spared = noise if stop == "credible" else []
    stopped = [c for c in beyond if c["name"] not in spared]
    names = {c["name"] for c in stopped}
    return {
        "rung": rung,
        "rungs": rungs,
        "step": step,
        "candidates": len(ranked),
        "passed": len(passed),
        "keep": keep,
        "cut": cut,
        "last_kept": last["name"] if last is not None else None,
        "kept": [c["name"] for c in ranked if c["name"] not in names],
        "stop": stop,
        "stopped": [c["name"] for c in stopped],
        "within_noise": noise,
        "spared": spared,
        "noise_test": used.pop() if len(used) == 1 else ("mixed" if used else "paired"),
        "differences": differences,
    }


def flag_limit(rule: SelectionSection, row: dict[str, Any]) -> float:
    """The severe-flag gate: an absolute count, or the clinicians' own count on the same
    validation states (their actions are the reference level of every safety rule)."""
    if rule.severe_flags_max == "clinicians":
        ref = row.get("clinician_safety_flags")
        return -math.inf if ref is None else float(ref)
    return float(rule.severe_flags_max)


def failed_gates(c: dict[str, Any]) -> list[str]:
    return [g for g, ok in c["gates"].items() if not ok]


def choose(finalists: list[dict[str, Any]], rule: SelectionSection) -> dict[str, Any]:
    """The selected configuration and seed among ranked finalists (validation only)."""
    best = rank(finalists)[0]
    seeds = [r for r in best["seeds"] if r["score"] is not None] or best["seeds"]
    seed_row = max(seeds, key=lambda r: (r["score"] if r["score"] is not None else -math.inf,
                                         -r["seed"]))  # fmt: skip
    fallback = not best["passed"]

    def fmt(x: float | None) -> str:
        return "undefined" if x is None else f"{x:.3f}"

    if fallback:
        reason = (
            f"fallback: no finalist passed every gate; {best['name']} comes first in the "
            f"safety-first order (severe flags {fmt(best['severe_safety_flags'])}, low-support "
            f"rate {fmt(best['low_support_action_rate'])}, {rule.estimator} lower bound "
            f"{fmt(best['score'])}); failed gates: {', '.join(failed_gates(best))}"
        )
    else:
        ref = " (the clinicians'" if rule.severe_flags_max == "clinicians" else ""
        ref = f"{ref} flags on the same states)" if ref else ""
        reason = (
            f"{best['name']} passes every gate (evaluable by {rule.estimator}, low-support "
            f"rate {fmt(best['low_support_action_rate'])} <= {rule.low_support_max}, severe "
            f"flags {fmt(best['severe_safety_flags'])} <= {fmt(flag_limit(rule, best))}{ref}"
            ") and has the "
            f"best mean validation score ({rule.estimator} 95% CI lower bound) "
            f"{fmt(best['score'])} over {len(best['seeds'])} seeds"
        )
    reason += f"; exported seed {seed_row['seed']} has the best validation score of its seeds"
    return {"name": best["name"], "seed": seed_row["seed"], "run": seed_row["run"],
            "fallback": fallback, "failed_gates": failed_gates(best),
            "reason": reason}  # fmt: skip


def versus_clinicians(
    chosen: dict[str, Any],
    clinicians: dict[str, Any],
    estimator: str,
    evaluation: str,
    sensitivity: dict[str, Any] | None = None,
    run: str | None = None,
    required_lambda: float = 1.0,
) -> dict[str, Any]:
    """Whether the selected configuration is credibly better than the clinicians (validation):
    its score (mean over seeds of the lower CI bound) above the clinicians' point estimate."""
    score, est = chosen.get("score"), clinicians.get("estimate")
    better = None if score is None or est is None else bool(score > est)
    if better is None:
        verdict = "undefined: an estimate is not evaluable"
    elif better:
        verdict = (f"credibly better than the clinicians by {estimator}: lower bound "
                   f"{score:.3f} > clinicians' {est:.3f}")  # fmt: skip
    else:
        verdict = (f"NOT credibly better than the clinicians by {estimator}: lower bound "
                   f"{score:.3f} <= clinicians' {est:.3f}")  # fmt: skip
    out = {
        "estimator": estimator,
        "split": "validation",
        "selected_score": score,
        "selected_estimate": chosen.get("estimate"),
        "clinician_estimate": est,
        "clinician_ci": [clinicians.get("ci_low"), clinicians.get("ci_high")],
        # on-policy calibration: the estimator on the clinicians' own policy against the mean
        # return their validation episodes actually had (no model, no weights)
        "clinician_observed_return": clinicians.get("observed_return"),
        "credibly_better": better,
        "verdict": verdict,
        "evaluation": evaluation,
        # only for a defined verdict: a gated (not evaluable) estimate has no bounds to show
        "confounding": None,
    }
    if sensitivity and run and better is not None:
        conf = confounding(sensitivity, est, run, required_lambda)
        out["confounding"] = conf
        if better and not conf["survives"]:
            out["verdict"] += (
                f"; but NOT robust to unobserved confounding: the advantage does not survive "
                f"Lambda = {required_lambda:g} (selection.confounding_lambda)"
            )
    return out


def confounding(
    sensitivity: dict[str, Any], reference: float | None, run: str, required: float = 1.0
) -> dict[str, Any]:
    """How much unobserved confounding the exported run's advantage over the clinicians survives:
    the largest Lambda of the grid (``ope/sensitivity.py``) at which the lower bound of its
    validation estimate (the selection's estimator) still exceeds the clinicians' estimate (bias
    bounds; no sampling error)."""
    from sepsisrl.ope.sensitivity import survives_up_to

    bounds = sensitivity["bounds"]
    estimate = bounds[0]["low"]  # Lambda = 1: the point estimate (projected)
    est = sensitivity["estimator"].upper()
    model = sensitivity["model"]
    what = ("the odds of each logged decision" if model == "per_decision"
            else "the odds of the logged decisions up to each step, together,")  # fmt: skip
    if reference is None:
        held = {"holds_up_to": None, "fails_at": None}
        statement = "undefined: the clinicians' estimate is not evaluable"
    else:
        held = survives_up_to(bounds, reference)
        grid_max = bounds[-1]["lambda"]
        if held["holds_up_to"] is None:
            statement = (
                f"the exported run's {est} point estimate {estimate:.3f} does not exceed the "
                f"clinicians' {reference:.3f} even without confounding"
            )
        elif held["fails_at"] is None:
            statement = (
                f"the exported run's {est} stays above the clinicians' {reference:.3f} for every "
                f"Lambda up to {grid_max:g} ({what} may differ from the behaviour model's by "
                "that factor)"
            )
        else:
            statement = (
                f"the exported run's {est} ({estimate:.3f}) stays above the clinicians' "
                f"{reference:.3f} only while "
                f"{what} differ from the behaviour model's by at most a factor "
                f"{held['holds_up_to']:g}; at {held['fails_at']:g} its lower bound "
                "reaches them"
            )
    up_to = held["holds_up_to"]
    return {"model": model, "run": run, "reference": reference, "estimate": estimate,
            "holds_up_to": up_to, "fails_at": held["fails_at"], "required": required,
            # between grid points nothing is known: only a Lambda of the grid counts as held
            "survives": up_to is not None and up_to >= required,
            "statement": statement + " (bias bounds of the marginal sensitivity model; "
            "sampling error comes on top)"}  # fmt: skip


def rule_document(cfg: StudyConfig) -> dict[str, Any]:
    r = cfg.selection
    return {
        "description": (
            f"validation split only; the greedy policy exactly as exported; score = lower end of "
            f"the {r.estimator.upper()} 95% CI (patient bootstrap with the FQE ensemble); "
            "estimates that fail the evaluation's gates are not evaluable; means over seeds; "
            "gates on evaluability, low-support rate and severe safety flags; passing "
            "candidates ranked by score (ties: support mass)"
        ),
        "estimator": r.estimator,
        "score": f"{r.estimator}_ci_low",
        "gates": {
            "evaluable": True,
            "low_support_max": r.low_support_max,
            "severe_flags_max": r.severe_flags_max,
        },
        "finalists": r.finalists,
        "fallback": (
            "when no finalist passes every gate: safety first - the finalist with the fewest "
            "severe flags, then passing the low-support gate, then evaluable, then the best "
            "score; recorded as selected.fallback = true"
        ),
        "versus_clinicians": (
            "a verdict, not a gate: credibly better when the selected score (lower CI bound) "
            "exceeds the clinicians' estimate on the same validation split; robust when the "
            "exported seed's estimate also stays above it under unobserved confounding of "
            f"Lambda = {r.confounding_lambda:g} (marginal sensitivity model)"
        ),
    }
