"""The fault battery (bench/faults.py): its quick subset must pass, and its judge must classify
outcomes the way docs/faults.md says.

The quick subset (``--fast``: bundle, inference-API, replay-meta and training-setting cases)
runs through the same runner as the full battery, on one small shared world (synth, build, a
400-step train, export: about 15 s), in well under a minute. The full battery (about 200
cases, about ten minutes on two cores) is ``python bench/faults.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_battery():
    spec = importlib.util.spec_from_file_location("sepsisrl_faults", ROOT / "bench" / "faults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


faults = _load_battery()
FAST = [c.id for c in faults.select(faults.all_cases(), None, None, fast=True)]


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    cases = faults.select(faults.all_cases(), None, None, fast=True)
    doc = faults.run_battery(cases, root=tmp_path_factory.mktemp("faults"))
    assert not doc["fixtures_failed"], doc["fixtures_failed"]
    return {c["id"]: c for c in doc["cases"]}


@pytest.mark.slow
@pytest.mark.parametrize("case_id", FAST)
def test_fast_fault_case_passes(fast_results: dict[str, dict], case_id: str) -> None:
    res = fast_results[case_id]
    assert res["outcome"] == "pass", f"{case_id}: {res['outcome']}: {res['note']}"


def test_battery_covers_every_family_with_enough_cases() -> None:
    cases = faults.all_cases()
    assert len(cases) >= 110
    assert {c.family for c in cases} == set(faults.FAMILIES)
    assert 10 <= len(FAST) <= 15
    # the faults the issue names are all there
    ids = {c.id for c in cases}
    for required in (
        "raw-unknown-fluid-unit-gal", "raw-norepinephrine-5000", "raw-patientweight-zero",
        "raw-dup-inputevents", "raw-dup-icustays", "raw-missing-admissions-rows",
        "raw-header-only-admissions", "raw-empty-prescriptions", "raw-middle-edit-chartevents",
        "replay-1e30-in-state", "replay-gamma-1.5", "replay-step-gap", "replay-empty-validation",
        "bundle-malicious-pickle", "api-select-2x31", "api-select-bool", "api-normalize-nan-flag",
        "kill9-synth", "kill9-train-step", "sigint-build-bg", "sigint-train-bg",
        "conc-train-overwrite", "conc-build", "conc-evaluate-during-train",
        "os-readonly-workspace", "os-workspace-is-file", "run-resume-other-setting",
    ):  # fmt: skip
        assert required in ids, required


def _case(**kw):
    base = dict(id="t", family="raw", description="", expected="refused", act=lambda c, d: [])
    return faults.Case(**{**base, **kw})


def _proc(rc: int | None, stderr: str = "", stdout: str = "", timed_out: bool = False):
    return faults.Proc("cmd", rc, stdout, stderr, 0.1, timed_out)


def test_judge_classifies_each_outcome(tmp_path: Path) -> None:
    ctx = faults.Ctx(tmp_path / "root")
    d = tmp_path / "case"
    d.mkdir()
    refused = _case(words=("inputevents", "gal|gallon"))

    def verdict(case, *procs):
        return faults.judge(ctx, case, d, list(procs))[0]

    assert verdict(refused, _proc(2, "error: inputevents: unit 'gal'")) == "pass"
    assert verdict(refused, _proc(0)) == "silent wrong"
    assert verdict(refused, _proc(2, "error: unknown unit")) == "unclear refusal"
    assert verdict(refused, _proc(1, "Traceback (most recent call last):\n  x")) == "traceback"
    assert verdict(refused, _proc(None, timed_out=True)) == "hang"
    assert verdict(refused, _proc(-9)) == "unclear refusal"
    # a message wrapped over two lines still names the table
    assert verdict(refused, _proc(2, "error: input\nevents: unit 'gal'")) == "pass"
    recovered = _case(expected="recovered", check=lambda c, dd, p: "3 rows differ")
    assert verdict(recovered, _proc(0)) == "silent wrong"
    assert verdict(recovered, _proc(2, "error: x")) == "wrong refusal"
    either = _case(expected="recovered", also=("refused",), words=("icustays",),
                   check=lambda c, dd, p: None)  # fmt: skip
    assert verdict(either, _proc(0)) == "pass"
    assert verdict(either, _proc(2, "error: icustays: duplicated stay_id")) == "pass"
    assert verdict(either, _proc(2, "error: something")) == "unclear refusal"
    interrupted = _case(rc=(130,), words=faults.INTERRUPT_WORDS)
    assert verdict(interrupted, _proc(130, "interrupted; run the same command again")) == "pass"
    assert verdict(interrupted, _proc(2, "interrupted; run the same command again")) == (
        "unclear refusal"
    )
    # a partial folder left behind turns a pass into debris
    (d / "ws").mkdir()
    (d / "ws" / ".ingest.partial-123").mkdir()
    assert verdict(refused, _proc(2, "error: inputevents: unit 'gal'")) == "debris"
    assert faults.find_debris(d) == ["ws/.ingest.partial-123"]


def test_csv_editing_keeps_untouched_lines_verbatim(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "t.csv.gz"
    text = 'a,b,c\n1,"x, y",3\n4,5,6\n'
    path.write_bytes(gzip.compress(text.encode()))
    t = faults.Csv(path)
    assert t.where("a", "4") == [1]
    t.set(1, c="60")
    t.save()
    assert gzip.decompress(path.read_bytes()).decode() == 'a,b,c\n1,"x, y",3\n4,5,60\n'


def test_weight_poisoning_reaches_a_runs_stacked_model_file_and_a_policy_file() -> None:
    """The NaN/inf run cases tamper with both files of a run's final/: the policy's
    ``net.0.weight`` and the stacked model's ``<network>.weights.<layer>`` (a layout without a
    key ending in "weight"; the cases errored in the battery itself before this was handled)."""
    import numpy as np

    model = {"actor.biases.0": np.zeros((1, 1, 3)), "actor.weights.0": np.ones((1, 2, 3)),
             "critic.weights.0": np.ones((2, 2, 3))}  # fmt: skip
    poisoned = faults._nan_first(model, float("inf"))
    assert np.isinf(poisoned["actor.weights.0"].flat[0])
    assert np.isfinite(model["actor.weights.0"]).all()  # the input is not modified
    policy = faults._nan_first({"net.0.bias": np.zeros(3), "net.0.weight": np.ones((3, 2))})
    assert np.isnan(policy["net.0.weight"].flat[0]) and not np.isnan(policy["net.0.bias"]).any()
