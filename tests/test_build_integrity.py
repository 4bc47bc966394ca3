"""Raw-table integrity before any clinical logic (``integrity:``, dataset/ingest.py), unit and
dose plausibility of the infusions (dataset/measurements.py), readable errors for damaged files,
the message for an empty cohort, and the content fingerprint of the source."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from sepsisrl.config import ConfigError
from sepsisrl.dataset.actions import NoDosesError
from sepsisrl.dataset.builder import build
from sepsisrl.dataset.config import load_build_config
from sepsisrl.dataset.coverage import CoverageError
from sepsisrl.dataset.ingest import IntegrityError, run_ingest
from sepsisrl.dataset.measurements import ImplausibleDoseError, UnitError
from sepsisrl.mimic.source import SourceFormatError, open_source
from sepsisrl.synth.world import generate_world

from .build_fixtures import (
    NACL_09,
    NOREPINEPHRINE,
    PHENYLEPHRINE,
    WEIGHT_KG,
    IngestTables,
    at,
    build_measurements,
)
from .conftest import small_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-stay world at physiology-only density (about a second to generate)."""
    root = tmp_path_factory.mktemp("tiny") / "raw"
    cfg = small_config(**{"charting.density": 0.0})
    return generate_world(root, 40, seed=3, cfg=cfg).out_dir


def variant(tiny: Path, dest: Path, rel: str, *sql: str, fmt: str = "csv.gz") -> Path:
    """A copy of ``tiny`` (links) whose table ``rel`` (e.g. ``icu/icustays``) is rewritten
    after the statements ``sql`` ran on it as table ``t`` (all columns text)."""
    for f in sorted(tiny.rglob("*")):
        if f.is_file() and f.relative_to(tiny).as_posix() != f"{rel}.csv.gz":
            (dest / f.relative_to(tiny)).parent.mkdir(parents=True, exist_ok=True)
            (dest / f.relative_to(tiny)).symlink_to(f)
    con = duckdb.connect()
    raw = f"read_csv('{tiny / rel}.csv.gz', all_varchar=true)"
    con.execute(f"CREATE TABLE t AS SELECT * FROM {raw}")
    for q in sql:
        con.execute(q)
    opts = "FORMAT csv, HEADER" + (", COMPRESSION gzip" if fmt == "csv.gz" else "")
    con.execute(f"COPY t TO '{dest / rel}.{fmt}' ({opts})")
    con.close()
    return dest


def ingest(root: Path, out: Path, **overrides) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return run_ingest(open_source(root), load_build_config(overrides=overrides), out)


def rows(path: Path) -> int:
    return pq.read_metadata(path).num_rows


# ---- valid data: every check counts zero, the ingested tables are those without checks


def test_valid_source_counts_zero_and_ingests_what_the_unchecked_path_ingests(tiny, tmp_path):
    audit = ingest(tiny, tmp_path / "checked")
    integrity = audit["integrity"]
    assert integrity["rows_read"]["icustays"] == 40
    for key in ("exact_duplicate_rows_dropped", "duplicate_key_rows_dropped", "orphans_dropped",
                "unparseable_times"):  # fmt: skip
        assert set(integrity[key].values()) == {0}, key
    plain = tmp_path / "plain"
    plain.mkdir()
    run_ingest(open_source(tiny), load_build_config(), plain, check_integrity=False)
    for f in sorted((tmp_path / "checked").glob("*.parquet")):
        assert f.read_bytes() == (plain / f.name).read_bytes(), f.name


# ---- exact duplicates, keys, references


def test_duplicated_icustays_rows_are_dropped_and_counted(tiny, tmp_path):
    root = variant(tiny, tmp_path / "raw", "icu/icustays", "INSERT INTO t SELECT * FROM t")
    audit = ingest(root, tmp_path / "ingest")
    assert rows(tmp_path / "ingest" / "icustays.parquet") == 40  # not 80
    assert audit["integrity"]["exact_duplicate_rows_dropped"]["icustays"] == 40
    assert audit["integrity"]["rows_read"]["icustays"] == 80


def test_duplicated_inputevents_rows_count_once_or_are_refused(tiny, tmp_path):
    root = variant(tiny, tmp_path / "raw", "icu/inputevents", "INSERT INTO t SELECT * FROM t")
    audit = ingest(root, tmp_path / "dup")
    clean = tmp_path / "clean"
    ingest(tiny, clean)
    assert (tmp_path / "dup" / "inputs.parquet").read_bytes() == (
        clean / "inputs.parquet"
    ).read_bytes()
    assert audit["integrity"]["exact_duplicate_rows_dropped"]["inputevents"] > 0
    with pytest.raises(IntegrityError) as err:
        ingest(root, tmp_path / "refused", **{"integrity.exact_duplicates": "refuse"})
    msg = str(err.value)
    assert msg.startswith("icu/inputevents.csv.gz: ")
    assert "repeat another row exactly" in msg and "copies=2" in msg
    assert "integrity.exact_duplicates: drop" in msg


@pytest.mark.parametrize(
    ("rel", "key"),
    [("icu/icustays", "stay_id"), ("hosp/admissions", "hadm_id"), ("hosp/patients", "subject_id")],
)  # fmt: skip
def test_a_key_on_two_different_rows_is_refused_naming_table_column_and_setting(
    tiny, tmp_path, rel, key
):
    # the first row again with one other value: not an exact duplicate
    other = {
        "icu/icustays": "first_careunit",
        "hosp/admissions": "race",
        "hosp/patients": "gender",
    }[rel]
    root = variant(
        tiny, tmp_path / "raw", rel,
        f"INSERT INTO t SELECT * REPLACE (coalesce({other}, '') || 'x' AS {other}) FROM t "
        f"ORDER BY {key} LIMIT 1",
    )  # fmt: skip
    with pytest.raises(IntegrityError) as err:
        ingest(root, tmp_path / "ingest")
    msg = str(err.value)
    assert msg.startswith(f"{rel}.csv.gz: column {key} must identify one row")
    assert f"1 value(s) are on more than one row with different content (e.g. {key}=" in msg
    assert "integrity.duplicate_keys: drop" in msg


def test_duplicate_stay_ids_are_dropped_and_counted_when_allowed(tiny, tmp_path):
    root = variant(
        tiny, tmp_path / "raw", "icu/icustays",
        "INSERT INTO t SELECT * REPLACE (los || '1' AS los) FROM t ORDER BY stay_id LIMIT 2",
    )  # fmt: skip
    audit = ingest(root, tmp_path / "ingest", **{"integrity.duplicate_keys": "drop"})
    assert rows(tmp_path / "ingest" / "icustays.parquet") == 38
    assert audit["integrity"]["duplicate_key_rows_dropped"]["icustays"] == 4


def test_stays_without_their_admission_are_refused_not_counted_as_no_sepsis(tiny, tmp_path):
    root = variant(
        tiny, tmp_path / "raw", "hosp/admissions",
        "DELETE FROM t WHERE hadm_id IN (SELECT hadm_id FROM t ORDER BY hadm_id LIMIT 3)",
    )  # fmt: skip
    with pytest.raises(IntegrityError) as err:
        ingest(root, tmp_path / "refused")
    msg = str(err.value)
    assert "3 ICU stay(s) whose admission (hadm_id) is not in hosp/admissions (e.g. " in msg
    assert "stay_id=" in msg and "integrity.orphans: drop" in msg
    audit = ingest(root, tmp_path / "dropped", **{"integrity.orphans": "drop"})
    assert rows(tmp_path / "dropped" / "icustays.parquet") == 37
    assert audit["integrity"]["orphans_dropped"]["stays_without_admission"] == 3


def test_a_stay_whose_admission_is_another_patients_is_refused(tiny, tmp_path):
    root = variant(
        tiny, tmp_path / "raw", "icu/icustays",
        "UPDATE t SET subject_id = (SELECT max(subject_id) FROM t) "
        "WHERE stay_id = (SELECT min(stay_id) FROM t)",
    )  # fmt: skip
    with pytest.raises(IntegrityError, match=r"1 ICU stay\(s\) whose admission belongs to another"):
        ingest(root, tmp_path / "ingest")


def test_no_admission_left_after_the_checks_is_refused_naming_the_file(tiny, tmp_path):
    root = variant(tiny, tmp_path / "raw", "hosp/admissions", "UPDATE t SET subject_id = '1'")
    with pytest.raises(IntegrityError) as err:
        ingest(root, tmp_path / "ingest", **{"integrity.orphans": "drop"})
    assert str(err.value).startswith("hosp/admissions.csv.gz: no row is left after the integrity")


# ---- rows that end before they start


def test_inputevents_ending_before_they_start_are_refused_then_dropped_with_a_warning(
    tiny, tmp_path, capsys
):
    root = variant(
        tiny, tmp_path / "raw", "icu/inputevents",
        "UPDATE t SET starttime = endtime, endtime = starttime WHERE rowid IN "
        "(SELECT rowid FROM t WHERE endtime > starttime ORDER BY rowid LIMIT 3)",
    )  # fmt: skip
    with pytest.raises(IntegrityError) as err:
        ingest(root, tmp_path / "refused")
    msg = str(err.value)
    assert msg.startswith("icu/inputevents.csv.gz: 3 row(s) with endtime before starttime (e.g. ")
    assert "stay_id=" in msg and "integrity.reversed_intervals: drop" in msg
    audit = ingest(root, tmp_path / "dropped", **{"integrity.reversed_intervals": "drop"})
    assert audit["integrity"]["reversed_intervals_dropped"]["inputevents"] == 3
    assert "warning: icu/inputevents.csv.gz: dropped 3 row(s) with a reversed interval" in (
        capsys.readouterr().err
    )
    clean = ingest(tiny, tmp_path / "clean")
    assert clean["integrity"]["reversed_intervals_dropped"]["inputevents"] == 0
    assert (
        rows(tmp_path / "dropped" / "inputs.parquet")
        == rows(tmp_path / "clean" / "inputs.parquet") - 3
    )


def test_a_stay_ending_before_it_starts_is_refused_naming_stay_and_times(tiny, tmp_path, capsys):
    root = variant(
        tiny, tmp_path / "raw", "icu/icustays",
        "UPDATE t SET outtime = strftime(intime::TIMESTAMP - INTERVAL 60 DAY, '%Y-%m-%d %H:%M:%S') "
        "WHERE stay_id = (SELECT min(stay_id) FROM t)",
    )  # fmt: skip
    with pytest.raises(IntegrityError) as err:
        ingest(root, tmp_path / "refused")
    msg = str(err.value)
    assert msg.startswith("icu/icustays.csv.gz: 1 row(s) with outtime before intime (e.g. stay_id=")
    assert "intime=" in msg and "integrity.reversed_intervals: drop" in msg
    audit = ingest(root, tmp_path / "dropped", **{"integrity.reversed_intervals": "drop"})
    assert audit["integrity"]["reversed_intervals_dropped"]["icustays"] == 1
    assert rows(tmp_path / "dropped" / "icustays.parquet") == 39
    assert "warning: icu/icustays.csv.gz: dropped 1 row(s)" in capsys.readouterr().err


def test_an_admission_ending_before_it_starts_is_refused_then_dropped_with_its_stays(
    tiny, tmp_path
):
    root = variant(
        tiny, tmp_path / "raw", "hosp/admissions",
        "UPDATE t SET dischtime = strftime(admittime::TIMESTAMP - INTERVAL 1 DAY, "
        "'%Y-%m-%d %H:%M:%S') WHERE hadm_id = (SELECT min(hadm_id) FROM t)",
    )  # fmt: skip
    with pytest.raises(
        IntegrityError, match=r"^hosp/admissions.csv.gz: 1 row\(s\) with dischtime "
    ):
        ingest(root, tmp_path / "refused")
    audit = ingest(root, tmp_path / "dropped", **{"integrity.reversed_intervals": "drop"})
    dropped = audit["integrity"]["reversed_intervals_dropped"]
    assert dropped["admissions"] == 1 and dropped["stays_of_reversed_admissions"] >= 1
    assert (
        rows(tmp_path / "dropped" / "icustays.parquet")
        == 40 - dropped["stays_of_reversed_admissions"]
    )
    assert audit["integrity"]["orphans_dropped"]["stays_without_admission"] == 0


# ---- units of chartevents / labevents


def test_a_lab_in_another_unit_is_refused_naming_item_and_units_then_dropped(
    tiny, tmp_path, capsys
):
    root = variant(
        tiny, tmp_path / "raw", "hosp/labevents",
        "UPDATE t SET valueuom = 'mg/dL' WHERE rowid IN "
        "(SELECT rowid FROM t WHERE itemid = '50813' ORDER BY rowid LIMIT 4)",
    )  # fmt: skip
    with pytest.raises(IntegrityError) as err:
        ingest(root, tmp_path / "refused")
    msg = str(err.value)
    assert msg.startswith("hosp/labevents.csv.gz: 4 row(s) of configured items carry another unit")
    assert "lactate (itemid 50813) 'mg/dL' x4 (expected 'mmol/L')" in msg
    assert "integrity.unit_mismatches: drop" in msg
    audit = ingest(root, tmp_path / "dropped", **{"integrity.unit_mismatches": "drop"})
    assert audit["integrity"]["unit_mismatch_rows_dropped"]["labevents"] == 4
    assert "warning: hosp/labevents.csv.gz: dropped 4 row(s)" in capsys.readouterr().err
    clean = ingest(tiny, tmp_path / "clean")
    assert clean["integrity"]["unit_mismatch_rows_dropped"] == {"chartevents": 0, "labevents": 0}
    assert (
        rows(tmp_path / "dropped" / "labs.parquet") == rows(tmp_path / "clean" / "labs.parquet") - 4
    )


def test_a_chart_unit_differing_only_in_case_and_spaces_is_the_expected_unit(tiny, tmp_path):
    root = variant(
        tiny, tmp_path / "raw", "icu/chartevents",
        "UPDATE t SET valueuom = ' BPM ' WHERE itemid = '220045'",
        "UPDATE t SET valueuom = 'kPa' "
        "WHERE rowid = (SELECT min(rowid) FROM t WHERE itemid = '220339')",
    )  # fmt: skip
    with pytest.raises(IntegrityError, match=r"1 row\(s\) .* peep \(itemid 220339\) 'kPa' x1"):
        ingest(root, tmp_path / "refused")


def test_expected_units_must_name_item_concepts():
    with pytest.raises(ConfigError, match=r"integrity.expected_units: \['lactat'\] are not"):
        load_build_config(overrides={"integrity.expected_units.lactat": "mmol/L"})


def test_header_only_admissions_is_refused_naming_the_file(tiny, tmp_path):
    root = variant(tiny, tmp_path / "raw", "hosp/admissions", "DELETE FROM t")
    with pytest.raises(CoverageError, match=r"hosp/admissions.csv.gz has a header but no data"):
        build(root, tmp_path / "ws", load_build_config())
    assert not (tmp_path / "ws").exists()


# ---- times and damaged files


@pytest.mark.parametrize(
    ("value", "shown"),
    [("strftime(intime::TIMESTAMP, '%d/%m/%Y %H:%M')", "/"),
     ("epoch(intime::TIMESTAMP)::BIGINT::VARCHAR", "")],
    ids=["day-first", "epoch"],
)  # fmt: skip
def test_unparseable_times_are_refused_then_taken_as_missing(tiny, tmp_path, value, shown):
    root = variant(
        tiny, tmp_path / "raw", "icu/icustays",
        f"UPDATE t SET intime = {value} WHERE stay_id = (SELECT min(stay_id) FROM t)",
    )  # fmt: skip
    with pytest.raises(IntegrityError) as err:
        ingest(root, tmp_path / "refused")
    msg = str(err.value)
    assert msg.startswith("icu/icustays.csv.gz: times that do not parse as YYYY-MM-DD HH:MM:SS")
    assert "column intime: 1 of 40 values, e.g. '" in msg and shown in msg
    assert "integrity.unparseable_times: drop" in msg
    audit = ingest(root, tmp_path / "dropped", **{"integrity.unparseable_times": "drop"})
    assert audit["integrity"]["unparseable_times"]["icustays.intime"] == 1


def test_text_in_a_numeric_column_names_file_line_column_and_value(tiny, tmp_path):
    root = variant(
        tiny, tmp_path / "raw", "icu/inputevents",
        "UPDATE t SET amount = 'abc' WHERE rowid = 4",
    )  # fmt: skip
    with pytest.raises(SourceFormatError) as err:
        ingest(root, tmp_path / "ingest")
    msg = str(err.value)
    assert msg.startswith("icu/inputevents.csv.gz line 6, column amount: 'abc' is not a number.")
    assert "\n" not in msg and "gzip -t" in msg


def test_non_utf8_bytes_and_a_truncated_gzip_give_one_line_errors(tiny, tmp_path):
    bad = tmp_path / "utf8"
    variant(tiny, bad, "hosp/prescriptions")
    path = bad / "hosp" / "prescriptions.csv.gz"
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    lines[3] += b"\xff\xfe"
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(SourceFormatError) as err:
        ingest(bad, tmp_path / "i1")
    msg = str(err.value)
    assert msg.startswith("hosp/prescriptions.csv.gz line 4: the text is not UTF-8.")
    assert "iconv" in msg and "\n" not in msg
    cut = tmp_path / "trunc"
    variant(tiny, cut, "icu/inputevents")
    path = cut / "icu" / "inputevents.csv.gz"
    packed = gzip.compress(gzip.decompress(path.read_bytes()))  # one gzip member
    path.write_bytes(packed[: len(packed) // 2])  # an interrupted download
    with pytest.raises(SourceFormatError) as err:
        ingest(cut, tmp_path / "i2")
    msg = str(err.value)
    assert msg.startswith("icu/inputevents.csv.gz: the gzip data is truncated or corrupt")
    assert f"gzip -t {path}" in msg and "\n" not in msg


def test_cli_prints_a_damaged_gzip_in_one_line_without_traceback(tiny, tmp_path):
    root = variant(tiny, tmp_path / "raw", "icu/inputevents")
    path = root / "icu" / "inputevents.csv.gz"
    packed = gzip.compress(gzip.decompress(path.read_bytes()))
    path.write_bytes(packed[: len(packed) // 2])
    proc = subprocess.run(
        [sys.executable, "-m", "sepsisrl.cli", "build", "--source", str(root),
         "--workspace", str(tmp_path / "ws"), "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "duckdb" not in proc.stderr.lower()
    assert "icu/inputevents.csv.gz: the gzip data is truncated or corrupt" in proc.stderr
    assert not any(p.name == "ingest" or ".partial-" in p.name for p in (tmp_path / "ws").iterdir())


# ---- units, plausible doses, weights (measurements stage)


def test_unknown_iv_fluid_unit_stops_the_build_like_a_vasopressor_unit(tmp_path):
    t = IngestTables()
    s = t.stay()
    t.infusion(s, 1, 2, NACL_09, amount=1000.0, amountuom="mL")
    t.infusion(s, 2, 3, NACL_09, amount=0.25, amountuom="gal")
    with pytest.raises(UnitError) as err:
        build_measurements(t, tmp_path / "strict")
    msg = str(err.value)
    assert "IV-fluid rows (items.iv_fluids) with amount units" in msg and "'gal' x1" in msg
    assert "source.fail_on_unknown_fluid_unit: false" in msg
    cfg = load_build_config(overrides={"source.fail_on_unknown_fluid_unit": False})
    built = build_measurements(t, tmp_path / "relaxed", cfg)
    assert built.measurements_audit["integrity"]["unknown_fluid_unit_rows"] == 1


def test_implausible_norepinephrine_is_refused_naming_the_row_then_dropped(tmp_path):
    t = IngestTables()
    s = t.stay()
    t.infusion(s, 1, 2, NOREPINEPHRINE, rate=0.2, rateuom="mcg/kg/min")
    t.infusion(s, 2, 3, NOREPINEPHRINE, rate=5000.0, rateuom="mcg/kg/min")
    t.infusion(s, 3, 4, NACL_09, amount=-500.0, amountuom="mL")
    with pytest.raises(ImplausibleDoseError) as err:
        build_measurements(t, tmp_path / "strict")
    msg = str(err.value)
    assert f"norepinephrine x1 (e.g. stay_id {s.stay_id} starttime {at(2)}: 5000 mcg/kg/min" in msg
    assert "outside [0, 10] (integrity.plausible_max.norepinephrine)" in msg
    assert "iv_fluid x1" in msg and "integrity.implausible_doses: drop" in msg
    cfg = load_build_config(overrides={"integrity.implausible_doses": "drop"})
    built = build_measurements(t, tmp_path / "dropped", cfg)
    kept = built.rows("measurements", "infusions")
    assert [(r["agent"], r["agent_rate"]) for r in kept] == [("norepinephrine", 0.2)]
    assert built.measurements_audit["integrity"]["implausible_dose_rows_dropped"] == {
        "iv_fluid": 1,
        "norepinephrine": 1,
    }


def test_patientweight_0_takes_the_charted_weight_and_a_missing_one_follows_the_setting(tmp_path):
    t = IngestTables()
    s = t.stay()
    t.chart(s, 0.5, WEIGHT_KG, 50.0)
    t.infusion(s, 1, 2, PHENYLEPHRINE, rate=100.0, rateuom="mcg/min", weight=0.0)
    t.infusion(s, 2, 3, PHENYLEPHRINE, rate=100.0, rateuom="mcg/min", weight=None)
    built = build_measurements(t, tmp_path)  # default missing_weight: drop
    doses = [r["agent_rate"] for r in built.rows("measurements", "infusions")]
    assert doses == pytest.approx([2.0])  # the 0 row: 100 mcg/min / 50 kg; the NULL row: none
    audit = built.measurements_audit
    assert audit["rate_per_minute_without_weight"] == 1
    assert audit["integrity"]["rate_per_minute_patientweight_0_or_nan_with_stay_weight"] == 1


def test_infusion_rows_without_duration_are_counted_as_dropped(tmp_path):
    t = IngestTables()
    s = t.stay()
    t.infusion(s, 1, 2, NOREPINEPHRINE, rate=0.1, rateuom="mcg/kg/min")
    t.infusion(s, 3, 3, NOREPINEPHRINE, rate=0.1, rateuom="mcg/kg/min")  # zero length
    built = build_measurements(t, tmp_path)
    assert len(built.rows("measurements", "infusions")) == 1
    assert built.measurements_audit["integrity"]["infusion_rows_without_duration_dropped"] == 1


def test_plausible_max_needs_one_limit_per_agent():
    limits = dict(load_build_config().integrity.plausible_max)
    limits["dopamin"] = limits.pop("dopamine")
    with pytest.raises(ConfigError, match=r"missing \['dopamine'\], unknown \['dopamin'\]"):
        load_build_config(overrides={"integrity.plausible_max": limits})


# ---- an empty cohort says why


def test_empty_cohort_says_which_link_of_the_sepsis_chain_is_empty(tiny, tmp_path):
    root = variant(tiny, tmp_path / "raw", "hosp/prescriptions", "DELETE FROM t")
    cfg = load_build_config(overrides={"source.allow_missing": ["prescriptions"]})
    with pytest.raises(NoDosesError) as err:
        build(root, tmp_path / "ws", cfg)
    msg = str(err.value)
    assert msg.startswith("the cohort is empty: 0 of 40 ICU stays qualify")
    assert "0 antibiotic orders" in msg and "the first empty link is antibiotic orders" in msg
    assert "only 0 non-zero train doses" not in msg


# ---- content fingerprint


def test_editing_a_middle_byte_keeping_the_size_reruns_ingest(tiny, tmp_path):
    root = variant(tiny, tmp_path / "raw", "icu/icustays", fmt="csv")
    # the edited digit may be an intime's year: a stay ending before it starts, dropped here
    cfg = load_build_config(overrides={"integrity.reversed_intervals": "drop"})
    ws = tmp_path / "ws"
    before = open_source(root).fingerprint()
    build(root, ws, cfg, stop_after="ingest")
    path = root / "icu" / "icustays.csv"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    i = next(k for k in range(middle, len(data)) if chr(data[k]).isdigit() and data[k] != ord("7"))
    data[i] = ord("7")  # one digit of a value in the middle of the file
    size = path.stat().st_size
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size
    assert open_source(root).fingerprint() != before
    summary = build(root, ws, cfg, stop_after="ingest")
    assert [(s.name, s.skipped) for s in summary.stages] == [("ingest", False)]
    again = build(root, ws, cfg, stop_after="ingest")
    assert [(s.name, s.skipped) for s in again.stages] == [("ingest", True)]
    meta = json.loads((ws / "build_config.json").read_text())
    assert meta["integrity"]["exact_duplicates"] == "drop"
