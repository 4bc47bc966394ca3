"""Stacked candidates (``rl.trainer.train_stack``): several IQL runs of one architecture trained
together as one stacked model, each identical to the same run trained alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sepsisrl.rl.trainer import (
    StackMember,
    StackMemberError,
    stack_problems,
    train,
    train_stack,
)

from .rl_fixtures import fast_config, write_replay

STATE_DIM, N_ACTIONS = 7, 3
FILES = ("final/policy.safetensors", "final/model.safetensors")


@pytest.fixture(scope="module")
def replays(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rl_stack")
    a = write_replay(root / "replay" / "sofa_shaped", 60, STATE_DIM, N_ACTIONS, seed=5)
    b = write_replay(root / "replay" / "sparse", 60, STATE_DIM, N_ACTIONS, seed=5,
                     variant="sparse")  # fmt: skip
    return a, b


def configs():
    """Three runs that differ in seed, hyper-parameters and reward column."""
    return [
        fast_config(seed=1, steps=90, log_every=15, checkpoint_every=30),
        fast_config(seed=2, steps=90, log_every=15, checkpoint_every=30,
                    **{"iql.expectile": 0.9, "iql.actor_lr": 1e-3, "iql.polyak": 0.05}),
        fast_config(seed=1, steps=90, log_every=15, checkpoint_every=30,
                    reward_column="reward_eval",
                    **{"iql.temperature": 10.0, "iql.critic_lr": 1e-3}),
    ]  # fmt: skip


def _same_files(a: Path, b: Path, names=FILES) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_each_run_of_a_stack_is_bit_identical_to_training_it_alone(replays, tmp_path):
    torch.set_num_threads(1)  # the study's workers train with one thread each
    cfgs = configs()
    where = [replays[0], replays[0], replays[1]]
    alone = [tmp_path / f"alone{i}" for i in range(3)]
    for replay, cfg, run in zip(where, cfgs, alone, strict=True):
        train(replay, cfg, run)
    stacked = [tmp_path / f"stacked{i}" for i in range(3)]
    logged = []
    results = train_stack(
        [StackMember(r, c, d) for r, c, d in zip(where, cfgs, stacked, strict=True)],
        on_log=lambda i, step, total, m: logged.append((i, step)),
    )
    assert [r.steps for r in results] == [90, 90, 90]
    for a, s in zip(alone, stacked, strict=True):
        _same_files(a, s, (*FILES, f"checkpoints/step_{60:08d}/model.safetensors",
                           f"checkpoints/step_{60:08d}/optim.safetensors"))  # fmt: skip
        lines = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
        again = [json.loads(x) for x in (s / "metrics.jsonl").read_text().splitlines()]
        for x, y in zip(lines, again, strict=True):
            x.pop("steps_per_second"), y.pop("steps_per_second")
            assert x == y
        stack = json.loads((s / "config.json").read_text())["stack"]
        assert stack["runs"] == 3
    assert sorted({i for i, _ in logged}) == [0, 1, 2]
    # different runs really differ (the stack does not hand one run's weights to another)
    assert (stacked[0] / FILES[0]).read_bytes() != (stacked[1] / FILES[0]).read_bytes()


def test_an_interrupted_stack_resumes_to_the_same_bytes(replays, tmp_path):
    torch.set_num_threads(1)
    cfgs = configs()[:2]
    full = [tmp_path / f"full{i}" for i in range(2)]
    train_stack([StackMember(replays[0], c, d) for c, d in zip(cfgs, full, strict=True)])
    cut = [tmp_path / f"cut{i}" for i in range(2)]
    members = [StackMember(replays[0], c, d) for c, d in zip(cfgs, cut, strict=True)]
    train_stack(members, stop_after=45)  # killed after step 45: checkpoints at 30
    assert not (cut[0] / "final").exists()
    train_stack(members, resume=True)
    for a, b in zip(full, cut, strict=True):
        _same_files(a, b)
    # one run resumed alone from a stack's checkpoint continues identically as well
    again = [tmp_path / f"again{i}" for i in range(2)]
    train_stack([StackMember(replays[0], c, d) for c, d in zip(cfgs, again, strict=True)],
                stop_after=45)  # fmt: skip
    train(replays[0], cfgs[1], again[1], resume=True)
    _same_files(full[1], again[1])


def test_runs_that_cannot_share_a_stack_are_refused_naming_the_setting(replays, tmp_path):
    a = fast_config(seed=1, steps=20)
    assert stack_problems([a, fast_config(seed=2, steps=20)]) == []
    bad = fast_config(seed=2, steps=20, batch_size=16, hidden_sizes=[8, 8])
    problems = stack_problems([a, bad])
    assert any(p.startswith("batch_size differs") for p in problems)
    assert any(p.startswith("hidden_sizes differs") for p in problems)
    assert "the number of steps (steps / epochs) differs" in stack_problems(
        [a, fast_config(seed=2, steps=40)]
    )
    with pytest.raises(ValueError, match=r"cannot train as one stack: .*batch_size differs"):
        train_stack([StackMember(replays[0], a, tmp_path / "a"),
                     StackMember(replays[0], bad, tmp_path / "b")])  # fmt: skip
    bcq = fast_config(algo="bcq", steps=20)
    with pytest.raises(ValueError, match="algorithm 'bcq' does not train in stacks"):
        train_stack([StackMember(replays[0], bcq, tmp_path / "c"),
                     StackMember(replays[0], bcq, tmp_path / "d")])  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_a_diverging_run_stops_alone_and_the_others_complete(replays, tmp_path):
    good = fast_config(seed=1, steps=40)
    # a learning rate of 1e30 sends the weights to inf within a few steps
    bad = fast_config(seed=2, steps=40, **{"iql.critic_lr": 1e30, "iql.value_lr": 1e30})
    runs = [tmp_path / "good", tmp_path / "bad"]
    with pytest.raises(StackMemberError, match=r"1 of the 2 runs of a stack failed.*bad: training "
                       "diverged"):  # fmt: skip
        train_stack([StackMember(replays[0], good, runs[0]),
                     StackMember(replays[0], bad, runs[1])])  # fmt: skip
    assert (runs[0] / "final" / "policy.safetensors").is_file()
    assert not (runs[1] / "final").exists()
    alone = tmp_path / "alone"
    train(replays[0], good, alone)
    _same_files(runs[0], alone)


def test_bf16_matrix_products_are_opt_in_and_close_to_fp32(replays, tmp_path):
    fp32 = fast_config(seed=1, steps=60)
    bf16 = fast_config(seed=1, steps=60, precision="bf16")
    train(replays[0], fp32, tmp_path / "fp32")
    train(replays[0], bf16, tmp_path / "bf16")
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "fp32" / FILES[0]))
    b = load_file(str(tmp_path / "bf16" / FILES[0]))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # it does change the arithmetic
    for k in a:  # ... by little over 60 steps
        assert (a[k] - b[k]).abs().max() < 0.05, k
    with pytest.raises(ValueError, match="precision bf16 is available for iql, cql, bc only"):
        fast_config(algo="bcq", precision="bf16")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("algo", "settings"), [
    ("cql", [{}, {"cql.alpha": 0.1, "cql.lr": 1e-3}, {"cql.polyak": 0.05}]),
    ("bc", [{}, {"bc.lr": 1e-3}, {}]),
])  # fmt: skip
def test_baselines_stack_bit_identically_to_training_alone(replays, tmp_path, algo, settings,
                                                           precision):  # fmt: skip
    """CQL and BC stack like IQL (their grids train together in a study): each run of a stack,
    with its own seed and settings, is the bytes of the run trained alone - in fp32 and in
    bf16 - and its checkpoint resumes alone to the same bytes."""
    torch.set_num_threads(1)
    cfgs = [fast_config(algo=algo, seed=seed, steps=60, log_every=15, checkpoint_every=30,
                        precision=precision, **extra)
            for seed, extra in zip((1, 2, 3), settings, strict=True)]  # fmt: skip
    alone = [tmp_path / f"alone{i}" for i in range(3)]
    for cfg, run in zip(cfgs, alone, strict=True):
        train(replays[0], cfg, run)
    stacked = [tmp_path / f"stacked{i}" for i in range(3)]
    train_stack([StackMember(replays[0], c, d) for c, d in zip(cfgs, stacked, strict=True)])
    for a, s in zip(alone, stacked, strict=True):
        _same_files(a, s, (*FILES, f"checkpoints/step_{30:08d}/optim.safetensors"))
    assert (stacked[0] / FILES[0]).read_bytes() != (stacked[1] / FILES[0]).read_bytes()
    cut = tmp_path / "cut"
    train_stack([StackMember(replays[0], c, d) for c, d in
                 zip(cfgs[:2], [tmp_path / "other", cut], strict=True)], stop_after=40)  # fmt: skip
    train(replays[0], cfgs[1], cut, resume=True)
    _same_files(alone[1], cut)


def test_the_device_identity_diagnostic_finds_every_step_operation_identical_on_a_cpu():
    """bench/gpu_identity.py (run on a GPU by bench/gpu_card.sh) applies each operation of an
    IQL step to a run alone and inside stacks; on a CPU, where the stack's promise holds,
    every form it checks must come out identical, and a form that depends on K must not."""
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "bench" / "gpu_identity.py"
    spec = importlib.util.spec_from_file_location("sepsisrl_gpu_identity", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cpu = torch.device("cpu")
    for label, (fn, shapes) in module.cases(cpu).items():
        assert module.check(fn, shapes, [1, 2, 3], cpu)["identical"], label
    # the check sees a difference where there is one: an operation that mixes the runs
    doc = module.check(lambda g: g.mean(0, keepdim=True).expand_as(g), [(8, 4)], [1, 2], cpu)
    assert not doc["identical"] and doc["differs"][0]["k"] == 2
