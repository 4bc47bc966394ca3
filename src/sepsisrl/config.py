"""Typed configuration loaded from YAML files.

Every default lives in exactly one place: the YAML files shipped in ``sepsisrl/configs/``
(visible as ``configs/`` at the repository root). The pydantic models below declare types and
constraints but no defaults, so a value cannot silently differ between code and file; the
evaluation's settings are frozen dataclasses (library callers build them with keywords) whose
defaults :func:`yaml_defaults` reads from ``configs/evaluate.yaml`` at import. A user file is
deep-merged over the packaged default: it only needs the keys it changes. Unknown keys are
errors (a misspelt key must never be ignored), and every error names the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import typing
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or does not validate."""


class StrictModel(BaseModel):
    """Base for all config sections: unknown keys are rejected, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


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


_PACKAGED: dict[tuple[str, int, int], dict[str, Any]] = {}


def read_packaged(name: str) -> dict[str, Any]:
    """The packaged ``configs/<name>.yaml`` as a mapping (a fresh copy; parsed once per
    version of the file)."""
    path = packaged_config_path(name)
    try:
        st = path.stat()
    except OSError:
        return _read_yaml(path)  # names the missing file
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _PACKAGED:
        _PACKAGED[key] = _read_yaml(path)
    return copy.deepcopy(_PACKAGED[key])


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


def flatten_dotted(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c.d": 2}`` -> ``{"a.b": 1, "c.d": 2}`` (nested mappings become dotted
    keys, so an override of one value never replaces a whole section)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def error_lines(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``dotted.key: message (found ...)`` line per error of ``exc``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "(top level)")
        msg = err["msg"]
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"{key}: unknown setting (misspelt?)")
        elif err["type"] == "value_error" and (
            not loc or msg.removeprefix("Value error, ").startswith((f"{key}.", f"{key}:"))
        ):
            lines.append(msg.removeprefix("Value error, "))  # a model check: names its keys
        elif err["type"] == "missing":
            lines.append(f"{key}: missing")
        else:
            found = err.get("input")
            shown = "" if isinstance(found, (dict, list)) else f" (found {found!r})"
            lines.append(f"{key}: {msg.removeprefix('Value error, ')}{shown}")
    return lines


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
        lines = "\n".join(f"  {line}" for line in error_lines(exc))
        raise ConfigError(f"invalid {what} (from {', '.join(sources)}):\n{lines}") from exc


def yaml_defaults(name: str, section: str | None = None) -> Callable[[type[T]], type[T]]:
    """Class decorator, placed under ``@dataclass``: the defaults of the dataclass's fields are
    the values of ``configs/<name>.yaml`` (``section`` of it), validated against the fields'
    types; the class declares names and types only. A field whose type is itself such a
    dataclass defaults to that class's defaults (its own section). The file must hold exactly
    the fields; keyword construction rejects unknown names, and pydantic validation of the
    class (``TypeAdapter``) rejects unknown keys and wrong types."""

    def wrap(cls: type[T]) -> type[T]:
        where = f"configs/{name}.yaml" + (f" ({section})" if section else "")
        data = read_packaged(name)
        if section is not None:
            data = data.get(section)
            if not isinstance(data, dict):
                raise ConfigError(f"{where}: section {section!r} missing or not a mapping")
        hints = typing.get_type_hints(cls)
        names = list(inspect.get_annotations(cls))
        missing = [n for n in names if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise ConfigError(
                f"{where}: the defaults of {cls.__name__} need exactly its fields; "
                f"missing {missing}, unknown {unknown}"
            )
        for field_name in names:
            hint, value = hints[field_name], data[field_name]
            if dataclasses.is_dataclass(hint) and isinstance(value, dict):
                setattr(cls, field_name, dataclasses.field(default_factory=hint))
                continue
            try:
                setattr(cls, field_name, TypeAdapter(hint).validate_python(value))
            except ValidationError as exc:
                lines = error_lines(exc, field_name)
                raise ConfigError(f"{where}: " + "; ".join(lines)) from exc
        cls.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        return cls

    return wrap


def validate_dataclass(cls: type[T], data: dict[str, Any], what: str) -> T:
    """``cls`` (a :func:`yaml_defaults` dataclass) from ``data``, the missing fields taking their
    defaults; errors name ``what.<key>`` (unknown keys, wrong types)."""
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(error_lines(exc, what))) from exc


def config_hash(config: BaseModel) -> str:
    """Stable sha256 of a config's canonical JSON (used for caching and provenance)."""
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
