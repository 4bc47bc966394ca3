"""MIMIC-IV v2.2 and v3.1 sources build the same way; the version is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from sepsisrl.dataset.builder import build
from sepsisrl.mimic.schema import TABLES

#: Columns of the v3.1 layout that a v2.2-era export may lack (provider and caregiver ids).
V3_ONLY = {
    "chartevents": ["caregiver_id"],
    "inputevents": ["caregiver_id"],
    "outputevents": ["caregiver_id"],
    "labevents": ["order_provider_id"],
    "prescriptions": ["order_provider_id"],
    "microbiologyevents": ["order_provider_id"],
    "admissions": ["admit_provider_id"],
}


def make_v22_copy(src: Path, dst: Path) -> None:
    con = duckdb.connect()
    for name, schema in TABLES.items():
        out = dst / f"{schema.relpath}.csv.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        cols = [c for c in schema.column_names if c not in V3_ONLY.get(name, [])]
        select = ", ".join(cols)
        if name == "patients":  # v2.2 ends in 2019
            select = select.replace(
                "anchor_year_group",
                "CASE WHEN anchor_year_group = '2020 - 2022' THEN '2017 - 2019' "
                "ELSE anchor_year_group END AS anchor_year_group",
            )
        con.execute(
            f"COPY (SELECT {select} FROM read_csv('{src / schema.relpath}.csv.gz', "
            "all_varchar=true)) "
            f"TO '{out}' (FORMAT csv, HEADER, COMPRESSION gzip)"
        )


@pytest.mark.slow
def test_v22_layout_builds_the_same_dataset_and_is_labelled_v22(small_world, built, tmp_path):
    ws, cfg, _ = built
    raw = tmp_path / "mimic22"
    make_v22_copy(small_world.out_dir, raw)
    ws22 = tmp_path / "ws22"
    summary = build(raw, ws22, cfg)
    assert summary.report["source"]["version"] == "2.2"
    assert summary.report["expected"]["checks"]["icu_stays"]["expected_full_mimic_iv"][0] == 73181
    for split in ("train", "validation", "test"):
        a = pq.read_table(ws / "replay" / "sofa_shaped" / f"replay_{split}.parquet")
        b = pq.read_table(ws22 / "replay" / "sofa_shaped" / f"replay_{split}.parquet")
        assert a.num_rows == b.num_rows > 0
        for col in ("stay_id", "step", "action", "reward", "done"):
            assert a[col].equals(b[col]), (split, col)
    meta = json.loads((ws22 / "replay" / "sofa_shaped" / "meta.json").read_text())
    assert meta["source"]["version"] == "2.2"
