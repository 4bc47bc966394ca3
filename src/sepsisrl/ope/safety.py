"""Severe safety flags and decision-time subgroups (docs/evaluation.md, "Agreement, support").

Each rule is a recommendation a clinical reviewer would call dangerous, judged on the raw
(un-normalised) state at decision time and the recommended action's bins. Rules are counted
for the evaluated policy and for the clinicians' own logged actions (the reference level).

  vasopressor_max_with_high_map      top vasopressor bin while MAP >= 80 mmHg and no
                                     vasopressor has been given in the episode so far
  fluid_max_with_severe_hypoxaemia   top fluid bin while PaO2/FiO2 < 100
  fluid_max_with_large_balance       top fluid bin after more than 10 L of IV fluid
  no_treatment_in_shock              neither vasopressor nor fluid while MAP < 60 mmHg and
                                     lactate > 4 mmol/L

Subgroups are defined from the state at decision time only (never from the outcome):
SOFA bands (0-5, 6-10, >10), shock (MAP < 65 with lactate > 2, or vasopressors given before),
renal dysfunction (creatinine >= 2 mg/dL), age bands (< 50, 50-69, >= 70).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sepsisrl.rl.actions import ActionGrid

Raw = dict[str, np.ndarray]

#: rule(raw state, vasopressor bin, fluid bin, grid) -> flagged decisions; the top bins are the
#: replay's own (``ActionGrid`` from its meta).
SAFETY_RULES: dict[str, Callable[[Raw, np.ndarray, np.ndarray, ActionGrid], np.ndarray]] = {
    "vasopressor_max_with_high_map": lambda x, v, f, g: (
        (v == g.n_vaso - 1) & (x["map"] >= 80) & (x["cum_vasopressor_dose_nor_equiv"] <= 0)
    ),
    "fluid_max_with_severe_hypoxaemia": lambda x, v, f, g: (
        (f == g.n_fluid - 1) & (x["pf_ratio"] < 100)
    ),
    "fluid_max_with_large_balance": lambda x, v, f, g: (
        (f == g.n_fluid - 1) & (x["cum_iv_fluid_ml"] > 10_000)
    ),
    "no_treatment_in_shock": lambda x, v, f, g: (
        (v == 0) & (f == 0) & (x["map"] < 60) & (x["lactate"] > 4)
    ),
}
REQUIRED_FEATURES = (
    "map", "pf_ratio", "cum_iv_fluid_ml", "cum_vasopressor_dose_nor_equiv", "lactate",
    "creatinine", "age_years",
)  # fmt: skip


def safety_flags(raw: Raw, actions: np.ndarray, grid: ActionGrid) -> dict[str, np.ndarray]:
    v, f = grid.bins(actions)
    return {name: rule(raw, v, f, grid) for name, rule in SAFETY_RULES.items()}


def subgroups(raw: Raw, sofa: np.ndarray | None) -> dict[str, np.ndarray]:
    groups: dict[str, np.ndarray] = {}
    if sofa is not None:
        groups["sofa_0_5"] = sofa <= 5
        groups["sofa_6_10"] = (sofa >= 6) & (sofa <= 10)
        groups["sofa_gt_10"] = sofa > 10
    shock = ((raw["map"] < 65) & (raw["lactate"] > 2)) | (raw["cum_vasopressor_dose_nor_equiv"] > 0)
    groups["shock"] = shock
    groups["no_shock"] = ~shock
    groups["renal_dysfunction"] = raw["creatinine"] >= 2
    groups["age_lt_50"] = raw["age_years"] < 50
    groups["age_50_69"] = (raw["age_years"] >= 50) & (raw["age_years"] < 70)
    groups["age_ge_70"] = raw["age_years"] >= 70
    return groups
