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
    """selection.json and final.json assembled as ``study/runner.py`` assembles them, from the
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


# ------------------------------------------- readers and writers go through the contracts
def _report_workspace(artifacts, tmp_path: Path) -> Path:
    """A study workspace the report can read: the build's audits and replay, the fixture's run
    and evaluations (``bc`` stands in with the same files) and the records of
    :func:`_study_records`."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for top in ("cohort", "episodes", "splits", "features", "actions", "replay"):
        (ws / top).symlink_to(artifacts["ws"] / top)
    (ws / "runs").mkdir()
    (ws / "eval").mkdir()
    for name in ("iql", "bc"):
        (ws / "runs" / name).symlink_to(artifacts["run"])
    for name, target in (("iql", "iql"), ("clinician", "clinician"), ("bc", "iql")):
        (ws / "eval" / name).symlink_to(artifacts["root"] / "eval" / target)
    _study_records(artifacts, ws)
    return ws


def test_a_renamed_metric_key_fails_every_reader_naming_the_file_and_the_key(artifacts, tmp_path):
    """A metrics.json whose ``wis_mean`` was renamed is an error in the report, the summary,
    the model card, the selection and the truth comparison, never a blank or 'undefined'."""
    import shutil

    from sepsisrl.ope.summary import summarize
    from sepsisrl.release.bundle import gated_summary
    from sepsisrl.study import selection as sel
    from sepsisrl.study.config import load_study_config
    from sepsisrl.study.report import ReportError, write_report
    from sepsisrl.study.runner import Study
    from sepsisrl.truth.compare import estimates_of

    ws = _report_workspace(artifacts, tmp_path)
    assert (write_report(ws, tmp_path / "good") / "index.html").is_file()  # intact: renders
    broken = ws / "eval" / "iql"
    broken.unlink()
    shutil.copytree(artifacts["root"] / "eval" / "iql", broken)
    doc = json.loads((broken / "metrics.json").read_text())
    doc["metrics"]["wis_meen"] = doc["metrics"].pop("wis_mean")
    (broken / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    missing = "missing required key 'metrics.wis_mean'"
    study = Study(ws, load_study_config("quick"), None)
    cand = {"name": "probe", "seeds": [{"seed": 42, "run": "runs/iql", "eval": "eval/iql"}]}
    file_readers = {
        "report": lambda: write_report(ws, tmp_path / "bad"),
        "summary": lambda: summarize([broken]),
        "model card": lambda: gated_summary([broken]),
        "study selection": lambda: study.collect([cand]),
    }
    for who, read in file_readers.items():
        with pytest.raises(c.ContractError) as err:
            read()
        assert str(broken / "metrics.json") in str(err.value) and missing in str(err.value), who
    with pytest.raises(ReportError, match="wis_mean"):  # the report's own error type too
        write_report(ws, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    for read in (lambda: sel.selection_metrics(doc, "wdr"), lambda: estimates_of(doc)):
        with pytest.raises(c.ContractError, match=r"metrics\.json.*missing required key"):
            read()


def test_evaluate_writes_metrics_json_through_the_contract(artifacts, tmp_path, monkeypatch):
    """A writer that drifts from the contract (here: ``wis_mean`` left out) fails loudly and
    leaves no metrics.json behind."""
    from sepsisrl.ope.behaviour import BehaviourModel
    from sepsisrl.ope.evaluate import EvalConfig, evaluate
    from sepsisrl.ope.fqe import FQEConfig

    parse = c.EvaluationMetrics.parse.__func__
    seen: list[Path] = []

    def drifted(cls, doc, source):
        seen.append(Path(source))
        metrics = {k: v for k, v in doc["metrics"].items() if k != "wis_mean"}
        return parse(cls, {**doc, "metrics": metrics}, source)

    monkeypatch.setattr(c.EvaluationMetrics, "parse", classmethod(drifted))
    fqe = FQEConfig(hidden=(32, 32), members=2, max_steps=40, min_steps=20, eval_every=20)
    out = tmp_path / "eval"
    behaviour = BehaviourModel.load(artifacts["root"] / "eval" / "iql" / "behaviour")
    with pytest.raises(c.ContractError, match=r"missing required key 'metrics\.wis_mean'"):
        evaluate("clinician", artifacts["replay"], out, kind="named",
                 cfg=EvalConfig(bootstrap_resamples=100, fqe=fqe), behaviour=behaviour)  # fmt: skip
    assert seen == [out / "metrics.json"] and not (out / "metrics.json").exists()


def test_the_study_records_are_written_through_their_contracts(artifacts, tmp_path):
    """``study/runner.py`` writes selection.json and final.json with ``write_record``: the
    same bytes as before for a good record, an error naming the key and no file for a
    drifted one."""
    from sepsisrl.study.runner import write_record

    sel_path, final_path = _study_records(artifacts, tmp_path)
    (tmp_path / "again").mkdir()
    for model, path, key in ((c.Selection, sel_path, "finalists_passing_stage1"),
                             (c.FinalRecord, final_path, "selection_sha256")):  # fmt: skip
        doc = json.loads(path.read_text())
        out = tmp_path / "again" / path.name
        write_record(model, out, doc)
        assert out.read_bytes() == path.read_bytes()  # the format of workspace.write_json
        out.unlink()
        renamed = {(k + "_x" if k == key else k): v for k, v in doc.items()}
        with pytest.raises(c.ContractError, match=f"missing required key '{key}'"):
            write_record(model, out, renamed)
        assert not out.exists() and not list(out.parent.glob(".*tmp-*"))


# ------------------------------- the replay meta and the model config, read and written typed
def test_a_replay_meta_missing_a_required_key_fails_load_meta_train_and_evaluate(tmp_path):
    """``load_meta`` (and through it ``train`` and ``evaluate``) refuses a meta.json without a
    required key or with a misspelt one, naming the file and the key: nothing is defaulted
    (a missing ``gamma`` was once read as 0.99)."""
    from sepsisrl.ope.evaluate import evaluate
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.data import ReplayError, load_meta
    from sepsisrl.rl.trainer import train

    folder = write_replay(tmp_path / "r", n_episodes=6, state_dim=4, n_actions=3, seed=0)
    path = folder / "meta.json"
    good = json.loads(path.read_text())
    assert load_meta(folder).doc == c.ReplayMeta.parse(good, path)
    cfg = load_train_config(overrides={"steps": 2, "batch_size": 4, "hidden_sizes": [8]})
    for doc, message in (
        ({k: v for k, v in good.items() if k != "gamma"}, "missing required key 'gamma'"),
        ({**good, "reward": {"terminal_died": -15.0}}, "missing required key 'reward.variant'"),
        ({k: v for k, v in good.items() if k != "feature_names"},
         "missing required key 'feature_names'"),
        ({**good, "gama": 0.9}, "unexpected key 'gama'"),
    ):  # fmt: skip
        path.write_text(json.dumps(doc))
        readers = {
            "load_meta": lambda: load_meta(folder),
            "train": lambda: train(folder, cfg, tmp_path / "run"),
            "evaluate": lambda: evaluate("random", folder, tmp_path / "eval", kind="named"),
        }
        for who, read in readers.items():
            with pytest.raises(ReplayError) as err:
                read()
            assert isinstance(err.value, c.ContractError), who
            assert str(path) in str(err.value) and message in str(err.value), who
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


def test_the_replay_writer_goes_through_the_contract(built, tmp_path, monkeypatch):
    """``dataset/replay.py`` writes meta.json through ``contracts.ReplayMeta``: a writer that
    drifts from the contract (here: an extra key in ``state_bounds``) fails at once, naming
    the key, and writes no meta.json."""
    from sepsisrl.dataset import replay as replay_module

    ws, cfg, _ = built
    original = replay_module.model_input_range

    def drifted(prep, build_cfg):
        return {**original(prep, build_cfg), "note": "not in the contract"}

    monkeypatch.setattr(replay_module, "model_input_range", drifted)
    source = json.loads((ws / "replay" / "sparse" / "meta.json").read_text())["source"]
    out = tmp_path / "replay"
    with pytest.raises(c.ContractError, match=r"unexpected key 'state_bounds\.note'"):
        replay_module.run_replay(ws / "features", ws / "actions", ws / "cohort", ws / "sepsis",
                                 cfg, source, out)  # fmt: skip
    assert not list(out.glob("*/meta.json")) and not list(out.glob("*/.meta.json.tmp-*"))


def test_the_bundle_writer_goes_through_the_contract(artifacts, tmp_path, monkeypatch):
    """``release/bundle.py`` writes config.json through ``contracts.ModelConfig``: a drifted
    writer (here: an extra normalisation statistic) fails before the folder exists."""
    from sepsisrl.release import bundle as bundle_module

    original = bundle_module._normalization

    def drifted(ws, names):
        return {n: {**s, "scale": 1.0} for n, s in original(ws, names).items()}

    monkeypatch.setattr(bundle_module, "_normalization", drifted)
    out = tmp_path / "bundle"
    with pytest.raises(c.ContractError) as err:
        bundle_module.export_run(artifacts["run"], out)
    assert str(out / "config.json") in str(err.value)
    assert "unexpected key 'normalization." in str(err.value) and ".scale'" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".bundle.partial-*"))


def test_a_model_config_missing_a_required_key_fails_the_bundle_policy(artifacts, tmp_path):
    """``BundlePolicy`` (``evaluate --bundle``, ``sepsisrl truth --bundle``) reads config.json
    through the contract: an exported config without a required key is an error naming the
    file and the key; the earlier published checkpoint's layout (no ``package``, no
    ``feature_names``, keys of its own) is read as a ``CheckpointConfig``."""
    import shutil

    from sepsisrl.ope.evaluate import BundlePolicy, EvaluationError
    from sepsisrl.rl.data import load_meta

    names = load_meta(artifacts["replay"]).feature_names
    bundle = tmp_path / "bundle"
    shutil.copytree(artifacts["bundle"], bundle)
    path = bundle / "config.json"
    good = json.loads(path.read_text())
    assert BundlePolicy(bundle, names).state_dim == good["state_dim"]
    for doc, message in (
        ({k: v for k, v in good.items() if k != "hidden_sizes"},
         "missing required key 'hidden_sizes'"),
        ({**good, "hiden_sizes": [32, 32]}, "unexpected key 'hiden_sizes'"),
        ({k: v for k, v in good.items() if k not in ("package", "n_actions")},
         "missing required key 'n_actions'"),
    ):  # fmt: skip
        path.write_text(json.dumps(doc))
        with pytest.raises(EvaluationError) as err:
            BundlePolicy(bundle, names)
        assert str(path) in str(err.value) and message in str(err.value)
    published = {k: good[k] for k in ("state_dim", "n_actions", "hidden_sizes")}
    path.write_text(json.dumps({**published, "epochs": 200, "reward": "sofa_shaped"}))
    cfg = c.load_model_config(path)
    assert isinstance(cfg, c.CheckpointConfig) and cfg.feature_names is None
    assert cfg.model_type == "iql"
    policy = BundlePolicy(bundle, sorted(names))  # inputs in alphabetical order
    assert policy.order.tolist() == list(range(len(names)))


def test_an_estimator_added_through_the_registry_may_add_its_own_keys_and_nothing_else(artifacts):
    """A registered estimator writes ``<name>_mean/_ci_low/_ci_high`` and a section named as it
    (docs/evaluate.md "Adding an estimator"); a stray or incomplete key is still refused."""
    path = artifacts["root"] / "eval" / "iql" / "metrics.json"
    doc = json.loads(path.read_text())
    doc["metrics"].update(toy_mean=0.5, toy_ci_low=0.25, toy_ci_high=None)
    doc["toy"] = {"fit_on": "train"}
    m = c.EvaluationMetrics.parse(doc, path)
    assert m.metrics.estimators() == ["toy"] and m.to_dict()["toy"] == {"fit_on": "train"}
    partial = copy.deepcopy(doc)
    del partial["metrics"]["toy_ci_high"]
    with pytest.raises(c.ContractError, match=r"unexpected key 'metrics\.toy_mean' \(estimator "
                       r"'toy' reports it but not \['toy_ci_high'\]\)"):  # fmt: skip
        c.EvaluationMetrics.parse(partial, path)
    stray = copy.deepcopy(doc)
    stray["other"] = {}
    with pytest.raises(c.ContractError, match=r"unexpected key 'other' \(not part of the contract"):
        c.EvaluationMetrics.parse(stray, path)
    text = copy.deepcopy(doc)
    text["metrics"]["toy_mean"] = "0.5"
    with pytest.raises(c.ContractError, match=r"metrics"):
        c.EvaluationMetrics.parse(text, path)
