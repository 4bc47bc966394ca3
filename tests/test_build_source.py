"""``sepsisrl build`` source handling: clear errors for unusable folders, Parquet input, and
MIMIC-IV version detection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from sepsisrl.dataset.builder import STAGES, build
from sepsisrl.dataset.config import load_build_config
from sepsisrl.mimic.source import SourceError, open_source


def mirror(source: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """Link every table file of ``source`` into ``dest`` except the relative paths in ``skip``."""
    for f in sorted(source.rglob("*")):
        rel = f.relative_to(source).as_posix()
        if f.is_file() and rel not in skip:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f)
    return dest


def rewrite_csv(source: Path, dest: Path, rel: str, select: str) -> None:
    """Write ``dest/rel`` (csv.gz) as ``SELECT <select>`` over ``source/rel``."""
    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
    duckdb.execute(
        f"COPY (SELECT {select} FROM read_csv('{source / rel}', all_varchar=true)) "
        f"TO '{dest / rel}' (FORMAT csv, HEADER, COMPRESSION gzip)"
    )


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sepsisrl.cli", *args], capture_output=True, text=True, timeout=300
    )


def stage_folders(ws: Path) -> list[str]:
    if not ws.exists():
        return []
    return sorted(p.name for p in ws.iterdir() if p.name in STAGES or ".partial-" in p.name)


def test_missing_tables_are_listed_with_the_expected_file_names(small_world, tmp_path):
    root = mirror(
        small_world.out_dir,
        tmp_path / "raw",
        skip=("icu/chartevents.csv.gz", "hosp/labevents.csv.gz"),
    )
    with pytest.raises(SourceError) as err:
        open_source(root)
    msg = str(err.value)
    for rel in ("icu/chartevents", "hosp/labevents"):
        assert f"missing table {rel}: expected one of {rel}.csv.gz, {rel}.csv, {rel}.parquet" in msg
    assert "icustays" not in msg


def test_missing_required_column_names_the_file_and_the_column(small_world, tmp_path):
    root = mirror(small_world.out_dir, tmp_path / "raw", skip=("icu/icustays.csv.gz",))
    rewrite_csv(small_world.out_dir, root, "icu/icustays.csv.gz", "* EXCLUDE (outtime)")
    with pytest.raises(SourceError) as err:
        open_source(root)
    msg = str(err.value)
    assert "icu/icustays.csv.gz: missing column(s) outtime" in msg
    assert "missing table" not in msg


def test_absent_item_ids_fail_naming_each_id_and_concept(small_world, tmp_path):
    cfg = load_build_config(
        overrides={"items.heart_rate": [999999], "items.lactate": [888888, 50813]}
    )
    ws = tmp_path / "ws"
    with pytest.raises(SourceError) as err:
        build(small_world.out_dir, ws, cfg)
    msg = str(err.value)
    assert "999999 (heart_rate) not in icu/d_items" in msg
    assert "888888 (lactate) not in hosp/d_labitems" in msg
    assert "50813" not in msg
    assert stage_folders(ws) == []


def test_cli_absent_item_id_exits_2_naming_the_id_and_concept(small_world, tmp_path):
    ws = tmp_path / "ws"
    proc = cli(
        "build",
        "--source",
        str(small_world.out_dir),
        "--workspace",
        str(ws),
        "--set",
        "items.heart_rate=[999999]",
        "-q",
    )
    assert proc.returncode == 2
    assert "999999 (heart_rate)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert stage_folders(ws) == []


def test_parquet_tables_build_the_same_cohort_and_replay_as_csv_gz(small_world, built, tmp_path):
    root = tmp_path / "raw_parquet"
    con = duckdb.connect()
    for f in sorted(small_world.out_dir.rglob("*.csv.gz")):
        rel = f.relative_to(small_world.out_dir).as_posix().removesuffix(".csv.gz")
        out = root / f"{rel}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY (SELECT * FROM read_csv('{f}')) TO '{out}' (FORMAT parquet)")
    con.close()
    src = open_source(root)
    assert {t.fmt for t in src.tables.values()} == {"parquet"}

    csv_ws, cfg, _ = built
    ws = tmp_path / "ws"
    build(root, ws, cfg)

    def stay_ids(w: Path) -> list[int]:
        return pq.read_table(w / "cohort" / "cohort.parquet")["stay_id"].to_pylist()

    assert stay_ids(ws) == stay_ids(csv_ws)
    for variant in cfg.rewards.variants:
        for split in ("train", "validation", "test"):
            rel = Path("replay") / variant / f"replay_{split}.parquet"
            got, want = pq.read_table(ws / rel), pq.read_table(csv_ws / rel)
            assert got.num_rows == want.num_rows, rel
            assert np.array_equal(got["stay_id"].to_numpy(), want["stay_id"].to_numpy())
            assert np.array_equal(got["action"].to_numpy(), want["action"].to_numpy())


def test_parquet_columns_are_read_from_the_footer_and_a_damaged_file_is_named(
    small_world, tmp_path
):
    """Parquet column names come from the file's footer, case-folded like a CSV header's; a
    file that is not Parquet is reported with its path, beside the other problems."""
    root = mirror(
        small_world.out_dir,
        tmp_path / "raw",
        skip=("icu/icustays.csv.gz", "hosp/patients.csv.gz"),
    )
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT stay_id AS STAY_ID, * EXCLUDE (stay_id) FROM "
        f"read_csv('{small_world.out_dir / 'icu/icustays.csv.gz'}')) "
        f"TO '{root / 'icu/icustays.parquet'}' (FORMAT parquet)"
    )
    con.close()
    (root / "hosp" / "patients.parquet").write_bytes(b"not a parquet file\n" * 4)
    with pytest.raises(SourceError) as err:
        open_source(root)
    msg = str(err.value)
    assert f"{root / 'hosp' / 'patients.parquet'}: cannot be read" in msg
    assert "icustays" not in msg  # upper-case STAY_ID is the column stay_id
    (root / "hosp" / "patients.parquet").unlink()
    (root / "hosp" / "patients.csv.gz").symlink_to(small_world.out_dir / "hosp/patients.csv.gz")
    src = open_source(root)
    assert src.tables["icustays"].fmt == "parquet" and "stay_id" in src.tables["icustays"].columns


def test_synthetic_world_is_detected_as_version_3_1(small_world):
    src = open_source(small_world.out_dir)
    assert src.version == "3.1"
    assert src.kind == "synthetic"


def test_v2_2_era_source_with_loinc_codes_is_detected_as_version_2_2(small_world, tmp_path):
    # a v2.2-era folder: d_labitems carries loinc_code and no patient is anchored in 2020-2022
    root = mirror(
        small_world.out_dir,
        tmp_path / "raw",
        skip=("hosp/d_labitems.csv.gz", "hosp/patients.csv.gz"),
    )
    rewrite_csv(small_world.out_dir, root, "hosp/d_labitems.csv.gz", "*, '2345-7' AS loinc_code")
    rewrite_csv(
        small_world.out_dir,
        root,
        "hosp/patients.csv.gz",
        "* REPLACE (replace(anchor_year_group, '2020 - 2022', '2017 - 2019') AS anchor_year_group)",
    )
    src = open_source(root)
    assert "loinc_code" in src.tables["d_labitems"].columns
    assert src.version == "2.2"
    assert open_source(root, version="3.1").version == "3.1"


def test_cli_missing_source_folder_exits_2_with_a_clear_error(tmp_path):
    ws = tmp_path / "ws"
    missing = tmp_path / "no_such_mimic"
    proc = cli("build", "--source", str(missing), "--workspace", str(ws), "-q")
    assert proc.returncode == 2
    assert "error:" in proc.stderr
    assert "source folder not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert stage_folders(ws) == []
