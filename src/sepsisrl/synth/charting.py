"""From simulated hours to MIMIC-IV rows: what the nurses, the lab and the pharmacy record.

Every function here is vectorised over the hourly records of a chunk of stays. Charting habits
follow ``synthetic_world.md``: vitals about hourly with gaps; invasive and non-invasive blood
pressure; temperature in Celsius or Fahrenheit; FiO2 in percent (occasionally as a fraction);
GCS as three components every ~4 h (intubated verbal = "No Response-ETT"); labs as morning
panels plus extra draws when unstable; blood gases when ventilated or unstable (with a specimen
type row, some venous); infusions as start/end/rate/amount rows (vasopressin in units/hour, some
phenylephrine in mcg/min); urine in outputevents; antibiotics with routes; cultures, some
date-only; and a small share of artifacts (impossible values, duplicated rows, null values).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sepsisrl.mimic.schema import TABLES
from sepsisrl.synth import catalog
from sepsisrl.synth.config import SynthConfig
from sepsisrl.synth.population import (
    AGENT_NE_FACTOR,
    FIRST_LINE_AGENTS,
    SECONDS_PER_DAY,
    SECONDS_PER_HOUR,
    Stays,
)
from sepsisrl.synth.simulator import BOLUS_FLUIDS, MAINTENANCE_FLUIDS

HOUR = SECONDS_PER_HOUR
MISSING_TIME = np.iinfo(np.int64).min


# ----------------------------------------------------------------------------- helpers
class TextDictionary:
    """Maps strings to small integer codes so text columns are built as dictionary arrays."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def code(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.values)
            self.values.append(text)
        return self._index[text]

    def codes(self, texts: list[str] | tuple[str, ...]) -> np.ndarray:
        return np.array([self.code(t) for t in texts], dtype=np.int32)

    def to_arrow(self, codes: np.ndarray) -> pa.Array:
        """String array; code -1 becomes null."""
        codes = np.asarray(codes, dtype=np.int32)
        mask = codes < 0
        idx = pa.array(np.where(mask, 0, codes), pa.int32(), mask=mask)
        dictionary = pa.array(self.values if self.values else [""], pa.string())
        return pc.take(dictionary, idx)


def _float_array(x: np.ndarray) -> pa.Array:
    x = np.asarray(x, dtype=np.float64)
    return pa.array(x, pa.float64(), mask=np.isnan(x))


def _time_array(t: np.ndarray) -> pa.Array:
    t = np.asarray(t, dtype=np.int64)
    mask = t == MISSING_TIME
    return pa.array(np.where(mask, 0, t), pa.timestamp("s"), mask=mask)


def _int_array(x: np.ndarray, missing: int | None = None) -> pa.Array:
    x = np.asarray(x, dtype=np.int64)
    if missing is None:
        return pa.array(x, pa.int64())
    mask = x == missing
    return pa.array(np.where(mask, 0, x), pa.int64(), mask=mask)


def _str_const(value: str | None, n: int) -> pa.Array:
    if value is None:
        return pa.nulls(n, pa.string())
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([value])
    ).cast(pa.string())


def _round_to(x: np.ndarray, decimals: np.ndarray | int) -> np.ndarray:
    scale = np.power(10.0, decimals)
    return np.round(np.asarray(x, dtype=np.float64) * scale) / scale


def _num_to_str(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


def _table(name: str, columns: dict[str, pa.Array]) -> pa.Table:
    schema = TABLES[name].arrow_schema()
    arrays = []
    n = None
    for f in schema:
        col = columns.get(f.name)
        if col is None:
            if n is None:
                n = len(next(iter(columns.values())))
            col = pa.nulls(n, f.type)
        elif not isinstance(col, pa.Array | pa.ChunkedArray):
            col = pa.array(col)
        if col.type != f.type:
            col = col.cast(f.type)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema)


@dataclass
class _Events:
    """Accumulates long-format event rows as NumPy parts, then concatenates them."""

    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, **cols: np.ndarray) -> None:
        n = next(len(v) for v in map(np.asarray, cols.values()) if v.ndim > 0)
        for k, v in cols.items():
            arr = np.asarray(v)
            if arr.ndim == 0:
                arr = np.full(n, arr)
            self.parts.setdefault(k, []).append(arr)

    def concat(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items()}


@dataclass
class ChartContext:
    """What charting needs about the chunk, plus the id bases that keep ids globally unique."""

    cfg: SynthConfig
    stays: Stays
    hourly: dict[str, np.ndarray]
    admittime: np.ndarray
    intime: np.ndarray
    outtime: np.ndarray
    attending_provider: list[str]
    rng: np.random.Generator
    id_base: int  # chunk-specific base for row ids (labevent_id, orderid, ...)
    text: TextDictionary = field(default_factory=TextDictionary)
    #: urine collected but not yet charted, per stay; set when charting hour by hour
    urine_carry: np.ndarray | None = None
    #: added to row ids (specimen, labevent, order ids) so that charting hour by hour, one
    #: call per hour, never repeats an id; 0 when a whole chunk is charted at once
    id_offset: int = 0

    def times(self) -> np.ndarray:
        h = self.hourly
        return self.admittime[h["stay"]] + h["h"].astype(np.int64) * HOUR

    def before_icu_end(
        self, cols: dict[str, np.ndarray], time_key: str = "t"
    ) -> dict[str, np.ndarray]:
        """Drop rows charted after the stay ended (ICU discharge or death within the hour)."""
        keep = cols[time_key] <= self.outtime[cols["stay"]]
        return {k: v[keep] for k, v in cols.items()}


# ----------------------------------------------------------------------------- chartevents
def chartevents(ctx: ChartContext, hours: np.ndarray | None = None) -> pa.Table:
    """Charted observations for ICU hours (``hours``: boolean mask over hourly rows)."""
    ch, rng, st, H = ctx.cfg.charting, ctx.rng, ctx.stays, ctx.hourly
    icu = H["in_icu"].astype(bool)
    if hours is not None:
        icu &= hours
    rows = np.flatnonzero(icu)
    if len(rows) == 0:
        return TABLES["chartevents"].arrow_schema().empty_table()
    stay = H["stay"][rows]
    hh = H["h"][rows].astype(np.int64)
    t0 = ctx.admittime[stay] + hh * HOUR
    n_stays = st.n
    R = len(rows)
    ev = _Events()
    text = ctx.text

    def offsets(n: int, on_hour: float = 0.7) -> np.ndarray:
        m = np.where(rng.random(n) < on_hour, 0, rng.integers(1, 60, n))
        return m * 60

    def add_num(
        mask: np.ndarray,
        item: catalog.Item,
        value: np.ndarray,
        decimals: int,
        toff: np.ndarray | None = None,
    ) -> None:
        idx = np.flatnonzero(mask)
        t = t0[idx] + (offsets(len(idx)) if toff is None else toff[idx])
        ev.add(
            stay=stay[idx],
            t=t,
            itemid=np.full(len(idx), item.itemid),
            valuenum=_round_to(value[idx], decimals),
            text=np.full(len(idx), -1, dtype=np.int32),
            uom=np.full(
                len(idx), text.code(item.unitname) if item.unitname else -1, dtype=np.int32
            ),
        )

    def add_text(
        mask: np.ndarray,
        item: catalog.Item,
        codes: np.ndarray,
        valuenum: np.ndarray | None,
        toff: np.ndarray,
    ) -> None:
        idx = np.flatnonzero(mask)
        ev.add(
            stay=stay[idx],
            t=t0[idx] + toff[idx],
            itemid=np.full(len(idx), item.itemid),
            valuenum=np.full(len(idx), np.nan) if valuenum is None else valuenum[idx],
            text=codes[idx].astype(np.int32),
            uom=np.full(len(idx), -1, dtype=np.int32),
        )

    C = catalog.CHART
    vit = rng.random(R) < ch.vitals_per_hour
    # ---- heart rate
    add_num(vit, C["hr"], H["hr"][rows] + rng.normal(0, 2, R), 0)
    # ---- blood pressure: arterial line for sicker stays, NIBP otherwise (or in addition)
    stay_u = np.random.default_rng(ctx.id_base + 7).random((n_stays, 4))  # per-stay habits
    # arterial lines are placed mostly in patients admitted in shock or ventilated
    sick = (st.infection_kind == 1) | st.ventilated_at_admission
    p_art = np.clip(ch.arterial_line_fraction * (0.6 + 0.9 * sick), 0, 0.98)
    art_line = stay_u[:, 0] < p_art
    second_line = stay_u[:, 1] < ch.second_arterial_line_fraction
    fahrenheit = stay_u[:, 2] < ch.fahrenheit_fraction
    art = art_line[stay]
    second = second_line[stay]
    bp_off = offsets(R)
    art_rows = vit & art
    map_art = H["map"][rows] + rng.normal(0, 2, R)
    pp = H["sbp"][rows] - H["dbp"][rows]
    for key_s, key_d, key_m, m in (
        ("art_sbp", "art_dbp", "art_map", art_rows & ~second),
        ("art2_sbp", "art2_dbp", "art2_map", art_rows & second),
    ):
        add_num(m, C[key_s], map_art + 2 * pp / 3 + rng.normal(0, 2, R), 0, bp_off)
        add_num(m, C[key_d], map_art - pp / 3 + rng.normal(0, 2, R), 0, bp_off)
        add_num(m, C[key_m], map_art, 0, bp_off)
    nibp = np.where(art, rng.random(R) < ch.nibp_with_art_line_per_hour, vit)
    nibp_off = np.where(art, offsets(R, on_hour=0.2), bp_off)
    map_nibp = H["map"][rows] + 3.0 * (H["map"][rows] < 65) + rng.normal(0, 4, R)
    add_num(nibp, C["nibp_sbp"], map_nibp + 2 * pp / 3 + rng.normal(0, 3, R), 0, nibp_off)
    add_num(nibp, C["nibp_dbp"], map_nibp - pp / 3 + rng.normal(0, 3, R), 0, nibp_off)
    add_num(nibp, C["nibp_map"], map_nibp, 0, nibp_off)
    # ---- respiratory rate, SpO2
    add_num(vit & (rng.random(R) < 0.97), C["rr"], H["rr"][rows] + rng.normal(0, 1.5, R), 0)
    vent = H["ventilated"][rows].astype(bool)
    add_num(vent & (rng.random(R) < 0.3), C["rr_total"], H["rr"][rows] + rng.normal(1, 1.5, R), 0)
    add_num(
        vit & (rng.random(R) < 0.97),
        C["spo2"],
        np.minimum(H["spo2"][rows] + rng.normal(0, 1, R), 100),
        0,
    )
    # ---- temperature every few hours, in the stay's habitual unit (sometimes the other)
    phase = (st.stay_id % ch.temperature_interval_h)[stay]
    temp_due = ((hh + phase) % ch.temperature_interval_h == 0) & (rng.random(R) < 0.9)
    temp_due |= rng.random(R) < 0.04
    unit_f = fahrenheit[stay] ^ (rng.random(R) < 0.12)
    temp = H["temp"][rows] + rng.normal(0, 0.15, R)
    add_num(temp_due & ~unit_f, C["temp_c"], temp, 1)
    add_num(temp_due & unit_f, C["temp_f"], temp * 9 / 5 + 32, 1)
    # ---- GCS: three components charted together every ~4 h
    gphase = ((st.stay_id // 7) % ch.gcs_interval_h)[stay]
    gcs_due = ((hh + gphase) % ch.gcs_interval_h == 0) & (rng.random(R) < 0.92)
    goff = offsets(R, on_hour=0.8)
    e = H["gcs_eye"][rows].astype(np.int64)
    v = H["gcs_verbal"][rows].astype(np.int64)
    m = H["gcs_motor"][rows].astype(np.int64)
    eye_codes = text.codes([catalog.GCS_EYE_TEXT[k] for k in range(1, 5)])
    verbal_codes = text.codes([catalog.GCS_VERBAL_TEXT[k] for k in range(1, 6)])
    ett_code = text.code(catalog.GCS_VERBAL_INTUBATED)
    motor_codes = text.codes([catalog.GCS_MOTOR_TEXT[k] for k in range(1, 7)])
    partial = rng.random(R) < 0.03
    add_text(gcs_due, C["gcs_eye"], eye_codes[e - 1], e.astype(float), goff)
    vcode = np.where(vent, ett_code, verbal_codes[v - 1])
    add_text(gcs_due & ~partial, C["gcs_verbal"], vcode, v.astype(float), goff)
    add_text(gcs_due, C["gcs_motor"], motor_codes[m - 1], m.astype(float), goff)
    # ---- ventilation: FiO2 (percent; occasionally charted as a fraction), PEEP, mode, device
    rphase = ((st.stay_id // 3) % ch.resp_interval_h)[stay]
    resp_due = ((hh + rphase) % ch.resp_interval_h == 0) & (rng.random(R) < 0.9)
    fio2 = H["fio2"][rows]
    fio2_rows = resp_due & (vent | ((fio2 > 0.21) & (rng.random(R) < 0.15)))
    as_fraction = rng.random(R) < ch.fio2_as_fraction_rate
    fio2_val = np.where(as_fraction, fio2, fio2 * 100)
    roff = offsets(R, on_hour=0.5)
    add_num(fio2_rows, C["fio2"], fio2_val, 2, roff)
    add_num(resp_due & vent, C["peep"], H["peep"][rows], 0, roff)
    add_num(
        resp_due & vent & (rng.random(R) < 0.3),
        C["peep_total"],
        H["peep"][rows] + rng.integers(0, 3, R),
        0,
        roff,
    )
    modes = text.codes(["CMV/ASSIST/AutoFlow", "CPAP/PSV", "CMV/ASSIST"])
    add_text(resp_due & vent, C["vent_mode"], modes[rng.integers(0, 3, R)], None, roff)
    devices = text.codes(["Endotracheal tube", "Nasal cannula", "None", "High flow nasal cannula"])
    dev = np.where(vent, 0, np.where(fio2 > 0.21, np.where(rng.random(R) < 0.9, 1, 3), 2))
    add_text(resp_due, C["o2_device"], devices[dev], None, roff)
    # ---- weight: admission weight in the first ICU hour (kg or lb), daily weights
    first_icu = hh == st.pre_icu_h[stay]
    no_weight = stay_u[:, 3] < ch.weight_missing_fraction
    in_lb = (stay_u[:, 3] >= ch.weight_missing_fraction) & (
        stay_u[:, 3] < ch.weight_missing_fraction + ch.weight_in_lb_fraction
    )
    w = st.weight_kg[stay]
    add_num(first_icu & ~no_weight[stay] & ~in_lb[stay], C["weight_kg"], w, 1)
    add_num(first_icu & in_lb[stay], C["weight_lb"], w * 2.20462, 1)
    daily = ((hh - st.pre_icu_h[stay]) % 24 == 12) & (rng.random(R) < 0.5)
    add_num(
        daily,
        C["weight_daily"],
        w * (1 + 0.01 * rng.normal(0, 1, R)) + H["balance_l"][rows] * 0.5,
        1,
    )

    # ---- filler items: MIMIC-like charting density
    rate = ch.filler_rows_per_icu_hour * ch.density
    if rate > 0:
        counts = rng.poisson(rate, R)
        frows = np.repeat(np.arange(R), counts)
        nf = len(frows)
        weights = np.asarray(catalog.FILLER_WEIGHTS, dtype=np.float64)
        item_idx = rng.choice(len(weights), size=nf, p=weights / weights.sum())
        is_text = np.array([isinstance(v[0], str) for v in catalog.FILLER_VALUES])
        mean = np.array(
            [0.0 if t else v[0] for t, v in zip(is_text, catalog.FILLER_VALUES, strict=True)]
        )
        sd = np.array(
            [0.0 if t else v[1] for t, v in zip(is_text, catalog.FILLER_VALUES, strict=True)]
        )
        dec = np.array(
            [0 if t else v[2] for t, v in zip(is_text, catalog.FILLER_VALUES, strict=True)]
        )
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
            _round_to(mean[item_idx] + sd[item_idx] * rng.standard_normal(nf), dec[item_idx]),
        )
        uoms = np.array(
            [text.code(i.unitname) if i.unitname else -1 for i in catalog.FILLER_ITEMS],
            dtype=np.int32,
        )
        item_ids = np.array([i.itemid for i in catalog.FILLER_ITEMS])
        ev.add(
            stay=stay[frows],
            t=t0[frows] + rng.integers(0, 60, nf) * 60,
            itemid=item_ids[item_idx],
            valuenum=fnum,
            text=ftext,
            uom=uoms[item_idx],
        )

    cols = ctx.before_icu_end(ev.concat())
    if len(cols["t"]) == 0:
        return TABLES["chartevents"].arrow_schema().empty_table()
    # chart order: by stay, then time (as a nurse's flowsheet reads)
    key = cols["stay"].astype(np.int64) * (1 << 33) + (cols["t"] - cols["t"].min())
    order = np.argsort(key, kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    cols = _artifacts(
        ctx, cols, physiological=np.isin(cols["itemid"], [i.itemid for i in C.values()])
    )
    n = len(cols["t"])
    store = cols["t"] + rng.integers(0, 90, n) * 60
    caregiver = rng.integers(10000, 99999, n)
    valuenum = _float_array(cols["valuenum"])
    text_arr = ctx.text.to_arrow(cols["text"])
    value = pc.coalesce(text_arr, _num_to_str(valuenum))
    value = pc.if_else(
        pa.array(cols.get("null_value", np.zeros(n, dtype=bool))), pa.nulls(n, pa.string()), value
    )
    return _table(
        "chartevents",
        {
            "subject_id": _int_array(st.subject_id[cols["stay"]]),
            "hadm_id": _int_array(st.hadm_id[cols["stay"]]),
            "stay_id": _int_array(st.stay_id[cols["stay"]]),
            "caregiver_id": _int_array(caregiver),
            "charttime": _time_array(cols["t"]),
            "storetime": _time_array(store),
            "itemid": _int_array(cols["itemid"]),
            "value": value,
            "valuenum": valuenum,
            "valueuom": ctx.text.to_arrow(cols["uom"]),
            "warning": _int_array((rng.random(n) < 0.01).astype(np.int64)),
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
        values[sel] = np.where(rng.random(int(sel.sum())) < 0.5, lo, hi)
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


# ----------------------------------------------------------------------------- labevents
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
    ch, rng, st, H = ctx.cfg.charting, ctx.rng, ctx.stays, ctx.hourly
    sel = np.ones(len(H["h"]), dtype=bool) if hours is None else hours
    rows_all = np.flatnonzero(sel)
    if len(rows_all) == 0:
        return TABLES["labevents"].arrow_schema().empty_table()
    stay = H["stay"][rows_all]
    hh = H["h"][rows_all].astype(np.int64)
    t = ctx.admittime[stay] + hh * HOUR
    R = len(rows_all)
    hour_of_day = (t // HOUR) % 24
    icu = H["in_icu"][rows_all].astype(bool)
    unstable = (
        (H["map"][rows_all] < 65)
        | (H["lactate"][rows_all] > 2.5)
        | (H["total_vaso_eq"][rows_all] > 0)
    )
    vent = H["ventilated"][rows_all].astype(bool)
    first = hh == 0
    morning = (hour_of_day == ch.morning_lab_hour) & (rng.random(R) < np.where(icu, 0.95, 0.7))
    extra = rng.random(R) < np.where(unstable & icu, ch.extra_lab_per_h_unstable, 0.01)
    routine = first | morning | extra
    gas = (
        (vent & (rng.random(R) < ch.blood_gas_per_h_ventilated))
        | (icu & unstable & (rng.random(R) < 0.06))
        | (first & (rng.random(R) < 0.5))
    )
    lactate_only = ~gas & unstable & (rng.random(R) < 0.06)
    draws = {
        "bmp": routine,
        "cbc": routine & (rng.random(R) < 0.95),
        "lft": (first | morning) & (rng.random(R) < 0.55),
        "coag": routine & (rng.random(R) < 0.7),
        "lytes": routine & (rng.random(R) < 0.8),
        "gas": gas,
        "lactate": lactate_only | (first & ~gas & (rng.random(R) < 0.6)),
    }
    venous_stay = rng.random(st.n) < ch.venous_gas_fraction
    text = ctx.text
    ev = _Events()
    specimen_counter = 0
    for panel, draw in draws.items():
        idx = np.flatnonzero(draw)
        if len(idx) == 0:
            continue
        rows = rows_all[idx]
        k = len(idx)
        specimen = ctx.id_base + ctx.id_offset + specimen_counter + np.arange(k)
        specimen_counter += k
        draw_t = t[idx] + rng.integers(0, 60, k) * 60
        d = ch.lab_result_delay_min[_PANEL_DELAY[panel]]
        delay_min = np.maximum(1.0, np.round(d.median * np.exp(d.sigma * rng.standard_normal(k))))
        venous = (
            (venous_stay[stay[idx]] & ~vent[idx] & (rng.random(k) < 0.7))
            if panel == "gas"
            else np.zeros(k, dtype=bool)
        )
        for key in _PANELS[panel]:
            item = catalog.LAB[key]
            if panel == "gas" and key in (
                "bicarb_bg",
                "hgb_bg",
                "potassium_bg",
                "sodium_bg",
                "glucose_bg",
            ):
                keep = rng.random(k) < 0.6
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
                valuenum = _round_to(_lab_value(key, H, rows, venous, rng), item.decimals)
                codes = np.full(k, -1, dtype=np.int32)
            itemid = np.full(k, item.itemid)
            if key == "wbc":  # a few WBC results come under the alternative item id
                itemid = np.where(rng.random(k) < 0.05, catalog.LAB["wbc_count"].itemid, itemid)
            ev.add(
                stay=stay[idx][keep],
                t=draw_t[keep],
                store=draw_t[keep] + delay_min[keep].astype(np.int64) * 60,
                specimen=specimen[keep],
                itemid=itemid[keep],
                valuenum=valuenum[keep],
                text=codes[keep].astype(np.int32),
                uom=np.full(
                    int(keep.sum()), text.code(item.unit) if item.unit else -1, dtype=np.int32
                ),
                ref_low=np.full(int(keep.sum()), np.nan if item.ref_low is None else item.ref_low),
                ref_high=np.full(
                    int(keep.sum()), np.nan if item.ref_high is None else item.ref_high
                ),
                priority=np.full(int(keep.sum()), 1 if panel in ("gas", "lactate") else 0),
            )
    if not ev.parts:
        return TABLES["labevents"].arrow_schema().empty_table()
    cols = ctx.before_icu_end(ev.concat())
    n = len(cols["t"])
    # artifacts: impossible values and the de-identified "___" text
    v = cols["valuenum"]
    bad = ~np.isnan(v) & (rng.random(n) < ctx.cfg.charting.impossible_value_rate)
    v = np.where(bad, np.where(rng.random(n) < 0.5, -1.0, v * 100.0), v)
    masked = rng.random(n) < ctx.cfg.charting.null_value_rate
    codes = np.where(masked, text.code("___"), cols["text"]).astype(np.int32)
    v = np.where(masked, np.nan, v)
    valuenum = _float_array(v)
    value = pc.coalesce(text.to_arrow(codes), _num_to_str(valuenum))
    flag_abn = (v < cols["ref_low"]) | (v > cols["ref_high"])
    flag = text.to_arrow(np.where(flag_abn, text.code("abnormal"), -1))
    order = np.lexsort((cols["itemid"], cols["t"], cols["stay"]))
    take = pa.array(order)
    ids = ctx.id_base + ctx.id_offset + np.arange(n)
    tab = _table(
        "labevents",
        {
            "labevent_id": _int_array(ids),
            "subject_id": _int_array(st.subject_id[cols["stay"]]),
            "hadm_id": _int_array(st.hadm_id[cols["stay"]]),
            "specimen_id": _int_array(cols["specimen"]),
            "itemid": _int_array(cols["itemid"]),
            "order_provider_id": _str_const(None, n),
            "charttime": _time_array(cols["t"]),
            "storetime": _time_array(cols["store"]),
            "value": value,
            "valuenum": valuenum,
            "valueuom": text.to_arrow(cols["uom"]),
            "ref_range_lower": _float_array(cols["ref_low"]),
            "ref_range_upper": _float_array(cols["ref_high"]),
            "flag": flag,
            "priority": text.to_arrow(
                np.where(cols["priority"] == 1, text.code("STAT"), text.code("ROUTINE"))
            ),
            "comments": _str_const(None, n),
        },
    )
    tab = tab.take(take)
    # ids in time order within the chunk
    return tab.set_column(0, "labevent_id", _int_array(ids))


# ----------------------------------------------------------------------------- inputevents
def _stay_major(H: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """``rows`` ordered by (stay, hour): the simulator records hour-major, but runs of an
    infusion and urine collected between charts are sequences within a stay."""
    return rows[np.lexsort((H["h"][rows], H["stay"][rows]))]


def _runs(
    stay: np.ndarray, h: np.ndarray, key: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group consecutive hours of a stay with equal non-zero ``key`` into runs.

    Returns (row index of each run's first hour, run length in hours, run id per row).
    Rows must be sorted by (stay, h). Rows with key == 0 belong to no run (id -1).
    """
    n = len(stay)
    on = key != 0
    prev_same = np.zeros(n, dtype=bool)
    prev_same[1:] = (
        (stay[1:] == stay[:-1]) & (h[1:] == h[:-1] + 1) & (key[1:] == key[:-1]) & on[:-1]
    )
    start = on & ~prev_same
    run_id = np.cumsum(start) - 1
    run_id = np.where(on, run_id, -1)
    starts = np.flatnonzero(start)
    lengths = (
        np.bincount(run_id[on], minlength=len(starts))
        if len(starts)
        else np.zeros(0, dtype=np.int64)
    )
    return starts, lengths, run_id


#: inputevents status texts (MIMIC-IV ``statusdescription``)
_FINISHED, _CHANGED, _STOPPED, _PAUSED = "FinishedRunning", "ChangeDose/Rate", "Stopped", "Paused"


def inputevents(ctx: ChartContext, hours: np.ndarray | None = None) -> pa.Table:
    """Infusions, boluses and other inputs of the ICU hours (``hours``: mask over hourly rows).

    As MetaVision charts them: one row per run of constant rate, ended by a rate change
    ("ChangeDose/Rate"), a pause (restarted within ``infusion_pause_max_gap_h``), a stop or
    the end of the infusion; continuous fluids one row per bag; each drip with its diluent row
    (same order, "01-Drips", "Mixed solution"); some crystalloid boluses as one-minute
    "03-IV Fluid Bolus" rows without a rate; pushes, oral intake and electrolytes (filler, not
    read by the build) scaled by ``charting.density``. Charted hour by hour (``hours`` of one
    hour), every row is one hour long and ends "FinishedRunning" or "Stopped".
    """
    ch, rng, st, H = ctx.cfg.charting, ctx.rng, ctx.stays, ctx.hourly
    icu = H["in_icu"].astype(bool)
    if hours is not None:
        icu &= hours
    rows = _stay_major(H, np.flatnonzero(icu))
    if len(rows) == 0:
        return TABLES["inputevents"].arrow_schema().empty_table()
    stay = H["stay"][rows]
    hh = H["h"][rows].astype(np.int64)
    R = len(rows)
    t_hour = ctx.admittime[stay] + hh * HOUR
    weight = st.weight_kg[stay]
    text = ctx.text
    ev = _Events()
    order_counter = [0]
    code = text.code
    main, mixed = code("Main order parameter"), code("Mixed solution")
    sec_fluids, sec_additive = code("02-Fluids (Crystalloids)"), code("Additive (Crystalloid)")
    status_codes = np.array([code(s) for s in (_FINISHED, _CHANGED, _STOPPED, _PAUSED)])

    def new_orders(k: int) -> np.ndarray:
        ids = ctx.id_base + ctx.id_offset + order_counter[0] + np.arange(k)
        order_counter[0] += k
        return ids

    # per-stay habits, identical in every call for the same chunk (hour-by-hour charting)
    change_min = (np.random.default_rng(ctx.id_base + 11).integers(0, 60, st.n) * 60)[stay]
    diluent_u = np.random.default_rng(ctx.id_base + 19).random(st.n)[stay]
    d5w, nacl = catalog.INPUT["d5w"].itemid, catalog.INPUT["nacl_09"].itemid

    def carrier_of(agent: str, ml_per_rate_hour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        item = np.where(diluent_u < ch.drip_diluent_d5w_fraction[agent], d5w, nacl)
        return ml_per_rate_hour / ch.drip_concentration[agent], item

    def add_infusion(
        rate: np.ndarray,
        item: catalog.Item,
        rate_uom: str,
        amount_per_rate_hour: np.ndarray,
        amount_uom: str,
        category: str,
        desc: str,
        *,
        kind: str = "drip",
        secondary: int = -1,
        total: float | None = None,
        bag_ml: float | None = None,
        carrier: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Continuous infusion: one row per run of hours at a constant rate (and per bag).

        ``carrier``: (diluent mL per rate-hour, diluent item id), per hourly row."""
        starts, lengths, _ = _runs(stay, hh, rate)
        if len(starts) == 0:
            return
        if bag_ml is not None:  # split runs into bags of at most bag_ml
            per_hour = np.maximum(rate[starts] * amount_per_rate_hour[starts], 1e-9)
            per_bag = np.maximum(1, np.floor(bag_ml / per_hour)).astype(np.int64)
            n_pieces = -(-lengths // per_bag)
            run_of = np.repeat(np.arange(len(starts)), n_pieces)
            first = np.concatenate([[0], np.cumsum(n_pieces)[:-1]])
            k_in = np.arange(len(run_of)) - np.repeat(first, n_pieces)
            offset = k_in * per_bag[run_of]
            row = starts[run_of] + offset
            length = np.minimum(per_bag[run_of], lengths[run_of] - offset)
            new_bag = k_in > 0
        else:
            row, length, new_bag = starts, lengths, np.zeros(len(starts), dtype=bool)
        k = len(row)
        s_row, h_row = stay[row], hh[row]
        st_t = t_hour[row] + change_min[row]
        en_t = st_t + length * HOUR
        r = rate[row]
        amount = r * amount_per_rate_hour[row] * length
        # link rows of one continuous infusion (consecutive rows of the same stay)
        end_h = h_row + length
        contiguous = np.zeros(k, dtype=bool)
        contiguous[1:] = (s_row[1:] == s_row[:-1]) & (h_row[1:] == end_h[:-1])
        order = new_orders(k)
        link = order.copy()
        for j in np.flatnonzero(contiguous):  # runs are few; chains are short
            link[j] = link[j - 1]
        nxt_contig = np.zeros(k, dtype=bool)
        nxt_contig[:-1] = contiguous[1:]
        nxt_bag = np.zeros(k, dtype=bool)
        nxt_bag[:-1] = new_bag[1:]
        gap = np.full(k, np.iinfo(np.int64).max)
        gap[:-1] = np.where(s_row[1:] == s_row[:-1], h_row[1:] - end_h[:-1], gap[:-1])
        paused = ~nxt_contig & (gap <= ch.infusion_pause_max_gap_h)
        stopped = rng.random(k) < ch.infusion_stopped_fraction[kind]
        status = status_codes[
            np.select([nxt_contig & nxt_bag, nxt_contig, paused, stopped], [0, 1, 3, 2], default=0)
        ]
        tot = np.full(k, np.nan if total is None else total)
        if bag_ml is not None:
            tot = np.full(k, bag_ml)
        ev.add(
            stay=s_row,
            start=st_t,
            end=en_t,
            itemid=np.full(k, item.itemid),
            amount=amount,
            amountuom=np.full(k, code(amount_uom)),
            rate=r,
            rateuom=np.full(k, code(rate_uom)),
            orderid=order,
            linkorderid=link,
            cat=np.full(k, code(category)),
            catdesc=np.full(k, code(desc)),
            comp=np.full(k, main),
            sec=np.full(k, secondary),
            weight=weight[row],
            status=status,
            total=tot,
        )
        if carrier is not None:  # the diluent of the drip: same order, times and status
            ml_per_rate_hour, citem = carrier
            c_rate = np.round(r * ml_per_rate_hour[row], 3)
            ev.add(
                stay=s_row,
                start=st_t,
                end=en_t,
                itemid=citem[row],
                amount=c_rate * length,
                amountuom=np.full(k, code("ml")),
                rate=c_rate,
                rateuom=np.full(k, code("mL/hour")),
                orderid=order,
                linkorderid=link,
                cat=np.full(k, code(category)),
                catdesc=np.full(k, code(desc)),
                comp=np.full(k, mixed),
                sec=np.full(k, sec_fluids),
                weight=weight[row],
                status=status,
                total=tot,
            )

    def drip(rate, name, item, rate_uom, amount_per_rate_hour, amount_uom, carrier_ml, total):
        add_infusion(
            rate,
            item,
            rate_uom,
            amount_per_rate_hour,
            amount_uom,
            "01-Drips",
            "Continuous Med",
            secondary=sec_fluids,
            total=total,
            carrier=carrier_of(name, carrier_ml) if ch.drip_carriers else None,
        )

    per_kg_min_mg = weight * 60 / 1000  # mg per (mcg/kg/min x 1 h)
    per_kg_min_mcg = weight * 60  # mcg per (mcg/kg/min x 1 h)
    # ---- vasopressors: first-line agent in its own units
    agent = st.first_line[stay]
    primary = H["vaso_eq"][rows].astype(np.float64)
    phen_mcg_min_stay = (
        np.random.default_rng(ctx.id_base + 13).random(st.n) < ch.phenylephrine_mcg_min_fraction
    )
    for a, name in enumerate(FIRST_LINE_AGENTS):
        item = catalog.INPUT[name]
        sel = agent == a
        dose = np.where(sel, primary / AGENT_NE_FACTOR[name], 0.0)
        dose = np.round(dose, 3 if name in ("norepinephrine", "epinephrine") else 2)
        if name == "phenylephrine":
            per_min = phen_mcg_min_stay[stay]
            mcg_min = np.round(dose * weight, 0)
            kg = np.where(per_min, 0.0, dose)
            mn = np.where(per_min, mcg_min, 0.0)
            drip(kg, name, item, "mcg/kg/min", per_kg_min_mg, "mg", per_kg_min_mcg, 250.0)
            drip(mn, name, item, "mcg/min", np.full(R, 60 / 1000), "mg", np.full(R, 60.0), 250.0)
        else:
            drip(dose, name, item, "mcg/kg/min", per_kg_min_mg, "mg", per_kg_min_mcg, 250.0)
    vp_u_h = np.round(H["vasopressin"][rows].astype(np.float64) * 60, 2)
    ones = np.ones(R)
    vp = catalog.INPUT["vasopressin"]
    drip(vp_u_h, "vasopressin", vp, "units/hour", ones, "units", ones, 100.0)
    epi_add = np.round(H["epi_add"][rows].astype(np.float64), 3)
    # add-on epinephrine only where epinephrine is not already the first-line agent
    epi_add = np.where(agent == FIRST_LINE_AGENTS.index("epinephrine"), 0.0, epi_add)
    epi = catalog.INPUT["epinephrine"]
    drip(epi_add, "epinephrine", epi, "mcg/kg/min", per_kg_min_mg, "mg", per_kg_min_mcg, 250.0)
    dob = np.round(H["dobutamine"][rows].astype(np.float64), 2)
    dbt = catalog.INPUT["dobutamine"]
    drip(dob, "dobutamine", dbt, "mcg/kg/min", per_kg_min_mg, "mg", per_kg_min_mcg, 250.0)
    # ---- maintenance fluids: one row per constant rate, product and bag
    maint = H["maint_rate"][rows].astype(np.float64)
    mtype = H["maint_type"][rows].astype(np.int64)
    for j, name in enumerate(MAINTENANCE_FLUIDS):
        r = np.where(mtype == j, maint, 0.0)
        add_infusion(
            r,
            catalog.INPUT[name],
            "mL/hour",
            ones,
            "ml",
            "02-Fluids (Crystalloids)",
            "Continuous IV",
            kind="fluid",
            secondary=sec_additive,
            bag_ml=ch.fluid_bag_ml,
        )
    # ---- boluses: short infusions, or one-minute "03-IV Fluid Bolus" rows without a rate
    bol = np.flatnonzero(H["bolus_ml"][rows] > 0)
    if len(bol):
        k = len(bol)
        vol = H["bolus_ml"][rows][bol].astype(np.float64)
        dur = H["bolus_duration_min"][rows][bol].astype(np.float64)
        btype = H["bolus_type"][rows][bol].astype(np.int64)
        item_ids = np.array([catalog.INPUT[name].itemid for name in BOLUS_FLUIDS])
        # some albumin is given as 25 % (100 mL); physiology counted it as oncotic volume
        alb25 = (btype == BOLUS_FLUIDS.index("albumin_5")) & (rng.random(k) < 0.2)
        itemid = np.where(alb25, catalog.INPUT["albumin_25"].itemid, item_ids[btype])
        vol = np.where(alb25, 100.0, vol)
        start = t_hour[bol] + H["bolus_minute"][rows][bol].astype(np.int64) * 60
        order = new_orders(k)
        colloid = btype >= 2
        push = ~colloid & (rng.random(k) < ch.bolus_push_fraction)
        cat = np.where(
            colloid,
            code("04-Fluids (Colloids)"),
            np.where(push, code("03-IV Fluid Bolus"), code("02-Fluids (Crystalloids)")),
        )
        ev.add(
            stay=stay[bol],
            start=start,
            end=start + np.where(push, 60, (dur * 60).astype(np.int64)),
            itemid=itemid,
            amount=vol,
            amountuom=np.full(k, code("ml")),
            rate=np.where(push, np.nan, np.round(vol / dur * 60, 1)),
            rateuom=np.where(push, -1, code("mL/hour")),
            orderid=order,
            linkorderid=order,
            cat=cat,
            catdesc=np.where(push, code("Bolus"), code("Continuous IV")),
            comp=np.full(k, main),
            sec=np.where(colloid | push, -1, sec_additive),
            weight=weight[bol],
            status=np.full(k, status_codes[0]),
            total=vol,
        )
    # ---- non-fluid, non-vasopressor inputs the pipeline must not count
    vent = H["ventilated"][rows].astype(bool)
    sed = vent & (rng.random(R) < 0.9)
    prop = np.where(sed, np.round(st.sedation_depth[stay] * 50, 0), 0.0)
    add_infusion(
        prop,
        catalog.INPUT["propofol"],
        "mcg/kg/min",
        per_kg_min_mg,
        "mg",
        "01-Drips",
        "Continuous Med",
        total=100.0,
    )
    low_hgb = (H["haemoglobin"][rows] < 7.5) & (rng.random(R) < 0.15)
    tx = np.flatnonzero(low_hgb)
    if len(tx):
        k = len(tx)
        start = t_hour[tx] + rng.integers(0, 60, k) * 60
        order = new_orders(k)
        ev.add(
            stay=stay[tx],
            start=start,
            end=start + 2 * HOUR,
            itemid=np.full(k, catalog.INPUT["prbc"].itemid),
            amount=np.full(k, 350.0),
            amountuom=np.full(k, code("ml")),
            rate=np.full(k, 175.0),
            rateuom=np.full(k, code("mL/hour")),
            orderid=order,
            linkorderid=order,
            cat=np.full(k, code("07-Blood Products")),
            catdesc=np.full(k, code("Continuous IV")),
            comp=np.full(k, main),
            sec=np.full(k, -1),
            weight=weight[tx],
            status=np.full(k, status_codes[0]),
            total=np.full(k, 350.0),
        )
    # ---- filler: pushes, oral/gastric intake, electrolyte piggybacks (not read by the build)
    rate_f = ch.input_filler_rows_per_icu_hour * ch.density
    if rate_f > 0:
        frows = np.repeat(np.arange(R), rng.poisson(rate_f, R))
        nf = len(frows)
        spec = catalog.INPUT_FILLER
        weights = np.array([f.weight for f in spec], dtype=np.float64)
        idx = rng.choice(len(spec), size=nf, p=weights / weights.sum())
        n_vals = np.array([len(f.amounts) for f in spec])
        val_off = np.concatenate([[0], np.cumsum(n_vals)[:-1]])
        values = np.array([v for f in spec for v in f.amounts], dtype=np.float64)
        value = values[val_off[idx] + (rng.random(nf) * n_vals[idx]).astype(np.int64)]
        start = t_hour[frows] + rng.integers(0, 60, nf) * 60
        order = new_orders(nf)
        item_of = {  # per filler item, then per row
            "minutes": np.array([f.minutes for f in spec]),
            "itemid": np.array([f.item.itemid for f in spec]),
            "uom": np.array([code(f.amount_uom) for f in spec]),
            "cat": np.array([code(f.category) for f in spec]),
            "desc": np.array([code(f.description) for f in spec]),
            "drip": np.array([f.rate_uom is not None for f in spec]),
            "rateuom": np.array([code(f.rate_uom) if f.rate_uom else -1 for f in spec]),
            "per_rate_hour": np.array([f.amount_per_rate_hour for f in spec]),
            "per_kg": np.array([f.per_kg for f in spec]),
        }
        item_of = {key: v[idx] for key, v in item_of.items()}
        drip = item_of["drip"]
        # drips: a row of `minutes` give or take 75 %, at the drawn rate, any drip status
        minutes = np.where(
            drip, np.round(item_of["minutes"] * rng.uniform(0.25, 1.75, nf)), item_of["minutes"]
        ).astype(np.int64)
        mix = ch.filler_drip_status_mix
        drip_status = status_codes[
            rng.choice(4, size=nf, p=[mix[s] for s in (_FINISHED, _CHANGED, _STOPPED, _PAUSED)])
        ]
        per_rate = item_of["per_rate_hour"] * np.where(item_of["per_kg"], weight[frows], 1.0)
        ev.add(
            stay=stay[frows],
            start=start,
            end=start + minutes * 60,
            itemid=item_of["itemid"],
            amount=np.where(drip, value * per_rate * minutes / 60, value),
            amountuom=item_of["uom"],
            rate=np.where(drip, value, np.nan),
            rateuom=item_of["rateuom"],
            orderid=order,
            linkorderid=order,
            cat=item_of["cat"],
            catdesc=item_of["desc"],
            comp=np.full(nf, main),
            sec=np.where(drip, sec_fluids, -1),
            weight=weight[frows],
            status=np.where(drip, drip_status, status_codes[0]),
            total=np.where(drip, 250.0, np.nan),
        )
    if not ev.parts:
        return TABLES["inputevents"].arrow_schema().empty_table()
    cols = ev.concat()
    started = cols["start"] < ctx.outtime[cols["stay"]]  # no zero-length rows at discharge
    cols = {k: v[started] for k, v in cols.items()}
    clipped_end = np.minimum(cols["end"], ctx.outtime[cols["stay"]])
    kept = (clipped_end - cols["start"]) / np.maximum(cols["end"] - cols["start"], 1)
    cols["amount"] = cols["amount"] * kept
    cols["end"] = clipped_end
    n = len(cols["start"])
    order = np.lexsort((cols["itemid"], cols["start"], cols["stay"]))
    cols = {k: v[order] for k, v in cols.items()}
    amount = _round_to(cols["amount"], 4)
    rate = cols["rate"]
    ml = cols["amountuom"] == code("ml")
    total = np.where(np.isnan(cols["total"]) & ml, np.maximum(amount, 0), cols["total"])
    return _table(
        "inputevents",
        {
            "subject_id": _int_array(st.subject_id[cols["stay"]]),
            "hadm_id": _int_array(st.hadm_id[cols["stay"]]),
            "stay_id": _int_array(st.stay_id[cols["stay"]]),
            "caregiver_id": _int_array(rng.integers(10000, 99999, n)),
            "starttime": _time_array(cols["start"]),
            "endtime": _time_array(cols["end"]),
            "storetime": _time_array(cols["start"] + rng.integers(0, 60, n) * 60),
            "itemid": _int_array(cols["itemid"]),
            "amount": _float_array(amount),
            "amountuom": text.to_arrow(cols["amountuom"]),
            "rate": _float_array(rate),
            "rateuom": text.to_arrow(cols["rateuom"]),
            "orderid": _int_array(cols["orderid"]),
            "linkorderid": _int_array(cols["linkorderid"]),
            "ordercategoryname": text.to_arrow(cols["cat"]),
            "secondaryordercategoryname": text.to_arrow(cols["sec"]),
            "ordercomponenttypedescription": text.to_arrow(cols["comp"]),
            "ordercategorydescription": text.to_arrow(cols["catdesc"]),
            "patientweight": _float_array(np.round(cols["weight"], 1)),
            "totalamount": _float_array(total),
            "totalamountuom": text.to_arrow(np.where(np.isnan(total), -1, code("ml"))),
            "isopenbag": _int_array(np.zeros(n, dtype=np.int64)),
            "continueinnextdept": _int_array(np.zeros(n, dtype=np.int64)),
            "statusdescription": text.to_arrow(cols["status"]),
            "originalamount": _float_array(amount),
            "originalrate": _float_array(rate),
        },
    )


# ----------------------------------------------------------------------------- outputevents
def outputevents(ctx: ChartContext, hours: np.ndarray | None = None) -> pa.Table:
    ch, rng, st, H = ctx.cfg.charting, ctx.rng, ctx.stays, ctx.hourly
    icu = H["in_icu"].astype(bool)
    if hours is not None:
        icu &= hours
    rows = _stay_major(H, np.flatnonzero(icu))
    if len(rows) == 0:
        return TABLES["outputevents"].arrow_schema().empty_table()
    stay = H["stay"][rows]
    hh = H["h"][rows].astype(np.int64)
    R = len(rows)
    t_end = ctx.admittime[stay] + (hh + 1) * HOUR  # urine is charted at the end of the hour
    urine = H["urine_ml"][rows].astype(np.float64)
    stay_rng = np.random.default_rng(ctx.id_base + 17)
    u = stay_rng.random((st.n, 3))
    foley = u[:, 0] < ch.foley_fraction
    irrigant = u[:, 1] < ch.gu_irrigant_fraction
    out_items = catalog.OUTPUT
    other_urine = np.array(
        [
            out_items[k].itemid
            for k in ("condom_cath", "suprapubic", "r_nephrostomy", "straight_cath", "ileoconduit")
        ]
    )
    route_item = np.where(
        foley,
        out_items["foley"].itemid,
        np.where(
            u[:, 2] < 0.85,
            out_items["void"].itemid,
            other_urine[(u[:, 2] * 100).astype(int) % len(other_urine)],
        ),
    )
    # chart when due: about every other hour for a Foley, every few hours otherwise (voids,
    # bladder irrigation); the charted value is the urine collected since the previous chart
    # (carried across calls when charting hour by hour)
    p_due = np.where(
        irrigant[stay],
        ch.gu_irrigant_chart_per_hour,
        np.where(foley[stay], ch.foley_chart_per_hour, ch.void_chart_per_hour),
    )
    due = rng.random(R) < p_due
    first_of_stay = np.ones(R, dtype=bool)
    first_of_stay[1:] = stay[1:] != stay[:-1]
    last_of_stay = np.ones(R, dtype=bool)
    last_of_stay[:-1] = stay[1:] != stay[:-1]
    carry = ctx.urine_carry
    if carry is None:
        due |= last_of_stay  # the stay's final collection
        amount = urine
    else:
        amount = urine + np.where(first_of_stay, carry[stay], 0.0)
    cum = np.cumsum(amount)
    group_start = np.maximum.accumulate(np.where(first_of_stay, np.arange(R), 0))
    before_group = np.where(group_start > 0, cum[group_start - 1], 0.0)
    within = cum - before_group  # cumulative urine within the stay's rows of this call
    last_due_pos = np.maximum.accumulate(np.where(due, np.arange(R), -1))
    prev_due_pos = np.full(R, -1)
    prev_due_pos[1:] = last_due_pos[:-1]
    prev_due_pos = np.where(prev_due_pos >= group_start, prev_due_pos, -1)
    prev_within = np.where(prev_due_pos >= 0, within[np.maximum(prev_due_pos, 0)], 0.0)
    idx = np.flatnonzero(due)
    value = np.round(within[idx] - prev_within[idx], 0)
    if carry is not None:
        last_rows = np.flatnonzero(last_of_stay)
        lp = last_due_pos[last_rows]
        charted = np.where(lp >= group_start[last_rows], within[np.maximum(lp, 0)], 0.0)
        carry[stay[last_rows]] = within[last_rows] - charted
    k = len(idx)
    ev = _Events()
    s = stay[idx]
    irr = irrigant[s]
    t = t_end[idx] - rng.integers(1, 20, k) * 60  # charted just before the hour ends
    # bladder irrigation: the irrigant instilled since the last chart, and all that came out
    irr_in = np.round(rng.uniform(ch.gu_irrigant_in_ml.low, ch.gu_irrigant_in_ml.high, k), -1)
    ev.add(
        stay=s,
        t=t,
        itemid=np.where(irr, out_items["gu_irrigant_out"].itemid, route_item[s]),
        value=np.where(irr, value + irr_in, value),
    )
    ev.add(
        stay=s[irr],
        t=t[irr],
        itemid=np.full(int(irr.sum()), out_items["gu_irrigant_in"].itemid),
        value=irr_in[irr],
    )
    # other outputs (not urine): drains, stool, gastric
    other = rng.random(R) < 0.08
    oi = np.array([out_items[k].itemid for k in ("chest_tube", "ogt", "stool")])
    ev.add(
        stay=stay[other],
        t=t_end[other] - rng.integers(1, 60, int(other.sum())) * 60,
        itemid=oi[rng.integers(0, 3, int(other.sum()))],
        value=np.round(rng.uniform(20, 300, int(other.sum()))),
    )
    cols = ctx.before_icu_end(ev.concat())
    n = len(cols["t"])
    # artifact: a few implausible urine rows (e.g. 9000 mL)
    bad = rng.random(n) < ctx.cfg.charting.impossible_value_rate
    cols["value"] = np.where(bad, 9000.0, cols["value"])
    return _table(
        "outputevents",
        {
            "subject_id": _int_array(st.subject_id[cols["stay"]]),
            "hadm_id": _int_array(st.hadm_id[cols["stay"]]),
            "stay_id": _int_array(st.stay_id[cols["stay"]]),
            "caregiver_id": _int_array(rng.integers(10000, 99999, n)),
            "charttime": _time_array(cols["t"]),
            "storetime": _time_array(cols["t"] + rng.integers(0, 60, n) * 60),
            "itemid": _int_array(cols["itemid"]),
            "value": _float_array(cols["value"]),
            "valueuom": _str_const("ml", n),
        },
    )


# ----------------------------------------------------------------------------- prescriptions
# (drug, formulary code, gsn, ndc, strength, dose, unit, doses/24h, route)
_EMPIRIC_REGIMENS = [
    [
        ("Vancomycin", "VANC1F", "043952", "00338355248", "1 g Frozen Bag", "1000", "mg", 2, "IV"),
        (
            "Piperacillin-Tazobactam",
            "PIPT4",
            "062725",
            "00206886002",
            "4.5 g Vial",
            "4.5",
            "g",
            3,
            "IV",
        ),
    ],
    [
        ("CefTRIAXone", "CTRX1F", "009113", "00338502941", "1 g Frozen Bag", "1", "gm", 1, "IV"),
        ("Azithromycin", "AZIT500I", "026721", "00409351201", "500 mg Vial", "500", "mg", 1, "IV"),
    ],
    [
        ("Cefepime", "CEFE2I", "022255", "00409735801", "2 g Vial", "2", "g", 2, "IV"),
        (
            "MetRONIDAZOLE (FLagyl)",
            "METR500PM",
            "008786",
            "00338105548",
            "500 mg Premix Bag",
            "500",
            "mg",
            3,
            "IV",
        ),
    ],
    [
        ("Vancomycin", "VANC1F", "043952", "00338355248", "1 g Frozen Bag", "1250", "mg", 2, "IV"),
        ("Cefepime", "CEFE2I", "022255", "00409735801", "2 g Vial", "2", "g", 2, "IV"),
    ],
]
_ESCALATION = (
    "Meropenem",
    "MERO500I",
    "027769",
    "00409350201",
    "500mg Vial",
    "1000",
    "mg",
    3,
    "IV",
)
_PROPHYLAXIS = (
    "CeFAZolin",
    "CEFA2F",
    "009201",
    "00338350841",
    "2 g / 100 mL Premix",
    "2",
    "g",
    3,
    "IV",
)
_TOPICAL = [
    ("Bacitracin Ointment", "BACI1", "009437", "00168001115", "1 g Packet", "1", "Appl", 2, "TP"),
    (
        "Erythromycin 0.5% Ophth Oint",
        "ERYTOINT",
        "007595",
        "00574402035",
        "3.5g Tube",
        "0.5",
        "in",
        4,
        "BOTH EYES",
    ),
    (
        "Mupirocin Nasal Ointment 2%",
        "MUPI2N",
        "008813",
        "00168035822",
        "1 g Tube",
        "1",
        "Appl",
        2,
        "NU",
    ),
]
_OTHER = [
    (
        "Heparin",
        "HEPA5I",
        "006549",
        "63323026201",
        "5000 Unit / mL- 1 mL Vial",
        "5000",
        "UNIT",
        3,
        "SC",
    ),
    ("Pantoprazole", "PANT40I", "040179", "00008092355", "40mg Vial", "40", "mg", 1, "IV"),
    ("Acetaminophen", "ACET325", "004489", "00904198861", "325mg Tablet", "650", "mg", 4, "PO/NG"),
    ("Docusate Sodium", "DOCU100", "003009", "00904224461", "100mg Capsule", "100", "mg", 2, "PO"),
    (
        "Insulin",
        "INSULIN",
        "027419",
        "00002831501",
        "100 Units / mL - 10 mL Vial",
        "0",
        "UNIT",
        0,
        "SC",
    ),
    ("Sodium Chloride 0.9%  Flush", "NACLFLUSH", "", "0", "10 mL Syringe", "3", "mL", 3, "IV"),
    ("Potassium Chloride", "KCL20P", "001275", "00338070941", "20mEq Premix", "20", "mEq", 0, "IV"),
]


#: antibiotics of the empiric regimens that also come as an enteral form (given PO/NG)
_ENTERAL = ("Azithromycin", "MetRONIDAZOLE (FLagyl)")
#: topical antibiotic whose name matches a systemic antibiotic: only its route excludes it
_TOPICAL_POLYMYXIN = (
    "Neomycin-Polymyxin-Bacitracin",
    "NEOPOLYB",
    "",
    "0",
    "1 Tube",
    "1",
    "Appl",
    2,
    "TP",
)
#: routine orders of an ICU day (none is an antibiotic): drug, code, gsn, ndc, strength, dose,
#: unit, doses / 24 h, route
_ROUTINE = [
    *_OTHER,
    ("Ondansetron", "ONDA4I", "", "0", "2mg/mL-2mL", "4", "mg", 0, "IV"),
    ("Senna", "SENN187", "", "0", "8.6 mg Tablet", "8.6", "mg", 2, "PO/NG"),
    ("Polyethylene Glycol", "PEG17", "", "0", "17 g Powder Packet", "17", "g", 1, "PO/NG"),
    ("Metoprolol Tartrate", "METO25", "", "0", "25mg Tablet", "25", "mg", 2, "PO/NG"),
    ("Furosemide", "FURO40I", "", "0", "40mg/4mL Vial", "40", "mg", 0, "IV"),
    ("Magnesium Sulfate", "MAG2PM", "", "0", "2 g / 50 mL Premix Bag", "2", "g", 0, "IV"),
    ("Famotidine", "FAMO20", "", "0", "20mg Tablet", "20", "mg", 2, "PO/NG"),
    ("Fentanyl Citrate", "FENT100I", "", "0", "100mcg/2mL Ampule", "25", "mcg", 0, "IV"),
    ("Propofol", "PROP100IG", "", "0", "100mg/100mL Vial", "10", "mcg/kg/min", 0, "IV DRIP"),
    ("OxyCODONE (Immediate Release)", "OXYC5", "", "0", "5mg Tablet", "5", "mg", 0, "PO/NG"),
    ("Atorvastatin", "ATOR40", "", "0", "40mg Tablet", "40", "mg", 1, "PO/NG"),
    ("Aspirin", "ASA81", "", "0", "81mg Tablet", "81", "mg", 1, "PO/NG"),
    ("Chlorhexidine Gluconate 0.12% Oral Rinse", "CHLO15L", "", "0", "15mL Cup", "15", "mL", 2,
     "ORAL"),
    ("Lorazepam", "LORA2I", "", "0", "2mg/mL Vial", "0.5", "mg", 0, "IV"),
    ("Glucagon", "GLUC1I", "", "0", "1mg Vial", "1", "mg", 0, "IM"),
    ("Dextrose 50%", "DEX50SY", "", "0", "25 g / 50 mL Syringe", "12.5", "gm", 0, "IV"),
    ("Albuterol 0.083% Neb Soln", "ALBU3H", "", "0", "2.5mg/3mL Vial", "1", "NEB", 4, "IH"),
    ("Bisacodyl", "BISA5", "", "0", "5 mg Tab", "10", "mg", 1, "PR"),
    ("Multivitamins", "MULT1", "", "0", "1 Tablet", "1", "TAB", 1, "PO/NG"),
    ("Thiamine", "THIA100", "", "0", "100mg Tablet", "100", "mg", 1, "PO/NG"),
    ("Lidocaine 5% Patch", "LIDO5P", "", "0", "1 Patch", "1", "PTCH", 1, "TD"),
    ("Midodrine", "MIDO5", "", "0", "5mg Tablet", "10", "mg", 3, "PO/NG"),
    ("Haloperidol", "HALO5I", "", "0", "5mg/mL Vial", "2.5", "mg", 0, "IV"),
    ("Insulin Glargine", "GLAR100I", "", "0", "100 Units / mL - 10mL Vial", "10", "UNIT", 1, "SC"),
]  # fmt: skip


def _take(values: list, idx: np.ndarray, typ: pa.DataType | None = None) -> pa.Array:
    """``values[idx]`` as an Arrow array (values: one entry per distinct drug; strings unless
    ``typ`` says otherwise)."""
    return pc.take(pa.array(values, typ or pa.string()), pa.array(idx, pa.int64()))


def prescriptions(
    ctx: ChartContext, workups: dict[str, np.ndarray], prophylaxis_h: np.ndarray
) -> pa.Table:
    """Antibiotic courses of the work-ups (some azithromycin and metronidazole given PO/NG),
    escalation and prophylaxis; topical antibiotics; admission orders and routine orders
    through the ICU stay (``charting.routine_orders_per_icu_day``).

    ``workups["antibiotic_reorder_h"]`` (per stay, nan: none; ``cohort.antibiotic_reorder``):
    the course running at ICU admission is ordered again then, each of its drugs (and an
    escalation started before the ICU) with the same drug, route and course end; the pre-ICU
    order stops where its re-order starts. Draws nothing from ``ctx.rng``."""
    rng, st, ch = ctx.rng, ctx.stays, ctx.cfg.charting
    adm = ctx.admittime
    drugs: list[tuple] = []
    drug_index: dict[tuple, int] = {}
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def emit(s: np.ndarray, start_h: np.ndarray, stop_h: np.ndarray, drug: tuple) -> None:
        if drug not in drug_index:
            drug_index[drug] = len(drugs)
            drugs.append(drug)
        parts.append((s, start_h, stop_h, np.full(len(s), drug_index[drug])))

    def emit_course(
        s: np.ndarray, start_h: np.ndarray, stop_h: np.ndarray, reorder_h: np.ndarray, drug: tuple
    ) -> None:
        """A course's order, and its ICU re-order where ``reorder_h`` (per row) is set."""
        again = ~np.isnan(reorder_h)
        emit(s, start_h, np.where(again, reorder_h, stop_h), drug)
        emit(s[again], reorder_h[again], stop_h[again], drug)

    intime_h = st.pre_icu_h.astype(np.float64)
    reorder = workups["antibiotic_reorder_h"]
    n_w = workups["antibiotic_h"].shape[1]
    for j in range(n_w):
        abx = workups["antibiotic_h"][:, j]
        stop = workups["antibiotic_stop_h"][:, j]
        # the re-order belongs to the course running at ICU admission (at most one)
        again = np.where((abx < intime_h) & (stop > reorder), reorder, np.nan)
        has = np.flatnonzero(~np.isnan(abx))
        regimen = rng.integers(0, len(_EMPIRIC_REGIMENS), len(has))
        for r_i, reg in enumerate(_EMPIRIC_REGIMENS):
            sel = has[regimen == r_i]
            for drug_i, drug in enumerate(reg):
                # the second drug of a pair is sometimes started a little later
                lag = 0.0 if drug_i == 0 else 0.5
                if drug[0] in _ENTERAL:
                    oral = rng.random(len(sel)) < ch.antibiotic_enteral_fraction
                    o = sel[oral]
                    emit_course(o, abx[o] + lag, stop[o], again[o] + lag, (*drug[:8], "PO/NG"))
                    sel = sel[~oral]
                emit_course(sel, abx[sel] + lag, stop[sel], again[sel] + lag, drug)
        esc = workups["escalation_h"][:, j]
        e = np.flatnonzero(~np.isnan(esc))
        esc_again = np.where(esc[e] < intime_h[e], again[e], np.nan)
        emit_course(e, esc[e], stop[e] + 24.0, esc_again, _ESCALATION)
    p = np.flatnonzero(~np.isnan(prophylaxis_h))
    emit(p, prophylaxis_h[p], prophylaxis_h[p] + 24.0, _PROPHYLAXIS)
    # topical antibiotics and routine medications (must not count as systemic antibiotics)
    icu_h = st.pre_icu_h.astype(np.float64)
    top = np.flatnonzero(rng.random(st.n) < 0.12)
    emit(top, icu_h[top] + rng.uniform(0, 24, len(top)), icu_h[top] + 72.0, _TOPICAL[0])
    for k, drug in enumerate([*_TOPICAL[1:], _TOPICAL_POLYMYXIN], start=1):
        sel = np.flatnonzero(rng.random(st.n) < 0.04 * k)
        emit(sel, icu_h[sel] + rng.uniform(0, 24, len(sel)), icu_h[sel] + 96.0, drug)
    for drug in _OTHER:
        sel = np.flatnonzero(rng.random(st.n) < 0.6)
        emit(
            sel,
            icu_h[sel] + rng.uniform(0, 6, len(sel)),
            icu_h[sel] + rng.uniform(24, 120, len(sel)),
            drug,
        )
    # routine orders spread over the ICU stay
    los_h = np.maximum(ctx.outtime - ctx.intime, 0) / HOUR
    n_orders = rng.poisson(ch.routine_orders_per_icu_day * los_h / 24.0)
    s_r = np.repeat(np.arange(st.n), n_orders)
    start_r = icu_h[s_r] + rng.random(len(s_r)) * los_h[s_r]
    pick = rng.integers(0, len(_ROUTINE), len(s_r))
    for k, drug in enumerate(_ROUTINE):
        sel = pick == k
        emit(s_r[sel], start_r[sel], start_r[sel] + rng.uniform(12, 96, int(sel.sum())), drug)

    s = np.concatenate([q[0] for q in parts]).astype(np.int64)
    n = len(s)
    if n == 0:
        return _table("prescriptions", {"subject_id": pa.array([], pa.int64())})
    start = (adm[s] + np.concatenate([q[1] for q in parts]) * HOUR).astype(np.int64) // 60 * 60
    stop = (adm[s] + np.concatenate([q[2] for q in parts]) * HOUR).astype(np.int64) // 60 * 60
    did = np.concatenate([q[3] for q in parts])
    _, name_rank = np.unique(np.array([d[0] for d in drugs]), return_inverse=True)
    order = np.lexsort((name_rank[did], start, s))
    s, start, stop, did = s[order], start[order], stop[order], did[order]
    seq = ctx.id_base % 100000 + np.arange(n)
    col = {k: [d[k] for d in drugs] for k in range(9)}
    return _table(
        "prescriptions",
        {
            "subject_id": _int_array(st.subject_id[s]),
            "hadm_id": _int_array(st.hadm_id[s]),
            "pharmacy_id": _int_array(ctx.id_base + np.arange(n)),
            "poe_id": pc.binary_join_element_wise(
                pc.cast(_int_array(st.subject_id[s]), pa.string()),
                pc.cast(_int_array(seq), pa.string()),
                "-",
            ),
            "poe_seq": _int_array(seq),
            "order_provider_id": _take(ctx.attending_provider, st.attending[s]),
            "starttime": _time_array(start),
            "stoptime": _time_array(stop),
            "drug_type": _str_const("MAIN", n),
            "drug": _take(col[0], did),
            "formulary_drug_cd": _take(col[1], did),
            "gsn": _take([g or None for g in col[2]], did),
            "ndc": _take(col[3], did),
            "prod_strength": _take(col[4], did),
            "form_rx": _str_const(None, n),
            "dose_val_rx": _take(col[5], did),
            "dose_unit_rx": _take(col[6], did),
            "form_val_disp": _take(col[5], did),
            "form_unit_disp": _take(col[6], did),
            "doses_per_24_hrs": _take([float(x) if x else None for x in col[7]], did, pa.float64()),
            "route": _take(col[8], did),
        },
    )


# ----------------------------------------------------------------------------- microbiology
_SPECIMENS = {
    "blood": (70012, "BLOOD CULTURE", 90201, "Blood Culture, Routine"),
    "urine": (70079, "URINE", 90039, "URINE CULTURE"),
    "sputum": (70070, "SPUTUM", 90043, "RESPIRATORY CULTURE"),
    "mrsa": (70091, "MRSA SCREEN", 90154, "MRSA SCREEN"),
}
_ORGANISMS = [
    (80002, "ESCHERICHIA COLI"),
    (80023, "STAPH AUREUS COAG +"),
    (80026, "PSEUDOMONAS AERUGINOSA"),
    (80004, "KLEBSIELLA PNEUMONIAE"),
    (80053, "ENTEROCOCCUS SP."),
]
_ANTIBIOTICS_TESTED = [
    (90004, "AMPICILLIN"),
    (90012, "GENTAMICIN"),
    (90016, "CEFTRIAXONE"),
    (90018, "MEROPENEM"),
]


def microbiologyevents(
    ctx: ChartContext, workups: dict[str, np.ndarray], screen_h: np.ndarray, infected: np.ndarray
) -> pa.Table:
    rng, st = ctx.rng, ctx.stays
    ch = ctx.cfg.charting
    specimens: list[tuple[int, float, str]] = []  # (stay, hour, specimen kind)
    n_w = workups["culture_h"].shape[1]
    for j in range(n_w):
        c = workups["culture_h"][:, j]
        for i in np.flatnonzero(~np.isnan(c)).tolist():
            specimens.append((i, c[i], "blood"))
            if rng.random() < 0.6:
                specimens.append((i, c[i] + 0.2, "blood"))  # second set
        c2 = workups["culture2_h"][:, j]
        for i in np.flatnonzero(~np.isnan(c2)).tolist():
            specimens.append((i, c2[i], "urine" if rng.random() < 0.6 else "sputum"))
    for i in np.flatnonzero(~np.isnan(screen_h)).tolist():
        specimens.append((i, screen_h[i], "mrsa"))
    specimens.sort(key=lambda x: (x[0], x[1]))
    out = {
        k: []
        for k in (
            "stay",
            "specimen",
            "chartdate",
            "charttime",
            "kind",
            "org",
            "ab",
            "interp",
            "storetime",
        )
    }
    for spec_no, (i, hour, kind) in enumerate(specimens):
        t = int(ctx.admittime[i] + hour * HOUR) // 60 * 60
        date_only = rng.random() < ch.date_only_culture_fraction[kind]
        chartdate = t - t % 86400
        store = t + int(rng.uniform(1.5, 4.0) * SECONDS_PER_DAY) // 60 * 60
        positive = (
            kind != "mrsa" and infected[i] and rng.random() < (0.45 if kind == "blood" else 0.6)
        )
        spec_id = ctx.id_base + spec_no
        if positive:
            org = _ORGANISMS[int(rng.integers(0, len(_ORGANISMS)))]
            for ab in _ANTIBIOTICS_TESTED:
                for key, val in (
                    ("stay", i),
                    ("specimen", spec_id),
                    ("chartdate", chartdate),
                    ("charttime", MISSING_TIME if date_only else t),
                    ("kind", kind),
                    ("org", org),
                    ("ab", ab),
                    ("interp", "S" if rng.random() < 0.8 else "R"),
                    ("storetime", store),
                ):
                    out[key].append(val)
        else:
            for key, val in (
                ("stay", i),
                ("specimen", spec_id),
                ("chartdate", chartdate),
                ("charttime", MISSING_TIME if date_only else t),
                ("kind", kind),
                ("org", None),
                ("ab", None),
                ("interp", None),
                ("storetime", store),
            ):
                out[key].append(val)
    n = len(out["stay"])
    if n == 0:
        return _table("microbiologyevents", {"microevent_id": pa.array([], pa.int64())})
    s = np.array(out["stay"], dtype=np.int64)
    spec = [_SPECIMENS[k] for k in out["kind"]]
    org_id = np.array([o[0] if o else -1 for o in out["org"]])
    ab_id = np.array([a[0] if a else -1 for a in out["ab"]])
    store = np.array(out["storetime"], dtype=np.int64)
    return _table(
        "microbiologyevents",
        {
            "microevent_id": _int_array(ctx.id_base + np.arange(n)),
            "subject_id": _int_array(st.subject_id[s]),
            "hadm_id": _int_array(st.hadm_id[s]),
            "micro_specimen_id": _int_array(np.array(out["specimen"])),
            "order_provider_id": pa.array(
                [ctx.attending_provider[a] for a in st.attending[s].tolist()]
            ),
            "chartdate": _time_array(np.array(out["chartdate"], dtype=np.int64)),
            "charttime": _time_array(np.array(out["charttime"], dtype=np.int64)),
            "spec_itemid": _int_array(np.array([x[0] for x in spec])),
            "spec_type_desc": pa.array([x[1] for x in spec]),
            "test_seq": _int_array(np.ones(n, dtype=np.int64)),
            "storedate": _time_array(store - store % 86400),
            "storetime": _time_array(store),
            "test_itemid": _int_array(np.array([x[2] for x in spec])),
            "test_name": pa.array([x[3] for x in spec]),
            "org_itemid": _int_array(org_id, missing=-1),
            "org_name": pa.array([o[1] if o else None for o in out["org"]], pa.string()),
            "isolate_num": _int_array(np.where(org_id > 0, 1, -1), missing=-1),
            "quantity": _str_const(None, n),
            "ab_itemid": _int_array(ab_id, missing=-1),
            "ab_name": pa.array([a[1] if a else None for a in out["ab"]], pa.string()),
            "dilution_text": pa.array([("<=1" if a else None) for a in out["ab"]], pa.string()),
            "dilution_comparison": pa.array(
                [("<=" if a else None) for a in out["ab"]], pa.string()
            ),
            "dilution_value": _float_array(np.where(ab_id > 0, 1.0, np.nan)),
            "interpretation": pa.array(out["interp"], pa.string()),
            "comments": pa.array([None if o else "NO GROWTH." for o in out["org"]], pa.string()),
        },
    )
