"""The oldest declared Python (``requires-python``) can install and import sepsisrl.

Run by ``.ci/run`` with that interpreter, in a virtual environment holding the package's
dependencies except torch (a CPU torch wheel is at hand only for the newest supported Python;
others would pull a multi-GB CUDA build). It

1. compiles every source file of the package (a syntax newer than this Python fails here, in
   modules that need torch too);
2. imports every module of the installed package with ``import torch`` made to fail: a module
   whose import fails only because it (or a module it imports) needs torch is listed as such,
   and so is one that needs a package of an optional extra (``OPTIONAL``: gymnasium, d3rlpy,
   huggingface_hub, ray - absent here, since only the base dependencies are installed);
   any other failure - a name, a module or a syntax this Python lacks, a missing dependency -
   fails the check.

Exit status 0 when all is well, 1 otherwise; the report names every module and its outcome.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import traceback
from pathlib import Path

BLOCKED = "torch"
#: Top-level packages of the optional extras (pyproject.toml [project.optional-dependencies]).
OPTIONAL = ("gymnasium", "d3rlpy", "huggingface_hub", "ray")


class TorchBlocked(ModuleNotFoundError):
    """Raised for ``import torch`` (and its submodules) during the check."""


class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == BLOCKED or fullname.startswith(BLOCKED + "."):
            raise TorchBlocked(
                f"No module named {fullname!r} (blocked by the check)", name=fullname
            )
        return None


def package_modules(root: Path, package: str) -> list[str]:
    """Dotted names of every module under the package folder ``root``, parents first."""
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join((package, *parts)))
    return sorted(set(names), key=lambda n: (n.count("."), n))


def importer(exc: BaseException, root: Path) -> str:
    """The package file whose ``import`` statement reached torch (the innermost one)."""
    last = "?"
    tb = exc.__traceback__
    while tb is not None:
        filename = Path(tb.tb_frame.f_code.co_filename)
        if root in filename.parents:
            last = f"{filename.relative_to(root.parent)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return last


def main() -> int:
    sys.meta_path.insert(0, BlockTorch())
    for name in [m for m in sys.modules if m == BLOCKED or m.startswith(BLOCKED + ".")]:
        del sys.modules[name]
    import sepsisrl

    root = Path(sepsisrl.__file__).resolve().parent
    print(f"python {sys.version.split()[0]}; sepsisrl from {root}")
    failed: list[str] = []

    sources = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    for path in sources:
        try:
            compile(path.read_text(encoding="utf-8"), str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            failed.append(f"{path}: does not compile: {exc}")

    modules = package_modules(root, "sepsisrl")
    imported, need_torch, need_extra = [], [], []
    for name in modules:
        try:
            importlib.import_module(name)
        except TorchBlocked as exc:
            need_torch.append(f"{name} (torch imported by {importer(exc, root)})")
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in OPTIONAL:
                failed.append(f"{name}: import failed:\n{traceback.format_exc()}")
            else:
                need_extra.append(f"{name} ({exc.name}, imported by {importer(exc, root)})")
        except BaseException:  # every other failure is reported
            failed.append(f"{name}: import failed:\n{traceback.format_exc()}")
        else:
            imported.append(name)

    print(f"compiled {len(sources)} source files")
    print(f"imported {len(imported)} modules: {', '.join(imported)}")
    print(f"need torch (not installed for this Python): {len(need_torch)}")
    for line in need_torch:
        print(f"  {line}")
    print(f"need an optional extra (not installed): {len(need_extra)}")
    for line in need_extra:
        print(f"  {line}")
    if not imported:
        failed.append("no module could be imported")
    for line in failed:
        print(f"FAIL {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
