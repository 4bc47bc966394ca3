"""``sepsisrl validate --mimic-derived``: a build against mimic-code's derived tables.

A tiny workspace (four ICU stays of ``build_fixtures.py``, through the real measurements and
sepsis stages) is written out in the layout of mimic-code's ``mimiciv_derived`` tables, then
changed in a few known places, so that every agreement figure is exact:

- suspicion_of_infection: stay 1's suspected-infection time +1 h; an extra antibiotic start
  that only mimic-code has;
- norepinephrine_equivalent_dose: stay 2's second interval 0.05 -> 0.08 mcg/kg/min;
- urine_output: stay 2's second row +100 mL; stay 4's row absent from mimic-code;
- sofa: one hour of stay 1 scores renal (and the total) one point higher in mimic-code; the
  last hour of stay 4 is absent from mimic-code;
- sepsis3: stay 2's suspected-infection time 2 h earlier; stay 3 absent; stay 4 septic in
  mimic-code only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from sepsisrl.dataset.mimic_derived import (
    TABLES,
    DerivedTableError,
    compare_with_mimic_derived,
    load_validate_config,
)

from .build_fixtures import (
    BILIRUBIN,
    CREATININE,
    GU_IRRIGANT_IN,
    GU_IRRIGANT_OUT,
    NOREPINEPHRINE,
    PLATELETS,
    URINE_FOLEY,
    IngestTables,
    Stay,
    at,
    build_sepsis,
)

DATA = Path(__file__).parent / "data" / "mimic-derived"
LOS = 12  # hours: SOFA hours 0..11 of every stay


@dataclass(frozen=True)
class Fixture:
    ws: Path
    derived: Path  # folder of <table>.csv files
    stays: tuple[Stay, ...]
    sofa_hours: int  # the build's ICU hours (hr >= 0), all stays


def _stays(t: IngestTables) -> tuple[Stay, ...]:
    s1, s2, s3, s4 = (t.stay(los_hours=LOS) for _ in range(4))
    # 1: culture then antibiotic (SI 1 h), creatinine 2.5 (renal 2), norepinephrine 0.1
    t.culture(s1, 1.0)
    t.antibiotic(s1, 2.0)
    t.lab(s1, 1.5, CREATININE, 2.5)
    t.infusion(s1, 3, 6, NOREPINEPHRINE, rate=0.1, rateuom="mcg/kg/min")
    for h in (1.0, 2.0, 3.0):
        t.output(s1, h, URINE_FOLEY, 100)
    # 2: culture then antibiotic (SI 0.5 h), platelets 40 (coagulation 3), two rates
    t.culture(s2, 0.5)
    t.antibiotic(s2, 1.0)
    t.lab(s2, 2.5, PLATELETS, 40)
    t.infusion(s2, 2, 4, NOREPINEPHRINE, rate=0.2, rateuom="mcg/kg/min")
    t.infusion(s2, 4, 8, NOREPINEPHRINE, rate=0.05, rateuom="mcg/kg/min")
    t.output(s2, 1.0, URINE_FOLEY, 50)
    t.output(s2, 2.0, URINE_FOLEY, 50)
    # 3: antibiotic then culture (SI 3 h), bilirubin 3 (liver 2), GU irrigant in/out netted
    t.antibiotic(s3, 3.0)
    t.culture(s3, 4.0)
    t.lab(s3, 2.0, BILIRUBIN, 3.0)
    t.output(s3, 2.0, GU_IRRIGANT_IN, 500)
    t.output(s3, 2.0, GU_IRRIGANT_OUT, 650)
    # 4: antibiotic without culture (no suspicion), normal creatinine: not septic
    t.antibiotic(s4, 2.0)
    t.lab(s4, 1.5, CREATININE, 1.0)
    t.output(s4, 1.0, URINE_FOLEY, 200)
    return (s1, s2, s3, s4)


def write_mimic_layout(ws: Path, stays: tuple[Stay, ...], out: Path) -> None:
    """The build's tables in mimic-code's layout (column names of mimic-iv/concepts), with the
    deliberate differences of the module docstring, as <table>.csv files."""
    s1, s2, s3, s4 = (s.stay_id for s in stays)
    sub4 = stays[3].subject_id
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    for name in ("ingest/icustays", "ingest/antibiotics", "sepsis/suspicion",
                 "measurements/infusions", "measurements/urine", "sepsis/sofa_hourly",
                 "sepsis/onset"):  # fmt: skip
        view = name.split("/")[1]
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{ws / name}.parquet')")
    queries = {
        "suspicion_of_infection": f"""
            SELECT a.subject_id, i.stay_id, a.hadm_id,
                   row_number() OVER (PARTITION BY a.subject_id ORDER BY a.starttime) AS ab_id,
                   a.drug AS antibiotic, a.starttime AS antibiotic_time,
                   CAST(s.si_time IS NOT NULL AS INTEGER) AS suspected_infection,
                   CASE WHEN i.stay_id = {s1} THEN s.si_time + INTERVAL 1 HOUR
                        ELSE s.si_time END AS suspected_infection_time,
                   s.culture_time, 'BLOOD CULTURE' AS specimen, 0 AS positive_culture
            FROM antibiotics a
            JOIN icustays i ON i.hadm_id = a.hadm_id
            LEFT JOIN suspicion s ON s.subject_id = a.subject_id AND s.abx_time = a.starttime
            UNION ALL
            SELECT {sub4}, {s4}, NULL, 2, 'CefazoLIN', TIMESTAMP '{at(5.0)}', 0, NULL, NULL,
                   NULL, NULL""",
        "norepinephrine_equivalent_dose": f"""
            SELECT stay_id, starttime, endtime,
                   round(CASE WHEN stay_id = {s2} AND ne_rate = 0.05 THEN 0.08 ELSE ne_rate END, 4)
                       AS norepinephrine_equivalent_dose
            FROM infusions WHERE factor > 0""",
        "urine_output": f"""
            SELECT stay_id, charttime,
                   sum(value) + CASE WHEN stay_id = {s2} AND charttime = TIMESTAMP '{at(2.0)}'
                                     THEN 100 ELSE 0 END AS urineoutput
            FROM urine WHERE stay_id <> {s4} GROUP BY stay_id, charttime""",
        "sofa": f"""
            SELECT stay_id, hr, starttime, endtime, NULL AS pao2fio2ratio_novent,
                   NULL AS meanbp_min, sofa_renal AS renal,
                   sofa_respiration AS respiration_24hours,
                   sofa_coagulation AS coagulation_24hours, sofa_liver AS liver_24hours,
                   sofa_cardiovascular AS cardiovascular_24hours, sofa_cns AS cns_24hours,
                   sofa_renal + CAST(stay_id = {s1} AND hr = 5 AS INTEGER) AS renal_24hours,
                   sofa + CAST(stay_id = {s1} AND hr = 5 AS INTEGER) AS sofa_24hours
            FROM sofa_hourly WHERE hr >= 0 AND NOT (stay_id = {s4} AND hr = {LOS - 1})""",
        "sepsis3": f"""
            SELECT i.subject_id, o.stay_id, NULL AS antibiotic_time, NULL AS culture_time,
                   CASE WHEN o.stay_id = {s2} THEN o.si_time - INTERVAL 2 HOUR
                        ELSE o.si_time END AS suspected_infection_time,
                   o.sofa_time, 2 AS sofa_score, 'true' AS sepsis3
            FROM onset o JOIN icustays i USING (stay_id) WHERE o.stay_id <> {s3}
            UNION ALL
            SELECT {sub4}, {s4}, NULL, NULL, TIMESTAMP '{at(2.0)}', TIMESTAMP '{at(3.0)}', 2,
                   'true'""",
    }
    for table, sql in queries.items():
        con.execute(f"COPY ({sql}) TO '{out / table}.csv' (FORMAT csv, HEADER)")
    con.close()


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    root = tmp_path_factory.mktemp("mimic_derived")
    t = IngestTables()
    stays = _stays(t)
    ws = root / "ws"
    build_sepsis(t, ws)
    con = duckdb.connect()
    onset = con.execute(
        f"SELECT stay_id, si_time, sofa_time, onset_time FROM '{ws}/sepsis/onset.parquet' "
        "ORDER BY stay_id"
    ).fetchall()
    hours = con.execute(
        f"SELECT count(*) FROM '{ws}/sepsis/sofa_hourly.parquet' WHERE hr >= 0"
    ).fetchone()[0]
    con.close()
    # the premises of the expected figures: stays 1-3 septic, onset = min(SI, SOFA time)
    assert [r[0] for r in onset] == [s.stay_id for s in stays[:3]], onset
    assert all(r[3] == min(r[1], r[2]) for r in onset), onset
    assert hours == 4 * LOS
    derived = root / "derived"
    write_mimic_layout(ws, stays, derived)
    return Fixture(ws, derived, stays, hours)


@pytest.fixture(scope="module")
def report(fx: Fixture, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return compare_with_mimic_derived(fx.ws, fx.derived, tmp_path_factory.mktemp("out"))


def figures(report: dict, table: str) -> dict:
    entry = report["tables"][table]
    assert entry["status"] == "compared", entry
    return entry["figures"]


def disagreements(report: dict, table: str) -> list[dict]:
    rows = pq.read_table(Path(report["out"]) / f"{table}_disagreements.parquet").to_pylist()
    assert len(rows) == report["tables"][table]["disagreeing_rows"]
    return rows


def test_suspicion_per_antibiotic_start(report: dict, fx: Fixture):
    f = figures(report, "suspicion_of_infection")
    assert f["antibiotic_starts_sepsisrl"] == 4
    assert f["antibiotic_starts_mimic_code"] == 5
    assert (f["antibiotic_starts_in_common"], f["only_mimic_code"], f["only_sepsisrl"]) == (4, 1, 0)
    assert f["suspected_both"] == 3
    assert f["suspected_only_mimic_code"] == f["suspected_only_sepsisrl"] == 0
    assert f["suspicion_flag_agreement"] == 1.0
    assert f["si_time_identical_share"] == pytest.approx(2 / 3, abs=1e-6)
    assert f["culture_time_identical_share"] == 1.0
    assert f["si_time_max_abs_diff_hours"] == 1.0
    rows = disagreements(report, "suspicion_of_infection")
    s1, s4 = fx.stays[0], fx.stays[3]
    assert [(r["subject_id"], r["in_mimic_code"], r["in_sepsisrl"]) for r in rows] == [
        (s1.subject_id, True, True),
        (s4.subject_id, True, False),
    ]
    assert rows[0]["si_time_diff_hours"] == -1.0  # sepsisrl - mimic-code


def test_norepinephrine_equivalent_dose_per_segment(report: dict, fx: Fixture):
    f = figures(report, "norepinephrine_equivalent_dose")
    assert (f["stays_mimic_code"], f["stays_sepsisrl"]) == (2, 2)
    # stay 1: [3, 6); stay 2: [2, 4) and [4, 8)
    assert (f["segments"], f["segments_in_common"]) == (3, 3)
    assert f["segments_only_mimic_code"] == f["segments_only_sepsisrl"] == 0
    assert f["hours"] == 9.0
    assert f["segments_within_tolerance"] == pytest.approx(2 / 3, abs=1e-6)
    assert f["hours_within_tolerance"] == pytest.approx(5 / 9, abs=1e-6)
    assert f["max_abs_diff"] == pytest.approx(0.03, abs=1e-9)
    assert 0.9 < f["pearson_r"] < 1.0
    [row] = disagreements(report, "norepinephrine_equivalent_dose")
    assert row["stay_id"] == fx.stays[1].stay_id
    assert (row["starttime"], row["endtime"]) == (at(4), at(8))
    assert (row["mimic_code_dose"], row["sepsisrl_dose"]) == pytest.approx((0.08, 0.05))


def test_urine_output_per_charttime(report: dict, fx: Fixture):
    f = figures(report, "urine_output")
    # stay 3's irrigant in (-500) and out (+650) at one charttime are one row of 150 mL
    assert (f["rows_sepsisrl"], f["rows_mimic_code"], f["rows_in_common"]) == (7, 6, 6)
    assert (f["only_mimic_code"], f["only_sepsisrl"]) == (0, 1)
    assert f["identical_share"] == pytest.approx(5 / 6, abs=1e-6)
    assert f["max_abs_diff_ml"] == 100.0
    assert f["total_ml_sepsisrl"] == 300 + 100 + 150 + 200
    assert f["total_ml_mimic_code"] == 300 + 200 + 150
    rows = disagreements(report, "urine_output")
    assert [(r["stay_id"], r["diff_ml"]) for r in rows] == [
        (fx.stays[1].stay_id, -100.0),
        (fx.stays[3].stay_id, None),
    ]


def test_hourly_sofa_per_component(report: dict, fx: Fixture):
    f = figures(report, "sofa")
    h = fx.sofa_hours
    assert (f["hours_sepsisrl"], f["hours_mimic_code"], f["hours_in_common"]) == (h, h - 1, h - 1)
    assert (f["hours_only_mimic_code"], f["hours_only_sepsisrl"]) == (0, 1)
    assert (f["stays_sepsisrl"], f["stays_mimic_code"]) == (4, 4)
    for part in ("respiration", "coagulation", "liver", "cardiovascular", "cns"):
        assert f[f"{part}_identical_share"] == 1.0, part
        assert f[f"{part}_sepsisrl_higher"] == f[f"{part}_sepsisrl_lower"] == 0
    for part in ("renal", "total"):
        assert f[f"{part}_identical_share"] == pytest.approx((h - 2) / (h - 1), abs=1e-6)
        assert (f[f"{part}_sepsisrl_higher"], f[f"{part}_sepsisrl_lower"]) == (0, 1)
    assert f["all_components_identical_share"] == pytest.approx((h - 2) / (h - 1), abs=1e-6)
    [row] = disagreements(report, "sofa")
    assert (row["stay_id"], row["sepsisrl_hr"], row["differing"]) == (
        fx.stays[0].stay_id, 5, "renal,total",
    )  # fmt: skip
    assert row["mimic_code_renal"] == row["sepsisrl_renal"] + 1


def test_sepsis3_stays_and_onset(report: dict, fx: Fixture):
    f = figures(report, "sepsis3")
    assert (f["stays_mimic_code"], f["stays_sepsisrl"], f["stays_in_common"]) == (3, 3, 2)
    assert (f["only_mimic_code"], f["only_sepsisrl"]) == (1, 1)
    assert f["only_sepsisrl_onset_before_intime"] == 0
    assert f["si_time_identical_share"] == 0.5
    assert f["sofa_time_identical_share"] == 1.0
    # stay 2: SI 0.5 h, SOFA >= 2 from 2 h; mimic-code's SI -1.5 h moves its onset 2 h earlier
    assert (f["onset_identical_share"], f["onset_differs"]) == (0.5, 1)
    assert f["onset_max_abs_diff_hours"] == 2.0
    assert f["onset_mean_diff_hours"] == 1.0
    rows = disagreements(report, "sepsis3")
    _, s2, s3, s4 = (s.stay_id for s in fx.stays)
    assert [(r["stay_id"], r["in_mimic_code"], r["in_sepsisrl"]) for r in rows] == [
        (s2, True, True),
        (s3, False, True),
        (s4, True, False),
    ]
    assert rows[0]["onset_diff_hours"] == 2.0


def test_agreement_json_and_csv_files(report: dict):
    out = Path(report["out"])
    assert json.loads((out / "agreement.json").read_text()) == report
    for table in TABLES:
        csv = out / f"{table}_disagreements.csv"
        lines = csv.read_text().splitlines()
        assert len(lines) == 1 + report["tables"][table]["disagreeing_rows"], table


def test_a_duckdb_database_gives_the_same_figures(fx: Fixture, report: dict, tmp_path: Path):
    db = tmp_path / "mimic.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA mimiciv_derived")
    for table in TABLES:
        # typed columns, as mimic-code's DuckDB build writes them
        con.execute(
            f"CREATE TABLE mimiciv_derived.{table} AS "
            f"SELECT * FROM read_csv_auto('{fx.derived / table}.csv')"
        )
    con.close()
    got = compare_with_mimic_derived(fx.ws, db, tmp_path / "out")
    for table in TABLES:
        assert got["tables"][table]["figures"] == report["tables"][table]["figures"], table
        assert got["tables"][table]["source"] == f"{db} (mimiciv_derived.{table})"


def test_a_missing_table_is_not_provided(fx: Fixture, tmp_path: Path):
    src = tmp_path / "src" / "mimiciv_derived"  # an export folder with its schema subfolder
    src.mkdir(parents=True)
    shutil.copy(fx.derived / "sofa.csv", src / "sofa.csv")
    got = compare_with_mimic_derived(fx.ws, src.parent, tmp_path / "out")
    assert got["tables"]["sofa"]["status"] == "compared"
    for table in set(TABLES) - {"sofa"}:
        assert got["tables"][table] == {"status": "not provided"}
        assert not (tmp_path / "out" / f"{table}_disagreements.csv").exists()


def test_unexpected_columns_name_the_file_and_the_columns(fx: Fixture):
    with pytest.raises(DerivedTableError) as exc:
        compare_with_mimic_derived(fx.ws, DATA / "hourly-only-sofa", fx.ws / "never")
    msg = str(exc.value)
    assert str(DATA / "hourly-only-sofa" / "sofa.csv") in msg
    assert "missing column(s) ['respiration_24hours'" in msg and "'sofa_24hours']" in msg
    assert "found ['stay_id', 'hr', 'starttime', 'endtime', 'respiration'" in msg
    assert not (fx.ws / "never").exists()  # nothing is written before every table is checked


def test_a_value_of_the_wrong_type_names_the_column(fx: Fixture):
    with pytest.raises(DerivedTableError, match=r"urine_output\.csv: column charttime of "
                       r"urine_output should hold TIMESTAMP values; 1 row\(s\) do not convert "
                       r"\(e\.g\. '09:00 on day 1'\)"):  # fmt: skip
        compare_with_mimic_derived(fx.ws, DATA / "bad-time", fx.ws / "never")


def test_no_table_at_all_and_no_workspace_are_clear_errors(fx: Fixture, tmp_path: Path):
    with pytest.raises(DerivedTableError, match="none of mimic-code's tables"):
        compare_with_mimic_derived(fx.ws, tmp_path, tmp_path / "out")
    with pytest.raises(DerivedTableError, match=r"ingest/icustays\.parquet not found: --workspace"):
        compare_with_mimic_derived(tmp_path, fx.derived, tmp_path / "out")


def test_tolerances_come_from_the_config(fx: Fixture, tmp_path: Path):
    cfg = load_validate_config(overrides={"mimic_derived.dose_tolerance": 0.05}).mimic_derived
    got = compare_with_mimic_derived(fx.ws, fx.derived, tmp_path / "out", cfg)
    dose = got["tables"]["norepinephrine_equivalent_dose"]["figures"]
    assert dose["segments_within_tolerance"] == 1.0
    assert got["tolerances"]["dose"] == 0.05


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sepsisrl.cli", "validate", *args], capture_output=True, text=True
    )


def test_cli_prints_the_table_and_the_json(fx: Fixture, report: dict, tmp_path: Path):
    proc = _cli("--workspace", str(fx.ws), "--mimic-derived", str(fx.derived),
                "--out", str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["tables"]["sofa"]["figures"] == report["tables"]["sofa"]["figures"]
    assert "renal identical; sepsisrl higher / lower" in proc.stderr
    assert f"{100 * 46 / 47:.2f} %, 0 / 1" in proc.stderr  # renal: 46 of 47 hours
    assert "sepsis3" in proc.stderr


def test_cli_needs_exactly_one_reference(fx: Fixture, tmp_path: Path):
    for args in ((), ("--truth", str(tmp_path), "--mimic-derived", str(fx.derived))):
        proc = _cli("--workspace", str(fx.ws), *args)
        assert proc.returncode == 2
        assert "exactly one of --truth" in proc.stderr
    proc = _cli("--workspace", str(fx.ws), "--mimic-derived", str(DATA / "hourly-only-sofa"))
    assert proc.returncode == 2 and "sofa_24hours" in proc.stderr and "Traceback" not in proc.stderr
