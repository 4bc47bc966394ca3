"""``chartevents``: vitals, blood pressure, temperature, GCS, ventilation, weight, and
unrelated items for MIMIC-like volume; with the intended artifacts."""

from __future__ import annotations

from dataclasses import dataclass

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
    icu_event_ids,
    int_array,
    num_to_str,
    round_to,
    time_array,
)


def chartevents(ctx: ChartContext, hours: np.ndarray | None = None) -> pa.Table:
    """Charted observations for ICU hours (``hours``: boolean mask over hourly rows)."""
    H = ctx.hourly
    icu = H["in_icu"].astype(bool)
    if hours is not None:
        icu &= hours
    rows = np.flatnonzero(icu)
    if len(rows) == 0:
        return TABLES["chartevents"].arrow_schema().empty_table()
    cr = _ChartRows(ctx, rows)
    # the order of these steps is the order of the random draws: keep it
    vit = cr.rng.random(cr.R) < cr.ch.vitals_per_hour  # vitals charted this hour
    habits = _ChartHabits.draw(ctx)
    _chart_haemodynamics(cr, vit, habits)
    vent = _chart_rr_spo2(cr, vit)
    _chart_temperature(cr, habits)
    _chart_gcs(cr, vent)
    _chart_ventilation(cr, vent)
    _chart_weight(cr, habits)
    _chart_filler(cr)
    cols = ctx.before_icu_end(cr.ev.concat())
    if len(cols["t"]) == 0:
        return TABLES["chartevents"].arrow_schema().empty_table()
    return _chartevents_table(ctx, cols)


class _ChartRows:
    """The ICU hours being charted into ``chartevents`` and the rows charted so far."""

    def __init__(self, ctx: ChartContext, rows: np.ndarray) -> None:
        H = ctx.hourly
        self.ctx, self.ch, self.rng = ctx, ctx.cfg.charting, ctx.rng
        self.hab = self.ch.chartevents
        self.st, self.H, self.rows, self.text = ctx.stays, H, rows, ctx.text
        self.stay = H["stay"][rows]
        self.hh = H["h"][rows].astype(np.int64)
        self.t0 = ctx.admittime[self.stay] + self.hh * HOUR
        self.R = len(rows)
        self.ev = Events()

    def value(self, key: str) -> np.ndarray:
        """The hourly record ``key`` of the rows being charted."""
        return self.H[key][self.rows]

    def offsets(self, n: int, on_hour: float | None = None) -> np.ndarray:
        """Seconds past the hour: on the hour with probability ``on_hour`` (default: vitals),
        else at a random minute."""
        if on_hour is None:
            on_hour = self.hab.on_the_hour.vitals
        rng = self.rng
        m = np.where(rng.random(n) < on_hour, 0, rng.integers(1, 60, n))
        return m * 60

    def add_num(
        self,
        mask: np.ndarray,
        item: catalog.Item,
        value: np.ndarray,
        decimals: int,
        toff: np.ndarray | None = None,
    ) -> None:
        """Numeric rows of ``item`` where ``mask``, rounded to ``decimals``."""
        idx = np.flatnonzero(mask)
        t = self.t0[idx] + (self.offsets(len(idx)) if toff is None else toff[idx])
        text = self.text
        self.ev.add(
            stay=self.stay[idx],
            t=t,
            itemid=np.full(len(idx), item.itemid),
            valuenum=round_to(value[idx], decimals),
            text=np.full(len(idx), -1, dtype=np.int32),
            uom=np.full(
                len(idx), text.code(item.unitname) if item.unitname else -1, dtype=np.int32
            ),
        )

    def add_text(
        self,
        mask: np.ndarray,
        item: catalog.Item,
        codes: np.ndarray,
        valuenum: np.ndarray | None,
        toff: np.ndarray,
    ) -> None:
        """Text rows of ``item`` where ``mask`` (``codes``: text codes per row)."""
        idx = np.flatnonzero(mask)
        self.ev.add(
            stay=self.stay[idx],
            t=self.t0[idx] + toff[idx],
            itemid=np.full(len(idx), item.itemid),
            valuenum=np.full(len(idx), np.nan) if valuenum is None else valuenum[idx],
            text=codes[idx].astype(np.int32),
            uom=np.full(len(idx), -1, dtype=np.int32),
        )


@dataclass
class _ChartHabits:
    """Per-stay charting habits, from their own stream (the same in every hourly call)."""

    art_line: np.ndarray
    second_line: np.ndarray
    fahrenheit: np.ndarray
    no_weight: np.ndarray
    weight_in_lb: np.ndarray

    @classmethod
    def draw(cls, ctx: ChartContext) -> _ChartHabits:
        ch, st = ctx.cfg.charting, ctx.stays
        u = np.random.default_rng(ctx.id_base + ch.stream_offsets.chart_habits).random((st.n, 4))
        # arterial lines are placed mostly in patients admitted in shock or ventilated
        sick = (st.infection_kind == 1) | st.ventilated_at_admission
        line = ch.chartevents.arterial_line
        p_art = np.clip(
            ch.arterial_line_fraction * (line.base + line.sick * sick), 0, line.max_probability
        )
        return cls(
            art_line=u[:, 0] < p_art,
            second_line=u[:, 1] < ch.second_arterial_line_fraction,
            fahrenheit=u[:, 2] < ch.fahrenheit_fraction,
            no_weight=u[:, 3] < ch.weight_missing_fraction,
            weight_in_lb=(u[:, 3] >= ch.weight_missing_fraction)
            & (u[:, 3] < ch.weight_missing_fraction + ch.weight_in_lb_fraction),
        )


def _chart_haemodynamics(cr: _ChartRows, vit: np.ndarray, habits: _ChartHabits) -> None:
    """Heart rate; blood pressure from an arterial line for sicker stays, NIBP otherwise (or
    in addition)."""
    rng, R, C, ch = cr.rng, cr.R, catalog.CHART, cr.ch
    cr.add_num(vit, C["hr"], cr.value("hr") + rng.normal(0, 2, R), 0)
    art = habits.art_line[cr.stay]
    second = habits.second_line[cr.stay]
    bp_off = cr.offsets(R)
    art_rows = vit & art
    map_art = cr.value("map") + rng.normal(0, 2, R)
    pp = cr.value("sbp") - cr.value("dbp")
    for key_s, key_d, key_m, m in (
        ("art_sbp", "art_dbp", "art_map", art_rows & ~second),
        ("art2_sbp", "art2_dbp", "art2_map", art_rows & second),
    ):
        cr.add_num(m, C[key_s], map_art + 2 * pp / 3 + rng.normal(0, 2, R), 0, bp_off)
        cr.add_num(m, C[key_d], map_art - pp / 3 + rng.normal(0, 2, R), 0, bp_off)
        cr.add_num(m, C[key_m], map_art, 0, bp_off)
    nibp = np.where(art, rng.random(R) < ch.nibp_with_art_line_per_hour, vit)
    beside_art = cr.offsets(R, on_hour=cr.hab.on_the_hour.nibp_beside_arterial_line)
    nibp_off = np.where(art, beside_art, bp_off)
    map_nibp = cr.value("map") + 3.0 * (cr.value("map") < 65) + rng.normal(0, 4, R)
    cr.add_num(nibp, C["nibp_sbp"], map_nibp + 2 * pp / 3 + rng.normal(0, 3, R), 0, nibp_off)
    cr.add_num(nibp, C["nibp_dbp"], map_nibp - pp / 3 + rng.normal(0, 3, R), 0, nibp_off)
    cr.add_num(nibp, C["nibp_map"], map_nibp, 0, nibp_off)


def _chart_rr_spo2(cr: _ChartRows, vit: np.ndarray) -> np.ndarray:
    """Respiratory rate (and the ventilator's total rate), SpO2; returns the ventilated rows."""
    rng, R, C, hab = cr.rng, cr.R, catalog.CHART, cr.hab
    rr = vit & (rng.random(R) < hab.rr_per_vitals)
    cr.add_num(rr, C["rr"], cr.value("rr") + rng.normal(0, 1.5, R), 0)
    vent = cr.value("ventilated").astype(bool)
    rr_total = vent & (rng.random(R) < hab.rr_total_per_ventilated_hour)
    cr.add_num(rr_total, C["rr_total"], cr.value("rr") + rng.normal(1, 1.5, R), 0)
    cr.add_num(
        vit & (rng.random(R) < hab.spo2_per_vitals),
        C["spo2"],
        np.minimum(cr.value("spo2") + rng.normal(0, 1, R), 100),
        0,
    )
    return vent


def _chart_temperature(cr: _ChartRows, habits: _ChartHabits) -> None:
    """Every few hours, in the stay's habitual unit (sometimes the other)."""
    rng, R, C, ch, hab, st = cr.rng, cr.R, catalog.CHART, cr.ch, cr.hab, cr.st
    phase = (st.stay_id % ch.temperature_interval_h)[cr.stay]
    temp_due = ((cr.hh + phase) % ch.temperature_interval_h == 0) & (
        rng.random(R) < hab.temperature_when_due
    )
    temp_due |= rng.random(R) < hab.temperature_extra_per_hour
    unit_f = habits.fahrenheit[cr.stay] ^ (rng.random(R) < hab.temperature_other_unit)
    temp = cr.value("temp") + rng.normal(0, 0.15, R)
    cr.add_num(temp_due & ~unit_f, C["temp_c"], temp, 1)
    cr.add_num(temp_due & unit_f, C["temp_f"], temp * 9 / 5 + 32, 1)


def _chart_gcs(cr: _ChartRows, vent: np.ndarray) -> None:
    """The three GCS components charted together every ~4 h (intubated verbal: ETT)."""
    rng, R, C, ch, hab, text = cr.rng, cr.R, catalog.CHART, cr.ch, cr.hab, cr.text
    gphase = ((cr.st.stay_id // 7) % ch.gcs_interval_h)[cr.stay]
    gcs_due = ((cr.hh + gphase) % ch.gcs_interval_h == 0) & (rng.random(R) < hab.gcs_when_due)
    goff = cr.offsets(R, on_hour=hab.on_the_hour.gcs)
    e = cr.value("gcs_eye").astype(np.int64)
    v = cr.value("gcs_verbal").astype(np.int64)
    m = cr.value("gcs_motor").astype(np.int64)
    eye_codes = text.codes([catalog.GCS_EYE_TEXT[k] for k in range(1, 5)])
    verbal_codes = text.codes([catalog.GCS_VERBAL_TEXT[k] for k in range(1, 6)])
    ett_code = text.code(catalog.GCS_VERBAL_INTUBATED)
    motor_codes = text.codes([catalog.GCS_MOTOR_TEXT[k] for k in range(1, 7)])
    partial = rng.random(R) < hab.gcs_verbal_missing
    cr.add_text(gcs_due, C["gcs_eye"], eye_codes[e - 1], e.astype(float), goff)
    vcode = np.where(vent, ett_code, verbal_codes[v - 1])
    cr.add_text(gcs_due & ~partial, C["gcs_verbal"], vcode, v.astype(float), goff)
    cr.add_text(gcs_due, C["gcs_motor"], motor_codes[m - 1], m.astype(float), goff)


def _chart_ventilation(cr: _ChartRows, vent: np.ndarray) -> None:
    """FiO2 (percent; occasionally charted as a fraction), PEEP, ventilator mode, O2 device."""
    rng, R, C, ch, hab, text = cr.rng, cr.R, catalog.CHART, cr.ch, cr.hab, cr.text
    rphase = ((cr.st.stay_id // 3) % ch.resp_interval_h)[cr.stay]
    resp_due = ((cr.hh + rphase) % ch.resp_interval_h == 0) & (
        rng.random(R) < hab.respiratory_when_due
    )
    fio2 = cr.value("fio2")
    on_oxygen = (fio2 > 0.21) & (rng.random(R) < hab.fio2_unventilated_on_oxygen)
    fio2_rows = resp_due & (vent | on_oxygen)
    as_fraction = rng.random(R) < ch.fio2_as_fraction_rate
    fio2_val = np.where(as_fraction, fio2, fio2 * 100)
    roff = cr.offsets(R, on_hour=hab.on_the_hour.respiratory)
    cr.add_num(fio2_rows, C["fio2"], fio2_val, 2, roff)
    cr.add_num(resp_due & vent, C["peep"], cr.value("peep"), 0, roff)
    cr.add_num(
        resp_due & vent & (rng.random(R) < hab.peep_total_per_peep),
        C["peep_total"],
        cr.value("peep") + rng.integers(0, 3, R),
        0,
        roff,
    )
    modes = text.codes(["CMV/ASSIST/AutoFlow", "CPAP/PSV", "CMV/ASSIST"])
    cr.add_text(resp_due & vent, C["vent_mode"], modes[rng.integers(0, 3, R)], None, roff)
    devices = text.codes(["Endotracheal tube", "Nasal cannula", "None", "High flow nasal cannula"])
    cannula = np.where(rng.random(R) < hab.nasal_cannula_on_oxygen, 1, 3)
    dev = np.where(vent, 0, np.where(fio2 > 0.21, cannula, 2))
    cr.add_text(resp_due, C["o2_device"], devices[dev], None, roff)


def _chart_weight(cr: _ChartRows, habits: _ChartHabits) -> None:
    """Admission weight in the first ICU hour (kg or lb, sometimes none), daily weights."""
    rng, R, C, st, stay = cr.rng, cr.R, catalog.CHART, cr.st, cr.stay
    first_icu = cr.hh == st.pre_icu_h[stay]
    no_weight, in_lb = habits.no_weight[stay], habits.weight_in_lb[stay]
    w = st.weight_kg[stay]
    cr.add_num(first_icu & ~no_weight & ~in_lb, C["weight_kg"], w, 1)
    cr.add_num(first_icu & in_lb, C["weight_lb"], w * 2.20462, 1)
    daily = ((cr.hh - st.pre_icu_h[stay]) % 24 == 12) & (
        rng.random(R) < cr.hab.daily_weight_when_due
    )
    cr.add_num(
        daily,
        C["weight_daily"],
        w * (1 + 0.01 * rng.normal(0, 1, R)) + cr.value("balance_l") * 0.5,
        1,
    )


def _chart_filler(cr: _ChartRows) -> None:
    """Unrelated items (catalogue ``chart_filler``) for MIMIC-like charting density."""
    rng, R, ch, text = cr.rng, cr.R, cr.ch, cr.text
    rate = ch.filler_rows_per_icu_hour * ch.density
    if rate <= 0:
        return
    counts = rng.poisson(rate, R)
    frows = np.repeat(np.arange(R), counts)
    nf = len(frows)
    weights = np.asarray(catalog.FILLER_WEIGHTS, dtype=np.float64)
    item_idx = rng.choice(len(weights), size=nf, p=weights / weights.sum())
    is_text = np.array([isinstance(v[0], str) for v in catalog.FILLER_VALUES])
    mean = np.array(
        [0.0 if t else v[0] for t, v in zip(is_text, catalog.FILLER_VALUES, strict=True)]
    )
    sd = np.array([0.0 if t else v[1] for t, v in zip(is_text, catalog.FILLER_VALUES, strict=True)])
    dec = np.array([0 if t else v[2] for t, v in zip(is_text, catalog.FILLER_VALUES, strict=True)])
    # text choices: a flat code table with per-item offset and count
    choice_codes = []
    choice_off = np.zeros(len(weights), dtype=np.int64)
    choice_n = np.ones(len(weights), dtype=np.int64)
    for k, (t, vals) in enumerate(zip(is_text, catalog.FILLER_VALUES, strict=True)):
        choice_off[k] = len(choice_codes)
        if t:
            choice_codes.extend(text.code(x) for x in vals)
            choice_n[k] = len(vals)
        else:
            choice_codes.append(-1)
    choice_codes_arr = np.asarray(choice_codes, dtype=np.int32)
    pick = (rng.random(nf) * choice_n[item_idx]).astype(np.int64)
    ftext = choice_codes_arr[choice_off[item_idx] + pick]
    fnum = np.where(
        is_text[item_idx],
        np.nan,
        round_to(mean[item_idx] + sd[item_idx] * rng.standard_normal(nf), dec[item_idx]),
    )
    uoms = np.array(
        [text.code(i.unitname) if i.unitname else -1 for i in catalog.FILLER_ITEMS],
        dtype=np.int32,
    )
    item_ids = np.array([i.itemid for i in catalog.FILLER_ITEMS])
    cr.ev.add(
        stay=cr.stay[frows],
        t=cr.t0[frows] + rng.integers(0, 60, nf) * 60,
        itemid=item_ids[item_idx],
        valuenum=fnum,
        text=ftext,
        uom=uoms[item_idx],
    )


def _chartevents_table(ctx: ChartContext, cols: dict[str, np.ndarray]) -> pa.Table:
    """Sort the rows as a flowsheet reads, add the intended artifacts, build the table."""
    rng, st, hab = ctx.rng, ctx.stays, ctx.cfg.charting.chartevents
    # chart order: by stay, then time (as a nurse's flowsheet reads)
    key = cols["stay"].astype(np.int64) * (1 << 33) + (cols["t"] - cols["t"].min())
    order = np.argsort(key, kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    physiological = np.isin(cols["itemid"], [i.itemid for i in catalog.CHART.values()])
    cols = _artifacts(ctx, cols, physiological=physiological)
    n = len(cols["t"])
    store = cols["t"] + rng.integers(0, 90, n) * 60
    caregiver = rng.integers(10000, 99999, n)
    valuenum = float_array(cols["valuenum"])
    text_arr = ctx.text.to_arrow(cols["text"])
    value = pc.coalesce(text_arr, num_to_str(valuenum))
    value = pc.if_else(
        pa.array(cols.get("null_value", np.zeros(n, dtype=bool))), pa.nulls(n, pa.string()), value
    )
    return arrow_table(
        "chartevents",
        {
            **icu_event_ids(st, cols["stay"], caregiver),
            "charttime": time_array(cols["t"]),
            "storetime": time_array(store),
            "itemid": int_array(cols["itemid"]),
            "value": value,
            "valuenum": valuenum,
            "valueuom": ctx.text.to_arrow(cols["uom"]),
            "warning": int_array((rng.random(n) < hab.warning_flag).astype(np.int64)),
        },
    )


_IMPOSSIBLE = {
    220045: (0.0, 999.0),
    220052: (-5.0, 400.0),
    220181: (0.0, 350.0),
    220050: (0.0, 400.0),
    220179: (-10.0, 450.0),
    220277: (0.0, 150.0),
    223762: (98.6, 5.0),  # Fahrenheit typed into the Celsius item
    223761: (3.0, 986.0),
    220210: (0.0, 250.0),
    226512: (0.0, 1500.0),
}


def _artifacts(
    ctx: ChartContext, cols: dict[str, np.ndarray], physiological: np.ndarray
) -> dict[str, np.ndarray]:
    """Intended artifacts: impossible values, duplicated rows, rows with null values."""
    ch, rng = ctx.cfg.charting, ctx.rng
    n = len(cols["t"])
    values = cols["valuenum"].copy()
    numeric = ~np.isnan(values) & physiological
    impossible = numeric & (rng.random(n) < ch.impossible_value_rate)
    for itemid, (lo, hi) in _IMPOSSIBLE.items():
        sel = impossible & (cols["itemid"] == itemid)
        low = rng.random(int(sel.sum())) < ch.chartevents.impossible_low_fraction
        values[sel] = np.where(low, lo, hi)
    cols["valuenum"] = values
    null_value = rng.random(n) < ch.null_value_rate
    cols["valuenum"] = np.where(null_value, np.nan, cols["valuenum"])
    cols["text"] = np.where(null_value, -1, cols["text"]).astype(np.int32)
    cols["null_value"] = null_value
    dup = np.flatnonzero(rng.random(n) < ch.duplicate_row_rate)
    if len(dup):
        order = np.sort(np.concatenate([np.arange(n), dup]))
        cols = {k: v[order] for k, v in cols.items()}
    return cols
