"""Every reference in a docstring or comment resolves to a file of the repository.

Scanned: the docstrings and comments of every ``.py`` file under ``src/``, ``bench/`` and
``tests/``, the ``--`` comments of the SQL files and the ``#`` comments of the YAML files under
``src/``. A reference is any ``*.md`` name, any path with a folder that ends in ``.md``,
``.sql``, ``.yaml`` or ``.py`` (``docs/contracts.md``, ``dataset/sql/cohort.sql``,
``configs/study.yaml``, ``rl/iql.py``) and any bare ``*.sql`` name. It resolves when the file
exists relative to the repository root, to ``src/`` or ``src/sepsisrl/``, to the referring
file's own folder (or its parent), or, for ``sql/...``, to the package's only SQL folder
(``src/sepsisrl/dataset/sql/``); a bare name resolves when a file of that name exists in the
repository. Files of other projects are listed in ``EXTERNAL``. A section named after a
Markdown reference (``docs/clinical.md, "Cohort"`` or ``docs/clinical.md ("Cohort")``) must
start a heading of that file, or be one of its bold labels (``**Known gap**``).

The clinical definitions (docs/clinical.md) also carry the feature table of
``configs/build.yaml``: a test keeps the two equal.
"""

from __future__ import annotations

import ast
import functools
import io
import os
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "sepsisrl"

#: Files the code writes or that other releases ship, named in docstrings as artifacts, not as
#: files of this repository.
ARTIFACT_NAMES = {
    "LICENSE.md": "the model repository's licence (release/bundle.py writes it)",
    "README.md": "the model card of a model repository (release/bundle.py), or this README",
    "report.md": "the study report (<workspace>/report/report.md)",
    "NOTICE.md": "the notice of the MIMIC-IV demo subset (tests/data writes it)",
    "NOTE.md": "the release note of the MIMIC-IV demo download",
}

#: Paths of other projects' files that docstrings and comments cite (not in this repository).
EXTERNAL = {
    "treatment/ventilation.sql": "mimic-code's ventilation concept (mimic-iv/concepts/)",
}

PATH_REF = re.compile(r"(?<![\w./<>-])((?:[\w.-]+/)+[\w.-]+\.(?:md|sql|yaml|py))(?![\w/])")
BARE_REF = re.compile(r"(?<![\w./<>-])([\w-]+(?:\.[\w-]+)*\.(?:md|sql))(?![\w/.])")
SECTION = re.compile(r"([\w./-]+\.md)[`)]*(?:,\s*|\s+\()[\"']([^\"']+)[\"']")


def _python_texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every docstring and every block of consecutive comment lines."""
    source = path.read_text(encoding="utf-8")
    out: list[tuple[int, str]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                line = node.body[0].lineno if node.body else 1
                out.append((line, doc))
    block: list[str] = []
    start = last = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line = tok.start[0]
        text = tok.string.lstrip("#:").strip()
        if block and line == last + 1:
            block.append(text)
        else:
            if block:
                out.append((start, " ".join(block)))
            block, start = [text], line
        last = line
    if block:
        out.append((start, " ".join(block)))
    return out


def _comment_texts(path: Path, marker: str) -> list[tuple[int, str]]:
    """(line, text) of every block of consecutive comments (``--`` or ``#``) of a text file."""
    out: list[tuple[int, str]] = []
    block: list[str] = []
    start = 0
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        pos = line.find(marker)
        if pos >= 0 and (marker != "#" or pos == 0 or line[pos - 1] in " \t"):
            if not block:
                start = i
            block.append(line[pos + len(marker) :].strip())
        elif block:
            out.append((start, " ".join(block)))
            block = []
    if block:
        out.append((start, " ".join(block)))
    return out


def _texts() -> list[tuple[Path, int, str]]:
    found = []
    for folder in ("src", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "egg-info" not in str(path):
                found += [(path, n, t) for n, t in _python_texts(path)]
    for path in sorted(PKG.rglob("*.sql")):
        found += [(path, n, t) for n, t in _comment_texts(path, "--")]
    for path in sorted(PKG.rglob("*.yaml")):
        found += [(path, n, t) for n, t in _comment_texts(path, "#")]
    return found


@functools.cache
def _repo_names() -> frozenset[str]:
    skip = {".git", ".venv", "__pycache__", "node_modules", ".pytest_cache", ".ruff_cache"}
    names = set()
    for _folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        names.update(files)
    return frozenset(names)


def _resolves(ref: str, referrer: Path) -> Path | None:
    bases = [ROOT, ROOT / "src", PKG, referrer.parent, referrer.parent.parent, PKG / "dataset"]
    for base in bases:
        if (base / ref).is_file():
            return base / ref
    return None


def _normal(text: str) -> str:
    return " ".join(text.replace("`", "").replace("*", "").split()).lower().rstrip(":")


def _sections(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    heads = [_normal(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, re.M)]
    bold = [_normal(m.group(1)) for m in re.finditer(r"\*\*([^*]+)\*\*", text)]
    return heads + [f"={b}" for b in bold]


def _problems() -> list[str]:
    names = _repo_names()
    problems = []
    for path, line, raw in _texts():
        text = " ".join(raw.split())
        where = f"{path.relative_to(ROOT)}:{line}"
        for ref in PATH_REF.findall(text):
            if Path(ref).name in ARTIFACT_NAMES or ref in EXTERNAL:
                continue
            if _resolves(ref, path) is None:
                problems.append(f"{where}: {ref} is not a file of the repository")
        for ref in BARE_REF.findall(text):
            if ref not in ARTIFACT_NAMES and ref not in names:
                problems.append(f"{where}: {ref} is not a file of the repository")
        for ref, section in SECTION.findall(text):
            doc = _resolves(ref, path) if "/" in ref else None
            if doc is None:
                continue  # reported above (or an artifact name)
            want, have = _normal(section), _sections(doc)
            if not any(h.startswith(want) or h == f"={want}" for h in have):
                problems.append(f"{where}: {ref} has no section {section!r}")
    return problems


def test_every_reference_in_docstrings_and_comments_resolves():
    problems = _problems()
    assert not problems, "unresolved references:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('see docs/nothing.md for it"', "docs/nothing.md is not a file"),
        ("the stage (build/replay.py) writes", "build/replay.py is not a file"),
        ("a missing design note (clinical_spec.md)", "clinical_spec.md is not a file"),
        ('(docs/clinical.md, "No such heading")', "has no section 'No such heading'"),
    ],
)
def test_the_checker_catches_a_broken_reference(tmp_path, monkeypatch, text, expect):
    probe = PKG / "_probe_for_doc_references.py"
    monkeypatch.setattr(
        "tests.test_doc_references._texts", lambda: [(probe, 1, text)], raising=True
    )
    problems = _problems()
    assert len(problems) == 1 and expect in problems[0], problems


def test_a_valid_reference_and_section_pass(monkeypatch):
    probe = PKG / "dataset" / "_probe.py"
    texts = [
        (probe, 1, 'docs/clinical.md, "Cohort" and docs/evaluate.md, "Confounding"'),
        (probe, 2, "configs/study.yaml, dataset/sql/cohort.sql, sql/sofa.sql, rl/iql.py"),
        (probe, 3, 'docs/synthetic_world.md ("Known gap") and sofa.sql; <ws>/report/report.md'),
    ]
    monkeypatch.setattr("tests.test_doc_references._texts", lambda: texts, raising=True)
    assert _problems() == []


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _range(text: str) -> list[float] | None:
    if not text:
        return None
    m = re.fullmatch(r"(-?[\d.]+)–(-?[\d.]+)", text)
    assert m, f"docs/clinical.md: range {text!r} is not LOW–HIGH"
    return [float(m.group(1)), float(m.group(2))]


def test_the_feature_table_of_the_clinical_definitions_is_the_configs():
    from sepsisrl.dataset.config import load_build_config

    features = load_build_config().features
    text = (ROOT / "docs" / "clinical.md").read_text(encoding="utf-8")
    rows = [
        _cells(r)
        for r in text.splitlines()
        if re.match(r"\|\s*\d+\s*\|", r)  # the numbered rows of the feature table
    ]
    assert [r[1] for r in rows] == [f.name for f in features]
    for r, f in zip(rows, features, strict=True):
        assert r[3] == f.agg, (f.name, "agg")
        assert r[4] == f.impute, (f.name, "impute")
        valid = None if f.valid is None else [float(x) for x in f.valid]
        assert _range(r[5]) == valid, (f.name, "valid")
        assert _range(r[6]) == [float(x) for x in f.clip], (f.name, "clip")
        assert (r[7] == "yes") == f.flag, (f.name, "flag")
