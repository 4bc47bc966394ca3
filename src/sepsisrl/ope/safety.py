"""Severe safety flags and decision-time subgroups (evaluation.md).

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

N_VASO = N_FLUID = 5


def bins(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return actions // N_FLUID, actions % N_FLUID


Raw = dict[str, np.ndarray]

SAFETY_RULES: dict[str, Callable[[Raw, np.ndarray, np.ndarray], np.ndarray]] = {
    "vasopressor_max_with_high_map": lambda x, v, f: (
        (v == N_VASO - 1) & (x["map"] >= 80) & (x["cum_vasopressor_dose_nor_equiv"] <= 0)
    ),
    "fluid_max_with_severe_hypoxaemia": lambda x, v, f: (f == N_FLUID - 1) & (x["pf_ratio"] < 100),
    "fluid_max_with_large_balance": lambda x, v, f: (
        (f == N_FLUID - 1) & (x["cum_iv_fluid_ml"] > 10_000)
    ),
    "no_treatment_in_shock": lambda x, v, f: (
        (v == 0) & (f == 0) & (x["map"] < 60) & (x["lactate"] > 4)
    ),
}
REQUIRED_FEATURES = (
    "map", "pf_ratio", "cum_iv_fluid_ml", "cum_vasopressor_dose_nor_equiv", "lactate",
    "creatinine", "age_years",
)  # fmt: skip


def safety_flags(raw: Raw, actions: np.ndarray) -> dict[str, np.ndarray]:
    v, f = bins(actions)
    return {name: rule(raw, v, f) for name, rule in SAFETY_RULES.items()}


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
