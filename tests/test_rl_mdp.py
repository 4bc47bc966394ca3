"""IQL learns: on a small MDP with a known optimal policy, from data logged by a noisy,
sub-optimal behaviour policy, IQL's greedy policy reaches >= 95 % of the optimal value (exact,
by dynamic programming) and beats behaviour cloning.

The MDP is a chain of 8 positions; reaching the end pays +15 (success, the scale of the
model card's terminal reward), "death" pays 0.
  a0 "advance":  forward 0.80, stay 0.15, death 0.05     (optimal)
  a1 "cautious": forward 0.30, stay 0.60, death 0.10     (the clinicians' favourite)
  a2 "retreat":  back    0.80, stay 0.10, death 0.10
  a3 "gamble":   forward 0.50, death 0.50
The behaviour policy takes a1 55 %, a0 25 %, a2 10 %, a3 10 % of the time, so cloning it picks
the cautious action everywhere, while the data still contain enough of a0 to learn from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sepsisrl.rl.config import load_train_config
from sepsisrl.rl.networks import MLP
from sepsisrl.rl.trainer import train

N_POS = 8
N_ACTIONS = 4
GAMMA = 0.95
SUCCESS = 15.0
# (forward, stay, back, death) probabilities per action
DYNAMICS = np.array(
    [
        [0.80, 0.15, 0.00, 0.05],
        [0.30, 0.60, 0.00, 0.10],
        [0.00, 0.10, 0.80, 0.10],
        [0.50, 0.00, 0.00, 0.50],
    ]
)
BEHAVIOUR = np.array([0.25, 0.55, 0.10, 0.10])


def transition_matrix() -> tuple[np.ndarray, np.ndarray]:
    """P[s, a, s'] over non-terminal positions and R[s, a] = probability of success."""
    P = np.zeros((N_POS, N_ACTIONS, N_POS))
    R = np.zeros((N_POS, N_ACTIONS))
    for s in range(N_POS):
        for a in range(N_ACTIONS):
            fwd, stay, back, _death = DYNAMICS[a]
            if s + 1 == N_POS:
                R[s, a] += SUCCESS * fwd  # stepping past the end: success, terminal
            else:
                P[s, a, s + 1] += fwd
            P[s, a, s] += stay
            P[s, a, max(s - 1, 0)] += back
    return P, R


def optimal_value() -> tuple[np.ndarray, np.ndarray]:
    P, R = transition_matrix()
    V = np.zeros(N_POS)
    for _ in range(5000):
        Q = R + GAMMA * P @ V
        V = Q.max(axis=1)
    return V, Q.argmax(axis=1)


def policy_value(policy: np.ndarray) -> np.ndarray:
    """Exact value of a deterministic policy (solve V = R_pi + gamma P_pi V)."""
    P, R = transition_matrix()
    idx = np.arange(N_POS)
    P_pi, R_pi = P[idx, policy], R[idx, policy]
    return np.linalg.solve(np.eye(N_POS) - GAMMA * P_pi, R_pi)


def simulate(rng: np.random.Generator, n_episodes: int) -> list[list[tuple[int, int, float]]]:
    episodes = []
    for _ in range(n_episodes):
        s, steps = 0, []
        while len(steps) < 200:
            a = int(rng.choice(N_ACTIONS, p=BEHAVIOUR))
            outcome = int(rng.choice(4, p=DYNAMICS[a]))
            if outcome == 0 and s + 1 == N_POS:
                steps.append((s, a, SUCCESS))
                break
            if outcome == 3:
                steps.append((s, a, 0.0))
                break
            steps.append((s, a, 0.0))
            s = {0: s + 1, 1: s, 2: max(s - 1, 0)}[outcome]
        episodes.append(steps)
    return episodes


def write_replay(folder: Path, seed: int = 0, n_episodes: int = 1500) -> None:
    rng = np.random.default_rng(seed)
    episodes = simulate(rng, n_episodes)
    rows = {"subject_id": [], "stay_id": [], "step": [], "action": [], "reward": [], "done": []}
    states = []
    for e, steps in enumerate(episodes):
        for k, (s, a, r) in enumerate(steps):
            rows["subject_id"].append(e)
            rows["stay_id"].append(e)
            rows["step"].append(k)
            rows["action"].append(a)
            rows["reward"].append(r)
            rows["done"].append(k == len(steps) - 1)
            states.append(np.eye(N_POS, dtype=np.float32)[s])
    names = [f"pos_{i}" for i in range(N_POS)]
    cols = {
        "subject_id": pa.array(rows["subject_id"], pa.int64()),
        "stay_id": pa.array(rows["stay_id"], pa.int64()),
        "step": pa.array(rows["step"], pa.int16()),
        "action": pa.array(rows["action"], pa.int16()),
        "reward": pa.array(rows["reward"], pa.float32()),
        "done": pa.array(rows["done"], pa.bool_()),
    }
    S = np.stack(states)
    for j, n in enumerate(names):
        cols[f"s_{n}"] = pa.array(S[:, j])
    cols["reward_eval"] = cols["reward"]
    folder.mkdir(parents=True)
    table = pa.table(cols)
    pq.write_table(table, folder / "replay_train.parquet")
    meta = {
        "schema_version": "1",
        "state_dim": N_POS,
        "n_actions": N_ACTIONS,
        "feature_names": names,
        "action_labels": ["advance", "cautious", "retreat", "gamble"],
        "reward": {"variant": "chain"},
        "gamma": GAMMA,
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def greedy_policy(run: Path, hidden: tuple[int, ...]) -> np.ndarray:
    from safetensors.torch import load_file

    net = MLP(N_POS, N_ACTIONS, hidden)
    net.load_state_dict(load_file(str(run / "final" / "policy.safetensors")))
    with torch.no_grad():
        return net(torch.eye(N_POS)).argmax(1).numpy()


@pytest.fixture(scope="module")
def chain_replay(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chain") / "replay" / "chain"
    write_replay(folder)
    return folder


def test_the_behaviour_policy_is_clearly_suboptimal():
    v_star, pi_star = optimal_value()
    assert (pi_star == 0).all()  # advancing is optimal everywhere
    v_cautious = policy_value(np.ones(N_POS, dtype=int))
    assert v_cautious[0] < 0.5 * v_star[0]


@pytest.mark.slow
def test_iql_reaches_95_percent_of_the_optimal_value_and_beats_bc(chain_replay, tmp_path):
    hidden = (64, 64)
    common = {"hidden_sizes": list(hidden), "log_every": 500, "checkpoint_every": 500}
    # the card's base IQL settings (expectile 0.7, temperature 3.0), faster learning rates
    iql_cfg = load_train_config(overrides={
        **common, "algo": "iql", "steps": 5000, "seed": 0,
        "iql.actor_lr": 1e-3, "iql.critic_lr": 1e-3, "iql.value_lr": 1e-3,
    })  # fmt: skip
    bc_cfg = load_train_config(
        overrides={**common, "algo": "bc", "steps": 1000, "seed": 0, "bc.lr": 1e-3}
    )
    train(chain_replay, iql_cfg, tmp_path / "iql")
    train(chain_replay, bc_cfg, tmp_path / "bc")
    v_star, _ = optimal_value()
    v_iql = policy_value(greedy_policy(tmp_path / "iql", hidden))
    v_bc = policy_value(greedy_policy(tmp_path / "bc", hidden))
    assert v_iql[0] >= 0.95 * v_star[0], (v_iql[0], v_star[0])
    assert v_iql[0] > v_bc[0] + 0.1 * v_star[0], (v_iql[0], v_bc[0])
