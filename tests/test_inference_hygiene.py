"""The shipped wrapper (``release/modeling_iql.py``): inference without autograd, exactly one
validated state for ``select_action``, validated batches and raw inputs, and a refusal of a
pickled ``.bin`` in our own words (issue 14, part A)."""

from __future__ import annotations

import ast
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sepsisrl.release.modeling_iql import IQLPolicy, load_policy

NAMES = ["heart_rate", "map", "lactate", "map_missing"]
STATS = {
    "heart_rate": {"median": 85.0, "clip_low": 0.0, "clip_high": 300.0, "mean": 88.0, "std": 18.0,
                   "transform": "identity"},
    "map": {"median": 75.0, "clip_low": 0.0, "clip_high": 200.0, "mean": 76.0, "std": 12.0,
            "transform": "identity"},
    "lactate": {"median": 1.8, "clip_low": 0.0, "clip_high": 20.0, "mean": 0.9, "std": 0.5,
                "transform": "log1p"},
}  # fmt: skip
CONFIG = {"state_dim": 4, "n_actions": 25, "hidden_sizes": [16, 16], "feature_names": NAMES,
          "normalization": STATS}  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wrapper")
    torch.manual_seed(0)
    net = IQLPolicy(4, 25, [16, 16], CONFIG)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors")
    )
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder


@pytest.fixture
def policy(bundle: Path) -> IQLPolicy:
    return load_policy(bundle)


def test_forward_keeps_no_autograd_graph(policy: IQLPolicy):
    states = torch.randn(10, 4, requires_grad=True)
    assert torch.is_grad_enabled()
    logits = policy(states)
    assert logits.shape == (10, 25)
    assert logits.is_inference() and not logits.requires_grad and logits.grad_fn is None
    with torch.no_grad():
        reference = policy.net(states)
    assert torch.allclose(logits, reference, atol=1e-6)
    many = torch.randn(10_000, 4, generator=torch.Generator().manual_seed(1))
    big = policy(many)  # the chunked path (more rows than one block): the same logits
    with torch.no_grad():
        assert torch.allclose(big, policy.net(many), atol=1e-5)
    assert big.is_inference()


def test_select_action_and_probabilities_run_without_autograd(policy: IQLPolicy, monkeypatch):
    seen = []
    original = IQLPolicy._vector_logits

    def spy(self, v):
        seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return original(self, v)

    monkeypatch.setattr(IQLPolicy, "_vector_logits", spy)
    policy.select_action([0.0] * 4)
    policy.action_probabilities([0.0] * 4)
    assert seen == [(False, True), (False, True)]


def test_select_action_accepts_exactly_one_real_state(policy: IQLPolicy):
    x = [0.3, -1.2, 0.5, 1.0]
    expected = int(policy(torch.tensor([x])).argmax())
    for form in (x, tuple(x), np.array(x), np.array(x, np.float32), np.array([1, 0, 2, 1]),
                 torch.tensor(x), torch.tensor([x]), np.array([x])):  # fmt: skip
        assert isinstance(policy.select_action(form), int)
    assert policy.select_action(x) == expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([True, False, True, False]), "real numbers, got an array of dtype bool"),
        (torch.tensor([True, False, True, False]), "real numbers, got dtype torch.bool"),
        ([np.bool_(True), 0.0, 0.0, 0.0], "real numbers, got bool"),
        ([True, 0.0, 0.0, 0.0], "real numbers, got bool"),
        (np.zeros((2, 2)), r"exactly one state of shape \(4,\), got shape \(2, 2\)"),
        (np.zeros((2, 4)), r"exactly one state of shape \(4,\), got shape \(2, 4\)"),
        (torch.zeros(1, 1, 4), r"got shape \(1, 1, 4\)"),
        (np.zeros(5), r"got shape \(5,\)"),
        ([0.0] * 3, "must have 4 values"),
        ([[0.0] * 4], "must have 4 values"),
        (np.array([0.0, np.nan, 0.0, 0.0]), "NaN or inf .*feature 'map' \\(position 1\\)"),
        ([0.0, 0.0, float("inf"), 0.0], "NaN or inf .*feature 'lactate'"),
        ([0.0, 0.0, 0.0, 1e300], "beyond float32 range.*'map_missing'"),
        (np.array([1 + 1j, 0, 0, 0]), "dtype complex"),
        (np.array(["1", "2", "3", "4"]), "real numbers"),
        (["1", 0.0, 0.0, 0.0], "real numbers"),
        ("abcd", "list, tuple, array or tensor"),
    ],
)
def test_select_action_rejects_anything_but_one_finite_real_state(policy, bad, message):
    with pytest.raises(ValueError, match=message):
        policy.select_action(bad)
    with pytest.raises(ValueError, match=message):
        policy.action_probabilities(bad)


def test_the_batch_forward_is_validated(policy: IQLPolicy):
    with pytest.raises(ValueError, match=r"real numbers, got a torch\.bool tensor"):
        policy(torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"row 2, feature 'lactate'"):
        bad = torch.zeros(3, 4)
        bad[2, 2] = float("nan")
        policy(bad)
    with pytest.raises(ValueError, match=r"shape \(batch, 4\)"):
        policy(torch.zeros(4))
    assert policy(torch.zeros(3, 4, dtype=torch.float64)).dtype == torch.float32


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"map_missing": float("nan")}, "map_missing: a missingness flag must be 0 or 1"),
        ({"map_missing": 2}, "map_missing: a missingness flag must be 0 or 1"),
        ({"map_missing": "yes"}, "map_missing: a missingness flag must be 0 or 1"),
        ({"heart_rate": float("nan")}, "heart_rate: expected a finite number"),
        ({"lactate": float("-inf")}, "lactate: expected a finite number"),
        ({"map": np.float32("nan")}, "map: expected a finite number"),
        ({"map": True}, "map: expected a finite number"),
        ({"map": "80"}, "map: expected a finite number"),
    ],
)
def test_normalize_rejects_non_finite_inputs_naming_the_feature(policy, raw, message):
    with pytest.raises(ValueError, match=message):
        policy.normalize(raw)


def test_normalize_accepts_numbers_and_explicit_flags(policy: IQLPolicy):
    x = policy.normalize({"heart_rate": np.float32(106.0), "map": 400, "map_missing": True})
    assert x[0] == pytest.approx(1.0) and x[1] == pytest.approx((200 - 76) / 12)
    assert x[3] == 1.0
    assert policy.normalize({"map": 70})[3] == 0.0 and policy.normalize({})[3] == 1.0


def test_a_pickled_bin_is_refused_in_our_own_words(tmp_path: Path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"net.0.weight": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError) as err:
        load_policy(folder)
    msg = str(err.value)
    assert msg == (
        f"{folder / 'pytorch_model.bin'}: refused: not a plain tensor file (only tensors are "
        "loaded, never pickled Python objects); use model.safetensors - safetensors is the format"
    )
    assert "weights_only" not in msg and "likely succeed" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no torch advice below
    assert not marker.exists()


def test_a_bin_holding_non_tensors_or_garbage_is_refused(tmp_path: Path):
    folder = tmp_path / "b"
    folder.mkdir()
    torch.save([1, 2, 3], folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refused: not a plain tensor file"):
        load_policy(folder)
    (folder / "pytorch_model.bin").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="refused: not a plain tensor file") as err:
        load_policy(folder)
    assert "weights_only" not in str(err.value)


def test_weights_with_nan_are_refused(bundle: Path, tmp_path: Path):
    from safetensors.torch import load_file

    tensors = load_file(str(bundle / "model.safetensors"))
    tensors["net.2.weight"][0, 0] = float("nan")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"tensor 'net\.2\.weight' holds NaN or inf .*refusing"):
        load_policy(tmp_path / "model.safetensors")


def test_the_wrapper_imports_only_torch_safetensors_and_the_standard_library():
    source = (resources.files("sepsisrl.release") / "modeling_iql.py").read_text()
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    import sys

    assert roots - set(sys.stdlib_module_names) <= {"torch", "safetensors"}, roots


# -- a damaged or inconsistent model repository is refused naming the file --------------------


def bundle_copy(bundle: Path, dest: Path) -> Path:
    import shutil

    return shutil.copytree(bundle, dest)


def test_a_truncated_safetensors_file_is_refused_naming_it(bundle: Path, tmp_path: Path):
    folder = bundle_copy(bundle, tmp_path / "b")
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: not a readable safetensors file - truncated or damaged",
    ):
        load_policy(folder)


def test_a_config_that_is_not_json_is_refused_naming_it(bundle: Path, tmp_path: Path):
    folder = bundle_copy(bundle, tmp_path / "b")
    (folder / "config.json").write_text('{"state_dim": 4,')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON \(Expecting"):
        load_policy(folder)
    (folder / "config.json").write_text("[4, 25]")
    with pytest.raises(ValueError, match=r"config\.json must hold a JSON object, found list"):
        load_policy(folder)


def test_hidden_sizes_that_disagree_with_the_weights_are_refused(bundle: Path, tmp_path: Path):
    folder = bundle_copy(bundle, tmp_path / "b")
    (folder / "config.json").write_text(json.dumps({**CONFIG, "hidden_sizes": [8, 8]}))
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: tensor 'net\.0\.weight' has shape \[16, 4\] but the network "
        r"of .*config\.json \(state_dim 4, hidden_sizes \[8, 8\], n_actions 25\) expects \[8, 4\]",
    ):
        load_policy(folder)


def test_extra_or_missing_tensors_are_refused_by_name(bundle: Path, tmp_path: Path):
    from safetensors.torch import load_file

    folder = bundle_copy(bundle, tmp_path / "b")
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({**tensors, "net.9.weight": tensors["net.0.weight"].clone()},
              str(folder / "model.safetensors"))  # fmt: skip
    with pytest.raises(
        ValueError, match=r"model\.safetensors: unexpected tensor\(s\) \['net\.9\.weight'\] for"
    ):
        load_policy(folder)
    del tensors["net.2.bias"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"model\.safetensors: missing tensor\(s\) \['net\.2\.bias'\] for"
    ):
        load_policy(folder)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("std", 0.0, r"std must be a finite number > 0 .*found 0\.0"),
        ("std", -1.0, r"std must be a finite number > 0"),
        ("std", None, r"std must be a finite number > 0 .*found None"),
        ("mean", float("nan"), r"mean must be a finite number, found nan"),
        ("clip_low", 400.0, r"clip_low 400\.0 is above clip_high 300\.0"),
        ("transform", "log", r"transform must be 'identity' or 'log1p', found 'log'"),
    ],
)
def test_unusable_normalization_statistics_are_refused_at_load(
    bundle: Path, tmp_path: Path, key: str, value, message: str
):
    folder = bundle_copy(bundle, tmp_path / "b")
    stats = json.loads(json.dumps(STATS))
    stats["heart_rate"][key] = value
    (folder / "config.json").write_text(json.dumps({**CONFIG, "normalization": stats}))
    with pytest.raises(
        ValueError, match=r"config\.json: normalization of feature 'heart_rate': " + message
    ):
        load_policy(folder)


def test_evaluate_refuses_a_truncated_bundle_as_a_value_error(bundle: Path, tmp_path: Path):
    from sepsisrl.ope.evaluate import BundlePolicy

    folder = bundle_copy(bundle, tmp_path / "b")
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        BundlePolicy(folder, NAMES)
    (folder / "config.json").write_text(json.dumps({**CONFIG, "hidden_sizes": [8, 8]}))
    bundle_copy(bundle, tmp_path / "orig")
    path.write_bytes((tmp_path / "orig" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"tensor 'net\.0\.weight' has shape \[16, 4\] but"):
        BundlePolicy(folder, NAMES)
