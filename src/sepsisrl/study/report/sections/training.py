"""Training curves of every run the study trained (candidates, finalists, baselines)."""

from __future__ import annotations

import pyarrow as pa

from sepsisrl.study.report import figures
from sepsisrl.study.report.blocks import Block, Figure, Text, fmt, table
from sepsisrl.study.report.data import Study

#: Losses shown first, in this order; any other ``*_loss`` follows alphabetically.
LOSS_ORDER = ("critic_loss", "value_loss", "actor_loss")


def run_roles(st: Study) -> dict[str, tuple[str, str]]:
    """run path -> (role, legend label); finalists and baselines are labelled."""
    roles: dict[str, tuple[str, str]] = {}
    sel = st.final.selected
    for seed, run in zip(sel.seeds, sel.runs, strict=False):
        roles.setdefault(run, ("finalist", f"{sel.name} s{seed}"))
    for c in st.finalists():
        for r in c.seeds:
            roles.setdefault(r.run, ("finalist", f"{c.name} s{r.seed}"))
    for b in st.final.baselines:
        if b.run is not None:
            roles.setdefault(b.run, ("baseline", b.name))
    for c in st.candidates:
        for r in c.seeds:
            roles.setdefault(r.run, ("candidate", ""))
    return roles


def loss_keys(tables: list[pa.Table]) -> list[str]:
    keys = {k for t in tables for k in t.column_names if k.endswith("_loss")}
    return [k for k in LOSS_ORDER if k in keys] + sorted(keys - set(LOSS_ORDER))


def training_curves(st: Study) -> list[Block]:
    roles = run_roles(st)
    curves = {run: st.jsonl(f"{run}/metrics.jsonl") for run in roles}
    rows = []
    for run, t in curves.items():
        last = {k: t[k][-1].as_py() for k in loss_keys([t])} if t.num_rows else {}
        steps = fmt(t["step"][-1].as_py()) if "step" in t.column_names and t.num_rows else ""
        losses = ", ".join(f"{k} {fmt(v)}" for k, v in last.items())
        rows.append([run, roles[run][0], fmt(t.num_rows), steps, losses])
    out: list[Block] = [
        table("training", ["Run", "Role", "Log rows", "Last step", "Last logged losses"], rows),
    ]
    if not loss_keys([t for t in curves.values() if t.num_rows]):
        return [*out, Text("No loss values were logged by any run.", "note")]
    fig = figures.loss_curves(curves, roles, loss_keys(list(curves.values())))
    caption = (
        "Losses per gradient step; finalists and baselines labelled, other candidates thin grey."
    )
    return [*out, Figure("training_curves", fig, caption)]
