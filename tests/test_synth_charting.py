"""Charting conserves what the simulator produced (urine, fluids, vasopressor doses)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sepsisrl.config import ConfigError
from sepsisrl.synth import charting
from sepsisrl.synth.cohort import simulate_chunk
from sepsisrl.synth.population import sample_attendings

from .conftest import small_config


@pytest.fixture(scope="module")
def chunk():
    cfg = small_config(**{"charting.density": 0.0, "charting.impossible_value_rate": 0.0})
    att = sample_attendings(cfg, 4)
    return cfg, att, simulate_chunk(cfg, 4, 0, att, 0, 80)


def _ctx(cfg, att, ch, carry=None):
    return charting.ChartContext(
        cfg=cfg,
        stays=ch.stays,
        hourly=ch.sim.hourly,
        admittime=ch.timeline.admittime,
        intime=ch.timeline.intime,
        outtime=ch.timeline.outtime,
        attending_provider=att.provider_id,
        rng=np.random.default_rng(0),
        id_base=1,
        urine_carry=carry,
    )


def _urine_by_stay(table, stays):
    """Urine per stay as the clinical spec defines it (GU irrigant in counts negative)."""
    urine_items = [226559, 226560, 226561, 226584, 226563, 226564, 226565, 226567, 227489]
    t = table.filter(pc.is_in(table["itemid"], value_set=pa.array([*urine_items, 227488])))
    sid = t["stay_id"].to_numpy()
    val = t["value"].to_numpy() * np.where(t["itemid"].to_numpy() == 227488, -1, 1)
    pos = {s: i for i, s in enumerate(stays.stay_id.tolist())}
    return np.bincount([pos[s] for s in sid.tolist()], val, minlength=stays.n)


def test_charted_urine_adds_up_to_the_simulated_urine(chunk):
    cfg, att, ch = chunk
    H = ch.sim.hourly
    icu = H["in_icu"].astype(bool)
    true = np.bincount(H["stay"][icu], H["urine_ml"][icu], minlength=ch.stays.n)
    charted = _urine_by_stay(charting.outputevents(_ctx(cfg, att, ch)), ch.stays)
    irrigated = true - charted
    # rounding to whole mL per chart; irrigation stays chart in/out instead of urine
    ok = np.abs(irrigated) < 1.0 * np.maximum(
        1, (H["stay"][icu] == np.arange(ch.stays.n)[:, None]).sum(1)
    )
    assert ok.mean() > 0.95


def test_hour_by_hour_charting_carries_uncharted_urine(chunk):
    cfg, att, ch = chunk
    H = ch.sim.hourly
    carry = np.zeros(ch.stays.n)
    ctx = _ctx(cfg, att, ch, carry)
    total = np.zeros(ch.stays.n)
    order = np.lexsort((H["stay"], H["h"]))
    for h in np.unique(H["h"]):
        rows = order[H["h"][order] == h]
        ctx.hourly = {k: v[rows] for k, v in H.items()}
        out = charting.outputevents(ctx)
        if out.num_rows:
            total += _urine_by_stay(out, ch.stays)
    icu = H["in_icu"].astype(bool)
    true = np.bincount(H["stay"][icu], H["urine_ml"][icu], minlength=ch.stays.n)
    hours = np.bincount(H["stay"][icu], minlength=ch.stays.n)
    # charted + still pending = produced, up to whole-mL rounding per chart
    assert (np.abs(total + carry - true) <= 0.5 * hours + 1e-6).all()


def test_fluid_rows_add_up_to_the_simulated_fluid(chunk):
    cfg, att, ch = chunk
    ie = charting.inputevents(_ctx(cfg, att, ch))
    fluid_ids = [225158, 225159, 225828, 220949, 225823, 220864, 220862, 225174]
    f = ie.filter(pc.is_in(ie["itemid"], value_set=pa.array(fluid_ids)))
    # drug diluents are charted on top of the simulated fluid (they are not resuscitation)
    f = f.filter(pc.not_equal(f["ordercomponenttypedescription"], "Mixed solution"))
    charted = pc.sum(f["amount"]).as_py()
    H = ch.sim.hourly
    icu = H["in_icu"].astype(bool)
    simulated = float((H["bolus_ml"] + H["maint_rate"])[icu].sum())
    # albumin 25 % is charted as 100 mL for what the simulator counted as a 5 % bolus
    assert 0.93 * simulated < charted <= 1.001 * simulated


def test_norepinephrine_rows_carry_the_simulated_dose(chunk):
    cfg, att, ch = chunk
    ie = charting.inputevents(_ctx(cfg, att, ch))
    ne = ie.filter(pc.equal(ie["itemid"], 221906))
    assert ne.num_rows > 0
    rate = ne["rate"].to_numpy()
    hours = (
        ne["endtime"].cast("int64").to_numpy() - ne["starttime"].cast("int64").to_numpy()
    ) / 3600
    weight = ne["patientweight"].to_numpy()
    amount_mg = ne["amount"].to_numpy()
    assert np.allclose(amount_mg, rate * weight * 60 * hours / 1000, rtol=0.02, atol=1e-3)


VASOPRESSORS = [221906, 221289, 221749, 221662, 222315]


def _rows(table: pa.Table, itemids: list[int]) -> list[dict]:
    sub = table.filter(pc.is_in(table["itemid"], value_set=pa.array(itemids)))
    return sorted(sub.to_pylist(), key=lambda r: (r["stay_id"], r["itemid"], r["starttime"]))


def test_each_drip_row_has_its_diluent_row_with_the_drug_volume(chunk):
    cfg, att, ch = chunk
    ie = charting.inputevents(_ctx(cfg, att, ch))
    carriers = {
        r["orderid"]: r
        for r in ie.to_pylist()
        if r["ordercomponenttypedescription"] == "Mixed solution"
    }
    drips = _rows(ie, [*VASOPRESSORS, 221653])  # and dobutamine
    assert len(drips) > 20
    conc = {221906: 32.0, 221289: 8.0, 221749: 240.0, 221662: 1600.0, 222315: 0.4, 221653: 1e3}
    for d in drips:
        c = carriers[d["orderid"]]
        assert c["itemid"] in (225158, 220949)  # NaCl 0.9 % or D5W
        assert (c["starttime"], c["endtime"]) == (d["starttime"], d["endtime"])
        assert c["statusdescription"] == d["statusdescription"]
        assert c["ordercategoryname"] == "01-Drips" and c["rateuom"] == "mL/hour"
        per_hour = {"mcg/kg/min": 60 * d["patientweight"], "units/hour": 1.0}[d["rateuom"]]
        expected = d["rate"] * per_hour / conc[d["itemid"]]
        assert c["rate"] == pytest.approx(expected, rel=0.01, abs=2e-3)
    assert len(carriers) == len(drips)  # no diluent without its drug


def test_infusion_rows_end_with_the_status_of_what_ended_them(chunk):
    """ChangeDose/Rate: the next row follows at another rate; Paused: restarted within
    infusion_pause_max_gap_h; Stopped / FinishedRunning: not restarted that soon."""
    cfg, att, ch = chunk
    ie = charting.inputevents(_ctx(cfg, att, ch))
    statuses = set(ie["statusdescription"].to_pylist())
    assert statuses <= {"FinishedRunning", "ChangeDose/Rate", "Stopped", "Paused"}
    assert {"ChangeDose/Rate", "Stopped"} <= statuses
    outtime = dict(zip(ch.stays.stay_id.tolist(), ch.timeline.outtime.tolist(), strict=True))
    gap_h = cfg.charting.infusion_pause_max_gap_h
    rows = _rows(ie, VASOPRESSORS)
    hours = [(r["endtime"] - r["starttime"]).total_seconds() / 3600 for r in rows]
    assert max(hours) > 2  # a run of constant rate is one row, not one row per hour
    seen = set()
    for r, nxt in zip(rows, [*rows[1:], None], strict=True):
        same = nxt is not None and (nxt["stay_id"], nxt["itemid"]) == (r["stay_id"], r["itemid"])
        at_discharge = r["endtime"].timestamp() >= outtime[r["stay_id"]]
        status = r["statusdescription"]
        seen.add(status)
        if status == "ChangeDose/Rate":
            assert at_discharge or (same and nxt["starttime"] == r["endtime"])
            assert not same or nxt["rate"] != r["rate"]
        elif status == "Paused":
            gap = (nxt["starttime"] - r["endtime"]).total_seconds() / 3600
            assert same and 0 < gap <= gap_h
        elif same:
            assert (nxt["starttime"] - r["endtime"]).total_seconds() / 3600 > gap_h
    assert {"ChangeDose/Rate", "Stopped"} <= seen


def test_continuous_fluid_is_one_row_per_bag(chunk):
    cfg, att, ch = chunk
    ie = charting.inputevents(_ctx(cfg, att, ch))
    maint = ie.filter(pc.equal(ie["ordercategoryname"], "02-Fluids (Crystalloids)"))
    amount = maint["amount"].to_numpy()
    assert len(amount) > 20
    assert amount.max() <= cfg.charting.fluid_bag_ml + 1e-6
    assert (amount > 0.5 * cfg.charting.fluid_bag_ml).mean() > 0.1


def test_foley_urine_is_charted_every_few_hours_not_every_hour(chunk):
    cfg, att, ch = chunk
    oe = charting.outputevents(_ctx(cfg, att, ch))
    foley = oe.filter(pc.equal(oe["itemid"], 226559))
    H = ch.sim.hourly
    icu = H["in_icu"].astype(bool)
    on_foley = np.isin(ch.stays.stay_id[H["stay"][icu]], pc.unique(foley["stay_id"]).to_numpy())
    per_hour = foley.num_rows / on_foley.sum()
    p = cfg.charting.foley_chart_per_hour
    assert p - 0.1 < per_hour < p + 0.1, per_hour


def test_lab_results_arrive_after_a_panel_specific_delay(chunk):
    cfg, att, ch = chunk
    lab = charting.labevents(_ctx(cfg, att, ch))
    delay = (
        lab["storetime"].cast(pa.int64()).to_numpy() - lab["charttime"].cast(pa.int64()).to_numpy()
    ) / 60
    item = lab["itemid"].to_numpy()
    assert delay.min() >= 1
    want = {50821: "blood_gas", 50912: "chemistry", 51265: "hematology", 51237: "coagulation"}
    for itemid, panel in want.items():
        median = cfg.charting.lab_result_delay_min[panel].median
        got = np.median(delay[item == itemid])
        assert 0.7 * median <= got <= 1.3 * median, (itemid, got, median)


def test_phenylephrine_per_minute_rows_use_the_patient_weight():
    cfg = small_config(
        **{
            "charting.density": 0.0,
            "charting.phenylephrine_mcg_min_fraction": 1.0,
            "clinicians.first_line_probs": {
                "norepinephrine": 0.0,
                "phenylephrine": 1.0,
                "dopamine": 0.0,
                "epinephrine": 0.0,
            },
        }
    )
    att = sample_attendings(cfg, 4)
    ch = simulate_chunk(cfg, 4, 0, att, 0, 80)
    ie = charting.inputevents(_ctx(cfg, att, ch))
    phen = _rows(ie, [221749])
    assert len(phen) > 5
    assert {r["rateuom"] for r in phen} == {"mcg/min"}
    carriers = {
        r["orderid"]: r
        for r in ie.to_pylist()
        if r["ordercomponenttypedescription"] == "Mixed solution"
    }
    for r in phen:
        hours = (r["endtime"] - r["starttime"]).total_seconds() / 3600
        assert r["amount"] == pytest.approx(r["rate"] * 60 * hours / 1000, rel=0.01, abs=1e-3)
        assert 0.05 < r["rate"] / r["patientweight"] < 10  # a mcg/kg/min dose once weighed
        assert carriers[r["orderid"]]["rate"] == pytest.approx(r["rate"] * 60 / 240, abs=2e-3)


@pytest.mark.parametrize(
    "key, value",
    [
        ("charting.drip_concentration.milrinone", 200.0),
        ("charting.date_only_culture_fraction.blood", 1.5),
        ("charting.lab_result_delay_min.urinalysis", {"median": 60.0, "sigma": 0.5}),
    ],
)
def test_charting_dictionaries_refuse_unknown_keys_and_bad_fractions(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        small_config(**{key: value})
