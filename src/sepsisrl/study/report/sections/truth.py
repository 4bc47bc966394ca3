"""Estimates versus truth (a synthetic world only): how well each offline estimator agreed
with the true value of the policies (``study/truth.json``, ``sepsisrl truth``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sepsisrl.study.report import figures
from sepsisrl.study.report.blocks import Block, Bullets, Figure, Text, ci, fmt, pct, table
from sepsisrl.study.report.data import Study
from sepsisrl.truth.compare import INTENSITY_NOTE, TRUST
from sepsisrl.truth.harness import NONINFERIORITY_MARGIN

#: The estimators the report compares with the truth, and their labels.
TRUTH_ESTIMATORS = (("fqe", "FQE"), ("wdr", "WDR"), ("wis", "WIS"),
                    ("wis_per_decision", "per-decision WIS"),
                    ("wis_softened_0.1", "WIS softened 0.1"))  # fmt: skip
#: (split, key of study/truth.json, which policies it holds)
TRUTH_SPLITS = (("validation", "validation_vs_truth", "candidate runs"),
                ("test", "test_vs_truth", "selected seeds and baselines"))  # fmt: skip
AGREEMENT_HEADER = ["Estimator (split)", "Policies", "Spearman", "Kendall", "MAE", "CI coverage",
                    "Top-1 regret", "Not evaluable", "Truth's own Spearman (ceiling)"]  # fmt: skip
POLICIES_HEADER = ["Policy", "Role", "True value", "True 90-day mortality", "FQE (validation)",
                   "WDR (validation)", "FQE (test)", "WDR (test)", "WIS (test)"]  # fmt: skip


def estimates_versus_truth(st: Study) -> list[Block]:
    doc = st.optional_json("study/truth.json")
    if doc is None:
        why = (
            "the study's source is real MIMIC-IV tables: a policy's true outcome is unknown"
            if (src := st.source()) is None or src.kind != "synthetic"
            else "the truth phase was disabled (truth.enabled: false)"
        )
        return [Text(f"No truth: {why}.", "note")]
    rows, verdicts = _agreement(doc)
    verdicts += _selection_verdicts(st, doc)
    return [
        _intro(doc),
        table(
            "truth-agreement",
            AGREEMENT_HEADER,
            rows,
            "Rank correlation, mean absolute error (return units), share of 95 % CIs containing "
            "the truth, and true value lost by taking the estimator's top-ranked policy.",
        ),
        Bullets(tuple(verdicts)),
        Figure(
            "truth-scatter",
            _scatter(doc["policies"]),
            "Offline estimate against the true value per policy (dashed: estimate = truth); "
            "vertical lines are 95 % CIs.",
        ),
        table("truth-policies", POLICIES_HEADER, _policy_rows(doc["policies"])),
        *interface_handicap(doc),
        *headroom(st.optional_json(REFERENCE_SUMMARY), doc),
    ]


# ------------------------------------------------- what the action interface costs
INTERFACE_POLICY = "clinicians_held_4h"


def interface_handicap(doc: dict[str, Any]) -> list[Block]:
    """The clinicians' own actions held for 4 hours (``truth.policies.HeldSample``) beside the
    clinicians: what the truth's action interface alone costs a 4-hourly policy."""
    held = next((p for p in doc["policies"] if p["name"] == INTERFACE_POLICY), None)
    if held is None:
        return []
    clin = doc["clinicians"]
    diff = held["difference_from_clinicians"]
    titrated = doc.get("interface", "held") == "titrated"
    how = "its bins set for the window and the simulated team titrating inside them"
    if not titrated:
        how = "its action is held for the window as one representative dose"
    drawn = "and titrating inside its bins" if titrated else "and holding it"
    label = ("clinicians' bins drawn every 4 h, titrated inside" if titrated
             else "clinicians' actions drawn and held for 4 h")  # fmt: skip
    v, m = diff["value"], diff["mortality_90d"]
    lo, hi = v["ci95"]
    verdict = ("credibly costs" if hi < 0 else "credibly gains" if lo > 0
               else "neither credibly costs nor gains")  # fmt: skip
    text = (
        "What does the action interface alone cost? The simulated clinicians decide every hour, "
        "also on a bedside volume assessment the tables never show; a policy measured here "
        f"decides every 4 hours from the state, {how}. Drawing each 4-hour decision from the "
        f"clinicians' own (behaviour-cloned) action probabilities {drawn} "
        f"{verdict} value against the clinicians on the same patients (paired difference "
        f"{ci(v['mean'], lo, hi)}; 90-day mortality {_points(m['mean'])} points "
        f"[{_points(m['ci95'][0])}, {_points(m['ci95'][1])}]). "
        "An offline policy must make up this handicap before it can match the clinicians in "
        "truth; offline estimates, learned from the clinicians' own hourly-titrated logs, "
        "cannot see it."
    )  # fmt: skip
    held_value = ci(held["true_value"], *held["true_value_ci95"])
    held_mort = ci(held["true_mortality_90d"], *held["true_mortality_90d_ci95"])
    rows = [["clinicians (hourly)", ci(clin["value"]["mean"], *clin["value"]["ci95"]),
             ci(clin["mortality_90d"]["mean"], *clin["mortality_90d"]["ci95"]), ""],
            [label, held_value, held_mort,
             _paired(diff)]]  # fmt: skip
    return [Text(text, "warning" if hi < 0 else "p"),
            table("truth-interface", HEADROOM_HEADER, rows,
                  "True value and 90-day mortality with 95 % CIs on the study's truth "
                  "population; the difference is paired patient by patient.")]  # fmt: skip


# ------------------------------------------------------ how good could a policy be?
#: Written by ``sepsisrl reference`` (env/reference.py).
REFERENCE_SUMMARY = "reference/online_dqn/summary.json"
HEADROOM_HEADER = ["Policy", "True value", "True 90-day mortality",
                   "Value minus clinicians' (paired)"]  # fmt: skip


def headroom(ref: dict[str, Any] | None, doc: dict[str, Any]) -> list[Block]:
    """The online reference agent (trained in the world itself) beside the clinicians and the
    exported offline policy: how much better than the clinicians a policy on this state and
    action grid can be, and how much of that the offline policy reached."""
    if ref is None:
        return [Text("No online reference: run `sepsisrl reference --workspace WS` to measure "
                     "how good a policy trained in the world itself can be.", "note")]  # fmt: skip
    pop, tp = doc["population"], ref["truth_population"]
    if (tp["patients"], tp["seed"]) != (pop["patients"], pop["seed"]):
        return [Text(
            f"The online reference's truth was measured on {tp['patients']} patients (seed "
            f"{tp['seed']}), not the study's truth population ({pop['patients']}, seed "
            f"{pop['seed']}): rerun `sepsisrl reference --truth-patients {pop['patients']} "
            f"--truth-seed {pop['seed']}` to compare them.", "note")]  # fmt: skip
    ref_itf, study_itf = tp.get("interface", "held"), doc.get("interface", "held")
    if ref_itf != study_itf:
        return [Text(
            f"The online reference's truth was measured under the {ref_itf!r} interface, the "
            f"study's under {study_itf!r} (truth.interface): their values are not comparable.",
            "note")]  # fmt: skip
    clin, sel = doc["clinicians"], doc["selection"]
    exported = next((p for p in doc["policies"] if p["name"] == sel["exported_run"]), None)
    val, mort = ref["true_value"], ref["true_mortality_90d"]
    rows = [["online reference (DQN in the world)", ci(val["mean"], *val["ci95"]),
             ci(mort["mean"], *mort["ci95"]), _paired(ref["difference_from_clinicians"])],
            ["clinicians", ci(clin["value"]["mean"], *clin["value"]["ci95"]),
             ci(clin["mortality_90d"]["mean"], *clin["mortality_90d"]["ci95"]), ""]]  # fmt: skip
    reached = ""
    if exported is not None:
        rows.append([f"exported offline policy ({exported['name']})",
                     ci(exported["true_value"], *exported["true_value_ci95"]),
                     ci(exported["true_mortality_90d"], *exported["true_mortality_90d_ci95"]),
                     _paired(exported["difference_from_clinicians"])])  # fmt: skip
        versus = _versus(exported["true_value"] - clin["value"]["mean"])
        reached = f" The exported offline policy: {versus}."
    t = ref["training"]
    plus = ", plus the replay's train split" if t["warm_start_replay"] else ""
    lo, hi = ref["difference_from_clinicians"]["value"]["ci95"]
    trained = (f"An agent trained in the world itself (double DQN, {t['rounds']} rounds, "
               f"{t['patients_simulated']} simulated patients, {t['episodes']} episodes{plus}; "
               f"`sepsisrl reference`)")  # fmt: skip
    if lo > 0:
        intro = (f"How good could a policy be? {trained} is credibly better than the clinicians "
                 f"on the same patients ({_versus(val['mean'] - clin['value']['mean'])}): a lower "
                 f"bound on the headroom on this world.{reached}")  # fmt: skip
        kind = "p"
    else:
        verdict = "credibly WORSE than" if hi < 0 else "not credibly better than"
        intro = (f"How good could a policy be? NOT MEASURED: {trained} is {verdict} the "
                 f"clinicians on the same patients (paired value difference "
                 f"{ci(val['mean'] - clin['value']['mean'], lo, hi)}), so it bounds nothing; "
                 f"the headroom on this world is unknown.{reached}")  # fmt: skip
        kind = "warning"
    caption = ("True value (evaluation reward) and 90-day mortality with 95 % CIs on the "
               "study's truth population; differences are paired patient by patient.")  # fmt: skip
    return [Text(intro, kind), table("truth-headroom", HEADROOM_HEADER, rows, caption)]


def _points(share: float) -> str:
    """A difference of two proportions in percentage points, signed."""
    return f"{100.0 * share:+.1f}"


def _versus(diff: float) -> str:
    return f"{fmt(abs(diff), 2)} {'above' if diff >= 0 else 'below'} the clinicians' true value"


def _paired(diff: dict[str, Any]) -> str:
    v = diff["value"]
    return ci(v["mean"], *v["ci95"])


def _intro(doc: dict[str, Any]) -> Block:
    pop, clin = doc["population"], doc["clinicians"]
    clin_mort = ci(clin["mortality_90d"]["mean"], *clin["mortality_90d"]["ci95"])
    clin_value = ci(clin["value"]["mean"], *clin["value"]["ci95"])
    return Text(
        f"On a synthetic world the true outcome of each policy is measured with `sepsisrl truth`: "
        f"{pop['patients']} fresh patients of the same world ({pop['episodes']} cohort episodes, "
        f"never the study's patients) are simulated again with the policy deciding. The "
        f"clinicians' true 90-day mortality is {clin_mort} "
        f"and their true value {clin_value}. {INTERFACE_TEXT[doc.get('interface', 'held')]} "
        "This section was computed after the selection and the final test; neither reads it."
    )  # fmt: skip


#: How the study's truth delivered an action (``truth.interface``, docs/truth.md).
INTERFACE_TEXT = {
    "held": "A policy's action is held for its 4-hour window as each bin's representative "
    "dose (truth.interface: held).",
    "titrated": "A policy's action sets the bins of its 4-hour window and the simulated team "
    "titrates every hour inside them, as a logged 4-hour action records (truth.interface: "
    "titrated).",
}


# ------------------------------------------------------- agreement with the truth
def _agreement(doc: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    """One row per (split, estimator) that study/truth.json scored, and a verdict for the
    headline estimators (FQE, WIS) wherever at least 3 policies were compared."""
    rows, verdicts = [], []
    for split, key, what in TRUTH_SPLITS:
        for est, label in TRUTH_ESTIMATORS:
            d = doc[key].get(est)
            if not d:
                continue
            noise = d.get("truth_noise")
            rows.append([f"{label} ({split}, {what})", str(d["policies"]), fmt(d["spearman"], 2),
                         fmt(d["kendall"], 2), fmt(d["mae"], 2), fmt(d["coverage"], 2),
                         fmt(d["top1_regret"], 2), str(len(d["not_evaluable"])),
                         _ceiling(noise)])  # fmt: skip
            if est not in ("fqe", "wis") or d["policies"] < 3:
                continue
            bad = _untrusted(d)
            notes = (_noise_note(noise) + _oracle_note(noise, d["spearman"], label)
                     + intensity_note(d.get("error_by_intensity"), label)
                     + sensitivity_note(d.get("sensitivity"), label))  # fmt: skip
            if bad:
                verdicts.append(f"{label} on the {what} ({split}) DISAGREES with the truth: "
                                + "; ".join(bad) + "." + notes)  # fmt: skip
            else:
                verdicts.append(f"{label} on the {what} ({split}) agrees with the truth."
                                + notes)  # fmt: skip
    return rows, verdicts


def _ceiling(noise: dict[str, Any] | None) -> str:
    if not noise:
        return ""
    return f"{fmt(noise['ceiling'], 2)} (5th pct. {fmt(noise['ceiling_p05'], 2)})"


def _noise_note(noise: dict[str, Any] | None) -> str:
    """How much of a rank correlation is the truth's own noise (``compare.truth_noise``)."""
    if not noise:
        return ""
    return (f" The truth itself is a mean over {noise['episodes']} simulated episodes: resampled, "
            f"it agrees with itself at Spearman {fmt(noise['ceiling'], 2)} (an estimator that knew "
            f"every expected value exactly would score about that), and this estimator's "
            f"Spearman against the resampled truths spans {fmt(noise['spearman_p05'], 2)} to "
            f"{fmt(noise['spearman_p95'], 2)} (5th-95th percentile); a true-value difference "
            f"between two policies has a median standard error of "
            f"{fmt(noise['paired_se_median'], 2)} return units.")  # fmt: skip


def _oracle_note(noise: dict[str, Any] | None, spearman: float | None, label: str) -> str:
    """What an on-policy oracle with as many episodes as the evaluated split would reach
    (``compare.truth_noise``'s ``oracle``): a reference for the split's size, not a ceiling."""
    oracle = (noise or {}).get("oracle")
    if not oracle or spearman is None:
        return ""
    if spearman >= oracle["median"]:
        how = ("ranks them better than such a trial would (an estimate that draws on a model "
               "fitted to the train split can)")  # fmt: skip
    else:
        how = "ranks them worse than such a trial would"
    reuse = ""
    if oracle["episodes"] > noise["episodes"]:
        reuse = (f", drawn again from the truth's {noise['episodes']} episodes, so it agrees with "
                 "that truth more than a fresh trial would")  # fmt: skip
    return (f" For scale: rolling every policy out on {oracle['episodes']} patients (as many "
            f"episodes as the evaluated split holds{reuse}) would rank them at Spearman "
            f"{fmt(oracle['median'], 2)} ({fmt(oracle['p05'], 2)} to {fmt(oracle['p95'], 2)}, "
            f"5th-95th percentile; {TRUST['spearman']} or more in "
            f"{pct(oracle['reaches_target'])} of draws); the {label} {how}.")  # fmt: skip


#: How the report names the measures of ``compare.INTENSITY``.
INTENSITY_WORDS = {"vaso_bin": "vasopressor", "fluid_bin": "IV fluid"}


def intensity_note(by: dict[str, Any] | None, label: str) -> str:
    """Whether the estimator's errors follow the policies' treatment intensity
    (``compare.error_by_intensity``): the signature of unobserved confounding in the
    clinicians' logs, stated with the measure whose correlation is strongest."""
    if not by:
        return ""
    found = [(abs(v["error"]), k, v) for k, v in by.items() if v.get("error") is not None]
    if not found:
        return ""
    strength, key, v = max(found)
    if strength < INTENSITY_NOTE:
        return ""
    what = INTENSITY_WORDS.get(key, key)
    over = "less" if v["error"] < 0 else "more"
    truth = ""
    if v.get("truth"):  # the truth's own order along the same measure
        works = "works against" if v["truth"] * v["error"] < 0 else "exaggerates"
        truth = (f"; the truth's own correlation with it is {fmt(v['truth'], 2)}, so the error "
                 f"{works} the truth's order")  # fmt: skip
    return (f" Its errors follow the policies' treatment intensity: the {over} {what} a "
            f"policy gives on the evaluated states, the more favourably the {label} judges it "
            f"against its true value "
            f"(Spearman of estimate minus truth with the policy's mean {what} bin: "
            f"{fmt(v['error'], 2)}{truth}). That is the direction in which the clinicians' "
            "unrecorded reasons to escalate bias any estimate learned from their logs "
            "(docs/evaluate.md, confounding).")  # fmt: skip


def sensitivity_note(sens: dict[str, Any] | None, label: str) -> str:
    """How much unobserved confounding it takes for the estimator's bounds to contain the truth
    (``compare.sensitivity_coverage``; the marginal sensitivity model of docs/evaluate.md)."""
    if not sens:
        return ""
    cover = ", ".join(f"{share:.0%} at {lam}" for lam, share in sens["coverage_by_lambda"].items())
    need = [v for v in sens["lambda_to_cover"].values() if v is not None]
    beyond = len(sens["lambda_to_cover"]) - len(need)
    median = f"median {float(np.median(need)):g}" if need else "none within the grid"
    return (f" Under unobserved confounding (marginal sensitivity model Lambda: the odds of each "
            f"logged decision may differ from the behaviour model's by that factor) the "
            f"{label}'s bias bounds contain the true value for {cover} of the "
            f"{sens['policies']} policies; the Lambda a policy needs is {median}"
            + (f" ({beyond} need more than the grid's largest)" if beyond else "")
            + ".")  # fmt: skip


def _untrusted(d: dict[str, Any]) -> list[str]:
    """Where an estimator's agreement with the truth falls short of :data:`TRUST`."""
    bad = []
    if d["spearman"] is None or d["spearman"] < TRUST["spearman"]:
        bad.append(f"Spearman {fmt(d['spearman'], 2)} < {TRUST['spearman']}")
    if d["mae"] is not None and d["mae"] > TRUST["mae"]:
        bad.append(f"mean absolute error {fmt(d['mae'], 2)} > {TRUST['mae']}")
    if d["coverage"] is not None and d["coverage"] < TRUST["coverage"]:
        bad.append(f"CI coverage {fmt(d['coverage'], 2)} < {TRUST['coverage']}")
    return bad


# ------------------------------------------------------------ the selection's verdicts
def _selection_verdicts(st: Study, doc: dict[str, Any]) -> list[str]:
    """The selection's regret in truth and, when recorded, its verdict against the
    clinicians checked against the truth."""
    clin, sel_doc = doc["clinicians"], doc["selection"]
    verdicts = [
        f"Selection: {sel_doc['selected']} has true value "
        f"{fmt(sel_doc['selected_true_value'], 2)} "
        f"(mean over its seeds); the best candidate in truth is {sel_doc['best_candidate']} "
        f"({fmt(sel_doc['best_true_value'], 2)}); regret {fmt(sel_doc['regret'], 2)} return "
        f"units. The exported run {sel_doc['exported_run']} has true 90-day mortality "
        f"{pct(sel_doc['exported_true_mortality_90d'])} against the clinicians' "
        f"{pct(clin['mortality_90d']['mean'])}."
    ]  # fmt: skip
    exported = next((p for p in doc["policies"] if p["name"] == sel_doc["exported_run"]), None)
    if exported is not None:
        verdicts.append(noninferiority_line(exported["difference_from_clinicians"]))
    vs = st.selection.selected.versus_clinicians
    line = clinician_verdict_against_truth(vs.model_dump(), exported)
    return [*verdicts, line] if line else verdicts


def noninferiority_line(diff: dict[str, Any]) -> str:
    """Whether the truth shows the exported run no worse than the clinicians in 90-day
    mortality: the upper end of the paired 95 % CI within the card's margin."""
    m = diff["mortality_90d"]
    lo, hi = m["ci95"]
    shown = hi <= NONINFERIORITY_MARGIN
    line = (
        f"Paired with the clinicians, its 90-day mortality differs by {100 * m['mean']:+.1f} "
        f"points [{100 * lo:+.1f}, {100 * hi:+.1f}]: non-inferiority within "
        f"{100 * NONINFERIORITY_MARGIN:g} point is {'shown' if shown else 'NOT shown'}"
    )
    if shown:
        return line + "."
    if lo > 0:
        return line + " (it is worse)."
    return line + (
        f" (these patients cannot rule out up to {100 * hi:.1f} points more; more truth patients, "
        "truth.patients, narrow the interval)."
    )


def clinician_verdict_against_truth(
    vs: dict[str, Any] | None, exported: dict[str, Any] | None
) -> str | None:
    """The selection's verdict against the clinicians checked against the truth: credibly
    better in truth = the paired 95 % CI of the exported run's value minus the clinicians'
    lies above 0. The verdict checked is the robust one where the selection recorded its
    sensitivity: credibly better AND surviving unobserved confounding of the required Lambda."""
    if not vs or vs.get("credibly_better") is None or exported is None:
        return None
    diff = exported["difference_from_clinicians"]["value"]
    conf = vs.get("confounding")
    claimed, said = vs["credibly_better"], "credibly better"
    if not claimed:
        said = "not credibly better"
    elif conf is not None and not conf["survives"]:
        claimed = False
        said = (f"credibly better, but not robust to unobserved confounding of Lambda = "
                f"{conf['required']:g}, so not a claim of superiority")  # fmt: skip
    agrees = claimed == (diff["ci95"][0] > 0)
    line = (
        f"Verdict against the clinicians (validation, {vs['estimator'].upper()}): {said}; in "
        f"truth the exported run's value differs from the clinicians' by "
        f"{ci(diff['mean'], *diff['ci95'])} (paired): the verdict "
        f"{'agrees with' if agrees else 'DISAGREES with'} the truth."
    )
    if conf and conf.get("holds_up_to") is not None:
        fails = conf.get("fails_at")
        line += (
            f" Its sensitivity analysis: the advantage holds up to Lambda = "
            f"{conf['holds_up_to']:g}"
            + (f" and is gone at {fails:g}" if fails else "")
            + " (marginal sensitivity model, docs/evaluate.md)."
        )
    return line


# ------------------------------------------------------------------ every policy
def _scatter(policies: list[dict[str, Any]]) -> bytes:
    """FQE and WDR estimate against the true value: circles = validation, squares = test."""
    rows = [(split, p) for p in policies for split in ("validation", "test")
            if p.get(f"{split}_estimates")]  # fmt: skip
    panels = []
    for est, label in TRUTH_ESTIMATORS[:2]:
        points = []
        for split, p in rows:
            e = p.get(f"{split}_estimates", {}).get(est)
            if not e or e[0] is None:
                continue
            points.append(figures.TruthPoint(
                p["true_value"], e[0], e[1], e[2], "o" if split == "validation" else "s",
                figures.RED if p["role"] == "baseline" else figures.BLUE,
            ))  # fmt: skip
        panels.append((label, points))
    title = "circles = candidates (validation), squares = test; red = baselines"
    return figures.truth_scatter(panels, [p["true_value"] for _, p in rows], title)


def _estimate_cell(p: dict[str, Any], split: str, est: str) -> str:
    e = p.get(f"{split}_estimates", {}).get(est)
    return "" if not e else ci(e[0], e[1], e[2]) if e[1] is not None else fmt(e[0], 2)


def _policy_rows(policies: list[dict[str, Any]]) -> list[list[str]]:
    return [[p["name"], p["role"], ci(p["true_value"], *p["true_value_ci95"]),
             pct(p["true_mortality_90d"]), _estimate_cell(p, "validation", "fqe"),
             _estimate_cell(p, "validation", "wdr"), _estimate_cell(p, "test", "fqe"),
             _estimate_cell(p, "test", "wdr"), _estimate_cell(p, "test", "wis")]
            for p in policies]  # fmt: skip
