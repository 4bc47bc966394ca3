"""The clinicians' behaviour policy b(a|s): a state-conditional classifier fit on train only.

Two candidates are fitted on the train split by minibatch Adam with early stopping on the
validation log-loss: multinomial logistic regression and a small MLP. The one with the lower
validation log-loss is kept (docs/evaluation.md). Probabilities get a floor (default 1e-3, then
renormalised) so importance ratios stay finite. Reported on validation: accuracy, log-loss and
the expected calibration error (top-label confidence, 15 equal-width bins).

Persisted as ``behaviour.safetensors`` (weights) + ``behaviour.json`` (kind, sizes, floor,
metrics, the fingerprint of the train data it was fitted on). WIS, ESS and support all use
this one model.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sepsisrl.config import yaml_defaults
from sepsisrl.rl.networks import MLP


@dataclass(frozen=True)
@yaml_defaults("evaluate", "behaviour")
class BehaviourConfig:
    """Behaviour-model settings; defaults: ``configs/evaluate.yaml`` (``behaviour``)."""

    floor: float
    mlp_hidden: tuple[int, ...]
    lr: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    patience: int
    seed: int


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def _make(kind: str, state_dim: int, n_actions: int, hidden: tuple[int, ...]) -> torch.nn.Module:
    return MLP(state_dim, n_actions, () if kind == "logistic" else hidden)


class BehaviourModel:
    def __init__(
        self, kind: str, net: torch.nn.Module, n_actions: int, floor: float, info: dict[str, Any]
    ) -> None:
        self.kind, self.net, self.n_actions, self.floor, self.info = (
            kind,
            net,
            n_actions,
            floor,
            info,
        )

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        train_x: np.ndarray,
        train_a: np.ndarray,
        val_x: np.ndarray,
        val_a: np.ndarray,
        n_actions: int,
        cfg: BehaviourConfig = BehaviourConfig(),
        train_fingerprint: str = "",
        device: str = "cpu",
    ) -> BehaviourModel:
        """Fit both candidates on ``device`` (``evaluate.device``: cpu or cuda[:N]; the batch
        order and initial weights come from the CPU's generators either way); the model is
        returned on the CPU, where it is used."""
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"behaviour model device {device!r}: no CUDA device is available "
                             "(evaluate.device)")  # fmt: skip
        tx, ta = (
            torch.as_tensor(train_x, dtype=torch.float32, device=dev),
            torch.as_tensor(train_a, dtype=torch.long, device=dev),
        )
        vx, va = (
            torch.as_tensor(val_x, dtype=torch.float32, device=dev),
            torch.as_tensor(val_a, dtype=torch.long, device=dev),
        )
        candidates = {}
        for kind in ("logistic", "mlp"):
            torch.manual_seed(cfg.seed)
            net = _make(kind, tx.shape[1], n_actions, cfg.mlp_hidden).to(dev)
            epochs = cls._train(net, tx, ta, vx, va, cfg)
            model = cls(kind, net.cpu(), n_actions, cfg.floor, {})
            candidates[kind] = (model.log_loss(val_x, val_a), epochs, model)
        kind = min(candidates, key=lambda k: candidates[k][0])
        best = candidates[kind][2]
        probs = best.probabilities(val_x)
        best.info = {
            "kind": kind,
            "selected_by": "validation log-loss",
            "candidates": {
                k: {"validation_log_loss": v[0], "epochs": v[1]} for k, v in candidates.items()
            },
            "validation_accuracy": float((probs.argmax(1) == val_a).mean()),
            "validation_log_loss": candidates[kind][0],
            "validation_ece": expected_calibration_error(probs, val_a),
            # how well the state predicts "no treatment": the confounding diagnostic of
            # docs/evaluate.md (AUC of P(a = 0 | s) on validation)
            "validation_no_treatment_auc": _finite_or_none(roc_auc(probs[:, 0], val_a == 0)),
            "floor": cfg.floor,
            "hidden": [] if kind == "logistic" else list(cfg.mlp_hidden),
            "fitted_on": {
                "split": "train",
                "transitions": len(train_a),
                "fingerprint": train_fingerprint,
            },
        }
        return best

    @staticmethod
    def _train(net, tx, ta, vx, va, cfg: BehaviourConfig) -> int:
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        best, best_state, bad, epochs_run = float("inf"), None, 0, 0
        for epoch in range(1, cfg.max_epochs + 1):
            epochs_run = epoch
            perm = torch.randperm(len(ta), generator=gen).to(ta.device)
            net.train()
            for i in range(0, len(ta), cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                loss = F.cross_entropy(net(tx[idx]), ta[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                val = float(F.cross_entropy(net(vx), va))
            if val < best - 1e-5:
                best, bad = val, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        return epochs_run

    # ------------------------------------------------------------------ use
    def raw_probabilities(self, states: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(
                self.net(torch.as_tensor(states, dtype=torch.float32)), dim=1
            ).numpy()

    def probabilities(self, states: np.ndarray) -> np.ndarray:
        """b(.|s) with the probability floor applied (rows sum to 1)."""
        p = np.maximum(self.raw_probabilities(states), self.floor)
        return p / p.sum(1, keepdims=True)

    def log_loss(self, states: np.ndarray, actions: np.ndarray) -> float:
        p = self.probabilities(states)[np.arange(len(actions)), actions]
        return float(-np.log(p).mean())

    # ------------------------------------------------------------------ persistence
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.net.state_dict().items()},
            str(folder / "behaviour.safetensors"),
        )
        doc = {**self.info, "kind": self.kind, "n_actions": self.n_actions, "floor": self.floor,
               "state_dim": int(next(iter(self.net.state_dict().values())).shape[1])}  # fmt: skip
        (folder / "behaviour.json").write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> BehaviourModel:
        doc = json.loads((folder / "behaviour.json").read_text())
        net = _make(doc["kind"], doc["state_dim"], doc["n_actions"], tuple(doc.get("hidden", [])))
        net.load_state_dict(load_file(str(folder / "behaviour.safetensors")))
        return cls(doc["kind"], net, doc["n_actions"], doc["floor"], doc)


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC from the Mann-Whitney rank sum (ties get their mean rank)."""
    label = np.asarray(label, dtype=bool)
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # mean rank (1-based) of each run of tied scores
    new = np.r_[True, s[1:] != s[:-1]]
    start = np.flatnonzero(new)
    end = np.r_[start[1:], len(s)]
    mean_rank = (start + end + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, end - start)
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
