"""Refuse what cannot be right: an empty raw table or a core feature nearly never observed
stops the build with a clear error, unless ``--allow-missing TABLE`` lets it through with a
warning in the build summary, the CLI output, the study report and the model card."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from sepsisrl.config import ConfigError
from sepsisrl.dataset.builder import STAGES, build
from sepsisrl.dataset.config import load_build_config
from sepsisrl.dataset.coverage import CoverageError
from sepsisrl.mimic.schema import TABLES
from sepsisrl.release.bundle import build_warnings as card_warnings
from sepsisrl.release.bundle import model_card, warning_lines
from sepsisrl.study.report import Text, render_html
from sepsisrl.study.report import build_warnings as report_warnings

HEART_RATE = 220045


def mirror(source: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """Link every table file of ``source`` into ``dest`` except the relative paths in ``skip``."""
    for f in sorted(source.rglob("*")):
        rel = f.relative_to(source).as_posix()
        if f.is_file() and rel not in skip:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f)
    return dest


def header_only(root: Path, table: str) -> None:
    """Write ``table`` as a csv.gz with its header and no data row."""
    schema = TABLES[table]
    path = root / f"{schema.relpath}.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress((",".join(schema.column_names) + "\n").encode()))


def source_without(small_world, tmp_path: Path, table: str) -> Path:
    rel = f"{TABLES[table].relpath}.csv.gz"
    root = mirror(small_world.out_dir, tmp_path / "raw", skip=(rel,))
    header_only(root, table)
    return root


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sepsisrl.cli", *args], capture_output=True, text=True, timeout=600
    )


def stage_folders(ws: Path) -> list[str]:
    if not ws.exists():
        return []
    return sorted(p.name for p in ws.iterdir() if p.name in STAGES or ".partial-" in p.name)


def test_header_only_chartevents_is_refused_naming_the_table_and_the_fix(small_world, tmp_path):
    root = source_without(small_world, tmp_path, "chartevents")
    ws = tmp_path / "ws"
    with pytest.raises(CoverageError) as err:
        build(root, ws, load_build_config())
    msg = str(err.value)
    assert "icu/chartevents.csv.gz has a header but no data rows" in msg
    assert "vital sign" in msg
    assert "--allow-missing chartevents" in msg
    assert not ws.exists()  # refused before the workspace is touched


def test_cli_refuses_header_only_chartevents_with_exit_2(small_world, tmp_path):
    root = source_without(small_world, tmp_path, "chartevents")
    ws = tmp_path / "ws"
    proc = cli("build", "--source", str(root), "--workspace", str(ws), "-q")
    assert proc.returncode == 2
    assert "icu/chartevents.csv.gz has a header but no data rows" in proc.stderr
    assert "source.allow_missing: [chartevents]" in proc.stderr  # brackets survive rich
    assert "Traceback" not in proc.stderr
    assert stage_folders(ws) == []


def test_allow_missing_chartevents_builds_with_loud_warnings(small_world, tmp_path):
    root = source_without(small_world, tmp_path, "chartevents")
    ws = tmp_path / "ws"
    proc = cli(
        "build", "--source", str(root), "--workspace", str(ws), "--allow-missing", "chartevents"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    summary = json.loads((ws / "build_summary.json").read_text())
    assert summary["allow_missing"] == ["chartevents"]
    assert out["warnings"] == summary["warnings"]
    kinds = {w["kind"]: w for w in summary["warnings"]}
    assert set(kinds) == {"empty_table", "core_features_absent"}
    assert kinds["empty_table"]["table"] == "chartevents"
    absent = kinds["core_features_absent"]["features"]
    cfg = load_build_config()
    assert set(absent) == set(cfg.source.core_features.tables["chartevents"])
    assert set(absent.values()) == {1.0}
    for w in summary["warnings"]:
        assert "WARNING:" in proc.stderr and w["message"][:60] in proc.stderr.replace("\n", " ")
    assert json.loads((ws / "ingest" / "audit.json").read_text())["empty_source_tables"] == [
        "chartevents"
    ]
    # the study report and a model card built on this workspace carry the warnings
    blocks = report_warnings(ws)
    assert len(blocks) == 2 and all(isinstance(b, Text) and b.kind == "warning" for b in blocks)
    assert "chartevents" in blocks[0].text
    page = render_html(blocks)
    assert page.count('class="warning"') == 2 and "DATA WARNING" in page
    lines = warning_lines(card_warnings(ws))
    assert lines[0].startswith("> **DATA WARNING")
    assert any("heart_rate" in line for line in lines)


def test_zero_row_admissions_is_refused_and_cannot_be_allowed(small_world, tmp_path):
    root = source_without(small_world, tmp_path, "admissions")
    ws = tmp_path / "ws"
    with pytest.raises(CoverageError) as err:
        build(root, ws, load_build_config())
    msg = str(err.value)
    assert "hosp/admissions.csv.gz has a header but no data rows" in msg
    assert "the build cannot run without it" in msg
    assert "--allow-missing" not in msg
    assert not ws.exists()
    with pytest.raises(ConfigError, match="cannot proceed without 'admissions'"):
        load_build_config(overrides={"source.allow_missing": ["admissions"]})
    with pytest.raises(ConfigError, match="'chartevent' is not a MIMIC-IV table"):
        load_build_config(overrides={"source.allow_missing": ["chartevent"]})


def test_core_feature_absent_from_a_non_empty_table_is_refused_then_allowed(small_world, tmp_path):
    """A partial chartevents export (no heart-rate rows) passes the empty-table check; the
    features check stops it naming heart_rate alone; the cached stages are reused when the
    table is allowed."""
    rel = "icu/chartevents.csv.gz"
    root = mirror(small_world.out_dir, tmp_path / "raw", skip=(rel,))
    duckdb.execute(
        f"COPY (SELECT * FROM read_csv('{small_world.out_dir / rel}', all_varchar=true) "
        f"WHERE itemid <> '{HEART_RATE}') TO '{root / rel}' (FORMAT csv, HEADER, COMPRESSION gzip)"
    )
    ws = tmp_path / "ws"
    with pytest.raises(CoverageError) as err:
        build(root, ws, load_build_config())
    msg = str(err.value)
    assert "heart_rate: no value in 100.0 % of the decision windows (from icu/chartevents)" in msg
    assert "map:" not in msg and "lactate" not in msg
    assert "--allow-missing chartevents" in msg
    # the stages before the check are complete and nothing after it was written
    done = stage_folders(ws)
    assert "features" in done and "replay" not in done
    assert not any(".partial-" in d for d in done)
    assert not (ws / "build_summary.json").exists()

    cfg = load_build_config(overrides={"source.allow_missing": ["chartevents"]})
    summary = build(root, ws, cfg)
    skipped = {s.name for s in summary.stages if s.skipped}
    assert {"ingest", "measurements", "features"} <= skipped  # allow_missing is no cache key
    (warning,) = summary.report["warnings"]
    assert warning["kind"] == "core_features_absent"
    assert warning["features"] == {"heart_rate": 1.0}


def test_model_card_puts_the_data_warning_under_the_research_only_notice():
    config = {
        "model_type": "iql",
        "state_dim": 62,
        "n_actions": 25,
        "action_space": "5 x 5",
        "package": {"version": "0"},
        "training": {"run_name": "r", "algo": "iql", "preset": None, "seed": 0, "steps": 1},
        "dataset": {"build_warnings": ["icu/chartevents.csv.gz has no data rows"]},
    }
    card = model_card(config, None, "m")
    notice = card.index("RESEARCH ONLY - NOT FOR CLINICAL USE")
    warning = card.index("DATA WARNING")
    assert notice < warning < card.index("## Files")
    assert "> - icu/chartevents.csv.gz has no data rows" in card
    assert "DATA WARNING" not in model_card({**config, "dataset": {}}, None, "m")
