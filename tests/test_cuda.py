"""Training on a GPU (``--device cuda``, i.e. ``train.device: cuda``).

The project never needs a GPU and CI has none: these checks run only where CUDA is available
(``python -m pytest tests/test_cuda.py`` on a GPU machine; docs/run.md says how, and whether they
have run on one yet).
They hold a GPU run to what the CPU runs promise: every algorithm trains there and its
weights load and act on a CPU; the same seed gives the same bytes; a stack's runs are the runs
trained alone; an interrupted run resumes to the bytes of an uninterrupted one; an evaluation
on the GPU (``evaluate.device: cuda``) gives the CPU's numbers to rounding (not yet run on a
GPU). The training checks ran once, on an
NVIDIA H200 (``bench/gpu_card.sh``, docs/run.md): all pass there except the stack identity
(``test_each_run_of_a_gpu_stack_is_the_run_trained_alone`` fails: most likely a stack's
batched products and its per-run reductions round differently from a run's own there; the two
mechanisms are in docs/run.md; ``bench/gpu_identity.py --device cuda`` shows which operation
differs), which stays asserted until it is fixed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sepsisrl.rl.policies import TrainedPolicy
from sepsisrl.rl.trainer import StackMember, train, train_stack

from .rl_fixtures import fast_config, write_replay

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (run it on a GPU machine)"
)

STATE_DIM, N_ACTIONS = 9, 4
FILES = ("final/policy.safetensors", "final/model.safetensors")


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuda")
    return write_replay(root / "replay" / "sofa_shaped", 60, STATE_DIM, N_ACTIONS, seed=3)


def gpu(**overrides):
    return fast_config(device="cuda", steps=80, log_every=20, checkpoint_every=40, **overrides)


def _same_files(a: Path, b: Path, names=FILES) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a.name} vs {b.name}: {name}"


@needs_cuda
@pytest.mark.parametrize("algo", ["iql", "bc", "cql"])
def test_each_algorithm_trains_on_the_gpu_and_acts_on_a_cpu(replay, tmp_path, algo):
    run = tmp_path / algo
    result = train(replay, gpu(algo=algo, seed=1), run)
    assert result.steps == 80
    policy = TrainedPolicy(run)  # a CPU policy from weights trained on the GPU
    states = np.random.default_rng(0).normal(size=(50, STATE_DIM)).astype(np.float32)
    actions = policy.act(states)
    assert actions.shape == (50,) and actions.min() >= 0 and actions.max() < N_ACTIONS
    on_gpu = TrainedPolicy(run, device="cuda")
    assert np.array_equal(on_gpu.act(states), actions)


@needs_cuda
def test_the_same_seed_gives_the_same_bytes_on_the_gpu(replay, tmp_path):
    train(replay, gpu(seed=4), tmp_path / "a")
    train(replay, gpu(seed=4), tmp_path / "b")
    _same_files(tmp_path / "a", tmp_path / "b")


@needs_cuda
def test_each_run_of_a_gpu_stack_is_the_run_trained_alone(replay, tmp_path):
    cfgs = [gpu(seed=1), gpu(seed=2, **{"iql.expectile": 0.9, "iql.temperature": 10.0})]
    alone = [tmp_path / f"alone{i}" for i in range(2)]
    for cfg, run in zip(cfgs, alone, strict=True):
        train(replay, cfg, run)
    stacked = [tmp_path / f"stacked{i}" for i in range(2)]
    train_stack([StackMember(replay, c, d) for c, d in zip(cfgs, stacked, strict=True)])
    for a, s in zip(alone, stacked, strict=True):
        _same_files(a, s)


@needs_cuda
def test_an_interrupted_gpu_run_resumes_to_the_same_bytes(replay, tmp_path):
    cfg = gpu(seed=5)
    train(replay, cfg, tmp_path / "full")
    train(replay, cfg, tmp_path / "cut", stop_after=50)  # checkpoint at 40
    assert not (tmp_path / "cut" / "final").exists()
    train(replay, cfg, tmp_path / "cut", resume=True)
    _same_files(tmp_path / "full", tmp_path / "cut")


def _numbers_agree(a, b, path: str = "") -> None:
    """Every number of two metrics documents within 1e-7 (relative), the rest equal; their
    timings, creation times and evaluation devices aside."""
    if path in ("/timings_seconds", "/created_at", "/config/device"):
        return
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            _numbers_agree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _numbers_agree(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-7, abs=1e-9), path
    else:
        assert a == b, path


@needs_cuda
def test_an_evaluation_on_the_gpu_matches_the_cpus(replay, tmp_path):
    """``evaluate.device: cuda``: the linear FQE (fits and sensitivity refits) solves in float64
    on the GPU. With the same behaviour model every number of the evaluation is the CPU's to
    rounding; the behaviour model fitted on the GPU comes back on the CPU, about as good."""
    import dataclasses

    from sepsisrl.ope.behaviour import BehaviourModel
    from sepsisrl.ope.evaluate import EvalConfig, evaluate

    run = tmp_path / "run"
    train(replay, fast_config(seed=1, steps=40, log_every=20, checkpoint_every=40), run)
    cpu = EvalConfig(bootstrap_resamples=100)
    ref = evaluate(run, replay, tmp_path / "cpu", kind="run", cfg=cpu)
    behaviour = BehaviourModel.load(tmp_path / "cpu" / "behaviour")
    gpu = dataclasses.replace(cpu, device="cuda")
    got = evaluate(run, replay, tmp_path / "gpu", kind="run", cfg=gpu, behaviour=behaviour)
    assert got["config"]["device"] == "cuda"
    _numbers_agree(ref, got)
    # the behaviour model fitted on the GPU (no model passed): returned on the CPU
    evaluate(run, replay, tmp_path / "gpu-b", kind="run", cfg=gpu)
    fitted = BehaviourModel.load(tmp_path / "gpu-b" / "behaviour")
    loss = fitted.info["validation_log_loss"]
    assert loss == pytest.approx(behaviour.info["validation_log_loss"], abs=0.02)


@needs_cuda
def test_the_mlp_fqe_trains_on_the_gpu_near_the_cpus_fit():
    """The opt-in mlp FQE on the GPU: the same batches as on the CPU (drawn there), so its
    values differ from the CPU fit's only by the rounding that SGD carries through its steps
    (within 2 % of the return range here)."""
    from sepsisrl.ope.fqe import FQE, FQEConfig

    from .test_fqe_device import GAMMA, N_ACTIONS, STATE_DIM, _logs, _policy

    train, groups, longest = _logs(seed=4, patients=30)
    train["pi_next"] = torch.from_numpy(_policy(train["s_next"], "stochastic").astype(np.float32))
    cfg = FQEConfig(model="mlp", members=2, hidden=(16, 16), max_steps=60, min_steps=20,
                    eval_every=20)  # fmt: skip
    values = []
    for device in (None, "cuda"):
        fqe = FQE(STATE_DIM, N_ACTIONS, GAMMA, cfg, (-20.0, 20.0), device)
        fqe.fit(train, groups, longest)
        values.append(fqe.state_values(train["s"], train["pi_next"]))
    assert np.abs(values[1] - values[0]).max() <= 0.02 * 40.0
