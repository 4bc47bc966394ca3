"""No dead symbols: every function, class, method, constant, import and argument in ``src/``,
``bench/`` and ``tests/`` is used somewhere in those trees (``vulture``, 60 % confidence, the
level at which it reports unused functions, classes and module constants).

Left out on purpose, because name analysis cannot see their readers:

- fields declared in a class body (pydantic models, dataclasses, named tuples): a record's
  schema, read by validation and serialisation (``model_dump``, ``asdict``);
- functions registered by a decorator (typer commands, pydantic validators, pytest fixtures,
  ``yaml_defaults`` classes): the framework calls them;
- the names in ``ALLOWED`` below, each a protocol method or a name looked up at run time.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import vulture  # the test extra

ROOT = Path(__file__).resolve().parents[1]
TREES = ("src", "bench", "tests")
MIN_CONFIDENCE = 60

#: Called by a framework that finds them by their decorator.
DECORATORS = [
    "@app.callback",
    "@app.command",
    "@command",
    "@field_validator",
    "@model_validator",
    "@yaml_defaults",
    "@pytest.fixture",
]

#: (file, name) -> why it is used although no code names it.
ALLOWED = {
    ("src/sepsisrl/config.py", "__pydantic_config__"): "read by pydantic (the dataclass config)",
    ("src/sepsisrl/release/modeling_iql.py", "forward"): "torch.nn.Module protocol",
    ("src/sepsisrl/rl/networks.py", "forward"): "torch.nn.Module protocol",
    ("bench/model_ope.py", "forward"): "torch.nn.Module protocol",
    ("src/sepsisrl/cli.py", "signum"): "signal handler signature",
    ("src/sepsisrl/interrupts.py", "signum"): "signal handler signature",
    ("tests/browser.py", "handle_starttag"): "html.parser.HTMLParser protocol",
    ("tests/browser.py", "handle_data"): "html.parser.HTMLParser protocol",
    ("tests/browser.py", "handle_endtag"): "html.parser.HTMLParser protocol",
    ("bench/faults.py", "_make_world"): "looked up as getattr(self, f'_make_{name}')",
    ("bench/faults.py", "_make_build"): "looked up as getattr(self, f'_make_{name}')",
    ("bench/faults.py", "_make_run"): "looked up as getattr(self, f'_make_{name}')",
    ("bench/faults.py", "_make_eval"): "looked up as getattr(self, f'_make_{name}')",
    ("bench/faults.py", "_make_bundle"): "looked up as getattr(self, f'_make_{name}')",
    ("tests/test_synth_realism.py", "pytestmark"): "read by pytest (module-wide marks)",
    ("tests/test_faults.py", "dd"): "the check(case, data_dir, proc) callback signature",
}


@cache
def class_body_lines(path: Path) -> frozenset[int]:
    """Lines of the statements written directly in a class body (its fields)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef):
            lines.update(
                stmt.lineno for stmt in node.body if isinstance(stmt, ast.AnnAssign | ast.Assign)
            )
    return frozenset(lines)


def unused() -> list[tuple[str, str, str]]:
    """(file:line, name, vulture's message) of every unreported-as-used symbol."""
    finder = vulture.Vulture(ignore_decorators=DECORATORS)
    finder.scavenge([str(ROOT / tree) for tree in TREES])
    found = []
    for item in finder.get_unused_code(min_confidence=MIN_CONFIDENCE):
        path = Path(item.filename).resolve()
        rel = path.relative_to(ROOT).as_posix()
        if item.typ in ("variable", "attribute") and item.first_lineno in class_body_lines(path):
            continue
        found.append((f"{rel}:{item.first_lineno}", item.name, item.message))
    return found


def test_no_dead_symbols():
    found = unused()
    dead = [f for f in found if (f[0].rsplit(":", 1)[0], f[1]) not in ALLOWED]
    assert not dead, "dead code (delete it, or add it to ALLOWED with the reason):\n" + "\n".join(
        f"  {where}: {message}" for where, _, message in dead
    )
    seen = {(f[0].rsplit(":", 1)[0], f[1]) for f in found}
    stale = sorted(set(ALLOWED) - seen)
    assert not stale, f"ALLOWED names entries that are no longer reported: {stale}"
