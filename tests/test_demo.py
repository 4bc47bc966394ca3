"""The real MIMIC-IV demo as a test: ``tests/data/mimic-iv-demo/`` (a subset of the MIMIC-IV
Clinical Database Demo v2.2, ODbL; see its NOTICE.md) is built with chartevents explicitly
allowed missing, and the invariants real data must satisfy are read from the stages'
``audit.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sepsisrl.dataset.builder import build
from sepsisrl.dataset.config import load_build_config
from sepsisrl.dataset.coverage import CoverageError
from sepsisrl.dataset.ingest import CHART_CONCEPTS, LAB_CONCEPTS, OUTPUT_CONCEPTS

DEMO = Path(__file__).resolve().parent / "data" / "mimic-iv-demo"

#: Configured item ids that the whole demo release (100 patients) never charts, per concept.
#: An id configured later that the demo lacks must be added here, explicitly.
NOT_IN_DEMO: dict[str, set[int]] = {
    "iv_fluids": {225161, 225941, 225174},
    "urine": {226584, 226563, 226564, 226565, 226557, 226558},
}
#: The ingested table each concept's ids are counted in (ingest/audit.json item_rows).
INPUT_CONCEPTS = ("iv_fluids", "dobutamine")


def read(ws: Path, rel: str) -> dict[str, Any]:
    return json.loads((ws / rel).read_text())


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory: pytest.TempPathFactory):
    cfg = load_build_config(overrides={"source.allow_missing": ["chartevents"]})
    ws = tmp_path_factory.mktemp("demo") / "ws"
    summary = build(DEMO, ws, cfg)
    return ws, cfg, summary


def test_the_demo_is_refused_without_allow_missing(tmp_path: Path):
    with pytest.raises(CoverageError) as err:
        build(DEMO, tmp_path / "ws", load_build_config())
    assert "icu/chartevents.csv.gz has a header but no data rows" in str(err.value)
    assert not (tmp_path / "ws").exists()


def test_every_configured_item_id_is_found_or_listed_as_absent_from_the_demo(demo_build):
    ws, cfg, _ = demo_build
    audit = read(ws, "ingest/audit.json")
    assert audit["empty_source_tables"] == ["chartevents"]
    found = {table: {int(i) for i in rows} for table, rows in audit["item_rows"].items()}
    assert found["chart"] == set()  # chartevents is header-only: none of its ids is checked
    expected = {
        "labs": {c: cfg.items[c] for c in LAB_CONCEPTS},
        "inputs": {
            **{c: cfg.items[c] for c in INPUT_CONCEPTS},
            **{name: [v.itemid] for name, v in cfg.vasopressors.items()},
        },
        "outputs": {c: cfg.items[c] for c in OUTPUT_CONCEPTS},
    }
    missing, listed_but_found = [], []
    for table, concepts in expected.items():
        for concept, ids in concepts.items():
            absent = NOT_IN_DEMO.get(concept, set())
            missing += [f"{concept} {i}" for i in ids if i not in found[table] and i not in absent]
            listed_but_found += [f"{concept} {i}" for i in ids if i in found[table] and i in absent]
    assert missing == [], f"configured ids never found in the demo: {missing}"
    assert listed_but_found == [], f"NOT_IN_DEMO lists ids the demo has: {listed_but_found}"
    assert set(CHART_CONCEPTS) <= set(cfg.items)  # the chart ids exist; the demo cannot check them


def test_no_unknown_unit_and_no_vasopressor_row_without_a_dose(demo_build):
    ws, cfg, _ = demo_build
    audit = read(ws, "measurements/audit.json")
    assert audit["unknown_rate_units"] == []
    assert audit["unknown_fluid_units"] == []
    vaso = audit["vasopressor_rows"]
    assert set(vaso) == set(cfg.vasopressors)
    assert vaso["norepinephrine"]["read"] > 0
    dropped = {a: c for a, c in vaso.items() if c["dosed"] != c["read"]}
    assert dropped == {}, f"vasopressor rows without a dose: {dropped}"


def test_gu_irrigant_pairs_are_netted(demo_build):
    ws, _, _ = demo_build
    urine = read(ws, "measurements/audit.json")["urine_hours"]
    # the demo has unmatched irrigant-in rows, so the source itself has negative hours; the
    # build must never make an hour negative that is not negative in the source (a dropped
    # half of an in/out pair does)
    assert urine["negative_in_source"] > 0
    assert urine["negative_not_in_source"] == 0
    assert urine["negative"] <= urine["negative_in_source"]


def test_sepsis3_and_episode_counts_are_present(demo_build):
    ws, _, summary = demo_build
    counts = summary.report["counts"]
    assert counts["icu_stays"] == 44
    assert 0 < counts["sepsis3_stays"] <= counts["icu_stays"]
    assert 0 < counts["rl_episodes"] <= counts["sepsis3_stays"]
    assert counts["transitions"] >= counts["rl_episodes"]
    cohort, episodes = read(ws, "cohort/audit.json"), read(ws, "episodes/audit.json")
    assert cohort["sepsis3_stays_in_icu_window"] == counts["sepsis3_stays"]
    assert episodes["episodes"] == counts["rl_episodes"]
    assert summary.report["leakage_audit"] == "passed"


def test_the_summary_warns_that_chartevents_is_missing(demo_build):
    ws, _, _ = demo_build
    summary = read(ws, "build_summary.json")
    assert summary["allow_missing"] == ["chartevents"]
    by_kind = {w["kind"]: w for w in summary["warnings"]}
    assert by_kind["empty_table"]["table"] == "chartevents"
    absent = by_kind["core_features_absent"]["features"]
    assert {"heart_rate", "map", "gcs_total", "spo2", "fio2_vent"} <= set(absent)
    assert all(share == 1.0 for share in absent.values())
    assert "labevents" not in {w["table"] for w in summary["warnings"]}  # labs are real
