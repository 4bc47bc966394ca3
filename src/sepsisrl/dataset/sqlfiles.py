"""Load the pipeline's SQL files (one per clinical concept) and fill their parameters.

Placeholders are ``{{name}}``. Values are rendered as SQL literals: int/float as numbers, a
list of ints as ``(1, 2, 3)``, a list of strings as ``('a', 'b')``; ``Raw`` values verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class Raw:
    sql: str


def _literal(value: Any) -> str:
    if isinstance(value, Raw):
        return value.sql
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value.replace("'", "''")
    if isinstance(value, list | tuple):
        if not value:
            return "(NULL)"
        if all(isinstance(v, int) for v in value):
            return "(" + ", ".join(str(int(v)) for v in value) + ")"
        return "(" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in value) + ")"
    raise TypeError(f"cannot render {type(value).__name__} into SQL")


def render(name: str, **params: Any) -> str:
    text = (resources.files("sepsisrl.dataset") / "sql" / f"{name}.sql").read_text()
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(params))
    if missing:
        raise KeyError(f"{name}.sql needs parameters {missing}")
    return _PLACEHOLDER.sub(lambda m: _literal(params[m.group(1)]), text)
