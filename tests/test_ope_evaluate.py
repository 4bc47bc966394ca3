"""`evaluate`: one code path for every policy, nothing fitted on the evaluated split,
test split only with --final (recorded), artifacts per docs/contracts.md."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sepsisrl.ope.behaviour import BehaviourConfig, BehaviourModel
from sepsisrl.ope.evaluate import EvalConfig, evaluate
from sepsisrl.ope.fqe import FQEConfig
from sepsisrl.ope.summary import CARD_ROWS, card_table, summarize
from sepsisrl.rl.config import load_train_config
from sepsisrl.rl.data import load_split
from sepsisrl.rl.policies import TrainedPolicy
from sepsisrl.rl.trainer import train

FAST = EvalConfig(
    bootstrap_resamples=200,
    behaviour=BehaviourConfig(max_epochs=4),
    fqe=FQEConfig(members=3),
)


@pytest.fixture(scope="module")
def setup(built, tmp_path_factory):
    ws, _, _ = built
    root = tmp_path_factory.mktemp("ope")
    replay = ws / "replay" / "sofa_shaped"
    runs = {}
    for algo, seed in (("iql", 1), ("iql", 2), ("bc", 1)):
        cfg = load_train_config(overrides={
            "algo": algo, "seed": seed, "steps": 60, "hidden_sizes": [32, 32], "batch_size": 64,
            "log_every": 30, "checkpoint_every": 30,
        })  # fmt: skip
        runs[f"{algo}{seed}"] = train(replay, cfg, root / "runs" / f"{algo}{seed}").run_dir
    evals = {}
    for name, spec, kind in (
        ("iql1", runs["iql1"], "run"), ("iql2", runs["iql2"], "run"), ("bc1", runs["bc1"], "run"),
        ("clinician", "clinician", "named"), ("no_treatment", "no_treatment", "named"),
        ("random", "random", "named"),
    ):  # fmt: skip
        evals[name] = evaluate(spec, replay, root / "eval" / name, kind=kind, cfg=FAST)
    return ws, replay, runs, evals, root


CARD_KEYS = [k for k, _ in CARD_ROWS]


def test_every_policy_kind_gets_the_same_metrics(setup):
    *_, evals, _ = setup
    for name, doc in evals.items():
        assert set(CARD_KEYS) <= set(doc["metrics"]), name
        assert doc["split"] == "validation" and doc["final"] is False
        assert doc["episodes"] > 10


def test_artifacts_are_written(setup):
    *_, root = setup
    out = root / "eval" / "iql1"
    doc = json.loads((out / "metrics.json").read_text())
    for fig in ("actions_clinician.png", "actions_policy.png", "actions_difference.png"):
        assert (out / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "cases.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == doc["decisions"]
    assert (out / "behaviour" / "behaviour.safetensors").is_file()
    assert json.loads((out / "behaviour" / "behaviour.json").read_text())["kind"] in (
        "logistic",
        "mlp",
    )


def test_clinician_policy_is_on_policy(setup):
    *_, evals, _ = setup
    m = evals["clinician"]["metrics"]
    assert m["wis_mean"] == pytest.approx(m["observed_return_mean"])
    assert m["ess"] == pytest.approx(evals["clinician"]["episodes"])
    assert m["clinician_agreement"] == 1.0


def test_no_treatment_agreement_is_the_share_of_logged_no_treatment(setup):
    _, replay, *_, evals, _ = setup
    val = load_split(replay, "validation")
    share = float((val.actions.numpy() == 0).mean())
    assert evals["no_treatment"]["metrics"]["clinician_agreement"] == pytest.approx(share)


def test_safety_reference_level_is_the_same_for_every_policy(setup):
    *_, evals, _ = setup
    clin = {doc["metrics"]["clinician_safety_flags"] for doc in evals.values()}
    assert len(clin) == 1 and clin.pop() is not None
    rules = evals["no_treatment"]["safety"]["rules"]
    for name, counts in rules.items():
        if name != "no_treatment_in_shock":
            assert counts["policy"] == 0  # withholding treatment cannot trip the other rules


def test_nothing_is_fitted_on_the_evaluated_split(setup):
    _, replay, *_, evals, _ = setup
    train_fp = load_split(replay, "train", "reward_eval").fingerprint
    for doc in evals.values():
        assert doc["behaviour_model"]["kind"] in ("logistic", "mlp")
        assert doc["fqe"]["fit_on"].startswith("train")
    b = BehaviourModel.load(Path(setup[4]) / "eval" / "iql1" / "behaviour")
    assert b.info["fitted_on"]["fingerprint"] == train_fp
    assert b.info["fitted_on"]["split"] == "train"


def test_test_split_only_with_final_and_the_run_records_it(setup, tmp_path):
    _, replay, runs, *_ = setup
    run = tmp_path / "run"
    shutil.copytree(runs["iql1"], run)
    assert not (run / "final_evaluation.json").exists()
    doc = evaluate(run, replay, tmp_path / "final", kind="run", final=True, cfg=FAST)
    assert doc["split"] == "test" and doc["final"] is True
    record = json.loads((run / "final_evaluation.json").read_text())
    assert len(record) == 1 and record[0]["out"].endswith("final")
    assert doc["fqe"]["fit_on"].startswith("train (bootstrap resamples of train patients")


def test_an_exported_bundle_is_evaluated_like_its_run(setup, tmp_path):
    _, replay, runs, evals, _ = setup
    run = runs["iql1"]
    cfg = json.loads((run / "config.json").read_text())
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(run / "final" / "policy.safetensors", bundle / "model.safetensors")
    names = cfg["replay"]["feature_names"]
    (bundle / "config.json").write_text(json.dumps({
        "model_type": "iql", "state_dim": len(names), "n_actions": 25, "hidden_sizes": [32, 32],
        "feature_names": names,
    }))  # fmt: skip
    doc = evaluate(bundle, replay, tmp_path / "eval", kind="bundle", cfg=FAST)
    a, b = doc["metrics"], evals["iql1"]["metrics"]
    for key in ("clinician_agreement", "support_mass", "low_support_action_rate", "ess"):
        assert a[key] == pytest.approx(b[key]), key


def test_bundle_inputs_are_reordered_by_feature_name(setup, tmp_path):
    _, replay, runs, *_ = setup
    import torch
    from safetensors.torch import load_file, save_file

    from sepsisrl.ope.evaluate import BundlePolicy

    run = runs["iql1"]
    names = json.loads((run / "config.json").read_text())["replay"]["feature_names"]
    perm = np.random.default_rng(0).permutation(len(names))
    weights = load_file(str(run / "final" / "policy.safetensors"))
    weights["net.0.weight"] = weights["net.0.weight"][:, torch.from_numpy(perm)].contiguous()
    bundle = tmp_path / "perm"
    bundle.mkdir()
    save_file(weights, str(bundle / "model.safetensors"))
    (bundle / "config.json").write_text(json.dumps({"state_dim": len(names), "n_actions": 25,
        "hidden_sizes": [32, 32], "feature_names": [names[i] for i in perm]}))  # fmt: skip
    states = load_split(replay, "validation").states.numpy()[:200]
    assert np.allclose(
        BundlePolicy(bundle, names).logits(states), TrainedPolicy(run).logits(states), atol=1e-5
    )


def test_repeated_seed_summary_has_the_card_layout(setup):
    *_, root = setup
    summary = summarize([root / "eval" / "iql1", root / "eval" / "iql2"])
    assert summary["metrics"]["clinician_agreement"]["n"] == 2
    assert summary["metrics"]["clinician_agreement"]["std"] is not None
    table = card_table(summary)
    for _, label in CARD_ROWS:
        assert label in table
    with pytest.raises(ValueError, match="mix splits"):
        import tempfile

        other = Path(tempfile.mkdtemp())
        doc = json.loads((root / "eval" / "iql1" / "metrics.json").read_text())
        doc["split"] = "test"
        (other / "metrics.json").write_text(json.dumps(doc))
        summarize([root / "eval" / "iql1", other])


def test_cli_requires_exactly_one_policy(setup):
    _, replay, runs, *_ = setup
    proc = subprocess.run(
        [sys.executable, "-m", "sepsisrl.cli", "evaluate", "--replay", str(replay),
         "--policy", "random", "--run", str(runs["iql1"])],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "exactly one" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------- gates and WDR
def test_gated_estimates_are_null_with_reasons_and_never_out_of_range(setup):
    *_, evals, _ = setup
    for name, doc in evals.items():
        m, ev, ungated = doc["metrics"], doc["evaluable"], doc["estimates_ungated"]
        lo, hi = doc["fqe"]["attainable_range"]
        assert (lo, hi) == (-15.0, 15.0)
        for key in ("fqe", "wdr"):
            assert (m[f"{key}_mean"] is None) == (not ev["model"]), (name, key)
            assert lo <= ungated[key]["estimate"] <= hi, (name, key)
            assert ungated["fqe"]["ci_low"] <= ungated["fqe"]["ci_high"]
        assert (m["wis_mean"] is None) == (not ev["importance_sampling"]), name
        assert bool(ev["model_reasons"]) == (not ev["model"])
        assert bool(ev["importance_sampling_reasons"]) == (not ev["importance_sampling"])
        assert len(doc["fqe"]["member_values"]) == 3
        assert doc["fqe"]["horizon"] == doc["fqe"]["longest_episode"] and doc["fqe"]["converged"]
        head = doc["headline_estimator"]
        assert m["headline_mean"] == m[f"{head}_mean"]
    # the clinicians are on-policy: full overlap, every estimator evaluable
    clin = evals["clinician"]
    assert clin["evaluable"]["importance_sampling"] and clin["metrics"]["nonzero_weight_share"] == 1
    # a deterministic policy never matches every logged episode: IS is gated, with the reason
    nt = evals["no_treatment"]
    assert not nt["evaluable"]["importance_sampling"]
    assert any("ESS" in r for r in nt["evaluable"]["importance_sampling_reasons"])


def test_support_gate_makes_fqe_and_wdr_not_evaluable(setup, tmp_path):
    from sepsisrl.ope.evaluate import GateConfig

    _, replay, *_ = setup
    cfg = EvalConfig(bootstrap_resamples=200, behaviour=BehaviourConfig(max_epochs=4),
                     fqe=FQEConfig(members=2), gates=GateConfig(support_min=1.01))  # fmt: skip
    doc = evaluate("constant:24", replay, tmp_path / "c24", kind="named", cfg=cfg)
    assert not doc["evaluable"]["model"]
    assert any("support mass" in r for r in doc["evaluable"]["model_reasons"])
    assert doc["metrics"]["fqe_mean"] is None and doc["metrics"]["wdr_mean"] is None
    assert doc["metrics"]["headline_mean"] is None
    assert doc["estimates_ungated"]["fqe"]["estimate"] is not None  # kept for diagnosis


def test_wdr_corrects_only_where_enough_episodes_keep_weight(setup, tmp_path):
    """wdr_step_ess_min: at a position whose per-decision ESS is below it, no importance-weighted
    correction (one or two episodes would carry it all); the FQE stands alone there."""
    _, replay, *_ = setup
    base = {"bootstrap_resamples": 200, "behaviour": BehaviourConfig(max_epochs=4),
            "fqe": FQEConfig(members=2)}  # fmt: skip
    docs = {
        name: evaluate("random", replay, tmp_path / name, kind="named",
                       cfg=EvalConfig(**base, **({} if thr is None else {"wdr_step_ess_min": thr})))
        for name, thr in (("every", 0.0), ("default", None), ("none", 1e12))
    }  # fmt: skip
    every, default, none = docs["every"]["wdr"], docs["default"]["wdr"], docs["none"]["wdr"]
    assert every["corrected_positions"] == every["positions"] and every["step_ess_min"] == 0
    assert default["step_ess_min"] == 10.0  # configs/evaluate.yaml
    # a uniformly random policy: many episodes keep weight early on, few after several steps
    assert 0 < default["corrected_positions"] < default["positions"]
    assert none["corrected_positions"] == 0 and none["weighted_share"] == 0
    fqe = docs["none"]["estimates_ungated"]["fqe"]["estimate"]
    assert docs["none"]["estimates_ungated"]["wdr"]["estimate"] == pytest.approx(fqe, abs=1e-9)
    for name in ("every", "default"):  # the FQE itself does not depend on the setting
        assert docs[name]["estimates_ungated"]["fqe"]["estimate"] == fqe
    assert every["raw"]["estimate"] != default["raw"]["estimate"] != none["raw"]["estimate"]
    with pytest.raises(ValueError, match="wdr_step_ess_min"):
        EvalConfig(wdr_step_ess_min=-1.0)


def test_an_unknown_headline_estimator_is_refused():
    with pytest.raises(ValueError, match="headline estimator 'magic'"):
        EvalConfig(headline="magic")


def test_a_policy_object_is_evaluated_like_its_run(setup, tmp_path):
    """kind='object': a Python policy (here the run's own TrainedPolicy) gets the same
    estimates as the run folder it came from; an object without the protocol is refused."""
    from sepsisrl.ope.evaluate import EvaluationError
    from sepsisrl.rl.policies import TrainedPolicy

    _, replay, runs, evals, _ = setup
    doc = evaluate(TrainedPolicy(runs["iql1"]), replay, tmp_path / "obj", kind="object", cfg=FAST)
    assert doc["policy"]["kind"] == "object"
    for key in ("fqe_mean", "wis_mean", "clinician_agreement", "support_mass"):
        assert doc["metrics"][key] == evals["iql1"]["metrics"][key], key
    with pytest.raises(EvaluationError, match="lacks act, action_probabilities"):
        evaluate(object(), replay, tmp_path / "bad", kind="object", cfg=FAST)
    with pytest.raises(EvaluationError, match="unknown policy kind 'model'"):
        evaluate(runs["iql1"], replay, tmp_path / "bad2", kind="model", cfg=FAST)
    assert not (tmp_path / "bad2" / "metrics.json").exists()


def test_an_empty_split_is_refused_naming_it_and_nothing_is_written(tmp_path):
    from sepsisrl.ope.evaluate import EvaluationError

    from .rl_fixtures import read_split, write_replay, write_split

    replay = write_replay(tmp_path / "replay", n_episodes=12, state_dim=5, n_actions=4, seed=0)
    write_split(replay, read_split(replay, "validation").slice(0, 0), "validation")
    out = tmp_path / "eval"
    with pytest.raises(
        EvaluationError, match=r"replay_validation\.parquet: the validation split has no rows"
    ):
        evaluate("clinician", replay, out, kind="named", cfg=FAST)
    assert not out.exists()


def test_fqe_values_are_kept_and_a_paired_difference_shares_the_bootstrap(setup, tmp_path):
    """fqe_values.safetensors holds the FQE at the initial states: the recorded interval is
    the bootstrap of those values; two policies on the same episodes compare paired (the same
    patient draws and members), an evaluation of other episodes not at all."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from sepsisrl.ope.importance import ensemble_mean_ci
    from sepsisrl.ope.paired import FILE, paired_fqe

    *_, evals, root = setup
    a, b = root / "eval" / "iql1", root / "eval" / "no_treatment"
    va, vb = load_file(str(a / FILE)), load_file(str(b / FILE))
    assert (
        np.array_equal(va["stay_id"], vb["stay_id"])
        and len(va["stay_id"]) == evals["iql1"]["episodes"]
    )
    cfg = evals["iql1"]["config"]
    again = ensemble_mean_ci(va["v0"], cfg["bootstrap_resamples"], cfg["bootstrap_seed"],
                             va.get("point")).to_json()  # fmt: skip
    # the same numbers up to the last bit of a sum's order (the kept copy is contiguous)
    assert again == pytest.approx(evals["iql1"]["fqe"]["bootstrap"], rel=1e-12, abs=1e-12)
    d = paired_fqe(a, b)
    ea, eb = (evals[n]["fqe"]["bootstrap"]["estimate"] for n in ("iql1", "no_treatment"))
    assert d.estimate == pytest.approx(ea - eb) and d.low <= d.estimate <= d.high
    same = paired_fqe(a, a)  # a policy against itself: nothing left to resample
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    # other episodes (here: the first stay replaced) are not paired
    other = tmp_path / "other"
    shutil.copytree(a, other)
    stays = va["stay_id"].copy()
    stays[0] += 1
    save_file({**va, "stay_id": stays}, str(other / FILE))
    assert paired_fqe(other, b) is None
    (other / FILE).unlink()  # an evaluation written before the values were kept
    assert paired_fqe(other, b) is None
