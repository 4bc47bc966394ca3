"""Write a Hugging Face model repository from a training run (``sepsisrl export``).

Files (docs/contracts.md): model.safetensors (the actor: ``net.0/2/4.*``), config.json (input
order, normalisation statistics, action bins and labels, training config and seed, dataset
fingerprint, package version, measured metrics), modeling_iql.py (standalone wrapper),
requirements.txt, LICENSE.md and README.md (the model card, rendered from measured metrics
only). Nothing patient-level is copied. The folder is built under a temporary name and renamed
when complete, after the card's Hub metadata has passed huggingface_hub's own model-card parser
when that optional package is installed (release/hub.py). ``push_to_hub`` uploads it.
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path
from statistics import fmean
from typing import Any

import yaml
from safetensors.torch import save_file

from sepsisrl import __version__
from sepsisrl.contracts import EvaluationMetrics, ModelConfig
from sepsisrl.ope.summary import CARD_ROWS, summarize
from sepsisrl.rl.actions import ActionGrid
from sepsisrl.rl.policies import NonFiniteWeightsError, finite_tensors
from sepsisrl.rl.registry import exportable_algorithms
from sepsisrl.truth.harness import NONINFERIORITY_MARGIN
from sepsisrl.workspace import atomic_folder

EXPORTABLE = exportable_algorithms()  # ("iql", "bc"): the algorithms with an actor network


class ExportError(ValueError):
    """The run cannot be exported as asked."""


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.4f}"


#: Card metrics that come from the fitted model (FQE and WDR, its control variate) or from
#: importance sampling: when undefined, the card says why (the evaluation's gate reasons).
MODEL_KEYS = ("fqe_mean", "fqe_ci_low", "fqe_ci_high", "wdr_mean", "wdr_ci_low", "wdr_ci_high")
IS_KEYS = ("wis_mean", "wis_ci_low", "wis_ci_high", "wis_per_decision")


def _model_reasons(doc: dict[str, Any]) -> list[str]:
    """Why an evaluation's FQE/WDR figures are not evaluable: its own gate reasons, plus what
    an older or permissively gated metrics.json may still carry as numbers (an FQE that did
    not converge, a value that is not finite or leaves the attainable return range)."""
    ev = doc.get("evaluable") or {}
    reasons = list(ev.get("model_reasons") or [])
    if ev.get("model") is False and not reasons:
        reasons.append("the evaluation's model gate failed")
    fqe = doc.get("fqe") or {}
    if fqe.get("converged") is False and not any("converge" in r for r in reasons):
        reasons.append("FQE did not converge")
    lo, hi = (fqe.get("attainable_range") or [None, None])[:2]
    metrics = doc.get("metrics") or {}
    for key in MODEL_KEYS:
        v = metrics.get(key)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            reasons.append(f"{key} is not finite ({v!r})")
        elif lo is not None and hi is not None and not lo <= v <= hi:
            reasons.append(f"{key} {v:g} is outside the attainable return range [{lo:g}, {hi:g}]")
    return reasons


def _is_reasons(doc: dict[str, Any]) -> list[str]:
    ev = doc.get("evaluable") or {}
    return list(ev.get("importance_sampling_reasons") or [])


def gated_summary(evals: list[Path]) -> tuple[dict[str, Any], dict[str, str]]:
    """``summarize(evals)`` with every FQE/WDR figure of a non-evaluable evaluation left out
    (never averaged into a number), and per metric key the reason shown where it is
    undefined."""
    summary = summarize(evals)
    # checked against the metrics.json contract (a missing key names the file and the key)
    docs = [EvaluationMetrics.load(Path(e) / "metrics.json").to_dict() for e in evals]
    model = [_model_reasons(d) for d in docs]
    imp = [_is_reasons(d) for d in docs]
    rows = summary["metrics"]
    for key in MODEL_KEYS:
        if key in rows and any(model):
            vals = [None if r else d["metrics"].get(key) for d, r in zip(docs, model, strict=True)]
            rows[key] = _summary_row(vals)
    # the headline is the FQE or the WDR in most evaluations: gated like them
    drop = [
        d.get("headline_estimator") in ("fqe", "wdr") and bool(r)
        for d, r in zip(docs, model, strict=True)
    ]
    if any(drop):
        for key in ("headline_mean", "headline_ci_low", "headline_ci_high"):
            if key in rows:
                vals = [
                    None if x else d["metrics"].get(key) for d, x in zip(docs, drop, strict=True)
                ]
                rows[key] = _summary_row(vals)
    summary["sensitivity"] = _sensitivity_summary(docs, model)
    why: dict[str, str] = {}
    # the most telling reason first: a diverged or unconverged fit before the other gates
    telling = [sorted(r, key=lambda x: "diverged" not in x and "converge" not in x) for r in model]
    first_model = next((r[0] for r in telling if r), None)
    first_is = next((r[0] for r in imp if r), None)
    for key in MODEL_KEYS:
        if first_model:
            why[key] = first_model
    for key in IS_KEYS:
        if first_is:
            why[key] = first_is
    return summary, why


def _sensitivity_summary(
    docs: list[dict[str, Any]], model_reasons: list[list[str]]
) -> dict[str, list[dict[str, float]]]:
    """Per estimator (FQE, WDR), the mean over the evaluable evaluations of its bias bounds
    under unobserved confounding at every Lambda (``ope/sensitivity.py``); an estimator that
    some evaluable evaluation lacks bounds for is left out."""
    out = {}
    ok = [d for d, r in zip(docs, model_reasons, strict=True) if not r]
    for est in ("fqe", "wdr"):
        found = [(d.get(est) or {}).get("sensitivity") for d in ok]
        if not found or any(f is None for f in found):
            continue
        grid = [b["lambda"] for b in found[0]["bounds"]]
        if any([b["lambda"] for b in f["bounds"]] != grid for f in found):
            continue
        out[est] = [{"lambda": lam,
                     "low": fmean(f["bounds"][j]["low"] for f in found),
                     "high": fmean(f["bounds"][j]["high"] for f in found)}
                    for j, lam in enumerate(grid)]  # fmt: skip
    return out


def sensitivity_lines(summary: dict[str, Any] | None, truth: dict[str, Any] | None) -> list[str]:
    """The card's paragraph on unobserved confounding: the bounds at each Lambda, and on a
    synthetic world the Lambda from which they contain the true value."""
    sens = (summary or {}).get("sensitivity") or {}
    if not sens:
        return []
    lines = [
        "",
        "Sensitivity to unobserved confounding (marginal sensitivity model: the odds of each "
        "logged decision may differ from the behaviour model's by a factor Lambda; bias bounds, "
        "mean over the evaluations, sampling error on top; docs/evaluate.md):",
        "",
        "| Lambda | " + " | ".join(f"{e.upper()} bounds" for e in sens) + " |",
        "|---|" + "---|" * len(sens),
    ]
    grid = next(iter(sens.values()))
    for j, row in enumerate(grid):
        cells = [f"[{b[j]['low']:.2f}, {b[j]['high']:.2f}]" for b in sens.values()]
        lines.append(f"| {row['lambda']:g} | " + " | ".join(cells) + " |")
    if truth:
        tv = truth["value"]["mean"]
        lines.append("")
        for est, bounds in sens.items():
            need = next((b["lambda"] for b in bounds if b["low"] <= tv <= b["high"]), None)
            where = (f"from Lambda = {need:g}" if need is not None
                     else "at no Lambda of the grid")  # fmt: skip
            lines.append(f"- The {est.upper()} bounds contain the true value {tv:.2f} {where}.")
    return lines


def _summary_row(vals: list[Any]) -> dict[str, Any]:
    """One metric row over evaluations, as ``ope.summary.summarize`` writes it."""
    finite = [float(v) for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    n = len(finite)
    mean = sum(finite) / n if n else None
    std = (
        math.sqrt(sum((x - mean) ** 2 for x in finite) / (n - 1))
        if n > 1
        else (0.0 if n == 1 else None)
    )
    return {"mean": mean, "std": std, "n": n, "undefined": len(vals) - n}


def _cell(key: str, mean: float | None, why: dict[str, str]) -> str:
    """A card table cell: the number, or why there is none."""
    if mean is not None:
        return f"{mean:.4f}"
    if key in why:
        reason = why[key].replace("|", "/").replace("\n", " ")
        if len(reason) > 200:
            reason = reason[:197] + "..."
        return f"not evaluable ({reason})"
    return "undefined"


def find_evaluations(run_dir: Path) -> list[Path]:
    """The run's own evaluations under ``<workspace>/eval`` (test preferred over validation)."""
    cfg = json.loads((run_dir / "config.json").read_text())
    ws = Path(cfg["replay"]["path"]).parent.parent
    for split in ("test", "validation"):
        candidate = ws / "eval" / f"{run_dir.name}-{split}"
        if (candidate / "metrics.json").is_file():
            return [candidate]
    return []


def _normalization(ws: Path, feature_names: list[str]) -> dict[str, Any] | None:
    path = ws / "features" / "preprocessing.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    feats = doc["features"]
    keys = ("median", "clip_low", "clip_high", "mean", "std", "transform")
    return {n: {k: feats[n][k] for k in keys} for n in feature_names if n in feats}


def _load_truth(path: Path, run: Path) -> dict[str, Any]:
    if path.is_dir():
        path = path / "truth.json"
    if not path.is_file():
        raise ExportError(f"--truth {path}: no truth.json there (run `sepsisrl truth` first)")
    doc = json.loads(path.read_text())
    if doc.get("policy") != f"run:{run.name}":
        raise ExportError(
            f"--truth {path} is the truth of {doc.get('policy')!r}, not of run:{run.name}"
        )
    keys = ("policy", "patients_simulated", "episodes", "mortality_90d", "value", "clinicians",
            "difference_from_clinicians", "seed", "fingerprints", "limits")  # fmt: skip
    return {**{k: doc[k] for k in keys}, "interface": doc.get("interface", "held")}


#: How the truth delivered an action (``sepsisrl truth --interface``), in the card's words.
CARD_INTERFACE = {
    "held": "each action held for its 4-hour window as the bins' representative doses",
    "titrated": "each action setting the bins of its 4-hour window, inside which the simulated "
    "team titrated every hour",
}


def build_warnings(ws: Path) -> list[str]:
    """The messages of ``build_summary.json``'s ``warnings`` (tables or core features the build
    was allowed to go without, ``sepsisrl build --allow-missing``)."""
    path = ws / "build_summary.json"
    if not path.is_file():
        return []
    return [w["message"] for w in json.loads(path.read_text()).get("warnings", [])]


def _ci_text(d: dict[str, Any], digits: int = 3) -> str:
    lo, hi = d["ci95"]
    return f"{d['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def truth_verdict(diff: dict[str, Any]) -> str:
    """One plain sentence: is the policy truly better or worse than the clinicians? From the
    paired 95 % CIs of its value and 90-day mortality differences (same patients): a CI of the
    value above 0 or of the mortality below 0 is a benefit, the reverse a harm."""
    (vlo, vhi), (mlo, mhi) = diff["value"]["ci95"], diff["mortality_90d"]["ci95"]
    benefit = [w for w, yes in (("value", vlo > 0), ("90-day mortality", mhi < 0)) if yes]
    harm = [w for w, yes in (("value", vhi < 0), ("90-day mortality", mlo > 0)) if yes]
    if harm and not benefit:
        verdict = f"**worse than the clinicians** (in {' and '.join(harm)})"
    elif benefit and not harm:
        verdict = f"**better than the clinicians** (in {' and '.join(benefit)})"
    elif benefit and harm:
        verdict = (f"**better than the clinicians in {' and '.join(benefit)} but worse in "
                   f"{' and '.join(harm)}**")  # fmt: skip
    else:
        verdict = "**not distinguishable from the clinicians**"
    m, v = diff["mortality_90d"], diff["value"]
    text = (
        f"In truth this policy is {verdict}: paired with them on the same patients, its 90-day "
        f"mortality differs by {100 * m['mean']:+.1f} points (95 % CI {100 * mlo:+.1f} to "
        f"{100 * mhi:+.1f}) and its value by {v['mean']:+.2f} return units ({vlo:+.2f} to "
        f"{vhi:+.2f})."
    )
    if not benefit and not harm and mhi > NONINFERIORITY_MARGIN:
        text += (
            f" Not distinguishable is not equivalent: these patients cannot rule out a 90-day "
            f"mortality up to {100 * mhi:.1f} points above the clinicians', so non-inferiority "
            f"within {100 * NONINFERIORITY_MARGIN:g} point is not shown; more fresh patients "
            "(`sepsisrl truth --patients`) narrow the interval."
        )
    return text


def truth_lines(truth: dict[str, Any], summary: dict[str, Any] | None) -> list[str]:
    """The card's "Truth in the synthetic world" section: true outcome beside the estimates."""
    m = summary["metrics"] if summary else {}
    diff = truth["difference_from_clinicians"]
    lines = [
        "## Truth in the synthetic world",
        f"This policy was trained on a synthetic world, where its true outcome can be measured: "
        f"{truth['patients_simulated']} fresh patients of the same world ({truth['episodes']} "
        "cohort episodes, never the training patients) were simulated with the policy deciding "
        f"at every decision time (`sepsisrl truth`, interface `{truth.get('interface', 'held')}`: "
        f"{CARD_INTERFACE[truth.get('interface', 'held')]}).",
        "",
        "| Quantity | This policy (true) | Clinicians (true) | Paired difference |",
        "|---|---|---|---|",
        f"| 90-day mortality | {_ci_text(truth['mortality_90d'])} | "
        f"{_ci_text(truth['clinicians']['mortality_90d'])} | {_ci_text(diff['mortality_90d'])} |",
        f"| Value (return units) | {_ci_text(truth['value'], 2)} | "
        f"{_ci_text(truth['clinicians']['value'], 2)} | {_ci_text(diff['value'], 2)} |",
        "",
        truth_verdict(diff),
        "",
    ]
    tv = truth["value"]["mean"]
    for key, label in (("fqe_mean", "FQE"), ("wdr_mean", "WDR"), ("wis_mean", "WIS")):
        est = m.get(key, {}).get("mean") if m else None
        if est is None:
            lines.append(
                f"- {label}: not evaluable (the evaluation's gates failed, see metrics.json "
                f"'evaluable'); nothing to compare with the true value {tv:.2f}."
            )
            continue
        verdict = (
            "agrees with" if abs(est - tv) <= 1.5 else "**disagrees with**"
        )  # issue 12's tolerance: 1.5 return units
        lines.append(
            f"- {label} estimate {est:.2f} {verdict} the true value {tv:.2f} "
            f"(difference {est - tv:+.2f} return units)."
        )
    lines += [
        "",
        "The truth is that of the simulator, not of real patients; see the limits in "
        "`config.json['truth']['limits']`.",
        "",
    ]
    return lines


def warning_lines(warnings: list[str]) -> list[str]:
    """The card's data warning: the training data was built with data missing."""
    if not warnings:
        return []
    return [
        "> **DATA WARNING: this model was trained on a dataset built from incomplete source "
        "data** (`sepsisrl build --allow-missing`; `config.json['dataset']['build_warnings']`):",
        *[f"> - {w}" for w in warnings],
        "",
    ]


def card_metadata(config: dict[str, Any], summary: dict[str, Any] | None, name: str) -> str:
    """The card's YAML front matter (without its ``---`` lines), written by ``yaml.safe_dump``
    so that any model or dataset name stays one quoted scalar. ``model-index`` holds one result
    (task ``reinforcement-learning`` on the run's dataset and evaluation split) with every card
    row that has a measured mean, at full precision (equal to ``config.json['metrics']``); a
    model without one has no ``model-index`` (the Hub refuses a result without metrics).
    release/hub.py checks it with huggingface_hub's model-card parser."""
    meta: dict[str, Any] = {
        "license": "other",
        "license_name": "research-only",
        "license_link": "LICENSE.md",
        "library_name": "pytorch",
        "tags": ["reinforcement-learning", "offline-reinforcement-learning",
                 "implicit-q-learning", "sepsis", "research-only"],
    }  # fmt: skip
    m = summary["metrics"] if summary else {}
    metrics = [
        {"type": key, "name": label, "value": float(m[key]["mean"])}
        for key, label in CARD_ROWS
        if key in m and m[key]["mean"] is not None and math.isfinite(m[key]["mean"])
    ]
    if metrics:
        dataset = {
            "type": config["dataset"].get("source_kind") or "replay",
            "name": config["dataset"].get("name"),
            "split": summary["split"],
        }
        task = {"type": "reinforcement-learning",
                "name": "Offline RL - sepsis vasopressor and IV-fluid dosing"}  # fmt: skip
        meta["model-index"] = [
            {"name": name, "results": [{"task": task, "dataset": dataset, "metrics": metrics}]}
        ]
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)


def model_card(
    config: dict[str, Any],
    summary: dict[str, Any] | None,
    name: str,
    why: dict[str, str] | None = None,
) -> str:
    """``why``: per metric key, the reason it is not evaluable (``gated_summary``)."""
    why = why or {}
    m = summary["metrics"] if summary else {}
    n_eval = len(summary["evaluations"]) if summary else 0
    split = summary["split"] if summary else None
    metric_rows = [(key, label) for key, label in CARD_ROWS if key in m]
    tr = config["training"]
    lines = [
        "---",
        card_metadata(config, summary, name).rstrip("\n"),
        "---",
        "",
        f"# {name}",
        "",
        "> **RESEARCH ONLY - NOT FOR CLINICAL USE.** This model is not clinical decision support. Do not "
        "use it for diagnosis, treatment, triage, live patient care or any automated medical decision. "
        "It is a research artifact for retrospective offline reinforcement learning studies.",
        "",
        *warning_lines(config["dataset"].get("build_warnings") or []),
        f"A discrete {config['model_type'].upper()} policy: a {config['state_dim']}-dimensional normalised "
        f"clinical state -> logits over {config['n_actions']} actions ({config['action_space']}), 4-hour decision steps. "
        f"Produced by sepsisrl {config['package']['version']} from run `{tr['run_name']}` "
        f"(algorithm `{tr['algo']}`, configuration `{tr.get('preset') or 'custom'}`, seed {tr['seed']}, "
        f"{tr['steps']} gradient steps).",
        "",
        "## Files",
        "- `model.safetensors` - actor weights (`net.0`, `net.2`, `net.4`).",
        "- `config.json` - input feature order, normalisation statistics, action bins and labels, training "
        "configuration and seed, dataset fingerprint, package version, measured metrics.",
        "- `modeling_iql.py` - standalone wrapper (torch, safetensors, standard library only).",
        "- `requirements.txt`, `LICENSE.md`, this card.",
        "",
        "## Use",
        "```python",
        "from modeling_iql import decode_action, load_policy",
        "policy = load_policy('.')",
        "state = policy.normalize({'heart_rate': 112, 'map': 58, 'lactate': 4.1})  # others: training medians",
        "action = policy.select_action(state)",
        "print(action, decode_action(action))",
        "```",
        "Inputs must follow `config.json['feature_names']`; `policy.normalize` applies the training "
        "imputation, clipping and scaling to raw values given by name.",
        "",
        "## Intended use",
        "Retrospective offline-RL research, reproducibility checks, model-card review and benchmark "
        "comparisons under the same preprocessing and cohort definition.",
        "",
        "## Out-of-scope use",
        "Clinical decision support, deployment, patient-level recommendations, commercial medical "
        "products, and evaluation with a different state representation without revalidation.",
        "",
        "## Training data",
        f"Replay dataset `{config['dataset'].get('variant')}` ({config['dataset'].get('train_transitions')} train "
        f"transitions, {config['dataset'].get('train_episodes')} episodes) built by sepsisrl from a "
        f"{config['dataset'].get('source_kind')} source (MIMIC-IV layout {config['dataset'].get('source_version')}); "
        f"dataset fingerprint `{config['dataset'].get('train_fingerprint', '')[:16]}`. "
        "The repository contains no patient-level data.",
        "",
        "## Evaluation",
    ]
    if summary:
        lines += [
            f"Off-policy estimates on the **{split}** split over {n_eval} evaluation(s) "
            f"(policies: {', '.join(summary['policies'])}), evaluation reward = terminal +-15 only:",
            "",
            "| Metric | Mean | SD | n |",
            "|---|---|---|---|",
        ]
        for key, label in metric_rows:
            r = m[key]
            sd = "" if r["std"] is None else f"{r['std']:.4f}"
            lines.append(f"| {label} | {_cell(key, r['mean'], why)} | {sd} | {r['n']} |")
        lines += ["", "These are offline estimates only; no prospective validation has been performed. They are not "
                  "evidence of clinical safety or efficacy."]  # fmt: skip
        lines += sensitivity_lines(summary, config.get("truth"))
        lines += intensity_lines(config.get("treatment_intensity"))
        lines += overlap_lines(config.get("decisions_followed"))
        lines += selection_lines(config.get("selection"))
    else:
        lines.append(
            "This model has not been evaluated: no evaluation results were found for its run."
        )
    if config.get("truth"):
        lines += ["", *truth_lines(config["truth"], summary)]
    lines += [
        "",
        "## Limitations and risks",
        "- Off-policy estimates can be biased by limited support, unobserved confounding, the cohort "
        "definition, reward design and model selection.",
        "- Support is checked one decision at a time: a policy whose every action the clinicians "
        "plausibly take can still follow a sequence that no logged episode follows (the most "
        "intense plausible treatment, decision after decision), and its FQE and WDR values then "
        "rest on extrapolation. On the project's synthetic benchmark both estimators over-valued "
        "such an over-treating policy even in logs without confounding (docs/evaluate.md, "
        "item 11).",
        "- The FQE pools every logged treatment in one penalised fit, which pulls a policy's "
        "value towards what the other treatments in the logs show. On the synthetic benchmark, "
        "even logs holding hundreds of whole runs of every compared policy left the harm of the "
        "most intense constant treatment mostly unseen, while the same FQE fitted on that "
        "policy's own runs alone showed it (docs/evaluate.md, item 19).",
        "- The action space is discretised and ignores contraindications, timing within a step and "
        "bedside judgement.",
        "- Only the exact feature set and normalisation in `config.json` are supported.",
        "- MIMIC-IV data-use terms apply to reproduction and downstream use.",
        "",
        "## Citation",
        "Cite the sepsisrl project and this model card. Algorithm: Kostrikov, Nair & Levine, Offline "
        "Reinforcement Learning with Implicit Q-Learning, ICLR 2022.",
        "",
        "## License",
        "Research-only; see `LICENSE.md`.",
        "",
    ]
    return "\n".join(lines)


LICENSE_TEXT = """# Research-only license

Copyright the sepsisrl authors.

Permission is granted to use, copy and modify these model weights and files for non-commercial
research only, provided that this notice is kept with every copy.

1. **No clinical use.** The model must not be used for diagnosis, treatment, triage, patient
   care, clinical decision support or any automated medical decision.
2. **No commercial use** without separate written permission.
3. **Data-use terms.** If this model was derived from MIMIC-IV, use and redistribution are also
   subject to the PhysioNet Credentialed Health Data License and Data Use Agreement for MIMIC-IV;
   users must hold PhysioNet credentialed access to reproduce the training data. No patient data
   are distributed with this model.
4. **No warranty.** The files are provided "as is", without warranty of any kind; the authors are
   not liable for any claim or damage arising from their use.
"""

REQUIREMENTS = "torch>=2.2\nsafetensors>=0.4\n"


def _treatment_intensity(
    run: Path, evals: list[Path], replay: dict[str, Any]
) -> dict[str, Any] | None:
    """The exported run's treatment intensity on the states of its own evaluation among
    ``evals`` (``truth.compare.intensity_of`` of its ``cases.csv``, with the split); None
    when none of them evaluates this run or the replay's labels name no vasopressor x fluid
    grid."""
    from sepsisrl.truth.compare import intensity_of

    try:
        grid = ActionGrid.from_labels(replay.get("action_labels") or [])
    except ValueError:
        return None
    for e in evals:
        doc = EvaluationMetrics.load(Path(e) / "metrics.json")
        if doc.policy.kind != "run" or Path(doc.policy.spec).absolute() != run:
            continue
        got = intensity_of(Path(e) / "cases.csv", grid.n_fluid)
        if got is not None:
            return {"split": doc.split, "evaluation": Path(e).name, **got}
    return None


def _decisions_followed(run: Path, evals: list[Path]) -> dict[str, Any] | None:
    """How far the logged episodes of the exported run's own evaluation among ``evals``
    follow it (``ope.importance.decisions_followed`` at that evaluation's IS gate); None when
    none of them evaluates this run."""
    from sepsisrl.ope.importance import decisions_followed

    for e in evals:
        doc = EvaluationMetrics.load(Path(e) / "metrics.json")
        if doc.policy.kind != "run" or Path(doc.policy.spec).absolute() != run:
            continue
        ess = [float(x) for x in doc.overlap.ess_per_decision]
        gate = float(doc.config["gates"]["is_ess_min"])
        return {"split": doc.split, "evaluation": Path(e).name, "episodes": doc.episodes,
                "followed": decisions_followed(ess, gate), "decisions": len(ess),
                "ess_min": gate}  # fmt: skip
    return None


def overlap_lines(followed: dict[str, Any] | None) -> list[str]:
    """The card's paragraph on how far the logs follow the policy, decision by decision."""
    if not followed:
        return []
    k, n = followed["followed"], followed["decisions"]
    where = ("through all {n} of its decisions" if k == n else
             "at none of its {n} decisions" if k == 0 else
             "for its first decision only, of {n}" if k == 1 else
             "for its first {k} of {n} decisions only").format(k=k, n=n)  # fmt: skip
    text = (f"**How far the logs follow it.** In its {followed['split']} evaluation "
            f"({followed['episodes']} episodes), the number of effective episodes that still "
            f"follow this policy (per-decision ESS) stays at or above {followed['ess_min']:g} "
            f"{where}.")  # fmt: skip
    if followed["followed"] < followed["decisions"]:
        text += (" Where the logs stop following it, its offline value rests on states they "
                 "do not hold: the FQE extrapolates to them and importance weights cannot "
                 "correct it. On the project's synthetic benchmark the same FQE ranked a "
                 "world's policies correctly from logs that held each policy's own runs, and "
                 "did not from the clinicians' logs of that world (docs/evaluate.md, items 11 "
                 "and 19).")  # fmt: skip
    return ["", text]


def selection_lines(selection: dict[str, Any] | None) -> list[str]:
    """The card's paragraph on how the study chose this configuration, and whether successive
    halving stopped candidates that the validation data did not show worse."""
    if not selection:
        return []
    n = selection["candidates"]
    text = (f"**Selection.** A study (profile `{selection['profile']}`) chose this configuration "
            f"among {n} on the validation split by its rule (score `{selection['score']}`, the "
            "lower end of the estimator's 95 % interval); finalists: "
            f"{', '.join(f'`{f}`' for f in selection['finalists'])}.")  # fmt: skip
    rungs = selection["halving"]
    if rungs:
        stops = "; ".join(
            f"rung {r['rung']} ({r['step']} steps) stopped {len(r['stopped'])}, "
            + (f"{len(r['within_noise'])} of them within the noise" if not r.get("spared")
               else f"and kept on {len(r['spared'])} past the cut within the noise")
            for r in rungs
        )  # fmt: skip
        text += (f" Stage 1 used successive halving over {rungs[0]['rungs']} rungs: {stops} "
                 "(not credibly worse than the last candidate kept: the 95 % interval of the "
                 "difference, paired on the same validation episodes, reaches 0, or without "
                 "paired values their own interval reaches its score).")  # fmt: skip
        if any(r["within_noise"] and not r.get("spared") for r in rungs):
            text += (" The validation data did not show those candidates worse, so a full sweep "
                     "may select another configuration; on the project's synthetic benchmark "
                     "such a cut stopped the full sweep's selection (docs/run.md).")  # fmt: skip
    return ["", text]


def intensity_lines(intensity: dict[str, Any] | None) -> list[str]:
    """The card's paragraph on how much the policy treats against the clinicians."""
    if not intensity:
        return []
    parts, less = [], []
    for key, what in (("vaso_bin", "vasopressor"), ("fluid_bin", "IV-fluid")):
        mine, theirs = intensity[key], intensity[f"clinician_{key}"]
        parts.append(f"mean {what} bin {mine:.2f} against the clinicians' {theirs:.2f} "
                     f"({mine - theirs:+.2f})")  # fmt: skip
        if mine < theirs:
            less.append(what.replace("-", " "))
    text = (f"**Treatment intensity.** On the {intensity['decisions']} decisions of its "
            f"{intensity['split']} evaluation this policy chooses {'; '.join(parts)}, the "
            "clinicians' being their logged actions on the same states (bin 0 is none, higher "
            "bins larger doses: `action_bins`).")  # fmt: skip
    if less:
        text += (f" It gives less {' and less '.join(less)} than the clinicians did. The "
                 "clinicians escalate for reasons the state does not record, so offline "
                 "estimates learned from their logs tend to credit giving less with outcomes "
                 "that were not its doing (confounding by indication); on the project's "
                 "synthetic benchmark the FQE's error followed the policies' treatment "
                 "intensity in this direction (docs/evaluate.md, item 17).")  # fmt: skip
    return ["", text]


def _action_space(replay: dict[str, Any]) -> str:
    """The run's action space in words: its vasopressor x fluid grid (from the replay's
    ``action_labels``), or only the count where the labels name no grid (an external replay:
    ``action_labels`` is optional in the replay contract)."""
    labels = replay.get("action_labels")
    if labels:
        try:
            return ActionGrid.from_labels(labels).describe()
        except ValueError:
            pass
    return f"{replay['n_actions']} actions (the replay's action_labels name no vasopressor x fluid grid)"


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    evaluations: list[str | Path] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    truth: str | Path | None = None,
    selection: dict[str, Any] | None = None,
) -> Path:
    """``truth``: a ``truth.json`` of this run (``sepsisrl truth``), shown in the card next to
    the offline estimates; ``selection``: how a study chose it (``contracts.StudySelection``,
    from ``study/selection.json``), stated in the card."""
    run = Path(run_dir).absolute()
    out = Path(out_dir).absolute()
    if not (run / "final" / "policy.safetensors").is_file():
        raise ExportError(f"{run}: no final/policy.safetensors - is the run complete?")
    cfg = json.loads((run / "config.json").read_text())
    if cfg["algo"] not in EXPORTABLE:
        raise ExportError(
            f"{run}: algorithm {cfg['algo']!r} has no actor network; export supports {EXPORTABLE}"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"{out} exists and is not empty; pass --overwrite or choose another --out"
        )
    truth_doc = _load_truth(Path(truth), run) if truth is not None else None
    try:  # a diverged run (NaN or inf weights) is never published
        weights = finite_tensors(run / "final" / "policy.safetensors", run)
    except NonFiniteWeightsError as exc:
        raise ExportError(f"{exc}; refusing to export it") from exc
    evals = [Path(e) for e in evaluations] if evaluations else find_evaluations(run)
    summary, why = gated_summary(evals) if evals else (None, {})
    replay = cfg["replay"]
    ws = Path(replay["path"]).parent.parent
    names = replay["feature_names"]
    state = json.loads((run / "final" / "state.json").read_text())
    bins_path = ws / "actions" / "bins.json"
    bins = json.loads(bins_path.read_text()) if bins_path.is_file() else None
    name = name or f"sepsisrl-{run.name}"
    source = replay.get("source") or {}
    config = {
        "model_type": cfg["algo"],
        "architecture": "mlp",
        "state_dim": replay["state_dim"],
        "n_actions": replay["n_actions"],
        "hidden_sizes": list(cfg["config"]["hidden_sizes"]),
        "activation": "relu",
        "feature_names": names,
        "normalization": _normalization(ws, names),
        "action_space": _action_space(replay),
        "action_labels": replay.get("action_labels"),
        "action_bins": None if bins is None else {"vasopressor": bins["vasopressor"], "iv_fluid": bins["iv_fluid"]},
        "training": {
            "run_name": run.name,
            "algo": cfg["algo"],
            "preset": cfg.get("preset"),
            "seed": cfg["seed"],
            "steps": state["step"],
            "config": cfg["config"],
            "torch": cfg.get("torch"),
        },
        "selected_config": cfg.get("preset"),
        "dataset": {
            "name": f"sepsisrl replay ({replay.get('variant')})",
            "variant": replay.get("variant"),
            "gamma": replay.get("gamma"),
            "train_transitions": replay.get("train_transitions"),
            "train_episodes": replay.get("train_episodes"),
            "train_fingerprint": replay.get("train_fingerprint"),
            "source_kind": source.get("kind"),
            "source_version": source.get("version"),
            "source_fingerprint": source.get("fingerprint"),
            "build_warnings": build_warnings(ws),
        },
        "package": {"name": "sepsisrl", "version": __version__},
        "metrics": None if summary is None else {
            "split": summary["split"],
            "evaluations": len(summary["evaluations"]),
            **{k: v for k, v in summary["metrics"].items()},
        },
        "truth": truth_doc,
        "treatment_intensity": _treatment_intensity(run, evals, replay),
        "decisions_followed": _decisions_followed(run, evals),
        "selection": selection,
        "research_only": True,
    }  # fmt: skip
    # checked against the contract before anything is written: a writer that drifts from
    # contracts.ModelConfig (a renamed, missing or ill-typed key) fails here, loudly
    model_config = ModelConfig.parse(config, out / "config.json")
    with atomic_folder(out) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        model_config.write(tmp / "config.json")
        wrapper = resources.files("sepsisrl.release") / "modeling_iql.py"
        (tmp / "modeling_iql.py").write_text(wrapper.read_text())
        (tmp / "requirements.txt").write_text(REQUIREMENTS)
        (tmp / "LICENSE.md").write_text(LICENSE_TEXT)
        (tmp / "README.md").write_text(model_card(config, summary, name, why))
        from sepsisrl.release.hub import check_card

        check_card(tmp)  # huggingface_hub's model-card parser, offline, when it is installed
    return out


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Create ``repo_id`` on the Hub (if needed) and upload the exported ``folder`` to it with
    huggingface_hub; returns the commit URL. The Hub is ``HF_ENDPOINT`` (huggingface.co by
    default; release/hub_standin.py for a local dry run) and the token that of ``hf auth login``
    or ``HF_TOKEN``. Any failure raises :class:`ExportError` saying why, with the complete local
    copy's path (docs/huggingface.md)."""
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        raise ExportError(
            '--push needs huggingface_hub: pip install "sepsisrl[hub]" (or pip install '
            f"huggingface_hub), then `hf auth login`; the model repository is complete at {folder}"
        ) from exc
    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id))
    except Exception as exc:  # network, authentication, permissions: report, keep the local copy
        raise ExportError(
            f"upload to {repo_id} at {getattr(api, 'endpoint', 'the Hub')} failed "
            f"({_upload_failure(exc)}); the model repository is complete at {folder} - "
            f"{_upload_hint(exc)}, or upload the folder yourself"
        ) from exc


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a failed Hub request (``HfHubHTTPError.response``), if any."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _upload_failure(exc: BaseException) -> str:
    """One line: the error's type and message (huggingface_hub's span several lines and end
    with a link to a generic page about the status code, left out)."""
    text = " ".join(re.sub(r"For more information check: \S+", "", str(exc)).split())
    if len(text) > 400:
        text = text[:397] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _upload_hint(exc: BaseException) -> str:
    status = _status(exc)
    if status in (401, 403):
        return (
            "check the token (`hf auth login`, or HF_TOKEN) and that it may write to that "
            "namespace, then retry"
        )
    if status is None and "connect" in type(exc).__name__.lower():
        return "check the network and HF_ENDPOINT, then retry"
    return "retry later"
