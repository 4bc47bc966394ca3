"""Typed configuration loaded from YAML files.

Every default lives in exactly one place: the YAML files shipped in ``sepsisrl/configs/``
(visible as ``configs/`` at the repository root). The pydantic models below declare types and
constraints but no defaults, so a value cannot silently differ between code and file. A user
file is deep-merged over the packaged default: it only needs the keys it changes. Unknown keys
are errors (a misspelt key must never be ignored).
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or does not validate."""


class StrictModel(BaseModel):
    """Base for all config sections: unknown keys are rejected, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def packaged_config_path(name: str) -> Path:
    """Path of a default config shipped with the package (e.g. ``synth`` -> ``synth.yaml``)."""
    return Path(str(resources.files("sepsisrl") / "configs" / f"{name}.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping at the top level, found {type(data).__name__}"
        )
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, others replace)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_user_file(
    data: dict[str, Any], path: str | Path | None, sources: list[str]
) -> dict[str, Any]:
    """Deep-merge a user YAML file (if given) over ``data``; record it in ``sources``."""
    if path is None:
        return data
    sources.append(str(path))
    return deep_merge(data, _read_yaml(Path(path)))


def set_dotted(data: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set ``a.b.c = value`` inside nested dicts (used for command-line overrides)."""
    parts = dotted_key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted_key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(
    model: type[M],
    name: str,
    user_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> M:
    """Load packaged ``<name>.yaml``, merge ``user_file`` and dotted ``overrides``, validate."""
    data = _read_yaml(packaged_config_path(name))
    sources = [str(packaged_config_path(name))]
    data = merge_user_file(data, user_file, sources)
    return validate_config(model, data, overrides, sources)


def validate_config(
    model: type[M],
    data: dict[str, Any],
    overrides: dict[str, Any] | None,
    sources: list[str],
    what: str = "configuration",
) -> M:
    """Apply dotted ``overrides`` to ``data`` and validate; errors name every source."""
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    if overrides:
        sources.append("overrides " + ", ".join(f"{k}={v!r}" for k, v in overrides.items()))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what} (from {', '.join(sources)}):\n{exc}") from exc


def config_hash(config: BaseModel) -> str:
    """Stable sha256 of a config's canonical JSON (used for caching and provenance)."""
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
