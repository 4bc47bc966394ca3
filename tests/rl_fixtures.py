"""Tiny replay datasets that follow the replay contract (docs/contracts.md, ``replay/<variant>/``).

:func:`write_replay` writes ``meta.json`` and ``replay_{train,validation,test}.parquet`` for
any ``state_dim`` and ``n_actions``: one row per decision step, sorted by (stay_id, step), the
state in ``s_<feature>`` float32 columns in ``meta.feature_names`` order, ``done`` true only on
each episode's last row. Episodes are split by patient (70 / 15 / 15). The content is random
but fully determined by ``seed``.

:func:`read_split` / :func:`write_split` let a test rewrite one split to inject a contract
violation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "validation", "test")
TERMINAL_SURVIVED = 15.0
TERMINAL_DIED = -15.0


def feature_names(state_dim: int) -> list[str]:
    return [f"f{i:02d}" for i in range(state_dim)]


def _episode_rows(
    rng: np.random.Generator,
    subject_id: int,
    stay_id: int,
    length: int,
    state_dim: int,
    n_actions: int,
) -> dict[str, np.ndarray]:
    survived = bool(rng.random() < 0.7)
    states = rng.normal(size=(length, state_dim)).astype(np.float32)
    # the logged action leans on the first feature, so a cloned policy has something to learn
    logits = np.outer(states[:, 0], np.linspace(-1.0, 1.0, n_actions))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    actions = np.array([rng.choice(n_actions, p=p) for p in probs], dtype=np.int16)
    reward_eval = np.zeros(length, np.float32)
    reward_eval[-1] = TERMINAL_SURVIVED if survived else TERMINAL_DIED
    shaping = (-0.025 * rng.integers(-2, 3, size=length)).astype(np.float32)
    done = np.zeros(length, dtype=bool)
    done[-1] = True
    return {
        "subject_id": np.full(length, subject_id, np.int64),
        "stay_id": np.full(length, stay_id, np.int64),
        "step": np.arange(length, dtype=np.int16),
        "action": actions,
        "reward": (reward_eval + shaping).astype(np.float32),
        "done": done,
        "reward_eval": reward_eval,
        "states": states,
    }


def _table(rows: list[dict[str, np.ndarray]], names: list[str]) -> pa.Table:
    def cat(key: str) -> np.ndarray:
        return np.concatenate([r[key] for r in rows])

    states = (
        np.concatenate([r["states"] for r in rows])
        if rows
        else np.zeros((0, len(names)), np.float32)
    )
    columns: dict[str, pa.Array] = {
        "subject_id": pa.array(cat("subject_id"), pa.int64()),
        "stay_id": pa.array(cat("stay_id"), pa.int64()),
        "step": pa.array(cat("step"), pa.int16()),
        "action": pa.array(cat("action"), pa.int16()),
        "reward": pa.array(cat("reward"), pa.float32()),
        "done": pa.array(cat("done"), pa.bool_()),
        "reward_eval": pa.array(cat("reward_eval"), pa.float32()),
    }
    for j, name in enumerate(names):
        columns[f"s_{name}"] = pa.array(states[:, j], pa.float32())
    return pa.table(columns)


def write_replay(
    folder: str | Path,
    n_episodes: int,
    state_dim: int,
    n_actions: int,
    seed: int,
    horizon: int = 12,
    variant: str = "sofa_shaped",
) -> Path:
    """Write a contract-following replay folder; returns its path.

    Episode lengths are drawn from 2 .. ``horizon``; stays are ordered by stay_id. Every split
    gets at least one episode (``n_episodes`` >= 3).
    """
    if n_episodes < 3:
        raise ValueError("need at least 3 episodes (one per split)")
    if horizon < 2:
        raise ValueError("horizon must be at least 2")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = feature_names(state_dim)
    n_train = max(1, round(0.7 * n_episodes))
    n_val = max(1, (n_episodes - n_train) // 2)
    n_train = min(n_train, n_episodes - n_val - 1)
    split_of = ["train"] * n_train + ["validation"] * n_val
    split_of += ["test"] * (n_episodes - len(split_of))
    rows: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in SPLITS}
    for i, split in enumerate(split_of):
        length = int(rng.integers(2, horizon + 1))
        rows[split].append(
            _episode_rows(rng, 10_000_000 + i, 30_000_000 + i, length, state_dim, n_actions)
        )
    summary: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        table = _table(rows[split], names)
        pq.write_table(table, folder / f"replay_{split}.parquet")
        summary[split] = {"n_episodes": len(rows[split]), "n_transitions": table.num_rows}
    meta: dict[str, Any] = {
        "schema_version": "1",
        "state_dim": state_dim,
        "n_actions": n_actions,
        "feature_names": names,
        "action_labels": [f"action_{a}" for a in range(n_actions)],
        "reward": {
            "variant": variant,
            "terminal_survived": TERMINAL_SURVIVED,
            "terminal_died": TERMINAL_DIED,
            "sofa_delta_weight": -0.025,
        },
        "gamma": 0.99,
        "splits": summary,
        "source": {"kind": "external", "version": "test", "fingerprint": f"seed-{seed}"},
        "created_by": "tests/rl_fixtures.py",
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "meta.json").read_text())


def write_meta(folder: str | Path, meta: dict[str, Any]) -> None:
    (Path(folder) / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_split(folder: str | Path, split: str = "train") -> pa.Table:
    return pq.read_table(Path(folder) / f"replay_{split}.parquet")


def write_split(folder: str | Path, table: pa.Table, split: str = "train") -> None:
    pq.write_table(table, Path(folder) / f"replay_{split}.parquet")


def set_column(table: pa.Table, name: str, values: np.ndarray | list) -> pa.Table:
    """``table`` with column ``name`` replaced by ``values`` (same Arrow type)."""
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


#: Small, single-threaded training settings for tests that are not about the architecture.
FAST: dict[str, Any] = {
    "batch_size": 32,
    "hidden_sizes": [32, 32],
    "threads": 1,
    "log_every": 20,
    "checkpoint_every": 40,
}

#: The same settings as ``sepsisrl train`` options.
FAST_CLI: list[str] = [
    "--set",
    "batch_size=32",
    "--set",
    "hidden_sizes=[32,32]",
    "--set",
    "threads=1",
]


def fast_config(preset: str | None = None, **overrides: Any):
    """A TrainConfig with :data:`FAST` settings; dotted keys via ``**{"iql.expectile": 0.8}``."""
    from sepsisrl.rl.config import load_train_config

    return load_train_config(preset=preset, overrides={**FAST, **overrides})
