"""The leakage audit catches each kind of leakage injected into a copy of a built workspace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sepsisrl.dataset.actions import DoseBins, rows_sha256
from sepsisrl.dataset.leakage import LeakageError, audit_workspace, run_leakage_audit
from sepsisrl.dataset.preprocessing import StatePreprocessor
from sepsisrl.workspace import read_json

CHECKS = (
    "patient_in_one_split",
    "fitted_on_train_only",
    "no_outcome_features",
    "causal_states",
    "aligned_transitions",
)
SPLITS = ("train", "validation", "test")


@pytest.fixture
def ws(built, tmp_path: Path) -> Path:
    """A private copy of the built workspace, safe to corrupt."""
    copy = tmp_path / "ws"
    shutil.copytree(built[0], copy)
    return copy


def outcomes(report) -> dict[str, bool]:
    return {c["check"]: c["passed"] for c in report["checks"]}


def detail(report, check: str) -> str:
    return next(c["detail"] for c in report["checks"] if c["check"] == check)


def assert_only_failure(ws: Path, cfg, check: str, tmp_path: Path) -> str:
    """``check`` fails, every other check passes, and the build-time audit raises naming it."""
    report = audit_workspace(ws, cfg)
    assert not report["passed"]
    assert outcomes(report) == {c: c != check for c in CHECKS}
    out = tmp_path / "audit_out"
    out.mkdir()
    with pytest.raises(LeakageError, match=check) as err:
        run_leakage_audit(ws, cfg, out)
    assert [c for c in CHECKS if c in str(err.value)] == [check]
    written = read_json(out / "leakage.json")
    assert written["passed"] is False
    return detail(report, check)


def write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def test_clean_copy_passes_every_check(ws, built, tmp_path):
    cfg = built[1]
    report = audit_workspace(ws, cfg)
    assert report["passed"]
    assert outcomes(report) == dict.fromkeys(CHECKS, True)
    out = tmp_path / "audit_out"
    out.mkdir()
    run_leakage_audit(ws, cfg, out)
    assert read_json(out / "leakage.json")["passed"] is True


def test_patient_in_two_splits_is_caught(ws, built, tmp_path):
    folder = ws / "replay" / "sparse"
    train = pq.read_table(folder / "replay_train.parquet")
    test = pq.read_table(folder / "replay_test.parquet")
    subject = train["subject_id"][0].as_py()
    episode = train.filter(pc.equal(train["subject_id"], subject))
    write(pa.concat_tables([test, episode]), folder / "replay_test.parquet")

    msg = assert_only_failure(ws, built[1], "patient_in_one_split", tmp_path)
    assert str(subject) in msg


def _all_rows_preprocessing(ws: Path) -> tuple[dict, StatePreprocessor, pa.Table]:
    doc = read_json(ws / "features" / "preprocessing.json")
    state = pq.read_table(ws / "features" / "state_raw.parquet")
    prep = StatePreprocessor.from_json(doc)
    everything = StatePreprocessor(prep.names, prep.clip, prep.log1p)
    everything.fit_scaler(np.column_stack([state[n].to_numpy() for n in prep.names]))
    return doc, everything, state


def test_normalisation_fitted_on_all_rows_is_caught(ws, built, tmp_path):
    doc, everything, state = _all_rows_preprocessing(ws)
    for name in doc["order"]:
        doc["features"][name]["mean"] = everything.mean[name]
        doc["features"][name]["std"] = everything.std[name]
    doc["fitted_on"]["rows_sha256"] = rows_sha256(
        state["stay_id"].to_numpy(), state["step"].to_numpy().astype(np.int64)
    )
    doc["fitted_on"]["steps"] = state.num_rows
    (ws / "features" / "preprocessing.json").write_text(json.dumps(doc))

    msg = assert_only_failure(ws, built[1], "fitted_on_train_only", tmp_path)
    assert "preprocessing.json was not fitted on exactly the train rows" in msg
    assert "normalisation of heart_rate differs from a train-only refit" in msg


def test_normalisation_from_all_rows_is_caught_even_with_a_train_fingerprint(ws, built, tmp_path):
    doc, everything, _ = _all_rows_preprocessing(ws)
    for name in doc["order"]:
        doc["features"][name]["mean"] = everything.mean[name]
    (ws / "features" / "preprocessing.json").write_text(json.dumps(doc))

    msg = assert_only_failure(ws, built[1], "fitted_on_train_only", tmp_path)
    assert "not fitted on exactly the train rows" not in msg
    assert "differs from a train-only refit" in msg


def test_imputation_medians_of_all_rows_are_caught(ws, built, tmp_path):
    cfg = built[1]
    doc = read_json(ws / "features" / "preprocessing.json")
    state = pq.read_table(ws / "features" / "state_raw.parquet")
    changed = []
    for f in cfg.features:
        obs = f"obs_{f.name}"
        if f.impute != "ff" or obs not in state.column_names:
            continue
        seen = state[f.name].to_numpy()[state[obs].to_numpy(zero_copy_only=False)]
        median = float(np.median(seen))
        if median != doc["features"][f.name]["median"]:
            changed.append(f.name)
        doc["features"][f.name]["median"] = median
    assert changed, "the all-row medians equal the train medians: the fault would be invisible"
    (ws / "features" / "preprocessing.json").write_text(json.dumps(doc))

    msg = assert_only_failure(ws, cfg, "fitted_on_train_only", tmp_path)
    assert "imputation median of" in msg


def test_action_bins_refit_on_all_steps_are_caught(ws, built, tmp_path):
    bins = read_json(ws / "actions" / "bins.json")
    acts = pq.read_table(ws / "actions" / "step_actions.parquet")
    # the action whose all-steps edges differ from the train-only ones (fluid volumes are often
    # round numbers, so their quantiles can coincide)
    for key, col in (("iv_fluid", "fluid_ml"), ("vasopressor", "vaso_ne_rate")):
        refit = DoseBins(len(bins[key]["edges"]) + 2).fit(acts[col].to_numpy())
        if not np.allclose(refit.edges, bins[key]["edges"]):
            break
    assert not np.allclose(refit.edges, bins[key]["edges"])
    bins[key]["edges"] = refit.edges.tolist()
    (ws / "actions" / "bins.json").write_text(json.dumps(bins))

    msg = assert_only_failure(ws, built[1], "fitted_on_train_only", tmp_path)
    assert f"{key} bin edges differ from a train-only refit" in msg


def test_outcome_derived_feature_in_the_state_is_caught(ws, built, tmp_path):
    cfg = built[1]
    for variant in cfg.rewards.variants:
        folder = ws / "replay" / variant
        for split in SPLITS:
            path = folder / f"replay_{split}.parquet"
            t = pq.read_table(path)
            died = pa.array(np.zeros(t.num_rows, dtype=np.float32))
            write(t.append_column("s_died_90d", died), path)
        meta = read_json(folder / "meta.json")
        meta["feature_names"].append("died_90d")
        meta["state_dim"] += 1
        (folder / "meta.json").write_text(json.dumps(meta))

    msg = assert_only_failure(ws, cfg, "no_outcome_features", tmp_path)
    assert "died_90d" in msg


def test_state_using_data_charted_at_its_decision_time_is_caught(ws, built, tmp_path):
    path = ws / "features" / "state_raw.parquet"
    state = pq.read_table(path)
    source_time = state["max_source_time"].to_numpy(zero_copy_only=False).copy()
    tau = state["tau"].to_numpy(zero_copy_only=False)
    rows = [10, 11, 12]
    source_time[rows] = tau[rows]
    kind = state.schema.field("max_source_time").type
    write(replace_column(state, "max_source_time", pa.array(source_time, kind)), path)

    msg = assert_only_failure(ws, built[1], "causal_states", tmp_path)
    assert msg.startswith("3 state(s) use data charted at or after their decision time")


@pytest.mark.parametrize("variant", ["sparse", "sofa_shaped", "full_shaped"])
def test_reward_shifted_by_one_row_is_caught(ws, built, tmp_path, variant):
    path = ws / "replay" / variant / "replay_train.parquet"
    t = pq.read_table(path)
    shifted = np.roll(t["reward"].to_numpy(), 1)
    assert not np.array_equal(shifted, t["reward"].to_numpy())
    write(replace_column(t, "reward", pa.array(shifted, pa.float32())), path)

    msg = assert_only_failure(ws, built[1], "aligned_transitions", tmp_path)
    assert f"{variant}/replay_train" in msg
