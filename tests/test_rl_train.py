"""Training (``sepsisrl.rl.trainer.train``): every algorithm on any contract-following replay,
the run folder contract, seeding, presets, checkpoints without pickle, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sepsisrl.config import ConfigError
from sepsisrl.rl.checkpoint import latest_checkpoint, module_tensors
from sepsisrl.rl.config import TrainConfig, load_train_config
from sepsisrl.rl.data import load_split
from sepsisrl.rl.trainer import RunExistsError, make_algorithm, train
from sepsisrl.threads import cpu

from .rl_fixtures import fast_config, feature_names, write_replay

STATE_DIM, N_ACTIONS = 7, 3
ALGOS = ("iql", "cql", "bcq", "bc")
PRESET = "iql_sofa_shaped_conservative_safe"

#: metrics.jsonl keys besides step, epoch and steps_per_second
METRIC_KEYS = {
    "iql": {
        "value_loss",
        "critic_loss",
        "actor_loss",
        "q_mean",
        "v_mean",
        "advantage_mean",
        "advantage_std",
        "capped_weight_fraction",
    },
    "cql": {"critic_loss", "cql_loss", "q_mean"},
    "bcq": {"critic_loss", "bc_loss", "q_mean"},
    "bc": {"actor_loss", "accuracy"},
}
#: networks in final/model.safetensors, and the one exported as policy.safetensors
MODULES = {
    "iql": ({"critic", "critic_target", "value", "actor"}, "actor"),
    "cql": ({"q", "q_target"}, "q"),
    "bcq": ({"q", "behaviour", "q_target"}, "q"),
    "bc": ({"actor"}, "actor"),
}

TRAIN_STEPS = 250  # log_every 20: lines at 20, 40, ..., 240 and a last one at 250


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rl_train")
    return write_replay(root / "replay" / "sofa_shaped", 80, STATE_DIM, N_ACTIONS, seed=5)


@pytest.fixture(scope="module")
def n_train(replay: Path) -> int:
    return len(load_split(replay, "train"))


@pytest.fixture(scope="module")
def runs(replay: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One finished run per algorithm (seed 42, 250 steps, checkpoints every 40 steps)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for algo in ALGOS:
        result = train(replay, fast_config(algo=algo, steps=TRAIN_STEPS), root / algo)
        assert result.steps == TRAIN_STEPS
        out[algo] = result.run_dir
    return out


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "steps_per_second"} for line in lines]


# -- the run folder ------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_config_json_records_algo_seed_replay_fingerprint_and_features(
    algo: str, runs: dict[str, Path], replay: Path
):
    doc = json.loads((runs[algo] / "config.json").read_text())
    assert doc["algo"] == algo and doc["seed"] == 42
    assert doc["total_steps"] == TRAIN_STEPS
    assert doc["config"]["algo"] == algo and doc["config"]["steps"] == TRAIN_STEPS
    assert doc["config"]["hidden_sizes"] == [32, 32]
    rep = doc["replay"]
    train_split = load_split(replay, "train")
    assert rep["train_fingerprint"] == train_split.fingerprint
    assert rep["train_transitions"] == len(train_split)
    assert rep["train_episodes"] == train_split.n_episodes
    assert rep["feature_names"] == feature_names(STATE_DIM)
    assert (rep["state_dim"], rep["n_actions"]) == (STATE_DIM, N_ACTIONS)
    assert rep["variant"] == "sofa_shaped"
    # the kind of CPU the weights depend on (docs/train.md: bit-identical on the same kind)
    assert doc["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert doc["cpu"] == cpu()  # which the capability alone does not name
    assert Path(rep["path"]) == replay.absolute()
    assert doc["policy_module"] == MODULES[algo][1]


@pytest.mark.parametrize("algo", ALGOS)
def test_metrics_jsonl_has_one_line_per_log_interval_with_the_algorithm_losses(
    algo: str, runs: dict[str, Path]
):
    lines = metrics(runs[algo])
    assert [line["step"] for line in lines] == [*range(20, TRAIN_STEPS, 20), TRAIN_STEPS]
    for line in lines:
        assert set(line) == {"step", "epoch", "steps_per_second"} | METRIC_KEYS[algo]
        assert all(isinstance(v, (int, float)) and v == v for v in line.values())  # no NaN
    # epochs advance as the train split is used up (steps per epoch = transitions // 32)
    doc = json.loads((runs[algo] / "config.json").read_text())
    assert lines[-1]["epoch"] == (TRAIN_STEPS - 1) // doc["steps_per_epoch"]


def test_iql_metrics_report_q_v_advantage_and_capped_weight_fraction(runs: dict[str, Path]):
    for line in metrics(runs["iql"]):
        assert 0.0 <= line["capped_weight_fraction"] <= 1.0
        assert line["advantage_std"] >= 0.0
        for key in ("q_mean", "v_mean", "advantage_mean"):
            assert abs(line[key]) < 1e3


def test_capped_weight_fraction_is_one_when_every_weight_hits_the_cap(replay: Path, tmp_path):
    # exp(beta * advantage) >= 1e-30 for any advantage this small run can produce
    capped = fast_config(steps=20, **{"iql.weight_cap": 1e-30})
    train(replay, capped, tmp_path / "capped")
    assert [m["capped_weight_fraction"] for m in metrics(tmp_path / "capped")] == [1.0]
    # temperature 0: every weight is exp(0) = 1, far below the default cap of 100
    flat = fast_config(steps=20, **{"iql.temperature": 0.0})
    train(replay, flat, tmp_path / "flat")
    assert [m["capped_weight_fraction"] for m in metrics(tmp_path / "flat")] == [0.0]


@pytest.mark.parametrize("algo", ALGOS)
def test_final_folder_holds_all_networks_and_the_policy_as_safetensors(
    algo: str, runs: dict[str, Path]
):
    final = runs[algo] / "final"
    model = tensors(final / "model.safetensors")
    policy = tensors(final / "policy.safetensors")
    modules, acting = MODULES[algo]
    assert {key.split(".", 1)[0] for key in model} == modules
    net = {k[len(acting) + 1 :]: v for k, v in model.items() if k.startswith(f"{acting}.")}
    if "weights.0" in net:  # a stackable algorithm keeps its networks as stacks of one
        stack = net
        net = {}
        for i in range(3):
            net[f"net.{2 * i}.weight"] = stack[f"weights.{i}"][0].t()
            net[f"net.{2 * i}.bias"] = stack[f"biases.{i}"][0, 0]
    assert_same_tensors(policy, net)
    assert policy["net.4.weight"].shape == (N_ACTIONS, 32)
    state = json.loads((final / "state.json").read_text())
    assert state["step"] == TRAIN_STEPS and state["policy_module"] == acting
    assert set(state["final_metrics"]) == METRIC_KEYS[algo]
    if algo == "bcq":  # the behaviour model gates BCQ's greedy action
        behaviour = tensors(final / "behaviour.safetensors")
        assert_same_tensors(
            behaviour,
            {k[len("behaviour.") :]: v for k, v in model.items() if k.startswith("behaviour.")},
        )


def test_iql_policy_has_the_released_actor_layout(runs: dict[str, Path]):
    policy = tensors(runs["iql"] / "final" / "policy.safetensors")
    assert set(policy) == {f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert policy["net.0.weight"].shape == (32, STATE_DIM)
    assert policy["net.2.weight"].shape == (32, 32)
    assert policy["net.4.weight"].shape == (N_ACTIONS, 32)
    assert policy["net.4.bias"].shape == (N_ACTIONS,)
    assert all(t.dtype == torch.float32 for t in policy.values())


@pytest.mark.parametrize("algo", ALGOS)
def test_checkpoints_keep_the_latest_two_with_optimiser_state(algo: str, runs: dict[str, Path]):
    folders = sorted(p.name for p in (runs[algo] / "checkpoints").iterdir())
    # checkpoints every 40 steps (none at the final step 250); keep_checkpoints = 2
    assert folders == ["step_00000200", "step_00000240"]
    ckpt = runs[algo] / "checkpoints" / "step_00000240"
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors",
        "optim.safetensors",
        "state.json",
    }
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 240
    optim = tensors(ckpt / "optim.safetensors")
    for name in state["optimizers"]:
        assert any(k.startswith(f"{name}.") and k.endswith(".exp_avg_sq") for k in optim)
    assert "__extra__.permutation" in optim and "__extra__.generator_state" in optim


@pytest.mark.parametrize(("state_dim", "n_actions"), [(1, 2), (62, 25)])
def test_any_state_dim_and_action_count_trains(tmp_path: Path, state_dim: int, n_actions: int):
    folder = write_replay(tmp_path / "replay" / "other", 30, state_dim, n_actions, seed=9)
    run = train(folder, fast_config(steps=5, log_every=5, checkpoint_every=5), tmp_path / "run")
    policy = tensors(run.run_dir / "final" / "policy.safetensors")
    assert policy["net.0.weight"].shape == (32, state_dim)
    assert policy["net.4.weight"].shape == (n_actions, 32)
    doc = json.loads((run.run_dir / "config.json").read_text())
    assert doc["replay"]["feature_names"] == feature_names(state_dim)


# -- step count, presets, config errors ----------------------------------------------------------


def test_default_step_count_is_epochs_times_transitions_over_batch_size(
    replay: Path, n_train: int, tmp_path: Path
):
    cfg = fast_config(algo="bc", epochs=3, log_every=10, checkpoint_every=10)
    assert cfg.steps is None
    result = train(replay, cfg, tmp_path / "run")
    expected = 3 * (n_train // 32)
    assert result.steps == expected
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc["total_steps"] == expected and doc["steps_per_epoch"] == n_train // 32
    lines = metrics(tmp_path / "run")
    assert lines[-1]["step"] == expected and lines[-1]["epoch"] == 2  # the third epoch, 0-based
    assert json.loads((tmp_path / "run" / "final" / "state.json").read_text())["step"] == expected


def test_steps_override_epochs(replay: Path, tmp_path: Path):
    cfg = fast_config(algo="bc", epochs=3, steps=7, log_every=5, checkpoint_every=5)
    result = train(replay, cfg, tmp_path / "run")
    assert result.steps == 7
    assert [m["step"] for m in metrics(tmp_path / "run")] == [5, 7]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["total_steps"] == 7


def test_conservative_safe_preset_resolves_to_the_model_card_values():
    cfg = load_train_config(preset=PRESET)
    assert cfg.algo == "iql" and cfg.preset == PRESET and cfg.epochs == 200
    assert cfg.iql.actor_lr == 5e-5
    assert cfg.iql.critic_lr == 1e-4
    assert cfg.iql.value_lr == 1e-4
    assert cfg.iql.expectile == 0.6
    assert cfg.iql.temperature == 2.0
    # overrides still win over the preset
    assert load_train_config(preset=PRESET, overrides={"iql.expectile": 0.8}).iql.expectile == 0.8


def test_preset_values_reach_the_algorithm_and_config_json(replay: Path, tmp_path: Path):
    # default architecture (256, 256); 2 steps, a checkpoint after the first
    cfg = load_train_config(
        preset=PRESET,
        overrides={
            "steps": 2,
            "batch_size": 32,
            "threads": 1,
            "log_every": 1,
            "checkpoint_every": 1,
        },
    )
    algo = make_algorithm(cfg, STATE_DIM, N_ACTIONS, 0.99)
    assert (algo.cfg.expectile, algo.cfg.temperature) == (0.6, 2.0)
    train(replay, cfg, tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc["preset"] == PRESET and doc["config"]["epochs"] == 200
    assert doc["config"]["iql"] == {
        "actor_lr": 5e-5,
        "critic_lr": 1e-4,
        "value_lr": 1e-4,
        "expectile": 0.6,
        "temperature": 2.0,
        "weight_cap": 100.0,
        "polyak": 0.005,
    }
    assert doc["total_steps"] == 2  # steps override the preset's 200 epochs
    state = json.loads(
        (tmp_path / "run" / "checkpoints" / "step_00000001" / "state.json").read_text()
    )
    # one Adam, one parameter group per network in the order critic, value, actor
    lrs = [group["lr"] for group in state["optimizers"]["adam"]["param_groups"]]
    assert lrs == [1e-4, 1e-4, 5e-5]
    policy = tensors(tmp_path / "run" / "final" / "policy.safetensors")
    shapes = {k: tuple(v.shape) for k, v in policy.items()}
    assert shapes == {
        "net.0.weight": (256, STATE_DIM),
        "net.0.bias": (256,),
        "net.2.weight": (256, 256),
        "net.2.bias": (256,),
        "net.4.weight": (N_ACTIONS, 256),
        "net.4.bias": (N_ACTIONS,),
    }


def test_checkpoint_interval_not_a_multiple_of_log_interval_is_a_config_error():
    with pytest.raises(ConfigError, match=r"checkpoint_every \(100\) must be a multiple"):
        load_train_config(overrides={"log_every": 30, "checkpoint_every": 100})
    cfg = load_train_config(overrides={"log_every": 25, "checkpoint_every": 100})
    assert cfg.checkpoint_every == 100


@pytest.mark.parametrize(
    "override",
    [{"algo": "xyz"}, {"batch_size": 0}, {"iql.expectile": 1.0}, {"no_such_key": 1}],
)
def test_invalid_training_config_is_a_config_error(override: dict):
    with pytest.raises(ConfigError, match="invalid training configuration"):
        load_train_config(overrides=override)


def test_unknown_preset_is_a_config_error_listing_the_presets():
    with pytest.raises(ConfigError, match=f"unknown preset 'nope'; available: .*{PRESET}"):
        load_train_config(preset="nope")


# -- seeding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(
    algo: str, runs: dict[str, Path], replay: Path, tmp_path: Path
):
    reference = tensors(runs[algo] / "final" / "model.safetensors")
    train(replay, fast_config(algo=algo, steps=TRAIN_STEPS, seed=42), tmp_path / "same")
    assert_same_tensors(tensors(tmp_path / "same" / "final" / "model.safetensors"), reference)
    assert without_timing(metrics(tmp_path / "same")) == without_timing(metrics(runs[algo]))
    train(replay, fast_config(algo=algo, steps=TRAIN_STEPS, seed=43), tmp_path / "other")
    other = tensors(tmp_path / "other" / "final" / "model.safetensors")
    assert other.keys() == reference.keys()
    assert all(not torch.equal(other[k], reference[k]) for k in reference if k.endswith("weight"))


def _initial_weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg.seed)
    return module_tensors(make_algorithm(cfg, STATE_DIM, N_ACTIONS, 0.99).modules())


def test_seed_sets_the_initial_weights(replay: Path, tmp_path: Path):
    # one step with learning rates so small that the trained weights equal the initial ones
    tiny = {
        "steps": 1,
        "log_every": 1,
        "checkpoint_every": 1,
        "iql.actor_lr": 1e-12,
        "iql.critic_lr": 1e-12,
        "iql.value_lr": 1e-12,
    }
    finals = {}
    for seed in (1, 2):
        cfg = fast_config(seed=seed, **tiny)
        train(replay, cfg, tmp_path / f"seed{seed}")
        finals[seed] = tensors(tmp_path / f"seed{seed}" / "final" / "model.safetensors")
        expected = _initial_weights(cfg)
        assert finals[seed].keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(finals[seed][key], expected[key], rtol=0, atol=1e-9)
    for key in finals[1]:
        if key.endswith("weight"):
            assert (finals[1][key] - finals[2][key]).abs().max() > 1e-3, key


def test_seed_sets_the_batch_order(replay: Path, n_train: int, tmp_path: Path):
    perms = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        cfg = fast_config(algo="bc", seed=seed, steps=4, log_every=2, checkpoint_every=2)
        train(replay, cfg, tmp_path / name)
        optim = tensors(tmp_path / name / "checkpoints" / "step_00000002" / "optim.safetensors")
        perms[name] = optim["__extra__.permutation"]
    expected = torch.randperm(n_train, generator=torch.Generator().manual_seed(3))
    assert torch.equal(perms["a"], expected) and torch.equal(perms["b"], expected)
    assert sorted(perms["c"].tolist()) == list(range(n_train))
    assert not torch.equal(perms["c"], expected)


# -- existing runs, overwrite, resume -------------------------------------------------------------


def test_existing_run_folder_is_not_overwritten_without_resume_or_overwrite(
    replay: Path, tmp_path: Path
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    cfg = fast_config(algo="bc", steps=5, log_every=5, checkpoint_every=5)
    with pytest.raises(RunExistsError, match="already holds a run; use --resume"):
        train(replay, cfg, run)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    train(replay, cfg, run, overwrite=True)
    assert not (run / "notes.txt").exists()
    assert (run / "final" / "policy.safetensors").is_file()


def test_empty_existing_folder_is_used_for_a_new_run(replay: Path, tmp_path: Path):
    (tmp_path / "run").mkdir()
    train(
        replay, fast_config(algo="bc", steps=5, log_every=5, checkpoint_every=5), tmp_path / "run"
    )
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


#: an IQL run of 200 steps, stopped after 130 (checkpoints every 40: the last is step 120)
INTERRUPTED = {"steps": 200, "log_every": 10, "checkpoint_every": 40}


@pytest.fixture(scope="module")
def interrupted(replay: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("interrupted") / "run"
    result = train(replay, fast_config(**INTERRUPTED), run, stop_after=130)
    assert result.steps == 130
    return run


def _unchanged_snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "change",
    [{"iql.actor_lr": 1e-3}, {"seed": 7}, {"steps": 300}, {"batch_size": 16}],
)
def test_resume_with_a_changed_config_is_refused(interrupted: Path, replay: Path, change: dict):
    before = _unchanged_snapshot(interrupted)
    changed = fast_config(**{**INTERRUPTED, **change})
    with pytest.raises(ValueError, match="another config or dataset; refusing to resume"):
        train(replay, changed, interrupted, resume=True)
    assert _unchanged_snapshot(interrupted) == before  # nothing written, final/ still absent
    assert not (interrupted / "final").exists()
    assert latest_checkpoint(interrupted).name == "step_00000120"


def test_resume_on_another_dataset_is_refused(interrupted: Path, tmp_path: Path):
    before = _unchanged_snapshot(interrupted)
    other = write_replay(tmp_path / "replay" / "sofa_shaped", 80, STATE_DIM, N_ACTIONS, seed=6)
    with pytest.raises(ValueError, match="another config or dataset; refusing to resume"):
        train(other, fast_config(**INTERRUPTED), interrupted, resume=True)
    assert _unchanged_snapshot(interrupted) == before


@pytest.mark.parametrize("change", [{"hidden_sizes": [16, 16]}, {"algo": "cql"}])
def test_resume_with_a_changed_architecture_or_algorithm_is_refused_clearly(
    interrupted: Path, replay: Path, change: dict
):
    changed = fast_config(**{**INTERRUPTED, **change})
    with pytest.raises(ValueError, match="refusing to resume"):
        train(replay, changed, interrupted, resume=True)


@pytest.mark.parametrize(
    ("algo", "compiled"), [(a, False) for a in ALGOS] + [("iql", True)], ids=[*ALGOS, "iql-compile"]
)
def test_interrupted_then_resumed_run_matches_an_uninterrupted_one_bit_for_bit(
    algo: str, compiled: bool, replay: Path, tmp_path: Path
):
    # 200 steps cross several epochs (transitions // 32 steps each); checkpoints every 40
    cfg = fast_config(
        algo=algo, steps=200, log_every=10, checkpoint_every=40, seed=11, compile=compiled
    )
    full = train(replay, cfg, tmp_path / "full")
    assert full.resumed_from is None

    part = train(replay, cfg, tmp_path / "run", stop_after=130)
    assert part.steps == 130
    assert not (tmp_path / "run" / "final").exists()
    assert latest_checkpoint(tmp_path / "run").name == "step_00000120"
    assert metrics(tmp_path / "run")[-1]["step"] == 130  # logged after the last checkpoint

    resumed = train(replay, cfg, tmp_path / "run", resume=True)
    assert resumed.resumed_from == 120 and resumed.steps == 200
    for name in ("model.safetensors", "policy.safetensors"):
        assert_same_tensors(
            tensors(tmp_path / "run" / "final" / name), tensors(tmp_path / "full" / "final" / name)
        )
    # metrics after the checkpoint are rewritten once, identical to the uninterrupted run
    assert without_timing(metrics(tmp_path / "run")) == without_timing(metrics(tmp_path / "full"))


def test_resume_without_a_checkpoint_starts_the_run_afresh(replay: Path, tmp_path: Path):
    cfg = fast_config(algo="cql", steps=60, log_every=10, checkpoint_every=40)
    train(replay, cfg, tmp_path / "full")
    train(replay, cfg, tmp_path / "run", stop_after=30)  # stopped before the first checkpoint
    assert latest_checkpoint(tmp_path / "run") is None
    result = train(replay, cfg, tmp_path / "run", resume=True)
    assert result.resumed_from is None and result.steps == 60
    assert_same_tensors(
        tensors(tmp_path / "run" / "final" / "model.safetensors"),
        tensors(tmp_path / "full" / "final" / "model.safetensors"),
    )
    assert [m["step"] for m in metrics(tmp_path / "run")] == [10, 20, 30, 40, 50, 60]


# -- no pickle -----------------------------------------------------------------------------------


def test_no_file_in_a_run_folder_is_a_pickle(runs: dict[str, Path], interrupted: Path):
    folders = [*runs.values(), interrupted]
    seen = set()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            head = path.read_bytes()[:4]
            assert not head.startswith(b"\x80"), f"{path} looks like a pickle"
            assert not head.startswith(b"PK"), f"{path} looks like a torch.save zip"
            seen.add(path.suffix)
            if path.suffix == ".safetensors":
                assert load_file(str(path)), path
            elif path.suffix == ".json":
                json.loads(path.read_text())
            else:
                assert path.name == "metrics.jsonl", f"unexpected file {path}"
                for line in path.read_text().splitlines():
                    json.loads(line)
    assert seen == {".safetensors", ".json", ".jsonl"}


# -- compiled IQL step ---------------------------------------------------------------------------


def test_compile_is_for_iql_only():
    with pytest.raises(ConfigError, match="iql only"):
        fast_config(algo="cql", compile=True)


def test_compiled_iql_matches_eager_and_repeats_bit_for_bit(
    runs: dict[str, Path], replay: Path, tmp_path: Path
):
    eager = tensors(runs["iql"] / "final" / "model.safetensors")
    results = [
        train(replay, fast_config(steps=TRAIN_STEPS, compile=True), tmp_path / f"compiled{i}")
        for i in range(2)
    ]
    first, second = (tensors(r.run_dir / "final" / "model.safetensors") for r in results)
    assert all(r.compile_seconds is not None and r.compile_seconds > 0 for r in results)
    assert_same_tensors(first, second)  # a compiled run is reproducible
    assert json.loads((results[0].run_dir / "config.json").read_text())["config"]["compile"]
    for key in eager:  # and trains the same networks as the eager step, to float rounding
        torch.testing.assert_close(first[key], eager[key], rtol=1e-3, atol=1e-4, msg=key)


def test_a_compile_failure_stops_before_the_first_step_and_says_what_to_do(
    replay: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from sepsisrl.rl.iql import IQL

    def broken(self) -> None:
        def fail(*_args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        self.compute_gradients = fail

    monkeypatch.setattr(IQL, "compile_step", broken)
    with pytest.raises(ValueError, match=r"C\+\+ compiler.*--set compile=false"):
        train(replay, fast_config(steps=50, compile=True), tmp_path / "run")
    assert metrics(tmp_path / "run") == []  # no step was taken
    assert not (tmp_path / "run" / "final").exists()
