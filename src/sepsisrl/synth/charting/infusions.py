"""``inputevents``: drips with their diluents, maintenance fluids per bag, boluses,
sedation, transfusions and unrelated inputs, as MetaVision charts them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

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
    round_to,
    stay_major,
    time_array,
)
from sepsisrl.synth.population import AGENT_NE_FACTOR, FIRST_LINE_AGENTS
from sepsisrl.synth.simulator import BOLUS_FLUIDS, MAINTENANCE_FLUIDS


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
    H = ctx.hourly
    icu = H["in_icu"].astype(bool)
    if hours is not None:
        icu &= hours
    rows = stay_major(H, np.flatnonzero(icu))
    if len(rows) == 0:
        return TABLES["inputevents"].arrow_schema().empty_table()
    inp = _InputRows(ctx, rows)
    # the order of these steps is the order of the random draws: keep it
    _chart_vasopressors(inp)
    _chart_maintenance_fluids(inp)
    _chart_boluses(inp)
    _chart_sedation(inp)
    _chart_transfusions(inp)
    _chart_input_filler(inp)
    if not inp.ev.parts:
        return TABLES["inputevents"].arrow_schema().empty_table()
    return _inputevents_table(ctx, inp.ev.concat())


class _InputRows:
    """The ICU hours being charted into ``inputevents`` and the rows charted so far."""

    def __init__(self, ctx: ChartContext, rows: np.ndarray) -> None:
        ch, st, H = ctx.cfg.charting, ctx.stays, ctx.hourly
        self.ctx, self.ch, self.rng, self.H = ctx, ch, ctx.rng, H
        self.rows = rows
        self.stay = H["stay"][rows]
        self.hh = H["h"][rows].astype(np.int64)
        self.R = len(rows)
        self.t_hour = ctx.admittime[self.stay] + self.hh * HOUR
        self.weight = st.weight_kg[self.stay]
        self.ev = Events()
        self._orders = 0
        self.code = code = ctx.text.code
        self.main, self.mixed = code("Main order parameter"), code("Mixed solution")
        self.sec_fluids = code("02-Fluids (Crystalloids)")
        self.sec_additive = code("Additive (Crystalloid)")
        self.status_codes = np.array([code(s) for s in (_FINISHED, _CHANGED, _STOPPED, _PAUSED)])
        # per-stay habits, identical in every call for the same chunk (hour-by-hour charting)
        streams = ch.stream_offsets
        change_rng = np.random.default_rng(ctx.id_base + streams.infusion_change_minute)
        self.change_min = (change_rng.integers(0, 60, st.n) * 60)[self.stay]
        diluent_rng = np.random.default_rng(ctx.id_base + streams.drip_diluent)
        self.diluent_u = diluent_rng.random(st.n)[self.stay]
        self.ones = np.ones(self.R)
        self.per_kg_min_mg = self.weight * 60 / 1000  # mg per (mcg/kg/min x 1 h)
        self.per_kg_min_mcg = self.weight * 60  # mcg per (mcg/kg/min x 1 h)

    def new_orders(self, k: int) -> np.ndarray:
        ids = self.ctx.id_base + self.ctx.id_offset + self._orders + np.arange(k)
        self._orders += k
        return ids

    def carrier_of(self, agent: str, ml_per_rate_hour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The drip's diluent: (mL per rate-hour, item id: D5W or NaCl 0.9%), per hourly row."""
        ch = self.ch
        d5w, nacl = catalog.INPUT["d5w"].itemid, catalog.INPUT["nacl_09"].itemid
        item = np.where(self.diluent_u < ch.drip_diluent_d5w_fraction[agent], d5w, nacl)
        return ml_per_rate_hour / ch.drip_concentration[agent], item

    def add_infusion(
        self,
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
        starts, lengths, _ = _runs(self.stay, self.hh, rate)
        if len(starts) == 0:
            return
        if bag_ml is not None:
            row, length, new_bag = _split_into_bags(
                starts, lengths, rate[starts] * amount_per_rate_hour[starts], bag_ml
            )
        else:
            row, length, new_bag = starts, lengths, np.zeros(len(starts), dtype=bool)
        k = len(row)
        s_row, h_row = self.stay[row], self.hh[row]
        st_t = self.t_hour[row] + self.change_min[row]
        en_t = st_t + length * HOUR
        r = rate[row]
        amount = r * amount_per_rate_hour[row] * length
        order = self.new_orders(k)
        link, status = self._link_and_status(s_row, h_row, length, new_bag, order, kind)
        tot = np.full(k, np.nan if total is None else total)
        if bag_ml is not None:
            tot = np.full(k, bag_ml)
        code = self.code
        self.ev.add(
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
            comp=np.full(k, self.main),
            sec=np.full(k, secondary),
            weight=self.weight[row],
            status=status,
            total=tot,
        )
        if carrier is not None:  # the diluent of the drip: same order, times and status
            ml_per_rate_hour, citem = carrier
            c_rate = np.round(r * ml_per_rate_hour[row], 3)
            self.ev.add(
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
                comp=np.full(k, self.mixed),
                sec=np.full(k, self.sec_fluids),
                weight=self.weight[row],
                status=status,
                total=tot,
            )

    def _link_and_status(
        self,
        s_row: np.ndarray,
        h_row: np.ndarray,
        length: np.ndarray,
        new_bag: np.ndarray,
        order: np.ndarray,
        kind: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Link the rows of one continuous infusion (consecutive rows of the same stay) and
        give each row how it ended: rate change, new bag, pause, stop or end of infusion."""
        k = len(s_row)
        end_h = h_row + length
        contiguous = np.zeros(k, dtype=bool)
        contiguous[1:] = (s_row[1:] == s_row[:-1]) & (h_row[1:] == end_h[:-1])
        link = order.copy()
        for j in np.flatnonzero(contiguous):  # runs are few; chains are short
            link[j] = link[j - 1]
        nxt_contig = np.zeros(k, dtype=bool)
        nxt_contig[:-1] = contiguous[1:]
        nxt_bag = np.zeros(k, dtype=bool)
        nxt_bag[:-1] = new_bag[1:]
        gap = np.full(k, np.iinfo(np.int64).max)
        gap[:-1] = np.where(s_row[1:] == s_row[:-1], h_row[1:] - end_h[:-1], gap[:-1])
        paused = ~nxt_contig & (gap <= self.ch.infusion_pause_max_gap_h)
        stopped = self.rng.random(k) < self.ch.infusion_stopped_fraction[kind]
        status = self.status_codes[
            np.select([nxt_contig & nxt_bag, nxt_contig, paused, stopped], [0, 1, 3, 2], default=0)
        ]
        return link, status

    def drip(
        self,
        rate: np.ndarray,
        name: str,
        item: catalog.Item,
        rate_uom: str,
        amount_per_rate_hour: np.ndarray,
        amount_uom: str,
        carrier_ml: np.ndarray,
        total: float,
    ) -> None:
        """A drug drip ("01-Drips"), with its diluent row when ``charting.drip_carriers``."""
        self.add_infusion(
            rate,
            item,
            rate_uom,
            amount_per_rate_hour,
            amount_uom,
            "01-Drips",
            "Continuous Med",
            secondary=self.sec_fluids,
            total=total,
            carrier=self.carrier_of(name, carrier_ml) if self.ch.drip_carriers else None,
        )


def _split_into_bags(
    starts: np.ndarray, lengths: np.ndarray, per_hour: np.ndarray, bag_ml: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split runs (first row, length in hours, volume per hour) into bags of at most
    ``bag_ml``: (first row, length, starts a new bag of the same run) per piece."""
    per_hour = np.maximum(per_hour, 1e-9)
    per_bag = np.maximum(1, np.floor(bag_ml / per_hour)).astype(np.int64)
    n_pieces = -(-lengths // per_bag)
    run_of = np.repeat(np.arange(len(starts)), n_pieces)
    first = np.concatenate([[0], np.cumsum(n_pieces)[:-1]])
    k_in = np.arange(len(run_of)) - np.repeat(first, n_pieces)
    offset = k_in * per_bag[run_of]
    row = starts[run_of] + offset
    length = np.minimum(per_bag[run_of], lengths[run_of] - offset)
    return row, length, k_in > 0


def _chart_vasopressors(inp: _InputRows) -> None:
    """The first-line agent in its own units, vasopressin, add-on epinephrine, dobutamine."""
    ctx, H, rows, stay, R = inp.ctx, inp.H, inp.rows, inp.stay, inp.R
    st, ch = ctx.stays, inp.ch
    per_kg_min_mg, per_kg_min_mcg, ones = inp.per_kg_min_mg, inp.per_kg_min_mcg, inp.ones
    agent = st.first_line[stay]
    primary = H["vaso_eq"][rows].astype(np.float64)
    phen_rng = np.random.default_rng(ctx.id_base + ch.stream_offsets.phenylephrine_unit)
    phen_mcg_min_stay = phen_rng.random(st.n) < ch.phenylephrine_mcg_min_fraction
    for a, name in enumerate(FIRST_LINE_AGENTS):
        item = catalog.INPUT[name]
        sel = agent == a
        dose = np.where(sel, primary / AGENT_NE_FACTOR[name], 0.0)
        dose = np.round(dose, 3 if name in ("norepinephrine", "epinephrine") else 2)
        if name == "phenylephrine":
            per_min = phen_mcg_min_stay[stay]
            mcg_min = np.round(dose * inp.weight, 0)
            kg = np.where(per_min, 0.0, dose)
            mn = np.where(per_min, mcg_min, 0.0)
            inp.drip(kg, name, item, "mcg/kg/min", per_kg_min_mg, "mg", per_kg_min_mcg, 250.0)
            per_mcg_min = np.full(R, 60 / 1000)
            inp.drip(mn, name, item, "mcg/min", per_mcg_min, "mg", np.full(R, 60.0), 250.0)
        else:
            inp.drip(dose, name, item, "mcg/kg/min", per_kg_min_mg, "mg", per_kg_min_mcg, 250.0)
    vp_u_h = np.round(H["vasopressin"][rows].astype(np.float64) * 60, 2)
    vp = catalog.INPUT["vasopressin"]
    inp.drip(vp_u_h, "vasopressin", vp, "units/hour", ones, "units", ones, 100.0)
    epi_add = np.round(H["epi_add"][rows].astype(np.float64), 3)
    # add-on epinephrine only where epinephrine is not already the first-line agent
    epi_add = np.where(agent == FIRST_LINE_AGENTS.index("epinephrine"), 0.0, epi_add)
    epi = catalog.INPUT["epinephrine"]
    inp.drip(epi_add, "epinephrine", epi, "mcg/kg/min", per_kg_min_mg, "mg", per_kg_min_mcg, 250.0)
    dob = np.round(H["dobutamine"][rows].astype(np.float64), 2)
    dbt = catalog.INPUT["dobutamine"]
    inp.drip(dob, "dobutamine", dbt, "mcg/kg/min", per_kg_min_mg, "mg", per_kg_min_mcg, 250.0)


def _chart_maintenance_fluids(inp: _InputRows) -> None:
    """One row per constant rate, product and bag."""
    maint = inp.H["maint_rate"][inp.rows].astype(np.float64)
    mtype = inp.H["maint_type"][inp.rows].astype(np.int64)
    for j, name in enumerate(MAINTENANCE_FLUIDS):
        r = np.where(mtype == j, maint, 0.0)
        inp.add_infusion(
            r,
            catalog.INPUT[name],
            "mL/hour",
            inp.ones,
            "ml",
            "02-Fluids (Crystalloids)",
            "Continuous IV",
            kind="fluid",
            secondary=inp.sec_additive,
            bag_ml=inp.ch.fluid_bag_ml,
        )


def _chart_boluses(inp: _InputRows) -> None:
    """Short infusions, or one-minute "03-IV Fluid Bolus" rows without a rate."""
    H, rows, rng, ch, code = inp.H, inp.rows, inp.rng, inp.ch, inp.code
    bol = np.flatnonzero(H["bolus_ml"][rows] > 0)
    if not len(bol):
        return
    k = len(bol)
    vol = H["bolus_ml"][rows][bol].astype(np.float64)
    dur = H["bolus_duration_min"][rows][bol].astype(np.float64)
    btype = H["bolus_type"][rows][bol].astype(np.int64)
    item_ids = np.array([catalog.INPUT[name].itemid for name in BOLUS_FLUIDS])
    # some albumin is given as 25 % (100 mL); physiology counted it as oncotic volume
    alb25 = (btype == BOLUS_FLUIDS.index("albumin_5")) & (
        rng.random(k) < ch.inputevents.albumin_25_fraction
    )
    itemid = np.where(alb25, catalog.INPUT["albumin_25"].itemid, item_ids[btype])
    vol = np.where(alb25, 100.0, vol)
    start = inp.t_hour[bol] + H["bolus_minute"][rows][bol].astype(np.int64) * 60
    order = inp.new_orders(k)
    colloid = btype >= 2
    push = ~colloid & (rng.random(k) < ch.bolus_push_fraction)
    cat = np.where(
        colloid,
        code("04-Fluids (Colloids)"),
        np.where(push, code("03-IV Fluid Bolus"), code("02-Fluids (Crystalloids)")),
    )
    inp.ev.add(
        stay=inp.stay[bol],
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
        comp=np.full(k, inp.main),
        sec=np.where(colloid | push, -1, inp.sec_additive),
        weight=inp.weight[bol],
        status=np.full(k, inp.status_codes[0]),
        total=vol,
    )


def _chart_sedation(inp: _InputRows) -> None:
    """Propofol for ventilated patients (a drip the pipeline must not count)."""
    vent = inp.H["ventilated"][inp.rows].astype(bool)
    sed = vent & (inp.rng.random(inp.R) < inp.ch.inputevents.propofol_per_ventilated_hour)
    prop = np.where(sed, np.round(inp.ctx.stays.sedation_depth[inp.stay] * 50, 0), 0.0)
    inp.add_infusion(
        prop,
        catalog.INPUT["propofol"],
        "mcg/kg/min",
        inp.per_kg_min_mg,
        "mg",
        "01-Drips",
        "Continuous Med",
        total=100.0,
    )


def _chart_transfusions(inp: _InputRows) -> None:
    """Packed red cells when haemoglobin is low (not an IV fluid for the pipeline)."""
    rng, code, hab = inp.rng, inp.code, inp.ch.inputevents
    low_hgb = (inp.H["haemoglobin"][inp.rows] < hab.transfusion_haemoglobin_below) & (
        rng.random(inp.R) < hab.transfusion_per_h_low_haemoglobin
    )
    tx = np.flatnonzero(low_hgb)
    if not len(tx):
        return
    k = len(tx)
    start = inp.t_hour[tx] + rng.integers(0, 60, k) * 60
    order = inp.new_orders(k)
    inp.ev.add(
        stay=inp.stay[tx],
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
        comp=np.full(k, inp.main),
        sec=np.full(k, -1),
        weight=inp.weight[tx],
        status=np.full(k, inp.status_codes[0]),
        total=np.full(k, 350.0),
    )


def _chart_input_filler(inp: _InputRows) -> None:
    """Pushes, oral/gastric intake, electrolyte piggybacks and drips the build never reads."""
    ch, rng, code = inp.ch, inp.rng, inp.code
    rate_f = ch.input_filler_rows_per_icu_hour * ch.density
    if rate_f <= 0:
        return
    frows = np.repeat(np.arange(inp.R), rng.poisson(rate_f, inp.R))
    nf = len(frows)
    spec = catalog.INPUT_FILLER
    weights = np.array([f.weight for f in spec], dtype=np.float64)
    idx = rng.choice(len(spec), size=nf, p=weights / weights.sum())
    n_vals = np.array([len(f.amounts) for f in spec])
    val_off = np.concatenate([[0], np.cumsum(n_vals)[:-1]])
    values = np.array([v for f in spec for v in f.amounts], dtype=np.float64)
    value = values[val_off[idx] + (rng.random(nf) * n_vals[idx]).astype(np.int64)]
    start = inp.t_hour[frows] + rng.integers(0, 60, nf) * 60
    order = inp.new_orders(nf)
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
    drip_status = inp.status_codes[
        rng.choice(4, size=nf, p=[mix[s] for s in (_FINISHED, _CHANGED, _STOPPED, _PAUSED)])
    ]
    per_rate = item_of["per_rate_hour"] * np.where(item_of["per_kg"], inp.weight[frows], 1.0)
    inp.ev.add(
        stay=inp.stay[frows],
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
        comp=np.full(nf, inp.main),
        sec=np.where(drip, inp.sec_fluids, -1),
        weight=inp.weight[frows],
        status=np.where(drip, drip_status, inp.status_codes[0]),
        total=np.where(drip, 250.0, np.nan),
    )


def _inputevents_table(ctx: ChartContext, cols: dict[str, np.ndarray]) -> pa.Table:
    """Clip rows at the end of the ICU stay, sort them and build the MIMIC-IV table."""
    rng, st, text = ctx.rng, ctx.stays, ctx.text
    code = text.code
    started = cols["start"] < ctx.outtime[cols["stay"]]  # no zero-length rows at discharge
    cols = {k: v[started] for k, v in cols.items()}
    clipped_end = np.minimum(cols["end"], ctx.outtime[cols["stay"]])
    kept = (clipped_end - cols["start"]) / np.maximum(cols["end"] - cols["start"], 1)
    cols["amount"] = cols["amount"] * kept
    cols["end"] = clipped_end
    n = len(cols["start"])
    order = np.lexsort((cols["itemid"], cols["start"], cols["stay"]))
    cols = {k: v[order] for k, v in cols.items()}
    amount = round_to(cols["amount"], 4)
    rate = cols["rate"]
    ml = cols["amountuom"] == code("ml")
    total = np.where(np.isnan(cols["total"]) & ml, np.maximum(amount, 0), cols["total"])
    return arrow_table(
        "inputevents",
        {
            **icu_event_ids(st, cols["stay"], rng.integers(10000, 99999, n)),
            "starttime": time_array(cols["start"]),
            "endtime": time_array(cols["end"]),
            "storetime": time_array(cols["start"] + rng.integers(0, 60, n) * 60),
            "itemid": int_array(cols["itemid"]),
            "amount": float_array(amount),
            "amountuom": text.to_arrow(cols["amountuom"]),
            "rate": float_array(rate),
            "rateuom": text.to_arrow(cols["rateuom"]),
            "orderid": int_array(cols["orderid"]),
            "linkorderid": int_array(cols["linkorderid"]),
            "ordercategoryname": text.to_arrow(cols["cat"]),
            "secondaryordercategoryname": text.to_arrow(cols["sec"]),
            "ordercomponenttypedescription": text.to_arrow(cols["comp"]),
            "ordercategorydescription": text.to_arrow(cols["catdesc"]),
            "patientweight": float_array(np.round(cols["weight"], 1)),
            "totalamount": float_array(total),
            "totalamountuom": text.to_arrow(np.where(np.isnan(total), -1, code("ml"))),
            "isopenbag": int_array(np.zeros(n, dtype=np.int64)),
            "continueinnextdept": int_array(np.zeros(n, dtype=np.int64)),
            "statusdescription": text.to_arrow(cols["status"]),
            "originalamount": float_array(amount),
            "originalrate": float_array(rate),
        },
    )
