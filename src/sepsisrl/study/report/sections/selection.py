"""Model selection on the validation split: the rule, every candidate, the finalists' seeds,
and validation FQE against support."""

from __future__ import annotations

import json

import numpy as np

from sepsisrl.contracts import Candidate
from sepsisrl.study.report import figures
from sepsisrl.study.report.blocks import (
    Block,
    Bullets,
    Figure,
    Text,
    fmt,
    fmt_est,
    table,
    to_float,
)
from sepsisrl.study.report.data import Study


def role(st: Study, c: Candidate) -> str:
    if c.name == st.selected_name:
        return "SELECTED"
    return "finalist" if st.is_finalist(c) else ""


def sort_candidates(cands: list[Candidate]) -> list[Candidate]:
    """Finalists (stage 2) first, then by rank (as study/selection.json orders them)."""
    return sorted(cands, key=lambda c: (-c.stage, c.rank, c.name))


# ------------------------------------------------------------------ model selection
def model_selection(st: Study) -> list[Block]:
    rule = st.selection.rule
    gates = [f"{k} = {json.dumps(v)}" for k, v in rule.gates.model_dump().items()]
    return [
        Text(f"Rule: {rule.description}"),
        Bullets(
            (
                f"Score: {rule.score} (the policy exactly as exported; no softening)",
                f"Gates: {'; '.join(gates) or 'none'}",
                f"Finalists: {fmt(rule.finalists)} ({', '.join(st.selection.finalists) or 'none'})",
                f"Fallback: {rule.fallback}",
            )
        ),
        *halving(st),
        _candidates_table(st),
        *ranking_by_intensity(st),
        _selected_table(st),
        _hyperparameters_table(st),
    ]


#: When a rung's stop is within the noise (``study.selection.rung_record``), in words.
NOISE_TESTS = {
    "paired": "the 95% interval of its value minus the last kept candidate's, paired on the "
    "same validation episodes, reaches 0",
    "intervals": "its own 95% interval reaches the cut",
}


def halving(st: Study) -> list[Block]:
    """Successive halving's rungs (``selection.json`` -> ``halving``), and whether each stop
    rests on validation evidence: a stopped candidate whose 95 % interval still reaches the
    cut (the score of the last candidate kept) is named as stopped within the noise."""
    rungs = st.selection.halving
    if not rungs:
        return []
    est = st.estimator.upper()
    rows = [
        [f"{r.rung} of {r.rungs}", fmt(r.step), fmt(r.candidates), fmt(r.passed), fmt(r.keep),
         fmt(len(r.stopped)), fmt_est(r.cut), r.last_kept or "", fmt(len(r.within_noise)),
         fmt(len(r.spared)), r.noise_test if r.last_kept else ""]
        for r in rungs
    ]  # fmt: skip
    out: list[Block] = [
        Text(
            "Stage 1 used successive halving (sweep.halving): each rung trained the candidates "
            "still in to the step shown, scored them on validation by the rule above and "
            "stopped those that passed every gate while at least 'keep' others that passed "
            "scored higher; a candidate that failed a gate went on. A stopped candidate's row "
            "below is its rung's snapshot. The last rung is stage 1 proper."
        ),
    ]
    cut = f"Cut (score of the last kept, {est} 95% CI low)"
    header = ["Rung", "Steps", "Candidates", "Passed every gate", "Keep", "Stopped", cut,
              "Last kept", "Past the cut within the noise", "Of them kept on (stop: credible)",
              "Test"]  # fmt: skip
    caption = (f"A candidate past the cut is within the noise when {NOISE_TESTS['paired']} "
               f"(test 'paired'), or, where that cannot be computed, when "
               f"{NOISE_TESTS['intervals']} (test 'intervals'). With stop: rank it is stopped "
               "all the same.")  # fmt: skip
    out.append(table("halving-rungs", header, rows, caption))
    spared = [r for r in rungs if r.spared]
    if spared:
        parts = "; ".join(f"at rung {r.rung}, {len(r.spared)} ({', '.join(r.spared)})"
                          for r in spared)  # fmt: skip
        text = (f"Successive halving with stop: credible kept on the candidates past the cut "
                f"that the validation data do not show worse: {parts}.")  # fmt: skip
        out.append(Text(text))
    noisy = [r for r in rungs if r.within_noise and not r.spared]
    if not noisy:
        stopped = sum(len(r.stopped) for r in rungs)
        if stopped:
            text = (f"Every one of the {stopped} stopped candidates is credibly worse than "
                    "its rung's last kept candidate on validation.")  # fmt: skip
            out.append(Text(text))
        return out
    parts = [
        f"at rung {r.rung}, {len(r.within_noise)} of the {len(r.stopped)} stopped "
        f"({', '.join(r.within_noise)})"
        for r in noisy
    ]
    tests = {r.noise_test for r in noisy}
    why = " or ".join(NOISE_TESTS[t] for t in ("paired", "intervals") if tests & {t, "mixed"})
    out.append(
        Text(
            f"Successive halving stopped candidates within the noise: {'; '.join(parts)}. "
            f"For each, {why}: the validation data do not show it worse than a kept "
            "candidate, and the full sweep could finish one of them ahead and "
            "select another configuration. On the synthetic world at the card's size, a rung "
            "cut inside the noise stopped the full sweep's selection (docs/run.md, Successive "
            "halving). The same profile with sweep.halving.enabled=false settles it.",
            "warning",
        )
    )
    return out


def ranking_by_intensity(st: Study) -> list[Block]:
    """Whether the selection's validation scores follow the candidate runs' treatment
    intensity (no truth needed): the Spearman correlation over every candidate run with a
    score of that score with the mean vasopressor bin and the mean IV-fluid bin the run
    chooses on the validation states (its evaluation's ``cases.csv``), stated when either
    reaches :data:`~sepsisrl.truth.compare.INTENSITY_NOTE` in size."""
    from sepsisrl.truth.compare import INTENSITY, INTENSITY_NOTE, intensity_of, spearman

    from .truth import INTENSITY_WORDS

    n_fluid = len(st.action_grid().fluid)
    scores, found = [], []
    for c in st.candidates:
        for r in c.seeds:
            got = (
                intensity_of(st.ws / r.eval / "cases.csv", n_fluid) if r.score is not None else None
            )
            if got is not None:
                scores.append(float(r.score))
                found.append(got)
    if len(found) < 3:
        return []
    corr = {k: spearman(np.array(scores), np.array([f[k] for f in found])) for k in INTENSITY}
    strong = [(abs(v), k, v) for k, v in corr.items() if v is not None and abs(v) >= INTENSITY_NOTE]
    if not strong:
        return []
    _, key, v = max(strong)
    what = INTENSITY_WORDS[key]
    both = ", ".join(
        f"{'n/a' if x is None else f'{x:+.2f}'} with the run's mean {INTENSITY_WORDS[k]} bin"
        for k, x in corr.items()
    )
    favours = "less" if v < 0 else "more"
    text = (f"The validation ranking follows the candidates' treatment intensity: over the "
            f"{len(found)} candidate runs with a score, the score's Spearman correlation is "
            f"{both} on the validation states, so the ranking favours giving {favours} "
            f"{what}.")  # fmt: skip
    if favours == "less":
        text += (" Offline estimates learned from the clinicians' logs are biased in that "
                 "direction by confounding by indication (the clinicians escalate for reasons "
                 "the state does not record); on the synthetic world this bias reversed one "
                 "study's ranking and exaggerated another's (docs/evaluate.md, item 17). This "
                 "check needs no truth.")  # fmt: skip
    return [Text(text)]


def _gates_text(c: Candidate) -> str:
    gates = c.gates.model_dump()
    failed = [g for g, ok in gates.items() if not ok]
    if not failed:
        return f"yes ({len(gates)}/{len(gates)})"
    return f"no (fails {', '.join(failed)})"


def _candidates_table(st: Study) -> Block:
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
            c.name,
            role(st, c),
            c.reward,
            c.lr_regime,
            c.iql_setting,
            fmt(len(c.seeds)),
            fmt_est(c.fqe_mean),
            fmt_est(c.estimate),
            fmt_est(c.score),
            fmt(c.ess),
            fmt(c.support_mass),
            fmt(c.low_support_action_rate),
            fmt(c.severe_safety_flags),
            _gates_text(c),
            fmt(c.stage),
            fmt(c.rank),
        ]
        for c in sort_candidates(st.candidates)
    ]
    return table("candidates", header, rows, "All candidates, validation split (means over seeds).")


def _selected_table(st: Study) -> Block:
    sel = st.selection.selected
    vs = sel.versus_clinicians
    chosen = [
        ["Selected", sel.name],
        ["Exported seed", fmt(sel.seed)],
        ["Run", sel.run],
        ["Fallback used", fmt(sel.fallback)],
        ["Reason", sel.reason],
        ["Against the clinicians (validation)", vs.verdict],
        ["Clinicians: estimate vs their observed mean return (validation; on-policy check)",
         f"{fmt_est(vs.clinician_estimate)} vs {fmt_est(vs.clinician_observed_return)}"],
    ]  # fmt: skip
    if vs.confounding is not None:
        chosen.append(["Against unobserved confounding (exported seed, validation)",
                       vs.confounding.statement])  # fmt: skip
    intensity = intensity_text(st)
    if intensity:
        chosen.append(["Treatment intensity against the clinicians (exported seed, validation "
                       "states)", intensity])  # fmt: skip
    return table("selected", ["Item", "Value"], chosen)


def intensity_text(st: Study) -> str | None:
    """How much vasopressor and IV fluid the exported seed gives on the validation states
    against the clinicians' logged actions there (its evaluation's ``cases.csv``), with a
    caution when it gives less: offline estimates learned from the clinicians' logs favour
    giving less than they did (confounding by indication, docs/evaluate.md)."""
    from sepsisrl.truth.compare import intensity_of

    sel = st.selection.selected
    seed = next((r for c in st.candidates for r in c.seeds if r.run == sel.run), None)
    if seed is None:
        return None
    got = intensity_of(st.ws / seed.eval / "cases.csv", len(st.action_grid().fluid))
    if got is None:
        return None
    parts, less = [], []
    for key, what in (("vaso_bin", "vasopressor"), ("fluid_bin", "IV fluid")):
        mine, theirs = got[key], got[f"clinician_{key}"]
        parts.append(f"mean {what} bin {mine:.2f} against the clinicians' {theirs:.2f} "
                     f"({mine - theirs:+.2f})")  # fmt: skip
        diff = mine - theirs
        if diff < 0:
            less.append(what)
    text = f"{'; '.join(parts)}, over {got['decisions']} decisions."
    if less:
        text += (f" It gives less {' and less '.join(less)} than the clinicians did. The "
                 "clinicians escalate for reasons the state does not record, so an estimate "
                 "learned from their logs tends to credit giving less with outcomes that were "
                 "not its doing; on the synthetic world the FQE's error follows exactly this "
                 "(docs/evaluate.md, item 17). Read the verdict above with that in "
                 "mind.")  # fmt: skip
    return text


def _hyperparameters_table(st: Study) -> Block:
    chosen = [c for c in st.candidates if c.name == st.selected_name]
    hyper = chosen[0].hyperparameters if chosen else {}
    return table(
        "selected-hyperparameters",
        ["Hyperparameter of the selected candidate", "Value"],
        [[k, fmt(v)] for k, v in hyper.items()],
    )


# ------------------------------------------------------------------- seed variance
def seed_variance(st: Study) -> list[Block]:
    fins = st.finalists()
    rows = [
        [
            c.name,
            fmt(r.seed),
            fmt_est(r.score),
            fmt_est(r.fqe_mean),
            fmt_est(r.estimate),
            fmt(r.ess),
        ]
        for c in fins
        for r in c.seeds
    ]
    if not rows:
        return [Text("No finalists were recorded in study/selection.json.", "note")]
    header = ["Finalist", "Seed", f"Score ({st.estimator.upper()} CI low)", "FQE",
              st.estimator.upper(), "ESS"]  # fmt: skip
    panels = [
        (f"validation {key}", [_seed_values(c, key) for c in fins]) for key in ("fqe_mean", "score")
    ]
    fig = figures.seed_strips([c.name for c in fins], panels)
    return [
        table("seed-variance", header, rows),
        Figure(
            "seed_variance",
            fig,
            "Per-seed validation FQE and score of each finalist (dots: seeds; bar: mean).",
        ),
    ]


def _seed_values(c: Candidate, key: str) -> np.ndarray:
    return np.array([to_float(getattr(r, key)) for r in c.seeds])


# ------------------------------------------------------------------ FQE vs support
def fqe_versus_support(st: Study) -> list[Block]:
    cands = st.candidates
    x = np.array([to_float(c.support_mass) for c in cands])
    y = np.array([to_float(c.fqe_mean) for c in cands])
    sel = np.array([c.name == st.selected_name for c in cands], dtype=bool)
    not_plotted = int((~(np.isfinite(x) & np.isfinite(y))).sum())
    rows = [
        [c.name, fmt(c.support_mass), fmt(c.fqe_mean), role(st, c)] for c in sort_candidates(cands)
    ]
    out: list[Block] = [
        Figure(
            "fqe_vs_support",
            figures.support_scatter(x, y, sel),
            "Validation FQE against support mass; selected policy starred.",
        ),
        table("fqe-support", ["Candidate", "Support mass", "FQE mean", "Role"], rows),
    ]
    if not_plotted:
        out.append(Text(f"{not_plotted} candidate(s) not plotted: undefined value.", "note"))
    return out
