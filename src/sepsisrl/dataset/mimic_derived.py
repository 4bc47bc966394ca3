"""``sepsisrl validate --mimic-derived``: compare a build with mimic-code's derived tables.

Many MIMIC-IV users already have the concepts of MIT-LCP/mimic-code (schema
``mimiciv_derived``) as a DuckDB database, or as a folder of ``<table>.csv[.gz]`` /
``<table>.parquet`` files (a Postgres or BigQuery export). Five of them have an equivalent in
a built workspace; each provided table is compared with it, on the ICU stays (or, for
antibiotics, the patients) of the workspace:

============================== ======================================= ==========================
mimic-code table               workspace                               compared per
============================== ======================================= ==========================
suspicion_of_infection         ingest/antibiotics, sepsis/suspicion    antibiotic start
                                                                       (subject_id, antibiotic_time)
norepinephrine_equivalent_dose measurements/infusions (ne_rate summed  time segment of a stay
                               over the agents running)
urine_output                   measurements/urine (summed per time)    (stay_id, charttime)
sofa                           sepsis/sofa_hourly                      ICU hour (stay_id, endtime)
sepsis3                        sepsis/onset                            ICU stay
============================== ======================================= ==========================

Both hourly grids are clock hours; mimic-code's hour ``(endtime - 1 h, endtime]`` and the
build's ``[starttime, endtime)`` are matched on ``endtime`` (mimic-code's ``hr`` counts from
the first heart rate, the build's from ``intime``, so ``hr`` is not a key). mimic-code's
Sepsis-3 onset is taken as ``least(suspected_infection_time, sofa_time)``.

The figures (counts in common and on one side only, shares of identical values, Pearson r,
maximum differences) go to ``agreement.json``; every disagreeing row goes to
``<table>_disagreements.parquet`` and ``.csv``. Tolerances: ``configs/validate.yaml``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from pydantic import Field

from sepsisrl.config import StrictModel, load_config
from sepsisrl.dataset.sepsis import SOFA_COMPONENTS as SOFA_PARTS
from sepsisrl.dataset.sqlfiles import Raw, quote_path, render


class MimicDerivedConfig(StrictModel):
    schemas: list[str] = Field(min_length=1)
    subfolder: str
    dose_tolerance: float = Field(ge=0)
    urine_tolerance_ml: float = Field(ge=0)
    time_tolerance_hours: float = Field(ge=0)
    out: str


class ValidateConfig(StrictModel):
    mimic_derived: MimicDerivedConfig


def load_validate_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ValidateConfig:
    return load_config(ValidateConfig, "validate", path, overrides)


class DerivedTableError(ValueError):
    """A derived table or a workspace file cannot be compared (the message names the file)."""


#: The columns read from each mimic-code table (mimic-iv/concepts/), with the type read as.
#: Other columns may be present and are ignored.
DERIVED_COLUMNS: dict[str, dict[str, str]] = {
    "suspicion_of_infection": {
        "subject_id": "BIGINT",
        "stay_id": "BIGINT",
        "antibiotic_time": "TIMESTAMP",
        "suspected_infection": "INTEGER",
        "suspected_infection_time": "TIMESTAMP",
        "culture_time": "TIMESTAMP",
    },
    "norepinephrine_equivalent_dose": {
        "stay_id": "BIGINT",
        "starttime": "TIMESTAMP",
        "endtime": "TIMESTAMP",
        "norepinephrine_equivalent_dose": "DOUBLE",
    },
    "urine_output": {"stay_id": "BIGINT", "charttime": "TIMESTAMP", "urineoutput": "DOUBLE"},
    "sofa": {
        "stay_id": "BIGINT",
        "hr": "BIGINT",
        "starttime": "TIMESTAMP",
        "endtime": "TIMESTAMP",
        **{f"{c}_24hours": "INTEGER" for c in SOFA_PARTS},
        "sofa_24hours": "INTEGER",
    },
    "sepsis3": {
        "subject_id": "BIGINT",
        "stay_id": "BIGINT",
        "antibiotic_time": "TIMESTAMP",
        "culture_time": "TIMESTAMP",
        "suspected_infection_time": "TIMESTAMP",
        "sofa_time": "TIMESTAMP",
        "sofa_score": "INTEGER",
        "sepsis3": "BOOLEAN",
    },
}
TABLES = tuple(DERIVED_COLUMNS)

SOFA_COLUMNS = tuple(f"sofa_{c}" for c in SOFA_PARTS)

#: The workspace files (and their columns) each comparison reads; icustays is always read.
WORKSPACE_COLUMNS: dict[str, tuple[str, ...]] = {
    "ingest/icustays": ("subject_id", "stay_id", "intime", "outtime"),
    "ingest/antibiotics": ("subject_id", "starttime"),
    "sepsis/suspicion": ("subject_id", "abx_time", "si_time", "culture_time"),
    "measurements/infusions": ("stay_id", "starttime", "endtime", "factor", "ne_rate"),
    "measurements/urine": ("stay_id", "charttime", "value"),
    "sepsis/sofa_hourly": ("stay_id", "hr", "starttime", "endtime", "sofa", *SOFA_COLUMNS),
    "sepsis/onset": ("stay_id", "si_time", "sofa_time", "onset_time"),
}
WORKSPACE_FILES: dict[str, tuple[str, ...]] = {
    "suspicion_of_infection": ("ingest/antibiotics", "sepsis/suspicion"),
    "norepinephrine_equivalent_dose": ("measurements/infusions",),
    "urine_output": ("measurements/urine",),
    "sofa": ("sepsis/sofa_hourly",),
    "sepsis3": ("sepsis/onset",),
}


def _view(name: str) -> str:
    """The temp view of a workspace file (``sepsis/onset`` -> ``ws_onset``)."""
    return "ws_" + name.split("/")[1]


@dataclass(frozen=True)
class Located:
    """Where a mimic-code table was found: ``where`` for messages, ``relation`` for SQL."""

    table: str
    where: str
    relation: str


def locate(
    con: duckdb.DuckDBPyConnection, src: Path, cfg: MimicDerivedConfig
) -> dict[str, Located | None]:
    """Find each mimic-code table in ``src`` (a DuckDB file or a folder); None: not provided."""
    if not src.exists():
        raise DerivedTableError(
            f"{src}: not found. --mimic-derived takes a DuckDB database file (schema "
            f"{' or '.join(cfg.schemas)}) or a folder of <table>.csv, <table>.csv.gz or "
            "<table>.parquet files"
        )
    if src.is_file():
        try:
            con.execute(f"ATTACH {quote_path(src)} AS mimic_derived_src (READ_ONLY)")
        except duckdb.Error as exc:
            raise DerivedTableError(
                f"{src}: not a DuckDB database this DuckDB ({duckdb.__version__}) can open "
                f"({exc}); give a DuckDB file, or a folder of CSV/Parquet files named after "
                "the tables"
            ) from exc
        rows = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_catalog = 'mimic_derived_src'"
        ).fetchall()
        found = {(s.lower(), t.lower()): (s, t) for s, t in rows}
        out: dict[str, Located | None] = {}
        for table in TABLES:
            hit = next(
                (found[(s.lower(), table)] for s in cfg.schemas if (s.lower(), table) in found),
                None,
            )
            out[table] = (
                None
                if hit is None
                else Located(
                    table, f"{src} ({hit[0]}.{hit[1]})", f'mimic_derived_src."{hit[0]}"."{hit[1]}"'
                )
            )
        return out
    folders = [src] + ([src / cfg.subfolder] if (src / cfg.subfolder).is_dir() else [])
    out = {}
    for table in TABLES:
        out[table] = None
        candidates = [
            f / f"{table}{ext}" for f in folders for ext in (".parquet", ".csv.gz", ".csv")
        ]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            continue
        relation = (
            f"read_parquet({quote_path(path)})"
            if path.suffix == ".parquet"
            # all text, then cast column by column (a clear error names a bad column)
            else f"read_csv({quote_path(path)}, header = true, all_varchar = true)"
        )
        out[table] = Located(table, str(path), relation)
    return out


def typed_view(con: duckdb.DuckDBPyConnection, loc: Located) -> None:
    """``mc_<table>``: the expected columns, cast; a missing column or a value that does not
    convert is an error naming the file, the column and what was expected."""
    expected = DERIVED_COLUMNS[loc.table]
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {loc.relation}").fetchall()
    except duckdb.Error as exc:
        raise DerivedTableError(f"{loc.where}: cannot be read as {loc.table}: {exc}") from exc
    cols = {r[0].lower(): r[0] for r in described}
    missing = [c for c in expected if c not in cols]
    if missing:
        raise DerivedTableError(
            f"{loc.where}: not mimic-code's {loc.table}: missing column(s) {missing}. "
            f"Expected (at least) {list(expected)}; found {[r[0] for r in described]}"
        )
    counts = ", ".join(
        f'count(*) FILTER (WHERE "{cols[c]}" IS NOT NULL AND TRY_CAST("{cols[c]}" AS {t}) IS NULL)'
        for c, t in expected.items()
    )
    bad = con.execute(f"SELECT {counts} FROM {loc.relation}").fetchone()
    for (col, typ), n in zip(expected.items(), bad, strict=True):
        if n:
            example = con.execute(
                f'SELECT CAST("{cols[col]}" AS VARCHAR) FROM {loc.relation} '
                f'WHERE "{cols[col]}" IS NOT NULL AND TRY_CAST("{cols[col]}" AS {typ}) IS NULL '
                "LIMIT 1"
            ).fetchone()[0]
            raise DerivedTableError(
                f"{loc.where}: column {col} of {loc.table} should hold {typ} values; {n} row(s) "
                f"do not convert (e.g. {example!r})"
            )
    select = ", ".join(f'TRY_CAST("{cols[c]}" AS {t}) AS {c}' for c, t in expected.items())
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW mc_{loc.table} AS SELECT {select} FROM {loc.relation}"
    )


def workspace_views(con: duckdb.DuckDBPyConnection, ws: Path, tables: list[str]) -> None:
    """``ws_<name>`` views of the workspace files the comparisons of ``tables`` read."""
    names = ["ingest/icustays"] + [n for t in tables for n in WORKSPACE_FILES[t]]
    for name in dict.fromkeys(names):
        path = ws / f"{name}.parquet"
        if not path.is_file():
            raise DerivedTableError(
                f"{path} not found: --workspace must be a workspace built by `sepsisrl build` "
                f"(stage {name.split('/')[0]})"
            )
        found = [
            r[0]
            for r in con.execute(
                "DESCRIBE SELECT * FROM read_parquet($path)", {"path": str(path)}
            ).fetchall()
        ]
        missing = [c for c in WORKSPACE_COLUMNS[name] if c not in found]
        if missing:
            raise DerivedTableError(
                f"{path}: missing column(s) {missing}; expected {list(WORKSPACE_COLUMNS[name])}, "
                f"found {found}. Rebuild the workspace with this version of sepsisrl"
            )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {_view(name)} AS SELECT * FROM read_parquet({quote_path(path)})"
        )


# --- comparisons: each fills the temp table dis_<table> and returns its figures -------------


def _figures(con: duckdb.DuckDBPyConnection, exprs: dict[str, str]) -> dict[str, Any]:
    """One aggregate query over ``cmp``: ``{figure name: SQL expression}``."""
    cur = con.execute("SELECT " + ",\n".join(f"{e} AS {n}" for n, e in exprs.items()) + " FROM cmp")
    names = [d[0] for d in cur.description]
    row = cur.fetchone()
    out: dict[str, Any] = {}
    for name, value in zip(names, row, strict=True):
        if isinstance(value, float):
            value = None if value != value else round(value, 6)  # NaN (no data) -> null
        out[name] = value
    return out


def _share(num: str, den: str) -> str:
    return f"CAST({num} AS DOUBLE) / nullif({den}, 0)"


def _count(condition: str) -> str:
    return f"count(*) FILTER (WHERE {condition})"


def compare_suspicion(con: duckdb.DuckDBPyConnection, cfg: MimicDerivedConfig) -> dict[str, Any]:
    tol = cfg.time_tolerance_hours
    con.execute(render("mimic_derived_suspicion"))
    both = "in_mimic_code AND in_sepsisrl"
    susp = f"{both} AND mimic_code_suspected AND sepsisrl_suspected"
    si_same = f"abs(coalesce(si_time_diff_hours, 1e9)) <= {tol}"
    cx_same = (
        f"(coalesce(abs(culture_time_diff_hours) <= {tol}, false) "
        "OR (mimic_code_culture_time IS NULL AND sepsisrl_culture_time IS NULL))"
    )
    n_both, n_susp = _count(both), _count(susp)
    figures = _figures(
        con,
        {
            "antibiotic_starts_mimic_code": _count("in_mimic_code"),
            "antibiotic_starts_sepsisrl": _count("in_sepsisrl"),
            "antibiotic_starts_in_common": n_both,
            "only_mimic_code": _count("in_mimic_code AND NOT in_sepsisrl"),
            "only_sepsisrl": _count("in_sepsisrl AND NOT in_mimic_code"),
            "suspected_both": n_susp,
            "suspected_only_mimic_code": _count(
                f"{both} AND mimic_code_suspected AND NOT sepsisrl_suspected"
            ),
            "suspected_only_sepsisrl": _count(
                f"{both} AND sepsisrl_suspected AND NOT mimic_code_suspected"
            ),
            "suspicion_flag_agreement": _share(
                _count(f"{both} AND mimic_code_suspected = sepsisrl_suspected"), n_both
            ),
            "si_time_identical_share": _share(_count(f"{susp} AND {si_same}"), n_susp),
            "culture_time_identical_share": _share(_count(f"{susp} AND {cx_same}"), n_susp),
            "si_time_max_abs_diff_hours": f"max(abs(si_time_diff_hours)) FILTER (WHERE {susp})",
        },
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE dis AS SELECT * FROM cmp
        WHERE NOT ({both}) OR mimic_code_suspected <> sepsisrl_suspected
           OR ({susp} AND NOT ({si_same} AND {cx_same}))
        ORDER BY subject_id, antibiotic_time"""
    )
    return figures


def compare_ne_dose(con: duckdb.DuckDBPyConnection, cfg: MimicDerivedConfig) -> dict[str, Any]:
    """Per stay, the boundaries of both sides' dose intervals cut time into segments; in each,
    mimic-code's dose (the highest of its rows covering the segment) is compared with the sum
    of the build's NE-equivalent rates of the vasopressor rows running through it."""
    tol = cfg.dose_tolerance
    con.execute(render("mimic_derived_ne_dose"))
    ok = f"abs(diff) <= {tol}"
    figures = _figures(
        con,
        {
            "stays_mimic_code": "count(DISTINCT stay_id) FILTER (WHERE mimic_code_dose IS NOT NULL)",
            "stays_sepsisrl": "count(DISTINCT stay_id) FILTER (WHERE sepsisrl_dose IS NOT NULL)",
            "segments": "count(*)",
            "segments_in_common": _count(
                "mimic_code_dose IS NOT NULL AND sepsisrl_dose IS NOT NULL"
            ),
            "segments_only_mimic_code": _count("sepsisrl_dose IS NULL"),
            "segments_only_sepsisrl": _count("mimic_code_dose IS NULL"),
            "segments_with_overlapping_mimic_code_rows": _count("mimic_code_rows > 1"),
            "hours": "sum(hours)",
            "segments_within_tolerance": _share(_count(ok), "count(*)"),
            "hours_within_tolerance": _share(f"sum(hours) FILTER (WHERE {ok})", "sum(hours)"),
            "pearson_r": "corr(coalesce(mimic_code_dose, 0), coalesce(sepsisrl_dose, 0))",
            "max_abs_diff": "max(abs(diff))",
            "mean_dose_mimic_code": _share(
                "sum(hours * coalesce(mimic_code_dose, 0))", "sum(hours)"
            ),
            "mean_dose_sepsisrl": _share("sum(hours * coalesce(sepsisrl_dose, 0))", "sum(hours)"),
        },
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE dis AS SELECT * FROM cmp WHERE NOT ({ok}) "
        "ORDER BY stay_id, starttime"
    )
    return figures


def compare_urine(con: duckdb.DuckDBPyConnection, cfg: MimicDerivedConfig) -> dict[str, Any]:
    tol = cfg.urine_tolerance_ml
    con.execute(render("mimic_derived_urine", tol=tol))
    both = "in_mimic_code AND in_sepsisrl"
    figures = _figures(
        con,
        {
            "rows_mimic_code": _count("in_mimic_code"),
            "rows_sepsisrl": _count("in_sepsisrl"),
            "rows_in_common": _count(both),
            "only_mimic_code": _count("in_mimic_code AND NOT in_sepsisrl"),
            "only_sepsisrl": _count("in_sepsisrl AND NOT in_mimic_code"),
            "identical_share": _share(_count(f"{both} AND same"), _count(both)),
            "pearson_r": f"corr(mimic_code_ml, sepsisrl_ml) FILTER (WHERE {both})",
            "max_abs_diff_ml": f"max(abs(diff_ml)) FILTER (WHERE {both})",
            "total_ml_mimic_code": "sum(mimic_code_ml)",
            "total_ml_sepsisrl": "sum(sepsisrl_ml)",
        },
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE dis AS SELECT * EXCLUDE (same) FROM cmp "
        f"WHERE NOT ({both} AND same) ORDER BY stay_id, charttime"
    )
    return figures


def compare_sofa(con: duckdb.DuckDBPyConnection, cfg: MimicDerivedConfig) -> dict[str, Any]:
    parts = (*SOFA_PARTS, "total")
    m_cols = ", ".join(f"{c}_24hours AS {c}" for c in SOFA_PARTS) + ", sofa_24hours AS total"
    b_cols = ", ".join(f"sofa_{c} AS {c}" for c in SOFA_PARTS) + ", sofa AS total"
    pairs = ", ".join(f"m.{c} AS mimic_code_{c}, b.{c} AS sepsisrl_{c}" for c in parts)
    differs = ", ".join(f"CASE WHEN m.{c} IS DISTINCT FROM b.{c} THEN '{c}' END" for c in parts)
    con.execute(
        render(
            "mimic_derived_sofa",
            m_cols=Raw(m_cols),
            b_cols=Raw(b_cols),
            pairs=Raw(pairs),
            differs=Raw(differs),
        )
    )
    both = "in_mimic_code AND in_sepsisrl"
    n_both = _count(both)
    exprs = {
        "stays_mimic_code": "count(DISTINCT stay_id) FILTER (WHERE in_mimic_code)",
        "stays_sepsisrl": "count(DISTINCT stay_id) FILTER (WHERE in_sepsisrl)",
        "hours_mimic_code": _count("in_mimic_code"),
        "hours_sepsisrl": _count("in_sepsisrl"),
        "hours_in_common": n_both,
        "hours_only_mimic_code": _count("in_mimic_code AND NOT in_sepsisrl"),
        "hours_only_sepsisrl": _count("in_sepsisrl AND NOT in_mimic_code"),
        "all_components_identical_share": _share(_count(f"{both} AND differing = ''"), n_both),
        "sofa_ge_2_agreement": _share(
            _count(f"{both} AND (mimic_code_total >= 2) = (sepsisrl_total >= 2)"), n_both
        ),
    }
    for c in parts:
        exprs[f"{c}_identical_share"] = _share(
            _count(f"{both} AND mimic_code_{c} = sepsisrl_{c}"), n_both
        )
        exprs[f"{c}_sepsisrl_higher"] = _count(f"{both} AND sepsisrl_{c} > mimic_code_{c}")
        exprs[f"{c}_sepsisrl_lower"] = _count(f"{both} AND sepsisrl_{c} < mimic_code_{c}")
    figures = _figures(con, exprs)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE dis AS SELECT * FROM cmp WHERE {both} AND differing <> '' "
        "ORDER BY stay_id, endtime"
    )
    return figures


def compare_sepsis3(con: duckdb.DuckDBPyConnection, cfg: MimicDerivedConfig) -> dict[str, Any]:
    tol = cfg.time_tolerance_hours
    con.execute(render("mimic_derived_sepsis3"))
    both = "in_mimic_code AND in_sepsisrl"
    n_both = _count(both)

    def same(col: str) -> str:
        return f"coalesce(abs({col}) <= {tol}, false)"

    figures = _figures(
        con,
        {
            "stays_mimic_code": _count("in_mimic_code"),
            "stays_sepsisrl": _count("in_sepsisrl"),
            "stays_in_common": n_both,
            "only_mimic_code": _count("in_mimic_code AND NOT in_sepsisrl"),
            "only_sepsisrl": _count("in_sepsisrl AND NOT in_mimic_code"),
            "only_sepsisrl_onset_before_intime": _count(
                "in_sepsisrl AND NOT in_mimic_code AND sepsisrl_onset_before_intime"
            ),
            "si_time_identical_share": _share(
                _count(f"{both} AND {same('si_time_diff_hours')}"), n_both
            ),
            "sofa_time_identical_share": _share(
                _count(f"{both} AND {same('sofa_time_diff_hours')}"), n_both
            ),
            "onset_identical_share": _share(
                _count(f"{both} AND {same('onset_diff_hours')}"), n_both
            ),
            "onset_differs": _count(f"{both} AND NOT {same('onset_diff_hours')}"),
            "onset_median_abs_diff_hours": f"median(abs(onset_diff_hours)) FILTER (WHERE {both})",
            "onset_max_abs_diff_hours": f"max(abs(onset_diff_hours)) FILTER (WHERE {both})",
            "onset_mean_diff_hours": f"avg(onset_diff_hours) FILTER (WHERE {both})",
        },
    )
    si_ok, sofa_ok, onset_ok = (
        same(c) for c in ("si_time_diff_hours", "sofa_time_diff_hours", "onset_diff_hours")
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE dis AS SELECT * FROM cmp
        WHERE NOT ({both}) OR NOT ({si_ok} AND {sofa_ok} AND {onset_ok})
        ORDER BY stay_id"""
    )
    return figures


COMPARISONS = {
    "suspicion_of_infection": compare_suspicion,
    "norepinephrine_equivalent_dose": compare_ne_dose,
    "urine_output": compare_urine,
    "sofa": compare_sofa,
    "sepsis3": compare_sepsis3,
}

#: What each comparison's unit and build-side quantity are (copied into agreement.json).
DEFINITIONS = {
    "suspicion_of_infection": "per antibiotic start (subject_id, antibiotic_time) of the "
    "workspace's patients: suspected or not, suspected-infection and culture times "
    "(sepsisrl: ingest/antibiotics and sepsis/suspicion)",
    "norepinephrine_equivalent_dose": "per time segment of a stay cut at every interval "
    "boundary of either side: mimic-code's dose against the sum of sepsisrl's ne_rate over the "
    "vasopressor rows running (measurements/infusions); no row = 0 in r and differences",
    "urine_output": "per (stay_id, charttime): mimic-code's urineoutput against the sum of "
    "sepsisrl's signed urine rows (measurements/urine)",
    "sofa": "per ICU clock hour (stay_id, endtime; hr >= 0 on both sides): the 24-hour "
    "component scores and total (sepsis/sofa_hourly)",
    "sepsis3": "per ICU stay: mimic-code's sepsis3 rows against sepsis/onset (any onset time); "
    "mimic-code onset = least(suspected_infection_time, sofa_time)",
}


def compare_with_mimic_derived(
    workspace: str | Path,
    src: str | Path,
    out: str | Path | None = None,
    cfg: MimicDerivedConfig | None = None,
) -> dict[str, Any]:
    """Compare ``workspace`` with the mimic-code tables in ``src``; write ``agreement.json``
    and the disagreeing rows under ``out`` (default: ``<workspace>/<cfg.out>``)."""
    cfg = cfg or load_validate_config().mimic_derived
    ws, src = Path(workspace), Path(src)
    out_dir = Path(out) if out is not None else ws / cfg.out
    con = duckdb.connect()
    try:
        with contextlib.suppress(duckdb.Error):  # TIMESTAMPTZ columns keep their UTC clock
            con.execute("SET TimeZone = 'UTC'")
        located = locate(con, src, cfg)
        provided = [t for t in TABLES if located[t] is not None]
        if not provided:
            raise DerivedTableError(
                f"{src}: none of mimic-code's tables {list(TABLES)} found (as .parquet, .csv.gz "
                f"or .csv files, also under {cfg.subfolder}/, or in DuckDB schemas {cfg.schemas})"
            )
        for t in provided:
            typed_view(con, located[t])
        workspace_views(con, ws, provided)
        out_dir.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {
            "workspace": str(ws),
            "mimic_derived": str(src),
            "out": str(out_dir),
            "tolerances": {
                "dose": cfg.dose_tolerance,
                "urine_ml": cfg.urine_tolerance_ml,
                "time_hours": cfg.time_tolerance_hours,
            },
            "tables": {},
        }
        for table in TABLES:
            for ext in ("parquet", "csv"):
                (out_dir / f"{table}_disagreements.{ext}").unlink(missing_ok=True)
            loc = located[table]
            if loc is None:
                report["tables"][table] = {"status": "not provided"}
                continue
            figures = COMPARISONS[table](con, cfg)
            n = con.execute("SELECT count(*) FROM dis").fetchone()[0]
            files = []
            for ext, options in (("parquet", "FORMAT parquet"), ("csv", "FORMAT csv, HEADER")):
                path = out_dir / f"{table}_disagreements.{ext}"
                con.execute(f"COPY dis TO $path ({options})", {"path": str(path)})
                files.append(str(path))
            report["tables"][table] = {
                "status": "compared",
                "source": loc.where,
                "compared": DEFINITIONS[table],
                "figures": figures,
                "disagreeing_rows": n,
                "files": files,
            }
        (out_dir / "agreement.json").write_text(json.dumps(report, indent=2) + "\n")
        return report
    finally:
        con.close()


def _text(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and name.endswith(("_share", "_agreement", "_within_tolerance")):
        return f"{100 * value:.2f} %"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def agreement_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(table, figure, value) rows for printing: shares as percentages, and per SOFA component
    one row (identical share, hours where sepsisrl is higher / lower)."""
    rows: list[tuple[str, str, str]] = []
    for table, entry in report["tables"].items():
        if entry["status"] != "compared":
            rows.append((table, "status", entry["status"]))
            continue
        figures = dict(entry["figures"])
        for name in list(figures):
            if name.endswith("_identical_share") and f"{name[:-16]}_sepsisrl_higher" in figures:
                part = name[:-16]
                higher = figures.pop(f"{part}_sepsisrl_higher")
                lower = figures.pop(f"{part}_sepsisrl_lower")
                text = f"{_text(name, figures.pop(name))}, {higher} / {lower}"
                rows.append((table, f"{part} identical; sepsisrl higher / lower", text))
            elif name in figures:
                rows.append((table, name, _text(name, figures.pop(name))))
        rows.append((table, "disagreeing_rows", str(entry["disagreeing_rows"])))
    return rows
