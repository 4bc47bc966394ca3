"""The model card's Hub metadata, checked offline with huggingface_hub's own model-card tools.

``huggingface_hub`` is optional (``pip install "sepsisrl[hub]"``) and imported only inside these
functions, never at ``import sepsisrl``. :func:`validate_card` parses the card of an exported
model repository the way the Hub's client does, without a network call (``ModelCard.validate``
asks the Hub, so it is not used):

- ``repocard.metadata_load`` reads the YAML front matter, and ``ModelCard(text)`` builds its
  ``ModelCardData``, turning ``model-index`` into ``EvalResult`` objects
  (``repocard_data.model_index_to_eval_results``);
- ``repocard_data.eval_results_to_model_index`` must give the front matter's ``model-index``
  back unchanged (no key huggingface_hub would drop, no wrong nesting);
- every result is task ``reinforcement-learning`` on the run's dataset and split, every metric
  is a card row (``ope.summary.CARD_ROWS``) whose value is a finite number equal to the mean in
  ``config.json['metrics']``, and every card row with a measured mean is there; a model without
  measured metrics has no ``model-index``;
- ``license: other`` names its licence (``license_name``) and links a file of the repository
  (``license_link``).

A problem raises :class:`~sepsisrl.release.bundle.ExportError` naming the file and what is
wrong. docs/huggingface.md shows the metadata and how to check a card by hand.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path
from typing import Any

from sepsisrl.ope.summary import CARD_ROWS
from sepsisrl.release.bundle import ExportError

#: How to install the optional Hugging Face support.
HUB_EXTRA = 'pip install "sepsisrl[hub]"'
#: The task every model-index result of a sepsisrl card is filed under.
TASK_TYPE = "reinforcement-learning"


def hub_installed() -> bool:
    """Whether ``huggingface_hub`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("huggingface_hub") is not None
    except ValueError:  # a module object without a spec stands in for it (tests)
        return True


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _structure(model_index: Any) -> list[str]:
    """Where ``model-index`` departs from the Hub's layout: a list of models, each with a
    ``name`` and ``results``; a result with ``task.type``, ``dataset.type``, ``dataset.name``
    and ``metrics``; a metric with a ``type`` and a finite numeric ``value``."""
    if not isinstance(model_index, list) or not model_index:
        return ["model-index must be a non-empty list of models"]
    problems = []
    absent = object()

    def need(node: Any, key: str, at: str) -> Any:
        if not isinstance(node, dict) or key not in node:
            problems.append(f"{at} has no '{key}'")
            return absent
        return node[key]

    for i, model in enumerate(model_index):
        at = f"model-index[{i}]"
        if not isinstance(model, dict):
            problems.append(f"{at} must be a mapping with 'name' and 'results'")
            continue
        name = need(model, "name", at)
        if name is not absent and (not isinstance(name, str) or not name.strip()):
            problems.append(f"{at}.name must be a non-empty string, not {name!r}")
        results = need(model, "results", at)
        if results is absent:
            continue
        if not isinstance(results, list) or not results:
            problems.append(f"{at}.results must be a non-empty list")
            continue
        for j, result in enumerate(results):
            rat = f"{at}.results[{j}]"
            for part, keys in (("task", ("type",)), ("dataset", ("type", "name"))):
                node = need(result, part, rat)
                if node is absent:
                    continue
                if not isinstance(node, dict):
                    problems.append(f"{rat}.{part} must be a mapping, not {node!r}")
                    continue
                for key in keys:
                    value = need(node, key, f"{rat}.{part}")
                    if value is not absent and not isinstance(value, str):
                        problems.append(f"{rat}.{part}.{key} must be a string, not {value!r}")
            metrics = need(result, "metrics", rat)
            if metrics is absent:
                continue
            if not isinstance(metrics, list) or not metrics:
                problems.append(f"{rat}.metrics must be a non-empty list of metrics")
                continue
            for k, metric in enumerate(metrics):
                mat = f"{rat}.metrics[{k}]"
                kind = need(metric, "type", mat)
                if isinstance(kind, str):
                    mat = f"{mat} ({kind})"
                elif kind is not absent:
                    problems.append(f"{mat}.type must be a string, not {kind!r}")
                value = need(metric, "value", mat)
                if value is not absent and not _number(value):
                    problems.append(f"{mat}.value must be a finite number, not {value!r}")
    return problems


def _difference(a: Any, b: Any, at: str = "model-index") -> str | None:
    """The first place where two parsed YAML values differ, in words."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in b:
                return f"{at}.{key} is not read by huggingface_hub (misplaced or unknown key)"
            if key not in a:
                return f"{at}.{key} is added by huggingface_hub"
            found = _difference(a[key], b[key], f"{at}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{at} has {len(a)} entries, huggingface_hub keeps {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _difference(x, y, f"{at}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{at} is {a!r}, huggingface_hub gives {b!r}"


def _expected_metrics(config: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """{metric key: (card label, mean)} of every card row with a measured mean."""
    rows = config.get("metrics") or {}
    out = {}
    for key, label in CARD_ROWS:
        mean = (rows.get(key) or {}).get("mean")
        if _number(mean):
            out[key] = (label, float(mean))
    return out


def validate_card(folder: str | Path) -> dict[str, Any]:
    """Check the model card (``README.md``) of an exported repository against huggingface_hub's
    model-card parser and the repository's ``config.json`` (module docstring); offline.

    Returns ``{"validated": True, "huggingface_hub": version, "model_name": ...,
    "eval_results": n}``; raises :class:`ExportError` naming the problem, or when
    huggingface_hub is not installed."""
    try:
        import huggingface_hub
        from huggingface_hub import ModelCard
        from huggingface_hub.repocard import metadata_load
        from huggingface_hub.repocard_data import (
            eval_results_to_model_index,
            model_index_to_eval_results,
        )
    except ImportError as exc:
        raise ExportError(
            f"validating the model card needs huggingface_hub: {HUB_EXTRA} ({_one_line(exc)})"
        ) from exc
    folder = Path(folder)
    card_path = folder / "README.md"
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))

    def refuse(problem: str) -> ExportError:
        return ExportError(f"{card_path}: invalid model card metadata: {problem}")

    text = card_path.read_text(encoding="utf-8")
    try:
        raw = metadata_load(card_path)
    except Exception as exc:  # yaml.YAMLError, or a front matter that is not a mapping
        raise refuse(f"the YAML front matter does not parse ({_one_line(exc)})") from exc
    if not raw:
        raise refuse("no YAML front matter (a '---' block at the top of README.md)")
    if raw.get("license") != "other" or not raw.get("license_name"):
        raise refuse(
            f"license must be 'other' with a license_name (research-only terms), not "
            f"{raw.get('license')!r} / {raw.get('license_name')!r}"
        )
    link = raw.get("license_link")
    if not isinstance(link, str) or not (folder / link).is_file():
        raise refuse(f"license_link {link!r} is not a file of the repository")
    expected = _expected_metrics(config)
    model_index = raw.get("model-index")
    if model_index is None:
        if expected:
            raise refuse(
                f"no model-index although config.json has measured metrics ({', '.join(expected)})"
            )
        return {
            "validated": True,
            "huggingface_hub": huggingface_hub.__version__,
            "model_name": None,
            "eval_results": 0,
        }
    problems = _structure(model_index)
    if problems:
        raise refuse("; ".join(problems))
    try:
        card = ModelCard(text)
    except Exception as exc:  # huggingface_hub's parse of the metadata (ValueError, KeyError)
        raise refuse(f"huggingface_hub refuses it ({_one_line(exc)})") from exc
    name, results = card.data.model_name, list(card.data.eval_results or [])
    rebuilt = eval_results_to_model_index(name, results)
    found = _difference(model_index, rebuilt)
    if found:
        raise refuse(f"model-index does not survive huggingface_hub's round trip: {found}")
    if model_index_to_eval_results(rebuilt) != (name, results):
        raise refuse("model-index does not survive huggingface_hub's round trip")
    heading = re.search(r"^# (.+)$", card.text, re.M)
    if len(model_index) != 1 or heading is None or heading.group(1).strip() != name:
        raise refuse(f"model-index must describe one model named as the card's title, not {name!r}")
    dataset = config.get("dataset") or {}
    want = {
        "task_type": TASK_TYPE,
        "dataset_type": dataset.get("source_kind") or "replay",
        "dataset_name": dataset.get("name"),
        "dataset_split": (config.get("metrics") or {}).get("split"),
    }
    seen: dict[str, float] = {}
    for result in results:
        at = f"metric {result.metric_type!r}"
        for attr, value in want.items():
            if getattr(result, attr) != value:
                raise refuse(f"{at}: {attr} is {getattr(result, attr)!r}, expected {value!r}")
        if result.metric_type not in expected:
            raise refuse(
                f"{at} is not a measured card metric of config.json (measured: "
                f"{', '.join(expected) or 'none'})"
            )
        label, mean = expected[result.metric_type]
        if result.metric_type in seen:
            raise refuse(f"{at} appears twice")
        if result.metric_name != label:
            raise refuse(f"{at}: name {result.metric_name!r}, expected {label!r}")
        if not math.isclose(result.metric_value, mean, rel_tol=1e-12, abs_tol=1e-12):
            raise refuse(
                f"{at}: value {result.metric_value!r} differs from config.json's mean {mean!r}"
            )
        seen[result.metric_type] = result.metric_value
    missing = [key for key in expected if key not in seen]
    if missing:
        raise refuse(f"measured metrics missing from model-index: {', '.join(missing)}")
    return {
        "validated": True,
        "huggingface_hub": huggingface_hub.__version__,
        "model_name": name,
        "eval_results": len(results),
    }


def check_card(folder: str | Path) -> dict[str, Any]:
    """:func:`validate_card` when huggingface_hub is installed; otherwise a note saying the
    check was skipped (a missing optional package never fails an export)."""
    if not hub_installed():
        return {
            "validated": False,
            "note": f"model-card metadata not checked: huggingface_hub is not installed "
            f"({HUB_EXTRA})",
        }
    return validate_card(folder)
