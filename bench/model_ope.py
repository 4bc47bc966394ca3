"""Does an estimator that models where a policy goes rank the panel's policies correctly?

Usage:  python bench/model_ope.py --world-seed S --panel bench/results/ope_panel-S.json
                                  [--held-log DIR] [--members 5] [--replicas 8] [--seed 0]
                                  [--root DIR] [--out FILE]

The FQE and the WDR value a policy only at the states the logs reach (docs/evaluate.md, items
11-12): on logs that never follow sustained over-treatment they rank the over-treating panel
policy first. This benchmark tries the remedy those items name - a model-based estimate that
rolls each policy out in a learned model of the logged dynamics, so that the effect of each
action, learned where the logs hold it, compounds along the policy's own sequence of
decisions:

- an ensemble of ``--members`` neural models, each fitted on a patient bootstrap of the train
  split (early stopping on validation): the next state given (state, action) - a Gaussian
  for every continuous feature's change, a Bernoulli for every missingness flag - the chance
  that the episode ends after the decision, and the chance that a patient whose episode ends
  there dies (the terminal reward's two values);
- every test episode's first state is rolled out ``--replicas`` times in every member under
  the policy's greedy action, states kept within the train range, with the episode's
  survival mass carried exactly (no sampled ends) and the discounted terminal reward
  accumulated, up to the longest train episode (where the episode ends);
- the estimate is the mean over members and starts; its 95 % CI is a patient bootstrap of
  the starts with a member drawn per resample (the model's own uncertainty enters it).

The logs are the held log of ``bench/held_logging.py --keep-log DIR`` (``--held-log DIR``) or,
without it, the panel world's own replay (the clinicians' logs). The panel's policies are
rebuilt exactly as ``bench/ope_panel.py`` does (``--root DIR`` keeps them for the next run).
Printed: each policy's estimate beside its truth and the panel file's FQE (fitted on the
clinicians' logs), the logs' own policy rolled out in the model beside its logged return (a
calibration check), and one JSON line of agreement (Spearman, MAE, coverage, ranked first)
for the model-based estimate and for the panel file's FQE.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ope_panel import fmt_estimate as _fmt
from ope_panel import panel_file_args, panel_policies, panel_world, truth_fields


def main() -> None:
    ap = panel_file_args(__doc__)
    ap.add_argument("--held-log", type=Path, default=None, help="held_logging.py --keep-log DIR")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=None, help="keep (or reuse) the panel's runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    panel = json.loads(args.panel.read_text())
    if panel["world_seed"] != args.world_seed:
        raise SystemExit(f"{args.panel} is the panel of world {panel['world_seed']}")
    truth = {r["policy"]: r for r in panel["rows"]}

    from sepsisrl.contracts import ReplayMeta
    from sepsisrl.ope.behaviour import BehaviourConfig, BehaviourModel
    from sepsisrl.ope.evaluate import EVAL_REWARD, make_policy
    from sepsisrl.rl.data import load_meta, load_split
    from sepsisrl.truth.compare import compare

    torch.set_num_threads(2)
    started = time.perf_counter()
    root = args.root or Path(f"/tmp/model_ope-{args.world_seed}")
    replay, jobs = _panel(root, args)
    logs = args.held_log or replay
    meta = load_meta(logs)
    splits = {s: load_split(logs, s, EVAL_REWARD, meta) for s in ("train", "validation", "test")}
    reward = ReplayMeta.load(Path(logs) / "meta.json").reward
    terminal = (float(reward.terminal_survived), float(reward.terminal_died))
    gamma = float(meta.gamma)
    print(f"world {args.world_seed}: policies ready, logs {logs} at "
          f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip

    flags = np.array([n.endswith("_missing") for n in meta.feature_names])
    fit = fit_ensemble(splits["train"], splits["validation"], flags, terminal, args)
    print(f"models fitted at {time.perf_counter() - started:.0f} s: "
          f"{json.dumps(fit['report'])}", flush=True)  # fmt: skip
    behaviour = None
    rows = []
    test = splits["test"]
    starts = test.states[torch.as_tensor(test.initial_mask())]
    for name, spec, kind in jobs:
        if name not in truth or (name == "clinician" and args.held_log is not None):
            continue  # the held log's behaviour is the sampled BC policy, not the clinicians
        if kind == "named" and behaviour is None:
            tr, va = splits["train"], splits["validation"]
            behaviour = BehaviourModel.fit(
                tr.states.numpy(), tr.actions.numpy(), va.states.numpy(), va.actions.numpy(),
                meta.n_actions, BehaviourConfig(), tr.fingerprint,
            )  # fmt: skip
        pol = make_policy(spec, kind, meta, behaviour)
        t = time.perf_counter()
        per_start, by_member = rollout_values(fit, pol, starts, gamma, terminal, args)
        est, lo, hi = estimate_with_ci(per_start, args.seed)
        ref = truth[name]
        rows.append({
            "policy": name, **truth_fields(ref),
            # the panel file's FQE: fitted on the clinicians' logs of the 2,000-stay world
            "estimates": {"model": (est, lo, hi), "panel_fqe": tuple(ref["estimates"]["fqe"])},
            "by_member": by_member.tolist(),
            "seconds": round(time.perf_counter() - t, 1),
        })  # fmt: skip
        print(f"  {name:24s} truth {ref['truth']:7.2f}  model {est:6.2f} [{lo:6.2f}, {hi:6.2f}]"
              f"  members {np.round(by_member, 2).tolist()}  (panel FQE "
              f"{_fmt(ref['estimates']['fqe'][0])})", flush=True)  # fmt: skip
    # calibration: the logs' own (stochastic) policy in the model against its logged return
    if args.held_log is not None:
        from sepsisrl.rl.policies import TrainedPolicy, softmax_of

        bc_run = next(spec for name, spec, _ in jobs if name == "bc")
        prob = softmax_of(TrainedPolicy(bc_run))
    else:
        prob = behaviour.probabilities
    per_start, by_member = rollout_values(fit, Sampled(prob, args.seed), starts, gamma,
                                          terminal, args)  # fmt: skip
    logged = logged_returns(test, gamma)
    est, lo, hi = estimate_with_ci(per_start, args.seed)
    calib = {"model": [est, lo, hi], "logged": float(logged.mean()),
             "logged_se": float(logged.std(ddof=1) / np.sqrt(len(logged))),
             "by_member": by_member.tolist()}  # fmt: skip
    print(f"  {'behaviour (the logs)':24s} logged {calib['logged']:6.2f} +- "
          f"{1.96 * calib['logged_se']:.2f}  model {est:6.2f} [{lo:6.2f}, {hi:6.2f}]  members "
          f"{np.round(by_member, 2).tolist()}", flush=True)  # fmt: skip
    saved = panel.get("returns")
    noise = None
    if saved is not None:
        noise = {k: np.asarray(v) for k, v in saved.items()}
    result = compare(rows, noise, estimators=["model", "panel_fqe"])
    for est, doc in result.items():
        print(json.dumps({"world_seed": args.world_seed, "logs": "held" if args.held_log
                          else "clinicians", "estimator": est, **doc}))  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "world_seed": args.world_seed, "logs": str(logs), "args": {
                k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "fit": fit["report"], "calibration": calib, "rows": rows, "estimators": result,
            "seconds": round(time.perf_counter() - started, 1),
        }, indent=2) + "\n")  # fmt: skip


def _panel(root: Path, args):
    """The panel world's replay and policy list, reusing ``root``'s runs when complete."""
    done = root / "panel_done.json"
    made = {"world_seed": args.world_seed, "stays": args.stays, "train_steps": args.train_steps}
    if done.is_file() and json.loads(done.read_text())["args"] == made:
        runs = {n: Path(r) for n, r in json.loads(done.read_text())["runs"].items()}
        return root / "ws" / "replay" / "sofa_shaped", panel_policies(runs)
    if root.exists():
        raise SystemExit(f"--root {root} exists without a finished panel of these arguments")
    root.mkdir(parents=True)
    _ws, replay, runs, jobs = panel_world(root, args.world_seed, args.stays, args.train_steps)
    done.write_text(json.dumps({"args": made, "runs": {n: str(r) for n, r in runs.items()}}))
    return replay, jobs


class Dynamics(nn.Module):
    """(state, one-hot action) -> continuous change (mean, log-variance), flag logits, end
    logit, death-at-end logit."""

    def __init__(self, state_dim: int, n_actions: int, n_cont: int, n_flags: int, hidden: int):
        super().__init__()
        self.n_actions = n_actions
        self.trunk = nn.Sequential(
            nn.Linear(state_dim + n_actions, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Linear(hidden, 2 * n_cont + n_flags + 2)
        self.sizes = (n_cont, n_cont, n_flags, 1, 1)

    def forward(self, s: torch.Tensor, a: torch.Tensor):
        x = torch.cat([s, nn.functional.one_hot(a, self.n_actions).float()], 1)
        mu, logvar, flag, end, died = self.head(self.trunk(x)).split(self.sizes, 1)
        logvar = -8.0 + nn.functional.softplus(logvar + 8.0)  # >= -8
        logvar = 3.0 - nn.functional.softplus(3.0 - logvar)  # <= 3
        return mu, logvar, flag, end.squeeze(1), died.squeeze(1)


def _tensors(data, flags: np.ndarray, terminal: tuple[float, float]):
    s, a, r, s2, d = data.batch(torch.arange(len(data)))
    cont = torch.as_tensor(~flags)
    rewards = r[d > 0]
    if not bool(torch.isin(rewards, torch.tensor(terminal)).all()) or bool((r[d == 0] != 0).any()):
        raise SystemExit("model_ope: the evaluation reward is not the terminal +-15 alone")
    died = (r == terminal[1]).float()
    return {"s": s, "a": a, "delta": (s2 - s)[:, cont], "flag": s2[:, ~cont],
            "end": d, "died": died, "subject": data.subject_id}  # fmt: skip


def _loss(model: Dynamics, b: dict, idx: torch.Tensor) -> torch.Tensor:
    mu, logvar, flag, end, died = model(b["s"][idx], b["a"][idx])
    go = b["end"][idx] == 0
    bce = nn.functional.binary_cross_entropy_with_logits
    nll = 0.5 * (((b["delta"][idx] - mu) ** 2) * torch.exp(-logvar) + logvar).sum(1)
    fl = bce(flag, b["flag"][idx], reduction="none").sum(1)
    trans = ((nll + fl) * go).sum() / go.sum().clamp(min=1)
    stop = bce(end, b["end"][idx])
    last = b["end"][idx] > 0
    death = (bce(died, b["died"][idx], reduction="none") * last).sum() / last.sum().clamp(min=1)
    return trans + stop + death


def fit_ensemble(train, val, flags: np.ndarray, terminal, args) -> dict:
    tr, va = _tensors(train, flags, terminal), _tensors(val, flags, terminal)
    subjects = np.unique(tr["subject"])
    models, report = [], []
    for m in range(args.members):
        rng = np.random.default_rng(np.random.SeedSequence([args.seed, m]))
        torch.manual_seed(args.seed * 1000 + m)
        pick = rng.choice(subjects, len(subjects), replace=True)
        counts = dict(zip(*np.unique(pick, return_counts=True), strict=True))
        rows = np.concatenate([np.full(counts.get(s, 0), i) for i, s in enumerate(tr["subject"])
                               if counts.get(s, 0)])  # fmt: skip
        rows = torch.as_tensor(rows, dtype=torch.int64)
        model = Dynamics(tr["s"].shape[1], 25, int((~flags).sum()), int(flags.sum()), args.hidden)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
        best, best_state, bad, epochs = np.inf, None, 0, 0
        all_va = torch.arange(len(va["a"]))
        while epochs < 200 and bad < 5:  # early stopping on the validation split's loss
            epochs += 1
            model.train()
            perm = rows[torch.randperm(len(rows))]
            for i in range(0, len(perm), 256):
                loss = _loss(model, tr, perm[i : i + 256])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                v = float(_loss(model, va, all_va))
            if v < best - 1e-4:
                best, bad = v, 0
                best_state = {k: t.clone() for k, t in model.state_dict().items()}
            else:
                bad += 1
        model.load_state_dict(best_state)
        model.eval()
        models.append(model)
        report.append({"member": m, "epochs": epochs, "validation_loss": round(best, 4)})
    lo = torch.minimum(tr["s"].min(0).values, va["s"].min(0).values)
    hi = torch.maximum(tr["s"].max(0).values, va["s"].max(0).values)
    horizon = int(np.bincount(np.unique(train.stay_id, return_inverse=True)[1]).max())
    return {"models": models, "flags": torch.as_tensor(flags), "lo": lo, "hi": hi,
            "horizon": horizon, "report": {"members": report, "horizon": horizon}}  # fmt: skip


@torch.no_grad()
def rollout_values(fit: dict, pol, starts: torch.Tensor, gamma: float, terminal, args):
    """Per member, the value of every start (mean over replicas): ``(members, starts)``."""
    surv, dead = terminal
    n, reps = starts.shape[0], args.replicas
    flags = fit["flags"]
    out = []
    for m, model in enumerate(fit["models"]):
        gen = torch.Generator().manual_seed(args.seed * 7919 + m)
        s = starts.repeat(reps, 1).clone()
        alive = torch.ones(s.shape[0])
        value = torch.zeros(s.shape[0])
        for t in range(fit["horizon"]):
            a = torch.as_tensor(pol.act(s.numpy()), dtype=torch.int64)
            mu, logvar, flag, end, died = model(s, a)
            p_end = torch.sigmoid(end) if t < fit["horizon"] - 1 else torch.ones_like(end)
            p_died = torch.sigmoid(died)
            value += alive * p_end * (gamma**t) * (surv * (1 - p_died) + dead * p_died)
            alive = alive * (1 - p_end)
            nxt = s.clone()
            eps = torch.randn(mu.shape, generator=gen)
            nxt[:, ~flags] = s[:, ~flags] + mu + torch.exp(0.5 * logvar) * eps
            nxt[:, flags] = torch.bernoulli(torch.sigmoid(flag), generator=gen)
            s = torch.maximum(torch.minimum(nxt, fit["hi"]), fit["lo"])
        out.append(value.reshape(reps, n).mean(0).numpy())
    per_start = np.stack(out)
    return per_start, per_start.mean(1)


class Sampled:
    """Actions drawn from ``prob(states)`` (the logs' own stochastic policy)."""

    def __init__(self, prob, seed: int) -> None:
        self.prob, self.rng = prob, np.random.default_rng(seed)

    def act(self, states: np.ndarray) -> np.ndarray:
        p = np.asarray(self.prob(states), dtype=np.float64)
        c = np.cumsum(p / p.sum(1, keepdims=True), 1)
        return (self.rng.random((len(p), 1)) > c).sum(1).clip(0, p.shape[1] - 1)


def logged_returns(data, gamma: float) -> np.ndarray:
    """Each episode's discounted return of the evaluation reward."""
    r = data.rewards.numpy().astype(np.float64) * gamma ** data.step.astype(np.float64)
    _, inv = np.unique(data.stay_id, return_inverse=True)
    return np.bincount(inv, weights=r)


def estimate_with_ci(per_start: np.ndarray, seed: int, resamples: int = 2000):
    """Mean over members and starts; 95 % CI: starts resampled, one member drawn per resample."""
    members, n = per_start.shape
    rng = np.random.default_rng(seed)
    m = rng.integers(0, members, resamples)
    idx = rng.integers(0, n, (resamples, n))
    boot = per_start[m[:, None], idx].mean(1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(per_start.mean()), float(lo), float(hi)


if __name__ == "__main__":
    main()
