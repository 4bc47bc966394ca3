"""bench/halving.py --compare: two finished studies of one world, with and without successive
halving, compared by selection, stage-1 ranks, the full sweep's truths and the bytes of the
runs the halving trained to the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BENCH


def _study(ws: Path, candidates: list[dict], selected: tuple[str, int], truths: dict) -> None:
    """A finished study's records as bench/halving.py reads them; each candidate:
    name, rank, steps (stage-1 run's), stopped (step or None), seeds [(seed, weight bytes)]."""
    rows = []
    for c in candidates:
        seeds = []
        for i, (seed, weights) in enumerate(c["seeds"]):
            run = f"runs/{c['name']}_seed{seed}"
            if c["stopped"] is not None:
                run += f"_step{c['stopped']}"
            (ws / run / "final").mkdir(parents=True)
            (ws / run / "final" / "policy.safetensors").write_bytes(weights)
            doc = {"total_steps": c["steps"]}
            if c["stopped"] is not None and i == 0:
                doc = {"snapshot_of": {"step": c["stopped"]}, "total_steps": 90}
            (ws / run / "config.json").write_text(json.dumps(doc))
            seeds.append({"seed": seed, "run": run})
        rows.append({"name": c["name"], "score": -c["rank"], "stage1_rank": c["rank"],
                     "stopped_at_step": c["stopped"], "seeds": seeds})  # fmt: skip
    finalists = [c["name"] for c in candidates if len(c["seeds"]) > 1]
    (ws / "study").mkdir(parents=True)
    stopped = [c["name"] for c in candidates if c["stopped"] is not None]
    rungs = [{"rung": 1, "rungs": 2, "step": candidates[-1]["stopped"], "candidates": 3,
              "passed": 3, "keep": 2, "cut": -2.0, "kept": finalists, "stopped": stopped,
              "within_noise": stopped, "noise_test": "paired"}] if stopped else []  # fmt: skip
    selection = {"candidates": rows, "finalists": finalists, "halving": rungs,
                 "selected": {"name": selected[0], "seed": selected[1]}}  # fmt: skip
    (ws / "study" / "selection.json").write_text(json.dumps(selection))
    best = max(truths, key=truths.get)
    truth = {"selection": {
        "selected_true_value": truths[selected[0]], "best_candidate": best,
        "best_true_value": truths[best], "regret": truths[best] - truths[selected[0]],
        "candidate_true_values": truths,
    }}  # fmt: skip
    (ws / "study" / "truth.json").write_text(json.dumps(truth))


def test_compare_reports_the_selections_their_truths_and_which_full_runs_match(tmp_path):
    full, halving = tmp_path / "full", tmp_path / "halving"
    truths = {"a": 4.0, "b": 4.5, "c": 3.0}
    _study(full, [
        {"name": "a", "rank": 1, "steps": 90, "stopped": None, "seeds": [(1, b"A1"), (2, b"A2")]},
        {"name": "b", "rank": 2, "steps": 90, "stopped": None, "seeds": [(1, b"B1"), (2, b"B2")]},
        {"name": "c", "rank": 3, "steps": 90, "stopped": None, "seeds": [(1, b"C1")]},
    ], ("a", 1), truths)  # fmt: skip
    # halving: c stopped at step 10; b's second seed came out other bytes than the full sweep's
    _study(halving, [
        {"name": "b", "rank": 1, "steps": 90, "stopped": None, "seeds": [(1, b"B1"), (2, b"xx")]},
        {"name": "a", "rank": 2, "steps": 90, "stopped": None, "seeds": [(1, b"A1"), (2, b"A2")]},
        {"name": "c", "rank": 3, "steps": 90, "stopped": 10, "seeds": [(1, b"c")]},
    ], ("b", 2), {**truths, "c": 2.0})  # fmt: skip
    out = tmp_path / "cmp.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "halving.py"), "--compare", str(halving), str(full),
         "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["same_selection"] is False and "DIFFERENT" in proc.stdout
    assert doc["full_finalists_kept_by_halving"] == ["a", "b"]
    assert doc["stage1_rank_spearman"] == pytest.approx(0.5)  # ranks (2, 1, 3) against (1, 2, 3)
    assert doc["stage1_training_step_ratio"] == pytest.approx((90 + 90 + 10) / 270)
    # judged by the full sweep's truths: b is the best candidate there, so no regret
    assert doc["halving_selected_true_value"] == 4.5 and doc["halving_regret"] == 0.0
    assert doc["same_runs"] == {
        "identical": 3, "of": 4, "differ": ["runs/b_seed2"], "not_in_full": [],
    }  # fmt: skip
    assert "3 of 4" in proc.stdout
    # the halving's rung records (selection.json -> halving), the full sweep's stops named
    assert [r["stopped"] for r in doc["rungs"]] == [["c"]]
    assert "rung 1 (10 steps): 3 of 3 passed every gate, kept 2, stopped 1, 1 of them within " \
           "the noise (cut -2.0, test paired)" in proc.stdout  # fmt: skip
    # a finalist's stage-2 seed the full sweep never trained is not counted as differing
    (full / "runs" / "a_seed2" / "final" / "policy.safetensors").unlink()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "halving.py"), "--compare", str(halving), str(full),
         "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    same = json.loads(out.read_text())["same_runs"]
    assert (same["identical"], same["of"], same["not_in_full"]) == (2, 3, ["runs/a_seed2"])
