"""d3rlpy interop (docs/d3rlpy.md): a replay split as a d3rlpy MDPDataset reproduces the
replay's transitions exactly and never mixes splits; a DiscreteCQL model trained on it is
evaluated and measured in the synthetic world through ``sepsisrl evaluate --d3rlpy`` and
``sepsisrl truth --d3rlpy``; models of another shape, other action spaces and foreign files
are refused naming expected vs found; without d3rlpy the error names the extra to install."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sepsisrl.cli import UserError, app
from sepsisrl.contracts import EvaluationMetrics
from sepsisrl.interop import (
    D3rlpyMissingError,
    D3rlpyModelError,
    D3rlpyPolicy,
    to_d3rlpy,
    to_d3rlpy_splits,
)
from sepsisrl.ope.summary import CARD_ROWS
from sepsisrl.rl.data import ReplayError, load_meta
from sepsisrl.threads import limited_threads
from sepsisrl.truth.policies import PolicySpecError, world_policy

from .rl_fixtures import read_split, set_column, write_replay, write_split

SPLITS = ("train", "validation", "test")
HINT = 'pip install "sepsisrl[d3rlpy]"'


def _train_cql(dataset, steps: int, seed: int = 0):
    """A short, seeded DiscreteCQL fit on the CPU (small network and batch, one thread: many
    threads on a busy machine make each tiny step tens of times slower; no log files)."""
    import d3rlpy

    d3rlpy.seed(seed)
    algo = d3rlpy.algos.DiscreteCQLConfig(
        batch_size=32,
        learning_rate=1e-3,
        target_update_interval=50,
        encoder_factory=d3rlpy.models.VectorEncoderFactory(hidden_units=[32, 32]),
    ).create(device="cpu:0")
    with limited_threads(1):
        algo.fit(
            dataset,
            n_steps=steps,
            n_steps_per_epoch=steps,
            show_progress=False,
            logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        )
    return algo


def _cli(*args: str):
    """``sepsisrl ARGS`` in this process (d3rlpy is imported once for the whole module), with
    one thread like a study's units (``sepsisrl/threads.py``)."""
    with limited_threads(1):
        return CliRunner().invoke(app, list(args))


def _states(table, names: list[str]) -> np.ndarray:
    return np.column_stack([table[f"s_{n}"].to_numpy() for n in names]).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A contract-following replay of 40 random episodes (6 features, 4 actions)."""
    return write_replay(tmp_path_factory.mktemp("tiny") / "replay", 40, 6, 4, seed=3)


@pytest.fixture(scope="module")
def cql(built, tmp_path_factory) -> Path:
    """A DiscreteCQL model trained (200 steps, seed 0) on the train split of the shared small
    build's sofa_shaped replay, saved with d3rlpy's own ``algo.save``."""
    ws, _, _ = built
    algo = _train_cql(to_d3rlpy(ws / "replay" / "sofa_shaped", "train"), steps=200)
    path = tmp_path_factory.mktemp("d3rlpy") / "cql.d3"
    algo.save(str(path))
    return path


# ------------------------------------------------------------------------------ datasets
def test_each_split_reproduces_the_replay_exactly(tiny):
    meta = load_meta(tiny)
    for split in SPLITS:
        table = read_split(tiny, split)
        ds = to_d3rlpy(tiny, split)
        stay = table["stay_id"].to_numpy()
        _, first, lengths = np.unique(stay, return_index=True, return_counts=True)
        lengths = lengths[np.argsort(first)]
        counts = getattr(meta.doc.splits, split)
        assert len(ds.episodes) == counts.n_episodes == len(lengths)
        # every stay ends with its outcome: a terminal episode, each row a transition
        assert ds.transition_count == counts.n_transitions == table.num_rows
        assert [e.size() for e in ds.episodes] == lengths.tolist()
        assert all(e.terminated for e in ds.episodes)
        np.testing.assert_array_equal(
            np.concatenate([e.observations for e in ds.episodes]),
            _states(table, meta.feature_names),
        )
        np.testing.assert_array_equal(
            np.concatenate([e.actions for e in ds.episodes]).ravel(),
            table["action"].to_numpy().astype(np.int64),
        )
        rewards = np.concatenate([e.rewards for e in ds.episodes]).ravel()
        np.testing.assert_array_equal(rewards, table["reward"].to_numpy())
        # the stored (shaped) reward, not the evaluation reward
        assert not np.array_equal(rewards, table["reward_eval"].to_numpy())
        assert ds.dataset_info.action_size == meta.n_actions
        # the transitions d3rlpy's learners sample: s' is the next row of the same stay, and
        # only the last row of a stay is terminal (no bootstrap past the outcome)
        states = _states(table, meta.feature_names)
        done = table["done"].to_numpy()
        row = 0
        for episode in ds.episodes:
            for t in range(episode.transition_count):
                tr = ds.transition_picker(episode, t)
                np.testing.assert_array_equal(tr.observation, states[row])
                assert tr.terminal == float(done[row])
                if not done[row]:
                    np.testing.assert_array_equal(tr.next_observation, states[row + 1])
                row += 1
        assert row == table.num_rows


def test_a_stay_that_ends_without_done_is_refused_not_turned_into_a_terminal(tiny, tmp_path):
    replay = tmp_path / "replay"
    shutil.copytree(tiny, replay)
    table = read_split(replay, "train")
    done = table["done"].to_numpy(zero_copy_only=False).copy()
    done[np.flatnonzero(done)[0]] = False  # the first stay ends without its outcome
    write_split(replay, set_column(table, "done", done), "train")
    with pytest.raises(ReplayError, match="done must be true exactly on each episode's last row"):
        to_d3rlpy(replay, "train")
    # the other splits are untouched and still convert
    assert to_d3rlpy(replay, "test").transition_count == read_split(replay, "test").num_rows


def test_splits_are_kept_apart(built):
    ws, _, _ = built
    replay = ws / "replay" / "sofa_shaped"
    meta = load_meta(replay)
    datasets = to_d3rlpy_splits(replay)
    assert list(datasets) == list(SPLITS)
    subjects, stays = {}, {}
    for split, ds in datasets.items():
        table = pq.read_table(replay / f"replay_{split}.parquet")
        subjects[split] = set(table["subject_id"].to_pylist())
        stays[split] = set(table["stay_id"].to_pylist())
        # this dataset holds exactly this split's stays, in order, and nothing else
        counts = getattr(meta.doc.splits, split)
        assert ds.transition_count == table.num_rows == counts.n_transitions
        np.testing.assert_array_equal(
            np.concatenate([e.observations for e in ds.episodes]),
            _states(table, meta.feature_names),
        )
        assert len(ds.episodes) == len(stays[split])
        # the 25 actions, even where a split never takes some of them
        assert ds.dataset_info.action_size == 25
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not subjects[a] & subjects[b], (a, b)
        assert not stays[a] & stays[b], (a, b)


def test_bad_replays_and_splits_are_clear_errors(tiny, tmp_path):
    with pytest.raises(ReplayError, match=r"unknown split 'tset'; expected one of train, valid"):
        to_d3rlpy(tiny, "tset")
    with pytest.raises(ReplayError, match=r"no meta\.json"):
        to_d3rlpy(tmp_path / "nowhere", "train")
    replay = tmp_path / "replay"
    shutil.copytree(tiny, replay)
    write_split(replay, read_split(replay, "test").slice(0, 0), "test")
    with pytest.raises(ReplayError, match="the test split has no rows"):
        to_d3rlpy(replay, "test")
    (replay / "replay_validation.parquet").unlink()
    with pytest.raises(ReplayError, match=r"replay_validation\.parquet not found"):
        to_d3rlpy_splits(replay)


def test_same_seed_same_model(tiny):
    ds = to_d3rlpy(tiny, "train")
    x = _states(read_split(tiny, "validation"), load_meta(tiny).feature_names)
    q = []
    for _ in range(2):
        algo = _train_cql(ds, steps=10, seed=7)
        q.append(np.stack([algo.predict_value(x, np.full(len(x), a)) for a in range(4)], 1))
    np.testing.assert_array_equal(q[0], q[1])
    assert np.isfinite(q[0]).all()


# ------------------------------------------------------------------------------ without d3rlpy
def test_without_d3rlpy_the_error_names_the_extra(monkeypatch, tiny, tmp_path):
    monkeypatch.setitem(sys.modules, "d3rlpy", None)  # `import d3rlpy` now fails
    with pytest.raises(ImportError, match=r"pip install \"sepsisrl\[d3rlpy\]\"") as info:
        to_d3rlpy(tiny, "train")
    assert isinstance(info.value, D3rlpyMissingError)
    with pytest.raises(D3rlpyMissingError, match=r"sepsisrl\[d3rlpy\]"):
        D3rlpyPolicy(tmp_path / "model.d3", 6, 4)
    # the command line says the same, as a user error, and writes nothing
    out = tmp_path / "eval"
    res = _cli("evaluate", "--replay", str(tiny), "--d3rlpy", str(tmp_path / "m.d3"),
               "--out", str(out))  # fmt: skip
    assert isinstance(res.exception, UserError) and HINT in str(res.exception)
    assert not out.exists()
    # an old d3rlpy is named too
    monkeypatch.setitem(sys.modules, "d3rlpy", types.SimpleNamespace(__version__="2.3.0"))
    with pytest.raises(D3rlpyMissingError, match=r"found 2\.3\.0"):
        to_d3rlpy(tiny, "train")


def test_the_base_package_never_imports_d3rlpy():
    code = (
        "import sys, sepsisrl, sepsisrl.cli, sepsisrl.interop, sepsisrl.ope.evaluate, "
        "sepsisrl.truth.policies; print('d3rlpy' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# ------------------------------------------------------------------------------ models
def test_models_that_do_not_fit_are_refused_naming_expected_and_found(built, tmp_path):
    import d3rlpy

    ws, _, _ = built
    replay = ws / "replay" / "sofa_shaped"
    names = load_meta(replay).feature_names
    small = d3rlpy.algos.DiscreteCQLConfig().create(device="cpu:0")
    small.create_impl((5,), 3)
    small.save(str(tmp_path / "small.d3"))
    shape = "expected observation shape [62] and 25 actions, found observation shape [5] and 3"
    out = tmp_path / "eval"
    res = _cli("evaluate", "--replay", str(replay), "--d3rlpy", str(tmp_path / "small.d3"),
               "--out", str(out))  # fmt: skip
    assert isinstance(res.exception, UserError), res.output
    assert shape in str(res.exception) and str(replay) in str(res.exception)
    assert not out.exists()
    with pytest.raises(PolicySpecError, match=shape.replace("[", r"\[").replace("]", r"\]")):
        world_policy(None, None, None, names, 25, 0, d3rlpy=tmp_path / "small.d3")
    # a continuous-action algorithm is not a policy over the 25 action ids
    cont = d3rlpy.algos.CQLConfig().create(device="cpu:0")
    cont.create_impl((62,), 25)
    cont.save(str(tmp_path / "cont.d3"))
    with pytest.raises(D3rlpyModelError, match=r"a CQL model \(continuous actions\)"):
        D3rlpyPolicy(tmp_path / "cont.d3", 62, 25)
    # a diverged model (NaN weights) is refused, like a diverged run
    nan = d3rlpy.algos.DiscreteCQLConfig().create(device="cpu:0")
    nan.create_impl((62,), 25)
    net = next(m for m in nan.impl.modules.create_checkpointer("cpu:0").modules.values()
               if hasattr(m, "parameters"))  # fmt: skip
    next(net.parameters()).data.fill_(float("nan"))
    nan.save(str(tmp_path / "nan.d3"))
    with pytest.raises(D3rlpyModelError, match="holds NaN or inf values"):
        D3rlpyPolicy(tmp_path / "nan.d3", 62, 25)
    # ...nor is a sequence model without a Q-function
    dt = d3rlpy.algos.DiscreteDecisionTransformerConfig().create(device="cpu:0")
    dt.create_impl((62,), 25)
    dt.save(str(tmp_path / "dt.d3"))
    with pytest.raises(D3rlpyModelError, match="discrete actions, not Q-learning"):
        D3rlpyPolicy(tmp_path / "dt.d3", 62, 25)
    # a file that is not a d3rlpy model: read without running anything it names
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "foreign.d3").write_bytes(pickle.dumps({"torch": Payload()}))
    with pytest.raises(D3rlpyModelError, match="names the Python object"):
        D3rlpyPolicy(tmp_path / "foreign.d3", 62, 25)
    assert not marker.exists()
    with pytest.raises(D3rlpyModelError, match="no such file"):
        D3rlpyPolicy(tmp_path / "absent.d3", 62, 25)


def test_cql_model_is_evaluated_through_the_cli(built, cql, tmp_path):
    ws, _, _ = built
    replay = ws / "replay" / "sofa_shaped"
    out = tmp_path / "eval"
    res = _cli("evaluate", "--replay", str(replay), "--d3rlpy", str(cql), "--resamples", "100",
               "--out", str(out))  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "metrics.json").read_text())
    EvaluationMetrics.load(out / "metrics.json")  # the metrics.json contract
    assert doc["policy"] == {"spec": str(cql), "kind": "d3rlpy", "name": "d3rlpy:cql.d3"}
    meta = load_meta(replay)
    assert doc["split"] == "validation" and doc["final"] is False
    assert doc["decisions"] == meta.doc.splits.validation.n_transitions
    assert {k for k, _ in CARD_ROWS} <= set(doc["metrics"])
    for name in ("clinician", "policy", "difference"):
        assert (out / "figures" / doc["figures"][name]).is_file()
    # the evaluated actions are the model's greedy actions on the validation states
    val = pq.read_table(replay / "replay_validation.parquet")
    greedy = D3rlpyPolicy(cql, 62, 25).act(_states(val, meta.feature_names))
    with (out / "cases.csv").open() as fh:
        cases = [int(r["policy_action"]) for r in csv.DictReader(fh)]
    assert cases == greedy.tolist()
    assert doc["metrics"]["clinician_agreement"] == pytest.approx(
        float(np.mean(greedy == val["action"].to_numpy()))
    )


def test_cql_model_truth_in_the_synthetic_world(built, cql, tmp_path):
    ws, _, _ = built
    out = tmp_path / "truth"
    res = _cli("truth", "--workspace", str(ws), "--d3rlpy", str(cql), "--patients", "12",
               "--out", str(out), "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "truth.json").read_text())
    assert doc["policy"] == "d3rlpy:cql.d3"
    assert doc["episodes"] > 0 and doc["decisions"] > 0
    assert doc["decisions_deferred_to_clinicians"] == 0  # the model decided every time
    lo, hi = doc["mortality_90d"]["ci95"]
    assert lo <= doc["mortality_90d"]["mean"] <= hi
