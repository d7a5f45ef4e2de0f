"""The package keeps its shape: small modules, classes and functions, light entry points.

Limits (docs/architecture.md): a module of at most 500 lines, a class of at most 300, a
function of at most 60, unless a ``# shape: <why>`` comment stands on the line above it
(for a module: in its first 20 lines).  (That the client side stays light is checked
in test_light.py.)
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "trollpush"
LIMITS = {"module": 500, "class": 300, "function": 60}


def _excused(lines: list[str], line: int) -> bool:
    """A ``# shape:`` comment block right above the definition (decorators included)."""
    i = line - 2
    while i >= 0 and lines[i].lstrip().startswith("@"):
        i -= 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        if lines[i].lstrip().startswith("# shape:"):
            return True
        i -= 1
    return False


def _too_big(path: Path) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    where = path.relative_to(PACKAGE.parent)
    out = []
    if len(lines) > LIMITS["module"] and not any(
            line.startswith("# shape:") for line in lines[:20]):
        out.append(f"{where}: module of {len(lines)} lines")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if size > LIMITS[kind] and not _excused(lines, node.lineno):
                out.append(f"{where}:{node.lineno}: {kind} {node.name} of {size} lines")
    return out


def test_no_module_class_or_function_outgrows_its_limit() -> None:
    problems = [p for path in sorted(PACKAGE.rglob("*.py")) for p in _too_big(path)]
    assert not problems, ("too big (split it, or say why with a '# shape:' comment):\n"
                          + "\n".join(problems))
