"""The ``running_treatment`` state variant (``state.variant``): the treatment running at the
decision time in the state, the causal ICU clock instead of ``hours_since_onset``, the same
state function in the build and online, and the card layout untouched by default."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sepsisrl.config import ConfigError
from sepsisrl.dataset.builder import build
from sepsisrl.dataset.config import RUNNING_TREATMENT_FEATURES, load_build_config
from sepsisrl.dataset.state import compute_states
from sepsisrl.truth.policies import Recorder
from sepsisrl.truth.rollout import rollout_population
from sepsisrl.truth.world import TruthContext, generate_hourly_world
from sepsisrl.workspace import read_json
from tests.conftest import small_config

SPLITS = ("train", "validation", "test")
RT = {"state.variant": "running_treatment"}
TS = pa.timestamp("us")
T0 = datetime(2150, 3, 1, 8, 0)  # ICU intime of the hand-made stay


def _at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# -- configuration ----------------------------------------------------------------------------
def test_default_is_the_card_layout_and_the_variant_swaps_the_onset_clock():
    card = load_build_config()
    assert card.state.variant == "card"
    base = [f.name for f in card.features]
    assert card.feature_names == base + [f"{f.name}_missing" for f in card.features if f.flag]
    assert len(card.feature_names) == 62 and "hours_since_onset" in card.feature_names
    rt = load_build_config(overrides=RT)
    assert "hours_since_onset" not in rt.feature_names
    assert set(RUNNING_TREATMENT_FEATURES) <= set(rt.feature_names)
    assert len(rt.feature_names) == 62 - 1 + len(RUNNING_TREATMENT_FEATURES)
    # the flags keep their place at the end
    assert rt.feature_names[-25:] == card.feature_names[-25:]


def test_a_misspelt_variant_fails_at_load_naming_the_key():
    with pytest.raises(ConfigError, match=r"state\.variant") as info:
        load_build_config(overrides={"state.variant": "running-treatment"})
    assert "running_treatment" in str(info.value)


def test_bin_features_must_cover_the_action_bins():
    with pytest.raises(ConfigError, match="prev_vaso_bin"):
        load_build_config(overrides={**RT, "actions.vaso_bins": 7})


# -- the state function on a hand-made stay ---------------------------------------------------
INFUSIONS = [  # (start h, end h, agent, NE-equivalent rate, fluid mL)
    (8, 12, "norepinephrine", 0.10, None),  # running at tau0 = 10 h
    (9, 10, "vasopressin", 0.05, None),  # stopped exactly at tau0: not running
    (10, 11, "phenylephrine", 0.02, None),  # starts at tau0: the action, not the state
    (13, 20, "norepinephrine", 0.20, None),  # running at 14 h and 18 h
    (15, 17, "dobutamine", 5.0, None),  # an inotrope, not a vasopressor
    (6, 10, "iv_fluid", None, 1000.0),  # all in [6, 10)
    (12, 13, "iv_fluid", None, 500.0),  # in [10, 14)
    (13, 15, "iv_fluid", None, 400.0),  # half in [10, 14), half in [14, 18)
]


def _infusions(rows) -> pa.Table:
    return pa.table(
        {
            "stay_id": pa.array([1] * len(rows), pa.int64()),
            "starttime": pa.array([_at(r[0]) for r in rows], TS),
            "endtime": pa.array([_at(r[1]) for r in rows], TS),
            "agent": pa.array([r[2] for r in rows]),
            "ne_rate": pa.array([r[3] for r in rows], pa.float64()),
            "fluid_ml": pa.array([r[4] for r in rows], pa.float64()),
        }
    )


def _states(infusions: pa.Table):
    """The running_treatment state of stay 1 at tau = 10, 14, 18 h after intime (no charted
    measurements: every measured feature is imputed)."""
    cfg = load_build_config(overrides=RT)
    con = duckdb.connect()
    taus = [_at(10), _at(14), _at(18)]
    steps = pa.table(
        {
            "stay_id": pa.array([1, 1, 1], pa.int64()),
            "subject_id": pa.array([7, 7, 7], pa.int64()),
            "step": pa.array([0, 1, 2], pa.int16()),
            "tau": pa.array(taus, TS),
        }
    )
    con.register("infusions", infusions)
    con.register(
        "episodes",
        pa.table(
            {
                "stay_id": pa.array([1], pa.int64()),
                "tau0": pa.array([taus[0]], TS),
                "tau_last": pa.array([taus[-1]], TS),
                "n_steps": pa.array([3], pa.int64()),
            }
        ),
    )
    con.register(
        "measurements",
        pa.table(
            {
                "stay_id": pa.array([], pa.int64()),
                "charttime": pa.array([], TS),
                "concept": pa.array([], pa.string()),
                "arterial": pa.array([], pa.int32()),
                "value": pa.array([], pa.float64()),
            }
        ),
    )
    con.register(
        "urine",
        pa.table(
            {
                "stay_id": pa.array([], pa.int64()),
                "charttime": pa.array([], TS),
                "value": pa.array([], pa.float64()),
            }
        ),
    )
    static = {
        "age": pa.table(
            {
                "stay_id": pa.array([1], pa.int64()),
                "age": [64.0],
                "onset_time": pa.array([_at(20)], TS),
                "intime": pa.array([T0], TS),
            }
        ),
        "weights": pa.table(
            {
                "stay_id": pa.array([1], pa.int64()),
                "charted_kg": [70.0],
                "charted_time": pa.array([_at(1)], TS),
                "infusion_kg": pa.array([None], pa.float64()),
                "infusion_time": pa.array([None], TS),
            }
        ),
    }
    cumulative = pa.table(  # the action windows' own bins (and cumulative doses)
        {
            "stay_id": pa.array([1, 1, 1], pa.int64()),
            "step": pa.array([0, 1, 2], pa.int16()),
            "cum_iv_fluid_ml_before": [0.0, 1.0, 2.0],
            "cum_vaso_dose_before": [0.0, 0.5, 1.0],
            "vaso_bin": pa.array([1, 2, 3], pa.int16()),
            "fluid_bin": pa.array([4, 1, 0], pa.int16()),
        }
    )
    st = compute_states(con, steps, static, cumulative, cfg, train=np.ones(3, dtype=bool))
    con.close()
    return st


def test_running_rate_and_fluid_before_tau_match_a_hand_computation():
    st = _states(_infusions(INFUSIONS))
    v = st.values
    np.testing.assert_allclose(v["vaso_rate_nor_equiv_at_tau"], [0.10, 0.20, 0.20])
    np.testing.assert_allclose(v["iv_fluid_4h_before_tau"], [1000.0, 700.0, 200.0])
    np.testing.assert_array_equal(v["prev_vaso_bin"], [0, 1, 2])
    np.testing.assert_array_equal(v["prev_fluid_bin"], [0, 4, 1])
    np.testing.assert_allclose(v["hours_since_icu_admission"], [10.0, 14.0, 18.0])
    assert "hours_since_onset" not in st.names
    assert st.names[-len(RUNNING_TREATMENT_FEATURES) :] == list(RUNNING_TREATMENT_FEATURES)
    # every infusion the state read started before tau
    assert (st.source_time < pa.array([_at(10), _at(14), _at(18)], TS).cast(pa.int64())).all()


def test_infusions_from_tau_on_do_not_change_the_state_at_tau():
    """Causality: rewrite everything charted from tau1 = 14 h on (new, changed or stopped
    infusions); the states at tau0 and tau1 are unchanged, the state at tau2 is not."""
    before = _states(_infusions(INFUSIONS))
    changed = [r for r in INFUSIONS if r[0] < 14]
    changed += [
        (14, 16, "norepinephrine", 2.0, None),  # starts exactly at tau1
        (15, 19, "epinephrine", 0.5, None),
        (14, 18, "iv_fluid", None, 3000.0),
    ]
    after = _states(_infusions(changed))
    for name in before.names:
        np.testing.assert_array_equal(after.values[name][:2], before.values[name][:2], err_msg=name)
    assert (
        after.values["vaso_rate_nor_equiv_at_tau"][2]
        != before.values["vaso_rate_nor_equiv_at_tau"][2]
    )
    assert after.values["iv_fluid_4h_before_tau"][2] != before.values["iv_fluid_4h_before_tau"][2]


# -- builds and the online state function on one small world ----------------------------------
@pytest.fixture(scope="module")
def variant_world(tmp_path_factory):
    """A small world charted hour by hour, built with the card layout (``ws_card``) and with
    the running_treatment variant (``ws``, the population's own build)."""
    root = tmp_path_factory.mktemp("state_variant")
    pop = generate_hourly_world(root / "raw", 40, seed=5, cfg=small_config())
    build(root / "raw", root / "ws_card", load_build_config())
    build(root / "raw", root / "ws", load_build_config(overrides=RT))
    return root, pop


def _replay(ws, variant: str = "sparse") -> pa.Table:
    parts = [pq.read_table(ws / "replay" / variant / f"replay_{s}.parquet") for s in SPLITS]
    return pa.concat_tables(parts).sort_by([("stay_id", "ascending"), ("step", "ascending")])


def test_default_build_keeps_the_card_feature_names(variant_world):
    root, _ = variant_world
    meta = read_json(root / "ws_card" / "replay" / "sparse" / "meta.json")
    assert meta["feature_names"] == load_build_config().feature_names
    assert meta["state_dim"] == 62 and meta["state_variant"] == "card"
    state = pq.read_table(root / "ws_card" / "features" / "state_raw.parquet")
    assert "hours_since_onset" in state.column_names
    assert not set(RUNNING_TREATMENT_FEATURES) & set(state.column_names)


def test_variant_replay_has_the_new_names_and_no_onset_clock(variant_world):
    root, _ = variant_world
    cfg = load_build_config(overrides=RT)
    card = _replay(root / "ws_card")
    for variant in cfg.rewards.variants:
        meta = read_json(root / "ws" / "replay" / variant / "meta.json")
        assert meta["state_variant"] == "running_treatment"
        assert meta["feature_names"] == cfg.feature_names
        assert meta["state_dim"] == len(cfg.feature_names) == 66
        assert "hours_since_onset" not in meta["feature_names"]
        schema = pq.read_schema(root / "ws" / "replay" / variant / "replay_train.parquet")
        assert [c for c in schema.names if c.startswith("s_")] == [
            f"s_{n}" for n in cfg.feature_names
        ]
    replay = _replay(root / "ws")
    # same transitions as the card build; hours_since_onset stays an (ignored) extra column
    assert replay["action"].equals(card["action"])
    np.testing.assert_array_equal(
        replay["hours_since_onset_raw"].to_numpy(), card["hours_since_onset_raw"].to_numpy()
    )
    # the variant's treatment features are z-scored on train
    train = pq.read_table(root / "ws" / "replay" / "sparse" / "replay_train.parquet")
    for name in RUNNING_TREATMENT_FEATURES:
        x = train[f"s_{name}"].to_numpy().astype(np.float64)
        assert abs(x.mean()) < 1e-3 and abs(x.std() - 1.0) < 1e-3, name
    audit = read_json(root / "ws" / "audit" / "leakage.json")
    assert audit["passed"]


def test_variant_features_agree_with_the_logged_actions(variant_world):
    root, _ = variant_world
    state = pq.read_table(root / "ws" / "features" / "state_raw.parquet").sort_by(
        [("stay_id", "ascending"), ("step", "ascending")]
    )
    acts = pq.read_table(root / "ws" / "actions" / "step_actions.parquet").sort_by(
        [("stay_id", "ascending"), ("step", "ascending")]
    )
    stay = state["stay_id"].to_numpy()
    later = np.r_[False, stay[1:] == stay[:-1]]
    prev = np.flatnonzero(later) - 1
    np.testing.assert_array_equal(
        state["prev_vaso_bin"].to_numpy()[later], acts["vaso_bin"].to_numpy()[prev]
    )
    np.testing.assert_array_equal(state["prev_vaso_bin"].to_numpy()[~later], 0)
    np.testing.assert_allclose(
        state["iv_fluid_4h_before_tau"].to_numpy()[later], acts["fluid_ml"].to_numpy()[prev]
    )
    assert (state["vaso_rate_nor_equiv_at_tau"].to_numpy() > 0).mean() > 0.05
    assert (state["hours_since_icu_admission"].to_numpy() >= 0).all()


def test_online_states_equal_the_variant_builds_row_for_row(variant_world):
    """The truth harness's state function reproduces the variant's replay states (the card
    layout's parity test in test_truth.py, for running_treatment)."""
    root, pop = variant_world
    ctx = TruthContext.load(root / "ws")
    assert "vaso_rate_nor_equiv_at_tau" in ctx.feature_names
    rec = rollout_population(ctx, pop, Recorder(), root / "work", record_states=True)
    dec = rec.decisions
    built = pq.read_table(root / "ws" / "features" / "state_raw.parquet").sort_by(
        [("stay_id", "ascending"), ("step", "ascending")]
    )
    assert dec.num_rows == built.num_rows > 50
    assert dec["stay_id"].to_pylist() == built["stay_id"].to_pylist()
    assert dec["step"].to_pylist() == built["step"].to_pylist()
    for name in ctx.feature_names:  # raw values at decision time, and from the full tables
        np.testing.assert_allclose(
            dec[name].to_numpy(), built[name].to_numpy().astype(np.float64), err_msg=name
        )
        np.testing.assert_allclose(
            dec[name].to_numpy(), dec[f"after_{name}"].to_numpy(), err_msg=name
        )
    replay = _replay(root / "ws")
    online = np.column_stack([dec[f"norm_{n}"].to_numpy() for n in ctx.feature_names])
    offline = np.column_stack([replay[f"s_{n}"].to_numpy() for n in ctx.feature_names])
    np.testing.assert_allclose(online, offline, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(dec["logged_action"].to_numpy(), replay["action"].to_numpy())


def test_statistics_of_another_layout_are_refused(variant_world):
    root, _ = variant_world
    from sepsisrl.dataset.state import FrozenStatistics

    with pytest.raises(ValueError, match="another build"):
        FrozenStatistics.load(root / "ws_card", load_build_config(overrides=RT))
