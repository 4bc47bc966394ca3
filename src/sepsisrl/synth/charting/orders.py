"""``prescriptions`` and ``microbiologyevents``: the orders of the infection work-ups and
the ward, and the cultures with their results."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sepsisrl.synth import catalog
from sepsisrl.synth.charting.common import (
    HOUR,
    MISSING_TIME,
    ChartContext,
    arrow_table,
    float_array,
    int_array,
    str_const,
    time_array,
)
from sepsisrl.synth.population import SECONDS_PER_DAY


def _take(values: list, idx: np.ndarray, typ: pa.DataType | None = None) -> pa.Array:
    """``values[idx]`` as an Arrow array (values: one entry per distinct drug; strings unless
    ``typ`` says otherwise)."""
    return pc.take(pa.array(values, typ or pa.string()), pa.array(idx, pa.int64()))


def prescriptions(
    ctx: ChartContext, workups: dict[str, np.ndarray], prophylaxis_h: np.ndarray
) -> pa.Table:
    """Antibiotic courses of the work-ups (some azithromycin and metronidazole given PO/NG),
    escalation and prophylaxis; topical antibiotics; admission orders and routine orders
    through the ICU stay (``charting.routine_orders_per_icu_day``). The drugs are the
    catalogue's ``formulary``.

    ``workups["antibiotic_reorder_h"]`` (per stay, nan: none; ``cohort.antibiotic_reorder``):
    the course running at ICU admission is ordered again then, each of its drugs (and an
    escalation started before the ICU) with the same drug, route and course end; the pre-ICU
    order stops where its re-order starts. Draws nothing from ``ctx.rng``."""
    orders = _Orders()
    # the order of these steps is the order of the random draws: keep it
    _antibiotic_orders(ctx, orders, workups, prophylaxis_h)
    _ward_orders(ctx, orders)
    return _prescriptions_table(ctx, orders)


class _Orders:
    """Prescription rows as parts (stay, start hour, stop hour, drug index) and their drugs."""

    def __init__(self) -> None:
        self.drugs: list[tuple] = []
        self._index: dict[tuple, int] = {}
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def emit(self, s: np.ndarray, start_h: np.ndarray, stop_h: np.ndarray, drug: tuple) -> None:
        if drug not in self._index:
            self._index[drug] = len(self.drugs)
            self.drugs.append(drug)
        self.parts.append((s, start_h, stop_h, np.full(len(s), self._index[drug])))

    def emit_course(
        self,
        s: np.ndarray,
        start_h: np.ndarray,
        stop_h: np.ndarray,
        reorder_h: np.ndarray,
        drug: tuple,
    ) -> None:
        """A course's order, and its ICU re-order where ``reorder_h`` (per row) is set."""
        again = ~np.isnan(reorder_h)
        self.emit(s, start_h, np.where(again, reorder_h, stop_h), drug)
        self.emit(s[again], reorder_h[again], stop_h[again], drug)


def _antibiotic_orders(
    ctx: ChartContext,
    orders: _Orders,
    workups: dict[str, np.ndarray],
    prophylaxis_h: np.ndarray,
) -> None:
    """Empiric courses of each work-up (with their ICU re-orders), escalation, prophylaxis."""
    rng, st, ch = ctx.rng, ctx.stays, ctx.cfg.charting
    formulary = catalog.FORMULARY
    intime_h = st.pre_icu_h.astype(np.float64)
    reorder = workups["antibiotic_reorder_h"]
    n_w = workups["antibiotic_h"].shape[1]
    for j in range(n_w):
        abx = workups["antibiotic_h"][:, j]
        stop = workups["antibiotic_stop_h"][:, j]
        # the re-order belongs to the course running at ICU admission (at most one)
        again = np.where((abx < intime_h) & (stop > reorder), reorder, np.nan)
        has = np.flatnonzero(~np.isnan(abx))
        regimen = rng.integers(0, len(formulary.empiric_regimens), len(has))
        for r_i, reg in enumerate(formulary.empiric_regimens):
            sel = has[regimen == r_i]
            for drug_i, drug in enumerate(reg):
                # the second drug of a pair is sometimes started a little later
                lag = 0.0 if drug_i == 0 else 0.5
                if drug.drug in formulary.enteral:
                    oral = rng.random(len(sel)) < ch.antibiotic_enteral_fraction
                    o = sel[oral]
                    enteral = drug._replace(route="PO/NG")
                    orders.emit_course(o, abx[o] + lag, stop[o], again[o] + lag, enteral)
                    sel = sel[~oral]
                orders.emit_course(sel, abx[sel] + lag, stop[sel], again[sel] + lag, drug)
        esc = workups["escalation_h"][:, j]
        e = np.flatnonzero(~np.isnan(esc))
        esc_again = np.where(esc[e] < intime_h[e], again[e], np.nan)
        orders.emit_course(e, esc[e], stop[e] + 24.0, esc_again, formulary.escalation)
    p = np.flatnonzero(~np.isnan(prophylaxis_h))
    orders.emit(p, prophylaxis_h[p], prophylaxis_h[p] + 24.0, formulary.prophylaxis)


def _ward_orders(ctx: ChartContext, orders: _Orders) -> None:
    """Topical antibiotics, admission orders and routine orders spread over the ICU stay
    (none may count as a systemic antibiotic)."""
    rng, st, ch = ctx.rng, ctx.stays, ctx.cfg.charting
    formulary, hab, emit = catalog.FORMULARY, ch.prescriptions, orders.emit
    icu_h = st.pre_icu_h.astype(np.float64)
    top = np.flatnonzero(rng.random(st.n) < hab.first_topical_fraction)
    emit(top, icu_h[top] + rng.uniform(0, 24, len(top)), icu_h[top] + 72.0, formulary.topical[0])
    others = [*formulary.topical[1:], formulary.topical_polymyxin]
    for drug, fraction in zip(others, hab.other_topical_fraction, strict=True):
        sel = np.flatnonzero(rng.random(st.n) < fraction)
        emit(sel, icu_h[sel] + rng.uniform(0, 24, len(sel)), icu_h[sel] + 96.0, drug)
    for drug in formulary.admission_orders:
        sel = np.flatnonzero(rng.random(st.n) < hab.admission_order_fraction)
        emit(
            sel,
            icu_h[sel] + rng.uniform(0, 6, len(sel)),
            icu_h[sel] + rng.uniform(24, 120, len(sel)),
            drug,
        )
    los_h = np.maximum(ctx.outtime - ctx.intime, 0) / HOUR
    n_orders = rng.poisson(ch.routine_orders_per_icu_day * los_h / 24.0)
    s_r = np.repeat(np.arange(st.n), n_orders)
    start_r = icu_h[s_r] + rng.random(len(s_r)) * los_h[s_r]
    pick = rng.integers(0, len(formulary.routine_orders), len(s_r))
    for k, drug in enumerate(formulary.routine_orders):
        sel = pick == k
        emit(s_r[sel], start_r[sel], start_r[sel] + rng.uniform(12, 96, int(sel.sum())), drug)


def _prescriptions_table(ctx: ChartContext, orders: _Orders) -> pa.Table:
    """One row per order, sorted by stay, start and drug name."""
    st, adm, parts, drugs = ctx.stays, ctx.admittime, orders.parts, orders.drugs
    s = np.concatenate([q[0] for q in parts]).astype(np.int64)
    n = len(s)
    if n == 0:
        return arrow_table("prescriptions", {"subject_id": pa.array([], pa.int64())})
    start = (adm[s] + np.concatenate([q[1] for q in parts]) * HOUR).astype(np.int64) // 60 * 60
    stop = (adm[s] + np.concatenate([q[2] for q in parts]) * HOUR).astype(np.int64) // 60 * 60
    did = np.concatenate([q[3] for q in parts])
    _, name_rank = np.unique(np.array([d[0] for d in drugs]), return_inverse=True)
    order = np.lexsort((name_rank[did], start, s))
    s, start, stop, did = s[order], start[order], stop[order], did[order]
    seq = ctx.id_base % 100000 + np.arange(n)
    col = {k: [d[k] for d in drugs] for k in range(9)}
    return arrow_table(
        "prescriptions",
        {
            "subject_id": int_array(st.subject_id[s]),
            "hadm_id": int_array(st.hadm_id[s]),
            "pharmacy_id": int_array(ctx.id_base + np.arange(n)),
            "poe_id": pc.binary_join_element_wise(
                pc.cast(int_array(st.subject_id[s]), pa.string()),
                pc.cast(int_array(seq), pa.string()),
                "-",
            ),
            "poe_seq": int_array(seq),
            "order_provider_id": _take(ctx.attending_provider, st.attending[s]),
            "starttime": time_array(start),
            "stoptime": time_array(stop),
            "drug_type": str_const("MAIN", n),
            "drug": _take(col[0], did),
            "formulary_drug_cd": _take(col[1], did),
            "gsn": _take([g or None for g in col[2]], did),
            "ndc": _take(col[3], did),
            "prod_strength": _take(col[4], did),
            "form_rx": str_const(None, n),
            "dose_val_rx": _take(col[5], did),
            "dose_unit_rx": _take(col[6], did),
            "form_val_disp": _take(col[5], did),
            "form_unit_disp": _take(col[6], did),
            "doses_per_24_hrs": _take([float(x) if x else None for x in col[7]], did, pa.float64()),
            "route": _take(col[8], did),
        },
    )


def microbiologyevents(
    ctx: ChartContext, workups: dict[str, np.ndarray], screen_h: np.ndarray, infected: np.ndarray
) -> pa.Table:
    """Blood cultures (often two sets), urine or sputum cultures and MRSA screens; a positive
    culture of an infected stay grows an organism tested against the catalogue's antibiotics."""
    # the order of these steps is the order of the random draws: keep it
    specimens = _specimens(ctx, workups, screen_h)
    out = _culture_results(ctx, specimens, infected)
    return _microbiology_table(ctx, out)


def _specimens(
    ctx: ChartContext, workups: dict[str, np.ndarray], screen_h: np.ndarray
) -> list[tuple[int, float, str]]:
    """(stay, hour, specimen kind) of every specimen, sorted by stay and hour."""
    rng, hab = ctx.rng, ctx.cfg.charting.microbiology
    specimens: list[tuple[int, float, str]] = []
    n_w = workups["culture_h"].shape[1]
    for j in range(n_w):
        c = workups["culture_h"][:, j]
        for i in np.flatnonzero(~np.isnan(c)).tolist():
            specimens.append((i, c[i], "blood"))
            if rng.random() < hab.second_blood_set:
                specimens.append((i, c[i] + 0.2, "blood"))  # second set
        c2 = workups["culture2_h"][:, j]
        for i in np.flatnonzero(~np.isnan(c2)).tolist():
            kind = "urine" if rng.random() < hab.urine_not_sputum else "sputum"
            specimens.append((i, c2[i], kind))
    for i in np.flatnonzero(~np.isnan(screen_h)).tolist():
        specimens.append((i, screen_h[i], "mrsa"))
    specimens.sort(key=lambda x: (x[0], x[1]))
    return specimens


def _culture_results(
    ctx: ChartContext, specimens: list[tuple[int, float, str]], infected: np.ndarray
) -> dict[str, list]:
    """One row per negative specimen, or per antibiotic tested on a positive one."""
    rng, ch = ctx.rng, ctx.cfg.charting
    hab = ch.microbiology
    keys = ("stay", "specimen", "chartdate", "charttime", "kind", "org", "ab", "interp")
    out: dict[str, list] = {k: [] for k in (*keys, "storetime")}

    def add(row: tuple, store: int) -> None:
        for key, val in zip(keys, row, strict=True):
            out[key].append(val)
        out["storetime"].append(store)

    for spec_no, (i, hour, kind) in enumerate(specimens):
        t = int(ctx.admittime[i] + hour * HOUR) // 60 * 60
        date_only = rng.random() < ch.date_only_culture_fraction[kind]
        chartdate = t - t % 86400
        store = t + int(rng.uniform(1.5, 4.0) * SECONDS_PER_DAY) // 60 * 60
        p_positive = hab.positive_culture.blood if kind == "blood" else hab.positive_culture.other
        positive = kind != "mrsa" and infected[i] and rng.random() < p_positive
        charttime = MISSING_TIME if date_only else t
        common = (i, ctx.id_base + spec_no, chartdate, charttime, kind)
        if positive:
            org = catalog.ORGANISMS[int(rng.integers(0, len(catalog.ORGANISMS)))]
            for ab in catalog.ANTIBIOTICS_TESTED:
                add((*common, org, ab, "S" if rng.random() < hab.susceptible else "R"), store)
        else:
            add((*common, None, None, None), store)
    return out


def _microbiology_table(ctx: ChartContext, out: dict[str, list]) -> pa.Table:
    st = ctx.stays
    n = len(out["stay"])
    if n == 0:
        return arrow_table("microbiologyevents", {"microevent_id": pa.array([], pa.int64())})
    s = np.array(out["stay"], dtype=np.int64)
    spec = [catalog.SPECIMENS[k] for k in out["kind"]]
    org_id = np.array([o[0] if o else -1 for o in out["org"]])
    ab_id = np.array([a[0] if a else -1 for a in out["ab"]])
    store = np.array(out["storetime"], dtype=np.int64)
    return arrow_table(
        "microbiologyevents",
        {
            "microevent_id": int_array(ctx.id_base + np.arange(n)),
            "subject_id": int_array(st.subject_id[s]),
            "hadm_id": int_array(st.hadm_id[s]),
            "micro_specimen_id": int_array(np.array(out["specimen"])),
            "order_provider_id": pa.array(
                [ctx.attending_provider[a] for a in st.attending[s].tolist()]
            ),
            "chartdate": time_array(np.array(out["chartdate"], dtype=np.int64)),
            "charttime": time_array(np.array(out["charttime"], dtype=np.int64)),
            "spec_itemid": int_array(np.array([x[0] for x in spec])),
            "spec_type_desc": pa.array([x[1] for x in spec]),
            "test_seq": int_array(np.ones(n, dtype=np.int64)),
            "storedate": time_array(store - store % 86400),
            "storetime": time_array(store),
            "test_itemid": int_array(np.array([x[2] for x in spec])),
            "test_name": pa.array([x[3] for x in spec]),
            "org_itemid": int_array(org_id, missing=-1),
            "org_name": pa.array([o[1] if o else None for o in out["org"]], pa.string()),
            "isolate_num": int_array(np.where(org_id > 0, 1, -1), missing=-1),
            "quantity": str_const(None, n),
            "ab_itemid": int_array(ab_id, missing=-1),
            "ab_name": pa.array([a[1] if a else None for a in out["ab"]], pa.string()),
            "dilution_text": pa.array([("<=1" if a else None) for a in out["ab"]], pa.string()),
            "dilution_comparison": pa.array(
                [("<=" if a else None) for a in out["ab"]], pa.string()
            ),
            "dilution_value": float_array(np.where(ab_id > 0, 1.0, np.nan)),
            "interpretation": pa.array(out["interp"], pa.string()),
            "comments": pa.array([None if o else "NO GROWTH." for o in out["org"]], pa.string()),
        },
    )
