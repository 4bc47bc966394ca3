"""`sepsisrl export --push` against a local stand-in of the Hub (no network), download and load
back with huggingface_hub, and the card's model-index checked with huggingface_hub's own
model-card parser (release/hub.py, release/hub_standin.py, docs/huggingface.md)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sepsisrl.ope.behaviour import BehaviourConfig
from sepsisrl.ope.evaluate import EvalConfig, evaluate
from sepsisrl.ope.fqe import FQEConfig
from sepsisrl.ope.summary import CARD_ROWS
from sepsisrl.release import bundle as bundle_module
from sepsisrl.release.bundle import ExportError, export_run, push_to_hub
from sepsisrl.release.hub import check_card, validate_card
from sepsisrl.release.hub_standin import LocalHub, git_blob_id
from sepsisrl.release.modeling_iql import load_policy
from sepsisrl.rl.trainer import train

from .rl_fixtures import fast_config, write_replay

REPO = "user/sepsis-iql"
FILES = {"model.safetensors", "config.json", "modeling_iql.py", "requirements.txt", "LICENSE.md",
         "README.md"}  # fmt: skip
STATE_DIM, N_ACTIONS = 7, 3


@pytest.fixture(scope="module")
def run_and_eval(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a finished IQL run, its evaluation) on a small fixture replay."""
    root = tmp_path_factory.mktemp("hub")
    replay = write_replay(root / "ws" / "replay" / "sofa_shaped", 40, STATE_DIM, N_ACTIONS, 5)
    run = train(replay, fast_config(steps=40), root / "ws" / "runs" / "iql").run_dir
    cfg = EvalConfig(
        bootstrap_resamples=100, behaviour=BehaviourConfig(max_epochs=2), fqe=FQEConfig(members=2)
    )
    evaluate(run, replay, root / "ws" / "eval" / "iql-validation", kind="run", cfg=cfg)
    return run, root / "ws" / "eval" / "iql-validation"


def cli_export(run: Path, ev: Path, out: Path, env: dict[str, str], *extra: str):
    cmd = [sys.executable, "-m", "sepsisrl.cli", "export", "--run", str(run), "--eval", str(ev),
           "--out", str(out), *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def pushed(run_and_eval, tmp_path_factory):
    """``sepsisrl export --push user/sepsis-iql`` against a LocalHub that runs for the module:
    (hub, exported folder, the command's JSON result)."""
    run, ev = run_and_eval
    root = tmp_path_factory.mktemp("pushed")
    with LocalHub(root / "hub") as hub:
        proc = cli_export(run, ev, root / "release", {**os.environ, **hub.environ()},
                          "--push", REPO)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        yield hub, root / "release", json.loads(proc.stdout)


@pytest.fixture
def hf_client(monkeypatch):
    """huggingface_hub in this process, pointed at a hub. Its endpoint and switches are read at
    import, so they are patched (telemetry off: no request for the agent registry), and its
    HTTP client refuses any host but 127.0.0.1: a request that would leave the machine fails
    the test at once instead of being retried."""
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http

    def local_only(request) -> None:
        if request.url.host != "127.0.0.1":
            raise RuntimeError(f"the test tried to reach {request.url}")

    def guarded():
        client = _http.default_client_factory()
        client.event_hooks["request"].append(local_only)
        return client

    def point_at(hub: LocalHub) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        template = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("HF_TOKEN", hub.token)

    set_client_factory(guarded)
    yield point_at
    set_client_factory(_http.default_client_factory)


def contents(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of a folder's files (huggingface_hub's own .cache left out)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


def own_policy(folder: Path, monkeypatch):
    """The policy loaded by the repository's own modeling_iql.py (not the package's copy)."""
    name = "downloaded_modeling_iql"
    spec = importlib.util.spec_from_file_location(name, folder / "modeling_iql.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    assert Path(module.__file__).resolve() == (folder / "modeling_iql.py").resolve()
    return module.load_policy(folder)


def same_actions(downloaded: Path, exported: Path, monkeypatch) -> None:
    mine, reference = own_policy(downloaded, monkeypatch), load_policy(exported)
    states = torch.randn(12, STATE_DIM, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        assert torch.equal(mine(states), reference(states))
    actions = [mine.select_action(row.tolist()) for row in states]
    assert actions == [reference.select_action(row.tolist()) for row in states]
    assert all(0 <= a < N_ACTIONS for a in actions)


# -- push --------------------------------------------------------------------------------------


def test_export_push_puts_the_exact_files_on_the_hub(pushed):
    hub, release, result = pushed
    assert {p.name for p in release.iterdir()} == FILES == set(result["files"])
    assert result["pushed"].startswith(f"{hub.endpoint}/{REPO}/commit/")
    assert result["card_metadata"]["validated"] is True
    assert hub.files(REPO) == contents(release)  # byte for byte
    # every request was one the stand-in implements, and it succeeded
    assert {line.rsplit(" ", 2)[1] for line in hub.log} == {"200"}, hub.log
    routes = [path for method, path in hub.requests if method == "POST"]
    assert routes.count("/api/repos/create") == 1
    assert routes.count(f"/api/models/{REPO}/commit/main") == 1
    commit = result["pushed"].rsplit("/", 1)[1]
    stored = hub.root / "models" / "user" / "sepsis-iql"
    assert (stored / "refs" / "main").read_text().strip() == commit
    for name, data in contents(release).items():  # stored under their git blob ids
        assert (stored / "blobs" / git_blob_id(data)).read_bytes() == data, name


def test_snapshot_download_gives_the_files_and_the_same_policy(
    pushed, hf_client, tmp_path, monkeypatch
):
    """The stand-in keeps its repositories in a folder: a new LocalHub on that folder serves
    the release; the download lands in huggingface_hub's cache and loads back from there with
    no server at all (``local_files_only``)."""
    from huggingface_hub import snapshot_download

    first, release, _ = pushed
    cache = tmp_path / "cache"
    with LocalHub(first.root, token=first.token) as hub:
        assert hub.endpoint != first.endpoint
        hf_client(hub)
        snapshot = Path(snapshot_download(REPO, cache_dir=cache, endpoint=hub.endpoint))
        assert contents(snapshot) == contents(release)
    offline = Path(snapshot_download(REPO, cache_dir=cache, local_files_only=True))
    assert offline == snapshot
    same_actions(offline, release, monkeypatch)


def _failing_push(case: str, hub: LocalHub, env: dict[str, str]) -> tuple[dict[str, str], str]:
    """(environment, expected message fragment) for one way the upload fails."""
    if case == "wrong token":
        return {**env, "HF_TOKEN": "hf_not_the_right_token"}, "401"
    if case == "server error":
        hub.refuse("commit", 500, "the stand-in Hub is failing on purpose")
        return env, "500"
    return env, "ConnectError"  # "hub down": the server was closed before the export


@pytest.mark.parametrize("case", ["wrong token", "server error", "hub down"])
def test_a_failed_push_exits_non_zero_and_keeps_the_complete_local_copy(
    run_and_eval, tmp_path, case
):
    run, ev = run_and_eval
    with LocalHub(tmp_path / "hub") as hub:
        env, expect = _failing_push(case, hub, {**os.environ, **hub.environ()})
        if case == "hub down":
            hub.__exit__(None, None, None)
        out = tmp_path / "release"
        proc = cli_export(run, ev, out, env, "--push", REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert message.startswith(f"error: upload to {REPO} at http://127.0.0.1:"), message
    assert expect in message and f"the model repository is complete at {out}" in message
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    hint = {"wrong token": "hf auth login", "server error": "retry later",
            "hub down": "check the network and HF_ENDPOINT"}[case]  # fmt: skip
    assert hint in message
    assert {p.name for p in out.iterdir()} == FILES
    assert validate_card(out)["validated"] is True  # the local copy is whole and valid
    if case == "server error":
        assert hub.files(REPO) == {}  # created, but nothing committed


def test_the_stand_in_answers_like_the_hub_when_something_is_missing(tmp_path, hf_client):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    with LocalHub(tmp_path / "hub") as hub:
        hf_client(hub)
        api = HfApi(endpoint=hub.endpoint)
        assert api.whoami()["name"] == "user"
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("user/absent")
        api.create_repo("user/tiny")
        with pytest.raises(HfHubHTTPError, match="409"):
            api.create_repo("user/tiny")
        with pytest.raises(HfHubHTTPError, match="403"):
            api.create_repo("someone-else/tiny")
        (tmp_path / "src" / "sub").mkdir(parents=True)
        (tmp_path / "src" / "sub" / "a.txt").write_text("a\n")
        api.upload_folder(folder_path=tmp_path / "src", repo_id="user/tiny")
        assert [e.path for e in api.list_repo_tree("user/tiny")] == ["sub"]
        assert [e.path for e in api.list_repo_tree("user/tiny", recursive=True)] == [
            "sub", "sub/a.txt"
        ]  # fmt: skip
        with pytest.raises(RemoteEntryNotFoundError):
            hf_hub_download(
                "user/tiny", "nothing.txt", cache_dir=tmp_path / "c", endpoint=hub.endpoint
            )
        with pytest.raises(RevisionNotFoundError):
            api.model_info("user/tiny", revision="no-such-branch")
        again = api.upload_folder(folder_path=tmp_path / "src", repo_id="user/tiny")
        assert again.oid == api.model_info("user/tiny").sha  # unchanged: no new commit
        assert hub.files("user/tiny") == {"sub/a.txt": b"a\n"}


# -- the card's model-index --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(run_and_eval, tmp_path_factory) -> Path:
    run, ev = run_and_eval
    return export_run(run, tmp_path_factory.mktemp("card") / "bundle", evaluations=[ev])


def front_matter(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])


def test_the_model_index_parses_into_eval_results_equal_to_config_metrics(bundle):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import (
        eval_results_to_model_index,
        model_index_to_eval_results,
    )

    config = json.loads((bundle / "config.json").read_text())
    measured = {k: config["metrics"][k]["mean"] for k, _ in CARD_ROWS
                if config["metrics"][k]["mean"] is not None}  # fmt: skip
    card = ModelCard.load(bundle / "README.md")  # a path: read offline
    results = card.data.eval_results
    assert card.data.model_name == "sepsisrl-iql" and card.data.license == "other"
    assert {r.metric_type: r.metric_value for r in results} == measured  # exactly equal
    assert [r.metric_type for r in results] == list(measured)  # the card's row order
    labels = dict(CARD_ROWS)
    for r in results:
        assert (r.task_type, r.dataset_type, r.dataset_split) == (
            "reinforcement-learning", "external", config["metrics"]["split"],
        )  # fmt: skip
        assert r.dataset_name == config["dataset"]["name"] == "sepsisrl replay (sofa_shaped)"
        assert r.metric_name == labels[r.metric_type] and math.isfinite(r.metric_value)
    model_index = front_matter(bundle)["model-index"]
    assert eval_results_to_model_index(card.data.model_name, results) == model_index
    assert model_index_to_eval_results(model_index) == (card.data.model_name, results)
    report = validate_card(bundle)
    assert report == {"validated": True, "huggingface_hub": report["huggingface_hub"],
                      "model_name": "sepsisrl-iql", "eval_results": len(measured)}  # fmt: skip


def test_any_model_name_and_an_unevaluated_model_give_valid_cards(run_and_eval, tmp_path):
    run, ev = run_and_eval
    odd = "sepsis-iql: seed 42, #1 [test] {a: b}"
    named = export_run(run, tmp_path / "named", evaluations=[ev], name=odd)
    assert validate_card(named)["model_name"] == odd
    fresh = tmp_path / "runs" / "fresh"  # no evaluation of its own
    shutil.copytree(run, fresh)
    plain = export_run(fresh, tmp_path / "plain")
    assert "model-index" not in front_matter(plain)  # no result without metrics
    assert validate_card(plain)["eval_results"] == 0


def _drop_value(mi):
    del mi[0]["results"][0]["metrics"][0]["value"]


def _null_value(mi):
    mi[0]["results"][0]["metrics"][0]["value"] = None


def _text_value(mi):
    mi[0]["results"][0]["metrics"][0]["value"] = "3.3 +- 0.1"


def _metrics_under_dataset(mi):
    result = mi[0]["results"][0]
    result["dataset"]["metrics"] = result.pop("metrics")


def _results_not_a_list(mi):
    mi[0]["results"] = mi[0]["results"][0]


def _unknown_key(mi):
    mi[0]["results"][0]["metrics"][0]["val"] = 1.0


def _other_value(mi):
    mi[0]["results"][0]["metrics"][0]["value"] += 0.001


def _metric_left_out(mi):
    mi[0]["results"][0]["metrics"].pop()


def _wrong_task(mi):
    mi[0]["results"][0]["task"]["type"] = "text-classification"


def _unknown_metric(mi):
    mi[0]["results"][0]["metrics"][0]["type"] = "accuracy"


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        pytest.param(
            _drop_value,
            r"model-index\[0\]\.results\[0\]\.metrics\[0\] \(\w+\) has no 'value'",
            id="drop value",
        ),
        pytest.param(
            _null_value,
            r"metrics\[0\] \(\w+\)\.value must be a finite number, not None",
            id="null value",
        ),
        pytest.param(
            _text_value, r"value must be a finite number, not '3\.3 \+- 0\.1'", id="text value"
        ),
        pytest.param(
            _metrics_under_dataset,
            r"model-index\[0\]\.results\[0\] has no 'metrics'",
            id="metrics under dataset",
        ),
        pytest.param(
            _results_not_a_list,
            r"model-index\[0\]\.results must be a non-empty list",
            id="results not a list",
        ),
        pytest.param(
            _unknown_key, r"metrics\[0\]\.val is not read by huggingface_hub", id="unknown key"
        ),
        pytest.param(
            _other_value, r"value [-\d.e]+ differs from config\.json's mean", id="other value"
        ),
        pytest.param(
            _metric_left_out,
            r"measured metrics missing from model-index: \w+",
            id="metric left out",
        ),
        pytest.param(
            _wrong_task,
            r"task_type is 'text-classification', expected 'reinforcement-learning'",
            id="wrong task",
        ),
        pytest.param(
            _unknown_metric,
            r"metric 'accuracy' is not a measured card metric of config\.json",
            id="unknown metric",
        ),
    ],
)
def test_a_corrupted_model_index_is_refused_with_the_exact_problem(
    bundle, tmp_path, corrupt, message
):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    text = (broken / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    corrupt(meta["model-index"])
    body = text.split("---\n", 2)[2]
    (broken / "README.md").write_text(f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n{body}")
    with pytest.raises(ExportError, match=r"README\.md: invalid model card metadata: .*" + message):
        validate_card(broken)


def test_a_card_whose_front_matter_does_not_parse_is_refused(bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    text = (broken / "README.md").read_text()
    (broken / "README.md").write_text(text.replace("license: other", "license: other: x", 1))
    with pytest.raises(ExportError, match="the YAML front matter does not parse"):
        validate_card(broken)
    (broken / "README.md").write_text(text.split("---\n", 2)[2])
    with pytest.raises(ExportError, match="no YAML front matter"):
        validate_card(broken)


def test_export_never_writes_a_card_the_hub_client_refuses(run_and_eval, tmp_path, monkeypatch):
    run, ev = run_and_eval
    original = bundle_module.card_metadata

    def without_values(config, summary, name):
        return original(config, summary, name).replace("value:", "score:")

    monkeypatch.setattr(bundle_module, "card_metadata", without_values)
    out = tmp_path / "release"
    with pytest.raises(ExportError, match=r"has no 'value'"):
        export_run(run, out, evaluations=[ev])
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_without_huggingface_hub_export_works_and_says_what_was_skipped(
    run_and_eval, tmp_path, monkeypatch
):
    run, ev = run_and_eval
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    out = export_run(run, tmp_path / "release", evaluations=[ev])
    assert {p.name for p in out.iterdir()} == FILES
    note = check_card(out)
    assert note["validated"] is False and 'pip install "sepsisrl[hub]"' in note["note"]
    with pytest.raises(ExportError, match=r'needs huggingface_hub: pip install "sepsisrl\[hub\]"'):
        validate_card(out)
    with pytest.raises(ExportError, match=r'pip install "sepsisrl\[hub\]".*complete at'):
        push_to_hub(out, REPO)


def test_importing_sepsisrl_does_not_import_huggingface_hub():
    code = (
        "import sys, sepsisrl, sepsisrl.cli, sepsisrl.release.bundle, sepsisrl.release.hub, "
        "sepsisrl.release.hub_standin; print('huggingface_hub' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
