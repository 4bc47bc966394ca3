"""The measurement conventions (dataset/conventions.py: gcs, ventilation, labs; the sofa switches
are in tests/test_build_sofa.py): each at mimic-code's value (the packaged default) and at the
legacy value, through the real stages on hand-made ingest tables (tests/build_fixtures.py);
the urine irrigant fix; lab availability at storetime (labs.time) in the state, the leakage
audit and the truth harness's online state.

Every fixture stay is admitted at T0; times are hours after T0.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sepsisrl.dataset.builder import build
from sepsisrl.dataset.config import BuildConfig, load_build_config
from sepsisrl.dataset.conventions import REGISTRY
from sepsisrl.dataset.leakage import audit_workspace
from sepsisrl.dataset.state import compute_states
from tests.conftest import small_config

from .build_fixtures import (
    CREATININE,
    FIO2_BLOOD_GAS,
    GCS_EYE,
    GCS_MOTOR,
    GCS_VERBAL,
    GU_IRRIGANT_IN,
    GU_IRRIGANT_OUT,
    O2_DEVICE,
    PAO2,
    PLATELETS,
    TS,
    URINE_FOLEY,
    VENTILATOR_MODE,
    VENTILATOR_MODE_HAMILTON,
    Built,
    IngestTables,
    Stay,
    at,
    build_measurements,
)

LACTATE = 50813
ETT = "No Response-ETT"

#: the legacy values of the measurement and SOFA conventions (dataset/conventions.py)
LEGACY = {
    c.key: c.legacy
    for c in REGISTRY
    if c.key.split(".")[0] in ("gcs", "ventilation", "sofa", "labs")
}


def config(**overrides: Any) -> BuildConfig:
    return load_build_config(overrides=overrides)


def measured(built: Built, s: Stay, concept: str) -> list[tuple[Any, float]]:
    """(charttime, value) of ``concept`` for stay ``s``, in time order."""
    rows = built.rows("measurements", "measurements")
    return sorted(
        (r["charttime"], r["value"])
        for r in rows
        if r["stay_id"] == s.stay_id and r["concept"] == concept
    )


def test_the_switches_are_registered_with_mimic_code_as_the_default():
    cfg = load_build_config()
    assert set(LEGACY) == {
        "gcs.intubated",
        "gcs.carry_forward_hours",
        "gcs.missing_component",
        "ventilation.definition",
        "sofa.fio2",
        "sofa.pao2_specimen",
        "sofa.urine",
        "sofa.vasopressor_rate",
        "labs.attribution",
    }
    assert (cfg.gcs.intubated, cfg.gcs.carry_forward_hours, cfg.gcs.missing_component) == (
        "gcs_normal",
        6,
        "normal",
    )
    assert cfg.ventilation.definition == "invasive"
    assert (cfg.labs.attribution, cfg.labs.time) == ("hadm_id", "charttime")
    assert 229314 in cfg.items["ventilator_mode_hamilton"]
    assert cfg.items["fio2_bg"] == [50816]
    legacy = load_build_config(overrides=LEGACY)
    assert (legacy.gcs.intubated, legacy.gcs.carry_forward_hours) == ("charted", 0)
    assert legacy.ventilation.definition == "any_device"


# --- urine: the validity range applies to the net of a charttime ------------------------------


@pytest.mark.parametrize("overrides", [{}, LEGACY], ids=["mimic-code", "legacy"])
def test_irrigant_pairs_of_several_litres_net_to_the_urine_in_every_profile(tmp_path, overrides):
    t = IngestTables()
    s = t.stay()
    # the pattern of the demo: irrigant in/out rows above the 2,000 mL urine range
    t.output(s, 1, GU_IRRIGANT_IN, 3000)
    t.output(s, 1, GU_IRRIGANT_OUT, 3200)  # 200 mL of urine
    t.output(s, 2, GU_IRRIGANT_IN, 1800)
    t.output(s, 2, GU_IRRIGANT_OUT, 2150)  # 350 mL; capping rows first left -1,800 mL
    t.output(s, 3, URINE_FOLEY, 200)
    built = build_measurements(t, tmp_path, config(**overrides))
    urine = [(r["charttime"], r["value"]) for r in built.rows("measurements", "urine")]
    assert urine == [(at(1), 200), (at(2), 350), (at(3), 200)]
    audit = built.measurements_audit["urine_rows"]
    assert audit["charttimes_with_irrigant_kept"] == 2
    assert audit["charttimes_dropped_out_of_range"] == 0


# --- GCS ------------------------------------------------------------------------------------


def gcs_rows(t: IngestTables, s: Stay, hours: float, **components: Any) -> None:
    """Only the components given (eye, verbal, motor; verbal=ETT for the intubated text)."""
    for name, itemid in (("eye", GCS_EYE), ("verbal", GCS_VERBAL), ("motor", GCS_MOTOR)):
        if name in components:
            v = components[name]
            if v == ETT:
                t.chart(s, hours, itemid, 1.0, ETT)
            else:
                t.chart(s, hours, itemid, float(v))


def gcs_of(tmp_path: Path, charts: list[tuple[float, dict]], **overrides: Any) -> list[float]:
    t = IngestTables()
    s = t.stay()
    for hours, comps in charts:
        gcs_rows(t, s, hours, **comps)
    built = build_measurements(t, tmp_path, config(**overrides))
    return [v for _, v in measured(built, s, "gcs_total")]


def test_an_intubated_time_and_the_next_without_verbal_score_15(tmp_path):
    charts = [
        (1, {"eye": 2, "verbal": ETT, "motor": 4}),  # intubated: 15
        (3, {"eye": 2, "motor": 4}),  # no verbal, previous time intubated: 15
        (5, {"eye": 3, "verbal": 4, "motor": 5}),  # extubated: as charted, 12
        (6, {"eye": 3}),  # carried from 5 h: 3 + 4 + 5
    ]
    assert gcs_of(tmp_path, charts) == [15, 15, 12, 12]
    legacy = gcs_of(tmp_path / "legacy", charts, **LEGACY)
    assert legacy == [2 + 1 + 4, 12]  # verbal as charted (1); partial times give nothing


def test_after_extubation_nothing_is_carried_from_the_intubated_time(tmp_path):
    # motor missing at 3 h after an intubated 1 h: normal (6), not the intubated time's 2
    charts = [(1, {"eye": 1, "verbal": ETT, "motor": 2}), (3, {"eye": 3, "verbal": 4})]
    assert gcs_of(tmp_path, charts) == [15, 3 + 4 + 6]


def test_components_carry_from_the_previous_time_within_6h_only(tmp_path):
    charts = [
        (1, {"eye": 2, "verbal": 2, "motor": 4}),  # 8
        (3, {"motor": 5}),  # 2 + 2 + 5 (eye and verbal from 1 h)
        (4, {"eye": 3}),  # carries from 3 h only: verbal normal 5, motor 5 -> 13
        (10, {"verbal": 3}),  # 6 h after the previous time: nothing carried, 4 + 3 + 6
        (15, {"eye": 1, "verbal": 1, "motor": 1}),  # 3
        (20 + 59 / 60, {"eye": 4}),  # 5 h 59 min later: 4 + 1 + 1
    ]
    assert gcs_of(tmp_path, charts) == [8, 9, 13, 13, 3, 6]


def test_verbal_normal_scores_the_intubated_verbal_5(tmp_path):
    charts = [(1, {"eye": 2, "verbal": ETT, "motor": 4})]
    assert gcs_of(tmp_path, charts, **{"gcs.intubated": "verbal_normal"}) == [11]


def test_without_carry_forward_a_missing_component_is_normal_or_drops_the_time(tmp_path):
    charts = [(1, {"eye": 2, "verbal": 2, "motor": 4}), (2, {"motor": 5})]
    assert gcs_of(tmp_path, charts, **{"gcs.carry_forward_hours": 0}) == [8, 4 + 5 + 5]
    dropped = gcs_of(
        tmp_path / "drop", charts, **{"gcs.carry_forward_hours": 0, "gcs.missing_component": "drop"}
    )
    assert dropped == [8]


# --- ventilation periods --------------------------------------------------------------------


def periods(built: Built, s: Stay) -> list[tuple[Any, Any]]:
    return [
        (r["starttime"], r["endtime"])
        for r in built.rows("measurements", "ventilation")
        if r["stay_id"] == s.stay_id
    ]


def test_invasive_ventilation_periods_follow_mimic_codes_episodes(tmp_path):
    t = IngestTables()
    a = t.stay()  # invasive 1-3 h, then nasal cannula at 5 h: ventilated 1 h to 5 h
    for h in (1, 2, 3):
        t.chart(a, h, VENTILATOR_MODE, value="CMV/ASSIST")
    t.chart(a, 5, O2_DEVICE, value="Nasal cannula")
    b = t.stay()  # Hamilton mode at 1 h and 2 h, nothing after: 1 h to 2 h
    t.chart(b, 1, VENTILATOR_MODE_HAMILTON, value="ASV")
    t.chart(b, 2, VENTILATOR_MODE_HAMILTON, value="ASV")
    c = t.stay()  # one chart only, or charts 14 h apart: no period
    t.chart(c, 1, O2_DEVICE, value="Endotracheal tube")
    t.chart(c, 15, O2_DEVICE, value="Endotracheal tube")
    d = t.stay()  # tracheostomy tube on a ventilator: the tracheostomy class, no period
    for h in (1, 2):
        t.chart(d, h, O2_DEVICE, value="Tracheostomy tube")
        t.chart(d, h, VENTILATOR_MODE, value="CMV/ASSIST")
    e = t.stay()  # 13 h between charts still continues the episode
    t.chart(e, 1, O2_DEVICE, value="Endotracheal tube")
    t.chart(e, 14, O2_DEVICE, value="Endotracheal tube")
    built = build_measurements(t, tmp_path)
    assert periods(built, a) == [(at(1), at(5))]
    assert periods(built, b) == [(at(1), at(2))]
    assert periods(built, c) == []
    assert periods(built, d) == []
    assert periods(built, e) == [(at(1), at(14))]
    # legacy: 8 h after each ventilator mode or airway device chart
    legacy = build_measurements(t, tmp_path / "legacy", config(**LEGACY))
    assert periods(legacy, b) == [(at(1), at(9)), (at(2), at(10))]
    assert periods(legacy, d) == [(at(1), at(9)), (at(2), at(10))]
    assert periods(legacy, c) == [(at(1), at(9)), (at(15), at(23))]


# --- labs: attribution, blood gas FiO2, storetime ---------------------------------------------


def test_labs_without_the_stays_hadm_id_do_not_enter_the_stay(tmp_path):
    t = IngestTables()
    s = t.stay()
    t.lab(s, -10, CREATININE, 2.5, hadm_id=None)  # emergency department, no hadm_id
    t.lab(s, -5, CREATININE, 1.5)  # this admission, before ICU admission
    t.lab(s, -8, PLATELETS, 90, hadm_id=999)  # another admission of the patient
    t.lab(s, -9, PAO2, 70, specimen_type="ART.", hadm_id=None)  # blood gas: by patient
    built = build_measurements(t, tmp_path)
    assert measured(built, s, "creatinine") == [(at(-5), 1.5)]
    assert measured(built, s, "platelets") == []
    assert measured(built, s, "pao2") == [(at(-9), 70)]
    legacy = build_measurements(t, tmp_path / "legacy", config(**LEGACY))
    assert measured(legacy, s, "creatinine") == [(at(-10), 2.5), (at(-5), 1.5)]
    assert measured(legacy, s, "platelets") == [(at(-8), 90)]


def test_blood_gas_fio2_is_a_fraction_at_its_pao2s_time(tmp_path):
    t = IngestTables()
    s = t.stay()
    t.lab(s, 1, PAO2, 80, specimen_type="ART.", also=((FIO2_BLOOD_GAS, 50),))  # percent
    t.lab(s, 2, PAO2, 80, specimen_type="ART.", also=((FIO2_BLOOD_GAS, 0.6),))  # fraction
    t.lab(s, 3, PAO2, 80, specimen_type="ART.", also=((FIO2_BLOOD_GAS, 15),))  # O2 flow: dropped
    t.lab(s, 4, PAO2, 80)  # no specimen type: kept, not marked arterial
    built = build_measurements(t, tmp_path)
    assert measured(built, s, "fio2_bg") == [(at(1), 0.5), (at(2), 0.6)]
    arterial = sorted(
        (r["charttime"], r["arterial"])
        for r in built.rows("measurements", "measurements")
        if r["concept"] == "pao2"
    )
    assert arterial == [(at(1), 1), (at(2), 1), (at(3), 1), (at(4), 0)]


def test_under_storetime_a_lab_is_placed_at_its_result_time(tmp_path):
    t = IngestTables()
    s = t.stay()
    t.lab(s, 1, CREATININE, 1.4, resulted_after=1.5)
    t.lab(s, 2, CREATININE, 1.6, resulted_after=None)  # no storetime
    built = build_measurements(t, tmp_path, config(**{"labs.time": "storetime"}))
    assert measured(built, s, "creatinine") == [(at(2.5), 1.4)]
    assert built.measurements_audit["labs"] == {"attribution": "hadm_id", "time": "storetime"}
    charted = build_measurements(t, tmp_path / "charttime")
    assert measured(charted, s, "creatinine") == [(at(1), 1.4), (at(2), 1.6)]


def test_under_storetime_a_blood_gas_pao2_and_fio2_share_the_later_storetime(tmp_path):
    t = IngestTables()
    s = t.stay()
    t.lab(s, 1, PAO2, 80, specimen_type="ART.", also=((FIO2_BLOOD_GAS, 50),), resulted_after=0.5)
    fio2_row = next(r for r in t.rows["labs"] if r["itemid"] == FIO2_BLOOD_GAS)
    fio2_row["storetime"] = at(2)  # the FiO2 stored half an hour after the PaO2
    built = build_measurements(t, tmp_path, config(**{"labs.time": "storetime"}))
    assert measured(built, s, "pao2") == [(at(2), 80)]
    assert measured(built, s, "fio2_bg") == [(at(2), 0.5)]


def state_at(tmp_path: Path, labs: list[tuple[float, float]], tau: float, **overrides):
    """The lactate state at ``tau`` of a stay whose lactates are (drawn at, resulted after)
    hours; lactate values 1, 2, 3 ... in that order."""
    cfg = config(**overrides)
    t = IngestTables()
    s = t.stay()
    for k, (drawn, after) in enumerate(labs, start=1):
        t.lab(s, drawn, LACTATE, float(k), resulted_after=after)
    built = build_measurements(t, tmp_path, cfg)
    con = duckdb.connect()
    for view in ("measurements", "urine"):
        path = built.measurements / f"{view}.parquet"
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{path}')")
    taus = pa.array([at(tau)], TS)
    steps = pa.table(
        {
            "stay_id": pa.array([s.stay_id], pa.int64()),
            "subject_id": pa.array([s.subject_id], pa.int64()),
            "step": pa.array([0], pa.int16()),
            "tau": taus,
        }
    )
    con.register(
        "episodes",
        pa.table(
            {
                "stay_id": pa.array([s.stay_id], pa.int64()),
                "tau0": taus,
                "tau_last": taus,
                "n_steps": pa.array([1], pa.int64()),
            }
        ),
    )
    static = {
        "age": pa.table(
            {
                "stay_id": pa.array([s.stay_id], pa.int64()),
                "age": [60.0],
                "onset_time": pa.array([at(tau)], TS),
            }
        ),
        "weights": pa.table(
            {
                "stay_id": pa.array([s.stay_id], pa.int64()),
                "charted_kg": pa.array([None], pa.float64()),
                "charted_time": pa.array([None], TS),
                "infusion_kg": pa.array([None], pa.float64()),
                "infusion_time": pa.array([None], TS),
            }
        ),
    }
    cumulative = pa.table(
        {
            "stay_id": pa.array([s.stay_id], pa.int64()),
            "step": pa.array([0], pa.int16()),
            "cum_iv_fluid_ml_before": [0.0],
            "cum_vaso_dose_before": [0.0],
        }
    )
    st = compute_states(con, steps, static, cumulative, cfg, train=np.ones(1, dtype=bool))
    con.close()
    return st.values["lactate"][0], bool(st.observed["lactate"][0]), int(st.source_time[0])


def test_under_storetime_a_lab_resulted_after_tau_is_not_in_the_state_at_tau(tmp_path):
    # lactate 1 drawn at 6 h, resulted at 6.5 h; lactate 2 drawn at 9 h (before tau = 10 h),
    # resulted at 10.5 h (after tau)
    labs = [(6, 0.5), (9, 1.5)]
    value, observed, source = state_at(tmp_path, labs, 10, **{"labs.time": "storetime"})
    assert (value, observed) == (1.0, True)
    assert source == int(pa.scalar(at(6.5), TS).value)
    value, observed, source = state_at(tmp_path / "charttime", labs, 10)
    assert (value, observed) == (2.0, True)
    assert source == int(pa.scalar(at(9), TS).value)
    # resulted exactly at tau: not usable at tau either
    value, observed, _ = state_at(tmp_path / "at_tau", [(9, 1.0)], 10, **{"labs.time": "storetime"})
    assert not observed


# --- builds of a synthetic world --------------------------------------------------------------


def test_a_build_that_read_labs_at_charttime_fails_a_storetime_audit(built):
    ws, cfg, _ = built
    assert cfg.labs.time == "charttime"
    assert audit_workspace(ws, cfg)["passed"]
    report = audit_workspace(ws, config(**{"labs.time": "storetime"}))
    failed = {c["check"]: c["detail"] for c in report["checks"] if not c["passed"]}
    assert list(failed) == ["causal_states"]
    assert "no lab usable in their window by labs.time = storetime" in failed["causal_states"]


@pytest.fixture(scope="module")
def storetime_world(tmp_path_factory: pytest.TempPathFactory):
    """A 40-patient world charted hour by hour, built with labs.time: storetime (the build
    runs its leakage audit) and with the default, and its own patients rolled out with a
    policy that defers to the clinicians, recording the online states."""
    from sepsisrl.truth.policies import Recorder
    from sepsisrl.truth.rollout import rollout_population
    from sepsisrl.truth.world import TruthContext, generate_hourly_world
    from sepsisrl.workspace import write_json

    root = tmp_path_factory.mktemp("storetime_world")
    pop = generate_hourly_world(root / "raw", 40, seed=5, cfg=small_config())
    build(root / "raw", root / "ws", config(**{"labs.time": "storetime"}))
    build(root / "raw", root / "ws_charttime", load_build_config())
    write_json(root / "population.json", {"seed": 5, "note": "the world's own patients"})
    ctx = TruthContext.load(root / "ws")
    recorded = rollout_population(ctx, pop, Recorder(), root / "work", record_states=True)
    yield root, ctx, recorded
    shutil.rmtree(root / "work", ignore_errors=True)


def _states(ws: Path) -> pa.Table:
    return pq.read_table(ws / "features" / "state_raw.parquet").sort_by(
        [("stay_id", "ascending"), ("step", "ascending")]
    )


def test_online_states_use_the_storetime_rule_like_the_build(storetime_world):
    root, ctx, recorded = storetime_world
    assert ctx.build_cfg.labs.time == "storetime"
    dec, built = recorded.decisions, _states(root / "ws")
    assert dec.num_rows == built.num_rows > 20
    assert dec["stay_id"].to_pylist() == built["stay_id"].to_pylist()
    assert dec["step"].to_pylist() == built["step"].to_pylist()
    for name in ctx.feature_names:
        np.testing.assert_allclose(
            dec[name].to_numpy(), built[name].to_numpy().astype(np.float64), err_msg=name
        )


def test_storetime_changes_the_lab_features_of_some_states(storetime_world):
    # the synthetic world results labs 20-150 min after they are drawn
    root, _, _ = storetime_world
    con = duckdb.connect()
    con.register("late", _states(root / "ws"))
    con.register("early", _states(root / "ws_charttime"))
    joined = con.execute(
        "SELECT l.obs_creatinine, e.obs_creatinine, l.creatinine, e.creatinine "
        "FROM late l JOIN early e USING (stay_id, step, tau)"
    ).fetchall()
    con.close()
    assert len(joined) > 20
    # a creatinine drawn late in one window is resulted in the next
    assert any(e and not lt for lt, e, _, _ in joined)
    assert any(lt and not e for lt, e, _, _ in joined)
    assert any(a != b for _, _, a, b in joined)
