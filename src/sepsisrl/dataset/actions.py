"""Actions stage: the 5 x 5 discrete action of every step, binned on the train split.

Per step, the treatment in the action window [tau_k, tau_k + 4 h): vasopressor dose
(NE-equivalent mcg/kg/min, concurrent agents summed, time-weighted) and IV-fluid volume (mL,
prorated). What counts as treatment is decided in the measurements stage
(``actions.treatment``, dataset/sql/infusions.sql): by default fluid that only carries a drug or
keeps a vein open is not resuscitation fluid. Bin 0 = no treatment; bins 1-4 = quartiles (Q25, Q50, Q75) of the non-zero doses of
train-split steps. ``action = 5 * vaso_bin + fluid_bin``. Edges are persisted, never refit.

Output (``actions/``): step_actions.parquet, bins.json. The cumulative doses given before each
decision time (state features 30-31) are also written here, from the same windows, so the
state can never include the current action.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.ingest import connect, fetch_arrow
from sepsisrl.dataset.sqlfiles import parquet_view, render
from sepsisrl.mimic.source import SourceError
from sepsisrl.workspace import read_json, write_json

VASO_UNIT = "mcg/kg/min norepinephrine-equivalent (time-weighted mean over the action window)"
FLUID_UNIT = "mL of IV crystalloid/colloid given in the action window"


class DoseBins:
    """Quartile bins of non-zero doses (fit on train, transform everywhere)."""

    def __init__(self, n_bins: int = 5) -> None:
        self.n_bins = n_bins
        self.edges: np.ndarray | None = None
        self.representative: np.ndarray | None = None

    def fit(self, doses: np.ndarray) -> DoseBins:
        doses = np.asarray(doses, dtype=np.float64)
        nonzero = doses[doses > 0]
        if len(nonzero) < self.n_bins - 1:
            raise ValueError(
                f"cannot fit dose bins: only {len(nonzero)} non-zero train doses "
                f"(need at least {self.n_bins - 1})"
            )
        qs = np.linspace(0, 1, self.n_bins)[1:-1]
        self.edges = np.quantile(nonzero, qs)
        bins = self.transform(doses)
        self.representative = np.array(
            [0.0]
            + [
                float(np.median(doses[bins == b])) if (bins == b).any() else float("nan")
                for b in range(1, self.n_bins)
            ]
        )
        return self

    def transform(self, doses: np.ndarray) -> np.ndarray:
        if self.edges is None:
            raise RuntimeError("DoseBins is not fitted")
        doses = np.asarray(doses, dtype=np.float64)
        return np.where(doses > 0, 1 + np.searchsorted(self.edges, doses, side="left"), 0).astype(
            np.int16
        )

    def to_json(self, unit: str) -> dict[str, Any]:
        return {
            "unit": unit,
            "edges": [float(x) for x in self.edges],
            "rule": "bin 0: dose == 0; bin b (1..4): edges[b-2] < dose <= edges[b-1]",
            "representative_dose": [float(x) for x in self.representative],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DoseBins:
        obj = cls(len(doc["edges"]) + 2)
        obj.edges = np.asarray(doc["edges"], dtype=np.float64)
        obj.representative = np.asarray(doc["representative_dose"], dtype=np.float64)
        return obj


class NoDosesError(SourceError):
    """Too few train steps with a dose to fit the action bins: the message says why (an empty
    cohort and the step of the chain that is empty, or no treatment in inputevents)."""


def _audit(ws: Path, stage: str) -> dict[str, Any]:
    try:
        return read_json(ws / stage / "audit.json")
    except (OSError, ValueError):
        return {}


def no_doses_message(ws: Path, name: str, doses: np.ndarray, train: np.ndarray, n_bins: int) -> str:
    """What is wrong when the ``name`` dose bins cannot be fitted, from the audits of the
    earlier stages of workspace ``ws``: the cohort is empty (and which link of the Sepsis-3
    chain is), or the cohort's train steps have (nearly) no such treatment."""
    ingest, sepsis, cohort = _audit(ws, "ingest"), _audit(ws, "sepsis"), _audit(ws, "cohort")
    kept = ingest.get("rows_kept", {})
    need = f"the {n_bins - 1} quartile edges of the {name} bins need at least {n_bins - 1}"
    if len(doses) == 0:
        excluded = cohort.get("excluded_by_rule", {})
        rules = ", ".join(f"{n} by {r}" for r, n in excluded.items() if n) or "none"
        chain = [
            ("antibiotic orders (hosp/prescriptions rows whose drug matches "
             "sepsis.antibiotic_patterns, with a starttime)", sepsis.get("antibiotic_orders",
                                                               kept.get("antibiotics"))),
            ("culture specimens (hosp/microbiologyevents)", sepsis.get("culture_specimens",
                                                                  kept.get("cultures"))),
            ("suspected infections (a culture and an antibiotic within "
             "sepsis.culture_before_antibiotic_hours / antibiotic_before_culture_hours)",
             sepsis.get("suspicion_events")),
            ("stays with Sepsis-3 at any time (SOFA >= sepsis.sofa_threshold around a "
             "suspected infection)", sepsis.get("stays_sepsis3_any_time")),
        ]  # fmt: skip
        empty = next((what for what, n in chain if n == 0), None)
        counts = "; ".join(f"{n} {what.split(' (')[0]}" for what, n in chain if n is not None)
        cause = (
            f"the first empty link is {empty}: check that table (its rows and their times) "
            "and the sepsis: settings"
            if empty
            else "check the cohort: rules (age, ICU length of stay, onset window)"
        )
        return (
            f"the cohort is empty: 0 of {cohort.get('icu_stays', '?')} ICU stays qualify "
            f"(excluded: {rules}), so there is no decision step and no dose to bin. Sepsis-3 "
            f"chain: {counts}; {cause} (audit.json of the ingest, sepsis and cohort stages)."
        )
    n_train = int(train.sum())
    dosed = int((doses > 0).sum())
    table = "inputevents vasopressor rows" if name == "vasopressor" else "inputevents IV-fluid rows"
    return (
        f"cannot fit the {name} dose bins: only {int((doses[train] > 0).sum())} of {n_train} "
        f"train decision steps have a {name} dose ({dosed} of {len(doses)} steps in all), and "
        f"{need}. Check the {table} of the cohort's stays (ingest/audit.json item_rows, "
        "measurements/audit.json), or build from more stays."
    )


def action_labels(n_vaso: int = 5, n_fluid: int = 5) -> list[str]:
    vaso = ["no_vaso"] + [f"vaso_Q{i}" for i in range(1, n_vaso)]
    fluid = ["no_fluid"] + [f"fluid_Q{i}" for i in range(1, n_fluid)]
    return [f"{v}×{f}" for v in vaso for f in fluid]


def rows_sha256(stay_ids: np.ndarray, steps: np.ndarray | None = None) -> str:
    """Fingerprint of the rows a quantity was fitted on (checked by the leakage audit)."""
    order = np.lexsort((steps, stay_ids)) if steps is not None else np.argsort(stay_ids)
    h = hashlib.sha256(np.ascontiguousarray(stay_ids[order], dtype=np.int64).tobytes())
    if steps is not None:
        h.update(np.ascontiguousarray(steps[order], dtype=np.int64).tobytes())
    return h.hexdigest()


def step_treatment(con: duckdb.DuckDBPyConnection, cfg: BuildConfig) -> pa.Table:
    """Vasopressor rate and fluid volume of every action window of view ``steps``."""
    sql = render(
        "step_treatment", step=cfg.episodes.step_hours, vasopressors=sorted(cfg.vasopressors)
    )
    return fetch_arrow(con, f"SELECT * FROM ({sql}) ORDER BY stay_id, step")


def cumulative_before(stay: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per row, the sum of ``x`` over the earlier rows of the same stay (rows sorted).

    Each stay is summed on its own (a padded per-stay cumulative sum), so a stay's values do
    not depend on which other stays are in the table: the truth harness's online state, which
    sees one decision's stays at a time, gets the build's values bit for bit. (A running sum
    over the whole table minus each stay's offset leaves rounding residue such as 1e-14.)
    """
    n = len(stay)
    if n == 0:
        return np.zeros(0)
    first = np.ones(n, dtype=bool)
    first[1:] = stay[1:] != stay[:-1]
    group = np.cumsum(first) - 1
    start = np.flatnonzero(first)
    pos = np.arange(n) - start[group]
    padded = np.zeros((len(start), int(pos.max()) + 1))
    padded[group[pos > 0], pos[pos > 0]] = np.asarray(x, dtype=np.float64)[
        np.flatnonzero(pos > 0) - 1
    ]
    return np.cumsum(padded, axis=1)[group, pos]


def run_actions(
    episodes_dir: Path, meas_dir: Path, splits_dir: Path, cfg: BuildConfig, out: Path
) -> dict[str, Any]:
    con = connect(cfg, out.parent)
    parquet_view(con, "steps", episodes_dir / "steps.parquet")
    parquet_view(con, "infusions", meas_dir / "infusions.parquet")
    table = step_treatment(con, cfg)
    con.close()
    manifest = pq.read_table(splits_dir / "manifest.parquet")
    split_of = dict(
        zip(manifest["stay_id"].to_pylist(), manifest["split"].to_pylist(), strict=True)
    )
    stay = table["stay_id"].to_numpy()
    step = table["step"].to_numpy().astype(np.int64)
    vaso = table["vaso_ne_rate"].to_numpy()
    fluid = table["fluid_ml"].to_numpy()
    split = np.array([split_of[s] for s in stay.tolist()])
    train = split == "train"
    for name, doses, n_bins in (
        ("vasopressor", vaso, cfg.actions.vaso_bins),
        ("IV-fluid", fluid, cfg.actions.fluid_bins),
    ):
        if int((doses[train] > 0).sum()) < n_bins - 1:
            raise NoDosesError(no_doses_message(episodes_dir.parent, name, doses, train, n_bins))
    vbins = DoseBins(cfg.actions.vaso_bins).fit(vaso[train])
    fbins = DoseBins(cfg.actions.fluid_bins).fit(fluid[train])
    vb, fb = vbins.transform(vaso), fbins.transform(fluid)
    action = (cfg.actions.fluid_bins * vb + fb).astype(np.int16)
    first_hour = table["vaso_ne_rate_first_hour"].to_numpy()
    # cumulative treatment before each decision time: sum over the episode's earlier windows
    hours = cfg.episodes.step_hours

    out_table = pa.table(
        {
            "stay_id": stay,
            "step": step.astype(np.int16),
            "vaso_ne_rate": vaso,
            "fluid_ml": fluid,
            "vaso_bin": vb,
            "fluid_bin": fb,
            "action": action,
            "cum_iv_fluid_ml_before": cumulative_before(stay, fluid),
            "cum_vaso_dose_before": cumulative_before(stay, vaso * hours),
            "vaso_ne_rate_first_hour": first_hour,
        }
    )
    pq.write_table(out_table, out / "step_actions.parquet")
    labels = action_labels(cfg.actions.vaso_bins, cfg.actions.fluid_bins)
    bins_doc = {
        "schema_version": "1",
        "vasopressor": vbins.to_json(VASO_UNIT),
        "iv_fluid": {
            **fbins.to_json(FLUID_UNIT),
            "carrier_fluids": cfg.actions.treatment.carrier_fluids,
        },
        "action_id": f"{cfg.actions.fluid_bins} * vaso_bin + fluid_bin",
        "action_labels": labels,
        "fitted_on": {
            "split": "train",
            "steps": int(train.sum()),
            "rows_sha256": rows_sha256(stay[train], step[train]),
        },
    }
    write_json(out / "bins.json", bins_doc)
    counts = np.bincount(action, minlength=len(labels))
    return {
        "steps": len(stay),
        "zero_vaso_fraction": round(float((vb == 0).mean()), 4),
        "zero_fluid_fraction": round(float((fb == 0).mean()), 4),
        "vaso_edges": bins_doc["vasopressor"]["edges"],
        "fluid_edges": bins_doc["iv_fluid"]["edges"],
        "action_counts": {labels[i]: int(c) for i, c in enumerate(counts)},
        "within_window": within_window(vb, vbins.transform(first_hour)),
    }


def within_window(vaso_bin: np.ndarray, first_hour_bin: np.ndarray) -> dict[str, Any]:
    """How often a logged action was decided inside its own window, not at its start.

    A 4-hour action bins the treatment of the whole window; clinicians who titrate every hour
    change it on what they see inside the window, so the logged action partly records the
    window's own course. A policy that holds its action for the window (as the truth harness
    and any deployment at 4-hour decisions do) is then evaluated against logs in which less
    treatment goes with patients who stayed stable: every estimator that conditions on the
    state over-values under-treatment (docs/evaluate.md, "Confounding"). Measured here on the
    vasopressor: the share of windows whose vasopressor bin differs from the bin of the rate
    of the window's first hour.
    """
    changed = vaso_bin != first_hour_bin
    on = (vaso_bin > 0) | (first_hour_bin > 0)
    return {
        "vaso_bin_differs_from_first_hour": round(float(changed.mean()), 4)
        if len(changed)
        else None,
        "vaso_bin_differs_from_first_hour_when_on": (
            round(float(changed[on].mean()), 4) if on.any() else None
        ),
        "vaso_windows_on": int(on.sum()),
    }
