"""Extension points: the algorithm registry, the estimator registry and the replay's action grid."""

from __future__ import annotations

import numpy as np
import pytest

from sepsisrl.config import ConfigError
from sepsisrl.contracts import ReplayMeta
from sepsisrl.dataset.actions import action_labels
from sepsisrl.ope.estimators import GATES, Estimator, estimator_classes
from sepsisrl.ope.evaluate import HEADLINE_ESTIMATORS
from sepsisrl.ope.safety import safety_flags
from sepsisrl.rl.actions import ActionGrid, grid_of_meta
from sepsisrl.rl.config import TrainConfig, load_train_config
from sepsisrl.rl.registry import algorithm, algorithms, exportable_algorithms
from sepsisrl.rl.trainer import make_algorithm


def test_every_algorithm_is_looked_up_by_name_with_its_config_section():
    assert list(algorithms()) == ["iql", "cql", "bcq", "bc"]
    fields = list(TrainConfig.model_fields)
    assert fields[-5:] == ["iql", "cql", "bcq", "bc", "preset"]  # config.json's key order
    for name, spec in algorithms().items():
        cfg = load_train_config(overrides={"algo": name, "hidden_sizes": [8]})
        section = getattr(cfg, name)
        assert isinstance(section, spec.config)  # one config class per algorithm
        algo = make_algorithm(cfg, 5, 4, 0.9)
        assert isinstance(algo, spec.implementation)
        assert spec.policy_module in algo.modules()
        assert all(extra in algo.modules() for extra in spec.exports)
    assert exportable_algorithms() == ("iql", "bc")
    assert algorithm("bcq").exports == ("behaviour",)


def test_an_unknown_algorithm_or_section_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match="unknown algorithm 'dqn'; known: iql, cql, bcq, bc"):
        algorithm("dqn")
    with pytest.raises(ConfigError, match="algo"):
        load_train_config(overrides={"algo": "dqn"})
    with pytest.raises(ConfigError, match=r"cql\.alpah"):
        load_train_config(overrides={"cql.alpah": 2.0})
    with pytest.raises(ConfigError, match="compile is available for iql only, not bc"):
        load_train_config(overrides={"algo": "bc", "compile": True})


def test_estimators_are_registered_objects_with_a_known_gate():
    classes = estimator_classes()
    assert list(classes) == ["fqe", "wdr", "wis"]  # fitting and reporting order
    assert HEADLINE_ESTIMATORS == ("fqe", "wdr", "wis")
    for name, cls in classes.items():
        assert issubclass(cls, Estimator) and cls.name == name
        assert cls.gate in GATES


def _meta(labels: list[str] | None, n_actions: int) -> ReplayMeta:
    """A replay meta (the contract's model) with these labels and the other keys minimal."""
    doc = {"schema_version": "1", "state_dim": 1, "n_actions": n_actions, "feature_names": ["x"],
           "reward": {"variant": "sparse"}, "gamma": 0.99}  # fmt: skip
    if labels is not None:
        doc["action_labels"] = labels
    return ReplayMeta.parse(doc, "test")


def test_the_action_grid_is_read_from_the_replay_meta():
    labels = action_labels(3, 4)
    grid = grid_of_meta(_meta(labels, 12))
    assert grid == ActionGrid(3, 4)
    v, f = grid.bins(np.array([0, 5, 11]))
    assert v.tolist() == [0, 1, 2] and f.tolist() == [0, 1, 3]
    shares = grid.shares(np.array([0, 11, 11, 3]))
    assert shares.shape == (3, 4) and shares[2, 3] == 0.5 and shares[0, 3] == 0.25
    # plain action names (an external dataset): no grid
    assert grid_of_meta(_meta(["a0", "a1", "a2"], 3)) is None
    assert grid_of_meta(_meta(None, 3)) is None  # no labels at all
    with pytest.raises(ValueError, match="3 x 4 grid but n_actions is 13"):
        grid_of_meta(_meta(labels, 13), "x/meta.json")
    with pytest.raises(ValueError, match="do not form a 2 x 2 grid"):
        ActionGrid.from_labels(["a×x", "a×y", "b×y", "b×x"])


def test_safety_rules_use_the_grids_top_bins():
    grid = ActionGrid(3, 4)
    raw = {k: np.array([90.0, 90.0]) for k in ("map", "pf_ratio", "lactate")}
    raw |= {"cum_vasopressor_dose_nor_equiv": np.zeros(2), "cum_iv_fluid_ml": np.zeros(2)}
    top_vaso = 2 * 4 + 0  # vasopressor bin 2 of 0..2, no fluid
    flags = safety_flags(raw, np.array([top_vaso, 4 * 1]), grid)
    assert flags["vasopressor_max_with_high_map"].tolist() == [True, False]


def test_the_model_repository_decodes_actions_on_its_own_grid():
    from sepsisrl.release.modeling_iql import IQLPolicy, decode_action

    labels = action_labels(3, 4)
    policy = IQLPolicy(2, 12, [4], {"feature_names": ["a", "b"], "action_labels": labels})
    assert policy.decode_action(7) == (1, 3, labels[7])
    assert decode_action(7, labels) == (1, 3, labels[7])
    assert decode_action(7) == (1, 2, "vaso_Q1×fluid_Q2")  # the published 5 x 5 grid
    with pytest.raises(ValueError, match=r"0\.\.11"):
        policy.decode_action(12)
    plain = IQLPolicy(2, 3, [4], {"feature_names": ["a", "b"]})  # no labels, not 25 actions
    with pytest.raises(ValueError, match="no action_labels"):
        plain.decode_action(0)
    with pytest.raises(ValueError, match="2 action labels but the network has 3 actions"):
        IQLPolicy(2, 3, [4], {"feature_names": ["a", "b"], "action_labels": labels[:2]})
