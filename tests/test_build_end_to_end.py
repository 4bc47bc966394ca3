"""``sepsisrl build`` end to end on the small synthetic world: the workspace and replay contract
(docs/contracts.md), stage caching, and agreement with the world's ground truth."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sepsisrl import __version__
from sepsisrl.dataset.builder import STAGES, build
from sepsisrl.dataset.config import load_build_config
from sepsisrl.dataset.validate import validate_sepsis
from sepsisrl.mimic.source import open_source
from sepsisrl.workspace import read_json

VARIANTS = ("sparse", "sofa_shaped", "sofa_state_shaped", "full_shaped")
SPLITS = ("train", "validation", "test")

#: files that docs/contracts.md lists for the stages ``sepsisrl build`` writes
CONTRACT_FILES = (
    "cohort/cohort.parquet",
    "cohort/excluded.parquet",
    "cohort/audit.json",
    "sepsis/suspicion.parquet",
    "sepsis/sofa_hourly.parquet",
    "sepsis/onset.parquet",
    "sepsis/unusable.parquet",
    "sepsis/audit.json",
    "episodes/episodes.parquet",
    "episodes/steps.parquet",
    "episodes/audit.json",
    "splits/manifest.parquet",
    "splits/summary.json",
    "features/state_raw.parquet",
    "features/preprocessing.json",
    "actions/bins.json",
    "actions/step_actions.parquet",
    "audit/leakage.json",
    *(f"replay/{v}/replay_{s}.parquet" for v in VARIANTS for s in SPLITS),
    *(f"replay/{v}/meta.json" for v in VARIANTS),
)

LEADING_COLUMNS = (
    ("subject_id", pa.int64()),
    ("stay_id", pa.int64()),
    ("step", pa.int16()),
    ("action", pa.int16()),
    ("reward", pa.float32()),
    ("done", pa.bool_()),
)


def replay(ws: Path, variant: str, split: str) -> pa.Table:
    return pq.read_table(ws / "replay" / variant / f"replay_{split}.parquet")


def parquet_digests(ws: Path) -> dict[str, str]:
    return {
        p.relative_to(ws).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ws.rglob("*.parquet"))
        if not any(part.startswith(".") for part in p.relative_to(ws).parts)
    }


# -- workspace and replay contract ------------------------------------------------------------


def test_workspace_holds_every_file_the_contract_lists(built):
    ws, _, _ = built
    missing = [f for f in CONTRACT_FILES if not (ws / f).is_file()]
    assert not missing, f"missing from the workspace: {missing}"
    assert (ws / "build_summary.json").is_file()


def test_every_stage_folder_records_its_cache_key_in_stage_json(built):
    ws, _, summary = built
    keys = {s.name: s.key for s in summary.stages}
    assert list(keys) == list(STAGES)
    for name in STAGES:
        doc = read_json(ws / name / "stage.json")
        assert doc["stage"] == name
        assert re.fullmatch(r"[0-9a-f]{64}", doc["key"])
        assert doc["key"] == keys[name]
        assert doc["created_by"] == f"sepsisrl {__version__}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_replay_columns_have_contract_names_types_and_feature_order(built, variant):
    ws, cfg, _ = built
    names = cfg.feature_names
    for split in SPLITS:
        schema = pq.read_schema(ws / "replay" / variant / f"replay_{split}.parquet")
        leading = [(f.name, f.type) for f in schema][: len(LEADING_COLUMNS)]
        assert leading == list(LEADING_COLUMNS), split
        state_cols = schema.names[len(LEADING_COLUMNS) : len(LEADING_COLUMNS) + len(names)]
        assert state_cols == [f"s_{n}" for n in names], split
        assert [c for c in schema.names if c.startswith("s_")] == state_cols
        assert all(schema.field(c).type == pa.float32() for c in state_cols)


@pytest.mark.parametrize("variant", VARIANTS)
def test_replay_rows_are_sorted_episodes_with_done_only_on_the_last_step(built, variant):
    ws, _, _ = built
    for split in SPLITS:
        t = replay(ws, variant, split)
        assert t.num_rows > 0
        stay = t["stay_id"].to_numpy()
        step = t["step"].to_numpy().astype(np.int64)
        done = t["done"].to_numpy(zero_copy_only=False)
        same = stay[1:] == stay[:-1]
        assert (stay[1:] >= stay[:-1]).all(), f"{split}: not sorted by stay_id"
        assert (step[1:][same] == step[:-1][same] + 1).all(), f"{split}: steps not consecutive"
        starts = np.r_[True, ~same]
        assert (step[starts] == 0).all(), f"{split}: an episode does not start at step 0"
        last = np.r_[~same, True]
        assert (done == last).all(), f"{split}: done is not exactly the last step"


@pytest.mark.parametrize("variant", VARIANTS)
def test_meta_json_describes_the_dataset_it_sits_next_to(built, small_world, variant):
    ws, cfg, _ = built
    meta = read_json(ws / "replay" / variant / "meta.json")
    assert meta["schema_version"] == "1"
    assert meta["state_dim"] == 62
    assert meta["n_actions"] == 25
    assert meta["feature_names"] == cfg.feature_names
    assert len(meta["feature_names"]) == 62
    assert len(meta["action_labels"]) == 25
    assert len(set(meta["action_labels"])) == 25
    reward = meta["reward"]
    assert reward["variant"] == variant
    assert reward["terminal_survived"] == 15.0
    assert reward["terminal_died"] == -15.0
    expected_w = 0.0 if variant == "sparse" else cfg.rewards.sofa_delta_weight
    assert reward["sofa_delta_weight"] == expected_w
    assert reward["sofa_column"] == ("sofa_state" if variant == "sofa_state_shaped" else "sofa")
    assert meta["gamma"] == cfg.rewards.gamma
    for split in SPLITS:
        t = replay(ws, variant, split)
        assert meta["splits"][split] == {
            "n_episodes": len(np.unique(t["stay_id"].to_numpy())),
            "n_transitions": t.num_rows,
        }
    src = open_source(small_world.out_dir)
    assert meta["source"]["kind"] == "synthetic"
    assert meta["source"]["version"] == src.version
    assert meta["source"]["fingerprint"] == src.fingerprint()
    assert meta["created_by"] == f"sepsisrl {__version__}"


def test_missingness_flags_are_zero_or_one(built):
    ws, cfg, _ = built
    flags = [f"s_{n}" for n in cfg.feature_names if n.endswith("_missing")]
    assert len(flags) == 25
    values = np.concatenate(
        [replay(ws, v, s)[c].to_numpy() for v in VARIANTS for s in SPLITS for c in flags]
    )
    assert set(np.unique(values).tolist()) == {0.0, 1.0}


def test_train_split_features_are_standardised(built):
    ws, cfg, _ = built
    base = [f.name for f in cfg.features]
    t = replay(ws, "sofa_shaped", "train")
    for name in base:
        x = t[f"s_{name}"].to_numpy().astype(np.float64)
        assert abs(x.mean()) < 1e-3, f"{name}: train mean {x.mean()}"
        assert abs(x.std() - 1.0) < 1e-3, f"{name}: train std {x.std()}"


def test_actions_are_ids_0_to_24_and_identical_across_reward_variants(built):
    ws, _, _ = built
    seen: set[int] = set()
    for split in SPLITS:
        actions = [replay(ws, v, split)["action"].to_numpy() for v in VARIANTS]
        assert all((a == actions[0]).all() for a in actions[1:])
        assert actions[0].min() >= 0 and actions[0].max() <= 24
        seen.update(np.unique(actions[0]).tolist())
    assert seen <= set(range(25))
    assert 0 in seen and len(seen) > 5


def test_preprocessing_json_holds_median_clip_mean_std_per_feature(built):
    ws, cfg, _ = built
    doc = read_json(ws / "features" / "preprocessing.json")
    assert doc["order"] == [f.name for f in cfg.features]
    for name in doc["order"]:
        entry = doc["features"][name]
        assert {"median", "clip_low", "clip_high", "mean", "std", "transform"} <= set(entry)
        assert entry["std"] > 0
    assert doc["fitted_on"]["split"] == "train"


# -- caching -----------------------------------------------------------------------------------


def test_rerun_skips_every_stage_and_leaves_parquet_bytes_unchanged(built, small_world, tmp_path):
    ws, cfg, _ = built
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    before = parquet_digests(copy)
    summary = build(small_world.out_dir, copy, cfg)
    assert [s.name for s in summary.stages] == list(STAGES)
    assert all(s.skipped for s in summary.stages), [s.name for s in summary.stages if not s.skipped]
    assert parquet_digests(copy) == before
    assert before == parquet_digests(ws)
    report = read_json(copy / "build_summary.json")
    assert all(s["skipped"] for s in report["stages"].values())


def test_changing_only_the_sofa_reward_weight_reruns_only_replay_and_audit(
    built, small_world, tmp_path
):
    ws, _, _ = built
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    cfg = load_build_config(overrides={"rewards.sofa_delta_weight": -0.05})
    summary = build(small_world.out_dir, copy, cfg)
    rerun = [s.name for s in summary.stages if not s.skipped]
    assert rerun == ["replay", "audit"]
    meta = read_json(copy / "replay" / "sofa_shaped" / "meta.json")
    assert meta["reward"]["sofa_delta_weight"] == -0.05
    old = replay(ws, "sofa_shaped", "train")["reward"].to_numpy()
    new = replay(copy, "sofa_shaped", "train")["reward"].to_numpy()
    assert not np.array_equal(old, new)


# -- ground truth and summary ------------------------------------------------------------------


def test_sepsis3_cohort_matches_the_synthetic_ground_truth(built, small_world):
    ws, _, _ = built
    got = validate_sepsis(ws, small_world.truth_dir)
    assert got["stays"] == small_world.n_stays
    assert got["recall"] >= 0.90, got
    assert got["precision"] >= 0.90, got
    assert got["median_onset_error_hours"] <= 4.0, got


def test_build_summary_reports_counts_and_reference_counts_not_applied_to_synthetic(
    built, small_world
):
    ws, _, summary = built
    report = read_json(ws / "build_summary.json")
    assert report == summary.report
    counts = report["counts"]
    assert counts["icu_stays"] == small_world.n_stays
    assert 0 < counts["rl_episodes"] <= counts["sepsis3_stays"] <= counts["icu_stays"]
    tables = [replay(ws, "sparse", s) for s in SPLITS]
    assert counts["rl_episodes"] == sum(len(np.unique(t["stay_id"].to_numpy())) for t in tables)
    assert counts["transitions"] == sum(t.num_rows for t in tables)
    assert 0.0 < counts["mortality_90d"] < 1.0
    expected = report["expected"]
    assert expected["version"] == "3.1"
    assert expected["applies"] is False
    icu = expected["checks"]["icu_stays"]
    assert icu["expected_full_mimic_iv"] == [94458, 94458]
    assert icu["count"] == small_world.n_stays
    assert icu["within_expected"] is False
    assert {"sepsis3_stays", "rl_episodes"} <= set(expected["checks"])
    assert report["leakage_audit"] == "passed"
    assert report["source"]["kind"] == "synthetic"
    assert report["created_by"] == f"sepsisrl {__version__}"


def test_sofa_state_shaped_shapes_with_the_state_sofa_only(built):
    ws, cfg, _ = built
    below = 0
    for split in SPLITS:
        t = replay(ws, "sofa_state_shaped", split)
        sofa = t["sofa"].to_numpy().astype(np.float64)
        state = t["sofa_state"].to_numpy().astype(np.float64)
        # the state SOFA drops only the dose levels of the cardiovascular component
        assert (state <= sofa).all() and (sofa - state <= 4).all(), split
        below += int((state < sofa).sum())
        done = t["done"].to_numpy(zero_copy_only=False)
        reward = t["reward"].to_numpy().astype(np.float64)
        nxt = np.minimum(np.arange(len(state)) + 1, len(state) - 1)
        shaping = cfg.rewards.sofa_delta_weight * (state[nxt] - state)
        assert np.allclose(reward[~done], shaping[~done], atol=1e-6), split
        other = replay(ws, "sofa_shaped", split)
        assert np.array_equal(other["sofa_state"].to_numpy(), t["sofa_state"].to_numpy())
        assert np.array_equal(other["reward_eval"].to_numpy(), t["reward_eval"].to_numpy())
    assert below > 0  # vasopressors are given in the synthetic world


def test_ingest_of_some_outputs_writes_those_only_and_the_same_rows(small_world, built, tmp_path):
    """``run_ingest(only=...)`` (the truth's state function reads five of the nine tables)
    writes exactly the named tables, with the rows of the full stage; an unknown name is
    refused."""
    from sepsisrl.dataset.ingest import OUTPUTS, connect, run_ingest
    from sepsisrl.dataset.tables import MemoryTables

    ws, cfg, _ = built
    src = open_source(small_world.out_dir)
    con = connect(cfg, tmp_path)
    sink = MemoryTables("only")
    only = ("icustays", "chart", "outputs")
    run_ingest(src, cfg, sink, check_dictionaries=False, con=con, only=only)
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert {t for t in tables if t.startswith("only_")} == {f"only_{n}" for n in only}
    for name in only:
        got = con.sql(f"SELECT * FROM only_{name}").to_arrow_table()
        want = pq.read_table(ws / "ingest" / f"{name}.parquet")
        assert got.num_rows == want.num_rows > 0, name
        assert got.column_names == want.column_names, name
    with pytest.raises(ValueError, match=r"unknown outputs.*'prescriptions'"):
        run_ingest(src, cfg, sink, con=con, only=("chart", "prescriptions"))
    assert set(OUTPUTS) >= set(only)
    con.close()
