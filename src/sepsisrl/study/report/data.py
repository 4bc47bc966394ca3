"""The one place that reads a study workspace for the report.

:func:`load_study` checks that every artifact the report needs is on disk (see
:func:`required_artifacts`) and returns a :class:`Study`; sections read everything else through
its methods, so a missing or unreadable file is always a :class:`ReportError` naming it.

The study records, the evaluations and the replay meta are read through their contracts
(:mod:`sepsisrl.contracts`): a key the contract requires and the file lacks (a renamed metric,
say) is a :class:`ReportContractError` naming the file and the key, never a blank cell.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.json as pajson

from sepsisrl.contracts import (
    Artifact,
    Candidate,
    ContractError,
    EvaluationMetrics,
    FinalRecord,
    ReplayMeta,
    ReplaySource,
    Selection,
)

#: Artifacts every report needs (paths relative to the workspace).
REQUIRED = (
    "study/selection.json",
    "study/final.json",
    "cohort/audit.json",
    "episodes/audit.json",
    "splits/audit.json",
    "features/audit.json",
    "actions/audit.json",
)
#: What separates the vasopressor and the IV fluid level in an action label (``vaso×fluid``,
#: ``dataset/actions.py`` ``action_labels``).
LABEL_SEPARATOR = "×"

A = TypeVar("A", bound=Artifact)


class ReportError(ValueError):
    """A study report cannot be written (a required artifact is missing or unreadable)."""


class ReportContractError(ReportError, ContractError):
    """An artifact the report reads does not follow its contract (names the file and key)."""


def _missing(ws: Path, rel: str) -> ReportError:
    return ReportError(f"study report: missing required artifact {rel} (expected at {ws / rel})")


def read_json(ws: Path, rel: str) -> dict[str, Any]:
    path = ws / rel
    if not path.is_file():
        raise _missing(ws, rel)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"study report: cannot read {rel}: {exc}") from exc


def read_artifact(ws: Path, rel: str, model: type[A]) -> A:
    """A contract artifact of the workspace, checked against ``model``."""
    if not (ws / rel).is_file():
        raise _missing(ws, rel)
    try:
        return model.load(ws / rel)
    except ContractError as exc:
        raise ReportContractError(f"study report: {exc}") from None


def read_build_summary(ws: Path) -> dict[str, Any]:
    """``build_summary.json`` of the workspace; empty for a build that wrote none."""
    path = ws / "build_summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class ActionGrid:
    """The action grid of the replay: action ``len(fluid) * v + f`` gives vasopressor level
    ``vaso[v]`` and IV fluid level ``fluid[f]``."""

    vaso: tuple[str, ...]
    fluid: tuple[str, ...]

    @property
    def labels(self) -> list[str]:
        return [f"{v}{LABEL_SEPARATOR}{f}" for v in self.vaso for f in self.fluid]

    @property
    def n_actions(self) -> int:
        return len(self.vaso) * len(self.fluid)

    @classmethod
    def from_replay_meta(cls, meta: ReplayMeta, rel: str) -> ActionGrid:
        """The grid that ``action_labels`` and ``n_actions`` of a replay meta describe."""
        labels = meta.action_labels
        if not labels:
            raise ReportError(f"study report: {rel} has no 'action_labels' (the action grid)")
        parts = [str(lab).split(LABEL_SEPARATOR) for lab in labels]
        if any(len(p) != 2 for p in parts):
            raise ReportError(
                f"study report: {rel} 'action_labels' must read 'vaso{LABEL_SEPARATOR}fluid'; "
                f"found {labels[:3]}..."
            )
        vaso = tuple(dict.fromkeys(p[0] for p in parts))
        fluid = tuple(dict.fromkeys(p[1] for p in parts))
        grid = cls(vaso, fluid)
        if grid.labels != list(labels) or meta.n_actions != grid.n_actions:
            raise ReportError(
                f"study report: {rel} 'action_labels' ({len(labels)}) and 'n_actions' "
                f"({meta.n_actions}) do not form a {len(vaso)} x {len(fluid)} grid "
                "(vasopressor-major)"
            )
        return grid


@dataclass
class Study:
    """The workspace's study artifacts (JSON files are read once)."""

    ws: Path
    selection: Selection
    final: FinalRecord
    _cache: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _artifacts: dict[str, Artifact] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ files
    def json(self, rel: str) -> dict[str, Any]:
        """A required JSON artifact."""
        if rel not in self._cache:
            self._cache[rel] = read_json(self.ws, rel)
        return self._cache[rel]

    def optional_json(self, rel: str) -> dict[str, Any] | None:
        """A JSON artifact that some studies do not have (None when absent)."""
        return self.json(rel) if (self.ws / rel).is_file() else None

    def bytes(self, rel: str) -> bytes:
        path = self.ws / rel
        if not path.is_file():
            raise _missing(self.ws, rel)
        return path.read_bytes()

    def sha256(self, rel: str) -> str:
        return hashlib.sha256(self.bytes(rel)).hexdigest()

    def jsonl(self, rel: str) -> pa.Table:
        """A run's ``metrics.jsonl`` as a table (pyarrow; Python's parser for NaN/Infinity)."""
        path = self.ws / rel
        if not path.is_file():
            raise _missing(self.ws, rel)
        if path.stat().st_size == 0:
            return pa.table({})
        try:
            return pajson.read_json(path)
        except pa.ArrowInvalid:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            return pa.Table.from_pylist(rows)

    def artifact(self, rel: str, model: type[A]) -> A:
        """A contract artifact (read and checked once)."""
        if rel not in self._artifacts:
            self._artifacts[rel] = read_artifact(self.ws, rel, model)
        found = self._artifacts[rel]
        assert isinstance(found, model)
        return found

    def metrics(self, evaluation: str) -> EvaluationMetrics:
        """``<evaluation>/metrics.json`` of an evaluation folder."""
        return self.artifact(f"{evaluation}/metrics.json", EvaluationMetrics)

    def release_files(self) -> list[tuple[str, int]] | None:
        """(path inside the release folder, bytes) of every file of the recorded release;
        None when no release is recorded or its folder is missing."""
        rel = self.final.release
        folder = self.ws / rel if rel else None
        if folder is None or not folder.is_dir():
            return None
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in files]

    # ----------------------------------------------------------------- records
    @property
    def candidates(self) -> list[Candidate]:
        return self.selection.candidates

    @property
    def selected_name(self) -> str:
        return self.selection.selected.name

    @property
    def estimator(self) -> str:
        return self.selection.rule.estimator

    def finalists(self) -> list[Candidate]:
        names = set(self.selection.finalists)
        return [c for c in self.candidates if c.stage == 2 or c.name in names]

    def is_finalist(self, c: Candidate) -> bool:
        return any(f.name == c.name for f in self.finalists())

    def replay_meta_path(self) -> str:
        """The replay the selected candidate was trained on (its reward variant)."""
        chosen = [c for c in self.candidates if c.name == self.selected_name]
        variant = chosen[0].reward if chosen else None
        if variant:
            return f"replay/{variant}/meta.json"
        found = sorted((self.ws / "replay").glob("*/meta.json"))
        if not found:
            raise ReportError("study report: missing required artifact replay/<variant>/meta.json")
        return found[0].relative_to(self.ws).as_posix()

    def replay_meta(self) -> ReplayMeta:
        return self.artifact(self.replay_meta_path(), ReplayMeta)

    def source(self) -> ReplaySource | None:
        """The data source the replay records (kind, version; None for a replay that records
        none, such as an external dataset's)."""
        return self.replay_meta().source

    def action_grid(self) -> ActionGrid:
        return ActionGrid.from_replay_meta(self.replay_meta(), self.replay_meta_path())

    def report_eval(self) -> str:
        """The selected policy's test evaluation that the heatmaps and subgroups show."""
        sel = self.final.selected
        seed, evals, seeds = sel.exported_seed, sel.evals, sel.seeds
        return evals[seeds.index(seed)] if seed in seeds else evals[0]


def load_study(workspace: str | Path) -> Study:
    """Read and check a study workspace: the study records and evaluations against their
    contracts, and that every required file is there."""
    ws = Path(workspace)
    if not ws.is_dir():
        raise ReportError(f"study report: workspace {ws} does not exist")
    study = Study(
        ws,
        read_artifact(ws, "study/selection.json", Selection),
        read_artifact(ws, "study/final.json", FinalRecord),
    )
    files = required_artifacts(study)
    missing = [rel for rel in files if not (ws / rel).is_file()]
    if missing:
        raise ReportError(
            f"study report: missing required artifact(s) in {ws}: " + ", ".join(missing)
        )
    for rel in files:  # every evaluation is checked before a section reads it
        if rel.endswith("/metrics.json"):
            study.metrics(rel.removesuffix("/metrics.json"))
    study.replay_meta()
    return study


def required_artifacts(study: Study) -> list[str]:
    """Every file the report reads, relative to the workspace (the release is optional)."""
    fin = study.final
    seed_rows = [r for c in study.candidates for r in c.seeds]
    runs = [r.run for r in seed_rows]
    runs += fin.selected.runs
    runs += [b.run for b in fin.baselines if b.run is not None]
    evals = [r.eval for r in seed_rows]
    evals += fin.selected.evals + [b.eval for b in fin.baselines]
    files = [*REQUIRED, study.replay_meta_path()]
    files += [f"{r}/metrics.jsonl" for r in runs] + [f"{e}/metrics.json" for e in evals]
    return list(dict.fromkeys(files))
