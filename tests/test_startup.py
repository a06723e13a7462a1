"""The CLI starts without torch: lazy imports, the method catalogue and closed-form preset sizes."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codekd.catalog import method_catalog
from codekd.methods import all_methods
from codekd.models import PRESETS, build_student, count_parameters, custom_spec, parameter_count

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "accelerate", "sklearn")


def _loaded_after(code: str) -> list[str]:
    """Which heavy packages a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["methods"], ["presets"], ["distill", "--help"],
                                  ["teacher", "--epochs", "x"], ["distill", "--method", "kd"]])
def test_cli_commands_that_need_no_model_do_not_import_torch(argv: list[str]) -> None:
    code = (f"import sys\nsys.argv = ['codekd', *{argv!r}]\nfrom codekd.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass")
    assert _loaded_after(code) == []


def test_import_codekd_is_light_and_its_api_still_resolves() -> None:
    assert _loaded_after("import codekd, codekd.models, codekd.data") == []
    assert {"torch", "transformers", "accelerate"} <= set(_loaded_after("import codekd\ncodekd.distill"))


def test_catalog_equals_the_registered_classes() -> None:
    catalog, registry = method_catalog(), all_methods()
    assert list(catalog) == list(registry)
    for name, cls in registry.items():
        info = catalog[name]
        assert (info.summary, info.teacher_needs, info.student_needs, info.defaults) == (
            cls.summary, cls.teacher_needs, cls.student_needs, cls.defaults), name


@pytest.mark.parametrize("spec", [*PRESETS.values(), custom_spec("roberta", 60, 16, 2, 2, 32),
                                  custom_spec("gru", 60, 16, 3)], ids=lambda s: f"{s.name}-{s.kind}")
@pytest.mark.parametrize("labels", [2, 20])
def test_closed_form_parameter_count_equals_the_built_model(spec, labels: int) -> None:
    with torch.device("meta"):
        built = count_parameters(build_student(spec, labels, vocab_size=spec.vocab_size - 3, max_positions=130))
    assert parameter_count(spec, labels, vocab_size=spec.vocab_size - 3, max_positions=130) == built


def _codekd_imports(path: Path) -> set[str]:
    """The codekd modules a source file imports, anywhere in it (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("codekd.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("codekd"):
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return found


def test_no_two_modules_import_each_other() -> None:
    root = REPO / "codekd"
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    imports = {m: _codekd_imports(p) & set(modules) - {m} for m, p in modules.items()}
    pairs = sorted((a, b) for a in imports for b in imports[a] if a < b and a in imports.get(b, ()))
    assert pairs == []
