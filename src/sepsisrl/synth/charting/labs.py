"""``labevents``: routine panels, blood gases and lactates, with result delays and artifacts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sepsisrl.mimic.schema import TABLES
from sepsisrl.synth import catalog
from sepsisrl.synth.charting.common import (
    HOUR,
    ChartContext,
    Events,
    arrow_table,
    float_array,
    int_array,
    num_to_str,
    round_to,
    str_const,
    time_array,
)

_PANELS = {
    "bmp": [
        "sodium",
        "potassium",
        "bicarbonate",
        "bun",
        "creatinine",
        "glucose",
        "chloride",
        "anion_gap",
    ],
    "cbc": ["wbc", "hgb", "hct", "platelets"],
    "lft": ["bilirubin", "albumin"],
    "coag": ["inr", "ptt"],
    "lytes": ["magnesium", "calcium", "phosphate"],
    "gas": [
        "specimen_type",
        "pao2",
        "paco2",
        "ph",
        "base_excess",
        "bicarb_bg",
        "lactate",
        "potassium_bg",
        "sodium_bg",
        "glucose_bg",
        "hgb_bg",
    ],
    "lactate": ["lactate"],
}
_LAB_NOISE = 0.03
#: result delay class of each panel (``charting.lab_result_delay_min``)
_PANEL_DELAY = {
    "bmp": "chemistry",
    "lft": "chemistry",
    "lytes": "chemistry",
    "cbc": "hematology",
    "coag": "coagulation",
    "gas": "blood_gas",
    "lactate": "blood_gas",
}


def _lab_value(
    key: str,
    H: dict[str, np.ndarray],
    rows: np.ndarray,
    venous: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    n = len(rows)
    mult = 1.0 + _LAB_NOISE * rng.standard_normal(n)
    add = rng.standard_normal(n)
    g = lambda k: H[k][rows].astype(np.float64)  # noqa: E731
    if key == "pao2":
        return np.where(venous, 35.0 + 8.0 * rng.random(n), g("pao2") * mult)
    if key == "paco2":
        return np.where(venous, g("paco2") + 5.0, g("paco2")) + 1.5 * add
    if key == "ph":
        return np.where(venous, g("ph") - 0.03, g("ph")) + 0.01 * add
    if key == "base_excess":
        return g("base_excess") + 0.8 * add
    if key in ("bicarb_bg", "bicarbonate"):
        return g("hco3") + 0.8 * add
    if key == "anion_gap":
        return 12.0 + 0.9 * (g("lactate") - 1.0) + 1.2 * add
    if key == "chloride":
        return 103.0 + 0.4 * (g("sodium") - 139.0) + 1.5 * add
    if key == "magnesium":
        return 2.0 + 0.15 * add
    if key == "calcium":
        return 8.6 + 0.4 * add
    if key == "phosphate":
        return 3.4 + 0.6 * add + 2.0 * (g("creatinine") > 2.5)
    source = {
        "lactate": "lactate",
        "creatinine": "creatinine",
        "bun": "bun",
        "bilirubin": "bilirubin",
        "albumin": "albumin",
        "sodium": "sodium",
        "sodium_bg": "sodium",
        "potassium": "potassium",
        "potassium_bg": "potassium",
        "glucose": "glucose",
        "glucose_bg": "glucose",
        "inr": "inr",
        "ptt": "ptt",
        "wbc": "wbc",
        "hgb": "haemoglobin",
        "hgb_bg": "haemoglobin",
        "hct": "haematocrit",
        "platelets": "platelets",
    }[key]
    return g(source) * mult


def labevents(ctx: ChartContext, hours: np.ndarray | None = None) -> pa.Table:
    """Routine panels (morning, admission, extra draws when unstable), blood gases when
    ventilated or unstable (some venous), lactates; results stored after the panel's delay."""
    ch, rng, st, H = ctx.cfg.charting, ctx.rng, ctx.stays, ctx.hourly
    sel = np.ones(len(H["h"]), dtype=bool) if hours is None else hours
    rows_all = np.flatnonzero(sel)
    if len(rows_all) == 0:
        return TABLES["labevents"].arrow_schema().empty_table()
    # the order of these steps is the order of the random draws: keep it
    draws = _lab_draws(ctx, rows_all)
    venous_stay = rng.random(st.n) < ch.venous_gas_fraction
    ev = Events()
    n_specimens = 0
    for panel, draw in draws.items():
        idx = np.flatnonzero(draw)
        if len(idx) == 0:
            continue
        _chart_panel(ctx, ev, panel, rows_all[idx], venous_stay, n_specimens)
        n_specimens += len(idx)
    if not ev.parts:
        return TABLES["labevents"].arrow_schema().empty_table()
    return _labevents_table(ctx, ctx.before_icu_end(ev.concat()))


def _lab_draws(ctx: ChartContext, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Which panels are drawn in which of the hourly ``rows`` (masks by panel)."""
    ch, rng, H = ctx.cfg.charting, ctx.rng, ctx.hourly
    hh = H["h"][rows].astype(np.int64)
    t = ctx.admittime[H["stay"][rows]] + hh * HOUR
    R = len(rows)
    hour_of_day = (t // HOUR) % 24
    icu = H["in_icu"][rows].astype(bool)
    unstable = (H["map"][rows] < 65) | (H["lactate"][rows] > 2.5) | (H["total_vaso_eq"][rows] > 0)
    vent = H["ventilated"][rows].astype(bool)
    first = hh == 0
    hab = ch.labevents
    p_morning = np.where(icu, hab.morning_draw.icu, hab.morning_draw.ward)
    morning = (hour_of_day == ch.morning_lab_hour) & (rng.random(R) < p_morning)
    p_extra = np.where(unstable & icu, ch.extra_lab_per_h_unstable, hab.extra_draw_per_h_stable)
    extra = rng.random(R) < p_extra
    routine = first | morning | extra
    gas = (
        (vent & (rng.random(R) < ch.blood_gas_per_h_ventilated))
        | (icu & unstable & (rng.random(R) < hab.blood_gas_per_h_unstable))
        | (first & (rng.random(R) < hab.blood_gas_at_admission))
    )
    lactate_only = ~gas & unstable & (rng.random(R) < hab.lactate_only_per_h_unstable)
    panel = hab.panel_per_draw
    return {
        "bmp": routine,
        "cbc": routine & (rng.random(R) < panel.cbc),
        "lft": (first | morning) & (rng.random(R) < panel.lft),
        "coag": routine & (rng.random(R) < panel.coag),
        "lytes": routine & (rng.random(R) < panel.lytes),
        "gas": gas,
        "lactate": lactate_only
        | (first & ~gas & (rng.random(R) < hab.lactate_at_admission_without_gas)),
    }


#: results a blood gas reports only sometimes (``charting.labevents.blood_gas_extras_fraction``)
_GAS_EXTRAS = ("bicarb_bg", "hgb_bg", "potassium_bg", "sodium_bg", "glucose_bg")


def _chart_panel(
    ctx: ChartContext,
    ev: Events,
    panel: str,
    rows: np.ndarray,
    venous_stay: np.ndarray,
    n_specimens: int,
) -> None:
    """The results of ``panel`` drawn in the hourly ``rows`` (one specimen each)."""
    ch, rng, H, text = ctx.cfg.charting, ctx.rng, ctx.hourly, ctx.text
    hab = ch.labevents
    stay = H["stay"][rows]
    k = len(rows)
    specimen = ctx.id_base + ctx.id_offset + n_specimens + np.arange(k)
    t = ctx.admittime[stay] + H["h"][rows].astype(np.int64) * HOUR
    draw_t = t + rng.integers(0, 60, k) * 60
    d = ch.lab_result_delay_min[_PANEL_DELAY[panel]]
    delay_min = np.maximum(1.0, np.round(d.median * np.exp(d.sigma * rng.standard_normal(k))))
    vent = H["ventilated"][rows].astype(bool)
    venous = (
        (venous_stay[stay] & ~vent & (rng.random(k) < hab.venous_when_unventilated))
        if panel == "gas"
        else np.zeros(k, dtype=bool)
    )
    for key in _PANELS[panel]:
        item = catalog.LAB[key]
        if panel == "gas" and key in _GAS_EXTRAS:
            keep = rng.random(k) < hab.blood_gas_extras_fraction
        elif panel == "gas" and key == "lactate":
            keep = rng.random(k) < ch.lactate_in_blood_gas_fraction
        elif panel == "lft" and key == "albumin":
            keep = rng.random(k) < ch.albumin_per_liver_panel
        else:
            keep = np.ones(k, dtype=bool)
        if key == "specimen_type":
            codes = np.where(venous, text.code("VEN."), text.code("ART."))
            valuenum = np.full(k, np.nan)
        else:
            valuenum = round_to(_lab_value(key, H, rows, venous, rng), item.decimals)
            codes = np.full(k, -1, dtype=np.int32)
        itemid = np.full(k, item.itemid)
        if key == "wbc":  # a few WBC results come under the alternative item id
            alternative = rng.random(k) < hab.wbc_alternative_item_fraction
            itemid = np.where(alternative, catalog.LAB["wbc_count"].itemid, itemid)
        n_kept = int(keep.sum())
        ev.add(
            stay=stay[keep],
            t=draw_t[keep],
            store=draw_t[keep] + delay_min[keep].astype(np.int64) * 60,
            specimen=specimen[keep],
            itemid=itemid[keep],
            valuenum=valuenum[keep],
            text=codes[keep].astype(np.int32),
            uom=np.full(n_kept, text.code(item.unit) if item.unit else -1, dtype=np.int32),
            ref_low=np.full(n_kept, np.nan if item.ref_low is None else item.ref_low),
            ref_high=np.full(n_kept, np.nan if item.ref_high is None else item.ref_high),
            priority=np.full(n_kept, 1 if panel in ("gas", "lactate") else 0),
        )


def _labevents_table(ctx: ChartContext, cols: dict[str, np.ndarray]) -> pa.Table:
    """Intended artifacts (impossible values, "___"), flags, and the table in time order."""
    rng, st, text = ctx.rng, ctx.stays, ctx.text
    hab = ctx.cfg.charting.labevents
    n = len(cols["t"])
    # artifacts: impossible values and the de-identified "___" text
    v = cols["valuenum"]
    bad = ~np.isnan(v) & (rng.random(n) < ctx.cfg.charting.impossible_value_rate)
    negative = rng.random(n) < hab.impossible_negative_fraction
    v = np.where(bad, np.where(negative, -1.0, v * 100.0), v)
    masked = rng.random(n) < ctx.cfg.charting.null_value_rate
    codes = np.where(masked, text.code("___"), cols["text"]).astype(np.int32)
    v = np.where(masked, np.nan, v)
    valuenum = float_array(v)
    value = pc.coalesce(text.to_arrow(codes), num_to_str(valuenum))
    flag_abn = (v < cols["ref_low"]) | (v > cols["ref_high"])
    flag = text.to_arrow(np.where(flag_abn, text.code("abnormal"), -1))
    order = np.lexsort((cols["itemid"], cols["t"], cols["stay"]))
    take = pa.array(order)
    ids = ctx.id_base + ctx.id_offset + np.arange(n)
    tab = arrow_table(
        "labevents",
        {
            "labevent_id": int_array(ids),
            "subject_id": int_array(st.subject_id[cols["stay"]]),
            "hadm_id": int_array(st.hadm_id[cols["stay"]]),
            "specimen_id": int_array(cols["specimen"]),
            "itemid": int_array(cols["itemid"]),
            "order_provider_id": str_const(None, n),
            "charttime": time_array(cols["t"]),
            "storetime": time_array(cols["store"]),
            "value": value,
            "valuenum": valuenum,
            "valueuom": text.to_arrow(cols["uom"]),
            "ref_range_lower": float_array(cols["ref_low"]),
            "ref_range_upper": float_array(cols["ref_high"]),
            "flag": flag,
            "priority": text.to_arrow(
                np.where(cols["priority"] == 1, text.code("STAT"), text.code("ROUTINE"))
            ),
            "comments": str_const(None, n),
        },
    )
    tab = tab.take(take)
    # ids in time order within the chunk
    return tab.set_column(0, "labevent_id", int_array(ids))
