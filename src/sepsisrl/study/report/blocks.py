"""What a report is made of: a list of blocks (headings, text, bullets, tables, figures), rendered
twice (HTML and markdown) so both files carry the same content, and how values are printed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

TITLE = "sepsisrl study report"
WARNING = (
    "RESEARCH ONLY — NOT FOR CLINICAL USE. Every value in this report is an offline estimate from "
    "retrospective (or synthetic) data. This report is not clinical decision support and must "
    "not inform the care of any patient."
)


# ------------------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str
    kind: str = "p"  # "p" | "warning" | "note"


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    key: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    key: str
    png: bytes
    caption: str


Block = Heading | Text | Bullets | Table | Figure


def table(key: str, header: list[str], rows: list[list[Any]], caption: str = "") -> Table:
    """A table block; every cell becomes a string."""
    return Table(key, tuple(header), tuple(tuple(str(c) for c in r) for r in rows), caption)


# -------------------------------------------------------------------------- values
def fmt(v: Any, digits: int = 4) -> str:
    """A value as printed in the report; None / NaN -> 'undefined'."""
    if v is None:
        return "undefined"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return f"{float(v):.{digits}g}" if math.isfinite(v) else "undefined"
    return str(v)


def fmt_est(v: Any) -> str:
    """An estimate: None means it failed the evaluation's gates."""
    return "not evaluable" if v is None else fmt(v)


def pct(v: Any) -> str:
    return "undefined" if v is None else f"{100 * float(v):.1f}%"


def ci(mean: Any, lo: Any, hi: Any) -> str:
    """'mean [low, high]' of an estimate and its 95 % CI."""
    if mean is None:
        return "undefined"
    if lo is None or hi is None:
        return f"{fmt(mean)} [CI undefined]"
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def to_float(v: Any) -> float:
    return math.nan if v is None else float(v)


def estimates(rows: list[list[Any]]) -> np.ndarray:
    """Rows of [mean, low, high] with None -> NaN (the input of a forest plot)."""
    return np.array([[to_float(v) for v in r] for r in rows], dtype=np.float64).reshape(-1, 3)


def card_value(row: dict[str, Any]) -> str:
    """'mean ± sd (n=k)' of a summarize() row, 4 decimals; undefined seeds are counted."""
    undefined = f"; {row['undefined']} undefined" if row["undefined"] else ""
    if row["mean"] is None:
        return f"undefined (n={row['n']}{undefined})"
    sd = "" if row["std"] is None else f" ± {row['std']:.4f}"
    return f"{row['mean']:.4f}{sd} (n={row['n']}{undefined})"
