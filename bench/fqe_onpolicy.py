"""FQE on the clinicians' own policy against the return their episodes had (on-policy check).

Usage:  python bench/fqe_onpolicy.py [--world-seed 0] [--stays 2000] [--replay DIR]

On the behaviour policy an FQE needs no importance weights and no extrapolation to actions
the clinicians did not take, so on the train split its mean initial-state value should
reproduce the mean discounted return the train episodes actually had; on validation and
test it should agree within sampling error. The check needs no simulator: ``--replay`` runs it
on any replay folder (real MIMIC-IV included). Without it, a quick synthetic world (the OPE
panel's: 2,000 stays, world seed 0) is generated and built.

Printed: for each shared basis (``linear``, ``hinge``) and each point estimate (the mean of the
bootstrap members, the fit on every train patient), the mean initial-state value on train,
validation and test next to the observed mean return, as a markdown table, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--stays", type=int, default=2000)
    ap.add_argument("--replay", type=Path, default=None, help="an existing replay folder")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    if args.replay is not None:
        report(args.replay, f"replay {args.replay}")
        return
    from sepsisrl.dataset.builder import build
    from sepsisrl.dataset.config import load_build_config
    from sepsisrl.synth.config import load_synth_config
    from sepsisrl.synth.world import generate_world

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = load_synth_config(overrides={"charting.density": 0.0})
        generate_world(root / "raw", args.stays, seed=args.world_seed, cfg=cfg)
        build(root / "raw", root / "ws", load_build_config())
        report(root / "ws" / "replay" / "sofa_shaped",
               f"world seed {args.world_seed}, {args.stays} stays")  # fmt: skip


def report(replay: Path, label: str) -> None:
    from sepsisrl.ope.behaviour import BehaviourModel
    from sepsisrl.ope.estimators import fqe_data
    from sepsisrl.ope.evaluate import EVAL_REWARD, EvalConfig
    from sepsisrl.ope.fqe import FQE, FQEConfig
    from sepsisrl.ope.importance import EpisodeIndex, discounted_returns
    from sepsisrl.rl.data import load_meta, load_split

    meta = load_meta(replay)
    splits = {s: load_split(replay, s, EVAL_REWARD, meta) for s in ("train", "validation", "test")}
    tr, va = splits["train"], splits["validation"]
    behaviour = BehaviourModel.fit(
        tr.states.numpy(), tr.actions.numpy(), va.states.numpy(), va.actions.numpy(),
        meta.n_actions, EvalConfig().behaviour, tr.fingerprint,
    )  # fmt: skip
    observed = {}
    for name, d in splits.items():
        g = discounted_returns(d.rewards.numpy(), EpisodeIndex.from_rows(d.stay_id, d.step),
                               meta.gamma)  # fmt: skip
        observed[name] = float(g.mean())
    longest = int(EpisodeIndex.from_rows(tr.stay_id, tr.step).t.max()) + 1
    rows = []
    for basis in ("linear", "hinge"):
        t = time.perf_counter()
        fqe = FQE(meta.state_dim, meta.n_actions, meta.gamma, FQEConfig(basis=basis))
        pi = behaviour.probabilities(tr.states.numpy())
        fqe.fit(fqe_data(tr, np.ones(len(tr), dtype=bool), pi), tr.subject_id, longest)
        seconds = time.perf_counter() - t
        for point in ("members' mean", "fit on every train patient"):
            row = {"basis": basis, "point": point, "fit_seconds": round(seconds, 1)}
            for name, d in splits.items():
                init = d.initial_mask()
                p = behaviour.probabilities(d.states.numpy())
                if point == "members' mean":
                    v = np.einsum("kna,na->kn", fqe.q_values(d.states), p)[:, init].mean()
                else:
                    v = (fqe.full_q_values(d.states) * p).sum(1)[init].mean()
                row[name] = float(v)
            rows.append(row)
    print(f"On-policy FQE of the clinicians, {label} "
          f"(episodes: {', '.join(f'{k} {int(d.initial_mask().sum())}' for k, d in splits.items())})")  # fmt: skip
    print()
    print("| shared basis | point estimate | train | validation | test |")
    print("|---|---|---|---|---|")
    print(f"| observed mean return | | {observed['train']:.2f} | {observed['validation']:.2f} | "
          f"{observed['test']:.2f} |")  # fmt: skip
    for r in rows:
        print(f"| {r['basis']} | {r['point']} | {r['train']:.2f} | {r['validation']:.2f} | "
              f"{r['test']:.2f} |")  # fmt: skip
    print()
    print(json.dumps({"label": label, "observed": observed, "rows": rows}))


if __name__ == "__main__":
    main()
