"""What each distillation method declares (name, summary, what it needs, option defaults), read from the
method files' source without importing them, so `codekd methods` answers without loading torch.

The registry (`codekd.methods`) imports every method module, and with them torch (about 2 s on the
build machine). The attributes a method declares are literals in its class body, so they can be read with
`ast` instead; the base class `Method` supplies the defaults a method does not override. A test checks that
this catalogue equals the imported classes' attributes for every registered method.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHODS_DIR = Path(__file__).parent / "methods"
FIELDS = ("name", "summary", "teacher_needs", "student_needs", "defaults")


@dataclass(frozen=True)
class MethodInfo:
    """The class-level declarations of one registered method (see `codekd.methods.Method`)."""

    name: str
    summary: str
    teacher_needs: tuple[str, ...]
    student_needs: tuple[str, ...]
    defaults: dict[str, Any]


def _declared(cls: ast.ClassDef) -> dict[str, Any]:
    """The literal values assigned to FIELDS in a class body."""
    out: dict[str, Any] = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in FIELDS:
            out[target.id] = ast.literal_eval(value)
    return out


def _classes(path: Path) -> list[ast.ClassDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [node for node in tree.body if isinstance(node, ast.ClassDef)]


def _registered(cls: ast.ClassDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "register" for d in cls.decorator_list)


def method_catalog() -> dict[str, MethodInfo]:
    """Every registered method's declarations by name, sorted, as `codekd.methods.all_methods()` would give."""
    base = next(c for c in _classes(METHODS_DIR / "__init__.py") if c.name == "Method")
    inherited = _declared(base)
    found: dict[str, MethodInfo] = {}
    for path in sorted(METHODS_DIR.glob("*.py")):
        for cls in filter(_registered, _classes(path)):
            info = MethodInfo(**{**inherited, **_declared(cls)})
            found[info.name] = info
    return dict(sorted(found.items()))
