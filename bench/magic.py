"""MAGIC: does blending the FQE with partial importance-weighted corrections help? (issue 12)

Usage:  python bench/magic.py --world-seed S --panel bench/results/ope_panel-S.json
                              [--stays 2000] [--train-steps 1000] [--out FILE]

The evaluation's WDR is the FQE's value of the initial states plus the self-normalised
importance-weighted TD corrections of every position t = 0 .. H-1 (positions whose
per-decision ESS is below ``wdr_step_ess_min`` left out; ``ope/estimators.py``). Stopping the
corrections after position j gives a family of estimates

  g(-1) = FQE,   g(j) = FQE + sum_{t <= j} gamma^t sum_i wbar_{i,t} delta_{i,t},   g(H-1) = WDR

that trade the model's bias (early j) for the weights' variance (late j). MAGIC (Thomas and
Brunskill, "Data-efficient off-policy policy evaluation for reinforcement learning", ICML
2016) blends them, x . g, with the weights x on the simplex that minimise an estimate of the
blend's mean squared error, x' (Omega + b b') x: Omega, the covariance of the g(j) over the
evaluation's own patient-and-ensemble bootstrap; b(j), how far g(j) lies outside the 95 % CI
of the full WDR (a bias estimate that is zero inside it). The CI of the blend is the
bootstrap's percentile interval of x . g with x fixed, projected like the WDR's onto the
attainable return range.

The panel's world and policies are rebuilt exactly as ``bench/ope_panel.py`` builds them
(deterministic on CPU), each evaluable policy is evaluated on the test split with the
evaluation's defaults, and MAGIC is computed from that evaluation's fitted FQE and WDR; the
truth, the per-episode true returns and the panel's FQE and WDR come from the panel file (the
same world and policies), so nothing is rolled out again. Printed and written to ``--out``:
MAGIC beside the FQE and WDR against the truth (``truth.compare``), and each policy's blend
weights.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

# bench/ is the script's folder: the panel's own world, policies and arguments
from ope_panel import fmt_estimate as _fmt
from ope_panel import panel_file_args, panel_world, truth_fields


def main() -> None:
    ap = panel_file_args(__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    from sepsisrl.truth.compare import compare

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    panel_doc = json.loads(args.panel.read_text())
    if panel_doc["world_seed"] != args.world_seed:
        raise SystemExit(f"{args.panel} is the panel of world {panel_doc['world_seed']}")
    truth = {r["policy"]: r for r in panel_doc["rows"]}
    evaluable = [n for n, r in truth.items() if r["estimates"]["fqe"][0] is not None]
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, replay, _, panel = panel_world(root, args.world_seed, args.stays, args.train_steps)
        print(f"world {args.world_seed}: built and trained at "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        for name, spec, kind in panel:
            if name not in evaluable:
                continue
            fitted, data = fit_evaluation(spec, kind, replay)
            fqe = fitted["fqe"]
            if abs(fqe.ci.estimate - truth[name]["estimates"]["fqe"][0]) > 1e-9:
                raise SystemExit(f"{name}: the rebuilt FQE {fqe.ci.estimate} is not the panel "
                                 f"file's {truth[name]['estimates']['fqe'][0]}")  # fmt: skip
            m = magic(fitted, data)
            ref = truth[name]
            rows.append({
                "policy": name,
                **truth_fields(ref),
                "episodes": ref.get("episodes"),
                "estimates": {"magic": m["ci"], "fqe": ref["estimates"]["fqe"],
                              "wdr": ref["estimates"]["wdr"]},
                "magic": {k: v for k, v in m.items() if k != "ci"},
            })  # fmt: skip
            print(f"  {name:24s} truth {ref['truth']:6.2f}  MAGIC {m['ci'][0]:6.2f} "
                  f"[{m['ci'][1]:.2f}, {m['ci'][2]:.2f}]  FQE {_fmt(ref['estimates']['fqe'][0])}"
                  f"  WDR {_fmt(ref['estimates']['wdr'][0])}  weight on the FQE alone "
                  f"{m['weights'][0]:.2f}", flush=True)  # fmt: skip
    saved = panel_doc.get("returns")
    returns = None if saved is None else {k: np.asarray(v) for k, v in saved.items()}
    result = compare(rows, returns, estimators=["magic", "fqe", "wdr"])
    print(f"\nMAGIC, world seed {args.world_seed} ({time.perf_counter() - started:.0f} s)")
    for est, doc in result.items():
        print(f"  {est:6s} Spearman {_fmt(doc['spearman'])}  MAE {_fmt(doc['mae'])}  "
              f"coverage {_fmt(doc['coverage'])}  top-1 regret {_fmt(doc['top1_regret'])}  "
              f"ranked first {doc['ranked_first']}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"world_seed": args.world_seed, "rows": rows,
                                        "estimators": result}, indent=2) + "\n")  # fmt: skip


def fit_evaluation(spec, kind: str, replay: Path):
    """The evaluation's fitted estimators and data of one policy on the test split, computed
    as ``ope.evaluate.evaluate`` computes them (its defaults, final=True)."""
    from sepsisrl.ope.behaviour import BehaviourModel
    from sepsisrl.ope.estimators import EvalData, fit_estimators
    from sepsisrl.ope.evaluate import EVAL_REWARD, EvalConfig, make_policy
    from sepsisrl.rl.data import load_meta, load_split

    cfg = EvalConfig()
    meta = load_meta(replay)
    train = load_split(replay, "train", EVAL_REWARD, meta)
    val = load_split(replay, "validation", EVAL_REWARD, meta)
    test = load_split(replay, "test", EVAL_REWARD, meta)
    behaviour = BehaviourModel.fit(
        train.states.numpy(), train.actions.numpy(), val.states.numpy(), val.actions.numpy(),
        meta.n_actions, cfg.behaviour, train.fingerprint,
    )  # fmt: skip
    pol = make_policy(spec, kind, meta, behaviour)
    states = test.states.numpy()
    data = EvalData(meta, cfg, train, test, pol, behaviour.probabilities(states),
                    pol.action_probabilities(states), behaviour.probabilities)  # fmt: skip
    return fit_estimators(data, lambda *_: None), data


def magic(fitted, data) -> dict:
    """The MAGIC blend of the FQE and the WDR's partial corrections (module docstring)."""
    from sepsisrl.ope.importance import bootstrap_counts, step_matrix

    fqe, wdr, cfg = fitted["fqe"], fitted["wdr"], data.cfg
    gamma = data.meta.gamma
    rows, actions = data.rows, data.actions
    next_rows = data.data.next_index.numpy()
    dones = data.data.dones.numpy()
    w_et = data.w_et * wdr.keep  # the WDR's own weights and corrected positions
    delta = data.rewards + gamma * (1.0 - dones) * fqe.v_all[:, next_rows] - fqe.q_all[:, rows, actions]  # fmt: skip
    delta_et = np.stack([step_matrix(d, data.idx) for d in delta])  # (K, E, H)
    d_full = (data.rewards + gamma * (1.0 - dones) * fqe.v_full[next_rows]
              - fqe.q_full[rows, actions])  # fmt: skip
    point = partial_estimates(w_et, step_matrix(d_full, data.idx)[None], fqe.v_full[fqe.init][None], gamma)[0]  # fmt: skip
    k, e = fqe.v0.shape
    counts = bootstrap_counts(e, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    boot = np.empty((len(counts), point.size))
    for m in range(k):  # each resample draws one ensemble member, as the WDR's CI does
        r = np.arange(m, len(counts), k)
        boot[r] = partial_estimates(w_et, delta_et[m][None], fqe.v0[m][None], gamma, counts[r])
    members = np.mean([partial_estimates(w_et, delta_et[m][None], fqe.v0[m][None], gamma)[0]
                       for m in range(k)], axis=0)  # fmt: skip
    boot += point - members  # centred on the fit on every train patient, as the WDR's CI
    lo_ci, hi_ci = np.percentile(boot[:, -1], [2.5, 97.5])
    bias = np.maximum(0.0, np.maximum(lo_ci - point, point - hi_ci))
    omega = np.cov(boot, rowvar=False)
    x = simplex_qp(omega + np.outer(bias, bias))
    lo, hi = fqe.lo, fqe.hi
    blend = boot @ x
    estimate = float(x @ point)
    low, high = np.percentile(blend, [2.5, 97.5])
    return {
        "ci": [float(np.clip(v, lo, hi)) for v in (estimate, low, high)],
        "weights": x.tolist(),  # on g(-1) (the FQE), g(0), ..., g(H-1) (the WDR)
        "partial_estimates": point.tolist(),
        "bias": bias.tolist(),
        "wdr_ci": [float(lo_ci), float(hi_ci)],
    }


def partial_estimates(
    w_et: np.ndarray, delta_et: np.ndarray, v0: np.ndarray, gamma: float,
    counts: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """(R, H + 1): g(-1), g(0), ..., g(H-1) of each row of ``counts`` (bootstrap
    multiplicities over episodes; one row of ones without), for one control variate
    (``delta_et`` (1, E, H), ``v0`` (1, E))."""
    c = np.ones((1, w_et.shape[0])) if counts is None else counts
    num = c @ (w_et * delta_et[0])
    den = c @ w_et
    frac = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    terms = frac * gamma ** np.arange(w_et.shape[1])
    base = c @ v0[0] / w_et.shape[0]
    return np.concatenate([base[:, None], base[:, None] + np.cumsum(terms, axis=1)], axis=1)


def simplex_qp(a: np.ndarray, iters: int = 20000) -> np.ndarray:
    """argmin x' A x over the probability simplex (A symmetric positive semi-definite), by
    projected gradient descent with step 1 / (2 lambda_max)."""
    n = a.shape[0]
    step = 1.0 / (2.0 * max(float(np.linalg.eigvalsh(a)[-1]), 1e-12))
    x = np.full(n, 1.0 / n)
    for _ in range(iters):
        x = project_simplex(x - step * 2.0 * (a @ x))
    return x


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {x >= 0, sum x = 1}."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.nonzero(u - css / np.arange(1, v.size + 1) > 0)[0][-1]
    return np.maximum(v - css[k] / (k + 1), 0.0)


if __name__ == "__main__":
    main()
