"""The conventions registry: mimic-code is the packaged default, every switch is a real config
key, the legacy profile validates, and docs/build.md carries the registry's table."""

from __future__ import annotations

from pathlib import Path

import pytest

from sepsisrl.dataset.config import load_build_config
from sepsisrl.dataset.conventions import (
    REGISTRY,
    differences,
    markdown_table,
    profile_of,
    profile_overrides,
    value_at,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "build.md"


def test_the_packaged_defaults_are_mimic_codes_conventions():
    doc = load_build_config().model_dump(mode="json")
    assert len(REGISTRY) >= 10
    assert differences(doc) == []
    assert profile_of(doc) == "mimic-code"


def test_every_switch_is_a_config_key_with_two_distinct_values():
    doc = load_build_config().model_dump(mode="json")
    keys = [c.key for c in REGISTRY]
    assert len(set(keys)) == len(keys)
    for c in REGISTRY:
        value_at(doc, c.key)  # raises KeyError if the key does not exist
        assert c.mimic_code != c.legacy, c.key
        assert c.what and c.note, c.key


def test_the_legacy_profile_validates_and_differs_on_every_switch():
    cfg = load_build_config(overrides=profile_overrides("legacy"))
    doc = cfg.model_dump(mode="json")
    assert profile_of(doc) == "legacy"
    assert {d["key"] for d in differences(doc)} == {c.key for c in REGISTRY}


def test_one_switch_changed_is_a_custom_profile_naming_the_switch():
    c = REGISTRY[0]
    doc = load_build_config(overrides={c.key: c.legacy}).model_dump(mode="json")
    assert profile_of(doc) == "custom"
    assert [d["key"] for d in differences(doc)] == [c.key]


def test_an_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown conventions profile 'mimic'"):
        profile_overrides("mimic")


def test_docs_carry_the_registry_table():
    assert markdown_table() in DOCS.read_text(), (
        "docs/build.md is out of date: paste sepsisrl.dataset.conventions.markdown_table()"
    )


def test_a_workspace_built_before_the_switches_completes_with_the_legacy_conventions():
    from sepsisrl.dataset.config import BuildConfig
    from sepsisrl.dataset.conventions import complete_resolved_config

    doc = load_build_config(overrides={"split.seed": 11}).model_dump(mode="json")
    for c in REGISTRY:  # an old build_config.json: none of the switches, no state section
        *parents, last = c.key.split(".")
        node = doc
        for part in parents:
            node = node[part]
        node.pop(last)
    doc.pop("state")
    done = BuildConfig.model_validate(complete_resolved_config(doc)).model_dump(mode="json")
    assert profile_of(done) == "legacy"
    assert done["state"]["variant"] == "card" and done["split"]["seed"] == 11


def test_build_conventions_option_sets_the_profile_and_the_summary_says_which(tmp_path):
    """``sepsisrl build --conventions legacy`` on the real demo subset: the summary names the
    profile and every switch that differs from mimic-code; the default names none."""
    import json

    from typer.testing import CliRunner

    from sepsisrl.cli import app

    demo = Path(__file__).resolve().parent / "data" / "mimic-iv-demo"
    runner = CliRunner()
    docs = {}
    for profile in ("legacy", "mimic-code"):
        ws = tmp_path / profile
        res = runner.invoke(app, ["build", "--source", str(demo), "--workspace", str(ws),
                                  "--allow-missing", "chartevents", "--conventions", profile,
                                  "-q"])  # fmt: skip
        assert res.exit_code == 0, res.output
        docs[profile] = json.loads((ws / "build_summary.json").read_text())
    legacy = docs["legacy"]["conventions"]
    assert legacy["profile"] == "legacy"
    assert {d["key"] for d in legacy["differences_from_mimic_code"]} == {c.key for c in REGISTRY}
    assert docs["mimic-code"]["conventions"] == {
        "profile": "mimic-code", "differences_from_mimic_code": []
    }  # fmt: skip
    # the study report's header names the profile and every switch that differs
    from sepsisrl.study.report import build_conventions

    assert build_conventions(tmp_path / "mimic-code").startswith("mimic-code (every definition")
    legacy_line = build_conventions(tmp_path / "legacy")
    assert legacy_line.startswith("legacy; differs from mimic-code in ")
    assert all(c.key in legacy_line for c in REGISTRY)
    assert build_conventions(tmp_path / "nowhere").startswith("undefined")
    res = runner.invoke(app, ["build", "--source", str(demo), "--workspace",
                              str(tmp_path / "x"), "--conventions", "mimic"])  # fmt: skip
    assert res.exit_code != 0 and "unknown conventions profile 'mimic'" in str(res.exception)
    assert not (tmp_path / "x").exists()
