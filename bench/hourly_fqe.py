"""Evaluate at the clinicians' own decision resolution: an hourly FQE of 4-hour held policies.

Usage:  python bench/hourly_fqe.py --world-seed S --panel bench/results/ope_panel-wdr-S.json
                                   [--stays 2000] [--train-steps 1000] [--phases 4[,1]]
                                   [--latent [NAME=]COLS ...] [--history K[,K]]
                                   [--fqe-set KEY=VALUE ...] [--no-plain] [--out FILE]

Why. The simulated clinicians decide every hour on what they see; the replay bins the
treatment of a whole 4-hour window, so a logged 4-hour action partly responds to its own
window's course (docs/evaluate.md, "What limits the agreement"). A policy that holds its action
for 4 hours is then not identified from 4-hour transitions. It is identified from hourly ones:
at the hourly resolution each logged dose was chosen on what was charted before it (to within
the hour's alignment with the window), and a 4-hour held policy is a particular hourly regime -
choose at the review, then keep the dose. This benchmark measures whether evaluating that
regime on hourly transitions removes the error the 4-hour FQE shows against the truth.

How. The panel's world and policies are rebuilt exactly as ``bench/ope_panel.py`` builds them
(deterministic on CPU). For every episode the build's own state function (frozen train
statistics; ``dataset/state.py``) runs on four grids shifted by 0, 1, 2 and 3 hours, which gives
the 4-hour state definition at every hour of the episode; the phase-0 states are the replay's
states (checked to the last bit). The hourly action is the treatment of [t, t + 1 h) in the
replay's own bins (the fluid volume at the hour's pace over 4 hours). Then the project's FQE
(``ope/fqe.py``, the evaluation's defaults) runs on the hourly chain with the phase of the hour
(0-3) as three indicator features:

  Q(s, a, j) = E[ r + c * V(s', j + 1) ]      V(s', j + 1) = Q(s', a, j + 1)      (j < 3)
                                              V(s', 0)     = sum_a' pi(a'|s') Q(s', a', 0)

with c = 1 inside the window and gamma at the review, so the discounting is the 4-hour
replay's. For the clinicians (who are the logged behaviour) the next hour's value is that of
the logged next hourly action (on-policy). The estimate is the mean over the test episodes of
sum_a pi(a|s0) Q(s0, a, 0) (the clinicians: Q at the logged first action), with the
evaluation's patient-and-ensemble bootstrap CI; it is compared with the panel file's truth
(same world, same policies) and with the panel's own 4-hour FQE.

The confounding check (``--latent``). The estimate's error on large worlds follows the
policies' treatment intensity (docs/evaluate.md, items 9, 10 and 17), the signature of the
clinicians acting on what the tables do not show. With ``--latent COLS`` the same FQE runs
again with columns of the world's hourly truth sidecar (latent physiology the clinicians
perceive or that drives the outcome, at the last simulated hour that ended at or before the
chain hour, standardised on train) added to the Q-function's input - never to the evaluated
policy's, which still acts on the 62 features. If the error is confounding by those variables,
this oracle state removes it; if it stays, the cause is elsewhere (the function class, the
extrapolation of item 11). Only a simulator can run this check: the columns are not data.
``--phases 4,1`` runs it on the hourly chain and on the replay's 4-hour chain.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

# bench/ is the script's folder: the panel's own world, policies and arguments
from held_logging import fqe_variants
from ope_panel import fmt_estimate as _fmt
from ope_panel import panel_file_args, panel_world, truth_fields

PHASES = 4
#: The latent variables the simulated clinicians act on or that drive the outcome (the world's
#: hourly truth sidecar, ``synth/tables.py``), for ``--latent confounders``.
CONFOUNDERS = (
    "map", "lactate", "volume", "balance_l", "urine_ml", "infection", "tone_loss",
    "perfusion", "kidney", "lung", "liver", "brain", "organ_score", "hazard",
)  # fmt: skip


def main() -> None:
    ap = panel_file_args(__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--phases",
        default=str(PHASES),
        help="hours per window in the chain, comma-separated (1: the 4-hour chain; '4,1': both)",
    )
    ap.add_argument(
        "--latent",
        action="append",
        default=[],
        metavar="[NAME=]COLS",
        help="comma-separated columns of the world's hourly truth sidecar (or 'confounders': "
        f"{','.join(CONFOUNDERS)}) added to the FQE's input, never the policy's: one more "
        "estimate per chain, 'fqe_hourly_NAME' (NAME 'latent' if not given); repeatable",
    )
    ap.add_argument(
        "--history",
        default="",
        metavar="K[,K]",
        help="also estimate with the states of the K previous 4-hour windows (what the tables "
        "did show) added to the FQE's input: 'fqe_hourly_historyK'; a remedy the real data "
        "allows, beside the oracle of --latent",
    )
    add_fqe_set(ap, "e.g. model=mlp (the function-class check)")
    ap.add_argument(
        "--no-plain",
        action="store_true",
        help="skip the estimate without latent columns (the hourly FQE of docs/evaluate.md)",
    )
    ap.add_argument(
        "--policies",
        default="clinician,bc,cql,iql_conservative_safe,iql_baseline,support_least,support_most",
        help="the panel's evaluable policies",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--rescore",
        type=Path,
        default=None,
        metavar="FILE",
        help="re-score an earlier --out FILE against --panel (adds the error's correlation "
        "with treatment intensity to files written before it was recorded) and rewrite it",
    )
    args = ap.parse_args()
    if args.rescore is not None:
        return rescore(args.rescore, args.panel)
    import torch
    from threadpoolctl import threadpool_limits

    from sepsisrl.truth.world import TruthContext

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, replay, _, panel = panel_world(root, args.world_seed, args.stays, args.train_steps)
        ctx = TruthContext.load(ws)
        print(f"world {args.world_seed}: built and trained at "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        latent_sets = dict(_latent_set(v) for v in args.latent)
        fqe_cfg = fqe_set_config(args.fqe_set)
        estimates: dict[str, dict] = {}
        parities = {}
        for phases in [int(x) for x in args.phases.split(",")]:
            chain = hourly_chain(ws, replay, ctx, root / f"hourly{phases}", phases)
            parities[phases] = chain["parity"]
            sidecar = root / "raw_truth" / "hourly.parquet"
            extras = {} if args.no_plain else {"plain": None}
            extras |= {k: latent_at(sidecar, chain, cols) for k, cols in latent_sets.items()}
            for k in [int(x) for x in args.history.split(",") if x]:
                extras[f"history{k}"] = history_of(chain, k)
            label = {PHASES: "fqe_hourly", 1: "fqe_4h"}.get(phases, f"fqe_{phases}phases")
            found = evaluate_chain(chain, panel, args.policies, ctx, extras, fqe_cfg)
            for name, est in found.items():
                for variant, value in est.items():
                    key = label if variant == "plain" else f"{label}_{variant}"
                    estimates.setdefault(name, {})[key] = value
    # the truth: the panel file of the same world (it may still be being written by
    # bench/ope_panel.py, started alongside: wait for it)
    waited = 0
    while not args.panel.exists() and waited < 3600:
        time.sleep(30)
        waited += 30
    panel_doc = json.loads(args.panel.read_text())
    if panel_doc["world_seed"] != args.world_seed:
        raise SystemExit(f"{args.panel} is the panel of world {panel_doc['world_seed']}")
    truth = {r["policy"]: r for r in panel_doc["rows"]}
    rows = []
    names = []
    for name, by_est in estimates.items():
        ref = truth[name]
        names = list(by_est)
        rows.append({
            "policy": name,
            **truth_fields(ref),
            "intensity": ref.get("intensity"),
            "estimates": {**{k: v["ci"] for k, v in by_est.items()},
                          "fqe": ref["estimates"]["fqe"], "wdr": ref["estimates"]["wdr"]},
            "fit": {k: v["fit"] for k, v in by_est.items()},
            "overlap": next(iter(by_est.values()))["overlap"],
            "seconds": {k: v["seconds"] for k, v in by_est.items()},
        })  # fmt: skip
        chained = "  ".join(f"{k} {v['ci'][0]:6.2f}" for k, v in by_est.items())
        print(
            f"  {name:24s} truth {ref['truth']:6.2f}  {chained}  4-hour "
            f"FQE {_fmt(ref['estimates']['fqe'][0])}  WDR {_fmt(ref['estimates']['wdr'][0])}"
        )
    result = score(rows, panel_doc, [*names, "fqe", "wdr"])
    print(f"\nhourly FQE, world seed {args.world_seed} ({time.perf_counter() - started:.0f} s)")
    for est, doc in result.items():
        print(json.dumps({"world_seed": args.world_seed, "estimator": est, **doc}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"world_seed": args.world_seed, "parity": parities,
                                        "latent": latent_sets, "rows": rows,
                                        "estimators": result}, indent=2) + "\n")  # fmt: skip


def add_fqe_set(ap, example: str) -> None:
    """``--fqe-set KEY=VALUE`` (repeatable): overrides of the evaluation's ``fqe`` section."""
    ap.add_argument(
        "--fqe-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"an override of configs/evaluate.yaml's fqe section for every estimate here, "
        f"{example}; repeatable",
    )


def fqe_set_config(values: list[str]):
    """The ``FQEConfig`` of ``--fqe-set`` values (a misspelt or ill-typed key fails here)."""
    from sepsisrl.config import validate_dataclass
    from sepsisrl.ope.fqe import FQEConfig

    return validate_dataclass(FQEConfig, fqe_variants([f"x:{','.join(values)}"])["x"], "--fqe-set")


def score(rows: list[dict], panel_doc: dict, estimators: list[str]) -> dict:
    """Each estimator against the panel's truth (``truth.compare``, with the panel's paired
    per-episode true returns for the truth's own noise)."""
    from sepsisrl.truth.compare import compare

    saved = panel_doc.get("returns")
    returns = None if saved is None else {k: np.asarray(v) for k, v in saved.items()}
    return compare(rows, returns, estimators=estimators)


def rescore(path: Path, panel: Path) -> None:
    """``--rescore``: the rows of an earlier output, their intensity from the panel file."""
    doc, panel_doc = json.loads(path.read_text()), json.loads(panel.read_text())
    if panel_doc["world_seed"] != doc["world_seed"]:
        raise SystemExit(f"{panel} is the panel of world {panel_doc['world_seed']}, {path} "
                         f"of world {doc['world_seed']}")  # fmt: skip
    intensity = {r["policy"]: r.get("intensity") for r in panel_doc["rows"]}
    for row in doc["rows"]:
        row["intensity"] = intensity[row["policy"]]
    doc["estimators"] = score(doc["rows"], panel_doc, list(doc["rows"][0]["estimates"]))
    for est, d in doc["estimators"].items():
        print(json.dumps({"world_seed": doc["world_seed"], "estimator": est, **d}))
    path.write_text(json.dumps(doc, indent=2) + "\n")


def evaluate_chain(
    chain: dict, panel, policies: str, ctx, extras: dict, fqe_cfg=None
) -> dict[str, dict]:
    """Every wanted panel policy on one chain, once per entry of ``extras``: ``{name:
    {variant: est}}``, the FQE's input carrying the variant's further columns (None: none)."""
    from sepsisrl.rl.policies import TrainedPolicy

    print(f"hourly chain ({chain['phases']} per window): {chain['n']} hours of "
          f"{len(np.unique(chain['stay']))} episodes (phase-0 states equal the replay's: "
          f"{chain['parity']})", flush=True)  # fmt: skip
    same = chain["a"] == chain["logged_action_4h"]
    print(f"the hour's action is the window's logged 4-hour action in {same.mean():.1%} of "
          f"hours ({same[chain['phase'] == 0].mean():.1%} of first hours)")  # fmt: skip
    for split in ("train", "test"):
        m = chain["done"] & (chain["split"] == split)
        print(f"observed mean return, {split}: {chain['return'][m].mean():.2f} "
              f"({int(m.sum())} episodes)")  # fmt: skip
    wanted = policies.split(",")
    out: dict[str, dict] = {}
    for name, spec, kind in panel:
        if name not in wanted:
            continue
        pol = {"run": TrainedPolicy, "object": lambda p: p}[kind](spec) if kind != "named" else None
        if kind == "named" and name != "clinician":
            raise SystemExit(f"--policies: {name} (the named baselines fail the support gate)")
        for variant, add in extras.items():
            t = time.perf_counter()
            est = {**evaluate_hourly(chain, pol, ctx, add, fqe_cfg),
                   "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
            out.setdefault(name, {})[variant] = est
            held = est["overlap"]
            overlap = (
                ""
                if held is None
                else f"  logs hold its action: first hour "
                f"{held['first_hour']:.1%}, every hour {held['every_hour']:.1%}"
            )
            print(f"  {name:24s} {variant:10s} FQE {est['ci'][0]:6.2f} [{est['ci'][1]:.2f}, "
                  f"{est['ci'][2]:.2f}]  ({est['seconds']:.0f} s){overlap}", flush=True)  # fmt: skip
    return out


def history_of(chain: dict, windows: int) -> np.ndarray:
    """The states of the ``windows`` previous 4-hour windows at every chain hour (the same
    phase, ``phases`` rows back within the episode), each with an indicator of whether the
    episode reaches back that far (zeros where it does not)."""
    s, stay, phases = chain["s"], chain["stay"], chain["phases"]
    n = len(stay)
    cols = []
    for lag in range(1, windows + 1):
        back = np.arange(n) - lag * phases
        ok = back >= 0
        ok[ok] = stay[back[ok]] == stay[ok]
        prev = np.where(ok[:, None], s[np.maximum(back, 0)], 0.0)
        cols += [prev, ok[:, None].astype(np.float32)]
    return np.concatenate(cols, axis=1).astype(np.float32)


def _latent_set(value: str) -> tuple[str, list[str]]:
    """``--latent [NAME=]COLS`` -> (NAME, columns)."""
    name, sep, cols = value.rpartition("=")
    columns = list(CONFOUNDERS) if cols == "confounders" else [c for c in cols.split(",") if c]
    if not columns:
        raise SystemExit(f"--latent {value!r}: no columns")
    return (name if sep else "latent"), columns


def latent_at(sidecar: Path, chain: dict, columns: list[str]) -> np.ndarray:
    """The world's latent truth at each chain hour, standardised on the train rows: for the
    hour starting at t, the sidecar row of the last simulated hour that ended at or before t
    (its latent state is recorded at the hour's end, so nothing after t is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tab = pq.read_table(sidecar, columns=["stay_id", "hour_start", *columns])
    stay = tab["stay_id"].to_numpy().astype(np.int64)
    end_s = tab["hour_start"].cast(pa.timestamp("s")).cast(pa.int64()).to_numpy() + 3600
    order = np.lexsort((end_s, stay))
    big = np.int64(10**11)
    key = stay[order] * big + end_s[order]
    want = chain["stay"].astype(np.int64) * big + chain["t_us"] // 1_000_000
    pos = np.searchsorted(key, want, side="right") - 1
    ok = (pos >= 0) & (stay[order][np.maximum(pos, 0)] == chain["stay"])
    if not ok.all():
        raise SystemExit(f"{sidecar}: {int((~ok).sum())} chain hours have no earlier sidecar hour")
    x = np.column_stack([tab[c].to_numpy().astype(np.float64)[order][pos] for c in columns])
    train = chain["split"] == "train"
    mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
    return ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def hourly_chain(ws: Path, replay: Path, ctx, workdir: Path, phases: int = PHASES) -> dict:
    """Every episode hour by hour: the 4-hour state definition at each hour (four shifted
    grids through the build's state function, frozen statistics), the hour's action in the
    replay's bins, and the episode's terminal evaluation reward and split. ``phases=1``: the
    replay's own 4-hour chain through the same code (the check of the procedure)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sepsisrl.dataset.actions import cumulative_before
    from sepsisrl.dataset.ingest import connect, fetch_arrow
    from sepsisrl.dataset.sqlfiles import parquet_view, render
    from sepsisrl.dataset.state import compute_states, flag_matrix, model_input
    from sepsisrl.truth.online import _episodes

    cfg, stats = ctx.build_cfg, ctx.stats
    hours = cfg.episodes.step_hours
    us_hour = 3_600_000_000
    parts = []
    for split in ("train", "validation", "test"):
        tab = pq.read_table(replay / f"replay_{split}.parquet")
        parts.append(tab.append_column("split", pa.array([split] * tab.num_rows)))
    rep = pa.concat_tables(parts).sort_by([("stay_id", "ascending"), ("step", "ascending")])
    names = ctx.feature_names
    steps = pq.read_table(ws / "episodes" / "steps.parquet").sort_by(
        [("stay_id", "ascending"), ("step", "ascending")]
    )
    stay_r, step_r = rep["stay_id"].to_numpy(), rep["step"].to_numpy().astype(np.int64)
    key = stay_r * 1000 + step_r
    sk = steps["stay_id"].to_numpy() * 1000 + steps["step"].to_numpy().astype(np.int64)
    steps = steps.filter(pa.array(np.isin(sk, key)))
    if steps.num_rows != len(key):
        raise SystemExit("the replay's steps are not the episodes' steps")
    tau = steps["tau"].cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
    con = connect(cfg, workdir)
    for view in ("measurements", "urine", "infusions"):
        parquet_view(con, view, ws / "measurements" / f"{view}.parquet")
    static = {
        "age": pq.read_table(ws / "cohort" / "cohort.parquet",
                             columns=["stay_id", "age", "onset_time", "intime"]),
        "weights": pq.read_table(ws / "measurements" / "weights.parquet"),
    }  # fmt: skip
    n = len(key)
    states = np.zeros((phases, n, len(names)), dtype=np.float32)
    for j in range(phases):
        grid = pa.table({
            "stay_id": stay_r, "step": step_r.astype(np.int16),
            "tau": pa.array(tau + j * us_hour, pa.timestamp("us")),
        })  # fmt: skip
        con.register("steps", grid)
        con.register("episodes", _episodes(grid))
        treat = fetch_arrow(
            con,
            "SELECT * FROM ("
            + render("step_treatment", step=hours, vasopressors=sorted(cfg.vasopressors))
            + ") ORDER BY stay_id, step",
        )
        vaso, fluid = treat["vaso_ne_rate"].to_numpy(), treat["fluid_ml"].to_numpy()
        cumulative = pa.table({
            "stay_id": treat["stay_id"].to_numpy(), "step": treat["step"].to_numpy(),
            "cum_iv_fluid_ml_before": cumulative_before(stay_r, fluid),
            "cum_vaso_dose_before": cumulative_before(stay_r, vaso * hours),
            "vaso_bin": stats.vaso_bins.transform(vaso),
            "fluid_bin": stats.fluid_bins.transform(fluid),
        })  # fmt: skip
        st = compute_states(con, grid, static, cumulative, cfg, frozen=stats.prep)
        states[j] = model_input(st.prep, st.matrix(), flag_matrix(st, cfg))
        con.unregister("steps")
        con.unregister("episodes")
    replay_states = np.column_stack([rep[f"s_{nm}"].to_numpy() for nm in names])
    parity = bool(np.array_equal(states[0], replay_states.astype(np.float32)))
    # the hourly doses: [tau + j h, tau + (j + 1) h) in the replay's bins
    hour_grid = pa.table({
        "stay_id": np.repeat(stay_r, phases),
        "step": (np.repeat(step_r, phases) * phases + np.tile(np.arange(phases), n)).astype(
            np.int32),
        "tau": pa.array(np.repeat(tau, phases) + np.tile(np.arange(phases), n) * us_hour,
                        pa.timestamp("us")),
    })  # fmt: skip
    con.register("steps", hour_grid)
    treat = fetch_arrow(
        con,
        "SELECT * FROM ("
        + render("step_treatment", step=hours // phases, vasopressors=sorted(cfg.vasopressors))
        + ") ORDER BY stay_id, step",
    )
    con.close()
    vb = stats.vaso_bins.transform(treat["vaso_ne_rate"].to_numpy())
    fb = stats.fluid_bins.transform(treat["fluid_ml"].to_numpy() * phases)
    action = (stats.n_fluid_bins * vb + fb).astype(np.int64)  # (n * PHASES,) hour order
    # hour h = 4 k + j of each episode, in episode order
    s_hour = states.transpose(1, 0, 2).reshape(n * phases, -1)
    phase = np.tile(np.arange(phases), n)
    stay_h = np.repeat(stay_r, phases)
    last = np.ones(len(stay_h), dtype=bool)
    last[:-1] = stay_h[1:] != stay_h[:-1]
    first = np.ones(len(stay_h), dtype=bool)
    first[1:] = stay_h[1:] != stay_h[:-1]
    terminal = np.repeat(rep["reward_eval"].to_numpy(), phases) * last  # the last step's reward
    return {
        "n": len(stay_h),
        "stay": stay_h,
        "subject": np.repeat(rep["subject_id"].to_numpy(), phases),
        "split": np.repeat(np.asarray(rep["split"].to_pylist()), phases),
        "s": s_hour,
        "phase": phase,
        "a": action,
        "r": terminal.astype(np.float64),
        "done": last,
        "first": first,
        "t_us": np.repeat(tau, phases)
        + np.tile(np.arange(phases), n) * (us_hour * hours // phases),
        "return": _discounted(
            terminal,
            last,
            stay_h,
            hours=phases,
            gamma=float(json.loads((replay / "meta.json").read_text())["gamma"]),
        ),
        "logged_action_4h": np.repeat(rep["action"].to_numpy().astype(np.int64), phases),
        "phases": phases,
        "gamma": float(json.loads((replay / "meta.json").read_text())["gamma"]),
        "parity": parity,
    }


def evaluate_hourly(
    chain: dict, policy, ctx, extra: np.ndarray | None = None, fqe_cfg=None
) -> dict:
    """The hourly FQE of ``policy`` held for 4 hours (None: the clinicians, on-policy);
    ``extra``: further columns of the FQE's input (never the policy's)."""
    import torch

    from sepsisrl.ope.evaluate import EvalConfig
    from sepsisrl.ope.fqe import FQE, return_bounds
    from sepsisrl.ope.importance import ensemble_mean_ci

    cfg = EvalConfig() if fqe_cfg is None else EvalConfig(fqe=fqe_cfg)
    s, a, phase, gamma = chain["s"], chain["a"], chain["phase"], chain["gamma"]
    A = 25
    phases = chain["phases"]
    aug = np.concatenate([s, np.eye(phases, dtype=np.float32)[phase][:, 1:]], axis=1)
    if extra is not None:
        aug = np.concatenate([aug, extra], axis=1)
    n = len(a)
    nxt = np.minimum(np.arange(n) + 1, n - 1)
    done = chain["done"]
    # pi at each next hour: the held action inside the window, the policy at the review
    onehot = np.eye(A)[a]
    if policy is None:
        pi_next = np.eye(A)[a[nxt]]
    else:
        review = phase[nxt] == 0
        pi_review = policy.action_probabilities(s[nxt][review])
        pi_next = onehot.copy()
        pi_next[review] = pi_review
    cont = np.where(done, 0.0, np.where(phase == phases - 1, gamma, 1.0))
    # pi's probability of each hour's logged action (fqe.penalty_rows: policy): at a review,
    # pi's own; inside the window, whether the hour keeps the previous hour's action
    if policy is None or cfg.fqe.penalty_rows != "policy":
        pi_logged = np.ones(n)
    else:
        prev = np.maximum(np.arange(n) - 1, 0)
        pi_logged = (a == a[prev]).astype(np.float64)
        at = np.flatnonzero(phase == 0)
        pi_logged[at] = policy.action_probabilities(s[at])[np.arange(len(at)), a[at]]
    train = chain["split"] == "train"
    ti = np.flatnonzero(train)
    episodes_len = np.bincount(np.unique(chain["stay"][ti], return_inverse=True)[1])
    longest = int(episodes_len.max())
    lo, hi = return_bounds(chain["r"][ti], done[ti], gamma, longest // phases)
    fqe = FQE(aug.shape[1], A, gamma, cfg.fqe, bounds=(lo, hi))
    data = {
        "s": torch.from_numpy(aug[ti]),
        "a": torch.from_numpy(a[ti]),
        "r": torch.from_numpy(chain["r"][ti].astype(np.float32)),
        "s_next": torch.from_numpy(aug[nxt[ti]]),
        "done": torch.from_numpy(done[ti].astype(np.float32)),
        "pi_next": torch.from_numpy(pi_next[ti].astype(np.float32)),
        "cont": torch.from_numpy(cont[ti]),
        "pi_logged": torch.from_numpy(pi_logged[ti].astype(np.float32)),
    }
    result = fqe.fit(data, chain["subject"][ti], longest)
    init = np.flatnonzero(chain["first"] & (chain["split"] == "test"))
    s0 = torch.from_numpy(aug[init])
    pi0 = np.eye(A)[a[init]] if policy is None else policy.action_probabilities(s[init])
    q_members = fqe.q_values(s0)  # (K, n0, A)
    v_members = np.einsum("kna,na->kn", q_members, pi0)
    q_full = fqe.full_q_values(s0)  # None for the mlp model (no full fit)
    v_full = None if q_full is None else np.einsum("na,na->n", q_full, pi0)
    ci = ensemble_mean_ci(v_members, cfg.bootstrap_resamples, cfg.bootstrap_seed, point=v_full)
    return {
        "ci": [ci.estimate, ci.low, ci.high],
        "fit": {"horizon": result.horizon, "converged": result.converged,
                "bounds": [lo, hi]},
        "overlap": None if policy is None else held_overlap(chain, policy),
    }  # fmt: skip


def held_overlap(chain: dict, policy) -> dict:
    """How often the logs contain the policy's held regime, at the hourly resolution: over
    every 4-hour window, the share whose first hour is the policy's greedy action at the
    review, and the share in which the clinicians gave it in every hour of the window (the
    windows that inform Q of holding it)."""
    phases, a = chain["phases"], chain["a"]
    review = np.flatnonzero(chain["phase"] == 0)
    chosen = np.argmax(policy.action_probabilities(chain["s"][review]), axis=1)
    complete = review + phases - 1 < len(a)
    review, chosen = review[complete], chosen[complete]
    hours = np.stack([a[review + j] for j in range(phases)], axis=1)
    same = hours == chosen[:, None]
    return {"windows": len(review), "first_hour": float(same[:, 0].mean()),
            "every_hour": float(same.all(axis=1).mean())}  # fmt: skip


def _discounted(terminal, last, stay, hours: int, gamma: float) -> np.ndarray:
    """At each episode's last hour: gamma^(T - 1) times its terminal reward (T 4-hour steps),
    the return the replay's episodes had."""
    _, inverse, counts = np.unique(stay, return_inverse=True, return_counts=True)
    steps = counts[inverse] // hours
    return np.where(last, gamma ** (steps - 1) * terminal, 0.0)


if __name__ == "__main__":
    main()
