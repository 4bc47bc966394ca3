"""Replay loading (``sepsisrl.rl.data``): any contract-following dataset loads as tensors, and
every contract violation is a clear ReplayError naming the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from sepsisrl.rl.data import ReplayError, load_meta, load_split

from .rl_fixtures import (
    feature_names,
    read_meta,
    read_split,
    set_column,
    write_meta,
    write_replay,
    write_split,
)

STATE_DIM, N_ACTIONS = 7, 3


@pytest.fixture
def replay(tmp_path: Path) -> Path:
    return write_replay(tmp_path / "replay" / "sofa_shaped", 20, STATE_DIM, N_ACTIONS, seed=1)


@pytest.mark.parametrize(("state_dim", "n_actions"), [(7, 3), (1, 2), (62, 25)])
def test_any_state_dim_and_action_count_loads_as_tensors(
    tmp_path: Path, state_dim: int, n_actions: int
):
    folder = write_replay(tmp_path / "r", 12, state_dim, n_actions, seed=state_dim)
    meta = load_meta(folder)
    assert (meta.state_dim, meta.n_actions) == (state_dim, n_actions)
    assert meta.feature_names == feature_names(state_dim)
    assert meta.gamma == pytest.approx(0.99)
    assert meta.variant == "sofa_shaped"
    raw = read_meta(folder)
    for split in ("train", "validation", "test"):
        data = load_split(folder, split)
        table = read_split(folder, split)
        assert len(data) == table.num_rows == raw["splits"][split]["n_transitions"]
        assert data.n_episodes == raw["splits"][split]["n_episodes"]
        assert data.states.shape == (table.num_rows, state_dim)
        assert data.states.dtype == torch.float32
        assert data.actions.dtype == torch.int64
        assert int(data.actions.min()) >= 0 and int(data.actions.max()) < n_actions
        # the state columns are read in meta.feature_names order
        for j, name in enumerate(meta.feature_names):
            expected = table[f"s_{name}"].to_numpy()
            np.testing.assert_array_equal(data.states[:, j].numpy(), expected)
        np.testing.assert_array_equal(data.actions.numpy(), table["action"].to_numpy())
        np.testing.assert_array_equal(data.rewards.numpy(), table["reward"].to_numpy())


def test_next_index_points_to_the_following_row_and_to_itself_on_done_rows(replay: Path):
    data = load_split(replay, "train")
    n = len(data)
    nxt = data.next_index.numpy()
    done = data.dones.numpy().astype(bool)
    rows = np.arange(n)
    assert done.sum() == data.n_episodes > 1
    np.testing.assert_array_equal(nxt[done], rows[done])
    np.testing.assert_array_equal(nxt[~done], rows[~done] + 1)
    # a non-final row's successor is the next step of the same stay
    assert (data.stay_id[nxt[~done]] == data.stay_id[~done]).all()
    assert (data.step[nxt[~done]] == data.step[~done] + 1).all()
    # batch() returns (s, a, r, s', done) with s' taken from next_index
    s, a, r, s_next, d = data.batch(torch.arange(n))
    mid = torch.from_numpy(~done)
    assert torch.equal(s_next[mid], data.states[torch.from_numpy(rows[~done] + 1)])
    assert torch.equal(s_next[~mid], s[~mid])
    assert torch.equal(d, data.dones) and torch.equal(a, data.actions)
    assert torch.equal(r, data.rewards)


def test_reward_column_selects_the_evaluation_reward(replay: Path):
    table = read_split(replay, "train")
    data = load_split(replay, "train", reward_column="reward_eval")
    np.testing.assert_array_equal(data.rewards.numpy(), table["reward_eval"].to_numpy())
    assert not np.array_equal(data.rewards.numpy(), table["reward"].to_numpy())


def test_fingerprint_is_stable_and_changes_with_the_data(replay: Path, tmp_path: Path):
    first = load_split(replay, "train").fingerprint
    assert load_split(replay, "train").fingerprint == first
    table = read_split(replay)
    rewards = table["reward"].to_numpy().copy()
    rewards[0] += 1.0
    write_split(replay, set_column(table, "reward", rewards))
    assert load_split(replay, "train").fingerprint != first


def test_missing_meta_json_is_a_replay_error(replay: Path):
    (replay / "meta.json").unlink()
    with pytest.raises(ReplayError, match=r"no meta\.json"):
        load_meta(replay)
    with pytest.raises(ReplayError, match=r"no meta\.json"):
        load_split(replay, "train")


def test_missing_replay_folder_is_a_replay_error(tmp_path: Path):
    with pytest.raises(ReplayError, match=r"no meta\.json"):
        load_meta(tmp_path / "does_not_exist")


def test_replay_error_is_a_value_error():
    assert issubclass(ReplayError, ValueError)


@pytest.mark.parametrize("version", ["2", "0", None])
def test_unsupported_schema_version_is_a_replay_error(replay: Path, version):
    meta = read_meta(replay)
    meta["schema_version"] = version
    write_meta(replay, meta)
    with pytest.raises(ReplayError, match=r"schema_version .*not supported"):
        load_meta(replay)


def test_feature_names_not_matching_state_dim_is_a_replay_error(replay: Path):
    meta = read_meta(replay)
    meta["feature_names"] = meta["feature_names"][:-1]
    write_meta(replay, meta)
    with pytest.raises(ReplayError, match=r"6 feature_names but state_dim 7"):
        load_meta(replay)


def test_missing_meta_key_is_a_replay_error(replay: Path):
    meta = read_meta(replay)
    del meta["n_actions"]
    write_meta(replay, meta)
    with pytest.raises(ReplayError, match="n_actions"):
        load_meta(replay)


def test_missing_state_column_is_a_replay_error_naming_it(replay: Path):
    table = read_split(replay)
    write_split(replay, table.drop_columns(["s_f03"]))
    with pytest.raises(ReplayError, match=r"missing column\(s\) \['s_f03'\]"):
        load_split(replay, "train")


def test_missing_split_file_is_a_replay_error(replay: Path):
    (replay / "replay_validation.parquet").unlink()
    with pytest.raises(ReplayError, match=r"replay_validation\.parquet not found"):
        load_split(replay, "validation")


def test_episodes_out_of_stay_order_are_a_replay_error(replay: Path):
    table = read_split(replay)
    stay = table["stay_id"].to_numpy()
    first = int((stay == stay[0]).sum())
    # move the first episode (whole, with its done row) to the end: only the order is wrong
    write_split(replay, pa.concat_tables([table.slice(first), table.slice(0, first)]))
    with pytest.raises(ReplayError, match=r"not sorted by \(stay_id, step\)"):
        load_split(replay, "train")


def test_steps_out_of_order_within_a_stay_are_a_replay_error(tmp_path: Path):
    folder = write_replay(tmp_path / "r", 10, STATE_DIM, N_ACTIONS, seed=2, horizon=6)
    table = read_split(folder)
    done = table["done"].to_numpy(zero_copy_only=False)
    step = table["step"].to_numpy()
    # the first stay with at least three rows: swap its steps 0 and 1 (done stays on the last row)
    start = next(i for i in range(len(step) - 2) if step[i] == 0 and not done[i + 1])
    order = np.arange(table.num_rows)
    order[[start, start + 1]] = order[[start + 1, start]]
    write_split(folder, table.take(pa.array(order)))
    with pytest.raises(ReplayError, match="not sorted"):
        load_split(folder, "train")


def test_done_missing_on_an_episodes_last_row_is_a_replay_error(replay: Path):
    table = read_split(replay)
    done = table["done"].to_numpy(zero_copy_only=False).copy()
    done[np.flatnonzero(done)[0]] = False
    write_split(replay, set_column(table, "done", done))
    with pytest.raises(ReplayError, match="done must be true exactly on each episode's last row"):
        load_split(replay, "train")


def test_done_on_a_middle_row_is_a_replay_error(replay: Path):
    table = read_split(replay)
    done = table["done"].to_numpy(zero_copy_only=False).copy()
    assert not done[0]  # every fixture episode has at least two steps
    done[0] = True
    write_split(replay, set_column(table, "done", done))
    with pytest.raises(ReplayError, match="done must be true exactly"):
        load_split(replay, "train")


@pytest.mark.parametrize("bad_action", [N_ACTIONS, -1, 100])
def test_action_outside_the_action_set_is_a_replay_error(replay: Path, bad_action: int):
    table = read_split(replay)
    actions = table["action"].to_numpy().copy()
    actions[3] = bad_action
    write_split(replay, set_column(table, "action", actions))
    with pytest.raises(ReplayError, match=r"actions outside 0\.\.2"):
        load_split(replay, "train")


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_state_is_a_replay_error(replay: Path, bad_value: float):
    table = read_split(replay)
    values = table["s_f05"].to_numpy().copy()
    values[4] = bad_value
    write_split(replay, set_column(table, "s_f05", values))
    with pytest.raises(ReplayError, match="states contain NaN or inf"):
        load_split(replay, "train")


def test_extra_columns_are_ignored(replay: Path):
    table = read_split(replay)
    before = load_split(replay, "train")
    extra = table.append_column("sofa", pa.array(np.arange(table.num_rows), pa.int32()))
    extra = extra.append_column("s_unlisted", pa.array(np.zeros(table.num_rows), pa.float32()))
    write_split(replay, extra)
    after = load_split(replay, "train")
    assert after.states.shape == (table.num_rows, STATE_DIM)
    assert after.fingerprint == before.fingerprint
