"""Policy objects share one interface: probabilities over actions and a greedy action."""

from __future__ import annotations

import numpy as np
import pytest

from sepsisrl.rl.config import load_train_config
from sepsisrl.rl.policies import ClinicianPolicy, NoTreatmentPolicy, RandomPolicy, TrainedPolicy
from sepsisrl.rl.trainer import train

from .test_rl_mdp import N_ACTIONS, N_POS, write_replay


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    replay = root / "replay" / "chain"
    write_replay(replay, n_episodes=200)
    out = {}
    for algo in ("iql", "cql", "bcq", "bc"):
        cfg = load_train_config(overrides={
            "algo": algo, "steps": 40, "hidden_sizes": [16, 16], "batch_size": 64,
            "log_every": 20, "checkpoint_every": 20,
        })  # fmt: skip
        out[algo] = train(replay, cfg, root / algo).run_dir
    return out


STATES = np.eye(N_POS, dtype=np.float32)


@pytest.mark.parametrize("algo", ["iql", "cql", "bcq", "bc"])
def test_trained_policy_is_greedy_and_deterministic(runs, algo):
    pol = TrainedPolicy(runs[algo])
    probs = pol.action_probabilities(STATES)
    assert probs.shape == (N_POS, N_ACTIONS)
    assert np.allclose(probs.sum(1), 1.0)
    assert set(np.unique(probs)) <= {0.0, 1.0}
    assert (probs.argmax(1) == pol.act(STATES)).all()
    assert (pol.act(STATES) == pol.logits(STATES).argmax(1)).all()


def test_bcq_only_chooses_actions_its_behaviour_model_allows(runs):
    pol = TrainedPolicy(runs["bcq"])
    logits = pol.logits(STATES)
    chosen = logits[np.arange(N_POS), pol.act(STATES)]
    assert np.isfinite(chosen).all()


def test_no_treatment_always_chooses_action_zero():
    pol = NoTreatmentPolicy(25)
    assert (pol.act(np.zeros((7, 3))) == 0).all()
    assert (pol.action_probabilities(np.zeros((7, 3)))[:, 0] == 1).all()


def test_random_policy_is_uniform():
    pol = RandomPolicy(25, seed=1)
    assert np.allclose(pol.action_probabilities(np.zeros((4, 3))), 1 / 25)
    acts = pol.act(np.zeros((5000, 3)))
    assert acts.min() == 0 and acts.max() == 24
    assert abs(np.bincount(acts, minlength=25).std() / 200) < 0.2


def test_clinician_policy_uses_the_behaviour_probabilities():
    probs = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]])
    pol = ClinicianPolicy(lambda s: probs[: len(s)], 3)
    assert np.allclose(pol.action_probabilities(np.zeros((2, 4))), probs)
    assert pol.act(np.zeros((2, 4))).tolist() == [1, 0]


def test_incomplete_run_is_refused(tmp_path, runs):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(runs["bc"], broken)
    shutil.rmtree(broken / "final")
    with pytest.raises(FileNotFoundError, match="is the run complete"):
        TrainedPolicy(broken)


def test_support_edge_policy_takes_the_least_or_most_intense_plausible_action():
    from sepsisrl.rl.policies import SupportEdgePolicy

    p = np.zeros((3, 25))
    p[0, [3, 7, 12]] = [0.5, 0.3, 0.2]  # all plausible
    p[1, [3, 7, 12]] = [0.02, 0.9, 0.08]  # 3 below the threshold
    p[2, [0, 24]] = [0.01, 0.99]  # only the mode
    least = SupportEdgePolicy(lambda s: p, 25, "least", threshold=0.05)
    most = SupportEdgePolicy(lambda s: p, 25, "most", threshold=0.05)
    assert least.act(np.zeros((3, 1))).tolist() == [3, 7, 24]
    assert most.act(np.zeros((3, 1))).tolist() == [12, 12, 24]
    probs = most.action_probabilities(np.zeros((3, 1)))
    assert probs.sum(1).tolist() == [1.0, 1.0, 1.0] and probs[0, 12] == 1.0
    with pytest.raises(ValueError, match="edge must be"):
        SupportEdgePolicy(lambda s: p, 25, "middle")
