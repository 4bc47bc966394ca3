"""bench/hourly_fqe.py's confounding check (docs/evaluate.md item 18): the world's latent
truth joined to a chain hour reads only simulated hours that ended at or before it, and is
standardised on the train rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import load_bench


@pytest.fixture(scope="module")
def hourly():
    return load_bench("hourly_fqe.py")


def _sidecar(path: Path) -> None:
    """Two stays; stay 10's hours start at 00:07, stay 20's at 05:00; ``lactate`` is the
    hour's index + 100 * stay, so a row read back names itself."""
    base = 4_000_000_000  # seconds
    rows = {"stay_id": [], "hour_start": [], "lactate": [], "volume": []}
    for stay, start in ((10, base + 7 * 60), (20, base + 5 * 3600)):
        for k in range(6):
            rows["stay_id"].append(stay)
            rows["hour_start"].append((start + k * 3600) * 1000)  # ms, as the world writes it
            rows["lactate"].append(100.0 * stay + k)
            rows["volume"].append(float(k % 2))
    tab = pa.table({
        "stay_id": pa.array(rows["stay_id"], pa.int64()),
        "hour_start": pa.array(rows["hour_start"], pa.timestamp("ms")),
        "lactate": pa.array(rows["lactate"], pa.float32()),
        "volume": pa.array(rows["volume"], pa.float32()),
    })  # fmt: skip
    pq.write_table(tab.take(np.random.default_rng(0).permutation(tab.num_rows)), path)


def test_latent_columns_come_from_the_last_hour_ended_by_the_chain_hour(hourly, tmp_path):
    path = tmp_path / "hourly.parquet"
    _sidecar(path)
    base = 4_000_000_000
    # chain hours (seconds): stay 10 at 01:07 exactly (hour 0 has just ended), at 03:00 (hours
    # 0 and 1 ended, hour 2 still running) and at 06:07; stay 20 at 07:30
    t_s = np.array([base + 3600 + 420, base + 3 * 3600, base + 6 * 3600 + 420, base + 7.5 * 3600])
    chain = {
        "stay": np.array([10, 10, 10, 20]),
        "t_us": (t_s * 1_000_000).astype(np.int64),
        "split": np.array(["train", "train", "test", "train"]),
    }
    x = hourly.latent_at(path, chain, ["lactate"])
    raw = np.array([1000.0, 1001.0, 1005.0, 2001.0])  # the rows each hour may read
    train = raw[[0, 1, 3]]
    assert x[:, 0] == pytest.approx((raw - train.mean()) / train.std(), abs=1e-5)


def test_a_chain_hour_before_any_finished_hour_is_refused(hourly, tmp_path):
    path = tmp_path / "hourly.parquet"
    _sidecar(path)
    chain = {
        "stay": np.array([20]),
        "t_us": np.array([(4_000_000_000 + 5 * 3600 + 1800) * 1_000_000]),  # inside its hour 0
        "split": np.array(["train"]),
    }
    with pytest.raises(SystemExit, match="no earlier sidecar hour"):
        hourly.latent_at(path, chain, ["lactate"])


def test_latent_sets_are_named_and_never_empty(hourly):
    assert hourly._latent_set("lactate,volume") == ("latent", ["lactate", "volume"])
    assert hourly._latent_set("lac=lactate") == ("lac", ["lactate"])
    assert hourly._latent_set("all=confounders") == ("all", list(hourly.CONFOUNDERS))
    with pytest.raises(SystemExit, match="no columns"):
        hourly._latent_set("empty=")


def test_history_reads_the_same_phase_of_earlier_windows_of_the_same_episode(hourly):
    # two episodes on an hourly chain (2 phases per window): 6 hours of stay 1, 4 of stay 2
    stay = np.array([1] * 6 + [2] * 4)
    s = np.arange(10, dtype=np.float32)[:, None] * np.array([[1.0, -1.0]], dtype=np.float32)
    h = hourly.history_of({"s": s, "stay": stay, "phases": 2}, 2)
    assert h.shape == (10, 6)  # per lag: the 2 features and whether the episode reaches back
    lag1, has1, lag2, has2 = h[:, 0:2], h[:, 2], h[:, 3:5], h[:, 5]
    assert has1.tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 1, 1]
    assert lag1[:, 0].tolist() == [0, 0, 0, 1, 2, 3, 0, 0, 6, 7]  # never stay 1's rows
    assert lag1[:, 1].tolist() == [-v for v in lag1[:, 0].tolist()]
    assert has2.tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert lag2[:, 0].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]


def test_rescore_takes_intensity_from_the_panel_and_refuses_another_world(hourly, tmp_path):
    import json

    names = ["clinician", "a", "b", "c"]
    truth = [3.0, 2.0, 1.0, 0.0]
    # the estimate's error grows as the policy gives less: the confounding signature
    panel_rows = [
        {"policy": n, "truth": t, "estimates": {"fqe": [t, t - 1, t + 1]},
         "intensity": {"vaso_bin": 1.0 - i / 4, "fluid_bin": 2.0 - i / 2}}
        for i, (n, t) in enumerate(zip(names, truth, strict=True))
    ]  # fmt: skip
    rows = [
        {"policy": n, "truth": t, "truth_ci95": [t - 1, t + 1], "true_mortality_90d": 0.3,
         "estimates": {"fqe_4h_x": [t + i, t + i - 1, t + i + 1], "fqe": [t, t - 1, t + 1]}}
        for i, (n, t) in enumerate(zip(names, truth, strict=True))
    ]  # fmt: skip
    panel, out = tmp_path / "panel.json", tmp_path / "out.json"
    panel.write_text(json.dumps({"world_seed": 3, "rows": panel_rows}))
    out.write_text(json.dumps({"world_seed": 3, "rows": rows, "estimators": {}}))
    hourly.rescore(out, panel)
    doc = json.loads(out.read_text())
    assert doc["rows"][2]["intensity"] == panel_rows[2]["intensity"]
    by = doc["estimators"]["fqe_4h_x"]["error_by_intensity"]
    assert by["vaso_bin"]["error"] == pytest.approx(-1.0)
    assert doc["estimators"]["fqe"]["mae"] == pytest.approx(0.0)
    out.write_text(json.dumps({"world_seed": 4, "rows": rows, "estimators": {}}))
    with pytest.raises(SystemExit, match="panel of world 3"):
        hourly.rescore(out, panel)
