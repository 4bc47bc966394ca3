"""The report's figures, as PNG bytes (matplotlib, Agg backend, 100 dpi, no timestamp so that
a rerun gives the same bytes). Every function takes plain data; the sections decide what."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

DPI = 100
#: Marker colours: the policies, the selected one, the baselines.
BLUE, RED = "#4c72b0", "#c44e52"


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


def barh(labels: list[str], values: np.ndarray, xlabel: str, title: str, fmt: str) -> bytes:
    """Horizontal bars, top to bottom in the order given, each labelled with ``fmt``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.22 * len(labels)), layout="constrained")
    y = np.arange(len(labels))
    ax.barh(y, values, color=BLUE)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.bar_label(ax.containers[0], labels=[fmt.format(v) for v in values], fontsize=7, padding=2)
    ax.margins(x=0.15)
    return _png(fig)


def heatmap(grid: np.ndarray, rows: list[str], cols: list[str], title: str) -> bytes:
    """Shares of the action grid: vasopressor bins down, IV fluid bins across."""
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


def forest(panels: list[tuple[str, np.ndarray]], labels: list[str], title: str) -> bytes:
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
        ax.errorbar(est[:, 0], y, xerr=np.nan_to_num(err), fmt="o", color=BLUE, capsize=3)
        ax.set_xlabel(xlabel)
    axes[0][0].set_yticks(y, labels)
    axes[0][0].invert_yaxis()
    fig.suptitle(title)
    return _png(fig)


# -------------------------------------------------------------------- training curves
def curve_style(kind: str, label: str, colours: Iterator) -> dict[str, Any]:
    """Finalists in colour, baselines dashed black, other candidates thin grey."""
    if kind == "finalist":
        return {"color": next(colours), "lw": 1.4, "label": label}
    if kind == "baseline":
        return {"color": "k", "lw": 1.0, "ls": "--", "label": f"baseline: {label}"}
    return {"color": "0.6", "lw": 0.6, "alpha": 0.6, "label": "other candidates"}


def loss_curves(
    curves: dict[str, pa.Table], roles: dict[str, tuple[str, str]], keys: list[str]
) -> bytes:
    """One panel per loss in ``keys``: each run's logged values against the gradient step;
    ``roles`` maps a run to its (kind, legend label), see :func:`curve_style`."""
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(keys), figsize=(4.0 * len(keys), 3.4), squeeze=False, layout="constrained"
    )
    colours = iter(plt.get_cmap("tab10").colors * 10)
    styles = {run: curve_style(*roles[run], colours) for run in curves}
    for ax, key in zip(axes[0], keys, strict=True):
        for run, t in curves.items():
            if key in t.column_names and "step" in t.column_names:
                ax.plot(t["step"].to_numpy(), t[key].to_numpy(zero_copy_only=False), **styles[run])
        ax.set_title(key)
        ax.set_xlabel("gradient step")
    keep: dict[str, Any] = {}  # one legend entry per label, across the panels
    for ax in axes[0]:
        handles, labels = ax.get_legend_handles_labels()
        keep.update((lab, h) for lab, h in zip(labels, handles, strict=True) if lab not in keep)
    if keep:
        fig.legend(keep.values(), keep.keys(), loc="outside lower center", ncol=3, fontsize=7)
    return _png(fig)


# ----------------------------------------------------------------------- selection
def seed_strips(names: list[str], panels: list[tuple[str, list[np.ndarray]]]) -> bytes:
    """One panel per (x label, one array of per-seed values per name): dots for the seeds,
    a bar at their mean."""
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(9, 1.4 + 0.45 * len(names)), sharey=True, layout="constrained"
    )
    for ax, (xlabel, rows) in zip(axes, panels, strict=True):
        for i, vals in enumerate(rows):
            ax.plot(vals, np.full(len(vals), i), "o", alpha=0.8, color=BLUE)
            if np.isfinite(vals).any():
                ax.plot([np.nanmean(vals)] * 2, [i - 0.3, i + 0.3], color="k", lw=1.5)
        ax.set_xlabel(xlabel)
    axes[0].set_yticks(np.arange(len(names)), names)
    axes[0].invert_yaxis()
    return _png(fig)


def support_scatter(x: np.ndarray, y: np.ndarray, selected: np.ndarray) -> bytes:
    """Validation FQE against support mass; the selected candidate starred (finite points)."""
    ok = np.isfinite(x) & np.isfinite(y)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    ax.scatter(x[ok & ~selected], y[ok & ~selected], color="0.45", label="candidates")
    ax.scatter(x[ok & selected], y[ok & selected], color=RED, marker="*", s=180, label="selected")
    ax.set_xlabel("support mass (validation)")
    ax.set_ylabel("FQE mean (validation)")
    ax.legend(loc="best")
    return _png(fig)


# --------------------------------------------------------------------------- truth
class TruthPoint(NamedTuple):
    """One policy's estimate against its true value (``low``/``high``: the CI, or None)."""

    true_value: float
    estimate: float
    low: float | None
    high: float | None
    marker: str
    colour: str


def truth_scatter(
    panels: list[tuple[str, list[TruthPoint]]], true_values: list[float], title: str
) -> bytes:
    """Estimate against true value, one panel per (estimator label, points); the square
    axes cover every true value and estimate (at least -16..16)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 4.4), layout="constrained")
    for ax, (label, points) in zip(axes, panels, strict=True):
        for p in points:
            ax.scatter(p.true_value, p.estimate, marker=p.marker, color=p.colour, s=28)
            if p.low is not None and p.high is not None:
                ax.plot([p.true_value] * 2, [p.low, p.high], color=p.colour, alpha=0.35, lw=1)
        seen = [abs(v) for v in true_values] + [abs(p.estimate) for p in points]
        hi = max([15.0, *seen]) + 1.0  # an estimate beyond the attainable range stays visible
        lo = -hi
        ax.plot([lo, hi], [lo, hi], color="#888", lw=1, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("true value (return units)")
        ax.set_ylabel(f"{label} estimate")
        ax.set_title(f"{label}: {title}", fontsize=8)
    return _png(fig)
