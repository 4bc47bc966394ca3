"""The final evaluation on the test split: every policy's estimates, the selected policy's
action heatmaps and subgroups, and the model card's table with the release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sepsisrl.contracts import EvaluationMetrics, HeadlineMetrics
from sepsisrl.ope.importance import decisions_followed as followed
from sepsisrl.study.report import figures
from sepsisrl.study.report.blocks import (
    Block,
    Bullets,
    Figure,
    Text,
    card_value,
    ci,
    estimates,
    fmt,
    fmt_est,
    table,
)
from sepsisrl.study.report.data import Study
from sepsisrl.study.report.sections.selection import sort_candidates

TEST_SPLIT_INTRO = (
    "Every estimate is of the policy exactly as exported (no softening). An estimate that fails "
    "the evaluation's gates is not evaluable and is not shown as a number: FQE and WDR need a "
    "converged fit in the attainable range and supported actions (support mass >= the gate); "
    "WIS needs overlap (trajectory ESS and a share of episodes with non-zero weight). "
    "Decisions followed: for how many of its first decisions the evaluated episodes still "
    "follow the policy, at least as many effective episodes (per-decision ESS) as the IS gate "
    "asks of a whole trajectory; beyond them the FQE's value rests on where the logs do not "
    "follow the policy. On a synthetic world whose logs held every policy's own runs, the FQE "
    "ranked that world's separated policies correctly; on the clinicians' logs it did not "
    "(docs/evaluate.md, item 19)."
)
TEST_HEADER = [
    "Policy",
    "Evaluation",
    "FQE [95% CI]",
    "WDR [95% CI]",
    "WIS [95% CI]",
    "Not evaluable because",
    "ESS",
    "Decisions followed",
    "Clinician agreement",
    "Support mass",
    "Low-support rate",
    "Severe flags",
    "Observed return",
]
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


def not_evaluable_note(doc: EvaluationMetrics, family: str) -> str:
    """Why an evaluation's estimates of ``family`` (model | importance_sampling) are null."""
    ev = doc.evaluable
    if getattr(ev, family):
        return ""
    reasons = getattr(ev, f"{family}_reasons")
    what = "by FQE/WDR" if family == "model" else "by importance sampling"
    return f"not evaluable {what}: " + "; ".join(reasons)


def decisions_followed(doc: EvaluationMetrics) -> str:
    """``k of H``: the evaluated episodes follow the policy for its first k of H decisions with a
    per-decision ESS of at least the IS gate's ``is_ess_min`` (the evaluation's own setting)."""
    ess = doc.overlap.ess_per_decision
    return f"{followed(ess, float(doc.config['gates']['is_ess_min']))} of {len(ess)}"


def wis_estimate(doc: EvaluationMetrics) -> tuple[list[Any], str]:
    """[mean, low, high] of WIS and, when it failed the overlap gate, why it is undefined."""
    m = doc.metrics
    if m.wis_mean is not None:
        return [m.wis_mean, m.wis_ci_low, m.wis_ci_high], ""
    return [None, None, None], not_evaluable_note(doc, "importance_sampling") or "undefined"


def _estimate(m: HeadlineMetrics, key: str) -> list[Any]:
    """[mean, low, high] of an estimator's metrics (``fqe``, ``wdr``)."""
    return [getattr(m, f"{key}_mean"), getattr(m, f"{key}_ci_low"), getattr(m, f"{key}_ci_high")]


def final_policies(st: Study) -> list[tuple[str, str, EvaluationMetrics]]:
    """(label, evaluation, metrics.json) of each selected seed, then of each baseline."""
    sel = st.final.selected
    out = [
        (f"{sel.name} (seed {s})", e, st.metrics(e))
        for s, e in zip(sel.seeds, sel.evals, strict=True)
    ]
    out += [(f"{b.name} ({b.kind})", b.eval, st.metrics(b.eval)) for b in st.final.baselines]
    return out


# ----------------------------------------------------------------------- test split
def final_estimates(st: Study) -> list[Block]:
    rows, fqe, wdr, wis, labels = [], [], [], [], []
    for label, ev, doc in final_policies(st):
        m = doc.metrics
        w, note = wis_estimate(doc)
        fqe.append(_estimate(m, "fqe"))
        wdr.append(_estimate(m, "wdr"))
        wis.append(w)
        labels.append(label)
        notes = [x for x in (not_evaluable_note(doc, "model"), note) if x]
        rows.append([
            label, ev, ci(*fqe[-1]), ci(*wdr[-1]), ci(*w),
            " | ".join(notes) or "evaluable by every estimator",
            fmt(m.ess), decisions_followed(doc), fmt(m.clinician_agreement), fmt(m.support_mass),
            fmt(m.low_support_action_rate), fmt(m.severe_safety_flags),
            fmt(m.observed_return_mean),
        ])  # fmt: skip
    fig = figures.forest(
        [
            ("FQE (95% CI)", estimates(fqe)),
            ("WDR (95% CI)", estimates(wdr)),
            ("WIS (95% CI)", estimates(wis)),
        ],
        labels,
        "Test split: every policy (estimates that fail the evaluation's gates are not shown)",
    )
    return [
        Text(f"Split: {st.final.split}. {TEST_SPLIT_INTRO}"),
        table("test-estimates", TEST_HEADER, rows),
        *_baseline_tuning(st),
        Figure("test_forest", fig, "Test split point estimates with bootstrap 95% CIs."),
        *_validation_fqe(st),
    ]


def _baseline_tuning(st: Study) -> list[Block]:
    """How each trained baseline was chosen (its validation grid, the selection rule)."""
    rows = []
    tuned = [(b.name, b.tuning) for b in st.final.baselines if b.tuning is not None]
    for name, t in tuned:
        for g in t.grid:
            hyper = ", ".join(f"{k}={v:g}" for k, v in g.hyperparameters.items())
            chosen = "CHOSEN" if g.name == t.chosen else ""
            if g.stopped_at_step is not None:  # successive halving: its rung snapshot's scores
                chosen = f"stopped at step {g.stopped_at_step}"
            rows.append([name, g.name, hyper or "defaults", fmt_est(g.estimate),
                         fmt_est(g.score), fmt(g.rank), chosen])  # fmt: skip
    if not rows:
        return []
    reasons = [f"{name}: {t.reason}" for name, t in tuned]
    if any(t.halving for _, t in tuned):
        reasons.append(
            "Successive halving (sweep.halving.baselines) scored each grid at the same rungs as "
            "stage 1 and trained in full only the points it kept; a stopped point's figures are "
            "those of its snapshot at the step it was stopped."
        )
    header = ["Baseline", "Grid point", "Hyperparameters", st.estimator.upper(),
              "Score (CI low)", "Rank", "Chosen"]  # fmt: skip
    return [
        Text(
            "Trained baselines get the tuning the IQL candidates get: every grid point of "
            "configs/study.yaml (baselines.trained.*.grid) is trained and scored on the "
            "validation split by the selection rule (same estimator, lower bound and gates)."
        ),
        Bullets(tuple(reasons)),
        table("baseline-tuning", header, rows, "Baseline tuning on the validation split."),
    ]


def _validation_fqe(st: Study) -> list[Block]:
    rows, est, labels = [], [], []
    for c in sort_candidates(st.candidates):
        for r in c.seeds:
            est.append(_estimate(st.metrics(r.eval).metrics, "fqe"))
            labels.append(f"{c.name} s{r.seed}")
            rows.append([c.name, fmt(r.seed), r.eval, ci(*est[-1])])
    if not rows:
        return []
    fig = figures.forest(
        [("FQE (95% CI)", estimates(est))], labels, "Validation FQE of every candidate seed"
    )
    return [
        table(
            "validation-fqe",
            ["Candidate", "Seed", "Evaluation", "FQE [95% CI]"],
            rows,
            "Validation split FQE of every candidate seed.",
        ),
        Figure("validation_fqe", fig, "Validation FQE with bootstrap 95% CIs."),
    ]


# ------------------------------------------------------------- the selected policy
def action_heatmaps(st: Study) -> list[Block]:
    """The selected policy's action heatmaps, as its test evaluation drew them."""
    ev = st.report_eval()
    out: list[Block] = [Text(f"Evaluation: {ev}.")]
    for name, file in st.metrics(ev).figures.items():
        png = st.bytes(f"{ev}/figures/{file}")
        out.append(Figure(f"selected_{Path(file).stem}", png, f"{name} ({ev}/figures/{file})"))
    return out


def subgroup_safety(st: Study) -> list[Block]:
    ev = st.report_eval()
    doc = st.metrics(ev)
    groups, safety = doc.subgroups, doc.safety
    rows = [[name, *(fmt(getattr(g, k)) for k, _ in SUBGROUP_COLS)] for name, g in groups.items()]
    out: list[Block] = [
        Text(f"Evaluation: {ev}."),
        table("subgroups", ["Subgroup", *(h for _, h in SUBGROUP_COLS)], rows),
    ]
    if not safety.available:
        return [*out, Text("Safety rules unavailable (no raw features for this data).", "note")]
    found = safety.rules or {}  # an available safety report always carries its rules
    rules = [[r, fmt(v.policy), fmt(v.clinicians)] for r, v in found.items()]
    rules.append(["total", fmt(safety.policy_total), fmt(safety.clinicians_total)])
    out.append(table("safety", ["Safety rule", "Policy", "Clinicians"], rules))
    return out


# ---------------------------------------------------------------------- final table
def final_table(st: Study) -> list[Block]:
    """The model card's table (``ope.summary``: mean ± sd over the selected seeds)."""
    from sepsisrl.ope.summary import CARD_ROWS, summarize

    evals = st.final.selected.evals
    summary = summarize([st.ws / e for e in evals])
    rows = [
        [label, card_value(summary["metrics"][k])]
        for k, label in CARD_ROWS
        if k in summary["metrics"]
    ]
    return [
        Text(
            f"{st.selected_name}, split {summary['split']}, mean ± sd over "
            f"{len(evals)} seed evaluation(s): {', '.join(evals)}."
        ),
        table("final-card", ["Metric", "Value"], rows),
        *_release(st),
    ]


def _release(st: Study) -> list[Block]:
    rel = st.final.release
    files = st.release_files()
    if files is None:
        return [Text(f"Release folder {rel or '(none recorded)'} is missing.", "note")]
    rows = [[name, fmt(size)] for name, size in files]
    return [Text(f"Release folder: {rel}."), table("release", ["File", "Bytes"], rows)]
