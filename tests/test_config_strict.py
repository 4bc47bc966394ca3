"""The config layer is honest: mistakes fail at load naming the key, every default has one home,
and the study's cache keys cover the resolved configuration and the code and YAML behind it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import shutil
from pathlib import Path

import pytest
import yaml

import sepsisrl.config as config_mod
from sepsisrl.config import ConfigError, packaged_config_path
from sepsisrl.study.config import load_study_config

SRC = Path(config_mod.__file__).resolve().parent


# ------------------------------------------------------------------- mistakes fail at load
@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"train.epoch": 3}, r"train\.epoch: unknown setting"),
        ({"train.epochs": "abc"}, r"train\.epochs: Input should be a valid integer.*'abc'"),
        ({"train": {"iql": {"expectil": 0.5}}}, r"train\.iql\.expectil: unknown setting"),
        ({"train.wis_softening_eps": 0.15}, r"train\.wis_softening_eps: unknown setting"),
        ({"train.iql.expectile": 0.5}, r"train\.iql\.expectile: every run of the study sets it"),
        ({"train.seed": 3}, r"train\.seed: every run of the study sets it"),
        ({"evaluation.fqe.max_step": 5}, r"evaluation\.fqe\.max_step: unknown setting"),
        ({"evaluation.fqe.members": "two"}, r"evaluation\.fqe\.members: Input should be"),
        ({"evaluation.fqe.model": "mpl"}, r"evaluation\.fqe\.model: Input should be 'linear'"),
        ({"evaluation.gates.suport_min": 0.9}, r"evaluation\.gates\.suport_min: unknown"),
        ({"evaluation.wis_softening_eps": 0.15}, r"evaluation\.wis_softening_eps: unknown"),
        ({"evaluation.fqe.wis_softening_eps": 0.15}, r"evaluation\.fqe\.wis_softening_eps"),
        ({"wis_softening_eps": 0.15}, r"wis_softening_eps: unknown setting"),
        ({"build.split.sed": 7}, r"build\.split\.sed: unknown setting"),
        ({"truth.interface": "hourly"}, r"truth\.interface: Input should be 'held' or 'titrated'"),
        ({"build.split.seed": "x"}, r"build\.split\.seed: Input should be a valid integer"),
        ({"build": {"split": {"seed": "x"}}}, r"build\.split\.seed: Input should be"),
        ({"sweep.algo": "cql"}, r"sweep\.algo='cql': the sweep's lr_regimes .* ignore"),
        (
            {"sweep.iql_settings.safe.expectile": 1.5},
            r"sweep candidate iql_\w+_safe: train\.iql\.expectile: Input should be less than 1",
        ),
        (
            {"baselines.trained.cql.grid": {"cql.alfa": [1.0]}},
            r"baselines\.trained\.cql: train\.cql\.alfa: unknown setting",
        ),
        (
            {"baselines.trained.behaviour_cloning.algo": "bcc"},
            r"baselines\.trained\.behaviour_cloning: train\.algo: Input should be 'iql'",
        ),
    ],
)
def test_a_study_mistake_fails_at_load_naming_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named) as info:
        load_study_config("quick", overrides=overrides)
    assert "invalid study configuration" in str(info.value)


def test_a_user_file_mistake_names_the_key_and_the_file(tmp_path: Path):
    f = tmp_path / "mine.yaml"
    f.write_text("train:\n  epoch: 3\nevaluation:\n  fqe: {max_step: 5}\n")
    with pytest.raises(ConfigError) as info:
        load_study_config("quick", f)
    text = str(info.value)
    assert str(f) in text and "evaluation.fqe.max_step: unknown setting" in text


def test_the_cli_refuses_a_misspelt_setting_before_any_work(tmp_path: Path):
    import subprocess
    import sys

    ws = tmp_path / "ws"
    proc = subprocess.run(
        [sys.executable, "-m", "sepsisrl.cli", "run", "--workspace", str(ws), "--set",
         "evaluation.fqe.max_step=5"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "evaluation.fqe.max_step: unknown setting" in proc.stderr
    assert "Traceback" not in proc.stderr and not (ws / "study").exists()


def test_the_resolved_configurations_are_typed_and_the_dump_keeps_the_overrides():
    from sepsisrl.dataset.config import BuildConfig
    from sepsisrl.ope.evaluate import EvalConfig
    from sepsisrl.rl.config import TrainConfig

    cfg = load_study_config("quick", overrides={"build.split.seed": 7, "evaluation.fqe.members": 2})
    assert isinstance(cfg.build_config(), BuildConfig) and cfg.build_config().split.seed == 7
    ev = cfg.eval_config()
    assert isinstance(ev, EvalConfig) and ev.fqe.members == 2 and ev.fqe.hidden == (128, 128)
    run = cfg.train_config(cfg.run_overrides("x", 5, {"iql.expectile": 0.6}))
    assert isinstance(run, TrainConfig) and run.seed == 5 and run.iql.expectile == 0.6
    assert run.epochs == cfg.train["epochs"] and run.preset == "x"
    dump = cfg.model_dump(mode="json")  # what plan.json records: the overrides as written
    assert dump["build"] == {"split": {"seed": 7}} and dump["evaluation"]["fqe"] == {"members": 2}
    assert dump["evaluation"]["bootstrap_resamples"] == 2000  # configs/evaluate.yaml's


# ------------------------------------------------------------------- one home per default
def _evaluation_dataclasses():
    from sepsisrl.ope.behaviour import BehaviourConfig
    from sepsisrl.ope.evaluate import EvalConfig, GateConfig
    from sepsisrl.ope.fqe import FQEConfig

    return {None: EvalConfig, "gates": GateConfig, "behaviour": BehaviourConfig, "fqe": FQEConfig}


def test_evaluation_defaults_live_only_in_configs_evaluate_yaml():
    data = yaml.safe_load(packaged_config_path("evaluate").read_text())
    for section, cls in _evaluation_dataclasses().items():
        # the class declares names and types, no value
        tree = ast.parse(inspect.getsource(cls))
        fields = [n for n in tree.body[0].body if isinstance(n, ast.AnnAssign)]
        assert fields and all(n.value is None for n in fields), cls.__name__
        own = data if section is None else data[section]
        names = [f.name for f in dataclasses.fields(cls)]
        assert set(own) == set(names), cls.__name__
        built = dataclasses.asdict(cls())
        for name in names:
            if not isinstance(own[name], dict):
                value = built[name]
                assert (list(value) if isinstance(value, tuple) else value) == own[name]
    # the study sets no evaluation default of its own: only overrides (empty by default)
    study = yaml.safe_load(packaged_config_path("study").read_text())
    assert set(study["evaluation"]) == {"gates", "fqe"}
    assert study["evaluation"]["gates"] == {} and study["evaluation"]["fqe"] == {}


def test_a_defaults_file_that_does_not_match_its_class_is_refused(tmp_path, monkeypatch):
    from sepsisrl.config import yaml_defaults

    (tmp_path / "thing.yaml").write_text("part: {size: 3, colour: red}\n")
    monkeypatch.setattr(config_mod, "packaged_config_path", lambda name: tmp_path / f"{name}.yaml")
    with pytest.raises(ConfigError, match=r"missing \['weight'\], unknown \['colour'\]"):

        @yaml_defaults("thing", "part")
        class Part:
            size: int
            weight: float

    (tmp_path / "thing.yaml").write_text("part: {size: many}\n")
    with pytest.raises(ConfigError, match=r"configs/thing.yaml \(part\): size: Input should"):

        @yaml_defaults("thing", "part")
        class Sized:
            size: int


# ------------------------------------------------------------------- cache keys and fingerprint
@pytest.fixture
def patched_train_yaml(tmp_path, monkeypatch):
    """A copy of configs/train.yaml that the packaged path points to (the real one is kept)."""
    copy = tmp_path / "train.yaml"
    shutil.copy(packaged_config_path("train"), copy)
    original = config_mod.packaged_config_path
    monkeypatch.setattr(
        config_mod, "packaged_config_path", lambda n: copy if n == "train" else original(n)
    )
    return copy


def _train_unit(ws: Path):
    from sepsisrl.study.runner import Study

    cfg = load_study_config("quick")
    study = Study(ws, cfg, None)
    study._replay_key = "replay-key"  # the build's key (read from replay/stage.json in a study)
    return study.train_unit("iql_probe", "sparse", 42, {"algo": "iql", "iql.expectile": 0.6})


def test_editing_configs_train_yaml_invalidates_the_runs(tmp_path, patched_train_yaml, monkeypatch):
    import sepsisrl.rl.trainer as trainer

    trained: list[str] = []

    def fake_train_stack(members, resume, overwrite, on_start, **_pause):
        for i, m in enumerate(members):
            trained.append(f"{m.cfg.batch_size}")
            (Path(m.run_dir) / "final").mkdir(parents=True)
            (Path(m.run_dir) / "final" / "policy.safetensors").write_bytes(b"weights")
            on_start(i, Path(m.run_dir))

    monkeypatch.setattr(trainer, "train_stack", fake_train_stack)
    from sepsisrl.study.runner import _ensure_run

    run, spec = _train_unit(tmp_path)
    assert spec["config"]["batch_size"] == 256
    assert _ensure_run(spec) is True and _ensure_run(spec) is False  # trained once, then cached
    # a value the study does not override: the resolved config, hence the key, changes
    text = patched_train_yaml.read_text()
    patched_train_yaml.write_text(text.replace("batch_size: 256", "batch_size: 128"))
    _, edited = _train_unit(tmp_path)
    assert edited["config"]["batch_size"] == 128 and edited["key"] != spec["key"]
    assert _ensure_run(edited) is True and trained == ["256", "128"]  # stale: trained again
    assert json.loads((run / "study.json").read_text())["key"] == edited["key"]
    # an edit that leaves every value alone still changes the code+YAML fingerprint
    patched_train_yaml.write_text(patched_train_yaml.read_text() + "# a note\n")
    _, noted = _train_unit(tmp_path)
    assert noted["config"] == edited["config"] and noted["key"] != edited["key"]


def test_the_evaluation_key_covers_the_resolved_config_and_configs_evaluate_yaml(
    tmp_path, monkeypatch
):
    from sepsisrl.study.runner import Study

    def key(cfg):
        study = Study(tmp_path, cfg, None)
        study._replay_key = "replay-key"
        _out, spec = study.eval_unit("clinician", "named", "sparse", "c-validation", final=False)
        return spec

    base = key(load_study_config("quick"))
    assert base["cfg"]["fqe"]["members"] == 5 and base["cfg"]["behaviour"]["max_epochs"] == 40
    assert key(load_study_config("quick"))["key"] == base["key"]
    fewer = key(load_study_config("quick", overrides={"evaluation.fqe.members": 2}))
    assert fewer["cfg"]["fqe"]["members"] == 2 and fewer["key"] != base["key"]
    copy = tmp_path / "evaluate.yaml"
    copy.write_text(packaged_config_path("evaluate").read_text() + "# a note\n")
    original = config_mod.packaged_config_path
    monkeypatch.setattr(
        config_mod, "packaged_config_path", lambda n: copy if n == "evaluate" else original(n)
    )
    assert key(load_study_config("quick"))["key"] != base["key"]


def test_one_fingerprint_function_covers_each_units_code_and_yaml():
    from sepsisrl.workspace import UNITS, code_fingerprint, unit_files

    def rel(unit):
        return {str(f.resolve().relative_to(SRC)) for f in unit_files(unit)}

    train, evaluate, build, truth = rel("train"), rel("evaluate"), rel("build"), rel("truth")
    assert {"rl/trainer.py", "rl/iql.py", "configs/train.yaml", "__init__.py"} <= train
    assert {"ope/evaluate.py", "ope/fqe.py", "configs/evaluate.yaml"} <= evaluate
    assert {"dataset/builder.py", "dataset/sql/sofa.sql", "configs/build.yaml"} <= build
    assert {"truth/harness.py", "synth/simulator.py", "dataset/builder.py"} <= truth
    for files in (train, evaluate, build, truth):  # the report, the CLI and the study do not
        assert not {"cli.py", "study/report.py", "study/runner.py", "configs/study.yaml"} & files
    assert "configs/train.yaml" not in evaluate | build
    assert len({code_fingerprint(u) for u in UNITS}) == len(UNITS)
    with pytest.raises(KeyError, match="unknown unit"):
        code_fingerprint("report")
    # no second scheme: nothing else in the package hashes its own source files
    for f in SRC.rglob("*.py"):
        if f.name != "workspace.py":
            text = f.read_text()
            assert 'rglob("*.py")' not in text and "BUILD_CODE" not in text, f
