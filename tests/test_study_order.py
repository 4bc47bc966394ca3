"""The order in which a study phase starts its units (``study.runner.longest_first``)."""

from __future__ import annotations

import json
from pathlib import Path

from sepsisrl.rl.registry import algorithms
from sepsisrl.study.runner import longest_first


def train_job(label: str, algo: str, replay: Path, steps: int = 0, epochs: int = 0, **extra):
    config = {"algo": algo, "steps": steps, "epochs": epochs, "batch_size": 100}
    return {"label": label, "train": {"config": config, "replay": str(replay), **extra}}


def test_a_phase_starts_its_longest_training_units_first_then_truths_then_evaluations(tmp_path):
    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "meta.json").write_text(json.dumps({"splits": {"train": {"n_transitions": 1000}}}))
    jobs = [
        train_job("bc_a", "bc", replay, epochs=20),  # 200 steps x 1.0
        train_job("bc_b", "bc", replay, epochs=20),
        {"label": "clinician (test)", "eval": {"spec": "clinician"}},  # no training: last
        {"label": "cql and 1 more (truth)", "truths": [{"name": "cql"}, {"name": "bc"}]},
        {"label": "truth population", "population": {"patients": 10}},
        train_job("cql_a", "cql", replay, epochs=20),  # 200 steps x 1.7
        train_job("cql_b", "cql", replay, steps=200),
        train_job("iql_rung", "iql", replay, epochs=20, pause_at=50),  # 50 steps x 5.1
        {"label": "stack of 2", "stack": [train_job("x", "bc", replay, steps=300)["train"],
                                          train_job("y", "bc", replay, steps=300)["train"]]},
    ]  # fmt: skip
    order = [job["label"] for job in longest_first(jobs)]
    assert order == ["stack of 2", "cql_a", "cql_b", "iql_rung", "bc_a", "bc_b",
                     "cql and 1 more (truth)", "truth population", "clinician (test)"]  # fmt: skip
    assert longest_first([]) == []


def test_every_algorithm_states_its_step_cost_relative_to_bc():
    specs = algorithms()
    assert specs["bc"].step_cost == 1.0
    # the ordering the card's phases rely on: IQL > BCQ > CQL > BC per step
    assert specs["iql"].step_cost > specs["bcq"].step_cost > specs["cql"].step_cost > 1.0
