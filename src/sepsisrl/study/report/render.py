"""Blocks to files: one self-contained HTML page (figures as base64 PNG, inline CSS, no script,
no external resource) and its markdown twin (figures in ``figures/``), written atomically."""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
from pathlib import Path

from sepsisrl.study.report.blocks import TITLE, Block, Bullets, Figure, Heading, Table, Text

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1200px;
margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
.warning{background:#fde8e8;border:3px solid #c0392b;color:#7b1d12;font-weight:bold;
padding:.8em 1em;border-radius:4px;font-size:1.1em}
.note{color:#555;font-style:italic}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}caption{caption-side:top;text-align:left;font-style:italic}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
"""


# ------------------------------------------------------------------------------ HTML
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _html_block(b: Block) -> str:
    e = html.escape
    if isinstance(b, Heading):
        return f'<h{b.level} id="{_slug(b.text)}">{e(b.text)}</h{b.level}>'
    if isinstance(b, Text):
        return f'<p class="{e(b.kind)}">{e(b.text)}</p>'
    if isinstance(b, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{e(i)}</li>" for i in b.items) + "\n</ul>"
    if isinstance(b, Table):
        cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
        head = "".join(f"<th>{e(h)}</th>" for h in b.header)
        body = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows)
        return (
            f'<div class="scroll"><table id="{e(b.key)}">{cap}\n<thead><tr>{head}</tr>'
            f"</thead>\n<tbody>\n{body}\n</tbody></table></div>"
        )
    data = base64.b64encode(b.png).decode("ascii")
    return (
        f'<figure id="fig-{e(b.key)}"><img src="data:image/png;base64,{data}" '
        f'alt="{e(b.caption)}"><figcaption>{e(b.caption)}</figcaption></figure>'
    )


def render_html(blocks: list[Block]) -> str:
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(TITLE)} — RESEARCH ONLY</title>\n<style>{CSS}</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# -------------------------------------------------------------------------- markdown
def _md_cell(c: str) -> str:
    return c.replace("|", "\\|").replace("\n", " ")


def _md_block(b: Block) -> str:
    if isinstance(b, Heading):
        return f"{'#' * b.level} {b.text}"
    if isinstance(b, Text):
        return {"warning": f"> **⚠ {b.text}**", "note": f"_{b.text}_"}.get(b.kind, b.text)
    if isinstance(b, Bullets):
        return "\n".join(f"- {i}" for i in b.items)
    if isinstance(b, Table):
        lines = [f"_{b.caption}_", ""] if b.caption else []
        lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
        lines.append("|" + "---|" * len(b.header))
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
        return "\n".join(lines)
    return f"![{b.caption}](figures/{b.key}.png)\n\n_{b.caption}_"


def render_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


# --------------------------------------------------------------------------- writing
def _write_tree(folder: Path, blocks: list[Block]) -> None:
    figures = folder / "figures"
    figures.mkdir(parents=True)
    for b in blocks:
        if isinstance(b, Figure):
            (figures / f"{b.key}.png").write_bytes(b.png)
    (folder / "index.html").write_text(render_html(blocks), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(blocks), encoding="utf-8")


def _swap_in(partial: Path, out: Path) -> None:
    """Replace ``out`` by ``partial`` (the old report is moved aside, then deleted)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(partial, out)
    shutil.rmtree(old, ignore_errors=True)


def write_files(blocks: list[Block], out: Path) -> Path:
    """Write ``index.html``, ``report.md`` and ``figures/`` into ``out``. Built in
    ``.<out>.partial-<pid>`` next to it and swapped in whole, so a reader never sees a
    half-written report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _write_tree(partial, blocks)
        _swap_in(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out
