"""``outputevents``: urine charted when due, bladder irrigation, drains."""

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
    stay_major,
    str_const,
    time_array,
)


def outputevents(ctx: ChartContext, hours: np.ndarray | None = None) -> pa.Table:
    """Urine charted when due (the urine collected since the previous chart; Foley, void or
    another route per stay, some stays on bladder irrigation), drains, stool and gastric output."""
    ch, rng, st, H = ctx.cfg.charting, ctx.rng, ctx.stays, ctx.hourly
    icu = H["in_icu"].astype(bool)
    if hours is not None:
        icu &= hours
    rows = stay_major(H, np.flatnonzero(icu))
    if len(rows) == 0:
        return TABLES["outputevents"].arrow_schema().empty_table()
    stay = H["stay"][rows]
    hh = H["h"][rows].astype(np.int64)
    R = len(rows)
    t_end = ctx.admittime[stay] + (hh + 1) * HOUR  # urine is charted at the end of the hour
    urine = H["urine_ml"][rows].astype(np.float64)
    foley, irrigant, route_item = _urine_routes(ctx)
    # chart when due: about every other hour for a Foley, every few hours otherwise (voids,
    # bladder irrigation)
    p_due = np.where(
        irrigant[stay],
        ch.gu_irrigant_chart_per_hour,
        np.where(foley[stay], ch.foley_chart_per_hour, ch.void_chart_per_hour),
    )
    due = rng.random(R) < p_due
    idx, value = _urine_since_last_chart(stay, urine, due, ctx.urine_carry)
    k = len(idx)
    ev = Events()
    out_items = catalog.OUTPUT
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
    other = rng.random(R) < ch.outputevents.other_output_per_hour
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
    return arrow_table(
        "outputevents",
        {
            **icu_event_ids(st, cols["stay"], rng.integers(10000, 99999, n)),
            "charttime": time_array(cols["t"]),
            "storetime": time_array(cols["t"] + rng.integers(0, 60, n) * 60),
            "itemid": int_array(cols["itemid"]),
            "value": float_array(cols["value"]),
            "valueuom": str_const("ml", n),
        },
    )


def _urine_routes(ctx: ChartContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per stay, from its own stream: on a Foley, on bladder irrigation, the urine item."""
    ch, st = ctx.cfg.charting, ctx.stays
    u = np.random.default_rng(ctx.id_base + ch.stream_offsets.urine_route).random((st.n, 3))
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
            u[:, 2] < ch.outputevents.void_without_foley,
            out_items["void"].itemid,
            other_urine[(u[:, 2] * 100).astype(int) % len(other_urine)],
        ),
    )
    return foley, irrigant, route_item


def _urine_since_last_chart(
    stay: np.ndarray, urine: np.ndarray, due: np.ndarray, carry: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows charted (``due``) and their values: the urine collected since the stay's previous
    chart. Rows are sorted by (stay, hour). Without ``carry`` the stay's last row is charted
    too (its final collection); with it (per stay, charting hour by hour) urine not yet charted
    is carried into the next call, and ``carry`` is updated in place."""
    R = len(stay)
    first_of_stay = np.ones(R, dtype=bool)
    first_of_stay[1:] = stay[1:] != stay[:-1]
    last_of_stay = np.ones(R, dtype=bool)
    last_of_stay[:-1] = stay[1:] != stay[:-1]
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
    return idx, value
