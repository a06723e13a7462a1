"""Unlabelled code for distillation (`--transfer`): the transfer set of Hinton et al. (2015) and of Tang
et al. ("Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", 2019), which KD
uses where labels are scarce and code is not. The teacher's outputs are its only targets.

A transfer source is a JSONL file or a directory. JSONL records are in the task's format with the
labels left out (or ignored): `function` or `func` (`func1`, `func2` for pair tasks). A directory is
read as its `*.jsonl` / `*.jsontxt` files when it has any, else as raw source files (`*.py`, `*.c`,
`*.java`, …; single-function tasks only), one example per file.
"""

from __future__ import annotations

from pathlib import Path

from codekd.data.readers import DataError, Example, record_code
from codekd.data.tasks import Task
from codekd.data.text import json_lines, read_text, shown

UNLABELLED = -100  # the label of a transfer example: the label term ignores it (PyTorch's ignore_index)
SOURCE_SUFFIXES = (".py", ".c", ".h", ".cc", ".cpp", ".java", ".js", ".ts", ".go", ".rs")


def load_unlabelled(task: Task, path: str | Path) -> list[Example]:
    """Read a transfer source (see the module doc); every problem is a DataError naming file and line."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".jsontxt"))
        if not files:
            if task.pair:
                raise DataError(path, f"task {shown(task.name)} needs function pairs: give JSONL with func1, func2")
            raw = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)
            if not raw:
                raise DataError(path, "no *.jsonl and no source files in the transfer directory")
            return [_raw(p) for p in raw]
    else:
        raise DataError(path, "transfer source does not exist")
    out = []
    for f in files:
        out += _jsonl(task, f)
    if not out:
        raise DataError(path, "the transfer source holds no example")
    return out


def _raw(path: Path) -> Example:
    code = read_text(path)  # bad bytes: a DataError naming the file and line
    if not code.strip():
        raise DataError(path, "empty source file")
    return Example(code, UNLABELLED, source=str(path))


def _jsonl(task: Task, path: Path) -> list[Example]:
    out = []
    for n, rec in json_lines(path):  # BOM, bad bytes, nesting, long numbers, surrogates: as every reader
        if not isinstance(rec, dict):
            raise DataError(path, "expected a JSON object", n)
        keys = ("func1", "func2") if task.pair else ("function",) if "function" in rec else ("func",)
        missing = [k for k in keys if k not in rec]
        if missing:
            raise DataError(path, f"missing field {shown(missing[0])}", n)
        try:
            codes = [record_code(rec, k, "keep") for k in keys]
        except Exception as e:  # readers' InvalidRecord: a wrong type or an empty field
            raise DataError(path, str(e), n) from None
        out.append(Example(codes[0], UNLABELLED, codes[1] if task.pair else None, f"{path}:{n}"))
    return out
