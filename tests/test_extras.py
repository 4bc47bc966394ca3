"""The optional extras stay optional: the base install does not grow, and nothing of the base
package imports an extra's package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
#: The base dependencies (pyproject.toml [project] dependencies): adding one is a decision.
BASE = {
    "numpy", "pyarrow", "duckdb", "pydantic", "pyyaml", "typer", "rich", "torch",
    "safetensors", "matplotlib", "threadpoolctl",
}  # fmt: skip
EXTRAS = {"ray": "ray", "gym": "gymnasium", "d3rlpy": "d3rlpy", "hub": "huggingface_hub"}


def _name(requirement: str) -> str:
    for sep in "<>=!~;[ ":
        requirement = requirement.split(sep, 1)[0]
    return requirement.strip().lower()


def test_the_base_install_does_not_grow_and_each_extra_names_its_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {_name(d) for d in project["dependencies"]} == BASE
    optional = project["optional-dependencies"]
    for extra, package in EXTRAS.items():
        assert [_name(d) for d in optional[extra]] == [package]
        assert package in {_name(d) for d in optional["test"]}  # CI installs and tests it


def test_importing_the_package_and_its_cli_loads_no_extra():
    code = (
        "import sys, sepsisrl, sepsisrl.cli, sepsisrl.release.bundle, sepsisrl.ope.evaluate, "
        "sepsisrl.truth.policies\n"
        f"print(sorted(m for m in {sorted(EXTRAS.values())!r} if m in sys.modules))"
    )
    got = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert got.stdout.strip() == "[]"
