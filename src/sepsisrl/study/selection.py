"""The sweep's candidates and the validation-only selection rule.

Rule (``configs/study.yaml`` -> ``selection``; written into ``study/selection.json``):

1. Per evaluation (one candidate, one seed, VALIDATION split) take
   FQE = V^pi at held-out initial states, WIS_low = lower end of the patient-bootstrap 95% CI of
   trajectory-wise WIS, ESS, support mass, low-support action rate and severe safety flags.
   WIS_low and ESS are those of the greedy policy softened towards uniform by
   ``wis_softening_eps`` (a deterministic policy almost never matches a whole logged episode,
   so the unsoftened WIS is undefined on realistic episode lengths; the headline unsoftened
   numbers are still reported).
2. score = fqe_weight * FQE + wis_weight * WIS_low (both in evaluation-reward units, terminal
   +-15). An undefined WIS_low makes the score undefined.
3. A candidate's metrics are the means over its seeds. Gates: ESS >= ess_min,
   low-support rate <= low_support_max, severe flags <= severe_flags_max.
4. Ranking: candidates passing every gate first, by score (higher first; undefined last), ties by
   ESS then support mass. Then the others, safety first: those passing the severe-flag gate,
   else fewer mean severe flags; then passing the low-support gate; then passing the ESS gate;
   then score.
5. Stage 1 (one seed) keeps the top ``finalists`` as finalists (filling with the best failing
   candidates when too few pass - recorded). Stage 2 adds seeds to the finalists and ranks them
   again; the selected configuration is rank 1 among the finalists, and its exported seed is the
   one with the best validation score.
6. Fallback, explicit: when no finalist passes every gate, the selected configuration is the
   first finalist in the safety-first order of point 4; ``selected.fallback`` is true and the
   selection record and report say which gates failed.

Only validation metrics enter; the test split is not read until a selection has been written.
"""

from __future__ import annotations

import math
from typing import Any

from sepsisrl.study.config import SelectionSection, StudyConfig

SELECTION_KEYS = (
    "fqe_mean",
    "wis_ci_low",
    "ess",
    "support_mass",
    "low_support_action_rate",
    "severe_safety_flags",
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


def selection_metrics(doc: dict[str, Any], eps: float) -> dict[str, Any]:
    """The selection inputs of one evaluation document (``metrics.json``)."""
    m = doc["metrics"]
    if eps > 0:
        soft = doc["importance_sampling"]["wis_softened"].get(str(eps))
        if soft is None:
            available = sorted(doc["importance_sampling"]["wis_softened"])
            raise ValueError(
                f"selection.wis_softening_eps={eps} was not computed by the evaluation "
                f"(available: {available}, or 0)"
            )
        wis_low, ess = soft["ci_low"], soft["ess"]
    else:
        wis_low, ess = m["wis_ci_low"], m["ess"]
    return {
        "fqe_mean": m["fqe_mean"],
        "wis_ci_low": wis_low,
        "ess": ess,
        "support_mass": m["support_mass"],
        "low_support_action_rate": m["low_support_action_rate"],
        "severe_safety_flags": m["severe_safety_flags"],
    }


def score(row: dict[str, Any], rule: SelectionSection) -> float | None:
    if row["fqe_mean"] is None or row["wis_ci_low"] is None:
        return None
    return rule.fqe_weight * row["fqe_mean"] + rule.wis_weight * row["wis_ci_low"]


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
    agg = {k: _mean([r[k] for r in seeds]) for k in SELECTION_KEYS}
    agg["score"] = _mean([r["score"] for r in seeds])
    ess, low, flags = agg["ess"], agg["low_support_action_rate"], agg["severe_safety_flags"]
    gates = {
        "ess": ess is not None and ess >= rule.ess_min,
        "low_support": low is not None and low <= rule.low_support_max,
        # no raw features (an external dataset): flags cannot be computed -> gate fails
        "severe_flags": flags is not None and flags <= rule.severe_flags_max,
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
        safety = (1, excess, int(not g["low_support"]), int(not g["ess"]))
    return (
        *safety,
        s is None,
        -(s or 0.0),
        -(c["ess"] or 0.0),
        -(c["support_mass"] or 0.0),
        c["name"],
    )


def rank(cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort by the rule and write each candidate's ``rank`` (1 = best)."""
    ordered = sorted(cands, key=_sort_key)
    for i, c in enumerate(ordered, 1):
        c["rank"] = i
    return ordered


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
            f"rate {fmt(best['low_support_action_rate'])}, ESS {fmt(best['ess'])}, score "
            f"{fmt(best['score'])}); failed gates: {', '.join(failed_gates(best))}"
        )
    else:
        reason = (
            f"{best['name']} passes every gate (ESS {fmt(best['ess'])} >= {rule.ess_min}, "
            f"low-support rate {fmt(best['low_support_action_rate'])} <= "
            f"{rule.low_support_max}, severe flags {fmt(best['severe_safety_flags'])} <= "
            f"{rule.severe_flags_max}) and has the best mean validation score "
            f"{fmt(best['score'])} over {len(best['seeds'])} seeds"
        )
    reason += f"; exported seed {seed_row['seed']} has the best validation score of its seeds"
    return {"name": best["name"], "seed": seed_row["seed"], "run": seed_row["run"],
            "fallback": fallback, "failed_gates": failed_gates(best),
            "reason": reason}  # fmt: skip


def rule_document(cfg: StudyConfig) -> dict[str, Any]:
    r = cfg.selection
    return {
        "description": (
            "validation split only; score = fqe_weight * FQE + wis_weight * WIS 95% CI lower "
            "bound (WIS and ESS of the greedy policy softened by wis_softening_eps); means over "
            "seeds; gates on ESS, low-support rate and severe safety flags; passing candidates "
            "ranked by score (ties: ESS, support mass)"
        ),
        "wis_softening_eps": r.wis_softening_eps,
        "score": f"{r.fqe_weight} * fqe_mean + {r.wis_weight} * wis_ci_low",
        "gates": {
            "ess_min": r.ess_min,
            "low_support_max": r.low_support_max,
            "severe_flags_max": r.severe_flags_max,
        },
        "finalists": r.finalists,
        "fallback": (
            "when no finalist passes every gate: safety first - the finalist with the fewest "
            "severe flags, then passing the low-support gate, then the ESS gate, then the best "
            "score; recorded as selected.fallback = true"
        ),
    }
