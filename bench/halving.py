"""Successive halving over stage 1 against the full sweep, on a synthetic world (truth known).

Usage:  python bench/halving.py [--profile quick] [--workspace /tmp/halving_ws] [--stays 2000]
                                [--eta 3] [--rungs 3] [--stop rank] [--set KEY=VALUE ...]
                                [--out bench/results/halving.json]
        python bench/halving.py --compare HALVING_WS FULL_WS [--out ...]

1. ``sepsisrl run`` with ``sweep.halving`` on (rung r of R trains the candidates still in to
   eta^(r-R) of their steps, scores them on validation and keeps the best 1/eta, at least the
   finalists); its selection is saved.
2. The same study with halving off, in the same workspace: the kept candidates' runs are
   reused (a run paused at a rung and resumed has the bytes of a full run), the others resume
   from their rung checkpoints - together the full sweep.

``--compare`` runs nothing: it reads two finished studies of the same world and settings,
one with halving (``bench/study.py --profile card_halving``) and one without (``--profile
card``), each in its own workspace, and also checks that every run the halving trained to
the end (its stage-1 survivors and stage-2 seeds) has the bytes of the same run of the full
sweep (``final/policy.safetensors``).

Reported: the training steps each spent on stage 1, both selections (finalists, selected
configuration and seed), whether the full sweep's finalists survived the rungs, the stage-1
rank agreement (Spearman) of the halving's last scores with the full sweep's, and - the world
being synthetic - the true value of each selection and of the best candidate (the regret).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def summary(ws: Path) -> dict:
    """What a finished study in ``ws`` selected, its stage-1 steps and its truths."""
    selection = json.loads((ws / "study" / "selection.json").read_text())
    truth = json.loads((ws / "study" / "truth.json").read_text())["selection"]
    steps = 0
    for c in selection["candidates"]:
        row = c["seeds"][0]  # the stage-1 seed
        doc = json.loads((ws / row["run"] / "config.json").read_text())
        steps += doc["snapshot_of"]["step"] if "snapshot_of" in doc else doc["total_steps"]
    return {
        "stage1_training_steps": steps,
        "finalists": selection["finalists"],
        "selected": selection["selected"]["name"],
        "selected_seed": selection["selected"]["seed"],
        "stage1_scores": {c["name"]: c["score"] for c in selection["candidates"]},
        "stage1_ranks": {c["name"]: c["stage1_rank"] for c in selection["candidates"]},
        "stopped_at_step": {c["name"]: c.get("stopped_at_step") for c in selection["candidates"]},
        "selected_true_value": truth["selected_true_value"],
        "best_candidate": truth["best_candidate"],
        "best_true_value": truth["best_true_value"],
        "regret": truth["regret"],
        "candidate_true_values": truth["candidate_true_values"],
        "runs_trained_to_the_end": sorted(
            row["run"]
            for c in selection["candidates"]
            if c.get("stopped_at_step") is None
            for row in c["seeds"]
        ),
    }


def rungs(ws: Path) -> list[dict]:
    """The halving study's rung records: ``selection.json``'s ``halving``, or, for a study
    written before the records existed, its rungs replayed from their evaluations on disk by
    the same rule (``study.selection.rung_record``, each stop tested by the FQE paired on the
    validation episodes; an evaluation written before it kept its FQE values is refitted from
    its recorded settings, which gives its recorded estimate to about 1e-12); a replayed rung
    must stop exactly the candidates ``selection.json`` stopped there."""
    import re

    from sepsisrl.contracts import EvaluationMetrics
    from sepsisrl.ope.importance import paired_difference_ci
    from sepsisrl.study import selection as sel
    from sepsisrl.study.config import SelectionSection

    selection = json.loads((ws / "study" / "selection.json").read_text())
    if "halving" in selection:
        return selection["halving"]
    config = json.loads((ws / "study" / "plan.json").read_text())["config"]
    h, rule = config["sweep"]["halving"], SelectionSection.model_validate(config["selection"])
    seed = config["sweep"]["stage1_seed"]
    stopped_at = {c["name"]: c.get("stopped_at_step") for c in selection["candidates"]}
    steps = sorted({int(m.group(1)) for p in (ws / "eval").iterdir()
                    if (m := re.search(r"_step(\d+)-validation$", p.name))})  # fmt: skip
    values: dict[str, tuple] = {}

    def paired(a: dict, b: dict) -> list[float] | None:
        if rule.estimator != "fqe":
            return None
        va, vb = (_fqe_values(ws / c["seeds"][0]["eval"], values) for c in (a, b))
        cfg = EvaluationMetrics.load(ws / a["seeds"][0]["eval"] / "metrics.json").config
        ci = paired_difference_ci(va, vb, cfg["bootstrap_resamples"], cfg["bootstrap_seed"])
        return [ci.estimate, ci.low, ci.high]

    kept, out = sorted(stopped_at), []
    for r, step in enumerate(steps, 1):
        cands = []
        for name in kept:
            run = f"runs/{name}_seed{seed}_step{step}"
            ev = f"eval/{name}_seed{seed}_step{step}-validation"
            doc = EvaluationMetrics.load(ws / ev / "metrics.json")
            row = {"seed": seed, "run": run, "eval": ev,
                   **sel.selection_metrics(doc, rule.estimator)}  # fmt: skip
            cands.append(sel.aggregate({"name": name, "seeds": [row]}, rule))
        keep = max(rule.finalists, math.ceil(len(cands) / h["eta"]))
        rec = sel.rung_record(r, h["rungs"], step, sel.rank(cands), keep, paired)
        recorded = sorted(n for n, s in stopped_at.items() if s == step)
        if sorted(rec["stopped"]) != recorded:
            raise SystemExit(f"{ws}: rung {r} replayed stops {sorted(rec['stopped'])}, but "
                             f"selection.json stopped {recorded} there")  # fmt: skip
        out.append(rec)
        kept = [n for n in kept if n not in rec["stopped"]]
    return out


def _fqe_values(ev: Path, cache: dict) -> tuple:
    """(v0, point) of an evaluation's FQE at its initial states: its kept values, or a refit
    with its recorded settings (policy, behaviour model, replay) when it kept none."""
    if str(ev) in cache:
        return cache[str(ev)]
    from safetensors.numpy import load_file

    from sepsisrl.ope.paired import FILE

    if (ev / FILE).is_file():
        got = load_file(str(ev / FILE))
        cache[str(ev)] = (got["v0"], got.get("point"))
        return cache[str(ev)]
    from sepsisrl.config import validate_dataclass
    from sepsisrl.ope.behaviour import BehaviourModel
    from sepsisrl.ope.estimators import EvalData, FittedQEvaluation
    from sepsisrl.ope.evaluate import EVAL_REWARD, EvalConfig, make_policy
    from sepsisrl.rl.data import load_meta, load_split

    m = json.loads((ev / "metrics.json").read_text())
    c = m["config"]
    cfg = validate_dataclass(EvalConfig, {
        "bootstrap_resamples": c["bootstrap_resamples"], "bootstrap_seed": c["bootstrap_seed"],
        "seed": c["seed"], "headline": c["headline"], "gates": c["gates"], "fqe": c["fqe"],
    }, "evaluation")  # fmt: skip
    replay = Path(m["replay"]["path"])
    meta = load_meta(replay)
    train = load_split(replay, "train", EVAL_REWARD, meta)
    split = load_split(replay, m["split"], EVAL_REWARD, meta)
    pol = make_policy(m["policy"]["spec"], m["policy"]["kind"], meta, None)
    states = split.states.numpy()
    b = BehaviourModel.load(ev / "behaviour").probabilities(states)
    data = EvalData(meta, cfg, train, split, pol, b, pol.action_probabilities(states), None)
    fqe = FittedQEvaluation().fit(data, {})
    got = fqe.ci.to_json()["ci_low"]
    if not math.isclose(got, m["fqe"]["bootstrap"]["ci_low"], rel_tol=0, abs_tol=1e-9):
        raise SystemExit(f"{ev}: the refitted FQE gives {got}, the evaluation recorded "
                         f"{m['fqe']['bootstrap']['ci_low']}")  # fmt: skip
    cache[str(ev)] = (fqe.v0, None if fqe.v_full is None else fqe.v_full[fqe.init])
    return cache[str(ev)]


def same_runs(halving_ws: Path, full_ws: Path, runs: list[str]) -> dict:
    """Which of the halving's full-length ``runs`` have the full sweep's weights, byte for byte
    (``of``: those the full sweep trained too; ``not_in_full``: the stage-2 seeds of a
    finalist the full sweep did not pick)."""
    same, differ, missing = [], [], []
    for run in runs:
        a = halving_ws / run / "final" / "policy.safetensors"
        b = full_ws / run / "final" / "policy.safetensors"
        if not b.is_file():
            missing.append(run)
        else:
            (same if a.read_bytes() == b.read_bytes() else differ).append(run)
    return {"identical": len(same), "of": len(same) + len(differ), "differ": differ,
            "not_in_full": missing}  # fmt: skip


def compare(h: dict, f: dict) -> dict:
    names = sorted(f["stage1_ranks"])
    return {
        "same_selection": (h["selected"], h["selected_seed"])
        == (f["selected"], f["selected_seed"]),
        "full_finalists_kept_by_halving": sorted(set(f["finalists"]) & set(h["finalists"])),
        "stage1_rank_spearman": spearman(
            [h["stage1_ranks"][n] for n in names], [f["stage1_ranks"][n] for n in names]
        ),
        "stage1_training_step_ratio": h["stage1_training_steps"] / f["stage1_training_steps"],
        # the halving's choice judged by the full sweep's truths (every candidate fully trained)
        "halving_selected_true_value": f["candidate_true_values"][h["selected"]],
        "halving_regret": f["best_true_value"] - f["candidate_true_values"][h["selected"]],
    }


def report(doc: dict) -> None:
    h, f = doc["halving"], doc["full"]
    print(f"selection: halving {h['selected']} (seed {h['selected_seed']}), full sweep "
          f"{f['selected']} (seed {f['selected_seed']}): "
          f"{'the same' if doc['same_selection'] else 'DIFFERENT'}")  # fmt: skip
    print(
        f"full sweep's finalists kept by halving: {len(doc['full_finalists_kept_by_halving'])}"
        f" of {len(f['finalists'])}; stage-1 rank Spearman {doc['stage1_rank_spearman']:.2f}"
    )
    print(f"stage-1 training steps: halving {h['stage1_training_steps']}, full "
          f"{f['stage1_training_steps']} ({doc['stage1_training_step_ratio']:.2f}x)")  # fmt: skip
    print(f"true value of the selection: halving {doc['halving_selected_true_value']:.3f}, full "
          f"{f['selected_true_value']:.3f}; best candidate {f['best_candidate']} "
          f"{f['best_true_value']:.3f}")  # fmt: skip
    for r in doc.get("rungs", []):
        lost = [n for n in r["stopped"] if n in f["finalists"]]
        print(f"rung {r['rung']} ({r['step']} steps): {r['passed']} of {r['candidates']} passed "
              f"every gate, kept {len(r['kept'])}, stopped {len(r['stopped'])}, "
              + (f"kept on {len(r['spared'])} past the cut within the noise" if r.get("spared")
                 else f"{len(r['within_noise'])} of them within the noise")
              + f" (cut {r['cut']}, test {r.get('noise_test')})"
              + (f"; the full sweep's finalists stopped here: {lost}" if lost else ""))  # fmt: skip
    if "same_runs" in doc:
        s = doc["same_runs"]
        print(f"runs trained to the end by both with the full sweep's bytes: {s['identical']} "
              f"of {s['of']}" + (f" (differ: {s['differ']})" if s["differ"] else "")
              + f"; {len(s['not_in_full'])} not trained by the full sweep")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--workspace", type=Path, default=Path("/tmp/halving_ws"))
    ap.add_argument("--stays", type=int, default=2000)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--rungs", type=int, default=3)
    ap.add_argument("--stop", choices=("rank", "credible"), default="rank",
                    help="sweep.halving.stop: which candidates past a rung's cut stop")  # fmt: skip
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("HALVING_WS", "FULL_WS"),
                    help="compare two finished studies instead of running them")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("bench/results/halving.json"))
    args = ap.parse_args()

    if args.compare:
        hws, fws = (p.absolute() for p in args.compare)
        h, f = summary(hws), summary(fws)
        doc = {
            "meta": {"halving_workspace": str(hws), "full_workspace": str(fws)},
            **compare(h, f),
            "same_runs": same_runs(hws, fws, h["runs_trained_to_the_end"]),
            "rungs": rungs(hws),
            "halving": h,
            "full": f,
        }
    else:
        doc = run_both(args)
    report(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


def run_both(args: argparse.Namespace) -> dict:
    import yaml

    from sepsisrl.study.config import load_study_config
    from sepsisrl.study.runner import run_study

    base = {"synth.stays": args.stays}
    for item in args.sets:
        key, raw = item.split("=", 1)
        base[key] = yaml.safe_load(raw)
    ws = args.workspace.absolute()
    out: dict[str, dict] = {}
    for name, halving in (("halving", True), ("full", False)):
        cfg = load_study_config(args.profile, overrides={
            **base, "sweep.halving": {"enabled": halving, "eta": args.eta, "rungs": args.rungs,
                                      "stop": args.stop, "baselines": False},
        })  # fmt: skip
        started = time.perf_counter()

        def on_event(p: str, d: int, t: int, m: str, name: str = name) -> None:
            if d == t:
                print(f"  [{name}] {p}: {d}/{t} {m}", flush=True)

        result = run_study(ws, cfg, on_event=on_event)
        out[name] = {
            "seconds": round(time.perf_counter() - started, 1),
            **summary(ws),
            "phases": result.phases,
        }
        selection = (ws / "study" / "selection.json").read_text()
        (ws / "study" / f"selection-{name}.json").write_text(selection)
    return {
        "meta": {
            "profile": args.profile,
            "stays": args.stays,
            "eta": args.eta,
            "rungs": args.rungs,
            "overrides": base,
        },
        **compare(out["halving"], out["full"]),
        "halving": out["halving"],
        "full": out["full"],
    }


if __name__ == "__main__":
    main()
