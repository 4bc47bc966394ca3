"""Benchmark of the study report: time `write_report`, then render the page in a real browser.

Usage:  python bench/report.py --workspace WS

Writes WS/report/ (index.html, report.md, figures/), prints the seconds and the HTML size, then
opens WS/report/index.html in headless Chromium (``tests/browser.py``: chromium,
chromium-browser or google-chrome on PATH; Debian: `apt-get install -y chromium`): the dumped
DOM must contain the title and every <img> of the page (all embedded PNGs), and a 1280x4000
screenshot (WS/report/screenshot.png) must be non-trivial (> 10 kB). Exits non-zero with a
message when no browser is found or a check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sepsisrl.study.report import TITLE, write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.browser
from tests.browser import (
    BROWSERS,
    BrowserError,
    find_browser,
    inspect_html,
    render_in_browser,
)

MIN_SCREENSHOT_BYTES = 10_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", required=True, type=Path, help="a study workspace")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    report = write_report(args.workspace)
    seconds = time.perf_counter() - t0
    page = report / "index.html"
    structure = inspect_html(page.read_text(encoding="utf-8"))
    figures = sorted(p.name for p in (report / "figures").glob("*.png"))
    print(f"write_report: {seconds:.2f} s -> {report}")
    print(f"index.html: {page.stat().st_size / 1024:.1f} KiB, {structure['images']} <img> "
          f"({structure['embedded_png_images']} embedded PNG), self-contained: "
          f"{structure['self_contained']}")  # fmt: skip
    print(f"report.md: {(report / 'report.md').stat().st_size / 1024:.1f} KiB, "
          f"{len(figures)} figure files: {', '.join(figures)}")  # fmt: skip
    if not structure["self_contained"]:
        print(f"FAIL: page is not self-contained: {structure}", file=sys.stderr)
        return 1

    if find_browser() is None:
        print(f"FAIL: no headless browser on PATH ({', '.join(BROWSERS)}); "
              "install one, e.g. `apt-get install -y chromium`", file=sys.stderr)  # fmt: skip
        return 2
    try:
        res = render_in_browser(page, report / "screenshot.png")
    except BrowserError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 3
    print(f"browser: {res['browser']} ({res['seconds']:.2f} s for DOM dump + screenshot)")
    print(f"DOM: {res['dom_chars'] / 1024:.1f} KiB, title present: {res['title_in_dom']}, "
          f"<img> in DOM: {res['images_in_dom']} (page: {res['images_in_source']}, "
          f"embedded PNG in DOM: {res['embedded_png_in_dom']})")  # fmt: skip
    print(f"screenshot: {res['screenshot']} ({(res['screenshot_bytes'] or 0) / 1024:.1f} KiB)")
    problems = []
    if not res["title_in_dom"]:
        problems.append(f"title {TITLE!r} missing from the rendered DOM")
    if res["images_in_dom"] != res["images_in_source"]:
        problems.append("the rendered DOM does not hold every <img> of the page")
    if res["embedded_png_in_dom"] != res["images_in_source"]:
        problems.append("an image in the rendered DOM is not an embedded PNG")
    if (res["screenshot_bytes"] or 0) <= MIN_SCREENSHOT_BYTES:
        problems.append(f"screenshot is trivial ({res['screenshot_bytes']} bytes)")
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if not problems:
        print("OK: the report renders in a real browser")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
