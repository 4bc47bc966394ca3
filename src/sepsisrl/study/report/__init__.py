"""Study report: one self-contained HTML page and its markdown twin, built only from the
artifacts of a study workspace (``sepsisrl run``).

RESEARCH ONLY. The report summarises offline estimates from logged data; nothing in it is
clinical decision support.

``write_report(ws)`` writes ``<ws>/report/index.html`` (figures embedded as base64 PNG, inline
CSS, no external resources) and ``<ws>/report/report.md`` (figures in ``report/figures/``).
Every number is read from an artifact; the report is assembled as a list of blocks rendered
twice, so both files carry the same content. The package follows that path:

- :mod:`~sepsisrl.study.report.data`: the one place that reads the workspace (:class:`Study`);
- :mod:`~sepsisrl.study.report.blocks`: the blocks and how values are printed;
- :mod:`~sepsisrl.study.report.figures`: the figures (PNG bytes from plain data);
- :mod:`~sepsisrl.study.report.sections`: the sections, in page order, by name;
- :mod:`~sepsisrl.study.report.render`: blocks to HTML and markdown, written atomically.

The check that the page renders in a real browser is a test tool (``tests/browser.py``, used by
``tests/test_report.py`` and ``bench/report.py``).
"""

from __future__ import annotations

from pathlib import Path

from sepsisrl.study.report.blocks import (
    TITLE,
    WARNING,
    Block,
    Bullets,
    Figure,
    Heading,
    Table,
    Text,
)
from sepsisrl.study.report.data import ActionGrid, ReportError, Study, load_study
from sepsisrl.study.report.render import render_html, render_markdown, write_files
from sepsisrl.study.report.sections import SECTIONS, Section, build_blocks, section
from sepsisrl.study.report.sections.overview import build_conventions, build_warnings
from sepsisrl.study.report.sections.truth import (
    clinician_verdict_against_truth,
    noninferiority_line,
)


def write_report(workspace: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the study report of ``workspace``; returns the report folder.

    ``out_dir`` defaults to ``<workspace>/report``. Built in ``.report.partial-<pid>`` next to
    it and swapped in whole, so a reader never sees a half-written report.
    """
    study = load_study(workspace)
    blocks = build_blocks(study)
    out = Path(out_dir) if out_dir is not None else study.ws / "report"
    return write_files(blocks, out)


__all__ = [
    "SECTIONS",
    "TITLE",
    "WARNING",
    "ActionGrid",
    "Block",
    "Bullets",
    "Figure",
    "Heading",
    "ReportError",
    "Section",
    "Study",
    "Table",
    "Text",
    "build_blocks",
    "build_conventions",
    "build_warnings",
    "clinician_verdict_against_truth",
    "load_study",
    "noninferiority_line",
    "render_html",
    "render_markdown",
    "section",
    "write_report",
]
