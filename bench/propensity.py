"""Propensity benchmark of the state variants: how well the clinicians' actions are predicted.

Usage:  python bench/propensity.py [--stays 2000] [--world-seed 0]

One synthetic world (physiology-only charting, as bench/ope_panel.py) is generated and built
twice from the same raw tables: with the model card's state (``state.variant: card``) and with
the ``running_treatment`` state (the vasopressor rate running at tau, the IV fluid of the 4 h
before tau, the previous action's bins and the ICU clock instead of ``hours_since_onset``).
The second build reuses the first one's cached stages up to the actions (a copy of its
workspace), so both replays hold the same transitions and actions.

On each ``sofa_shaped`` replay the evaluation's behaviour model (``ope/behaviour.py``:
logistic regression or a small MLP, chosen by validation log-loss, fitted on train) is fitted
and reported on the validation split: accuracy and log-loss over the 25 actions, and the ROC
AUC of its propensity for "no treatment" (action 0: P(a = 0 | s)) and for "no vasopressor"
(vasopressor bin 0: the sum of P over the five fluid bins). Printed: a table and one JSON line
per variant.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("card", "running_treatment")


def _split(replay: Path, split: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(replay / f"replay_{split}.parquet")
    x = np.column_stack([t[f"s_{n}"].to_numpy() for n in names]).astype(np.float32)
    return x, t["action"].to_numpy().astype(np.int64)


def evaluate_variant(replay: Path) -> dict:
    from sepsisrl.ope.behaviour import BehaviourModel, roc_auc
    from sepsisrl.rl.data import load_meta

    meta = load_meta(replay)
    names = meta.feature_names
    tx, ta = _split(replay, "train", names)
    vx, va = _split(replay, "validation", names)
    started = time.perf_counter()
    model = BehaviourModel.fit(tx, ta, vx, va, meta.n_actions)
    probs = model.probabilities(vx)
    n_fluid = 5
    p_no_vaso = probs.reshape(len(vx), -1, n_fluid)[:, 0, :].sum(1)
    return {
        "state_variant": meta.state_variant,
        "state_dim": meta.state_dim,
        "train_transitions": len(ta),
        "validation_transitions": len(va),
        "behaviour_kind": model.info["kind"],
        "validation_accuracy": round(model.info["validation_accuracy"], 4),
        "validation_log_loss": round(model.info["validation_log_loss"], 4),
        "validation_ece": round(model.info["validation_ece"], 4),
        "no_treatment_rate": round(float((va == 0).mean()), 4),
        "no_treatment_auc": round(roc_auc(probs[:, 0], va == 0), 4),
        "no_vasopressor_rate": round(float((va // n_fluid == 0).mean()), 4),
        "no_vasopressor_auc": round(roc_auc(p_no_vaso, va // n_fluid == 0), 4),
        "fit_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--stays", type=int, default=2000)
    ap.add_argument("--world-seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from sepsisrl.dataset.builder import build
    from sepsisrl.dataset.config import load_build_config
    from sepsisrl.synth.config import load_synth_config
    from sepsisrl.synth.world import generate_world

    torch.set_num_threads(2)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = load_synth_config(overrides={"charting.density": 0.0})
        generate_world(root / "raw", args.stays, seed=args.world_seed, cfg=cfg)
        print(
            f"world {args.world_seed}: {args.stays} stays in {time.perf_counter() - started:.0f} s"
        )
        previous = None
        for variant in VARIANTS:
            t = time.perf_counter()
            ws = root / f"ws_{variant}"
            if previous is not None:  # same raw tables: reuse the cached stages
                shutil.copytree(previous, ws)
            build(root / "raw", ws, load_build_config(overrides={"state.variant": variant}))
            print(f"build {variant}: {time.perf_counter() - t:.0f} s")
            previous = ws
            row = evaluate_variant(ws / "replay" / "sofa_shaped")
            row["world_seed"] = args.world_seed
            row["stays"] = args.stays
            rows.append(row)

    head = ("variant", "dim", "behaviour", "val acc", "val logloss", "P(a=0)", "AUC a=0",
            "P(no vaso)", "AUC no vaso")  # fmt: skip
    print()
    widths = (17,) + (11,) * (len(head) - 1)
    print(" | ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for r in rows:
        cells = (
            r["state_variant"], r["state_dim"], r["behaviour_kind"], r["validation_accuracy"],
            r["validation_log_loss"], r["no_treatment_rate"], r["no_treatment_auc"],
            r["no_vasopressor_rate"], r["no_vasopressor_auc"],
        )  # fmt: skip
        print(" | ".join(f"{c!s:>{w}}" for c, w in zip(cells, widths, strict=True)))
    print()
    for r in rows:
        print(json.dumps(r))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
