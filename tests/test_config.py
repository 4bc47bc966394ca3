from pathlib import Path

import pytest

from sepsisrl.config import ConfigError, deep_merge, load_config
from sepsisrl.synth.config import SynthConfig, load_synth_config


def test_packaged_default_validates():
    cfg = load_synth_config()
    assert isinstance(cfg, SynthConfig)
    assert cfg.output.chunk_subjects > 0


def test_user_file_overrides_only_given_keys(tmp_path: Path):
    f = tmp_path / "mine.yaml"
    f.write_text("population:\n  age_mean: 71.5\n")
    cfg = load_synth_config(f)
    default = load_synth_config()
    assert cfg.population.age_mean == 71.5
    assert cfg.population.age_sd == default.population.age_sd


def test_unknown_key_is_an_error(tmp_path: Path):
    f = tmp_path / "typo.yaml"
    f.write_text("population:\n  age_mena: 71.5\n")
    with pytest.raises(ConfigError, match="age_mena"):
        load_synth_config(f)


def test_invalid_value_names_the_field_and_source():
    with pytest.raises(ConfigError, match=r"population\.age_sd") as info:
        load_synth_config(overrides={"population.age_sd": -1})
    assert "overrides" in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_synth_config(tmp_path / "nope.yaml")


def test_probabilities_must_sum_to_one():
    with pytest.raises(ConfigError, match="sum to 1"):
        load_synth_config(overrides={"population.stays_per_subject_probs": [0.5, 0.2]})


def test_deep_merge_keeps_siblings():
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_load_config_rejects_non_mapping(tmp_path: Path):
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(SynthConfig, "synth", f)


def test_errors_name_the_dotted_key_and_the_value_found():
    with pytest.raises(ConfigError) as info:
        load_synth_config(overrides={"population.age_sd": "old", "population.age_mena": 1})
    text = str(info.value)
    assert "population.age_sd: Input should be a valid number" in text and "(found 'old')" in text
    assert "population.age_mena: unknown setting (misspelt?)" in text


def test_flatten_dotted_turns_sections_into_dotted_keys():
    from sepsisrl.config import flatten_dotted

    nested = {"a": {"b": 1, "c": {"d": [2]}}, "e.f": 3, "g": {}}
    assert flatten_dotted(nested) == {"a.b": 1, "a.c.d": [2], "e.f": 3, "g": {}}
