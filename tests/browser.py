"""Check a report page the way a reader sees it: parse its HTML, and render it in a real
headless Chromium. A test tool (``tests/test_report.py``, ``bench/report.py``), not part of
the package.

Chromium runs offline and leaves nothing behind: a fresh profile in a temporary folder, no
sandbox (CI runs as root), no GPU, and every background service that would reach the network
switched off (:data:`CHROMIUM_FLAGS`). ``.ci/run`` installs Debian's ``chromium`` when none is
on PATH.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from sepsisrl.study.report import TITLE

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_DATA = "data:image/png;base64,"
#: What a reference to another resource starts with (a self-contained page has none).
EXTERNAL = ("http:", "https:", "//")
#: The start of the research-only warning every page carries.
WARNING_MARK = "RESEARCH ONLY — NOT FOR CLINICAL USE"


class BrowserError(RuntimeError):
    """No headless browser, or the browser failed to render the page."""


# ------------------------------------------------------------------------ the HTML
class PageScan(HTMLParser):
    """What a page holds: its title, tags, images, scripts, external references and the
    cells of each table (by the table's id)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.tags: list[str] = []
        self.images: list[str] = []
        self.external: list[tuple[str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._in_title = False
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        self._in_title = self._in_title or tag == "title"
        for name in ("src", "href"):
            if (a.get(name) or "").strip().lower().startswith(EXTERNAL):
                self.external.append((tag, a[name] or ""))
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        if tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_title = self._in_title and tag != "title"
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        if tag == "table":
            self._table = None


def scan(text: str) -> PageScan:
    page = PageScan()
    page.feed(text)
    page.close()
    return page


def is_png_data(src: str) -> bool:
    """An ``src`` that embeds a PNG (a data URI whose bytes start with the PNG signature)."""
    if not src.startswith(PNG_DATA):
        return False
    try:
        return base64.b64decode(src[len(PNG_DATA) :], validate=True).startswith(PNG_MAGIC)
    except ValueError:
        return False


def inspect_html(text: str) -> dict[str, Any]:
    """Structural checks of a page: images (embedded PNGs?), external references, scripts."""
    page = scan(text)
    png = sum(is_png_data(s) for s in page.images)
    scripts = page.tags.count("script")
    return {
        "title": page.title,
        "images": len(page.images),
        "embedded_png_images": png,
        "external_refs": [ref for _, ref in page.external],
        "scripts": scripts,
        "self_contained": png == len(page.images) and not page.external and not scripts,
        "warning": WARNING_MARK in text,
    }


# ---------------------------------------------------------------------- the browser
def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _chromium(exe: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="sepsisrl-report-browser-") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrowserError(f"{exe} did not finish within {timeout:g} s: {cmd}") from exc
    if proc.returncode != 0:
        raise BrowserError(f"{exe} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def render_in_browser(
    html_path: Path, screenshot: Path | None = None, timeout: float = 180.0
) -> dict[str, Any]:
    """Render ``html_path`` in a headless Chromium: the DOM it builds and, optionally, a
    1280x4000 screenshot. Raises BrowserError if no browser is on PATH."""
    exe = find_browser()
    if exe is None:
        raise BrowserError(
            f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); "
            "install one, e.g. `apt-get install -y chromium` (as .ci/run does)"
        )
    html_path = Path(html_path).resolve()
    source = inspect_html(html_path.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    dom = _chromium(exe, ["--dump-dom", html_path.as_uri()], timeout).stdout
    rendered = inspect_html(dom)
    result = {
        "browser": exe,
        "dom_chars": len(dom),
        "title_in_dom": TITLE in dom,
        "images_in_source": source["images"],
        "images_in_dom": rendered["images"],
        "embedded_png_in_dom": rendered["embedded_png_images"],
        "warning_in_dom": rendered["warning"],
        "screenshot": None,
        "screenshot_bytes": None,
    }
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        shot.unlink(missing_ok=True)
        args = [f"--screenshot={shot}", "--window-size=1280,4000", html_path.as_uri()]
        _chromium(exe, args, timeout)
        result["screenshot"] = str(shot)
        result["screenshot_bytes"] = shot.stat().st_size if shot.is_file() else 0
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result
