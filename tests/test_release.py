"""`sepsisrl export`: the model repository, its standalone wrapper, and its safety checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from sepsisrl.ope.evaluate import EvalConfig, evaluate
from sepsisrl.ope.fqe import FQEConfig
from sepsisrl.release.bundle import ExportError, export_run
from sepsisrl.release.modeling_iql import PUBLISHED_FEATURE_NAMES, decode_action, load_policy
from sepsisrl.rl.config import load_train_config
from sepsisrl.rl.policies import TrainedPolicy
from sepsisrl.rl.trainer import train

FILES = {
    "model.safetensors",
    "config.json",
    "modeling_iql.py",
    "requirements.txt",
    "LICENSE.md",
    "README.md",
}


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory):
    ws, _, _ = built
    root = tmp_path_factory.mktemp("release")
    replay = ws / "replay" / "sofa_shaped"
    cfg = load_train_config(
        overrides={"steps": 60, "log_every": 30, "checkpoint_every": 30, "batch_size": 64}
    )
    run = train(replay, cfg, root / "runs" / "iql").run_dir
    fqe = FQEConfig(hidden=(32, 32), members=2, max_steps=60, min_steps=20, eval_every=20)
    ev = evaluate(
        run,
        replay,
        root / "eval" / "iql",
        kind="run",
        cfg=EvalConfig(bootstrap_resamples=200, fqe=fqe),
    )
    bundle = export_run(run, root / "bundle", evaluations=[root / "eval" / "iql"])
    return ws, replay, run, bundle, ev


def test_the_repository_has_the_contract_files(exported):
    *_, bundle, _ = exported
    assert {p.name for p in bundle.iterdir()} == FILES
    cfg = json.loads((bundle / "config.json").read_text())
    keys = (
        "model_type", "state_dim", "n_actions", "hidden_sizes", "activation", "feature_names",
        "normalization", "action_bins", "action_labels", "training", "dataset", "package",
        "metrics",
    )  # fmt: skip
    for key in keys:
        assert cfg[key] is not None, key
    assert len(cfg["feature_names"]) == cfg["state_dim"] == 62
    assert set(cfg["normalization"]) <= set(cfg["feature_names"])
    assert len(cfg["action_bins"]["vasopressor"]["edges"]) == 3
    assert cfg["training"]["seed"] == 42
    from safetensors.torch import load_file

    assert sorted(load_file(str(bundle / "model.safetensors"))) == [
        "net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight", "net.4.bias", "net.4.weight",
    ]  # fmt: skip


def test_exported_logits_equal_the_trained_actor(exported):
    _, _, run, bundle, _ = exported
    policy = load_policy(bundle)
    states = torch.randn(1000, 62, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exported_logits = policy(states).numpy()
    trained = TrainedPolicy(run).logits(states.numpy())
    assert np.allclose(exported_logits, trained, atol=1e-6)


def test_single_state_calls_agree_with_the_batch_forward(exported):
    *_, bundle, _ = exported
    policy = load_policy(bundle)
    states = torch.randn(300, 62, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        logits = policy(states)
    greedy = logits.argmax(1).tolist()
    for i, row in enumerate(states):
        for form in (row.tolist(), tuple(row.tolist()), row.numpy(), row, row[None]):
            assert policy.select_action(form) == greedy[i]
        probs = policy.action_probabilities(row.tolist())
        assert np.allclose(probs, torch.softmax(logits[i], 0).numpy(), atol=1e-6)


def test_card_reports_the_measured_metrics_and_the_research_only_warning(exported):
    *_, bundle, ev = exported
    card = (bundle / "README.md").read_text()
    assert card.startswith("---\n") and "model-index:" in card
    assert "RESEARCH ONLY - NOT FOR CLINICAL USE" in card
    assert f"{ev['metrics']['clinician_agreement']:.4f}" in card
    assert f"{ev['metrics']['support_mass']:.4f}" in card
    for section in ("## Intended use", "## Out-of-scope use", "## Training data", "## Evaluation",
                    "## Limitations and risks", "## Citation"):  # fmt: skip
        assert section in card
    license_text = (bundle / "LICENSE.md").read_text()
    assert "No clinical use" in license_text and "MIMIC-IV" in license_text


def test_the_card_sets_the_policys_treatment_intensity_beside_the_clinicians(exported):
    *_, bundle, _ = exported
    cfg = json.loads((bundle / "config.json").read_text())
    got = cfg["treatment_intensity"]
    # by hand from the evaluation's per-decision table (action = 5 * vaso_bin + fluid_bin)
    rows = (bundle.parent / "eval" / "iql" / "cases.csv").read_text().splitlines()[1:]
    policy = np.array([int(r.split(",")[3]) for r in rows])
    logged = np.array([int(r.split(",")[2]) for r in rows])
    assert got["split"] == "validation" and got["evaluation"] == "iql"
    assert got["decisions"] == len(rows)
    assert got["vaso_bin"] == pytest.approx((policy // 5).mean())
    assert got["fluid_bin"] == pytest.approx((policy % 5).mean())
    assert got["clinician_vaso_bin"] == pytest.approx((logged // 5).mean())
    assert got["clinician_fluid_bin"] == pytest.approx((logged % 5).mean())
    card = (bundle / "README.md").read_text()
    assert f"**Treatment intensity.** On the {len(rows)} decisions of its validation" in card
    assert f"mean IV-fluid bin {got['fluid_bin']:.2f} against the clinicians' " in card
    less = (
        got["vaso_bin"] < got["clinician_vaso_bin"] or got["fluid_bin"] < got["clinician_fluid_bin"]
    )
    assert ("(confounding by indication)" in card) == less


def test_the_card_says_for_how_many_decisions_the_logs_follow_the_policy(exported):
    *_, bundle, ev = exported
    got = json.loads((bundle / "config.json").read_text())["decisions_followed"]
    ess, gate = ev["overlap"]["ess_per_decision"], ev["config"]["gates"]["is_ess_min"]
    k = 0
    while k < len(ess) and ess[k] >= gate:  # by hand: the leading decisions at the gate's ESS
        k += 1
    assert got == {"split": "validation", "evaluation": "iql", "episodes": ev["episodes"],
                   "followed": k, "decisions": len(ess), "ess_min": gate}  # fmt: skip
    card = (bundle / "README.md").read_text()
    where = {0: f"at none of its {len(ess)} decisions",
             1: f"for its first decision only, of {len(ess)}",
             len(ess): f"through all {len(ess)} of its decisions"}.get(
                 k, f"for its first {k} of {len(ess)} decisions only")  # fmt: skip
    assert f"(per-decision ESS) stays at or above {gate:g} {where}." in card
    assert ("its offline value rests on states they do not hold" in card) == (k < len(ess))


def test_an_unevaluated_run_gets_no_numbers(exported, tmp_path):
    _, _, run, evaluated, _ = exported
    copy = tmp_path / "runs" / "fresh"
    shutil.copytree(run, copy)
    bundle = export_run(copy, tmp_path / "b", evaluations=[])
    card = (bundle / "README.md").read_text()
    assert "has not been evaluated" in card
    assert json.loads((bundle / "config.json").read_text())["metrics"] is None
    assert json.loads((bundle / "config.json").read_text())["treatment_intensity"] is None
    assert "Treatment intensity" not in card
    assert json.loads((bundle / "config.json").read_text())["decisions_followed"] is None
    assert "How far the logs follow it" not in card
    # another run's evaluation says nothing about this run's intensity
    other = export_run(copy, tmp_path / "c", evaluations=[evaluated.parent / "eval" / "iql"])
    assert json.loads((other / "config.json").read_text())["treatment_intensity"] is None


def test_the_bundle_holds_no_patient_level_data(exported):
    _, replay, _, bundle, _ = exported
    import pyarrow.parquet as pq

    ids = set()
    for split in ("train", "validation", "test"):
        t = pq.read_table(replay / f"replay_{split}.parquet", columns=["subject_id", "stay_id"])
        ids |= {str(x) for x in t["subject_id"].to_pylist()} | {
            str(x) for x in t["stay_id"].to_pylist()
        }
    for path in bundle.iterdir():
        assert path.suffix not in (".parquet", ".csv", ".gz")
        if path.suffix in (".json", ".md", ".txt", ".py"):
            text = path.read_text()
            assert "stay_id" not in text and "subject_id" not in text, path.name
            tokens = set(text.replace(",", " ").replace('"', " ").split())
            assert not (tokens & ids), path.name


def test_minimal_published_style_checkpoint_loads_with_alphabetical_order(exported, tmp_path):
    *_, bundle, _ = exported
    minimal = tmp_path / "minimal"
    minimal.mkdir()
    shutil.copy(bundle / "model.safetensors", minimal / "model.safetensors")
    (minimal / "config.json").write_text(json.dumps({"state_dim": 62, "n_actions": 25}))
    policy = load_policy(minimal / "model.safetensors")
    assert policy.feature_names == PUBLISHED_FEATURE_NAMES == sorted(PUBLISHED_FEATURE_NAMES)
    assert 0 <= policy.select_action([0.0] * 62) < 25


def test_bad_inputs_are_clear_value_errors(exported):
    *_, bundle, _ = exported
    policy = load_policy(bundle)
    for bad in (
        [0.0] * 61,
        [float("nan")] * 62,
        [float("inf")] + [0.0] * 61,
        "not a state",
        [None] * 62,
        [True] + [0.0] * 61,
        ["1.0"] + [0.0] * 61,
        [1e300] + [0.0] * 61,  # beyond float32 range
        np.zeros(61),
        torch.full((62,), float("nan")),
    ):
        with pytest.raises(ValueError):
            policy.select_action(bad)
    with pytest.raises(ValueError, match="shape"):
        policy(torch.zeros(3, 61))
    with pytest.raises(ValueError, match=r"torch\.Tensor"):
        policy([[0.0] * 62])
    with pytest.raises(ValueError, match="unknown feature"):
        policy.normalize({"heart_rat": 80})
    with pytest.raises(ValueError, match="finite number"):
        policy.normalize({"heart_rate": float("nan")})
    for bad in (-1, 25, 2.5, "3", True):
        with pytest.raises(ValueError):
            decode_action(bad)


def test_decode_and_normalize(exported):
    *_, bundle, _ = exported
    assert decode_action(0) == (0, 0, "no_vaso×no_fluid")
    assert decode_action(np.int64(13)) == (2, 3, "vaso_Q2×fluid_Q3")
    policy = load_policy(bundle)
    stats = policy.config["normalization"]
    x = policy.normalize({"heart_rate": 10_000, "map": None})
    names = policy.feature_names
    hr = x[names.index("heart_rate")]
    assert hr == pytest.approx(
        (stats["heart_rate"]["clip_high"] - stats["heart_rate"]["mean"])
        / stats["heart_rate"]["std"]
    )
    mp = x[names.index("map")]
    assert mp == pytest.approx(
        (stats["map"]["median"] - stats["map"]["mean"]) / stats["map"]["std"]
    )
    assert x[names.index("map_missing")] == 1.0
    assert sum(policy.action_probabilities(x)) == pytest.approx(1.0)


def test_a_malicious_pickle_bin_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"net.0.weight": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refused"):
        load_policy(folder)
    assert not marker.exists()


def test_a_plain_bin_fallback_loads(exported, tmp_path):
    *_, bundle, _ = exported
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(load_file(str(bundle / "model.safetensors")), folder / "pytorch_model.bin")
    shutil.copy(bundle / "config.json", folder / "config.json")
    assert load_policy(folder).select_action([0.0] * 62) == load_policy(bundle).select_action(
        [0.0] * 62
    )


def test_export_refuses_incomplete_or_actorless_runs(exported, tmp_path):
    _, _, run, _, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    shutil.rmtree(broken / "final")
    with pytest.raises(ExportError, match="complete"):
        export_run(broken, tmp_path / "o1")
    cql = tmp_path / "cql"
    shutil.copytree(run, cql)
    cfg = json.loads((cql / "config.json").read_text())
    cfg["algo"] = "cql"
    (cql / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="actor"):
        export_run(cql, tmp_path / "o2")


@pytest.mark.slow
def test_the_wrapper_runs_in_a_fresh_venv_with_only_torch_and_safetensors(exported, tmp_path):
    *_, bundle, _ = exported
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = [str(py), "-m", "pip", "install", "--quiet", "torch==2.13.0", "safetensors"]
    subprocess.run(install, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "sepsisrl" not in names and "numpy" not in names and "pyarrow" not in names
    script = (
        "from modeling_iql import load_policy, decode_action\n"
        "p = load_policy('.')\n"
        "a = p.select_action(p.normalize({'heart_rate': 120, 'map': 55, 'lactate': 5}))\n"
        "print(a, decode_action(a)[2])\n"
    )
    out = subprocess.run([str(py), "-c", script], cwd=bundle, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    action = int(out.stdout.split()[0])
    assert 0 <= action < 25


def test_push_uploads_through_huggingface_hub_when_available(exported, tmp_path, monkeypatch):
    import types

    from sepsisrl.release.bundle import push_to_hub

    *_, bundle, _ = exported
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, exist_ok):
            calls.append(("create", repo_id, exist_ok))

        def upload_folder(self, folder_path, repo_id):
            calls.append(("upload", sorted(os.listdir(folder_path)), repo_id))
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=FakeApi))
    assert push_to_hub(bundle, "lab/sepsis-iql").endswith("/commit/abc")
    assert calls == [
        ("create", "lab/sepsis-iql", True),
        ("upload", sorted(FILES), "lab/sepsis-iql"),
    ]

    class OfflineApi(FakeApi):
        def upload_folder(self, folder_path, repo_id):
            raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=OfflineApi))
    with pytest.raises(ExportError, match="complete at"):
        push_to_hub(bundle, "lab/sepsis-iql")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ExportError, match="pip install huggingface_hub"):
        push_to_hub(bundle, "lab/sepsis-iql")


def test_the_card_says_how_firmly_successive_halving_cut_the_candidates(exported):
    """A study's export states its selection; with halving, each rung's stops and how many of
    them the validation data did not show worse (a 95 % interval reaching the cut). The
    report's model-selection section states the same."""
    from types import SimpleNamespace

    from sepsisrl.contracts import HalvingRung, ModelConfig
    from sepsisrl.release.bundle import selection_lines
    from sepsisrl.study.report.sections.selection import halving

    *_, bundle, _ = exported
    assert json.loads((bundle / "config.json").read_text())["selection"] is None  # no study
    assert "**Selection.**" not in (bundle / "README.md").read_text()

    def rung(r, stopped, noise):
        return {"rung": r, "rungs": 3, "step": 100 * r, "candidates": 9, "passed": 9, "keep": 3,
                "cut": 1.5 if stopped else None, "last_kept": "a" if stopped else None,
                "kept": ["a"], "stop": "rank", "stopped": stopped, "within_noise": noise,
                "spared": [], "noise_test": "paired",
                "differences": {n: [-0.1, -0.3, 0.1 if n in noise else -0.05]
                                for n in stopped}}  # fmt: skip

    rungs = [rung(1, ["c", "d"], []), rung(2, ["e"], [])]
    firm = {"profile": "card_halving", "score": "wdr_ci_low", "candidates": 9,
            "finalists": ["a", "b"], "halving": rungs}  # fmt: skip
    noisy = {**firm, "halving": [rung(1, ["c", "d"], ["d"]), rung(2, [], [])]}
    cfg = json.loads((bundle / "config.json").read_text())
    for sel in (firm, noisy):  # the contract takes both
        ModelConfig.parse({**cfg, "selection": sel}, bundle / "config.json")
    (text,) = [t for t in selection_lines(firm) if t]
    assert "(profile `card_halving`) chose this configuration among 9" in text
    assert "rung 1 (100 steps) stopped 2, 0 of them within the noise" in text
    assert "a full sweep may select another configuration" not in text
    (text,) = [t for t in selection_lines(noisy) if t]
    assert "rung 1 (100 steps) stopped 2, 1 of them within the noise" in text
    assert "a full sweep may select another configuration" in text
    assert selection_lines(None) == []
    # stop: credible - the candidates within the noise went on, nothing to caution
    spared = {**noisy, "halving": [{**rung(1, ["c"], ["d"]), "stop": "credible", "spared": ["d"]}]}
    (text,) = [t for t in selection_lines(spared) if t]
    assert "rung 1 (100 steps) stopped 1, and kept on 1 past the cut within the noise" in text
    assert "a full sweep may select another configuration" not in text

    def report(sel):
        st = SimpleNamespace(
            selection=SimpleNamespace(halving=[HalvingRung(**r) for r in sel["halving"]]),
            estimator="wdr",
        )
        return [f"{getattr(b, 'kind', '')}: {getattr(b, 'text', '')}" for b in halving(st)]

    firm_text = " ".join(report(firm))
    assert "Every one of the 3 stopped candidates is credibly worse than its rung" in firm_text
    assert "within the noise:" not in firm_text
    noisy_text = " ".join(report(noisy))
    assert "warning: Successive halving stopped candidates within the noise: at rung 1, 1 of " \
           "the 2 stopped (d)." in noisy_text  # fmt: skip
    assert report({"halving": []}) == []
    spared_text = " ".join(report(spared))
    assert "stop: credible kept on the candidates past the cut" in spared_text
    assert "at rung 1, 1 (d)" in spared_text and "warning:" not in spared_text
