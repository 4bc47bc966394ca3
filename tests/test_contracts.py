"""The typed artifact contracts (``sepsisrl.contracts``, docs/contracts.md): every artifact the
code writes today loads, and writes back to the same bytes; a missing, misspelt or ill-typed
key fails with the file and the key named."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sepsisrl import contracts as c
from sepsisrl.workspace import write_json
from tests.rl_fixtures import write_replay


@pytest.fixture(scope="module")
def artifacts(built, tmp_path_factory):
    """A built replay, one tiny run, its validation evaluation and its model repository."""
    from sepsisrl.ope.evaluate import EvalConfig, evaluate
    from sepsisrl.ope.fqe import FQEConfig
    from sepsisrl.release.bundle import export_run
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.trainer import train

    ws, _, _ = built
    root = tmp_path_factory.mktemp("contracts")
    replay = ws / "replay" / "sofa_shaped"
    cfg = load_train_config(overrides={"steps": 20, "log_every": 10, "checkpoint_every": 20,
                                       "batch_size": 64, "hidden_sizes": [32, 32]})  # fmt: skip
    run = train(replay, cfg, root / "runs" / "iql").run_dir
    fqe = FQEConfig(hidden=(32, 32), members=2, max_steps=40, min_steps=20, eval_every=20)
    small = EvalConfig(bootstrap_resamples=100, fqe=fqe)
    evaluate(run, replay, root / "eval" / "iql", kind="run", cfg=small)
    evaluate("clinician", replay, root / "eval" / "clinician", kind="named", cfg=small)
    bundle = export_run(run, root / "bundle", evaluations=[root / "eval" / "iql"])
    return {"ws": ws, "root": root, "replay": replay, "run": run, "bundle": bundle}


def _roundtrip(model: type[c.Artifact], path: Path) -> c.Artifact:
    doc = model.load(path)
    assert doc.to_json().encode() == path.read_bytes(), path
    return doc


def test_every_replay_meta_of_a_build_round_trips(artifacts):
    metas = sorted((artifacts["ws"] / "replay").glob("*/meta.json"))
    assert len(metas) >= 2
    for path in metas:
        meta = _roundtrip(c.ReplayMeta, path)
        assert meta.state_dim == len(meta.feature_names)
        assert meta.state_bounds is not None and meta.source is not None


def test_an_external_replay_meta_round_trips_and_keeps_absent_keys_absent(tmp_path):
    folder = write_replay(tmp_path / "r", n_episodes=6, state_dim=4, n_actions=3, seed=0)
    meta = _roundtrip(c.ReplayMeta, folder / "meta.json")
    assert "state_bounds" not in meta.to_dict() and meta.state_bounds is None
    out = tmp_path / "again.json"
    meta.write(out)
    assert out.read_bytes() == (folder / "meta.json").read_bytes()
    assert not list(tmp_path.glob(".again.json.tmp-*"))  # the temporary file was renamed


def test_evaluation_metrics_round_trip(artifacts):
    for name in ("iql", "clinician"):
        doc = _roundtrip(c.EvaluationMetrics, artifacts["root"] / "eval" / name / "metrics.json")
        assert doc.safety.available and doc.safety.policy_total is not None


def test_the_model_repository_config_round_trips(artifacts):
    cfg = _roundtrip(c.ModelConfig, artifacts["bundle"] / "config.json")
    assert "×" in (artifacts["bundle"] / "config.json").read_text(encoding="utf-8")
    assert cfg.metrics is not None and cfg.metrics.split == "validation"
    assert set(cfg.metrics.model_extra or {}) >= {"fqe_mean", "support_mass"}


def _study_records(artifacts, tmp_path: Path) -> tuple[Path, Path]:
    """selection.json and final.json assembled as ``study/pipeline.py`` assembles them, from the
    selection rule's own functions and the fixture's evaluations (a study is too slow here)."""
    from sepsisrl.study import selection as sel
    from sepsisrl.study.config import load_study_config

    cfg = load_study_config("quick")
    rule, root = cfg.selection, artifacts["root"]
    ev = json.loads((root / "eval" / "iql" / "metrics.json").read_text())
    cands = sel.candidates(cfg)[:2]
    for i, cand in enumerate(cands):
        cand["seeds"], cand["stage"] = [], 1
        cand["seeds"].append({"seed": 42 + i, "run": "runs/iql", "eval": "eval/iql"})
        cand["seeds"][0].update(sel.selection_metrics(ev, rule.estimator))
        sel.aggregate(cand, rule)
    ranked = sel.rank(cands)
    selected = sel.choose(ranked, rule)
    clin = sel.selection_metrics(
        json.loads((root / "eval" / "clinician" / "metrics.json").read_text()), rule.estimator
    )
    clin["observed_return"] = ev["metrics"]["observed_return_mean"]
    selected["versus_clinicians"] = sel.versus_clinicians(
        ranked[0], clin, rule.estimator, "eval/clinician"
    )
    for cand in cands:
        cand["stage1_rank"] = cand["rank"]
    doc = {
        "schema_version": "1", "profile": cfg.profile, "split": "validation",
        "rule": sel.rule_document(cfg), "candidates": cands,
        "finalists": [x["name"] for x in ranked], "finalists_passing_stage1": 0,
        "selected": selected,
    }  # fmt: skip
    (tmp_path / "study").mkdir()
    write_json(tmp_path / "study" / "selection.json", doc)
    best = ranked[0]
    tuning = {
        "run": "runs/bc", "chosen": best["name"], "hyperparameters": best["hyperparameters"],
        "fallback": not best["passed"], "reason": "fixture",
        "grid": [{"name": x["name"], "hyperparameters": x["hyperparameters"], "score": x["score"],
                  "estimate": x["estimate"], "gates": x["gates"], "rank": x["rank"]}
                 for x in ranked],
    }  # fmt: skip
    final = {
        "schema_version": "1", "split": "test", "selection_sha256": "0" * 64,
        "selected": {"name": selected["name"], "seeds": [42], "runs": ["runs/iql"],
                     "evals": ["eval/iql"], "exported_seed": selected["seed"]},
        "baselines": [
            {"name": "clinician", "kind": "named", "eval": "eval/clinician"},
            {"name": "bc", "kind": "run", "run": "runs/bc", "eval": "eval/bc", "tuning": tuning},
        ],
        "release": f"release/sepsisrl-{selected['name']}",
    }  # fmt: skip
    write_json(tmp_path / "study" / "final.json", final)
    return tmp_path / "study" / "selection.json", tmp_path / "study" / "final.json"


def test_selection_and_final_records_round_trip(artifacts, tmp_path):
    sel_path, final_path = _study_records(artifacts, tmp_path)
    selection = _roundtrip(c.Selection, sel_path)
    assert selection.selected.versus_clinicians.estimator == selection.rule.estimator
    final = _roundtrip(c.FinalRecord, final_path)
    named, trained = final.baselines
    assert "tuning" not in named.model_dump(exclude_unset=True) and trained.tuning is not None


@pytest.mark.parametrize(
    ("model", "where", "edit", "message"),
    [
        (c.EvaluationMetrics, ("eval", "iql", "metrics.json"),
         lambda d: d["metrics"].pop("wis_mean"), "missing required key 'metrics.wis_mean'"),
        (c.EvaluationMetrics, ("eval", "iql", "metrics.json"),
         lambda d: d["metrics"].update(wis_mean="high"), "key 'metrics.wis_mean'"),
        (c.EvaluationMetrics, ("eval", "iql", "metrics.json"),
         lambda d: d["metrics"].update(wis_meen=1.0), "unexpected key 'metrics.wis_meen'"),
        (c.EvaluationMetrics, ("eval", "iql", "metrics.json"),
         lambda d: d.update(final="false"), "key 'final'"),
        (c.ModelConfig, ("bundle", "config.json"),
         lambda d: d.pop("feature_names"), "missing required key 'feature_names'"),
        (c.ModelConfig, ("bundle", "config.json"),
         lambda d: d.update(state_dim=62.0), "key 'state_dim'"),
        (c.ModelConfig, ("bundle", "config.json"),
         lambda d: d["metrics"].update(support_mass={"mean": 1.0}), "metrics.support_mass.std"),
    ],
)  # fmt: skip
def test_a_broken_artifact_names_the_file_and_the_key(
    artifacts, tmp_path, model, where, edit, message
):
    src = artifacts["root"].joinpath(*where)
    doc = copy.deepcopy(json.loads(src.read_text()))
    edit(doc)
    path = tmp_path / where[-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(c.ContractError) as err:
        model.load(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_broken_replay_meta_names_the_file_and_the_key(tmp_path):
    folder = write_replay(tmp_path / "r", n_episodes=6, state_dim=4, n_actions=3, seed=0)
    path = folder / "meta.json"
    good = json.loads(path.read_text())
    cases = [
        ({k: v for k, v in good.items() if k != "gamma"}, "missing required key 'gamma'"),
        ({**good, "gama": 0.9}, "unexpected key 'gama'"),
        ({**good, "n_actions": "3"}, "key 'n_actions'"),
        ({**good, "reward": {"terminal_survived": 15.0}}, "missing required key 'reward.variant'"),
        ({**good, "splits": {"train": good["splits"]["train"]}}, "'splits.validation'"),
    ]
    for doc, message in cases:
        path.write_text(json.dumps(doc))
        with pytest.raises(c.ContractError) as err:
            c.ReplayMeta.load(path)
        assert str(path) in str(err.value) and message in str(err.value)
    path.write_text("{not json")
    with pytest.raises(c.ContractError, match="not valid JSON"):
        c.ReplayMeta.load(path)
    path.write_text("[]")
    with pytest.raises(c.ContractError, match="expected a JSON object"):
        c.ReplayMeta.load(path)
    with pytest.raises(c.ContractError, match="no such file"):
        c.ReplayMeta.load(tmp_path / "absent.json")
