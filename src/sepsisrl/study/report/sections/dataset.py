"""The data the study learnt from: cohort flow, feature missingness, logged actions."""

from __future__ import annotations

import numpy as np

from sepsisrl.study.report import figures
from sepsisrl.study.report.blocks import Block, Figure, Text, fmt, pct, table
from sepsisrl.study.report.data import Study


def cohort_flow(st: Study) -> list[Block]:
    audit, eps_ = st.json("cohort/audit.json"), st.json("episodes/audit.json")
    splits = st.json("splits/audit.json")
    flow = audit.get("flow", [])
    steps = [f.get("step") or f.get("rule") or "?" for f in flow]
    remaining = np.array([f.get("remaining", 0) for f in flow], dtype=np.int64)
    flow_rows = [
        [s, fmt(f.get("excluded")) if "excluded" in f else "", fmt(f["remaining"])]
        for s, f in zip(steps, flow, strict=True)
    ]
    summary = [
        ["ICU stays", fmt(audit.get("icu_stays"))],
        ["Cohort stays", fmt(audit.get("cohort_stays"))],
        ["90-day mortality", fmt(audit.get("mortality_90d"))],
        ["Episodes", fmt(eps_.get("episodes"))],
        ["Transitions (decisions)", fmt(eps_.get("transitions"))],
        ["Mean steps per episode", fmt(eps_.get("mean_steps"))],
        *[[f"Episodes ending by {k}", fmt(v)] for k, v in eps_.get("end_reason", {}).items()],
    ]
    split_rows = [
        [k, fmt(v.get("patients")), fmt(v.get("mortality_90d"))]
        for k, v in splits.get("splits", {}).items()
    ]
    fig = figures.barh(steps, remaining, "stays remaining", "Cohort flow", "{:d}")
    return [
        table("cohort-flow", ["Step / exclusion rule", "Excluded", "Remaining"], flow_rows),
        Figure("cohort_flow", fig, "Stays remaining after each exclusion rule."),
        table("cohort-summary", ["Quantity", "Value"], summary),
        table("splits", ["Split", "Patients", "90-day mortality"], split_rows),
    ]


def missingness(st: Study) -> list[Block]:
    miss = st.json("features/audit.json").get("window_missing_fraction", {})
    names = np.array(list(miss), dtype=object)
    vals = np.array(list(miss.values()), dtype=np.float64)
    order = np.argsort(-vals, kind="stable")
    names, vals = names[order].tolist(), vals[order]
    rows = [[n, fmt(v), pct(v)] for n, v in zip(names, vals.tolist(), strict=True)]
    out: list[Block] = [
        Text("Share of 4-hour decision windows without a measurement (before imputation)."),
        table("missingness", ["Feature", "Missing fraction", "Missing %"], rows),
    ]
    if len(names):
        fig = figures.barh(
            names, vals, "missing fraction", "Feature missingness per window", "{:.2f}"
        )
        out.append(Figure("missingness", fig, "Missing fraction per feature (sorted)."))
    return out


def _bin_ranges(edges: list[float]) -> list[str]:
    e = [fmt(x) for x in edges]
    inner = [f"{lo} < dose ≤ {hi}" for lo, hi in zip(["0", *e[:-1]], e, strict=True)]
    return ["0 (none)", *inner, f"dose > {e[-1]}"] if e else ["0 (none)"]


CONFOUNDING_NOTE = (
    "A logged action bins the treatment of its whole 4-hour window, and clinicians titrate "
    "inside it on what they see; a policy holds its action for the window. Less logged "
    "treatment then goes with windows in which the patient stayed stable, and every estimator "
    "that conditions on the state over-values treating less (see the titration share below and "
    "docs/evaluate.md, 'Confounding')."
)


def logged_actions(st: Study) -> list[Block]:
    """The clinicians' logged actions on the replay's action grid, and the bins' doses."""
    audit = st.json("actions/audit.json")
    bins = st.optional_json("actions/bins.json") or {}
    grid = st.action_grid()
    counts = audit.get("action_counts", {})
    arr = np.array([counts.get(lab, 0) for lab in grid.labels], dtype=np.float64)
    total = arr.sum()
    shares = (arr / max(total, 1.0)).reshape(len(grid.vaso), len(grid.fluid))
    vaso, fluid = audit.get("vaso_edges", []), audit.get("fluid_edges", [])
    units = (bins.get("vasopressor", {}).get("unit", ""), bins.get("iv_fluid", {}).get("unit", ""))
    v_rng, f_rng = _bin_ranges(vaso), _bin_ranges(fluid)
    edge_rows = [[str(b), v, f] for b, (v, f) in enumerate(zip(v_rng, f_rng, strict=False))]
    rows = [f"V{i}" for i in range(len(grid.vaso))]
    cols = [f"F{j}" for j in range(len(grid.fluid))]
    fig = figures.heatmap(shares, rows, cols, "Logged clinician actions")
    return [
        Text(
            f"Action = {len(grid.fluid)} × vasopressor bin + IV fluid bin "
            f"({grid.n_actions} actions)."
        ),
        Text(CONFOUNDING_NOTE, "note"),
        table("action-stats", ["Quantity", "Value"], _action_stats(audit, total)),
        table(
            "action-bins", ["Bin", f"Vasopressor ({units[0]})", f"IV fluid ({units[1]})"], edge_rows
        ),
        Figure("actions_logged", fig, "Logged clinician action distribution (all steps)."),
    ]


def _action_stats(audit: dict, total: float) -> list[list[str]]:
    vaso, fluid = audit.get("vaso_edges", []), audit.get("fluid_edges", [])
    stats = [
        ["Logged decisions", fmt(int(total))],
        ["Zero-vasopressor fraction", fmt(audit.get("zero_vaso_fraction"))],
        ["Zero-fluid fraction", fmt(audit.get("zero_fluid_fraction"))],
        ["Vasopressor bin edges", ", ".join(fmt(x) for x in vaso)],
        ["IV fluid bin edges", ", ".join(fmt(x) for x in fluid)],
    ]
    ww = audit.get("within_window") or {}
    if ww:
        stats.append([
            "Vasopressor windows titrated inside the window (bin differs from the first hour's)",
            f"{fmt(ww.get('vaso_bin_differs_from_first_hour_when_on'))} of "
            f"{fmt(ww.get('vaso_windows_on'))} windows with a vasopressor",
        ])  # fmt: skip
    return stats
