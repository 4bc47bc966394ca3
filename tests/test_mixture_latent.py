"""bench/mixture_latent.py (docs/evaluate.md item 19): a kept mixture log read back as the
replay's own 4-hour chain, each stay's latent parameters joined by stay and standardised on
train, and a policy's own runs left alone in train."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import load_bench


@pytest.fixture(scope="module")
def ml():
    return load_bench("mixture_latent.py")


def _log(folder, names=("map", "lactate")):
    """Three stays: 1 (train, 2 steps), 2 (train, 1 step), 3 (test, 2 steps)."""
    rows = {"stay_id": [1, 1, 2, 3, 3], "subject_id": [10, 10, 20, 30, 30],
            "step": [0, 1, 0, 0, 1], "action": [24, 24, 0, 24, 3],
            "reward_eval": [0.0, -15.0, 15.0, 0.0, 15.0],
            "done": [False, True, True, False, True]}  # fmt: skip
    for j, n in enumerate(names):
        rows[f"s_{n}"] = np.arange(5, dtype=np.float32) + 10 * j
    tab = pa.table(rows)
    pq.write_table(tab.slice(0, 3), folder / "replay_train.parquet")
    pq.write_table(tab.slice(3, 0), folder / "replay_validation.parquet")
    pq.write_table(tab.slice(3, 2), folder / "replay_test.parquet")
    (folder / "meta.json").write_text(json.dumps({"feature_names": list(names), "gamma": 0.9}))
    (folder / "mixture_assignment.json").write_text(
        json.dumps({"1": "constant:24", "2": "no_treatment", "3": "run:constant:24"})
    )


def test_the_log_reads_back_as_a_one_phase_chain(ml, tmp_path):
    _log(tmp_path)
    chain = ml.replay_chain(tmp_path)
    assert chain["s"].shape == (5, 2) and chain["s"][:, 1].tolist() == [10, 11, 12, 13, 14]
    assert chain["first"].tolist() == [True, False, True, True, False]
    assert chain["split"].tolist() == ["train"] * 3 + ["test"] * 2
    assert chain["phases"] == 1 and not chain["phase"].any() and chain["gamma"] == 0.9
    assert chain["a"].tolist() == [24, 24, 0, 24, 3]


def test_a_split_not_grouped_by_episode_is_refused(ml, tmp_path):
    _log(tmp_path)
    t = pq.read_table(tmp_path / "replay_train.parquet")
    pq.write_table(t.take([0, 2, 1]), tmp_path / "replay_train.parquet")
    with pytest.raises(SystemExit, match="not grouped by episode"):
        ml.replay_chain(tmp_path)


def test_own_runs_keep_only_the_components_train_runs(ml, tmp_path):
    _log(tmp_path)
    chain = ml.replay_chain(tmp_path)
    assign = json.loads((tmp_path / "mixture_assignment.json").read_text())
    mine = ml.own_runs(chain, assign, "constant:24")
    # stay 2 (another component, train) leaves; the test split stays whole
    assert mine["stay"].tolist() == [1, 1, 3, 3] and mine["phases"] == 1
    assert mine["a"].tolist() == [24, 24, 24, 3]
    other = ml.own_runs(chain, assign, "no_treatment")
    assert other["stay"].tolist() == [2, 3, 3]


def test_latent_parameters_join_by_stay_and_standardise_on_train(ml, tmp_path):
    _log(tmp_path)
    chain = ml.replay_chain(tmp_path)
    stays = {"stay_id": np.array([3, 1, 2]), "fluid_tolerance_l": np.array([9.0, 1.0, 4.0])}
    x = ml.latent_of(chain, stays, ["fluid_tolerance_l"])
    raw = np.array([1.0, 1.0, 4.0, 9.0, 9.0])  # stays 1, 1, 2, 3, 3
    mu, sd = raw[:3].mean(), raw[:3].std()
    assert x[:, 0] == pytest.approx((raw - mu) / sd)
    with pytest.raises(SystemExit, match="--latent-state"):
        ml.latent_of(chain, stays, ["volume"])
    with pytest.raises(SystemExit, match="another population"):
        ml.latent_of(chain, {k: v[:2] for k, v in stays.items()}, ["fluid_tolerance_l"])


def test_latent_sets_by_name_or_columns(ml):
    assert ml._latent_set("tolerance") == ("tolerance", list(ml.TOLERANCE))
    assert ml._latent_set("mine=static") == ("mine", list(ml.STATIC))
    assert ml._latent_set("ft=fluid_tolerance_l,cardiac_reserve") == (
        "ft",
        ["fluid_tolerance_l", "cardiac_reserve"],
    )
    assert ml._latent_set("all=static,dynamic") == ("all", [*ml.STATIC, *ml.DYNAMIC])
    with pytest.raises(SystemExit, match="no columns"):
        ml._latent_set("x=")


def test_the_hidden_dynamic_state_joins_by_stay_and_step(ml, tmp_path):
    """Each row gets its own decision's hidden state (not its stay's), standardised on train
    beside a stay-level parameter; a state file of another log is refused."""
    _log(tmp_path)
    chain = ml.replay_chain(tmp_path)
    assert ml.dynamic_state(tmp_path, chain) is None  # a log kept without --latent-state
    # written in another order than the replay's rows
    pq.write_table(pa.table({"stay_id": [3, 1, 2, 3, 1], "step": [1, 0, 0, 0, 1],
                             "latent_volume": [0.5, 0.9, 0.7, 0.6, 0.8]}),
                   tmp_path / "latent_state.parquet")  # fmt: skip
    dyn = ml.dynamic_state(tmp_path, chain)
    assert dyn["volume"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    stays = {"stay_id": np.array([1, 2, 3]), "fluid_tolerance_l": np.array([1.0, 4.0, 9.0])}
    x = ml.latent_of(chain, stays, ["volume", "fluid_tolerance_l"], dyn)
    raw = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert x[:, 0] == pytest.approx((raw - raw[:3].mean()) / raw[:3].std())
    assert x[:, 1] == pytest.approx(ml.latent_of(chain, stays, ["fluid_tolerance_l"])[:, 0])
    with pytest.raises(SystemExit, match="neither stay-level") as err:
        ml.latent_of(chain, stays, ["kidney"], dyn)
    assert "--latent-state" not in str(err.value)  # the state is there, the column is not
    pq.write_table(pa.table({"stay_id": [1, 2], "step": [0, 0], "latent_volume": [0.1, 0.2]}),
                   tmp_path / "latent_state.parquet")  # fmt: skip
    with pytest.raises(SystemExit, match="3 logged decisions have no hidden state"):
        ml.dynamic_state(tmp_path, chain)


def test_stay_parameters_concatenate_every_chunk_and_ordinal(ml):
    from dataclasses import fields

    from sepsisrl.synth.population import Stays

    def stays(ids):
        return Stays(**{f.name: np.array(ids) * (i + 1) for i, f in enumerate(fields(Stays))})

    plans = {0: [stays([1, 2]), stays([3])], 1: [stays([4])]}
    pop = SimpleNamespace(chunks=lambda: [(0, 0, 2), (1, 2, 1)], plan=lambda c: plans[c])
    out = ml.stay_parameters(pop)
    k = [f.name for f in fields(Stays)].index("stay_id") + 1
    assert out["stay_id"].tolist() == [k * i for i in (1, 2, 3, 4)]


def test_hinges_are_the_continuous_features_past_their_train_quartiles(ml, tmp_path):
    _log(tmp_path, names=("map", "map_missing"))
    chain = ml.replay_chain(tmp_path)
    x = ml.hinges_of(chain, tmp_path)
    assert x.shape == (5, 3)  # the flag has none
    s = chain["s"][:, 0].astype(np.float64)  # train values 0, 1, 2: quartiles 0.5, 1, 1.5
    for k, t in enumerate((0.5, 1.0, 1.5)):
        h = np.maximum(0.0, s - t)
        assert x[:, k] == pytest.approx((h - h[:3].mean()) / h[:3].std(), rel=1e-5)


def test_fqe_overrides_are_validated_at_load(ml):
    from sepsisrl.config import ConfigError

    assert ml.fqe_set_config(["ridge=[1.0e-4]"]).ridge == (1.0e-4,)
    with pytest.raises(ConfigError, match="rige"):
        ml.fqe_set_config(["rige=1"])
