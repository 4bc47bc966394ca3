"""FQE recovers the exact value of a policy on an MDP with known dynamics (within 5 %)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepsisrl.ope.fqe import FQE, FQEConfig

from .test_rl_mdp import GAMMA, N_ACTIONS, N_POS, policy_value, simulate


def transitions(episodes, policy_probs: np.ndarray) -> dict[str, torch.Tensor]:
    eye = np.eye(N_POS, dtype=np.float32)
    rows = []
    for steps in episodes:
        for k, (s, a, r) in enumerate(steps):
            done = k == len(steps) - 1
            s_next = steps[k + 1][0] if not done else s
            rows.append((s, a, r, s_next, float(done)))
    s, a, r, sn, d = (np.array(x) for x in zip(*rows, strict=True))
    return {
        "s": torch.from_numpy(eye[s]),
        "a": torch.from_numpy(a.astype(np.int64)),
        "r": torch.from_numpy(r.astype(np.float32)),
        "s_next": torch.from_numpy(eye[sn]),
        "done": torch.from_numpy(d.astype(np.float32)),
        "pi_next": torch.from_numpy(policy_probs[sn].astype(np.float32)),
    }


@pytest.mark.parametrize("target", ["advance", "mixed"])
def test_fqe_is_within_5_percent_of_the_exact_value(target):
    if target == "advance":  # deterministic: always the optimal action
        probs = np.zeros((N_POS, N_ACTIONS))
        probs[:, 0] = 1.0
    else:  # stochastic: 60 % advance, 40 % cautious
        probs = np.zeros((N_POS, N_ACTIONS))
        probs[:, 0], probs[:, 1] = 0.6, 0.4
    # exact value by dynamic programming (mixing the two deterministic systems)
    from .test_rl_mdp import transition_matrix

    P, R = transition_matrix()
    P_pi = np.einsum("sa,sat->st", probs, P)
    R_pi = (probs * R).sum(1)
    exact = np.linalg.solve(np.eye(N_POS) - GAMMA * P_pi, R_pi)[0]
    if target == "advance":
        assert exact == pytest.approx(policy_value(np.zeros(N_POS, dtype=int))[0])
    rng = np.random.default_rng(5)
    # enough logged episodes that the data's own sampling error stays well below 5 %
    train = transitions(simulate(rng, 30000), probs)
    s0 = torch.from_numpy(np.eye(N_POS, dtype=np.float32)[[0]])
    pi0 = torch.from_numpy(probs[[0]].astype(np.float32))
    fqe = FQE(N_POS, N_ACTIONS, GAMMA, FQEConfig(hidden=(64, 64), lr=1e-3, batch_size=1024, seed=1))
    result = fqe.fit(train, s0, pi0)
    estimate = fqe.state_values(s0, pi0)[0]
    assert abs(estimate - exact) <= 0.05 * abs(exact), (estimate, exact, result.steps)
    assert result.converged and result.holdout_value
