"""Copy a built synthetic workspace's data phase, without its raw tables, for another machine.

Usage:  python bench/trim_workspace.py SOURCE_WS DEST_WS

The card study's data phase (a world of 20,000 stays and its build) takes minutes and its raw
tables weigh gigabytes; a benchmark on a borrowed machine (a GPU one, where only tens of MB
travel) needs only what the later phases read. This copies, from ``SOURCE_WS`` to
``DEST_WS``: ``build_config.json``, ``build_summary.json``, ``replay``, ``features``,
``actions``, ``splits``, ``cohort``, ``episodes``, ``audit``, the small tables of ``sepsis``,
``raw_truth/world.json`` (the world's seed and configuration: the truth phase simulates fresh
patients from it) and the fitted behaviour model ``study/behaviour``; and rewrites the
recorded source root to ``DEST_WS/raw``. ``python bench/study.py --reuse-data --workspace
DEST_WS`` then times everything after the data phase. DEST_WS must be the path the copy will
have on the machine that runs it (the truth phase finds the world through that root).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

FILES = ("build_config.json", "build_summary.json", "raw_truth/world.json",
         "sepsis/onset.parquet", "sepsis/suspicion.parquet", "sepsis/audit.json",
         "sepsis/stage.json", "sepsis/unusable.parquet")  # fmt: skip
FOLDERS = ("replay", "features", "actions", "splits", "cohort", "episodes", "audit",
           "study/behaviour")  # fmt: skip


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dest = Path(sys.argv[1]).absolute(), Path(sys.argv[2]).absolute()
    if not (src / "build_summary.json").is_file():
        raise SystemExit(f"{src}: not a built workspace (no build_summary.json)")
    missing = [p for p in (*FILES, *FOLDERS) if not (src / p).exists()]
    if missing:
        raise SystemExit(f"{src}: missing {', '.join(missing)} (run the study's data phase)")
    if dest.exists():
        raise SystemExit(f"{dest} exists; remove it first")
    for name in FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, dest / name)
    for name in FOLDERS:
        shutil.copytree(src / name, dest / name)
    old, new = f'"{src}/', f'"{dest}/'
    for path in [dest / "build_summary.json", *sorted((dest / "replay").glob("*/meta.json"))]:
        path.write_text(path.read_text().replace(old, new))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{dest}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
