"""Refuse what cannot be right: empty raw tables and core state features nearly never observed.

A failed or partial export (a ``chartevents`` with its header only, say) does not break the
SQL: every stage runs, and the build ends with a plausible dataset whose vital signs are all
population medians. Two checks stop that:

* before any stage runs, every raw table must hold at least one data row
  (:func:`check_source_tables`);
* after the features stage, each core feature (``source.core_features``) must have a value -
  observed in the decision window or in an earlier window of the same episode - in more than
  ``1 - max_unavailable_share`` of all decision windows (:func:`check_core_features`).

Either stops the build with a :class:`CoverageError` naming the tables or features and the
fix. A table listed in ``source.allow_missing`` (``sepsisrl build --allow-missing TABLE``)
turns its refusals into warnings, which ``build_summary.json`` lists under ``warnings``; the
study report and the model card repeat them. The checks run on every build, cached stages or
not, and ``allow_missing`` is no part of any stage's cache key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.sqlfiles import Raw, execute
from sepsisrl.mimic.schema import TABLES
from sepsisrl.mimic.source import OPTIONAL_TABLES, MimicSource, SourceError

#: What the build takes from each event table (for the messages).
PROVIDES = {
    "chartevents": "every charted vital sign, GCS, FiO2, PEEP, ventilation and charted weight",
    "labevents": "every laboratory value (lactate, creatinine, platelets, blood gases, ...)",
    "inputevents": "the vasopressor and IV-fluid doses (the actions)",
    "outputevents": "the urine output",
    "prescriptions": "the antibiotics (suspected infection, hence Sepsis-3)",
    "microbiologyevents": "the cultures (suspected infection, hence Sepsis-3)",
}


class CoverageError(SourceError):
    """The source data cannot give a correct dataset (an empty table, an absent core feature)."""


def _file(src: MimicSource, table: str) -> str:
    t = src.tables[table]
    return str(t.path.relative_to(src.root)) if t.path.is_relative_to(src.root) else str(t.path)


def _allow_hint(tables: list[str]) -> str:
    flags = " ".join(f"--allow-missing {t}" for t in tables)
    return (
        f"or pass {flags} (config: source.allow_missing: [{', '.join(tables)}]) to build "
        "without it; the build summary, the study report and any model card then carry a warning"
    )


def check_source_tables(src: MimicSource, cfg: BuildConfig) -> list[dict[str, Any]]:
    """Refuse a raw table with no data rows unless ``source.allow_missing`` lists it.

    Returns one warning per allowed empty table; raises :class:`CoverageError` listing every
    empty table that is not allowed."""
    allowed = set(cfg.source.allow_missing)
    empty = src.empty_tables()
    refused = [t for t in empty if t not in allowed]
    if refused:
        lines = []
        for t in refused:
            what = PROVIDES.get(t)
            consequence = (
                f"without it, {what} would be missing, yet the build would still produce a "
                "plausible dataset"
                if what
                else "the build cannot run without it"
            )
            lines.append(f"{_file(src, t)} has a header but no data rows: {consequence}")
        optional = [t for t in refused if t in OPTIONAL_TABLES]
        fix = "Fix: export the table(s) again (a failed or interrupted export?)"
        fix += f", {_allow_hint(optional)}." if optional else "."
        raise CoverageError(
            f"{src.root}: required raw table(s) are empty:\n  - "
            + "\n  - ".join(lines)
            + f"\n{fix}"
        )
    return [
        {
            "kind": "empty_table",
            "table": t,
            "message": f"{_file(src, t)} has no data rows (allowed by --allow-missing {t}); "
            f"missing from this build: {PROVIDES.get(t, 'its data')}.",
        }
        for t in empty
    ]


def core_feature_shares(features_dir: Path, names: list[str]) -> dict[str, dict[str, float]]:
    """Per feature: the share of decision windows where it is unavailable (not observed in
    that window nor in an earlier window of the episode) and where it is not observed in the
    window itself, from ``features/state_raw.parquet``'s ``obs_<feature>`` columns."""
    cols = ", ".join(
        f'max("obs_{n}"::INTEGER) OVER (PARTITION BY stay_id ORDER BY step '
        f'ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS "seen_{n}", "obs_{n}"'
        for n in names
    )
    aggs = ", ".join(
        f'avg(1 - "seen_{n}"), avg(CASE WHEN "obs_{n}" THEN 0 ELSE 1 END)' for n in names
    )
    con = duckdb.connect()
    try:
        row = con.execute(
            f"SELECT count(*), {aggs} FROM (SELECT {cols} FROM read_parquet($path))",
            {"path": str(features_dir / "state_raw.parquet")},
        ).fetchone()
    finally:
        con.close()
    n_windows = int(row[0])
    out: dict[str, dict[str, float]] = {}
    for i, n in enumerate(names):
        unavailable, not_observed = row[1 + 2 * i], row[2 + 2 * i]
        out[n] = {
            "windows": n_windows,
            "unavailable_share": 1.0 if unavailable is None else round(float(unavailable), 4),
            "window_missing_share": 1.0 if not_observed is None else round(float(not_observed), 4),
        }
    return out


def check_core_features(features_dir: Path, cfg: BuildConfig) -> list[dict[str, Any]]:
    """Refuse core features unavailable in more than ``max_unavailable_share`` of the decision
    windows unless their table is in ``source.allow_missing``.

    Returns one warning per allowed table with absent features; raises
    :class:`CoverageError` listing every absent feature whose table is not allowed."""
    core = cfg.source.core_features
    names = [n for feats in core.tables.values() for n in feats]
    if not names:
        return []
    shares = core_feature_shares(features_dir, names)
    n_windows = next(iter(shares.values()))["windows"]
    if n_windows == 0:  # no decision window: nothing to judge (the cohort audit says why)
        return []
    limit = core.max_unavailable_share
    absent = {
        table: {n: shares[n] for n in feats if shares[n]["unavailable_share"] > limit}
        for table, feats in core.tables.items()
    }
    absent = {t: f for t, f in absent.items() if f}
    allowed = set(cfg.source.allow_missing)
    refused = {t: f for t, f in absent.items() if t not in allowed}

    def listing(feats: dict[str, dict[str, float]], table: str) -> list[str]:
        return [
            f"{n}: no value in {100 * s['unavailable_share']:.1f} % of the decision windows "
            f"(from {TABLES[table].relpath})"
            for n, s in feats.items()
        ]

    if refused:
        lines = [line for t, f in refused.items() for line in listing(f, t)]
        tables = list(refused)
        files = ", ".join(TABLES[t].relpath for t in tables)
        optional = [t for t in tables if t in OPTIONAL_TABLES]
        fix = (
            f"Fix: check {files} (a partial export, or item ids that differ from items: in "
            "the config)"
        )
        fix += f", {_allow_hint(optional)}." if optional else "."
        raise CoverageError(
            f"core state features have no value in nearly every decision window (more than "
            f"{100 * limit:g} % of {n_windows:,} windows; source.core_features."
            "max_unavailable_share): the dataset would stand on imputed population medians."
            "\n  - " + "\n  - ".join(lines) + f"\n{fix}"
        )
    return [
        {
            "kind": "core_features_absent",
            "table": t,
            "features": {n: s["unavailable_share"] for n, s in f.items()},
            "message": f"core features without a value in nearly every decision window "
            f"(allowed by --allow-missing {t}): "
            + ", ".join(f"{n} ({100 * s['unavailable_share']:.1f} %)" for n, s in f.items())
            + f", from {TABLES[t].relpath}. Their state values are imputed population medians.",
        }
        for t, f in absent.items()
    ]


def measurement_counts(
    con: duckdb.DuckDBPyConnection, infusions: str, urine: str, cfg: BuildConfig
) -> dict[str, Any]:
    """Counts real data must satisfy, for the measurements audit (``tests/test_demo.py``).

    ``vasopressor_rows``: per agent, the ingested rows (the ``inputs`` view) and those that got
    a dose in ``infusions`` - a row without one is a dropped dose. ``urine_hours``: hours
    (stay, clock hour) whose urine total is negative, and how many of them are not negative in
    the source itself (the ``outputs`` view, GU irrigant in counted negative): a dropped half
    of an irrigant in/out pair shows there."""
    agents = ", ".join(f"({v.itemid}, '{name}')" for name, v in cfg.vasopressors.items())
    vaso = execute(
        con, "coverage_vasopressor_rows", agents=Raw(agents), infusions=Raw(infusions)
    ).fetchall()
    neg, neg_src_only, neg_src = execute(
        con,
        "coverage_urine_hours",
        negative_ids=[int(i) for i in cfg.items["urine_negative"]],
        urine=Raw(urine),
    ).fetchone()
    return {
        "vasopressor_rows": {a: {"read": r, "dosed": d} for a, r, d in vaso},
        "urine_hours": {
            "negative": neg,
            "negative_not_in_source": neg_src_only,
            "negative_in_source": neg_src,
        },
    }
