"""Does the FQE miss over-treatment's harm for want of the patient's own latent parameters?

Usage:  python bench/mixture_latent.py --world-seed S --panel bench/results/ope_panel-S.json
                                       --keep-log /tmp/mixlog-S-10000 [--patients 10000]
                                       [--seed 1] [--latent NAME=COLS ...] [--hinge]
                                       [--fqe-set KEY=VALUE ...] [--policies a,b,...]
                                       [--threads 1] [--population-cache DIR]
                                       [--out FILE]

On the mixture logs of ``bench/held_logging.py --logs mixture`` (every patient treated
throughout by one panel policy chosen at random: no confounding, every policy's own runs in
the log), the FQE of world 0 still puts the most intense constant policy close to no
treatment, where the truth and the log's own runs put it far below (docs/evaluate.md, item
19). Two function classes (the linear FQE and the neural Q) miss it alike, which points at
the state: the harm of sustained fluid and vasopressor builds up against parameters that
each simulated patient draws once and no table records (how far the patient responds to
fluid, how much positive balance the lungs tolerate, the response to vasopressors, the
cardiac reserve).

This benchmark measures that directly. It takes a kept mixture log (``--keep-log`` of
``held_logging.py``, the same arguments: the log is not simulated again), the same world and
panel policies (rebuilt exactly as ``bench/ope_panel.py`` builds them), and each logged stay's
own latent parameters from the simulated population the log was drawn from (its ``Stays``
plan). Then, for every panel policy but the clinicians, the project's FQE (the evaluation's
defaults, through the chain estimator of ``bench/hourly_fqe.py`` with one phase per 4-hour
window: the replay's own chain) runs once on the 62 features alone ("plain") and once per
``--latent NAME=COLS`` with those stay-level columns, standardised on train, added to the
Q-function's input, never to the policy's (``--latent dynamic``: the simulator's hidden
dynamic state at each decision instead - infection, vascular tone, volume, fluid balance,
lactate and organ injury - from a log kept with ``held_logging.py --latent-state``; a set may
mix both kinds, e.g. ``all=static,dynamic``); and once fitted on the policy's own runs alone
(``own_runs``: the train split's other runs left out, the same initial states), which is the
FQE without pooling what the other policies' runs show. The estimates are compared with the
panel file's truth and with the log's own runs of each policy (``runs_mc``).

If the latent columns let the FQE see the harm, the bias is partial observability that no
real table can remove; if they do not, it is the estimator's (its function class, its
penalties). Only a simulator can run this check: the columns are not data.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

# bench/ is the script's folder: the panel's world, policies, held log and chain estimator
from held_logging import runs_monte_carlo
from hourly_fqe import add_fqe_set, evaluate_hourly, fqe_set_config, score
from ope_panel import fmt_estimate as _fmt
from ope_panel import panel_file_args, panel_world, truth_fields
from sepsisrl.truth.rollout import LATENT_STATE

#: The stay-level parameters that set how a simulated patient responds to treatment
#: (``synth/population.py``); ``--latent tolerance`` adds these.
TOLERANCE = ("fluid_response", "fluid_tolerance_l", "vaso_sensitivity", "cardiac_reserve")
#: ``--latent static``: those and the infection's and the baseline's latent parameters.
STATIC = (
    *TOLERANCE, "infection_severity", "infection_growth", "antibiotic_kill", "resistant",
    "comorbidity", "map_base", "lung_damage_base",
)  # fmt: skip
#: ``--latent dynamic``: the simulator's hidden dynamic state at each decision time
#: (``truth/rollout.py`` ``LATENT_STATE``), from a log kept with ``held_logging.py
#: --latent-state``; each row gets its own decision's values, not its stay's.
DYNAMIC = LATENT_STATE
NAMED_SETS = {"tolerance": TOLERANCE, "static": STATIC, "dynamic": DYNAMIC}


def main() -> None:
    ap = panel_file_args(__doc__)
    ap.add_argument("--keep-log", type=Path, required=True, metavar="DIR",
                    help="a mixture log kept by held_logging.py --keep-log")  # fmt: skip
    ap.add_argument("--patients", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--latent",
        action="append",
        default=[],
        metavar="NAME=COLS",
        help="stay-level columns of the population's plan and decision-level columns of the "
        "hidden dynamic state (named sets may stand among COLS: 'tolerance': "
        f"{','.join(TOLERANCE)}; 'static': {','.join(STATIC)}; 'dynamic': {','.join(DYNAMIC)}, "
        "which needs a log kept with held_logging.py --latent-state) added to the FQE's input: "
        "one more estimate per set, named NAME; repeatable (default: tolerance and static)",
    )
    ap.add_argument(
        "--hinge",
        action="store_true",
        help="one more estimate, 'per_action_hinge': the continuous features' hinges at their "
        "train quartiles added to the FQE's input, so that each action's own deviation is "
        "piecewise linear in the state as the shared value is (the function-class check)",
    )
    add_fqe_set(ap, "e.g. 'ridge=[1.0e-4]'")
    ap.add_argument("--policies", default="", help="comma-separated panel policies (default all)")
    ap.add_argument("--population-cache", type=Path, default=None, metavar="DIR",
                    help="keep the simulated population (its plan) here for the next run")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    from sepsisrl.truth.harness import population_for
    from sepsisrl.truth.world import TruthContext

    fqe_cfg = fqe_set_config(args.fqe_set)
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    made = {"world_seed": args.world_seed, "stays": args.stays, "patients": args.patients,
            "seed": args.seed, "train_steps": args.train_steps, "threads": args.threads,
            "logs": "mixture"}  # fmt: skip
    kept_args = args.keep_log / "held_args.json"
    kept_made = json.loads(kept_args.read_text()) if kept_args.is_file() else None
    if kept_made is not None:
        kept_made.pop("latent_state", None)  # a log with the hidden state is the same log
    if kept_made != made:
        raise SystemExit(f"--keep-log {args.keep_log}: no mixture log of these arguments "
                         f"({made}); make it with held_logging.py --logs mixture --keep-log")  # fmt: skip
    sets = dict(_latent_set(v) for v in (args.latent or ["tolerance", "static"]))
    panel_doc = json.loads(args.panel.read_text())
    if panel_doc["world_seed"] != args.world_seed:
        raise SystemExit(f"{args.panel} is the panel of world {panel_doc['world_seed']}")
    truth = {r["policy"]: r for r in panel_doc["rows"]}
    wanted = [p for p in args.policies.split(",") if p]
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, replay, _, jobs = panel_world(root, args.world_seed, args.stays, args.train_steps)
        ctx = TruthContext.load(ws)
        pop = population_for(ctx, args.patients, args.seed, cache=args.population_cache)
        print(f"world {args.world_seed}: built, trained, {args.patients} patients at "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        held = root / "held"
        shutil.copytree(args.keep_log, held)
        chain = replay_chain(held)
        assign = json.loads((held / "mixture_assignment.json").read_text())
        stays = stay_parameters(pop)
        dynamic = dynamic_state(held, chain)
        extras = {"plain": None} | {k: latent_of(chain, stays, cols, dynamic)
                                    for k, cols in sets.items()}  # fmt: skip
        if args.hinge:
            extras["per_action_hinge"] = hinges_of(chain, held)
        for name, spec, kind in jobs:
            if name == "clinician" or (wanted and name not in wanted) or name not in truth:
                continue
            pol = policy_of(name, spec, kind, replay)
            ref = truth[name]
            est, secs = {}, {}
            for variant, add in extras.items():
                t = time.perf_counter()
                est[variant] = evaluate_hourly(chain, pol, ctx, add, fqe_cfg)["ci"]
                secs[variant] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            est["own_runs"] = evaluate_hourly(own_runs(chain, assign, name), pol, ctx, None,
                                              fqe_cfg)["ci"]  # fmt: skip
            secs["own_runs"] = round(time.perf_counter() - t, 1)
            est["runs_mc"] = runs_monte_carlo(held, name, chain["gamma"])
            rows.append({"policy": name, **truth_fields(ref), "intensity": ref.get("intensity"),
                         "estimates": est, "seconds": secs})  # fmt: skip
            line = "  ".join(f"{k} {_fmt(v[0])}" for k, v in est.items())
            print(f"  {name:24s} truth {ref['truth']:6.2f}  {line}", flush=True)
    result = score(rows, panel_doc, [*extras, "own_runs", "runs_mc"])
    print(f"\nmixture log, latent FQE, world seed {args.world_seed} "
          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    for est, doc in result.items():
        print(json.dumps({"world_seed": args.world_seed, "estimator": est, **doc}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "world_seed": args.world_seed, "logs": "mixture", "latent": sets,
            "fqe_set": args.fqe_set,
            "held_log": json.loads((args.keep_log / "meta.json").read_text())["splits"],
            "returns": {k: v for k, v in (panel_doc.get("returns") or {}).items() if k in truth},
            "rows": rows, "estimators": result,
        }, indent=2) + "\n")  # fmt: skip


def _latent_set(value: str) -> tuple[str, list[str]]:
    """``--latent NAME=COLS`` (or a named set alone) -> (NAME, columns)."""
    name, sep, cols = value.rpartition("=")
    if not sep:
        name, cols = value, value
    columns = [c for tok in cols.split(",") if tok for c in NAMED_SETS.get(tok, (tok,))]
    if not columns:
        raise SystemExit(f"--latent {value!r}: no columns")
    return name, columns


def replay_chain(replay: Path) -> dict:
    """A replay folder's three splits as the chain ``hourly_fqe.evaluate_hourly`` reads, with
    one phase per 4-hour window (so it is the replay's own 4-hour FQE)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = json.loads((replay / "meta.json").read_text())
    names = meta["feature_names"]
    parts = []
    for split in ("train", "validation", "test"):
        t = pq.read_table(replay / f"replay_{split}.parquet")
        parts.append(t.append_column("split", pa.array([split] * t.num_rows, pa.string())))
    tab = pa.concat_tables(parts)
    stay = tab["stay_id"].to_numpy()
    first = np.ones(len(stay), dtype=bool)
    first[1:] = stay[1:] != stay[:-1]
    done = tab["done"].to_numpy()
    if not np.array_equal(np.flatnonzero(first)[1:], np.flatnonzero(done)[:-1] + 1):
        raise SystemExit(f"{replay}: a split's rows are not grouped by episode")
    return {
        "s": np.column_stack([tab[f"s_{n}"].to_numpy() for n in names]).astype(np.float32),
        "a": tab["action"].to_numpy().astype(np.int64),
        "r": tab["reward_eval"].to_numpy().astype(np.float64),
        "done": done.astype(bool),
        "first": first,
        "stay": stay.astype(np.int64),
        "step": tab["step"].to_numpy().astype(np.int64),
        "subject": tab["subject_id"].to_numpy().astype(np.int64),
        "split": np.asarray(tab["split"].to_pylist()),
        "phase": np.zeros(len(stay), dtype=np.int64),
        "phases": 1,
        "gamma": float(meta["gamma"]),
    }


def own_runs(chain: dict, assign: dict[str, str], component: str) -> dict:
    """The chain with only ``component``'s own runs left in train (validation and test whole,
    so the estimate is over the same initial states): the FQE without pooling the other
    components' data."""
    names = (component, f"run:{component}")
    mine = np.array([assign[str(s)] in names for s in chain["stay"].tolist()])
    keep = mine | (chain["split"] != "train")
    return {k: v[keep] if isinstance(v, np.ndarray) else v for k, v in chain.items()}


def hinges_of(chain: dict, replay: Path) -> np.ndarray:
    """max(0, s_j - t) of every continuous feature j (not a missingness flag) at its train
    quartiles t, standardised on train: (n, 3 x continuous features)."""
    names = json.loads((replay / "meta.json").read_text())["feature_names"]
    s, train = chain["s"], chain["split"] == "train"
    cols = []
    for j, name in enumerate(names):
        if name.endswith("_missing"):
            continue
        for t in np.quantile(s[train, j], [0.25, 0.5, 0.75]):
            cols.append(np.maximum(0.0, s[:, j] - t))
    x = np.stack(cols, axis=1).astype(np.float64)
    mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
    return ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def stay_parameters(pop) -> dict[str, np.ndarray]:
    """Every stay of the population's plan: ``stay_id`` and its latent parameters."""
    from dataclasses import fields

    from sepsisrl.synth.population import Stays

    cols: dict[str, list] = {f.name: [] for f in fields(Stays)}
    for c, _, _ in pop.chunks():
        for stays in pop.plan(c):
            for k in cols:
                cols[k].append(np.asarray(getattr(stays, k)))
    return {k: np.concatenate(v) for k, v in cols.items()}


def dynamic_state(held: Path, chain: dict) -> dict[str, np.ndarray] | None:
    """The hidden dynamic state at each chain row (``latent_state.parquet`` of a log kept with
    ``held_logging.py --latent-state``, joined by stay and step), or None without that file."""
    import pyarrow.parquet as pq

    path = held / "latent_state.parquet"
    if not path.is_file():
        return None
    tab = pq.read_table(path)
    key = tab["stay_id"].to_numpy().astype(np.int64) * 10_000 + tab["step"].to_numpy()
    want = chain["stay"] * 10_000 + chain["step"]
    order = np.argsort(key)
    pos = np.minimum(np.searchsorted(key[order], want), len(order) - 1)
    if not np.array_equal(key[order][pos], want):
        raise SystemExit(f"{path}: {int((key[order][pos] != want).sum())} logged decisions "
                         "have no hidden state: not the state of this log")  # fmt: skip
    return {c[len("latent_"):]: tab[c].to_numpy()[order][pos]
            for c in tab.column_names if c.startswith("latent_")}  # fmt: skip


def latent_of(
    chain: dict,
    stays: dict[str, np.ndarray],
    columns: list[str],
    dynamic: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Each chain row's latent columns, standardised on the train rows: a stay-level parameter
    of the population's plan (the row's stay's), or a column of the hidden dynamic state at the
    row's own decision (``dynamic``, :func:`dynamic_state`)."""
    dynamic = dynamic or {}
    unknown = [c for c in columns if c not in stays and c not in dynamic]
    if unknown:
        hint = ("" if dynamic else "; the dynamic state needs a log kept with "
                "held_logging.py --latent-state")  # fmt: skip
        raise SystemExit(f"--latent: {unknown} are neither stay-level parameters "
                         f"(synth/population.py Stays: {sorted(stays)}) nor columns of the "
                         f"hidden dynamic state ({sorted(dynamic)}){hint}")  # fmt: skip
    order = np.argsort(stays["stay_id"])
    pos = np.searchsorted(stays["stay_id"][order], chain["stay"])
    pos = np.minimum(pos, len(order) - 1)
    found = stays["stay_id"][order][pos] == chain["stay"]
    if not found.all():
        raise SystemExit(f"{int((~found).sum())} logged rows have no stay in the population's "
                         "plan: the log was drawn from another population")  # fmt: skip
    x = np.column_stack([
        (stays[c][order][pos] if c in stays else dynamic[c]).astype(np.float64)
        for c in columns
    ])  # fmt: skip
    train = chain["split"] == "train"
    mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
    return ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def policy_of(name: str, spec, kind: str, replay: Path):
    """The panel policy as an object with ``action_probabilities`` (the evaluation's own)."""
    from sepsisrl.ope.evaluate import make_policy
    from sepsisrl.rl.data import load_meta
    from sepsisrl.rl.policies import TrainedPolicy

    if kind == "run":
        return TrainedPolicy(spec)
    if kind == "object":
        return spec
    return make_policy(spec, "named", load_meta(replay), None)


if __name__ == "__main__":
    main()
