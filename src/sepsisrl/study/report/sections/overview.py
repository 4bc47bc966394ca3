"""The page's frame: title and warnings, the study at a glance, and the limitations."""

from __future__ import annotations

from pathlib import Path

from sepsisrl import __version__
from sepsisrl.study.report.blocks import (
    TITLE,
    WARNING,
    Block,
    Bullets,
    Heading,
    Text,
    table,
)
from sepsisrl.study.report.data import Study, read_build_summary


def preamble(st: Study) -> list[Block]:
    """Above the first section: the title, the research-only warning, the build's warnings."""
    return [Heading(TITLE, 1), Text(WARNING, "warning"), *build_warnings(st.ws)]


def build_conventions(ws: Path) -> str:
    """The build's conventions profile and the switches that differ from mimic-code's
    (``build_summary.json``; docs/build.md, "Clinical conventions")."""
    conv = read_build_summary(ws).get("conventions")
    if not conv:
        return "undefined (a build before the conventions were recorded: legacy)"
    diff = [d["key"] for d in conv.get("differences_from_mimic_code", [])]
    if not diff:
        return f"{conv['profile']} (every definition as in MIT-LCP mimic-code)"
    return f"{conv['profile']}; differs from mimic-code in {', '.join(diff)}"


def build_warnings(ws: Path) -> list[Block]:
    """The build's ``warnings`` (``build_summary.json``: tables or core features allowed
    missing with ``--allow-missing``), one warning box each; none without a summary."""
    return [
        Text(f"DATA WARNING — this study was built from incomplete data: {w['message']}", "warning")
        for w in read_build_summary(ws).get("warnings", [])
    ]


def study(st: Study) -> list[Block]:
    meta_rel = st.replay_meta_path()
    source = st.source()
    rows = [
        ["Workspace", str(st.ws.resolve())],
        ["Package version", f"sepsisrl {__version__}"],
        ["Data source kind", "undefined" if source is None else source.kind],
        ["Data source version", "undefined" if source is None else source.version],
        ["Replay (reward variant)", meta_rel.rsplit("/", 1)[0]],
        ["Clinical conventions", build_conventions(st.ws)],
        ["Profile", st.selection.profile],
        ["Selection split", st.selection.split],
        ["Final split", st.final.split],
        ["Selected policy", st.selected_name],
    ]
    return [table("study", ["Item", "Value"], rows)]


def selection_trace(st: Study) -> str:
    """Whether the final test evaluation followed the selection now on disk (by its sha256)."""
    digest = st.sha256("study/selection.json")
    recorded = st.final.selection_sha256
    if recorded == digest:
        return (
            "The selection used the validation split only; the test evaluations were made after "
            f"it (study/final.json records the sha256 of study/selection.json, {digest[:12]})."
        )
    return (
        f"WARNING: study/selection.json (sha256 {digest[:12]}) is not the selection the test "
        f"evaluations followed (recorded: {str(recorded)[:12]})."
    )


def limitations(st: Study) -> list[Block]:
    source = st.source()
    items = [
        "All values are offline estimates (FQE, WIS) computed from logged data; there has been "
        "no prospective, interventional or external validation.",
        "Importance-sampling estimates depend on an estimated behaviour policy; softened WIS "
        "is a biased surrogate used when plain WIS is undefined.",
        "Support and safety flags are heuristic rules, not a clinical safety assessment.",
        "The FQE rests on the logs. Where a policy's sequence of decisions leaves the logged "
        "episodes, its value is extrapolation. The FQE also pools every logged treatment in one "
        "penalised fit, which pulls each policy's value towards what the other logged "
        "treatments show. On the project's synthetic benchmark it over-valued a policy that "
        "gives the most intense plausible treatment at every decision. It understated the harm "
        "of sustained maximal treatment even in logs holding that policy's own runs "
        "(docs/evaluate.md, items 11 and 19).",
        selection_trace(st),
    ]
    if source is not None and source.kind == "synthetic":
        items.append(
            f"The data come from the sepsisrl synthetic world (version "
            f"{source.version}): results say nothing about real patients."
        )
    return [Text(WARNING, "warning"), Bullets(tuple(items))]
