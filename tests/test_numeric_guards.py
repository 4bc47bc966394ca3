"""No silent wrong result (issue 14, part A): a replay with absurd, non-finite or out-of-range
values, a bad discount or gapped episodes is refused when loaded; a diverging training stops
with an error and leaves no final/; nothing is evaluated or exported from NaN weights; a diverged
FQE is never printed as a number."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sepsisrl.dataset.preprocessing import StatePreprocessor
from sepsisrl.ope import estimators as estimators_module
from sepsisrl.ope import evaluate as evaluate_module
from sepsisrl.ope.behaviour import BehaviourConfig
from sepsisrl.ope.evaluate import EvalConfig, evaluate
from sepsisrl.ope.fqe import FQE, FQEConfig
from sepsisrl.release.bundle import ExportError, export_run
from sepsisrl.rl.data import ReplayError, load_meta, load_split
from sepsisrl.rl.iql import IQL
from sepsisrl.rl.policies import NonFiniteWeightsError, TrainedPolicy
from sepsisrl.rl.trainer import TrainingDivergedError, make_algorithm, train

from .rl_fixtures import (
    FAST_CLI,
    fast_config,
    feature_names,
    read_meta,
    read_split,
    set_column,
    write_meta,
    write_replay,
    write_split,
)

STATE_DIM, N_ACTIONS = 7, 3
FAST_EVAL = EvalConfig(
    bootstrap_resamples=100, behaviour=BehaviourConfig(max_epochs=2), fqe=FQEConfig(members=2)
)


@pytest.fixture
def replay(tmp_path: Path) -> Path:
    return write_replay(tmp_path / "ws" / "replay" / "sofa_shaped", 30, STATE_DIM, N_ACTIONS, 3)


def poison(folder: Path, column: str = "s_f02", value: float = 1e30, every: int = 7) -> None:
    """``value`` in ``column`` of every ``every``-th train row (the fault-injection run)."""
    table = read_split(folder)
    values = table[column].to_numpy().copy()
    values[::every] = value
    write_split(folder, set_column(table, column, values))


def with_bounds(folder: Path, low: float = -6.0, high: float = 6.0) -> None:
    meta = read_meta(folder)
    meta["state_bounds"] = {
        "rule": "test",
        "features": {n: [low, high] for n in meta["feature_names"]},
    }
    write_meta(folder, meta)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(replay, a finished iql run) on a small fixture replay."""
    root = tmp_path_factory.mktemp("guards")
    folder = write_replay(root / "ws" / "replay" / "sofa_shaped", 40, STATE_DIM, N_ACTIONS, 5)
    run = train(folder, fast_config(steps=40), root / "ws" / "runs" / "iql").run_dir
    return folder, run


# -- 1a. training stops on a non-finite loss or weight -------------------------------------------


def test_a_nan_loss_stops_training_naming_the_step_and_the_loss(replay: Path, tmp_path: Path):
    poison(replay)  # no state_bounds and no preprocessing.json: only finiteness is checked
    run = tmp_path / "run"
    with pytest.raises(
        TrainingDivergedError, match=r"training diverged at step 20: loss \w+_loss is nan"
    ):
        train(replay, fast_config(steps=80), run)
    assert not (run / "final").exists()
    assert not list((run / "checkpoints").glob("step_*"))  # nothing saved from the NaN weights
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all("NaN" not in line for line in lines)


def test_a_diverged_run_resumes_from_its_last_good_checkpoint(replay: Path, tmp_path, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    original = IQL.update

    def blows_up_after_60(self, *batch):
        calls["n"] += 1
        metrics = original(self, *batch)
        if calls["n"] > 60:
            metrics = {k: v * float("nan") for k, v in metrics.items()}
        return metrics

    monkeypatch.setattr(IQL, "update", blows_up_after_60)
    with pytest.raises(
        TrainingDivergedError,
        match=r"at step 80: loss value_loss is nan \(mean over steps 61\.\.80",
    ):
        train(replay, fast_config(steps=120), run)
    assert not (run / "final").exists()
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == ["step_00000040"]
    monkeypatch.setattr(IQL, "update", original)
    result = train(replay, fast_config(steps=120), run, resume=True)
    assert result.resumed_from == 40 and (run / "final" / "policy.safetensors").is_file()
    uninterrupted = train(replay, fast_config(steps=120), tmp_path / "clean").run_dir
    a = load_file(str(run / "final" / "model.safetensors"))
    b = load_file(str(uninterrupted / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_weights_stop_training_before_a_checkpoint(replay: Path, tmp_path, monkeypatch):
    original = IQL.update

    def poisons_a_weight(self, *batch):
        metrics = original(self, *batch)
        with torch.no_grad():
            next(iter(self.modules()["actor"].parameters())).fill_(float("inf"))
        return {k: torch.zeros_like(v) for k, v in metrics.items()}  # finite losses

    monkeypatch.setattr(IQL, "update", poisons_a_weight)
    run = tmp_path / "run"
    with pytest.raises(
        TrainingDivergedError, match=r"at step 40: weight tensor actor\.\S+ holds NaN or inf"
    ):
        train(replay, fast_config(steps=80), run)
    assert not (run / "final").exists() and not list((run / "checkpoints").glob("step_*"))


def test_the_cli_exits_non_zero_with_one_line_on_divergence(replay: Path, tmp_path: Path):
    poison(replay)
    proc = subprocess.run(
        [sys.executable, "-m", "sepsisrl.cli", "train", "--replay", str(replay), "--steps", "40",
         "--out", str(tmp_path / "run"), "-q", *FAST_CLI],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, err
    assert "training diverged at step 40: loss value_loss is nan" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "final").exists()


# -- 1b. the replay contract bounds every state column --------------------------------------------


def test_a_value_outside_the_recorded_bounds_is_refused_naming_file_split_column_row(replay: Path):
    with_bounds(replay)
    assert len(load_split(replay, "train")) > 0  # the fixture's normal values lie inside
    poison(replay)
    with pytest.raises(ReplayError) as err:
        load_split(replay, "train")
    msg = str(err.value)
    assert "replay_train.parquet (split train): column s_f02 has" in msg
    assert "e.g. row 0 (stay_id 30000000, step 0) = 1e+30" in msg
    assert "expected -6 <= value <= 6" in msg and "meta.json state_bounds" in msg
    load_split(replay, "validation")  # the untouched splits still load


def test_training_and_evaluation_refuse_the_poisoned_replay(replay: Path, tmp_path: Path):
    with_bounds(replay)
    poison(replay)
    with pytest.raises(ReplayError, match="outside the build's range"):
        train(replay, fast_config(steps=20), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ReplayError, match="outside the build's range"):
        evaluate("no_treatment", replay, tmp_path / "eval", kind="named", cfg=FAST_EVAL)
    assert not (tmp_path / "eval").exists()


def test_a_replay_without_state_bounds_derives_them_from_the_build_statistics(replay: Path):
    """An older replay (no state_bounds in meta.json) of a workspace: the range comes from
    features/preprocessing.json; without that file only finiteness is checked."""
    names = feature_names(STATE_DIM)
    prep = StatePreprocessor(names, {n: (-10.0, 10.0) for n in names}, set())
    prep.median = {n: 0.0 for n in names}
    prep.fit_scaler(np.array([[-1.0] * STATE_DIM, [1.0] * STATE_DIM]))  # mean 0, std 1
    ws = replay.parent.parent
    (ws / "features").mkdir()
    (ws / "features" / "preprocessing.json").write_text(json.dumps(prep.to_json()))
    meta = read_meta(replay)
    meta["preprocessing"] = "features/preprocessing.json"
    write_meta(replay, meta)
    low, high, source = load_meta(replay).state_bounds()
    assert (low == -10.0).all() and (high == 10.0).all() and "derived from" in source
    table = read_split(replay)
    values = table["s_f04"].to_numpy().copy()
    values[5] = 10.0
    write_split(replay, set_column(table, "s_f04", values))
    load_split(replay, "train")  # exactly on the bound is inside
    values[5] = 10.5
    write_split(replay, set_column(table, "s_f04", values))
    with pytest.raises(
        ReplayError,
        match=r"column s_f04 has 1 value\(s\) outside .*row 5 .* = 10\.5; expected -10 <= value "
        r"<= 10 \(derived from .*preprocessing\.json \(meta\.json has no state_bounds\)\)",
    ):
        load_split(replay, "train")
    (ws / "features" / "preprocessing.json").unlink()
    assert load_meta(replay).state_bounds() is None
    assert len(load_split(replay, "train")) == table.num_rows


def test_a_non_finite_state_names_the_column_and_row(replay: Path):
    poison(replay, column="s_f05", value=float("nan"), every=1000)
    with pytest.raises(
        ReplayError,
        match=r"states contain NaN or inf: column s_f05 has 1 non-finite value\(s\), e\.g\. "
        r"row 0 \(stay_id 30000000, step 0\) = nan",
    ):
        load_split(replay, "train")


def test_a_real_build_records_the_bounds_and_its_replay_lies_inside(built):
    ws, cfg, _ = built
    replay = ws / "replay" / "sofa_shaped"
    meta = load_meta(replay)
    bounds = meta.doc.state_bounds.features
    assert list(bounds) == cfg.feature_names
    assert bounds["map_missing"] == [0.0, 1.0]
    prep = json.loads((ws / "features" / "preprocessing.json").read_text())["features"]
    hr = prep["heart_rate"]
    assert bounds["heart_rate"][1] == pytest.approx(
        (hr["clip_high"] - hr["mean"]) / hr["std"], rel=1e-6
    )
    low, high, _ = meta.state_bounds()
    for split in ("train", "validation", "test"):
        x = load_split(replay, split).states.numpy()
        assert (x >= low.astype(np.float32)).all() and (x <= high.astype(np.float32)).all()


# -- 3. gamma and contiguous steps -----------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.5, 0.0, -0.5, "0.9", None, float("nan")])
def test_gamma_outside_zero_one_is_refused(replay: Path, gamma):
    meta = read_meta(replay)
    meta["gamma"] = gamma
    write_meta(replay, meta)
    with pytest.raises(ReplayError, match=r"meta\.json: gamma must be a number in \(0, 1\]"):
        load_meta(replay)


def test_gamma_one_is_accepted(replay: Path):
    meta = read_meta(replay)
    meta["gamma"] = 1
    write_meta(replay, meta)
    assert load_meta(replay).gamma == 1.0


@pytest.mark.parametrize(
    ("shift_from", "expected"),
    [
        (2, "expected step 2 after step 1, found step 3"),
        (0, "expected step 0 at its start, found step 1"),
    ],
)
def test_an_episode_with_a_gap_in_its_steps_is_refused(
    replay: Path, shift_from: int, expected: str
):
    table = read_split(replay)
    stay = table["stay_id"].to_numpy()
    step = table["step"].to_numpy().copy()
    first_stay = stay[0]
    rows = (stay == first_stay) & (step >= shift_from)
    assert (stay == first_stay).sum() >= 3
    step[rows] += 1
    write_split(replay, set_column(table, "step", step))
    with pytest.raises(
        ReplayError,
        match=rf"replay_train\.parquet: episode stay_id {first_stay} has a gap in its steps: "
        rf"{expected}",
    ):
        load_split(replay, "train")


# -- 2. nothing is evaluated or exported from NaN weights or a diverged FQE -------------------


def nan_copy(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    tensors = load_file(str(dest / "final" / "policy.safetensors"))
    key = sorted(tensors)[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(dest / "final" / "policy.safetensors"))
    return dest


def test_evaluate_and_export_refuse_a_run_with_nan_weights(trained, tmp_path: Path):
    folder, run = trained
    bad = nan_copy(run, tmp_path / "runs" / "nan")
    with pytest.raises(
        NonFiniteWeightsError,
        match=rf"run {bad}: tensor 'net\.0\.bias' of .*policy\.safetensors holds NaN or inf",
    ):
        TrainedPolicy(bad)
    with pytest.raises(NonFiniteWeightsError, match="holds NaN or inf"):
        evaluate(bad, folder, tmp_path / "eval", kind="run", cfg=FAST_EVAL)
    assert not (tmp_path / "eval").exists()  # refused before anything is written
    with pytest.raises(
        ExportError, match=r"tensor 'net\.0\.bias' .* holds NaN or inf .*refusing to export"
    ):
        export_run(bad, tmp_path / "bundle", evaluations=[])
    assert not (tmp_path / "bundle").exists()


class DivergedFQE(FQE):
    """An FQE whose fit ran away (every Q value NaN)."""

    def q_values(self, states, raw=False):
        q = super().q_values(states, raw=raw)
        return np.full_like(q, np.nan)

    def full_q_values(self, states, raw=False):
        q = super().full_q_values(states, raw=raw)
        return None if q is None else np.full_like(q, np.nan)


def test_a_diverged_fqe_is_not_evaluable_and_the_card_says_so(trained, tmp_path, monkeypatch):
    folder, run = trained
    monkeypatch.setattr(estimators_module, "FQE", DivergedFQE)
    doc = evaluate(run, folder, tmp_path / "eval", kind="run", cfg=FAST_EVAL)
    assert doc["metrics"]["fqe_mean"] is None and doc["metrics"]["wdr_mean"] is None
    reasons = " | ".join(doc["evaluable"]["model_reasons"])
    assert "FQE diverged: estimate nan" in reasons and "not finite" in reasons
    assert doc["fqe"]["raw_out_of_range_share"] == 1.0  # NaN counts as out of range
    bundle = export_run(run, tmp_path / "bundle", evaluations=[tmp_path / "eval"])
    card = (bundle / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| FQE mean |"))
    assert "| not evaluable (FQE diverged: estimate nan" in row
    front = card.split("---")[1]
    assert "fqe_mean" not in front and "wdr_mean" not in front


def test_an_fqe_number_from_a_failed_fit_is_never_printed(trained, tmp_path: Path):
    """A metrics.json (older, or permissively gated) that carries a diverged FQE as a number
    with converged=false: export leaves it out of the card and config.json."""
    folder, run = trained
    doc = evaluate(run, folder, tmp_path / "eval", kind="run", cfg=FAST_EVAL)
    assert doc["evaluable"]["model"], doc["evaluable"]  # the fixture's FQE is fine
    doc["metrics"]["fqe_mean"] = -44374.0
    doc["metrics"]["headline_mean"] = -44374.0
    doc["fqe"]["converged"] = False
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(doc))
    bundle = export_run(run, tmp_path / "bundle", evaluations=[tmp_path / "eval"])
    card = (bundle / "README.md").read_text()
    assert "44374" not in card and "44,374" not in card
    row = next(line for line in card.splitlines() if line.startswith("| FQE mean |"))
    assert "not evaluable (FQE did not converge)" in row
    metrics = json.loads((bundle / "config.json").read_text())["metrics"]
    assert metrics["fqe_mean"]["mean"] is None and metrics["headline_mean"]["mean"] is None
    assert metrics["clinician_agreement"]["mean"] == pytest.approx(
        doc["metrics"]["clinician_agreement"]
    )


@pytest.mark.parametrize("bad", [[1.0], [2.0, 1.0], ["a", 1.0], None, [float("nan"), 1.0]])
def test_a_malformed_recorded_range_is_a_replay_error(replay: Path, bad):
    with_bounds(replay)
    meta = read_meta(replay)
    meta["state_bounds"]["features"]["f03"] = bad
    write_meta(replay, meta)
    # a range of another type is refused by the replay contract, naming the key
    with pytest.raises(
        ReplayError,
        match=r"state_bounds: the range of 'f03' must be \[low, high\]|"
        r"key 'state_bounds\.features\.f03(\.0)?': (Input should be a valid list|expected a "
        r"number)",
    ):
        load_split(replay, "train")


# -- 3. the replay's actions, rewards, meta and files are checked as they load --------------------


def retype(folder: Path, column: str, values: list | np.ndarray, kind) -> None:
    """Replace a train column by ``values`` of Arrow type ``kind`` (a doctored replay)."""
    import pyarrow as pa

    table = read_split(folder)
    i = table.schema.get_field_index(column)
    write_split(folder, table.set_column(i, pa.field(column, kind), pa.array(values, kind)))


def test_fractional_actions_are_refused_naming_file_column_row(replay: Path):
    import pyarrow as pa

    actions = read_split(replay)["action"].to_numpy().astype(np.float64)
    retype(replay, "action", actions + 0.5, pa.float64())
    with pytest.raises(
        ReplayError,
        match=r"replay_train\.parquet: column 'action' holds \d+ non-integer value\(s\), e\.g\. "
        r"row 0 \(stay_id \d+, step 0\) = \d\.5; expected integer action ids 0\.\.2",
    ):
        load_split(replay, "train")


def test_whole_float_actions_load_as_the_same_ids(replay: Path):
    import pyarrow as pa

    before = load_split(replay, "train")
    retype(replay, "action", read_split(replay)["action"].to_numpy().astype(np.float64),
           pa.float64())  # fmt: skip
    after = load_split(replay, "train")
    assert torch.equal(before.actions, after.actions) and after.actions.dtype == torch.int64
    assert after.fingerprint == before.fingerprint


def test_text_actions_are_refused_naming_the_column_and_type(replay: Path):
    import pyarrow as pa

    actions = read_split(replay)["action"].to_pylist()
    retype(replay, "action", [f"a{v}" for v in actions], pa.string())
    with pytest.raises(
        ReplayError,
        match=r"replay_train\.parquet: column 'action' must hold integer action ids 0\.\.2, "
        r"found type string \(row 0 = 'a\d'\)",
    ):
        load_split(replay, "train")


def test_missing_actions_are_refused_naming_the_row(replay: Path):
    import pyarrow as pa

    actions = read_split(replay)["action"].to_pylist()
    actions[4] = None
    retype(replay, "action", actions, pa.int16())
    with pytest.raises(
        ReplayError, match=r"column 'action' has 1 missing value\(s\), e\.g\. row 4"
    ):
        load_split(replay, "train")


def test_an_action_outside_the_set_names_meta_n_actions_and_the_row(replay: Path):
    table = read_split(replay)
    actions = table["action"].to_numpy().copy()
    actions[6] = 7
    write_split(replay, set_column(table, "action", actions))
    with pytest.raises(
        ReplayError,
        match=r"actions outside 0\.\.2 \(meta\.json n_actions 3\): column 'action' has 1 such "
        r"value\(s\), e\.g\. row 6 .* = 7$",
    ):
        load_split(replay, "train")


@pytest.mark.parametrize("value", [1e30, -16.0])
def test_a_reward_beyond_the_attainable_range_is_refused(replay: Path, value: float):
    table = read_split(replay)
    rewards = table["reward"].to_numpy().copy()
    rewards[5] = value
    write_split(replay, set_column(table, "reward", rewards))
    with pytest.raises(
        ReplayError,
        match=r"replay_train\.parquet: column 'reward' has 1 value\(s\) beyond the attainable "
        r"reward, e\.g\. row 5 \(stay_id \d+, step \d+\) = -?1[e6].*expected \|reward\| <= 15\.6 "
        r"\(meta\.json reward: max \|terminal\| 15 \+ shaping 0\.6\)",
    ):
        load_split(replay, "train")


def test_the_reward_bound_comes_from_the_meta_reward_spec(replay: Path):
    meta = read_meta(replay)
    meta["reward"].update(
        {"map_deficit_weight": 0.1, "map_target": 65.0, "lactate_clearance_weight": 0.0}
    )
    write_meta(replay, meta)
    assert load_meta(replay).reward_bound()[0] == pytest.approx(15.0 + 0.6 + 6.5)
    table = read_split(replay)
    rewards = table["reward"].to_numpy().copy()
    rewards[5] = 21.0  # attainable with a MAP deficit term
    write_split(replay, set_column(table, "reward", rewards))
    assert load_split(replay, "train").rewards[5].item() == 21.0
    del meta["reward"]["terminal_died"]  # no terminal rewards recorded: finite check only
    write_meta(replay, meta)
    assert load_meta(replay).reward_bound() is None


def test_a_non_finite_reward_names_the_row(replay: Path):
    table = read_split(replay)
    rewards = table["reward"].to_numpy().copy()
    rewards[2] = np.nan
    write_split(replay, set_column(table, "reward", rewards))
    with pytest.raises(ReplayError, match=r"column 'reward' contains NaN, inf or nulls: 1 value"):
        load_split(replay, "train")


@pytest.mark.parametrize(
    ("key", "value"),
    [("n_actions", 0), ("n_actions", 2.5), ("n_actions", True), ("state_dim", 0),
     ("state_dim", "7")],
)  # fmt: skip
def test_meta_counts_must_be_positive_integers(replay: Path, key: str, value):
    meta = read_meta(replay)
    meta[key] = value
    write_meta(replay, meta)
    with pytest.raises(
        ReplayError, match=rf"meta\.json: {key} must be an integer >= 1 .*, found {value!r}"
    ):
        load_meta(replay)


def test_meta_feature_names_must_be_unique_strings(replay: Path):
    meta = read_meta(replay)
    meta["feature_names"][1] = meta["feature_names"][0]
    write_meta(replay, meta)
    with pytest.raises(ReplayError, match=r"meta\.json: feature_names lists \['f00'\] more than"):
        load_meta(replay)
    (replay / "meta.json").write_text('{"schema_version": "1",')
    with pytest.raises(ReplayError, match=r"meta\.json: not valid JSON"):
        load_meta(replay)


def test_a_truncated_parquet_file_is_refused_naming_it(replay: Path):
    path = replay / "replay_train.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        ReplayError,
        match=r"replay_train\.parquet: not a readable Parquet file - truncated or damaged .*"
        r"rebuild the replay",
    ):
        load_split(replay, "train")


def test_evaluating_a_run_on_other_features_lists_them(trained, tmp_path: Path):
    import shutil

    folder, run = trained
    other = shutil.copytree(folder, tmp_path / "ws" / "replay" / "sofa_shaped")
    meta = read_meta(other)
    meta["feature_names"][2] = "renamed"
    write_meta(other, meta)
    for split in ("train", "validation", "test"):
        table = read_split(other, split)
        write_split(other, table.rename_columns(
            [("s_renamed" if c == "s_f02" else c) for c in table.column_names]), split)  # fmt: skip
    with pytest.raises(
        evaluate_module.EvaluationError,
        match=r"trained on other features than .*meta\.json provides: missing from the replay "
        r"\['f02'\]; not known to the policy \['renamed'\]",
    ):
        evaluate(run, other, tmp_path / "eval", kind="run", cfg=FAST_EVAL)
    assert not (tmp_path / "eval").exists()


# -- 4. damaged or mismatched weight files of a run are refused naming the file ------------------


def test_a_truncated_final_policy_is_refused_by_evaluate_and_export(trained, tmp_path: Path):
    import shutil

    from sepsisrl.rl.checkpoint import TensorFileError

    _folder, run = trained
    bad = shutil.copytree(run, tmp_path / "runs" / "cut")
    path = bad / "final" / "policy.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = r"final/policy\.safetensors: not a readable safetensors file - truncated or damaged"
    with pytest.raises(TensorFileError, match=message):
        TrainedPolicy(bad)
    with pytest.raises(TensorFileError, match=message):
        export_run(bad, tmp_path / "bundle", evaluations=[])
    assert not (tmp_path / "bundle").exists()


def test_run_weights_that_do_not_fit_its_config_are_refused(trained, tmp_path: Path):
    import shutil

    from sepsisrl.rl.checkpoint import TensorFileError

    _folder, run = trained
    bad = shutil.copytree(run, tmp_path / "runs" / "wide")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["config"]["hidden_sizes"] = [16, 16]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        TensorFileError,
        match=r"policy\.safetensors: tensor 'net\.0\.weight' has shape \[32, 7\] but the "
        r"network of .*config\.json \(state_dim 7, hidden_sizes \[16, 16\], n_actions 3\) "
        r"expects \[16, 7\]",
    ):
        TrainedPolicy(bad)


def test_a_truncated_or_mismatched_checkpoint_is_refused_naming_it(tmp_path: Path):
    from sepsisrl.rl.checkpoint import TensorFileError, load_checkpoint, save_checkpoint

    algo = make_algorithm(fast_config(), STATE_DIM, N_ACTIONS, 0.99, "cpu")
    folder = tmp_path / "checkpoints" / "step_00000040"
    save_checkpoint(folder, algo.modules(), algo.optimizers(), {}, {"step": 40})
    other = make_algorithm(fast_config(hidden_sizes=[16, 16]), STATE_DIM, N_ACTIONS, 0.99, "cpu")
    with pytest.raises(TensorFileError, match=r"step_00000040/model\.safetensors: tensor '\w+\."
                       r"[\w.]+' has shape \[.*\] but the '\w+' network of the run's config\.json "
                       r"expects"):  # fmt: skip
        load_checkpoint(folder, other.modules(), other.optimizers())
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(
        TensorFileError,
        match=r"step_00000040/model\.safetensors: not a readable safetensors file - truncated "
        r"or damaged .*; delete the checkpoint folder",
    ):
        load_checkpoint(folder, algo.modules(), algo.optimizers())
