"""The linear FQE on a torch device (``evaluate.device``) is the NumPy FQE to rounding.

The FQE keeps its arrays as NumPy arrays by default and as float64 torch tensors on a device
otherwise; both paths run the same operations through ``_Numpy`` and ``_Torch``. Here the torch
path runs on the CPU (``device="cpu"``): every fit, its chosen penalties, its values, the
pessimism and the sensitivity refits must match the NumPy path to rounding. On a GPU the same
comparison is ``tests/test_cuda.py::test_an_evaluation_on_the_gpu_matches_the_cpus``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepsisrl.config import ConfigError, validate_dataclass
from sepsisrl.ope.behaviour import BehaviourModel
from sepsisrl.ope.evaluate import EvalConfig
from sepsisrl.ope.fqe import _SETUPS, FQE, FQEConfig

STATE_DIM, N_ACTIONS, GAMMA = 6, 4, 0.99


def _logs(seed: int = 0, patients: int = 60) -> tuple[dict[str, torch.Tensor], np.ndarray, int]:
    """Continuous states, a state-dependent logging policy, a dense reward and a terminal
    +-15, episodes of 3-9 steps: every basis column, member and penalty has work to do."""
    rng = np.random.default_rng(seed)
    s, a, r, sn, d, groups = [], [], [], [], [], []
    longest = 0
    for p in range(patients):
        steps = int(rng.integers(3, 10))
        longest = max(longest, steps)
        x = rng.normal(size=STATE_DIM)
        for t in range(steps):
            act = int(np.clip(np.round(x[0] + rng.normal(scale=0.8) + 1.5), 0, N_ACTIONS - 1))
            nxt = 0.8 * x + 0.1 * (act - 1.5) + rng.normal(scale=0.3, size=STATE_DIM)
            last = t == steps - 1
            reward = -0.1 * abs(x[1]) + (15.0 * np.sign(nxt[0] + 0.2) if last else 0.0)
            s.append(x), a.append(act), r.append(reward), sn.append(nxt), d.append(float(last))
            groups.append(p)
            x = nxt
    f32 = lambda v: torch.from_numpy(np.asarray(v, np.float32))  # noqa: E731
    train = {"s": f32(s), "a": torch.tensor(a, dtype=torch.int64), "r": f32(r),
             "s_next": f32(sn), "done": f32(d)}  # fmt: skip
    return train, np.asarray(groups), longest


def _policy(states: torch.Tensor, kind: str) -> np.ndarray:
    x = states.numpy()
    if kind == "deterministic":  # one action per state: the greedy shortcuts
        pi = np.zeros((len(x), N_ACTIONS))
        pi[np.arange(len(x)), (x[:, 2] > 0).astype(int) * 2 + (x[:, 3] > 0)] = 1.0
        return pi
    logits = np.stack([x[:, 0] * k - 0.3 * k * k for k in range(N_ACTIONS)], 1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _fit(train, groups, longest, device, **cfg):
    fqe = FQE(STATE_DIM, N_ACTIONS, GAMMA, FQEConfig(members=3, **cfg), (-20.0, 20.0), device)
    return fqe, fqe.fit(train, groups, longest)


@pytest.mark.parametrize(
    ("kind", "settings"),
    [
        ("stochastic", {}),
        ("deterministic", {}),
        ("stochastic", {"pessimism": 1.0, "penalty_rows": "policy", "ridge_intercept": 0.5}),
        ("deterministic", {"pessimism": 1.0, "basis": "linear"}),
    ],
)
def test_the_torch_path_matches_numpy_to_rounding(kind, settings):
    train, groups, longest = _logs()
    pi_all = _policy(train["s_next"], kind)
    train["pi_next"] = torch.from_numpy(pi_all.astype(np.float32))
    pi_s = _policy(train["s"], kind)
    train["pi_logged"] = torch.from_numpy(pi_s[np.arange(len(pi_s)), train["a"].numpy()])
    _SETUPS.clear()
    ref, ref_res = _fit(train, groups, longest, None, **settings)
    dev, dev_res = _fit(train, groups, longest, "cpu", **settings)
    assert isinstance(dev.W, np.ndarray) and dev.W.dtype == np.float64  # read on the host
    # the same penalty in every iteration of every member and of the full fit
    for a, b in zip(ref_res.iterations, dev_res.iterations, strict=True):
        assert a["ridge"] == b["ridge"] and a.get("ridge_full") == b.get("ridge_full")
        assert a["holdout_mse"] == pytest.approx(b["holdout_mse"], rel=1e-9)
    states = train["s"][:200]
    for raw in (False, True):
        np.testing.assert_allclose(
            dev.q_values(states, raw=raw), ref.q_values(states, raw=raw), rtol=0, atol=1e-8
        )
        np.testing.assert_allclose(
            dev.full_q_values(states, raw=raw), ref.full_q_values(states, raw=raw),
            rtol=0, atol=1e-8,
        )  # fmt: skip
    assert not np.allclose(ref.W_full, 0.0)  # something was fitted
    # the sensitivity refits, every case iterated together (float32 inputs, as evaluate passes)
    rng = np.random.default_rng(3)
    b_next = rng.dirichlet(np.ones(N_ACTIONS), size=len(pi_all)).astype(np.float32)
    init = train["s"].numpy()[:40]
    pi_init = _policy(train["s"][:40], kind).astype(np.float32)
    b_init = rng.dirichlet(np.ones(N_ACTIONS), size=40).astype(np.float32)
    cases = [(1.0, "low"), (2.0, "low"), (2.0, "high")]
    want = ref.robust_values_many(b_next, init, pi_init, b_init, cases)
    got = dev.robust_values_many(b_next, init, pi_init, b_init, cases)
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, np.ndarray)
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-8)
    assert not np.allclose(want[1], want[2])  # the two sides differ at Lambda 2


def test_the_mlp_model_on_an_explicit_cpu_device_is_the_default_fit():
    """The mlp model moves its networks, data and targets to the device and draws its batches
    on the CPU: on ``device="cpu"`` it is the default fit, weight for weight."""
    train, groups, longest = _logs(seed=4, patients=30)
    train["pi_next"] = torch.from_numpy(_policy(train["s_next"], "stochastic").astype(np.float32))
    cfg = {"model": "mlp", "hidden": (16, 16), "max_steps": 60, "min_steps": 20,
           "eval_every": 20}  # fmt: skip
    ref, ref_res = _fit(train, groups, longest, None, **cfg)
    dev, dev_res = _fit(train, groups, longest, "cpu", **cfg)
    assert ref_res.iterations == dev_res.iterations
    np.testing.assert_array_equal(dev.q_values(train["s"]), ref.q_values(train["s"]))
    np.testing.assert_array_equal(
        dev.state_values(train["s"], train["pi_next"]),
        ref.state_values(train["s"], train["pi_next"]),
    )


def test_the_numpy_and_torch_setups_are_kept_apart():
    """A process keeps one linear setup; the torch path's is not the NumPy path's (and back)."""
    train, groups, longest = _logs(seed=1, patients=30)
    train["pi_next"] = torch.from_numpy(_policy(train["s_next"], "stochastic").astype(np.float32))
    _SETUPS.clear()
    _fit(train, groups, longest, None)
    assert isinstance(_SETUPS["setup"].ps, np.ndarray)
    _fit(train, groups, longest, "cpu")
    assert isinstance(_SETUPS["setup"].ps, torch.Tensor)
    _fit(train, groups, longest, None)
    assert isinstance(_SETUPS["setup"].ps, np.ndarray)


def test_a_device_that_does_not_exist_fails_clearly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    with pytest.raises(ValueError, match="no CUDA device is available"):
        FQE(STATE_DIM, N_ACTIONS, GAMMA, FQEConfig(), device="cuda")
    x = np.zeros((8, STATE_DIM), np.float32)
    with pytest.raises(ValueError, match="no CUDA device is available"):
        BehaviourModel.fit(x, np.zeros(8, np.int64), x, np.zeros(8, np.int64), N_ACTIONS,
                           device="cuda")  # fmt: skip


def test_the_evaluation_device_is_checked_at_load():
    assert EvalConfig().device == "cpu"  # configs/evaluate.yaml
    assert validate_dataclass(EvalConfig, {"device": "cuda:1"}, "evaluation").device == "cuda:1"
    with pytest.raises(ConfigError, match="device"):
        validate_dataclass(EvalConfig, {"device": "gpu"}, "evaluation")


def test_the_behaviour_model_on_an_explicit_device_is_the_default_one():
    """``device="cpu"`` moves nothing: the same weights as the default fit."""
    train, _, _ = _logs(seed=2, patients=40)
    x, a = train["s"].numpy(), train["a"].numpy()
    one = BehaviourModel.fit(x, a, x[:50], a[:50], N_ACTIONS)
    two = BehaviourModel.fit(x, a, x[:50], a[:50], N_ACTIONS, device="cpu")
    for (k, v), w in zip(one.net.state_dict().items(), two.net.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert next(two.net.parameters()).device.type == "cpu"
