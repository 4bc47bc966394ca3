"""``sepsisrl build``: run the stages of docs/contracts.md in order, each cached and atomic.

    ingest -> measurements -> sepsis -> cohort -> episodes -> splits -> actions -> features
           -> replay -> audit (leakage)

A stage's cache key covers its config sections and the keys of the stages it reads (ingest:
a fingerprint of the raw files), so changing a reward weight re-runs only ``replay`` and
``audit``. ``build_summary.json`` at the workspace root collects the counts of every stage and
compares them with the expected ranges for full MIMIC-IV.

A raw table without data rows stops the build before the first stage, a core feature without
a value in nearly every decision window after ``features`` (``dataset/coverage.py``), unless
``source.allow_missing`` lists the table; the summary's ``warnings`` then say what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sepsisrl import __version__
from sepsisrl.dataset.actions import run_actions
from sepsisrl.dataset.cohort import run_cohort
from sepsisrl.dataset.config import BuildConfig
from sepsisrl.dataset.conventions import differences, profile_of
from sepsisrl.dataset.coverage import CoverageError, check_core_features, check_source_tables
from sepsisrl.dataset.episodes import run_episodes
from sepsisrl.dataset.features import run_features
from sepsisrl.dataset.ingest import run_ingest
from sepsisrl.dataset.leakage import run_leakage_audit
from sepsisrl.dataset.measurements import run_measurements
from sepsisrl.dataset.replay import run_replay
from sepsisrl.dataset.sepsis import run_sepsis
from sepsisrl.dataset.splits import run_splits
from sepsisrl.mimic.source import FINGERPRINT_METHOD, MimicSource, open_source
from sepsisrl.workspace import StageResult, Workspace, read_json, write_json

STAGES = (
    "ingest", "measurements", "sepsis", "cohort", "episodes", "splits", "actions", "features",
    "replay", "audit",
)  # fmt: skip


class _Stop(Exception):
    """Raised after the ``stop_after`` stage."""


@dataclass
class BuildSummary:
    workspace: Path
    stages: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


#: ``source`` keys that decide only whether a build is refused (dataset/coverage.py): no
#: stage's output depends on them, so they are left out of the cache keys.
COVERAGE_KEYS = ("allow_missing", "core_features")


def _section(cfg: BuildConfig, *names: str) -> dict[str, Any]:
    dump = cfg.model_dump(mode="json")
    for key in COVERAGE_KEYS:
        dump["source"].pop(key, None)
    return {n: dump[n] for n in names}


def expected_count_checks(
    cfg: BuildConfig, version: str, kind: str, counts: dict[str, int]
) -> dict[str, Any]:
    ranges = cfg.expected_counts.get(version, {})
    checks = {}
    for key, (lo, hi) in ranges.items():
        got = counts.get(key)
        checks[key] = {
            "count": got,
            "expected_full_mimic_iv": [lo, hi],
            "within_expected": None if got is None else bool(lo <= got <= hi),
        }
    applies = kind == "mimic-iv"
    return {
        "version": version,
        "applies": applies,
        "note": "reference counts for the full MIMIC-IV release; a subset or synthetic world "
        "will differ"
        if applies
        else "source is synthetic: reference counts shown for information",
        "checks": checks,
    }


def build(
    source: str | Path,
    workspace: str | Path,
    cfg: BuildConfig,
    force: bool = False,
    on_stage: Callable[[str, str], None] | None = None,
    stop_after: str | None = None,
) -> BuildSummary:
    """Build (or bring up to date) the replay datasets of ``workspace`` from ``source``.

    ``stop_after`` ends the build after that stage (the truth harness needs the cohort and its
    decision grid only); no summary is written then. The resolved configuration is written to
    ``build_config.json`` so that later commands (``sepsisrl truth``) apply the same one.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {STAGES}, got {stop_after!r}")
    started = time.perf_counter()
    src: MimicSource = open_source(source, cfg.source.kind, cfg.source.version)
    # an empty raw table stops the build before the workspace is touched. The checks guard
    # the dataset a build delivers: a build stopped early (the truth harness's re-simulated
    # populations, whose tables may lack a treatment no policy gave) delivers none.
    warnings = check_source_tables(src, cfg) if stop_after is None else []
    ws = Workspace(workspace)
    ws.clean_partials()
    summary = BuildSummary(ws.root)
    keys: dict[str, str] = {}

    def stage(name: str, material: dict[str, Any], fn: Callable[[Path], dict[str, Any]]) -> None:
        if on_stage:
            on_stage(name, "start")
        material = {**material, **{f"{k}_key": keys[k] for k in material.pop("_after", [])}}

        def run(tmp: Path) -> dict[str, Any]:
            info = fn(tmp)
            write_json(tmp / "audit.json", info)
            return {"summary": {k: v for k, v in info.items() if isinstance(v, int | float | str)}}

        res = ws.run(name, material, run, force=force)
        keys[name] = res.key
        summary.stages.append(res)
        if on_stage:
            on_stage(name, "skipped" if res.skipped else f"done in {res.seconds:.1f} s")
        if name == stop_after:
            raise _Stop

    p = ws.path
    source_info = {
        "kind": src.kind,
        "version": src.version,
        "root": str(src.root),
        "fingerprint": src.fingerprint(),
        "fingerprint_method": FINGERPRINT_METHOD,
    }
    write_json(ws.root / "build_config.json", cfg.model_dump(mode="json"))
    try:
        stage(
            "ingest",
            {
                "source": source_info["fingerprint"],
                "cfg": _section(cfg, "items", "vasopressors", "sepsis", "integrity"),
                "kind": src.kind,
                "version": src.version,
            },
            lambda out: run_ingest(src, cfg, out),
        )
        stage(
            "measurements",
            {
                "_after": ["ingest"],
                "cfg": _section(
                    cfg,
                    "items",
                    "vasopressors",
                    "gcs",
                    "ventilation",
                    "labs",
                    "features",
                    "source",
                    "sepsis",
                    "integrity",
                ),
                # what counts as treatment (dataset/sql/infusions.sql)
                "treatment": cfg.actions.treatment.model_dump(mode="json"),
            },
            lambda out: run_measurements(p("ingest"), cfg, out),
        )
        stage(
            "sepsis",
            {
                "_after": ["ingest", "measurements"],
                "cfg": _section(cfg, "sepsis", "ventilation", "sofa"),
            },
            lambda out: run_sepsis(p("ingest"), p("measurements"), cfg, out),
        )
        stage(
            "cohort",
            {
                "_after": ["ingest", "sepsis"],
                "cfg": _section(cfg, "cohort"),
                "mortality_days": cfg.rewards.mortality_days,
            },
            lambda out: run_cohort(p("ingest"), p("sepsis"), cfg, out),
        )
        stage(
            "episodes",
            {"_after": ["cohort"], "cfg": _section(cfg, "episodes")},
            lambda out: run_episodes(p("cohort"), cfg, out),
        )
        stage(
            "splits",
            {"_after": ["cohort", "episodes"], "cfg": _section(cfg, "split")},
            lambda out: run_splits(p("cohort"), p("episodes"), cfg, out),
        )
        stage(
            "actions",
            {
                "_after": ["episodes", "measurements", "splits"],
                "cfg": _section(cfg, "actions", "episodes"),
            },
            lambda out: run_actions(p("episodes"), p("measurements"), p("splits"), cfg, out),
        )
        stage(
            "features",
            {
                "_after": ["episodes", "measurements", "actions", "splits", "cohort"],
                "cfg": _section(cfg, "features", "normal_values", "normalisation", "episodes"),
                # the default state keeps the cache key it had before state variants existed
                **({"state": _section(cfg, "state")} if cfg.state.variant != "card" else {}),
            },
            lambda out: run_features(
                p("episodes"), p("measurements"), p("actions"), p("splits"), p("cohort"), cfg, out
            ),
        )
        try:
            warnings += check_core_features(p("features"), cfg)
        except CoverageError:
            # the stages so far are complete and stay cached; no summary claims a build
            (ws.root / "build_summary.json").unlink(missing_ok=True)
            raise
        stage(
            "replay",
            {
                "_after": ["features", "actions", "cohort", "sepsis", "splits"],
                "cfg": _section(cfg, "rewards"),
                "source": source_info,
            },
            lambda out: run_replay(
                p("features"), p("actions"), p("cohort"), p("sepsis"), cfg, source_info, out
            ),
        )
        stage(
            "audit",
            {"_after": list(keys), "cfg": _section(cfg, "rewards", "features", "labs")},
            lambda out: run_leakage_audit(ws.root, cfg, out),
        )

    except _Stop:
        summary.seconds = time.perf_counter() - started
        return summary
    summary.seconds = time.perf_counter() - started
    summary.report = _summary_report(cfg, src, source_info, p, warnings, summary)
    write_json(ws.root / "build_summary.json", summary.report)
    return summary


def _summary_report(
    cfg: BuildConfig,
    src: MimicSource,
    source_info: dict[str, Any],
    p: Callable[[str], Path],
    warnings: list[dict[str, Any]],
    summary: BuildSummary,
) -> dict[str, Any]:
    """``build_summary.json``: source, counts against the reference counts, conventions,
    warnings and the stages' times (``p``: a stage's folder)."""
    cohort_audit = read_json(p("cohort") / "audit.json")
    episodes_audit = read_json(p("episodes") / "audit.json")
    counts = {
        "icu_stays": cohort_audit["icu_stays"],
        "sepsis3_stays": cohort_audit["sepsis3_stays_in_icu_window"],
        "rl_episodes": episodes_audit["episodes"],
    }
    resolved = cfg.model_dump(mode="json")
    return {
        "created_by": f"sepsisrl {__version__}",
        "source": source_info,
        "counts": {
            **counts,
            "transitions": episodes_audit["transitions"],
            "mortality_90d": cohort_audit["mortality_90d"],
        },
        "expected": expected_count_checks(cfg, src.version, src.kind, counts),
        "leakage_audit": "passed",
        "conventions": {
            "profile": profile_of(resolved),
            "differences_from_mimic_code": differences(resolved),
        },
        "allow_missing": list(cfg.source.allow_missing),
        "warnings": warnings,
        "stages": {
            s.name: {"skipped": s.skipped, "seconds": round(s.seconds, 2)} for s in summary.stages
        },
        "seconds": round(summary.seconds, 2),
    }
