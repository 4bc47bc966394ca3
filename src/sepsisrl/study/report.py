"""Study report: one self-contained HTML page and its markdown twin, built only from the
artifacts of a study workspace (``sepsisrl run``).

RESEARCH ONLY. The report summarises offline estimates from logged data; nothing in it is
clinical decision support.

``write_report(ws)`` writes ``<ws>/report/index.html`` (figures embedded as base64 PNG, inline
CSS, no external resources) and ``<ws>/report/report.md`` (figures in ``report/figures/``).
Every number is read from an artifact; the report is assembled as a list of blocks rendered
twice, so both files carry the same content. ``render_in_browser`` checks the page in a real
headless browser (used by ``bench/report.py`` and the tests when one is installed).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from sepsisrl import __version__

TITLE = "sepsisrl study report"
WARNING = (
    "RESEARCH ONLY — NOT FOR CLINICAL USE. Every value in this report is an offline estimate from "
    "retrospective (or synthetic) data. This report is not clinical decision support and must "
    "not inform the care of any patient."
)
#: Section headings, in the order they appear (the header has the page title instead).
SECTIONS = (
    "Study",
    "Cohort flow",
    "Feature missingness",
    "Action distributions",
    "Training curves",
    "Model selection (validation split)",
    "Seed variance of the finalists",
    "Test split: WIS and FQE with 95% CIs",
    "FQE versus support (validation)",
    "Action heatmaps of the selected policy (test)",
    "Subgroup safety of the selected policy (test)",
    "Estimates versus truth",
    "Final table (model card layout)",
    "Limitations",
)
#: Artifacts every report needs (paths relative to the workspace).
REQUIRED = (
    "study/selection.json",
    "study/final.json",
    "cohort/audit.json",
    "episodes/audit.json",
    "splits/audit.json",
    "features/audit.json",
    "actions/audit.json",
)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DPI = 100
LOSS_ORDER = ("critic_loss", "value_loss", "actor_loss")


class ReportError(ValueError):
    """A study report cannot be written (a required artifact is missing or unreadable)."""


class BrowserError(RuntimeError):
    """No headless browser, or the browser failed to render the report."""


# ------------------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str
    kind: str = "p"  # "p" | "warning" | "note"


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    key: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    key: str
    png: bytes
    caption: str


Block = Heading | Text | Bullets | Table | Figure


def _table(key: str, header: list[str], rows: list[list[Any]], caption: str = "") -> Table:
    return Table(key, tuple(header), tuple(tuple(str(c) for c in r) for r in rows), caption)


# ---------------------------------------------------------------------------- reading
def _read_json(ws: Path, rel: str) -> dict[str, Any]:
    path = ws / rel
    if not path.is_file():
        raise ReportError(f"study report: missing required artifact {rel} (expected at {path})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"study report: cannot read {rel}: {exc}") from exc


def _read_bytes(ws: Path, rel: str) -> bytes:
    path = ws / rel
    if not path.is_file():
        raise ReportError(f"study report: missing required artifact {rel} (expected at {path})")
    return path.read_bytes()


def _read_jsonl(ws: Path, rel: str) -> pa.Table:
    """A run's ``metrics.jsonl`` as a table (pyarrow; Python's parser for NaN/Infinity)."""
    path = ws / rel
    if not path.is_file():
        raise ReportError(f"study report: missing required artifact {rel} (expected at {path})")
    if path.stat().st_size == 0:
        return pa.table({})
    try:
        return pajson.read_json(path)
    except pa.ArrowInvalid:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return pa.Table.from_pylist(rows)


def _fmt_est(v: Any) -> str:
    """An estimate: None means it failed the evaluation's gates."""
    return "not evaluable" if v is None else _fmt(v)


def _fmt(v: Any, digits: int = 4) -> str:
    """A value as printed in the report; None / NaN -> 'undefined'."""
    if v is None:
        return "undefined"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return f"{float(v):.{digits}g}" if math.isfinite(v) else "undefined"
    return str(v)


def _pct(v: Any) -> str:
    return "undefined" if v is None else f"{100 * float(v):.1f}%"


def _ci(mean: Any, lo: Any, hi: Any) -> str:
    if mean is None:
        return "undefined"
    if lo is None or hi is None:
        return f"{_fmt(mean)} [CI undefined]"
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


@dataclass
class Study:
    """The workspace's study artifacts (read once)."""

    ws: Path
    selection: dict[str, Any]
    final: dict[str, Any]

    def json(self, rel: str) -> dict[str, Any]:
        return _read_json(self.ws, rel)

    @property
    def candidates(self) -> list[dict[str, Any]]:
        return self.selection.get("candidates", [])

    @property
    def selected_name(self) -> str:
        return self.selection["selected"]["name"]

    @property
    def estimator(self) -> str:
        return str(self.selection.get("rule", {}).get("estimator", "wdr"))

    def finalists(self) -> list[dict[str, Any]]:
        names = set(self.selection.get("finalists", []))
        return [c for c in self.candidates if c.get("stage") == 2 or c["name"] in names]

    def replay_meta_path(self) -> str:
        chosen = [c for c in self.candidates if c["name"] == self.selected_name]
        variant = chosen[0].get("reward") if chosen else None
        if variant:
            return f"replay/{variant}/meta.json"
        found = sorted((self.ws / "replay").glob("*/meta.json"))
        if not found:
            raise ReportError("study report: missing required artifact replay/<variant>/meta.json")
        return found[0].relative_to(self.ws).as_posix()

    def report_eval(self) -> str:
        """The selected policy's test evaluation that the heatmaps and subgroups show."""
        sel = self.final["selected"]
        seed = sel.get("exported_seed", self.selection["selected"].get("seed"))
        evals, seeds = sel["evals"], sel.get("seeds", [])
        return evals[seeds.index(seed)] if seed in seeds else evals[0]


def load_study(workspace: str | Path) -> Study:
    ws = Path(workspace)
    if not ws.is_dir():
        raise ReportError(f"study report: workspace {ws} does not exist")
    study = Study(ws, _read_json(ws, "study/selection.json"), _read_json(ws, "study/final.json"))
    _require_keys(study.selection, ("candidates", "selected.name", "rule"), "study/selection.json")
    _require_keys(study.final, ("selected.name", "selected.evals", "baselines"), "study/final.json")
    missing = [rel for rel in required_artifacts(study) if not (ws / rel).is_file()]
    if missing:
        raise ReportError(
            f"study report: missing required artifact(s) in {ws}: " + ", ".join(missing)
        )
    return study


def _require_keys(doc: dict[str, Any], keys: tuple[str, ...], rel: str) -> None:
    for dotted in keys:
        node: Any = doc
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ReportError(f"study report: {rel} has no {dotted!r} (schema_version 1)")
            node = node[part]


def required_artifacts(study: Study) -> list[str]:
    """Every file the report reads, relative to the workspace (the release is optional)."""
    fin = study.final
    seed_rows = [r for c in study.candidates for r in c.get("seeds", [])]
    runs = [r["run"] for r in seed_rows if r.get("run")]
    runs += list(fin["selected"].get("runs", []))
    runs += [b["run"] for b in fin.get("baselines", []) if b.get("run")]
    evals = [r["eval"] for r in seed_rows if r.get("eval")]
    evals += list(fin["selected"]["evals"]) + [b["eval"] for b in fin.get("baselines", [])]
    files = [*REQUIRED, study.replay_meta_path()]
    files += [f"{r}/metrics.jsonl" for r in runs] + [f"{e}/metrics.json" for e in evals]
    return list(dict.fromkeys(files))


# ----------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def _barh(labels: list[str], values: np.ndarray, xlabel: str, title: str, fmt: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.22 * len(labels)), layout="constrained")
    y = np.arange(len(labels))
    ax.barh(y, values, color="#4c72b0")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.bar_label(ax.containers[0], labels=[fmt.format(v) for v in values], fontsize=7, padding=2)
    ax.margins(x=0.15)
    return _png(fig)


def _heatmap(grid: np.ndarray, rows: list[str], cols: list[str], title: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.4), layout="constrained")
    im = ax.imshow(grid, cmap="viridis", vmin=0)
    for (i, j), v in np.ndenumerate(grid):
        dark = v > 0.6 * grid.max()
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color="k" if dark else "w")
    ax.set_xticks(np.arange(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(np.arange(len(rows)), rows)
    ax.set_xlabel("IV fluid bin")
    ax.set_ylabel("vasopressor bin")
    ax.set_title(title)
    ax.grid(False)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of logged decisions")
    return _png(fig)


def _forest(panels: list[tuple[str, np.ndarray]], labels: list[str], title: str) -> bytes:
    """One panel per (x label, array n x 3 of mean/low/high); rows are policies."""
    plt = _plt()
    h = 1.2 + 0.3 * len(labels)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(4.2 * len(panels) + 2.5, h),
        sharey=True,
        layout="constrained",
        squeeze=False,
    )
    y = np.arange(len(labels))
    for ax, (xlabel, est) in zip(axes[0], panels, strict=True):
        err = np.abs(est[:, 1:3].T - est[:, 0])
        ax.errorbar(est[:, 0], y, xerr=np.nan_to_num(err), fmt="o", color="#4c72b0", capsize=3)
        ax.set_xlabel(xlabel)
    axes[0][0].set_yticks(y, labels)
    axes[0][0].invert_yaxis()
    fig.suptitle(title)
    return _png(fig)


# ---------------------------------------------------------------------------- sections
def _header(st: Study) -> list[Block]:
    meta_rel = st.replay_meta_path()
    source = st.json(meta_rel).get("source", {})
    rows = [
        ["Workspace", str(st.ws.resolve())],
        ["Package version", f"sepsisrl {__version__}"],
        ["Data source kind", source.get("kind", "undefined")],
        ["Data source version", source.get("version", "undefined")],
        ["Replay (reward variant)", meta_rel.rsplit("/", 1)[0]],
        ["Clinical conventions", build_conventions(st.ws)],
        ["Profile", st.selection.get("profile", "undefined")],
        ["Selection split", st.selection.get("split", "undefined")],
        ["Final split", st.final.get("split", "undefined")],
        ["Selected policy", st.selected_name],
    ]
    return [
        Heading(TITLE, 1),
        Text(WARNING, "warning"),
        *build_warnings(st.ws),
        Heading(SECTIONS[0]),
        _table("study", ["Item", "Value"], rows),
    ]


def build_conventions(ws: Path) -> str:
    """The build's conventions profile and the switches that differ from mimic-code's
    (``build_summary.json``; docs/build.md, "Clinical conventions")."""
    path = ws / "build_summary.json"
    conv = json.loads(path.read_text()).get("conventions") if path.is_file() else None
    if not conv:
        return "undefined (a build before the conventions were recorded: legacy)"
    diff = [d["key"] for d in conv.get("differences_from_mimic_code", [])]
    if not diff:
        return f"{conv['profile']} (every definition as in MIT-LCP mimic-code)"
    return f"{conv['profile']}; differs from mimic-code in {', '.join(diff)}"


def build_warnings(ws: Path) -> list[Block]:
    """The build's ``warnings`` (``build_summary.json``: tables or core features allowed
    missing with ``--allow-missing``), one warning box each; none without a summary."""
    path = ws / "build_summary.json"
    warnings = json.loads(path.read_text()).get("warnings", []) if path.is_file() else []
    return [
        Text(f"DATA WARNING — this study was built from incomplete data: {w['message']}", "warning")
        for w in warnings
    ]


def _cohort(st: Study) -> list[Block]:
    audit, eps_ = st.json("cohort/audit.json"), st.json("episodes/audit.json")
    splits = st.json("splits/audit.json")
    flow = audit.get("flow", [])
    steps = [f.get("step") or f.get("rule") or "?" for f in flow]
    remaining = np.array([f.get("remaining", 0) for f in flow], dtype=np.int64)
    flow_rows = [
        [s, _fmt(f.get("excluded")) if "excluded" in f else "", _fmt(f["remaining"])]
        for s, f in zip(steps, flow, strict=True)
    ]
    summary = [
        ["ICU stays", _fmt(audit.get("icu_stays"))],
        ["Cohort stays", _fmt(audit.get("cohort_stays"))],
        ["90-day mortality", _fmt(audit.get("mortality_90d"))],
        ["Episodes", _fmt(eps_.get("episodes"))],
        ["Transitions (decisions)", _fmt(eps_.get("transitions"))],
        ["Mean steps per episode", _fmt(eps_.get("mean_steps"))],
        *[[f"Episodes ending by {k}", _fmt(v)] for k, v in eps_.get("end_reason", {}).items()],
    ]
    split_rows = [
        [k, _fmt(v.get("patients")), _fmt(v.get("mortality_90d"))]
        for k, v in splits.get("splits", {}).items()
    ]
    fig = _barh(steps, remaining, "stays remaining", "Cohort flow", "{:d}")
    return [
        Heading(SECTIONS[1]),
        _table("cohort-flow", ["Step / exclusion rule", "Excluded", "Remaining"], flow_rows),
        Figure("cohort_flow", fig, "Stays remaining after each exclusion rule."),
        _table("cohort-summary", ["Quantity", "Value"], summary),
        _table("splits", ["Split", "Patients", "90-day mortality"], split_rows),
    ]


def _missingness(st: Study) -> list[Block]:
    miss = st.json("features/audit.json").get("window_missing_fraction", {})
    names = np.array(list(miss), dtype=object)
    vals = np.array(list(miss.values()), dtype=np.float64)
    order = np.argsort(-vals, kind="stable")
    names, vals = names[order].tolist(), vals[order]
    rows = [[n, _fmt(v), _pct(v)] for n, v in zip(names, vals.tolist(), strict=True)]
    out: list[Block] = [
        Heading(SECTIONS[2]),
        Text("Share of 4-hour decision windows without a measurement (before imputation)."),
        _table("missingness", ["Feature", "Missing fraction", "Missing %"], rows),
    ]
    if len(names):
        fig = _barh(names, vals, "missing fraction", "Feature missingness per window", "{:.2f}")
        out.append(Figure("missingness", fig, "Missing fraction per feature (sorted)."))
    return out


def _bin_ranges(edges: list[float]) -> list[str]:
    e = [_fmt(x) for x in edges]
    inner = [f"{lo} < dose ≤ {hi}" for lo, hi in zip(["0", *e[:-1]], e, strict=True)]
    return ["0 (none)", *inner, f"dose > {e[-1]}"] if e else ["0 (none)"]


def _actions(st: Study) -> list[Block]:
    audit = st.json("actions/audit.json")
    bins_path = st.ws / "actions" / "bins.json"
    bins = json.loads(bins_path.read_text()) if bins_path.is_file() else {}
    counts = audit.get("action_counts", {})
    labels = bins.get("action_labels") or list(counts)
    arr = np.array([counts.get(lab, 0) for lab in labels], dtype=np.float64)
    total = arr.sum()
    grid = (arr / max(total, 1.0)).reshape(5, 5)
    vaso, fluid = audit.get("vaso_edges", []), audit.get("fluid_edges", [])
    units = (bins.get("vasopressor", {}).get("unit", ""), bins.get("iv_fluid", {}).get("unit", ""))
    v_rng, f_rng = _bin_ranges(vaso), _bin_ranges(fluid)
    edge_rows = [[str(b), v, f] for b, (v, f) in enumerate(zip(v_rng, f_rng, strict=False))]
    stats = [
        ["Logged decisions", _fmt(int(total))],
        ["Zero-vasopressor fraction", _fmt(audit.get("zero_vaso_fraction"))],
        ["Zero-fluid fraction", _fmt(audit.get("zero_fluid_fraction"))],
        ["Vasopressor bin edges", ", ".join(_fmt(x) for x in vaso)],
        ["IV fluid bin edges", ", ".join(_fmt(x) for x in fluid)],
    ]
    ww = audit.get("within_window") or {}
    if ww:
        stats.append([
            "Vasopressor windows titrated inside the window (bin differs from the first hour's)",
            f"{_fmt(ww.get('vaso_bin_differs_from_first_hour_when_on'))} of "
            f"{_fmt(ww.get('vaso_windows_on'))} windows with a vasopressor",
        ])  # fmt: skip
    rows = [f"V{i}" for i in range(5)]
    fig = _heatmap(grid, rows, [f"F{j}" for j in range(5)], "Logged clinician actions")
    return [
        Heading(SECTIONS[3]),
        Text("Action = 5 × vasopressor bin + IV fluid bin (25 actions)."),
        Text(
            "A logged action bins the treatment of its whole 4-hour window, and clinicians "
            "titrate inside it on what they see; a policy holds its action for the window. Less "
            "logged treatment then goes with windows in which the patient stayed stable, and "
            "every estimator that conditions on the state over-values treating less (see the "
            "titration share below and docs/evaluate.md, 'Confounding').",
            "note",
        ),
        _table("action-stats", ["Quantity", "Value"], stats),
        _table(
            "action-bins", ["Bin", f"Vasopressor ({units[0]})", f"IV fluid ({units[1]})"], edge_rows
        ),
        Figure("actions_logged", fig, "Logged clinician action distribution (all steps)."),
    ]


def _run_roles(st: Study) -> dict[str, tuple[str, str]]:
    """run path -> (role, legend label); finalists and baselines are labelled."""
    roles: dict[str, tuple[str, str]] = {}
    sel = st.final["selected"]
    for seed, run in zip(sel.get("seeds", []), sel.get("runs", []), strict=False):
        roles.setdefault(run, ("finalist", f"{sel['name']} s{seed}"))
    for c in st.finalists():
        for r in c.get("seeds", []):
            roles.setdefault(r["run"], ("finalist", f"{c['name']} s{r['seed']}"))
    for b in st.final.get("baselines", []):
        if b.get("run"):
            roles.setdefault(b["run"], ("baseline", b["name"]))
    for c in st.candidates:
        for r in c.get("seeds", []):
            roles.setdefault(r["run"], ("candidate", ""))
    return roles


def _loss_keys(tables: list[pa.Table]) -> list[str]:
    keys = {k for t in tables for k in t.column_names if k.endswith("_loss")}
    return [k for k in LOSS_ORDER if k in keys] + sorted(keys - set(LOSS_ORDER))


def _curves_figure(curves: dict[str, pa.Table], roles: dict[str, tuple[str, str]]) -> bytes:
    plt = _plt()
    keys = _loss_keys(list(curves.values()))
    fig, axes = plt.subplots(
        1, len(keys), figsize=(4.0 * len(keys), 3.4), squeeze=False, layout="constrained"
    )
    colours = iter(plt.get_cmap("tab10").colors * 10)
    styles = {run: _curve_style(roles[run], colours) for run in curves}
    for ax, key in zip(axes[0], keys, strict=True):
        for run, t in curves.items():
            if key in t.column_names and "step" in t.column_names:
                ax.plot(t["step"].to_numpy(), t[key].to_numpy(zero_copy_only=False), **styles[run])
        ax.set_title(key)
        ax.set_xlabel("gradient step")
    keep: dict[str, Any] = {}
    for ax in axes[0]:
        handles, labels = ax.get_legend_handles_labels()
        keep.update((lab, h) for lab, h in zip(labels, handles, strict=True) if lab not in keep)
    if keep:
        fig.legend(keep.values(), keep.keys(), loc="outside lower center", ncol=3, fontsize=7)
    return _png(fig)


def _curve_style(role: tuple[str, str], colours) -> dict[str, Any]:
    kind, label = role
    if kind == "finalist":
        return {"color": next(colours), "lw": 1.4, "label": label}
    if kind == "baseline":
        return {"color": "k", "lw": 1.0, "ls": "--", "label": f"baseline: {label}"}
    return {"color": "0.6", "lw": 0.6, "alpha": 0.6, "label": "other candidates"}


def _training(st: Study) -> list[Block]:
    roles = _run_roles(st)
    curves = {run: _read_jsonl(st.ws, f"{run}/metrics.jsonl") for run in roles}
    rows = []
    for run, t in curves.items():
        last = {k: t[k][-1].as_py() for k in _loss_keys([t])} if t.num_rows else {}
        steps = _fmt(t["step"][-1].as_py()) if "step" in t.column_names and t.num_rows else ""
        losses = ", ".join(f"{k} {_fmt(v)}" for k, v in last.items())
        rows.append([run, roles[run][0], _fmt(t.num_rows), steps, losses])
    out: list[Block] = [
        Heading(SECTIONS[4]),
        _table("training", ["Run", "Role", "Log rows", "Last step", "Last logged losses"], rows),
    ]
    if _loss_keys([t for t in curves.values() if t.num_rows]):
        out.append(
            Figure(
                "training_curves",
                _curves_figure(curves, roles),
                "Losses per gradient step; finalists and baselines labelled, "
                "other candidates thin grey.",
            )
        )
    else:
        out.append(Text("No loss values were logged by any run.", "note"))
    return out


def _gates_text(c: dict[str, Any]) -> str:
    gates = c.get("gates", {})
    failed = [g for g, ok in gates.items() if not ok]
    if not failed:
        return f"yes ({len(gates)}/{len(gates)})"
    return f"no (fails {', '.join(failed)})"


def _role(st: Study, c: dict[str, Any]) -> str:
    if c["name"] == st.selected_name:
        return "SELECTED"
    return "finalist" if c in st.finalists() else ""


def _sort_candidates(cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finalists (stage 2) first, then by rank (as study/selection.json orders them)."""
    return sorted(
        cands,
        key=lambda c: (
            -(c.get("stage") or 1),
            c.get("rank") is None,
            c.get("rank") or 0,
            c["name"],
        ),
    )


def _selection(st: Study) -> list[Block]:
    rule, sel = st.selection.get("rule", {}), st.selection["selected"]
    est = st.estimator.upper()
    header = [
        "Candidate",
        "Role",
        "Reward",
        "LR regime",
        "IQL setting",
        "Seeds",
        "FQE",
        est,
        f"Score ({est} 95% CI low)",
        "ESS",
        "Support mass",
        "Low-support rate",
        "Severe flags",
        "Gates passed",
        "Stage",
        "Rank",
    ]
    rows = [
        [
            c["name"],
            _role(st, c),
            c.get("reward", ""),
            c.get("lr_regime", ""),
            c.get("iql_setting", ""),
            _fmt(len(c.get("seeds", []))),
            _fmt_est(c.get("fqe_mean")),
            _fmt_est(c.get("estimate")),
            _fmt_est(c.get("score")),
            _fmt(c.get("ess")),
            _fmt(c.get("support_mass")),
            _fmt(c.get("low_support_action_rate")),
            _fmt(c.get("severe_safety_flags")),
            _gates_text(c),
            _fmt(c.get("stage")),
            _fmt(c.get("rank")),
        ]
        for c in _sort_candidates(st.candidates)
    ]
    gates = [f"{k} = {json.dumps(v)}" for k, v in rule.get("gates", {}).items()]
    chosen = [
        ["Selected", sel["name"]],
        ["Exported seed", _fmt(sel.get("seed"))],
        ["Run", sel.get("run", "")],
        ["Fallback used", _fmt(bool(sel.get("fallback")))],
        ["Reason", sel.get("reason", "")],
        ["Against the clinicians (validation)",
         sel.get("versus_clinicians", {}).get("verdict", "not recorded")],
        ["Clinicians: estimate vs their observed mean return (validation; on-policy check)",
         f"{_fmt_est(sel.get('versus_clinicians', {}).get('clinician_estimate'))} vs "
         f"{_fmt_est(sel.get('versus_clinicians', {}).get('clinician_observed_return'))}"],
    ]  # fmt: skip
    chosen_cand = [c for c in st.candidates if c["name"] == sel["name"]]
    hyper = chosen_cand[0].get("hyperparameters", {}) if chosen_cand else {}
    return [
        Heading(SECTIONS[5]),
        Text(f"Rule: {rule.get('description', 'undefined')}"),
        Bullets(
            (
                f"Score: {rule.get('score', 'undefined')} (the policy exactly as exported; "
                "no softening)",
                f"Gates: {'; '.join(gates) or 'none'}",
                f"Finalists: {_fmt(rule.get('finalists'))} "
                f"({', '.join(st.selection.get('finalists', [])) or 'none'})",
                f"Fallback: {rule.get('fallback', 'undefined')}",
            )
        ),
        _table("candidates", header, rows, "All candidates, validation split (means over seeds)."),
        _table("selected", ["Item", "Value"], chosen),
        _table(
            "selected-hyperparameters",
            ["Hyperparameter of the selected candidate", "Value"],
            [[k, _fmt(v)] for k, v in hyper.items()],
        ),
    ]


def _seed_variance(st: Study) -> list[Block]:
    fins = st.finalists()
    rows = [
        [
            c["name"],
            _fmt(r.get("seed")),
            _fmt_est(r.get("score")),
            _fmt_est(r.get("fqe_mean")),
            _fmt_est(r.get("estimate")),
            _fmt(r.get("ess")),
        ]
        for c in fins
        for r in c.get("seeds", [])
    ]
    out: list[Block] = [Heading(SECTIONS[6])]
    if not rows:
        return [*out, Text("No finalists were recorded in study/selection.json.", "note")]
    header = ["Finalist", "Seed", f"Score ({st.estimator.upper()} CI low)", "FQE",
              st.estimator.upper(), "ESS"]  # fmt: skip
    out.append(_table("seed-variance", header, rows))
    out.append(
        Figure(
            "seed_variance",
            _strip_figure(fins),
            "Per-seed validation FQE and score of each finalist (dots: seeds; bar: mean).",
        )
    )
    return out


def _strip_figure(fins: list[dict[str, Any]]) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(
        1, 2, figsize=(9, 1.4 + 0.45 * len(fins)), sharey=True, layout="constrained"
    )
    for ax, key in zip(axes, ("fqe_mean", "score"), strict=True):
        for i, c in enumerate(fins):
            vals = np.array([_float(r.get(key)) for r in c.get("seeds", [])])
            ax.plot(vals, np.full(len(vals), i), "o", alpha=0.8, color="#4c72b0")
            if np.isfinite(vals).any():
                ax.plot([np.nanmean(vals)] * 2, [i - 0.3, i + 0.3], color="k", lw=1.5)
        ax.set_xlabel(f"validation {key}")
    axes[0].set_yticks(np.arange(len(fins)), [c["name"] for c in fins])
    axes[0].invert_yaxis()
    return _png(fig)


def not_evaluable_note(doc: dict[str, Any], family: str) -> str:
    """Why an evaluation's estimates of ``family`` (model | importance_sampling) are null."""
    ev = doc.get("evaluable", {})
    if ev.get(family, True):
        return ""
    reasons = ev.get(f"{family}_reasons") or []
    what = "by FQE/WDR" if family == "model" else "by importance sampling"
    return f"not evaluable {what}: " + "; ".join(reasons)


def wis_estimate(doc: dict[str, Any]) -> tuple[list[Any], str]:
    """[mean, low, high] of WIS and, when it failed the overlap gate, why it is undefined."""
    m = doc["metrics"]
    if m.get("wis_mean") is not None:
        return [m.get("wis_mean"), m.get("wis_ci_low"), m.get("wis_ci_high")], ""
    return [None, None, None], not_evaluable_note(doc, "importance_sampling") or "undefined"


def _arr(rows: list[list[Any]]) -> np.ndarray:
    """Rows of [mean, low, high] with None -> NaN."""
    return np.array([[_float(v) for v in r] for r in rows], dtype=np.float64).reshape(-1, 3)


def _final_policies(st: Study) -> list[tuple[str, str, dict[str, Any]]]:
    sel = st.final["selected"]
    seeds = sel.get("seeds") or [None] * len(sel["evals"])
    out = [
        (f"{sel['name']} (seed {s})", e, st.json(f"{e}/metrics.json"))
        for s, e in zip(seeds, sel["evals"], strict=True)
    ]
    out += [
        (f"{b['name']} ({b.get('kind', '')})", b["eval"], st.json(f"{b['eval']}/metrics.json"))
        for b in st.final.get("baselines", [])
    ]
    return out


def _test_split(st: Study) -> list[Block]:
    pols = _final_policies(st)
    header = [
        "Policy",
        "Evaluation",
        "FQE [95% CI]",
        "WDR [95% CI]",
        "WIS [95% CI]",
        "Not evaluable because",
        "ESS",
        "Clinician agreement",
        "Support mass",
        "Low-support rate",
        "Severe flags",
        "Observed return",
    ]
    rows, fqe, wdr, wis, labels = [], [], [], [], []
    for label, ev, doc in pols:
        m = doc["metrics"]
        w, note = wis_estimate(doc)
        fqe.append([m.get("fqe_mean"), m.get("fqe_ci_low"), m.get("fqe_ci_high")])
        wdr.append([m.get("wdr_mean"), m.get("wdr_ci_low"), m.get("wdr_ci_high")])
        wis.append(w)
        labels.append(label)
        notes = [x for x in (not_evaluable_note(doc, "model"), note) if x]
        rows.append(
            [
                label,
                ev,
                _ci(*fqe[-1]),
                _ci(*wdr[-1]),
                _ci(*w),
                " | ".join(notes) or "evaluable by every estimator",
                _fmt(m.get("ess")),
                _fmt(m.get("clinician_agreement")),
                _fmt(m.get("support_mass")),
                _fmt(m.get("low_support_action_rate")),
                _fmt(m.get("severe_safety_flags")),
                _fmt(m.get("observed_return_mean")),
            ]
        )
    fig = _forest(
        [("FQE (95% CI)", _arr(fqe)), ("WDR (95% CI)", _arr(wdr)), ("WIS (95% CI)", _arr(wis))],
        labels,
        "Test split: every policy (estimates that fail the evaluation's gates are not shown)",
    )
    return [
        Heading(SECTIONS[7]),
        Text(
            f"Split: {st.final.get('split', 'undefined')}. Every estimate is of the policy "
            "exactly as exported (no softening). An estimate that fails the evaluation's gates "
            "is not evaluable and is not shown as a number: FQE and WDR need a converged fit in "
            "the attainable range and supported actions (support mass >= the gate); WIS needs "
            "overlap (trajectory ESS and a share of episodes with non-zero weight)."
        ),
        _table("test-estimates", header, rows),
        *_baseline_tuning(st),
        Figure("test_forest", fig, "Test split point estimates with bootstrap 95% CIs."),
        *_validation_fqe(st),
    ]


def _baseline_tuning(st: Study) -> list[Block]:
    """How each trained baseline was chosen (its validation grid, the selection rule)."""
    rows = []
    for b in st.final.get("baselines", []):
        t = b.get("tuning")
        if not t:
            continue
        for g in t.get("grid", []):
            hyper = ", ".join(f"{k}={v:g}" for k, v in g.get("hyperparameters", {}).items())
            rows.append([b["name"], g["name"], hyper or "defaults", _fmt_est(g.get("estimate")),
                         _fmt_est(g.get("score")), _fmt(g.get("rank")),
                         "CHOSEN" if g["name"] == t["chosen"] else ""])  # fmt: skip
    if not rows:
        return []
    reasons = [f"{b['name']}: {b['tuning']['reason']}" for b in st.final["baselines"]
               if b.get("tuning")]  # fmt: skip
    return [
        Text(
            "Trained baselines get the tuning the IQL candidates get: every grid point of "
            "configs/study.yaml (baselines.trained.*.grid) is trained and scored on the "
            "validation split by the selection rule (same estimator, lower bound and gates)."
        ),
        Bullets(tuple(reasons)),
        _table(
            "baseline-tuning",
            [
                "Baseline",
                "Grid point",
                "Hyperparameters",
                st.estimator.upper(),
                "Score (CI low)",
                "Rank",
                "Chosen",
            ],
            rows,
            "Baseline tuning on the validation split.",
        ),
    ]


def _validation_fqe(st: Study) -> list[Block]:
    rows, est, labels = [], [], []
    for c in _sort_candidates(st.candidates):
        for r in c.get("seeds", []):
            m = st.json(f"{r['eval']}/metrics.json")["metrics"]
            est.append([m.get("fqe_mean"), m.get("fqe_ci_low"), m.get("fqe_ci_high")])
            labels.append(f"{c['name']} s{r.get('seed')}")
            rows.append([c["name"], _fmt(r.get("seed")), r["eval"], _ci(*est[-1])])
    if not rows:
        return []
    fig = _forest([("FQE (95% CI)", _arr(est))], labels, "Validation FQE of every candidate seed")
    return [
        _table(
            "validation-fqe",
            ["Candidate", "Seed", "Evaluation", "FQE [95% CI]"],
            rows,
            "Validation split FQE of every candidate seed.",
        ),
        Figure("validation_fqe", fig, "Validation FQE with bootstrap 95% CIs."),
    ]


def _support_scatter(st: Study) -> list[Block]:
    cands = st.candidates
    x = np.array([_float(c.get("support_mass")) for c in cands])
    y = np.array([_float(c.get("fqe_mean")) for c in cands])
    sel = np.array([c["name"] == st.selected_name for c in cands], dtype=bool)
    ok = np.isfinite(x) & np.isfinite(y)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    ax.scatter(x[ok & ~sel], y[ok & ~sel], color="0.45", label="candidates")
    ax.scatter(x[ok & sel], y[ok & sel], color="#c44e52", marker="*", s=180, label="selected")
    ax.set_xlabel("support mass (validation)")
    ax.set_ylabel("FQE mean (validation)")
    ax.legend(loc="best")
    rows = [
        [c["name"], _fmt(c.get("support_mass")), _fmt(c.get("fqe_mean")), _role(st, c)]
        for c in _sort_candidates(cands)
    ]
    out: list[Block] = [
        Heading(SECTIONS[8]),
        Figure(
            "fqe_vs_support",
            _png(fig),
            "Validation FQE against support mass; selected policy starred.",
        ),
        _table("fqe-support", ["Candidate", "Support mass", "FQE mean", "Role"], rows),
    ]
    if int((~ok).sum()):
        out.append(Text(f"{int((~ok).sum())} candidate(s) not plotted: undefined value.", "note"))
    return out


def _heatmaps(st: Study) -> list[Block]:
    ev = st.report_eval()
    figs = st.json(f"{ev}/metrics.json").get("figures", {})
    out: list[Block] = [Heading(SECTIONS[9]), Text(f"Evaluation: {ev}.")]
    for name, file in figs.items():
        png = _read_bytes(st.ws, f"{ev}/figures/{file}")
        out.append(Figure(f"selected_{Path(file).stem}", png, f"{name} ({ev}/figures/{file})"))
    return out


SUBGROUP_COLS = (
    ("decisions", "Decisions"),
    ("clinician_agreement", "Clinician agreement"),
    ("low_support_action_rate", "Low-support rate"),
    ("policy_safety_flags", "Policy flags"),
    ("clinician_safety_flags", "Clinician flags"),
    ("policy_mean_vaso_bin", "Policy mean vaso bin"),
    ("clinician_mean_vaso_bin", "Clinician mean vaso bin"),
    ("policy_mean_fluid_bin", "Policy mean fluid bin"),
    ("clinician_mean_fluid_bin", "Clinician mean fluid bin"),
)


def _subgroups(st: Study) -> list[Block]:
    ev = st.report_eval()
    doc = st.json(f"{ev}/metrics.json")
    groups, safety = doc.get("subgroups", {}), doc.get("safety", {})
    rows = [[name, *(_fmt(g.get(k)) for k, _ in SUBGROUP_COLS)] for name, g in groups.items()]
    out: list[Block] = [
        Heading(SECTIONS[10]),
        Text(f"Evaluation: {ev}."),
        _table("subgroups", ["Subgroup", *(h for _, h in SUBGROUP_COLS)], rows),
    ]
    if not safety.get("available"):
        return [*out, Text("Safety rules unavailable (no raw features for this data).", "note")]
    rules = [
        [r, _fmt(v.get("policy")), _fmt(v.get("clinicians"))]
        for r, v in safety.get("rules", {}).items()
    ]
    rules.append(["total", _fmt(safety.get("policy_total")), _fmt(safety.get("clinicians_total"))])
    out.append(_table("safety", ["Safety rule", "Policy", "Clinicians"], rules))
    return out


def card_value(row: dict[str, Any]) -> str:
    """'mean ± sd (n=k)' of a summarize() row, 4 decimals; undefined seeds are counted."""
    undefined = f"; {row['undefined']} undefined" if row.get("undefined") else ""
    if row.get("mean") is None:
        return f"undefined (n={row.get('n', 0)}{undefined})"
    sd = "" if row.get("std") is None else f" ± {row['std']:.4f}"
    return f"{row['mean']:.4f}{sd} (n={row['n']}{undefined})"


#: Agreement an estimator must reach with the truth to be trusted (issue 12's acceptance).
TRUST = {"spearman": 0.8, "mae": 1.5, "coverage": 0.8}
TRUTH_ESTIMATORS = (("fqe", "FQE"), ("wdr", "WDR"), ("wis", "WIS"),
                    ("wis_per_decision", "per-decision WIS"),
                    ("wis_softened_0.1", "WIS softened 0.1"))  # fmt: skip


def _truth_scatter(rows: list[tuple[str, dict[str, Any]]]) -> bytes:
    """Estimate against true value, one panel per headline estimator."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    for ax, (est, label) in zip(axes, TRUTH_ESTIMATORS[:2], strict=True):
        for (split, p), marker in ((r, "o" if r[0] == "validation" else "s") for r in rows):
            e = p.get(f"{split}_estimates", {}).get(est)
            if not e or e[0] is None:
                continue
            colour = "#c44e52" if p["role"] == "baseline" else "#4c72b0"
            ax.scatter(p["true_value"], e[0], marker=marker, color=colour, s=28)
            if e[1] is not None and e[2] is not None:
                ax.plot([p["true_value"]] * 2, [e[1], e[2]], color=colour, alpha=0.35, lw=1)
        seen = [abs(p["true_value"]) for _, p in rows]
        for split, p in rows:
            e = p.get(f"{split}_estimates", {}).get(est)
            if e and e[0] is not None:
                seen.append(abs(e[0]))
        hi = max([15.0, *seen]) + 1.0  # an estimate beyond the attainable range stays visible
        lo = -hi
        ax.plot([lo, hi], [lo, hi], color="#888", lw=1, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("true value (return units)")
        ax.set_ylabel(f"{label} estimate")
        ax.set_title(f"{label}: circles = candidates (validation), squares = test; red = baselines",
                     fontsize=8)  # fmt: skip
    return _png(fig)


def clinician_verdict_against_truth(
    vs: dict[str, Any] | None, exported: dict[str, Any] | None
) -> str | None:
    """The selection's verdict against the clinicians checked against the truth: credibly
    better in truth = the paired 95 % CI of the exported run's value minus the clinicians'
    lies above 0."""
    if not vs or vs.get("credibly_better") is None or exported is None:
        return None
    diff = exported["difference_from_clinicians"]["value"]
    agrees = vs["credibly_better"] == (diff["ci95"][0] > 0)
    return (
        f"Verdict against the clinicians (validation, {vs['estimator'].upper()}): "
        f"{'credibly better' if vs['credibly_better'] else 'not credibly better'}; in truth the "
        f"exported run's value differs from the clinicians' by {_ci(diff['mean'], *diff['ci95'])}"
        f" (paired): the verdict {'agrees with' if agrees else 'DISAGREES with'} the truth."
    )


def _truth(st: Study) -> list[Block]:
    out: list[Block] = [Heading(SECTIONS[11])]
    path = st.ws / "study" / "truth.json"
    if not path.is_file():
        source = st.json(st.replay_meta_path()).get("source", {})
        why = (
            "the study's source is real MIMIC-IV tables: a policy's true outcome is unknown"
            if source.get("kind") != "synthetic"
            else "the truth phase was disabled (truth.enabled: false)"
        )
        return [*out, Text(f"No truth: {why}.", "note")]
    doc = st.json("study/truth.json")
    pop, clin, sel_doc = doc["population"], doc["clinicians"], doc["selection"]
    clin_mort = _ci(clin["mortality_90d"]["mean"], *clin["mortality_90d"]["ci95"])
    clin_value = _ci(clin["value"]["mean"], *clin["value"]["ci95"])
    out.append(Text(
        f"On a synthetic world the true outcome of each policy is measured with `sepsisrl truth`: "
        f"{pop['patients']} fresh patients of the same world ({pop['episodes']} cohort episodes, "
        f"never the study's patients) are simulated again with the policy deciding. The "
        f"clinicians' true 90-day mortality is {clin_mort} "
        f"and their true value {clin_value}. This section "
        "was computed after the selection and the final test; neither reads it."
    ))  # fmt: skip
    # agreement of each estimator with the truth
    rows, verdicts = [], []
    splits = (("validation", "validation_vs_truth", "candidate runs"),
              ("test", "test_vs_truth", "selected seeds and baselines"))  # fmt: skip
    for split, key, what in splits:
        for est, label in TRUTH_ESTIMATORS:
            d = doc[key].get(est)
            if not d:
                continue
            rows.append([f"{label} ({split}, {what})", str(d["policies"]), _fmt(d["spearman"], 2),
                         _fmt(d["kendall"], 2), _fmt(d["mae"], 2), _fmt(d["coverage"], 2),
                         _fmt(d["top1_regret"], 2), str(len(d["not_evaluable"]))])  # fmt: skip
            if est in ("fqe", "wis") and d["policies"] >= 3:
                bad = []
                if d["spearman"] is None or d["spearman"] < TRUST["spearman"]:
                    bad.append(f"Spearman {_fmt(d['spearman'], 2)} < {TRUST['spearman']}")
                if d["mae"] is not None and d["mae"] > TRUST["mae"]:
                    bad.append(f"mean absolute error {_fmt(d['mae'], 2)} > {TRUST['mae']}")
                if d["coverage"] is not None and d["coverage"] < TRUST["coverage"]:
                    bad.append(f"CI coverage {_fmt(d['coverage'], 2)} < {TRUST['coverage']}")
                if bad:
                    verdicts.append(f"{label} on the {what} ({split}) DISAGREES with the truth: "
                                    + "; ".join(bad) + ".")  # fmt: skip
                else:
                    verdicts.append(f"{label} on the {what} ({split}) agrees with the truth.")
    out.append(_table(
        "truth-agreement",
        ["Estimator (split)", "Policies", "Spearman", "Kendall", "MAE", "CI coverage",
         "Top-1 regret", "Not evaluable"],
        rows,
        "Rank correlation, mean absolute error (return units), share of 95 % CIs containing the "
        "truth, and true value lost by taking the estimator's top-ranked policy.",
    ))  # fmt: skip
    regret = sel_doc["regret"]
    verdicts.append(
        f"Selection: {sel_doc['selected']} has true value "
        f"{_fmt(sel_doc['selected_true_value'], 2)} "
        f"(mean over its seeds); the best candidate in truth is {sel_doc['best_candidate']} "
        f"({_fmt(sel_doc['best_true_value'], 2)}); regret {_fmt(regret, 2)} return units. The "
        f"exported run {sel_doc['exported_run']} has true 90-day mortality "
        f"{_pct(sel_doc['exported_true_mortality_90d'])} against the clinicians' "
        f"{_pct(clin['mortality_90d']['mean'])}."
    )  # fmt: skip
    exported = next((p for p in doc["policies"] if p["name"] == sel_doc["exported_run"]), None)
    line = clinician_verdict_against_truth(
        st.selection.get("selected", {}).get("versus_clinicians"), exported
    )
    if line:
        verdicts.append(line)
    out.append(Bullets(tuple(verdicts)))
    pols = doc["policies"]
    scatter_rows = [(split, p) for p in pols for split in ("validation", "test")
                    if p.get(f"{split}_estimates")]  # fmt: skip
    out.append(Figure("truth-scatter", _truth_scatter(scatter_rows),
                      "Offline estimate against the true value per policy (dashed: estimate = "
                      "truth); vertical lines are 95 % CIs."))  # fmt: skip

    def est_cell(p: dict[str, Any], split: str, est: str) -> str:
        e = p.get(f"{split}_estimates", {}).get(est)
        return "" if not e else _ci(e[0], e[1], e[2]) if e[1] is not None else _fmt(e[0], 2)

    table = [[p["name"], p["role"], _ci(p["true_value"], *p["true_value_ci95"]),
              _pct(p["true_mortality_90d"]), est_cell(p, "validation", "fqe"),
              est_cell(p, "validation", "wdr"), est_cell(p, "test", "fqe"),
              est_cell(p, "test", "wdr"), est_cell(p, "test", "wis")] for p in pols]  # fmt: skip
    out.append(_table(
        "truth-policies",
        ["Policy", "Role", "True value", "True 90-day mortality", "FQE (validation)",
         "WDR (validation)", "FQE (test)", "WDR (test)", "WIS (test)"],
        table,
    ))  # fmt: skip
    return out


def _final_table(st: Study) -> list[Block]:
    from sepsisrl.ope.summary import CARD_ROWS, summarize

    evals = st.final["selected"]["evals"]
    summary = summarize([st.ws / e for e in evals])
    rows = [
        [label, card_value(summary["metrics"][k])]
        for k, label in CARD_ROWS
        if k in summary["metrics"]
    ]
    out: list[Block] = [
        Heading(SECTIONS[12]),
        Text(
            f"{st.selected_name}, split {summary['split']}, mean ± sd over "
            f"{len(evals)} seed evaluation(s): {', '.join(evals)}."
        ),
        _table("final-card", ["Metric", "Value"], rows),
    ]
    return out + _release(st)


def _release(st: Study) -> list[Block]:
    rel = st.final.get("release")
    folder = st.ws / rel if rel else None
    if folder is None or not folder.is_dir():
        return [Text(f"Release folder {rel or '(none recorded)'} is missing.", "note")]
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    rows = [[p.relative_to(folder).as_posix(), _fmt(p.stat().st_size)] for p in files]
    return [Text(f"Release folder: {rel}."), _table("release", ["File", "Bytes"], rows)]


def _selection_trace(st: Study) -> str:
    """Whether the final test evaluation followed the selection now on disk (by its sha256)."""
    digest = hashlib.sha256(_read_bytes(st.ws, "study/selection.json")).hexdigest()
    recorded = st.final.get("selection_sha256")
    if recorded == digest:
        return (
            "The selection used the validation split only; the test evaluations were made after "
            f"it (study/final.json records the sha256 of study/selection.json, {digest[:12]})."
        )
    return (
        f"WARNING: study/selection.json (sha256 {digest[:12]}) is not the selection the test "
        f"evaluations followed (recorded: {str(recorded)[:12]})."
    )


def _footer(st: Study) -> list[Block]:
    source = st.json(st.replay_meta_path()).get("source", {})
    items = [
        "All values are offline estimates (FQE, WIS) computed from logged data; there has been "
        "no prospective, interventional or external validation.",
        "Importance-sampling estimates depend on an estimated behaviour policy; softened WIS "
        "is a biased surrogate used when plain WIS is undefined.",
        "Support and safety flags are heuristic rules, not a clinical safety assessment.",
        _selection_trace(st),
    ]
    if source.get("kind") == "synthetic":
        items.append(
            f"The data come from the sepsisrl synthetic world (version "
            f"{source.get('version', 'undefined')}): results say nothing about real patients."
        )
    return [Heading(SECTIONS[13]), Text(WARNING, "warning"), Bullets(tuple(items))]


BUILDERS = (
    _header,
    _cohort,
    _missingness,
    _actions,
    _training,
    _selection,
    _seed_variance,
    _test_split,
    _support_scatter,
    _heatmaps,
    _subgroups,
    _truth,
    _final_table,
    _footer,
)


def build_blocks(study: Study) -> list[Block]:
    return [b for builder in BUILDERS for b in builder(study)]


# --------------------------------------------------------------------------- rendering
CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1200px;
margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
.warning{background:#fde8e8;border:3px solid #c0392b;color:#7b1d12;font-weight:bold;
padding:.8em 1em;border-radius:4px;font-size:1.1em}
.note{color:#555;font-style:italic}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}caption{caption-side:top;text-align:left;font-style:italic}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _html_block(b: Block) -> str:
    e = html.escape
    if isinstance(b, Heading):
        return f'<h{b.level} id="{_slug(b.text)}">{e(b.text)}</h{b.level}>'
    if isinstance(b, Text):
        return f'<p class="{e(b.kind)}">{e(b.text)}</p>'
    if isinstance(b, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{e(i)}</li>" for i in b.items) + "\n</ul>"
    if isinstance(b, Table):
        cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
        head = "".join(f"<th>{e(h)}</th>" for h in b.header)
        body = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows)
        return (
            f'<div class="scroll"><table id="{e(b.key)}">{cap}\n<thead><tr>{head}</tr>'
            f"</thead>\n<tbody>\n{body}\n</tbody></table></div>"
        )
    data = base64.b64encode(b.png).decode("ascii")
    return (
        f'<figure id="fig-{e(b.key)}"><img src="data:image/png;base64,{data}" '
        f'alt="{e(b.caption)}"><figcaption>{e(b.caption)}</figcaption></figure>'
    )


def render_html(blocks: list[Block]) -> str:
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(TITLE)} — RESEARCH ONLY</title>\n<style>{CSS}</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _md_cell(c: str) -> str:
    return c.replace("|", "\\|").replace("\n", " ")


def _md_block(b: Block) -> str:
    if isinstance(b, Heading):
        return f"{'#' * b.level} {b.text}"
    if isinstance(b, Text):
        return {"warning": f"> **⚠ {b.text}**", "note": f"_{b.text}_"}.get(b.kind, b.text)
    if isinstance(b, Bullets):
        return "\n".join(f"- {i}" for i in b.items)
    if isinstance(b, Table):
        lines = [f"_{b.caption}_", ""] if b.caption else []
        lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
        lines.append("|" + "---|" * len(b.header))
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
        return "\n".join(lines)
    return f"![{b.caption}](figures/{b.key}.png)\n\n_{b.caption}_"


def render_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


# ------------------------------------------------------------------------------ writing
def _write_tree(folder: Path, blocks: list[Block]) -> None:
    figures = folder / "figures"
    figures.mkdir(parents=True)
    for b in blocks:
        if isinstance(b, Figure):
            (figures / f"{b.key}.png").write_bytes(b.png)
    (folder / "index.html").write_text(render_html(blocks), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(blocks), encoding="utf-8")


def _swap_in(partial: Path, out: Path) -> None:
    """Replace ``out`` by ``partial`` (the old report is moved aside, then deleted)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(partial, out)
    shutil.rmtree(old, ignore_errors=True)


def write_report(workspace: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the study report of ``workspace``; returns the report folder.

    ``out_dir`` defaults to ``<workspace>/report``. Built in ``.report.partial-<pid>`` next to
    it and swapped in whole, so a reader never sees a half-written report.
    """
    study = load_study(workspace)
    blocks = build_blocks(study)
    out = Path(out_dir) if out_dir is not None else study.ws / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _write_tree(partial, blocks)
        _swap_in(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


# ------------------------------------------------------------------------- html checks
class _Scan(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.external: list[str] = []
        self.scripts = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self._in_title = self._in_title or tag == "title"
        for name, value in attrs:
            v = (value or "").strip().lower()
            if name in ("src", "href") and (v.startswith(("http:", "https:", "//"))):
                self.external.append(value or "")
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        self._in_title = self._in_title and tag != "title"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def _is_png_data(src: str) -> bool:
    prefix = "data:image/png;base64,"
    if not src.startswith(prefix):
        return False
    try:
        return base64.b64decode(src[len(prefix) :], validate=True).startswith(PNG_MAGIC)
    except ValueError:
        return False


def inspect_html(text: str) -> dict[str, Any]:
    """Structural checks of a page: images (embedded PNGs?), external references, scripts."""
    scan = _Scan()
    scan.feed(text)
    scan.close()
    png = sum(_is_png_data(s) for s in scan.images)
    return {
        "title": scan.title,
        "images": len(scan.images),
        "embedded_png_images": png,
        "external_refs": scan.external,
        "scripts": scan.scripts,
        "self_contained": png == len(scan.images) and not scan.external and not scan.scripts,
        "warning": "RESEARCH ONLY — NOT FOR CLINICAL USE" in text,
    }


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _chromium(exe: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="sepsisrl-report-browser-") as profile:
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BrowserError(f"{exe} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def render_in_browser(
    html_path: Path, screenshot: Path | None = None, timeout: float = 180.0
) -> dict[str, Any]:
    """Render ``html_path`` in a headless Chromium: the DOM it builds and, optionally, a
    1280x4000 screenshot. Raises BrowserError if no browser is on PATH."""
    exe = find_browser()
    if exe is None:
        raise BrowserError(
            f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); "
            "install one, e.g. `apt-get install -y chromium`"
        )
    html_path = Path(html_path).resolve()
    source = inspect_html(html_path.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    dom = _chromium(exe, ["--dump-dom", html_path.as_uri()], timeout).stdout
    rendered = inspect_html(dom)
    result = {
        "browser": exe,
        "dom_chars": len(dom),
        "title_in_dom": TITLE in dom,
        "images_in_source": source["images"],
        "images_in_dom": rendered["images"],
        "embedded_png_in_dom": rendered["embedded_png_images"],
        "warning_in_dom": rendered["warning"],
        "screenshot": None,
        "screenshot_bytes": None,
    }
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        shot.unlink(missing_ok=True)
        args = [f"--screenshot={shot}", "--window-size=1280,4000", html_path.as_uri()]
        _chromium(exe, args, timeout)
        result["screenshot"] = str(shot)
        result["screenshot_bytes"] = shot.stat().st_size if shot.is_file() else 0
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result
