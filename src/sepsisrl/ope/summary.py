"""Repeated-seed summary: mean and standard deviation over seeds, in the model card's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sepsisrl.contracts import EvaluationMetrics

#: (metric key, row label) in the order of the published model card's table.
CARD_ROWS = (
    ("fqe_mean", "FQE mean"),
    ("wdr_mean", "WDR mean"),
    ("wdr_ci_low", "WDR 95% CI lower mean"),
    ("wdr_ci_high", "WDR 95% CI upper mean"),
    ("wis_mean", "WIS mean"),
    ("wis_ci_low", "WIS 95% CI lower mean"),
    ("wis_ci_high", "WIS 95% CI upper mean"),
    ("ess", "ESS mean"),
    ("clinician_agreement", "Clinician agreement mean"),
    ("support_mass", "Support mass mean"),
    ("low_support_action_rate", "Low-support action rate mean"),
    ("severe_safety_flags", "Severe safety flags mean"),
)


def summarize(eval_dirs: list[str | Path]) -> dict[str, Any]:
    """Mean and standard deviation over evaluations of every ``metrics.json`` ``metrics`` key
    (each file checked against its contract: a missing key is an error naming file and key)."""
    docs = [EvaluationMetrics.load(Path(d) / "metrics.json") for d in eval_dirs]
    splits = {d.split for d in docs}
    if len(splits) != 1:
        raise ValueError(f"evaluations mix splits {sorted(splits)}; summarise one split at a time")
    tables = [d.metrics.model_dump() for d in docs]
    rows = {}
    for key in tables[0]:
        vals = [t[key] for t in tables]
        finite = np.array([v for v in vals if v is not None], dtype=np.float64)
        rows[key] = {
            "mean": float(finite.mean()) if len(finite) else None,
            "std": float(finite.std(ddof=1))
            if len(finite) > 1
            else (0.0 if len(finite) == 1 else None),
            "n": len(finite),
            "undefined": len(vals) - len(finite),
        }
    return {"split": splits.pop(), "evaluations": [str(d) for d in eval_dirs],
            "policies": [d.policy.name for d in docs], "metrics": rows}  # fmt: skip


def card_table(summary: dict[str, Any]) -> str:
    lines = ["| Metric | Mean | SD | n |", "|---|---|---|---|"]
    for key, label in CARD_ROWS:  # every card row is a metrics.json key: summarize has it
        r = summary["metrics"][key]
        mean = "undefined" if r["mean"] is None else f"{r['mean']:.4f}"
        sd = "" if r["std"] is None else f"{r['std']:.4f}"
        lines.append(f"| {label} | {mean} | {sd} | {r['n']} |")
    return "\n".join(lines)
