"""The declared Python range is checked: ``.ci/run`` installs the package on the oldest declared
Python without torch and imports every module that does not need torch (``.ci/oldest_python``).
Here: that check's own logic, on the running Python, and the declarations agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_check_tells_torch_modules_from_broken_ones():
    proc = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "py310_imports.py")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    imported = re.search(r"^imported \d+ modules: (.*)$", proc.stdout, re.M)
    assert imported is not None, proc.stdout
    names = imported.group(1).split(", ")
    assert "sepsisrl.synth.world" in names and "sepsisrl.dataset.builder" in names
    # torch is blocked even though it is installed here: a torch module is listed, not imported
    assert "sepsisrl.rl.iql" not in names
    assert re.search(r"^  sepsisrl\.rl\.iql \(torch imported by sepsisrl/rl/iql\.py:\d+\)$",
                     proc.stdout, re.M), proc.stdout  # fmt: skip


def test_the_oldest_declared_python_is_the_lint_target_and_is_named_in_the_readme():
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is not in Python 3.10)
    oldest = re.search(r'^requires-python = ">=(3\.\d+)"$', pyproject, re.M)
    assert oldest is not None
    version = oldest.group(1)
    assert f'target-version = "py{version.replace(".", "")}"' in pyproject
    readme = (ROOT / "README.md").read_text()
    assert f"Python {version}+" in readme and f"Python {version}" in readme.split("## Tests")[1]
    assert "bash .ci/oldest_python" in (ROOT / ".ci" / "run").read_text()
