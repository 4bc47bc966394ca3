"""Is the estimators' error in the estimators or in the logged data? The OPE panel on held logs.

Usage:  python bench/held_logging.py --world-seed S --panel bench/results/ope_panel-S.json
                                     [--logs held|mixture|clinicians] [--patients 3000]
                                     [--seed 1] [--fqe NAME[:KEY=VALUE,...] ...] [--ungated]
                                     [--keep-log DIR [--latent-state]] [--policies a,b,...]
                                     [--threads 2]
                                     [--out FILE]

The simulated clinicians titrate every hour on what they see, so a logged 4-hour action partly
records what happened inside its own window. A policy that the truth harness evaluates holds
its action for the whole window. This benchmark removes exactly that difference and nothing
else: in the same world, with the same panel policies (rebuilt and retrained exactly as
``bench/ope_panel.py`` does, deterministic on CPU), it logs a fresh dataset in which every
4-hour decision is drawn from the behaviour-cloning estimate of the clinicians' action
probabilities and **held** for the window (the truth harness's semantics), with everything
else (antibiotics, ventilation, care outside the grid) left to the simulated clinicians. The
states are the build's states computed online at each decision (the harness's parity-checked
state function), the evaluation reward is the terminal +-15 of the episode's true 90-day
outcome. It then runs the project's full evaluation of every panel policy on that dataset's
test split and compares the estimates with the truth values of the panel file (same world,
same policies, same truth patients).

If the estimators agree with the truth on held logs but not on the clinicians' own logs, the
error comes from within-window titration in the data, not from the estimators.

``--logs mixture`` is the positive control: each logged patient is assigned, at random and for
the whole episode, one *component* - every panel policy except the clinicians (which defer to
the hourly titration) plus the sampled-and-held behaviour above - and is treated by it
throughout, every action held for its window. The log then holds whole runs of every panel
policy, chosen on the observed state alone: no confounding and no sequence the log lacks, so
an estimator that still misranks the panel on it is wrong for reasons of its own (function
class, partial observability of the latent state), not for want of the right data.

``--logs clinicians`` skips the held log and re-runs the evaluation of every panel policy on the
world's own replay with the current estimators (the truth of a panel policy does not depend on
the estimator, so a change to an estimator is measured in minutes, not in a full panel run).

``--fqe`` (repeatable) evaluates every policy once per FQE variant on the same log: a name and
overrides of ``configs/evaluate.yaml``'s ``fqe`` section, e.g. ``--fqe default --fqe
mlp:model=mlp`` or ``--fqe linear:basis=linear`` (the WDR, whose control variate is the FQE,
changes with it). The first variant is the one printed first and saved at the top level of
``--out``; every variant's rows and comparison are under ``variants``. ``--keep-log DIR`` saves
the held log's replay (minutes to simulate at 10,000 patients) and reuses it when DIR holds one
made with the same arguments, so that another estimator costs only its evaluations. A kept
mixture log is also what ``bench/mixture_latent.py`` reads: the same FQE with the patients'
hidden parameters in its input, and fitted on each policy's own runs alone. With
``--latent-state`` the kept log also holds the simulator's hidden dynamic state at each logged
decision (``latent_state.parquet``, beside the replay and never read by the evaluation), which
``bench/mixture_latent.py --latent dynamic`` adds to the FQE's input.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

# bench/ is the script's folder: the panel's own world, policies and arguments
from ope_panel import fmt_estimate as _fmt
from ope_panel import panel_file_args, panel_world, truth_fields


def main() -> None:
    ap = panel_file_args(__doc__)
    ap.add_argument("--patients", type=int, default=3000, help="patients of the held log")
    ap.add_argument("--seed", type=int, default=1, help="population seed of the held log")
    ap.add_argument("--logs", choices=("held", "mixture", "clinicians"), default="held")
    ap.add_argument("--fqe", action="append", default=None, metavar="NAME[:KEY=VALUE,...]",
                    help="an FQE variant (repeatable; default: the evaluation's FQE)")  # fmt: skip
    ap.add_argument("--keep-log", type=Path, default=None, metavar="DIR",
                    help="keep the held log's replay in DIR, or reuse it from there")  # fmt: skip
    ap.add_argument("--latent-state", action="store_true",
                    help="with --keep-log: also keep the simulator's hidden state at each "
                         "logged decision (latent_state.parquet; bench/mixture_latent.py "
                         "--latent dynamic)")  # fmt: skip
    ap.add_argument("--ungated", action="store_true",
                    help="compare the FQE's and the WDR's estimates before the overlap gates "
                         "(the default with --logs mixture)")  # fmt: skip
    ap.add_argument("--policies", default=None,
                    help="evaluate these panel policies only (comma-separated; the mixture log "
                         "is still made of every one)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2,
                    help="torch and BLAS threads (the panel file's: trained policies differ "
                         "in float rounding between thread counts)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.ungated = args.ungated or args.logs == "mixture"
    panel = json.loads(args.panel.read_text())
    if panel["world_seed"] != args.world_seed:
        raise SystemExit(f"{args.panel} is the panel of world {panel['world_seed']}")
    truth = {r["policy"]: r for r in panel["rows"]}

    import torch
    from threadpoolctl import threadpool_limits

    from sepsisrl.config import validate_dataclass
    from sepsisrl.ope.evaluate import EvalConfig, evaluate
    from sepsisrl.ope.fqe import FQEConfig
    from sepsisrl.rl.policies import TrainedPolicy, softmax_of
    from sepsisrl.truth.compare import compare, estimates_of
    from sepsisrl.truth.harness import population_for
    from sepsisrl.truth.policies import HeldSample
    from sepsisrl.truth.world import TruthContext

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    started = time.perf_counter()
    variants = fqe_variants(args.fqe or ["default"])
    configs = {name: EvalConfig(fqe=validate_dataclass(FQEConfig, over, f"--fqe {name}"))
               for name, over in variants.items()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, replay, runs, jobs = panel_world(root, args.world_seed, args.stays, args.train_steps)
        bc_prob = softmax_of(TrainedPolicy(runs["bc"]))
        ctx = TruthContext.load(ws)
        logged = args.logs != "clinicians"
        pop = population_for(ctx, args.patients, args.seed) if logged else None
        print(f"world {args.world_seed}: built, trained, {args.patients} patients at "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        if logged:
            held = ws / "replay" / "held_logging"
            # the thread count too: the learned components are trained with it, and their
            # runs differ in float rounding between thread counts
            made = {"world_seed": args.world_seed, "stays": args.stays, "patients":
                    args.patients, "seed": args.seed, "train_steps": args.train_steps,
                    "threads": args.threads}  # fmt: skip
            if args.logs == "mixture":
                made["logs"] = "mixture"
            if args.latent_state:
                made["latent_state"] = True
            kept = args.keep_log
            if kept is not None and (kept / "held_args.json").is_file():
                if json.loads((kept / "held_args.json").read_text()) != made:
                    raise SystemExit(f"--keep-log {kept}: a held log of other arguments")
                shutil.copytree(kept, held)  # the same log, without simulating it again
            else:
                behaviour = (HeldSample(bc_prob, args.seed, name="bc_sampled_held")
                             if args.logs == "held" else
                             mixture_behaviour(jobs, ctx, pop, bc_prob, ws, args.seed))  # fmt: skip
                log = held_log(ctx, pop, behaviour, root / "rollout", args.latent_state)
                write_replay(log, replay, held, args.seed)
                if args.logs == "mixture":
                    (held / "mixture_assignment.json").write_text(json.dumps(
                        {str(k): behaviour.components[v].name
                         for k, v in behaviour.assign.items()}) + "\n")  # fmt: skip
                if kept is not None:
                    shutil.copytree(held, kept)
                    (kept / "held_args.json").write_text(json.dumps(made) + "\n")
        else:
            held = replay
        meta = json.loads((held / "meta.json").read_text())
        print(f"{args.logs} logs: {meta['splits']} at {time.perf_counter() - started:.0f} s",
              flush=True)  # fmt: skip

        per_variant: dict[str, list] = {v: [] for v in configs}
        for (name, spec, kind), (variant, ev_cfg) in itertools.product(jobs, configs.items()):
            if name == "clinician" and logged:
                # the behaviour of a held log is not the clinicians' hourly titration
                continue
            if name not in truth:  # a panel file of some of the panel's policies (--policies)
                continue
            if args.policies and name not in args.policies.split(","):
                continue
            rows = per_variant[variant]
            t = time.perf_counter()
            folder = root / "eval" / f"{name.replace(':', '-')}-{variant}"
            doc = evaluate(spec, held, folder, kind=kind, final=True, cfg=ev_cfg)
            t_eval = time.perf_counter() - t
            ref = truth[name]
            rows.append({
                "policy": name,
                **truth_fields(ref),
                "estimates": ungated_of(doc) if args.ungated else estimates_of(doc),
                "panel_estimates": ref["estimates"],
                "ess": doc["metrics"]["ess"],
                "evaluable": doc["evaluable"],
                "support_mass": doc["metrics"]["support_mass"],
                "seconds": {"evaluate": round(t_eval, 1)},
            })  # fmt: skip
            if args.logs == "mixture":
                rows[-1]["estimates"]["runs_mc"] = runs_monte_carlo(held, name, meta["gamma"])
            est = rows[-1]["estimates"]
            if args.logs == "clinicians" and rows[-1]["support_mass"] != ref["support_mass"]:
                raise SystemExit(f"{name}: support mass {rows[-1]['support_mass']} differs from "
                                 f"the panel's {ref['support_mass']}: not the panel's policy "
                                 "(another build or training code)")  # fmt: skip
            print(f"  {name:24s} [{variant}] truth {ref['truth']:7.2f}  FQE "
                  f"{_fmt(est['fqe'][0])}  WDR {_fmt(est['wdr'][0])}  (panel file: FQE "
                  f"{_fmt(ref['estimates']['fqe'][0])})  ({t_eval:.0f} s)", flush=True)  # fmt: skip
        shutil.rmtree(root / "rollout", ignore_errors=True)
    saved = panel.get("returns")  # per-episode truth: the truth's own noise (compare.truth_noise)
    noise = None if saved is None else {k: np.asarray(v) for k, v in saved.items()}
    names = ["fqe", "wdr", "runs_mc"] if args.logs == "mixture" else None
    results = {v: compare(rows, noise, estimators=names) for v, rows in per_variant.items()}
    print(f"\n{args.logs}-logs panel, world seed {args.world_seed} "
          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    for variant, result in results.items():
        for est, doc in result.items():
            print(json.dumps({"world_seed": args.world_seed, "logs": args.logs,
                              "fqe_variant": variant, "estimator": est, **doc}))  # fmt: skip
    if args.out:
        first = next(iter(configs))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "world_seed": args.world_seed, "logs": args.logs, "ungated": args.ungated,
            "held_log": meta["splits"],
            # the panel's per-episode truth, so that panel_table.py can recompare any subset
            "returns": {k: v for k, v in (saved or {}).items() if k in truth},
            "fqe_variant": first, "rows": per_variant[first], "estimators": results[first],
            "variants": {v: {"fqe": dataclasses.asdict(configs[v].fqe), "overrides": variants[v],
                             "rows": per_variant[v], "estimators": results[v]}
                         for v in configs},
        }, indent=2) + "\n")  # fmt: skip


def runs_monte_carlo(held: Path, component: str, gamma: float) -> tuple:
    """``--logs mixture``: the mean discounted return of the log's own runs of ``component``
    (every split), with a normal 95 % CI - what the log shows of the policy without any model
    (the reference the FQE, which pools every run, should beat)."""
    import pyarrow.parquet as pq

    assign = json.loads((held / "mixture_assignment.json").read_text())
    names = (component, f"run:{component}")  # a trained run's component may carry its folder
    mine = np.array([int(k) for k, v in assign.items() if v in names])
    rets = []
    for split in ("train", "validation", "test"):
        t = pq.read_table(
            held / f"replay_{split}.parquet", columns=["stay_id", "step", "reward_eval", "done"]
        )
        t = t.filter(np.isin(t["stay_id"].to_numpy(), mine) & t["done"].to_numpy())
        steps = t["step"].to_numpy().astype(np.int64)
        # the truth's discounting: gamma^(T-1) times the terminal reward, T the episode's length
        rets.append(gamma**steps * t["reward_eval"].to_numpy())
    r = np.concatenate(rets)
    if len(r) < 2:
        return (None, None, None)
    half = 1.96 * r.std(ddof=1) / np.sqrt(len(r))
    return (float(r.mean()), float(r.mean() - half), float(r.mean() + half))


def ungated_of(doc: dict) -> dict[str, tuple]:
    """The FQE's and the WDR's estimates before the overlap gates (the other estimators'
    left out). On a mixture log the gates say little: the per-state behaviour model that they
    rest on is the mixture's marginal over components, not the probability of a logged run,
    and the FQE needs no propensity at all."""
    raw = doc["estimates_ungated"]
    return {k: (raw[k]["estimate"], raw[k]["ci_low"], raw[k]["ci_high"]) for k in ("fqe", "wdr")}


def fqe_variants(specs: list[str]) -> dict[str, dict]:
    """``NAME[:KEY=VALUE,...]`` -> {NAME: {KEY: VALUE}} (values read as YAML)."""
    import yaml

    out: dict[str, dict] = {}
    for spec in specs:
        name, _, rest = spec.partition(":")
        if not name or name in out:
            raise SystemExit(f"--fqe {spec!r}: a new, non-empty variant name is needed")
        over = {}
        for item in filter(None, re.split(r",(?=\w+=)", rest)):  # a list value keeps its commas
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"--fqe {spec!r}: {item!r} is not KEY=VALUE")
            over[key] = yaml.safe_load(value)
        out[name] = over
    return out


def mixture_behaviour(jobs, ctx, pop, bc_prob, ws: Path, seed: int):
    """``--logs mixture``: every patient of ``pop`` treated throughout by one component drawn
    at random (every panel policy but the clinicians, and the sampled-and-held behaviour)."""
    from sepsisrl.truth.policies import HeldSample, Network, world_policy

    comps = [HeldSample(bc_prob, seed, name="bc_sampled_held")]
    for name, spec, kind in jobs:
        if name == "clinician":
            continue
        if kind == "object":
            comps.append(Network(spec, name))
        else:
            comps.append(world_policy(spec if kind == "named" else None,
                                      spec if kind == "run" else None, None,
                                      ctx.feature_names, 25, seed, workspace=ws))  # fmt: skip
    stays = np.sort(pop.cohort()["stay_id"].to_numpy())
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4D4958]))
    return MixtureOfRuns(
        comps,
        dict(zip(stays.tolist(), rng.integers(0, len(comps), len(stays)).tolist(), strict=True)),
    )


class MixtureOfRuns:
    """A world policy that treats each stay with its own component for the whole episode
    (``assign``: stay id -> component index); the components decide on the same states."""

    name = "mixture_of_runs"
    needs_state = True
    wants_context = True
    context = None

    def __init__(self, components: list, assign: dict[int, int]) -> None:
        self.components = components
        self.assign = assign

    def decide(self, states, raw):
        which = np.array([self.assign[int(s)] for s in self.context.stay_id])
        out = np.empty(len(states), dtype=np.int64)
        for k in np.unique(which):
            m = which == k
            comp = self.components[k]
            sub = {name: col[m] for name, col in raw.items()}
            out[m] = np.asarray(comp.decide(states[m], sub), dtype=np.int64)
        return out


def held_log(ctx, pop, behaviour, workdir: Path, latent_state: bool = False):
    """The rollout of a held behaviour, with the online state of each decision (and, with
    ``latent_state``, the simulator's hidden state there)."""
    from sepsisrl.truth.rollout import LATENT_STATE, rollout_population

    res = rollout_population(ctx, pop, behaviour, workdir, record_states=True,
                             record_latent=LATENT_STATE if latent_state else ())  # fmt: skip
    dec = res.decisions
    subject = dict(zip(pop.cohort()["stay_id"].to_pylist(),
                       pop.cohort()["subject_id"].to_pylist(), strict=True))  # fmt: skip
    ep = res.episodes
    died = dict(zip(ep["stay_id"].to_pylist(), ep["died_90d"].to_pylist(), strict=True))
    return {"decisions": dec, "subject": subject, "died": died, "names": ctx.feature_names,
            "terminal": (ctx.terminal_survived, ctx.terminal_died)}  # fmt: skip


def write_replay(log: dict, template: Path, out: Path, seed: int) -> None:
    """A replay folder (docs/contracts.md) of the held log, split by patient 70/15/15."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dec = log["decisions"]
    stay = dec["stay_id"].to_numpy()
    keep = np.isin(stay, np.array(list(log["died"])))
    dec = dec.filter(pa.array(keep))
    stay = dec["stay_id"].to_numpy()
    done = np.ones(len(stay), dtype=bool)
    done[:-1] = stay[1:] != stay[:-1]
    died = np.array([bool(log["died"][s]) for s in stay.tolist()])
    surv, dead = log["terminal"]
    reward_eval = np.where(done, np.where(died, dead, surv), 0.0).astype(np.float32)
    subject = np.array([log["subject"][s] for s in stay.tolist()], dtype=np.int64)
    names = log["names"]
    cols = {
        "subject_id": subject,
        "stay_id": stay.astype(np.int64),
        "step": dec["step"].to_numpy().astype(np.int16),
        "action": dec["action"].to_numpy().astype(np.int16),
        "reward": reward_eval,
        "done": done,
        "reward_eval": reward_eval,
        "sofa": np.nan_to_num(dec["sofa"].to_numpy()).astype(np.int16)
        if "sofa" in names else np.zeros(len(stay), np.int16),
    }  # fmt: skip
    for n in names:
        cols[f"s_{n}"] = dec[f"norm_{n}"].to_numpy().astype(np.float32)
    tab = pa.table(cols)
    subjects = np.unique(subject)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x53504C54]))
    perm = rng.permutation(subjects)
    n_tr, n_va = int(0.7 * len(perm)), int(0.15 * len(perm))
    parts = {"train": perm[:n_tr], "validation": perm[n_tr : n_tr + n_va],
             "test": perm[n_tr + n_va :]}  # fmt: skip
    meta = json.loads((template / "meta.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    meta["splits"] = {}
    for split, subs in parts.items():
        part = tab.filter(pa.array(np.isin(subject, subs)))
        pq.write_table(part, out / f"replay_{split}.parquet")
        meta["splits"][split] = {
            "n_episodes": len(np.unique(part["stay_id"].to_numpy())),
            "n_transitions": part.num_rows,
        }
    latent = [c for c in dec.column_names if c.startswith("latent_")]
    if latent:  # beside the replay, never in it: no estimate may read it by accident
        pq.write_table(dec.select(["stay_id", "step", *latent]), out / "latent_state.parquet")
    meta["reward"] = {**meta["reward"], "variant": "held_logging_eval"}
    meta["source"] = {**meta["source"], "kind": "synthetic-held-logging"}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
