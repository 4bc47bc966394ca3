"""The synthetic world writes MIMIC-IV v3.1 tables: columns, types, ids, units, habits."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from sepsisrl.mimic.schema import TABLES

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def read(world_dir: Path, name: str) -> pa.Table:
    schema = TABLES[name]
    path = world_dir / f"{schema.relpath}.csv.gz"
    return pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types=schema.arrow_schema(), strings_can_be_null=True
        ),
    )


@pytest.fixture(scope="module")
def t(world_dir: Path):
    cache: dict[str, pa.Table] = {}

    def get(name: str) -> pa.Table:
        if name not in cache:
            cache[name] = read(world_dir, name)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(TABLES))
def test_every_table_has_mimic_columns_in_order(world_dir: Path, name: str):
    schema = TABLES[name]
    path = world_dir / f"{schema.relpath}.csv.gz"
    assert path.is_file(), f"{path} missing"
    with gzip.open(path, "rt") as fh:
        header = fh.readline().rstrip("\n")
    assert header == ",".join(schema.column_names)


@pytest.mark.parametrize("name", list(TABLES))
def test_every_table_parses_with_mimic_types(t, name: str):
    table = t(name)  # raises if any value does not parse as its declared type
    assert table.num_rows > 0
    assert table.schema.equals(TABLES[name].arrow_schema())


def test_timestamps_and_dates_use_mimic_formats(world_dir: Path):
    for name, schema in TABLES.items():
        path = world_dir / f"{schema.relpath}.csv.gz"
        with gzip.open(path, "rt") as fh:
            lines = [fh.readline() for _ in range(200)]
        rows = list(
            pacsv.read_csv(
                pa.py_buffer("".join(lines).encode()),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in schema.column_names}
                ),
            ).to_pylist()
        )
        for col, typ in schema.columns:
            values = [r[col] for r in rows if r[col] not in (None, "")]
            if typ == "timestamp":
                assert all(TIMESTAMP.match(v) for v in values), (name, col, values[:3])
            if typ == "date":
                assert all(DATE.match(v) for v in values), (name, col, values[:3])


def test_ids_are_consistent_across_tables(t):
    patients = set(t("patients")["subject_id"].to_pylist())
    adm = t("admissions")
    icu = t("icustays")
    hadm = set(adm["hadm_id"].to_pylist())
    stays = set(icu["stay_id"].to_pylist())
    assert len(stays) == icu.num_rows == 400
    assert set(adm["subject_id"].to_pylist()) <= patients
    assert set(icu["hadm_id"].to_pylist()) <= hadm
    for name in ("chartevents", "inputevents", "outputevents"):
        assert set(pc.unique(t(name)["stay_id"]).to_pylist()) <= stays, name
    for name in ("labevents", "prescriptions", "microbiologyevents"):
        assert set(pc.unique(t(name)["hadm_id"]).to_pylist()) <= hadm, name
    # icu stays lie inside their admission
    a = {r["hadm_id"]: r for r in adm.to_pylist()}
    for r in icu.to_pylist():
        assert (
            a[r["hadm_id"]]["admittime"]
            <= r["intime"]
            < r["outtime"]
            <= a[r["hadm_id"]]["dischtime"]
        )


def test_every_charted_item_is_in_the_dictionaries(t):
    d_items = set(t("d_items")["itemid"].to_pylist())
    d_lab = set(t("d_labitems")["itemid"].to_pylist())
    for name in ("chartevents", "inputevents", "outputevents"):
        assert set(pc.unique(t(name)["itemid"]).to_pylist()) <= d_items, name
    assert set(pc.unique(t("labevents")["itemid"]).to_pylist()) <= d_lab


def _values(table: pa.Table, itemid: int, col: str = "valuenum") -> np.ndarray:
    sub = table.filter(pc.equal(table["itemid"], itemid))
    return sub[col].to_numpy(zero_copy_only=False)


def test_spec_item_ids_are_present_with_their_units(t):
    ce = t("chartevents")
    units = {}
    for r in ce.group_by(["itemid", "valueuom"]).aggregate([]).to_pylist():
        units.setdefault(r["itemid"], set()).add(r["valueuom"])
    expected = {
        220045: "bpm",
        220052: "mmHg",
        220181: "mmHg",
        220050: "mmHg",
        220179: "mmHg",
        220051: "mmHg",
        220180: "mmHg",
        225312: "mmHg",
        220210: "insp/min",
        223762: "°C",
        223761: "°F",
        220277: "%",
        220339: "cmH2O",
        226512: "kg",
    }
    for itemid, unit in expected.items():
        assert unit in units.get(itemid, set()), (itemid, units.get(itemid))
    for itemid in (220739, 223900, 223901, 223835, 226531):
        assert itemid in units, itemid


def test_temperature_is_charted_in_celsius_and_fahrenheit(t):
    ce = t("chartevents")
    c = _values(ce, 223762)
    f = _values(ce, 223761)
    assert len(c) > 100 and len(f) > 100
    assert 35.5 < np.nanmedian(c) < 38.5
    assert 96 < np.nanmedian(f) < 101


def test_fio2_is_charted_in_percent_with_a_few_fractions(t):
    v = _values(t("chartevents"), 223835)
    v = v[~np.isnan(v)]
    assert len(v) > 100
    percent = (v >= 21) & (v <= 100)
    fraction = (v >= 0.21) & (v <= 1.0)
    assert percent.mean() > 0.9
    assert 0 < fraction.mean() < 0.1


def test_gcs_is_three_components_charted_together(t):
    ce = t("chartevents")
    gcs = ce.filter(pc.is_in(ce["itemid"], pa.array([220739, 223900, 223901])))
    per_time = gcs.group_by(["stay_id", "charttime"]).aggregate([("itemid", "count_distinct")])
    counts = per_time["itemid_count_distinct"].to_numpy()
    assert (counts == 3).mean() > 0.9
    verbal = set(_values(ce, 223900, "value").tolist())
    assert "No Response-ETT" in verbal and "Oriented" in verbal
    eye = _values(ce, 220739)
    assert set(np.unique(eye[~np.isnan(eye)])) <= {1, 2, 3, 4}


def test_arterial_and_noninvasive_pressures_are_both_charted(t):
    ce = t("chartevents")
    assert len(_values(ce, 220052)) > 1000
    assert len(_values(ce, 220181)) > 1000
    assert len(_values(ce, 225312)) > 0


def test_vasopressors_use_mimic_rate_units(t):
    ie = t("inputevents")
    rows = ie.group_by(["itemid", "rateuom"]).aggregate([]).to_pylist()
    units = {}
    for r in rows:
        units.setdefault(r["itemid"], set()).add(r["rateuom"])
    assert units[221906] == {"mcg/kg/min"}  # norepinephrine
    assert units[222315] == {"units/hour"}  # vasopressin
    # phenylephrine: mcg/kg/min, rarely mcg/min (tests/test_synth_charting.py forces it)
    assert units.get(221749, {"mcg/kg/min"}) <= {"mcg/kg/min", "mcg/min"}


def test_fluids_are_infusions_with_start_end_rate_amount(t):
    ie = t("inputevents")
    fluids = ie.filter(pc.is_in(ie["itemid"], pa.array([225158, 225828, 220949, 225159, 225823])))
    push = pc.equal(fluids["ordercategoryname"], "03-IV Fluid Bolus")
    boluses, fluids = fluids.filter(push), fluids.filter(pc.invert(push))
    # boluses charted as MIMIC does: one minute, an amount, no rate
    assert boluses.num_rows > 20
    end = boluses["endtime"].cast(pa.int64()).to_numpy()
    minutes = (end - boluses["starttime"].cast(pa.int64()).to_numpy()) / 60
    assert (minutes == 1).all()
    assert boluses["rate"].null_count == boluses.num_rows
    assert set(boluses["ordercategorydescription"].to_pylist()) == {"Bolus"}
    assert (boluses["amount"].to_numpy() >= 100).all()
    assert fluids.num_rows > 100
    start = fluids["starttime"].cast(pa.int64()).to_numpy()
    end = fluids["endtime"].cast(pa.int64()).to_numpy()
    amount = fluids["amount"].to_numpy()
    rate = fluids["rate"].to_numpy()
    assert (end > start).all()
    hours = (end - start) / 3600
    # amount = rate x duration (mL/hour x h), up to rounding
    assert np.allclose(amount, rate * hours, rtol=0.02, atol=1.0)
    assert set(fluids["rateuom"].to_pylist()) == {"mL/hour"}


def test_packed_cells_exist_and_are_not_crystalloids(t):
    ie = t("inputevents")
    prbc = ie.filter(pc.equal(ie["itemid"], 225168))
    assert prbc.num_rows > 0
    assert set(prbc["ordercategoryname"].to_pylist()) == {"07-Blood Products"}


def test_urine_is_in_outputevents(t):
    oe = t("outputevents")
    foley = _values(oe, 226559, "value")
    assert len(foley) > 1000
    assert 20 < np.median(foley) < 200
    assert set(oe["valueuom"].to_pylist()) == {"ml"}  # MIMIC-IV writes ml


def test_antibiotics_have_routes_including_topical(t):
    rx = t("prescriptions")
    routes = set(rx["route"].to_pylist())
    assert {"IV", "TP", "PO/NG"} <= routes
    drugs = set(rx["drug"].to_pylist())
    assert "Vancomycin" in drugs and "Bacitracin Ointment" in drugs
    # a topical whose name matches a systemic antibiotic: only its route (TP) excludes it
    npb = rx.filter(pc.equal(rx["drug"], "Neomycin-Polymyxin-Bacitracin"))
    assert npb.num_rows > 0 and set(npb["route"].to_pylist()) == {"TP"}
    metro = rx.filter(pc.equal(rx["drug"], "MetRONIDAZOLE (FLagyl)"))
    assert {"IV", "PO/NG"} <= set(metro["route"].to_pylist())


def test_some_cultures_are_date_only(t):
    mb = t("microbiologyevents")
    no_time = pc.is_null(mb["charttime"]).to_numpy(zero_copy_only=False)
    assert 0.005 < no_time.mean() < 0.1  # the demo: 6 % of rows, 3 % of specimens
    assert pc.all(pc.is_valid(mb["chartdate"])).as_py()


def test_intended_artifacts_are_present(t):
    ce = t("chartevents")
    hr = _values(ce, 220045)
    assert ((hr < 0) | (hr > 300)).sum() > 0  # impossible heart rates
    assert pc.sum(pc.is_null(ce["value"])).as_py() > 0  # null values
    sample = ce.slice(0, 200_000).select(["stay_id", "charttime", "itemid", "valuenum"])
    dup = sample.group_by(["stay_id", "charttime", "itemid", "valuenum"]).aggregate(
        [("itemid", "count")]
    )
    assert (dup["itemid_count"].to_numpy() > 1).any()  # duplicated rows


def test_chartevents_volume_is_mimic_like_by_default(world):
    per_stay = world.rows["chartevents"] / world.n_stays
    assert 3500 < per_stay < 6000, per_stay


def test_truth_sidecar_is_next_to_not_inside_the_tree(world):
    assert world.truth_dir.parent == world.out_dir.parent
    assert not any(p.suffix == ".parquet" for p in world.out_dir.rglob("*"))
    assert sorted(p.name for p in world.out_dir.iterdir()) == ["hosp", "icu"]
    for f in ("world.json", "stays.parquet", "hourly.parquet"):
        assert (world.truth_dir / f).is_file()
