"""bench/held_logging.py's positive control (docs/evaluate.md item 19): in a mixture log every
stay is treated throughout by its own component, and the log's own runs of a policy are read
back with the truth's discounting."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import load_bench


@pytest.fixture(scope="module")
def held():
    return load_bench("held_logging.py")


class _Fixed:
    """A component that answers ``action`` and records the states it was asked about."""

    def __init__(self, action: int) -> None:
        self.action, self.seen = action, []

    def decide(self, states, raw):
        self.seen.append((states.copy(), {k: v.copy() for k, v in raw.items()}))
        return np.full(len(states), self.action)


def test_each_stay_gets_its_own_components_decision_on_its_own_state(held):
    comps = [_Fixed(3), _Fixed(17), _Fixed(24)]
    mix = held.MixtureOfRuns(comps, {10: 2, 11: 0, 12: 2, 13: 1})
    states = np.arange(8, dtype=np.float32).reshape(4, 2)
    mix.context = SimpleNamespace(stay_id=np.array([12, 13, 10, 11]))
    out = mix.decide(states, {"map": np.array([60.0, 61.0, 62.0, 63.0])})
    assert out.tolist() == [24, 17, 24, 3]
    (s2, raw2), = comps[2].seen  # fmt: skip
    assert np.array_equal(s2, states[[0, 2]]) and raw2["map"].tolist() == [60.0, 62.0]
    (s0, raw0), = comps[0].seen  # fmt: skip
    assert np.array_equal(s0, states[[3]]) and raw0["map"].tolist() == [63.0]


def test_the_logs_own_runs_are_discounted_to_their_last_step(held, tmp_path):
    # stays 1 and 2 ran policy "p" (2 and 3 steps), stay 3 ran "q"; 1 survived, 2 and 3 died
    rows = {"stay_id": [1, 1, 2, 2, 2, 3], "step": [0, 1, 0, 1, 2, 0],
            "reward_eval": [0.0, 15.0, 0.0, 0.0, -15.0, -15.0],
            "done": [False, True, False, False, True, True]}  # fmt: skip
    tab = pa.table(rows)
    pq.write_table(tab.slice(0, 2), tmp_path / "replay_train.parquet")
    pq.write_table(tab.slice(2, 3), tmp_path / "replay_validation.parquet")
    pq.write_table(tab.slice(5, 1), tmp_path / "replay_test.parquet")
    (tmp_path / "mixture_assignment.json").write_text(
        json.dumps({"1": "p", "2": "run:p", "3": "q"})
    )
    mean, lo, hi = held.runs_monte_carlo(tmp_path, "p", 0.9)
    r = np.array([0.9 * 15.0, 0.81 * -15.0])
    assert mean == pytest.approx(r.mean())
    assert hi - mean == pytest.approx(1.96 * r.std(ddof=1) / np.sqrt(2))
    assert mean - lo == pytest.approx(hi - mean)
    assert held.runs_monte_carlo(tmp_path, "q", 0.9) == (None, None, None)  # one run: no CI


def test_the_hidden_state_is_kept_beside_the_replay_never_in_it(held, tmp_path):
    """``--latent-state``: the decisions' ``latent_*`` columns go to latent_state.parquet (the
    logged stays only, keyed by stay and step); the replay's splits hold none of them."""
    template = tmp_path / "template"
    template.mkdir()
    (template / "meta.json").write_text(json.dumps({"reward": {"variant": "sparse"},
                                                    "source": {"kind": "synthetic"}}))  # fmt: skip
    dec = pa.table({"stay_id": [1, 1, 2, 9], "step": [0, 1, 0, 0], "action": [3, 4, 0, 1],
                    "norm_map": [0.1, 0.2, 0.3, 0.4],
                    "latent_volume": [0.9, 0.8, 0.7, 0.6]})  # fmt: skip
    log = {"decisions": dec, "subject": {1: 10, 2: 20, 9: 90}, "died": {1: False, 2: True},
           "names": ["map"], "terminal": (15.0, -15.0)}  # stay 9 is no cohort episode  # fmt: skip
    out = tmp_path / "held"
    held.write_replay(log, template, out, seed=1)
    lat = pq.read_table(out / "latent_state.parquet")
    assert lat.column_names == ["stay_id", "step", "latent_volume"]
    assert lat["stay_id"].to_pylist() == [1, 1, 2]
    assert lat["latent_volume"].to_pylist() == pytest.approx([0.9, 0.8, 0.7])
    for split in ("train", "validation", "test"):
        names = pq.read_schema(out / f"replay_{split}.parquet").names
        assert "s_map" in names and not any(n.startswith("latent") for n in names)
    held.write_replay({**log, "decisions": dec.drop(["latent_volume"])}, template,
                      tmp_path / "plain", seed=1)  # fmt: skip
    assert not (tmp_path / "plain" / "latent_state.parquet").exists()
