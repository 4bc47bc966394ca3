"""OPE benchmark panel: every estimator of `sepsisrl evaluate` against the truth of 16 policies.

Usage:  python bench/ope_panel.py --world-seed S [--stays 2000] [--patients 2000]
                                  [--train-steps 1000] [--out bench/results/ope_panel-S.json]
                                  [--policies a,b,...] [--threads 2] [--interface held,titrated]
                                  [--synth-set KEY=VALUE ...]

A synthetic world (the quick study's default size) is generated with seed S and built. Four
policies are trained on its ``sofa_shaped`` replay with the quick study's training length:
behaviour cloning, CQL and two IQL settings (the model card's conservative/safe one and the
baseline one). With the clinicians, no treatment, random, six constant actions, the
MAP/lactate rule and two in-support policies derived from the BC run (in each state the
least, or the most, intense action the clinicians take with probability >= 0.05: an
under- and an over-treating policy an estimator must tell apart) that makes 16 policies. Each is evaluated once on the test split (the
project's full evaluation: FQE, WDR, WIS, per-decision WIS, softened WIS, with the overlap
gates - an estimate that fails them is null and left out, listed as not evaluable) and its true
value is
measured with `sepsisrl truth` on fresh patients of the same world. Printed: the panel table
and one JSON line per estimator with Spearman and Kendall rank correlation, mean absolute
error, 95 % CI coverage and top-1 regret.

``--state-variant running_treatment`` builds the state that knows what is running (docs/build.md).

With the per-episode true returns (paired, the same truth patients for every policy) the
comparison also says how far the truth's own ranking can be trusted (``truth_noise``: the
Spearman the truth reaches against its resampled self, the ceiling of any estimator's
Spearman; ``truth/compare.py``); ``--policies`` restricts the panel (for example to the
evaluable policies, to measure their truth on more patients).

``--synth-set KEY=VALUE`` builds a diagnostic world (e.g. ``clinicians.bolus_volume_weight=0``:
no bedside volume assessment); its overrides are recorded in ``--out``.

``--interface held,titrated`` measures every policy's truth under both action interfaces of
``sepsisrl truth`` (docs/truth.md) and compares the estimates with each: ``held`` plays each
bin's representative dose for 4 hours, ``titrated`` lets the simulated team titrate hourly
inside the policy's bins - the treatment a logged 4-hour action records.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

CONSTANTS = (1, 2, 6, 12, 18, 24)
SUPPORT_THRESHOLD = 0.05


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--world-seed", type=int, required=True)
    ap.add_argument("--stays", type=int, default=2000)
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--train-steps", type=int, default=1000)
    ap.add_argument("--truth-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--state-variant", default="card", help="card | running_treatment")
    ap.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    ap.add_argument("--interface", default="held",
                    help="truth interface(s), comma-separated: held (representative doses held "
                         "4 h), titrated (the team titrates inside the policy's bins); the "
                         "first is the panel's headline truth")  # fmt: skip
    ap.add_argument("--synth-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override of configs/synth.yaml for a diagnostic world (repeatable), "
                         "e.g. clinicians.bolus_volume_weight=0 (no bedside volume assessment)")  # fmt: skip
    ap.add_argument("--policies", default=None,
                    help="comma-separated subset of the panel's policies (default: all 16), e.g. "
                         "the evaluable ones when measuring their truth on more patients")  # fmt: skip
    args = ap.parse_args()

    import torch

    from sepsisrl.ope.evaluate import EvalConfig, evaluate
    from sepsisrl.truth.compare import (
        compare,
        episode_returns,
        estimates_of,
        intensity_of,
        sensitivities_of,
    )
    from sepsisrl.truth.harness import compute_truth, population_for
    from sepsisrl.truth.policies import Network, world_policy
    from sepsisrl.truth.world import TruthContext

    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    started = time.perf_counter()
    ev_cfg = EvalConfig()  # the evaluation's defaults (the quick and card profiles use them)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, replay, runs, panel = panel_world(
            root, args.world_seed, args.stays, args.train_steps, args.state_variant,
            synth_overrides=_overrides(args.synth_set),
        )  # fmt: skip
        if args.policies:
            wanted = args.policies.split(",")
            unknown = sorted(set(wanted) - {name for name, _, _ in panel})
            if unknown:
                raise SystemExit(f"--policies: not in the panel: {', '.join(unknown)}")
            panel = [p for p in panel if p[0] in wanted]
        print(f"world {args.world_seed}: built and {len(runs)} policies trained at "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        ctx = TruthContext.load(ws)
        pop = population_for(ctx, args.patients, args.truth_seed)
        print(f"population of {args.patients} patients at {time.perf_counter() - started:.0f} s")
        interfaces = args.interface.split(",")
        rows, truth_dirs = [], {i: {} for i in interfaces}
        for name, spec, kind in panel:
            t = time.perf_counter()
            doc = evaluate(spec, replay, root / "eval" / name.replace(":", "-"), kind=kind,
                           final=True, cfg=ev_cfg)  # fmt: skip
            t_eval = time.perf_counter() - t
            if kind == "object":
                pol = Network(spec, name)
            else:
                pol = world_policy(
                    spec if kind == "named" else None, spec if kind == "run" else None, None,
                    ctx.feature_names, 25, args.truth_seed, workspace=ws,
                )  # fmt: skip
            t = time.perf_counter()
            truths = {}
            for itf in interfaces:
                folder = root / "truth" / itf / name.replace(":", "-")
                truths[itf] = compute_truth(ws, pol, folder, args.patients, args.truth_seed,
                                            ctx=ctx, population=pop, interface=itf)  # fmt: skip
                truth_dirs[itf][name] = folder
            t_truth = time.perf_counter() - t
            truth = truths[interfaces[0]]
            cases = root / "eval" / name.replace(":", "-") / "cases.csv"
            intensity = intensity_of(cases, ctx.stats.n_fluid_bins)
            rows.append({
                "policy": name,
                "truth": truth["value"]["mean"],
                "truth_ci95": truth["value"]["ci95"],
                "true_mortality_90d": truth["mortality_90d"]["mean"],
                "by_interface": {i: {"truth": d["value"]["mean"], "truth_ci95": d["value"]["ci95"],
                                     "true_mortality_90d": d["mortality_90d"]["mean"],
                                     "realised_action_agreement": d["realised_action_agreement"]}
                                 for i, d in truths.items()},
                "estimates": estimates_of(doc),
                "episodes": doc["episodes"],  # of the evaluated split: the oracle's size
                "intensity": intensity,  # mean vasopressor and IV-fluid bins on test states
                "sensitivity": sensitivities_of(doc),
                "ess": doc["metrics"]["ess"],
                "fqe_converged": doc["fqe"]["converged"],
                "evaluable": doc["evaluable"],
                "ungated": doc["estimates_ungated"],
                "support_mass": doc["metrics"]["support_mass"],
                "seconds": {"evaluate": round(t_eval, 1), "truth": round(t_truth, 1)},
            })  # fmt: skip
            est = rows[-1]["estimates"]
            print(f"  {name:24s} truth " + " / ".join(f"{d['value']['mean']:.2f}"
                                                       for d in truths.values())
                  + f"  FQE {_fmt(est['fqe'][0])}  "
                  f"WDR {_fmt(est['wdr'][0])}  WIS {_fmt(est['wis'][0])}"
                  f"  ({t_eval:.0f} s + {t_truth:.0f} s)", flush=True)  # fmt: skip
        # per-episode true returns (paired): how far the truth's own ranking can be trusted
        returns = {i: episode_returns(d) for i, d in truth_dirs.items()}
    by_interface = {}
    for itf in interfaces:
        these = [{**r, **{k: r["by_interface"][itf][k] for k in ("truth", "truth_ci95",
                                                                 "true_mortality_90d")}}
                 for r in rows]  # fmt: skip
        by_interface[itf] = compare(these, returns[itf])
    result = by_interface[interfaces[0]]
    if len(interfaces) > 1:
        print("\nAgreement with the truth of each interface (evaluable policies):")
        for itf, res in by_interface.items():
            for est in ("fqe", "wdr"):
                if est in res:
                    r = res[est]
                    print(
                        f"  {itf:9s} {est.upper():4s} Spearman {r.get('spearman')}  "
                        f"MAE {r.get('mae')}  coverage {r.get('coverage')}"
                    )

    print(f"\nOPE panel, world seed {args.world_seed}: {len(rows)} policies, "
          f"{args.patients} fresh patients for the truth ({time.perf_counter() - started:.0f} s)")  # fmt: skip
    head = f"{'policy':24s} {'truth':>7s} {'mort90':>7s} " + " ".join(f"{e:>16s}" for e in result)
    print(head)
    for r in rows:
        cells = " ".join(f"{_fmt(r['estimates'][e][0]):>16s}" for e in result)
        print(f"{r['policy']:24s} {r['truth']:7.2f} {r['true_mortality_90d']:7.3f} {cells}")
    print()
    for est in ("fqe", "wdr"):
        sens = result[est].get("sensitivity")
        if not sens:
            continue
        print(f"\n{est.upper()} under unobserved confounding ({sens['model']} marginal "
              "sensitivity model): share of evaluable policies whose bounds contain the truth, "
              "by Lambda")  # fmt: skip
        print("  " + "  ".join(f"{lam}: {share:.2f}" for lam, share in
                               sens["coverage_by_lambda"].items()))  # fmt: skip
        for name, lam in sens["lambda_to_cover"].items():
            print(f"  {name:24s} Lambda to contain the truth: {'> grid' if lam is None else lam}")
    for est in ("fqe", "wdr"):
        by = result[est].get("error_by_intensity")
        if by:
            print(f"{est.upper()}: Spearman of estimate minus truth with the policies' mean bin "
                  "(the truth's own in brackets): " + ", ".join(
                      f"{k} {_fmt(v['error'])} ({_fmt(v['truth'])})" for k, v in by.items()))  # fmt: skip
    print()
    for est, doc in result.items():
        print(json.dumps({"world_seed": args.world_seed, "estimator": est, **doc}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"world_seed": args.world_seed,
                                        "synth_overrides": _overrides(args.synth_set),
                                        "state_variant": args.state_variant, "rows": rows,
                                        "interfaces": interfaces,
                                        "estimators": result,
                                        "estimators_by_interface": by_interface,
                                        "returns": _listed(returns[interfaces[0]]),
                                        "returns_by_interface": {
                                            i: _listed(r) for i, r in returns.items()}},
                                       indent=2) + "\n")  # fmt: skip


def panel_world(root: Path, world_seed: int, stays: int, train_steps: int,
                state_variant: str = "card", synth_overrides: dict | None = None):  # fmt: skip
    """The panel's world, build, trained runs and policy list (deterministic on CPU):
    ``(workspace, replay, {name: run}, [(name, spec, kind)])``."""
    from sepsisrl.dataset.builder import build
    from sepsisrl.dataset.config import load_build_config
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.trainer import train
    from sepsisrl.synth.config import load_synth_config
    from sepsisrl.synth.world import generate_world

    cfg = load_synth_config(overrides={"charting.density": 0.0, **(synth_overrides or {})})
    generate_world(root / "raw", stays, seed=world_seed, cfg=cfg)
    build(root / "raw", root / "ws", load_build_config(overrides={"state.variant": state_variant}))
    ws = root / "ws"
    replay = ws / "replay" / "sofa_shaped"
    trained = {  # (preset, overrides)
        "bc": (None, {"algo": "bc"}),
        "cql": (None, {"algo": "cql"}),
        "iql_conservative_safe": ("iql_sofa_shaped_conservative_safe", {}),
        "iql_baseline": ("iql_baseline", {}),
    }
    runs = {}
    for name, (preset, over) in trained.items():
        tcfg = load_train_config(
            preset=preset, overrides={**over, "steps": train_steps, "seed": 42}
        )
        runs[name] = train(replay, tcfg, root / "runs" / name).run_dir
    return ws, replay, runs, panel_policies(runs)


def panel_policies(runs: dict[str, Path]) -> list[tuple[str, object, str]]:
    """The panel's ``[(name, spec, kind)]`` given its four trained runs (``panel_world``)."""
    from sepsisrl.rl.policies import SupportEdgePolicy, TrainedPolicy, softmax_of

    # In-support policies that differ from the clinicians in truth: the least and the most
    # intense action the clinicians plausibly take (BC probability >= 0.05). They give the
    # panel evaluable policies with a spread of true values, so that a rank correlation among
    # evaluable policies measures the estimator, not the truth's noise.
    bc_prob = softmax_of(TrainedPolicy(runs["bc"]))
    edges = {
        f"support_{e}": SupportEdgePolicy(bc_prob, 25, e, SUPPORT_THRESHOLD, f"support_{e}")
        for e in ("least", "most")
    }
    specs = ["clinician", "no_treatment", "random", *[f"constant:{k}" for k in CONSTANTS],
             "rule:map_lactate"]  # fmt: skip
    panel = [(s, s, "named") for s in specs] + [(n, str(r), "run") for n, r in runs.items()]
    panel += [(n, p, "object") for n, p in edges.items()]
    return panel


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--synth-set {pair!r}: expected KEY=VALUE")
        out[key] = json.loads(value) if value[:1] in "-0123456789[{tf" else value
    return out


def _listed(returns):
    return None if returns is None else {k: v.tolist() for k, v in returns.items()}


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.2f}"


fmt_estimate = _fmt  # for the benchmarks that re-estimate a panel file's policies


def truth_fields(row: dict) -> dict:
    """A panel file row's truth, for a row of a benchmark that re-estimates its policy."""
    return {k: row[k] for k in ("truth", "truth_ci95", "true_mortality_90d")}


def panel_file_args(description: str) -> argparse.ArgumentParser:
    """The arguments of a benchmark that rebuilds a panel file's world and policies
    (``held_logging.py``, ``hourly_fqe.py``)."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--world-seed", type=int, required=True)
    ap.add_argument("--panel", type=Path, required=True, help="ope_panel.py --out file (truth)")
    ap.add_argument("--stays", type=int, default=2000)
    ap.add_argument("--train-steps", type=int, default=1000)
    return ap


if __name__ == "__main__":
    main()
